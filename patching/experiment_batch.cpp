// One batch of run's work: its summary (prompts, top tokens, metric), its clean and
// corrupted forwards, a rank's share of its estimates and sweeps (compute_share), and its
// work units priced for splitting across ranks (batch_units, share_of).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "patching/attribution.h"
#include "patching/experiment_job.h"

namespace phi3 {

namespace {
std::vector<TopToken> top3(const Model& m, const float* logits) {
  const int V = m.cfg.vocab_size;
  std::vector<int> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + 3, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::vector<TopToken> out;
  for (int i = 0; i < 3; ++i) {
    int id = idx[i];
    out.push_back({id, m.tok.label(id), logits[id]});
  }
  return out;
}

std::string padded_text(const Model& m, const Batch& b, int row) {
  std::string s;
  for (int t = 0; t < b.T; ++t) {
    s += m.tok.label(b.tokens[size_t(row) * b.T + t]);
  }
  return s;
}

// TransformerLens name of a hook at layer l: "blocks.3.hook_resid_pre", "blocks.1.attn.hook_z".
std::string tl_name(Hook h, int l) {
  return "blocks." + std::to_string(l) + "." + hook_tl_name(h);
}

// "layer 2, head 1, position 5 ('5:▁is')" for a sweep target.
std::string target_str(Hook hook, const PatchSpec& t, const std::vector<std::string>& pos_labels) {
  std::string s = tl_name(hook, t.layer);
  if (t.head >= 0) s += (hook == Hook::MlpPost ? ", neuron " : ", head ") + std::to_string(t.head);
  if (!hook_all_pos(hook) && t.pos >= 0) {
    s += ", position " + std::to_string(t.pos);
    if (t.pos < static_cast<int>(pos_labels.size())) s += " ('" + pos_labels[t.pos] + "')";
  }
  return s;
}
}  // namespace

BatchSummary summarize_batch(Backend& be, const Model& m, const PairBatch& pb, const ForwardState& clean,
                             const ForwardState& corrupted, const MetricSpec* metric) {
  BatchSummary s;
  const int B = pb.clean.B, T = pb.clean.T, V = m.cfg.vocab_size;
  s.clean_prompts = pb.clean_prompts;
  s.corrupted_prompts = pb.corrupted_prompts;
  s.answer = pb.answer;
  s.other = pb.other;
  auto cl = last_logits(be, m, clean), co = last_logits(be, m, corrupted);
  for (int b = 0; b < B; ++b) {
    s.clean_padded.push_back(padded_text(m, pb.clean, b));
    s.corrupted_padded.push_back(padded_text(m, pb.corrupted, b));
    s.clean_tokens.emplace_back(pb.clean.tokens.begin() + size_t(b) * T, pb.clean.tokens.begin() + size_t(b + 1) * T);
    s.corrupted_tokens.emplace_back(pb.corrupted.tokens.begin() + size_t(b) * T,
                                    pb.corrupted.tokens.begin() + size_t(b + 1) * T);
    s.answer_piece.push_back(m.tok.label(pb.answer[b]));
    s.other_piece.push_back(m.tok.label(pb.other[b]));
    s.clean_top.push_back(top3(m, cl.data() + size_t(b) * V));
    s.corrupted_top.push_back(top3(m, co.data() + size_t(b) * V));
  }
  LogitDiff lc = logit_diff(be, m, clean, pb.answer, pb.other);
  LogitDiff lr = logit_diff(be, m, corrupted, pb.answer, pb.other);
  s.clean_ld = lc.mean;
  s.corrupted_ld = lr.mean;
  s.clean_ld_rows = lc.per_row;
  s.corrupted_ld_rows = lr.per_row;
  if (metric && metric->kind != MetricKind::LogitDiff) {
    const LogitDiff mc = metric_values(be, m, clean, *metric), mr = metric_values(be, m, corrupted, *metric);
    s.clean_m = mc.mean;
    s.corrupted_m = mr.mean;
    s.clean_m_rows = mc.per_row;
    s.corrupted_m_rows = mr.per_row;
  } else {
    s.clean_m = s.clean_ld;
    s.corrupted_m = s.corrupted_ld;
    s.clean_m_rows = s.clean_ld_rows;
    s.corrupted_m_rows = s.corrupted_ld_rows;
  }
  return s;
}

namespace experiment_detail {

Share whole_share(const Job& job) {
  Share s;
  for (size_t a = 0; a < job.accs.size(); ++a) s.act.push_back({0, job.n_targets[a]});
  return s;
}

Forwards run_forwards(const Job& job, int bi, RankWork& rw) {
  Forwards f{job.batch(bi), {}};
  job.stop_point();
  const auto t0 = Clock::now();
  ForwardOptions fo;
  fo.keep_mlp_post = job.neurons();
  fo.keep_pattern = job.needs_pattern();
  fo.checkpoint = job.checkpoint && !job.any_sweep();  // the sweep reads every layer's caches
  if (fo.checkpoint) fo.keep_pattern = false;
  fo.sweep_cache = job.any_sweep() && !job.any_estimate();  // no backward: what the sweep reads
  fo.cache_keep = job.cache_keep();
  if (job.any_sweep()) {
    // Two passes: identical rows of the two runs then sit at the same place in their GEMMs
    // and come out bitwise equal, which is what lets the sweep skip no-op patches.
    f.pair.clean = forward(job.be, job.m, f.pb.clean, fo);
    f.pair.corrupted = forward(job.be, job.m, f.pb.corrupted, fo);
  } else {
    f.pair = forward_pair(job.be, job.m, f.pb.clean, f.pb.corrupted, fo);  // estimates alone: one pass
  }
  if (job.opt.check_finite) {
    check_finite(job.be, job.m, f.clean(), "clean");
    check_finite(job.be, job.m, f.corrupted(), "corrupted");
  }
  rw.token_layer_evals += 2 * int64_t(f.pb.clean.B) * job.T * job.L;
  rw.seconds += since(t0);
  rw.forward_seconds += since(t0);
  return f;
}

// Computes this rank's share of batch bi from its forwards.
BatchResult compute_share(const Job& job, int bi, const Forwards& f, const Share& share, RankWork& rw) {
  const auto t_all = Clock::now();
  const ExperimentOptions& opt = job.opt;
  const PairBatch& pb = f.pb;
  const int B = pb.clean.B, T = job.T;
  BatchResult out;
  out.batch = bi;
  out.has_summary = true;
  const MetricSpec metric = make_metric_spec(job.be, job.m, opt.metric, pb.answer, pb.other, f.clean());
  const std::string mname = metric_name(opt.metric);
  out.summary = summarize_batch(job.be, job.m, pb, f.clean(), f.corrupted(), &metric);
  const BatchSummary& sum = out.summary;
  const double den = sum.clean_m - sum.corrupted_m;
  if (!(std::fabs(den) > 1e-6))
    throw Error("batch " + std::to_string(bi) + ": clean and corrupted " +
                (opt.metric == MetricKind::LogitDiff ? std::string("logit differences") : "values of --metric " + mname) +
                " are equal (" + std::to_string(sum.clean_m) + "), so the normalized metric is undefined");
  std::vector<std::string> pos_labels;
  for (int t = 0; t < T; ++t) pos_labels.push_back(std::to_string(t) + ":" + job.m.tok.label(pb.clean.tokens[t]));

  const ForwardState& base = opt.noising ? f.clean() : f.corrupted();
  const ForwardState& source = opt.noising ? f.corrupted() : f.clean();
  const float scale = static_cast<float>(1.0 / den);
  const std::string run_name = opt.noising ? "clean" : "corrupted";
  Gradients grads;
  std::vector<Hook> streamed_hooks;               // checkpointed forwards: AtP computed inside the backward
  std::vector<std::vector<std::vector<float>>> streamed;
  double backward_s = 0;
  if (job.has(Method::Attribution) && share.estimates) {
    const auto t0 = Clock::now();
    BackwardOptions bo;
    bo.keep_dmlp_post = job.neurons();
    const std::string check = "batch " + std::to_string(bi) + ", backward of the " + run_name + " run";
    if (base.checkpointed) {
      for (const auto& a : job.accs)
        if (a.method == Method::Attribution) streamed_hooks.push_back(a.hook);
      streamed = attribution_streamed(job.be, job.m, base, source, metric, scale, streamed_hooks, false, bo,
                                      opt.check_finite ? check : std::string());
    } else {
      grads = backward(job.be, job.m, base, metric, scale, bo);
      if (opt.check_finite) check_finite(job.be, job.m, grads, check.c_str());
    }
    job.stop_point();
    backward_s = since(t0);
    rw.token_layer_evals += 2 * int64_t(B) * T * job.L;
  }
  // AtP*: the L GradDrop backward passes serve every hook at once.
  std::vector<Hook> star_hooks;
  for (const auto& a : job.accs)
    if (a.method == Method::AtpStar) star_hooks.push_back(a.hook);
  std::vector<std::vector<float>> star;
  double star_s = 0;
  if (!star_hooks.empty() && share.estimates) {
    const auto t0 = Clock::now();
    job.log("  AtP*: " + std::to_string(job.L) + " backward passes (GradDrop at each layer)");
    star = atp_star(job.be, job.m, base, source, metric, scale, star_hooks);
    job.stop_point();
    star_s = since(t0);
    rw.token_layer_evals += 2 * int64_t(B) * T * job.L * job.L;
  }
  size_t star_k = 0;
  for (size_t ai = 0; ai < job.accs.size(); ++ai) {
    const AccSpec& a = job.accs[ai];
    job.stop_point();
    const auto t0 = Clock::now();
    std::vector<PatchSpec> targets = sweep_targets(a.hook, job.L, T, hook_heads(a.hook, job.m.cfg));
    if (!a.sweep()) {
      if (!share.estimates) continue;
      const bool is_star = a.method == Method::AtpStar;
      std::vector<float> v;
      if (is_star) {
        v = std::move(star[star_k++]);
      } else if (base.checkpointed) {
        const size_t k = std::find(streamed_hooks.begin(), streamed_hooks.end(), a.hook) - streamed_hooks.begin();
        v = std::move(streamed.at(k).at(0));
      } else {
        v = attribution(job.be, job.m, base, source, grads, a.hook);
      }
      if (opt.check_finite)
        for (size_t i = 0; i < targets.size() && i < v.size(); ++i)
          if (!std::isfinite(v[i]))
            throw Error(std::string(is_star ? "AtP*" : "attribution patching") + ", batch " + std::to_string(bi) +
                        ": non-finite result (" + std::to_string(v[i]) + ") first appears at " +
                        target_str(a.hook, targets[i], pos_labels) + "; no results were written");
      ResultPart p;
      p.acc = static_cast<int>(ai);
      p.values = std::move(v);
      p.seconds = since(t0) + (is_star ? star_s / star_hooks.size() : backward_s);
      out.parts.push_back(std::move(p));
      continue;
    }
    const Range r = share.act[ai];
    if (r.size() <= 0) continue;
    SweepOptions so;
    so.naive = opt.naive;
    so.mem_budget = opt.mem_budget;
    std::vector<int64_t> chosen;  // Verify: this rank's slice of the chosen targets
    if (a.restricted()) {
      chosen.assign(a.only.begin() + r.begin, a.only.begin() + r.end);
      so.only = &chosen;
    } else {
      so.first = r.begin;
      so.last = r.end;
    }
    const std::string what = hook_name(a.hook) + (a.method == Method::Verify ? " exact check" : " activation patching");
    so.progress = [&](int64_t done, int64_t total) {
      job.stop_point();
      if (opt.log && (done == total || done % std::max<int64_t>(1, total / 10) == 0))
        opt.log("  " + what + ": " + std::to_string(done) + "/" + std::to_string(total) + " runs");
    };
    SweepResult sr = activation_sweep(job.be, job.m, base, source, metric, a.hook, so);
    // Targets in this acc's numbering (the chosen list for Verify) and their sweep index.
    const int64_t n = job.n_targets[ai];
    std::vector<float> vals(size_t(n) * B, NAN);
    for (int64_t i = r.begin; i < r.end; ++i) {
      const int64_t t = a.restricted() ? a.only[i] : i;
      for (int b = 0; b < B; ++b) {
        const float ld = sr.ld[size_t(t) * B + b];
        if (opt.check_finite && !std::isfinite(ld))
          throw Error("activation patching, batch " + std::to_string(bi) + ": the patched run gave a non-finite " +
                      (opt.metric == MetricKind::LogitDiff ? std::string("logit difference") : "metric " + mname) + " (" + std::to_string(ld) + ") for prompt " + std::to_string(b) +
                      " when patching " + target_str(a.hook, targets[t], pos_labels) + "; no results were written");
        vals[size_t(i) * B + b] = ld;
      }
    }
    rw.token_layer_evals += sr.work.token_layer_evals;
    rw.sweep_token_layer_evals += sr.work.token_layer_evals;
    rw.patched_runs += sr.work.patched_runs;
    job.log("  " + what + ": " + std::to_string(sr.work.patched_runs) + " runs, " +
            std::to_string(sr.work.skipped_noop) + " no-op skipped, " + std::to_string(sr.work.seconds) + " s");
    ResultPart p;
    p.acc = static_cast<int>(ai);
    p.values = std::move(vals);
    p.first = r.begin;
    p.last = r.end;
    p.work = sr.work;
    p.seconds = since(t0);
    out.parts.push_back(std::move(p));
  }
  rw.seconds += since(t_all);
  return out;
}

// The work units of one batch (DESIGN §10), each with its token-layer evaluations: the
// estimates (backward passes) if any, then every sweep target in acc order
// (sweep_target_costs: 0 for a patch skipped as a no-op).
std::vector<int64_t> batch_units(const Job& job, const Forwards& f) {
  const ForwardState& base = job.opt.noising ? f.clean() : f.corrupted();
  const ForwardState& source = job.opt.noising ? f.corrupted() : f.clean();
  std::vector<int64_t> units;
  if (job.any_estimate()) units.push_back(job.estimate_cost(f.pb.clean.B));
  for (size_t a = 0; a < job.accs.size(); ++a) {
    if (!job.accs[a].sweep()) continue;
    std::vector<int64_t> c = sweep_target_costs(job.be, job.m, base, source, job.accs[a].hook, job.opt.naive);
    if (job.accs[a].restricted())
      for (int64_t t : job.accs[a].only) units.push_back(c[t]);
    else
      units.insert(units.end(), c.begin(), c.end());
  }
  return units;
}

// The share of a batch that units [lo, hi) of batch_units() make.
Share share_of(const Job& job, Range r) {
  Share s;
  int64_t off = 0;
  s.estimates = false;
  if (job.any_estimate()) {
    s.estimates = r.begin <= 0 && r.end > 0;
    off = 1;
  }
  for (size_t a = 0; a < job.accs.size(); ++a) {
    if (!job.accs[a].sweep()) {
      s.act.push_back({0, 0});
      continue;
    }
    const int64_t lo = off, hi = off + job.n_targets[a];
    s.act.push_back({std::clamp(r.begin, lo, hi) - lo, std::clamp(r.end, lo, hi) - lo});
    off = hi;
  }
  return s;
}

}  // namespace experiment_detail
}  // namespace phi3
