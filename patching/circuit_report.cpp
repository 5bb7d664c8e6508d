// Outputs of `phi3patch circuit` (declared in patching/circuit_run.h): edges.csv, circuit.json,
// faithfulness.svg, circuit.svg (the circuit drawn by layer) and report.html.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "patching/circuit_run.h"
#include "patching/svg.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {

std::string num(double v, int prec = 4) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", prec, v);
  return b;
}

// Valid edges by |score| (largest first; ties in index order).
std::vector<int64_t> ranked_edges(const CircuitGraph& g, const std::vector<float>& s) {
  std::vector<int64_t> cells;
  const int Dn = g.n_downstream();
  for (int u = 0; u < g.n_upstream(); ++u)
    for (int v = 0; v < Dn; ++v)
      if (g.has_edge(u, v)) cells.push_back(int64_t(u) * Dn + v);
  std::stable_sort(cells.begin(), cells.end(),
                   [&](int64_t a, int64_t b) { return std::fabs(s[a]) > std::fabs(s[b]); });
  return cells;
}

std::string faithfulness_svg(const CircuitRunResult& r) {
  const double W = 640, H = 420, left = 70, right = 20, top = 50, bottom = 60;
  const double pw = W - left - right, ph = H - top - bottom;
  double lo = 0, hi = 1;
  for (const auto& p : r.grid) lo = std::min(lo, p.faithfulness), hi = std::max(hi, p.faithfulness);
  const double xmax = std::log10(double(std::max<int64_t>(r.n_edges, 2)));
  auto X = [&](int64_t k) { return left + pw * (k <= 0 ? 0.0 : std::log10(double(k)) / xmax); };
  auto Y = [&](double f) { return top + ph * (1 - (f - lo) / (hi - lo)); };
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif'>\n";
  o << "<text x='" << W / 2 << "' y='24' text-anchor='middle' font-size='15'>Faithfulness of the top-k circuits ("
    << xml_escape(r.method) << ", " << xml_escape(r.direction) << ")</text>\n";
  o << "<rect x='" << left << "' y='" << top << "' width='" << pw << "' height='" << ph
    << "' fill='none' stroke='#888'/>\n";
  for (double f : {0.0, 1.0}) {
    o << "<line x1='" << left << "' x2='" << left + pw << "' y1='" << Y(f) << "' y2='" << Y(f)
      << "' stroke='#bbb' stroke-dasharray='4 3'/>\n";
    o << "<text x='" << left - 6 << "' y='" << Y(f) + 4 << "' text-anchor='end' font-size='11'>" << f << "</text>\n";
  }
  for (int64_t p = 1; p <= r.n_edges; p *= 10)
    o << "<text x='" << X(p) << "' y='" << top + ph + 16 << "' text-anchor='middle' font-size='11'>" << p
      << "</text>\n";
  o << "<text x='" << left + pw / 2 << "' y='" << H - 16
    << "' text-anchor='middle' font-size='12'>edges chosen (" << (r.selection == "greedy" ? "greedy" : "top k")
    << " by |score|, log scale)</text>\n";
  o << "<text x='16' y='" << top + ph / 2 << "' text-anchor='middle' font-size='12' transform='rotate(-90 16 "
    << top + ph / 2 << ")'>faithfulness</text>\n";
  std::string path;
  for (const auto& p : r.grid) {
    if (p.k <= 0) continue;
    path += (path.empty() ? "M" : " L") + num(X(p.k), 6) + " " + num(Y(p.faithfulness), 6);
  }
  o << "<path d='" << path << "' fill='none' stroke='#2166ac' stroke-width='2'/>\n";
  for (const auto& p : r.grid) {
    if (p.k <= 0) continue;
    o << "<circle cx='" << X(p.k) << "' cy='" << Y(p.faithfulness) << "' r='3.5' fill='#2166ac'><title>top " << p.k
      << " edges (" << p.edges << " after pruning): faithfulness " << num(p.faithfulness) << "</title></circle>\n";
  }
  o << "</svg>\n";
  return o.str();
}

