#include "runtime/trace_backend.h"

#include <algorithm>
#include <cstring>
#include <iterator>

#include "runtime/error.h"

namespace phi3 {

OpTally Trace::total() const {
  OpTally t;
  for (const auto& [name, o] : ops) {
    t.calls += o.calls;
    t.cost += o.cost;
    t.host_bytes += o.host_bytes;
    t.transfers += o.transfers;
  }
  return t;
}

double Trace::seconds(const cost::DeviceFigures& d) const { return seconds(d.hbm_GBps, 0, d); }

double Trace::seconds(double hbm_GBps, double gemm_tflops, const cost::DeviceFigures& d) const {
  cost::DeviceFigures f = d;
  f.hbm_GBps = hbm_GBps;
  if (gemm_tflops > 0) f.bf16_tflops = f.f32_gemm_tflops = gemm_tflops;
  double s = 0;
  for (const auto& [name, o] : ops) {
    // Per call, so that a small op is not credited with the bandwidth of a large one.
    cost::OpCost per = o.cost;
    const double n = double(std::max<int64_t>(1, o.calls));
    per.bytes /= n;
    per.gemm_bf16_flops /= n;
    per.gemm_f32_flops /= n;
    per.flops /= n;
    per.launches /= n;
    if (o.cost.launches > 0) s += n * cost::op_seconds(per, f);
    s += o.host_bytes / (f.host_GBps * 1e9) + o.transfers * f.transfer_us * 1e-6;
  }
  return s;
}

TraceBackend::TraceBackend(Backend* inner, Trace& trace, DeviceKind kind, DType weight_dtype, size_t memory,
                           std::string name)
    : inner_(inner), trace_(trace), kind_(kind), dtype_(weight_dtype), memory_(memory), name_(std::move(name)) {}

TraceBackend::~TraceBackend() = default;

void* TraceBackend::alloc(size_t bytes) {
  if (bytes == 0 && !inner_) return nullptr;
  void* p = nullptr;
  if (inner_) {
    p = inner_->alloc(bytes);
  } else {
    if (memory_ && used_ + bytes > memory_)
      throw OutOfMemory("predicted device memory exhausted: asked for " + std::to_string(bytes >> 20) + " MiB with " +
                        std::to_string(free_memory() >> 20) + " MiB free");
    p = reinterpret_cast<void*>(next_);
    next_ += (bytes + 255) / 256 * 256 + 256;
  }
  if (p) {
    used_ += bytes;
    peak_ = std::max(peak_, used_);
    sizes_[p] = bytes;
  }
  return p;
}

void TraceBackend::take_scratch(ScratchSlot slot, size_t bytes) {
  if (kind() != DeviceKind::CUDA || bytes <= scratch_cap_[slot]) return;
  const size_t want = scratch_capacity(bytes);
  used_ -= scratch_cap_[slot];  // the old block is freed before the new one is allocated
  scratch_cap_[slot] = 0;
  if (!inner_ && memory_ && used_ + want > memory_)
    throw OutOfMemory("predicted device memory exhausted: kernel scratch of " + std::to_string(want >> 20) +
                      " MiB with " + std::to_string(free_memory() >> 20) + " MiB free");
  scratch_cap_[slot] = want;
  used_ += want;
  peak_ = std::max(peak_, used_);
}

size_t TraceBackend::scratch_bytes() const {
  size_t n = 0;
  for (size_t c : scratch_cap_) n += c;
  return n;
}

void TraceBackend::free(void* p) {
  mirror_.erase(p);
  zero_regions_.erase(p);
  auto it = sizes_.find(p);
  if (it != sizes_.end()) {
    used_ -= it->second;
    sizes_.erase(it);
  }
  if (inner_) inner_->free(p);
}

void TraceBackend::upload(void* dst, const void* src, size_t bytes) {
  // Queued through pinned staging (CudaBackend::upload): a copy-engine launch on the stream
  // plus the bytes over the host link, no synchronisation.
  auto& t = trace_.ops["upload (host to device, queued)"];
  ++t.calls;
  t.host_bytes += double(bytes);
  t.cost.launches += 1;
  if (bytes <= (1u << 20)) {
    auto& m = mirror_[dst];
    m.assign(static_cast<const uint8_t*>(src), static_cast<const uint8_t*>(src) + bytes);
  }
  if (inner_) inner_->upload(dst, src, bytes);
}

void TraceBackend::download(void* dst, const void* src, size_t bytes) {
  auto& t = trace_.ops["download (device to host)"];
  ++t.calls;
  t.host_bytes += double(bytes);
  ++t.transfers;
  if (inner_) return inner_->download(dst, src, bytes);
  auto z = zero_regions_.upper_bound(src);
  if (z != zero_regions_.begin()) {
    --z;
    const auto* base = static_cast<const uint8_t*>(z->first);
    const auto* p = static_cast<const uint8_t*>(src);
    if (p >= base && p + bytes <= base + z->second) {
      std::memset(dst, 0, bytes);
      return;
    }
  }
  // Bytes that differ between buffers (and are finite floats): no patch is a no-op.
  const uint32_t seed = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(src) >> 8);
  auto* f = static_cast<uint8_t*>(dst);
  for (size_t i = 0; i + 4 <= bytes; i += 4) {
    const float v = 1.0f + float((seed * 2654435761u + uint32_t(i)) % 1000) * 1e-3f;
    std::memcpy(f + i, &v, 4);
  }
}

