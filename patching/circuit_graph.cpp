#include "patching/circuit_graph.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <queue>

#include "runtime/error.h"

namespace phi3 {

CircuitGraph::CircuitGraph(int n_layers, int n_heads, int n_kv_heads) : L_(n_layers), H_(n_heads), KVH_(n_kv_heads) {
  if (L_ < 1 || H_ < 1 || KVH_ < 1 || H_ % KVH_ != 0)
    throw Error("circuit graph: bad shape (" + std::to_string(L_) + " layers, " + std::to_string(H_) + " heads, " +
                std::to_string(KVH_) + " KV heads)");
}

int CircuitGraph::head_in(int l, int h, In which) const {
  const int base = l * per_layer_down();
  switch (which) {
    case In::Q: return base + h;
    case In::K: return base + H_ + h;
    case In::V: return base + H_ + KVH_ + h;
  }
  return -1;
}

bool CircuitGraph::has_edge(int u, int v) const {
  if (u == input() || v == logits()) return true;
  const int lu = upstream_layer(u), lv = downstream_layer(v);
  if (v == mlp_in(lv)) return upstream_is_head(u) ? lu <= lv : lu < lv;  // heads -> their layer's MLP
  return lu < lv;                                                         // q/k/v of later layers
}

int64_t CircuitGraph::n_edges() const {
  int64_t n = n_downstream();  // from the input
  const int64_t Q = H_ + 2 * KVH_;
  for (int l = 0; l < L_; ++l) {
    const int64_t later = L_ - 1 - l;
    n += int64_t(H_) * (later * Q + (later + 1) + 1);  // heads: later q/k/v, MLPs from l, logits
    n += later * Q + later + 1;                          // MLP: later q/k/v and MLPs, logits
  }
  return n;
}

std::string CircuitGraph::upstream_name(int u) const {
  if (u == input()) return "input";
  const int l = upstream_layer(u);
  if (!upstream_is_head(u)) return "m" + std::to_string(l);
  return "a" + std::to_string(l) + ".h" + std::to_string((u - 1) % (H_ + 1));
}

std::string CircuitGraph::downstream_name(int v) const {
  if (v == logits()) return "logits";
  const int l = downstream_layer(v), i = v - l * per_layer_down();
  if (i == H_ + 2 * KVH_) return "m" + std::to_string(l);
  const std::string a = "a" + std::to_string(l) + ".h";
  if (i < H_) return a + std::to_string(i) + "<q>";
  if (i < H_ + KVH_) return a + std::to_string(i - H_) + "<k>";
  return a + std::to_string(i - H_ - KVH_) + "<v>";
}

CircuitGraph::Mask CircuitGraph::full_mask() const {
  Mask m = empty_mask();
  for (int u = 0; u < n_upstream(); ++u)
    for (int v = 0; v < n_downstream(); ++v) m[size_t(u) * n_downstream() + v] = has_edge(u, v);
  return m;
}

CircuitGraph::Mask CircuitGraph::top_k(const std::vector<float>& scores, int64_t k) const {
  const int U = n_upstream(), Dn = n_downstream();
  if (scores.size() != size_t(U) * Dn)
    throw Error("circuit: " + std::to_string(scores.size()) + " scores for a graph of " + std::to_string(U) + " x " +
                std::to_string(Dn) + " cells");
  if (k < 0 || k > n_edges())
    throw Error("--edges " + std::to_string(k) + " is outside the graph's " + std::to_string(n_edges()) + " edges");
  std::vector<int64_t> cells;
  cells.reserve(size_t(n_edges()));
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < Dn; ++v)
      if (has_edge(u, v)) cells.push_back(int64_t(u) * Dn + v);
  auto mag = [&](int64_t c) { return std::isfinite(scores[c]) ? std::fabs(double(scores[c])) : -1.0; };
  auto before = [&](int64_t a, int64_t b) { return mag(a) > mag(b) || (mag(a) == mag(b) && a < b); };
  std::nth_element(cells.begin(), cells.begin() + k, cells.end(), before);
  Mask m = empty_mask();
  for (int64_t i = 0; i < k; ++i) m[cells[i]] = 1;
  return m;
}

