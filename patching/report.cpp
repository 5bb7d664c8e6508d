#include "patching/report.h"

#include "patching/batch_result.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <iomanip>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "patching/svg.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {
std::string fmt(double v, int prec = 4) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string sig(double v) {  // 3 significant digits: 0.000641, 0.971, 12.3
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

Spread spread(const std::vector<float>& v) {
  Spread s;
  const size_t n = v.size();
  if (n < 2) return s;
  double mean = 0;
  for (float x : v) mean += x;
  mean /= n;
  double ss = 0;
  for (float x : v) ss += (x - mean) * (x - mean);
  s.std = std::sqrt(ss / (n - 1));
  s.ci95 = 1.96 * s.std / std::sqrt(double(n));
  return s;
}

namespace {

std::string file_stem(const MatrixResult& r) { return hook_name(r.hook) + "_" + r.method; }

std::string figure_title(Hook h) {
  std::string base;
  switch (h) {
    case Hook::ResidPre: base = "Residual"; break;
    case Hook::ResidMid: base = "Residual (mid)"; break;
    case Hook::ResidPost: base = "Residual (post)"; break;
    case Hook::AttnOut: base = "Attention Output"; break;
    case Hook::MlpOut: base = "MLP Output"; break;
    case Hook::Z: base = "Head Output by Position"; break;
    case Hook::ZAllPos: base = "Head Output (all positions)"; break;
    case Hook::Q: base = "Query by Position"; break;
    case Hook::QAllPos: base = "Query (all positions)"; break;
    case Hook::K: base = "Key by Position"; break;
    case Hook::KAllPos: base = "Key (all positions)"; break;
    case Hook::V: base = "Value by Position"; break;
    case Hook::VAllPos: base = "Value (all positions)"; break;
    case Hook::Pattern: base = "Attention Pattern by Query Position"; break;
    case Hook::PatternAllPos: base = "Attention Pattern (all queries)"; break;
    case Hook::MlpPost: base = "MLP Neurons by Position"; break;
    case Hook::Router: base = "Router Logits"; break;
  }
  return base;
}

std::string plot_title(const MatrixResult& r) {
  const std::string base = figure_title(r.hook);
  if (r.method == "attribution") return base + " Attribution Patching (AtP)";
  if (r.method == "atp-star") return base + " AtP* (|estimate|)";
  if (r.method == "verified") return base + " Exact Check of the Top Nodes";
  return base + " Activation Patching";
}

const MatrixResult* find(const ExperimentResult& R, Hook h, const char* method) {
  for (const auto& r : R.results)
    if (r.hook == h && r.method == method) return &r;
  return nullptr;
}

std::vector<std::string> cell_labels(const MatrixResult& r) {
  std::vector<std::string> labels;
  for (size_t i = 0; i < r.values.size(); ++i) labels.push_back(r.rows[i / r.cols.size()] + ", " + r.cols[i % r.cols.size()]);
  return labels;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v)
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}

const char* metric_words(MetricKind k) {
  switch (k) {
    case MetricKind::LogitDiff: return "logit difference";
    case MetricKind::ProbDiff: return "probability difference";
    case MetricKind::LogProb: return "log-probability of the answer";
    case MetricKind::KL: return "KL divergence from the clean run";
  }
  return "metric";
}

std::string direction_words(const std::string& direction) {
  return direction == "noise" ? "noising: corrupted values patched into the clean run"
                              : "denoising: clean values patched into the corrupted run";
}

// What a heatmap's colour means, beside its colour bar.
std::vector<std::string> colour_label(const ExperimentResult& R, const MatrixResult& r) {
  return {std::string(r.method == "atp-star" ? "|estimate| of the " : "") + "normalised " + metric_words(R.metric),
          "(1 = clean, 0 = corrupted)", direction_words(R.direction)};
}

// Heatmaps of one hook whose largest |values| differ by this factor or more get a colour
// scale each (on a shared one the smaller would be blank); the page says so.
constexpr double kOwnScaleRatio = 10;

// The largest and smallest of the per-heatmap largest |values| of a hook.
std::pair<double, double> hook_ranges(const ExperimentResult& R, Hook h) {
  double lo = INFINITY, hi = 0;
  for (const auto& r : R.results)
    if (r.hook == h) {
      const double m = max_abs(r.values);
      lo = std::min(lo, m);
      hi = std::max(hi, m);
    }
  return {lo, hi};
}

bool hook_shares_scale(const ExperimentResult& R, Hook h) {
  const auto [lo, hi] = hook_ranges(R, h);
  return !(lo > 0 && hi / lo >= kOwnScaleRatio);
}

// The colour limit of a heatmap: one per hook, the largest |value| over all of the hook's
// heatmaps, so its attribution and exact heatmaps read on the same scale; its own largest
// |value| when the hook's ranges differ kOwnScaleRatio-fold or more.
double colour_limit(const ExperimentResult& R, const MatrixResult& r) {
  const double m = hook_shares_scale(R, r.hook) ? hook_ranges(R, r.hook).second : max_abs(r.values);
  return m > 0 ? m : 1.0;
}

const char* method_words(const std::string& method) {
  if (method == "attribution") return "attribution (AtP)";
  if (method == "atp-star") return "AtP*";
  if (method == "verified") return "exact check of the top nodes";
  return "activation (exact)";
}
}  // namespace

