// `phi3patch bench --predict h100|h200 [--like phi-3-mini | --model DIR]`: the roofline's
// prediction of every bench phase on a GPU, with no weights and no GPU. The model and
// patching code run their exact CUDA op sequence through a TraceBackend that computes
// nothing (placeholder weights, the device's memory for chunking, no patch skipped as a
// no-op); each op's bytes and FLOPs (kernels/cuda/op_costs.h) at the device's documented
// figures (printed) give the predicted time per phase. The TraceBackend also counts the
// device bytes the exact allocation sequence holds: each phase's peak, weights included, and
// whether it fits the device (its memory less kReservedBytes for the CUDA context, the rest
// less the run's plan margin: usable_bytes);
// `--like all` prints that for every published shape.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>

#include "model/arch/config_json.h"
#include "model/batch.h"
#include "model/model.h"
#include "patching/cli/args.h"
#include "patching/circuit.h"
#include "patching/memory_plan.h"
#include "patching/cli/commands.h"
#include "patching/roofline.h"
#include "runtime/closest_name.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {

std::string bound_of(const Trace& t, const cost::DeviceFigures& d) {
  const OpTally s = t.total();
  const double mem = s.cost.bytes / (d.hbm_GBps * 1e9);
  const double gemm = s.cost.gemm_bf16_flops / (d.bf16_tflops * 1e12) + s.cost.gemm_f32_flops / (d.f32_gemm_tflops * 1e12);
  const double other = s.cost.flops / (d.f32_tflops * 1e12);
  const double launch = s.cost.launches * d.launch_us * 1e-6;
  const double host = s.host_bytes / (d.host_GBps * 1e9) + s.transfers * d.transfer_us * 1e-6;
  const double m = std::max({mem, gemm, other, launch, host});
  return m == gemm ? "GEMM" : m == mem ? "memory" : m == launch ? "launches" : m == host ? "host transfers" : "CUDA cores";
}

}  // namespace

nlohmann::json phase_json(const Phase& p, const cost::DeviceFigures& d) {
  const OpTally s = p.trace.total();
  nlohmann::json ops = nlohmann::json::object();
  for (const auto& [name, o] : p.trace.ops)
    ops[name] = {{"calls", o.calls},
                 {"bytes", o.cost.bytes},
                 {"gemm_bf16_flops", o.cost.gemm_bf16_flops},
                 {"gemm_f32_flops", o.cost.gemm_f32_flops},
                 {"other_flops", o.cost.flops},
                 {"launches", o.cost.launches},
                 {"host_bytes", o.host_bytes}};
  nlohmann::json j = {{"phase", p.name},
                      {"predicted_ms", p.trace.seconds(d) * 1e3},
                      {"bound", bound_of(p.trace, d)},
                      {"bytes", s.cost.bytes},
                      {"gemm_flops", s.cost.gemm_bf16_flops + s.cost.gemm_f32_flops},
                      {"other_flops", s.cost.flops},
                      {"launches", s.cost.launches},
                      {"host_bytes", s.host_bytes},
                      {"host_transfers", s.transfers},
                      {"start_bytes", p.start_bytes},
                      {"peak_bytes", p.peak_bytes},
                      {"fits", p.refused.empty()},
                      {"ops", ops}};
  if (!p.refused.empty()) {  // the tally stops where the allocation failed: no time for it
    j["refused"] = p.refused;
    j["predicted_ms"] = nullptr;
  }
  return j;
}

