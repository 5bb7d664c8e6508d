// flag_nonfinite and FiniteCheck (issue 31): the NaN/Inf checks reduce on the device to one
// flag per tensor. The op's flag names the first bad element and its value; FiniteCheck reads
// all its flags with one download and throws the first in check order; the roofline prices
// the scan (the tensor read once, no host bytes) and a trace without an inner backend passes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/finite_flag.h"
#include "kernels/ops.h"
#include "model/finite_check.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "runtime/trace_backend.h"
#include "test_util.h"

namespace phi3 {
namespace {

uint64_t cpu_flag(const std::vector<float>& x, uint64_t start = 0) {
  uint64_t f = start;
  NonfiniteBatch b;
  b.count = 1;
  b.x[0] = x.data();
  b.n[0] = int64_t(x.size());
  b.flag[0] = &f;
  cpu::flag_nonfinite(b, nullptr);
  return f;
}

TEST(FlagNonfinite, FirstBadIndexAndValue) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> base = test::random_vec(1001, 7, -1e38f, 1e38f);
  EXPECT_EQ(cpu_flag(base), 0u) << "finite values (up to 1e38) raise nothing";
  EXPECT_EQ(cpu_flag({}), 0u);
  EXPECT_EQ(cpu_flag({std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min()}), 0u);
  struct Case {
    size_t at;
    float v;
    const char* text;  // std::to_string of the value
  };
  for (const Case& c : {Case{0, NAN, "nan"}, Case{500, inf, "inf"}, Case{1000, -inf, "-inf"}, Case{3, -NAN, "-nan"}}) {
    std::vector<float> x = base;
    x[c.at] = c.v;
    if (c.at + 7 < x.size()) x[c.at + 7] = NAN;  // a later bad value is not the one named
    const uint64_t f = cpu_flag(x);
    ASSERT_NE(f, 0u) << c.at;
    EXPECT_EQ(f, nonfinite_flag(int64_t(c.at), c.v));
    EXPECT_EQ(nonfinite_index(f), int64_t(c.at));
    EXPECT_EQ(std::to_string(nonfinite_value(f)), c.text);
    if (f != ~uint64_t(0)) {
      EXPECT_EQ(cpu_flag(x, f + 1), f + 1) << "a larger flag already there is kept: max";
    }
    EXPECT_EQ(cpu_flag(x, nonfinite_flag(int64_t(c.at) + 1, NAN)), f) << "a later element's flag is lowered to this";
  }
  // Several tensors in one call: each its own flag.
  std::vector<float> x = base, y = base, z = base;
  y[10] = NAN;
  z[999] = -inf;
  uint64_t f[3] = {0, 0, 0};
  NonfiniteBatch b;
  b.count = 3;
  for (int k = 0; k < 3; ++k) {
    b.x[k] = (k == 0 ? x : k == 1 ? y : z).data();
    b.n[k] = 1000;  // z's -inf at 999 is inside, base's 1001st value not read
    b.flag[k] = &f[k];
  }
  cpu::flag_nonfinite(b, nullptr);
  EXPECT_EQ(f[0], 0u);
  EXPECT_EQ(f[1], nonfinite_flag(10, NAN));
  EXPECT_EQ(f[2], nonfinite_flag(999, -inf));
  // Indices beyond 2^32 (an [N, V] logits tensor of 8.6e9 floats) round-trip.
  const int64_t big = (int64_t(1) << 33) + 5;
  EXPECT_EQ(nonfinite_index(nonfinite_flag(big, -inf)), big);
  EXPECT_GT(nonfinite_flag(big, NAN), nonfinite_flag(big + 1, -NAN));
}

TEST(FiniteCheck, OneDownloadFirstTensorInCheckOrder) {
  auto cpu = make_cpu_backend();
  Trace trace;
  TraceBackend be(cpu.get(), trace);
  const int W = 6;
  std::vector<float> a(4 * W, 1.0f), b(4 * W, 2.0f), c(4 * W, 3.0f);
  b[2 * W + 1] = -std::numeric_limits<float>::infinity();  // row 2
  c[0] = NAN;
  DeviceArray<float> da = to_device(be, a), db = to_device(be, b), dc = to_device(be, c);
  auto msg = [](const char* name) {
    return [name](const std::string& v, int64_t row) { return std::string(name) + " " + v + " row " + std::to_string(row); };
  };
  {
    FiniteCheck fc(be, 3);
    fc.check(da.get(), int64_t(a.size()), W, msg("a"));
    fc.check(nullptr, 0, W, msg("empty"));  // nothing to check: no slot
    EXPECT_EQ(fc.size(), 1u);
    EXPECT_NO_THROW(fc.throw_first());
    fc.check(db.get(), int64_t(b.size()), W, msg("b"));
    fc.check(dc.get(), int64_t(c.size()), W, msg("c"));
    EXPECT_THROW(fc.check(da.get(), 1, W, msg("over")), Error) << "more checks than its capacity";
    const auto before = trace.ops["download (device to host)"];
    EXPECT_EQ(test::error_of([&] { fc.throw_first(); }), "b -inf row 2");
    const auto after = trace.ops["download (device to host)"];
    EXPECT_EQ(after.calls - before.calls, 1);
    EXPECT_EQ(after.host_bytes - before.host_bytes, 3 * 8.0) << "the flags only";
  }
  // Two launches (a alone at the first throw_first, then b and c together), priced as one
  // read of each tensor and a write of its flag, with no host bytes.
  const OpTally& t = trace.ops["flag_nonfinite (NaN/Inf check)"];
  EXPECT_EQ(t.calls, 2);
  EXPECT_EQ(t.cost.launches, 2.0);
  EXPECT_DOUBLE_EQ(t.cost.bytes, 3 * 4 * W * 4.0 + 3 * 8.0);
  EXPECT_EQ(t.host_bytes, 0.0);
}

// bench --predict: nothing is computed, so nothing is flagged; the scans are priced, up to
// NonfiniteBatch::kMax tensors a launch.
TEST(FiniteCheck, TraceWithoutInnerPasses) {
  Trace trace;
  TraceBackend be(nullptr, trace);
  DeviceArray<float> x(be, 1 << 20), y(be, 1000);
  const int checks = 2 * NonfiniteBatch::kMax + 2;
  FiniteCheck fc(be, checks);
  for (int k = 0; k < checks; ++k)
    fc.check(k % 2 ? y.get() : x.get(), k % 2 ? 1000 : 1 << 20, 10, [](const std::string&, int64_t) { return "x"; });
  EXPECT_NO_THROW(fc.throw_first());
  const OpTally& t = trace.ops["flag_nonfinite (NaN/Inf check)"];
  EXPECT_EQ(t.calls, 3);
  EXPECT_DOUBLE_EQ(t.cost.bytes, (checks / 2) * ((1 << 20) + 1000) * 4.0 + checks * 8.0);
  EXPECT_EQ(trace.ops["download (device to host)"].host_bytes, checks * 8.0);
}

}  // namespace
}  // namespace phi3