std::vector<Component> top_components(const MatrixResult& r, size_t k) {
  std::vector<size_t> idx(r.values.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    double va = std::isfinite(r.values[a]) ? std::fabs(r.values[a]) : -1;
    double vb = std::isfinite(r.values[b]) ? std::fabs(r.values[b]) : -1;
    return va > vb;
  });
  std::vector<Component> out;
  const size_t nc = r.cols.size();
  for (size_t i = 0; i < std::min(k, idx.size()); ++i)
    out.push_back({r.rows[idx[i] / nc], r.cols[idx[i] % nc], r.values[idx[i]]});
  return out;
}

std::vector<std::string> describe_effects(const ExperimentResult& R) {
  std::vector<std::string> lines;
  for (const auto& r : R.results) {
    // One matrix per hook: the exact one when it ran, else AtP, else AtP* (the partial
    // --verify-top check is listed on its own).
    if (r.method == "verified") continue;
    if (r.method != "activation" && find(R, r.hook, "activation")) continue;
    if (r.method == "atp-star" && find(R, r.hook, "attribution")) continue;
    auto top = top_components(r, 3);
    if (top.empty()) continue;
    // Share of total |effect| per row (layer) and per column (token / head).
    std::map<std::string, double> by_row, by_col;
    double total = 0;
    const size_t nc = r.cols.size();
    for (size_t i = 0; i < r.values.size(); ++i) {
      double a = std::isfinite(r.values[i]) ? std::fabs(r.values[i]) : 0;
      by_row[r.rows[i / nc]] += a;
      by_col[r.cols[i % nc]] += a;
      total += a;
    }
    auto best = [](const std::map<std::string, double>& m) {
      std::vector<std::pair<double, std::string>> v;
      for (auto& [k, x] : m) v.push_back({x, k});
      std::sort(v.rbegin(), v.rend());
      return v;
    };
    auto rows = best(by_row), cols = best(by_col);
    std::ostringstream s;
    s << hook_name(r.hook) << " (" << r.method << "): the largest effect is at " << top[0].row << ", " << top[0].col
      << " (" << fmt(top[0].value, 3) << ")";
    if (top.size() > 1) s << ", then " << top[1].row << ", " << top[1].col << " (" << fmt(top[1].value, 3) << ")";
    if (top.size() > 2) s << " and " << top[2].row << ", " << top[2].col << " (" << fmt(top[2].value, 3) << ")";
    if (total > 0) {
      s << ". By "
        << (r.hook == Hook::MlpPost                                   ? "layer/neuron"
            : hook_is_per_head(r.hook) && !hook_all_pos(r.hook) ? "layer/head"
                                                                : "layer")
        << ": "
        << rows[0].second << " holds " << fmt(100 * rows[0].first / total, 0) << "% of the total |effect|";
      s << "; by " << (hook_all_pos(r.hook) ? "head" : "token") << ": " << cols[0].second << " "
        << fmt(100 * cols[0].first / total, 0) << "%";
      if (cols.size() > 1) s << ", " << cols[1].second << " " << fmt(100 * cols[1].first / total, 0) << "%";
    }
    s << ".";
    lines.push_back(s.str());
  }
  if (!R.verified.empty()) {
    const VerifiedNode& v = R.verified.front();
    std::ostringstream s;
    s << "Exact check of the top " << R.verified.size() << " nodes by |" << R.verify_ranked_by << "|: the first, "
      << hook_name(v.hook) << " " << v.row << ", " << v.col << ", has exact effect " << fmt(v.exact, 3)
      << " (estimate " << fmt(v.estimate, 3) << ")";
    auto best = std::max_element(R.verified.begin(), R.verified.end(), [](const VerifiedNode& a, const VerifiedNode& b) {
      return std::fabs(a.exact) < std::fabs(b.exact);
    });
    s << "; the largest exact effect among them is " << hook_name(best->hook) << " " << best->row << ", " << best->col
      << " (" << fmt(best->exact, 3) << ", rank " << best->rank << ").";
    lines.push_back(s.str());
  }
  return lines;
}

