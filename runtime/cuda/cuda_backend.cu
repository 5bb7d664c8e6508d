// CudaBackend: the Backend of runtime/backend.h on one CUDA device. It owns a non-blocking
// stream (every op, copy and memset is queued on it) and, through the cache of
// kernels/cuda/context.cu, the cuBLAS handle bound to that stream. Weights are stored in
// bf16 by default (fp32 residual stream and accumulation), in fp32 in fp32 mode (for
// near-bitwise checks against the CPU backend).
//
// Uploads go through a ring of pinned host blocks: the caller's bytes are copied into a
// block and the DMA is queued asynchronously (the block's event guards its reuse), so a
// small upload (indices, segments) costs no stream synchronisation, and a large one
// (weights) streams at pinned-memory speed with the host copy of block k+1 overlapping the
// DMA of block k. Downloads synchronise (the caller reads the bytes at once).
// The current device is remembered per thread: ops issue no cudaSetDevice unless the
// thread last worked on another device.
#include <cstdio>
#include <cstring>
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

// The device this thread last selected through a CudaBackend (-1: none yet).
thread_local int t_device = -1;

// Pinned staging blocks for host-to-device copies, used in turn; each block's event marks
// the end of the DMA that last read it.
class StagingRing {
 public:
  static constexpr size_t kBlock = size_t(4) << 20;
  static constexpr int kBlocks = 4;
  ~StagingRing() {
    for (auto& b : blocks_) {
      if (b.event) {
        cudaEventSynchronize(b.event);
        cudaEventDestroy(b.event);
      }
      if (b.host) cudaFreeHost(b.host);
    }
    (void)cudaGetLastError();
  }
  // Copies `bytes` of src to dst on `stream` through the ring; returns without waiting.
  void upload(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    auto* d = static_cast<uint8_t*>(dst);
    const auto* h = static_cast<const uint8_t*>(src);
    for (size_t off = 0; off < bytes; off += kBlock) {
      const size_t n = bytes - off < kBlock ? bytes - off : kBlock;
      Block& b = blocks_[next_];
      next_ = (next_ + 1) % kBlocks;
      if (!b.host) {
        CUDA_CHECK(cudaHostAlloc(&b.host, kBlock, cudaHostAllocDefault));
        CUDA_CHECK(cudaEventCreateWithFlags(&b.event, cudaEventDisableTiming));
      } else {
        CUDA_CHECK(cudaEventSynchronize(b.event));  // the block's previous DMA is done
      }
      std::memcpy(b.host, h + off, n);
      CUDA_CHECK(cudaMemcpyAsync(d + off, b.host, n, cudaMemcpyHostToDevice, stream));
      CUDA_CHECK(cudaEventRecord(b.event, stream));
    }
  }

 private:
  struct Block {
    void* host = nullptr;
    cudaEvent_t event = nullptr;
  };
  Block blocks_[kBlocks];
  int next_ = 0;
};

