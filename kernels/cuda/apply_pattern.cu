// z from a given attention pattern on the GPU; semantics in kernels/ops.h
// (ApplyPatternParams), CPU reference in kernels/cpu/apply_pattern.cpp.
// A block owns a tile of kQT consecutive query rows of one (head, batch row): it walks the
// keys in tiles of kKT staged in shared memory (v rows and the tile's pattern entries), up to
// the tile's last query (keys past the diagonal are never read), so each v row is read once
// per tile of queries instead of once per query. Warp w owns query rows w, w + 4, ... of the
// tile, lane l dims l, l + 32, ...; each output sums its keys j = 0..t in order (the CPU's
// order), so results are deterministic.
#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kQT = 16;                 // query rows per block
constexpr int kRPW = kQT / kWarps;      // query rows per warp
constexpr int kKT = 32;                 // keys per shared-memory tile
constexpr int kMaxHD = 256;
constexpr int kDPL = kMaxHD / 32;       // dims per lane at most

__global__ void __launch_bounds__(kThreads) apply_pattern_kernel(ApplyPatternParams p) {
  __shared__ float Vs[kKT][kMaxHD];
  __shared__ float Ps[kQT][kKT + 1];
  const int t0 = blockIdx.x * kQT, h = p.h0 + blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int HD = p.HD, T = p.T, pad = p.pad[b];
  const int t_last = min(t0 + kQT, T) - 1;
  const float* P = p.pattern + (((int64_t)b * p.H + h) * T) * T;
  const float* v = p.v + (int64_t)b * T * p.kv_stride + (int64_t)(h / (p.H / p.KVH)) * HD;
  float acc[kRPW][kDPL];
#pragma unroll
  for (int r = 0; r < kRPW; ++r)
#pragma unroll
    for (int i = 0; i < kDPL; ++i) acc[r][i] = 0.0f;
  for (int j0 = 0; j0 <= t_last; j0 += kKT) {
    const int nk = min(kKT, t_last + 1 - j0);
    __syncthreads();  // the previous tile's reads are done
    for (int i = threadIdx.x; i < nk * HD; i += kThreads) {
      const int jj = i / HD, d = i % HD;
      Vs[jj][d] = v[(int64_t)(j0 + jj) * p.kv_stride + d];
    }
    for (int i = threadIdx.x; i < kQT * kKT; i += kThreads) {
      const int r = i / kKT, jj = i % kKT, t = t0 + r;
      Ps[r][jj] = (t <= t_last && jj < nk && j0 + jj <= t) ? P[(int64_t)t * T + j0 + jj] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRPW; ++r) {
      const int rr = warp + kWarps * r, t = t0 + rr;
      const int n = min(nk, t - j0 + 1);  // keys j <= t of this tile (none when t < j0)
      for (int jj = 0; jj < n; ++jj) {
        const float w = Ps[rr][jj];
#pragma unroll
        for (int i = 0; i < kDPL; ++i) {
          const int d = lane + 32 * i;
          if (d < HD) acc[r][i] = fmaf(w, Vs[jj][d], acc[r][i]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRPW; ++r) {
    const int t = t0 + warp + kWarps * r;
    if (t > t_last) continue;
    float* z = p.z + ((int64_t)b * T + t) * p.z_stride + (int64_t)h * HD;
    const bool is_pad = t < pad;  // a pad query row sees no key: z = 0
#pragma unroll
    for (int i = 0; i < kDPL; ++i) {
      const int d = lane + 32 * i;
      if (d < HD) z[d] = is_pad ? 0.0f : acc[r][i];
    }
  }
}

}  // namespace

void attn_apply_pattern(const ApplyPatternParams& p, Stream stream) {
  PHI3_CHECK(p.B >= 0 && p.T >= 0 && p.H > 0 && p.KVH > 0 && p.H % p.KVH == 0 && p.HD > 0 && p.h0 >= 0 &&
                 p.nh >= 0 && p.h0 + p.nh <= p.H && p.B < 65536 && p.H < 65536,
             "attn_apply_pattern: bad shape");
  PHI3_CHECK(p.HD <= kMaxHD, "attn_apply_pattern: head_dim " + std::to_string(p.HD) + " > " + std::to_string(kMaxHD));
  PHI3_CHECK(p.pattern && p.v && p.pad && p.z, "attn_apply_pattern: null pointer");
  if (p.B == 0 || p.T == 0 || p.nh == 0) return;
  launch(apply_pattern_kernel, dim3((p.T + kQT - 1) / kQT, p.nh, p.B), kThreads, 0, as_cuda(stream), p);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
