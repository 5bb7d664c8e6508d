// phi3patch: activation and attribution patching for Phi-3 models.
// Subcommands: run (default), forward, tokenize, verify, accuracy. Errors print one line
// ("phi3patch: error: ...") and exit non-zero; results go to files, progress to stderr.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <thread>

#include "model/forward.h"
#include "patching/accuracy.h"
#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "patching/checkpoint.h"
#include "patching/experiment.h"
#include "patching/out_dir.h"
#include "patching/report.h"
#include "kernels/cpu/parallel.h"
#include "runtime/comm.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

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

bool bos_option(const Args& a, const Tokenizer& tok) {
  check_bos_flags(a);
  if (a.has("bos")) {
    if (tok.bos_id() < 0)
      throw Error("--bos: the " + tok.kind() + " tokenizer has no BOS token (tokenizer_config.json names no bos_token)");
    return true;
  }
  return !a.has("no-bos") && tok.bos_by_default();
}

namespace {

const char* kUsage = R"(phi3patch - activation and attribution patching for Phi-3 (Phi3ForCausalLM) models

usage: phi3patch [COMMAND] [OPTIONS]

commands:
  run        (default) attribution + exact activation patching on clean/corrupted pairs;
             writes results.json, CSVs, SVG heatmaps and report.html into --out
  forward    print the seed-style summary (padded prompts, answer ids, top-3 tokens,
             clean and corrupted logit differences) for a pairs file
  tokenize   print token ids, pieces and decoded text of the given texts (BOS prepended
             where the tokenizer asks for one)
  circuit    circuit discovery: EAP / EAP-IG edge scores and exact faithfulness of the
             top-k circuits (see `phi3patch circuit --help`)
  verify     compare logits, activations, gradients and patching results with a
             reference dump made by tools/make_reference.py (--reference DIR)
  accuracy   accuracy on the temporal dataset (--dataset FILE --split train|heldout|all)
  bench      time forward, attribution and the exact sweeps (see `phi3patch bench --help`)
  make-random  write a checkpoint with real Phi-3 shapes and seeded random weights

common options:
  --model DIR       Phi3ForCausalLM checkpoint directory (config.json, *.safetensors, and
                    tokenizer.model (Phi-3) or tokenizer.json (Phi-4, Phi-4-mini))
                    [data/models/tiny-temporal-phi3]
  --device D        auto | cpu | cuda [auto]
  --fp32            on CUDA, keep weights in fp32 (bf16 otherwise)

run options:
  --pairs FILE      pairs file [data/temporal_scope_for_attribution_patching.json]: a JSON list
                    of {"clean": {"question", "answer"}, "corrupted": {...}}, or pre-tokenized
                    {"clean": {"ids": [...], "answer_id": N}, ...} (ids without BOS)
  --hooks LIST      comma-separated: resid_pre, resid_mid, resid_post, attn_out, mlp_out,
                    z (per head and position), z_all_pos (per head), q, k, v (attention
                    inputs before rotary, per head and position; k and v per KV head),
                    q_all_pos, k_all_pos, v_all_pos (per head), pattern (attention
                    probabilities of one head and query position; the head's output is
                    recomputed from the patched row), pattern_all_pos (every query row of a
                    head), mlp_post (one MLP neuron at one position: L*T*F nodes; for
                    large models use --method atp-star --verify-top K)
                    [resid_pre,attn_out,mlp_out]
  --method M        comma-separated: attribution (AtP), atp-star (AtP*: QK fix + GradDrop,
                    L more backward passes, unsigned), activation (exact, every node);
                    both = attribution,activation; all = all three [both]
  --verify-top K    with atp-star or attribution (and not activation): patch exactly the K
                    nodes of all hooks with the largest |AtP*| (|AtP| without atp-star);
                    verified.csv lists them with both values
  --direction D     denoise (clean values into the corrupted run) | noise [denoise]
  --batch N         pairs per batch for large pair files (0 = one batch) [0]
  --naive           activation patching with one full forward per patch (verification)
  --mem-budget MB   memory per sweep chunk (0 = a quarter of free device memory) [0]
  --out DIR         output directory [out]
  --force           overwrite results already in --out (and drop its checkpoints)
  --resume          continue an interrupted run in --out: finished batches are read from
                    --out/checkpoints/ (written after every batch) and not recomputed

distributed (MPI): mpirun -np N phi3patch run ... (or srun) gives the same results as one
process; batches are dealt to ranks, and a batch's patches are split across ranks by cost.
With --device cuda each rank takes GPU local_rank % device_count. Only rank 0 writes --out.
  --no-bos          do not prepend BOS (by default prompts start with BOS where the tokenizer
                    asks: tokenizer_config.json's add_bos_token, else SentencePiece yes and
                    byte-level BPE only with a BOS template; recorded in results.json)
  --bos             prepend the tokenizer's BOS token even where it asks for none (as
                    TransformerLens does: <|endoftext|> for Phi-4 and Phi-4-mini)
  --answer-first-token  an answer of more than one token uses its first piece (run, forward,
                    circuit; the answers cut are listed in results.json) instead of an error
)";

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
                  item + "'");
    any = true;
  }
  if (!any) throw Error("--method: no method given");
}