namespace {

// Not counted by the allocation walk: the CUDA context, cuBLAS's workspace and the
// allocator's slack, taken off the device's memory before anything is placed.
constexpr size_t kReservedBytes = size_t(2) << 30;

// The bytes a run may plan with, weights included: the device's memory less kReservedBytes
// holds the weights, and the plan takes what is left less its margin (plannable_bytes of
// patching/memory_plan.h), as a run does with the free memory it finds after loading.
size_t usable_bytes(const cost::DeviceFigures& dev, size_t weights) {
  const size_t memory = static_cast<size_t>(dev.memory_GB * 1e9) - kReservedBytes;
  return weights > memory ? memory : weights + plannable_bytes(memory - weights);
}

struct Prediction {
  nlohmann::json json;
  std::vector<Phase> phases;
  ModelConfig cfg;
  size_t weights_bytes = 0;
  int B = 0, T = 0;
  int eap_ig_pairs = -1;        // the circuit command's batch plan: pairs per batch (0: not even one; -1 n/a)
  size_t eap_ig_bytes = 0;      // its peak, weights included
};

// One shape (like) or checkpoint config (model_dir) on device dev: the phases' tallies and peaks.
Prediction predict(const cost::DeviceFigures& dev, bool fp32, const std::string& like, const std::string& model_dir,
                   const std::string& pairs_file, const std::vector<Hook>& hooks, const SweepOptions& so,
                   int verify_top = 0) {
  // Declared before the model: its placeholder weights are freed through it.
  Trace trace;
  TraceBackend tb(nullptr, trace, DeviceKind::CUDA, fp32 ? DType::F32 : DType::BF16, 0,
                  std::string("predicted ") + dev.name);
  Model m;
  if (!model_dir.empty()) {
    m.dir = model_dir;
    m.cfg = load_config(m.dir);
    // The checkpoint's tokenizer (SentencePiece or BPE) where it has one: its BOS rule applies.
    m.tok = Tokenizer::load_dir(Tokenizer::present_in(m.dir) ? m.dir : default_path("data/models/tiny-temporal-phi3"));
  } else {
    m.dir = "(" + like + " shape)";
    m.cfg = parse_config_json(config_like(like).dump(), like + " config");
    m.tok = Tokenizer::load_dir(default_path("data/models/tiny-temporal-phi3"));  // BOS id, piece labels
  }
  auto pairs = load_pairs(pairs_file);
  const bool bos = m.tok.bos_by_default();
  check_pairs(pairs, m.tok, m.cfg.max_position_embeddings, pairs_file, bos, m.cfg.vocab_size);
  PairBatch pb = make_pair_batch(pairs, m.tok, m.cfg.pad_token_id, m.cfg.max_position_embeddings, 0, bos);
  Prediction r;
  r.cfg = m.cfg;
  r.B = pb.clean.B;
  r.T = pb.clean.T;
  m.w = ModelWeights::placeholder(tb, m.cfg);  // unlimited: the weights' size is known even where they do not fit
  r.weights_bytes = tb.used_bytes();
  const size_t memory = usable_bytes(dev, r.weights_bytes);
  TracePhaseOptions po;
  po.eap_ig = true;
  po.oom_ends_phase = true;
  po.verify_top = verify_top;
  {  // the attribution phase as the run's memory plan has it: checkpointed where the full pass would not fit
    EstimatesWork w;
    w.attribution_hooks = hooks;
    po.checkpoint = r.weights_bytes + estimates_peak_bytes(tb, m, pb, w, false) > memory;
  }
  po.sweeps = verify_top == 0;  // with --verify-top: the long-prompt path, no full sweeps
  if (r.weights_bytes <= memory) {
    tb.set_memory(memory);
    r.phases = trace_phases(tb, trace, m, pb, hooks, so, po);
  } else {  // nothing else can be placed: every phase refused, none traced
    std::vector<std::string> names = {"forward", "attribution"};
    for (Hook h : hooks) names.push_back("sweep " + hook_name(h));
    names.push_back("eap-ig scores");
    for (const std::string& n : names) {
      Phase p;
      p.name = n;
      p.start_bytes = p.peak_bytes = r.weights_bytes;
      p.refused = "the weights alone (" + std::to_string(r.weights_bytes >> 20) + " MiB) exceed the " +
                  std::to_string(memory >> 20) + " MiB usable";
      r.phases.push_back(std::move(p));
    }
  }
  // The circuit command's batch plan (circuit_run.cpp): the most pairs per batch whose EAP-IG
  // scores fit, halving from all of them.
  if (circuits_supported(m.cfg) && r.weights_bytes <= memory) {
    int n = static_cast<int>(pairs.size());
    for (;;) {
      const PairBatch pbn = make_pair_batch(std::vector<PromptPair>(pairs.begin(), pairs.begin() + n), m.tok,
                                            m.cfg.pad_token_id, m.cfg.max_position_embeddings, r.T, bos);
      r.eap_ig_bytes = r.weights_bytes + circuit_scores_peak_bytes(tb, m, pbn, true, 5);
      if (r.eap_ig_bytes <= memory || n == 1) break;
      n = (n + 1) / 2;
    }
    r.eap_ig_pairs = r.eap_ig_bytes <= memory ? n : 0;
  }
  nlohmann::json jp = nlohmann::json::array();
  double sweeps = 0;
  bool sweeps_fit = true;
  for (const auto& p : r.phases) {
    if (p.name.rfind("sweep", 0) == 0) {
      sweeps += p.trace.seconds(dev) * 1e3;
      sweeps_fit = sweeps_fit && p.refused.empty();
    }
    jp.push_back(phase_json(p, dev));
  }
  r.json = {{"prediction", true},
            {"note", "roofline prediction from op counts (kernels/cuda/op_costs.h) and the engine's allocation "
                     "sequence; not a measurement"},
            {"device", dev.name},
            {"device_key", dev.key},
            {"figures",
             {{"hbm_GBps", dev.hbm_GBps},
              {"bf16_tflops", dev.bf16_tflops},
              {"f32_gemm_tflops", dev.f32_gemm_tflops},
              {"f32_tflops", dev.f32_tflops},
              {"host_GBps", dev.host_GBps},
              {"transfer_us", dev.transfer_us},
              {"launch_us", dev.launch_us},
              {"memory_GB", dev.memory_GB},
              {"source", dev.source}}},
            {"usable_bytes", memory},
            {"reserved_bytes", kReservedBytes},
            {"weights_bytes", r.weights_bytes},
            {"model", m.dir},
            {"architecture", m.cfg.architecture},
            {"layers", m.cfg.num_hidden_layers},
            {"weights", fp32 ? "fp32" : "bf16"},
            {"pairs", pairs_file},
            {"B", r.B},
            {"T", r.T},
            {"phases", jp},
            {"attribution_checkpointed", po.checkpoint},
            {"eap_ig_batch_plan", r.eap_ig_pairs < 0 ? nlohmann::json(nullptr)
                                                     : nlohmann::json({{"pairs_per_batch", r.eap_ig_pairs},
                                                                       {"of_pairs", pairs.size()},
                                                                       {"peak_bytes", r.eap_ig_bytes}})},
            {"all_sweeps_ms", sweeps_fit ? nlohmann::json(sweeps) : nlohmann::json(nullptr)}};
  return r;
}

// The long-prompt work whose fit --longest reports: the forward alone, the estimates (AtP of
// the default hooks) as the run plans them (full pass, or checkpointed: memory_plan.h), and
// EAP-IG's scores.
const char* const kLongPhases[] = {"forward", "attribution (full)", "attribution (checkpointed)",
                                   "atp-star (checkpointed)", "eap-ig scores"};

// Whether `phase` (kLongPhases) of one pair of T-token prompts fits dev's usable memory.
bool phase_fits(const cost::DeviceFigures& dev, bool fp32, const ModelConfig& cfg, const std::string& phase, int T) {
  Trace trace;
  TraceBackend tb(nullptr, trace, DeviceKind::CUDA, fp32 ? DType::F32 : DType::BF16, 0, std::string("predicted ") + dev.name);
  Model m;
  m.cfg = cfg;
  m.tok = Tokenizer::load_dir(default_path("data/models/tiny-temporal-phi3"));
  m.w = ModelWeights::placeholder(tb, m.cfg);
  const size_t weights = tb.used_bytes();
  if (weights > static_cast<size_t>(dev.memory_GB * 1e9) - kReservedBytes) return false;
  const size_t memory = usable_bytes(dev, weights);
  const PairBatch pb = synthetic_pair(cfg, T);
  if (phase.rfind("attribution", 0) == 0 || phase.rfind("atp-star", 0) == 0) {
    EstimatesWork w;
    (phase.rfind("atp-star", 0) == 0 ? w.atp_star_hooks : w.attribution_hooks) = {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut};
    return weights + estimates_peak_bytes(tb, m, pb, w, phase.find("(checkpointed)") != std::string::npos) <= memory;
  }
  tb.set_memory(memory);
  TracePhaseOptions po;
  po.eap_ig = phase == "eap-ig scores";
  po.oom_ends_phase = true;
  po.sweeps = false;
  for (const Phase& p : trace_phases(tb, trace, m, pb, {Hook::ResidPre}, {}, po))
    if (p.name == phase) return p.refused.empty();
  return false;  // not traced (EAP-IG on a model without circuits)
}

// The longest T, a multiple of 256 up to 2^20, at which the phase fits (0: not even 256).
// Peaks grow with T (monotone), so a bisection finds it.
int longest_fit(const cost::DeviceFigures& dev, bool fp32, const ModelConfig& cfg, const std::string& name) {
  int lo = 0, hi = (1 << 20) / 256 + 1;  // in units of 256: lo fits (or 0), hi does not
  if (phase_fits(dev, fp32, cfg, name, (hi - 1) * 256)) return (hi - 1) * 256;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    (phase_fits(dev, fp32, cfg, name, mid * 256) ? lo : hi) = mid;
  }
  return lo * 256;
}

