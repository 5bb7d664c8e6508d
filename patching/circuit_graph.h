// The computational graph of circuit discovery (issue 13; EAP, Syed et al. 2023; EAP-IG, Hanna
// et al. 2024), for a Phi3ForCausalLM with L layers, H query heads and KVH key/value heads.
//
// Upstream nodes (what writes to the residual stream), in this order:
//   input            the token embedding
//   a<l>.h<h>        attention head h of layer l: its slice of o_proj's input times its o_proj
//                    columns
//   m<l>             the MLP of layer l (after its heads, in layer order)
// Downstream nodes (what reads the residual stream), in this order:
//   a<l>.h<h><q>     head h's query input (the residual before ln1, through head h's q path)
//   a<l>.h<g><k>     key input of KV head g (shared by the H/KVH query heads of its group)
//   a<l>.h<g><v>     value input of KV head g
//   m<l>             the MLP's input (the residual before ln2)
//   logits           the final norm's input
// (per layer: H queries, KVH keys, KVH values, the MLP; logits last).
// An edge u -> v exists when u is computed before v reads the stream: the input feeds every
// downstream node; a head of layer l feeds the q/k/v of later layers, the MLPs of layer l and
// later, and the logits; an MLP of layer l feeds the q/k/v and MLPs of later layers and the
// logits. Phi-3-mini (L = H = KVH = 32): 1,057 upstream, 3,105 downstream, 1,592,881 edges.
// Edges are the valid cells of a dense [upstream, downstream] matrix (13 MB of fp32 scores at
// Phi-3-mini), so scores come out of matrix products, not loops over edges.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace phi3 {

class CircuitGraph {
 public:
  CircuitGraph(int n_layers, int n_heads, int n_kv_heads);

  int n_upstream() const { return 1 + L_ * (H_ + 1); }
  int n_downstream() const { return L_ * per_layer_down() + 1; }
  int64_t n_edges() const;

  // Upstream indices.
  int input() const { return 0; }
  int head(int l, int h) const { return 1 + l * (H_ + 1) + h; }
  int mlp_out(int l) const { return 1 + l * (H_ + 1) + H_; }
  // Downstream indices.
  enum class In { Q, K, V };
  int head_in(int l, int h, In which) const;  // h: query head (Q) or KV head (K, V)
  int mlp_in(int l) const { return l * per_layer_down() + H_ + 2 * KVH_; }
  int logits() const { return L_ * per_layer_down(); }

  // The layer an upstream node writes at (input: -1) and whether it is a head; the layer a
  // downstream node reads at (logits: L).
  int upstream_layer(int u) const { return u == 0 ? -1 : (u - 1) / (H_ + 1); }
  bool upstream_is_head(int u) const { return u > 0 && (u - 1) % (H_ + 1) < H_; }
  int downstream_layer(int v) const { return v == logits() ? L_ : v / per_layer_down(); }

  bool has_edge(int u, int v) const;
  std::string upstream_name(int u) const;    // "input", "a3.h7", "m3"
  std::string downstream_name(int v) const;  // "a3.h7<q>", "a3.h1<k>", "m3", "logits"

  // An edge set (a circuit) as a mask over the [upstream, downstream] cells.
  using Mask = std::vector<uint8_t>;
  Mask empty_mask() const { return Mask(size_t(n_upstream()) * n_downstream(), 0); }
  Mask full_mask() const;  // every edge
  // The k valid edges with the largest |score| ([upstream, downstream] scores; invalid cells
  // ignored; ties in index order). Throws if k exceeds the edge count.
  Mask top_k(const std::vector<float>& scores, int64_t k) const;
  // The EAP-IG paper's greedy choice: starting from the logits, repeatedly take the edge with
  // the largest |score| among those into a node already in the circuit (the logits, or a
  // head or MLP one of whose outgoing edges was taken; a head's q, k and v inputs join with
  // it), until k edges (ties in index order). Every edge chosen has a path to the logits.
  Mask greedy(const std::vector<float>& scores, int64_t k) const;
  // Removes the edges that cannot matter: whose upstream node has no path from the input, or
  // whose downstream node's component (the head reading it, the MLP, the logits) has no path
  // to the logits, through the edges of `m` (a head counts as reached when any of its q, k or
  // v inputs is). Returns the number of edges removed.
  int64_t prune(Mask& m) const;
  int64_t count(const Mask& m) const;

  int L() const { return L_; }
  int H() const { return H_; }
  int KVH() const { return KVH_; }
  int per_layer_down() const { return H_ + 2 * KVH_ + 1; }  // downstream nodes of one layer

 private:
  int L_, H_, KVH_;
};

}  // namespace phi3
