// The command table: each command's name, the options it accepts (the parser refuses any
// other) and its --help text, side by side so they cannot drift (tests/cpu/test_cli_help.cpp
// checks that every help names exactly the options its command accepts).
#include "patching/cli/command_specs.h"

#include "runtime/closest_name.h"
#include "runtime/error.h"

namespace phi3 {

namespace {

const char* kRunUsage = R"(phi3patch - activation and attribution patching for Phi-3 / Phi-3.5 / Phi-4, Qwen2 / Qwen2.5,
Qwen3, Llama 3.x, Mistral, Gemma 2 and 3, GPT-2, and the mixtures of experts Mixtral, Qwen3-MoE, OLMoE

usage: phi3patch [COMMAND] [OPTIONS]

commands:
  run        (default) attribution + exact activation patching on clean/corrupted pairs;
             writes results.json, CSVs, SVG heatmaps and report.html into --out
  forward    print the seed-style summary (padded prompts, answer ids, top-3 tokens,
             clean and corrupted logit differences) for a pairs file
  tokenize   print token ids, pieces and decoded text of the given texts (BOS prepended
             where the tokenizer asks for one)
  circuit    circuit discovery: EAP / EAP-IG edge scores and exact faithfulness of the
             top-k circuits
  verify     compare logits, activations, gradients and patching results with a
             reference dump made by tools/make_reference.py
  accuracy   accuracy on the temporal dataset
  bench      time forward, attribution and the exact sweeps
  make-random  write a checkpoint with a published model's shape (every family) and seeded
             random weights
Each command's options: phi3patch COMMAND --help. The options below are run's.

options:
  --help            this text
  --model DIR       checkpoint directory: Phi3ForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
                    LlamaForCausalLM, MistralForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM,
                    Gemma3ForConditionalGeneration's text decoder, GPT2LMHeadModel,
                    MixtralForCausalLM, Qwen3MoeForCausalLM or OlmoeForCausalLM (config.json, *.safetensors, and
                    tokenizer.model or tokenizer.json) [data/models/tiny-temporal-phi3]; or a
                    Hugging Face hub id org/name[@revision] already in the local cache
                    ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub; no download),
                    or a cache folder models--org--name
  --device D        auto | cpu | cuda [auto]
  --fp32            on CUDA, keep weights in fp32 (bf16 otherwise)

  --pairs FILE      pairs file [data/temporal_scope_for_attribution_patching.json]: a JSON list
                    of {"clean": {"question", "answer"}, "corrupted": {...}}, or pre-tokenized
                    {"clean": {"ids": [...], "answer_id": N}, ...} (ids without BOS; no
                    tokenizer files needed). A side may add "wrong" (pre-tokenized:
                    "wrong_id"), the token its answer is compared with (else the other side's
                    answer): IOI pairs whose two answers are the same name
  --no-mix          only the pairs as given (clean -> corrupted); by default every pair is also
                    run swapped, as the seed notebook does
  --hooks LIST      comma-separated: resid_pre, resid_mid, resid_post, attn_out, mlp_out,
                    z (per head and position), z_all_pos (per head), q, k, v (attention
                    inputs before rotary, per head and position; k and v per KV head),
                    q_all_pos, k_all_pos, v_all_pos (per head), pattern (attention
                    probabilities of one head and query position; the head's output is
                    recomputed from the patched row), pattern_all_pos (every query row of a
                    head), mlp_post (one MLP neuron at one position: L*T*F nodes; for
                    large models use --method atp-star --verify-top K), router (a
                    mixture-of-experts block's router logits at one position; MoE models
                    only); TransformerLens names too (hook_resid_pre, attn.hook_z,
                    mlp.hook_post, blocks.3.hook_z)
                    [resid_pre,attn_out,mlp_out]
  --method M        comma-separated: attribution (AtP), atp-star (AtP*: QK fix + GradDrop,
                    L more backward passes, unsigned), activation (exact, every node);
                    both = attribution,activation; all = all three [both]
  --verify-top K    with atp-star or attribution (and not activation): patch exactly the K
                    nodes of all hooks with the largest |AtP*| (|AtP| without atp-star);
                    verified.csv lists them with both values. Without --method it picks
                    atp-star,attribution (attribution alone where AtP* cannot run)
  --positions LIST  exact sweeps (activation) only at these positions: comma-separated
                    positions and half-open ranges a:b, negatives from the end (1500:1600,
                    -64:, 7); other cells are NaN. At long T: AtP/AtP* everywhere, exact here
  --layers LIST     every method only at these layers (same syntax: 0,2 or 1:3 or -1): exact
                    sweeps patch only there, other rows are NaN, --verify-top ranks only these
  --direction D     denoise (clean values into the corrupted run) | noise [denoise]
  --metric M        the metric at the last position, normalised (M - M_corrupted) /
                    (M_clean - M_corrupted) for every method: logit-diff (logit[answer] -
                    logit[other]) | prob-diff (p[answer] - p[other]) | logprob (log p[answer])
                    | kl (KL(p_clean || p_run) over the vocabulary; 0 on the clean run)
                    [logit-diff]
  --batch N         pairs per batch for large pair files (0 = one batch) [0]
  --naive           activation patching with one full forward per patch (verification)
  --mem-budget MB   memory per sweep chunk (0 = a quarter of free device memory), and for
                    estimates alone the memory their batch may use [0]
  --recompute R     auto | on | off: estimates alone (AtP, AtP*) keep only each layer's input
                    and recompute the rest in the backward (long prompts); auto where the
                    full pass would not fit the memory (predicted before any work) [auto]
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

const char* kForwardUsage = R"(phi3patch forward - the seed-style summary of a pairs file: padded prompts, answer ids,
top-3 tokens, clean and corrupted logit differences (no patching)

usage: phi3patch forward [OPTIONS]

