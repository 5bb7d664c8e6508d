// The op set of the Phi-3 runtime. Every op has a forward and (where the model needs
// gradients through it) a backward, declared once here and implemented twice with the
// same signature: namespace phi3::cpu (kernels/cpu/*.cpp, the fp32 reference) and
// namespace phi3::cuda (kernels/cuda/*.cu). Model and patching code never call these
// directly: they go through runtime/backend.h, the one dispatch point.
//
// Conventions (llm.c / vLLM style):
//  - all activations are fp32, row-major; a "row" is one token; strides are in elements;
//  - pointer arguments carry their shape in a comment; letters N (rows), D (hidden),
//    H (query heads), KVH (key/value heads), HD (head dim), F (ffn), V (vocab), B, T;
//  - gradients are prefixed d; a backward "accumulates" (+=) only where it says so;
//  - `Stream stream` is the CUDA stream (cudaStream_t) on the CUDA side, ignored on CPU.
#pragma once
#include <cstdint>

#include "runtime/dtype.h"

namespace phi3 {

using Stream = void*;

// The activation of the gated MLP's gate: SwiGLU (Phi-3, Llama, Qwen, Mistral) or GeGLU with
// the tanh-approximated GELU (Gemma 2, HF gelu_pytorch_tanh); GeluTanhNoGate: the non-gated MLP
// (GPT-2: c_fc, gelu_new, c_proj): out = gelu_tanh(gu), gu and dgu [N, F] (no up half).
enum class MlpAct : int { Silu = 0, GeluTanh = 1, GeluTanhNoGate = 2 };

// An activation that feeds a GEMM, as the op producing it writes it: fp32 values (f32) and/or
// the same values rounded to bf16 (bf16, round-to-nearest-even: runtime/dtype.h's
// float_to_bf16_bits, the rounding of the cast kernel), so a bf16 GEMM reads them without a
// cast pass. Either may be null; a plain float* converts to an fp32-only GemmOut.
struct GemmOut {
  float* f32 = nullptr;        // [rows, width], row stride = width unless the op says otherwise
  uint16_t* bf16 = nullptr;    // [rows, width] bf16 bits, same layout
  GemmOut() = default;
  GemmOut(float* f) : f32(f) {}  // NOLINT: implicit on purpose (fp32-only output)
  GemmOut(float* f, uint16_t* h) : f32(f), bf16(h) {}
};
// The matching GEMM input: linear_forward reads bf16 when the weights are bf16 and it is
// given (else it rounds f32 itself), f32 when the weights are fp32.
struct GemmIn {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  GemmIn() = default;
  GemmIn(const float* f) : f32(f) {}  // NOLINT: implicit on purpose
  GemmIn(const float* f, const uint16_t* h) : f32(f), bf16(h) {}
  GemmIn(const GemmOut& o) : f32(o.f32), bf16(o.bf16) {}  // NOLINT
};

// A weight matrix as stored on the device: [rows, cols] row-major (HF [out, in]), with an
// optional bias [rows] (fp32) that linear_forward adds to every output row.
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* bias = nullptr;
};

// Rotary embedding (HF rotate_half / NeoX): the first rot_dim dims of every head rotate,
// dim i pairs with i + rot_dim/2 at angle pos * inv_freq[i]; cos and sin are multiplied
// by attn_scale (LongRoPE's attention factor, 1 otherwise).
// With a table (cos_sin, n_pos rows of rot_dim/2 (cos, sin) pairs, attn_scale applied: filled
// on the host by rope_angle of op_math.h), positions must be < n_pos and the kernels read the
// angles instead of computing them per row and head.
struct RopeParams {
  const float* inv_freq = nullptr;  // [rot_dim/2], device memory
  int rot_dim = 0;
  float attn_scale = 1.0f;
  const float* cos_sin = nullptr;   // optional [n_pos, rot_dim/2, 2], device memory
  int n_pos = 0;
};

