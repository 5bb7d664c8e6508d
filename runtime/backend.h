// The one dispatch point between the model/patching code and a device. A Backend owns
// device memory and runs the ops of kernels/ops.h on its device; CpuBackend is the fp32
// reference, CudaBackend (runtime/cuda/) runs our kernels + cuBLAS. Model and patching code
// hold only device pointers obtained here and never branch on the device.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace phi3 {

enum class DeviceKind { CPU, CUDA };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;       // e.g. "cpu (openblas, 2 threads)"
  virtual DType weight_dtype() const = 0;      // dtype weights are stored in on this device

  // ---- memory (device pointers; CPU: host memory) ----
  virtual void* alloc(size_t bytes) = 0;       // throws OutOfMemory naming the size
  virtual void free(void* p) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // device to device
  virtual void zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() = 0;
  virtual size_t free_memory() const = 0;      // bytes the device can still give
  // Device bytes this process has in use through the backend now, and the most in use since
  // reset_peak_allocated() (CUDA: the stream-ordered pool's counters, the kernels' scratch
  // included; 0 where the backend does not track them: tracks_allocations() is false).
  virtual bool tracks_allocations() const { return false; }
  virtual size_t allocated_bytes() const { return 0; }
  virtual size_t peak_allocated_bytes() const { return 0; }
  virtual void reset_peak_allocated() {}
  // Another backend on the same device with its own stream, sharing device memory (so
  // pointers from this one stay valid there), for overlapping independent work; nullptr
  // when the device gains nothing from it (the CPU: its ops are already threaded).
  virtual std::unique_ptr<Backend> fork() { return nullptr; }
  virtual int preferred_streams() const { return 1; }
  // Up to n backends for overlapping work: this one first, then forks made on the first
  // call and kept for this backend's lifetime, so their streams (and the cuBLAS handles and
  // scratch bound to them) serve every later sweep. Fewer than n when fork() gives none.
  // Not thread-safe: call it from the thread that owns this backend.
  std::vector<Backend*> lanes(int n);

  // ---- ops (see kernels/ops.h for shapes and semantics) ----
  // out = table[ids] * scale (Gemma multiplies its embeddings by sqrt(D)).
  virtual void embedding_forward(float* out, const int32_t* ids, const Weight& table, int N, float scale = 1.0f) = 0;
  // Soft-capping in place, x = c tanh(x / c), and its backward dx *= 1 - (y / c)^2 (y capped).
  virtual void softcap_forward(float* x, int64_t n, float cap) = 0;
  virtual void softcap_backward(float* dx, const float* y, int64_t n, float cap) = 0;
  // The norm op: RMSNorm, or LayerNorm with center (the mean subtracted, + bias; GPT-2).
  virtual void rmsnorm_forward(GemmOut out, float* rstd, const float* x, const float* w, int N,
                               int D, float eps, bool center = false, const float* bias = nullptr) = 0;
  virtual void add_rmsnorm_forward(float* sum, GemmOut out, float* rstd, const float* a,
                                   const float* b, const float* w, int N, int D, float eps,
                                   bool center = false, const float* bias = nullptr) = 0;
  virtual void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* w,
                                const float* rstd, int N, int D, bool center = false) = 0;
  virtual void linear_forward(float* y, GemmIn x, const Weight& W, int N, bool accumulate) = 0;
  virtual void linear_backward(float* dx, const float* dy, const Weight& W, int N,
                               bool accumulate) = 0;
  virtual void rotary_forward(float* out, int64_t out_stride, const float* in, int64_t in_stride,
                              const int32_t* pos, int N, int n_heads, int HD,
                              const RopeParams& rope) = 0;
  virtual void rotary_backward(float* din, int64_t din_stride, const float* dout,
                               int64_t dout_stride, const int32_t* pos, int N, int n_heads,
                               int HD, const RopeParams& rope) = 0;
  virtual void rotary_qkv_forward(float* q, float* k, float* v, const float* qkv, const int32_t* pos,
                                  int N, int H, int KVH, int HD, const RopeParams& rope) = 0;
  virtual void attention_forward(const AttnParams& p) = 0;
  virtual void attention_backward(const AttnBackwardParams& p) = 0;
  // The gated MLP: out = act(gate) * up (SwiGLU; GeGLU with act = MlpAct::GeluTanh).
  virtual void swiglu_forward(GemmOut out, const float* gu, int N, int F, MlpAct act = MlpAct::Silu) = 0;
  virtual void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F,
                               MlpAct act = MlpAct::Silu) = 0;
  // Mixture of experts (kernels/ops.h): the router's softmax + top-k (+ renormalisation) and its
  // backward with the selection fixed; the gate-weighted combine of the experts' outputs.
  virtual void moe_route_forward(int32_t* ids, float* gates, const float* logits, int N, int E, int k, bool renorm) = 0;
  virtual void moe_route_backward(float* dlogits, const float* dgates, const float* logits, const int32_t* ids, int N,
                                  int E, int k, bool renorm) = 0;
  virtual void moe_combine_forward(float* out, const float* y, const int32_t* slot, const float* gates, int N, int k,
                                   int D) = 0;
  virtual void moe_combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* slot,
                                    const float* gates, int N, int k, int D) = 0;
  // PhiMoE's sparsemixer router (top 2) and its backward with the choice fixed (no model uses it yet).
  virtual void moe_sparsemixer_forward(int32_t* ids, float* gates, const float* logits, int N, int E, float eps) = 0;
  virtual void moe_sparsemixer_backward(float* dlogits, const float* dgates, const float* logits, int N, int E,
                                        float eps) = 0;
  virtual void add(float* out, const float* a, const float* b, int64_t n) = 0;
  virtual void sub(float* out, const float* a, const float* b, int64_t n) = 0;
  virtual void copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src,
                         int64_t src_stride, const int32_t* src_idx, int n, int width) = 0;
  // Raises each flag (device, zeroed first) whose tensor holds a NaN/Inf: the first one's index
  // and value (kernels/finite_flag.h). No host synchronisation; see model/finite_check.h.
  virtual void flag_nonfinite(const NonfiniteBatch& b) = 0;
  virtual void logit_diff_forward(float* ld, const float* logits, int64_t stride,
                                  const int32_t* ans, const int32_t* other, int B) = 0;
  virtual void logit_diff_backward(float* dlogits, int64_t stride, const int32_t* ans,
                                   const int32_t* other, float scale, int B, int V) = 0;
  // Any metric of logit rows (MetricParams) and its gradient w.r.t. the logits, scaled.
  virtual void metric_forward(float* out, const float* logits, const MetricParams& p) = 0;
  virtual void metric_backward(float* dlogits, int64_t dstride, const float* logits, const MetricParams& p,
                               float scale) = 0;
  virtual void attribution_reduce(float* out, const float* const* a, const float* const* c,
                                  const float* const* grad, int L, int B, int T, int G, int W,
                                  int64_t stride) = 0;
  virtual void rows_equal(uint8_t* eq, const float* a, const float* c, int B, int T, int G,
                          int W, int64_t stride) = 0;
  virtual void attn_qk_fix(const QkFixParams& p) = 0;
  virtual void attn_apply_pattern(const ApplyPatternParams& p) = 0;
  // Whether GEMM inputs should be produced in bf16 (GemmOut::bf16) rather than fp32: the
  // weights are bf16, so the GEMMs read bf16 activations.
  bool gemm_in_bf16() const { return weight_dtype() == DType::BF16; }

 private:
  std::vector<std::unique_ptr<Backend>> lanes_;
};

