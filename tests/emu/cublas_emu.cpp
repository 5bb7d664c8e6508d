// The cuBLAS calls the project makes, for the CPU CUDA emulator (tests/emu/cuda_emu.h):
// handles, stream and math-mode setters, and cublasGemmEx for fp32 x fp32 -> fp32 and
// bf16 x bf16 -> fp32 with fp32 compute (what kernels/cuda/linear.cu uses), on OpenBLAS.
// Arguments are checked as cuBLAS checks them (sizes, leading dimensions, type
// combinations), and every matrix must lie inside one live device allocation.
#include <cblas.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#define PHI3_EMU_NO_LANGUAGE  // the emulator itself: plain C++
#include "cuda_emu.h"
#include "emu_state.h"

namespace {

struct Handle {};  // every call runs at once on the host: no stream or mode to keep

size_t elem_size(cudaDataType t) {
  switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF: return 2;
    default: return 0;
  }
}

// A column-major rows x cols matrix with leading dimension ld, as floats.
bool load(std::vector<float>& out, const void* p, cudaDataType t, int rows, int cols, int ld) {
  const size_t es = elem_size(t);
  const size_t span = cols == 0 || rows == 0 ? 0 : (static_cast<size_t>(cols - 1) * ld + rows) * es;
  if (span && !phi3emu::is_device_range(p, span)) return false;
  out.assign(static_cast<size_t>(ld) * cols, 0.0f);
  for (int c = 0; c < cols; ++c)
    for (int r = 0; r < rows; ++r) {
      const size_t i = static_cast<size_t>(c) * ld + r;
      if (t == CUDA_R_32F) {
        out[i] = static_cast<const float*>(p)[i];
      } else {
        const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
        std::memcpy(&out[i], &bits, 4);
      }
    }
  return true;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  *h = reinterpret_cast<cublasHandle_t>(new Handle);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete reinterpret_cast<Handle*>(h);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  return phi3emu::stream_live(s) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t) {
  return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
  }
}
const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    default: return "an internal operation failed";
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) ||
      (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
    return CUBLAS_STATUS_INVALID_VALUE;
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  const bool f32 = Atype == CUDA_R_32F && Btype == CUDA_R_32F;
  const bool bf16 = Atype == CUDA_R_16BF && Btype == CUDA_R_16BF;
  if (!(f32 || bf16) || Ctype != CUDA_R_32F ||
      (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  std::vector<float> a, b;
  if (!load(a, A, Atype, a_rows, a_cols, lda) || !load(b, B, Btype, b_rows, b_cols, ldb) ||
      !phi3emu::is_device_range(C, (static_cast<size_t>(n - 1) * ldc + m) * 4))
    return CUBLAS_STATUS_INVALID_VALUE;  // a real GPU would fault on a host pointer
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  cblas_sgemm(CblasColMajor, transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
              transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, al, a.data(), lda,
              b.data(), ldb, be, static_cast<float*>(C), ldc);
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