// One block of query rows of one sequence for the attention op. A sequence is a batch
// row b of length T (left-padded with pad[b] pad tokens). Queries are positions
// [q_start, T); keys/values of positions >= fresh_start come from the packed k/v rows
// (position t at packed row kv_row + t - fresh_start), those < fresh_start from the
// cache (position t of batch row b at cache row b*T + t). A plain forward pass uses
// fresh_start = q_start = 0; the exact patching sweep uses fresh_start = patch position
// (the unpatched prefix is shared with the corrupted run) and, at the last layer,
// q_start = T-1.
struct AttnSegment {
  int32_t batch;        // b
  int32_t fresh_start;  // first position whose k/v are in the packed rows
  int32_t kv_row;       // packed k/v row of position fresh_start
  int32_t q_start;      // first query position (>= fresh_start)
  int32_t q_row;        // packed q/z row of position q_start
};

// Causal softmax attention with pad-key masking, sliding window and GQA.
// Key j is visible to query t iff pad[b] <= j <= t and (window <= 0 or t - j < window).
// A pad query row (t < pad[b]) sees no key: its z row is 0 (and its pattern row 0).
struct AttnParams {
  const float* q = nullptr;        // [rows, H*HD] (rotated), row stride q_stride
  const float* k = nullptr;        // [rows, KVH*HD] (rotated), row stride kv_stride
  const float* v = nullptr;        // [rows, KVH*HD], row stride kv_stride
  const float* k_cache = nullptr;  // [B*T, KVH*HD] (rotated), stride cache_stride; may be null
  const float* v_cache = nullptr;  // [B*T, KVH*HD], stride cache_stride; may be null
  float* z = nullptr;              // [rows, H*HD] output, row stride z_stride
  uint16_t* z16 = nullptr;         // optional: the same z rounded to bf16 (GemmOut), stride z_stride
  float* pattern = nullptr;        // optional [B, H, T, T] softmax probs (plain pass only): every
                                   // element of the queries' rows written, 0 off the visible set
  const int32_t* pad = nullptr;    // [B] left-pad count per batch row
  const AttnSegment* segs = nullptr;  // [n_segs], device memory
  int64_t q_stride = 0, kv_stride = 0, cache_stride = 0, z_stride = 0;
  int n_segs = 0;
  int T = 0, H = 0, KVH = 0, HD = 0;
  int window = 0;  // sliding window (0 = none)
  float scale = 1.0f;  // 1/sqrt(HD)
  // Gemma 2's soft-capping of the scaled scores, s -> softcap * tanh(s / softcap), before the
  // mask and the softmax (0: none).
  float softcap = 0.0f;
  // Optional [B, H, T, 2]: each query row's softmax statistics (m, l), m the largest visible
  // (capped) score and l = sum_j exp(s_j - m) (plain pass only; pad queries (-inf, 0)), so that
  // P[t, j] = exp(s_j - m) / l, bitwise the pattern the forward writes. The backward needs them:
  // it recomputes P from q, k and these instead of reading a [B, H, T, T] pattern
  // (FlashAttention-2's scheme); log-sum-exp = m + log l.
  float* stats = nullptr;
  // Run on bf16 tensor cores (CUDA backend; the CPU backend ignores it): q, k, v, the
  // probabilities (and dz, dS in the backward) rounded to bf16 for the matrix products, fp32
  // accumulation, softmax and stats. The model sets it when the backend keeps GEMM inputs in
  // bf16 (Backend::gemm_in_bf16); the fp32 mode leaves it false (the exact kernels). Calls that
  // ask for `pattern` (forward) or `dpattern` (backward) stay on the fp32 kernels.
  bool tensor_cores = false;
};

