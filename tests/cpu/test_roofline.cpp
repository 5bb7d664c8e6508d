// The traffic and roofline model (issue 15): the per-op cost functions against hand counts,
// and the prediction (a TraceBackend that computes nothing) against the same phases traced
// over the real CPU backend: the model code's op sequence does not depend on the device, so
// forward and attribution must tally the same calls, bytes and FLOPs.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/arch/config_json.h"
#include "kernels/cuda/op_costs.h"
#include "model/batch.h"
#include "patching/roofline.h"
#include "runtime/error.h"
#include "test_util.h"

namespace phi3 {
namespace {

TEST(OpCosts, LinearByHand) {
  const cost::OpCost b = cost::linear_forward(4, 3072, 9216, DType::BF16);
  // W bf16 once; x cast (read fp32, write bf16) then read as bf16 by the GEMM; y fp32.
  EXPECT_DOUBLE_EQ(b.bytes, 3072.0 * 9216 * 2 + 4 * 3072 * 6.0 + 4 * 3072 * 2.0 + 4 * 9216 * 4.0);
  EXPECT_DOUBLE_EQ(b.gemm_bf16_flops, 2.0 * 4 * 3072 * 9216);
  EXPECT_EQ(b.launches, 2);
  const cost::OpCost f = cost::linear_forward(4, 3072, 9216, DType::F32);
  EXPECT_DOUBLE_EQ(f.bytes, 3072.0 * 9216 * 4 + 4 * 3072 * 4.0 + 4 * 9216 * 4.0);
  EXPECT_DOUBLE_EQ(f.gemm_f32_flops, 2.0 * 4 * 3072 * 9216);
  EXPECT_EQ(f.launches, 1);
  const cost::OpCost d = cost::linear_backward(4, 3072, 9216, DType::F32, true);  // dx [4, 3072] +=
  EXPECT_DOUBLE_EQ(d.bytes, 3072.0 * 9216 * 4 + 4 * 9216 * 4.0 + 4 * 3072 * 4.0 + 4 * 3072 * 4.0);
}

// Two plain rows of T = 5 (the second with 2 pads), H = 2 heads on one kv head of HD = 8.
cost::AttnShape two_rows_of_five() {
  cost::AttnShape a;
  a.H = 2;
  a.KVH = 1;
  a.HD = 8;
  a.T = 5;
  a.pad = {0, 2};
  a.segs = {{0, 0, 0, 0, 0}, {1, 0, 5, 0, 5}};
  return a;
}

TEST(OpCosts, AttentionCountsVisiblePairs) {
  cost::AttnShape a = two_rows_of_five();
  double pairs, q_rows, fresh;
  int rows;
  cost::attn_pairs(a, pairs, q_rows, fresh, rows);
  EXPECT_EQ(pairs, 15 + 6);  // row 0: 1+2+3+4+5; row 1 (2 pads): 1+2+3
  EXPECT_EQ(q_rows, 10);
  EXPECT_EQ(rows, 2);
  a.window = 2;
  cost::attn_pairs(a, pairs, q_rows, fresh, rows);
  EXPECT_EQ(pairs, 9 + 5);
  const cost::OpCost c = cost::attention_forward(a);
  EXPECT_DOUBLE_EQ(c.flops, 2 * 14 * (4.0 * 8 + 5));
  EXPECT_DOUBLE_EQ(c.bytes, 2 * 10 * 16 * 4.0 + 2 * 10 * 8 * 4.0 + 2 * 20.0);  // q, z; fresh k, v; segments
}

TEST(OpCosts, AttentionOnTensorCoresIsPricedAsBf16Products) {
  cost::AttnShape a = two_rows_of_five();  // 21 visible pairs
  const cost::OpCost f32 = cost::attention_forward(a), b32 = cost::attention_backward(a);
  a.tensor_cores = true;
  const cost::OpCost f = cost::attention_forward(a), b = cost::attention_backward(a);
  EXPECT_DOUBLE_EQ(f.gemm_bf16_flops, 2 * 21 * 4.0 * 8);  // Q K^T and P V
  EXPECT_DOUBLE_EQ(f.flops, 2 * 21 * 5.0);                // the softmax
  EXPECT_DOUBLE_EQ(f.bytes, f32.bytes);
  EXPECT_DOUBLE_EQ(b.gemm_bf16_flops, 2 * 21 * 18.0 * 8);  // 9 products per pair
  EXPECT_DOUBLE_EQ(b.flops, 2 * 21 * 24.0);
  EXPECT_DOUBLE_EQ(b.bytes, b32.bytes - 2 * 2 * 5 * 5 * 4.0);  // no [B, H, T, T] read
  EXPECT_EQ(f32.gemm_bf16_flops, 0.0);
}

TEST(OpCosts, RooflineTakesTheLargestBound) {
  const cost::DeviceFigures& h = *cost::find_device("h100");
  EXPECT_EQ(cost::find_device("a100"), nullptr);
  cost::OpCost mem{3e9, 0, 0, 0, 1};      // 1 ms of traffic
  cost::OpCost gemm{1e3, 8e11, 0, 0, 1};  // 1 ms of bf16 GEMM
  cost::OpCost launch{1e3, 0, 0, 0, 1};   // a launch
  EXPECT_NEAR(cost::op_seconds(mem, h), 1e-3, 1e-9);
  EXPECT_NEAR(cost::op_seconds(gemm, h), 1e-3, 1e-9);
  EXPECT_NEAR(cost::op_seconds(launch, h), 4e-6, 1e-12);
}

TEST(Roofline, PredictionWalksTheRealOpSequence) {
  auto cpu = make_cpu_backend();
  auto m = load_model(*cpu, test::source_dir() + "/data/models/tiny-temporal-phi3");
  auto pairs = load_pairs(test::source_dir() + "/data/temporal_scope_for_attribution_patching.json");
  PairBatch pb = make_pair_batch(pairs, m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings);
  const std::vector<Hook> hooks = {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut};
  SweepOptions so;
  so.mem_budget = size_t(1) << 30;  // one chunk in both (chunking would follow each backend's memory)

  Trace rt;
  TraceBackend real(cpu.get(), rt);
  std::vector<Phase> rp = trace_phases(real, rt, *m, pb, hooks, so);

  Trace pt;
  TraceBackend pred(nullptr, pt, DeviceKind::CPU, DType::F32, size_t(8) << 30, "predicted");
  Model pm;
  pm.cfg = m->cfg;
  pm.tok = Tokenizer::load_dir(test::source_dir() + "/data/models/tiny-temporal-phi3");
  pm.w = ModelWeights::placeholder(pred, pm.cfg);
  std::vector<Phase> pp = trace_phases(pred, pt, pm, pb, hooks, so);

  ASSERT_EQ(rp.size(), 5u);
  ASSERT_EQ(pp.size(), 5u);
  for (int i = 0; i < 2; ++i) {  // forward, attribution: identical tallies
    SCOPED_TRACE(rp[i].name);
    ASSERT_EQ(rp[i].trace.ops.size(), pp[i].trace.ops.size());
    for (const auto& [name, o] : rp[i].trace.ops) {
      const OpTally& q = pp[i].trace.ops.at(name);
      EXPECT_EQ(o.calls, q.calls) << name;
      EXPECT_DOUBLE_EQ(o.cost.bytes, q.cost.bytes) << name;
      EXPECT_DOUBLE_EQ(o.cost.gemm_f32_flops, q.cost.gemm_f32_flops) << name;
      EXPECT_DOUBLE_EQ(o.cost.flops, q.cost.flops) << name;
    }
  }
  // Memory: the prediction allocates exactly what the real run does beyond the weights.
  for (int i = 0; i < 5; ++i) {
    SCOPED_TRACE(rp[i].name);
    EXPECT_GT(pp[i].peak_bytes, pp[i].start_bytes);
    EXPECT_TRUE(rp[i].refused.empty() && pp[i].refused.empty());
    if (i < 2) {
      EXPECT_EQ(rp[i].peak_bytes - rp[i].start_bytes, pp[i].peak_bytes - pp[i].start_bytes);
    }
  }
  // The forward holds at least its logits and every layer's residual stream in fp32.
  const int64_t rows = int64_t(pb.corrupted.B) * pb.corrupted.T;
  EXPECT_GE(pp[0].peak_bytes - pp[0].start_bytes,
            size_t(rows) * (m->cfg.vocab_size + m->cfg.num_hidden_layers * m->cfg.hidden_size) * 4);
  // Forward GEMM FLOPs by hand: every layer's four GEMMs and the LM head over all B*T rows.
  const ModelConfig& c = m->cfg;
  const double N = double(pb.clean.B) * pb.clean.T, D = c.hidden_size, F = c.intermediate_size;
  const double per_row = c.num_hidden_layers * (D * m->qkv_width() + m->q_width() * D + D * 2 * F + F * D) +
                         D * double(c.vocab_size);
  EXPECT_DOUBLE_EQ(pp[0].trace.total().cost.gemm_f32_flops, 2 * N * per_row);
  // Sweeps: the prediction skips no patch, the real run skips the bitwise no-ops.
  for (int i = 2; i < 5; ++i) {
    SCOPED_TRACE(rp[i].name);
    EXPECT_GE(pp[i].trace.total().cost.gemm_f32_flops, rp[i].trace.total().cost.gemm_f32_flops);
    EXPECT_GT(rp[i].trace.total().cost.gemm_f32_flops, 0);
    EXPECT_GT(pp[i].trace.seconds(*cost::find_device("h100")), 0);
  }
}

// A device too small for a phase: the phase is refused with the allocation that failed (or,
// without oom_ends_phase, the OutOfMemory propagates), and the phases after it still run.
TEST(Roofline, PredictionRefusesWhatDoesNotFit) {
  auto cpu = make_cpu_backend();
  const std::string dir = test::source_dir() + "/data/models/tiny-temporal-phi3";
  auto pairs = load_pairs(test::source_dir() + "/data/temporal_scope_for_attribution_patching.json");
  Trace pt;
  TraceBackend pred(nullptr, pt, DeviceKind::CPU, DType::F32, 0, "predicted");
  Model pm;
  pm.cfg = load_config(dir);
  pm.tok = Tokenizer::load_dir(dir);
  pm.w = ModelWeights::placeholder(pred, pm.cfg);
  PairBatch pb = make_pair_batch(pairs, pm.tok, pm.cfg.pad_token_id, pm.cfg.max_position_embeddings);
  const std::vector<Hook> hooks = {Hook::ResidPre};
  SweepOptions so;
  TracePhaseOptions po;
  po.eap_ig = true;
  po.oom_ends_phase = true;
  std::vector<Phase> all = trace_phases(pred, pt, pm, pb, hooks, so, po);
  ASSERT_EQ(all.size(), 4u);  // forward, attribution, sweep resid_pre, eap-ig scores
  EXPECT_EQ(all[3].name, "eap-ig scores");
  for (const Phase& p : all) EXPECT_TRUE(p.refused.empty()) << p.name;
  // Room for the weights and the forward's activations, not for the attribution's two runs.
  pred.set_memory(all[0].peak_bytes + (all[1].peak_bytes - all[0].peak_bytes) / 2);
  std::vector<Phase> small = trace_phases(pred, pt, pm, pb, hooks, so, po);
  ASSERT_EQ(small.size(), 4u);
  EXPECT_TRUE(small[0].refused.empty());
  EXPECT_EQ(small[0].peak_bytes, all[0].peak_bytes);
  EXPECT_NE(small[1].refused.find("predicted device memory exhausted"), std::string::npos) << small[1].refused;
  EXPECT_EQ(pred.used_bytes(), all[0].start_bytes);  // what the refused phase held was freed
  po.oom_ends_phase = false;
  EXPECT_THROW(trace_phases(pred, pt, pm, pb, hooks, so, po), OutOfMemory);
}

// The CLI: `bench --predict h200 --like phi-3-mini` needs no weights and no GPU, and the
// seed's Phi-3-mini forward moves at least the GEMM weights (7.25 GB of bf16) once.
TEST(Roofline, PredictCommandPhi3Mini) {
  const std::string dir = test::temp_dir("predict");
  const std::string json = dir + "/p.json";
  const std::string cmd = std::string("'") + PHI3_CLI + "' bench --predict h200 --like phi-3-mini --json '" + json +
                          "' > '" + dir + "/out.txt' 2>&1";
  const int st = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  std::ifstream f(json);
  nlohmann::json j = nlohmann::json::parse(f);
  EXPECT_TRUE(j["prediction"].get<bool>());
  EXPECT_EQ(j["T"], 31);
  EXPECT_EQ(j["B"], 4);
  ASSERT_EQ(j["phases"].size(), 6u);  // forward, attribution, three sweeps, EAP-IG
  EXPECT_EQ(j["phases"][5]["phase"], "eap-ig scores");
  // Weights: the bf16 GEMM matrices and embeddings, fp32 norms.
  const double params = 32 * (3072.0 * 9216 + 3072.0 * 3072 + 3072.0 * 16384 + 8192.0 * 3072) + 2 * 32064.0 * 3072;
  EXPECT_NEAR(j["weights_bytes"].get<double>(), 2 * params, 0.01 * 2 * params);
  for (const auto& p : j["phases"]) {
    EXPECT_TRUE(p["fits"].get<bool>()) << p["phase"];
    EXPECT_GT(p["peak_bytes"].get<double>(), j["weights_bytes"].get<double>()) << p["phase"];
    EXPECT_LE(p["peak_bytes"].get<double>(), j["usable_bytes"].get<double>()) << p["phase"];
  }
  const double layer_gemm_params = 3072.0 * 9216 + 3072.0 * 3072 + 3072.0 * 16384 + 8192.0 * 3072;
  EXPECT_GT(j["phases"][0]["bytes"].get<double>(), 32 * layer_gemm_params * 2);
  // the linear layers' GEMMs, and in bf16 attention's products on tensor cores (Q K^T, P V)
  const double attn_tc = j["phases"][0]["ops"]["attention_forward (tensor cores)"]["gemm_bf16_flops"].get<double>();
  EXPECT_GT(attn_tc, 0.0);
  EXPECT_LE(attn_tc, 32 * 4 * 32 * (31 * 32 / 2) * 4.0 * 96);  // layers x B x H x causal pairs x 4 HD
  EXPECT_DOUBLE_EQ(j["phases"][0]["gemm_flops"].get<double>() - attn_tc,
                   2.0 * 4 * 31 * (32 * layer_gemm_params + 3072.0 * 32064));
  for (const auto& p : j["phases"]) EXPECT_GT(p["predicted_ms"].get<double>(), 0);
}

// A shape whose weights exceed the device: every phase refused up front, with the weights'
// size (Qwen2.5-72B: 72.7 B parameters, 145 GB of bf16, on an 80 GB H100), and no time.
TEST(Roofline, PredictCommandRefusesWeightsThatDoNotFit) {
  const std::string dir = test::temp_dir("predict72");
  const std::string json = dir + "/p.json";
  const std::string cmd = std::string("'") + PHI3_CLI +
                          "' bench --predict h100 --like qwen2.5-72b --hooks resid_pre --json '" + json + "' > '" +
                          dir + "/out.txt' 2>&1";
  const int st = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  std::ifstream f(json);
  nlohmann::json j = nlohmann::json::parse(f);
  EXPECT_EQ(j["architecture"], "Qwen2ForCausalLM");
  EXPECT_NEAR(j["weights_bytes"].get<double>(), 2 * 72.7e9, 0.01 * 2 * 72.7e9);
  ASSERT_EQ(j["phases"].size(), 4u);
  for (const auto& p : j["phases"]) {
    EXPECT_FALSE(p["fits"].get<bool>());
    EXPECT_TRUE(p["predicted_ms"].is_null());
    EXPECT_NE(p["refused"].get<std::string>().find("the weights alone"), std::string::npos);
  }
  EXPECT_TRUE(j["all_sweeps_ms"].is_null());
}

}  // namespace
}  // namespace phi3