void TraceBackend::copy(void* dst, const void* src, size_t bytes) {
  trace_.add("copy (device to device)", cost::device_copy(double(bytes)));
  if (inner_) inner_->copy(dst, src, bytes);
}
void TraceBackend::zero(void* dst, size_t bytes) {
  trace_.add("zero", cost::device_zero(double(bytes)));
  if (inner_) inner_->zero(dst, bytes);
}
void TraceBackend::synchronize() {
  if (inner_) inner_->synchronize();
}
size_t TraceBackend::free_memory() const {
  if (inner_) return inner_->free_memory();
  if (memory_ == 0) return size_t(1) << 50;  // unlimited
  return memory_ > used_ ? memory_ - used_ : 0;
}

void TraceBackend::moe_route_forward(int32_t* ids, float* gates, const float* logits, int N, int E, int k,
                                     bool renorm) {
  trace_.add("moe_route_forward", cost::elementwise(int64_t(N) * E, 1, 20));
  if (inner_) inner_->moe_route_forward(ids, gates, logits, N, E, k, renorm);
}
void TraceBackend::moe_route_backward(float* dlogits, const float* dgates, const float* logits, const int32_t* ids,
                                      int N, int E, int k, bool renorm) {
  trace_.add("moe_route_backward", cost::elementwise(int64_t(N) * E, 2, 24));
  if (inner_) inner_->moe_route_backward(dlogits, dgates, logits, ids, N, E, k, renorm);
}
void TraceBackend::moe_combine_forward(float* out, const float* y, const int32_t* slot, const float* gates, int N,
                                       int k, int D) {
  trace_.add("moe_combine_forward", cost::elementwise(int64_t(N) * D, k + 1, 2.0 * k));
  if (inner_) inner_->moe_combine_forward(out, y, slot, gates, N, k, D);
}
void TraceBackend::moe_combine_backward(float* dy, float* dgates, const float* dout, const float* y,
                                        const int32_t* slot, const float* gates, int N, int k, int D) {
  trace_.add("moe_combine_backward", cost::elementwise(int64_t(N) * D * k, 3, 3));
  if (inner_) inner_->moe_combine_backward(dy, dgates, dout, y, slot, gates, N, k, D);
}
void TraceBackend::moe_sparsemixer_forward(int32_t* ids, float* gates, const float* logits, int N, int E, float eps) {
  trace_.add("moe_sparsemixer_forward", cost::elementwise(int64_t(N) * E, 1, 30));
  if (inner_) inner_->moe_sparsemixer_forward(ids, gates, logits, N, E, eps);
}
void TraceBackend::moe_sparsemixer_backward(float* dlogits, const float* dgates, const float* logits, int N, int E,
                                            float eps) {
  trace_.add("moe_sparsemixer_backward", cost::elementwise(int64_t(N) * E, 2, 40));
  if (inner_) inner_->moe_sparsemixer_backward(dlogits, dgates, logits, N, E, eps);
}
void TraceBackend::softcap_forward(float* x, int64_t n, float cap) {
  trace_.add("softcap_forward", cost::elementwise(n, 2, 20));
  if (inner_) inner_->softcap_forward(x, n, cap);
}
void TraceBackend::softcap_backward(float* dx, const float* y, int64_t n, float cap) {
  trace_.add("softcap_backward", cost::elementwise(n, 3, 4));
  if (inner_) inner_->softcap_backward(dx, y, n, cap);
}
void TraceBackend::embedding_forward(float* out, const int32_t* ids, const Weight& table, int N, float scale) {
  trace_.add("embedding", cost::embedding_forward(N, table.cols, table.dtype));
  if (inner_) inner_->embedding_forward(out, ids, table, N, scale);
}
namespace {
double out_bytes(const GemmOut& o) { return (o.f32 ? 4.0 : 0.0) + (o.bf16 ? 2.0 : 0.0); }
}  // namespace