// Creates the backend for "cpu", "cuda" or "auto" (CUDA when a GPU is visible and the
// binary was built with it, else CPU). `fp32` selects fp32 weights on CUDA (bf16 otherwise).
std::unique_ptr<Backend> make_backend(const std::string& device, bool fp32 = false);
std::unique_ptr<Backend> make_cpu_backend();
bool cuda_available();  // built with CUDA and at least one GPU visible

// RAII device allocation of `count` elements of T, or a borrowed slice of an Arena
// (runtime/arena.h) that the arena frees.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  static DeviceArray borrowed(Backend& be, T* ptr, size_t count) {
    DeviceArray a;
    a.be_ = &be;
    a.ptr_ = ptr;
    a.count_ = count;
    a.owned_ = false;
    return a;
  }
  DeviceArray(Backend& be, size_t count)
      : be_(&be), count_(count), ptr_(count ? static_cast<T*>(be.alloc(count * sizeof(T))) : nullptr) {}
  ~DeviceArray() { reset(); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept { *this = std::move(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_; ptr_ = o.ptr_; count_ = o.count_; owned_ = o.owned_;
      o.ptr_ = nullptr; o.count_ = 0;
    }
    return *this;
  }
  void reset() {
    if (ptr_ && be_ && owned_) be_->free(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  void upload(const std::vector<T>& v) {
    if (!v.empty()) be_->upload(ptr_, v.data(), v.size() * sizeof(T));
  }
  std::vector<T> download() const {
    std::vector<T> v(count_);
    if (count_) be_->download(v.data(), ptr_, count_ * sizeof(T));
    return v;
  }

 private:
  Backend* be_ = nullptr;
  size_t count_ = 0;
  T* ptr_ = nullptr;
  bool owned_ = true;
};

template <typename T>
DeviceArray<T> to_device(Backend& be, const std::vector<T>& v) {
  DeviceArray<T> a(be, v.size());
  a.upload(v);
  return a;
}

}  // namespace phi3
