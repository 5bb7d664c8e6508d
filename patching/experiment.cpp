#include "patching/experiment.h"
#include "patching/memory_plan.h"
#include "patching/positions.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>

#include "patching/attribution.h"
#include "patching/batch_result.h"
#include "patching/checkpoint.h"
#include "patching/report.h"
#include "patching/work_split.h"
#include "runtime/error.h"

namespace phi3 {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

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

std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
    double avg = 0.5 * (double(i) + double(j)) + 1.0;  // ties share the mean rank
    for (size_t k = i; k <= j; ++k) r[idx[k]] = avg;
    i = j + 1;
  }
  return r;
}

// Row and column labels of a hook's result matrix.
void labels(Hook hook, int L, int H, const std::vector<std::string>& pos, std::vector<std::string>& rows,
            std::vector<std::string>& cols) {
  rows.clear();
  cols.clear();
  if (hook_is_per_head(hook) && !hook_all_pos(hook)) {
    const char* unit = hook == Hook::MlpPost ? "N" : "H";  // neurons or heads
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) rows.push_back("L" + std::to_string(l) + unit + std::to_string(h));
    cols = pos;
  } else if (hook_all_pos(hook)) {
    for (int l = 0; l < L; ++l) rows.push_back("L" + std::to_string(l));
    for (int h = 0; h < H; ++h) cols.push_back("H" + std::to_string(h));
  } else {
    for (int l = 0; l < L; ++l) rows.push_back("L" + std::to_string(l));
    cols = pos;
  }
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

// Target index (sweep_targets order) -> flat index of the [rows, cols] matrix.
size_t matrix_index(Hook hook, const PatchSpec& t, int T, int H) {
  if (hook_all_pos(hook)) return size_t(t.layer) * H + t.head;
  if (hook_is_per_head(hook)) return (size_t(t.layer) * H + t.head) * T + t.pos;
  return size_t(t.layer) * T + t.pos;
}
}  // namespace

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = std::min(a.size(), b.size());
  if (n < 2) return NAN;
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) {
    ma += a[i];
    mb += b[i];
  }
  ma /= n;
  mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  if (saa == 0 || sbb == 0) return NAN;
  return sab / std::sqrt(saa * sbb);
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) { return pearson(ranks(a), ranks(b)); }

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

namespace {

// One (hook, method) of the job.
enum class Method { Attribution, AtpStar, Activation, Verify };
const char* method_name(Method m) {
  switch (m) {
    case Method::Attribution: return "attribution";
    case Method::AtpStar: return "atp-star";
    case Method::Activation: return "activation";
    case Method::Verify: return "verified";
  }
  return "?";
}
struct AccSpec {
  Hook hook;
  Method method;
  // Verify: the chosen targets; Activation with --positions: the targets in the region
  // (sweep_targets indices, ascending; empty: every target). Matrix cells outside are NaN.
  std::vector<int64_t> only;
  bool sweep() const { return method == Method::Activation || method == Method::Verify; }
  bool restricted() const { return method == Method::Verify || !only.empty(); }
};

// What every rank knows about the job (one phase of it: the estimates and full sweeps, then
// the exact check of the --verify-top nodes).
struct Job {
  Backend& be;
  const Model& m;
  const ExperimentOptions& opt;
  std::vector<PromptPair> pairs;
  int T = 0, per_batch = 0, n_batches = 0, L = 0, H = 0;
  std::vector<AccSpec> accs;
  std::vector<int64_t> n_targets;  // per acc: targets of a sweep (0 for an estimate)
  std::vector<std::string> answers_cut;  // --answer-first-token
  std::vector<int> layers;  // --layers (ascending; empty: every layer)
  bool checkpoint = false;  // the estimates' forwards keep layer inputs only (memory_plan.h)
  std::string plan_note;    // what the memory plan chose (a progress line)

  bool has(Method x) const {
    return std::any_of(accs.begin(), accs.end(), [x](const AccSpec& a) { return a.method == x; });
  }
  bool any_estimate() const { return has(Method::Attribution) || has(Method::AtpStar); }
  bool any_sweep() const { return has(Method::Activation) || has(Method::Verify); }
  bool neurons() const {
    return std::any_of(accs.begin(), accs.end(), [](const AccSpec& a) { return a.hook == Hook::MlpPost; });
  }
  // The [B,H,T,T] patterns are kept only where they are used: a hook_pattern node (its values
  // patched or attributed) or AtP*'s QK fix (q/k hooks).
  // What the sweeps' hooks read of a sweep-cache forward.
  SweepCacheKeep cache_keep() const {
    std::vector<Hook> hs;
    for (const auto& a : accs)
      if (a.sweep()) hs.push_back(a.hook);
    return sweep_cache_keep(hs);
  }
  bool needs_pattern() const {
    return std::any_of(accs.begin(), accs.end(), [](const AccSpec& a) {
      const Hook b = hook_base(a.hook);
      return hook_is_pattern(a.hook) || (a.method == Method::AtpStar && (b == Hook::Q || b == Hook::K));
    });
  }
  // Token-layer evaluations of a batch's estimates: a backward costs about two forwards,
  // AtP* runs one per layer.
  int64_t estimate_cost(int B) const {
    return 2 * int64_t(B) * T * L * ((has(Method::Attribution) ? 1 : 0) + (has(Method::AtpStar) ? L : 0));
  }
  void set_targets() {
    n_targets.clear();
    for (const auto& a : accs)
      n_targets.push_back(a.restricted() ? static_cast<int64_t>(a.only.size())
                          : a.sweep() ? static_cast<int64_t>(sweep_targets(a.hook, L, T, hook_heads(a.hook, m.cfg)).size())
                                      : 0);
  }

