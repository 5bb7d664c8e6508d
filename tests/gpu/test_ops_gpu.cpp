// CUDA ops against the CPU reference ops (DESIGN §8 step 3), forward and backward, on random
// inputs: odd sizes (vector/scalar paths, partial tiles) and the real Phi-3 sizes (d=3072,
// 32 heads x 96, ffn 8192; head_dim 128 of Phi-3-medium / Phi-4-mini), GQA, left padding,
// sliding window, packed rows with a prefix k/v cache. The CUDA side runs through the
// CudaBackend in fp32 mode (ops take device pointers); the reference is phi3::cpu:: on host
// copies of the same inputs. Every test skips itself with a reason when no GPU is visible.
// Cases are named by their parameters (e.g. RmsNorm/RmsNormGpu.ForwardBackward/N64_D3072).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/finite_flag.h"
#include "kernels/ops.h"
#include "model/forward.h"
#include "patching/copy_slices.h"
#include "runtime/backend.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "test_util.h"

#if defined(PHI3_WITH_CUDA)
#include <cuda_runtime.h>

#include "kernels/cuda/cast.cuh"
#include "runtime/cuda_backend.h"
#endif

#define REQUIRE_GPU()                                                 \
  do {                                                                \
    if (!::phi3::cuda_available()) GTEST_SKIP() << "no CUDA GPU visible"; \
  } while (0)

namespace phi3 {
namespace {

using test::compare;
using test::Diff;
using test::random_vec;

#if !defined(PHI3_WITH_CUDA)
TEST(OpsGpu, BuiltWithoutCuda) {
  GTEST_SKIP() << "built without CUDA (nvcc not found at configure time): no CUDA ops to test";
}
#else

// Tolerances (relative to the largest reference magnitude, test::Diff::rel):
// exact ops (copies, adds, casts, lookups) are compared bitwise.
constexpr double kTolElementwise = 1e-5;  // fp32; CUDA expf/sinf/cosf vs glibc differ by ~2 ulp
constexpr double kTolReduce = 1e-5;       // fp32 row reductions in a different summation order
constexpr double kTolGemmF32 = 2e-5;      // fp32 GEMM, cuBLAS blocking vs BLAS order, K <= 16384
constexpr double kTolGemmBf16 = 1e-2;     // x rounded to bf16 (2^-9 relative) before the GEMM
constexpr double kTolAttnFwd = 2e-5;      // online softmax (rescaled partial sums) vs two-pass
constexpr double kTolAttnBwd = 5e-5;      // sums over up to T x group terms in another order

Backend& gpu() {
  static std::unique_ptr<Backend> b = make_cuda_backend(/*fp32=*/true);
  return *b;
}

template <typename T>
DeviceArray<T> dev(const std::vector<T>& v) {
  return to_device(gpu(), v);
}

void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tol,
                  const std::string& what) {
  Diff d = compare(got, ref);
  EXPECT_TRUE(d.finite) << what << ": non-finite value in the CUDA result; " << d.str();
  EXPECT_LE(d.rel(), tol) << what << ": " << d.str() << " (got " << got[d.worst] << ", want "
                          << ref[d.worst] << ")";
}
void expect_equal(const std::vector<float>& got, const std::vector<float>& ref,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &ref[i], 4);
    if (a != b) {
      ADD_FAILURE() << what << ": first difference at " << i << ": got " << got[i] << ", want "
                    << ref[i];
      return;
    }
  }
}

using test::random_ints;

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = float_to_bf16_bits(v[i]);
  return h;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& h) {
  std::vector<float> v(h.size());
  for (size_t i = 0; i < h.size(); ++i) v[i] = bf16_bits_to_float(h[i]);
  return v;
}

// ---- backend ----------------------------------------------------------------------------
TEST(CudaBackend, NameMemoryAndOutOfMemory) {
  REQUIRE_GPU();
  EXPECT_EQ(gpu().kind(), DeviceKind::CUDA);
  EXPECT_EQ(gpu().name().rfind("cuda (", 0), 0u) << gpu().name();
  EXPECT_NE(gpu().name().find("fp32"), std::string::npos) << gpu().name();
  EXPECT_EQ(gpu().weight_dtype(), DType::F32);
  EXPECT_EQ(make_cuda_backend(false)->weight_dtype(), DType::BF16);
  EXPECT_GT(gpu().free_memory(), 0u);
  try {
    gpu().alloc(size_t(1) << 52);  // 4 PiB
    ADD_FAILURE() << "a 4 PiB allocation succeeded";
  } catch (const OutOfMemory& e) {
    EXPECT_NE(std::string(e.what()).find("lower --mem-budget or --batch"), std::string::npos)
        << e.what();
  }
  // copy / zero / upload / download round trip, and the context is still usable after OOM
  auto x = random_vec(1001, 1);
  auto a = dev(x);
  DeviceArray<float> b(gpu(), x.size());
  gpu().copy(b.get(), a.get(), x.size() * 4);
  expect_equal(b.download(), x, "copy");
  gpu().zero(b.get(), 8 * 4);
  auto z = b.download();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(z[i], 0.0f);
  EXPECT_EQ(z[8], x[8]);
}

// ---- embedding --------------------------------------------------------------------------
struct EmbParam {
  int V, D, N;
  DType dtype;
};
void PrintTo(const EmbParam& p, std::ostream* os) {
  *os << "EMBEDDING(V=" << p.V << ",D=" << p.D << ",N=" << p.N << ",table=" << dtype_name(p.dtype) << ")";
}
class EmbeddingGpu : public ::testing::TestWithParam<EmbParam> {};
TEST_P(EmbeddingGpu, Forward) {
  REQUIRE_GPU();
  const auto [V, D, N, dtype] = GetParam();
  auto tab = random_vec((size_t)V * D, 11);
  auto tab_h = to_bf16(tab);
  auto ids = random_ints(N, 0, V - 1, 12);
  Weight w_host{dtype == DType::F32 ? (const void*)tab.data() : (const void*)tab_h.data(), dtype,
                V, D};
  std::vector<float> ref((size_t)N * D);
  cpu::embedding_forward(ref.data(), ids.data(), w_host, N, nullptr);

  DeviceArray<float> t32;
  DeviceArray<uint16_t> t16;
  if (dtype == DType::F32) t32 = dev(tab); else t16 = dev(tab_h);
  Weight w_dev{dtype == DType::F32 ? (const void*)t32.get() : (const void*)t16.get(), dtype, V, D};
  auto ids_d = dev(ids);
  DeviceArray<float> out(gpu(), (size_t)N * D);
  gpu().embedding_forward(out.get(), ids_d.get(), w_dev, N);
  expect_equal(out.download(), ref, "embedding");  // exact: a copy / exact widening
  // Gemma's sqrt(D) scale: one fp32 multiply, the same on both
  cpu::embedding_forward(ref.data(), ids.data(), w_host, N, nullptr, 48.0f);
  gpu().embedding_forward(out.get(), ids_d.get(), w_dev, N, 48.0f);
  expect_equal(out.download(), ref, "embedding * 48");
}

TEST(ElementwiseGpu, Softcap) {
  REQUIRE_GPU();
  auto x = random_vec(4099, 91, -120.0f, 120.0f), dy = random_vec(4099, 92);
  std::vector<float> y = x, dx = dy;
  cpu::softcap_forward(y.data(), (int64_t)y.size(), 30.0f, nullptr);
  cpu::softcap_backward(dx.data(), y.data(), (int64_t)dx.size(), 30.0f, nullptr);
  auto yd = dev(x), dxd = dev(dy);
  gpu().softcap_forward(yd.get(), (int64_t)x.size(), 30.0f);
  gpu().softcap_backward(dxd.get(), yd.get(), (int64_t)dy.size(), 30.0f);
  expect_close(yd.download(), y, kTolElementwise, "softcap");
  expect_close(dxd.download(), dx, kTolElementwise, "softcap backward");
}
// flag_nonfinite: the CUDA flags equal the CPU flags (first bad index and value) for NaN/Inf
// at the first, a middle and the last element, on the 16-byte and the scalar path (x offset
// by one float), with later bad values present, flags already raised, none at all, and tensors
// of different sizes in one launch.
TEST(ElementwiseGpu, FlagNonfinite) {
  REQUIRE_GPU();
  const float inf = std::numeric_limits<float>::infinity();
  for (size_t n : {size_t(1), size_t(7), size_t(4096), size_t(100003)}) {
    const std::vector<float> base = random_vec(n + 1, uint32_t(n), -1e30f, 1e30f);
    for (size_t off : {size_t(0), size_t(1)}) {
      // Tensor 0 finite, then one per (position, value), each with later bad values too.
      std::vector<std::vector<float>> xs = {base};
      std::vector<uint64_t> want = {0};
      for (size_t at : {size_t(0), n / 2, n - 1})
        for (float v : {NAN, inf, -inf}) {
          std::vector<float> x = base;
          x[off + at] = v;
          if (at + 1 < n) x[off + n - 1] = -NAN;
          if (at + 3 < n) x[off + at + 3] = inf;
          xs.push_back(x);
          want.push_back(nonfinite_flag(int64_t(at), v));
        }
      xs.push_back(std::vector<float>(1, 1.0f));  // small tensors beside large ones: a 1-float one
      want.push_back(0);
      const size_t K = xs.size();
      // Flags already there: 0, or one larger (kept), or a later element's (lowered to this).
      for (int start = 0; start < 3; ++start) {
        std::vector<uint64_t> init(K);
        for (size_t k = 0; k < K; ++k)
          init[k] = start == 0 || !want[k] ? 0 : start == 1 ? (want[k] == ~uint64_t(0) ? want[k] : want[k] + 1)
                                                               : nonfinite_flag(int64_t(n), NAN);
        std::vector<uint64_t> ref = init;
        std::vector<DeviceArray<float>> xd;
        DeviceArray<uint64_t> flags = dev(init);
        NonfiniteBatch cb, gb;
        cb.count = gb.count = int(K);
        for (size_t k = 0; k < K; ++k) {
          xd.push_back(dev(xs[k]));
          const size_t o = xs[k].size() > n ? off : 0;
          cb.x[k] = xs[k].data() + o;
          gb.x[k] = xd[k].get() + o;
          cb.n[k] = gb.n[k] = int64_t(xs[k].size() > n ? n : xs[k].size());
          cb.flag[k] = &ref[k];
          gb.flag[k] = flags.get() + k;
        }
        cpu::flag_nonfinite(cb, nullptr);
        gpu().flag_nonfinite(gb);
        const std::vector<uint64_t> got = flags.download();
        for (size_t k = 0; k < K; ++k) {
          EXPECT_EQ(got[k], ref[k]) << "n " << n << " offset " << off << " tensor " << k << " start " << start;
          EXPECT_EQ(ref[k], std::max(init[k], want[k])) << "n " << n << " tensor " << k << " start " << start;
        }
      }
    }
  }
  DeviceArray<uint64_t> flag = dev(std::vector<uint64_t>{5});
  NonfiniteBatch empty;
  empty.count = 1;
  empty.flag[0] = flag.get();
  gpu().flag_nonfinite(empty);
  EXPECT_EQ(flag.download()[0], 5u) << "empty: untouched";
}

