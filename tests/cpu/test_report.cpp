// Outputs of the main job: results.json structure, CSVs, SVG heatmaps, the HTML report,
// statistics (spread, Pearson, Spearman) and the sentence about where effects lie.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "patching/out_dir.h"
#include "patching/report.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "test_util.h"

namespace phi3 {
namespace {

TEST(Stats, SpreadPearsonSpearman) {
  Spread s = spread({1.0f, 2.0f, 3.0f, 4.0f});
  EXPECT_NEAR(s.std, std::sqrt(5.0 / 3.0), 1e-6);
  EXPECT_NEAR(s.ci95, 1.96 * std::sqrt(5.0 / 3.0) / 2.0, 1e-6);
  EXPECT_EQ(spread({1.0f}).std, 0.0);
  EXPECT_NEAR(pearson({1, 2, 3, 4}, {2, 4, 6, 8}), 1.0, 1e-12);
  EXPECT_NEAR(pearson({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0, 1e-12);
  // Monotone but not linear: Spearman 1, Pearson below 1.
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {1, 8, 27, 64}), 1.0, 1e-12);
  EXPECT_LT(pearson({1, 2, 3, 4}, {1, 8, 27, 1000}), 0.9);
  // Ties share their mean rank.
  EXPECT_NEAR(spearman({1, 1, 2}, {5, 5, 9}), 1.0, 1e-12);
  EXPECT_TRUE(std::isnan(pearson({1, 1, 1}, {1, 2, 3})));
}

TEST(Report, WritesEveryOutput) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/models/tiny-temporal-phi3");
  ExperimentOptions opt;
  opt.pairs_file = test::source_dir() + "/data/temporal_scope_for_attribution_patching.json";
  opt.hooks = {Hook::ResidPre, Hook::ZAllPos};
  ExperimentResult R = run_experiment(*be, *m, opt);
  const std::string dir = test::temp_dir("report");
  prepare_out_dir({dir, "results.json", {"checkpoints"}, false, false});
  auto files = write_report(R, dir);
  // 2 hooks x 2 methods x (csv + svg) + 2 scatters + html + json
  EXPECT_EQ(files.size(), 12u);
  EXPECT_EQ(files.back(), path_join(dir, "results.json")) << "results.json is written last";

