// Exact sweeps of a region (`run --positions`, issue 25 item 3): the position-list syntax, and
// a run restricted to positions gives, at those positions, bitwise the values of a full sweep,
// NaN elsewhere, estimates everywhere, and comparisons over the swept nodes only.
#include <gtest/gtest.h>

#include <cmath>

#include "patching/experiment.h"
#include "patching/positions.h"
#include "runtime/error.h"
#include "test_util.h"

namespace phi3 {
namespace {

TEST(Positions, Syntax) {
  EXPECT_EQ(parse_positions("7", 10), (std::vector<int>{7}));
  EXPECT_EQ(parse_positions("3:6", 10), (std::vector<int>{3, 4, 5}));
  EXPECT_EQ(parse_positions("8:", 10), (std::vector<int>{8, 9}));
  EXPECT_EQ(parse_positions(":2,9", 10), (std::vector<int>{0, 1, 9}));
  EXPECT_EQ(parse_positions("-1", 10), (std::vector<int>{9}));
  EXPECT_EQ(parse_positions("-3:", 10), (std::vector<int>{7, 8, 9}));
  EXPECT_EQ(parse_positions("5,2:4,3,5", 10), (std::vector<int>{2, 3, 5})) << "sorted, no repeats";
  EXPECT_EQ(parse_positions("0:10", 10).size(), 10u);
  for (const char* bad : {"10", "-11", "4:2", "3:3", "a", "1:2:3", "", ",", "2x", "0:11"}) {
    try {
      parse_positions(bad, 10);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--positions"), std::string::npos) << e.what();
    }
  }
  try {
    parse_positions("12", 10);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("T = 10"), std::string::npos) << "names the prompt length: " << e.what();
  }
}

const MatrixResult& find(const ExperimentResult& R, Hook h, const std::string& method) {
  for (const auto& r : R.results)
    if (r.hook == h && r.method == method) return r;
  throw Error("no " + hook_name(h) + " " + method + " result");
}

TEST(Positions, RegionSweepEqualsFullSweepThere) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/models/tiny-temporal-phi3");
  ExperimentOptions opt;
  opt.pairs_file = test::source_dir() + "/data/temporal_scope_for_attribution_patching.json";
  opt.hooks = {Hook::ResidPre, Hook::Z, Hook::ZAllPos};
  const ExperimentResult full = run_experiment(*be, *m, opt);
  opt.positions = "4:7,-1";
  const ExperimentResult part = run_experiment(*be, *m, opt);
  const int T = full.T;
  EXPECT_EQ(part.exact_positions, (std::vector<int>{4, 5, 6, T - 1}));
  for (Hook h : opt.hooks) {
    SCOPED_TRACE(hook_name(h));
    const MatrixResult &f = find(full, h, "activation"), &p = find(part, h, "activation");
    ASSERT_EQ(f.values.size(), p.values.size());
    const size_t nc = f.cols.size();
    int swept = 0;
    for (size_t i = 0; i < f.values.size(); ++i) {
      const int pos = h == Hook::ZAllPos ? -1 : static_cast<int>(i % nc);  // columns are positions, or heads
      const bool in = pos < 0 || pos == 4 || pos == 5 || pos == 6 || pos == T - 1;
      if (in) {
        ++swept;
        EXPECT_EQ(p.values[i], f.values[i]) << "cell " << i;
      } else {
        EXPECT_TRUE(std::isnan(p.values[i])) << "cell " << i << " outside the region: " << p.values[i];
      }
    }
    EXPECT_GT(swept, 0);
    EXPECT_EQ(find(part, h, "attribution").values, find(full, h, "attribution").values) << "estimates cover everything";
  }
  // The comparison is over the swept nodes: finite, and for an all-position hook the full one.
  ASSERT_EQ(part.comparisons.size(), 3u);
  for (const auto& c : part.comparisons) EXPECT_TRUE(std::isfinite(c.pearson)) << hook_name(c.hook);
  EXPECT_EQ(part.comparisons[2].pearson, full.comparisons[2].pearson);
  // Needs the exact method.
  opt.activation = false;
  EXPECT_THROW(run_experiment(*be, *m, opt), Error);
}

}  // namespace
}  // namespace phi3