std::string mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, bool fp32) : device_(device), fp32_(fp32) {
    CUDA_CHECK(cudaSetDevice(device_));
    t_device = device_;
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    device_name_ = prop.name;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    cuda::blas_handle(stream_);  // create the handle now: fail early, not in the first GEMM
    // Keep freed blocks in the pool instead of returning them at every synchronisation; when
    // an allocation finds the device full, the pool is trimmed and the request retried
    // (cuda::malloc_async_or_trim).
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
    uint64_t threshold = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  }
  ~CudaBackend() override {
    cudaSetDevice(device_);
    t_device = device_;
    cudaStreamSynchronize(stream_);
    staging_.reset();
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
    // Stream-ordered: no device-wide synchronisation, so forks on other streams overlap. When
    // the device is full the pool's kept blocks are given back and the request tried again.
    const cudaError_t e = cuda::malloc_async_or_trim(&p, bytes, stream_);
    if (e == cudaErrorMemoryAllocation)
      throw OutOfMemory("CUDA out of memory: asked for " + mib(bytes) + " MiB with " + cuda::device_memory_note() +
                        " on " + device_name_ + " (after trimming the pool); lower --mem-budget or --batch");
    CUDA_CHECK(e);
    return p;
  }
  // Never throws (DeviceArray frees from destructors); a failure here means the context is
  // already broken, and the next checked call reports it.
  void free(void* p) override {
    if (!p) return;
    if (t_device != device_ && cudaSetDevice(device_) == cudaSuccess) t_device = device_;
    cudaFreeAsync(p, stream_);  // after the work already queued on this stream
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    select();
    if (!staging_) staging_ = std::make_unique<StagingRing>();
    staging_->upload(dst, src, bytes, stream_);  // src is copied before this returns
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
  // What the device can really give: the pool's unused blocks are given back first (after
  // waiting for the device), so that none is counted as free while it could be a fragment
  // too small for the request; then cudaMemGetInfo's free bytes. Called before a plan or a
  // sweep, not per op: the wait and the pool's refill are cheap there.
  bool tracks_allocations() const override { return true; }
  size_t allocated_bytes() const override { return pool_attribute(cudaMemPoolAttrUsedMemCurrent); }
  size_t peak_allocated_bytes() const override { return pool_attribute(cudaMemPoolAttrUsedMemHigh); }
  void reset_peak_allocated() override {
    select();
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
    uint64_t zero = 0;  // the high-water mark can only be reset to zero; it then follows the use
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  }
  size_t free_memory() const override {
    select();
    cuda::trim_pool();
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return free_b;
  }

  // ---- ops ----
  void moe_route_forward(int32_t* ids, float* gates, const float* logits, int N, int E, int k, bool renorm) override {
    select();
    cuda::moe_route_forward(ids, gates, logits, N, E, k, renorm, stream_);
  }
  void moe_route_backward(float* dlogits, const float* dgates, const float* logits, const int32_t* ids, int N, int E,
                          int k, bool renorm) override {
    select();
    cuda::moe_route_backward(dlogits, dgates, logits, ids, N, E, k, renorm, stream_);
  }
  void moe_combine_forward(float* out, const float* y, const int32_t* slot, const float* gates, int N, int k,
                           int D) override {
    select();
    cuda::moe_combine_forward(out, y, slot, gates, N, k, D, stream_);
  }
  void moe_combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* slot,
                            const float* gates, int N, int k, int D) override {
    select();
    cuda::moe_combine_backward(dy, dgates, dout, y, slot, gates, N, k, D, stream_);
  }
  void moe_sparsemixer_forward(int32_t* ids, float* gates, const float* logits, int N, int E, float eps) override {
    select();
    cuda::moe_sparsemixer_forward(ids, gates, logits, N, E, eps, stream_);
  }
  void moe_sparsemixer_backward(float* dlogits, const float* dgates, const float* logits, int N, int E,
                                float eps) override {
    select();
    cuda::moe_sparsemixer_backward(dlogits, dgates, logits, N, E, eps, stream_);
  }
  void softcap_forward(float* x, int64_t n, float cap) override {
    select();
    cuda::softcap_forward(x, n, cap, stream_);
  }
  void softcap_backward(float* dx, const float* y, int64_t n, float cap) override {
    select();
    cuda::softcap_backward(dx, y, n, cap, stream_);
  }
  void embedding_forward(float* out, const int32_t* ids, const Weight& table, int N, float scale = 1.0f) override {
    select();
    cuda::embedding_forward(out, ids, table, N, stream_, scale);
  }
  void rmsnorm_forward(GemmOut out, float* rstd, const float* x, const float* w, int N, int D,
                       float eps, bool center = false, const float* bias = nullptr) override {
    select();
    cuda::rmsnorm_forward(out, rstd, x, w, N, D, eps, stream_, center, bias);
  }
  void add_rmsnorm_forward(float* sum, GemmOut out, float* rstd, const float* a, const float* b,
                           const float* w, int N, int D, float eps, bool center = false,
                           const float* bias = nullptr) override {
    select();
    cuda::add_rmsnorm_forward(sum, out, rstd, a, b, w, N, D, eps, stream_, center, bias);
  }
  void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* w,
                        const float* rstd, int N, int D, bool center = false) override {
    select();
    cuda::rmsnorm_backward(dx, dout, x, w, rstd, N, D, stream_, center);
  }
  void linear_forward(float* y, GemmIn x, const Weight& W, int N, bool accumulate) override {
    select();
    cuda::linear_forward(y, x, W, N, accumulate, stream_);
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
  void rotary_qkv_forward(float* q, float* k, float* v, const float* qkv, const int32_t* pos, int N,
                          int H, int KVH, int HD, const RopeParams& rope) override {
    select();
    cuda::rotary_qkv_forward(q, k, v, qkv, pos, N, H, KVH, HD, rope, stream_);
  }
  void attention_forward(const AttnParams& p) override {
    select();
    cuda::attention_forward(p, stream_);
  }
  void attention_backward(const AttnBackwardParams& p) override {
    select();
    cuda::attention_backward(p, stream_);
  }
  void swiglu_forward(GemmOut out, const float* gu, int N, int F, MlpAct act = MlpAct::Silu) override {
    select();
    cuda::swiglu_forward(out, gu, N, F, stream_, act);
  }
  void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F,
                       MlpAct act = MlpAct::Silu) override {
    select();
    cuda::swiglu_backward(dgu, dout, gu, N, F, stream_, act);
  }
  void add(float* out, const float* a, const float* b, int64_t n) override {
    select();
    cuda::add(out, a, b, n, stream_);
  }
  void sub(float* out, const float* a, const float* b, int64_t n) override {
    select();
    cuda::sub(out, a, b, n, stream_);
  }
  void copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src,
                 int64_t src_stride, const int32_t* src_idx, int n, int width) override {
    select();
    cuda::copy_rows(dst, dst_stride, dst_idx, src, src_stride, src_idx, n, width, stream_);
  }
  void flag_nonfinite(const NonfiniteBatch& b) override {
    select();
    cuda::flag_nonfinite(b, stream_);
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
  void metric_forward(float* out, const float* logits, const MetricParams& p) override {
    select();
    cuda::metric_forward(out, logits, p, stream_);
  }
  void metric_backward(float* dlogits, int64_t dstride, const float* logits, const MetricParams& p,
                       float scale) override {
    select();
    cuda::metric_backward(dlogits, dstride, logits, p, scale, stream_);
  }
  void attribution_reduce(float* out, const float* const* a, const float* const* c,
                          const float* const* grad, int L, int B, int T, int G, int W,
                          int64_t stride) override {
    select();
    cuda::attribution_reduce(out, a, c, grad, L, B, T, G, W, stride, stream_);
  }
  void attn_qk_fix(const QkFixParams& p) override {
    select();
    cuda::attn_qk_fix(p, stream_);
  }
  void attn_apply_pattern(const ApplyPatternParams& p) override {
    select();
    cuda::attn_apply_pattern(p, stream_);
  }
  void rows_equal(uint8_t* eq, const float* a, const float* c, int B, int T, int G, int W,
                  int64_t stride) override {
    select();
    cuda::rows_equal(eq, a, c, B, T, G, W, stride, stream_);
  }

 private:
  // Ops may be issued from a thread whose current device differs.
  // A counter of the device's default pool (every alloc and the kernels' scratch).
  size_t pool_attribute(cudaMemPoolAttr attr) const {
    select();
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
    uint64_t v = 0;
    CUDA_CHECK(cudaMemPoolGetAttribute(pool, attr, &v));
    return static_cast<size_t>(v);
  }
  void select() const {
    if (t_device != device_) {
      CUDA_CHECK(cudaSetDevice(device_));
      t_device = device_;
    }
  }

  int device_ = 0;
  bool fp32_ = false;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<StagingRing> staging_;
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