// Backward of a plain pass (fresh_start == q_start == 0 in every segment, the forward's
// stats given). The probabilities are recomputed tile by tile from q, k and the stats; no
// [T, T] buffer is read or needed (the pattern, if the forward kept one, is ignored).
// dq, dk, dv are overwritten.
struct AttnBackwardParams {
  AttnParams fwd;               // the forward's inputs, stats required
  const float* dz = nullptr;    // [rows, H*HD], stride fwd.z_stride
  float* dq = nullptr;          // [rows, H*HD], stride fwd.q_stride
  float* dk = nullptr;          // [rows, KVH*HD], stride fwd.kv_stride
  float* dv = nullptr;          // [rows, KVH*HD], stride fwd.kv_stride
  // Optional: d metric / d pattern, dP[b, h, t, j] = dz_t . v_j for every visible (t, j)
  // of real query rows; other entries are left as they are (zero the buffer first).
  float* dpattern = nullptr;    // [B, H, T, T]
};

// AtP*'s QK fix (Kramár, Lieberum, Shah, Nanda 2024, "AtP*", section 3.1): the effect on
// the metric of giving one query or one key its source-run value, through the attention
// pattern only, with the softmax recomputed exactly and only the step after the pattern
// linearised: est = sum over the rows it changes of sum_j (A'[t, j] - A[t, j]) G[t, j],
// G = d metric / d pattern on the base run. A query (b, t, h) changes row t of head h; a key
// (b, p, kvh) changes column p of every later row of every head sharing it (O(1) per row
// from S_t = sum_j A G: only one score moves); a key head at every position (k_all_est)
// changes whole rows, recomputed. Rotated queries/keys (the source ones rotated at the base
// run's positions), rows b*T + t; pad query rows contribute nothing.
// z from a given attention pattern (patching hook_pattern): for heads [h0, h0 + nh),
// z[b*T + t, h*HD + d] = sum_{j <= t} P[b, h, t, j] * v[b*T + j, (h / (H/KVH))*HD + d], summed
// over j in order (a pattern is causal: entries past the diagonal are not read); 0 on pad
// query rows (t < pad[b]), the attention op's convention. Other heads' columns of z are left
// as they are.
struct ApplyPatternParams {
  const float* pattern = nullptr;  // [B, H, T, T]
  const float* v = nullptr;        // [B*T, KVH*HD], stride kv_stride
  const int32_t* pad = nullptr;    // [B]
  float* z = nullptr;              // [B*T, H*HD], stride z_stride
  int64_t kv_stride = 0, z_stride = 0;
  int B = 0, T = 0, H = 0, KVH = 0, HD = 0, h0 = 0, nh = 0;
};

struct QkFixParams {
  const float* q = nullptr;         // [B*T, H*HD] base run, stride q_stride
  const float* k = nullptr;         // [B*T, KVH*HD] base run, stride kv_stride
  const float* q_src = nullptr;     // source values, same layout
  const float* k_src = nullptr;
  const float* pattern = nullptr;   // [B, H, T, T] base run
  const float* dpattern = nullptr;  // [B, H, T, T] d metric / d pattern, base run
  const int32_t* pad = nullptr;     // [B]
  float* q_est = nullptr;           // [B*T, H]
  float* k_est = nullptr;           // [B*T, KVH]
  float* k_all_est = nullptr;       // [B, KVH]
  int64_t q_stride = 0, kv_stride = 0;
  int B = 0, T = 0, H = 0, KVH = 0, HD = 0, window = 0;
  float scale = 1.0f;
  float softcap = 0.0f;  // as AttnParams::softcap
};

