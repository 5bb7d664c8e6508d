// How distributed work is divided and carried: split_by_cost (contiguous, cost-balanced
// pieces) and the batch results ranks send and checkpoints hold (exact round trip, merging
// of slices, refusal of overlapping or missing slices).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "patching/batch_result.h"
#include "patching/work_split.h"
#include "test_util.h"

namespace phi3 {
namespace {

std::vector<int64_t> loads(const std::vector<int64_t>& c, const std::vector<Range>& r) {
  std::vector<int64_t> out;
  for (const auto& x : r) out.push_back(std::accumulate(c.begin() + x.begin, c.begin() + x.end, int64_t{0}));
  return out;
}

TEST(SplitByCost, ContiguousCoversEverythingOnce) {
  std::vector<int64_t> c = {5, 0, 3, 9, 1, 1, 0, 7, 2, 4};
  for (int n = 1; n <= 13; ++n) {
    auto r = split_by_cost(c, n);
    ASSERT_EQ(r.size(), size_t(n));
    EXPECT_EQ(r.front().begin, 0);
    EXPECT_EQ(r.back().end, int64_t(c.size()));
    for (int i = 1; i < n; ++i) EXPECT_EQ(r[i].begin, r[i - 1].end);
  }
}

// The seed's shape: costs falling with layer and position (an early patch recomputes more).
// Every cut is off by at most half a unit, so each piece is within max_unit of the mean.
TEST(SplitByCost, BalancesDecreasingCosts) {
  const int L = 32, T = 31, B = 4;
  std::vector<int64_t> c;
  for (int l = 0; l < L; ++l)
    for (int p = 0; p < T; ++p) c.push_back(int64_t(B) * (T - p) * (L - l));
  const int64_t total = std::accumulate(c.begin(), c.end(), int64_t{0});
  const int64_t biggest = *std::max_element(c.begin(), c.end());
  for (int n : {2, 3, 4, 8, 64}) {
    auto l = loads(c, split_by_cost(c, n));
    for (int64_t x : l) EXPECT_LE(std::llabs(x * n - total), biggest * n) << n << " ranks";
    std::vector<double> d(l.begin(), l.end());
    // Here half the largest unit is 1.5% of an 8-rank share.
    if (n <= 8) {
      EXPECT_LT(imbalance(d), 0.02) << n << " ranks";
    }
    // A split by count would be far worse: the first half of the targets holds 3/4 of the work.
  }
  auto by_count = loads(c, {{0, int64_t(c.size()) / 2}, {int64_t(c.size()) / 2, int64_t(c.size())}});
  EXPECT_GT(imbalance({double(by_count[0]), double(by_count[1])}), 0.4);
}

TEST(SplitByCost, DegenerateInputs) {
  EXPECT_EQ(split_by_cost({}, 3)[2].size(), 0);
  auto z = split_by_cost({0, 0, 0, 0}, 2);  // zero cost: dealt by count
  EXPECT_EQ(z[0].size(), 2);
  EXPECT_EQ(z[1].size(), 2);
  auto few = split_by_cost({4, 4}, 4);  // fewer units than ranks: some ranks idle
  int64_t n = 0;
  for (const auto& r : few) n += r.size();
  EXPECT_EQ(n, 2);
  EXPECT_THROW(split_by_cost({1}, 0), Error);
  EXPECT_DOUBLE_EQ(imbalance({1, 1, 1}), 0.0);
  EXPECT_DOUBLE_EQ(imbalance({2, 1, 0}), 1.0);
}

BatchResult sample(int batch, int64_t first, int64_t last, bool summary) {
  const int B = 2;
  BatchResult r;
  r.batch = batch;
  r.has_summary = summary;
  if (summary) {
    r.summary.clean_prompts = {"a", "b"};
    r.summary.corrupted_prompts = {"b", "a"};
    r.summary.clean_padded = {"<s>a", "<s>b"};
    r.summary.corrupted_padded = {"<s>b", "<s>a"};
    r.summary.clean_tokens = {{1, 5}, {1, 6}};
    r.summary.corrupted_tokens = {{1, 6}, {1, 5}};
    r.summary.answer = {7, 8};
    r.summary.other = {8, 7};
    r.summary.answer_piece = {"▁short", "▁long"};
    r.summary.other_piece = {"▁long", "▁short"};
    r.summary.clean_top = {{{7, "▁short", 1.25f}}, {{8, "▁long", -0.1f}}};
    r.summary.corrupted_top = r.summary.clean_top;
    r.summary.clean_ld_rows = {1.0f / 3.0f, 2.5f};
    r.summary.corrupted_ld_rows = {-1e-7f, 0.1f};
    r.summary.clean_ld = 1.4166666666666667;
    r.summary.corrupted_ld = 0.049999949999999;
  }
  ResultPart attr;
  attr.acc = 0;
  attr.values = {0.1f, -2.0f / 7.0f, 3e-30f};
  if (first == 0) r.parts.push_back(attr);
  ResultPart act;
  act.acc = 1;
  act.first = first;
  act.last = last;
  act.values.assign(size_t(5) * B, NAN);
  for (int64_t i = first; i < last; ++i)
    for (int b = 0; b < B; ++b) act.values[i * B + b] = float(i) / 3.0f + b;
  act.work.patched_runs = last - first;
  act.work.token_layer_evals = 10 * (last - first);
  act.seconds = 0.5;
  r.parts.push_back(act);
  return r;
}

TEST(BatchResult, JsonRoundTripIsExact) {
  BatchResult r = sample(3, 0, 5, true);
  BatchResult back = batch_result_from_json(nlohmann::json::parse(to_json(r).dump()));
  EXPECT_EQ(back.batch, 3);
  ASSERT_TRUE(back.has_summary);
  EXPECT_EQ(back.summary.clean_ld_rows, r.summary.clean_ld_rows);
  EXPECT_EQ(back.summary.clean_ld, r.summary.clean_ld);
  EXPECT_EQ(back.summary.corrupted_ld, r.summary.corrupted_ld);
  EXPECT_EQ(back.summary.clean_top[0][0].logit, 1.25f);
  ASSERT_EQ(back.parts.size(), 2u);
  EXPECT_EQ(back.parts[0].values, r.parts[0].values);  // bit for bit
  EXPECT_EQ(back.parts[1].values, r.parts[1].values);
  EXPECT_EQ(back.parts[1].work.token_layer_evals, 50);
  // The logit difference's values double as the metric's (none written, none needed).
  EXPECT_EQ(back.summary.clean_m_rows, r.summary.clean_ld_rows);
  EXPECT_EQ(back.summary.corrupted_m, r.summary.corrupted_ld);
  // Another --metric's values travel beside the logit differences, bit for bit.
  BatchResult k = sample(3, 0, 5, true);
  k.summary.clean_m_rows = {0.0f, 0.0f};
  k.summary.corrupted_m_rows = {1.0f / 7.0f, 2.25f};
  k.summary.clean_m = 0;
  k.summary.corrupted_m = 1.1964285714285714;
  BatchResult kb = batch_result_from_json(nlohmann::json::parse(to_json(k).dump()));
  EXPECT_EQ(kb.summary.clean_m_rows, k.summary.clean_m_rows);
  EXPECT_EQ(kb.summary.corrupted_m_rows, k.summary.corrupted_m_rows);
  EXPECT_EQ(kb.summary.corrupted_m, k.summary.corrupted_m);
  EXPECT_EQ(kb.summary.clean_ld_rows, k.summary.clean_ld_rows);
  EXPECT_THROW(batch_result_from_json(nlohmann::json::parse(R"({"batch": 1})")), Error);
  EXPECT_THROW(batch_result_from_json(nlohmann::json::parse(R"({"batch": 1, "parts": [{"acc": 0}]})")), Error);
}

TEST(BatchResult, MergesSlicesAndRefusesGapsAndOverlaps) {
  const std::vector<int64_t> n_targets = {0, 5};
  BatchResult m = merge_parts({sample(2, 2, 5, false), sample(2, 0, 2, true)}, 2, n_targets, 2);
  EXPECT_EQ(m.batch, 2);
  EXPECT_TRUE(m.has_summary);
  ASSERT_EQ(m.parts.size(), 2u);
  EXPECT_EQ(m.parts[0].values, sample(2, 0, 5, true).parts[0].values);
  EXPECT_EQ(m.parts[1].values, sample(2, 0, 5, true).parts[1].values);
  EXPECT_EQ(m.parts[1].work.patched_runs, 5);
  EXPECT_EQ(m.parts[1].work.token_layer_evals, 50);
  EXPECT_DOUBLE_EQ(m.parts[1].seconds, 1.0);
  EXPECT_THROW(merge_parts({sample(2, 0, 3, true), sample(2, 2, 5, false)}, 2, n_targets, 2), Error);  // overlap
  EXPECT_THROW(merge_parts({sample(2, 0, 2, true), sample(2, 3, 5, false)}, 2, n_targets, 2), Error);  // gap
  EXPECT_THROW(merge_parts({sample(2, 0, 2, true), sample(4, 2, 5, false)}, 2, n_targets, 2), Error);  // batches
}

}  // namespace
}  // namespace phi3