std::string results_json(const ExperimentResult& R) {
  using nlohmann::json;
  json j;
  j["format_version"] = 1;
  j["model"] = R.model_dir;
  j["architecture"] = R.architecture;
  j["family"] = R.family;
  j["pad_token_id"] = {{"id", R.pad_token_id}, {"from", R.pad_token_source}};
  j["device"] = R.device;
  j["pairs_file"] = R.pairs_file;
  j["direction"] = R.direction;
  // The exact sweeps' positions (--positions; "all": every position). Cells elsewhere are NaN.
  j["exact_positions"] = R.exact_positions.empty() ? nlohmann::json("all") : nlohmann::json(R.exact_positions);
  // --layers: the layers of every matrix ("all"); rows of other layers are NaN. --no-mix: "mixed": false.
  j["exact_layers"] = R.exact_layers.empty() ? nlohmann::json("all") : nlohmann::json(R.exact_layers);
  j["mixed"] = R.mix;
  j["bos"] = R.add_bos;
  // --answer-first-token: which answers were more than one token (and used their first piece).
  j["answer_first_token"] = R.answers_cut;
  const bool ld_metric = R.metric == MetricKind::LogitDiff;
  j["metric"] = {{"name", metric_name(R.metric)},
                 {"position", "last"},
                 {"definition", metric_definition(R.metric)},
                 {"normalisation", "(M - M_corrupted) / (M_clean - M_corrupted)"},
                 {"per_prompt_key", per_prompt_key(R.metric)}};
  j["T"] = R.T;
  j["clean_logit_diff"] = R.clean_ld;
  j["corrupted_logit_diff"] = R.corrupted_ld;
  if (!ld_metric) {  // the chosen metric's raw values (the logit differences stay above)
    j["clean_metric"] = R.clean_m;
    j["corrupted_metric"] = R.corrupted_m;
  }
  json prompts = json::array(), tokens = json::array();
  for (const auto& b : R.batches) {
    for (size_t i = 0; i < b.clean_prompts.size(); ++i) {
      prompts.push_back({{"clean", b.clean_prompts[i]},
                         {"corrupted", b.corrupted_prompts[i]},
                         {"answer", b.answer_piece[i]},
                         {"other", b.other_piece[i]},
                         {"answer_id", b.answer[i]},
                         {"other_id", b.other[i]},
                         {"clean_logit_diff", b.clean_ld_rows[i]},
                         {"corrupted_logit_diff", b.corrupted_ld_rows[i]}});
      if (!ld_metric) {
        prompts.back()["clean_metric"] = b.clean_m_rows[i];
        prompts.back()["corrupted_metric"] = b.corrupted_m_rows[i];
      }
      tokens.push_back({{"clean", b.clean_tokens[i]}, {"corrupted", b.corrupted_tokens[i]}});
    }
  }
  j["prompts"] = prompts;
  j["tokens"] = tokens;
  j["position_labels"] = R.position_labels;
  json results = json::array();
  json work = json::object();
  for (const auto& r : R.results) {
    json e;
    e["hook"] = hook_name(r.hook);
    e["method"] = r.method;
    e["rows"] = r.rows;
    e["cols"] = r.cols;
    json vals = json::array();
    for (size_t i = 0; i < r.rows.size(); ++i) {
      json row = json::array();
      for (size_t c = 0; c < r.cols.size(); ++c) row.push_back(num(r.values[i * r.cols.size() + c]));
      vals.push_back(row);
    }
    e["values"] = vals;
    json top = json::array();
    for (const auto& c : top_components(r, 10)) top.push_back({{"row", c.row}, {"col", c.col}, {"value", num(c.value)}});
    e["top10"] = top;
    e["seconds"] = r.seconds;
    if (r.exact()) {
      // [rows][cols][prompts]
      json pl = json::array(), pn = json::array(), sd = json::array(), ci = json::array();
      for (size_t i = 0; i < r.rows.size(); ++i) {
        json rl = json::array(), rn = json::array(), rs = json::array(), rc = json::array();
        for (size_t c = 0; c < r.cols.size(); ++c) {
          rl.push_back(r.per_prompt_ld[i * r.cols.size() + c]);
          json pr = json::array();
          const auto& vals = r.per_prompt[i * r.cols.size() + c];
          for (float v : vals) pr.push_back(num(v));
          rn.push_back(pr);
          const Spread sp = spread(vals);
          rs.push_back(num(sp.std));
          rc.push_back(num(sp.ci95));
        }
        pl.push_back(rl);
        pn.push_back(rn);
        sd.push_back(rs);
        ci.push_back(rc);
      }
      e[per_prompt_key(R.metric)] = pl;  // raw metric of every patched run, per prompt
      e["per_prompt_metric"] = pn;
      e["per_prompt_std"] = sd;     // sample standard deviation of the per-prompt metric
      e["ci95_halfwidth"] = ci;     // 1.96 * std / sqrt(prompts) (normal approximation)
      json w = {{"mode", r.work.fast ? "fast" : "naive"},
                {"patched_runs", r.work.patched_runs},
                {"skipped_noop", r.work.skipped_noop},
                {"skipped_causal", r.work.skipped_causal},
                {"token_layer_evals", r.work.token_layer_evals},
                {"naive_token_layer_evals", r.work.naive_token_layer_evals},
                {"chunks", r.work.chunks},
                {"streams", r.work.streams},
                {"seconds", r.work.seconds}};
      e["work"] = w;
      work[hook_name(r.hook) + (r.method == "verified" ? " verified" : "")] = w;
    }
    results.push_back(e);
  }
  j["results"] = results;
  // Per rank (one entry for a plain run): what each did, and how evenly the work was spread.
  work["world_size"] = R.world_size;
  work.update(ranks_summary(R.ranks));
  work["resumed_batches"] = R.resumed_batches;
  work["wall_seconds"] = R.wall_seconds;
  j["work"] = work;
  {
    const MemoryReport& mr = R.memory;
    json mem = {{"free_bytes", mr.free_bytes},
                {"plannable_bytes", mr.plannable_bytes},
                {"planned_peak_bytes", mr.planned_estimates_bytes ? json(mr.planned_estimates_bytes) : json(nullptr)},
                {"checkpointed", mr.checkpointed},
                {"planned_sweep_forwards_bytes",
                 mr.planned_sweep_forwards_bytes ? json(mr.planned_sweep_forwards_bytes) : json(nullptr)},
                {"measured_peak_bytes", mr.measured ? json(mr.measured_peak_bytes) : json(nullptr)},
                {"note", "planned_peak_bytes: the estimates pass of the largest batch as planned (beyond the weights); "
                         "measured_peak_bytes: the device's allocation high-water mark over the batches beyond what "
                         "was allocated before them (null where the backend does not track it, e.g. the CPU)"}};
    j["memory"] = mem;
  }
  json cmp = json::array();
  for (const auto& c : R.comparisons)
    cmp.push_back({{"hook", hook_name(c.hook)}, {"pearson", num(c.pearson)}, {"spearman", num(c.spearman)}});
  j["attribution_vs_activation"] = cmp;
  json quality = json::array();
  for (const auto& q : R.quality)
    quality.push_back({{"hook", hook_name(q.hook)},
                       {"method", q.method},
                       {"nodes", q.nodes},
                       {"pearson_abs", num(q.pearson_abs)},
                       {"spearman_abs", num(q.spearman_abs)},
                       {"recall_exact_top10_in_top20", num(q.recall_10_in_20)}});
  j["estimate_quality"] = quality;
  if (!R.pattern_figures.empty()) {
    json figs = json::array();
    for (const auto& f : R.pattern_figures) {
      auto square = [&](const std::vector<float>& v) {
        json rows = json::array();
        const size_t T = f.clean_tokens.size();
        for (size_t t = 0; t < T; ++t) rows.push_back(std::vector<float>(v.begin() + t * T, v.begin() + (t + 1) * T));
        return rows;
      };
      figs.push_back({{"hook", hook_name(f.hook)},
                      {"layer", f.layer},
                      {"head", f.head},
                      {"ranked_by", f.ranked_by},
                      {"prompt", 0},
                      {"clean_tokens", f.clean_tokens},
                      {"corrupted_tokens", f.corrupted_tokens},
                      {"clean", square(f.clean)},
                      {"corrupted", square(f.corrupted)}});
    }
    j["attention_patterns"] = figs;
  }
  if (!R.verified.empty()) {
    json v = json::array();
    for (const auto& x : R.verified)
      v.push_back({{"rank", x.rank},
                   {"hook", hook_name(x.hook)},
                   {"row", x.row},
                   {"col", x.col},
                   {"estimate", num(x.estimate)},
                   {"attribution", num(x.attribution)},
                   {"atp_star", num(x.atp_star)},
                   {"exact", num(x.exact)},
                   {"ci95_halfwidth", num(x.ci95)}});
    j["verify_top"] = {{"k", R.verified.size()}, {"ranked_by", R.verify_ranked_by}, {"nodes", v}};
  }
  j["summary"] = describe_effects(R);
  return j.dump(1) + "\n";
}

