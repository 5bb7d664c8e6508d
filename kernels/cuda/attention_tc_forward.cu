// Attention forward on bf16 tensor cores (AttnParams::tensor_cores; semantics as the fp32
// kernel of attention.cu, see its header): FlashAttention-2's tiling with WMMA.
//
// A block of nw warps owns (segment, head) and bq = 16 nw consecutive query positions (16 per
// warp), counted from the end of the sequence as in the fp32 kernel. Q is staged once in
// shared memory as bf16; the block walks its visible keys k_lo..t_hi in tiles of bk keys
// (k, v staged as bf16; rows from the packed k/v or the prefix cache). Per tile each warp
// whose queries see any key of it:
//   S = Q K^T (mma, fp32) -> shared memory; two lanes per query row mask, scale, soft-cap
//   and keep the online softmax (m, l) in fp32, write P = exp(S - m_new) rounded to bf16 and
//   the row's correction exp(m_old - m_new); the warp rescales its O rows (fp32, shared
//   memory) and adds P V (mma: O loaded as the accumulator, stored back).
// Tiles past t_hi or before the warp's first visible key are skipped (the causal diagonal
// and the sliding window); pad queries see no key (z = 0, stats (-inf, 0)).
// Precision: q, k, v and P are rounded to bf16 (relative 2^-9 each), products exact and
// accumulated in fp32; m, l and the normalisation in fp32. l sums the unrounded p.
// Sizes (nw = 4, bq = 64): bk = 64 for HD <= 128 (113 KiB shared memory at HD = 128),
// bk = 32 above (149 KiB at HD = 256): within sm_80's 163 KiB and sm_90's 227 KiB.
#include <cmath>
#include <string>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

using namespace attn;
using namespace attn_tc;

struct FwdLayout {
  int nw, bq, bk, hdp;
  int ldh, lds, ldp, ldo;  // strides: bf16 q/k/v rows, fp32 S, bf16 P, fp32 O
  size_t q, k, v, s, pp, o, c, m, l, bytes;
};

FwdLayout fwd_layout(int HD) {
  FwdLayout L;
  L.nw = 4;
  L.bq = 16 * L.nw;
  L.hdp = hd_pad(HD);
  L.bk = L.hdp <= 128 ? 64 : 32;
  L.ldh = ld_bf16(L.hdp);
  L.lds = ld_f32(L.bk);
  L.ldp = ld_bf16(L.bk);
  L.ldo = ld_f32(L.hdp);
  SmemPlan sp;
  L.q = sp.add((size_t)L.bq * L.ldh * 2);
  L.k = sp.add((size_t)L.bk * L.ldh * 2);
  L.v = sp.add((size_t)L.bk * L.ldh * 2);
  L.s = sp.add((size_t)L.bq * L.lds * 4);
  L.pp = sp.add((size_t)L.bq * L.ldp * 2);
  L.o = sp.add((size_t)L.bq * L.ldo * 4);
  L.c = sp.add((size_t)L.bq * 4);
  L.m = sp.add((size_t)L.bq * 4);
  L.l = sp.add((size_t)L.bq * 4);
  L.bytes = sp.bytes;
  return L;
}

