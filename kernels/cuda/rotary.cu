// Rotary position embedding, HF rotate_half (NeoX) layout, partial rotary supported.
//
// For each row n (position pos[n]), head h and i < R/2 (R = rope.rot_dim <= HD):
//   a = x[n, h*HD + i], b = x[n, h*HD + i + R/2], (c, s) = (cos, sin)(pos * inv_freq[i]) * scale
//   forward:  a' = a c - b s,  b' = b c + a s              (rope_rotate, op_math.h)
//   backward: da = da' c + db' s, db = db' c - da' s        (rope_rotate_back: R(-theta))
// dims R..HD-1 of each head are copied unchanged (gradient: copied back).
// Shapes: in/out [N, n_heads*HD] with row strides (so q and k can be rotated in place
// inside a fused qkv row); pos [N]; inv_freq [R/2]. out may alias in (each thread reads its
// pair before writing it). Nothing is saved for backward (angles are recomputed).
//
// rotary_qkv_forward: the fused qkv row split and rotated in one kernel (q and k rotated, v
// copied), instead of two rotary launches and a copy. With a cos/sin table (RopeParams) the
// angles are read, not computed per row and head.
// Grid: y = rows (grid-stride), x covers the n_heads * (HD - R/2) work items of a row:
// item i < R/2 of a head rotates the pair (i, i + R/2); item i >= R/2 copies dim i + R/2.
// Consecutive threads touch consecutive dims, so loads and stores coalesce.
#include "kernels/cuda/common.cuh"
#include "kernels/op_math.h"

namespace phi3::cuda {
namespace {

// (c, s) of position p, dim pair i: from the table when there is one (filled on the host by
// the same rope_angle), else computed.
__device__ __forceinline__ void angle(int32_t p, int i, const float* __restrict__ inv_freq,
                                      const float* __restrict__ cos_sin, int half, float scale,
                                      float* c, float* s) {
  if (cos_sin) {
    const float2 cs = reinterpret_cast<const float2*>(cos_sin)[(int64_t)p * half + i];
    *c = cs.x;
    *s = cs.y;
  } else {
    rope_angle(p, inv_freq[i], scale, c, s);
  }
}

// Rotates (or copies) work item i of one head row x -> y (the item layout of the header).
template <bool BACKWARD>
__device__ __forceinline__ void rotate_item(float* y, const float* x, int i, int half, int32_t p,
                                            const float* inv_freq, const float* cos_sin,
                                            float scale) {
  if (i < half) {
    float c, s;
    angle(p, i, inv_freq, cos_sin, half, scale, &c, &s);
    const float a = x[i], b = x[i + half];
    float ao, bo;
    if (BACKWARD)
      rope_rotate_back(a, b, c, s, &ao, &bo);
    else
      rope_rotate(a, b, c, s, &ao, &bo);
    y[i] = ao;
    y[i + half] = bo;
  } else {
    y[i + half] = x[i + half];
  }
}

template <bool BACKWARD>
__global__ void rotary_kernel(float* out, int64_t out_stride, const float* in, int64_t in_stride,
                              const int32_t* __restrict__ pos, int N, int n_heads, int HD,
                              const float* __restrict__ inv_freq,
                              const float* __restrict__ cos_sin, int half, float scale) {
  const int per_head = HD - half;
  const int per_row = n_heads * per_head;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const int32_t p = pos[n];
    const float* x = in + (int64_t)n * in_stride;
    float* y = out + (int64_t)n * out_stride;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < per_row; j += gridDim.x * blockDim.x) {
      const int h = j / per_head, i = j - h * per_head;
      rotate_item<BACKWARD>(y + h * HD, x + h * HD, i, half, p, inv_freq, cos_sin, scale);
    }
  }
}

// One fused qkv row -> rotated q, rotated k, copied v: items [0, H*per_head) are q's,
// [H*per_head, (H+KVH)*per_head) k's, then KVH*HD copies of v.
__global__ void rotary_qkv_kernel(float* __restrict__ q, float* __restrict__ k,
                                  float* __restrict__ v, const float* __restrict__ qkv,
                                  const int32_t* __restrict__ pos, int N, int H, int KVH, int HD,
                                  const float* __restrict__ inv_freq,
                                  const float* __restrict__ cos_sin, int half, float scale) {
  const int per_head = HD - half;
  const int nq = H * per_head, nk = KVH * per_head, nv = KVH * HD;
  const int64_t QW = (int64_t)H * HD, KVW = (int64_t)KVH * HD, W = QW + 2 * KVW;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const int32_t p = pos[n];
    const float* x = qkv + (int64_t)n * W;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < nq + nk + nv;
         j += gridDim.x * blockDim.x) {
      if (j < nq) {
        const int h = j / per_head;
        rotate_item<false>(q + n * QW + h * HD, x + h * HD, j - h * per_head, half, p, inv_freq,
                           cos_sin, scale);
      } else if (j < nq + nk) {
        const int jj = j - nq, h = jj / per_head;
        rotate_item<false>(k + n * KVW + h * HD, x + QW + h * HD, jj - h * per_head, half, p,
                           inv_freq, cos_sin, scale);
      } else {
        const int jj = j - nq - nk;
        v[n * KVW + jj] = x[QW + KVW + jj];
      }
    }
  }
}