  --help            this text
  --model DIR       checkpoint directory, or a hub id org/name[@revision] in the Hugging Face
                    cache [data/models/tiny-temporal-phi3]
  --device D        auto | cpu | cuda [auto]
  --fp32            on CUDA, keep weights in fp32 (bf16 otherwise)
  --pairs FILE      clean/corrupted pairs (as for run) [data/temporal_scope_for_attribution_patching.json]
  --no-mix          only the pairs as given (by default every pair is also run swapped)
  --no-bos          do not prepend BOS (by default: where the tokenizer asks for one)
  --bos             prepend the tokenizer's BOS token even where it asks for none
  --answer-first-token  an answer of more than one token uses its first piece
)";

const char* kTokenizeUsage = R"(phi3patch tokenize - token ids, pieces and decoded text of each TEXT

usage: phi3patch tokenize [OPTIONS] TEXT [TEXT ...]

  --help            this text
  --model DIR       checkpoint directory (or hub id org/name[@revision] in the Hugging Face
                    cache) whose tokenizer.model or tokenizer.json is used
                    [data/models/tiny-temporal-phi3]
  --no-bos          do not prepend BOS (by default: where the tokenizer asks for one)
  --bos             prepend the tokenizer's BOS token even where it asks for none
)";

const char* kVerifyUsage = R"(phi3patch verify - compare this engine with a transformers reference dump
(tools/make_reference.py): logits, every hook activation and its gradient, patching results,
AtP*, circuits, the other metrics of run (metrics.json). Prints the worst error per kind and PASS/FAIL; exit 1 on any failure.

usage: phi3patch verify --reference DIR [OPTIONS]

  --help            this text
  --reference DIR   reference directory (reference.json, reference.safetensors, and its
                    model, e.g. data/reference/tiny-temporal) [required]
  --device D        auto | cpu | cuda [auto]
  --fp32            on CUDA, keep weights in fp32 (bf16 otherwise, checked against looser bounds)
  --naive           check activation patching with the naive one-forward-per-patch sweep
  --no-patching     skip the patching, AtP* and circuit checks
  --verbose         print every check, not only the worst per kind and the failures
)";

const char* kAccuracyUsage = R"(phi3patch accuracy - accuracy of the model on the temporal-scope dataset
(CAA items: the answer with the larger logit is the model's choice)

usage: phi3patch accuracy [OPTIONS]

  --help            this text
  --model DIR       checkpoint directory, or a hub id org/name[@revision] in the Hugging Face
                    cache [data/models/tiny-temporal-phi3]
  --device D        auto | cpu | cuda [auto]
  --fp32            on CUDA, keep weights in fp32 (bf16 otherwise)
  --dataset FILE    dataset [data/raw/temporal_scope_caa.json]
  --split S         train | heldout | all [heldout]
)";