CircuitGraph::Mask CircuitGraph::greedy(const std::vector<float>& scores, int64_t k) const {
  const int U = n_upstream(), Dn = n_downstream(), group = H_ / KVH_;
  if (scores.size() != size_t(U) * Dn)
    throw Error("circuit: " + std::to_string(scores.size()) + " scores for a graph of " + std::to_string(U) + " x " +
                std::to_string(Dn) + " cells");
  if (k < 0 || k > n_edges())
    throw Error("--edges " + std::to_string(k) + " is outside the graph's " + std::to_string(n_edges()) + " edges");
  auto mag = [&](int64_t c) { return std::isfinite(scores[c]) ? std::fabs(double(scores[c])) : -1.0; };
  // Max-heap by |score|, ties to the lower cell index.
  auto worse = [&](int64_t a, int64_t b) { return mag(a) < mag(b) || (mag(a) == mag(b) && a > b); };
  std::priority_queue<int64_t, std::vector<int64_t>, decltype(worse)> heap(worse);
  std::vector<uint8_t> active(Dn, 0), joined(U, 0);
  auto activate = [&](int v) {
    if (active[v]) return;
    active[v] = 1;
    for (int u = 0; u < U; ++u)
      if (has_edge(u, v)) heap.push(int64_t(u) * Dn + v);
  };
  auto join = [&](int u) {  // upstream node u's component enters the circuit
    if (joined[u] || u == input()) return;
    joined[u] = 1;
    const int l = upstream_layer(u);
    if (upstream_is_head(u)) {
      const int h = (u - 1) % (H_ + 1);
      activate(head_in(l, h, In::Q));
      activate(head_in(l, h / group, In::K));
      activate(head_in(l, h / group, In::V));
    } else {
      activate(mlp_in(l));
    }
  };
  activate(logits());
  Mask m = empty_mask();
  for (int64_t taken = 0; taken < k && !heap.empty();) {
    const int64_t c = heap.top();
    heap.pop();
    if (m[c]) continue;
    m[c] = 1;
    ++taken;
    join(int(c / Dn));
  }
  return m;
}

int64_t CircuitGraph::count(const Mask& m) const {
  return std::accumulate(m.begin(), m.end(), int64_t(0), [](int64_t s, uint8_t x) { return s + (x ? 1 : 0); });
}

int64_t CircuitGraph::prune(Mask& m) const {
  const int U = n_upstream(), Dn = n_downstream(), group = H_ / KVH_;
  PHI3_CHECK(m.size() == size_t(U) * Dn, "circuit: mask of the wrong size");
  auto on = [&](int u, int v) { return m[size_t(u) * Dn + v] != 0; };
  // Forward: which upstream nodes have a path from the input (layer order).
  std::vector<uint8_t> from_input(U, 0);
  from_input[input()] = 1;
  auto fed = [&](int v) {  // some reached upstream node feeds downstream node v
    for (int u = 0; u < U; ++u)
      if (from_input[u] && on(u, v)) return true;
    return false;
  };
  for (int l = 0; l < L_; ++l) {
    for (int h = 0; h < H_; ++h)
      from_input[head(l, h)] = fed(head_in(l, h, In::Q)) || fed(head_in(l, h / group, In::K)) ||
                               fed(head_in(l, h / group, In::V));
    from_input[mlp_out(l)] = fed(mlp_in(l));
  }
  // Backward: which downstream nodes' components have a path to the logits (reverse order).
  std::vector<uint8_t> to_logits(Dn, 0), up_to_logits(U, 0);
  to_logits[logits()] = 1;
  auto feeds = [&](int u) {  // upstream node u feeds a downstream node that reaches the logits
    for (int v = 0; v < Dn; ++v)
      if (to_logits[v] && on(u, v)) return true;
    return false;
  };
  for (int l = L_ - 1; l >= 0; --l) {
    up_to_logits[mlp_out(l)] = feeds(mlp_out(l));
    to_logits[mlp_in(l)] = up_to_logits[mlp_out(l)];
    for (int h = 0; h < H_; ++h) {
      up_to_logits[head(l, h)] = feeds(head(l, h));
      to_logits[head_in(l, h, In::Q)] = up_to_logits[head(l, h)];
    }
    for (int g = 0; g < KVH_; ++g) {
      bool any = false;
      for (int h = g * group; h < (g + 1) * group; ++h) any = any || up_to_logits[head(l, h)];
      to_logits[head_in(l, g, In::K)] = to_logits[head_in(l, g, In::V)] = any;
    }
  }
  int64_t removed = 0;
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < Dn; ++v)
      if (on(u, v) && (!from_input[u] || !to_logits[v])) {
        m[size_t(u) * Dn + v] = 0;
        ++removed;
      }
  return removed;
}

}  // namespace phi3