  bool in_layers(int l) const { return layers.empty() || std::binary_search(layers.begin(), layers.end(), l); }
  int rows(int bi) const {  // prompts of batch bi (every pair both ways, or once with --no-mix)
    return (opt.mix ? 2 : 1) * static_cast<int>(std::min<size_t>(pairs.size(), size_t(bi + 1) * per_batch) - size_t(bi) * per_batch);
  }
  PairBatch batch(int bi) const {
    std::vector<PromptPair> sub(pairs.begin() + size_t(bi) * per_batch,
                                pairs.begin() + std::min<size_t>(pairs.size(), size_t(bi + 1) * per_batch));
    return make_pair_batch(sub, m.tok, m.cfg.pad_token_id, m.cfg.max_position_embeddings, T, opt.add_bos, opt.mix);
  }
  void stop_point() const {
    if (opt.should_stop && opt.should_stop()) throw Error("interrupted (Ctrl-C); no results were written");
  }
  void log(const std::string& s) const {
    if (opt.log) opt.log(s);
  }
};

// This rank's share of one batch: the estimates (whole) and a target range per sweep acc
// (Verify: a range of its chosen list).
struct Share {
  bool estimates = true;
  std::vector<Range> act;  // per acc
};
Share whole_share(const Job& job) {
  Share s;
  for (size_t a = 0; a < job.accs.size(); ++a) s.act.push_back({0, job.n_targets[a]});
  return s;
}

// The clean and corrupted forwards of a batch, checked.
struct Forwards {
  PairBatch pb;
  PairForward pair;  // clean and corrupted (one 2B-row pass when no sweep runs)
  const ForwardState& clean() const { return pair.clean; }
  const ForwardState& corrupted() const { return pair.corrupted; }
};
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

// Runs fn; returns "" or the error it threw, with its exit code (3: out of memory, 130:
// interrupted, 2: anything else).
template <typename Fn>
std::string attempt(const Job& job, int& code, Fn&& fn) {
  try {
    fn();
    return "";
  } catch (const OutOfMemory& e) {
    code = 3;
    return e.what();
  } catch (const std::bad_alloc&) {
    code = 3;
    return "out of host memory; lower --mem-budget or --batch, or use a smaller model";
  } catch (const std::exception& e) {
    code = job.opt.should_stop && job.opt.should_stop() ? 130 : 2;
    return e.what();
  }
}

// attempt(fn), then every rank agrees on how it went (the error and its exit code: code is read
// after fn ran, which comm.agree(attempt(...), code) did not guarantee).
template <typename Fn>
void agree_attempt(Comm& comm, const Job& job, int& code, Fn&& fn) {
  const std::string err = attempt(job, code, std::forward<Fn>(fn));
  comm.agree(err, code);
}

// The prompts, logit differences and position labels of the batches (in batch order).
void aggregate_batches(const Job& job, const std::map<int, BatchResult>& done, ExperimentResult& R) {
  double clean_sum = 0, corr_sum = 0, clean_m_sum = 0, corr_m_sum = 0;
  for (const auto& [bi, r] : done) {
    const BatchSummary& sum = r.summary;
    const int B = static_cast<int>(sum.answer.size());
    if (R.position_labels.empty())
      for (int t = 0; t < job.T; ++t)
        R.position_labels.push_back(std::to_string(t) + ":" + job.m.tok.label(sum.clean_tokens[0][t]));
    clean_sum += sum.clean_ld * B;
    corr_sum += sum.corrupted_ld * B;
    clean_m_sum += sum.clean_m * B;
    corr_m_sum += sum.corrupted_m * B;
    R.n_prompts += B;
    R.batches.push_back(sum);
  }
  R.clean_ld = clean_sum / R.n_prompts;
  R.corrupted_ld = corr_sum / R.n_prompts;
  R.metric = job.opt.metric;
  R.clean_m = clean_m_sum / R.n_prompts;
  R.corrupted_m = corr_m_sum / R.n_prompts;
}

// Averages the batches' parts into one matrix per acc, appended to R.results (in batch
// order, the same arithmetic whatever the number of ranks). Estimates are per-batch means,
// weighted by rows; exact results are per-prompt logit differences.
void aggregate_results(const Job& job, const std::map<int, BatchResult>& done, ExperimentResult& R) {
  struct Acc {
    std::vector<double> sum;
    std::vector<std::vector<float>> per_prompt_ld, per_prompt;
    SweepWork work;
    double seconds = 0;
  };
  std::vector<Acc> accs(job.accs.size());
  const int T = job.T, L = job.L;
  int n_prompts = 0;
  for (const auto& [bi, r] : done) {
    const BatchSummary& sum = r.summary;
    const int B = static_cast<int>(sum.answer.size());
    const double den = sum.clean_m - sum.corrupted_m;
    n_prompts += B;
    for (const ResultPart& p : r.parts) {
      const AccSpec& spec = job.accs[p.acc];
      Acc& a = accs[p.acc];
      const int Hh = hook_heads(spec.hook, job.m.cfg);
      std::vector<PatchSpec> targets = sweep_targets(spec.hook, L, T, Hh);
      const size_t cells = targets.size();
      if (a.sum.empty()) {
        a.sum.assign(cells, spec.restricted() ? NAN : 0.0);
        if (spec.sweep()) {
          a.per_prompt_ld.assign(cells, {});
          a.per_prompt.assign(cells, {});
        }
      }
      a.seconds += p.seconds;
      if (!spec.sweep()) {
        for (size_t i = 0; i < cells; ++i) a.sum[matrix_index(spec.hook, targets[i], T, Hh)] += double(p.values[i]) * B;
        if (!job.layers.empty())  // --layers: the other layers' rows are NaN, as a sweep's
          for (size_t i = 0; i < cells; ++i)
            if (!job.in_layers(targets[i].layer)) a.sum[matrix_index(spec.hook, targets[i], T, Hh)] = NAN;
        continue;
      }
      const size_t n = static_cast<size_t>(job.n_targets[p.acc]);
      for (size_t i = 0; i < n; ++i) {
        const size_t t = spec.restricted() ? static_cast<size_t>(spec.only[i]) : i;
        const size_t k = matrix_index(spec.hook, targets[t], T, Hh);
        double mean = 0;
        for (int b = 0; b < B; ++b) {
          const float ld = p.values[i * B + b];
          mean += ld;
          a.per_prompt_ld[k].push_back(ld);
          const double d = sum.clean_m_rows[b] - sum.corrupted_m_rows[b];
          a.per_prompt[k].push_back(static_cast<float>((ld - sum.corrupted_m_rows[b]) / d));
        }
        mean /= B;
        if (std::isnan(a.sum[k])) a.sum[k] = 0;
        a.sum[k] += (mean - sum.corrupted_m) / den * B;
      }
      a.work.fast = p.work.fast;
      a.work += p.work;
    }
  }
  for (size_t i = 0; i < accs.size(); ++i) {
    MatrixResult mr;
    mr.hook = job.accs[i].hook;
    mr.method = method_name(job.accs[i].method);
    labels(mr.hook, L, hook_heads(mr.hook, job.m.cfg), R.position_labels, mr.rows, mr.cols);
    mr.values = accs[i].sum;
    for (auto& v : mr.values) v /= n_prompts;
    mr.per_prompt_ld = std::move(accs[i].per_prompt_ld);
    mr.per_prompt = std::move(accs[i].per_prompt);
    mr.work = accs[i].work;
    mr.seconds = accs[i].seconds;
    R.results.push_back(std::move(mr));
  }
}

const MatrixResult* find_result(const ExperimentResult& R, Hook h, const std::string& method) {
  for (const auto& r : R.results)
    if (r.hook == h && r.method == method) return &r;
  return nullptr;
}

// The indices of the k largest |v| (NaN last), ties in index order.
std::vector<size_t> top_abs(const std::vector<double>& v, size_t k) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto mag = [&](size_t i) { return std::isfinite(v[i]) ? std::fabs(v[i]) : -1.0; };
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return mag(a) > mag(b); });
  idx.resize(std::min(k, idx.size()));
  return idx;
}

