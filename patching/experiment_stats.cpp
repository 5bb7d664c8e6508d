// Statistics of run's results: Pearson and Spearman correlation (patching/experiment.h) and
// the indices of the largest magnitudes (top_abs).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "patching/experiment_job.h"

namespace phi3 {

namespace {
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

namespace experiment_detail {

// The indices of the k largest |v| (NaN last), ties in index order.
std::vector<size_t> top_abs(const std::vector<double>& v, size_t k) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto mag = [&](size_t i) { return std::isfinite(v[i]) ? std::fabs(v[i]) : -1.0; };
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return mag(a) > mag(b); });
  idx.resize(std::min(k, idx.size()));
  return idx;
}

}  // namespace experiment_detail
}  // namespace phi3
