// How the work of a distributed job is divided (DESIGN §10): a sequence of work units with
// known costs (token-layer evaluations) is cut into one contiguous piece per rank, each as
// close to total / ranks as the units allow. Contiguous pieces keep a rank's targets inside
// few sweeps; cutting by cost, not by count, matters because an early-layer, early-position
// patch costs far more than a late one.
#pragma once
#include <cstdint>
#include <vector>

namespace phi3 {

struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Unit i goes to the rank whose share of the cumulative cost holds the unit's midpoint, so
// every cut is off by at most half a unit. Ranks may get empty ranges (fewer units than
// ranks, or zero total cost: then units are dealt by count).
std::vector<Range> split_by_cost(const std::vector<int64_t>& costs, int ranks);

// max / mean - 1 of per-rank loads (0: perfect balance).
double imbalance(const std::vector<double>& loads);

}  // namespace phi3