// Attribution vs exact per hook, and how well each estimate ranks the nodes: over the nodes
// the exact sweep patched (all of them, or those at --positions).
void compare_estimates(const Job& job, ExperimentResult& R) {
  for (Hook h : job.opt.hooks) {
    const MatrixResult* ac = find_result(R, h, "activation");
    if (!ac) continue;
    std::vector<size_t> cells;  // the swept nodes
    for (size_t i = 0; i < ac->values.size(); ++i)
      if (std::isfinite(ac->values[i])) cells.push_back(i);
    auto pick = [&](const std::vector<double>& v) {
      std::vector<double> out;
      for (size_t i : cells) out.push_back(v[i]);
      return out;
    };
    const std::vector<double> exact = pick(ac->values);
    const MatrixResult* at = find_result(R, h, "attribution");
    if (at) R.comparisons.push_back({h, pearson(pick(at->values), exact), spearman(pick(at->values), exact)});
    std::vector<double> exact_abs;
    for (double v : exact) exact_abs.push_back(std::fabs(v));
    const std::vector<size_t> top10 = top_abs(exact, 10);
    for (const char* method : {"attribution", "atp-star"}) {
      const MatrixResult* e = find_result(R, h, method);
      if (!e) continue;
      EstimateQuality q;
      q.hook = h;
      q.method = method;
      const std::vector<double> est = pick(e->values);
      q.nodes = static_cast<int>(est.size());
      std::vector<double> est_abs;
      for (double v : est) est_abs.push_back(std::fabs(v));
      q.pearson_abs = pearson(est_abs, exact_abs);
      q.spearman_abs = spearman(est_abs, exact_abs);
      if (q.nodes > 20) {
        const std::vector<size_t> top20 = top_abs(est, 20);
        int hit = 0;
        for (size_t i : top10) hit += std::count(top20.begin(), top20.end(), i) > 0;
        q.recall_10_in_20 = hit / 10.0;
      }
      R.quality.push_back(q);
    }
  }
}

