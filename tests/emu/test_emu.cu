// The CPU CUDA emulator itself (tests/emu/cuda_emu.h): that it keeps the semantics the
// project's kernels rely on (barriers, shuffles, exited threads, shared memory per block)
// and that it reports what a real GPU would reject or what would be a race there.
// Built and run only with -DPHI3_CUDA=EMU (label `emu`).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

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

// Sum of each block's slice, through block_sum (warp shuffles + __syncthreads).
__global__ void block_sums(float* out, const float* in, int n_per_block) {
  __shared__ float red[32];
  float v = 0.0f;
  for (int i = threadIdx.x; i < n_per_block; i += blockDim.x) v += in[blockIdx.x * n_per_block + i];
  v = block_sum(v, red);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

TEST(CudaEmulator, BlockSumAcrossWarpsAndBlocks) {
  const int blocks = 5, per = 1000;
  std::vector<float> in(blocks * per);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 7);
  float* d_in = device_copy(in);
  float* d_out = device_copy(std::vector<float>(blocks, 0.0f));
  launch(block_sums, blocks, 256, 0, nullptr, d_out, static_cast<const float*>(d_in), per);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<float> got = host_copy(d_out, blocks);
  for (int b = 0; b < blocks; ++b) {
    double want = 0;
    for (int i = 0; i < per; ++i) want += in[b * per + i];
    EXPECT_EQ(got[b], want) << "block " << b;
  }
  cudaFree(d_in);
  cudaFree(d_out);
}

// Lane l gets: xor-butterfly sum, lane 5's value, lane l+3's (or own), lane l-2's (or own).
__global__ void shuffles(int* out) {
  const int lane = threadIdx.x & 31;
  int v = lane * 10;
  int sum = v;
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const int base = threadIdx.x * 4;
  out[base] = sum;
  out[base + 1] = __shfl_sync(0xffffffffu, v, 5);
  out[base + 2] = __shfl_down_sync(0xffffffffu, v, 3);
  out[base + 3] = __shfl_up_sync(0xffffffffu, v, 2);
}

TEST(CudaEmulator, WarpShuffles) {
  int* d = device_copy(std::vector<int>(64 * 4, -1));
  launch(shuffles, 1, 64, 0, nullptr, d);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<int> got = host_copy(d, 64 * 4);
  for (int t = 0; t < 64; ++t) {
    const int l = t & 31;
    EXPECT_EQ(got[t * 4], 10 * (31 * 32 / 2)) << t;
    EXPECT_EQ(got[t * 4 + 1], 50) << t;
    EXPECT_EQ(got[t * 4 + 2], l + 3 < 32 ? (l + 3) * 10 : l * 10) << t;
    EXPECT_EQ(got[t * 4 + 3], l >= 2 ? (l - 2) * 10 : l * 10) << t;
  }
  cudaFree(d);
}

// Threads past `n` return at once; the others still meet at __syncthreads (Volta+ rule).
__global__ void exit_then_sync(int* out, int n) {
  __shared__ int s[128];
  if (static_cast<int>(threadIdx.x) >= n) return;
  s[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % n];
}

TEST(CudaEmulator, ExitedThreadsDoNotBlockBarriers) {
  int* d = device_copy(std::vector<int>(128, -1));
  launch(exit_then_sync, 1, 128, 0, nullptr, d, 70);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<int> got = host_copy(d, 128);
  for (int t = 0; t < 70; ++t) EXPECT_EQ(got[t], (t + 1) % 70);
  for (int t = 70; t < 128; ++t) EXPECT_EQ(got[t], -1);
  cudaFree(d);
}

// The same kernel without the barrier: in the emulator's shuffled order some threads read a
// neighbour's slot before it is written and see the NaN/0xFF.. fill, as a GPU race would.
__global__ void missing_barrier(int* out, int n) {
  PHI3_DYNAMIC_SHARED(int, s);
  s[threadIdx.x] = threadIdx.x;
  out[threadIdx.x] = s[(threadIdx.x + 1) % n];
}

TEST(CudaEmulator, MissingBarrierShowsUp) {
  const int n = 128;
  int* d = device_copy(std::vector<int>(n, -2));
  launch(missing_barrier, 1, n, n * sizeof(int), nullptr, d, n);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<int> got = host_copy(d, n);
  int wrong = 0;
  for (int t = 0; t < n; ++t) {
    wrong += got[t] != (t + 1) % n;
    if (got[t] != (t + 1) % n) {
      EXPECT_EQ(got[t], -1) << "unwritten shared memory reads as 0xFF bytes";
    }
  }
  EXPECT_GT(wrong, 0) << "threads ran in index order: a missing barrier would go unnoticed";
  cudaFree(d);
}

__global__ void big_smem(float* out) {
  PHI3_DYNAMIC_SHARED(float, s);
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[0];
}

TEST(CudaEmulator, DynamicSharedMemoryLimitAndOptIn) {
  float* d = device_copy(std::vector<float>(32, 0.0f));
  const size_t bytes = 64 * 1024;
  launch(big_smem, 1, 32, bytes, nullptr, d);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue) << "64 KiB without opting in";
  ASSERT_EQ(cudaFuncSetAttribute(big_smem, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(bytes)),
            cudaSuccess);
  launch(big_smem, 1, 32, bytes, nullptr, d);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(host_copy(d, 32)[31], 1.0f);
  launch(big_smem, 1, 2048, 0, nullptr, d);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration) << "2048 threads per block";
  cudaFree(d);
}

TEST(CudaEmulator, MemoryChecks) {
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64), cudaSuccess);
  EXPECT_TRUE(std::isnan(host_copy(d, 16)[3])) << "fresh device memory reads as NaN";
  float host[32] = {};
  EXPECT_EQ(cudaMemcpy(d, host, 128, cudaMemcpyHostToDevice), cudaErrorInvalidValue)
      << "copy past the end of the allocation";
  EXPECT_EQ(cudaMemcpy(host, host + 16, 16, cudaMemcpyDeviceToHost), cudaErrorInvalidValue)
      << "host pointer used as the device side";
  EXPECT_EQ(cudaFree(host), cudaErrorInvalidValue);
  (void)cudaGetLastError();
  EXPECT_EQ(cudaFree(d), cudaSuccess);

  ::setenv("PHI3_EMU_MEM_MIB", "1", 1);
  void* big = nullptr;
  EXPECT_EQ(cudaMalloc(&big, 2u << 20), cudaErrorMemoryAllocation);
  ::unsetenv("PHI3_EMU_MEM_MIB");
  (void)cudaGetLastError();
}

__global__ void divergent_barrier(int* out) {
  // Lanes 0-15 wait for the block while lanes 16-31 of the same warp wait for the warp.
  if (threadIdx.x < 16)
    __syncthreads();
  else
    __syncwarp();
  out[threadIdx.x] = 1;
}

__global__ void shuffle_from_exited_lane(float* out) {
  if (threadIdx.x >= 20) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 25);
}

TEST(CudaEmulatorDeathTest, ReportsDeadlockAndBadShuffle) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  int* d = device_copy(std::vector<int>(64, 0));
  EXPECT_DEATH(launch(divergent_barrier, 1, 64, 0, nullptr, d), "deadlock");
  float* f = device_copy(std::vector<float>(32, 0.0f));
  EXPECT_DEATH(launch(shuffle_from_exited_lane, 1, 32, 0, nullptr, f), "did not take part");
  cudaFree(d);
  cudaFree(f);
}

}  // namespace
}  // namespace phi3::cuda