INSTANTIATE_TEST_SUITE_P(Embedding, EmbeddingGpu,
                         ::testing::Values(EmbParam{50, 7, 13, DType::F32},
                                           EmbParam{50, 7, 13, DType::BF16},
                                           EmbParam{100, 3072, 37, DType::F32},
                                           EmbParam{100, 3072, 37, DType::BF16}),
                         [](const auto& i) {
                           return "V" + std::to_string(i.param.V) + "_D" +
                                  std::to_string(i.param.D) + "_N" + std::to_string(i.param.N) +
                                  "_" + dtype_name(i.param.dtype);
                         });

// ---- RMSNorm ----------------------------------------------------------------------------
struct NormParam {
  int N, D;
  bool misaligned;  // offset every pointer by one float: forces the scalar path
};
void PrintTo(const NormParam& p, std::ostream* os) {
  *os << "RMS_NORM(N=" << p.N << ",D=" << p.D << (p.misaligned ? ",misaligned" : "") << ")";
}
class RmsNormGpu : public ::testing::TestWithParam<NormParam> {};
TEST_P(RmsNormGpu, ForwardBackward) {
  REQUIRE_GPU();
  const auto [N, D, mis] = GetParam();
  const int off = mis ? 1 : 0;
  const float eps = 1e-5f;
  const size_t n = (size_t)N * D + off;
  auto x = random_vec(n, 21, -3, 3), w = random_vec(D + off, 22, 0.5, 1.5);
  auto dout = random_vec(n, 23), dx0 = random_vec(n, 24);

  std::vector<float> out(n, 0.f), rstd(N), dx = dx0;
  cpu::rmsnorm_forward(out.data() + off, rstd.data(), x.data() + off, w.data() + off, N, D, eps,
                       nullptr);
  cpu::rmsnorm_backward(dx.data() + off, dout.data() + off, x.data() + off, w.data() + off,
                        rstd.data(), N, D, nullptr);

  auto xd = dev(x), wd = dev(w), doutd = dev(dout), dxd = dev(dx0);
  DeviceArray<float> outd(gpu(), n), rstdd(gpu(), N);
  gpu().zero(outd.get(), n * 4);
  gpu().rmsnorm_forward(outd.get() + off, rstdd.get(), xd.get() + off, wd.get() + off, N, D, eps);
  gpu().rmsnorm_backward(dxd.get() + off, doutd.get() + off, xd.get() + off, wd.get() + off,
                         rstdd.get(), N, D);
  expect_close(rstdd.download(), rstd, kTolReduce, "rstd");
  expect_close(outd.download(), out, kTolReduce, "out");
  expect_close(dxd.download(), dx, kTolReduce, "dx (accumulated onto a random dx)");
}
// LayerNorm (GPT-2): the norm op with center and a bias, and the fused residual add + norm,
// CUDA against the CPU op.
TEST_P(RmsNormGpu, LayerNormForwardBackward) {
  REQUIRE_GPU();
  const auto [N, D, mis] = GetParam();
  const int off = mis ? 1 : 0;
  const float eps = 1e-5f;
  const size_t n = (size_t)N * D + off;
  auto x = random_vec(n, 31, -2, 4), w = random_vec(D + off, 32, 0.5, 1.5), bias = random_vec(D + off, 35);
  auto a = random_vec(n, 36, -1, 2);
  auto dout = random_vec(n, 33), dx0 = random_vec(n, 34);
  std::vector<float> out(n, 0.f), rstd(N), dx = dx0, sum(n, 0.f), out2(n, 0.f), rstd2(N);
  cpu::rmsnorm_forward(out.data() + off, rstd.data(), x.data() + off, w.data() + off, N, D, eps, nullptr, true,
                       bias.data() + off);
  cpu::rmsnorm_backward(dx.data() + off, dout.data() + off, x.data() + off, w.data() + off, rstd.data(), N, D,
                        nullptr, true);
  cpu::add_rmsnorm_forward(sum.data() + off, out2.data() + off, rstd2.data(), a.data() + off, x.data() + off,
                           w.data() + off, N, D, eps, nullptr, true, bias.data() + off);

  auto xd = dev(x), wd = dev(w), bd = dev(bias), ad = dev(a), doutd = dev(dout), dxd = dev(dx0);
  DeviceArray<float> outd(gpu(), n), rstdd(gpu(), N), sumd(gpu(), n), out2d(gpu(), n), rstd2d(gpu(), N);
  gpu().zero(outd.get(), n * 4);
  gpu().zero(sumd.get(), n * 4);
  gpu().zero(out2d.get(), n * 4);
  gpu().rmsnorm_forward(outd.get() + off, rstdd.get(), xd.get() + off, wd.get() + off, N, D, eps, true,
                        bd.get() + off);
  gpu().rmsnorm_backward(dxd.get() + off, doutd.get() + off, xd.get() + off, wd.get() + off, rstdd.get(), N, D, true);
  gpu().add_rmsnorm_forward(sumd.get() + off, out2d.get() + off, rstd2d.get(), ad.get() + off, xd.get() + off,
                            wd.get() + off, N, D, eps, true, bd.get() + off);
  expect_close(rstdd.download(), rstd, kTolReduce, "layernorm rstd");
  expect_close(outd.download(), out, kTolReduce, "layernorm out");
  expect_close(dxd.download(), dx, kTolReduce, "layernorm dx (accumulated onto a random dx)");
  expect_close(sumd.download(), sum, 0, "add + layernorm: sum");
  expect_close(out2d.download(), out2, kTolReduce, "add + layernorm: out");
  expect_close(rstd2d.download(), rstd2, kTolReduce, "add + layernorm: rstd");
}
INSTANTIATE_TEST_SUITE_P(RmsNorm, RmsNormGpu,
                         ::testing::Values(NormParam{1, 1, false}, NormParam{3, 7, false},
                                           NormParam{5, 33, false}, NormParam{4, 1000, false},
                                           NormParam{2, 5000, false}, NormParam{17, 3072, false},
                                           NormParam{64, 3072, false}, NormParam{9, 3072, true},
                                           NormParam{3, 100, true}),
                         [](const auto& i) {
                           return "N" + std::to_string(i.param.N) + "_D" +
                                  std::to_string(i.param.D) + (i.param.misaligned ? "_misaligned" : "");
                         });