  auto j = nlohmann::json::parse(read_text_file(path_join(dir, "results.json"), "results"));
  for (const char* k : {"model", "prompts", "tokens", "clean_logit_diff", "corrupted_logit_diff", "results", "work",
                        "attribution_vs_activation", "summary"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["prompts"].size(), 4u);
  EXPECT_EQ(j["bos"], true);
  EXPECT_EQ(j["tokens"][2]["clean"][0], 1) << "row 2 is unpadded: it starts with BOS";
  EXPECT_NEAR(j["clean_logit_diff"].get<double>(), R.clean_ld, 1e-9);
  ASSERT_EQ(j["results"].size(), 4u);
  const int L = m->cfg.num_hidden_layers, H = m->cfg.num_attention_heads;
  for (const auto& e : j["results"]) {
    const bool heads = e["hook"] == "z_all_pos";
    EXPECT_EQ(e["rows"].size(), size_t(L));
    EXPECT_EQ(e["cols"].size(), heads ? size_t(H) : size_t(R.T));
    EXPECT_EQ(e["values"].size(), size_t(L));
    EXPECT_EQ(e["top10"].size(), heads ? std::min<size_t>(10, L * H) : 10u);
    if (e["method"] == "activation") {
      EXPECT_EQ(e["per_prompt_metric"][0][0].size(), 4u);
      EXPECT_TRUE(e.contains("ci95_halfwidth"));
      EXPECT_EQ(e["work"]["mode"], "fast");
      EXPECT_LE(e["work"]["token_layer_evals"].get<int64_t>(), e["work"]["naive_token_layer_evals"].get<int64_t>());
    }
  }
  // resid_pre activation at the last layer, last position, is close to 1 for this model.
  const auto& act = j["results"][1];
  ASSERT_EQ(act["method"], "activation");
  EXPECT_GT(act["values"][L - 1][R.T - 1].get<double>(), 0.9);

  // CSV: header + one line per layer; SVG: titled like the seed's figures.
  std::string csv = read_text_file(path_join(dir, "resid_pre_activation.csv"), "csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), L + 1);
  std::string svg = read_text_file(path_join(dir, "resid_pre_attribution.svg"), "svg");
  EXPECT_NE(svg.find("Residual Attribution Patching"), std::string::npos);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  std::string html = read_text_file(path_join(dir, "report.html"), "html");
  for (const char* f : {"resid_pre_activation.svg", "z_all_pos_scatter.svg", "Where the effects lie"})
    EXPECT_NE(html.find(f), std::string::npos) << f;
  // The summary sentence names a layer and a token.
  auto lines = describe_effects(R);
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines[0].find("largest effect is at L"), std::string::npos) << lines[0];
  // No temporary files are left behind.
  for (const auto& e : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  // A second run into the same directory is refused without --force.
  EXPECT_THROW(prepare_out_dir({dir, "results.json", {"checkpoints"}, false, false}), Error);
}

// The pattern hook's figure: the three heads with the largest total |effect|, their clean and
// corrupted attention on the first prompt (causal, rows summing to 1, pad rows 0), in SVGs,
// results.json and the report.
TEST(Report, AttentionPatternsOfTheTopHeads) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/models/tiny-temporal-phi3");
  ExperimentOptions opt;
  opt.pairs_file = test::source_dir() + "/data/temporal_scope_for_attribution_patching.json";
  opt.hooks = {Hook::Pattern};
  ExperimentResult R = run_experiment(*be, *m, opt);
  ASSERT_EQ(R.pattern_figures.size(), 3u);
  const int H = m->cfg.num_attention_heads, T = R.T;
  const MatrixResult* act = nullptr;
  for (const auto& r : R.results)
    if (r.method == "activation") act = &r;
  ASSERT_NE(act, nullptr);
  std::vector<double> score(size_t(m->cfg.num_hidden_layers) * H, 0.0);
  for (size_t i = 0; i < act->values.size(); ++i) score[i / T] += std::fabs(act->values[i]);
  std::vector<double> sorted = score;
  std::sort(sorted.rbegin(), sorted.rend());
  const int pad0 = static_cast<int>(std::count(R.batches[0].clean_tokens[0].begin(), R.batches[0].clean_tokens[0].end(),
                                               m->cfg.pad_token_id));
  for (size_t k = 0; k < 3; ++k) {
    const PatternFigure& f = R.pattern_figures[k];
    EXPECT_EQ(f.ranked_by, "activation");
    EXPECT_DOUBLE_EQ(score[size_t(f.layer) * H + f.head], sorted[k]) << "head " << k << " is the " << k + 1 << "th";
    ASSERT_EQ(f.clean.size(), size_t(T) * T);
    for (int t = 0; t < T; ++t) {
      double sum = 0;
      for (int j = 0; j < T; ++j) {
        sum += f.clean[size_t(t) * T + j];
        if (j > t) {
          EXPECT_EQ(f.clean[size_t(t) * T + j], 0.0f) << "causal";
        }
      }
      EXPECT_NEAR(sum, t < pad0 ? 0.0 : 1.0, 1e-5) << "query " << t;
    }
  }
  const std::string dir = test::temp_dir("patterns");
  prepare_out_dir({dir, "results.json", {"checkpoints"}, true, false});
  write_report(R, dir);
  const PatternFigure& f = R.pattern_figures[0];
  const std::string stem = "pattern_L" + std::to_string(f.layer) + "H" + std::to_string(f.head);
  EXPECT_TRUE(file_exists(path_join(dir, stem + "_clean.svg")));
  EXPECT_TRUE(file_exists(path_join(dir, stem + "_corrupted.svg")));
  const std::string html = read_text_file(path_join(dir, "report.html"), "html");
  EXPECT_NE(html.find(stem + "_corrupted.svg"), std::string::npos);
  auto j = nlohmann::json::parse(read_text_file(path_join(dir, "results.json"), "results"));
  ASSERT_EQ(j["attention_patterns"].size(), 3u);
  EXPECT_EQ(j["attention_patterns"][0]["clean"].size(), size_t(T));
  EXPECT_NEAR(j["attention_patterns"][0]["clean"][T - 1][T - 1].get<double>(), f.clean[size_t(T) * T - 1], 1e-7);
}

// BOS is a choice (Phi-3 revisions differ); without it every prompt is one token shorter.
TEST(Report, WithoutBos) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/models/tiny-temporal-phi3");
  ExperimentOptions opt;
  opt.pairs_file = test::source_dir() + "/data/temporal_scope_for_attribution_patching.json";
  opt.hooks = {Hook::ResidPre};
  opt.activation = false;
  ExperimentResult with = run_experiment(*be, *m, opt);
  opt.add_bos = false;
  ExperimentResult without = run_experiment(*be, *m, opt);
  EXPECT_EQ(without.T, with.T - 1);
  EXPECT_FALSE(without.add_bos);
  auto j = nlohmann::json::parse(results_json(without));
  EXPECT_EQ(j["bos"], false);
  for (const auto& t : j["tokens"])
    for (int id : t["clean"].get<std::vector<int>>()) EXPECT_NE(id, m->tok.bos_id());
}

}  // namespace
}  // namespace phi3