// The metric of a logit row (DESIGN §3; formulas in kernels/op_math.h, metric_value and
// metric_grad): logit-diff x_ans - x_other, prob-diff p_ans - p_other, logprob log p_ans,
// kl KL(q || p) = sum_v q_v (log q_v - log p_v) with q a reference distribution (the clean
// run's, as log-probabilities). p = softmax over the V logits of the row.
enum class MetricKind : int { LogitDiff = 0, ProbDiff = 1, LogProb = 2, KL = 3 };
struct MetricParams {
  MetricKind kind = MetricKind::LogitDiff;
  const int32_t* ans = nullptr;       // [B] (logit-diff, prob-diff, logprob)
  const int32_t* other = nullptr;     // [B] (logit-diff, prob-diff)
  const float* ref_logprobs = nullptr;  // kl: [R, V] reference log-probabilities, rows V apart
  const int32_t* ref_row = nullptr;   // kl, optional [B]: row b's reference row (null: row b)
  int64_t stride = 0;                 // elements between consecutive logit rows (>= V)
  int B = 0, V = 0;
};

// The tensors of one flag_nonfinite call, passed to the kernel by value (no upload): flag[k]
// (device) is raised for the first NaN/Inf of x[k][0, n[k]), k < count (kernels/finite_flag.h).
struct NonfiniteBatch {
  static constexpr int kMax = 64;
  int count = 0;
  const float* x[kMax] = {};
  int64_t n[kMax] = {};
  uint64_t* flag[kMax] = {};
};