namespace {

// The figure's SVG inline (the page needs no other file), in a scrolling box when wide.
std::string inline_figure(const std::map<std::string, std::string>& figures, const std::string& stem) {
  auto it = figures.find(stem);
  if (it == figures.end()) return "";
  return "<div class=\"fig\">" + it->second + "</div>\n";
}

std::string report_html(const ExperimentResult& R, const std::map<std::string, std::string>& figures) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>phi3patch report</title>\n"
    << "<style>body{font-family:Helvetica,Arial,sans-serif;margin:24px;max-width:1400px;color:#222}"
    << "td,th{padding:2px 8px;text-align:left}th{border-bottom:1px solid #ccc}code{background:#f4f4f4}"
    << ".fig{overflow-x:auto;margin:6px 0}.fig svg{border:1px solid #eee;max-width:100%;height:auto}"
    << ".pair{display:flex;gap:12px;flex-wrap:wrap}.pair .fig{flex:1 1 45%;min-width:0}"
    << ".scale{background:#f6f8fb;border-left:3px solid #2166ac;padding:6px 10px}"
    << ".files{color:#666;font-size:90%}.nw{white-space:nowrap}</style></head><body>\n";
  h << "<h1>phi3patch: attribution and activation patching</h1>\n";
  h << "<p>Model <code>" << xml_escape(R.model_dir) << "</code> on " << xml_escape(R.device) << ". Pairs <code>"
    << xml_escape(R.pairs_file) << "</code>, " << R.n_prompts << " prompts, T = " << R.T << ", "
    << xml_escape(direction_words(R.direction)) << (R.add_bos ? ", BOS prepended" : ", no BOS") << ".</p>\n";
  if (R.metric == MetricKind::LogitDiff)
    h << "<p>Clean logit difference <b>" << fmt(R.clean_ld) << "</b>, corrupted <b>" << fmt(R.corrupted_ld)
      << "</b>. Every value below is the normalised logit difference at the last position: 1 = the clean run's, "
      << "0 = the corrupted run's. Hover a cell or point for its value.</p>\n";
  else
    h << "<p>Metric <b>" << metric_name(R.metric) << "</b> (" << xml_escape(metric_definition(R.metric))
      << ", at the last position): clean <b>" << fmt(R.clean_m) << "</b>, corrupted <b>" << fmt(R.corrupted_m)
      << "</b>. Every value below is the normalised metric (M - M_corrupted) / (M_clean - M_corrupted): 1 = the "
      << "clean run's, 0 = the corrupted run's. Clean logit difference " << fmt(R.clean_ld) << ", corrupted "
      << fmt(R.corrupted_ld) << ". Hover a cell or point for its value.</p>\n";
  const std::vector<std::string> effects = describe_effects(R);
  if (!effects.empty()) {
    h << "<h2>Where the effects lie</h2><ul>\n";
    for (const auto& line : effects) h << "<li>" << xml_escape(line) << "</li>\n";
    h << "</ul>\n";
  }
  if (!R.comparisons.empty()) {
    h << "<h2>Attribution vs activation patching</h2><table><tr><th>hook</th><th>Pearson</th><th>Spearman</th></tr>\n";
    for (const auto& c : R.comparisons)
      h << "<tr><td>" << hook_name(c.hook) << "</td><td>" << fmt(c.pearson, 3) << "</td><td>" << fmt(c.spearman, 3)
        << "</td></tr>\n";
    h << "</table>\n";
  }
  if (!R.quality.empty()) {
    const bool star = std::any_of(R.quality.begin(), R.quality.end(), [](const EstimateQuality& q) { return q.method == "atp-star"; });
    h << "<h2>" << (star ? "AtP vs AtP* against exact patching" : "How well AtP ranks the nodes (against exact patching)")
      << "</h2>\n<p>Per hook, how each estimate ranks the nodes: "
      << "Pearson and Spearman correlation of |estimate| with |exact effect|, and the share of the exact top-10 "
      << "nodes (by |effect|) found in the estimate's top-20 (false negatives lower it; blank with 20 nodes or "
      << "fewer).</p>\n<table><tr><th>hook</th><th>method</th><th>nodes</th><th>Pearson</th><th>Spearman</th>"
      << "<th>recall@20 of exact top-10</th></tr>\n";
    for (const auto& q : R.quality)
      h << "<tr><td>" << hook_name(q.hook) << "</td><td>" << (q.method == "atp-star" ? "AtP*" : "AtP") << "</td><td>"
        << q.nodes << "</td><td>" << fmt(q.pearson_abs, 3) << "</td><td>" << fmt(q.spearman_abs, 3) << "</td><td>"
        << (std::isnan(q.recall_10_in_20) ? std::string() : fmt(q.recall_10_in_20, 2)) << "</td></tr>\n";
    h << "</table>\n";
  }
  // One section per hook that ran: its heatmaps on one colour scale, its scatters.
  std::vector<Hook> hooks;
  for (const auto& r : R.results)
    if (std::find(hooks.begin(), hooks.end(), r.hook) == hooks.end()) hooks.push_back(r.hook);
  for (Hook hk : hooks) {
    std::vector<const MatrixResult*> rs;
    for (const auto& r : R.results)
      if (r.hook == hk) rs.push_back(&r);
    h << "<h2 id=\"" << hook_name(hk) << "\">" << xml_escape(figure_title(hk)) << " <code>" << hook_name(hk) << "</code></h2>\n";
    const auto [lo, hi] = hook_ranges(R, hk);
    h << "<p class=\"scale\">";
    if (rs.size() == 1) {
      h << "Colour scale &plusmn;" << sig(colour_limit(R, *rs[0])) << " (the largest |value|).";
    } else {
      std::ostringstream ranges;
      for (size_t i = 0; i < rs.size(); ++i)
        ranges << (i ? ", " : "") << method_words(rs[i]->method) << " " << sig(max_abs(rs[i]->values));
      if (hook_shares_scale(R, hk)) {
        h << "One colour scale for this hook's " << rs.size() << " heatmaps: &plusmn;" << sig(colour_limit(R, *rs[0]))
          << ", the largest |value| over them (" << ranges.str() << "). The same colour is the same value in each.";
        if (lo > 0 && hi / lo >= 3)
          h << " <b>Their ranges differ " << (hi / lo < 100 ? sig(hi / lo) : fmt(hi / lo, 0)) << "&times;</b>: the heatmap of smaller values looks pale "
            << "on the shared scale; hover its cells for their values, or compare ranks in the scatter below.";
        else if (lo == 0 && hi > 0)
          h << " <b>One heatmap is all zeros.</b>";
      } else {
        h << "<b>Different colour scales:</b> the largest |values| of this hook's heatmaps differ " << (hi / lo < 100 ? sig(hi / lo) : fmt(hi / lo, 0))
          << "&times; (" << ranges.str() << "), so each heatmap has its own scale, &plusmn; its largest |value| "
          << "(read its colour bar): the same colour is <b>not</b> the same value across them.";
      }
    }
    h << "</p>\n";
    for (const MatrixResult* r : rs) {
      h << inline_figure(figures, file_stem(*r));
      if (r->exact())
        h << "<p>" << method_words(r->method) << ": " << r->work.patched_runs << " patched runs, "
          << r->work.skipped_noop << " no-op patches skipped, " << r->work.token_layer_evals
          << " token-layer evaluations (naive: " << r->work.naive_token_layer_evals << "), " << fmt(r->work.seconds, 3)
          << " s</p>\n";
    }
    const bool scatter = figures.count(hook_name(hk) + "_scatter") > 0,
               star = figures.count(hook_name(hk) + "_atp_star_scatter") > 0;
    if (scatter || star) {
      h << "<div class=\"pair\">" << (scatter ? inline_figure(figures, hook_name(hk) + "_scatter") : "")
        << (star ? inline_figure(figures, hook_name(hk) + "_atp_star_scatter") : "") << "</div>\n";
    }
    h << "<p class=\"files\">Files: ";
    for (size_t i = 0; i < rs.size(); ++i) h << (i ? ", " : "") << file_stem(*rs[i]) << ".csv, " << file_stem(*rs[i]) << ".svg";
    if (scatter) h << ", " << hook_name(hk) << "_scatter.svg";
    if (star) h << ", " << hook_name(hk) << "_atp_star_scatter.svg";
    h << "</p>\n";
  }
  if (!R.verified.empty()) {
    h << "<h2>Exact check of the top " << R.verified.size() << " nodes by |" << xml_escape(R.verify_ranked_by)
      << "|</h2>\n" << inline_figure(figures, "verified_scatter") << "<table><tr><th>rank</th><th>hook</th><th>node</th>"
      << "<th>AtP</th><th>AtP*</th><th>exact</th><th>95% CI</th></tr>\n";
    for (const auto& v : R.verified)
      h << "<tr><td>" << v.rank << "</td><td>" << hook_name(v.hook) << "</td><td>" << xml_escape(v.row + ", " + v.col)
        << "</td><td>" << (std::isnan(v.attribution) ? std::string() : fmt(v.attribution, 4)) << "</td><td>"
        << (std::isnan(v.atp_star) ? std::string() : fmt(v.atp_star, 4)) << "</td><td>" << fmt(v.exact, 4)
        << "</td><td>&plusmn;" << fmt(v.ci95, 4) << "</td></tr>\n";
    h << "</table>\n";
  }
  if (!R.pattern_figures.empty()) {
    h << "<h2>Attention patterns of the top heads</h2>\n<p>The " << R.pattern_figures.size()
      << " heads with the largest total |effect| in <code>" << hook_name(R.pattern_figures[0].hook) << "</code> ("
      << xml_escape(R.pattern_figures[0].ranked_by) << "), on the first prompt: query position down, key "
      << "position across, clean run left, corrupted run right; colour = attention probability (0 to 1).</p>\n";
    for (const auto& f : R.pattern_figures) {
      const std::string stem = "pattern_L" + std::to_string(f.layer) + "H" + std::to_string(f.head);
      h << "<h3>Layer " << f.layer << ", head " << f.head << "</h3>\n<div class=\"pair\">"
        << inline_figure(figures, stem + "_clean") << inline_figure(figures, stem + "_corrupted") << "</div>\n"
        << "<p class=\"files\">Files: " << stem << "_clean.svg, " << stem << "_corrupted.svg</p>\n";
    }
  }
  const bool other_metric = R.metric != MetricKind::LogitDiff;
  h << "<h2>Prompts</h2><table><tr><th>clean</th><th>corrupted</th><th>answer</th><th>LD clean</th><th>LD corrupted</th>";
  if (other_metric) h << "<th>" << metric_name(R.metric) << " clean</th><th>" << metric_name(R.metric) << " corrupted</th>";
  h << "</tr>\n";
  for (const auto& b : R.batches)
    for (size_t i = 0; i < b.clean_prompts.size(); ++i) {
      h << "<tr><td>" << xml_escape(b.clean_prompts[i]) << "</td><td>" << xml_escape(b.corrupted_prompts[i])
        << "</td><td class=\"nw\">" << xml_escape(b.answer_piece[i]) << " vs " << xml_escape(b.other_piece[i]) << "</td><td>"
        << fmt(b.clean_ld_rows[i]) << "</td><td>" << fmt(b.corrupted_ld_rows[i]) << "</td>";
      if (other_metric) h << "<td>" << fmt(b.clean_m_rows[i]) << "</td><td>" << fmt(b.corrupted_m_rows[i]) << "</td>";
      h << "</tr>\n";
    }
  h << "</table>\n";
  h << "<p class=\"files\">This page holds every figure; beside it, results.json (all values, per-prompt metrics, "
    << "work counters), one CSV per heatmap and each figure as an SVG file.</p>\n";
  h << "</body></html>\n";
  return h.str();
}

}  // namespace

