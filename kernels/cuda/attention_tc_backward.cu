// Attention backward on bf16 tensor cores (AttnParams::tensor_cores; semantics as the fp32
// kernels of attention.cu: plain passes, the forward's stats required, P recomputed from
// q, k and (m, l) as in FlashAttention-2's backward). Products with WMMA (bf16 inputs, fp32
// accumulators); the softmax algebra per element in fp32 by two lanes per tile row.
//
// Kernel 1 (query side): a block of nw warps owns (segment, head) and bq = 16 nw queries (16 per
// warp), stages q and dz as bf16, and walks the visible key tiles twice:
//   sweep 0: S = Q K^T, dP = dZ V^T (mma), D_t = sum_j P dP;
//   sweep 1: the same S, dP, then dS = P (dP - D_t) (x soft-cap gradient) rounded to bf16 and
//            dQ += dS K (mma into fp32 rows in shared memory). D_t goes to Dbuf.
// Kernel 2 (key side): a block owns (segment, kv head) and bq keys (16 per warp), stages their
// k and v as bf16, and for every head of the GQA group walks the query tiles (bt queries) that
// can see them: S^T = K Q^T, dP^T = V dZ^T (mma), P^T and dS^T (from the stats and D_t) rounded
// to bf16, dV += P^T dZ and dK += dS^T Q (mma into fp32 rows in shared memory).
// Versus FlashAttention-2 this does one more pass (sweep 0: D_t from P and dP, because
// AttnBackwardParams carries no z for D_t = dz . z): 9 T x T x HD products per head against the
// forward's 2, i.e. 4.5x the forward's FLOPs.
// Precision: q, k, v, dz, P and dS rounded to bf16 (relative 2^-9 each); fp32 accumulation.
// Sizes: nw = 4 and 64-key tiles for HD <= 128 (148 KiB of shared memory per kernel at
// HD = 128), nw = 2 and 32-key tiles above (113 / 148 KiB at HD = 256): within sm_80's 163 KiB.
#include <cmath>
#include <string>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

using namespace attn;
using namespace attn_tc;

// Kernel 1: own rows bq (queries), tiles of bk keys. Kernel 2: own rows bq (keys), tiles of
// bk queries. a/b: the own rows' two bf16 operands (q, dz | k, v); ta/tb: the tile's (k, v |
// q, dz); s, dp: fp32 [bq][lds]; g1, g2: bf16 [bq][ldp] (dS | P^T, dS^T); acc1, acc2: fp32
// [bq][ldo] (dQ | dK, dV); r1..r3: per-row (kernel 1: m, l, D) or per-tile-column
// (kernel 2: m, l, D of the tile's queries) floats.
struct BwdLayout {
  int nw, bq, bk, hdp;
  int ldh, lds, ldp, ldo;
  size_t a, b, ta, tb, s, dp, g1, g2, acc1, acc2, r1, r2, r3, bytes;
};

BwdLayout bwd_layout(int HD, bool key_side) {
  BwdLayout L;
  L.hdp = hd_pad(HD);
  L.nw = L.hdp <= 128 ? 4 : 2;
  L.bq = 16 * L.nw;
  L.bk = key_side ? 32 : (L.hdp <= 128 ? 64 : 32);
  L.ldh = ld_bf16(L.hdp);
  L.lds = ld_f32(L.bk);
  L.ldp = ld_bf16(L.bk);
  L.ldo = ld_f32(L.hdp);
  SmemPlan sp;
  L.a = sp.add((size_t)L.bq * L.ldh * 2);
  L.b = sp.add((size_t)L.bq * L.ldh * 2);
  L.ta = sp.add((size_t)L.bk * L.ldh * 2);
  L.tb = sp.add((size_t)L.bk * L.ldh * 2);
  L.s = sp.add((size_t)L.bq * L.lds * 4);
  L.dp = sp.add((size_t)L.bq * L.lds * 4);
  L.g1 = sp.add((size_t)L.bq * L.ldp * 2);
  L.g2 = key_side ? sp.add((size_t)L.bq * L.ldp * 2) : 0;
  L.acc1 = sp.add((size_t)L.bq * L.ldo * 4);
  L.acc2 = key_side ? sp.add((size_t)L.bq * L.ldo * 4) : 0;
  const int nr = key_side ? L.bk : L.bq;
  L.r1 = sp.add((size_t)nr * 4);
  L.r2 = sp.add((size_t)nr * 4);
  L.r3 = sp.add((size_t)nr * 4);
  L.bytes = sp.bytes;
  return L;
}