#define PHI3_DECLARE_OPS                                                                  \
  /* out[i,:] = table[ids[i],:] */                                                        \
  void embedding_forward(float* out /*[N,D]*/, const int32_t* ids /*[N]*/,                \
                         const Weight& table /*[V,D]*/, int N, Stream stream,             \
                         float scale = 1.0f); /* out *= scale (Gemma: sqrt(D)) */          \
  /* x = c tanh(x / c) in place (Gemma 2's final-logit soft-capping), n elements */       \
  void softcap_forward(float* x, int64_t n, float cap, Stream stream);                    \
  /* dx *= 1 - (y / c)^2, y the capped values (the forward's output), in place */         \
  void softcap_backward(float* dx, const float* y, int64_t n, float cap, Stream stream);  \
  /* out = x * rstd * w, rstd = 1/sqrt(mean(x^2)+eps); saves rstd [N] for backward.      \
     center (LayerNorm, GPT-2): x - mean(x) in place of x (rstd from the centred          \
     variance), then + bias [D] when bias is given (a bias needs center) */               \
  void rmsnorm_forward(GemmOut out /*[N,D]*/, float* rstd /*[N]*/, const float* x,        \
                       const float* w /*[D]*/, int N, int D, float eps, Stream stream,    \
                       bool center = false, const float* bias = nullptr);                 \
  /* sum = a + b (sum may alias a or b), then rmsnorm_forward of sum */                    \
  void add_rmsnorm_forward(float* sum /*[N,D]*/, GemmOut out /*[N,D]*/, float* rstd,      \
                           const float* a, const float* b, const float* w /*[D]*/, int N, \
                           int D, float eps, Stream stream, bool center = false,          \
                           const float* bias = nullptr);                                  \
  /* dx += d(out)/dx^T dout (center: the LayerNorm's, its mean recomputed from x) */      \
  void rmsnorm_backward(float* dx /*[N,D] +=*/, const float* dout /*[N,D]*/,              \
                        const float* x, const float* w, const float* rstd /*[N]*/, int N, \
                        int D, Stream stream, bool center = false);                       \
  /* y = x W^T (accumulate ? y += x W^T), W [out,in] */                                   \
  void linear_forward(float* y /*[N,out]*/, GemmIn x /*[N,in]*/, const Weight& W, int N,  \
                      bool accumulate, Stream stream);                                    \
  /* dx = dy W (accumulate ? dx += dy W) */                                               \
  void linear_backward(float* dx /*[N,in]*/, const float* dy /*[N,out]*/, const Weight& W, \
                       int N, bool accumulate, Stream stream);                            \
  /* rotate the first rot_dim dims of each of n_heads heads; other dims copied */         \
  void rotary_forward(float* out, int64_t out_stride, const float* in, int64_t in_stride, \
                      const int32_t* pos /*[N]*/, int N, int n_heads, int HD,             \
                      const RopeParams& rope, Stream stream);                             \
  /* din = R(-theta) dout (overwrite) */                                                  \
  void rotary_backward(float* din, int64_t din_stride, const float* dout,                 \
                       int64_t dout_stride, const int32_t* pos /*[N]*/, int N,            \
                       int n_heads, int HD, const RopeParams& rope, Stream stream);       \
  /* split a fused qkv row: q = rotary(q part), k = rotary(k part), v copied (dense) */   \
  void rotary_qkv_forward(float* q /*[N,H*HD]*/, float* k /*[N,KVH*HD]*/,                 \
                          float* v /*[N,KVH*HD]*/, const float* qkv /*[N,(H+2KVH)*HD]*/,   \
                          const int32_t* pos /*[N]*/, int N, int H, int KVH, int HD,      \
                          const RopeParams& rope, Stream stream);                         \
  void attention_forward(const AttnParams& p, Stream stream);                             \
  void attention_backward(const AttnBackwardParams& p, Stream stream);                    \
  /* out = act(gu[:, :F]) * gu[:, F:], act = silu (SwiGLU) or tanh-GELU (GeGLU);          \
     GeluTanhNoGate: out = gelu_tanh(gu), gu [N,F] (dgu [N,F]) */                          \
  void swiglu_forward(GemmOut out /*[N,F]*/, const float* gu /*[N,2F]*/, int N, int F,    \
                      Stream stream, MlpAct act = MlpAct::Silu);                          \
  void swiglu_backward(float* dgu /*[N,2F]*/, const float* dout /*[N,F]*/,                \
                       const float* gu /*[N,2F]*/, int N, int F, Stream stream,           \
                       MlpAct act = MlpAct::Silu);                                        \
  /* out = a + b (out may alias a or b) */                                                \
  void add(float* out, const float* a, const float* b, int64_t n, Stream stream);         \
  /* out = a - b (out may alias a or b) */                                                \
  void sub(float* out, const float* a, const float* b, int64_t n, Stream stream);         \
  /* dst[dst_idx ? dst_idx[i] : i, :width] = src[src_idx ? src_idx[i] : i, :width] */     \
  void copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src, \
                 int64_t src_stride, const int32_t* src_idx, int n, int width,            \
                 Stream stream);                                                          \
  /* for k < b.count: *b.flag[k] = max(itself, nonfinite_flag(i, x[i])) for the first i <  \
     b.n[k] whose x[i] = b.x[k][i] is NaN/Inf (kernels/finite_flag.h); untouched when all  \
     are finite. Zero the flags first. */                                                  \
  void flag_nonfinite(const NonfiniteBatch& b, Stream stream);                             \
  /* ld[b] = logits[b, ans[b]] - logits[b, other[b]] (logits rows `stride` apart) */             \
  void logit_diff_forward(float* ld /*[B]*/, const float* logits /*[B,V]*/,               \
                          int64_t stride, const int32_t* ans, const int32_t* other,       \
                          int B, Stream stream);                                          \
  /* dlogits = 0 except dlogits[b,ans[b]] = scale, dlogits[b,other[b]] = -scale */         \
  void logit_diff_backward(float* dlogits /*[B,V]*/, int64_t stride, const int32_t* ans,  \
                           const int32_t* other, float scale, int B, int V,               \
                           Stream stream);                                                \
  /* out[b] = the metric of logit row b (MetricParams) */                                 \
  void metric_forward(float* out /*[B]*/, const float* logits /*[B,V], p.stride*/,        \
                      const MetricParams& p, Stream stream);                              \
  /* dlogits[b, :V] = scale * d metric(row b) / d logits[b, :V] (overwritten; rows        \
     dstride apart) */                                                                    \
  void metric_backward(float* dlogits /*[B,V]*/, int64_t dstride, const float* logits,    \
                       const MetricParams& p, float scale, Stream stream);                \
  /* for each layer l < L (a[l], c[l], grad[l]: device arrays of L pointers):           \
     out[(l*T+t)*G+g] = sum_b sum_{w<W} (a-c)[b,t,g*W+w] * grad[b,t,g*W+w]               \
     (row b*T+t of each at b*T+t times stride >= G*W) */                                  \
  void attribution_reduce(float* out /*[L,T,G]*/, const float* const* a /*[L]->[B*T,G*W]*/, \
                          const float* const* c, const float* const* grad, int L, int B,  \
                          int T, int G, int W, int64_t stride, Stream stream);            \
  /* eq[t*G+g] = 1 if a and c are bitwise equal in [b,t,g*W:(g+1)*W] for every b, else 0 \
     (rows `stride` >= G*W apart) */                                                     \
  void rows_equal(uint8_t* eq /*[T,G]*/, const float* a /*[B*T, G*W]*/, const float* c,    \
                  int B, int T, int G, int W, int64_t stride, Stream stream);              \
  void attn_qk_fix(const QkFixParams& p, Stream stream);                                  \
  void attn_apply_pattern(const ApplyPatternParams& p, Stream stream);                     \
  /* MoE router: p = softmax(logits[n, :E]) in fp32; ids[n, :k] the k largest p (descending, \
     ties to the lower expert id, torch.topk's order), gates[n, j] = p[ids[n, j]], divided by \
     their sum when renorm */                                                              \
  void moe_route_forward(int32_t* ids /*[N,k]*/, float* gates /*[N,k]*/,                   \
                         const float* logits /*[N,E]*/, int N, int E, int k, bool renorm,  \
                         Stream stream);                                                   \
  /* dlogits (overwritten) = d gates / d logits^T dgates with the top-k set ids held fixed */ \
  void moe_route_backward(float* dlogits /*[N,E]*/, const float* dgates /*[N,k]*/,         \
                          const float* logits /*[N,E]*/, const int32_t* ids /*[N,k]*/,     \
                          int N, int E, int k, bool renorm, Stream stream);                \
  /* out[n, :] = sum_j gates[n, j] y[slot[n, j], :] (gates null: 1), summed in ascending    \
     slot order (overwrite); y holds the expert outputs grouped by expert */               \
  void moe_combine_forward(float* out /*[N,D]*/, const float* y /*[M,D]*/,                 \
                           const int32_t* slot /*[N,k]*/, const float* gates /*[N,k]*/,     \
                           int N, int k, int D, Stream stream);                            \
  /* dy[slot[n, j], :] = gates[n, j] dout[n, :] (every slot written once; gates null: 1);    \
     dgates[n, j] = dout[n, :] . y[slot[n, j], :] (dgates may be null) */                  \
  void moe_combine_backward(float* dy /*[M,D]*/, float* dgates /*[N,k]*/,                  \
                            const float* dout /*[N,D]*/, const float* y /*[M,D]*/,         \
                            const int32_t* slot /*[N,k]*/, const float* gates /*[N,k]*/,    \
                            int N, int k, int D, Stream stream);                           \
  /* PhiMoE's sparsemixer router, inference (op_moe.h moe_sparsemixer_row): top 2 */         \
  void moe_sparsemixer_forward(int32_t* ids /*[N,2]*/, float* gates /*[N,2]*/,             \
                               const float* logits /*[N,E]*/, int N, int E, float jitter_eps, \
                               Stream stream);                                             \
  /* dlogits (overwritten) with the choice and the masks fixed */                          \
  void moe_sparsemixer_backward(float* dlogits /*[N,E]*/, const float* dgates /*[N,2]*/,   \
                                const float* logits /*[N,E]*/, int N, int E,               \
                                float jitter_eps, Stream stream);

namespace cpu {
PHI3_DECLARE_OPS
}
namespace cuda {
PHI3_DECLARE_OPS
}

}  // namespace phi3
