// phi3patch: activation and attribution patching for the decoder families of model/arch/.
// Subcommands: run (default), forward, tokenize, circuit, verify, accuracy, bench, make-random. Errors print one line
// ("phi3patch: error: ...") and exit non-zero; results go to files, progress to stderr.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "model/forward.h"
#include "patching/accuracy.h"
#include "patching/cli/args.h"
#include "patching/cli/command_specs.h"
#include "patching/cli/commands.h"
#include "patching/checkpoint.h"
#include "patching/experiment.h"
#include "patching/out_dir.h"
#include "patching/report.h"
#include "kernels/cpu/parallel.h"
#include "runtime/comm.h"
#include "runtime/closest_name.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/hf_cache.h"

namespace phi3 {

std::atomic<bool> g_interrupted{false};

std::string default_path(const std::string& rel) {
  if (file_exists(rel) || dir_exists(rel)) return rel;
  std::string alt = path_join(PHI3_SOURCE_DIR, rel);
  if (file_exists(alt) || dir_exists(alt)) return alt;
  return rel;
}

void check_bos_flags(const Args& a) {
  if (a.has("bos") && a.has("no-bos")) throw Error("--bos and --no-bos: give one of them");
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string checked_before_weights(size_t pairs, int longest, double t0_seconds) {
  char took[160];
  std::snprintf(took, sizeof took, "checked %zu pairs (longest prompt %d tokens) against config.json and the "
                "tokenizer in %.2f s", pairs, longest, now_seconds() - t0_seconds);
  return took;
}

bool bos_option(const Args& a, const Tokenizer& tok) {
  check_bos_flags(a);
  if (a.has("bos")) {
    if (tok.bos_id() < 0)
      throw Error("--bos: the " + tok.kind() + " tokenizer has no BOS token (tokenizer_config.json names no bos_token)");
    return true;
  }
  return !a.has("no-bos") && tok.bos_by_default();
}

void check_direction(const std::string& dir) {
  if (dir != "denoise" && dir != "noise")
    throw Error("--direction: expected denoise or noise, got '" + dir + "'" + did_you_mean(dir, {"denoise", "noise"}));
}

namespace {

// A layer named in --hooks (blocks.L.hook_*) must be one of the model's.
void check_hook_layers(const std::vector<HookSpec>& specs, const ModelConfig& cfg) {
  for (const HookSpec& h : specs)
    if (h.layer >= cfg.num_hidden_layers)
      throw Error("--hooks: blocks." + std::to_string(h.layer) + "." + hook_tl_name(h.hook) + ": layer " +
                  std::to_string(h.layer) + " is outside the model's " + std::to_string(cfg.num_hidden_layers) +
                  " layers (0-" + std::to_string(cfg.num_hidden_layers - 1) + ")");
}

// --method: a comma-separated list of attribution, atp-star, activation (or both, all).
void parse_methods(const std::string& list, ExperimentOptions& opt) {
  opt.attribution = opt.activation = opt.atp_star = false;
  std::stringstream ss(list);
  std::string item;
  bool any = false;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    if (item == "attribution") opt.attribution = true;
    else if (item == "activation") opt.activation = true;
    else if (item == "atp-star") opt.atp_star = true;
    else if (item == "both") opt.attribution = opt.activation = true;
    else if (item == "all") opt.attribution = opt.activation = opt.atp_star = true;
    else
      throw Error("--method: expected attribution, atp-star, activation, both or all (comma-separated), got '" +
                  item + "'" + did_you_mean(item, {"attribution", "atp-star", "activation", "both", "all"}));
    any = true;
  }
  if (!any) throw Error("--method: no method given");
}

int cmd_run(const Args& a) {
  if (!a.positional().empty()) throw Error("unexpected argument '" + a.positional()[0] + "'");
  ExperimentOptions opt;
  opt.pairs_file = a.get("pairs", default_path("data/temporal_scope_for_attribution_patching.json"));
  // TransformerLens names with a layer (blocks.3.hook_resid_pre) name that layer: checked against
  // the config below; the layers named restrict every hook's rows as --layers does.
  std::vector<HookSpec> hook_specs;
  if (a.has("hooks")) {
    hook_specs = parse_hook_spec_list(a.get("hooks", ""));
    opt.hooks.clear();
    for (const HookSpec& h : hook_specs)
      if (std::find(opt.hooks.begin(), opt.hooks.end(), h.hook) == opt.hooks.end()) opt.hooks.push_back(h.hook);
    if (opt.hooks.empty()) throw Error("--hooks: no hook given");
  }
  parse_methods(a.get("method", "both"), opt);
  opt.verify_top = a.get_int("verify-top", 0);
  if (a.has("verify-top") && opt.verify_top < 1)
    throw Error("--verify-top: expected a positive number of nodes, got " + std::to_string(opt.verify_top));
  if (a.has("verify-top") && !a.has("method")) {  // the estimates it ranks by, no full sweep
    opt.attribution = opt.atp_star = true;
    opt.activation = false;
    opt.auto_methods = true;
  }
  check_methods(opt);
  const std::string dir = a.get("direction", "denoise");
  check_direction(dir);
  opt.noising = dir == "noise";
  opt.metric = parse_metric(a.get("metric", "logit-diff"));
  check_bos_flags(a);
  opt.answer_first_token = a.has("answer-first-token");
  opt.batch_pairs = a.get_int("batch", 0);
  opt.naive = a.has("naive");
  opt.mem_budget = static_cast<size_t>(a.get_double("mem-budget", 0) * 1024 * 1024);
  opt.positions = a.get("positions", "");
  opt.layers = a.get("layers", "");
  if (a.has("layers") && opt.layers.empty()) throw Error("--layers: no layer given");
  std::vector<int> named_layers;
  for (const HookSpec& h : hook_specs)
    if (h.layer >= 0 && std::find(named_layers.begin(), named_layers.end(), h.layer) == named_layers.end())
      named_layers.push_back(h.layer);
  if (!named_layers.empty()) {
    if (a.has("layers"))
      throw Error("--layers and a layer in --hooks (blocks.N.hook_...): give the layers in one of them");
    for (int l : named_layers) opt.layers += (opt.layers.empty() ? "" : ",") + std::to_string(l);
  }
  opt.mix = !a.has("no-mix");
  opt.recompute = a.get("recompute", "auto");
  if (opt.recompute != "auto" && opt.recompute != "on" && opt.recompute != "off")
    throw Error("--recompute: expected auto, on or off, got '" + opt.recompute + "'" +
                did_you_mean(opt.recompute, {"auto", "on", "off"}));
  if (a.has("positions") && opt.positions.empty()) throw Error("--positions: no position given");
  Comm& comm = Comm::world();
  opt.log = [&comm](const std::string& s) {
    if (g_interrupted) throw Error("interrupted (Ctrl-C); no results were written");
    if (comm.root()) std::cerr << "[phi3patch] " << s << std::endl;
  };
  opt.should_stop = [] { return g_interrupted.load(); };
  const std::string out = a.get("out", "out");
  opt.checkpoint_out = out;
  opt.resume = a.has("resume");
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> m;
  const std::string model_dir = a.get("model", default_path("data/models/tiny-temporal-phi3"));
  // Everything that can be checked without the weights is, before any is read: config.json's
  // architecture, the tokenizer, the pairs file and every prompt and answer's tokens.
  comm.agree_on([&] {
    const double t0 = now_seconds();
    m = load_model_meta(model_dir);
    opt.add_bos = bos_option(a, m->tok);
    check_hook_layers(hook_specs, m->cfg);
    const ExperimentInputs in = check_experiment_inputs(*m, opt);
    opt.log(checked_before_weights(in.pairs.size(), in.T, t0));
  });
  // The output directory is rank 0's alone; every rank learns whether it is usable.
  std::string err;
  if (comm.root()) {
    try {
      const auto removed = prepare_out_dir({out, "results.json", {"checkpoints", "checkpoints-verify"}, a.has("force"), opt.resume});
      if (!removed.empty())
        std::cerr << "[phi3patch] removed " << removed.size() << " temp files of an interrupted write in " << out << std::endl;
    } catch (const Error& e) {
      err = e.what();
    }
  }
  comm.agree(err);
  int code = 2;
  try {
    be = make_backend(a.get("device", "auto"), a.has("fp32"));
    opt.log("loading " + model_dir + " on " + be->name());
    const auto t_load = std::chrono::steady_clock::now();
    load_weights(*be, *m);
    char took[96];
    std::snprintf(took, sizeof took, "loaded %.0f MiB of weights in %.2f s", m->w.bytes / 1048576.0,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count());
    opt.log(took);
    if (g_interrupted) throw Error("interrupted (Ctrl-C); no results were written");
  } catch (const OutOfMemory& e) {
    err = e.what();
    code = 3;
  } catch (const Error& e) {
    err = e.what();
    code = g_interrupted ? 130 : 2;
  }
  comm.agree(err, code);
  ExperimentResult R = run_experiment(*be, *m, opt, comm);
  if (!comm.root()) return 0;
  if (g_interrupted) throw Error("interrupted (Ctrl-C); no results were written");
  auto files = write_report(R, out);

  std::cout << "model: " << model_dir << " (" << m->cfg.num_hidden_layers << " layers, d=" << m->cfg.hidden_size
            << ") on " << R.device << "\n";
  if (!R.batches.empty()) print_batch_summary(std::cout, R.batches.front(), R.metric);
  if (R.batches.size() > 1)
    std::cout << "(first of " << R.batches.size() << " batches shown; all prompts are in results.json)\n"
              << "Over " << R.n_prompts << " prompts: clean LD " << R.clean_ld << ", corrupted LD " << R.corrupted_ld
              << (R.metric == MetricKind::LogitDiff ? std::string()
                                                    : std::string("; ") + metric_name(R.metric) + " clean " +
                                                          std::to_string(R.clean_m) + ", corrupted " +
                                                          std::to_string(R.corrupted_m))
              << "\n";
  for (const auto& r : R.results) {
    std::cout << hook_name(r.hook) << " " << r.method << ": " << r.seconds << " s";
    if (r.exact())
      std::cout << " (" << r.work.patched_runs << " runs, " << r.work.skipped_noop << " no-op skipped, "
                << r.work.token_layer_evals << "/" << r.work.naive_token_layer_evals << " token-layer evals)";
    std::cout << "\n";
  }
  for (const auto& c : R.comparisons)
    std::cout << hook_name(c.hook) << ": attribution vs activation Pearson " << c.pearson << ", Spearman "
              << c.spearman << "\n";
  for (const auto& q : R.quality)
    std::cout << hook_name(q.hook) << ": |" << q.method << "| vs |exact| over " << q.nodes << " nodes: Pearson "
              << q.pearson_abs << ", Spearman " << q.spearman_abs << ", recall of the exact top-10 in its top-20 "
              << q.recall_10_in_20 << "\n";
  if (!R.verified.empty()) {
    std::cout << "top " << R.verified.size() << " nodes by |" << R.verify_ranked_by << "|, patched exactly:\n";
    for (size_t i = 0; i < std::min<size_t>(R.verified.size(), 10); ++i) {
      const VerifiedNode& v = R.verified[i];
      std::cout << "  " << v.rank << ". " << hook_name(v.hook) << " " << v.row << " " << v.col << ": "
                << R.verify_ranked_by << " " << v.estimate << ", exact " << v.exact << " +- " << v.ci95 << "\n";
    }
    if (R.verified.size() > 10) std::cout << "  (all in verified.csv)\n";
  }
  for (const auto& s : describe_effects(R)) std::cout << s << "\n";
  std::cout << "wrote " << files.size() << " files to " << out << "/ (open " << path_join(out, "report.html")
            << ")\n";
  return 0;
}

int cmd_forward(const Args& a) {
  check_bos_flags(a);
  std::unique_ptr<Backend> be;  // declared before the model: its weights are freed through it
  // The config, tokenizer and pairs are checked before any weight is read.
  auto m = load_model_meta(a.get("model", default_path("data/models/tiny-temporal-phi3")));
  const std::string pairs_file = a.get("pairs", default_path("data/temporal_scope_for_attribution_patching.json"));
  auto pairs = load_pairs(pairs_file);
  check_tokenizable(pairs, m->tok, pairs_file);
  if (a.has("answer-first-token"))
    for (const auto& line : use_first_answer_tokens(pairs, m->tok)) std::cerr << "[phi3patch] " << line << std::endl;
  const bool bos = bos_option(a, m->tok);
  const bool mix = !a.has("no-mix");
  check_pairs(pairs, m->tok, m->cfg.max_position_embeddings, pairs_file, bos, m->cfg.vocab_size, mix);
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings, 0, bos, mix);
  be = make_backend(a.get("device", "auto"), a.has("fp32"));
  const auto t_load = std::chrono::steady_clock::now();
  load_weights(*be, *m);
  std::cerr << "[phi3patch] loaded " << (m->w.bytes >> 20) << " MiB of weights in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count() << " s" << std::endl;
  ForwardOptions fo;
  fo.keep_pattern = false;
  ForwardState clean = forward(*be, *m, pb.clean, fo), corrupted = forward(*be, *m, pb.corrupted, fo);
  check_finite(*be, *m, clean, "clean");
  check_finite(*be, *m, corrupted, "corrupted");
  print_batch_summary(std::cout, summarize_batch(*be, *m, pb, clean, corrupted));
  return 0;
}

int cmd_tokenize(const Args& a) {
  Tokenizer tok = Tokenizer::load_dir(a.get("model", default_path("data/models/tiny-temporal-phi3")));
  if (a.positional().empty()) throw Error("tokenize: give at least one text");
  const bool bos = bos_option(a, tok);
  for (const auto& text : a.positional()) {
    auto ids = tok.encode(text, bos);
    std::cout << "ids:";
    for (int id : ids) std::cout << " " << id;
    std::cout << "\npieces:";
    for (int id : ids) std::cout << " " << tok.piece(id);
    std::cout << "\ndecoded: " << tok.decode(ids) << "\n";
  }
  return 0;
}

int cmd_accuracy(const Args& a) {
  std::unique_ptr<Backend> be;  // declared before the model: its weights are freed through it
  auto m = load_model_meta(a.get("model", default_path("data/models/tiny-temporal-phi3")));
  const std::string split = a.get("split", "heldout");
  const AccuracyItems items = accuracy_items(*m, a.get("dataset", default_path("data/raw/temporal_scope_caa.json")), split);
  be = make_backend(a.get("device", "auto"), a.has("fp32"));
  load_weights(*be, *m);
  auto r = dataset_accuracy(*be, *m, items);
  std::cout << split << " accuracy: " << r.correct << "/" << r.items << " = " << r.accuracy() * 100 << "%\n";
  return 0;
}

bool has_flag(int argc, char** argv, const std::string& flag) {
  for (int i = 1; i < argc; ++i)
    if (argv[i] == flag) return true;
  return false;
}

int run_command(const std::string& cmd, int argc, char** argv, int first) {
  static const std::map<std::string, int (*)(const Args&)> impl = {
      {"run", cmd_run},         {"forward", cmd_forward}, {"tokenize", cmd_tokenize}, {"accuracy", cmd_accuracy},
      {"verify", cmd_verify},   {"circuit", cmd_circuit}, {"bench", cmd_bench},       {"make-random", cmd_make_random}};
  if (cmd == "help") {  // phi3patch help [COMMAND]
    std::cout << command_spec(first < argc ? argv[first] : "run").usage;
    return 0;
  }
  const CommandSpec& spec = command_spec(cmd);
  // An option no name of this command is close to, that another command takes: say which.
  auto parse = [&]() -> Args {
    try {
      return Args(argc, argv, first, spec.options, spec.flags);
    } catch (const Error& e) {
      const std::string msg = e.what(), pre = "unknown option '--";
      if (msg.rfind(pre, 0) != 0 || msg.find("did you mean") != std::string::npos) throw;
      const std::string name = msg.substr(pre.size(), msg.find('\'', pre.size()) - pre.size());
      std::string others;
      for (const CommandSpec& c : command_specs())
        if (c.options.count(name) || c.flags.count(name)) others += (others.empty() ? "" : ", ") + c.name;
      if (others.empty()) throw;
      throw Error("unknown option '--" + name + "' for " + spec.name + " (an option of " + others + "; see phi3patch " +
                  spec.name + " --help)");
    }
  };
  Args a = parse();
  if (a.has("help")) {
    std::cout << spec.usage;
    return 0;
  }
  // --model: a directory, a Hugging Face cache folder, or a hub id in the local cache
  // (org/name[@revision]), resolved here for every command.
  if (spec.options.count("model") && a.has("model")) {
    const std::string given = a.get("model", "");
    const std::string dir = resolve_model_dir(given);
    if (dir != given) {
      if (Comm::world().root()) std::cerr << "[phi3patch] model " << given << " \u2192 " << dir << std::endl;
      a.set("model", dir);
    }
  }
  return impl.at(spec.name)(a);
}
}  // namespace
}  // namespace phi3