// The circuit by layer: one row per layer (input at the bottom, logits at the top), a head
// per column and the MLP at the right; a node's area follows the total |score| of its circuit
// edges, an edge's width its |score| (blue: positive, red: negative).
std::string circuit_svg(const CircuitRunResult& r, const CircuitGraph& g) {
  const int L = g.L(), H = g.H(), Dn = g.n_downstream(), grp = g.H() / g.KVH();
  const double colw = 70, rowh = 90, left = 60, top = 50;
  const double W = left * 2 + colw * (H + 1), Hh = top * 2 + rowh * (L + 1);
  // Component position of an upstream node and of a downstream node's reader.
  auto up_pos = [&](int u, double& x, double& y) {
    const int l = g.upstream_layer(u);
    if (u == g.input()) {
      x = W / 2, y = Hh - top;
      return;
    }
    const int i = g.upstream_is_head(u) ? (u - 1) % (H + 1) : H;
    x = left + colw * (i + 0.5);
    y = Hh - top - rowh * (l + 0.5) - (i == H ? rowh * 0.35 : 0);
  };
  auto down_pos = [&](int v, double& x, double& y) {
    if (v == g.logits()) {
      x = W / 2, y = top;
      return;
    }
    const int l = g.downstream_layer(v), i = v - l * g.per_layer_down();
    int col = H;
    if (i < H) col = i;
    else if (i < H + g.KVH()) col = (i - H) * grp;
    else if (i < H + 2 * g.KVH()) col = (i - H - g.KVH()) * grp;
    x = left + colw * (col + 0.5);
    y = Hh - top - rowh * (l + 0.5) - (col == H ? rowh * 0.35 : 0);
  };
  double max_s = 1e-30;
  std::map<std::pair<int, int>, double> weight;  // node position key -> total |score|
  std::vector<std::pair<int, int>> edges;
  for (int u = 0; u < g.n_upstream(); ++u)
    for (int v = 0; v < Dn; ++v)
      if (r.chosen_mask.size() && r.chosen_mask[size_t(u) * Dn + v]) {
        edges.push_back({u, v});
        max_s = std::max(max_s, double(std::fabs(r.scores[size_t(u) * Dn + v])));
      }
  std::ostringstream o, lines, nodes;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << Hh << "' font-family='sans-serif'>\n";
  o << "<text x='" << W / 2 << "' y='20' text-anchor='middle' font-size='14'>Circuit: " << r.chosen.edges
    << " edges (" << (r.selection == "greedy" ? "greedy " : "top ") << r.chosen.k << " by |" << xml_escape(r.method)
    << "|, pruned), faithfulness "
    << num(r.chosen.faithfulness, 3) << "</text>\n";
  std::map<std::pair<long, long>, std::pair<double, std::string>> node_w;
  auto add_node = [&](double x, double y, double s, const std::string& name) {
    auto& e = node_w[{std::lround(x), std::lround(y)}];
    e.first += s;
    if (e.second.empty()) e.second = name;
  };
  for (auto [u, v] : edges) {
    const double s = r.scores[size_t(u) * Dn + v];
    double x1, y1, x2, y2;
    up_pos(u, x1, y1);
    down_pos(v, x2, y2);
    lines << "<line x1='" << x1 << "' y1='" << y1 << "' x2='" << x2 << "' y2='" << y2 << "' stroke='"
          << (s >= 0 ? "#2166ac" : "#b2182b") << "' stroke-opacity='0.6' stroke-width='"
          << num(0.5 + 4.5 * std::fabs(s) / max_s, 3) << "'><title>" << xml_escape(g.upstream_name(u)) << " -&gt; "
          << xml_escape(g.downstream_name(v)) << ": " << num(s) << "</title></line>\n";
    add_node(x1, y1, std::fabs(s), g.upstream_name(u));
    std::string dn = g.downstream_name(v);
    const size_t lt = dn.find('<');
    if (lt != std::string::npos) dn = dn.substr(0, lt);
    add_node(x2, y2, std::fabs(s), dn);
  }
  double max_n = 1e-30;
  for (auto& [k, e] : node_w) max_n = std::max(max_n, e.first);
  for (auto& [k, e] : node_w) {
    const double rad = 4 + 14 * std::sqrt(e.first / max_n);
    nodes << "<circle cx='" << k.first << "' cy='" << k.second << "' r='" << num(rad, 3)
          << "' fill='#fdb863' stroke='#555'><title>" << xml_escape(e.second) << ": total |score| " << num(e.first)
          << "</title></circle>\n<text x='" << k.first << "' y='" << k.second + 4
          << "' text-anchor='middle' font-size='10'>" << xml_escape(e.second) << "</text>\n";
  }
  for (int l = 0; l < L; ++l)
    o << "<text x='8' y='" << Hh - top - rowh * (l + 0.5) + 4 << "' font-size='11' fill='#666'>layer " << l
      << "</text>\n";
  o << lines.str() << nodes.str() << "</svg>\n";
  return o.str();
}

}  // namespace

