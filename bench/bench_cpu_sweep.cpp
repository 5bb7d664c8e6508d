// CPU end-to-end benchmarks on the embedded model and the seed batch: one forward,
// attribution patching, and the exact activation-patching sweep in fast (prefix-reusing,
// packed) and naive (one full forward per patch) modes side by side. Counters report the
// token-layer work of each mode; compare the two sweep lines for the speed ratio.
#include <benchmark/benchmark.h>

#include "model/backward.h"
#include "patching/attribution.h"
#include "patching/sweep.h"

namespace phi3 {
namespace {

struct Fixture {
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<Model> m;
  PairBatch pb;
  ForwardState clean, corrupted;
  Fixture() {
    m = load_model(*be, std::string(PHI3_SOURCE_DIR) + "/data/models/tiny-temporal-phi3");
    auto pairs = load_pairs(std::string(PHI3_SOURCE_DIR) + "/data/temporal_scope_for_attribution_patching.json");
    pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings);
    clean = forward(*be, *m, pb.clean);
    corrupted = forward(*be, *m, pb.corrupted);
  }
};
Fixture& fx() {
  static Fixture f;
  return f;
}

void BM_Forward(benchmark::State& st) {
  auto& f = fx();
  ForwardOptions o;
  o.keep_pattern = false;
  for (auto _ : st) benchmark::DoNotOptimize(forward(*f.be, *f.m, f.pb.corrupted, o).logits.get());
}
BENCHMARK(BM_Forward)->Unit(benchmark::kMillisecond);

void BM_AttributionPatching(benchmark::State& st) {
  auto& f = fx();
  for (auto _ : st) {
    ForwardState c = forward(*f.be, *f.m, f.pb.clean), r = forward(*f.be, *f.m, f.pb.corrupted);
    Gradients g = backward(*f.be, *f.m, r, f.pb.answer, f.pb.other, 1.0f);
    for (Hook h : {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut}) benchmark::DoNotOptimize(attribution(*f.be, *f.m, r, c, g, h));
  }
}
BENCHMARK(BM_AttributionPatching)->Unit(benchmark::kMillisecond);

void BM_Sweep(benchmark::State& st, Hook hook, bool naive) {
  auto& f = fx();
  SweepOptions o;
  o.naive = naive;
  SweepResult r;
  for (auto _ : st) r = activation_sweep(*f.be, *f.m, f.corrupted, f.clean, f.pb.answer, f.pb.other, hook, o);
  st.counters["patched_runs"] = double(r.work.patched_runs);
  st.counters["token_layer_evals"] = double(r.work.token_layer_evals);
  st.counters["work_vs_naive"] = double(r.work.token_layer_evals) / double(r.work.naive_token_layer_evals);
}
BENCHMARK_CAPTURE(BM_Sweep, resid_pre_fast, Hook::ResidPre, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Sweep, resid_pre_naive, Hook::ResidPre, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Sweep, attn_out_fast, Hook::AttnOut, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Sweep, attn_out_naive, Hook::AttnOut, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Sweep, mlp_out_fast, Hook::MlpOut, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Sweep, mlp_out_naive, Hook::MlpOut, true)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace phi3

BENCHMARK_MAIN();
