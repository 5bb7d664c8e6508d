// Error checks for CUDA runtime and cuBLAS calls (STYLE §11). Every failure throws
// phi3::Error naming the statement, the error string, file and line; an allocation
// failure throws phi3::OutOfMemory so the CLI can say which option lowers the need.
// PHI3_LAUNCH_CHECK() follows every kernel launch (launch-configuration errors surface
// there; errors inside a kernel surface at the next synchronising call).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "runtime/error.h"

namespace phi3::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* stmt, const char* file,
                                          int line) {
  (void)cudaGetLastError();  // clear a non-sticky error so later calls are not blamed
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ") in `" + stmt + "` at " + file + ":" +
                    std::to_string(line);
  if (e == cudaErrorMemoryAllocation) throw OutOfMemory(msg);
  throw Error(msg);
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t s, const char* stmt, const char* file,
                                            int line) {
  std::string msg = std::string("cuBLAS error ") + cublasGetStatusName(s) + " (" +
                    cublasGetStatusString(s) + ") in `" + stmt + "` at " + file + ":" +
                    std::to_string(line);
  if (s == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw Error(msg);
}

}  // namespace phi3::cuda

#define CUDA_CHECK(stmt)                                                        \
  do {                                                                          \
    cudaError_t phi3_err_ = (stmt);                                             \
    if (phi3_err_ != cudaSuccess)                                               \
      ::phi3::cuda::throw_cuda_error(phi3_err_, #stmt, __FILE__, __LINE__);     \
  } while (0)

#define CUBLAS_CHECK(stmt)                                                      \
  do {                                                                          \
    cublasStatus_t phi3_st_ = (stmt);                                           \
    if (phi3_st_ != CUBLAS_STATUS_SUCCESS)                                      \
      ::phi3::cuda::throw_cublas_error(phi3_st_, #stmt, __FILE__, __LINE__);    \
  } while (0)

#define PHI3_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
