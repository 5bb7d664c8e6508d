#include "patching/work_split.h"

#include <algorithm>
#include <numeric>

#include "runtime/error.h"

namespace phi3 {

std::vector<Range> split_by_cost(const std::vector<int64_t>& costs, int ranks) {
  PHI3_CHECK(ranks > 0, "split_by_cost: no ranks");
  const int64_t n = static_cast<int64_t>(costs.size());
  std::vector<Range> out(ranks);
  const int64_t total = std::accumulate(costs.begin(), costs.end(), int64_t{0});
  int64_t before = 0, next = 0;
  for (int r = 0; r < ranks; ++r) {
    out[r].begin = next;
    if (r == ranks - 1) {
      next = n;
    } else if (total <= 0) {
      next = n * (r + 1) / ranks;
    } else {
      // Take units while their midpoint lies inside this rank's share [r, r+1) * total / ranks.
      while (next < n && (2 * before + costs[next]) * ranks < 2 * total * (r + 1)) before += costs[next++];
    }
    out[r].end = next;
  }
  return out;
}

double imbalance(const std::vector<double>& loads) {
  if (loads.empty()) return 0;
  const double mean = std::accumulate(loads.begin(), loads.end(), 0.0) / static_cast<double>(loads.size());
  if (mean <= 0) return 0;
  return *std::max_element(loads.begin(), loads.end()) / mean - 1.0;
}

}  // namespace phi3