// --verify-top: the K nodes (over all hooks) with the largest |estimate|, as a Verify acc
// per hook (targets in sweep order). Rank 0 only (it holds the aggregated estimates).
std::vector<AccSpec> choose_verify(const Job& job, const ExperimentResult& R, const std::string& by) {
  struct Node {
    double mag;
    size_t hook, target;
  };
  std::vector<Node> nodes;
  for (size_t hi = 0; hi < job.opt.hooks.size(); ++hi) {
    const Hook h = job.opt.hooks[hi];
    const MatrixResult* e = find_result(R, h, by);
    const int Hh = hook_heads(h, job.m.cfg);
    const std::vector<PatchSpec> targets = sweep_targets(h, job.L, job.T, Hh);
    for (size_t t = 0; t < targets.size(); ++t) {
      if (!job.in_layers(targets[t].layer)) continue;  // --layers
      const double v = e->values[matrix_index(h, targets[t], job.T, Hh)];
      nodes.push_back({std::isfinite(v) ? std::fabs(v) : -1.0, hi, t});
    }
  }
  std::stable_sort(nodes.begin(), nodes.end(), [](const Node& a, const Node& b) { return a.mag > b.mag; });
  nodes.resize(std::min<size_t>(nodes.size(), static_cast<size_t>(job.opt.verify_top)));
  std::vector<AccSpec> accs;
  for (size_t hi = 0; hi < job.opt.hooks.size(); ++hi) {
    AccSpec a{job.opt.hooks[hi], Method::Verify, {}};
    for (const Node& n : nodes)
      if (n.hook == hi) a.only.push_back(static_cast<int64_t>(n.target));
    std::sort(a.only.begin(), a.only.end());
    if (!a.only.empty()) accs.push_back(std::move(a));
  }
  return accs;
}

// The verified nodes, ranked by |estimate|.
void list_verified(const Job& job, ExperimentResult& R) {
  for (const AccSpec& a : job.accs) {
    const MatrixResult* ex = find_result(R, a.hook, "verified");
    const MatrixResult* est = find_result(R, a.hook, R.verify_ranked_by);
    const MatrixResult* at = find_result(R, a.hook, "attribution");
    const MatrixResult* st = find_result(R, a.hook, "atp-star");
    const int Hh = hook_heads(a.hook, job.m.cfg);
    const std::vector<PatchSpec> targets = sweep_targets(a.hook, job.L, job.T, Hh);
    const size_t nc = ex->cols.size();
    for (int64_t t : a.only) {
      const size_t k = matrix_index(a.hook, targets[t], job.T, Hh);
      VerifiedNode v;
      v.hook = a.hook;
      v.row = ex->rows[k / nc];
      v.col = ex->cols[k % nc];
      v.estimate = est->values[k];
      if (at) v.attribution = at->values[k];
      if (st) v.atp_star = st->values[k];
      v.exact = ex->values[k];
      v.ci95 = spread(ex->per_prompt[k]).ci95;
      R.verified.push_back(v);
    }
  }
  std::stable_sort(R.verified.begin(), R.verified.end(), [](const VerifiedNode& a, const VerifiedNode& b) {
    return std::fabs(a.estimate) > std::fabs(b.estimate);
  });
  for (size_t i = 0; i < R.verified.size(); ++i) R.verified[i].rank = static_cast<int>(i) + 1;
}

// The attention patterns of the three heads with the largest total |effect| in the first
// pattern hook's matrix (exact if it ran, else the estimate), on the first prompt of the first
// batch: one more forward of that batch (rank 0).
void pattern_figures(const Job& job, ExperimentResult& R) {
  Hook hook = Hook::Pattern;
  const MatrixResult* mr = nullptr;
  for (Hook h : job.opt.hooks) {
    if (!hook_is_pattern(h) || mr) continue;
    for (const char* method : {"activation", "verified", "attribution", "atp-star"})
      if (!mr && (mr = find_result(R, h, method))) hook = h;
  }
  if (!mr) return;
  const int L = job.L, H = job.H, T = job.T;
  std::vector<double> score(size_t(L) * H, 0.0);
  const size_t nc = mr->cols.size();
  for (size_t i = 0; i < mr->values.size(); ++i) {
    const double v = std::isfinite(mr->values[i]) ? std::fabs(mr->values[i]) : 0.0;
    score[hook_all_pos(hook) ? i : i / nc] += v;  // rows L<l>H<h> by positions, or L<l> by heads
  }
  const std::vector<size_t> top = top_abs(score, 3);
  const PairBatch pb = job.batch(0);
  ForwardOptions fo;
  fo.keep_pattern = true;
  const ForwardState clean = forward(job.be, job.m, pb.clean, fo), corrupted = forward(job.be, job.m, pb.corrupted, fo);
  auto labels_of = [&](const Batch& b) {
    std::vector<std::string> out;
    for (int t = 0; t < T; ++t) out.push_back(std::to_string(t) + ":" + job.m.tok.label(b.tokens[t]));
    return out;
  };
  for (size_t k : top) {
    PatternFigure f;
    f.hook = hook;
    f.layer = static_cast<int>(k) / H;
    f.head = static_cast<int>(k) % H;
    f.ranked_by = mr->method;
    f.clean_tokens = labels_of(pb.clean);
    f.corrupted_tokens = labels_of(pb.corrupted);
    for (const auto* st : {&clean, &corrupted}) {
      std::vector<float> rows(size_t(T) * T);  // batch row 0, head h
      job.be.download(rows.data(), st->hook_data(Hook::Pattern, f.layer) + size_t(f.head) * T * T,
                      rows.size() * sizeof(float));
      (st == &clean ? f.clean : f.corrupted) = std::move(rows);
    }
    R.pattern_figures.push_back(std::move(f));
  }
}

