// The user's main job (`phi3patch run`): clean/corrupted pairs -> seed-style summary,
// attribution patching and exact activation patching for a set of hooks, normalized
// metric (1 = clean, 0 = corrupted), per-prompt values kept.
#pragma once
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "patching/sweep.h"
#include "runtime/comm.h"

namespace phi3 {

struct ExperimentOptions {
  std::string pairs_file;   // read from this file, or, with pairs_text, only its name in messages
  std::string pairs_text;   // the pairs file's JSON text given in memory (the Python binding)
  std::vector<Hook> hooks = {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut};
  bool attribution = true;   // AtP: one backward, gradient x (source - base)
  bool activation = true;    // exact activation patching of every node
  bool atp_star = false;     // AtP* (QK fix + GradDrop: L more backward passes), unsigned
  // With > 0: after the estimates of every batch, the K nodes of all hooks with the largest
  // |AtP*| (|AtP| without atp_star) are patched exactly (fast sweep on those targets only).
  int verify_top = 0;
  // --verify-top without --method: the methods were not chosen by the user. Set with
  // attribution and atp_star on and activation off; AtP* is dropped (AtP ranks alone) where it
  // cannot run: q/k hooks on checkpointed (long-prompt) forwards.
  bool auto_methods = false;
  bool noising = false;     // patch corrupted values into the clean run instead of the reverse
  // The metric at the last position (--metric, model/metric.h), normalised
  // (M - M_corrupted) / (M_clean - M_corrupted) like the logit difference.
  MetricKind metric = MetricKind::LogitDiff;
  bool add_bos = true;      // prepend BOS to every prompt
  // Every pair both ways (the seed's mixing: the pair and its swap); false (--no-mix): only
  // the pairs as given, clean -> corrupted.
  bool mix = true;
  bool answer_first_token = false;  // a multi-token answer uses its first piece (else an error)
  int batch_pairs = 0;      // pairs per batch (0: all pairs in one batch)
  bool naive = false;       // one full forward per patch
  size_t mem_budget = 0;    // bytes per sweep chunk (0: automatic)
  // Exact sweeps (activation) only at these positions (patching/positions.h syntax: "1500:1600,7");
  // empty: every position. The matrices hold NaN elsewhere; estimates still cover everything.
  std::string positions;
  // Exact sweeps and every method's matrix only at these layers (the same syntax: "0,2", "1:3",
  // "-1"); empty: every layer. Rows of other layers are NaN; --verify-top ranks only these.
  std::string layers;
  // Activation checkpointing of the estimates' forwards (memory_plan.h): "auto" (where the full
  // pass would not fit the memory: --mem-budget, else the device's free memory), "on", "off".
  std::string recompute = "auto";
  bool check_finite = true; // stop with the layer/hook of the first NaN/Inf (activations,
                            // gradients and patching results)
  // Polled between passes and after every sweep step; when it returns true the experiment
  // throws Error("interrupted ...") (the CLI sets it from SIGINT).
  std::function<bool()> should_stop;
  std::function<void(const std::string&)> log;  // progress lines (stderr)
  // Checkpoints: with an output directory, every finished batch is written to
  // <checkpoint_out>/checkpoints/ (rank 0); resume: keep the finished batches found there
  // (else they are cleared first).
  std::string checkpoint_out;
  bool resume = false;
};

// What one rank did in a run (results.json "work.ranks").
struct RankWork {
  int rank = 0;
  int batches = 0;                      // batches it computed (whole or a share)
  int64_t token_layer_evals = 0;        // forwards, backward (about two forwards) and sweeps
  int64_t sweep_token_layer_evals = 0;  // of which the patched runs
  int64_t patched_runs = 0;
  double seconds = 0;                   // computing (not waiting for the other ranks)
  double forward_seconds = 0;           // of which the clean/corrupted forwards
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
  std::vector<float> clean_ld_rows, corrupted_ld_rows;  // logit differences (whatever the metric)
  double clean_ld = 0, corrupted_ld = 0;
  // The chosen metric's values (ExperimentOptions::metric; the logit differences again for
  // logit-diff): what the results are normalised by.
  std::vector<float> clean_m_rows, corrupted_m_rows;
  double clean_m = 0, corrupted_m = 0;
};

struct MatrixResult {
  Hook hook = Hook::ResidPre;
  // "attribution" (AtP) | "atp-star" (AtP*, unsigned) | "activation" (exact, every node) |
  // "verified" (exact, only the --verify-top nodes; NaN elsewhere)
  std::string method;
  std::vector<std::string> rows, cols;
  std::vector<double> values;                      // [rows*cols] normalized metric
  std::vector<std::vector<float>> per_prompt_ld;   // exact: [rows*cols][prompts] raw metric (logit diff by default)
  std::vector<std::vector<float>> per_prompt;      // exact: per-prompt normalized metric
  SweepWork work;                                  // exact: summed over batches
  double seconds = 0;
  bool exact() const { return method == "activation" || method == "verified"; }
};

// One node of --verify-top: its prefilter estimate and its exact effect.
struct VerifiedNode {
  int rank = 0;            // 1 = largest |estimate|
  Hook hook = Hook::ResidPre;
  std::string row, col;    // matrix labels, as in the CSVs
  double estimate = 0;     // the ranking method's value (AtP* or AtP)
  double attribution = NAN, atp_star = NAN;  // each where it ran
  double exact = 0;        // normalized metric of the exact patch (mean over prompts)
  double ci95 = 0;         // half-width over prompts
};

// How well each estimate ranks the nodes of one hook, against exact patching of all of them
// (issue 12 item 5): Pearson / Spearman of |estimate| with |exact|, and the share of the
// exact top-10 (by |effect|) found in the estimate's top-20 (NaN with 20 nodes or fewer).
struct EstimateQuality {
  Hook hook = Hook::ResidPre;
  std::string method;  // "attribution" | "atp-star"
  int nodes = 0;
  double pearson_abs = NAN, spearman_abs = NAN, recall_10_in_20 = NAN;
};

struct HookComparison {
  Hook hook;
  double pearson = 0, spearman = 0;
};

// One head's attention pattern on the first prompt of the first batch, clean and corrupted
// (report figure for the top heads of a pattern hook).
struct PatternFigure {
  Hook hook = Hook::Pattern;
  int layer = 0, head = 0;
  std::string ranked_by;                                    // the matrix the head was chosen from
  std::vector<std::string> clean_tokens, corrupted_tokens;  // T position labels each
  std::vector<float> clean, corrupted;                      // [T, T] query x key
};

// The memory plan against the run (results.json "memory"): the device's free bytes when the
// plan was made, what the plan may use (less its margin, memory_plan.h), the predicted peak of
// the largest batch's estimates pass (0 without estimates; beyond the weights and what was
// allocated before it) and of the exact sweep's two forwards, and the device's measured
// high-water mark over the batches beyond what was allocated when they started (where the
// backend tracks it: CUDA).
struct MemoryReport {
  size_t free_bytes = 0, plannable_bytes = 0;
  size_t planned_estimates_bytes = 0;  // the pass the plan chose (checkpointed or full)
  bool checkpointed = false;
  size_t planned_sweep_forwards_bytes = 0;
  bool measured = false;
  size_t measured_peak_bytes = 0;
};

struct ExperimentResult {
  std::string model_dir, device, pairs_file, direction;
  std::string architecture, family;  // the checkpoint's (config.json; model/arch/)
  int pad_token_id = 0;
  std::string pad_token_source;
  bool add_bos = true;
  std::vector<std::string> answers_cut;  // --answer-first-token: the answers that used their first piece
  int T = 0, n_prompts = 0;
  std::vector<int> exact_positions;  // --positions: where the exact sweeps ran (empty: everywhere)
  std::vector<int> exact_layers;     // --layers: the layers of every matrix (empty: all)
  bool mix = true;                   // every pair both ways (--no-mix: false)
  std::vector<BatchSummary> batches;
  double clean_ld = 0, corrupted_ld = 0;  // averaged over batches (weighted by rows)
  MetricKind metric = MetricKind::LogitDiff;
  double clean_m = 0, corrupted_m = 0;    // the metric's, averaged the same way
  std::vector<std::string> position_labels;
  std::vector<MatrixResult> results;
  std::vector<HookComparison> comparisons;
  std::vector<EstimateQuality> quality;   // with an estimate and exact patching of every node
  std::string verify_ranked_by;           // "atp-star" | "attribution" ("" without --verify-top)
  std::vector<VerifiedNode> verified;     // --verify-top, by rank
  std::vector<PatternFigure> pattern_figures;  // pattern hooks: the top 3 heads
  double forward_seconds = 0;
  int world_size = 1;         // ranks of the job
  int resumed_batches = 0;    // batches taken from checkpoints
  std::vector<RankWork> ranks;
  double wall_seconds = 0;
  MemoryReport memory;
};

// Summarises one forward of a pair batch (tokens, top-3, logit differences, and the values of
// `metric` when given: else the metric is the logit difference).
BatchSummary summarize_batch(Backend& be, const Model& m, const PairBatch& pb, const ForwardState& clean,
                             const ForwardState& corrupted, const MetricSpec* metric = nullptr);

// Throws on a method combination that cannot run (no method; --verify-top with the
// activation method or without an estimate to rank by).
void check_methods(const ExperimentOptions& opt);

// The job's inputs checked against the model's config and tokenizer alone (no weight is read;
// m may come from load_model_meta): the methods, the pairs file (read, every answer one token,
// every prompt inside the context, text prompts only with a tokenizer, with --no-mix only the
// rows it runs), --layers, --verify-top against the hooks' nodes (in --layers) and --positions.
// run_experiment starts with it; the CLI calls it before the weights load
// (patching/experiment_check.cpp).
struct ExperimentInputs {
  std::vector<PromptPair> pairs;
  std::vector<std::string> answers_cut;  // --answer-first-token
  int T = 0;                             // the longest prompt (with BOS)
  std::vector<int> positions;            // --positions, parsed against T (empty: every position)
  std::vector<int> layers;               // --layers, parsed against the model's layers (empty: all)
};
ExperimentInputs check_experiment_inputs(const Model& m, const ExperimentOptions& opt);

// Every rank of comm calls it with the same options; batches are dealt to ranks (a round of
// one whole batch per rank), and when fewer batches than ranks are left each is split across
// all ranks by cost (split_by_cost over its patch targets). Only per-patch scalars and
// attribution matrices travel. The result is complete on rank 0 only (the others return
// just the job's header). A failure on any rank throws JobFailed on every rank.
ExperimentResult run_experiment(Backend& be, const Model& m, const ExperimentOptions& opt,
                                Comm& comm = Comm::world());

double pearson(const std::vector<double>& a, const std::vector<double>& b);
double spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace phi3
