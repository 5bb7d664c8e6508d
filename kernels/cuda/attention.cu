// Causal softmax attention over packed segments (AttnParams, kernels/ops.h), fp32.
//
// forward, for each segment s (batch row b), head h (kv head h / (H/KVH)), query t >= q_start:
//   S[t, j] = scale * q_t . k_j  for visible keys j (attn_visible: pad <= j <= t, window),
//   soft-capped to c tanh(S / c) when softcap = c > 0 (Gemma 2);
//   P[t, :] = softmax(S[t, :]) = exp(S - m) / l;  optional stats[b, h, t] = (m, l);  z_t = sum_j P[t, j] v_j;  pad queries: z_t = 0, P[t, :] = 0
//   k_j / v_j come from the packed rows when j >= fresh_start, from the cache otherwise.
//   Optional output: pattern [B, H, T, T] = P (zeros off the visible set).
// backward (plain passes: fresh_start = q_start = 0, stats saved): P recomputed tile by tile
// from q, k and (m, l) with the forward's expressions (bitwise its pattern: scaled_score and
// prob_of round every step explicitly, so no FMA contraction differs), with dP = dz v^T
// (optionally written out, bp.dpattern: the gradient with respect to the pattern):
//   D_t = sum_j P[t, j] dP[t, j];  dS = P (dP - D_t)            (softmax_grad, op_math.h)
//   soft-capped: dS *= 1 - (S/c)^2, S the recomputed capped score
//   dq_t = scale sum_j dS[t, j] k_j;  dk_j = scale sum_{h in group} sum_t dS[t, j] q_t;
//   dv_j = sum_{h in group} sum_t P[t, j] dz_t          (dq, dk, dv overwritten)
// Shapes: q, z [rows, H*HD]; k, v [rows, KVH*HD]; caches [B*T, KVH*HD]; strides per AttnParams.
//
// Forward kernel (fused, one pass): a block of 4 warps owns (segment, head) and a block of
// 16 consecutive query positions (4 per warp); blocks are counted from the end of the
// sequence (every segment's queries end at T-1), so block 0 holds the longest key ranges.
// It walks the block's visible key range in tiles of 32 keys staged in shared memory;
// lane j scores key j against the warp's 4 queries (queries broadcast from shared memory
// as float4, keys at an odd row stride so the 32 lanes hit 32 banks), the warp keeps an
// online softmax (running max m, sum l) per query, and each lane accumulates HD/32 output
// dims of P v. With a pattern requested, a second sweep recomputes the (bitwise identical)
// scores and writes exp(S - m) / l for the whole row. fp32 CUDA-core FMAs throughout: the
// inputs are fp32 and the fp32 mode must track the CPU reference.
// Backward: kernel 1 (query side, same tiling) computes D_t in a first sweep and dq in a
// second, storing D_t in a scratch buffer; kernel 2 (key side) gives each warp 4 keys of
// one kv head, walks the queries that can see them in tiles of 32 (lane = query) for every
// head of the GQA group, and accumulates dk and dv in registers. Both recompute the scores
// (one more dot product per visible pair) instead of reading a [T, T] pattern: memory O(T).
// With AttnParams::tensor_cores (bf16 mode) calls without pattern / dpattern go to the bf16
// tensor-core kernels instead (attention_tc_forward.cu, attention_tc_backward.cu).
// The host does not see the segments (device memory), so grid.y covers ceil(T/16) query
// blocks at most, capped to keep about 8 blocks per SM in flight; each block loops over
// its query blocks (grid-stride), and blocks past a segment's queries exit at once.
#include <cmath>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/op_math.h"
#include "runtime/dtype.h"

