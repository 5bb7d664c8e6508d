// A 512-token batch: the exact sweep completes chunk by chunk inside a small memory budget
// and its values equal full patched forward passes at sampled targets.
#include <gtest/gtest.h>

#include <cmath>

#include "patching/sweep.h"
#include "long_sweep_case.h"
#include "test_util.h"

namespace phi3 {
namespace {

TEST(SweepLong, FiveHundredTokensWithinMemoryBudget) {
  auto be = make_cpu_backend();
  test::LongSweepCase lc = test::make_long_sweep_case(*be);
  const Model& m = lc.model;
  const PairBatch& pb = lc.batch;
  ASSERT_GE(pb.clean.T, 500);
  ForwardState c = forward(*be, m, pb.clean), r = forward(*be, m, pb.corrupted);

  SweepOptions o;
  o.mem_budget = 8u << 20;  // 8 MiB of work buffers per chunk
  SweepResult s = activation_sweep(*be, m, r, c, pb.answer, pb.other, Hook::ResidPre, o);
  EXPECT_GT(s.work.chunks, 10) << "a 512-token sweep cannot fit 8 MiB at once";
  EXPECT_LE(double(s.work.token_layer_evals), 0.4 * s.work.naive_token_layer_evals);
  for (float v : s.ld) ASSERT_TRUE(std::isfinite(v));

  // Sampled targets against one full patched forward each (the naive definition).
  const int T = pb.clean.T, B = pb.clean.B;
  for (auto [l, p] : {std::pair{0, T - 60}, {1, T - 1}, {2, T - 30}, {0, T - 5}}) {
    PatchSpec spec{Hook::ResidPre, l, p, -1};
    ForwardOptions fo;
    fo.keep_pattern = false;
    fo.patch = &spec;
    fo.source = &c;
    ForwardState f = forward(*be, m, pb.corrupted, fo);
    LogitDiff ld = logit_diff(*be, m, f, pb.answer, pb.other);
    for (int b = 0; b < B; ++b)
      EXPECT_NEAR(s.ld[(size_t(l) * T + p) * B + b], ld.per_row[b], 1e-5) << "layer " << l << " pos " << p;
  }
}

}  // namespace
}  // namespace phi3
