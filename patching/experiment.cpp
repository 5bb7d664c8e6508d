#include "patching/experiment.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "patching/attribution.h"
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
  if (hook == Hook::Z) {
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) rows.push_back("L" + std::to_string(l) + "H" + std::to_string(h));
    cols = pos;
  } else if (hook == Hook::ZAllPos) {
    for (int l = 0; l < L; ++l) rows.push_back("L" + std::to_string(l));
    for (int h = 0; h < H; ++h) cols.push_back("H" + std::to_string(h));
  } else {
    for (int l = 0; l < L; ++l) rows.push_back("L" + std::to_string(l));
    cols = pos;
  }
}

// TransformerLens name of a hook at layer l: "blocks.3.hook_resid_pre", "blocks.1.attn.hook_z".
std::string tl_name(Hook h, int l) {
  return "blocks." + std::to_string(l) + (hook_is_per_head(h) ? ".attn.hook_z" : ".hook_" + hook_name(h));
}

// "layer 2, head 1, position 5 ('5:▁is')" for a sweep target.
std::string target_str(Hook hook, const PatchSpec& t, const std::vector<std::string>& pos_labels) {
  std::string s = tl_name(hook, t.layer);
  if (t.head >= 0) s += ", head " + std::to_string(t.head);
  if (hook != Hook::ZAllPos && t.pos >= 0) {
    s += ", position " + std::to_string(t.pos);
    if (t.pos < static_cast<int>(pos_labels.size())) s += " ('" + pos_labels[t.pos] + "')";
  }
  return s;
}

