// Token embedding lookup.
//
//   out[i, :] = table[ids[i], :] * scale   out [N, D] fp32, ids [N] int32, table [V, D]
//   (scale: Gemma's sqrt(D); 1 elsewhere, an exact copy)
//
// The table is F32 or BF16 (bf16 widened exactly to fp32); F16 tables are converted at
// load time and rejected here. An id outside [0, V) cannot raise an error from the device:
// its row is written as zeros (the tokenizer validates ids on the host first).
// Forward only: the engine never needs gradients w.r.t. the table.
// One block per row (grid-stride); 16-byte loads when D and the pointers allow.
#include "kernels/cuda/common.cuh"
#include "runtime/dtype.h"

namespace phi3::cuda {
namespace {

__device__ __forceinline__ float4 scaled(float4 v, float s) { return make_float4(v.x * s, v.y * s, v.z * s, v.w * s); }

template <bool VEC>
__global__ void embedding_f32_kernel(float* __restrict__ out, const int32_t* __restrict__ ids,
                                     const float* __restrict__ table, int N, int64_t V, int D, float scale) {
  for (int i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t id = ids[i];
    const bool ok = id >= 0 && id < V;
    float* o = out + (int64_t)i * D;
    const float* t = table + (ok ? id : 0) * D;
    if (VEC) {
      for (int c = threadIdx.x; c < D / 4; c += blockDim.x)
        reinterpret_cast<float4*>(o)[c] =
            ok ? scaled(reinterpret_cast<const float4*>(t)[c], scale) : make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      for (int c = threadIdx.x; c < D; c += blockDim.x) o[c] = ok ? t[c] * scale : 0.0f;
    }
  }
}

template <bool VEC>
__global__ void embedding_bf16_kernel(float* __restrict__ out, const int32_t* __restrict__ ids,
                                      const uint16_t* __restrict__ table, int N, int64_t V,
                                      int D, float scale) {
  for (int i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t id = ids[i];
    const bool ok = id >= 0 && id < V;
    float* o = out + (int64_t)i * D;
    const uint16_t* t = table + (ok ? id : 0) * D;
    if (VEC) {  // 4 bf16 (8 bytes) -> 4 floats (16 bytes)
      for (int c = threadIdx.x; c < D / 4; c += blockDim.x) {
        float4 r = make_float4(0.f, 0.f, 0.f, 0.f);
        if (ok) {
          uint2 h = reinterpret_cast<const uint2*>(t)[c];
          r = make_float4(bf16_bits_to_float(uint16_t(h.x & 0xffffu)),
                          bf16_bits_to_float(uint16_t(h.x >> 16)),
                          bf16_bits_to_float(uint16_t(h.y & 0xffffu)),
                          bf16_bits_to_float(uint16_t(h.y >> 16)));
        }
        reinterpret_cast<float4*>(o)[c] = scaled(r, scale);
      }
    } else {
      for (int c = threadIdx.x; c < D; c += blockDim.x) o[c] = ok ? bf16_bits_to_float(t[c]) * scale : 0.0f;
    }
  }
}

}  // namespace

void embedding_forward(float* out /*[N,D]*/, const int32_t* ids /*[N]*/,
                       const Weight& table /*[V,D]*/, int N, Stream stream, float scale) {
  PHI3_CHECK(N >= 0, "embedding_forward: negative N");
  if (N == 0) return;
  PHI3_CHECK(table.data != nullptr, "embedding_forward: table has no data");
  const int D = static_cast<int>(table.cols);
  const int64_t V = table.rows;
  cudaStream_t s = as_cuda(stream);
  const int threads = D >= 1024 ? 256 : D >= 256 ? 128 : 64;
  const unsigned blocks = static_cast<unsigned>(N < 65536 ? N : 65536);
  const uintptr_t tab = reinterpret_cast<uintptr_t>(table.data);
  if (table.dtype == DType::F32) {
    const bool vec = D % 4 == 0 && aligned16(out) && (tab & 15u) == 0;
    const float* t = static_cast<const float*>(table.data);
    if (vec)
      launch(embedding_f32_kernel<true>, blocks, threads, 0, s, out, ids, t, N, V, D, scale);
    else
      launch(embedding_f32_kernel<false>, blocks, threads, 0, s, out, ids, t, N, V, D, scale);
  } else if (table.dtype == DType::BF16) {
    const bool vec = D % 4 == 0 && aligned16(out) && (tab & 7u) == 0;
    const uint16_t* t = static_cast<const uint16_t*>(table.data);
    if (vec)
      launch(embedding_bf16_kernel<true>, blocks, threads, 0, s, out, ids, t, N, V, D, scale);
    else
      launch(embedding_bf16_kernel<false>, blocks, threads, 0, s, out, ids, t, N, V, D, scale);
  } else {
    throw Error(std::string("embedding_forward (cuda): unsupported table dtype ") +
                dtype_name(table.dtype) + " (convert F16 weights to BF16 or F32 at load)");
  }
  PHI3_LAUNCH_CHECK();
}

}  // namespace phi3::cuda