std::string fmt_seconds(double s) {
  char buf[32];
  if (s < 90) std::snprintf(buf, sizeof buf, "%.0f s", s);
  else if (s < 5400) std::snprintf(buf, sizeof buf, "%.0f min %02.0f s", std::floor(s / 60), std::fmod(s, 60));
  else std::snprintf(buf, sizeof buf, "%.1f h", s / 3600);
  return buf;
}

// Computes every batch of one phase of the job (on every rank), resuming from the
// checkpoints in ckpt when asked; the results are complete in `done` on rank 0. Returns the
// number of batches taken from checkpoints.
int run_batches(Job& job, Comm& comm, CheckpointDir* ckpt, const nlohmann::json& fp, std::map<int, BatchResult>& done,
                RankWork& rw, int& code) {
  const ExperimentOptions& opt = job.opt;
  const int N = comm.size(), rank = comm.rank();
  // ---- finished batches (rank 0 reads the checkpoints, every rank learns which) -------------
  std::string finished;
  agree_attempt(comm, job, code, [&] {
    if (!comm.root() || !ckpt) return;
    if (opt.resume) done = ckpt->load(fp);
    else ckpt->clear();
    nlohmann::json list = nlohmann::json::array();
    for (const auto& [bi, r] : done) {
      if (bi >= job.n_batches) throw Error("checkpoint of batch " + std::to_string(bi) + " is outside this run");
      list.push_back(bi);
    }
    finished = list.dump();
  });
  std::vector<char> is_done(job.n_batches, 0);
  if (ckpt) {
    for (const auto& v : nlohmann::json::parse(comm.bcast(comm.root() ? finished : std::string())))
      is_done[v.get<int>()] = 1;
  }
  std::vector<int> todo;
  for (int b = 0; b < job.n_batches; ++b)
    if (!is_done[b]) todo.push_back(b);
  const int resumed = job.n_batches - static_cast<int>(todo.size());
  if (resumed > 0)
    job.log("resuming: " + std::to_string(resumed) + " of " + std::to_string(job.n_batches) +
            " batches are finished in " + ckpt->dir());

  // ---- rounds: N batches (one per rank), then the rest one at a time, split across ranks ----
  const auto t_compute = Clock::now();
  int64_t runs_done = 0;
  int batches_done = 0;
  int64_t targets_per_batch = 0;
  for (int64_t n : job.n_targets) targets_per_batch += n;
  auto finish_round = [&](const std::vector<std::string>& payloads, const std::vector<int>& batches) {
    // rank 0: merge, checkpoint, report progress
    if (!comm.root()) return;
    std::map<int, std::vector<BatchResult>> pieces;
    for (const auto& s : payloads) {
      if (s.empty()) continue;
      for (const auto& j : nlohmann::json::parse(s)) {
        BatchResult r = batch_result_from_json(j);
        pieces[r.batch].push_back(std::move(r));
      }
    }
    for (int bi : batches) {
      BatchResult merged = merge_parts(std::move(pieces[bi]), static_cast<int>(job.accs.size()), job.n_targets,
                                       job.rows(bi));
      for (const auto& p : merged.parts) runs_done += p.work.patched_runs;
      if (ckpt) ckpt->save(fp, merged);
      done[bi] = std::move(merged);
      ++batches_done;
    }
    const double el = since(t_compute);
    const int left = static_cast<int>(todo.size()) - batches_done;
    job.log("batches " + std::to_string(resumed + batches_done) + "/" + std::to_string(job.n_batches) +
            ", patch targets " + std::to_string(int64_t(resumed + batches_done) * targets_per_batch) + "/" +
            std::to_string(int64_t(job.n_batches) * targets_per_batch) + ", " + std::to_string(runs_done) +
            " patched runs, " + std::to_string(static_cast<int64_t>(runs_done / std::max(el, 1e-9))) + " runs/s" +
            (left > 0 ? ", ETA " + fmt_seconds(el / batches_done * left) : std::string()));
  };

  // Each round deals min(N, left) batches to the ranks (rank r forwards batch r mod k and
  // prices its units), then cuts the round's units (batch after batch) into N contiguous
  // pieces of equal cost: a rank computes the parts of the one or two batches its piece
  // covers. So a dataset's batches are spread over the ranks, and one small batch (the seed's)
  // is still split across all of them. With one rank: whole batches, nothing priced.
  size_t next = 0;
  while (next < todo.size()) {
    const int k = static_cast<int>(std::min<size_t>(N, todo.size() - next));
    const std::vector<int> batches(todo.begin() + next, todo.begin() + next + k);
    next += k;
    Forwards own;  // this rank's dealt batch
    const int own_j = rank % k;
    std::string price;
    agree_attempt(comm, job, code, [&] {
      own = run_forwards(job, batches[own_j], rw);
      if (N > 1 && rank < k) price = nlohmann::json(batch_units(job, own)).dump();
    });
    // The round's units, batch by batch, and this rank's contiguous piece of them.
    std::vector<int64_t> units;
    std::vector<int64_t> start(k + 1, 0);
    if (N > 1) {
      const std::vector<std::string> prices = comm.allgather(price);
      for (int j = 0; j < k; ++j) {
        const std::vector<int64_t> u = nlohmann::json::parse(prices[j]).get<std::vector<int64_t>>();
        units.insert(units.end(), u.begin(), u.end());
        start[j + 1] = static_cast<int64_t>(units.size());
      }
    }
    const Range piece = N > 1 ? split_by_cost(units, N)[rank] : Range{0, 1};
    std::string payload;
    agree_attempt(comm, job, code, [&] {
      nlohmann::json out = nlohmann::json::array();
      for (int j = 0; j < k; ++j) {
        Share share;
        bool summary = true;
        if (N == 1) {
          share = whole_share(job);
        } else {
          const int64_t lo = std::max(piece.begin, start[j]), hi = std::min(piece.end, start[j + 1]);
          if (lo >= hi) continue;
          share = share_of(job, {lo - start[j], hi - start[j]});
          summary = lo == start[j];  // the rank holding a batch's first unit sends its summary
        }
        Forwards other;
        const Forwards& f = j == own_j ? own : (other = run_forwards(job, batches[j], rw));
        BatchResult r = compute_share(job, batches[j], f, share, rw);
        r.has_summary = summary;
        ++rw.batches;
        out.push_back(to_json(r));
      }
      payload = out.dump();
    });
    own = Forwards{};
    finish_round(comm.gather(payload), batches);
  }
  return resumed;
}