std::vector<std::string> write_report(const ExperimentResult& R, const std::string& out_dir) {
  std::vector<std::string> written;
  // results.json marks a complete set of files from one run: an older one (only here with
  // --force) goes first, so a failure part-way never pairs it with newer CSVs/SVGs.
  const std::string old_results = path_join(out_dir, "results.json");
  if (file_exists(old_results) && std::remove(old_results.c_str()) != 0)
    throw Error("cannot replace '" + old_results + "': " + std::strerror(errno));
  auto put = [&](const std::string& name, const std::string& text) {
    std::string p = path_join(out_dir, name);
    write_file_atomic(p, text);
    written.push_back(p);
  };
  std::map<std::string, std::string> figures;  // file stem -> SVG text, inlined in report.html
  for (const auto& r : R.results) {
    std::ostringstream csv;
    csv << "row";
    for (const auto& c : r.cols) csv << ",\"" << c << "\"";
    csv << "\n";
    for (size_t i = 0; i < r.rows.size(); ++i) {
      csv << r.rows[i];
      for (size_t c = 0; c < r.cols.size(); ++c) csv << "," << std::setprecision(9) << r.values[i * r.cols.size() + c];
      csv << "\n";
    }
    put(file_stem(r) + ".csv", csv.str());
    const bool heads = hook_all_pos(r.hook);
    // A matrix of many rows (mlp_post: layers x neurons) is drawn with the 64 rows of largest
    // total |value|, in their order; the CSV and results.json hold every row.
    std::vector<std::string> rows = r.rows;
    std::vector<double> vals = r.values;
    std::string title = plot_title(r);
    const size_t nc = r.cols.size(), kMaxRows = 256, kShown = 64;
    if (rows.size() > kMaxRows) {
      std::vector<double> mass(rows.size(), 0.0);
      for (size_t i = 0; i < r.values.size(); ++i)
        if (std::isfinite(r.values[i])) mass[i / nc] += std::fabs(r.values[i]);
      std::vector<size_t> idx(rows.size());
      for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
      std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return mass[a] > mass[b]; });
      idx.resize(kShown);
      std::sort(idx.begin(), idx.end());
      rows.clear();
      vals.clear();
      for (size_t i : idx) {
        rows.push_back(r.rows[i]);
        vals.insert(vals.end(), r.values.begin() + i * nc, r.values.begin() + (i + 1) * nc);
      }
      title += " (the " + std::to_string(kShown) + " of " + std::to_string(r.rows.size()) + " rows with the largest |effect|)";
    }
    const char* y_label = r.hook == Hook::MlpPost ? "Layer / neuron" : hook_is_per_head(r.hook) && !heads ? "Layer / head" : "Layer";
    HeatmapScale scale;
    scale.limit = colour_limit(R, r);
    scale.label = colour_label(R, r);
    figures[file_stem(r)] = svg_heatmap(title, rows, r.cols, vals, heads ? "Head" : "Position", y_label, scale);
    put(file_stem(r) + ".svg", figures[file_stem(r)]);
  }
  for (const auto& c : R.comparisons) {
    const MatrixResult *at = find(R, c.hook, "attribution"), *ac = find(R, c.hook, "activation");
    put(hook_name(c.hook) + "_scatter.svg",
        figures[hook_name(c.hook) + "_scatter"] = svg_scatter(hook_name(c.hook) + ": attribution vs activation (r=" + fmt(c.pearson, 3) + ", rho=" +
                        fmt(c.spearman, 3) + ")",
                    at->values, ac->values, cell_labels(*at), "attribution patching", "activation patching"));
  }
  for (const auto& q : R.quality) {
    if (q.method != "atp-star") continue;
    const MatrixResult *st = find(R, q.hook, "atp-star"), *ac = find(R, q.hook, "activation");
    std::vector<double> exact_abs;
    for (double v : ac->values) exact_abs.push_back(std::fabs(v));
    put(hook_name(q.hook) + "_atp_star_scatter.svg",
        figures[hook_name(q.hook) + "_atp_star_scatter"] = svg_scatter(hook_name(q.hook) + ": AtP* vs |activation| (r=" + fmt(q.pearson_abs, 3) + ")", st->values,
                    exact_abs, cell_labels(*st), "AtP*", "|activation patching|"));
  }
  for (const auto& f : R.pattern_figures) {
    const std::string stem = "pattern_L" + std::to_string(f.layer) + "H" + std::to_string(f.head);
    for (const char* run : {"clean", "corrupted"}) {
      const bool c = std::string(run) == "clean";
      const std::vector<float>& v = c ? f.clean : f.corrupted;
      const std::vector<std::string>& tok = c ? f.clean_tokens : f.corrupted_tokens;
      HeatmapScale probs;
      probs.limit = 1;
      probs.sequential = true;
      probs.label = {"attention probability"};
      put(stem + "_" + run + ".svg",
          figures[stem + "_" + run] = svg_heatmap("Attention pattern, layer " + std::to_string(f.layer) + " head " +
                                                      std::to_string(f.head) + ", " + run + " prompt 0",
                                                  tok, tok, std::vector<double>(v.begin(), v.end()), "Key position",
                                                  "Query position", probs));
    }
  }
  if (!R.verified.empty()) {
    std::ostringstream csv;
    csv << "rank,hook,row,col," << R.verify_ranked_by << "_estimate,attribution,atp_star,exact,ci95_halfwidth\n";
    std::vector<double> est, ex;
    std::vector<std::string> lab;
    for (const auto& v : R.verified) {
      csv << v.rank << "," << hook_name(v.hook) << "," << v.row << ",\"" << v.col << "\"," << std::setprecision(9)
          << v.estimate << "," << v.attribution << "," << v.atp_star << "," << v.exact << "," << v.ci95 << "\n";
      est.push_back(v.estimate);
      ex.push_back(v.exact);
      lab.push_back(hook_name(v.hook) + " " + v.row + ", " + v.col);
    }
    put("verified.csv", csv.str());
    put("verified_scatter.svg", figures["verified_scatter"] = svg_scatter("top " + std::to_string(R.verified.size()) + " by |" + R.verify_ranked_by +
                                                "|: estimate vs exact",
                                            est, ex, lab, R.verify_ranked_by, "exact activation patching"));
  }
  // report.html: one self-contained page, every figure inline (hover a cell for its value).
  put("report.html", report_html(R, figures));
  // results.json last: its presence marks a complete run.
  put("results.json", results_json(R));
  return written;
}

