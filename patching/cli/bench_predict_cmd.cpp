// `phi3patch bench --predict h100|h200 [--like phi-3-mini | --model DIR]`: the roofline's
// prediction of every bench phase on a GPU, with no weights and no GPU. The model and
// patching code run their exact CUDA op sequence through a TraceBackend that computes
// nothing (placeholder weights, the device's memory for chunking, no patch skipped as a
// no-op); each op's bytes and FLOPs (kernels/cuda/op_costs.h) at the device's documented
// figures (printed) give the predicted time per phase.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include <algorithm>

#include "model/batch.h"
#include "model/model.h"
#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "patching/roofline.h"
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
  return {{"phase", p.name},
          {"predicted_ms", p.trace.seconds(d) * 1e3},
          {"bound", bound_of(p.trace, d)},
          {"bytes", s.cost.bytes},
          {"gemm_flops", s.cost.gemm_bf16_flops + s.cost.gemm_f32_flops},
          {"other_flops", s.cost.flops},
          {"launches", s.cost.launches},
          {"host_bytes", s.host_bytes},
          {"host_transfers", s.transfers},
          {"ops", ops}};
}

int cmd_bench_predict(const Args& a) {
  const std::string key = a.get("predict", "");
  const cost::DeviceFigures* dev = cost::find_device(key);
  if (!dev) throw Error("--predict: expected h100 or h200, got '" + key + "'");
  if (a.has("model") && a.has("like")) throw Error("--predict: give --model DIR or --like SHAPE, not both");
  const bool fp32 = a.has("fp32");
  // Declared before the model: its placeholder weights are freed through it.
  Trace trace;
  TraceBackend tb(nullptr, trace, DeviceKind::CUDA, fp32 ? DType::F32 : DType::BF16,
                  static_cast<size_t>(dev->memory_GB * 1e9), std::string("predicted ") + dev->name);
  Model m;
  if (a.has("model")) {
    m.dir = a.get("model", "");
    m.cfg = load_config(m.dir);
    // The checkpoint's tokenizer (SentencePiece or BPE) where it has one: its BOS rule applies.
    m.tok = Tokenizer::load_dir(Tokenizer::present_in(m.dir) ? m.dir : default_path("data/models/tiny-temporal-phi3"));
  } else {
    const std::string like = a.get("like", "phi-3-mini");
    m.dir = "(" + like + " shape)";
    m.cfg = parse_config_json(config_like(like).dump(), like + " config");
    m.tok = Tokenizer::load_dir(default_path("data/models/tiny-temporal-phi3"));  // BOS id, piece labels
  }
  const std::string pairs_file = a.get("pairs", default_path("data/seed_phi3_ids.json"));
  auto pairs = load_pairs(pairs_file);
  const bool bos = m.tok.bos_by_default();
  check_pairs(pairs, m.tok, m.cfg.max_position_embeddings, pairs_file, bos, m.cfg.vocab_size);
  PairBatch pb = make_pair_batch(pairs, m.tok, m.cfg.pad_token_id, m.cfg.max_position_embeddings, 0, bos);
  const std::vector<Hook> hooks = parse_hook_list(a.get("hooks", "resid_pre,attn_out,mlp_out"));
  m.w = ModelWeights::placeholder(tb, m.cfg);
  SweepOptions so;
  so.mem_budget = static_cast<size_t>(a.get_double("mem-budget", 0) * 1024 * 1024);
  std::vector<Phase> phases = trace_phases(tb, trace, m, pb, hooks, so);

  const int B = pb.clean.B, T = pb.clean.T;
  std::printf("PREDICTION (roofline from op counts; nothing was run on a GPU)\n");
  std::printf("device: %s, %s weights\nmodel: %s, %d layers, d=%d; batch B=%d, T=%d (%s)\n", dev->name,
              fp32 ? "fp32" : "bf16", m.dir.c_str(), m.cfg.num_hidden_layers, m.cfg.hidden_size, B, T,
              pairs_file.c_str());
  std::printf("figures: %.0f GB/s memory, %.0f TFLOP/s bf16 GEMM, %.0f TFLOP/s fp32 GEMM, %.0f TFLOP/s fp32 CUDA "
              "cores, %.0f GB/s host link + %.0f us per transfer, %.1f us per launch\n  (%s)\n",
              dev->hbm_GBps, dev->bf16_tflops, dev->f32_gemm_tflops, dev->f32_tflops, dev->host_GBps,
              dev->transfer_us, dev->launch_us, dev->source);
  std::printf("%-20s %10s %10s %12s %10s %10s %12s  %s\n", "phase", "launches", "GB moved", "GEMM TFLOP",
              "host MB", "transfers", "predicted", "bound");
  nlohmann::json jp = nlohmann::json::array();
  double sweeps = 0;
  for (const auto& p : phases) {
    const OpTally s = p.trace.total();
    const double ms = p.trace.seconds(*dev) * 1e3;
    if (p.name.rfind("sweep", 0) == 0) sweeps += ms;
    std::printf("%-20s %10.0f %10.3f %12.3f %10.1f %10lld %9.2f ms  %s\n", p.name.c_str(), s.cost.launches,
                s.cost.bytes / 1e9, (s.cost.gemm_bf16_flops + s.cost.gemm_f32_flops) / 1e12, s.host_bytes / 1e6,
                (long long)s.transfers, ms, bound_of(p.trace, *dev).c_str());
    jp.push_back(phase_json(p, *dev));
  }
  std::printf("%-20s %10s %10s %12s %10s %10s %9.2f ms\n", "all sweeps", "", "", "", "", "", sweeps);
  nlohmann::json j = {{"prediction", true},
                      {"note", "roofline prediction from op counts (kernels/cuda/op_costs.h); not a measurement"},
                      {"device", dev->name},
                      {"device_key", dev->key},
                      {"figures",
                       {{"hbm_GBps", dev->hbm_GBps},
                        {"bf16_tflops", dev->bf16_tflops},
                        {"f32_gemm_tflops", dev->f32_gemm_tflops},
                        {"f32_tflops", dev->f32_tflops},
                        {"host_GBps", dev->host_GBps},
                        {"transfer_us", dev->transfer_us},
                        {"launch_us", dev->launch_us},
                        {"memory_GB", dev->memory_GB},
                        {"source", dev->source}}},
                      {"model", m.dir},
                      {"layers", m.cfg.num_hidden_layers},
                      {"weights", fp32 ? "fp32" : "bf16"},
                      {"pairs", pairs_file},
                      {"B", B},
                      {"T", T},
                      {"phases", jp},
                      {"all_sweeps_ms", sweeps}};
  if (a.has("json")) write_file_atomic(a.get("json", ""), j.dump(1) + "\n");
  return 0;
}

}  // namespace phi3