void TraceBackend::rmsnorm_forward(GemmOut out, float* rstd, const float* x, const float* w, int N, int D, float eps,
                                   bool center, const float* bias) {
  trace_.add("rmsnorm_forward", cost::rmsnorm_forward(N, D, out_bytes(out)));
  if (inner_) inner_->rmsnorm_forward(out, rstd, x, w, N, D, eps, center, bias);
}
void TraceBackend::add_rmsnorm_forward(float* sum, GemmOut out, float* rstd, const float* a, const float* b,
                                       const float* w, int N, int D, float eps, bool center, const float* bias) {
  trace_.add("add_rmsnorm_forward (residual add + norm)", cost::rmsnorm_forward(N, D, out_bytes(out), true));
  if (inner_) inner_->add_rmsnorm_forward(sum, out, rstd, a, b, w, N, D, eps, center, bias);
}
void TraceBackend::rmsnorm_backward(float* dx, const float* dout, const float* x, const float* w, const float* rstd,
                                    int N, int D, bool center) {
  trace_.add("rmsnorm_backward", cost::rmsnorm_backward(N, D));
  if (inner_) inner_->rmsnorm_backward(dx, dout, x, w, rstd, N, D, center);
}
void TraceBackend::linear_forward(float* y, GemmIn x, const Weight& W, int N, bool accumulate) {
  const bool pre = W.dtype != DType::F32 && x.bf16;
  trace_.add(W.dtype == DType::F32 ? "linear_forward (GEMM)" : pre ? "linear_forward (GEMM, bf16 input)"
                                                                     : "linear_forward (cast + GEMM)",
             cost::linear_forward(N, W.cols, W.rows, W.dtype, pre, accumulate));
  take_scratch(kScratchCastA, linear_forward_scratch(W, N, x.bf16 != nullptr));
  if (inner_) inner_->linear_forward(y, x, W, N, accumulate);
}
void TraceBackend::linear_backward(float* dx, const float* dy, const Weight& W, int N, bool accumulate) {
  trace_.add("linear_backward (cast + GEMM)", cost::linear_backward(N, W.cols, W.rows, W.dtype, accumulate));
  take_scratch(kScratchCastA, linear_backward_scratch(W, N));
  if (inner_) inner_->linear_backward(dx, dy, W, N, accumulate);
}
void TraceBackend::rotary_forward(float* out, int64_t out_stride, const float* in, int64_t in_stride,
                                  const int32_t* pos, int N, int n_heads, int HD, const RopeParams& rope) {
  trace_.add("rotary_forward", cost::rotary(N, n_heads, HD));
  if (inner_) inner_->rotary_forward(out, out_stride, in, in_stride, pos, N, n_heads, HD, rope);
}
void TraceBackend::rotary_backward(float* din, int64_t din_stride, const float* dout, int64_t dout_stride,
                                   const int32_t* pos, int N, int n_heads, int HD, const RopeParams& rope) {
  trace_.add("rotary_backward", cost::rotary(N, n_heads, HD));
  if (inner_) inner_->rotary_backward(din, din_stride, dout, dout_stride, pos, N, n_heads, HD, rope);
}

