// The batches' results (rank 0) as run's matrices: prompts and metric means, one matrix per
// (hook, method) with its row and column labels, and each estimate compared with the exact
// sweep (compare_estimates).
#include <algorithm>
#include <cmath>

#include "patching/experiment_job.h"

namespace phi3 {

namespace {
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
}  // namespace

namespace experiment_detail {

// Target index (sweep_targets order) -> flat index of the [rows, cols] matrix.
size_t matrix_index(Hook hook, const PatchSpec& t, int T, int H) {
  if (hook_all_pos(hook)) return size_t(t.layer) * H + t.head;
  if (hook_is_per_head(hook)) return (size_t(t.layer) * H + t.head) * T + t.pos;
  return size_t(t.layer) * T + t.pos;
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

}  // namespace experiment_detail
}  // namespace phi3
