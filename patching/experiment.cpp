#include "patching/experiment.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>

#include "patching/attribution.h"
#include "patching/batch_result.h"
#include "patching/checkpoint.h"
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
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) rows.push_back("L" + std::to_string(l) + "H" + std::to_string(h));
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
  if (t.head >= 0) s += ", head " + std::to_string(t.head);
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
                             const ForwardState& corrupted) {
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
  return s;
}

namespace {

// One (hook, method) of the job.
struct AccSpec {
  Hook hook;
  bool activation;
};

// What every rank knows about the job.
struct Job {
  Backend& be;
  const Model& m;
  const ExperimentOptions& opt;
  std::vector<PromptPair> pairs;
  int T = 0, per_batch = 0, n_batches = 0, L = 0, H = 0;
  std::vector<AccSpec> accs;
  std::vector<int64_t> n_targets;  // per acc: activation targets (0 for attribution)

  bool any_attribution() const {
    return std::any_of(accs.begin(), accs.end(), [](const AccSpec& a) { return !a.activation; });
  }

  int rows(int bi) const {  // prompts of batch bi (every pair both ways)
    return 2 * static_cast<int>(std::min<size_t>(pairs.size(), size_t(bi + 1) * per_batch) - size_t(bi) * per_batch);
  }
  PairBatch batch(int bi) const {
    std::vector<PromptPair> sub(pairs.begin() + size_t(bi) * per_batch,
                                pairs.begin() + std::min<size_t>(pairs.size(), size_t(bi + 1) * per_batch));
    return make_pair_batch(sub, m.tok, m.cfg.pad_token_id, m.cfg.max_position_embeddings, T, opt.add_bos);
  }
  void stop_point() const {
    if (opt.should_stop && opt.should_stop()) throw Error("interrupted (Ctrl-C); no results were written");
  }
  void log(const std::string& s) const {
    if (opt.log) opt.log(s);
  }
};

// This rank's share of one batch: the attribution (whole) and a target range per activation acc.
struct Share {
  bool attribution = true;
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
  PairForward pair;  // clean and corrupted (one 2B-row pass when only attribution runs)
  const ForwardState& clean() const { return pair.clean; }
  const ForwardState& corrupted() const { return pair.corrupted; }
};
Forwards run_forwards(const Job& job, int bi, RankWork& rw) {
  Forwards f{job.batch(bi), {}};
  job.stop_point();
  const auto t0 = Clock::now();
  if (job.opt.activation) {
    // Two passes: identical rows of the two runs then sit at the same place in their GEMMs
    // and come out bitwise equal, which is what lets the sweep skip no-op patches.
    f.pair.clean = forward(job.be, job.m, f.pb.clean);
    f.pair.corrupted = forward(job.be, job.m, f.pb.corrupted);
  } else {
    f.pair = forward_pair(job.be, job.m, f.pb.clean, f.pb.corrupted);  // attribution alone: one pass
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
  out.summary = summarize_batch(job.be, job.m, pb, f.clean(), f.corrupted());
  const BatchSummary& sum = out.summary;
  const double den = sum.clean_ld - sum.corrupted_ld;
  if (!(std::fabs(den) > 1e-6))
    throw Error("batch " + std::to_string(bi) + ": clean and corrupted logit differences are equal (" +
                std::to_string(sum.clean_ld) + "), so the normalized metric is undefined");
  std::vector<std::string> pos_labels;
  for (int t = 0; t < T; ++t) pos_labels.push_back(std::to_string(t) + ":" + job.m.tok.label(pb.clean.tokens[t]));

  const ForwardState& base = opt.noising ? f.clean() : f.corrupted();
  const ForwardState& source = opt.noising ? f.corrupted() : f.clean();
  const float scale = static_cast<float>(1.0 / den);
  Gradients grads;
  double backward_s = 0;
  if (job.any_attribution() && share.attribution) {
    const auto t0 = Clock::now();
    grads = backward(job.be, job.m, base, pb.answer, pb.other, scale);
    if (opt.check_finite)
      check_finite(job.be, job.m, grads, (std::string("batch ") + std::to_string(bi) + ", backward of the " +
                                          (opt.noising ? "clean" : "corrupted") + " run").c_str());
    job.stop_point();
    backward_s = since(t0);
    rw.token_layer_evals += 2 * int64_t(B) * T * job.L;  // a backward costs about two forwards
  }
  for (size_t ai = 0; ai < job.accs.size(); ++ai) {
    const AccSpec& a = job.accs[ai];
    job.stop_point();
    const auto t0 = Clock::now();
    std::vector<PatchSpec> targets = sweep_targets(a.hook, job.L, T, hook_heads(a.hook, job.m.cfg));
    if (!a.activation) {
      if (!share.attribution) continue;
      std::vector<float> v = attribution(job.be, job.m, base, source, grads, a.hook);
      if (opt.check_finite)
        for (size_t i = 0; i < targets.size() && i < v.size(); ++i)
          if (!std::isfinite(v[i]))
            throw Error("attribution patching, batch " + std::to_string(bi) + ": non-finite result (" +
                        std::to_string(v[i]) + ") first appears at " + target_str(a.hook, targets[i], pos_labels) +
                        "; no results were written");
      ResultPart p;
      p.acc = static_cast<int>(ai);
      p.values = std::move(v);
      p.seconds = since(t0) + backward_s;
      out.parts.push_back(std::move(p));
      continue;
    }
    const Range r = share.act[ai];
    if (r.size() <= 0) continue;
    SweepOptions so;
    so.naive = opt.naive;
    so.mem_budget = opt.mem_budget;
    so.first = r.begin;
    so.last = r.end;
    const std::string what = hook_name(a.hook) + " activation patching";
    so.progress = [&](int64_t done, int64_t total) {
      job.stop_point();
      if (opt.log && (done == total || done % std::max<int64_t>(1, total / 10) == 0))
        opt.log("  " + what + ": " + std::to_string(done) + "/" + std::to_string(total) + " runs");
    };
    SweepResult sr = activation_sweep(job.be, job.m, base, source, pb.answer, pb.other, a.hook, so);
    if (opt.check_finite)
      for (int64_t i = r.begin; i < r.end; ++i)
        for (int b = 0; b < B; ++b)
          if (!std::isfinite(sr.ld[i * B + b]))
            throw Error("activation patching, batch " + std::to_string(bi) + ": the patched run gave a non-finite " +
                        "logit difference (" + std::to_string(sr.ld[i * B + b]) + ") for prompt " + std::to_string(b) +
                        " when patching " + target_str(a.hook, targets[i], pos_labels) + "; no results were written");
    rw.token_layer_evals += sr.work.token_layer_evals;
    rw.sweep_token_layer_evals += sr.work.token_layer_evals;
    rw.patched_runs += sr.work.patched_runs;
    job.log("  " + what + ": " + std::to_string(sr.work.patched_runs) + " runs, " +
            std::to_string(sr.work.skipped_noop) + " no-op skipped, " + std::to_string(sr.work.seconds) + " s");
    ResultPart p;
    p.acc = static_cast<int>(ai);
    p.values = std::move(sr.ld);
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
// attribution backward (about two forwards) if any, then every activation target in acc
// order (sweep_target_costs: 0 for a patch skipped as a no-op).
std::vector<int64_t> batch_units(const Job& job, const Forwards& f) {
  const ForwardState& base = job.opt.noising ? f.clean() : f.corrupted();
  const ForwardState& source = job.opt.noising ? f.corrupted() : f.clean();
  std::vector<int64_t> units;
  if (job.any_attribution()) units.push_back(2 * int64_t(f.pb.clean.B) * job.T * job.L);
  for (size_t a = 0; a < job.accs.size(); ++a) {
    if (!job.accs[a].activation) continue;
    std::vector<int64_t> c = sweep_target_costs(job.be, job.m, base, source, job.accs[a].hook, job.opt.naive);
    units.insert(units.end(), c.begin(), c.end());
  }
  return units;
}

// The share of a batch that units [lo, hi) of batch_units() make.
Share share_of(const Job& job, Range r) {
  Share s;
  int64_t off = 0;
  s.attribution = false;
  if (job.any_attribution()) {
    s.attribution = r.begin <= 0 && r.end > 0;
    off = 1;
  }
  for (size_t a = 0; a < job.accs.size(); ++a) {
    if (!job.accs[a].activation) {
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

// Averages the batches (in batch order, the same arithmetic whatever the number of ranks).
void aggregate(const Job& job, const std::map<int, BatchResult>& done, ExperimentResult& R) {
  struct Acc {
    std::vector<double> sum;
    std::vector<std::vector<float>> per_prompt_ld, per_prompt;
    SweepWork work;
    double seconds = 0;
  };
  std::vector<Acc> accs(job.accs.size());
  double clean_sum = 0, corr_sum = 0;
  const int T = job.T, L = job.L;
  for (const auto& [bi, r] : done) {
    const BatchSummary& sum = r.summary;
    const int B = static_cast<int>(sum.answer.size());
    const double den = sum.clean_ld - sum.corrupted_ld;
    if (R.position_labels.empty())
      for (int t = 0; t < T; ++t)
        R.position_labels.push_back(std::to_string(t) + ":" + job.m.tok.label(sum.clean_tokens[0][t]));
    clean_sum += sum.clean_ld * B;
    corr_sum += sum.corrupted_ld * B;
    R.n_prompts += B;
    for (const ResultPart& p : r.parts) {
      const AccSpec& spec = job.accs[p.acc];
      Acc& a = accs[p.acc];
      const int Hh = hook_heads(spec.hook, job.m.cfg);
      std::vector<PatchSpec> targets = sweep_targets(spec.hook, L, T, Hh);
      const size_t cells = targets.size();
      if (a.sum.empty()) {
        a.sum.assign(cells, 0.0);
        if (spec.activation) {
          a.per_prompt_ld.assign(cells, {});
          a.per_prompt.assign(cells, {});
        }
      }
      a.seconds += p.seconds;
      if (!spec.activation) {
        for (size_t i = 0; i < cells; ++i) a.sum[matrix_index(spec.hook, targets[i], T, Hh)] += double(p.values[i]) * B;
        continue;
      }
      for (size_t i = 0; i < cells; ++i) {
        const size_t k = matrix_index(spec.hook, targets[i], T, Hh);
        double mean = 0;
        for (int b = 0; b < B; ++b) {
          const float ld = p.values[i * B + b];
          mean += ld;
          a.per_prompt_ld[k].push_back(ld);
          const double d = sum.clean_ld_rows[b] - sum.corrupted_ld_rows[b];
          a.per_prompt[k].push_back(static_cast<float>((ld - sum.corrupted_ld_rows[b]) / d));
        }
        mean /= B;
        a.sum[k] += (mean - sum.corrupted_ld) / den * B;
      }
      a.work.fast = p.work.fast;
      a.work += p.work;
    }
    R.batches.push_back(sum);
  }
  R.clean_ld = clean_sum / R.n_prompts;
  R.corrupted_ld = corr_sum / R.n_prompts;
  for (size_t i = 0; i < accs.size(); ++i) {
    MatrixResult mr;
    mr.hook = job.accs[i].hook;
    mr.method = job.accs[i].activation ? "activation" : "attribution";
    labels(mr.hook, L, hook_heads(mr.hook, job.m.cfg), R.position_labels, mr.rows, mr.cols);
    mr.values = accs[i].sum;
    for (auto& v : mr.values) v /= R.n_prompts;
    mr.per_prompt_ld = std::move(accs[i].per_prompt_ld);
    mr.per_prompt = std::move(accs[i].per_prompt);
    mr.work = accs[i].work;
    mr.seconds = accs[i].seconds;
    R.results.push_back(std::move(mr));
  }
  if (job.opt.attribution && job.opt.activation) {
    for (Hook h : job.opt.hooks) {
      const MatrixResult *at = nullptr, *ac = nullptr;
      for (const auto& r : R.results)
        if (r.hook == h) (r.method == "attribution" ? at : ac) = &r;
      R.comparisons.push_back({h, pearson(at->values, ac->values), spearman(at->values, ac->values)});
    }
  }
}

std::string fmt_seconds(double s) {
  char buf[32];
  if (s < 90) std::snprintf(buf, sizeof buf, "%.0f s", s);
  else if (s < 5400) std::snprintf(buf, sizeof buf, "%.0f min %02.0f s", std::floor(s / 60), std::fmod(s, 60));
  else std::snprintf(buf, sizeof buf, "%.1f h", s / 3600);
  return buf;
}

}  // namespace

ExperimentResult run_experiment(Backend& be, const Model& m, const ExperimentOptions& opt, Comm& comm) {
  const auto t_all = Clock::now();
  const int N = comm.size(), rank = comm.rank();
  Job job{be, m, opt, {}, 0, 0, 0, m.cfg.num_hidden_layers, m.cfg.num_attention_heads, {}, {}};
  int code = 2;
  // ---- the job, identical on every rank ----------------------------------------------------
  comm.agree(attempt(job, code, [&] {
    job.pairs = load_pairs(opt.pairs_file);
    check_pairs(job.pairs, m.tok, m.cfg.max_position_embeddings, opt.pairs_file, opt.add_bos, m.cfg.vocab_size);
    job.per_batch = opt.batch_pairs > 0 ? opt.batch_pairs : static_cast<int>(job.pairs.size());
    job.T = pair_batch_length(job.pairs, m.tok, opt.add_bos);
    if (job.T > m.cfg.max_position_embeddings)
      throw Error(opt.pairs_file + ": the longest prompt has " + std::to_string(job.T) +
                  " tokens, more than the model's context of " + std::to_string(m.cfg.max_position_embeddings));
  }), code);
  job.n_batches = (static_cast<int>(job.pairs.size()) + job.per_batch - 1) / job.per_batch;
  for (Hook h : opt.hooks) {
    if (opt.attribution) job.accs.push_back({h, false});
    if (opt.activation) job.accs.push_back({h, true});
  }
  for (const auto& a : job.accs)
    job.n_targets.push_back(a.activation ? static_cast<int64_t>(sweep_targets(a.hook, job.L, job.T, hook_heads(a.hook, job.m.cfg)).size()) : 0);

  ExperimentResult R;
  R.model_dir = m.dir;
  R.device = be.name();
  R.pairs_file = opt.pairs_file;
  R.direction = opt.noising ? "noise" : "denoise";
  R.add_bos = opt.add_bos;
  R.T = job.T;
  R.world_size = N;

  // ---- finished batches (rank 0 reads the checkpoints, every rank learns which) -------------
  std::map<int, BatchResult> done;
  nlohmann::json fp;
  std::unique_ptr<CheckpointDir> ckpt;
  if (!opt.checkpoint_out.empty()) {
    ckpt = std::make_unique<CheckpointDir>(opt.checkpoint_out);
    fp = job_fingerprint(opt, m, be, job.T, job.n_batches);
  }
  std::string finished;
  comm.agree(attempt(job, code, [&] {
    if (!comm.root() || !ckpt) return;
    if (opt.resume) done = ckpt->load(fp);
    else ckpt->clear();
    nlohmann::json list = nlohmann::json::array();
    for (const auto& [bi, r] : done) {
      if (bi >= job.n_batches) throw Error("checkpoint of batch " + std::to_string(bi) + " is outside this run");
      list.push_back(bi);
    }
    finished = list.dump();
  }), code);
  std::vector<char> is_done(job.n_batches, 0);
  if (ckpt) {
    for (const auto& v : nlohmann::json::parse(comm.bcast(comm.root() ? finished : std::string())))
      is_done[v.get<int>()] = 1;
  }
  std::vector<int> todo;
  for (int b = 0; b < job.n_batches; ++b)
    if (!is_done[b]) todo.push_back(b);
  R.resumed_batches = job.n_batches - static_cast<int>(todo.size());
  if (R.resumed_batches > 0)
    job.log("resuming: " + std::to_string(R.resumed_batches) + " of " + std::to_string(job.n_batches) +
            " batches are finished in " + ckpt->dir());
  if (N > 1)
    job.log(std::to_string(N) + " ranks: batches dealt to ranks, each round's patches split across them by cost");

  // ---- rounds: N batches (one per rank), then the rest one at a time, split across ranks ----
  RankWork rw;
  rw.rank = rank;
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
    job.log("batches " + std::to_string(R.resumed_batches + batches_done) + "/" + std::to_string(job.n_batches) +
            ", patch targets " + std::to_string(int64_t(R.resumed_batches + batches_done) * targets_per_batch) + "/" +
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
    comm.agree(attempt(job, code, [&] {
      own = run_forwards(job, batches[own_j], rw);
      if (N > 1 && rank < k) price = nlohmann::json(batch_units(job, own)).dump();
    }), code);
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
    comm.agree(attempt(job, code, [&] {
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
    }), code);
    own = Forwards{};
    finish_round(comm.gather(payload), batches);
  }

  // ---- per-rank work, then the averages (rank 0) ---------------------------------------------
  std::vector<std::string> all = comm.gather(to_json(rw).dump());
  if (!comm.root()) return R;
  for (const auto& s : all) {
    const RankWork w = rank_work_from_json(nlohmann::json::parse(s));
    R.ranks.push_back(w);
    R.forward_seconds += w.forward_seconds;
  }
  PHI3_CHECK(static_cast<int>(done.size()) == job.n_batches, "distributed run lost batches");
  aggregate(job, done, R);
  R.wall_seconds = since(t_all);
  job.log("done in " + std::to_string(since(t_all)) + " s");
  return R;
}

}  // namespace phi3
