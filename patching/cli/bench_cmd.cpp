// `phi3patch bench`: end-to-end timings on one model and prompt set — one forward,
// attribution patching (2 forward + 1 backward) and the exact sweep per hook — with the
// naive one-forward-per-patch sweep measured in the same run as the baseline, achieved
// TFLOP/s, and the fast/naive work and time ratios. --json writes the figures.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "model/backward.h"
#include "patching/attribution.h"
#include "patching/cli/args.h"
#include "patching/cli/commands.h"
#include "patching/roofline.h"
#include "patching/sweep.h"
#include "runtime/comm.h"
#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {
using Clock = std::chrono::steady_clock;

// FLOPs of one token through one layer's GEMMs (attention scores/values over `ctx` keys).
double layer_flops(const Model& m, double ctx) {
  const ModelConfig& c = m.cfg;
  double D = c.hidden_size, F = c.intermediate_size;
  double g = 2.0 * (D * m.qkv_width() + m.q_width() * D + D * m.gate_up_width() + F * D);
  return g + 4.0 * ctx * m.q_width();
}

template <typename Fn>
double time_best(Backend& be, int repeat, Fn fn) {
  double best = 1e30;
  for (int i = 0; i < repeat; ++i) {
    be.synchronize();
    auto t0 = Clock::now();
    fn();
    be.synchronize();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}
// Measured GEMM capacity of the backend: y = x W^T with weights in the device's weight
// dtype (bf16 on CUDA, fp32 on the CPU), through the same linear op the model uses, on
// random data in [-1, 1) (zeros toggle fewer bits and overstate the peak by about 13%).
double measured_peak_tflops(Backend& be) {
  const bool gpu = be.kind() == DeviceKind::CUDA;
  const int N = gpu ? 8192 : 1024, K = gpu ? 8192 : 1024, M = gpu ? 8192 : 1024;
  const DType dt = be.weight_dtype();
  uint32_t state = 12345;
  auto uniform = [&] {  // LCG -> [-1, 1)
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) * (2.0f / 16777216.0f) - 1.0f;
  };
  std::vector<float> wf(size_t(M) * K), xf(size_t(N) * K);
  for (auto& v : wf) v = uniform() * 0.05f;
  for (auto& v : xf) v = uniform();
  std::vector<uint8_t> host(wf.size() * dtype_size(dt));
  if (dt == DType::F32) {
    std::memcpy(host.data(), wf.data(), host.size());
  } else {
    for (size_t i = 0; i < wf.size(); ++i) {
      const uint16_t h = float_to_bf16_bits(wf[i]);
      std::memcpy(host.data() + 2 * i, &h, 2);
    }
  }
  DeviceArray<uint8_t> w(be, host.size());
  w.upload(host);
  DeviceArray<float> x(be, xf.size()), y(be, size_t(N) * M);
  x.upload(xf);
  Weight W{w.get(), dt, M, K};
  be.linear_forward(y.get(), x.get(), W, N, false);  // warm-up
  const double s = time_best(be, 5, [&] { be.linear_forward(y.get(), x.get(), W, N, false); });
  return 2.0 * N * K * M / s / 1e12;
}

// Measured device-to-device copy bandwidth (GB/s: bytes read + written per second).
double measured_copy_gbps(Backend& be) {
  const size_t n = be.kind() == DeviceKind::CUDA ? size_t(256) << 20 : size_t(16) << 20;  // floats
  DeviceArray<float> a(be, n), b(be, n);
  be.zero(a.get(), n * 4);
  be.copy(b.get(), a.get(), n * 4);  // warm-up
  const double s = time_best(be, 5, [&] { be.copy(b.get(), a.get(), n * 4); });
  return 2.0 * n * 4 / s / 1e9;
}