std::string circuit_json(const CircuitRunResult& r) {
  const CircuitGraph g(r.L, r.H, r.KVH);
  const int Dn = g.n_downstream();
  const std::vector<int64_t> ranked = ranked_edges(g, r.scores);
  using nlohmann::json;
  json j;
  j["format_version"] = 1;
  j["architecture"] = r.architecture;
  j["family"] = r.family;
  j["method"] = r.method;
  j["direction"] = r.direction;
  j["selection"] = r.selection + ", pruned to the part connected from the input to the logits";
  j["pairs_file"] = r.pairs_file;
  j["answer_first_token"] = r.answers_cut;
  j["mixed"] = r.mix;  // every pair both ways (--no-mix: false)
  j["graph"] = {{"layers", r.L}, {"heads", r.H}, {"kv_heads", r.KVH}, {"upstream", g.n_upstream()},
                {"downstream", g.n_downstream()}, {"edges", r.n_edges}};
  j["prompts"] = r.B;
  j["T"] = r.T;
  j["batches"] = r.batches;
  j["metric"] = "mean logit difference; faithfulness = (m(circuit) - m(empty)) / (m(full) - m(empty))";
  j["logit_diff"] = {{"clean", r.ld_clean}, {"corrupted", r.ld_corrupted}, {"full_circuit", r.ld_full},
                     {"empty_circuit", r.ld_empty}};
  json grid = json::array();
  for (const auto& p : r.grid)
    grid.push_back({{"k", p.k}, {"edges_after_pruning", p.edges}, {"logit_diff", p.logit_diff},
                    {"faithfulness", p.faithfulness}, {"logit_diff_per_prompt", p.logit_diff_per_row}});
  j["faithfulness"] = grid;
  json edges = json::array();
  std::vector<int> node_in(g.n_upstream(), 0), node_out(Dn, 0);
  for (int64_t c : ranked)
    if (r.chosen_mask.size() && r.chosen_mask[c]) {
      const int u = int(c / Dn), v = int(c % Dn);
      edges.push_back({{"upstream", g.upstream_name(u)}, {"downstream", g.downstream_name(v)}, {"score", r.scores[c]}});
      node_in[u] = 1;
      node_out[v] = 1;
    }
  json nodes = json::array();
  for (int u = 0; u < g.n_upstream(); ++u)
    if (node_in[u]) nodes.push_back(g.upstream_name(u));
  for (int v = 0; v < Dn; ++v)
    if (node_out[v]) nodes.push_back(g.downstream_name(v));
  j["circuit"] = {{"k", r.chosen.k}, {"edges_after_pruning", r.chosen.edges}, {"logit_diff", r.chosen.logit_diff},
                  {"faithfulness", r.chosen.faithfulness}, {"nodes", nodes}, {"edges", edges}};
  j["timing"] = {{"score_seconds", r.score_seconds}, {"eval_seconds", r.eval_seconds},
                 {"circuit_forwards", r.circuit_forwards}, {"world_size", r.world_size},
                 {"circuits_per_rank", r.circuits_per_rank},
                 {"circuit_forwards_per_second", r.eval_seconds > 0 ? r.circuit_forwards / r.eval_seconds : 0.0}};
  return j.dump(1) + "\n";
}

