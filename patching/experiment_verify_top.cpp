// --verify-top: choosing the nodes to patch exactly by |estimate| (choose_verify), and listing
// them with their estimates and exact values once checked (list_verified).
#include <algorithm>
#include <cmath>

#include "patching/experiment_job.h"
#include "patching/report.h"

namespace phi3 {
namespace experiment_detail {

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

}  // namespace experiment_detail
}  // namespace phi3
