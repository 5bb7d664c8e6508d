// CudaBackend: the Backend of runtime/backend.h on one CUDA device. It owns a non-blocking
// stream (every op, copy and memset is queued on it) and, through the per-thread cache of
// kernels/cuda/context.cu, the cuBLAS handle bound to that stream. Weights are stored in
// bf16 by default (fp32 residual stream and accumulation), in fp32 in fp32 mode (for
// near-bitwise checks against the CPU backend).
#include <cstdio>
#include <memory>
#include <string>

// phi3cuda is compiled apart from phi3core (which defines PHI3_WITH_CUDA for its users);
// the entry points below are declared under that macro.
#ifndef PHI3_WITH_CUDA
#define PHI3_WITH_CUDA 1
#endif
#include "kernels/cuda/common.cuh"
#include "runtime/cuda_backend.h"

namespace phi3 {
namespace {

std::string mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, bool fp32) : device_(device), fp32_(fp32) {
    CUDA_CHECK(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    device_name_ = prop.name;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    cuda::blas_handle(stream_);  // create the handle now: fail early, not in the first GEMM
    // Keep freed blocks in the pool instead of returning them at every synchronisation.
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
    uint64_t threshold = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  }
  ~CudaBackend() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    cuda::release_stream_resources(stream_);
    cudaStreamDestroy(stream_);
    (void)cudaGetLastError();
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  DeviceKind kind() const override { return DeviceKind::CUDA; }
  std::string name() const override {
    return "cuda (" + device_name_ + ", " + (fp32_ ? "fp32" : "bf16") + ")";
  }
  DType weight_dtype() const override { return fp32_ ? DType::F32 : DType::BF16; }
  // Same device, own stream and cuBLAS handle; device memory is shared by all of them.
  std::unique_ptr<Backend> fork() override { return std::make_unique<CudaBackend>(device_, fp32_); }
  int preferred_streams() const override { return 2; }

  // ---- memory ----
  void* alloc(size_t bytes) override {
    if (bytes == 0) return nullptr;
    select();
    void* p = nullptr;
    // Stream-ordered: no device-wide synchronisation, so forks on other streams overlap.
    cudaError_t e = cudaMallocAsync(&p, bytes, stream_);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      throw OutOfMemory("CUDA out of memory: asked for " + mib(bytes) + " MiB with " +
                        mib(free_b) + " MiB free on " + device_name_ +
                        "; lower --mem-budget or --batch");
    }
    CUDA_CHECK(e);
    return p;
  }
  // Never throws (DeviceArray frees from destructors); a failure here means the context is
  // already broken, and the next checked call reports it.
  void free(void* p) override {
    if (!p) return;
    cudaSetDevice(device_);
    cudaFreeAsync(p, stream_);  // after the work already queued on this stream
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    select();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // the caller may reuse `src` at once
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    select();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    select();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  void zero(void* dst, size_t bytes) override {
    if (bytes == 0) return;
    select();
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
  }
  void synchronize() override {
    select();
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  size_t free_memory() const override {
    CUDA_CHECK(cudaSetDevice(device_));
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    // Blocks the stream-ordered pool holds but nobody uses are free for us too.
    cudaMemPool_t pool;
    uint64_t reserved = 0, used = 0;
    if (cudaDeviceGetDefaultMemPool(&pool, device_) == cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess && reserved > used)
      free_b += static_cast<size_t>(reserved - used);
    (void)cudaGetLastError();
    return free_b;
  }

  // ---- ops ----
  void embedding_forward(float* out, const int32_t* ids, const Weight& table, int N) override {
    select();
    cuda::embedding_forward(out, ids, table, N, stream_);
  }
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int D,
                       float eps) override {
    select();
    cuda::rmsnorm_forward(out, rstd, x, w, N, D, eps, stream_);
  }
  void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* w,
                        const float* rstd, int N, int D) override {
    select();
    cuda::rmsnorm_backward(dx, dout, x, w, rstd, N, D, stream_);
  }
  void linear_forward(float* y, const float* x, const Weight& W, int N) override {
    select();
    cuda::linear_forward(y, x, W, N, stream_);
  }
  void linear_backward(float* dx, const float* dy, const Weight& W, int N,
                       bool accumulate) override {
    select();
    cuda::linear_backward(dx, dy, W, N, accumulate, stream_);
  }
  void rotary_forward(float* out, int64_t out_stride, const float* in, int64_t in_stride,
                      const int32_t* pos, int N, int n_heads, int HD,
                      const RopeParams& rope) override {
    select();
    cuda::rotary_forward(out, out_stride, in, in_stride, pos, N, n_heads, HD, rope, stream_);
  }
  void rotary_backward(float* din, int64_t din_stride, const float* dout, int64_t dout_stride,
                       const int32_t* pos, int N, int n_heads, int HD,
                       const RopeParams& rope) override {
    select();
    cuda::rotary_backward(din, din_stride, dout, dout_stride, pos, N, n_heads, HD, rope,
                          stream_);
  }
  void attention_forward(const AttnParams& p) override {
    select();
    cuda::attention_forward(p, stream_);
  }
  void attention_backward(const AttnBackwardParams& p) override {
    select();
    cuda::attention_backward(p, stream_);
  }
  void swiglu_forward(float* out, const float* gu, int N, int F) override {
    select();
    cuda::swiglu_forward(out, gu, N, F, stream_);
  }
  void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F) override {
    select();
    cuda::swiglu_backward(dgu, dout, gu, N, F, stream_);
  }
  void add(float* out, const float* a, const float* b, int64_t n) override {
    select();
    cuda::add(out, a, b, n, stream_);
  }
  void copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src,
                 int64_t src_stride, const int32_t* src_idx, int n, int width) override {
    select();
    cuda::copy_rows(dst, dst_stride, dst_idx, src, src_stride, src_idx, n, width, stream_);
  }
  void logit_diff_forward(float* ld, const float* logits, int64_t stride, const int32_t* ans,
                          const int32_t* other, int B) override {
    select();
    cuda::logit_diff_forward(ld, logits, stride, ans, other, B, stream_);
  }
  void logit_diff_backward(float* dlogits, int64_t stride, const int32_t* ans,
                           const int32_t* other, float scale, int B, int V) override {
    select();
    cuda::logit_diff_backward(dlogits, stride, ans, other, scale, B, V, stream_);
  }
  void attribution_reduce(float* out, const float* a, const float* c, const float* grad, int B,
                          int T, int G, int W) override {
    select();
    cuda::attribution_reduce(out, a, c, grad, B, T, G, W, stream_);
  }

 private:
  // Ops may be issued from a thread whose current device differs.
  void select() const { CUDA_CHECK(cudaSetDevice(device_)); }

  int device_ = 0;
  bool fp32_ = false;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(bool fp32, int device) {
  const int n = cuda_device_count();
  if (n <= 0) throw Error("no CUDA GPU visible (check the driver and CUDA_VISIBLE_DEVICES)");
  int dev = 0;
  if (device >= 0) dev = device % n;
  else CUDA_CHECK(cudaGetDevice(&dev));
  return std::make_unique<CudaBackend>(dev, fp32);
}

}  // namespace phi3