// Beside each measured phase, the time the roofline allows at the measured bandwidth and
// GEMM peak (CUDA: the kernels' traffic, kernels/cuda/op_costs.h; one traced run of each
// phase). Launch and host-transfer overheads are the H100 figures of op_costs.h.
nlohmann::json roofline_beside(Backend& be, const Model& m, const PairBatch& pb, const std::vector<Hook>& hooks,
                               const SweepOptions& so, double peak, const std::map<std::string, double>& measured) {
  const double bw = measured_copy_gbps(be);
  Trace trace;
  TraceBackend tb(&be, trace);
  std::vector<Phase> phases = trace_phases(tb, trace, m, pb, hooks, so);
  const cost::DeviceFigures& fig = *cost::find_device("h100");
  std::printf("roofline at the measured %.0f GB/s (device-to-device copy) and %.1f TFLOP/s GEMM peak:\n", bw, peak);
  nlohmann::json out = {{"measured_copy_GBps", bw}, {"gemm_peak_tflops", peak}, {"phases", nlohmann::json::array()}};
  for (const auto& p : phases) {
    const double limit = p.trace.seconds(bw, peak, fig);
    auto it = measured.find(p.name);
    const OpTally t = p.trace.total();
    nlohmann::json e = {{"phase", p.name},
                        {"limit_ms", limit * 1e3},
                        {"bytes", t.cost.bytes},
                        {"gemm_flops", t.cost.gemm_bf16_flops + t.cost.gemm_f32_flops},
                        {"launches", t.cost.launches}};
    if (it != measured.end()) {
      e["measured_ms"] = it->second * 1e3;
      e["fraction_of_limit"] = limit / it->second;
      std::printf("  %-18s limit %10.3f ms, measured %10.3f ms: %5.1f%% of the limit\n", p.name.c_str(), limit * 1e3,
                  it->second * 1e3, 100 * limit / it->second);
    }
    out["phases"].push_back(e);
  }
  return out;
}

}  // namespace