template <typename T>
__device__ __forceinline__ T* at(char* base, size_t off) {
  return reinterpret_cast<T*>(base + off);
}

// ---------------------------------------------------------------------------------------
__global__ void __launch_bounds__(128)
    attn_tc_backward_dq_kernel(const AttnBackwardParams bp, float* Dbuf, const BwdLayout L) {
#if PHI3_ATTN_TC_ARCH
  const AttnParams& p = bp.fwd;
  PHI3_DYNAMIC_SHARED(SmemChunk, smem);
  char* base = reinterpret_cast<char*>(smem);
  uint16_t* Qs = at<uint16_t>(base, L.a);
  uint16_t* DZs = at<uint16_t>(base, L.b);
  uint16_t* Ks = at<uint16_t>(base, L.ta);
  uint16_t* Vs = at<uint16_t>(base, L.tb);
  float* Ss = at<float>(base, L.s);
  float* DPs = at<float>(base, L.dp);
  uint16_t* DSs = at<uint16_t>(base, L.g1);
  float* DQs = at<float>(base, L.acc1);
  float* Dr = at<float>(base, L.r3);
  const int HD = p.HD, hdp = L.hdp, bq = L.bq, bk = L.bk;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = lane >> 1, half = lane & 1;
  const int row = 16 * warp + r;
  const int seg = blockIdx.x / p.H, h = blockIdx.x - seg * p.H;
  const int kvh = h / (p.H / p.KVH);
  const SegView sv = load_seg(p, seg);
  const int T = sv.T, pad = sv.pad;
  const int n_qb = (T - sv.q_start + bq - 1) / bq;
  const bool plain = sv.fresh == 0 && sv.q_start == 0;
  const float* ST = p.stats + ((int64_t)sv.b * p.H + h) * T * 2;

  for (int qb = blockIdx.y; qb < n_qb; qb += gridDim.y) {
    const int t_hi = T - 1 - qb * bq;
    const int t_lo = max(sv.q_start, t_hi - bq + 1);
    const int wt_lo = t_lo + 16 * warp;
    const int wt_hi = min(t_hi, wt_lo + 15);
    if (!plain) {  // misuse (backward of a prefix-cached pass): make it loud
      for (int t = wt_lo; t <= wt_hi; ++t)
        for (int d = lane; d < HD; d += 32)
          bp.dq[(int64_t)(sv.q_row + t - sv.q_start) * p.q_stride + (int64_t)h * HD + d] = NAN;
      continue;
    }
    const bool warp_active = wt_lo <= t_hi && wt_hi >= pad;
    const int k_lo = attn_first_key(t_lo, pad, p.window);
    const int wk_lo = attn_first_key(wt_lo, pad, p.window);
    const int t = wt_lo + r;
    const bool row_ok = t <= t_hi;
    const float m = row_ok ? ST[2 * t] : 0.0f, l = row_ok ? ST[2 * t + 1] : 1.0f;

    __syncthreads();
    stage_rows(Qs, bq, L.ldh, HD, hdp, [&](int i) -> const float* {
      const int tq = t_lo + i;
      return tq <= t_hi ? p.q + (int64_t)(sv.q_row + tq) * p.q_stride + (int64_t)h * HD : nullptr;
    });
    stage_rows(DZs, bq, L.ldh, HD, hdp, [&](int i) -> const float* {
      const int tq = t_lo + i;
      return tq <= t_hi ? bp.dz + (int64_t)(sv.q_row + tq) * p.z_stride + (int64_t)h * HD : nullptr;
    });

    float Dsum = 0.0f;
    bool acc_init = false;  // warp-uniform
    for (int sweep = 0; sweep < 2; ++sweep) {  // 0: D_t, 1: dq
      for (int j0 = k_lo; t_hi >= pad && j0 <= t_hi; j0 += bk) {
        __syncthreads();
        stage_rows(Ks, bk, L.ldh, HD, hdp, [&](int i) -> const float* {
          const int j = j0 + i;
          return j <= t_hi ? kv_ptr(p, sv, p.k, p.k_cache, j, kvh) : nullptr;
        });
        stage_rows(Vs, bk, L.ldh, HD, hdp, [&](int i) -> const float* {
          const int j = j0 + i;
          return j <= t_hi ? kv_ptr(p, sv, p.v, p.v_cache, j, kvh) : nullptr;
        });
        __syncthreads();
        if (!warp_active || j0 > wt_hi || j0 + bk - 1 < wk_lo) continue;  // warp-uniform

        mma_rows<true>(Ss + 16 * warp * L.lds, L.lds, false, Qs + 16 * warp * L.ldh, L.ldh, Ks, L.ldh, bk, hdp);
        mma_rows<true>(DPs + 16 * warp * L.lds, L.lds, false, DZs + 16 * warp * L.ldh, L.ldh, Vs, L.ldh, bk, hdp);
        __syncwarp();
        const float* srow = Ss + row * L.lds;
        const float* dprow = DPs + row * L.lds;
        uint16_t* dsrow = DSs + row * L.ldp;
        for (int c = half * (bk / 2); c < (half + 1) * (bk / 2); ++c) {
          const int j = j0 + c;
          const bool vis = row_ok && j <= t_hi && attn_visible(t, j, pad, p.window);
          const float sc = vis ? scaled_score(srow[c], p) : 0.0f;
          const float pv = vis ? prob_of(sc, m, l) : 0.0f;
          if (sweep == 0) {
            Dsum += pv * dprow[c];
          } else {
            float ds = vis ? softmax_grad(pv, dprow[c], Dsum) : 0.0f;
            if (p.softcap > 0.0f) ds *= soft_cap_grad(sc, p.softcap);
            dsrow[c] = to_bf16(ds);
          }
        }
        if (sweep == 1) {
          __syncwarp();
          mma_rows<false>(DQs + 16 * warp * L.ldo, L.ldo, acc_init, DSs + 16 * warp * L.ldp, L.ldp, Ks,
                          L.ldh, hdp, bk);  // dQ += dS K
          acc_init = true;
        }
      }
      if (sweep == 0) Dsum += __shfl_xor_sync(0xffffffffu, Dsum, 1);  // the row's D_t in both lanes
    }

    if (half == 0) Dr[row] = Dsum;
    __syncwarp();
    for (int rr = 0; rr < 16; ++rr) {
      const int tq = wt_lo + rr;
      if (tq > t_hi) break;
      if (lane == 0) Dbuf[((int64_t)seg * p.H + h) * T + tq] = Dr[16 * warp + rr];
      float* out = bp.dq + (int64_t)(sv.q_row + tq) * p.q_stride + (int64_t)h * HD;
      for (int d = lane; d < HD; d += 32)
        out[d] = acc_init ? DQs[(16 * warp + rr) * L.ldo + d] * p.scale : 0.0f;
    }
  }
#else
  __trap();
#endif
}