int cmd_run(int argc, char** argv, int first) {
  Args a(argc, argv, first,
         {"model", "device", "pairs", "hooks", "method", "direction", "batch", "mem-budget", "out", "verify-top"},
         {"fp32", "naive", "force", "no-bos", "bos", "resume", "help", "answer-first-token"});
  if (a.has("help")) {
    std::cout << kUsage;
    return 0;
  }
  if (!a.positional().empty()) throw Error("unexpected argument '" + a.positional()[0] + "'");
  ExperimentOptions opt;
  opt.pairs_file = a.get("pairs", default_path("data/temporal_scope_for_attribution_patching.json"));
  if (a.has("hooks")) {
    opt.hooks = parse_hook_list(a.get("hooks", ""));
    if (opt.hooks.empty()) throw Error("--hooks: no hook given");
  }
  parse_methods(a.get("method", "both"), opt);
  opt.verify_top = a.get_int("verify-top", 0);
  if (a.has("verify-top") && opt.verify_top < 1)
    throw Error("--verify-top: expected a positive number of nodes, got " + std::to_string(opt.verify_top));
  check_methods(opt);
  const std::string dir = a.get("direction", "denoise");
  if (dir != "denoise" && dir != "noise") throw Error("--direction: expected denoise or noise, got '" + dir + "'");
  opt.noising = dir == "noise";
  check_bos_flags(a);
  opt.answer_first_token = a.has("answer-first-token");
  opt.batch_pairs = a.get_int("batch", 0);
  opt.naive = a.has("naive");
  opt.mem_budget = static_cast<size_t>(a.get_double("mem-budget", 0) * 1024 * 1024);
  Comm& comm = Comm::world();
  opt.log = [&comm](const std::string& s) {
    if (g_interrupted) throw Error("interrupted (Ctrl-C); no results were written");
    if (comm.root()) std::cerr << "[phi3patch] " << s << std::endl;
  };
  opt.should_stop = [] { return g_interrupted.load(); };
  const std::string out = a.get("out", "out");
  opt.checkpoint_out = out;
  opt.resume = a.has("resume");
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
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> m;
  const std::string model_dir = a.get("model", default_path("data/models/tiny-temporal-phi3"));
  int code = 2;
  err.clear();
  try {
    be = make_backend(a.get("device", "auto"), a.has("fp32"));
    opt.log("loading " + model_dir + " on " + be->name());
    const auto t_load = std::chrono::steady_clock::now();
    m = load_model(*be, model_dir);
    opt.add_bos = bos_option(a, m->tok);
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
  if (!R.batches.empty()) print_batch_summary(std::cout, R.batches.front());
  if (R.batches.size() > 1)
    std::cout << "(first of " << R.batches.size() << " batches shown; all prompts are in results.json)\n"
              << "Over " << R.n_prompts << " prompts: clean LD " << R.clean_ld << ", corrupted LD " << R.corrupted_ld
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

int cmd_forward(int argc, char** argv, int first) {
  Args a(argc, argv, first, {"model", "device", "pairs"}, {"fp32", "no-bos", "bos", "answer-first-token"});
  check_bos_flags(a);
  auto be = make_backend(a.get("device", "auto"), a.has("fp32"));
  const auto t_load = std::chrono::steady_clock::now();
  auto m = load_model(*be, a.get("model", default_path("data/models/tiny-temporal-phi3")));
  std::cerr << "[phi3patch] loaded " << (m->w.bytes >> 20) << " MiB of weights in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count() << " s" << std::endl;
  const std::string pairs_file = a.get("pairs", default_path("data/temporal_scope_for_attribution_patching.json"));
  auto pairs = load_pairs(pairs_file);
  if (a.has("answer-first-token"))
    for (const auto& line : use_first_answer_tokens(pairs, m->tok)) std::cerr << "[phi3patch] " << line << std::endl;
  const bool bos = bos_option(a, m->tok);
  check_pairs(pairs, m->tok, m->cfg.max_position_embeddings, pairs_file, bos, m->cfg.vocab_size);
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings, 0, bos);
  ForwardOptions fo;
  fo.keep_pattern = false;
  ForwardState clean = forward(*be, *m, pb.clean, fo), corrupted = forward(*be, *m, pb.corrupted, fo);
  check_finite(*be, *m, clean, "clean");
  check_finite(*be, *m, corrupted, "corrupted");
  print_batch_summary(std::cout, summarize_batch(*be, *m, pb, clean, corrupted));
  return 0;
}

int cmd_tokenize(int argc, char** argv, int first) {
  Args a(argc, argv, first, {"model"}, {"no-bos", "bos"});
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

int cmd_accuracy(int argc, char** argv, int first) {
  Args a(argc, argv, first, {"model", "device", "dataset", "split"}, {"fp32"});
  auto be = make_backend(a.get("device", "auto"), a.has("fp32"));
  auto m = load_model(*be, a.get("model", default_path("data/models/tiny-temporal-phi3")));
  const std::string split = a.get("split", "heldout");
  auto r = dataset_accuracy(*be, *m, a.get("dataset", default_path("data/raw/temporal_scope_caa.json")), split);
  std::cout << split << " accuracy: " << r.correct << "/" << r.items << " = " << r.accuracy() * 100 << "%\n";
  return 0;
}

bool has_flag(int argc, char** argv, const std::string& flag) {
  for (int i = 1; i < argc; ++i)
    if (argv[i] == flag) return true;
  return false;
}

int run_command(const std::string& cmd, int argc, char** argv, int first) {
  if (cmd == "-h" || cmd == "help" || (argc > 1 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h"))) {
    std::cout << kUsage;
    return 0;
  }
  if (cmd == "run") return cmd_run(argc, argv, first);
  if (cmd == "forward") return cmd_forward(argc, argv, first);
  if (cmd == "tokenize") return cmd_tokenize(argc, argv, first);
  if (cmd == "accuracy") return cmd_accuracy(argc, argv, first);
  if (cmd == "verify") return cmd_verify(argc, argv, first);
  if (cmd == "circuit") return cmd_circuit(argc, argv, first);
  if (cmd == "bench") return cmd_bench(argc, argv, first);
  if (cmd == "make-random") return cmd_make_random(argc, argv, first);
  throw Error("unknown command '" + cmd + "' (commands: run, circuit, forward, tokenize, verify, accuracy, bench, make-random)");
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
