// Pieces the attention kernels share (kernels/cuda/attention.cu, the fp32 kernels, and
// attention_tc_*.cu, the bf16 tensor-core ones): a segment's view, the k/v row of a key
// position, the score and probability expressions, and the tensor-core entry points.
// Internal to kernels/cuda.
#pragma once
#include <cuda_runtime.h>

#include "kernels/op_math.h"
#include "kernels/ops.h"

namespace phi3::cuda {
namespace attn {

struct SegView {
  int b, pad, T, fresh, kv_row, q_start, q_row;
};

__device__ __forceinline__ SegView load_seg(const AttnParams& p, int s) {
  const AttnSegment sg = p.segs[s];
  SegView v;
  v.b = sg.batch;
  v.pad = p.pad[sg.batch];
  v.T = p.T;
  v.fresh = sg.fresh_start;
  v.kv_row = sg.kv_row;
  v.q_start = sg.q_start;
  v.q_row = sg.q_row;
  return v;
}

// Row of key/value position j of kv head `kvh` (packed rows or the prefix cache).
__device__ __forceinline__ const float* kv_ptr(const AttnParams& p, const SegView& sv,
                                               const float* fresh, const float* cache, int j,
                                               int kvh) {
  const float* base =
      j >= sv.fresh
          ? fresh + (int64_t)(sv.kv_row + j - sv.fresh) * p.kv_stride
          : cache + ((int64_t)sv.b * sv.T + j) * p.cache_stride;
  return base + (int64_t)kvh * p.HD;
}

// The scaled (and soft-capped) score of a dot product q . k, and the probability exp(S - m) / l,
// with explicitly rounded multiply, subtract and divide: the forward's pattern and the
// backward's recomputation are then the same expression, bitwise, whatever nvcc contracts.
__device__ __forceinline__ float scaled_score(float dot, const AttnParams& p) {
  return soft_cap(__fmul_rn(dot, p.scale), p.softcap);
}
__device__ __forceinline__ float prob_of(float score, float m, float l) {
  return __fdiv_rn(expf(__fsub_rn(score, m)), l);
}

// The backward of a segment that is not a plain pass (fresh_start or q_start > 0) is not
// defined: the dk and dv rows of its keys j0..j1 (kv head kvh) read NaN, so a misuse shows.
// Called by the 32 lanes of a warp (lane: d = lane, lane + 32, ...).
__device__ __forceinline__ void poison_key_rows(const AttnBackwardParams& bp, const SegView& sv, int kvh, int j0,
                                                int j1, int lane) {
  const AttnParams& p = bp.fwd;
  for (int j = j0; j <= j1; ++j)
    for (int d = lane; d < p.HD; d += 32) {
      const int64_t o = (int64_t)(sv.kv_row + j - sv.fresh) * p.kv_stride + (int64_t)kvh * p.HD + d;
      bp.dk[o] = NAN;
      bp.dv[o] = NAN;
    }
}

}  // namespace attn

// bf16 tensor-core kernels (attention_tc_forward.cu, attention_tc_backward.cu), chosen by
// attention_forward / attention_backward when AttnParams::tensor_cores is set. The forward
// writes z, z16, stats (no pattern: the caller keeps such calls on the fp32 kernel); the
// backward writes dq, dk, dv and D_t into Dbuf [n_segs, H, T] (no dpattern, likewise).
void attention_forward_tc(const AttnParams& p, cudaStream_t s);
void attention_backward_tc(const AttnBackwardParams& bp, float* Dbuf, cudaStream_t s);

}  // namespace phi3::cuda