void check_rope(const char* op, int HD, const RopeParams& rope) {
  PHI3_CHECK(rope.rot_dim >= 0 && rope.rot_dim <= HD && rope.rot_dim % 2 == 0,
             std::string(op) + ": rot_dim " + std::to_string(rope.rot_dim) +
                 " must be even and <= head dim " + std::to_string(HD));
  PHI3_CHECK(rope.rot_dim == 0 || rope.inv_freq != nullptr || rope.cos_sin != nullptr,
             std::string(op) + ": no inv_freq");
  PHI3_CHECK(!rope.cos_sin || ((reinterpret_cast<uintptr_t>(rope.cos_sin) & 7u) == 0),
             std::string(op) + ": cos/sin table not 8-byte aligned");
}

template <bool BACKWARD>
void launch_rotary(const char* op, float* out, int64_t out_stride, const float* in,
                   int64_t in_stride, const int32_t* pos, int N, int n_heads, int HD,
                   const RopeParams& rope, Stream stream) {
  PHI3_CHECK(N >= 0 && n_heads > 0 && HD > 0,
             std::string(op) + ": bad shape N=" + std::to_string(N) + " heads=" +
                 std::to_string(n_heads) + " HD=" + std::to_string(HD));
  check_rope(op, HD, rope);
  PHI3_CHECK(in_stride >= (int64_t)n_heads * HD && out_stride >= (int64_t)n_heads * HD,
             std::string(op) + ": row stride smaller than n_heads*HD");
  if (N == 0) return;
  const int half = rope.rot_dim / 2;
  const int per_row = n_heads * (HD - half);
  const int threads = per_row >= 1024 ? 256 : 128;
  const unsigned bx = ceil_div(per_row, threads);
  const unsigned by = static_cast<unsigned>(N < 65535 ? N : 65535);
  launch(rotary_kernel<BACKWARD>, dim3(bx, by), threads, 0, as_cuda(stream), out, out_stride, in,
         in_stride, pos, N, n_heads, HD, rope.inv_freq, rope.cos_sin, half, rope.attn_scale);
  PHI3_LAUNCH_CHECK();
}

}  // namespace

void rotary_forward(float* out, int64_t out_stride, const float* in, int64_t in_stride,
                    const int32_t* pos /*[N]*/, int N, int n_heads, int HD,
                    const RopeParams& rope, Stream stream) {
  launch_rotary<false>("rotary_forward", out, out_stride, in, in_stride, pos, N, n_heads, HD,
                       rope, stream);
}

void rotary_backward(float* din, int64_t din_stride, const float* dout, int64_t dout_stride,
                     const int32_t* pos /*[N]*/, int N, int n_heads, int HD,
                     const RopeParams& rope, Stream stream) {
  launch_rotary<true>("rotary_backward", din, din_stride, dout, dout_stride, pos, N, n_heads, HD,
                      rope, stream);
}

void rotary_qkv_forward(float* q /*[N,H*HD]*/, float* k /*[N,KVH*HD]*/, float* v /*[N,KVH*HD]*/,
                        const float* qkv /*[N,(H+2KVH)*HD]*/, const int32_t* pos /*[N]*/, int N,
                        int H, int KVH, int HD, const RopeParams& rope, Stream stream) {
  PHI3_CHECK(N >= 0 && H > 0 && KVH > 0 && HD > 0,
             "rotary_qkv_forward: bad shape N=" + std::to_string(N) + " H=" + std::to_string(H) +
                 " KVH=" + std::to_string(KVH) + " HD=" + std::to_string(HD));
  check_rope("rotary_qkv_forward", HD, rope);
  if (N == 0) return;
  const int half = rope.rot_dim / 2;
  const int per_row = (H + KVH) * (HD - half) + KVH * HD;
  const int threads = per_row >= 1024 ? 256 : 128;
  const unsigned bx = ceil_div(per_row, threads);
  const unsigned by = static_cast<unsigned>(N < 65535 ? N : 65535);
  launch(rotary_qkv_kernel, dim3(bx, by), threads, 0, as_cuda(stream), q, k, v, qkv, pos, N, H, KVH,
         HD, rope.inv_freq, rope.cos_sin, half, rope.attn_scale);
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