// ---------------------------------------------------------------------------------------
__global__ void __launch_bounds__(128)
    attn_tc_backward_dkv_kernel(const AttnBackwardParams bp, const float* Dbuf, const BwdLayout L) {
#if PHI3_ATTN_TC_ARCH
  const AttnParams& p = bp.fwd;
  PHI3_DYNAMIC_SHARED(SmemChunk, smem);
  char* base = reinterpret_cast<char*>(smem);
  uint16_t* Kk = at<uint16_t>(base, L.a);   // the block's keys: k rows
  uint16_t* Vk = at<uint16_t>(base, L.b);   // and v rows
  uint16_t* Qs = at<uint16_t>(base, L.ta);  // a query tile: q rows
  uint16_t* DZs = at<uint16_t>(base, L.tb); // and dz rows
  float* STs = at<float>(base, L.s);        // S^T [key][query]
  float* DPTs = at<float>(base, L.dp);      // dP^T
  uint16_t* PTs = at<uint16_t>(base, L.g1);
  uint16_t* DSTs = at<uint16_t>(base, L.g2);
  float* DKs = at<float>(base, L.acc1);
  float* DVs = at<float>(base, L.acc2);
  float* Ms = at<float>(base, L.r1);
  float* Ls = at<float>(base, L.r2);
  float* Ds = at<float>(base, L.r3);
  const int HD = p.HD, hdp = L.hdp, bq = L.bq, bt = L.bk;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = lane >> 1, half = lane & 1;
  const int row = 16 * warp + r;
  const int seg = blockIdx.x / p.KVH, kvh = blockIdx.x - seg * p.KVH;
  const int group = p.H / p.KVH;
  const SegView sv = load_seg(p, seg);
  const int T = sv.T, pad = sv.pad;
  const int n_kb = (T - sv.fresh + bq - 1) / bq;
  const bool plain = sv.fresh == 0 && sv.q_start == 0;

  for (int kb = blockIdx.y; kb < n_kb; kb += gridDim.y) {
    const int j_lo = sv.fresh + kb * bq;  // keys counted from the start: most queries first
    const int j_hi = min(T - 1, j_lo + bq - 1);
    const int wj_lo = j_lo + 16 * warp;
    const int wj_hi = min(j_hi, wj_lo + 15);
    if (!plain) {
      poison_key_rows(bp, sv, kvh, wj_lo, wj_hi, lane);
      continue;
    }
    // queries that can see keys j_lo..j_hi: t in [max(j_lo, pad), j_hi + window - 1]
    const int t_lo = max(j_lo, pad);
    const int t_hi = p.window > 0 ? min(T - 1, j_hi + p.window - 1) : T - 1;
    const bool warp_active = wj_lo <= j_hi && wj_hi >= pad;
    const int wt_hi = p.window > 0 ? min(T - 1, wj_hi + p.window - 1) : T - 1;
    const int j = wj_lo + r;  // the lane's key

    __syncthreads();
    stage_rows(Kk, bq, L.ldh, HD, hdp, [&](int i) -> const float* {
      const int jj = j_lo + i;
      return jj <= j_hi ? p.k + (int64_t)(sv.kv_row + jj) * p.kv_stride + (int64_t)kvh * HD : nullptr;
    });
    stage_rows(Vk, bq, L.ldh, HD, hdp, [&](int i) -> const float* {
      const int jj = j_lo + i;
      return jj <= j_hi ? p.v + (int64_t)(sv.kv_row + jj) * p.kv_stride + (int64_t)kvh * HD : nullptr;
    });

    bool acc_init = false;  // warp-uniform
    for (int hh = 0; hh < group && j_hi >= pad; ++hh) {
      const int h = kvh * group + hh;
      const float* Dh = Dbuf + ((int64_t)seg * p.H + h) * T;
      const float* ST = p.stats + ((int64_t)sv.b * p.H + h) * T * 2;
      for (int t0 = t_lo; t0 <= t_hi; t0 += bt) {
        __syncthreads();
        stage_rows(Qs, bt, L.ldh, HD, hdp, [&](int i) -> const float* {
          const int t = t0 + i;
          return t <= t_hi ? p.q + (int64_t)(sv.q_row + t) * p.q_stride + (int64_t)h * HD : nullptr;
        });
        stage_rows(DZs, bt, L.ldh, HD, hdp, [&](int i) -> const float* {
          const int t = t0 + i;
          return t <= t_hi ? bp.dz + (int64_t)(sv.q_row + t) * p.z_stride + (int64_t)h * HD : nullptr;
        });
        for (int i = threadIdx.x; i < bt; i += blockDim.x) {
          const bool in = t0 + i <= t_hi;
          Ds[i] = in ? Dh[t0 + i] : 0.0f;
          Ms[i] = in ? ST[2 * (t0 + i)] : 0.0f;
          Ls[i] = in ? ST[2 * (t0 + i) + 1] : 1.0f;
        }
        __syncthreads();
        if (!warp_active || t0 > wt_hi || t0 + bt - 1 < wj_lo) continue;  // warp-uniform

        mma_rows<true>(STs + 16 * warp * L.lds, L.lds, false, Kk + 16 * warp * L.ldh, L.ldh, Qs, L.ldh, bt, hdp);
        mma_rows<true>(DPTs + 16 * warp * L.lds, L.lds, false, Vk + 16 * warp * L.ldh, L.ldh, DZs, L.ldh, bt, hdp);
        __syncwarp();
        const float* srow = STs + row * L.lds;
        const float* dprow = DPTs + row * L.lds;
        uint16_t* prow = PTs + row * L.ldp;
        uint16_t* dsrow = DSTs + row * L.ldp;
        for (int c = half * (bt / 2); c < (half + 1) * (bt / 2); ++c) {
          const int t = t0 + c;
          const bool vis = t <= t_hi && j <= j_hi && attn_visible(t, j, pad, p.window);
          const float sc = vis ? scaled_score(srow[c], p) : 0.0f;
          const float pv = vis ? prob_of(sc, Ms[c], Ls[c]) : 0.0f;
          float ds = vis ? softmax_grad(pv, dprow[c], Ds[c]) : 0.0f;
          if (p.softcap > 0.0f) ds *= soft_cap_grad(sc, p.softcap);
          prow[c] = to_bf16(pv);
          dsrow[c] = to_bf16(ds);
        }
        __syncwarp();
        mma_rows<false>(DVs + 16 * warp * L.ldo, L.ldo, acc_init, PTs + 16 * warp * L.ldp, L.ldp, DZs, L.ldh,
                        hdp, bt);  // dV += P^T dZ
        mma_rows<false>(DKs + 16 * warp * L.ldo, L.ldo, acc_init, DSTs + 16 * warp * L.ldp, L.ldp, Qs, L.ldh,
                        hdp, bt);  // dK += dS^T Q
        acc_init = true;
      }
    }

    __syncwarp();
    for (int rr = 0; rr < 16; ++rr) {
      const int jj = wj_lo + rr;
      if (jj > wj_hi) break;
      const int64_t o = (int64_t)(sv.kv_row + jj) * p.kv_stride + (int64_t)kvh * HD;
      const int64_t so = (int64_t)(16 * warp + rr) * L.ldo;
      for (int d = lane; d < HD; d += 32) {
        bp.dk[o + d] = acc_init ? DKs[so + d] * p.scale : 0.0f;
        bp.dv[o + d] = acc_init ? DVs[so + d] : 0.0f;
      }
    }
  }
#else
  __trap();
#endif
}