template <typename T>
std::vector<T> TraceBackend::host_copy(const void* p, size_t count) const {
  auto it = mirror_.find(p);
  if (it == mirror_.end() || it->second.size() < count * sizeof(T)) return {};
  std::vector<T> v(count);
  std::memcpy(v.data(), it->second.data(), count * sizeof(T));
  return v;
}

cost::AttnShape TraceBackend::attn_shape(const AttnParams& p) const {
  cost::AttnShape a;
  a.H = p.H;
  a.KVH = p.KVH;
  a.HD = p.HD;
  a.T = p.T;
  a.window = p.window;
  a.pattern = p.pattern != nullptr;
  a.cache = p.k_cache != nullptr;
  a.tensor_cores = p.tensor_cores && !p.pattern;  // as kernels/cuda/attention.cu dispatches
  a.segs = host_copy<AttnSegment>(p.segs, size_t(p.n_segs));
  int B = 0;
  for (const auto& s : a.segs) B = std::max(B, s.batch + 1);
  a.pad = host_copy<int32_t>(p.pad, size_t(B));
  if (a.pad.size() != size_t(B)) a.pad.assign(B, 0);  // not uploaded through here: no padding assumed
  if (a.segs.size() != size_t(p.n_segs))
    throw Error("trace: attention segments were not uploaded through the tracing backend");
  return a;
}

void TraceBackend::rotary_qkv_forward(float* q, float* k, float* v, const float* qkv, const int32_t* pos, int N, int H,
                                      int KVH, int HD, const RopeParams& rope) {
  trace_.add("rotary_qkv_forward (split + rotary)", cost::rotary_qkv(N, H, KVH, HD));
  if (inner_) inner_->rotary_qkv_forward(q, k, v, qkv, pos, N, H, KVH, HD, rope);
}

