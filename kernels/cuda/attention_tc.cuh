// Tensor-core building blocks of the bf16 attention kernels (attention_tc_forward.cu,
// attention_tc_backward.cu): WMMA bf16 m16n16k16 products with fp32 accumulators on tiles in
// shared memory, bf16 row staging, and the shared-memory layout bookkeeping.
// Shared-memory tiles: bf16 rows of `hdp` = HD rounded up to 16 (dims HD.. zero) at a row
// stride of hdp + 8 (16-byte multiple, and rows shifted by 16 bytes against the banks);
// fp32 tiles at a stride of width + 4. Every region starts on a 128-byte boundary, every
// 16 x 16 sub-tile on a 32-byte one (WMMA's alignment requirement).
// Internal to kernels/cuda.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#if !defined(PHI3_CUDA_EMU)
#include <mma.h>
#endif

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "runtime/dtype.h"

namespace phi3::cuda::attn_tc {

// WMMA bf16 needs sm_80; the project builds for 80 and 90 (CMakeLists.txt). For an older
// target the kernels compile to a trap (the host never selects them there: see supported()).
#if defined(PHI3_CUDA_EMU) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define PHI3_ATTN_TC_ARCH 1
#else
#define PHI3_ATTN_TC_ARCH 0
#endif

constexpr int kMaxHD = 256;

// The dynamic shared memory's element type: declares the 128-byte alignment the region
// offsets (SmemPlan) assume.
struct alignas(128) SmemChunk {
  float x[32];
};

inline int hd_pad(int HD) { return (HD + 15) / 16 * 16; }
inline int ld_bf16(int width) { return width + 8; }
inline int ld_f32(int width) { return width + 4; }

// Byte offsets of shared-memory regions, each 128-byte aligned.
struct SmemPlan {
  size_t bytes = 0;
  size_t add(size_t n) {
    const size_t at = bytes;
    bytes += (n + 127) / 128 * 128;
    return at;
  }
};

__device__ __forceinline__ uint16_t to_bf16(float x) { return float_to_bf16_bits(x); }

// Rows 0..n-1 of a bf16 tile (row stride ld, width dims): dst[i][d] = bf16(row(i)[d]) for
// d < HD, 0 for HD <= d < width or when row(i) is null. Called by the whole block.
template <typename RowFn>
__device__ __forceinline__ void stage_rows(uint16_t* dst, int n, int ld, int HD, int width, RowFn row) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int i = warp; i < n; i += nw) {
    const float* src = row(i);
    for (int d = lane; d < width; d += 32) dst[i * ld + d] = (src && d < HD) ? to_bf16(src[d]) : 0;
  }
}

#if PHI3_ATTN_TC_ARCH
namespace wm = nvcuda::wmma;

__device__ __forceinline__ const __nv_bfloat16* as_bf(const uint16_t* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}

// C [16, n] (fp32, row stride ldc) = (accumulate ? C : 0) + A [16, k] B [k, n], A bf16
// row-major (stride lda), B bf16 row-major (B[kk][j] at b[kk * ldb + j]; B_COL false) or
// column-major (B[kk][j] at b[j * ldb + kk]; B_COL true: B is the transpose of a row-major
// tile, as K for Q K^T). n, k multiples of 16. Warp-collective: all 32 lanes call it.
template <bool B_COL>
__device__ __forceinline__ void mma_rows(float* c, int ldc, bool accumulate, const uint16_t* a,
                                         int lda, const uint16_t* b, int ldb, int n, int k) {
  using LB = typename std::conditional<B_COL, wm::col_major, wm::row_major>::type;
  for (int j = 0; j < n; j += 16) {
    wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
    if (accumulate)
      wm::load_matrix_sync(acc, c + j, ldc, wm::mem_row_major);
    else
      wm::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < k; kk += 16) {
      wm::fragment<wm::matrix_a, 16, 16, 16, __nv_bfloat16, wm::row_major> fa;
      wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, LB> fb;
      wm::load_matrix_sync(fa, as_bf(a + kk), lda);
      wm::load_matrix_sync(fb, as_bf(B_COL ? b + (size_t)j * ldb + kk : b + (size_t)kk * ldb + j), ldb);
      wm::mma_sync(acc, fa, fb, acc);
    }
    wm::store_matrix_sync(c + j, acc, ldc, wm::mem_row_major);
  }
}
#endif

}  // namespace phi3::cuda::attn_tc
