// Circuit discovery on the graph of patching/circuit_graph.h (issue 13): edge attribution
// scores (EAP, EAP-IG) and the exact metric of a circuit.
//
// Scores. For an edge u -> v, score = sum over batch rows and positions of
// delta_u . g_v: delta_u = a_u(source) - a_u(base), the upstream node's write to the residual
// stream (the embedding, a head's z_h W_O[:, h]^T, an MLP's output); g_v = d metric / d(the
// residual stream as only v reads it), through v's own path: a query head's gradient flows back
// through its rows of qkv_proj and ln1 alone, a KV head's k or v likewise, an MLP input's through
// the MLP and ln2, the logits' through the final norm. Every delta_u lives in one [U, B*T*D]
// matrix, every g_v of a downstream layer in a [V_l, B*T*D] one, and each downstream layer's
// scores are one GEMM of the two (no loop over edges; the gradients of one layer at a time).
//   EAP, denoise: the gradient on the corrupted run, delta = clean - corrupted (noise: the
//   clean run, corrupted - clean). EAP-IG (Hanna et al. 2024): the gradients averaged over
//   the runs on input embeddings x_corr + (k/steps)(x_clean - x_corr), k = 0..steps-1 (the
//   authors' path), delta as for EAP; denoise and noise differ only in delta's sign.
// Exact circuits. One forward on the clean input in which every downstream node v reads
//   resid_corr(v) + sum over edges u -> v in the circuit of (a_u(current) - a_u(corrupted)),
// resid_corr(v) being the corrupted run's stream where v reads it: each edge outside the
// circuit carries the corrupted value of its upstream node, each edge inside the current
// run's. Each query head, KV head and MLP gets its own normalised input (per-head rows of
// qkv_proj, per-head columns of o_proj), assembled by a GEMM of the circuit's 0/1 edge matrix
// with the current differences. The full circuit gives the clean run, the empty one the
// corrupted run.
#pragma once
#include <vector>

#include "model/backward.h"
#include "model/batch.h"
#include "model/forward.h"
#include "patching/circuit_graph.h"

namespace phi3 {

// Whether the circuit graph's additive decomposition holds for a model (not for post-norm
// models: Gemma 2); check_circuit_support throws naming the architecture and why when not.
bool circuits_supported(const ModelConfig& c);
void check_circuit_support(const ModelConfig& c);

// Per-layer per-head output projections: o_proj transposed ([H*HD, D], the weights' dtype),
// so head h's columns of o_proj are the contiguous rows [h*HD, (h+1)*HD).
class HeadOutputWeights {
 public:
  HeadOutputWeights(Backend& be, const Model& m);
  Weight head(int l, int h) const;  // [HD, D]
 private:
  std::vector<DeviceArray<uint8_t>> store_;
  std::vector<Weight> ot_;
  int HD_ = 0;
};

struct EdgeScoreOptions {
  bool ig = false;     // EAP-IG (else EAP)
  int ig_steps = 5;
  bool noising = false;
};

// Dense [U, Dn] scores (CircuitGraph order), 0 where no edge exists. `clean` and `corrupted`
// are the pair's forward passes (patterns kept); scale as backward() (1 / (LD_clean - LD_corr)
// for the normalized metric).
std::vector<float> edge_scores(Backend& be, const Model& m, const HeadOutputWeights& ow, const CircuitGraph& g,
                               const PairBatch& pb, const ForwardState& clean, const ForwardState& corrupted,
                               float scale, const EdgeScoreOptions& opt);

// Every upstream node's a_u(x) - a_u(y) as rows of `out` [U, N*D] (x, y: two runs of the same
// batch shape).
void upstream_differences(Backend& be, const Model& m, const HeadOutputWeights& ow, const ForwardState& x,
                          const ForwardState& y, float* out);

// d metric / d(input of v) for the downstream nodes of layer l (l = L: the logits), in
// CircuitGraph order, as rows of `out` [V_l, N*D]; g: the backward of run s.
void downstream_gradients(Backend& be, const Model& m, const ForwardState& s, const Gradients& g, int l,
                          float* out);

// Per-row logit differences of circuits (CircuitGraph::Mask each) run exactly: clean input,
// edges outside a circuit carrying the corrupted run's values. The circuits are stacked along
// the batch, as many per forward as mem_budget bytes of work buffers allow (0: a quarter of
// the device's free memory) and at most max_circuits (0: no limit), so one batched forward
// evaluates several grid points.
std::vector<std::vector<float>> circuit_logit_diffs(Backend& be, const Model& m, const HeadOutputWeights& ow,
                                                    const CircuitGraph& g, const std::vector<CircuitGraph::Mask>& masks,
                                                    const PairBatch& pb, const ForwardState& clean,
                                                    const ForwardState& corrupted, size_t mem_budget = 0,
                                                    int max_circuits = 0);

}  // namespace phi3
