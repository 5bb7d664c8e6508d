// `phi3patch circuit`: edge scores (EAP or EAP-IG) of every edge of the circuit graph on a
// pairs file, circuits of the top-k edges (pruned to the part connected from the input to the
// logits) over a grid of k, each evaluated exactly, and the faithfulness curve
// (m(circuit) - m(empty)) / (m(full) - m(empty)), m = mean logit difference.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "model/batch.h"
#include "model/model.h"
#include "patching/circuit_graph.h"
#include "runtime/comm.h"

namespace phi3 {

struct CircuitOptions {
  std::string pairs_file;   // read from this file, or, with pairs_text, only its name in messages
  std::string pairs_text;   // the pairs file's JSON text given in memory (the Python binding)
  bool ig = true;       // EAP-IG (else EAP)
  int ig_steps = 5;
  bool noising = false;
  bool add_bos = true;
  bool mix = true;      // every pair both ways (false, --no-mix: only as given)
  bool answer_first_token = false;  // a multi-token answer uses its first piece
  int64_t edges = -1;          // the circuit to report (-1: the smallest grid circuit reaching `target`)
  std::vector<int64_t> grid;   // k values (empty: 1, 2, 5, 10, 20, 50, ... and every edge)
  double target = 0.8;         // faithfulness the default choice must reach
  bool greedy = false;         // choose edges greedily from the logits (CircuitGraph::greedy), not top-k
  size_t mem_budget = 0;       // bytes of work buffers per batched circuit forward (0: automatic)
  int batch_pairs = 0;         // pairs per batch (0: all pairs in one batch); every batch is padded
                               // to the longest prompt of the file, scores and circuit metrics
                               // are over all prompts, as one batch would give them
  std::function<void(const std::string&)> log;
};

struct CircuitPoint {
  int64_t k = 0;         // top-k edges chosen
  int64_t edges = 0;     // left after pruning
  double logit_diff = 0;
  double faithfulness = 0;
  std::vector<float> logit_diff_per_row;
};

struct CircuitRunResult {
  std::string method, direction, pairs_file;
  std::string architecture, family;  // the checkpoint's (config.json; model/arch/)
  std::string selection = "top-k";
  std::vector<std::string> answers_cut;  // --answer-first-token  // "top-k" | "greedy" (then pruned either way)
  int L = 0, H = 0, KVH = 0, B = 0, T = 0;  // B: prompts over all batches
  int batches = 1;
  bool mix = true;  // every pair both ways (--no-mix: false)
  int64_t n_edges = 0;
  double ld_clean = 0, ld_corrupted = 0, ld_full = 0, ld_empty = 0;  // full / empty: the exact circuit forward
  std::vector<float> scores;        // [U, Dn] dense (CircuitGraph order)
  std::vector<CircuitPoint> grid;   // by k
  CircuitPoint chosen;              // the reported circuit
  CircuitGraph::Mask chosen_mask;
  double score_seconds = 0;  // the clean and corrupted runs, the gradient runs and the score GEMMs
  double eval_seconds = 0;   // every exact circuit forward
  int circuit_forwards = 0;  // exact circuit evaluations (empty + full + grid [+ --edges])
  int world_size = 1;
  std::vector<int> circuits_per_rank;  // distinct circuits each rank evaluated
};

// The default grid for n edges: 1, 2, 5, 10, 20, 50, ... below n, then n.
std::vector<int64_t> default_edge_grid(int64_t n_edges);
// Parses "--edge-grid 10,100,1000"; throws naming a value that is not a count in [0, n_edges].
std::vector<int64_t> parse_edge_grid(const std::string& list, int64_t n_edges);

// The circuit job's inputs checked against the config and tokenizer alone (no weight is read; m
// may come from load_model_meta): the architecture's support for circuits, --ig-steps, --edges
// and --edge-grid against the graph, the pairs file (read, every answer one token, every prompt
// inside the context). run_circuit starts with it; the CLI calls it before the weights load.
struct CircuitInputs {
  std::vector<PromptPair> pairs;
  std::vector<std::string> answers_cut;  // --answer-first-token
  int T = 0;                             // the longest prompt (with BOS)
};
CircuitInputs check_circuit_inputs(const Model& m, const CircuitOptions& opt);

// Every rank of comm calls it with the same options: rank 0 scores the edges and broadcasts
// the scores; the distinct circuits of the grid are dealt to the ranks (round robin: each is
// one batched forward's share) and their results gathered on rank 0, whose result is complete.
CircuitRunResult run_circuit(Backend& be, const Model& m, const CircuitOptions& opt, Comm& comm = Comm::self());

// edges.csv, circuit.json, faithfulness.svg, circuit.svg, report.html (atomic writes); returns
// the paths written.
std::vector<std::string> write_circuit_outputs(const CircuitRunResult& r, const std::string& out_dir);
std::string circuit_json(const CircuitRunResult& r);  // the text of circuit.json

}  // namespace phi3