// Before any work: the estimates' peak memory (memory_plan.h) decides whether their forwards
// are checkpointed, and a batch whose forwards cannot be held for the exact sweep stops the
// run at once, with the sizes.
// Checks one batch size (pairs per batch) against the memory: the estimates' plan (checkpointed
// or not) and the sweep's two forwards; throws OutOfMemory with the sizes when it does not fit.
void plan_batch(Job& job, int per_batch) {
  const ExperimentOptions& opt = job.opt;
  const size_t device_free = job.be.free_memory();
  const std::vector<PromptPair> sub(job.pairs.begin(), job.pairs.begin() + std::min<size_t>(job.pairs.size(), per_batch));
  const PairBatch pb = make_pair_batch(sub, job.m.tok, job.m.cfg.pad_token_id, job.m.cfg.max_position_embeddings, job.T,
                                       opt.add_bos, opt.mix);
  const std::vector<PromptPair> first(job.pairs.begin(), job.pairs.begin() + 1);
  const PairBatch one = make_pair_batch(first, job.m.tok, job.m.cfg.pad_token_id, job.m.cfg.max_position_embeddings,
                                        job.T, opt.add_bos, opt.mix);
  if (job.any_estimate()) {
    EstimatesWork w;
    for (const auto& a : job.accs) {
      if (a.method == Method::Attribution) w.attribution_hooks.push_back(a.hook);
      if (a.method == Method::AtpStar) w.atp_star_hooks.push_back(a.hook);
    }
    w.neurons = job.neurons();
    w.pattern = job.needs_pattern();
    // Estimates alone can be checkpointed (and --mem-budget bounds them); beside an exact sweep
    // the forwards keep every layer (the sweep reads them), so the full pass must fit.
    const bool alone = !job.any_sweep();
    if (!alone && opt.recompute == "on")
      throw Error("--recompute on applies to estimates alone: the exact sweep (--method activation) reads every "
                  "layer's activations");
    const EstimatesPlan p = plan_estimates(job.be, job.m, pb, one, w, alone ? opt.recompute : "off",
                                           alone && opt.mem_budget ? opt.mem_budget : device_free);
    job.checkpoint = p.checkpoint;
    job.plan_note = p.checkpoint ? p.note : std::string();
  }
  if (job.any_sweep() || opt.verify_top > 0) {
    const bool g16 = job.be.gemm_in_bf16();
    // As run_forwards: a sweep beside estimates reads full passes, the --verify-top pass (or a
    // sweep alone) a sweep cache.
    const bool cache = !(job.any_sweep() && job.any_estimate());
    // The sweeps' hooks: this job's, or (--verify-top) every hook, any of which may be verified.
    const SweepCacheKeep keep = job.any_sweep() ? job.cache_keep() : sweep_cache_keep(opt.hooks);
    auto bytes = [&](const PairBatch& b) {
      return 2 * forward_arena_bytes(job.m, b.clean.B, b.clean.T, job.needs_pattern(), g16, job.neurons(), false, cache,
                                     keep);
    };
    if (bytes(pb) > device_free)
      throw OutOfMemory("exact patching holds both runs' activations of a batch of " + std::to_string(pb.clean.B) +
                        " prompts of " + std::to_string(pb.clean.T) + " tokens: " + std::to_string(bytes(pb) >> 20) +
                        " MiB, more than the " + std::to_string(device_free >> 20) + " MiB available (one pair: " +
                        std::to_string(bytes(one) >> 20) + " MiB, --batch 1); nothing was computed");
  }
}