int main(int argc, char** argv) {
  using namespace phi3;
  auto on_signal = [](int) {
    if (g_interrupted) std::_Exit(130);
    g_interrupted = true;
  };
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);  // mpirun / srun stop a job's ranks with SIGTERM
  std::string cmd = "run";
  int first = 1;
  if (argc > 1 && argv[1][0] != '-') {
    cmd = argv[1];
    first = 2;
  }
  Comm* comm = nullptr;
  // One line "phi3patch: error: ..." (in a distributed job from rank 0 alone, naming the rank
  // that failed); an error outside the ranks' agreement ends the whole job from this rank.
  auto fail = [&](const std::string& msg, int code) {
    if (comm && comm->distributed()) {
      std::cerr << "phi3patch: error: rank " << comm->rank() << " of " << comm->size() << ": " << msg << std::endl;
      comm->abort(code);
    }
    std::cerr << "phi3patch: error: " << msg << std::endl;
    return code;
  };
  try {
    comm = &Comm::world();
    if (comm->local_size() > 1) {  // ranks sharing a node share its cores
      const int hc = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
      cpu::set_all_threads(std::max(1, hc / comm->local_size()));
    }
    // Under mpirun only `run`, `circuit` and `bench` are distributed; any other command runs on rank 0
    // alone (the others would print the same lines and race on the same files).
    const bool shared = cmd == "run" || cmd == "circuit" || (cmd == "bench" && !has_flag(argc, argv, "--predict"));
    if (comm->distributed() && !shared && !comm->root()) {
      comm->finalize();
      return 0;
    }
    const int rc = run_command(cmd, argc, argv, first);
    comm->finalize();
    return rc;
  } catch (const JobFailed& e) {
    if (comm->root()) std::cerr << "phi3patch: error: " << e.what() << std::endl;
    comm->finalize();
    return e.exit_code;
  } catch (const OutOfMemory& e) {
    // The backend names the size; say what lowers the need when it did not.
    std::string msg = e.what();
    if (msg.find("--mem-budget") == std::string::npos && msg.find("--fp32") == std::string::npos &&
        msg.find("smaller model") == std::string::npos)
      msg += "; lower --mem-budget (sweep work buffers) or --batch (pairs per batch), or use a smaller model";
    return fail(msg, 3);
  } catch (const Error& e) {
    return fail(e.what(), g_interrupted ? 130 : 2);
  } catch (const std::bad_alloc&) {
    return fail("out of host memory; lower --mem-budget or --batch, or use a smaller model", 3);
  } catch (const std::exception& e) {
    return fail(e.what(), 2);
  }
}