unsigned blocks_y(int T, int rows, int64_t grid_x) {
  const int64_t max_blocks = (T + rows - 1) / rows;
  int64_t y = (4LL * sm_count() + grid_x - 1) / grid_x;  // ~4 blocks per SM in flight at most
  if (y < 1) y = 1;
  if (y > max_blocks) y = max_blocks;
  if (y > 65535) y = 65535;
  return static_cast<unsigned>(y);
}

template <typename Kernel>
void set_smem(Kernel k, size_t bytes) {
  if (bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
}

}  // namespace

void attention_backward_tc(const AttnBackwardParams& bp, float* Dbuf, cudaStream_t s) {
  const AttnParams& p = bp.fwd;
  PHI3_CHECK(p.HD <= attn_tc::kMaxHD, "attention_backward (tensor cores): head dim " +
                                          std::to_string(p.HD) + " > " +
                                          std::to_string(attn_tc::kMaxHD));
  const BwdLayout L1 = bwd_layout(p.HD, false);
  set_smem(attn_tc_backward_dq_kernel, L1.bytes);
  const int64_t gx1 = (int64_t)p.n_segs * p.H;
  launch(attn_tc_backward_dq_kernel, dim3((unsigned)gx1, blocks_y(p.T, L1.bq, gx1)), 32 * L1.nw, L1.bytes,
         s, bp, Dbuf, L1);
  PHI3_LAUNCH_CHECK();
  const BwdLayout L2 = bwd_layout(p.HD, true);
  set_smem(attn_tc_backward_dkv_kernel, L2.bytes);
  const int64_t gx2 = (int64_t)p.n_segs * p.KVH;
  launch(attn_tc_backward_dkv_kernel, dim3((unsigned)gx2, blocks_y(p.T, L2.bq, gx2)), 32 * L2.nw, L2.bytes,
         s, bp, static_cast<const float*>(Dbuf), L2);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
