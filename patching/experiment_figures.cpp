// run's attention-pattern figures: the top heads of the first pattern hook, drawn from one
// more forward of the first batch (rank 0).
#include <cmath>

#include "patching/experiment_job.h"

namespace phi3 {
namespace experiment_detail {

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

}  // namespace experiment_detail
}  // namespace phi3