// Before any work: the memory plan of the largest batch (plan_batch). Without --batch, a batch
// that does not fit is halved until one does (the run then has more batches; said so).
void plan_memory(Job& job) {
  for (;;) {
    try {
      plan_batch(job, job.per_batch);
      break;
    } catch (const OutOfMemory&) {
      if (job.opt.batch_pairs > 0 || job.per_batch <= 1) throw;
      job.per_batch = (job.per_batch + 1) / 2;
      job.n_batches = (static_cast<int>(job.pairs.size()) + job.per_batch - 1) / job.per_batch;
      job.log("memory plan: " + std::to_string(job.per_batch) + " pairs per batch (all of them at once would not fit)");
    }
  }
  if (!job.plan_note.empty()) job.log(job.plan_note);
}

}  // namespace

void check_methods(const ExperimentOptions& opt) {
  if (!opt.attribution && !opt.activation && !opt.atp_star) throw Error("--method: no method chosen");
  if (opt.verify_top < 0) throw Error("--verify-top: expected a positive number of nodes");
  if (opt.verify_top > 0 && opt.activation)
    throw Error("--verify-top with the activation method: exact patching of every node already runs; "
                "choose --method atp-star or attribution to verify only the top nodes");
  if (opt.verify_top > 0 && !opt.attribution && !opt.atp_star)
    throw Error("--verify-top needs an estimate to rank the nodes by (--method atp-star or attribution)");
  if (!opt.positions.empty() && !opt.activation)
    throw Error("--positions restricts the exact sweep: it needs --method activation (or both / all)");
}