std::string gb(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", bytes / 1e9);
  return b;
}

// The most any phase whose name starts with prefix holds, and whether all of them fit.
std::pair<size_t, bool> peak_of(const std::vector<Phase>& ps, const std::string& prefix) {
  size_t peak = 0;
  bool fits = true;
  for (const Phase& p : ps)
    if (p.name.rfind(prefix, 0) == 0) {
      peak = std::max(peak, p.peak_bytes);
      fits = fits && p.refused.empty();
    }
  return {peak, fits};
}

double ms_of(const std::vector<Phase>& ps, const std::string& prefix, const cost::DeviceFigures& d) {
  double ms = 0;
  for (const Phase& p : ps)
    if (p.name.rfind(prefix, 0) == 0) ms += p.trace.seconds(d) * 1e3;
  return ms;
}

void print_header(const cost::DeviceFigures& dev, bool fp32, const std::string& pairs_file, int B, int T) {
  std::printf("PREDICTION (roofline from op counts and the engine's allocations; nothing was run on a GPU)\n");
  std::printf("device: %s, %s weights, %.1f GB usable (%.0f GB less %.1f GB for the CUDA context and cuBLAS)\n",
              dev.name, fp32 ? "fp32" : "bf16", (dev.memory_GB * 1e9 - kReservedBytes) / 1e9, dev.memory_GB,
              kReservedBytes / 1e9);
  std::printf("batch B=%d, T=%d (%s)\n", B, T, pairs_file.c_str());
  std::printf("figures: %.0f GB/s memory, %.0f TFLOP/s bf16 GEMM, %.0f TFLOP/s fp32 GEMM, %.0f TFLOP/s fp32 CUDA "
              "cores, %.0f GB/s host link + %.0f us per transfer, %.1f us per launch\n  (%s)\n",
              dev.hbm_GBps, dev.bf16_tflops, dev.f32_gemm_tflops, dev.f32_tflops, dev.host_GBps, dev.transfer_us,
              dev.launch_us, dev.source);
}

