// `phi3patch circuit`: EAP / EAP-IG edge scores, top-k circuits evaluated exactly, the
// faithfulness curve (patching/circuit_run.h).
#include <chrono>
#include <cstdio>
#include <iostream>

#include "patching/circuit_run.h"
#include "patching/out_dir.h"
#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "runtime/comm.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {
const char* kCircuitUsage = R"(phi3patch circuit - circuit discovery: edge attribution (EAP, EAP-IG) and exact faithfulness

usage: phi3patch circuit [OPTIONS]

The graph: upstream nodes are the input embedding, every attention head's output and every
MLP's output; downstream nodes are every head's q input, every KV head's k and v inputs, every
MLP's input and the logits; an edge joins each upstream node to every downstream node that reads
the residual stream after it (heads feed their own layer's MLP). Each circuit is evaluated
exactly: a forward on the clean prompts in which every edge outside the circuit carries the
corrupted run's value; faithfulness = (m(circuit) - m(empty)) / (m(full) - m(empty)).
Under mpirun the grid's circuits are divided across the ranks.

  --model DIR        Phi3ForCausalLM checkpoint [data/models/tiny-temporal-phi3]
  --device D         auto | cpu | cuda [auto]
  --fp32             on CUDA, keep weights in fp32 (bf16 otherwise)
  --pairs FILE       clean/corrupted pairs (as for run) [data/temporal_scope_for_attribution_patching.json]
  --method M         eap | eap-ig [eap-ig]
  --ig-steps N       EAP-IG: inputs interpolated between the corrupted and clean embeddings [5]
  --direction D      denoise (gradient on the corrupted run, clean - corrupted) | noise [denoise]
  --edge-grid LIST   comma-separated numbers of top edges whose circuits are evaluated exactly
                     [1, 2, 5, 10, ... and all edges]
  --select S         top-k (the K edges of largest |score|) | greedy (from the logits, the
                     edge of largest |score| into a node already in the circuit, as the EAP-IG
                     paper does); either is then pruned to the part connected from the input
                     to the logits [top-k]
  --edges K          the circuit to report (K edges chosen, pruned) [the smallest grid circuit
                     with faithfulness >= --target]
  --target F         faithfulness the default circuit must reach [0.8]
  --mem-budget MB    work buffers of one batched circuit forward (0 = a quarter of free
                     device memory) [0]
  --batch N          pairs per batch for large pair files (every batch padded to the file's
                     longest prompt; scores and circuit metrics are over all prompts, equal to
                     one batch's) [all pairs in one batch]
  --out DIR          output directory [out-circuit]: edges.csv, circuit.json, faithfulness.svg,
                     circuit.svg, report.html
  --force            overwrite a circuit.json already in --out
  --no-bos           do not prepend BOS (by default: where the tokenizer asks for one)
  --bos              prepend the tokenizer's BOS token even where it asks for none
  --answer-first-token  an answer of more than one token uses its first piece
)";
}  // namespace

int cmd_circuit(int argc, char** argv, int first) {
  Args a(argc, argv, first,
         {"model", "device", "pairs", "method", "ig-steps", "direction", "edge-grid", "edges", "target", "out",
          "select", "mem-budget", "batch"},
         {"fp32", "force", "no-bos", "bos", "help", "answer-first-token"});
  if (a.has("help")) {
    std::cout << kCircuitUsage;
    return 0;
  }
  if (!a.positional().empty()) throw Error("unexpected argument '" + a.positional()[0] + "'");
  CircuitOptions opt;
  opt.pairs_file = a.get("pairs", default_path("data/temporal_scope_for_attribution_patching.json"));
  const std::string method = a.get("method", "eap-ig");
  if (method != "eap" && method != "eap-ig") throw Error("--method: expected eap or eap-ig, got '" + method + "'");
  opt.ig = method == "eap-ig";
  opt.ig_steps = a.get_int("ig-steps", 5);
  if (a.has("ig-steps") && !opt.ig) throw Error("--ig-steps applies to --method eap-ig only");
  if (opt.ig_steps < 1) throw Error("--ig-steps: EAP-IG needs at least one step, got " + std::to_string(opt.ig_steps));
  const std::string dir = a.get("direction", "denoise");
  if (dir != "denoise" && dir != "noise") throw Error("--direction: expected denoise or noise, got '" + dir + "'");
  opt.noising = dir == "noise";
  check_bos_flags(a);
  opt.answer_first_token = a.has("answer-first-token");
  opt.target = a.get_double("target", 0.8);
  const std::string sel = a.get("select", "top-k");
  if (sel != "top-k" && sel != "greedy") throw Error("--select: expected top-k or greedy, got '" + sel + "'");
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
  Comm& comm = Comm::world();
  comm.agree_on([&] {  // --out is rank 0's alone; every rank learns whether it is usable
    if (!comm.root()) return;
    const auto removed = prepare_out_dir({out, "circuit.json", {}, a.has("force"), false});
    if (!removed.empty())
      std::cerr << "[phi3patch] removed " << removed.size() << " temp files of an interrupted write in " << out << std::endl;
  });

  opt.log = [](const std::string& s) { std::cerr << "[phi3patch] " << s << std::endl; };
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> m;
  const std::string model_dir = a.get("model", default_path("data/models/tiny-temporal-phi3"));
  comm.agree_on([&] {
    be = make_backend(a.get("device", "auto"), a.has("fp32"));
    if (comm.root()) opt.log("loading " + model_dir + " on " + be->name());
    m = load_model(*be, model_dir);
    opt.add_bos = bos_option(a, m->tok);
    // The grid is checked against the model's graph before any work.
    if (a.has("edge-grid")) {
      const CircuitGraph g(m->cfg.num_hidden_layers, m->cfg.num_attention_heads, m->cfg.num_key_value_heads);
      opt.grid = parse_edge_grid(a.get("edge-grid", ""), g.n_edges());
    }
  });
  const CircuitRunResult r = run_circuit(*be, *m, opt, comm);
  if (!comm.root()) return 0;
  const auto files = write_circuit_outputs(r, out);
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
