// `phi3patch circuit`: EAP / EAP-IG edge scores, top-k circuits evaluated exactly, the
// faithfulness curve (patching/circuit_run.h).
#include <iostream>

#include "model/metric.h"
#include "patching/circuit_mib.h"
#include "patching/circuit_run.h"
#include "patching/out_dir.h"
#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "runtime/comm.h"
#include "patching/circuit.h"
#include "runtime/closest_name.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {


int cmd_circuit(const Args& a) {
  if (!a.positional().empty()) throw Error("unexpected argument '" + a.positional()[0] + "'");
  CircuitOptions opt;
  opt.pairs_file = a.get("pairs", default_path("data/temporal_scope_for_attribution_patching.json"));
  const std::string method = a.get("method", "eap-ig");
  if (method != "eap" && method != "eap-ig")
    throw Error("--method: expected eap or eap-ig, got '" + method + "'" + did_you_mean(method, {"eap", "eap-ig"}));
  opt.ig = method == "eap-ig";
  opt.ig_steps = a.get_int("ig-steps", 5);
  if (a.has("ig-steps") && !opt.ig) throw Error("--ig-steps applies to --method eap-ig only");
  if (opt.ig_steps < 1) throw Error("--ig-steps: EAP-IG needs at least one step, got " + std::to_string(opt.ig_steps));
  const std::string dir = a.get("direction", "denoise");
  check_direction(dir);
  opt.noising = dir == "noise";
  if (parse_metric(a.get("metric", "logit-diff")) != MetricKind::LogitDiff)
    throw Error("--metric " + a.get("metric", "") + ": circuit discovery supports only --metric logit-diff (EAP / "
                "EAP-IG scores and faithfulness use the mean logit difference); prob-diff, logprob and kl are "
                "options of `phi3patch run`");
  check_bos_flags(a);
  opt.answer_first_token = a.has("answer-first-token");
  opt.mix = !a.has("no-mix");
  opt.target = a.get_double("target", 0.8);
  const std::string sel = a.get("select", "top-k");
  if (sel != "top-k" && sel != "greedy")
    throw Error("--select: expected top-k or greedy, got '" + sel + "'" + did_you_mean(sel, {"top-k", "greedy"}));
  opt.greedy = sel == "greedy";
  opt.mem_budget = static_cast<size_t>(a.get_double("mem-budget", 0) * 1024 * 1024);
  opt.batch_pairs = a.get_int("batch", 0);
  if (a.has("batch") && opt.batch_pairs < 1)
    throw Error("--batch: expected a positive number of pairs, got " + a.get("batch", ""));
  if (a.has("edges")) {
    opt.edges = a.get_int("edges", 0);
    if (opt.edges < 1) throw Error("--edges: expected a positive number of edges, got " + a.get("edges", ""));
  }
  const std::string out = a.get("out", "out-circuit");
  const std::string export_fmt = a.get("export", "");
  if (a.has("export") && export_fmt != "mib")
    throw Error("--export: expected mib, got '" + export_fmt + "'" + did_you_mean(export_fmt, {"mib"}));
  if (!a.has("export") && (a.has("mib-task") || a.has("mib-model")))
    throw Error("--mib-task / --mib-model apply to --export mib only");
  auto base_name = [](std::string p) {
    while (p.size() > 1 && (p.back() == '/' || p.back() == '\\')) p.pop_back();
    const size_t s = p.find_last_of("/\\");
    return s == std::string::npos ? p : p.substr(s + 1);
  };
  std::string mib_task = base_name(opt.pairs_file);
  if (mib_task.size() > 5 && mib_task.compare(mib_task.size() - 5, 5, ".json") == 0) mib_task.resize(mib_task.size() - 5);
  for (char& ch : mib_task)
    if (ch == '_') ch = '-';  // MIB's folder is <task>_<model>
  mib_task = a.get("mib-task", mib_task);
  Comm& comm = Comm::world();
  opt.log = [](const std::string& s) { std::cerr << "[phi3patch] " << s << std::endl; };
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> m;
  const std::string model_dir = a.get("model", default_path("data/models/tiny-temporal-phi3"));
  // Everything that can be checked without the weights is, before any is read: the
  // architecture's support for circuits, the grid against the graph, the pairs and their tokens.
  comm.agree_on([&] {
    const double t0 = now_seconds();
    m = load_model_meta(model_dir);
    opt.add_bos = bos_option(a, m->tok);
    check_circuit_support(m->cfg);
    if (!export_fmt.empty()) check_mib_support(m->cfg);
    if (a.has("edge-grid")) {
      const CircuitGraph g(m->cfg.num_hidden_layers, m->cfg.num_attention_heads, m->cfg.num_key_value_heads);
      opt.grid = parse_edge_grid(a.get("edge-grid", ""), g.n_edges());
    }
    const CircuitInputs in = check_circuit_inputs(*m, opt);
    if (comm.root()) opt.log(checked_before_weights(in.pairs.size(), in.T, t0));
  });
  comm.agree_on([&] {  // --out is rank 0's alone; every rank learns whether it is usable
    if (!comm.root()) return;
    const auto removed = prepare_out_dir({out, "circuit.json", {}, a.has("force"), false});
    if (!removed.empty())
      std::cerr << "[phi3patch] removed " << removed.size() << " temp files of an interrupted write in " << out << std::endl;
  });
  comm.agree_on([&] {
    be = make_backend(a.get("device", "auto"), a.has("fp32"));
    if (comm.root()) opt.log("loading " + model_dir + " on " + be->name());
    load_weights(*be, *m);
  });
  const CircuitRunResult r = run_circuit(*be, *m, opt, comm);
  if (!comm.root()) return 0;
  auto files = write_circuit_outputs(r, out);
  if (!export_fmt.empty()) {
    std::string mib_model = base_name(model_dir);
    for (char& ch : mib_model)
      if (ch == '_') ch = '-';
    files.push_back(write_mib_submission(r, m->cfg.hidden_size, path_join(out, "mib"), mib_task,
                                         a.get("mib-model", mib_model)));
  }
  std::cout << "model: " << model_dir << " (" << r.L << " layers, " << r.H << " heads) on " << be->name() << "\n"
            << "graph: " << r.n_edges << " edges; " << r.method << " (" << r.direction << ") scores in "
            << r.score_seconds << " s\n"
            << "logit diff: clean " << r.ld_clean << ", corrupted " << r.ld_corrupted << "; exact full circuit "
            << r.ld_full << ", empty " << r.ld_empty << "\n"
            << "faithfulness (" << r.selection << ", pruned; k:faithfulness):";
  for (const auto& p : r.grid) std::cout << " " << p.k << ":" << p.faithfulness;
  std::cout << "\ncircuit: " << r.chosen.edges << " edges (" << r.selection << " " << r.chosen.k << "), faithfulness "
            << r.chosen.faithfulness << "; " << r.circuit_forwards << " exact circuit forwards in " << r.eval_seconds << " s"
            << (r.world_size > 1 ? " over " + std::to_string(r.world_size) + " ranks" : std::string()) << "\nwrote " << files.size() << " files to " << out << "/ (open " << path_join(out, "report.html")
            << ")\n";
  return 0;
}

}  // namespace phi3
