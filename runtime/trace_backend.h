// A Backend that tallies what every op call costs (kernels/cuda/op_costs.h: bytes, FLOPs,
// launches) per op, for the roofline. Wrapping a real backend it forwards every call (the
// results are real, the tally is what the CUDA kernels would move); with no inner backend
// it computes nothing: memory is address space only, uploads keep host copies of small
// buffers (the attention op reads its segments and pads from them), downloads return bytes
// that differ per buffer (so no patch looks like a no-op). That walks the model and patching
// code's exact op sequence for a workload without weights or a GPU (`bench --predict`).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/op_costs.h"
#include "kernels/scratch.h"
#include "runtime/backend.h"

namespace phi3 {

struct OpTally {
  int64_t calls = 0;
  cost::OpCost cost;
  double host_bytes = 0;  // uploads and downloads (host link)
  int64_t transfers = 0;
};

struct Trace {
  std::map<std::string, OpTally> ops;
  void add(const std::string& op, const cost::OpCost& c) {
    auto& t = ops[op];
    ++t.calls;
    t.cost += c;
  }
  OpTally total() const;
  // The roofline's time for everything tallied on device d (ops serialized on one stream).
  double seconds(const cost::DeviceFigures& d) const;
  // The same with a measured bandwidth and bf16 / fp32 GEMM peak instead of d's.
  double seconds(double hbm_GBps, double gemm_tflops, const cost::DeviceFigures& d) const;
};

class TraceBackend : public Backend {
 public:
  // inner: the backend that computes (nullptr: nothing is computed). Without inner the
  // backend reports `kind`, `weight_dtype` and `memory` bytes of device memory.
  TraceBackend(Backend* inner, Trace& trace, DeviceKind kind = DeviceKind::CUDA, DType weight_dtype = DType::BF16,
               size_t memory = 0, std::string name = "");
  ~TraceBackend() override;

  DeviceKind kind() const override { return inner_ ? inner_->kind() : kind_; }
  std::string name() const override { return inner_ ? inner_->name() : name_; }
  DType weight_dtype() const override { return inner_ ? inner_->weight_dtype() : dtype_; }
  void* alloc(size_t bytes) override;
  void free(void* p) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void zero(void* dst, size_t bytes) override;
  void synchronize() override;
  size_t free_memory() const override;
  bool tracks_allocations() const override { return inner_ && inner_->tracks_allocations(); }
  size_t allocated_bytes() const override { return inner_ ? inner_->allocated_bytes() : 0; }
  size_t peak_allocated_bytes() const override { return inner_ ? inner_->peak_allocated_bytes() : 0; }
  void reset_peak_allocated() override {
    if (inner_) inner_->reset_peak_allocated();
  }
  int preferred_streams() const override { return inner_ ? inner_->preferred_streams() : 1; }

  // Device bytes held through this backend now, and the most held at once since the last
  // reset_peak() (with or without an inner backend): the memory a workload's exact
  // allocation sequence needs. On a CUDA backend that includes the scratch the kernels take
  // for themselves (kernels/scratch.h: the bf16 casts of bf16-weight GEMM inputs, attention
  // backward's row terms, the QK fix's key terms), grown per slot by the rule the kernels'
  // cache follows (one stream: this backend's) and held from first use on.
  size_t used_bytes() const { return used_; }
  size_t peak_bytes() const { return peak_; }
  void reset_peak() { peak_ = used_; }
  size_t scratch_bytes() const;  // the scratch held now (included in used_bytes())
  // Without an inner backend: the device memory allocations may use (0: unlimited).
  void set_memory(size_t bytes) { memory_ = bytes; }