__global__ void __launch_bounds__(128) attn_tc_forward_kernel(const AttnParams p, const FwdLayout L) {
#if PHI3_ATTN_TC_ARCH
  PHI3_DYNAMIC_SHARED(SmemChunk, smem);
  char* base = reinterpret_cast<char*>(smem);
  uint16_t* Qs = reinterpret_cast<uint16_t*>(base + L.q);
  uint16_t* Ks = reinterpret_cast<uint16_t*>(base + L.k);
  uint16_t* Vs = reinterpret_cast<uint16_t*>(base + L.v);
  float* Ss = reinterpret_cast<float*>(base + L.s);
  uint16_t* Ps = reinterpret_cast<uint16_t*>(base + L.pp);
  float* Os = reinterpret_cast<float*>(base + L.o);
  float* Cs = reinterpret_cast<float*>(base + L.c);
  float* Ms = reinterpret_cast<float*>(base + L.m);
  float* Ls = reinterpret_cast<float*>(base + L.l);
  const int HD = p.HD, hdp = L.hdp, bq = L.bq, bk = L.bk;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = lane >> 1, half = lane & 1;  // the row (of the warp's 16) and half-row of a lane
  const int row = 16 * warp + r;             // the lane's row in the block's tiles
  const int seg = blockIdx.x / p.H, h = blockIdx.x - seg * p.H;
  const int kvh = h / (p.H / p.KVH);
  const SegView sv = load_seg(p, seg);
  const int T = sv.T, pad = sv.pad;
  const int n_qb = (T - sv.q_start + bq - 1) / bq;
  float* Sw = Ss + 16 * warp * L.lds;  // this warp's 16 rows of each tile
  uint16_t* Pw = Ps + 16 * warp * L.ldp;
  float* Ow = Os + 16 * warp * L.ldo;

  for (int qb = blockIdx.y; qb < n_qb; qb += gridDim.y) {
    const int t_hi = T - 1 - qb * bq;
    const int t_lo = max(sv.q_start, t_hi - bq + 1);
    const int wt_lo = t_lo + 16 * warp;  // this warp's queries wt_lo..wt_hi
    const int wt_hi = min(t_hi, wt_lo + 15);
    const bool warp_active = wt_lo <= t_hi && wt_hi >= pad;
    const int k_lo = attn_first_key(t_lo, pad, p.window);  // the block's keys k_lo..t_hi
    const int wk_lo = attn_first_key(wt_lo, pad, p.window);
    const int t = wt_lo + r;  // the lane's query
    const bool row_ok = t <= t_hi;

    __syncthreads();  // the previous query block is done with shared memory
    stage_rows(Qs, bq, L.ldh, HD, hdp, [&](int i) -> const float* {
      const int tq = t_lo + i;
      return tq <= t_hi ? p.q + (int64_t)(sv.q_row + tq - sv.q_start) * p.q_stride + (int64_t)h * HD
                        : nullptr;
    });

    float m = -INFINITY, l = 0.0f;  // the lane's row's online softmax (both lanes of a row)
    bool o_init = false;            // warp-uniform: O holds a tile's P V
    for (int j0 = k_lo; t_hi >= pad && j0 <= t_hi; j0 += bk) {
      __syncthreads();  // previous tile consumed (and Q staged, on the first)
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

      mma_rows<true>(Sw, L.lds, false, Qs + 16 * warp * L.ldh, L.ldh, Ks, L.ldh, bk, hdp);  // S = Q K^T
      __syncwarp();
      {  // online softmax of the lane's half row
        float* srow = Ss + row * L.lds;
        uint16_t* prow = Ps + row * L.ldp;
        const int c0 = half * (bk / 2), c1 = c0 + bk / 2;
        float mx = -INFINITY;
        for (int c = c0; c < c1; ++c) {
          const int j = j0 + c;
          const bool vis = row_ok && j <= t_hi && attn_visible(t, j, pad, p.window);
          const float sc = vis ? scaled_score(srow[c], p) : -INFINITY;
          srow[c] = sc;
          mx = fmaxf(mx, sc);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_new = fmaxf(m, mx);
        float corr = 1.0f, sum = 0.0f;
        if (m_new != -INFINITY) corr = expf(m - m_new);  // 0 when m was -inf
        for (int c = c0; c < c1; ++c) {
          const float pj = m_new != -INFINITY ? expf(srow[c] - m_new) : 0.0f;  // 0 when masked
          sum += pj;
          prow[c] = to_bf16(pj);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * corr + sum;
        m = m_new;
        if (half == 0) Cs[row] = corr;
      }
      __syncwarp();
      if (o_init) {  // O rows *= their corrections
        for (int i = lane; i < 16 * hdp; i += 32) {
          const int rr = i / hdp, d = i - rr * hdp;
          Ow[rr * L.ldo + d] *= Cs[16 * warp + rr];
        }
        __syncwarp();
      }
      mma_rows<false>(Ow, L.ldo, o_init, Pw, L.ldp, Vs, L.ldh, hdp, bk);  // O += P V
      o_init = true;
    }

    // z rows (pad queries and rows never reached: l == 0 -> 0)
    if (half == 0) {
      Ms[row] = m;
      Ls[row] = l;
    }
    __syncwarp();
    for (int rr = 0; rr < 16; ++rr) {
      const int tq = wt_lo + rr;
      if (tq > t_hi) break;
      const float lr = Ls[16 * warp + rr];
      const int64_t zoff = (int64_t)(sv.q_row + tq - sv.q_start) * p.z_stride + (int64_t)h * HD;
      float* zr = p.z + zoff;
      uint16_t* zh = p.z16 ? p.z16 + zoff : nullptr;  // the o_proj input in bf16 (GemmOut)
      const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
      if (p.stats && lane == 0) {
        float* st = p.stats + (((int64_t)sv.b * p.H + h) * T + tq) * 2;
        st[0] = Ms[16 * warp + rr];
        st[1] = lr;
      }
      for (int d = lane; d < HD; d += 32) {
        const float zv = o_init ? Ow[rr * L.ldo + d] * inv : 0.0f;
        zr[d] = zv;
        if (zh) zh[d] = float_to_bf16_bits(zv);
      }
    }
  }
#else
  __trap();
#endif
}

unsigned blocks_y(int T, int bq, int64_t grid_x) {
  const int64_t max_blocks = (T + bq - 1) / bq;
  int64_t y = (4LL * sm_count() + grid_x - 1) / grid_x;  // ~4 blocks per SM in flight at most
  if (y < 1) y = 1;
  if (y > max_blocks) y = max_blocks;
  if (y > 65535) y = 65535;
  return static_cast<unsigned>(y);
}

}  // namespace

void attention_forward_tc(const AttnParams& p, cudaStream_t s) {
  PHI3_CHECK(p.HD <= attn_tc::kMaxHD, "attention_forward (tensor cores): head dim " +
                                          std::to_string(p.HD) + " > " +
                                          std::to_string(attn_tc::kMaxHD));
  const FwdLayout L = fwd_layout(p.HD);
  if (L.bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(attn_tc_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(L.bytes)));
  const int64_t gx = (int64_t)p.n_segs * p.H;
  launch(attn_tc_forward_kernel, dim3((unsigned)gx, blocks_y(p.T, L.bq, gx)), 32 * L.nw, L.bytes, s,
         p, L);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
