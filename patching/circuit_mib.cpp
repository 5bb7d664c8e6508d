#include "patching/circuit_mib.h"

#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

void check_mib_support(const ModelConfig& c) {
  if (c.num_key_value_heads != c.num_attention_heads)
    throw Error("--export mib: " + c.architecture + " has " + std::to_string(c.num_key_value_heads) +
                " key/value heads for " + std::to_string(c.num_attention_heads) +
                " query heads; MIB's circuit graph has k and v inputs per query head, the engine's per "
                "key/value head, so its edges have no MIB names (MHA models only)");
}

nlohmann::ordered_json mib_graph_json(const CircuitRunResult& r, int d_model) {
  PHI3_CHECK(r.H == r.KVH, "mib_graph_json: MHA only (check_mib_support)");
  const CircuitGraph g(r.L, r.H, r.KVH);
  const size_t U = static_cast<size_t>(g.n_upstream()), Dn = static_cast<size_t>(g.n_downstream());
  PHI3_CHECK(r.scores.size() == U * Dn, "mib_graph_json: scores do not match the graph");
  const bool have_mask = r.chosen_mask.size() == U * Dn;
  auto in_mask = [&](int u, int v) { return have_mask && r.chosen_mask[size_t(u) * Dn + v] != 0; };

  nlohmann::ordered_json edges = nlohmann::ordered_json::object();
  std::vector<bool> up_in(U, false), down_in(Dn, false);
  auto edge = [&](int u, int v) {
    PHI3_CHECK(g.has_edge(u, v), "mib_graph_json: not an edge of the graph");
    const bool in = in_mask(u, v);
    if (in) up_in[u] = down_in[v] = true;
    edges[g.upstream_name(u) + "->" + g.downstream_name(v)] = {{"score", r.scores[size_t(u) * Dn + v]},
                                                              {"in_graph", in}};
  };
  std::vector<int> stream = {g.input()};  // upstream nodes written so far (EAP-IG's residual_stream)
  for (int l = 0; l < r.L; ++l) {
    for (int u : stream)
      for (int h = 0; h < r.H; ++h)
        for (CircuitGraph::In w : {CircuitGraph::In::Q, CircuitGraph::In::K, CircuitGraph::In::V})
          edge(u, g.head_in(l, h, w));
    for (int h = 0; h < r.H; ++h) stream.push_back(g.head(l, h));
    for (int u : stream) edge(u, g.mlp_in(l));
    stream.push_back(g.mlp_out(l));
  }
  for (int u : stream) edge(u, g.logits());

  nlohmann::ordered_json nodes = nlohmann::ordered_json::object();
  nodes["input"] = {{"in_graph", bool(up_in[g.input()])}};
  for (int l = 0; l < r.L; ++l) {
    for (int h = 0; h < r.H; ++h) {
      bool in = up_in[g.head(l, h)];
      for (CircuitGraph::In w : {CircuitGraph::In::Q, CircuitGraph::In::K, CircuitGraph::In::V})
        in = in || down_in[g.head_in(l, h, w)];
      nodes[g.upstream_name(g.head(l, h))] = {{"in_graph", in}};
    }
    nodes["m" + std::to_string(l)] = {{"in_graph", up_in[g.mlp_out(l)] || down_in[g.mlp_in(l)]}};
  }
  nodes["logits"] = {{"in_graph", bool(down_in[g.logits()])}};

  nlohmann::ordered_json j;
  j["cfg"] = {{"n_layers", r.L}, {"n_heads", r.H}, {"parallel_attn_mlp", false}, {"d_model", d_model}};
  j["nodes"] = std::move(nodes);
  j["edges"] = std::move(edges);
  return j;
}

std::string write_mib_submission(const CircuitRunResult& r, int d_model, const std::string& dir,
                                 const std::string& task, const std::string& model) {
  for (const std::string* s : {&task, &model})
    if (s->empty() || s->find_first_of("/\\_") != std::string::npos)
      throw Error("--export mib: task and model names must be non-empty, without '/', '\\' or '_' (MIB's folder is "
                  "<task>_<model>), got '" + *s + "'");
  const std::string folder = path_join(dir, task + "_" + model);
  make_dirs(folder);
  const std::string path = path_join(folder, "importances.json");
  write_file_atomic(path, mib_graph_json(r, d_model).dump() + "\n");
  return path;
}

}  // namespace phi3
