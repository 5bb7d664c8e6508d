// `phi3patch circuit --export mib`: the circuit run as a submission of the MIB benchmark's
// circuit-localization track (Mueller et al. 2025, "MIB: A Mechanistic Interpretability
// Benchmark"; the EAP-IG library's Graph.to_json layout, hannamw/EAP-IG eap/graph.py):
//   <dir>/<task>_<model>/importances.json =
//   {"cfg": {"n_layers", "n_heads", "parallel_attn_mlp": false, "d_model"},
//    "nodes": {"input" | "a<l>.h<h>" | "m<l>" | "logits": {"in_graph": bool}},
//    "edges": {"<up>-><down>": {"score": float, "in_graph": bool}}}
// with edge names "input->a1.h2<q>", "a0.h3->m0", "m2->logits", in the library's order (layer by
// layer: every node written so far into each head's q, k, v, then into the MLP; the logits
// last). Scores are the run's edge scores (EAP / EAP-IG, the engine's sign convention);
// in_graph marks the reported circuit (r.chosen_mask), a node in_graph when one of its edges is.
// The engine's graph and MIB's coincide where every head has its own k and v (no GQA) and
// the graph is additive (pre-norms only: check_circuit_support); other models are refused.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "patching/circuit_run.h"
#include "runtime/config.h"

namespace phi3 {

// Throws, with the reason, when `c`'s circuit graph has no MIB equivalent (GQA / MQA: MIB's
// graph has k and v inputs per query head, the engine's per KV head).
void check_mib_support(const ModelConfig& c);
// The graph JSON of r (scores of r.scores, in_graph from r.chosen_mask).
nlohmann::ordered_json mib_graph_json(const CircuitRunResult& r, int d_model);
// Writes mib_graph_json into <dir>/<task>_<model>/importances.json; returns that path.
std::string write_mib_submission(const CircuitRunResult& r, int d_model, const std::string& dir,
                                 const std::string& task, const std::string& model);

}  // namespace phi3