// Target index (sweep_targets order) -> flat index of the [rows, cols] matrix.
size_t matrix_index(Hook hook, const PatchSpec& t, int T, int H) {
  if (hook == Hook::Z) return (size_t(t.layer) * H + t.head) * T + t.pos;
  if (hook == Hook::ZAllPos) return size_t(t.layer) * H + t.head;
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

ExperimentResult run_experiment(Backend& be, const Model& m, const ExperimentOptions& opt) {
  auto log = [&](const std::string& s) {
    if (opt.log) opt.log(s);
  };
  const auto t_all = Clock::now();
  const ModelConfig& c = m.cfg;
  const int L = c.num_hidden_layers, H = c.num_attention_heads;
  auto stop_point = [&]() {
    if (opt.should_stop && opt.should_stop()) throw Error("interrupted (Ctrl-C); no results were written");
  };
  std::vector<PromptPair> pairs = load_pairs(opt.pairs_file);
  check_pairs(pairs, m.tok, c.max_position_embeddings, opt.pairs_file, opt.add_bos, c.vocab_size);
  const int per_batch = opt.batch_pairs > 0 ? opt.batch_pairs : static_cast<int>(pairs.size());
  const int T = pair_batch_length(pairs, m.tok, opt.add_bos);
  if (T > c.max_position_embeddings)
    throw Error(opt.pairs_file + ": the longest prompt has " + std::to_string(T) + " tokens, more than the model's " +
                "context of " + std::to_string(c.max_position_embeddings));

  ExperimentResult R;
  R.model_dir = m.dir;
  R.device = be.name();
  R.pairs_file = opt.pairs_file;
  R.direction = opt.noising ? "noise" : "denoise";
  R.add_bos = opt.add_bos;
  R.T = T;

  // Result accumulators (weighted by rows).
  struct Acc {
    Hook hook;
    std::string method;
    std::vector<double> sum;
    std::vector<std::vector<float>> per_prompt_ld, per_prompt;
    SweepWork work;
    double seconds = 0;
  };
  std::vector<Acc> accs;
  for (Hook h : opt.hooks) {
    if (opt.attribution) accs.push_back({h, "attribution", {}, {}, {}, {}, 0});
    if (opt.activation) accs.push_back({h, "activation", {}, {}, {}, {}, 0});
  }
  double clean_sum = 0, corr_sum = 0;
  const int n_batches = (static_cast<int>(pairs.size()) + per_batch - 1) / per_batch;

  for (int bi = 0; bi < n_batches; ++bi) {
    std::vector<PromptPair> sub(pairs.begin() + size_t(bi) * per_batch,
                                pairs.begin() + std::min<size_t>(pairs.size(), size_t(bi + 1) * per_batch));
    PairBatch pb = make_pair_batch(sub, m.tok, c.pad_token_id, c.max_position_embeddings, T, opt.add_bos);
    const int B = pb.clean.B;
    stop_point();
    if (bi == 0) {
      for (int t = 0; t < T; ++t) R.position_labels.push_back(std::to_string(t) + ":" + m.tok.label(pb.clean.tokens[t]));
    }
    const auto t_fwd = Clock::now();
    ForwardState clean = forward(be, m, pb.clean);
    ForwardState corrupted = forward(be, m, pb.corrupted);
    if (opt.check_finite) {
      check_finite(be, m, clean, "clean");
      check_finite(be, m, corrupted, "corrupted");
    }
    R.forward_seconds += since(t_fwd);
    BatchSummary sum = summarize_batch(be, m, pb, clean, corrupted);
    const double den = sum.clean_ld - sum.corrupted_ld;
    if (!(std::fabs(den) > 1e-6))
      throw Error("batch " + std::to_string(bi) + ": clean and corrupted logit differences are equal (" +
                  std::to_string(sum.clean_ld) + "), so the normalized metric is undefined");
    clean_sum += sum.clean_ld * B;
    corr_sum += sum.corrupted_ld * B;
    R.n_prompts += B;
    log("batch " + std::to_string(bi + 1) + "/" + std::to_string(n_batches) + ": " + std::to_string(B) +
        " prompts, T=" + std::to_string(T) + ", clean LD " + std::to_string(sum.clean_ld) + ", corrupted LD " +
        std::to_string(sum.corrupted_ld));

    const ForwardState& base = opt.noising ? clean : corrupted;
    const ForwardState& source = opt.noising ? corrupted : clean;
    const float scale = static_cast<float>(1.0 / den);

    Gradients grads;
    if (opt.attribution) {
      const auto t0 = Clock::now();
      grads = backward(be, m, base, pb.answer, pb.other, scale);
      if (opt.check_finite)
        check_finite(be, m, grads, (std::string("batch ") + std::to_string(bi) + ", backward of the " +
                                    (opt.noising ? "clean" : "corrupted") + " run").c_str());
      stop_point();
      const double dt = since(t0);
      for (auto& a : accs)
        if (a.method == "attribution") a.seconds += dt;
    }
    for (auto& a : accs) {
      stop_point();
      const auto t0 = Clock::now();
      std::vector<PatchSpec> targets = sweep_targets(a.hook, L, T, H);
      const size_t cells = targets.size();
      if (a.sum.empty()) {
        a.sum.assign(cells, 0.0);
        if (a.method == "activation") {
          a.per_prompt_ld.assign(cells, {});
          a.per_prompt.assign(cells, {});
        }
      }
      if (a.method == "attribution") {
        std::vector<float> v = attribution(be, m, base, source, grads, a.hook);
        if (opt.check_finite)
          for (size_t i = 0; i < cells && i < v.size(); ++i)
            if (!std::isfinite(v[i]))
              throw Error("attribution patching, batch " + std::to_string(bi) + ": non-finite result (" +
                          std::to_string(v[i]) + ") first appears at " +
                          target_str(a.hook, targets[i], R.position_labels) + "; no results were written");
        for (size_t i = 0; i < cells; ++i) a.sum[matrix_index(a.hook, targets[i], T, H)] += double(v[i]) * B;
        a.seconds += since(t0);
        continue;
      }
      SweepOptions so;
      so.naive = opt.naive;
      so.mem_budget = opt.mem_budget;
      const std::string what = hook_name(a.hook) + " activation patching";
      so.progress = [&](int64_t done, int64_t total) {
        stop_point();
        if (opt.log && (done == total || done % std::max<int64_t>(1, total / 10) == 0))
          opt.log("  " + what + ": " + std::to_string(done) + "/" + std::to_string(total) + " runs");
      };
      SweepResult sr = activation_sweep(be, m, base, source, pb.answer, pb.other, a.hook, so);
      if (opt.check_finite)
        for (size_t i = 0; i < cells; ++i)
          for (int b = 0; b < B; ++b)
            if (!std::isfinite(sr.ld[i * B + b]))
              throw Error("activation patching, batch " + std::to_string(bi) + ": the patched run gave a non-finite " +
                          "logit difference (" + std::to_string(sr.ld[i * B + b]) + ") for prompt " +
                          std::to_string(b) + " when patching " + target_str(a.hook, targets[i], R.position_labels) +
                          "; no results were written");
      for (size_t i = 0; i < cells; ++i) {
        const size_t k = matrix_index(a.hook, targets[i], T, H);
        double mean = 0;
        for (int b = 0; b < B; ++b) {
          const float ld = sr.ld[i * B + b];
          mean += ld;
          a.per_prompt_ld[k].push_back(ld);
          const double d = sum.clean_ld_rows[b] - sum.corrupted_ld_rows[b];
          a.per_prompt[k].push_back(static_cast<float>((ld - sum.corrupted_ld_rows[b]) / d));
        }
        mean /= B;
        a.sum[k] += (mean - sum.corrupted_ld) / den * B;
      }
      a.work.fast = sr.work.fast;
      a.work.patched_runs += sr.work.patched_runs;
      a.work.skipped_noop += sr.work.skipped_noop;
      a.work.skipped_causal += sr.work.skipped_causal;
      a.work.token_layer_evals += sr.work.token_layer_evals;
      a.work.naive_token_layer_evals += sr.work.naive_token_layer_evals;
      a.work.chunks += sr.work.chunks;
      a.work.streams = std::max(a.work.streams, sr.work.streams);
      a.work.seconds += sr.work.seconds;
      a.seconds += since(t0);
      log("  " + what + ": " + std::to_string(sr.work.patched_runs) + " runs, " + std::to_string(sr.work.skipped_noop) +
          " no-op skipped, " + std::to_string(sr.work.seconds) + " s");
    }
    R.batches.push_back(std::move(sum));
  }
  R.clean_ld = clean_sum / R.n_prompts;
  R.corrupted_ld = corr_sum / R.n_prompts;

  for (auto& a : accs) {
    MatrixResult mr;
    mr.hook = a.hook;
    mr.method = a.method;
    labels(a.hook, L, H, R.position_labels, mr.rows, mr.cols);
    mr.values = a.sum;
    for (auto& v : mr.values) v /= R.n_prompts;
    mr.per_prompt_ld = std::move(a.per_prompt_ld);
    mr.per_prompt = std::move(a.per_prompt);
    mr.work = a.work;
    mr.seconds = a.seconds;
    R.results.push_back(std::move(mr));
  }
  if (opt.attribution && opt.activation) {
    for (Hook h : opt.hooks) {
      const MatrixResult *at = nullptr, *ac = nullptr;
      for (const auto& r : R.results)
        if (r.hook == h) (r.method == "attribution" ? at : ac) = &r;
      R.comparisons.push_back({h, pearson(at->values, ac->values), spearman(at->values, ac->values)});
    }
  }
  log("done in " + std::to_string(since(t_all)) + " s");
  return R;
}

}  // namespace phi3
