// Rotary position embedding, HF rotate_half / NeoX layout (CPU reference).
//   For every row n (position pos[n]) and head h, with half = rot_dim/2 and i < half:
//     theta = pos[n] * inv_freq[i];  c = cos(theta) * attn_scale;  s = sin(theta) * attn_scale
//     out[i]        = x[i] c - x[i+half] s          (rope_rotate)
//     out[i+half]   = x[i+half] c + x[i] s
//   dims rot_dim..HD-1 are copied unchanged (partial rotary).
//   in/out: [N, n_heads*HD] with row strides; out == in (same stride) rotates in place.
//   backward: din = R(-theta) dout, the transpose of the (scaled) rotation (rope_rotate_back);
//   nothing is saved (the angles are recomputed from pos).
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/op_math.h"
#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {

namespace {

template <bool kBackward>
void rotary(float* out, int64_t out_stride, const float* in, int64_t in_stride,
            const int32_t* pos /*[N]*/, int N, int n_heads, int HD, const RopeParams& rope) {
  const int rot = rope.rot_dim, half = rot / 2;
  PHI3_CHECK(rot >= 0 && rot % 2 == 0 && rot <= HD,
             "rotary: rot_dim " + std::to_string(rot) + " must be even and <= head_dim " +
                 std::to_string(HD));
  PHI3_CHECK(half == 0 || rope.inv_freq || rope.cos_sin, "rotary: inv_freq is null");
  if (rope.cos_sin)
    for (int n = 0; n < N; ++n)
      PHI3_CHECK(pos[n] >= 0 && pos[n] < rope.n_pos,
                 "rotary: position " + std::to_string(pos[n]) + " outside the cos/sin table (" +
                     std::to_string(rope.n_pos) + " positions)");
  const double work = static_cast<double>(N) * (n_heads * HD + 40.0 * half);  // trig ~ 20 flops
  parallel_for(N, work, [&](int64_t n0, int64_t n1) {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t n = n0; n < n1; ++n) {
      if (rope.cos_sin) {  // the table holds exactly what rope_angle gives (filled by it)
        const float* row = rope.cos_sin + static_cast<int64_t>(pos[n]) * half * 2;
        for (int i = 0; i < half; ++i) {
          cs[i] = row[2 * i];
          sn[i] = row[2 * i + 1];
        }
      } else {
        for (int i = 0; i < half; ++i) rope_angle(pos[n], rope.inv_freq[i], rope.attn_scale, &cs[i], &sn[i]);
      }
      for (int h = 0; h < n_heads; ++h) {
        const float* x = in + n * in_stride + static_cast<int64_t>(h) * HD;
        float* y = out + n * out_stride + static_cast<int64_t>(h) * HD;
        for (int i = 0; i < half; ++i) {
          const float a = x[i], b = x[i + half];  // read both before writing (in place)
          if (kBackward)
            rope_rotate_back(a, b, cs[i], sn[i], &y[i], &y[i + half]);
          else
            rope_rotate(a, b, cs[i], sn[i], &y[i], &y[i + half]);
        }
        if (y != x)
          for (int d = rot; d < HD; ++d) y[d] = x[d];
      }
    }
  });
}

}  // namespace

void rotary_forward(float* out, int64_t out_stride, const float* in, int64_t in_stride,
                    const int32_t* pos /*[N]*/, int N, int n_heads, int HD,
                    const RopeParams& rope, Stream) {
  rotary<false>(out, out_stride, in, in_stride, pos, N, n_heads, HD, rope);
}

void rotary_backward(float* din, int64_t din_stride, const float* dout, int64_t dout_stride,
                     const int32_t* pos /*[N]*/, int N, int n_heads, int HD,
                     const RopeParams& rope, Stream) {
  rotary<true>(din, din_stride, dout, dout_stride, pos, N, n_heads, HD, rope);
}

void rotary_qkv_forward(float* q /*[N,H*HD]*/, float* k /*[N,KVH*HD]*/, float* v /*[N,KVH*HD]*/,
                        const float* qkv /*[N,(H+2KVH)*HD]*/, const int32_t* pos /*[N]*/, int N,
                        int H, int KVH, int HD, const RopeParams& rope, Stream) {
  const int64_t QW = static_cast<int64_t>(H) * HD, KVW = static_cast<int64_t>(KVH) * HD;
  const int64_t W = QW + 2 * KVW;
  rotary<false>(q, QW, qkv, W, pos, N, H, HD, rope);
  rotary<false>(k, KVW, qkv + QW, W, pos, N, KVH, HD, rope);
  for (int64_t n = 0; n < N; ++n) std::memcpy(v + n * KVW, qkv + n * W + QW + KVW, sizeof(float) * KVW);
}

}  // namespace phi3::cpu
