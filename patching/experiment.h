// The user's main job (`phi3patch run`): clean/corrupted pairs -> seed-style summary,
// attribution patching and exact activation patching for a set of hooks, normalized
// metric (1 = clean, 0 = corrupted), per-prompt values kept.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "patching/sweep.h"

namespace phi3 {

struct ExperimentOptions {
  std::string pairs_file;
  std::vector<Hook> hooks = {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut};
  bool attribution = true;
  bool activation = true;
  bool noising = false;     // patch corrupted values into the clean run instead of the reverse
  bool add_bos = true;      // prepend BOS to every prompt
  int batch_pairs = 0;      // pairs per batch (0: all pairs in one batch)
  bool naive = false;       // one full forward per patch
  size_t mem_budget = 0;    // bytes per sweep chunk (0: automatic)
  bool check_finite = true; // stop with the layer/hook of the first NaN/Inf (activations,
                            // gradients and patching results)
  // Polled between passes and after every sweep step; when it returns true the experiment
  // throws Error("interrupted ...") (the CLI sets it from SIGINT).
  std::function<bool()> should_stop;
  std::function<void(const std::string&)> log;  // progress lines (stderr)
};

struct TopToken {
  int id;
  std::string piece;
  float logit;
};

// What the seed printed for one batch.
struct BatchSummary {
  std::vector<std::string> clean_prompts, corrupted_prompts;
  std::vector<std::string> clean_padded, corrupted_padded;  // decoded rows with pad pieces
  std::vector<std::vector<int32_t>> clean_tokens, corrupted_tokens;
  std::vector<int32_t> answer, other;
  std::vector<std::string> answer_piece, other_piece;
  std::vector<std::vector<TopToken>> clean_top, corrupted_top;  // top-3 at T-1 per row
  std::vector<float> clean_ld_rows, corrupted_ld_rows;
  double clean_ld = 0, corrupted_ld = 0;
};

struct MatrixResult {
  Hook hook = Hook::ResidPre;
  std::string method;  // "attribution" | "activation"
  std::vector<std::string> rows, cols;
  std::vector<double> values;                      // [rows*cols] normalized metric
  std::vector<std::vector<float>> per_prompt_ld;   // activation: [rows*cols][prompts] raw logit diff
  std::vector<std::vector<float>> per_prompt;      // activation: per-prompt normalized metric
  SweepWork work;                                  // activation: summed over batches
  double seconds = 0;
};

struct HookComparison {
  Hook hook;
  double pearson = 0, spearman = 0;
};

struct ExperimentResult {
  std::string model_dir, device, pairs_file, direction;
  bool add_bos = true;
  int T = 0, n_prompts = 0;
  std::vector<BatchSummary> batches;
  double clean_ld = 0, corrupted_ld = 0;  // averaged over batches (weighted by rows)
  std::vector<std::string> position_labels;
  std::vector<MatrixResult> results;
  std::vector<HookComparison> comparisons;
  double forward_seconds = 0;
};

// Summarises one forward of a pair batch (tokens, top-3, logit differences).
BatchSummary summarize_batch(Backend& be, const Model& m, const PairBatch& pb, const ForwardState& clean,
                             const ForwardState& corrupted);

ExperimentResult run_experiment(Backend& be, const Model& m, const ExperimentOptions& opt);

double pearson(const std::vector<double>& a, const std::vector<double>& b);
double spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace phi3