void TraceBackend::attention_forward(const AttnParams& p) {
  cost::AttnShape a = attn_shape(p);
  a.z16 = p.z16 != nullptr;
  trace_.add(p.pattern ? "attention_forward (pattern kept)"
                       : a.tensor_cores ? "attention_forward (tensor cores)" : "attention_forward",
             cost::attention_forward(a));
  if (inner_) inner_->attention_forward(p);
}
void TraceBackend::attention_backward(const AttnBackwardParams& p) {
  cost::AttnShape a = attn_shape(p.fwd);
  a.tensor_cores = p.fwd.tensor_cores && !p.dpattern;
  trace_.add(a.tensor_cores ? "attention_backward (tensor cores)" : "attention_backward", cost::attention_backward(a));
  take_scratch(kScratchAttn, attention_backward_scratch(p.fwd.n_segs, p.fwd.H, p.fwd.T));  // both paths: D_t
  if (inner_) inner_->attention_backward(p);
}
void TraceBackend::swiglu_forward(GemmOut out, const float* gu, int N, int F, MlpAct act) {
  trace_.add("swiglu_forward", cost::swiglu_forward(N, F, out_bytes(out)));
  if (inner_) inner_->swiglu_forward(out, gu, N, F, act);
}
void TraceBackend::swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F, MlpAct act) {
  trace_.add("swiglu_backward", cost::swiglu_backward(N, F));
  if (inner_) inner_->swiglu_backward(dgu, dout, gu, N, F, act);
}
void TraceBackend::add(float* out, const float* a, const float* b, int64_t n) {
  trace_.add("add (residual)", cost::add(n));
  if (inner_) inner_->add(out, a, b, n);
}
void TraceBackend::sub(float* out, const float* a, const float* b, int64_t n) {
  trace_.add("sub (difference)", cost::add(n));
  if (inner_) inner_->sub(out, a, b, n);
}
void TraceBackend::copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src,
                             int64_t src_stride, const int32_t* src_idx, int n, int width) {
  trace_.add("copy_rows (split, gather, scatter)", cost::copy_rows(n, width, dst_idx, src_idx));
  if (inner_) inner_->copy_rows(dst, dst_stride, dst_idx, src, src_stride, src_idx, n, width);
}
void TraceBackend::logit_diff_forward(float* ld, const float* logits, int64_t stride, const int32_t* ans,
                                      const int32_t* other, int B) {
  trace_.add("logit_diff_forward", cost::logit_diff_forward(B));
  if (inner_) inner_->logit_diff_forward(ld, logits, stride, ans, other, B);
}
void TraceBackend::logit_diff_backward(float* dlogits, int64_t stride, const int32_t* ans, const int32_t* other,
                                       float scale, int B, int V) {
  trace_.add("logit_diff_backward", cost::logit_diff_backward(B, V));
  if (inner_) inner_->logit_diff_backward(dlogits, stride, ans, other, scale, B, V);
}
void TraceBackend::metric_forward(float* out, const float* logits, const MetricParams& p) {
  trace_.add("metric_forward", cost::metric_forward(p.B, p.V, static_cast<int>(p.kind)));
  if (inner_) inner_->metric_forward(out, logits, p);
}
void TraceBackend::metric_backward(float* dlogits, int64_t dstride, const float* logits, const MetricParams& p,
                                   float scale) {
  trace_.add("metric_backward", cost::metric_backward(p.B, p.V, static_cast<int>(p.kind)));
  if (inner_) inner_->metric_backward(dlogits, dstride, logits, p, scale);
}
void TraceBackend::attribution_reduce(float* out, const float* const* a, const float* const* c,
                                      const float* const* grad, int L, int B, int T, int G, int W,
                                      int64_t stride) {
  trace_.add("attribution_reduce (all layers)", cost::attribution_reduce(L, B, T, G, W));
  if (inner_) inner_->attribution_reduce(out, a, c, grad, L, B, T, G, W, stride);
}

void TraceBackend::attn_qk_fix(const QkFixParams& p) {
  trace_.add("attn_qk_fix (AtP* QK fix)", cost::attn_qk_fix(p.B, p.T, p.H, p.KVH, p.HD));
  take_scratch(kScratchQkFix, qk_fix_scratch(p.B, p.H, p.T));
  if (inner_) inner_->attn_qk_fix(p);
}

void TraceBackend::attn_apply_pattern(const ApplyPatternParams& p) {
  trace_.add("attn_apply_pattern (z from a given pattern)", cost::attn_apply_pattern(p.B, p.T, p.nh, p.HD));
  if (inner_) inner_->attn_apply_pattern(p);
}

void TraceBackend::rows_equal(uint8_t* eq, const float* a, const float* c, int B, int T, int G, int W,
                              int64_t stride) {
  trace_.add("rows_equal (no-op test)", cost::rows_equal(B, T, G, W));
  if (inner_) return inner_->rows_equal(eq, a, c, B, T, G, W, stride);
  // Nothing computed: the mask reads back as all zero, so no patch is a no-op.
  read_back_zero(eq, size_t(T) * G);
}

void TraceBackend::flag_nonfinite(const NonfiniteBatch& b) {
  trace_.add("flag_nonfinite (NaN/Inf check)", cost::flag_nonfinite(b));
  if (inner_) return inner_->flag_nonfinite(b);
  // Nothing computed: every value counts as finite.
  for (int k = 0; k < b.count; ++k) read_back_zero(b.flag[k], sizeof(uint64_t));
}

// Adjacent regions (one mask per layer, one flag per tensor) merge into one.
void TraceBackend::read_back_zero(const void* p, size_t n) {
  auto it = zero_regions_.lower_bound(p);
  if (it != zero_regions_.begin()) {
    auto prev = std::prev(it);
    if (static_cast<const uint8_t*>(prev->first) + prev->second == p) {
      prev->second += n;
      return;
    }
  }
  zero_regions_[p] = n;
}

}  // namespace phi3
