// Outputs of the main job: results.json structure, CSVs, SVG heatmaps, the HTML report,
// statistics (spread, Pearson, Spearman) and the sentence about where effects lie.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "patching/out_dir.h"
#include "patching/report.h"
#include "patching/svg.h"
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
  EXPECT_EQ(html.find("<img"), std::string::npos);
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
  EXPECT_EQ(html.find("<img"), std::string::npos) << "patterns are inline too";
  EXPECT_NE(html.find("Attention pattern, layer " + std::to_string(f.layer) + " head " + std::to_string(f.head) +
                      ", corrupted prompt 0"),
            std::string::npos);
  EXPECT_NE(html.find("attention probability"), std::string::npos) << "the pattern colour bar says what it shows";
  auto j = nlohmann::json::parse(read_text_file(path_join(dir, "results.json"), "results"));
  ASSERT_EQ(j["attention_patterns"].size(), 3u);
  EXPECT_EQ(j["attention_patterns"][0]["clean"].size(), size_t(T));
  EXPECT_NEAR(j["attention_patterns"][0]["clean"][T - 1][T - 1].get<double>(), f.clean[size_t(T) * T - 1], 1e-7);
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

// The <h2> headings of a page, in order.
std::vector<std::string> headings(const std::string& html) {
  std::vector<std::string> out;
  std::regex h2("<h2[^>]*>(.*?)</h2>");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), h2); it != std::sregex_iterator(); ++it)
    out.push_back((*it)[1]);
  return out;
}

// The data-colour-limit of every inline heatmap between two offsets of the page.
std::vector<double> colour_limits(const std::string& html) {
  std::vector<double> out;
  std::regex lim("data-colour-limit=\"([^\"]+)\"");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), lim); it != std::sregex_iterator(); ++it)
    out.push_back(std::stod((*it)[1]));
  return out;
}

// Issue 30 item 6: report.html stands alone (every figure inline, no file it loads), the
// per-cell hover values survive, each hook's attribution and exact heatmaps share one colour
// limit (the largest |value| over both), the colour bar names the metric and the direction,
// and only what ran has a section.
TEST(Report, SelfContainedWithOneColourScalePerHook) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/models/tiny-temporal-phi3");
  ExperimentOptions opt;
  opt.pairs_file = test::source_dir() + "/data/temporal_scope_for_attribution_patching.json";
  opt.hooks = {Hook::ResidPre, Hook::AttnOut};
  ExperimentResult R = run_experiment(*be, *m, opt);
  const std::string dir = test::temp_dir("report-inline");
  prepare_out_dir({dir, "results.json", {"checkpoints"}, true, false});
  write_report(R, dir);
  const std::string html = read_text_file(path_join(dir, "report.html"), "html");

  // Self-contained: no <img>, no src= / href= to a file, every figure's SVG inline.
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_FALSE(std::regex_search(html, std::regex("(src|href)=\"(?!#|https?:|data:)")));
  const size_t figures = 2 * 2 + 2;  // 2 hooks x (attribution + activation) heatmaps + 2 scatters
  EXPECT_EQ(count_of(html, "<svg"), figures);
  EXPECT_EQ(count_of(html, "</svg>"), figures);
  // The same markup as the SVG files written beside it (hover titles included).
  const std::string svg = read_text_file(path_join(dir, "resid_pre_activation.svg"), "svg");
  EXPECT_NE(html.find(svg), std::string::npos);
  // Hover values: one <title> per heatmap cell and scatter point.
  const size_t cells = size_t(m->cfg.num_hidden_layers) * R.T;
  EXPECT_GE(count_of(html, "<title>"), 4 * cells + cells);
  EXPECT_NE(html.find("<title>L0, "), std::string::npos);

  // One colour limit per hook, shared by its two heatmaps: the largest |value| over both.
  for (Hook h : {Hook::ResidPre, Hook::AttnOut}) {
    double want = 0;
    for (const auto& r : R.results)
      if (r.hook == h)
        for (double v : r.values)
          if (std::isfinite(v)) want = std::max(want, std::fabs(v));
    std::vector<double> lim;
    for (const char* method : {"attribution", "activation"}) {
      const std::string text = read_text_file(path_join(dir, hook_name(h) + "_" + method + ".svg"), "svg");
      const std::vector<double> l = colour_limits(text);
      ASSERT_EQ(l.size(), 1u) << hook_name(h) << " " << method;
      lim.push_back(l[0]);
      // The colour bar says what the colours mean.
      EXPECT_NE(text.find("normalised logit difference"), std::string::npos);
      EXPECT_NE(text.find("(1 = clean, 0 = corrupted)"), std::string::npos);
      EXPECT_NE(text.find("denoising"), std::string::npos);
    }
    EXPECT_EQ(lim[0], lim[1]) << hook_name(h) << ": attribution and activation share their colour limit";
    EXPECT_NEAR(lim[0], want, 1e-6 * want) << hook_name(h);
  }
  EXPECT_EQ(count_of(html, "One colour scale for this hook's 2 heatmaps"), 2u);
  EXPECT_EQ(html.find("Different colour scales"), std::string::npos);

  // Ranges 10x apart or more: a scale each, said plainly on the page.
  {
    ExperimentResult S = R;
    double att_max = 0, act_max = 0;
    for (auto& r : S.results)
      if (r.hook == Hook::ResidPre) {
        if (r.method == "attribution")
          for (double& v : r.values) v *= 1e-3;
        for (double v : r.values)
          if (std::isfinite(v)) (r.method == "attribution" ? att_max : act_max) = std::max(r.method == "attribution" ? att_max : act_max, std::fabs(v));
      }
    const std::string d = test::temp_dir("report-own-scales");
    prepare_out_dir({d, "results.json", {"checkpoints"}, true, false});
    write_report(S, d);
    const std::string page = read_text_file(path_join(d, "report.html"), "html");
    EXPECT_EQ(count_of(page, "Different colour scales"), 1u) << "resid_pre only";
    EXPECT_NE(page.find("the same colour is <b>not</b> the same value"), std::string::npos);
    const double la = colour_limits(read_text_file(path_join(d, "resid_pre_attribution.svg"), "svg")).at(0);
    const double lb = colour_limits(read_text_file(path_join(d, "resid_pre_activation.svg"), "svg")).at(0);
    EXPECT_NEAR(la, att_max, 1e-6 * att_max);
    EXPECT_NEAR(lb, act_max, 1e-6 * act_max);
  }

  // Sections only for what ran: the two hooks, the comparison, the prompts; no patterns, no
  // verify-top, no AtP* table; no heading without content after it.
  const std::vector<std::string> h2 = headings(html);
  auto has = [&](const std::string& s) {
    return std::any_of(h2.begin(), h2.end(), [&](const std::string& x) { return x.find(s) != std::string::npos; });
  };
  EXPECT_TRUE(has("resid_pre"));
  EXPECT_TRUE(has("attn_out"));
  EXPECT_TRUE(has("Attribution vs activation"));
  EXPECT_TRUE(has("Prompts"));
  EXPECT_FALSE(has("mlp_out"));
  EXPECT_FALSE(has("Attention patterns"));
  EXPECT_FALSE(has("Exact check"));
  EXPECT_FALSE(has("AtP*"));
  EXPECT_FALSE(std::regex_search(html, std::regex("</h[23]>\\s*(<h[123]|</body>)"))) << "an empty section";

  // Attribution alone: no comparison section, one heatmap per hook on its own scale.
  opt.activation = false;
  opt.hooks = {Hook::ResidPre};
  ExperimentResult A = run_experiment(*be, *m, opt);
  const std::string dir2 = test::temp_dir("report-inline-atp");
  prepare_out_dir({dir2, "results.json", {"checkpoints"}, true, false});
  write_report(A, dir2);
  const std::string html2 = read_text_file(path_join(dir2, "report.html"), "html");
  const std::vector<std::string> h2b = headings(html2);
  EXPECT_EQ(count_of(html2, "<svg"), 1u);
  for (const auto& x : h2b) EXPECT_EQ(x.find("Attribution vs activation"), std::string::npos) << x;
  EXPECT_FALSE(std::regex_search(html2, std::regex("</h[23]>\\s*(<h[123]|</body>)"))) << "an empty section";
}

