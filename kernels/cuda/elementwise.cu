// Elementwise ops and row moves.
//
//   add:        out[i] = a[i] + b[i], i < n                  (out may alias a or b)
//   sub:        out[i] = a[i] - b[i], i < n                  (out may alias a or b)
//   copy_rows:  dst[di(i), :width] = src[si(i), :width], i < n; di/si are the identity when
//               the index array is null. Rows are strided (dst_stride, src_stride).
//               Used for patch scatter/gather and packing runs.
//   casts:      fp32 <-> bf16 (kernels/cuda/cast.cuh), round-to-nearest-even.
// No backward here: add's gradient is a copy, copy_rows' is a copy_rows the other way.
// All are bandwidth-bound: 16-byte loads/stores when pointers, strides and sizes allow,
// a scalar path otherwise; grid-stride loops.
#include "kernels/cuda/cast.cuh"
#include "kernels/cuda/common.cuh"
#include "runtime/dtype.h"

namespace phi3::cuda {
namespace {

constexpr int kThreads = 256;

// SUB: a - b instead of a + b.
template <bool SUB>
__device__ __forceinline__ float combine(float x, float y) { return SUB ? x - y : x + y; }

template <bool SUB>
__global__ void add_vec4_kernel(float4* out, const float4* a, const float4* b, int64_t n4) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4;
       i += (int64_t)gridDim.x * blockDim.x) {
    float4 x = a[i], y = b[i];
    out[i] = make_float4(combine<SUB>(x.x, y.x), combine<SUB>(x.y, y.y), combine<SUB>(x.z, y.z),
                         combine<SUB>(x.w, y.w));
  }
}
template <bool SUB>
__global__ void add_scalar_kernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = combine<SUB>(a[i], b[i]);
}

// One block per row (grid-stride over rows); threads over the row's width.
template <bool VEC>
__global__ void copy_rows_kernel(float* dst, int64_t dst_stride, const int32_t* dst_idx,
                                 const float* src, int64_t src_stride, const int32_t* src_idx,
                                 int n, int width) {
  for (int i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t dr = dst_idx ? dst_idx[i] : i;
    const int64_t sr = src_idx ? src_idx[i] : i;
    float* d = dst + dr * dst_stride;
    const float* s = src + sr * src_stride;
    if (VEC) {
      const int w4 = width / 4;
      for (int c = threadIdx.x; c < w4; c += blockDim.x)
        reinterpret_cast<float4*>(d)[c] = reinterpret_cast<const float4*>(s)[c];
    } else {
      for (int c = threadIdx.x; c < width; c += blockDim.x) d[c] = s[c];
    }
  }
}

__global__ void f32_to_bf16_vec4_kernel(uint2* out, const float4* in, int64_t n4) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4;
       i += (int64_t)gridDim.x * blockDim.x) {
    float4 x = in[i];
    uint2 o;
    o.x = uint32_t(float_to_bf16_bits(x.x)) | (uint32_t(float_to_bf16_bits(x.y)) << 16);
    o.y = uint32_t(float_to_bf16_bits(x.z)) | (uint32_t(float_to_bf16_bits(x.w)) << 16);
    out[i] = o;
  }
}
__global__ void f32_to_bf16_scalar_kernel(uint16_t* out, const float* in, int64_t begin,
                                          int64_t n) {
  for (int64_t i = begin + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = float_to_bf16_bits(in[i]);
}
__global__ void bf16_to_f32_vec4_kernel(float4* out, const uint2* in, int64_t n4) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4;
       i += (int64_t)gridDim.x * blockDim.x) {
    uint2 h = in[i];
    out[i] = make_float4(bf16_bits_to_float(uint16_t(h.x & 0xffffu)),
                         bf16_bits_to_float(uint16_t(h.x >> 16)),
                         bf16_bits_to_float(uint16_t(h.y & 0xffffu)),
                         bf16_bits_to_float(uint16_t(h.y >> 16)));
  }
}
__global__ void bf16_to_f32_scalar_kernel(float* out, const uint16_t* in, int64_t begin,
                                          int64_t n) {
  for (int64_t i = begin + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = bf16_bits_to_float(in[i]);
}

bool aligned8(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 7u) == 0; }

}  // namespace