  void embedding_forward(float* out, const int32_t* ids, const Weight& table, int N, float scale = 1.0f) override;
  void moe_route_forward(int32_t* ids, float* gates, const float* logits, int N, int E, int k, bool renorm) override;
  void moe_route_backward(float* dlogits, const float* dgates, const float* logits, const int32_t* ids, int N, int E,
                          int k, bool renorm) override;
  void moe_combine_forward(float* out, const float* y, const int32_t* slot, const float* gates, int N, int k,
                           int D) override;
  void moe_combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* slot,
                            const float* gates, int N, int k, int D) override;
  void moe_sparsemixer_forward(int32_t* ids, float* gates, const float* logits, int N, int E, float eps) override;
  void moe_sparsemixer_backward(float* dlogits, const float* dgates, const float* logits, int N, int E,
                                float eps) override;
  void softcap_forward(float* x, int64_t n, float cap) override;
  void softcap_backward(float* dx, const float* y, int64_t n, float cap) override;
  void rmsnorm_forward(GemmOut out, float* rstd, const float* x, const float* w, int N, int D, float eps,
                       bool center = false, const float* bias = nullptr) override;
  void add_rmsnorm_forward(float* sum, GemmOut out, float* rstd, const float* a, const float* b, const float* w, int N,
                           int D, float eps, bool center = false, const float* bias = nullptr) override;
  void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* w, const float* rstd, int N,
                        int D, bool center = false) override;
  void linear_forward(float* y, GemmIn x, const Weight& W, int N, bool accumulate) override;
  void linear_backward(float* dx, const float* dy, const Weight& W, int N, bool accumulate) override;
  void rotary_forward(float* out, int64_t out_stride, const float* in, int64_t in_stride, const int32_t* pos, int N,
                      int n_heads, int HD, const RopeParams& rope) override;
  void rotary_backward(float* din, int64_t din_stride, const float* dout, int64_t dout_stride, const int32_t* pos,
                       int N, int n_heads, int HD, const RopeParams& rope) override;
  void rotary_qkv_forward(float* q, float* k, float* v, const float* qkv, const int32_t* pos, int N, int H, int KVH,
                          int HD, const RopeParams& rope) override;
  void attention_forward(const AttnParams& p) override;
  void attention_backward(const AttnBackwardParams& p) override;
  void swiglu_forward(GemmOut out, const float* gu, int N, int F, MlpAct act = MlpAct::Silu) override;
  void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F,
                       MlpAct act = MlpAct::Silu) override;
  void add(float* out, const float* a, const float* b, int64_t n) override;
  void sub(float* out, const float* a, const float* b, int64_t n) override;
  void copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src, int64_t src_stride,
                 const int32_t* src_idx, int n, int width) override;
  void flag_nonfinite(const NonfiniteBatch& b) override;
  void logit_diff_forward(float* ld, const float* logits, int64_t stride, const int32_t* ans, const int32_t* other,
                          int B) override;
  void logit_diff_backward(float* dlogits, int64_t stride, const int32_t* ans, const int32_t* other, float scale,
                           int B, int V) override;
  void metric_forward(float* out, const float* logits, const MetricParams& p) override;
  void metric_backward(float* dlogits, int64_t dstride, const float* logits, const MetricParams& p,
                       float scale) override;
  void attribution_reduce(float* out, const float* const* a, const float* const* c, const float* const* grad, int L,
                          int B, int T, int G, int W, int64_t stride) override;
  void rows_equal(uint8_t* eq, const float* a, const float* c, int B, int T, int G, int W, int64_t stride) override;
  void attn_qk_fix(const QkFixParams& p) override;
  void attn_apply_pattern(const ApplyPatternParams& p) override;

 private:
  cost::AttnShape attn_shape(const AttnParams& p) const;
  // Downloads of [p, p + n) read back as zeros (no inner backend computed it).
  void read_back_zero(const void* p, size_t n);
  template <typename T>
  std::vector<T> host_copy(const void* p, size_t count) const;
  // An op's scratch need: grows the slot as kernels/cuda/context.cu does (CUDA only).
  void take_scratch(ScratchSlot slot, size_t bytes);

  Backend* inner_;
  Trace& trace_;
  DeviceKind kind_;
  DType dtype_;
  size_t memory_, used_ = 0, peak_ = 0;
  size_t scratch_cap_[kScratchSlots] = {};
  std::string name_;
  uintptr_t next_ = 1 << 20;                          // fake address space (no inner)
  std::map<const void*, size_t> sizes_;               // live allocations' sizes
  std::map<const void*, std::vector<uint8_t>> mirror_;  // small uploads, by device pointer
  std::map<const void*, size_t> zero_regions_;        // rows_equal masks, NaN flags (no inner): read back as 0
};

}  // namespace phi3
