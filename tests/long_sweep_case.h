// The 512-token sweep case shared by the CPU and GPU tests: a random 3-layer GQA model
// (sliding window 300) and one clean/corrupted pair of ~520 tokens, long enough that the
// exact sweep must run chunk by chunk inside a small memory budget.
#pragma once
#include "model/batch.h"
#include "model/model.h"
#include "runtime/backend.h"

namespace phi3::test {

struct LongSweepCase {
  Model model;
  PairBatch batch;
};
LongSweepCase make_long_sweep_case(Backend& be);

}  // namespace phi3::test