namespace phi3::cuda {
namespace {
using namespace attn;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kQPW = 4;                 // queries per warp (forward, dq) / keys per warp (dk, dv)
constexpr int kBQ = kWarps * kQPW;      // queries (or keys) per block
constexpr int kBK = 32;                 // keys (or queries) per shared-memory tile
constexpr int kMaxHD = 256;

// Loads `n` rows (rows[i] = src row pointer or null for a zero row) of HD floats into
// dst[i * stride + d], zero-padding dims HD..width-1. Called by the whole block.
template <typename RowFn>
__device__ __forceinline__ void load_rows(float* dst, int n, int stride, int HD, int width,
                                          RowFn row) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int i = warp; i < n; i += kWarps) {
    const float* src = row(i);
    for (int d = lane; d < width; d += 32) dst[i * stride + d] = (src && d < HD) ? src[d] : 0.0f;
  }
}

// Dot products of lane's row `krow` (odd stride, scalar reads) with QPW broadcast rows
// `qrows` (stride HD4, float4 reads): s[r] += q_r . k.
__device__ __forceinline__ void dot_rows(float (&s)[kQPW], const float* qrows, int HD4,
                                         const float* krow) {
#pragma unroll 2
  for (int d = 0; d < HD4; d += 4) {
    const float k0 = krow[d], k1 = krow[d + 1], k2 = krow[d + 2], k3 = krow[d + 3];
#pragma unroll
    for (int r = 0; r < kQPW; ++r) {
      const float4 q = *reinterpret_cast<const float4*>(qrows + r * HD4 + d);
      s[r] = fmaf(q.x, k0, fmaf(q.y, k1, fmaf(q.z, k2, fmaf(q.w, k3, s[r]))));
    }
  }
}

// acc[r][i] += sum_{jj < n} w[r] of lane jj * rows[jj * stride + lane + 32 i]: the warp's kQPW
// query rows accumulate n shared-memory rows (HD dims, lane-strided) weighted by the values
// lane jj holds for key jj (P for P v, dS for dS k). Called by all 32 lanes of the warp.
template <int DPL>
__device__ __forceinline__ void accumulate_rows(float (&acc)[kQPW][DPL], const float (&w)[kQPW],
                                                const float* rows, int stride, int n, int HD) {
  const int lane = threadIdx.x & 31;
  for (int jj = 0; jj < n; ++jj) {
    float x[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      x[i] = d < HD ? rows[jj * stride + d] : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < kQPW; ++r) {
      const float g = __shfl_sync(0xffffffffu, w[r], jj);
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[r][i] = fmaf(g, x[i], acc[r][i]);
    }
  }
}

size_t fwd_smem_floats(int HD4, int HD) { return (size_t)kBQ * HD4 + (size_t)kBK * (HD4 + 1) + (size_t)kBK * HD; }
size_t dq_smem_floats(int HD4) { return 2 * (size_t)kBQ * HD4 + 2 * (size_t)kBK * (HD4 + 1); }
size_t dkv_smem_floats(int HD4) { return 2 * (size_t)kBQ * HD4 + 2 * (size_t)kBK * (HD4 + 1) + 3 * kBK; }

