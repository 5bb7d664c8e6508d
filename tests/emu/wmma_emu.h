// The WMMA fragment API of <mma.h> (namespace nvcuda::wmma) on the CPU emulator
// (tests/emu/cuda_emu.h includes it): the subset the kernels use, bf16 m16n16k16 with fp32
// accumulators.
//
// Semantics kept: every op is warp-collective (all 32 lanes of a full warp must call it, and
// with the same arguments: checked through phi3emu::warp_collective, which also waits for the
// warp as the *_sync ops do); a fragment's element mapping is unspecified, so here every lane
// holds the whole tile (x[r * cols + c], row-major) and mma_sync / store_matrix_sync check that
// the lanes' fragments are identical (per-lane, non-uniform edits of x[] are reported);
// inputs are bf16 (__nv_bfloat16), products exact and summed in fp32 in k order, then added
// to the accumulator (computed once per warp: the lanes' inputs are identical, so the other
// lanes copy a memo of it); ldm must be a multiple of 16 bytes (8 bf16, 4 floats) and at least the
// tile's row (column) length. Not kept: the hardware's 32-byte pointer alignment requirement
// (the emulator's shared memory is 16-byte aligned; 16 is checked), and the hardware's
// summation order inside one mma (unspecified there too).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace phi3emu {
[[noreturn]] void fail(const std::string& what);
}

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "wmma emulation: m16n16k16 only");
  static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value
                                                      : std::is_same<T, __nv_bfloat16>::value,
                "wmma emulation: bf16 matrix_a/matrix_b and float accumulators only");
  static_assert(std::is_same<Use, accumulator>::value == std::is_same<Layout, void>::value,
                "wmma emulation: matrix_a/matrix_b need a row_major/col_major layout, "
                "accumulators none");

 public:
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  enum { num_elements = rows * cols };
  T x[num_elements];
};

namespace detail {
template <typename T>
inline uint64_t digest(const T* x, int n, uint64_t h = 1469598103934665603ull) {
  const unsigned char* b = reinterpret_cast<const unsigned char*>(x);
  const size_t bytes = n * sizeof(T);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {  // 8 bytes a step (FNV-1a style mixing)
    uint64_t w;
    std::memcpy(&w, b + i, 8);
    h = (h ^ w) * 1099511628211ull;
    h ^= h >> 29;
  }
  for (; i < bytes; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}
inline uint64_t mix(uint64_t h, uint64_t v) { return digest(&v, 1, h); }
template <typename T>
inline void check_ldm(const char* op, const void* p, unsigned ldm, int row_len) {
  if ((ldm * sizeof(T)) % 16 != 0 || ldm < static_cast<unsigned>(row_len))
    ::phi3emu::fail(std::string(op) + ": ldm " + std::to_string(ldm) +
                    " must be a multiple of 16 bytes and >= " + std::to_string(row_len));
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    ::phi3emu::fail(std::string(op) + ": pointer not 16-byte aligned");
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const T& v) {
  ::phi3emu::warp_collective("wmma::fill_fragment", detail::digest(&v, 1));
  for (auto& e : f.x) e = v;
}

// matrix_a / matrix_b: element (r, c) at p[r * ldm + c] (row_major) or p[c * ldm + r] (col_major).
template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  constexpr bool rm = std::is_same<L, row_major>::value;
  detail::check_ldm<T>("wmma::load_matrix_sync", p, ldm, rm ? F::cols : F::rows);
  ::phi3emu::warp_collective("wmma::load_matrix_sync",
                             detail::mix(reinterpret_cast<uintptr_t>(p), ldm));
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = rm ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  detail::check_ldm<float>("wmma::load_matrix_sync", p, ldm, 16);
  ::phi3emu::warp_collective("wmma::load_matrix_sync",
                             detail::mix(detail::mix(reinterpret_cast<uintptr_t>(p), ldm), layout));
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                              unsigned ldm, layout_t layout) {
  detail::check_ldm<float>("wmma::store_matrix_sync", p, ldm, 16);
  ::phi3emu::warp_collective(
      "wmma::store_matrix_sync",
      detail::digest(f.x, M * N, detail::mix(detail::mix(reinterpret_cast<uintptr_t>(p), ldm), layout)));
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
}

// d = a b + c (d may be c).
template <int M, int N, int K, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, M, N, K, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  ::phi3emu::warp_collective(
      "wmma::mma_sync", detail::digest(c.x, M * N, detail::digest(b.x, K * N, detail::digest(a.x, M * K))));
  // The 32 lanes pass identical fragments (checked above): the product is computed once and
  // the other lanes copy it (a per-OS-thread memo of the last inputs; the warp's lanes run on
  // one OS thread).
  struct Memo {
    bool valid = false;
    __nv_bfloat16 a[M * K], b[K * N];
    float c[M * N], d[M * N];
  };
  static thread_local Memo memo;
  if (memo.valid && std::memcmp(memo.a, a.x, sizeof(memo.a)) == 0 &&
      std::memcmp(memo.b, b.x, sizeof(memo.b)) == 0 && std::memcmp(memo.c, c.x, sizeof(memo.c)) == 0) {
    std::memcpy(d.x, memo.d, sizeof(memo.d));
    return;
  }
  std::memcpy(memo.a, a.x, sizeof(memo.a));
  std::memcpy(memo.b, b.x, sizeof(memo.b));
  std::memcpy(memo.c, c.x, sizeof(memo.c));
  float A[M * K], B[K * N];
  for (int i = 0; i < M * K; ++i) A[i] = __bfloat162float(a.x[i]);
  for (int i = 0; i < K * N; ++i) B[i] = __bfloat162float(b.x[i]);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = 0.0f;
      for (int k = 0; k < K; ++k) s += A[i * K + k] * B[k * N + j];  // exact products
      memo.d[i * N + j] = s + c.x[i * N + j];
    }
  memo.valid = true;
  std::memcpy(d.x, memo.d, sizeof(memo.d));
}

}  // namespace wmma
}  // namespace nvcuda
