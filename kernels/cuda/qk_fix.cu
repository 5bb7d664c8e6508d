// AtP*'s QK fix on the GPU; semantics in kernels/ops.h (QkFixParams), CPU reference in
// kernels/cpu/qk_fix.cpp.
//
// Kernel 1, one block per attention row (b, h, t): three sweeps over the row's visible keys
// (scores recomputed each time: q'.k for the query fix, q.k' for the keys from the source,
// q.k for the base): (1) the two maxima and S = sum_j A G; (2) the two softmax sums;
// scores in fp32 like the attention op, exponentials and sums in double like the CPU op (the
// terms of S and of the estimates cancel: near one-hot rows with large gradients lost 0.5%
// of the largest estimate in fp32);
// (3) the query estimate, the all-keys estimate of the row, and each key's single-key term
// qk_key_row_effect (op_math.h), written to a [B, H, T, T] scratch (0 where not visible).
// Kernel 2, one block per tile of 32 keys of (b, kvh): lane l of each warp owns key j0 + l and
// sums its terms over the heads of its group and a quarter of the rows (warp w: rows w mod 4),
// so a warp reads 32 consecutive floats of a scratch row (coalesced; a block per key read one
// float per row, T floats apart); the four warps' sums are added in a fixed order. Block
// (0, kvh, b) also sums the all-keys row estimates. No atomics: results do not change from
// run to run.
#include "kernels/cuda/common.cuh"
#include "kernels/op_math.h"

namespace phi3::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeyTile = 32;  // keys per block of the key pass (one per lane)

__device__ __forceinline__ float dotf(const float* __restrict__ a, const float* __restrict__ b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s = fmaf(a[i], b[i], s);
  return s;
}

__global__ void __launch_bounds__(kThreads) qk_rows_kernel(const QkFixParams p, float* kterm, float* kall_row) {
  __shared__ float red[32];
  const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int T = p.T, HD = p.HD, group = p.H / p.KVH, kh = h / group, pad = p.pad[b];
  const int64_t row = ((int64_t)b * p.H + h) * T + t;  // pattern row
  const float* A = p.pattern + row * T;
  const float* G = p.dpattern + row * T;
  float* kt = kterm + row * T;
  const int64_t qoff = ((int64_t)b * T + t) * p.q_stride + (int64_t)h * HD;
  const float* q = p.q + qoff;
  const float* qs = p.q_src + qoff;
  auto krow = [&](const float* base, int j) { return base + ((int64_t)b * T + j) * p.kv_stride + (int64_t)kh * HD; };
  if (t < pad) {  // pad query row: sees nothing, changes nothing
    for (int j = threadIdx.x; j < T; j += blockDim.x) kt[j] = 0.0f;
    if (threadIdx.x == 0) {
      p.q_est[((int64_t)b * T + t) * p.H + h] = 0.0f;
      kall_row[row] = 0.0f;
    }
    return;
  }
  const int first = attn_first_key(t, pad, p.window);
  __shared__ double redd[32];
  float mq = -INFINITY, mk = -INFINITY, m0 = -INFINITY;
  double S = 0.0;
  for (int j = first + threadIdx.x; j <= t; j += blockDim.x) {
    mq = fmaxf(mq, soft_cap(dotf(qs, krow(p.k, j), HD) * p.scale, p.softcap));
    mk = fmaxf(mk, soft_cap(dotf(q, krow(p.k_src, j), HD) * p.scale, p.softcap));
    m0 = fmaxf(m0, soft_cap(dotf(q, krow(p.k, j), HD) * p.scale, p.softcap));
    S += (double)A[j] * G[j];
  }
  mq = block_max(mq, red);
  mk = block_max(mk, red);
  m0 = block_max(m0, red);
  S = block_sum(S, redd);
  // The first key holding the base maximum (smallest index, as the CPU picks it).
  float jm = static_cast<float>(T);
  for (int j = first + threadIdx.x; j <= t; j += blockDim.x)
    if (soft_cap(dotf(q, krow(p.k, j), HD) * p.scale, p.softcap) == m0) jm = fminf(jm, static_cast<float>(j));
  jm = -block_max(-jm, red);
  double zq = 0.0, zk = 0.0, z0 = 0.0, z0_wo = 0.0;
  for (int j = first + threadIdx.x; j <= t; j += blockDim.x) {
    zq += exp((double)(soft_cap(dotf(qs, krow(p.k, j), HD) * p.scale, p.softcap)) - mq);
    zk += exp((double)(soft_cap(dotf(q, krow(p.k_src, j), HD) * p.scale, p.softcap)) - mk);
    const double e0 = exp((double)(soft_cap(dotf(q, krow(p.k, j), HD) * p.scale, p.softcap)) - m0);
    z0 += e0;
    if (j != static_cast<int>(jm)) z0_wo += e0;
  }
  zq = block_sum(zq, redd);
  zk = block_sum(zk, redd);
  z0 = block_sum(z0, redd);
  z0_wo = block_sum(z0_wo, redd);
  double eq = 0.0, ek = 0.0;
  for (int j = threadIdx.x; j < T; j += blockDim.x) {
    if (j < first || j > t) {
      kt[j] = 0.0f;
      continue;
    }
    const float s_new = soft_cap(dotf(q, krow(p.k_src, j), HD) * p.scale, p.softcap);
    const float s_old = soft_cap(dotf(q, krow(p.k, j), HD) * p.scale, p.softcap);
    eq += (exp((double)(soft_cap(dotf(qs, krow(p.k, j), HD) * p.scale, p.softcap)) - mq) / zq - A[j]) * G[j];
    ek += (exp((double)s_new - mk) / zk - A[j]) * G[j];
    const double others = j == static_cast<int>(jm) ? z0_wo : z0 - exp((double)s_old - (double)m0);
    kt[j] = static_cast<float>(qk_key_row_effect(s_old, s_new, m0, others, G[j], S));
  }
  eq = block_sum(eq, redd);
  ek = block_sum(ek, redd);
  if (threadIdx.x == 0) {
    p.q_est[((int64_t)b * T + t) * p.H + h] = static_cast<float>(eq);
    kall_row[row] = static_cast<float>(ek);
  }
}