// ---------------------------------------------------------------------------------------
template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attn_forward_kernel(const AttnParams p, const int HD4) {
  PHI3_DYNAMIC_SHARED(float4, smem4);
  float* Qs = reinterpret_cast<float*>(smem4);  // [kBQ][HD4]
  const int KS = HD4 + 1;
  float* Ks = Qs + kBQ * HD4;                   // [kBK][KS]
  float* Vs = Ks + kBK * KS;                    // [kBK][HD]
  const int HD = p.HD;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int seg = blockIdx.x / p.H, h = blockIdx.x - seg * p.H;
  const int kvh = h / (p.H / p.KVH);
  const SegView sv = load_seg(p, seg);
  const int T = sv.T, pad = sv.pad;
  const int n_qb = (T - sv.q_start + kBQ - 1) / kBQ;

  for (int qb = blockIdx.y; qb < n_qb; qb += gridDim.y) {
    const int t_hi = T - 1 - qb * kBQ;
    const int t_lo = max(sv.q_start, t_hi - kBQ + 1);
    const int wt_lo = t_lo + warp * kQPW;                // this warp's first query
    const int wt_hi = min(t_hi, wt_lo + kQPW - 1);
    const bool warp_active = wt_lo <= t_hi && wt_hi >= pad;
    const int k_lo = attn_first_key(t_lo, pad, p.window);  // block's visible keys: k_lo..t_hi
    const int wk_lo = attn_first_key(wt_lo, pad, p.window);

    __syncthreads();  // the previous query block's readers are done with shared memory
    load_rows(Qs, kBQ, HD4, HD, HD4, [&](int i) -> const float* {
      const int t = t_lo + i;
      return t <= t_hi ? p.q + (int64_t)(sv.q_row + t - sv.q_start) * p.q_stride + (int64_t)h * HD
                       : nullptr;
    });

    float m[kQPW], l[kQPW], o[kQPW][DPL];
#pragma unroll
    for (int r = 0; r < kQPW; ++r) {
      m[r] = -INFINITY;
      l[r] = 0.0f;
#pragma unroll
      for (int i = 0; i < DPL; ++i) o[r][i] = 0.0f;
    }

    const bool any_keys = t_hi >= pad;
    for (int j0 = k_lo; any_keys && j0 <= t_hi; j0 += kBK) {
      __syncthreads();  // previous tile consumed (and Q loaded, on the first)
      load_rows(Ks, kBK, KS, HD, HD4, [&](int i) -> const float* {
        const int j = j0 + i;
        return j <= t_hi ? kv_ptr(p, sv, p.k, p.k_cache, j, kvh) : nullptr;
      });
      load_rows(Vs, kBK, HD, HD, HD, [&](int i) -> const float* {
        const int j = j0 + i;
        return j <= t_hi ? kv_ptr(p, sv, p.v, p.v_cache, j, kvh) : nullptr;
      });
      __syncthreads();
      if (!warp_active || j0 > wt_hi || j0 + kBK - 1 < wk_lo) continue;  // warp-uniform

      const int j = j0 + lane;
      float s[kQPW];
#pragma unroll
      for (int r = 0; r < kQPW; ++r) s[r] = 0.0f;
      dot_rows(s, Qs + warp * kQPW * HD4, HD4, Ks + lane * KS);

      float pr[kQPW];
#pragma unroll
      for (int r = 0; r < kQPW; ++r) {
        const int t = wt_lo + r;
        const bool vis = t <= t_hi && attn_visible(t, j, pad, p.window);
        const float sc = vis ? scaled_score(s[r], p) : -INFINITY;
        const float m_new = fmaxf(m[r], warp_max(sc));
        float corr = 1.0f, pj = 0.0f;
        if (m_new != -INFINITY) {  // warp-uniform
          corr = expf(m[r] - m_new);  // 0 when m was -inf
          pj = expf(sc - m_new);      // 0 for masked keys
        }
        l[r] = l[r] * corr + warp_sum(pj);
        m[r] = m_new;
        pr[r] = pj;
#pragma unroll
        for (int i = 0; i < DPL; ++i) o[r][i] *= corr;
      }
      accumulate_rows(o, pr, Vs, HD, min(kBK, t_hi - j0 + 1), HD);  // o += P v
    }

    // z rows (pad queries: l == 0 -> 0)
#pragma unroll
    for (int r = 0; r < kQPW; ++r) {
      const int t = wt_lo + r;
      if (t > t_hi) continue;
      const int64_t zoff = (int64_t)(sv.q_row + t - sv.q_start) * p.z_stride + (int64_t)h * HD;
      float* zr = p.z + zoff;
      uint16_t* zh = p.z16 ? p.z16 + zoff : nullptr;  // the o_proj input in bf16 (GemmOut)
      const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      if (p.stats && lane == 0) {
        float* st = p.stats + (((int64_t)sv.b * p.H + h) * T + t) * 2;
        st[0] = m[r];
        st[1] = l[r];
      }
#pragma unroll
      for (int i = 0; i < DPL; ++i) {
        const int d = lane + 32 * i;
        if (d < HD) {
          const float zv = o[r][i] * inv;
          zr[d] = zv;
          if (zh) zh[d] = float_to_bf16_bits(zv);
        }
      }
    }

    if (p.pattern) {  // second sweep: P for the whole row [0, T)
      for (int j0 = 0; j0 < T; j0 += kBK) {
        const bool in_range = any_keys && j0 <= t_hi && j0 + kBK - 1 >= k_lo;  // block-uniform
        if (in_range) {
          __syncthreads();
          load_rows(Ks, kBK, KS, HD, HD4, [&](int i) -> const float* {
            const int j = j0 + i;
            return j <= t_hi ? kv_ptr(p, sv, p.k, p.k_cache, j, kvh) : nullptr;
          });
          __syncthreads();
        }
        const int j = j0 + lane;
        float s[kQPW];
#pragma unroll
        for (int r = 0; r < kQPW; ++r) s[r] = 0.0f;
        if (in_range && warp_active) dot_rows(s, Qs + warp * kQPW * HD4, HD4, Ks + lane * KS);
#pragma unroll
        for (int r = 0; r < kQPW; ++r) {
          const int t = wt_lo + r;
          if (t > t_hi || j >= T) continue;
          const bool vis = in_range && attn_visible(t, j, pad, p.window);
          const float pj = vis ? prob_of(scaled_score(s[r], p), m[r], l[r]) : 0.0f;
          p.pattern[(((int64_t)sv.b * p.H + h) * T + t) * T + j] = pj;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward, query side: D_t (stored to Dbuf [n_segs, H, T]) and dq.
template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attn_backward_dq_kernel(const AttnBackwardParams bp, float* Dbuf, const int HD4) {
  const AttnParams& p = bp.fwd;
  PHI3_DYNAMIC_SHARED(float4, smem4);
  float* DZs = reinterpret_cast<float*>(smem4);  // [kBQ][HD4]
  float* Qs = DZs + kBQ * HD4;                   // [kBQ][HD4]
  const int KS = HD4 + 1;
  float* Ks = Qs + kBQ * HD4;                    // [kBK][KS]
  float* Vs = Ks + kBK * KS;                     // [kBK][KS]
  const int HD = p.HD;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int seg = blockIdx.x / p.H, h = blockIdx.x - seg * p.H;
  const int kvh = h / (p.H / p.KVH);
  const SegView sv = load_seg(p, seg);
  const int T = sv.T, pad = sv.pad;
  const int n_qb = (T - sv.q_start + kBQ - 1) / kBQ;
  const bool plain = sv.fresh == 0 && sv.q_start == 0;
  const float* ST = p.stats + ((int64_t)sv.b * p.H + h) * T * 2;

  for (int qb = blockIdx.y; qb < n_qb; qb += gridDim.y) {
    const int t_hi = T - 1 - qb * kBQ;
    const int t_lo = max(sv.q_start, t_hi - kBQ + 1);
    const int wt_lo = t_lo + warp * kQPW;
    const int wt_hi = min(t_hi, wt_lo + kQPW - 1);
    if (!plain) {  // misuse (backward of a prefix-cached pass): make it loud
      for (int t = wt_lo; t <= wt_hi; ++t)
        for (int d = lane; d < HD; d += 32)
          bp.dq[(int64_t)(sv.q_row + t - sv.q_start) * p.q_stride + (int64_t)h * HD + d] = NAN;
      continue;
    }
    const bool warp_active = wt_lo <= t_hi && wt_hi >= pad;
    const int k_lo = attn_first_key(t_lo, pad, p.window);
    const int wk_lo = attn_first_key(wt_lo, pad, p.window);
    const bool any_keys = t_hi >= pad;

    __syncthreads();
    load_rows(DZs, kBQ, HD4, HD, HD4, [&](int i) -> const float* {
      const int t = t_lo + i;
      return t <= t_hi ? bp.dz + (int64_t)(sv.q_row + t) * p.z_stride + (int64_t)h * HD : nullptr;
    });
    load_rows(Qs, kBQ, HD4, HD, HD4, [&](int i) -> const float* {
      const int t = t_lo + i;
      return t <= t_hi ? p.q + (int64_t)(sv.q_row + t) * p.q_stride + (int64_t)h * HD : nullptr;
    });

    float Dsum[kQPW], dq[kQPW][DPL], m[kQPW], l[kQPW];
#pragma unroll
    for (int r = 0; r < kQPW; ++r) {
      const int t = wt_lo + r;
      m[r] = t <= t_hi ? ST[2 * t] : 0.0f;
      l[r] = t <= t_hi ? ST[2 * t + 1] : 1.0f;
      Dsum[r] = 0.0f;
#pragma unroll
      for (int i = 0; i < DPL; ++i) dq[r][i] = 0.0f;
    }

    for (int sweep = 0; sweep < 2; ++sweep) {  // 0: D_t, 1: dq
      for (int j0 = k_lo; any_keys && j0 <= t_hi; j0 += kBK) {
        __syncthreads();
        load_rows(Vs, kBK, KS, HD, HD4, [&](int i) -> const float* {
          const int j = j0 + i;
          return j <= t_hi ? kv_ptr(p, sv, p.v, p.v_cache, j, kvh) : nullptr;
        });
        load_rows(Ks, kBK, KS, HD, HD4, [&](int i) -> const float* {
          const int j = j0 + i;
          return j <= t_hi ? kv_ptr(p, sv, p.k, p.k_cache, j, kvh) : nullptr;
        });
        __syncthreads();
        if (!warp_active || j0 > wt_hi || j0 + kBK - 1 < wk_lo) continue;

        const int j = j0 + lane;
        float dp[kQPW], sq[kQPW];
#pragma unroll
        for (int r = 0; r < kQPW; ++r) dp[r] = sq[r] = 0.0f;
        dot_rows(dp, DZs + warp * kQPW * HD4, HD4, Vs + lane * KS);
        dot_rows(sq, Qs + warp * kQPW * HD4, HD4, Ks + lane * KS);  // the forward's scores
        float ds[kQPW];
#pragma unroll
        for (int r = 0; r < kQPW; ++r) {
          const int t = wt_lo + r;
          const bool vis = t <= t_hi && attn_visible(t, j, pad, p.window);
          const float sc = vis ? scaled_score(sq[r], p) : 0.0f;
          const float pv = vis ? prob_of(sc, m[r], l[r]) : 0.0f;
          if (sweep == 0) {
            Dsum[r] += pv * dp[r];
            if (bp.dpattern && vis) bp.dpattern[(((int64_t)sv.b * p.H + h) * T + t) * T + j] = dp[r];
          }
          ds[r] = vis ? softmax_grad(pv, dp[r], Dsum[r]) : 0.0f;
          if (p.softcap > 0.0f) ds[r] *= soft_cap_grad(sc, p.softcap);
        }
        if (sweep == 1) {
          accumulate_rows(dq, ds, Ks, KS, min(kBK, t_hi - j0 + 1), HD);  // dq += dS k
        }
      }
      if (sweep == 0) {
#pragma unroll
        for (int r = 0; r < kQPW; ++r) Dsum[r] = warp_sum(Dsum[r]);  // full D_t in every lane
      }
    }

#pragma unroll
    for (int r = 0; r < kQPW; ++r) {
      const int t = wt_lo + r;
      if (t > t_hi) continue;
      if (lane == 0) Dbuf[((int64_t)seg * p.H + h) * T + t] = Dsum[r];
      float* out = bp.dq + (int64_t)(sv.q_row + t) * p.q_stride + (int64_t)h * HD;
#pragma unroll
      for (int i = 0; i < DPL; ++i) {
        const int d = lane + 32 * i;
        if (d < HD) out[d] = dq[r][i] * p.scale;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward, key side: dk, dv for kQPW keys per warp of one kv head, summed over its heads.
template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attn_backward_dkv_kernel(const AttnBackwardParams bp, const float* Dbuf, const int HD4) {
  const AttnParams& p = bp.fwd;
  PHI3_DYNAMIC_SHARED(float4, smem4);
  float* Vk = reinterpret_cast<float*>(smem4);  // [kBQ][HD4]: v rows of the block's keys
  float* Kk = Vk + kBQ * HD4;                   // [kBQ][HD4]: k rows of the block's keys
  const int KS = HD4 + 1;
  float* DZs = Kk + kBQ * HD4;                  // [kBK][KS]: dz rows of a query tile
  float* Qs = DZs + kBK * KS;                   // [kBK][KS]: q rows of a query tile
  float* Ds = Qs + kBK * KS;                    // [kBK]: D_t of the query tile
  float* Ms = Ds + kBK;                         // [kBK]: the tile's row maxima m
  float* Ls = Ms + kBK;                         // [kBK]: the tile's row sums l
  const int HD = p.HD;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int seg = blockIdx.x / p.KVH, kvh = blockIdx.x - seg * p.KVH;
  const int group = p.H / p.KVH;
  const SegView sv = load_seg(p, seg);
  const int T = sv.T, pad = sv.pad;
  const int n_kb = (T - sv.fresh + kBQ - 1) / kBQ;
  const bool plain = sv.fresh == 0 && sv.q_start == 0;

  for (int kb = blockIdx.y; kb < n_kb; kb += gridDim.y) {
    const int j_lo = sv.fresh + kb * kBQ;  // keys counted from the start: most queries first
    const int j_hi = min(T - 1, j_lo + kBQ - 1);
    const int wj_lo = j_lo + warp * kQPW;
    const int wj_hi = min(j_hi, wj_lo + kQPW - 1);
    if (!plain) {
      poison_key_rows(bp, sv, kvh, wj_lo, wj_hi, lane);
      continue;
    }
    // queries that can see keys j_lo..j_hi: t in [max(j_lo, pad), j_hi + window - 1]
    const int t_lo = max(j_lo, pad);
    const int t_hi = p.window > 0 ? min(T - 1, j_hi + p.window - 1) : T - 1;
    const bool warp_active = wj_lo <= j_hi && wj_hi >= pad;
    const int wt_hi = p.window > 0 ? min(T - 1, wj_hi + p.window - 1) : T - 1;

    __syncthreads();
    load_rows(Vk, kBQ, HD4, HD, HD4, [&](int i) -> const float* {
      const int j = j_lo + i;
      return j <= j_hi ? p.v + (int64_t)(sv.kv_row + j) * p.kv_stride + (int64_t)kvh * HD : nullptr;
    });
    load_rows(Kk, kBQ, HD4, HD, HD4, [&](int i) -> const float* {
      const int j = j_lo + i;
      return j <= j_hi ? p.k + (int64_t)(sv.kv_row + j) * p.kv_stride + (int64_t)kvh * HD : nullptr;
    });

    float dk[kQPW][DPL], dv[kQPW][DPL];
#pragma unroll
    for (int r = 0; r < kQPW; ++r)
#pragma unroll
      for (int i = 0; i < DPL; ++i) dk[r][i] = dv[r][i] = 0.0f;

    for (int hh = 0; hh < group && j_hi >= pad; ++hh) {
      const int h = kvh * group + hh;
      const float* Dh = Dbuf + ((int64_t)seg * p.H + h) * T;
      const float* ST = p.stats + ((int64_t)sv.b * p.H + h) * T * 2;
      for (int t0 = t_lo; t0 <= t_hi; t0 += kBK) {
        __syncthreads();
        load_rows(DZs, kBK, KS, HD, HD4, [&](int i) -> const float* {
          const int t = t0 + i;
          return t <= t_hi ? bp.dz + (int64_t)(sv.q_row + t) * p.z_stride + (int64_t)h * HD : nullptr;
        });
        load_rows(Qs, kBK, KS, HD, HD4, [&](int i) -> const float* {
          const int t = t0 + i;
          return t <= t_hi ? p.q + (int64_t)(sv.q_row + t) * p.q_stride + (int64_t)h * HD : nullptr;
        });
        if (threadIdx.x < kBK) {
          const int i = threadIdx.x;
          const bool in = t0 + i <= t_hi;
          Ds[i] = in ? Dh[t0 + i] : 0.0f;
          Ms[i] = in ? ST[2 * (t0 + i)] : 0.0f;
          Ls[i] = in ? ST[2 * (t0 + i) + 1] : 1.0f;
        }
        __syncthreads();
        if (!warp_active || t0 > wt_hi || t0 + kBK - 1 < wj_lo) continue;  // warp-uniform

        const int t = t0 + lane;
        float dp[kQPW], sq[kQPW];
#pragma unroll
        for (int r = 0; r < kQPW; ++r) dp[r] = sq[r] = 0.0f;
        // dp[r] = dz_t . v_{j_r} and the score q_t . k_{j_r}: here the broadcast rows are the
        // warp's keys' v and k rows (fmaf is symmetric: the forward's dot products, bitwise)
        dot_rows(dp, Vk + warp * kQPW * HD4, HD4, DZs + lane * KS);
        dot_rows(sq, Kk + warp * kQPW * HD4, HD4, Qs + lane * KS);
        float pv[kQPW], ds[kQPW];
#pragma unroll
        for (int r = 0; r < kQPW; ++r) {
          const int j = wj_lo + r;
          const bool vis = t <= t_hi && j <= j_hi && attn_visible(t, j, pad, p.window);
          const float sc = vis ? scaled_score(sq[r], p) : 0.0f;
          pv[r] = vis ? prob_of(sc, Ms[lane], Ls[lane]) : 0.0f;
          ds[r] = vis ? softmax_grad(pv[r], dp[r], Ds[lane]) : 0.0f;
          if (p.softcap > 0.0f) ds[r] *= soft_cap_grad(sc, p.softcap);
        }
        const int n_q = min(kBK, t_hi - t0 + 1);
        for (int tt = 0; tt < n_q; ++tt) {
          float dz[DPL], q[DPL];
#pragma unroll
          for (int i = 0; i < DPL; ++i) {
            const int d = lane + 32 * i;
            dz[i] = d < HD ? DZs[tt * KS + d] : 0.0f;
            q[i] = d < HD ? Qs[tt * KS + d] : 0.0f;
          }
#pragma unroll
          for (int r = 0; r < kQPW; ++r) {
            const float a = __shfl_sync(0xffffffffu, pv[r], tt);
            const float g = __shfl_sync(0xffffffffu, ds[r], tt);
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
              dv[r][i] = fmaf(a, dz[i], dv[r][i]);
              dk[r][i] = fmaf(g, q[i], dk[r][i]);
            }
          }
        }
      }
    }

#pragma unroll
    for (int r = 0; r < kQPW; ++r) {
      const int j = wj_lo + r;
      if (j > wj_hi) continue;
      const int64_t o = (int64_t)(sv.kv_row + j) * p.kv_stride + (int64_t)kvh * HD;
#pragma unroll
      for (int i = 0; i < DPL; ++i) {
        const int d = lane + 32 * i;
        if (d < HD) {
          bp.dk[o + d] = dk[r][i] * p.scale;
          bp.dv[o + d] = dv[r][i];
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
void check_params(const AttnParams& p, const char* op) {
  const std::string o(op);
  PHI3_CHECK(p.n_segs >= 0 && p.T > 0 && p.H > 0 && p.KVH > 0 && p.HD > 0,
             o + ": bad shape T=" + std::to_string(p.T) + " H=" + std::to_string(p.H) +
                 " KVH=" + std::to_string(p.KVH) + " HD=" + std::to_string(p.HD));
  PHI3_CHECK(p.H % p.KVH == 0, o + ": H=" + std::to_string(p.H) +
                                   " is not a multiple of KVH=" + std::to_string(p.KVH));
  PHI3_CHECK(p.HD <= kMaxHD, o + " (cuda): head dim " + std::to_string(p.HD) + " > " +
                                 std::to_string(kMaxHD) + " is not supported");
  PHI3_CHECK(p.n_segs == 0 || (p.segs && p.pad && p.q && p.k && p.v),
             o + ": missing segs/pad/q/k/v pointer");
}

// Dims-per-lane dispatch: HD <= 32 * DPL.
template <template <int> class Launch, typename... Args>
void dispatch_dpl(int HD, Args&&... args) {
  if (HD <= 32) Launch<1>::run(args...);
  else if (HD <= 64) Launch<2>::run(args...);
  else if (HD <= 96) Launch<3>::run(args...);
  else if (HD <= 128) Launch<4>::run(args...);
  else Launch<8>::run(args...);
}

template <typename Kernel>
void set_smem(Kernel k, size_t bytes) {
  if (bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
}

// grid.y: query (or key) blocks per (segment, head); ~8 blocks per SM in flight at most.
unsigned blocks_y(int T, int64_t grid_x) {
  const int64_t max_blocks = (T + kBQ - 1) / kBQ;
  const int64_t target = 8LL * sm_count();
  int64_t y = (target + grid_x - 1) / grid_x;
  if (y < 1) y = 1;
  if (y > max_blocks) y = max_blocks;
  if (y > 65535) y = 65535;
  return static_cast<unsigned>(y);
}

template <int DPL>
struct LaunchForward {
  static void run(const AttnParams& p, cudaStream_t s) {
    const int HD4 = (p.HD + 3) / 4 * 4;
    const size_t bytes = fwd_smem_floats(HD4, p.HD) * sizeof(float);
    set_smem(attn_forward_kernel<DPL>, bytes);
    const int64_t gx = (int64_t)p.n_segs * p.H;
    launch(attn_forward_kernel<DPL>, dim3((unsigned)gx, blocks_y(p.T, gx)), kThreads, bytes, s, p,
           HD4);
    PHI3_LAUNCH_CHECK();
  }
};

template <int DPL>
struct LaunchBackward {
  static void run(const AttnBackwardParams& bp, float* Dbuf, cudaStream_t s) {
    const AttnParams& p = bp.fwd;
    const int HD4 = (p.HD + 3) / 4 * 4;
    const size_t b1 = dq_smem_floats(HD4) * sizeof(float);
    set_smem(attn_backward_dq_kernel<DPL>, b1);
    const int64_t gx1 = (int64_t)p.n_segs * p.H;
    launch(attn_backward_dq_kernel<DPL>, dim3((unsigned)gx1, blocks_y(p.T, gx1)), kThreads, b1, s,
           bp, Dbuf, HD4);
    PHI3_LAUNCH_CHECK();
    const size_t b2 = dkv_smem_floats(HD4) * sizeof(float);
    set_smem(attn_backward_dkv_kernel<DPL>, b2);
    const int64_t gx2 = (int64_t)p.n_segs * p.KVH;
    launch(attn_backward_dkv_kernel<DPL>, dim3((unsigned)gx2, blocks_y(p.T, gx2)), kThreads, b2, s,
           bp, Dbuf, HD4);
    PHI3_LAUNCH_CHECK();
  }
};

}  // namespace

void attention_forward(const AttnParams& p, Stream stream) {
  check_params(p, "attention_forward");
  PHI3_CHECK(p.z != nullptr, "attention_forward: no z output");
  if (p.n_segs == 0) return;
  PHI3_CHECK((int64_t)p.n_segs * p.H <= INT32_MAX, "attention_forward: too many segments");
  if (p.tensor_cores && !p.pattern) return attention_forward_tc(p, as_cuda(stream));
  dispatch_dpl<LaunchForward>(p.HD, p, as_cuda(stream));
}

void attention_backward(const AttnBackwardParams& bp, Stream stream) {
  const AttnParams& p = bp.fwd;
  check_params(p, "attention_backward");
  PHI3_CHECK(p.stats != nullptr,
             "attention_backward: the forward's softmax stats (AttnParams::stats) are required");
  PHI3_CHECK(bp.dz && bp.dq && bp.dk && bp.dv, "attention_backward: missing dz/dq/dk/dv");
  if (p.n_segs == 0) return;
  cudaStream_t s = as_cuda(stream);
  auto* Dbuf = static_cast<float*>(
      scratch(s, (size_t)p.n_segs * p.H * p.T * sizeof(float), kScratchAttn));
  if (p.tensor_cores && !bp.dpattern) return attention_backward_tc(bp, Dbuf, s);
  dispatch_dpl<LaunchBackward>(p.HD, bp, Dbuf, s);
}

}  // namespace phi3::cuda