template <bool SUB>
void add_or_sub(float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  PHI3_CHECK(n >= 0, std::string(SUB ? "sub" : "add") + ": negative size " + std::to_string(n));
  if (n == 0) return;
  int64_t done = 0;
  if (aligned16(out) && aligned16(a) && aligned16(b) && n >= 4) {
    const int64_t n4 = n / 4;
    launch(add_vec4_kernel<SUB>, grid_for(n4, kThreads), kThreads, 0, s, reinterpret_cast<float4*>(out),
           reinterpret_cast<const float4*>(a), reinterpret_cast<const float4*>(b), n4);
    PHI3_LAUNCH_CHECK();
    done = n4 * 4;
  }
  if (done < n) {
    launch(add_scalar_kernel<SUB>, grid_for(n - done, kThreads), kThreads, 0, s, out + done, a + done,
           b + done, n - done);
    PHI3_LAUNCH_CHECK();
  }
}

void add(float* out, const float* a, const float* b, int64_t n, Stream stream) {
  add_or_sub<false>(out, a, b, n, as_cuda(stream));
}

void sub(float* out, const float* a, const float* b, int64_t n, Stream stream) {
  add_or_sub<true>(out, a, b, n, as_cuda(stream));
}

void copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src,
               int64_t src_stride, const int32_t* src_idx, int n, int width, Stream stream) {
  PHI3_CHECK(n >= 0 && width >= 0, "copy_rows: negative size n=" + std::to_string(n) +
                                       " width=" + std::to_string(width));
  if (n == 0 || width == 0) return;
  cudaStream_t s = as_cuda(stream);
  const bool vec = width % 4 == 0 && dst_stride % 4 == 0 && src_stride % 4 == 0 &&
                   aligned16(dst) && aligned16(src);
  const int threads = width >= 1024 ? 256 : width >= 256 ? 128 : 64;
  const unsigned blocks = static_cast<unsigned>(n < 65536 ? n : 65536);
  if (vec)
    launch(copy_rows_kernel<true>, blocks, threads, 0, s, dst, dst_stride, dst_idx, src, src_stride,
           src_idx, n, width);
  else
    launch(copy_rows_kernel<false>, blocks, threads, 0, s, dst, dst_stride, dst_idx, src,
           src_stride, src_idx, n, width);
  PHI3_LAUNCH_CHECK();
}

void cast_f32_to_bf16(uint16_t* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  int64_t done = 0;
  if (aligned16(in) && aligned8(out) && n >= 4) {
    const int64_t n4 = n / 4;
    launch(f32_to_bf16_vec4_kernel, grid_for(n4, kThreads), kThreads, 0, stream,
           reinterpret_cast<uint2*>(out), reinterpret_cast<const float4*>(in), n4);
    PHI3_LAUNCH_CHECK();
    done = n4 * 4;
  }
  if (done < n) {
    launch(f32_to_bf16_scalar_kernel, grid_for(n - done, kThreads), kThreads, 0, stream, out, in,
           done, n);
    PHI3_LAUNCH_CHECK();
  }
}

void cast_bf16_to_f32(float* out, const uint16_t* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  int64_t done = 0;
  if (aligned8(in) && aligned16(out) && n >= 4) {
    const int64_t n4 = n / 4;
    launch(bf16_to_f32_vec4_kernel, grid_for(n4, kThreads), kThreads, 0, stream,
           reinterpret_cast<float4*>(out), reinterpret_cast<const uint2*>(in), n4);
    PHI3_LAUNCH_CHECK();
    done = n4 * 4;
  }
  if (done < n) {
    launch(bf16_to_f32_scalar_kernel, grid_for(n - done, kThreads), kThreads, 0, stream, out, in,
           done, n);
    PHI3_LAUNCH_CHECK();
  }
}

}  // namespace phi3::cuda
