// The emulator's WMMA fragment API (tests/emu/wmma_emu.h) against a plain matrix product:
// bf16 m16n16k16 with fp32 accumulation, both operand layouts, accumulator loads and stores in
// both memory layouts, ldm > 16; and its checks (warp-collective calls, uniform fragments).
// Label `emu`.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "runtime/dtype.h"

namespace phi3::cuda {
namespace {

using namespace nvcuda;

template <typename T>
T* device_copy(const std::vector<T>& v) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, v.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return p;
}
template <typename T>
std::vector<T> host_copy(const T* p, size_t n) {
  std::vector<T> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

// D [16, 16] (ldd, layout dl) = C (same storage, read first) + A [16, K] B [K, 16]:
// A stored row-major (a_col = false: A[i][k] at a[i * lda + k]) or column-major
// (A[i][k] at a[k * lda + i]); B likewise with ldb. K a multiple of 16.
template <typename LA, typename LB>
__global__ void mma_kernel(float* d, const __nv_bfloat16* a, const __nv_bfloat16* b, int K, int lda,
                           int ldb, int ldd, int d_col) {
  const wmma::layout_t dl = d_col ? wmma::mem_col_major : wmma::mem_row_major;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(acc, d, ldd, dl);
  for (int k = 0; k < K; k += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LB> fb;
    const bool ar = std::is_same<LA, wmma::row_major>::value;
    const bool br = std::is_same<LB, wmma::row_major>::value;
    wmma::load_matrix_sync(fa, a + (ar ? k : (size_t)k * lda), lda);
    wmma::load_matrix_sync(fb, b + (br ? (size_t)k * ldb : k), ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 2.0f;  // uniform element-wise op
  wmma::store_matrix_sync(d, acc, ldd, dl);
}

float bf(uint16_t h) { return bf16_bits_to_float(h); }

template <typename LA, typename LB>
void check_mma(int K, int lda, int ldb, int ldd, bool d_col) {
  const bool ar = std::is_same<LA, wmma::row_major>::value;
  const bool br = std::is_same<LB, wmma::row_major>::value;
  std::vector<uint16_t> a(ar ? 16 * lda : K * lda), b(br ? K * ldb : 16 * ldb);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float_to_bf16_bits(0.37f * float((i * 7) % 23) - 4.0f);
  for (size_t i = 0; i < b.size(); ++i) b[i] = float_to_bf16_bits(0.21f * float((i * 5) % 19) - 2.0f);
  std::vector<float> d0(16 * ldd);
  for (size_t i = 0; i < d0.size(); ++i) d0[i] = 0.5f * float(i % 11);
  auto A = [&](int i, int k) { return bf(ar ? a[i * lda + k] : a[k * lda + i]); };
  auto B = [&](int k, int j) { return bf(br ? b[k * ldb + j] : b[j * ldb + k]); };
  auto D = [&](const std::vector<float>& d, int i, int j) { return d_col ? d[j * ldd + i] : d[i * ldd + j]; };

  float* dd = device_copy(d0);
  auto* da = reinterpret_cast<__nv_bfloat16*>(device_copy(a));
  auto* db = reinterpret_cast<__nv_bfloat16*>(device_copy(b));
  launch(mma_kernel<LA, LB>, 1, 32, 0, nullptr, dd, static_cast<const __nv_bfloat16*>(da),
         static_cast<const __nv_bfloat16*>(db), K, lda, ldb, ldd, int(d_col));
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> got = host_copy(dd, d0.size());
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      double want = D(d0, i, j);
      for (int k = 0; k < K; ++k) want += double(A(i, k)) * B(k, j);
      EXPECT_NEAR(D(got, i, j), 2.0 * want, 1e-5 * (1.0 + std::abs(want))) << i << "," << j;
    }
  // entries between the rows (ldm padding) are left alone
  for (int r = 0; r < 16; ++r)
    for (int c = 16; c < ldd; ++c) EXPECT_EQ(got[r * ldd + c], d0[r * ldd + c]);
  cudaFree(dd);
  cudaFree(da);
  cudaFree(db);
}

TEST(CudaEmulatorWmma, MatchesPlainProductInEveryLayout) {
  check_mma<wmma::row_major, wmma::row_major>(16, 16, 16, 16, false);
  check_mma<wmma::row_major, wmma::col_major>(48, 56, 64, 20, false);
  check_mma<wmma::col_major, wmma::row_major>(32, 24, 40, 16, true);
  check_mma<wmma::col_major, wmma::col_major>(64, 72, 80, 36, true);
}

__global__ void fill_and_store(float* d) {
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 1.5f);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

TEST(CudaEmulatorWmma, FillFragment) {
  float* d = device_copy(std::vector<float>(256, 0.0f));
  launch(fill_and_store, 1, 64, 0, nullptr, d);  // two warps, same tile
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (float v : host_copy(d, 256)) EXPECT_EQ(v, 1.5f);
  cudaFree(d);
}

__global__ void lane_dependent_edit(float* d) {
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  acc.x[0] = float(threadIdx.x);  // which element is x[0] differs per lane on hardware
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

__global__ void partial_warp(float* d) {
  if (threadIdx.x >= 16) return;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

__global__ void bad_ldm(float* d) {
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::store_matrix_sync(d, acc, 18, wmma::mem_row_major);
}

TEST(CudaEmulatorWmmaDeathTest, ReportsMisuse) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  float* d = device_copy(std::vector<float>(512, 0.0f));
  EXPECT_DEATH(launch(lane_dependent_edit, 1, 32, 0, nullptr, d), "different fragment contents");
  EXPECT_DEATH(launch(partial_warp, 1, 32, 0, nullptr, d), "all 32 lanes of a full warp must");
  EXPECT_DEATH(launch(bad_ldm, 1, 32, 0, nullptr, d), "multiple of 16 bytes");
  cudaFree(d);
}

}  // namespace
}  // namespace phi3::cuda
