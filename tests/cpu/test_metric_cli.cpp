// `phi3patch run --metric` end to end through the command line: results.json states the
// metric and its normalisation and keeps the raw per-prompt values under the metric's key;
// the default is the logit difference, bit for bit what `--metric logit-diff` gives; a
// checkpoint of one metric is not resumed by a run of another.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "test_util.h"

namespace phi3 {
namespace {

using json = nlohmann::json;
using test::slurp;

const std::string kCommon = "run --device cpu --hooks resid_post,z --method all";

json run_ok(const std::string& dir, const std::string& args) {
  EXPECT_EQ(test::run_cli(PHI3_CLI, kCommon + " " + args + " --out '" + dir + "/out' --force", dir), 0)
      << slurp(dir + "/stderr.txt");
  return json::parse(slurp(dir + "/out/results.json"));
}

TEST(MetricCli, ResultsStateTheMetric) {
  const std::string dir = test::temp_dir("metric-cli");
  const json def = run_ok(dir, "");
  const json ld = run_ok(dir, "--metric logit-diff");
  ASSERT_EQ(def["results"].size(), ld["results"].size());
  for (size_t i = 0; i < def["results"].size(); ++i) {  // the default, bit for bit
    EXPECT_TRUE(def["results"][i]["values"] == ld["results"][i]["values"]) << i;
    if (def["results"][i].contains("per_prompt_logit_diff"))
      EXPECT_TRUE(def["results"][i]["per_prompt_logit_diff"] == ld["results"][i]["per_prompt_logit_diff"]) << i;
  }
  EXPECT_EQ(def["metric"]["name"], "logit-diff");
  EXPECT_EQ(def["metric"]["position"], "last");
  EXPECT_EQ(def["metric"]["normalisation"], "(M - M_corrupted) / (M_clean - M_corrupted)");
  EXPECT_FALSE(def.contains("clean_metric"));  // the logit difference is clean_logit_diff
  for (const auto& e : def["results"])
    if (e["method"] == "activation") EXPECT_TRUE(e.contains("per_prompt_logit_diff"));

  for (const char* metric : {"prob-diff", "logprob", "kl"}) {
    const json r = run_ok(dir, std::string("--metric ") + metric);
    EXPECT_EQ(r["metric"]["name"], metric);
    EXPECT_EQ(r["clean_logit_diff"], def["clean_logit_diff"]);  // still reported
    ASSERT_TRUE(r.contains("clean_metric") && r.contains("corrupted_metric")) << metric;
    const double mc = r["clean_metric"], mr = r["corrupted_metric"];
    EXPECT_NE(mc, mr) << metric;
    const std::string key = r["metric"]["per_prompt_key"];
    EXPECT_EQ(key, std::string("per_prompt_") + (std::string(metric) == "prob-diff" ? "prob_diff" : metric));
    for (const auto& e : r["results"]) {
      if (e["method"] != "activation") continue;
      ASSERT_TRUE(e.contains(key)) << metric;
      EXPECT_FALSE(e.contains("per_prompt_logit_diff")) << metric;
      // resid_post of the last layer at the last position is the clean run's final state:
      // normalised 1, raw the clean run's value per prompt.
      if (e["hook"] == "resid_post") {
        const auto& last_row = e["values"].back();
        EXPECT_NEAR(last_row.back().get<double>(), 1.0, 1e-4) << metric;
        const auto& raw = e[key].back().back();
        for (size_t p = 0; p < raw.size(); ++p)
          EXPECT_NEAR(raw[p].get<double>(), r["prompts"][p]["clean_metric"].get<double>(),
                      1e-5 * std::max(1.0, std::fabs(mc)))
              << metric << " prompt " << p;
      }
    }
    if (std::string(metric) == "kl") {
      EXPECT_EQ(mc, 0.0);
      EXPECT_GT(mr, 0.0);
    }
    if (std::string(metric) == "logprob") EXPECT_LT(mr, 0.0);
  }
}

TEST(MetricCli, CheckpointOfAnotherMetricIsNotResumed) {
  const std::string dir = test::temp_dir("metric-cli-resume");
  const std::string args = "run --device cpu --hooks resid_pre --method attribution --batch 8 --out '" + dir + "/out'";
  ASSERT_EQ(test::run_cli(PHI3_CLI, args + " --metric kl", dir), 0) << slurp(dir + "/stderr.txt");
  // As if interrupted after its checkpoints: no results.json, the finished batches kept.
  ASSERT_TRUE(std::filesystem::remove(dir + "/out/results.json"));
  ASSERT_TRUE(std::filesystem::exists(dir + "/out/checkpoints/batch-000000.json"));
  EXPECT_EQ(test::run_cli(PHI3_CLI, args + " --resume", dir), 2);
  const std::string err = slurp(dir + "/stderr.txt");
  EXPECT_NE(err.find("belongs to another run: its metric is kl, this run's is logit-diff"), std::string::npos) << err;
  ASSERT_EQ(test::run_cli(PHI3_CLI, args + " --metric kl --resume", dir), 0) << slurp(dir + "/stderr.txt");
  const json r = json::parse(slurp(dir + "/out/results.json"));
  EXPECT_EQ(r["metric"]["name"], "kl");
  EXPECT_GE(r["work"]["resumed_batches"].get<int>(), 1);
}

}  // namespace
}  // namespace phi3