// Colour bars and axes are ticked at round values: multiples of 1, 2 or 5 times a power of ten.
TEST(Report, RoundTicks) {
  EXPECT_EQ(nice_ticks(-0.97, 0.97, 4), (std::vector<double>{-0.5, 0, 0.5}));
  EXPECT_EQ(nice_ticks(-1.0, 1.0, 4), (std::vector<double>{-1, -0.5, 0, 0.5, 1}));
  EXPECT_EQ(nice_ticks(0, 1, 5), (std::vector<double>{0, 0.2, 0.4, 0.6, 0.8, 1}));
  EXPECT_EQ(tick_text(0.6000000000000001), "0.6");
  EXPECT_EQ(nice_ticks(0, 2500, 5), (std::vector<double>{0, 500, 1000, 1500, 2000, 2500}));
  EXPECT_EQ(tick_text(-0.0), "0");
  EXPECT_EQ(nice_ticks(-37.2, 37.2, 6), (std::vector<double>{-20, 0, 20}));
  EXPECT_EQ(nice_ticks(-0.0123, 0.0123, 4), (std::vector<double>{-0.01, 0, 0.01}));
  EXPECT_EQ(nice_ticks(-0.0123, 0.0123, 6), (std::vector<double>{-0.01, -0.005, 0, 0.005, 0.01}));
  // Every tick printed on a heatmap's colour bar is round.
  const std::string svg = svg_heatmap("t", {"L0", "L1"}, {"a", "b"}, {0.83, -0.41, 0.07, 0.0}, "x", "y");
  std::regex tick("<text x=\"[^\"]+\" y=\"[^\"]+\">(-?[0-9.e+-]+)</text>");
  int n = 0;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tick); it != std::sregex_iterator(); ++it, ++n) {
    const double v = std::stod((*it)[1]);
    if (v == 0) continue;
    const double mant = std::fabs(v) / std::pow(10.0, std::floor(std::log10(std::fabs(v)) + 1e-12));
    EXPECT_TRUE(std::fabs(mant - std::round(mant)) < 1e-9) << (*it)[1];
  }
  EXPECT_GE(n, 3);
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