// ---- linear -----------------------------------------------------------------------------
struct LinParam {
  int N, in, out;
  DType dtype;
};
void PrintTo(const LinParam& p, std::ostream* os) {
  *os << "LINEAR(N=" << p.N << ",in=" << p.in << ",out=" << p.out << ",W=" << dtype_name(p.dtype) << ")";
}
class LinearGpu : public ::testing::TestWithParam<LinParam> {};
TEST_P(LinearGpu, ForwardBackward) {
  REQUIRE_GPU();
  const auto [N, in, out, dtype] = GetParam();
  auto W = random_vec((size_t)out * in, 31, -0.05f, 0.05f);
  auto Wh = to_bf16(W);
  if (dtype == DType::BF16) W = from_bf16(Wh);  // the reference sees the same (rounded) weights
  auto x = random_vec((size_t)N * in, 32), dy = random_vec((size_t)N * out, 33);
  auto dx0 = random_vec((size_t)N * in, 34);
  const Weight Wc{W.data(), DType::F32, out, in};
  std::vector<float> y((size_t)N * out), dx_set((size_t)N * in), dx_acc = dx0;
  cpu::linear_forward(y.data(), x.data(), Wc, N, false, nullptr);
  cpu::linear_backward(dx_set.data(), dy.data(), Wc, N, false, nullptr);
  cpu::linear_backward(dx_acc.data(), dy.data(), Wc, N, true, nullptr);

  DeviceArray<float> W32;
  DeviceArray<uint16_t> W16;
  if (dtype == DType::F32) W32 = dev(W); else W16 = dev(Wh);
  const Weight Wd{dtype == DType::F32 ? (const void*)W32.get() : (const void*)W16.get(), dtype,
                  out, in};
  auto xd = dev(x), dyd = dev(dy), dxa = dev(dx0);
  DeviceArray<float> yd(gpu(), y.size()), dxs(gpu(), dx_set.size());
  gpu().linear_forward(yd.get(), xd.get(), Wd, N, false);
  gpu().linear_backward(dxs.get(), dyd.get(), Wd, N, false);
  gpu().linear_backward(dxa.get(), dyd.get(), Wd, N, true);
  const double tol = dtype == DType::F32 ? kTolGemmF32 : kTolGemmBf16;
  expect_close(yd.download(), y, tol, "y");
  expect_close(dxs.download(), dx_set, tol, "dx (overwrite)");
  expect_close(dxa.download(), dx_acc, tol, "dx (accumulate)");
}
// The bias pass (bias_add_kernel) against the CPU op, overwrite and accumulate, fp32 and bf16
// weights, a row count that is not a multiple of anything.
TEST(LinearGpuBias, MatchesCpu) {
  REQUIRE_GPU();
  for (DType dtype : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const int N = 7, in = 19, out = 45;
    auto W = random_vec(size_t(out) * in, 41, -0.05f, 0.05f);
    auto Wh = to_bf16(W);
    if (dtype == DType::BF16) W = from_bf16(Wh);
    const auto x = random_vec(size_t(N) * in, 42), b = random_vec(out, 43), base = random_vec(size_t(N) * out, 44);
    Weight Wc{W.data(), DType::F32, out, in};
    Wc.bias = b.data();
    std::vector<float> y(size_t(N) * out), ya = base;
    cpu::linear_forward(y.data(), x.data(), Wc, N, false, nullptr);
    cpu::linear_forward(ya.data(), x.data(), Wc, N, true, nullptr);
    DeviceArray<float> W32, bd = dev(b);
    DeviceArray<uint16_t> W16;
    if (dtype == DType::F32) W32 = dev(W); else W16 = dev(Wh);
    Weight Wd{dtype == DType::F32 ? (const void*)W32.get() : (const void*)W16.get(), dtype, out, in};
    Wd.bias = bd.get();
    auto xd = dev(x), yad = dev(base);
    DeviceArray<float> yd(gpu(), y.size());
    gpu().linear_forward(yd.get(), xd.get(), Wd, N, false);
    gpu().linear_forward(yad.get(), xd.get(), Wd, N, true);
    const double tol = dtype == DType::F32 ? kTolGemmF32 : kTolGemmBf16;
    expect_close(yd.download(), y, tol, "y");
    expect_close(yad.download(), ya, tol, "y (accumulate)");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Linear, LinearGpu,
    ::testing::Values(LinParam{1, 1, 1, DType::F32}, LinParam{5, 17, 33, DType::F32},
                      LinParam{64, 3072, 9216, DType::F32}, LinParam{7, 8192, 3072, DType::F32},
                      LinParam{3, 3072, 16384, DType::F32}, LinParam{5, 17, 33, DType::BF16},
                      LinParam{64, 3072, 9216, DType::BF16}, LinParam{33, 8192, 3072, DType::BF16}),
    [](const auto& i) {
      return "N" + std::to_string(i.param.N) + "_in" + std::to_string(i.param.in) + "_out" +
             std::to_string(i.param.out) + "_" + dtype_name(i.param.dtype);
    });

// ---- rotary -----------------------------------------------------------------------------
struct RopeParam {
  int N, heads, HD, rot;
  float scale;
  int extra_stride;  // row stride = heads*HD + extra (0: contiguous)
};
void PrintTo(const RopeParam& p, std::ostream* os) {
  *os << "ROTARY(N=" << p.N << ",heads=" << p.heads << ",HD=" << p.HD << ",rot=" << p.rot
      << ",scale=" << p.scale << ",stride+=" << p.extra_stride << ")";
}
class RotaryGpu : public ::testing::TestWithParam<RopeParam> {};
TEST_P(RotaryGpu, ForwardBackward) {
  REQUIRE_GPU();
  const auto [N, heads, HD, rot, scale, extra] = GetParam();
  const int64_t stride = (int64_t)heads * HD + extra;
  const size_t n = (size_t)N * stride;
  std::vector<float> inv_freq(rot / 2);
  for (int i = 0; i < rot / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / rot);
  auto pos = random_ints(N, 0, 4095, 41);
  auto in = random_vec(n, 42), dout = random_vec(n, 43);
  std::vector<float> out(n, 0.f), din(n, 0.f);
  RopeParams rc{inv_freq.data(), rot, scale};
  cpu::rotary_forward(out.data(), stride, in.data(), stride, pos.data(), N, heads, HD, rc, nullptr);
  cpu::rotary_backward(din.data(), stride, dout.data(), stride, pos.data(), N, heads, HD, rc,
                       nullptr);

  auto fd = dev(inv_freq);
  auto posd = dev(pos);
  auto ind = dev(in), doutd = dev(dout);
  DeviceArray<float> outd(gpu(), n), dind(gpu(), n);
  gpu().zero(outd.get(), n * 4);
  gpu().zero(dind.get(), n * 4);
  RopeParams rg{fd.get(), rot, scale};
  gpu().rotary_forward(outd.get(), stride, ind.get(), stride, posd.get(), N, heads, HD, rg);
  gpu().rotary_backward(dind.get(), stride, doutd.get(), stride, posd.get(), N, heads, HD, rg);
  expect_close(outd.download(), out, kTolElementwise, "rotary out");
  expect_close(dind.download(), din, kTolElementwise, "rotary din");

  // in place (out == in), as the model rotates q/k inside the fused qkv rows
  // (columns between heads*HD and the row stride keep their input values)
  gpu().rotary_forward(ind.get(), stride, ind.get(), stride, posd.get(), N, heads, HD, rg);
  std::vector<float> want = in;
  for (int r = 0; r < N; ++r)
    for (int64_t c = 0; c < (int64_t)heads * HD; ++c) want[r * stride + c] = out[r * stride + c];
  expect_close(ind.download(), want, kTolElementwise, "rotary in place");
}
INSTANTIATE_TEST_SUITE_P(
    Rotary, RotaryGpu,
    ::testing::Values(RopeParam{3, 1, 2, 2, 1.0f, 0}, RopeParam{5, 3, 10, 6, 1.0f, 3},
                      RopeParam{7, 32, 96, 96, 1.0f, 0}, RopeParam{64, 32, 96, 96, 1.0f, 2 * 8 * 96},
                      RopeParam{9, 24, 128, 96, 1.19f, 0}, RopeParam{4, 8, 128, 128, 1.0f, 5}),
    [](const auto& i) {
      return "N" + std::to_string(i.param.N) + "_H" + std::to_string(i.param.heads) + "_HD" +
             std::to_string(i.param.HD) + "_rot" + std::to_string(i.param.rot) +
             (i.param.scale != 1.0f ? "_scaled" : "") +
             (i.param.extra_stride ? "_strided" : "");
    });

// ---- attention: plain pass (forward with pattern + backward) ---------------------------
struct AttnParam {
  std::string name;
  int T, H, KVH, HD, window;
  std::vector<int> pads;  // one per batch row
  float softcap = 0.0f;   // Gemma 2's score soft-capping (0: none)
};
void PrintTo(const AttnParam& p, std::ostream* os) { *os << "ATTENTION(" << p.name << ")"; }
class AttentionGpu : public ::testing::TestWithParam<AttnParam> {};

TEST_P(AttentionGpu, PlainForwardBackward) {
  REQUIRE_GPU();
  const AttnParam& c = GetParam();
  const int B = (int)c.pads.size(), T = c.T, H = c.H, KVH = c.KVH, HD = c.HD;
  const int64_t qkv_stride = (int64_t)(H + 2 * KVH) * HD;  // fused qkv rows, as the model has
  const size_t rows = (size_t)B * T;
  auto qkv = random_vec(rows * qkv_stride, 51, -1.5f, 1.5f);
  auto dz = random_vec(rows * H * HD, 52);
  std::vector<AttnSegment> segs;
  for (int b = 0; b < B; ++b) segs.push_back(AttnSegment{b, 0, b * T, 0, b * T});

  auto fill = [&](AttnParams& p, float* base, float* z, float* pattern, const int32_t* pad,
                  const AttnSegment* sg) {
    p.q = base;
    p.k = base + (int64_t)H * HD;
    p.v = base + (int64_t)(H + KVH) * HD;
    p.z = z;
    p.pattern = pattern;
    p.pad = pad;
    p.segs = sg;
    p.q_stride = p.kv_stride = qkv_stride;
    p.z_stride = (int64_t)H * HD;
    p.n_segs = B;
    p.T = T; p.H = H; p.KVH = KVH; p.HD = HD;
    p.window = c.window;
    p.scale = 1.0f / std::sqrt((float)HD);
    p.softcap = c.softcap;
  };
  // CPU reference
  std::vector<float> z(rows * H * HD), pat((size_t)B * H * T * T), dqkv(rows * qkv_stride, 0.f);
  std::vector<float> stats((size_t)B * H * T * 2);
  std::vector<int32_t> pad(c.pads.begin(), c.pads.end());
  AttnParams pc;
  fill(pc, qkv.data(), z.data(), pat.data(), pad.data(), segs.data());
  pc.stats = stats.data();
  cpu::attention_forward(pc, nullptr);
  AttnBackwardParams bc{pc, dz.data(), dqkv.data(), dqkv.data() + (int64_t)H * HD,
                        dqkv.data() + (int64_t)(H + KVH) * HD};
  cpu::attention_backward(bc, nullptr);

  // CUDA
  auto qkvd = dev(qkv), dzd = dev(dz);
  auto padd = dev(pad);
  auto segd = dev(segs);
  DeviceArray<float> zd(gpu(), z.size()), patd(gpu(), pat.size()), dqkvd(gpu(), dqkv.size());
  DeviceArray<float> statsd(gpu(), stats.size());
  gpu().zero(patd.get(), pat.size() * 4);
  gpu().zero(dqkvd.get(), dqkv.size() * 4);
  AttnParams pg;
  fill(pg, qkvd.get(), zd.get(), patd.get(), padd.get(), segd.get());
  pg.stats = statsd.get();
  gpu().attention_forward(pg);
  AttnBackwardParams bg{pg, dzd.get(), dqkvd.get(), dqkvd.get() + (int64_t)H * HD,
                        dqkvd.get() + (int64_t)(H + KVH) * HD};
  gpu().attention_backward(bg);
  expect_close(zd.download(), z, kTolAttnFwd, "z");
  expect_close(patd.download(), pat, kTolAttnFwd, "pattern");
  expect_close(dqkvd.download(), dqkv, kTolAttnBwd, "dq|dk|dv");
  {  // the per-row log-sum-exp m + log l of the stats (pad queries (-inf, 0) on both)
    const std::vector<float> g = statsd.download();
    std::vector<float> got, want;
    for (size_t i = 0; i < g.size(); i += 2) {
      ASSERT_EQ(std::isinf(g[i]), std::isinf(stats[i])) << "stats row " << i / 2;
      if (std::isinf(stats[i])) {
        ASSERT_EQ(g[i + 1], 0.0f);
        continue;
      }
      got.push_back(g[i] + std::log(g[i + 1]));
      want.push_back(stats[i] + std::log(stats[i + 1]));
    }
    expect_close(got, want, kTolAttnFwd, "lse");
  }
  {  // the backward recomputes P: a forward without a pattern gives the same gradients, bitwise
    DeviceArray<float> z3(gpu(), z.size()), d3(gpu(), dqkv.size());
    gpu().zero(d3.get(), dqkv.size() * 4);
    AttnParams p3 = pg;
    p3.z = z3.get();
    p3.pattern = nullptr;
    gpu().attention_forward(p3);
    AttnBackwardParams b3{p3, dzd.get(), d3.get(), d3.get() + (int64_t)H * HD, d3.get() + (int64_t)(H + KVH) * HD};
    gpu().attention_backward(b3);
    expect_equal(d3.download(), dqkvd.download(), "dq|dk|dv without a kept pattern");
  }

  // without a pattern the same z comes out (the pattern sweep is optional)
  DeviceArray<float> z2(gpu(), z.size());
  AttnParams pn = pg;
  pn.z = z2.get();
  pn.pattern = nullptr;
  gpu().attention_forward(pn);
  expect_equal(z2.download(), zd.download(), "z without pattern");
}

// Packed rows with a prefix cache (the exact patching sweep): k/v of positions < fresh_start
// come from the cache, queries start at q_start (T-1 at the last layer).
TEST_P(AttentionGpu, PackedPrefixCache) {
  REQUIRE_GPU();
  const AttnParam& c = GetParam();
  const int B = (int)c.pads.size(), T = c.T, H = c.H, KVH = c.KVH, HD = c.HD;
  const int64_t kvw = (int64_t)KVH * HD, qw = (int64_t)H * HD;
  // segments: (batch, fresh_start, q_start) spread over the rows, incl. q_start = T-1
  std::vector<AttnSegment> segs;
  int kv_rows = 0, q_rows = 0;
  auto add = [&](int b, int fresh, int q) {
    fresh = std::min(fresh, T - 1);
    q = std::max(fresh, std::min(q, T - 1));
    segs.push_back(AttnSegment{b, fresh, kv_rows, q, q_rows});
    kv_rows += T - fresh;
    q_rows += T - q;
  };
  for (int b = 0; b < B; ++b) {
    add(b, 0, 0);
    add(b, T / 3, T / 3);
    add(b, T / 2, T - 1);
    add(b, 1, T / 4 + 1);
    add(b, c.pads[b], c.pads[b]);
  }
  const int n_segs = (int)segs.size();
  auto kc = random_vec((size_t)B * T * kvw, 61), vc = random_vec((size_t)B * T * kvw, 62);
  auto k = random_vec((size_t)kv_rows * kvw, 63), v = random_vec((size_t)kv_rows * kvw, 64);
  auto q = random_vec((size_t)q_rows * qw, 65, -1.5f, 1.5f);
  std::vector<int32_t> pad(c.pads.begin(), c.pads.end());
  auto fill = [&](AttnParams& p, const float* qp, const float* kp, const float* vp,
                  const float* kcp, const float* vcp, float* z, const int32_t* padp,
                  const AttnSegment* sg) {
    p.q = qp; p.k = kp; p.v = vp; p.k_cache = kcp; p.v_cache = vcp;
    p.z = z; p.pattern = nullptr; p.pad = padp; p.segs = sg;
    p.q_stride = qw; p.kv_stride = kvw; p.cache_stride = kvw; p.z_stride = qw;
    p.n_segs = n_segs; p.T = T; p.H = H; p.KVH = KVH; p.HD = HD;
    p.window = c.window;
    p.scale = 1.0f / std::sqrt((float)HD);
    p.softcap = c.softcap;
  };
  std::vector<float> z((size_t)q_rows * qw);
  AttnParams pc;
  fill(pc, q.data(), k.data(), v.data(), kc.data(), vc.data(), z.data(), pad.data(), segs.data());
  cpu::attention_forward(pc, nullptr);

  auto qd = dev(q), kd = dev(k), vd = dev(v), kcd = dev(kc), vcd = dev(vc);
  auto padd = dev(pad);
  auto segd = dev(segs);
  DeviceArray<float> zd(gpu(), z.size());
  AttnParams pg;
  fill(pg, qd.get(), kd.get(), vd.get(), kcd.get(), vcd.get(), zd.get(), padd.get(), segd.get());
  gpu().attention_forward(pg);
  expect_close(zd.download(), z, kTolAttnFwd, "z (packed, prefix cache)");
}

INSTANTIATE_TEST_SUITE_P(
    Attention, AttentionGpu,
    ::testing::Values(AttnParam{"T1_H2_KVH1_HD8", 1, 2, 1, 8, 0, {0}},
                      AttnParam{"T37_H3_HD20_pad0_5", 37, 3, 3, 20, 0, {0, 5}},
                      AttnParam{"T31_H32_HD96_seed", 31, 32, 32, 96, 0, {0, 4, 2, 0}},
                      AttnParam{"T97_H32_HD96_pad0_13", 97, 32, 32, 96, 0, {0, 13}},
                      AttnParam{"T200_H8_KVH2_HD128_pad3_0", 200, 8, 2, 128, 0, {3, 0}},
                      AttnParam{"T150_H4_KVH2_HD64_win40", 150, 4, 2, 64, 40, {0, 7}},
                      AttnParam{"T33_H2_KVH1_HD160", 33, 2, 1, 160, 0, {2}},
                      AttnParam{"T1025_H4_HD96", 1025, 4, 4, 96, 0, {0}},
                      AttnParam{"T37_H4_KVH2_HD32_cap05", 37, 4, 2, 32, 0, {0, 5}, 0.5f},
                      AttnParam{"T150_H8_KVH4_HD256_win40_cap1", 150, 8, 4, 256, 40, {0, 7}, 1.0f}),
    [](const auto& i) { return i.param.name; });

// ---- attention on bf16 tensor cores (AttnParams::tensor_cores) --------------------------
// The WMMA kernels against the CPU attention (fp32). Tolerances, relative to the largest
// reference magnitude: q, k, v, P (and dz, dS) are rounded to bf16, 2^-9 = 0.2% relative each,
// accumulation in fp32. A score S = scale q . k then moves by up to ~2 * 2^-9 * scale
// sum |q_d k_d| (~0.02 here), P = exp(S - m) / l by that much relatively, and z = P v, a
// weighted mean, by ~1% of max |z| at worst: kTolAttnTc = 1e-2 (seen on the emulator: at most
// 0.46% for z, 0.15% for the log-sum-exp). The backward multiplies two more rounded factors
// (dz, dS) into sums over up to T x group terms: kTolAttnTcBwd = 2e-2 (seen: at most 0.6%).
// An error in masking, tiling or indexing moves values by O(max |ref|), far above these.
constexpr double kTolAttnTc = 1e-2;
constexpr double kTolAttnTcBwd = 2e-2;

class AttentionTcGpu : public ::testing::TestWithParam<AttnParam> {};

TEST_P(AttentionTcGpu, PlainForwardBackward) {
  REQUIRE_GPU();
  const AttnParam& c = GetParam();
  const int B = (int)c.pads.size(), T = c.T, H = c.H, KVH = c.KVH, HD = c.HD;
  const int64_t qkv_stride = (int64_t)(H + 2 * KVH) * HD;
  const size_t rows = (size_t)B * T;
  auto qkv = random_vec(rows * qkv_stride, 81, -1.5f, 1.5f);
  auto dz = random_vec(rows * H * HD, 82);
  std::vector<AttnSegment> segs;
  for (int b = 0; b < B; ++b) segs.push_back(AttnSegment{b, 0, b * T, 0, b * T});
  auto fill = [&](AttnParams& p, float* base, float* z, float* st, const int32_t* pad, const AttnSegment* sg) {
    p.q = base;
    p.k = base + (int64_t)H * HD;
    p.v = base + (int64_t)(H + KVH) * HD;
    p.z = z;
    p.stats = st;
    p.pad = pad;
    p.segs = sg;
    p.q_stride = p.kv_stride = qkv_stride;
    p.z_stride = (int64_t)H * HD;
    p.n_segs = B;
    p.T = T; p.H = H; p.KVH = KVH; p.HD = HD;
    p.window = c.window;
    p.scale = 1.0f / std::sqrt((float)HD);
    p.softcap = c.softcap;
  };
  std::vector<float> z(rows * H * HD), dqkv(rows * qkv_stride, 0.f), stats((size_t)B * H * T * 2);
  std::vector<int32_t> pad(c.pads.begin(), c.pads.end());
  AttnParams pc;
  fill(pc, qkv.data(), z.data(), stats.data(), pad.data(), segs.data());
  cpu::attention_forward(pc, nullptr);
  AttnBackwardParams bc{pc, dz.data(), dqkv.data(), dqkv.data() + (int64_t)H * HD,
                        dqkv.data() + (int64_t)(H + KVH) * HD};
  cpu::attention_backward(bc, nullptr);

  auto qkvd = dev(qkv), dzd = dev(dz);
  auto padd = dev(pad);
  auto segd = dev(segs);
  DeviceArray<float> zd(gpu(), z.size()), dqkvd(gpu(), dqkv.size()), statsd(gpu(), stats.size());
  DeviceArray<uint16_t> z16d(gpu(), z.size());
  gpu().zero(dqkvd.get(), dqkv.size() * 4);
  AttnParams pg;
  fill(pg, qkvd.get(), zd.get(), statsd.get(), padd.get(), segd.get());
  pg.z16 = z16d.get();
  pg.tensor_cores = true;
  gpu().attention_forward(pg);
  const std::vector<float> zg = zd.download();
  expect_close(zg, z, kTolAttnTc, "z (tensor cores)");
  EXPECT_GT(compare(zg, z).max_abs, 0.0) << "bf16 rounding should show: the tensor-core kernel ran";
  {
    const std::vector<uint16_t> h = z16d.download();
    for (size_t i = 0; i < h.size(); ++i)
      ASSERT_EQ(h[i], float_to_bf16_bits(zg[i])) << "z16 is z rounded to bf16, at " << i;
  }
  {  // stats: pad queries (-inf, 0) exactly, the others' log-sum-exp m + log l
    const std::vector<float> g = statsd.download();
    std::vector<float> got, want;
    for (size_t i = 0; i < g.size(); i += 2) {
      ASSERT_EQ(std::isinf(g[i]), std::isinf(stats[i])) << "stats row " << i / 2;
      if (std::isinf(stats[i])) {
        ASSERT_EQ(g[i + 1], 0.0f);
        continue;
      }
      got.push_back(g[i] + std::log(g[i + 1]));
      want.push_back(stats[i] + std::log(stats[i + 1]));
    }
    expect_close(got, want, kTolAttnTc, "lse (tensor cores)");
  }
  AttnBackwardParams bg{pg, dzd.get(), dqkvd.get(), dqkvd.get() + (int64_t)H * HD,
                        dqkvd.get() + (int64_t)(H + KVH) * HD};
  gpu().attention_backward(bg);
  const std::vector<float> dg = dqkvd.download();
  for (int part = 0; part < 3; ++part) {  // dq, dk, dv separately (their scales differ)
    const int64_t off = part == 0 ? 0 : part == 1 ? (int64_t)H * HD : (int64_t)(H + KVH) * HD;
    const int64_t w = part == 0 ? (int64_t)H * HD : (int64_t)KVH * HD;
    std::vector<float> got, want;
    for (size_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < w; ++i) {
        got.push_back(dg[r * qkv_stride + off + i]);
        want.push_back(dqkv[r * qkv_stride + off + i]);
      }
    expect_close(got, want, kTolAttnTcBwd, std::string(part == 0 ? "dq" : part == 1 ? "dk" : "dv") + " (tensor cores)");
  }
  // A pattern (forward) or dpattern (backward) keeps the call on the fp32 kernels, bitwise.
  DeviceArray<float> pat(gpu(), (size_t)B * H * T * T), dpat(gpu(), pat.size());
  auto run = [&](bool tc) {
    gpu().zero(pat.get(), pat.size() * 4);
    gpu().zero(dpat.get(), dpat.size() * 4);
    gpu().zero(dqkvd.get(), dqkv.size() * 4);
    AttnParams pp = pg;
    pp.z16 = nullptr;
    pp.pattern = pat.get();
    pp.tensor_cores = tc;
    gpu().attention_forward(pp);
    AttnBackwardParams bb{pp, dzd.get(), dqkvd.get(), dqkvd.get() + (int64_t)H * HD,
                          dqkvd.get() + (int64_t)(H + KVH) * HD, dpat.get()};
    gpu().attention_backward(bb);
    return std::vector<std::vector<float>>{zd.download(), statsd.download(), dqkvd.download(), dpat.download()};
  };
  const auto tc = run(true), f32 = run(false);
  for (int i = 0; i < 4; ++i) expect_equal(tc[i], f32[i], "pattern / dpattern requested: the fp32 kernels");
}

// Packed segments with a prefix cache (the exact sweep's shape), incl. q_start = T-1.
TEST_P(AttentionTcGpu, PackedPrefixCache) {
  REQUIRE_GPU();
  const AttnParam& c = GetParam();
  const int B = (int)c.pads.size(), T = c.T, H = c.H, KVH = c.KVH, HD = c.HD;
  const int64_t kvw = (int64_t)KVH * HD, qw = (int64_t)H * HD;
  std::vector<AttnSegment> segs;
  int kv_rows = 0, q_rows = 0;
  auto add = [&](int b, int fresh, int q) {
    fresh = std::min(fresh, T - 1);
    q = std::max(fresh, std::min(q, T - 1));
    segs.push_back(AttnSegment{b, fresh, kv_rows, q, q_rows});
    kv_rows += T - fresh;
    q_rows += T - q;
  };
  for (int b = 0; b < B; ++b) {
    add(b, T / 2, T - 1);
    add(b, T / 3, T / 3 + 1);
    add(b, c.pads[b], c.pads[b]);
  }
  const int n_segs = (int)segs.size();
  auto kc = random_vec((size_t)B * T * kvw, 91), vc = random_vec((size_t)B * T * kvw, 92);
  auto k = random_vec((size_t)kv_rows * kvw, 93), v = random_vec((size_t)kv_rows * kvw, 94);
  auto q = random_vec((size_t)q_rows * qw, 95, -1.5f, 1.5f);
  std::vector<int32_t> pad(c.pads.begin(), c.pads.end());
  auto fill = [&](AttnParams& p, const float* qp, const float* kp, const float* vp, const float* kcp,
                  const float* vcp, float* z, const int32_t* padp, const AttnSegment* sg) {
    p.q = qp; p.k = kp; p.v = vp; p.k_cache = kcp; p.v_cache = vcp;
    p.z = z; p.pad = padp; p.segs = sg;
    p.q_stride = qw; p.kv_stride = kvw; p.cache_stride = kvw; p.z_stride = qw;
    p.n_segs = n_segs; p.T = T; p.H = H; p.KVH = KVH; p.HD = HD;
    p.window = c.window;
    p.scale = 1.0f / std::sqrt((float)HD);
    p.softcap = c.softcap;
  };
  std::vector<float> z((size_t)q_rows * qw);
  AttnParams pc;
  fill(pc, q.data(), k.data(), v.data(), kc.data(), vc.data(), z.data(), pad.data(), segs.data());
  cpu::attention_forward(pc, nullptr);
  auto qd = dev(q), kd = dev(k), vd = dev(v), kcd = dev(kc), vcd = dev(vc);
  auto padd = dev(pad);
  auto segd = dev(segs);
  DeviceArray<float> zd(gpu(), z.size());
  AttnParams pg;
  fill(pg, qd.get(), kd.get(), vd.get(), kcd.get(), vcd.get(), zd.get(), padd.get(), segd.get());
  pg.tensor_cores = true;
  gpu().attention_forward(pg);
  expect_close(zd.download(), z, kTolAttnTc, "z (tensor cores, packed, prefix cache)");
}

// HD not a multiple of 16 (8, 20, 80), T not a multiple of the 64-query / 64-key tiles, GQA,
// pads, windows, soft-capping, HD up to 256 (32-key tiles, 2-warp backward blocks).
INSTANTIATE_TEST_SUITE_P(
    AttentionTc, AttentionTcGpu,
    ::testing::Values(AttnParam{"T1_H2_KVH1_HD8", 1, 2, 1, 8, 0, {0}},
                      AttnParam{"T37_H3_HD20_pad0_5", 37, 3, 3, 20, 0, {0, 5}},
                      AttnParam{"T70_H2_KVH1_HD80_pad9", 70, 2, 1, 80, 0, {9}},
                      AttnParam{"T97_H4_KVH2_HD96_pad0_13", 97, 4, 2, 96, 0, {0, 13}},
                      AttnParam{"T130_H4_KVH2_HD128_pad3_0", 130, 4, 2, 128, 0, {3, 0}},
                      AttnParam{"T150_H4_KVH2_HD64_win40", 150, 4, 2, 64, 40, {0, 7}},
                      AttnParam{"T33_H2_KVH1_HD160", 33, 2, 1, 160, 0, {2}},
                      AttnParam{"T37_H4_KVH2_HD32_cap05", 37, 4, 2, 32, 0, {0, 5}, 0.5f},
                      AttnParam{"T90_H4_KVH2_HD256_win40_cap1", 90, 4, 2, 256, 40, {0, 7}, 1.0f}),
    [](const auto& i) { return i.param.name; });

// ---- SwiGLU -----------------------------------------------------------------------------
struct SwigluParam {
  int N, F;
  bool misaligned;
};
void PrintTo(const SwigluParam& p, std::ostream* os) {
  *os << "SWIGLU(N=" << p.N << ",F=" << p.F << (p.misaligned ? ",misaligned" : "") << ")";
}
class SwigluGpu : public ::testing::TestWithParam<SwigluParam> {};
TEST_P(SwigluGpu, ForwardBackward) {  // SwiGLU and GeGLU (Gemma 2's tanh-GELU gate)
  REQUIRE_GPU();
  const auto [N, F, mis] = GetParam();
  const int off = mis ? 1 : 0;
  // GeluTanhNoGate (GPT-2's non-gated MLP) reads and writes only the first N*F elements.
  for (MlpAct act : {MlpAct::Silu, MlpAct::GeluTanh, MlpAct::GeluTanhNoGate}) {
    const std::string what = act == MlpAct::Silu ? "swiglu" : act == MlpAct::GeluTanh ? "geglu" : "gelu (no gate)";
    auto gu = random_vec((size_t)N * 2 * F + off, 71, -6, 6), dout = random_vec((size_t)N * F + off, 72);
    std::vector<float> out(dout.size(), 0.f), dgu(gu.size(), 0.f);
    cpu::swiglu_forward(out.data() + off, gu.data() + off, N, F, nullptr, act);
    cpu::swiglu_backward(dgu.data() + off, dout.data() + off, gu.data() + off, N, F, nullptr, act);
    auto gud = dev(gu), doutd = dev(dout);
    DeviceArray<float> outd(gpu(), out.size()), dgud(gpu(), dgu.size());
    gpu().zero(outd.get(), out.size() * 4);
    gpu().zero(dgud.get(), dgu.size() * 4);
    gpu().swiglu_forward(outd.get() + off, gud.get() + off, N, F, act);
    gpu().swiglu_backward(dgud.get() + off, doutd.get() + off, gud.get() + off, N, F, act);
    expect_close(outd.download(), out, kTolElementwise, what + " out");
    expect_close(dgud.download(), dgu, kTolElementwise, what + " dgu");
  }
}
INSTANTIATE_TEST_SUITE_P(Swiglu, SwigluGpu,
                         ::testing::Values(SwigluParam{1, 1, false}, SwigluParam{3, 13, false},
                                           SwigluParam{8, 8192, false}, SwigluParam{64, 8192, false},
                                           SwigluParam{5, 8192, true}),
                         [](const auto& i) {
                           return "N" + std::to_string(i.param.N) + "_F" +
                                  std::to_string(i.param.F) + (i.param.misaligned ? "_misaligned" : "");
                         });

// ---- elementwise: add, copy_rows, casts -------------------------------------------------
TEST(ElementwiseGpu, Add) {
  REQUIRE_GPU();
  for (int64_t n : {1, 7, 4096, 1000003}) {
    for (int off : {0, 1}) {
      auto a = random_vec(n + off, 81), b = random_vec(n + off, 82);
      std::vector<float> ref(n + off, 0.f);
      cpu::add(ref.data() + off, a.data() + off, b.data() + off, n, nullptr);
      auto ad = dev(a), bd = dev(b);
      DeviceArray<float> od(gpu(), ref.size());
      gpu().zero(od.get(), ref.size() * 4);
      gpu().add(od.get() + off, ad.get() + off, bd.get() + off, n);
      expect_equal(od.download(), ref, "add n=" + std::to_string(n));
      gpu().add(ad.get() + off, ad.get() + off, bd.get() + off, n);  // out aliases a
      auto alias = ad.download();
      for (int64_t i = 0; i < off; ++i) alias[i] = ref[i];
      expect_equal(alias, ref, "add in place n=" + std::to_string(n));
    }
  }
}

TEST(ElementwiseGpu, Sub) {
  REQUIRE_GPU();
  for (int64_t n : {1, 7, 4096, 1000003}) {
    for (int off : {0, 1}) {
      auto a = random_vec(n + off, 83), b = random_vec(n + off, 84);
      std::vector<float> ref(n + off, 0.f);
      cpu::sub(ref.data() + off, a.data() + off, b.data() + off, n, nullptr);
      EXPECT_EQ(ref[off], a[off] - b[off]);
      auto ad = dev(a), bd = dev(b);
      DeviceArray<float> od(gpu(), ref.size());
      gpu().zero(od.get(), ref.size() * 4);
      gpu().sub(od.get() + off, ad.get() + off, bd.get() + off, n);
      expect_equal(od.download(), ref, "sub n=" + std::to_string(n));
      gpu().sub(bd.get() + off, ad.get() + off, bd.get() + off, n);  // out aliases b
      auto alias = bd.download();
      for (int64_t i = 0; i < off; ++i) alias[i] = ref[i];
      expect_equal(alias, ref, "sub in place n=" + std::to_string(n));
    }
  }
}

TEST(ElementwiseGpu, CopyRows) {
  REQUIRE_GPU();
  struct Case { int n, width; int64_t dst_stride, src_stride; bool dst_idx, src_idx; };
  for (const Case& c : {Case{5, 3072, 3072, 3072, false, false}, Case{7, 3072, 9216, 3072, true, false},
                        Case{9, 96, 3072, 3072, false, true}, Case{11, 13, 17, 19, true, true},
                        Case{64, 3072, 3072, 6144, true, true}}) {
    const int rows = c.n + 5;
    auto src = random_vec((size_t)rows * c.src_stride, 91);
    auto dst0 = random_vec((size_t)rows * c.dst_stride, 92);
    // distinct destination rows (a permutation), arbitrary source rows
    std::vector<int32_t> di(c.n), si = random_ints(c.n, 0, rows - 1, 93);
    for (int i = 0; i < c.n; ++i) di[i] = (i * 7 + 3) % rows;
    std::vector<float> ref = dst0;
    cpu::copy_rows(ref.data(), c.dst_stride, c.dst_idx ? di.data() : nullptr, src.data(),
                   c.src_stride, c.src_idx ? si.data() : nullptr, c.n, c.width, nullptr);
    auto srcd = dev(src), dstd = dev(dst0);
    auto did = dev(di), sid = dev(si);
    gpu().copy_rows(dstd.get(), c.dst_stride, c.dst_idx ? did.get() : nullptr, srcd.get(),
                    c.src_stride, c.src_idx ? sid.get() : nullptr, c.n, c.width);
    expect_equal(dstd.download(), ref, "copy_rows n=" + std::to_string(c.n) +
                                           " width=" + std::to_string(c.width));
  }
}

TEST(ElementwiseGpu, CastsRoundToNearestEven) {
  REQUIRE_GPU();
  for (int64_t n : {1, 3, 4099}) {
    for (int off : {0, 1}) {
      auto x = random_vec(n + off, 101, -100, 100);
      // special values: ties, NaN, infinities, a subnormal, the largest finite float
      const uint32_t specials[] = {0x3f808000u, 0x3f818000u, 0x7fc00001u, 0x7f800000u,
                                   0xff800000u, 0x00000001u, 0x7f7fffffu, 0x80000000u};
      for (size_t i = 0; i < sizeof specials / 4 && i + off < x.size(); ++i)
        std::memcpy(&x[i + off], &specials[i], 4);
      std::vector<uint16_t> ref(x.size(), 0);
      for (int64_t i = 0; i < n; ++i) ref[i + off] = float_to_bf16_bits(x[i + off]);
      auto xd = dev(x);
      DeviceArray<uint16_t> hd(gpu(), x.size());
      gpu().zero(hd.get(), x.size() * 2);
      gpu().synchronize();  // the casts below run on the legacy default stream
      cuda::cast_f32_to_bf16(hd.get() + off, xd.get() + off, n, nullptr);
      ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
      auto h = hd.download();
      for (size_t i = 0; i < h.size(); ++i)
        ASSERT_EQ(h[i], ref[i]) << "f32->bf16 n=" << n << " at " << i << " of " << x[i];
      DeviceArray<float> back(gpu(), x.size());
      gpu().zero(back.get(), x.size() * 4);
      gpu().synchronize();
      cuda::cast_bf16_to_f32(back.get() + off, hd.get() + off, n, nullptr);
      ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
      auto b = back.download();
      for (int64_t i = 0; i < n; ++i) {
        const float want = bf16_bits_to_float(ref[i + off]);
        ASSERT_TRUE(std::memcmp(&b[i + off], &want, 4) == 0) << "bf16->f32 at " << i + off;
      }
    }
  }
}

// ---- metric -----------------------------------------------------------------------------
TEST(MetricGpu, LogitDiffForwardBackward) {
  REQUIRE_GPU();
  const int B = 5, V = 32064;
  const int64_t stride = V + 3;
  auto logits = random_vec((size_t)B * stride, 111, -10, 10);
  auto ans = random_ints(B, 0, V - 1, 112), other = random_ints(B, 0, V - 1, 113);
  other[2] = ans[2];  // equal answers: the gradient terms cancel
  std::vector<float> ld(B), dl((size_t)B * stride, 7.0f);
  cpu::logit_diff_forward(ld.data(), logits.data(), stride, ans.data(), other.data(), B, nullptr);
  cpu::logit_diff_backward(dl.data(), stride, ans.data(), other.data(), 0.2f, B, V, nullptr);
  auto lgd = dev(logits);
  auto ad = dev(ans), od = dev(other);
  DeviceArray<float> ldd(gpu(), B);
  auto dld = dev(std::vector<float>(dl.size(), 7.0f));  // padding columns must stay untouched
  gpu().logit_diff_forward(ldd.get(), lgd.get(), stride, ad.get(), od.get(), B);
  gpu().logit_diff_backward(dld.get(), stride, ad.get(), od.get(), 0.2f, B, V);
  expect_equal(ldd.download(), ld, "logit_diff");
  expect_equal(dld.download(), dl, "dlogits");
}

// Every metric kind (MetricParams) against the CPU op: strided logit rows, reference rows for
// kl, a token of reference probability 0, ans == other, the Phi-3 vocabulary and more rows
// than one grid pass. Sums over V run in double on both sides in another order.
TEST(MetricGpu, AllKindsForwardBackward) {
  REQUIRE_GPU();
  for (const int V : {37, 32064}) {
    const int B = V == 37 ? 70 : 5, R = 3;
    const int64_t stride = V + 3;
    auto logits = random_vec((size_t)B * stride, 121, -10, 10);
    auto ans = random_ints(B, 0, V - 1, 122), other = random_ints(B, 0, V - 1, 123);
    auto rows = random_ints(B, 0, R - 1, 124);
    other[2] = ans[2];
    std::vector<float> ref((size_t)R * V);
    const auto src = random_vec((size_t)R * V, 125, -6, 6);
    for (int r = 0; r < R; ++r) {
      double mx = -1e30, s = 0;
      for (int v = 0; v < V; ++v) mx = std::max(mx, double(src[(size_t)r * V + v]));
      for (int v = 0; v < V; ++v) s += std::exp(double(src[(size_t)r * V + v]) - mx);
      for (int v = 0; v < V; ++v) ref[(size_t)r * V + v] = float(double(src[(size_t)r * V + v]) - mx - std::log(s));
    }
    ref[5] = -std::numeric_limits<float>::infinity();
    auto lgd = dev(logits), refd = dev(ref);
    auto ad = dev(ans), od = dev(other), rd = dev(rows);
    for (MetricKind k : {MetricKind::LogitDiff, MetricKind::ProbDiff, MetricKind::LogProb, MetricKind::KL}) {
      const std::string what = "metric kind " + std::to_string(int(k)) + " V=" + std::to_string(V);
      MetricParams hp;
      hp.kind = k;
      hp.ans = ans.data();
      hp.other = other.data();
      hp.ref_logprobs = ref.data();
      hp.ref_row = rows.data();
      hp.stride = stride;
      hp.B = B;
      hp.V = V;
      MetricParams dp = hp;
      dp.ans = ad.get();
      dp.other = od.get();
      dp.ref_logprobs = refd.get();
      dp.ref_row = rd.get();
      std::vector<float> out(B), dl((size_t)B * stride, 7.0f);
      cpu::metric_forward(out.data(), logits.data(), hp, nullptr);
      cpu::metric_backward(dl.data(), stride, logits.data(), hp, 0.2f, nullptr);
      DeviceArray<float> outd(gpu(), B);
      auto dld = dev(std::vector<float>(dl.size(), 7.0f));  // padding columns must stay untouched
      gpu().metric_forward(outd.get(), lgd.get(), dp);
      gpu().metric_backward(dld.get(), stride, lgd.get(), dp, 0.2f);
      if (k == MetricKind::LogitDiff) {
        expect_equal(outd.download(), out, what);
        expect_equal(dld.download(), dl, what + " dlogits");
      } else {
        expect_close(outd.download(), out, kTolReduce, what);
        expect_close(dld.download(), dl, kTolReduce, what + " dlogits");
      }
    }
  }
}

// ---- attribution ------------------------------------------------------------------------
struct AttrParam { int B, T, G, W; };
void PrintTo(const AttrParam& p, std::ostream* os) {
  *os << "ATTRIBUTION(B=" << p.B << ",T=" << p.T << ",G=" << p.G << ",W=" << p.W << ")";
}
class AttributionGpu : public ::testing::TestWithParam<AttrParam> {};
TEST_P(AttributionGpu, Reduce) {
  REQUIRE_GPU();
  const auto [B, T, G, W] = GetParam();
  const size_t n = (size_t)B * T * G * W;
  auto a = random_vec(n, 121), c = random_vec(n, 122), g = random_vec(n, 123);
  // Two layers in one launch, the second with clean and corrupted swapped.
  std::vector<float> ref((size_t)2 * T * G);
  const float* ha[2] = {a.data(), c.data()};
  const float* hc[2] = {c.data(), a.data()};
  const float* hg[2] = {g.data(), g.data()};
  cpu::attribution_reduce(ref.data(), ha, hc, hg, 2, B, T, G, W, (int64_t)G * W, nullptr);
  auto ad = dev(a), cd = dev(c), gd = dev(g);
  auto ptrs = to_device(gpu(), std::vector<const float*>{ad.get(), cd.get(), cd.get(), ad.get(), gd.get(), gd.get()});
  DeviceArray<float> od(gpu(), ref.size());
  gpu().attribution_reduce(od.get(), ptrs.get(), ptrs.get() + 2, ptrs.get() + 4, 2, B, T, G, W, (int64_t)G * W);
  expect_close(od.download(), ref, kTolReduce, "attribution");
}
INSTANTIATE_TEST_SUITE_P(Attribution, AttributionGpu,
                         ::testing::Values(AttrParam{1, 1, 1, 1}, AttrParam{2, 5, 3, 7},
                                           AttrParam{4, 31, 1, 3072}, AttrParam{3, 17, 32, 96}),
                         [](const auto& i) {
                           return "B" + std::to_string(i.param.B) + "_T" + std::to_string(i.param.T) +
                                  "_G" + std::to_string(i.param.G) + "_W" + std::to_string(i.param.W);
                         });

// ---- fused forms (issue 15): GEMM inputs in bf16, residual adds folded in, rotary+split,
// the no-op mask. Each against the unfused CUDA ops (bitwise, same device arithmetic) and
// the CPU twin.
std::vector<uint16_t> bits_of(const DeviceArray<uint16_t>& d) { return d.download(); }

class FusedNormGpu : public ::testing::TestWithParam<NormParam> {};
TEST_P(FusedNormGpu, Bf16OutputAndAddNorm) {
  REQUIRE_GPU();
  const auto [N, D, mis] = GetParam();
  const int off = mis ? 1 : 0;
  const size_t n = (size_t)N * D + off;
  auto a = random_vec(n, 131, -3, 3), b = random_vec(n, 132, -3, 3), w = random_vec(D + off, 133, 0.5, 1.5);
  auto ad = dev(a), bd = dev(b), wd = dev(w);
  DeviceArray<float> sum(gpu(), n), out(gpu(), n), rstd(gpu(), N), sum2(gpu(), n), out2(gpu(), n), rstd2(gpu(), N);
  DeviceArray<uint16_t> h(gpu(), n), h2(gpu(), n);
  for (auto* p : {&sum, &out, &sum2, &out2}) gpu().zero(p->get(), n * 4);
  gpu().zero(h.get(), n * 2);
  gpu().zero(h2.get(), n * 2);
  // Unfused on the device: add, then norm.
  gpu().add(sum.get() + off, ad.get() + off, bd.get() + off, (int64_t)N * D);
  gpu().rmsnorm_forward(out.get() + off, rstd.get(), sum.get() + off, wd.get() + off, N, D, 1e-5f);
  gpu().rmsnorm_forward(GemmOut(nullptr, h.get() + off), nullptr, sum.get() + off, wd.get() + off, N, D, 1e-5f);
  std::vector<float> o = out.download();
  std::vector<uint16_t> want(n, 0);
  for (size_t i = off; i < n; ++i) want[i] = float_to_bf16_bits(o[i]);
  EXPECT_EQ(bits_of(h), want) << "bf16 output is the rounding of the fp32 output";
  // Fused.
  gpu().add_rmsnorm_forward(sum2.get() + off, GemmOut(out2.get() + off, h2.get() + off), rstd2.get(), ad.get() + off,
                            bd.get() + off, wd.get() + off, N, D, 1e-5f);
  expect_equal(sum2.download(), sum.download(), "sum");
  expect_equal(out2.download(), o, "out");
  expect_equal(rstd2.download(), rstd.download(), "rstd");
  EXPECT_EQ(bits_of(h2), want);
  // And the CPU twin.
  std::vector<float> cs(n, 0.f), co(n, 0.f), cr(N);
  cpu::add_rmsnorm_forward(cs.data() + off, co.data() + off, cr.data(), a.data() + off, b.data() + off, w.data() + off,
                           N, D, 1e-5f, nullptr);
  expect_equal(sum2.download(), cs, "sum vs cpu");
  expect_close(out2.download(), co, kTolReduce, "out vs cpu");
}
INSTANTIATE_TEST_SUITE_P(FusedNorm, FusedNormGpu,
                         ::testing::Values(NormParam{1, 4, false}, NormParam{3, 7, false},
                                           NormParam{17, 3072, false}, NormParam{9, 3072, true},
                                           NormParam{3, 100, true}),
                         [](const auto& i) {
                           return "N" + std::to_string(i.param.N) + "_D" + std::to_string(i.param.D) +
                                  (i.param.misaligned ? "_misaligned" : "");
                         });

TEST(FusedGpu, SwigluBf16Output) {
  REQUIRE_GPU();
  for (int F : {8192, 37}) {
    const int N = 5;
    auto gu = random_vec((size_t)N * 2 * F, 141, -4, 4);
    auto gud = dev(gu);
    DeviceArray<float> out(gpu(), (size_t)N * F);
    DeviceArray<uint16_t> h(gpu(), (size_t)N * F);
    gpu().swiglu_forward(out.get(), gud.get(), N, F);
    gpu().swiglu_forward(GemmOut(nullptr, h.get()), gud.get(), N, F);
    EXPECT_EQ(bits_of(h), to_bf16(out.download())) << "F=" << F;
  }
}

TEST(FusedGpu, LinearReadsBf16InputAndAccumulates) {
  REQUIRE_GPU();
  const int N = 9, in = 3072, out = 96;
  auto W = from_bf16(to_bf16(random_vec((size_t)out * in, 151, -0.05f, 0.05f)));
  auto x = random_vec((size_t)N * in, 152), y0 = random_vec((size_t)N * out, 153);
  auto bf = make_cuda_backend(/*fp32=*/false);
  auto Wd = to_device(*bf, to_bf16(W));
  const Weight w{Wd.get(), DType::BF16, out, in};
  auto xd = to_device(*bf, x), y0d = to_device(*bf, y0);
  auto xh = to_device(*bf, to_bf16(x));
  DeviceArray<float> y_cast(*bf, y0.size()), y_pre(*bf, y0.size()), y_acc(*bf, y0.size()), y_add(*bf, y0.size());
  bf->linear_forward(y_cast.get(), xd.get(), w, N, false);                     // cast kernel inside
  bf->linear_forward(y_pre.get(), GemmIn(nullptr, xh.get()), w, N, false);     // input already bf16
  expect_equal(y_pre.download(), y_cast.download(), "bf16 input vs cast");
  bf->copy(y_acc.get(), y0d.get(), y0.size() * 4);
  bf->linear_forward(y_acc.get(), GemmIn(xd.get(), xh.get()), w, N, true);     // y0 + x W^T
  bf->add(y_add.get(), y0d.get(), y_cast.get(), (int64_t)y0.size());
  expect_close(y_acc.download(), y_add.download(), 1e-6, "accumulate vs add");
  // The reference: CPU fp32 GEMM of the bf16-rounded input, plus y0.
  std::vector<float> ref(y0);
  const Weight wc{W.data(), DType::F32, out, in};
  cpu::linear_forward(ref.data(), from_bf16(to_bf16(x)).data(), wc, N, true, nullptr);
  expect_close(y_acc.download(), ref, kTolGemmF32, "accumulate vs cpu");
}

TEST(FusedGpu, RotaryQkvWithTableEqualsSeparateOps) {
  REQUIRE_GPU();
  for (int rot : {96, 64}) {  // Phi-3-mini head dim 96; partial rotary
    const int N = 13, H = 8, KVH = 2, HD = 96, QW = H * HD, KVW = KVH * HD, W = QW + 2 * KVW;
    std::vector<float> inv(rot / 2);
    for (int i = 0; i < rot / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / rot);
    auto pos = random_ints(N, 0, 200, 161);
    Batch batch;
    batch.pos = pos;
    const int n_pos = rope_table_positions(batch);
    const auto table = rope_cos_sin_table(inv, 1.1f, n_pos);
    auto qkv = random_vec((size_t)N * W, 162);
    auto invd = dev(inv), tabd = dev(table), qkvd = dev(qkv);
    auto posd = dev(pos);
    RopeParams rp{invd.get(), rot, 1.1f, tabd.get(), n_pos};
    DeviceArray<float> q(gpu(), (size_t)N * QW), k(gpu(), (size_t)N * KVW), v(gpu(), (size_t)N * KVW);
    DeviceArray<float> q2(gpu(), q.size()), k2(gpu(), k.size()), v2(gpu(), v.size());
    gpu().rotary_forward(q.get(), QW, qkvd.get(), W, posd.get(), N, H, HD, rp);
    gpu().rotary_forward(k.get(), KVW, qkvd.get() + QW, W, posd.get(), N, KVH, HD, rp);
    gpu().copy_rows(v.get(), KVW, nullptr, qkvd.get() + QW + KVW, W, nullptr, N, KVW);
    gpu().rotary_qkv_forward(q2.get(), k2.get(), v2.get(), qkvd.get(), posd.get(), N, H, KVH, HD, rp);
    expect_equal(q2.download(), q.download(), "q");
    expect_equal(k2.download(), k.download(), "k");
    expect_equal(v2.download(), v.download(), "v");
    // CPU twin with the same table (device FMA contraction: not bitwise).
    std::vector<float> cq(q.size()), ck(k.size()), cv(v.size());
    RopeParams rc{inv.data(), rot, 1.1f, table.data(), n_pos};
    cpu::rotary_qkv_forward(cq.data(), ck.data(), cv.data(), qkv.data(), pos.data(), N, H, KVH, HD, rc, nullptr);
    expect_close(q2.download(), cq, kTolElementwise, "q vs cpu");
    expect_close(k2.download(), ck, kTolElementwise, "k vs cpu");
    expect_equal(v2.download(), cv, "v vs cpu");
  }
}

TEST(FusedGpu, AttentionWritesBf16Z) {
  REQUIRE_GPU();
  const int B = 2, T = 9, H = 4, KVH = 2, HD = 32, QW = H * HD, KVW = KVH * HD;
  auto q = random_vec((size_t)B * T * QW, 171), k = random_vec((size_t)B * T * KVW, 172);
  auto v = random_vec((size_t)B * T * KVW, 173);
  std::vector<int32_t> pad = {0, 3};
  std::vector<AttnSegment> segs = {{0, 0, 0, 0, 0}, {1, 0, T, 0, T}};
  auto qd = dev(q), kd = dev(k), vd = dev(v);
  auto padd = dev(pad);
  auto segd = to_device(gpu(), segs);
  DeviceArray<float> z(gpu(), q.size());
  DeviceArray<uint16_t> zh(gpu(), q.size());
  AttnParams p;
  p.q = qd.get();
  p.k = kd.get();
  p.v = vd.get();
  p.z = z.get();
  p.z16 = zh.get();
  p.pad = padd.get();
  p.segs = segd.get();
  p.n_segs = B;
  p.q_stride = p.z_stride = QW;
  p.kv_stride = p.cache_stride = KVW;
  p.T = T;
  p.H = H;
  p.KVH = KVH;
  p.HD = HD;
  p.scale = 1.0f / std::sqrt(float(HD));
  gpu().attention_forward(p);
  EXPECT_EQ(bits_of(zh), to_bf16(z.download()));
}

TEST(FusedGpu, RowsEqualMatchesCpu) {
  REQUIRE_GPU();
  const int B = 4, T = 31, G = 32, W = 96;
  auto a = random_vec((size_t)B * T * G * W, 181);
  auto c = a;
  for (size_t i = 0; i < c.size(); i += 977) c[i] = -c[i];  // scattered differences
  std::vector<uint8_t> ref((size_t)T * G);
  cpu::rows_equal(ref.data(), a.data(), c.data(), B, T, G, W, (int64_t)G * W, nullptr);
  auto ad = dev(a), cd = dev(c);
  DeviceArray<uint8_t> eq(gpu(), ref.size());
  gpu().rows_equal(eq.get(), ad.get(), cd.get(), B, T, G, W, (int64_t)G * W);
  EXPECT_EQ(eq.download(), ref);
  size_t equal = 0;
  for (uint8_t e : ref) equal += e;
  EXPECT_GT(equal, 0u);
  EXPECT_LT(equal, ref.size());
}

TEST(FusedGpu, QkFixMatchesCpu) {
  REQUIRE_GPU();
  // T = 45: two tiles of 32 keys in the key pass.
  for (int T : {11, 45})
  for (int window : {0, 5, -5}) {  // -5: window 5 with Gemma 2's soft-capped scores
    const float softcap = window < 0 ? 0.5f : 0.0f;
    window = window < 0 ? -window : window;
    const int B = 2, H = 4, KVH = 2, HD = 32, QW = H * HD, KVW = KVH * HD;
    auto q = random_vec((size_t)B * T * QW, 191, -1.5f, 1.5f), k = random_vec((size_t)B * T * KVW, 192, -1.5f, 1.5f);
    auto qs = random_vec(q.size(), 193, -1.5f, 1.5f), ks = random_vec(k.size(), 194, -1.5f, 1.5f);
    auto v = random_vec(k.size(), 195);
    std::vector<int32_t> pad = {0, 3};
    std::vector<AttnSegment> segs = {{0, 0, 0, 0, 0}, {1, 0, T, 0, T}};
    // The base run's real pattern (CPU attention), and a random d metric / d pattern on it.
    std::vector<float> z(q.size()), pat((size_t)B * H * T * T, 0.0f);
    AttnParams ap;
    ap.q = q.data();
    ap.k = k.data();
    ap.v = v.data();
    ap.z = z.data();
    ap.pattern = pat.data();
    ap.pad = pad.data();
    ap.segs = segs.data();
    ap.n_segs = B;
    ap.q_stride = ap.z_stride = QW;
    ap.kv_stride = ap.cache_stride = KVW;
    ap.T = T;
    ap.H = H;
    ap.KVH = KVH;
    ap.HD = HD;
    ap.window = window;
    ap.scale = 1.0f / std::sqrt(float(HD));
    ap.softcap = softcap;
    cpu::attention_forward(ap, nullptr);
    auto dpat = random_vec(pat.size(), 196);
    QkFixParams p;
    p.q_stride = QW;
    p.kv_stride = KVW;
    p.B = B;
    p.T = T;
    p.H = H;
    p.KVH = KVH;
    p.HD = HD;
    p.window = window;
    p.scale = ap.scale;
    p.softcap = softcap;
    std::vector<float> qe((size_t)B * T * H), ke((size_t)B * T * KVH), ka((size_t)B * KVH);
    QkFixParams pc = p;
    pc.q = q.data();
    pc.k = k.data();
    pc.q_src = qs.data();
    pc.k_src = ks.data();
    pc.pattern = pat.data();
    pc.dpattern = dpat.data();
    pc.pad = pad.data();
    pc.q_est = qe.data();
    pc.k_est = ke.data();
    pc.k_all_est = ka.data();
    cpu::attn_qk_fix(pc, nullptr);
    auto qd = dev(q), kd = dev(k), qsd = dev(qs), ksd = dev(ks), patd = dev(pat), dpd = dev(dpat);
    auto padd = dev(pad);
    DeviceArray<float> qed(gpu(), qe.size()), ked(gpu(), ke.size()), kad(gpu(), ka.size());
    QkFixParams pg = p;
    pg.q = qd.get();
    pg.k = kd.get();
    pg.q_src = qsd.get();
    pg.k_src = ksd.get();
    pg.pattern = patd.get();
    pg.dpattern = dpd.get();
    pg.pad = padd.get();
    pg.q_est = qed.get();
    pg.k_est = ked.get();
    pg.k_all_est = kad.get();
    gpu().attn_qk_fix(pg);
    expect_close(qed.download(), qe, 1e-4, "query estimates, T " + std::to_string(T) + ", window " + std::to_string(window));
    expect_close(ked.download(), ke, 1e-4, "key estimates, T " + std::to_string(T) + ", window " + std::to_string(window));
    expect_close(kad.download(), ka, 1e-4, "all-key estimates, T " + std::to_string(T) + ", window " + std::to_string(window));
    double mag = 0;
    for (float x : qe) mag = std::max(mag, double(std::fabs(x)));
    EXPECT_GT(mag, 1e-3) << "the case moves the pattern";
  }
}

TEST(FusedGpu, ApplyPatternMatchesCpu) {
  REQUIRE_GPU();
  // T = 45: three tiles of query rows, two of keys. The random pattern is not causal: entries
  // past the diagonal must not be read (both sides stop at j = t).
  for (int T : {13, 45})
  for (int h0 : {0, 2}) {
    const int B = 3, H = 6, KVH = 2, HD = 40, QW = H * HD, S = 3 * KVH * HD;  // v in a wider row
    auto pat = random_vec((size_t)B * H * T * T, 301, 0.0f, 1.0f);
    auto vrow = random_vec((size_t)B * T * S, 302);
    std::vector<int32_t> pad = {0, 4, 12};
    const int nh = h0 == 0 ? H : 3;
    ApplyPatternParams p;
    p.kv_stride = S;
    p.z_stride = QW + 5;  // a strided z
    p.B = B;
    p.T = T;
    p.H = H;
    p.KVH = KVH;
    p.HD = HD;
    p.h0 = h0;
    p.nh = nh;
    std::vector<float> zc((size_t)B * T * p.z_stride, 3.0f);
    ApplyPatternParams pc = p;
    pc.pattern = pat.data();
    pc.v = vrow.data() + KVH * HD;
    pc.pad = pad.data();
    pc.z = zc.data();
    cpu::attn_apply_pattern(pc, nullptr);
    auto patd = dev(pat), vd = dev(vrow), zd = dev(std::vector<float>(zc.size(), 3.0f));
    auto padd = dev(pad);
    ApplyPatternParams pg = p;
    pg.pattern = patd.get();
    pg.v = vd.get() + KVH * HD;
    pg.pad = padd.get();
    pg.z = zd.get();
    gpu().attn_apply_pattern(pg);
    expect_close(zd.download(), zc, 1e-5, "z from the pattern, T " + std::to_string(T) + ", heads from " + std::to_string(h0));
  }
}

// The sweeps' neuron gather (patching/copy_slices.h) on the device past 2^31 elements: 2^28 + 64
// rows of F = 8 neurons (8 GiB of device addresses; the emulator takes only the pages written).
// A flat int32 element index (row * F + neuron) wrapped there; row and column stay apart now.
TEST(CopySlicesGpu, NeuronGatherPastTwoToThe31Elements) {
  REQUIRE_GPU();
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "an 8 GiB allocation under AddressSanitizer (its shadow); the plain emulator build runs it";
#else
  Backend& be = gpu();
  const int F = 8;
  const int64_t R = (int64_t(1) << 28) + 64;
  if (be.free_memory() < size_t(R) * F * sizeof(float) + (size_t(1) << 30))
    GTEST_SKIP() << "needs 9 GiB of free device memory";
  DeviceArray<float> act(be, size_t(R) * F);
  struct Cell {
    int32_t row;
    int neuron;
    float value;
  };
  const std::vector<Cell> cells = {{int32_t(R - 1), 7, 11.0f},
                                   {int32_t((int64_t(1) << 28) + 3), 0, 22.0f},
                                   {int32_t((int64_t(1) << 28) - 1), 5, 33.0f},
                                   {int32_t(R - 2), 7, 44.0f}};
  ColumnRows by_neuron;
  for (size_t i = 0; i < cells.size(); ++i) {
    const Cell& c = cells[i];
    be.upload(act.get() + int64_t(c.row) * F + c.neuron, &c.value, sizeof(float));
    by_neuron[c.neuron].first.push_back(int32_t(i));
    by_neuron[c.neuron].second.push_back(c.row);
  }
  DeviceArray<float> out = to_device(be, std::vector<float>(cells.size() * F, 0.0f));
  copy_column_slices(be, out.get(), F, act.get(), F, 1, by_neuron);
  std::vector<float> got(cells.size() * F);
  be.download(got.data(), out.get(), got.size() * sizeof(float));
  for (size_t i = 0; i < cells.size(); ++i)
    for (int f = 0; f < F; ++f)
      EXPECT_EQ(got[i * F + f], f == cells[i].neuron ? cells[i].value : 0.0f) << "cell " << i << " neuron " << f;
#endif
}

#endif  // PHI3_WITH_CUDA

}  // namespace
}  // namespace phi3