// `--like all`: one line per published shape: weights, each phase group's peak and time.
int predict_all(const cost::DeviceFigures& dev, bool fp32, const std::string& pairs_file,
                const std::vector<Hook>& hooks, const SweepOptions& so, const Args& a) {
  nlohmann::json shapes = nlohmann::json::object();
  bool header = false;
  for (const std::string& like : like_shape_names()) {
    if (like == "tiny") continue;
    std::fprintf(stderr, "predicting %s ...\n", like.c_str());
    Prediction p = predict(dev, fp32, like, "", pairs_file, hooks, so);
    if (!header) {
      print_header(dev, fp32, pairs_file, p.B, p.T);
      std::printf("%-17s %-18s %8s | %-13s %-13s %-13s | %10s %10s %10s\n", "shape", "architecture", "weights",
                  "attribution", "sweeps", "eap-ig", "attr ms", "sweeps ms", "eap-ig ms");
      std::printf("%-17s %-18s %8s | %-13s %-13s %-13s |\n", "", "", "GB", "peak GB", "peak GB", "peak GB");
      header = true;
    }
    auto has = [&](const std::string& prefix) {
      for (const Phase& ph : p.phases)
        if (ph.name.rfind(prefix, 0) == 0) return true;
      return false;
    };
    auto cell = [&](const std::string& prefix) {
      if (!has(prefix)) return std::string("n/a");  // e.g. no circuits for post-norm models
      const auto [peak, fits] = peak_of(p.phases, prefix);
      return gb(peak) + (fits ? " fits" : " NO");
    };
    auto ms = [&](const std::string& prefix) {
      if (!has(prefix) || !peak_of(p.phases, prefix).second) return std::string("-");
      char b[32];
      std::snprintf(b, sizeof b, "%.1f", ms_of(p.phases, prefix, dev));
      return std::string(b);
    };
    std::printf("%-17s %-18s %8s | %-13s %-13s %-13s | %10s %10s %10s\n", like.c_str(), p.cfg.architecture.c_str(),
                gb(p.weights_bytes).c_str(), cell("attribution").c_str(), cell("sweep").c_str(),
                cell("eap-ig").c_str(), ms("attribution").c_str(), ms("sweep").c_str(), ms("eap-ig").c_str());
    std::fflush(stdout);
    shapes[like] = p.json;
  }
  std::printf("fits: every phase of the group within the usable memory at this batch (sweeps chunk to fit); "
              "NO: an allocation failed (the peak shown is where it stopped)\n");
  if (a.has("longest")) {
    std::printf("\nlongest prompt that fits, one pair (B = 1), memory only (context: the shape's own limit):\n");
    std::printf("%-17s %9s | %9s %12s %12s %9s\n", "shape", "context", "forward", "AtP full", "AtP ckpt", "eap-ig");
    for (const std::string& like : like_shape_names()) {
      if (like == "tiny") continue;
      std::fprintf(stderr, "longest T for %s ...\n", like.c_str());
      const ModelConfig cfg = parse_config_json(config_like(like).dump(), like + " config");
      nlohmann::json lj = nlohmann::json::object();
      std::string cells[4];
      int k = 0;
      for (const char* name : kLongPhases) {
        if (std::string(name).rfind("atp-star", 0) == 0) continue;  // its peak is AtP's (one backward at a time): slow to walk L times
        if (std::string(name) == "eap-ig scores" && !circuits_supported(cfg)) {
          cells[k++] = "n/a";
          continue;
        }
        const int t = longest_fit(dev, fp32, cfg, name);
        lj[name] = t;
        cells[k++] = std::to_string(t);
      }
      shapes[like]["longest_T"] = lj;
      shapes[like]["context_length"] = cfg.max_position_embeddings;
      std::printf("%-17s %9d | %9s %12s %12s %9s\n", like.c_str(), cfg.max_position_embeddings, cells[0].c_str(),
                  cells[1].c_str(), cells[2].c_str(), cells[3].c_str());
      std::fflush(stdout);
    }
  }
  if (a.has("json"))
    write_file_atomic(a.get("json", ""), nlohmann::json({{"prediction", true}, {"shapes", shapes}}).dump(1) + "\n");
  return 0;
}

}  // namespace

