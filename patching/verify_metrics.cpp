#include "patching/verify_metrics.h"

#include <cmath>

#include "model/backward.h"
#include "model/metric.h"
#include "patching/attribution.h"
#include "patching/sweep.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/safetensors.h"

namespace phi3 {

namespace {

// ours vs ref (flattened, same order), relative to the larger of max |ref| and `floor`.
TensorCheck compare_values(const std::string& kind, const std::string& name, const std::vector<double>& ours,
                           const std::vector<double>& ref, double tol, double floor, bool relative = true) {
  TensorCheck tc;
  tc.kind = kind;
  tc.name = name;
  tc.tol = tol;
  tc.relative = relative;
  tc.scale_floor = floor;
  tc.ok = ours.size() == ref.size();
  for (size_t i = 0; i < ours.size() && tc.ok; ++i) {
    if (!std::isfinite(ours[i]) || !std::isfinite(ref[i])) tc.ok = false;
    tc.max_abs = std::max(tc.max_abs, std::fabs(ours[i] - ref[i]));
    tc.max_ref = std::max(tc.max_ref, std::fabs(ref[i]));
  }
  if (!tc.ok) tc.max_abs = INFINITY;
  tc.ok = tc.ok && tc.err() <= tol;
  return tc;
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

}  // namespace

void verify_metrics(Backend& be, const Model& m, const std::string& ref_dir, const ForwardState& clean,
                    const ForwardState& corrupted, const std::vector<int32_t>& answer,
                    const std::vector<int32_t>& other, const VerifyOptions& opt, VerifyResult& res) {
  const std::string path = path_join(ref_dir, "metrics.json");
  nlohmann::json J;
  try {
    J = nlohmann::json::parse(read_text_file(path, "metric reference"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  if (J.value("format_version", 0) != 1)
    throw Error(path + ": format_version is not 1; regenerate with python3 tools/make_reference.py --metrics-only");
  SafeTensors ref = SafeTensors::open_file(path_join(ref_dir, "metrics.safetensors"));
  const ModelConfig& c = m.cfg;
  const int B = corrupted.B, T = corrupted.T, L = c.num_hidden_layers;
  for (const auto& [name, E] : J.at("metrics").items()) {
    const MetricKind kind = parse_metric(name);
    const MetricSpec spec = make_metric_spec(be, m, kind, answer, other, clean);
    const LogitDiff mc = metric_values(be, m, clean, spec), mr = metric_values(be, m, corrupted, spec);
    // Values per prompt, clean then corrupted.
    std::vector<double> ours = to_double(mc.per_row), theirs = E.at("clean_per_prompt").get<std::vector<double>>();
    for (float x : mr.per_row) ours.push_back(x);
    for (double x : E.at("corrupted_per_prompt").get<std::vector<double>>()) theirs.push_back(x);
    res.checks.push_back(compare_values("metric_value", name + ": clean and corrupted values per prompt", ours, theirs,
                                        opt.act_tol, 0.0));
    const double gap = mc.mean - mr.mean;
    if (!(std::fabs(gap) > 0)) throw Error(path + ": " + name + ": clean and corrupted values are equal here");
    const float scale = static_cast<float>(1.0 / gap);
    // d M / d activation on the corrupted run.
    BackwardOptions bo;
    bo.keep_dpattern = true;
    const Gradients g = backward(be, m, corrupted, spec, scale, bo);
    for (const auto& hook : J.at("gradient_hooks").get<std::vector<std::string>>())
      for (int l = 0; l < L; ++l) {
        const std::string hn = "blocks." + std::to_string(l) + "." + hook, key = "grad." + name + "." + hn;
        if (!ref.has(key)) throw Error(ref_dir + ": metrics.safetensors lacks '" + key + "'");
        TensorView v = g.gradient(be, m, B, T, hn);
        TensorCheck tc = compare_rows("gradient", name + ": grad." + hn, v.download(be), ref.to_f32(key), B, T,
                                      static_cast<int>(v.row_width), corrupted.batch.pad, opt.grad_tol);
        res.checks.push_back(tc);
      }
    // Patching, normalised with our own clean / corrupted values.
    const nlohmann::json& P = E.at("patching");
    std::vector<Hook> star_hooks;
    for (const auto& [hn, e] : P.items())
      if (e.contains("atp_star")) star_hooks.push_back(parse_hook(hn));
    const auto star = atp_star(be, m, corrupted, clean, spec, scale, star_hooks);
    for (size_t k = 0; k < star_hooks.size(); ++k) {
      const std::string hn = hook_name(star_hooks[k]);
      res.checks.push_back(compare_values("attribution_patching", name + ": " + hn + " AtP*", to_double(star[k]),
                                          flatten(P[hn]["atp_star"]), opt.patch_attr_tol, 1e-2));
    }
    for (const auto& [hn, e] : P.items()) {
      const Hook h = parse_hook(hn);
      if (e.contains("attribution"))
        res.checks.push_back(compare_values("attribution_patching", name + ": " + hn + " attribution patching",
                                            to_double(attribution(be, m, corrupted, clean, g, h)),
                                            flatten(e["attribution"]), opt.patch_attr_tol, 1e-2));
      if (!e.contains("activation")) continue;
      SweepOptions so;
      so.naive = opt.naive;
      const SweepResult sr = activation_sweep(be, m, corrupted, clean, spec, h, so);
      std::vector<double> norm;
      for (size_t i = 0; i < sr.targets.size(); ++i) {
        double mean = 0;
        for (int b = 0; b < B; ++b) mean += sr.ld[i * B + b];
        norm.push_back((mean / B - mr.mean) / gap);
      }
      res.checks.push_back(compare_values("activation_patching",
                                          name + ": " + hn + " activation patching" + (opt.naive ? " (naive)" : " (fast)"),
                                          norm, flatten(e["activation"]), opt.patch_act_tol, 0.0, false));
    }
  }
}

}  // namespace phi3