std::vector<std::string> write_circuit_outputs(const CircuitRunResult& r, const std::string& out) {
  const CircuitGraph g(r.L, r.H, r.KVH);
  const int Dn = g.n_downstream();
  std::vector<std::string> files;
  auto put = [&](const std::string& name, const std::string& text) {
    const std::string p = path_join(out, name);
    write_file_atomic(p, text);
    files.push_back(p);
  };
  const std::vector<int64_t> ranked = ranked_edges(g, r.scores);
  {
    std::ostringstream o;
    o << "rank,upstream,downstream,score,in_circuit\n";
    for (size_t i = 0; i < ranked.size(); ++i) {
      const int u = int(ranked[i] / Dn), v = int(ranked[i] % Dn);
      o << i + 1 << "," << g.upstream_name(u) << "," << g.downstream_name(v) << "," << num(r.scores[ranked[i]], 9)
        << "," << (r.chosen_mask.size() && r.chosen_mask[ranked[i]] ? 1 : 0) << "\n";
    }
    put("edges.csv", o.str());
  }
  put("circuit.json", circuit_json(r));
  const std::string fsvg = faithfulness_svg(r), csvg = circuit_svg(r, g);
  put("faithfulness.svg", fsvg);
  put("circuit.svg", csvg);
  std::ostringstream h;
  h << "<!doctype html><html><head><meta charset='utf-8'><title>phi3patch circuit</title>"
    << "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 8px;text-align:right}"
    << "</style></head><body>\n<h1>Circuit discovery</h1>\n<h2>Circuit</h2>\n<p>" << xml_escape(r.method)
    << " scores (" << xml_escape(r.direction) << ") of all " << r.n_edges << " edges of the graph ("
    << g.n_upstream() << " upstream, " << g.n_downstream() << " downstream nodes) on " << r.B << " prompts from "
    << xml_escape(r.pairs_file) << ". Logit difference: clean " << num(r.ld_clean) << ", corrupted "
    << num(r.ld_corrupted) << "; exact full circuit " << num(r.ld_full) << ", empty circuit " << num(r.ld_empty)
    << ". Scoring took " << num(r.score_seconds, 3) << " s; " << r.circuit_forwards << " exact circuit forwards took "
    << num(r.eval_seconds, 3) << " s.</p>\n"
    << fsvg << "\n<table><tr><th>top k</th><th>edges after pruning</th><th>logit diff</th><th>faithfulness</th></tr>\n";
  for (const auto& p : r.grid)
    h << "<tr><td>" << p.k << "</td><td>" << p.edges << "</td><td>" << num(p.logit_diff) << "</td><td>"
      << num(p.faithfulness) << "</td></tr>\n";
  h << "</table>\n<p>The reported circuit: " << r.chosen.edges << " edges, faithfulness " << num(r.chosen.faithfulness)
    << " (edges in circuit.json, all scores in edges.csv).</p>\n"
    << csvg << "\n<h3>Top edges</h3><table><tr><th>rank</th><th>upstream</th><th>downstream</th><th>score</th></tr>\n";
  for (size_t i = 0; i < std::min<size_t>(20, ranked.size()); ++i)
    h << "<tr><td>" << i + 1 << "</td><td>" << g.upstream_name(int(ranked[i] / Dn)) << "</td><td>"
      << xml_escape(g.downstream_name(int(ranked[i] % Dn))) << "</td><td>" << num(r.scores[ranked[i]]) << "</td></tr>\n";
  h << "</table></body></html>\n";
  put("report.html", h.str());
  return files;
}

}  // namespace phi3
