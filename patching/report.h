// Outputs of `phi3patch run`: results.json, one CSV and one SVG heatmap per (hook,
// method), a scatter of attribution vs activation per hook, and report.html. Every file
// is written to a temporary name and renamed.
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include "patching/experiment.h"

namespace phi3 {

struct Component {
  std::string row, col;
  double value;
};
std::vector<Component> top_components(const MatrixResult& r, size_t k);

// Spread of per-prompt values: sample standard deviation and the 95% confidence half-width
// of their mean (normal approximation); NaN-free zeros for fewer than two values.
struct Spread {
  double std = 0, ci95 = 0;
};
Spread spread(const std::vector<float>& values);

// Sentences saying where the largest effects lie (layers and tokens).
std::vector<std::string> describe_effects(const ExperimentResult& R);

// Writes everything; returns the paths written.
std::vector<std::string> write_report(const ExperimentResult& R, const std::string& out_dir);

std::string results_json(const ExperimentResult& R);  // the text of results.json

// The seed-style summary: padded prompts, answer ids, top-3 tokens, logit differences.
// metric: the run's --metric, whose values (when not the logit difference) follow the logit
// differences under its name.
void print_batch_summary(std::ostream& os, const BatchSummary& s, MetricKind metric = MetricKind::LogitDiff);

}  // namespace phi3