const char* kCircuitUsage = R"(phi3patch circuit - circuit discovery: edge attribution (EAP, EAP-IG) and exact faithfulness

usage: phi3patch circuit [OPTIONS]

The graph: upstream nodes are the input embedding, every attention head's output and every
MLP's output; downstream nodes are every head's q input, every KV head's k and v inputs, every
MLP's input and the logits; an edge joins each upstream node to every downstream node that reads
the residual stream after it (heads feed their own layer's MLP). Each circuit is evaluated
exactly: a forward on the clean prompts in which every edge outside the circuit carries the
corrupted run's value; faithfulness = (m(circuit) - m(empty)) / (m(full) - m(empty)).
Under mpirun the grid's circuits are divided across the ranks.

  --help             this text
  --model DIR        checkpoint directory (any supported family), or a hub id
                     org/name[@revision] in the Hugging Face cache [data/models/tiny-temporal-phi3]
  --device D         auto | cpu | cuda [auto]
  --fp32             on CUDA, keep weights in fp32 (bf16 otherwise)
  --pairs FILE       clean/corrupted pairs (as for run) [data/temporal_scope_for_attribution_patching.json]
  --no-mix           only the pairs as given (by default every pair is also run swapped)
  --method M         eap | eap-ig [eap-ig]
  --ig-steps N       EAP-IG: inputs interpolated between the corrupted and clean embeddings [5]
  --direction D      denoise (gradient on the corrupted run, clean - corrupted) | noise [denoise]
  --metric M         logit-diff only: circuits use the mean logit difference (run's other
                     metrics, prob-diff, logprob and kl, are refused here) [logit-diff]
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
  --export mib       also write the MIB circuit-localization submission layout:
                     DIR/mib/<task>_<model>/importances.json (EAP-IG's graph JSON: every edge's
                     score, the reported circuit's edges and nodes in_graph); MHA models with
                     pre-norms only (docs/circuits.md)
  --mib-task NAME    the task in that folder name [the pairs file's name, without .json]
  --mib-model NAME   the model in that folder name [the --model directory's name]
  --no-bos           do not prepend BOS (by default: where the tokenizer asks for one)
  --bos              prepend the tokenizer's BOS token even where it asks for none
  --answer-first-token  an answer of more than one token uses its first piece
)";

const char* kBenchUsage = R"(phi3patch bench - end-to-end timings: one forward, attribution patching and the exact
sweep per hook, with the naive one-forward-per-patch sweep measured in the same run

usage: phi3patch bench [OPTIONS]
       mpirun -np N phi3patch bench [OPTIONS]   the experiment on rank 0 alone, then on all N
                         ranks: speed-up, parallel efficiency and per-rank work
       phi3patch bench --predict h100|h200 [OPTIONS]   the roofline's prediction per phase
                         (no weights, no GPU)

  --help            this text
  --model DIR       checkpoint directory or hub id in the Hugging Face cache
                    [data/models/tiny-temporal-phi3]; with --predict,
                    its config.json alone
  --like SHAPE      with --predict instead of --model: a published shape (as make-random
                    --like) [phi-3-mini]; all: one line per shape (weights, peak memory and
                    whether it fits per phase, predicted times)
  --predict GPU     h100 | h200: predict instead of measuring
  --longest         with --predict: also the longest prompt (one pair) whose forward,
                    attribution and EAP-IG fit the device (memory only)
  --verify-top K    with --predict: the exact check of the K costliest nodes of the first
                    hook instead of the full sweeps (the long-prompt path)
  --device D        auto | cpu | cuda [auto]
  --fp32            on CUDA, keep weights in fp32 (bf16 otherwise)
  --pairs FILE      clean/corrupted pairs [data/temporal_scope_for_attribution_patching.json;
                    with --predict data/seed_phi3_ids.json]
  --hooks LIST      hooks to sweep (as for run) [resid_pre,attn_out,mlp_out]
  --repeat N        time each phase N times and keep the fastest [3]
  --no-naive        skip the naive sweep
  --naive-hooks LIST  hooks also swept naively, the baseline [resid_pre]
  --mem-budget MB   memory per sweep chunk (0 = a quarter of free device memory) [0]
  --compare-fp32    bf16 on CUDA: also sweep with fp32 weights and report the largest difference
  --batch N         under mpirun: pairs per batch [0 = one batch]
  --method M        under mpirun: attribution | activation | both [both]
  --json FILE       write the figures as JSON
)";

const char* kMakeRandomUsage = R"(phi3patch make-random - a Hugging Face layout checkpoint (config.json, safetensors
shards and index, the embedded tokenizer) with a real model's shapes and seeded random
weights, so the same weights load here and in transformers without a download

usage: phi3patch make-random --out DIR [OPTIONS]

  --help            this text
  --out DIR         where to write the checkpoint [required]
  --like SHAPE      the published config.json of: phi-3-mini | phi-3-mini-128k |
                    phi-3-medium | phi-4-mini | tiny | qwen2.5-{0.5b,1.5b,3b,7b,14b,32b,72b} |
                    llama-3.2-{1b,3b} | llama-3.1-{8b,70b} | mistral-7b | mistral-nemo-12b |
                    qwen3-{0.6b,1.7b,4b,8b,14b,32b} | gemma-2-{2b,9b,27b} |
                    gemma-3-{1b,4b,12b,27b} | gpt2 | gpt2-{medium,large,xl}; tiny is a 4-layer
                    Phi-3 of width 64 (under 1 MiB), a real shape writes gigabytes
                    (phi-3-mini: 7.6 GB) [tiny]
  --layers N        keep only the first N layers (0 = the shape's own count) [0]
  --seed N          random seed [0]
  --dtype D         bf16 | f32 [bf16]
  --shard-mb MB     largest safetensors shard [2000]
  --force           overwrite a checkpoint already in --out
)";

const std::vector<CommandSpec>& table() {
  static const std::vector<CommandSpec> t = {
      {"run",
       {"model", "device", "pairs", "hooks", "method", "direction", "batch", "mem-budget", "out", "verify-top",
        "positions", "recompute", "metric", "layers"},
       {"fp32", "naive", "force", "no-bos", "bos", "resume", "help", "answer-first-token", "no-mix"},
       kRunUsage},
      {"forward", {"model", "device", "pairs"}, {"fp32", "no-bos", "bos", "answer-first-token", "no-mix", "help"},
       kForwardUsage},
      {"tokenize", {"model"}, {"no-bos", "bos", "help"}, kTokenizeUsage},
      {"circuit",
       {"model", "device", "pairs", "method", "ig-steps", "direction", "edge-grid", "edges", "target", "out", "select",
        "mem-budget", "batch", "metric", "export", "mib-task", "mib-model"},
       {"fp32", "force", "no-bos", "bos", "help", "answer-first-token", "no-mix"},
       kCircuitUsage},
      {"verify", {"reference", "device"}, {"fp32", "naive", "no-patching", "verbose", "help"}, kVerifyUsage},
      {"accuracy", {"model", "device", "dataset", "split"}, {"fp32", "help"}, kAccuracyUsage},
      {"bench",
       {"model", "device", "pairs", "hooks", "repeat", "json", "naive-hooks", "mem-budget", "batch", "method", "predict",
        "like", "verify-top"},
       {"fp32", "no-naive", "compare-fp32", "longest", "help"},
       kBenchUsage},
      {"make-random", {"like", "out", "seed", "layers", "dtype", "shard-mb"}, {"force", "help"}, kMakeRandomUsage},
  };
  return t;
}

}  // namespace

const std::vector<CommandSpec>& command_specs() { return table(); }

const CommandSpec& command_spec(const std::string& name) {
  for (const auto& c : table())
    if (c.name == name) return c;
  std::string names;
  std::vector<std::string> all = {"help"};
  for (const auto& c : table()) {
    names += (names.empty() ? "" : ", ") + c.name;
    all.push_back(c.name);
  }
  throw Error("unknown command '" + name + "'" + did_you_mean(name, all) + " (commands: " + names + ")");
}

}  // namespace phi3