int cmd_bench_predict(const Args& a) {
  const std::string key = a.get("predict", "");
  const cost::DeviceFigures* dev = cost::find_device(key);
  if (!dev) throw Error("--predict: expected h100 or h200, got '" + key + "'" + did_you_mean(key, {"h100", "h200"}));
  if (a.has("model") && a.has("like")) throw Error("--predict: give --model DIR or --like SHAPE, not both");
  const bool fp32 = a.has("fp32");
  const std::string pairs_file = a.get("pairs", default_path("data/seed_phi3_ids.json"));
  const std::vector<Hook> hooks = parse_hook_list(a.get("hooks", "resid_pre,attn_out,mlp_out"));
  SweepOptions so;
  so.mem_budget = static_cast<size_t>(a.get_double("mem-budget", 0) * 1024 * 1024);
  const std::string like = a.has("model") ? "" : a.get("like", "phi-3-mini");
  if (like == "all") return predict_all(*dev, fp32, pairs_file, hooks, so, a);
  Prediction p = predict(*dev, fp32, like, a.get("model", ""), pairs_file, hooks, so, a.get_int("verify-top", 0));

  print_header(*dev, fp32, pairs_file, p.B, p.T);
  std::printf("model: %s (%s), %d layers, d=%d; weights %s GB\n", p.json["model"].get<std::string>().c_str(),
              p.cfg.architecture.c_str(), p.cfg.num_hidden_layers, p.cfg.hidden_size, gb(p.weights_bytes).c_str());
  std::printf("%-20s %10s %10s %12s %10s %10s %9s %12s  %s\n", "phase", "launches", "GB moved", "GEMM TFLOP",
              "host MB", "transfers", "peak GB", "predicted", "bound");
  for (const auto& ph : p.phases) {
    if (!ph.refused.empty()) {
      std::printf("%-20s %10s %10s %12s %10s %10s %9s %12s  DOES NOT FIT\n", ph.name.c_str(), "-", "-", "-", "-", "-",
                  gb(ph.peak_bytes).c_str(), "-");
      continue;
    }
    const OpTally s = ph.trace.total();
    const double ms = ph.trace.seconds(*dev) * 1e3;
    std::printf("%-20s %10.0f %10.3f %12.3f %10.1f %10lld %9s %9.2f ms  %s\n", ph.name.c_str(), s.cost.launches,
                s.cost.bytes / 1e9, (s.cost.gemm_bf16_flops + s.cost.gemm_f32_flops) / 1e12, s.host_bytes / 1e6,
                (long long)s.transfers, gb(ph.peak_bytes).c_str(), ms, bound_of(ph.trace, *dev).c_str());
  }
  if (!p.json["all_sweeps_ms"].is_null())
    std::printf("%-20s %10s %10s %12s %10s %10s %9s %9.2f ms\n", "all sweeps", "", "", "", "", "", "",
                p.json["all_sweeps_ms"].get<double>());
  for (const auto& ph : p.phases)
    if (!ph.refused.empty()) std::printf("%s: %s\n", ph.name.c_str(), ph.refused.c_str());
  if (p.eap_ig_pairs > 0)
    std::printf("circuit (EAP-IG, 5 steps): %d of the %zu pairs per batch fit (peak %s GB); the command batches so\n",
                p.eap_ig_pairs, size_t(p.json["eap_ig_batch_plan"]["of_pairs"]), gb(p.eap_ig_bytes).c_str());
  else if (p.eap_ig_pairs == 0)
    std::printf("circuit (EAP-IG): not even one pair fits (peak %s GB)\n", gb(p.eap_ig_bytes).c_str());
  if (a.has("longest")) {
    std::printf("longest prompt that fits (one pair, B = 1; memory only, the context length is %d):\n",
                p.cfg.max_position_embeddings);
    nlohmann::json lj = nlohmann::json::object();
    for (const char* name : kLongPhases) {
      if (std::string(name) == "eap-ig scores" && !circuits_supported(p.cfg)) continue;
      const int t = longest_fit(*dev, fp32, p.cfg, name);
      lj[name] = t;
      std::printf("  %-27s T = %d\n", name, t);
    }
    p.json["longest_T"] = lj;
    p.json["context_length"] = p.cfg.max_position_embeddings;
    // The estimates' peak (AtP of the default hooks, one pair, weights excluded) against T: with
    // every layer's patterns kept (the scheme before the recomputing attention backward), the
    // full pass, and the checkpointed one.
    std::printf("AtP peak beyond the weights, one pair (GB): T | patterns kept (before) | full pass | checkpointed\n");
    Trace tt;
    TraceBackend kind(nullptr, tt, DeviceKind::CUDA, fp32 ? DType::F32 : DType::BF16, 0, "plan");
    Model pm;
    pm.cfg = p.cfg;
    nlohmann::json rows = nlohmann::json::array();
    for (int T : {1024, 2048, 4096, 8192, 16384, 32768}) {
      const PairBatch pb = synthetic_pair(p.cfg, T);
      EstimatesWork w;
      w.attribution_hooks = {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut};
      w.pattern = true;
      const size_t before = estimates_peak_bytes(kind, pm, pb, w, false);
      w.pattern = false;
      const size_t full = estimates_peak_bytes(kind, pm, pb, w, false), ck = estimates_peak_bytes(kind, pm, pb, w, true);
      std::printf("  %6d | %10s | %10s | %10s\n", T, gb(before).c_str(), gb(full).c_str(), gb(ck).c_str());
      rows.push_back({{"T", T}, {"patterns_kept_bytes", before}, {"full_bytes", full}, {"checkpointed_bytes", ck}});
    }
    p.json["attribution_peak_by_T"] = rows;
  }
  if (a.has("json")) write_file_atomic(a.get("json", ""), p.json.dump(1) + "\n");
  return 0;
}

}  // namespace phi3