__global__ void __launch_bounds__(kThreads) qk_keys_kernel(const QkFixParams p, const float* kterm,
                                                            const float* kall_row) {
  __shared__ double part[kThreads];
  const int j0 = blockIdx.x * kKeyTile, kh = blockIdx.y, b = blockIdx.z;
  const int T = p.T, group = p.H / p.KVH;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j = j0 + lane;
  // Warp w sums rows t = j0 + w, j0 + w + kWarps, ... of every head of the group; lane l reads
  // key j0 + l of the row: 32 consecutive floats per warp and row (coalesced).
  double s = 0.0;
  if (j < T) {
    for (int hh = 0; hh < group; ++hh) {
      const float* rows = kterm + ((int64_t)b * p.H + kh * group + hh) * T * T;
      for (int t = j0 + warp; t < T; t += kWarps)
        if (t >= j) s += rows[(int64_t)t * T + j];
    }
  }
  part[threadIdx.x] = s;
  __syncthreads();
  if (warp == 0 && j < T) {
    double k = 0.0;
    for (int w = 0; w < kWarps; ++w) k += part[w * 32 + lane];  // fixed order: run to run identical
    p.k_est[((int64_t)b * T + j) * p.KVH + kh] = static_cast<float>(k);
  }
  if (blockIdx.x == 0) {  // block_sum's first barrier orders its writes after the reads above
    double a = 0.0;
    for (int i = threadIdx.x; i < group * T; i += blockDim.x) {
      const int h = kh * group + i / T, t = i % T;
      a += kall_row[((int64_t)b * p.H + h) * T + t];
    }
    a = block_sum(a, part);
    if (threadIdx.x == 0) p.k_all_est[(int64_t)b * p.KVH + kh] = static_cast<float>(a);
  }
}

}  // namespace

void attn_qk_fix(const QkFixParams& p, Stream stream) {
  PHI3_CHECK(p.B >= 0 && p.T >= 0 && p.H > 0 && p.KVH > 0 && p.H % p.KVH == 0 && p.HD > 0 && p.B < 65536 &&
                 p.H < 65536,
             "attn_qk_fix: bad shape");
  PHI3_CHECK(p.q && p.k && p.q_src && p.k_src && p.pattern && p.dpattern && p.pad && p.q_est && p.k_est &&
                 p.k_all_est,
             "attn_qk_fix: null pointer");
  if (p.B == 0 || p.T == 0) return;
  cudaStream_t s = as_cuda(stream);
  const size_t cells = (size_t)p.B * p.H * p.T * p.T, rows = (size_t)p.B * p.H * p.T;
  auto* kterm = static_cast<float*>(scratch(s, (cells + rows) * sizeof(float), kScratchQkFix));
  float* kall_row = kterm + cells;
  launch(qk_rows_kernel, dim3(p.T, p.H, p.B), kThreads, 0, s, p, kterm, kall_row);
  PHI3_LAUNCH_CHECK();
  launch(qk_keys_kernel, dim3((p.T + kKeyTile - 1) / kKeyTile, p.KVH, p.B), kThreads, 0, s, p, static_cast<const float*>(kterm),
         static_cast<const float*>(kall_row));
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