int cmd_bench(const Args& a) {
  if (a.has("predict")) return cmd_bench_predict(a);
  if (Comm::world().distributed()) return cmd_bench_scaling(a, Comm::world());
  const std::string model_dir = a.get("model", default_path("data/models/tiny-temporal-phi3"));
  // The options, config, tokenizer and pairs are checked before any weight is read.
  const int repeat = std::max(1, a.get_int("repeat", 3));
  std::vector<Hook> hooks = parse_hook_list(a.get("hooks", "resid_pre,attn_out,mlp_out"));
  std::vector<Hook> naive_hooks;
  if (!a.has("no-naive")) naive_hooks = parse_hook_list(a.get("naive-hooks", "resid_pre"));
  auto t_load = Clock::now();
  std::unique_ptr<Backend> be;  // declared before the model: its weights are freed through it
  auto m = load_model_meta(model_dir);
  const std::string pairs_file = a.get("pairs", default_path("data/temporal_scope_for_attribution_patching.json"));
  auto pairs = load_pairs(pairs_file);
  check_pairs(pairs, m->tok, m->cfg.max_position_embeddings, pairs_file, true, m->cfg.vocab_size);
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings, 0,
                                 m->tok.bos_by_default());
  be = make_backend(a.get("device", "auto"), a.has("fp32"));
  load_weights(*be, *m);
  const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  const int B = pb.clean.B, T = pb.clean.T, L = m->cfg.num_hidden_layers;
  std::cerr << "[bench] " << model_dir << " on " << be->name() << ": B=" << B << " T=" << T << ", repeat " << repeat
            << std::endl;
  ForwardOptions no_pattern;
  no_pattern.keep_pattern = false;
  const double fwd_s = time_best(*be, repeat, [&] { forward(*be, *m, pb.corrupted, no_pattern); });
  const double fwd_flops = double(B) * T * L * layer_flops(*m, T / 2.0) + 2.0 * B * T * m->cfg.hidden_size * m->cfg.vocab_size;

  ForwardState clean = forward(*be, *m, pb.clean), corrupted = forward(*be, *m, pb.corrupted);
  LogitDiff lc = logit_diff(*be, *m, clean, pb.answer, pb.other), lr = logit_diff(*be, *m, corrupted, pb.answer, pb.other);
  const float scale = static_cast<float>(1.0 / (lc.mean - lr.mean));
  const double attr_s = time_best(*be, repeat, [&] {
    PairForward p = forward_pair(*be, *m, pb.clean, pb.corrupted);  // both runs in one pass
    Gradients g = backward(*be, *m, p.corrupted, pb.answer, pb.other, scale);
    for (Hook h : hooks) attribution(*be, *m, p.corrupted, p.clean, g, h);
  });

  const double peak = measured_peak_tflops(*be);
  nlohmann::json j;
  j["peak_gemm_tflops"] = peak;
  j["peak_gemm_dtype"] = dtype_name(be->weight_dtype());
  j["model"] = model_dir;
  j["device"] = be->name();
  j["B"] = B;
  j["T"] = T;
  j["layers"] = L;
  j["load_seconds"] = load_s;
  j["forward_ms"] = fwd_s * 1e3;
  j["forward_tflops"] = fwd_flops / fwd_s / 1e12;
  j["attribution_ms"] = attr_s * 1e3;
  // The JSON is rewritten after every phase ("complete": false until the end), so a run cut
  // short by a time limit still leaves a valid file with what it measured.
  auto save = [&](bool complete) {
    j["complete"] = complete;
    if (a.has("json")) write_file_atomic(a.get("json", ""), j.dump(2) + "\n");
  };
  save(false);
  std::printf("device: %s\nmodel: %s (B=%d, T=%d, %d layers)\n", be->name().c_str(), model_dir.c_str(), B, T, L);
  std::printf("measured %s GEMM peak: %.2f TFLOP/s\n", dtype_name(be->weight_dtype()), peak);
  std::printf("forward:              %10.3f ms  (%.2f TFLOP/s, %.1f%% of peak)\n", fwd_s * 1e3, fwd_flops / fwd_s / 1e12,
              100.0 * fwd_flops / fwd_s / 1e12 / peak);
  std::printf("attribution patching: %10.3f ms  (clean + corrupted in one forward, 1 backward, %zu hooks)\n", attr_s * 1e3, hooks.size());
  nlohmann::json sweeps = nlohmann::json::array();
  double total_fast = 0;
  SweepOptions fast_opt;
  fast_opt.mem_budget = static_cast<size_t>(a.get_double("mem-budget", 0) * 1024 * 1024);
  for (Hook h : hooks) {
    SweepResult fr;
    const double fs = time_best(*be, repeat, [&] { fr = activation_sweep(*be, *m, corrupted, clean, pb.answer, pb.other, h, fast_opt); });
    total_fast += fs;
    const double flops = double(fr.work.token_layer_evals) * layer_flops(*m, T / 2.0);
    nlohmann::json e = {{"hook", hook_name(h)},
                        {"fast_seconds", fs},
                        {"patched_runs", fr.work.patched_runs},
                        {"skipped_noop", fr.work.skipped_noop},
                        {"skipped_causal", fr.work.skipped_causal},
                        {"token_layer_evals", fr.work.token_layer_evals},
                        {"naive_token_layer_evals", fr.work.naive_token_layer_evals},
                        {"work_fraction", double(fr.work.token_layer_evals) / fr.work.naive_token_layer_evals},
                        {"chunks", fr.work.chunks},
                        {"streams", fr.work.streams},
                        {"fast_tflops", flops / fs / 1e12},
                        {"fraction_of_peak", flops / fs / 1e12 / peak}};
    std::printf("sweep %-10s fast:   %10.3f ms  (%lld runs, %lld no-op skipped, work %.1f%% of naive, %.2f TFLOP/s)\n",
                hook_name(h).c_str(), fs * 1e3, (long long)fr.work.patched_runs, (long long)fr.work.skipped_noop,
                100.0 * fr.work.token_layer_evals / fr.work.naive_token_layer_evals, flops / fs / 1e12);
    if (std::find(naive_hooks.begin(), naive_hooks.end(), h) != naive_hooks.end()) {
      SweepOptions no;
      no.naive = true;
      SweepResult nr;
      const double ns = time_best(*be, 1, [&] { nr = activation_sweep(*be, *m, corrupted, clean, pb.answer, pb.other, h, no); });
      double maxdiff = 0;
      for (size_t i = 0; i < nr.ld.size(); ++i) maxdiff = std::max(maxdiff, double(std::fabs(nr.ld[i] - fr.ld[i])));
      e["naive_seconds"] = ns;
      e["speedup_vs_naive"] = ns / fs;
      e["max_abs_diff_vs_naive_logit_diff"] = maxdiff;
      std::printf("sweep %-10s naive:  %10.3f ms  -> fast is %.2fx faster, max |diff| %.2g\n", hook_name(h).c_str(),
                  ns * 1e3, ns / fs, maxdiff);
    }
    sweeps.push_back(e);
    j["sweeps"] = sweeps;
    save(false);
  }
  j["sweeps"] = sweeps;
  j["all_sweeps_seconds"] = total_fast;

  // bf16 results beside fp32 ones: the same sweeps with fp32 weights on the same device.
  if (a.has("compare-fp32") && be->weight_dtype() != DType::F32) {
    auto be32 = make_backend(a.get("device", "auto"), /*fp32=*/true);
    auto m32 = load_model(*be32, model_dir);
    ForwardState c32 = forward(*be32, *m32, pb.clean), r32 = forward(*be32, *m32, pb.corrupted);
    const double d16 = lc.mean - lr.mean;
    const double d32 = logit_diff(*be32, *m32, c32, pb.answer, pb.other).mean -
                       logit_diff(*be32, *m32, r32, pb.answer, pb.other).mean;
    const double lr32 = logit_diff(*be32, *m32, r32, pb.answer, pb.other).mean;
    nlohmann::json cmp = nlohmann::json::array();
    for (Hook h : hooks) {
      SweepResult a16 = activation_sweep(*be, *m, corrupted, clean, pb.answer, pb.other, h, fast_opt);
      SweepResult a32 = activation_sweep(*be32, *m32, r32, c32, pb.answer, pb.other, h, fast_opt);
      double max_ld = 0, max_norm = 0;
      for (size_t t = 0; t < a16.targets.size(); ++t) {
        double m16 = 0, m32v = 0;
        for (int b = 0; b < B; ++b) {
          max_ld = std::max(max_ld, double(std::fabs(a16.ld[t * B + b] - a32.ld[t * B + b])));
          m16 += a16.ld[t * B + b];
          m32v += a32.ld[t * B + b];
        }
        max_norm = std::max(max_norm, std::fabs((m16 / B - lr.mean) / d16 - (m32v / B - lr32) / d32));
      }
      cmp.push_back({{"hook", hook_name(h)}, {"max_abs_logit_diff", max_ld}, {"max_abs_normalized", max_norm}});
      j["bf16_vs_fp32"] = cmp;
      save(false);
      std::printf("bf16 vs fp32 %-10s max |LD diff| %.3g, max |normalized diff| %.3g\n", hook_name(h).c_str(), max_ld,
                  max_norm);
    }
    j["bf16_vs_fp32"] = cmp;
  }
  std::printf("all sweeps (fast):    %10.3f ms\n", total_fast * 1e3);
  if (be->kind() == DeviceKind::CUDA) {
    std::map<std::string, double> measured = {{"forward", fwd_s}, {"attribution", attr_s}};
    for (const auto& e : sweeps) measured["sweep " + e["hook"].get<std::string>()] = e["fast_seconds"].get<double>();
    j["roofline"] = roofline_beside(*be, *m, pb, hooks, fast_opt, peak, measured);
  }
  save(true);
  return 0;
}

}  // namespace phi3