ExperimentResult run_experiment(Backend& be, const Model& m, const ExperimentOptions& options, Comm& comm) {
  const auto t_all = Clock::now();
  ExperimentOptions opt = options;  // --verify-top's own choice of methods (auto_methods) may drop AtP*
  const int N = comm.size();
  Job job{be, m, opt, {}, 0, 0, 0, m.cfg.num_hidden_layers, m.cfg.num_attention_heads, {}, {}, {}, {}, false, {}};
  int code = 2;
  // ---- the job, identical on every rank ----------------------------------------------------
  std::vector<int> region;  // --positions: the exact sweep of each hook only there (all-position hooks: every target)
  agree_attempt(comm, job, code, [&] {
    ExperimentInputs in = check_experiment_inputs(m, opt);
    job.pairs = std::move(in.pairs);
    job.answers_cut = std::move(in.answers_cut);
    job.T = in.T;
    region = std::move(in.positions);
    job.layers = std::move(in.layers);
    job.per_batch = opt.batch_pairs > 0 ? opt.batch_pairs : static_cast<int>(job.pairs.size());
  });
  job.n_batches = (static_cast<int>(job.pairs.size()) + job.per_batch - 1) / job.per_batch;
  // --positions and --layers: the exact sweep of each hook only there (all-position hooks:
  // every target of the layers).
  auto build_accs = [&] {
    job.accs.clear();
    for (Hook h : opt.hooks) {
      if (opt.attribution) job.accs.push_back({h, Method::Attribution, {}});
      if (opt.atp_star) job.accs.push_back({h, Method::AtpStar, {}});
      if (opt.activation) {
        AccSpec a{h, Method::Activation, {}};
        const std::vector<PatchSpec> targets = sweep_targets(h, job.L, job.T, hook_heads(h, m.cfg));
        for (size_t t = 0; (!region.empty() || !job.layers.empty()) && t < targets.size(); ++t)
          if ((region.empty() || targets[t].pos < 0 || std::binary_search(region.begin(), region.end(), targets[t].pos)) &&
              job.in_layers(targets[t].layer))
            a.only.push_back(static_cast<int64_t>(t));
        job.accs.push_back(std::move(a));
      }
    }
    job.set_targets();
  };
  build_accs();
  if (opt.auto_methods && opt.verify_top > 0)
    job.log("--verify-top " + std::to_string(opt.verify_top) + " without --method: AtP* and AtP estimate every node" +
            (job.layers.empty() ? std::string() : " of --layers " + opt.layers) + ", the top " +
            std::to_string(opt.verify_top) + " by |AtP*| are patched exactly (no full sweep)");
  // --verify-top's own choice: AtP* where it can run, else AtP alone (rank 0 decides).
  auto drop_atp_star = [&] {
    opt.atp_star = false;
    build_accs();
  };
  bool star_dropped = false;
  std::string star_why;
  agree_attempt(comm, job, code, [&] {
    if (opt.auto_methods && opt.atp_star && opt.attribution) {
      const int per_batch = job.per_batch, n_batches = job.n_batches;
      try {
        plan_memory(job);
        return;
      } catch (const std::exception& e) {
        star_why = e.what();
        star_dropped = true;
        job.per_batch = per_batch;
        job.n_batches = n_batches;
        drop_atp_star();
      }
    }
    plan_memory(job);
  });
  if (opt.auto_methods && opt.verify_top > 0) {
    const bool dropped = comm.bcast(comm.root() ? std::string(star_dropped ? "1" : "0") : std::string()) == "1";
    if (dropped && !star_dropped) drop_atp_star();
    agree_attempt(comm, job, code, [&] {
      if (dropped || !star_dropped) return;
      opt.atp_star = true;  // this rank alone could not plan AtP*: rank 0's methods, planned again
      build_accs();
      plan_memory(job);
    });
    if (dropped) job.log("AtP* cannot run here (" + star_why + "); AtP ranks the nodes instead");
  }
  // Every rank runs the same batches: rank 0's plan (free memory can differ between ranks; the
  // checkpointing choice may differ, its results are the same bits).
  job.per_batch = std::stoi(comm.bcast(std::to_string(job.per_batch)));
  job.n_batches = (static_cast<int>(job.pairs.size()) + job.per_batch - 1) / job.per_batch;

  ExperimentResult R;
  R.model_dir = m.dir;
  R.architecture = m.cfg.architecture;
  R.family = m.cfg.family;
  R.pad_token_id = m.cfg.pad_token_id;
  R.pad_token_source = m.cfg.pad_token_source;
  R.device = be.name();
  R.pairs_file = opt.pairs_file;
  R.direction = opt.noising ? "noise" : "denoise";
  R.add_bos = opt.add_bos;
  R.answers_cut = job.answers_cut;
  R.T = job.T;
  R.exact_positions = region;
  R.exact_layers = job.layers;
  R.mix = opt.mix;
  R.world_size = N;
  if (N > 1)
    job.log(std::to_string(N) + " ranks: batches dealt to ranks, each round's patches split across them by cost");

  std::map<int, BatchResult> done;
  nlohmann::json fp;
  std::unique_ptr<CheckpointDir> ckpt, verify_ckpt;
  if (!opt.checkpoint_out.empty()) {
    ckpt = std::make_unique<CheckpointDir>(opt.checkpoint_out);
    verify_ckpt = std::make_unique<CheckpointDir>(opt.checkpoint_out, "checkpoints-verify");
    fp = job_fingerprint(opt, m, be, job.T, job.n_batches);
  }
  RankWork rw;
  rw.rank = comm.rank();
  R.resumed_batches = run_batches(job, comm, ckpt.get(), fp, done, rw, code);
  if (comm.root()) {
    aggregate_batches(job, done, R);
    aggregate_results(job, done, R);
  }

  // ---- --verify-top: exact patching of the best-ranked nodes, every batch again -------------
  if (opt.verify_top > 0) {
    R.verify_ranked_by = opt.atp_star ? "atp-star" : "attribution";
    Job verify = job;
    std::string chosen;
    if (comm.root()) {
      nlohmann::json list = nlohmann::json::array();
      for (const AccSpec& a : choose_verify(job, R, R.verify_ranked_by))
        list.push_back({{"hook", hook_name(a.hook)}, {"targets", a.only}});
      chosen = list.dump();
    }
    const std::string chosen_all = comm.bcast(chosen);
    verify.accs.clear();
    for (const auto& e : nlohmann::json::parse(chosen_all))
      verify.accs.push_back({parse_hook(e["hook"].get<std::string>()), Method::Verify,
                             e["targets"].get<std::vector<int64_t>>()});
    verify.set_targets();
    job.log("exact check of the top " + std::to_string(opt.verify_top) + " nodes by |" +
            (opt.atp_star ? "AtP*" : "AtP") + "|");
    nlohmann::json vfp = fp;
    if (ckpt) vfp["verify"] = nlohmann::json::parse(chosen_all);
    std::map<int, BatchResult> vdone;
    run_batches(verify, comm, verify_ckpt.get(), vfp, vdone, rw, code);
    if (comm.root()) {
      aggregate_results(verify, vdone, R);
      list_verified(verify, R);
    }
  }

  // ---- per-rank work, then the comparisons (rank 0) ------------------------------------------
  std::vector<std::string> all = comm.gather(to_json(rw).dump());
  if (!comm.root()) return R;
  for (const auto& s : all) {
    const RankWork w = rank_work_from_json(nlohmann::json::parse(s));
    R.ranks.push_back(w);
    R.forward_seconds += w.forward_seconds;
  }
  PHI3_CHECK(static_cast<int>(done.size()) == job.n_batches, "distributed run lost batches");
  compare_estimates(job, R);
  pattern_figures(job, R);
  R.wall_seconds = since(t_all);
  job.log("done in " + std::to_string(since(t_all)) + " s");
  return R;
}

}  // namespace phi3
