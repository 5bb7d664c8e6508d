#include "patching/verify_long.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "model/backward.h"
#include "model/model.h"
#include "patching/attribution.h"
#include "patching/sweep.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/safetensors.h"

namespace phi3 {

namespace {

Batch one_row(const std::vector<int>& ids_no_bos, int bos) {
  Batch b;
  b.B = 1;
  b.tokens.push_back(bos);
  for (int id : ids_no_bos) b.tokens.push_back(id);
  b.T = static_cast<int>(b.tokens.size());
  b.pad = {0};
  for (int t = 0; t < b.T; ++t) b.pos.push_back(t);
  return b;
}

TensorCheck compare(const std::string& kind, const std::string& name, const std::vector<float>& ours,
                    const std::vector<float>& ref, double tol, bool relative) {
  TensorCheck c;
  c.kind = kind;
  c.name = name;
  c.tol = tol;
  c.relative = relative;
  bool finite = ours.size() == ref.size();
  for (size_t i = 0; i < std::min(ours.size(), ref.size()); ++i) {
    if (!std::isfinite(ours[i])) finite = false;
    c.max_abs = std::max(c.max_abs, std::fabs(double(ours[i]) - double(ref[i])));
    c.max_ref = std::max(c.max_ref, std::fabs(double(ref[i])));
  }
  if (!finite) c.max_abs = INFINITY;  // a size mismatch or NaN fails
  c.ok = finite && c.err() <= tol;
  return c;
}

}  // namespace

bool is_long_reference(const std::string& ref_dir) { return file_exists(path_join(ref_dir, "long_reference.json")); }

VerifyResult verify_long_reference(Backend& be, const std::string& ref_dir, const VerifyOptions& opt,
                                   const LongReferenceTolerances& tol_in) {
  auto log = [&](const std::string& s) {
    if (opt.log) opt.log(s);
  };
  // Bounds looser than VerifyOptions' defaults (bf16 on CUDA) widen the fp32 ones.
  const VerifyOptions d;
  auto looser = [](double x, double dflt) { return x > dflt ? x : 0.0; };
  LongReferenceTolerances tol = tol_in;
  tol.logits = std::max(tol.logits, looser(opt.act_tol, d.act_tol));
  tol.logit_diff = std::max(tol.logit_diff, looser(opt.act_tol, d.act_tol));
  tol.gradient = std::max(tol.gradient, looser(opt.grad_tol, d.grad_tol));
  tol.attribution = std::max(tol.attribution, looser(opt.patch_attr_tol, d.patch_attr_tol));
  tol.exact = std::max(tol.exact, looser(opt.patch_act_tol, d.patch_act_tol));
  VerifyResult res;
  res.reference_dir = ref_dir;
  res.model_dir = path_join(ref_dir, "model");
  const std::string json_path = path_join(ref_dir, "long_reference.json");
  nlohmann::json info, pairs;
  try {
    info = nlohmann::json::parse(read_text_file(json_path, "reference"));
    pairs = nlohmann::json::parse(read_text_file(path_join(ref_dir, "pairs.json"), "reference pairs"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ref_dir + ": long_reference.json or pairs.json is not valid JSON: " + e.what());
  }
  const auto m = load_model(be, res.model_dir);
  const SafeTensors st = SafeTensors::open_file(path_join(ref_dir, "long_reference.safetensors"));
  auto ref = [&](const std::string& name) { return st.to_f32(name); };
  Batch clean, corrupted;
  std::vector<int32_t> answer, other;
  double ld_clean = 0, ld_corrupted = 0;
  std::vector<int> pos;
  try {
    clean = one_row(pairs.at(0).at("clean").at("ids").get<std::vector<int>>(), m->cfg.bos_token_id);
    corrupted = one_row(pairs.at(0).at("corrupted").at("ids").get<std::vector<int>>(), m->cfg.bos_token_id);
    answer = {info.at("answer").get<int32_t>()};
    other = {info.at("other").get<int32_t>()};
    ld_clean = info.at("ld_clean").get<double>();
    ld_corrupted = info.at("ld_corrupted").get<double>();
    pos = info.at("checked_positions").get<std::vector<int>>();
    if (clean.T != info.at("T").get<int>() || corrupted.T != clean.T)
      throw Error(json_path + ": T " + info.at("T").dump() + " is not the length of pairs.json's prompts with BOS (" +
                  std::to_string(clean.T) + ")");
  } catch (const nlohmann::json::exception& e) {
    throw Error(json_path + ": " + e.what() + " (regenerate with python3 tools/make_long_reference.py)");
  }
  const float scale = static_cast<float>(1.0 / (ld_clean - ld_corrupted));
  const int L = m->cfg.num_hidden_layers, T = clean.T, D = m->cfg.hidden_size;

  // ---- logits, logit differences, d metric / d resid_pre ----------------------------------
  const ForwardState c = forward(be, *m, clean), r = forward(be, *m, corrupted);
  log("forward passes done (T = " + std::to_string(T) + ")");
  res.checks.push_back(compare("logits", "logits.clean (last position)", last_logits(be, *m, c), ref("logits_clean"),
                               tol.logits, true));
  res.checks.push_back(compare("logits", "logits.corrupted (last position)", last_logits(be, *m, r),
                               ref("logits_corrupted"), tol.logits, true));
  for (const auto& [name, st_run, want] : {std::tuple<const char*, const ForwardState*, double>{"clean", &c, ld_clean},
                                           {"corrupted", &r, ld_corrupted}}) {
    const float got = logit_diff(be, *m, *st_run, answer, other).mean;
    res.checks.push_back(compare("logit_diff", std::string("logit difference, ") + name, {got},
                                 {static_cast<float>(want)}, tol.logit_diff, false));
  }
  const Gradients g = backward(be, *m, r, answer, other, scale);
  std::vector<float> grads;
  for (int l = 0; l < L; ++l) {
    const std::vector<float> gl =
        g.gradient(be, *m, 1, T, "blocks." + std::to_string(l) + ".hook_resid_pre").download(be);
    grads.insert(grads.end(), gl.begin(), gl.end());
  }
  res.checks.push_back(compare("gradient", "grad.hook_resid_pre (every layer and position, " + std::to_string(D) +
                                               " wide)",
                               grads, ref("grad_resid_pre"), tol.gradient, true));
  log("gradients done");
  if (!opt.patching) return res;

  // ---- AtP of four hooks: the full pass, and the checkpointed pass (the same bits) ----------
  ForwardOptions ck;
  ck.checkpoint = true;
  const ForwardState cc = forward(be, *m, clean, ck), rc = forward(be, *m, corrupted, ck);
  const std::vector<Hook> hooks = {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut, Hook::Z};
  const auto streamed = attribution_streamed(be, *m, rc, cc, answer, other, scale, hooks, false, {}, "long reference");
  for (size_t k = 0; k < hooks.size(); ++k) {
    const std::vector<float> full = attribution(be, *m, r, c, g, hooks[k]);
    res.checks.push_back(compare("attribution_patching", hook_name(hooks[k]) + " AtP", full,
                                 ref("atp_" + hook_name(hooks[k])), tol.attribution, true));
    // The checkpointed (long-prompt) pass streams the attribution through its backward: the
    // full pass's bits.
    res.checks.push_back(compare("checkpoint_consistency", hook_name(hooks[k]) + " AtP, checkpointed vs full pass",
                                 streamed.at(k).at(0), full, 0.0, false));
  }
  log("attribution done");

  // ---- exact patching of resid_pre at the checked positions alone ---------------------------
  const std::vector<PatchSpec> targets = sweep_targets(Hook::ResidPre, L, T, 1);
  std::vector<int64_t> only;
  for (size_t i = 0; i < targets.size(); ++i)
    for (int p : pos)
      if (targets[i].pos == p) only.push_back(static_cast<int64_t>(i));
  ForwardOptions cache;
  cache.sweep_cache = true;
  cache.cache_keep = sweep_cache_keep({Hook::ResidPre});
  const ForwardState sc = forward(be, *m, clean, cache), sr_ = forward(be, *m, corrupted, cache);
  SweepOptions so;
  so.only = &only;
  so.naive = opt.naive;
  const SweepResult sr = activation_sweep(be, *m, sr_, sc, answer, other, Hook::ResidPre, so);
  std::vector<float> got;
  for (int l = 0; l < L; ++l)
    for (int p : pos) got.push_back(static_cast<float>((sr.ld[size_t(l) * T + p] - ld_corrupted) * scale));
  res.checks.push_back(compare("activation_patching",
                               "resid_pre exact patching at " + std::to_string(pos.size()) + " positions x " +
                                   std::to_string(L) + " layers (normalised)",
                               got, ref("exact_resid_pre"), tol.exact, false));
  log("exact patching done");
  return res;
}

}  // namespace phi3