void print_batch_summary(std::ostream& os, const BatchSummary& s, MetricKind metric) {
  const size_t B = s.clean_prompts.size();
  os << "Clean prompts (left-padded):\n";
  for (size_t b = 0; b < B; ++b) os << "  [" << b << "] " << s.clean_padded[b] << "\n";
  os << "Corrupted prompts (left-padded):\n";
  for (size_t b = 0; b < B; ++b) os << "  [" << b << "] " << s.corrupted_padded[b] << "\n";
  os << "Answer token ids (answer, other):";
  for (size_t b = 0; b < B; ++b) os << " (" << s.answer[b] << ", " << s.other[b] << ")";
  os << "\n";
  auto tops = [&](const char* name, const std::vector<std::vector<TopToken>>& t) {
    os << "Top-3 tokens at the last position, " << name << ":\n";
    for (size_t b = 0; b < B; ++b) {
      os << "  [" << b << "]";
      for (const auto& x : t[b]) os << "  " << x.piece << " (" << x.id << ") " << fmt(x.logit, 3);
      os << "\n";
    }
  };
  tops("clean", s.clean_top);
  tops("corrupted", s.corrupted_top);
  os << "Clean logit diff: " << fmt(s.clean_ld) << "   per prompt:";
  for (float v : s.clean_ld_rows) os << " " << fmt(v, 3);
  os << "\nCorrupted logit diff: " << fmt(s.corrupted_ld) << "   per prompt:";
  for (float v : s.corrupted_ld_rows) os << " " << fmt(v, 3);
  os << "\n";
  if (metric != MetricKind::LogitDiff && !s.clean_m_rows.empty()) {  // --metric
    os << "Clean " << metric_name(metric) << ": " << fmt(s.clean_m) << "   per prompt:";
    for (float v : s.clean_m_rows) os << " " << fmt(v, 3);
    os << "\nCorrupted " << metric_name(metric) << ": " << fmt(s.corrupted_m) << "   per prompt:";
    for (float v : s.corrupted_m_rows) os << " " << fmt(v, 3);
    os << "\n";
  }
}

}  // namespace phi3
