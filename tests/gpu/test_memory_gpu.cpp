// The memory plan on CUDA counts every device byte (issue 31 item 1): on the CPU emulator of
// CUDA, the plan of the estimates (patching/memory_plan.h) is the device's measured
// high-water mark, the kernels' own scratch (bf16 casts of GEMM inputs, attention backward's
// row terms, the QK fix's key terms) included, for AtP (full and checkpointed) and AtP* with
// the QK fix, in fp32 and bf16 weights. And the backend's allocator (issue 31 item 3): an
// allocation the pool's kept blocks block succeeds after the pool is trimmed, and a request
// no trim can serve gives the out-of-memory error naming the sizes.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <string>

#include "model/backward.h"
#include "patching/attribution.h"
#include "patching/experiment.h"
#include "patching/memory_plan.h"
#include "patching/report.h"
#include "model/batch.h"
#include "runtime/error.h"
#include "runtime/trace_backend.h"
#include "test_util.h"
#if defined(PHI3_CUDA_EMU)
#include <cuda_runtime.h>

#include "emu/emu_memory.h"
#endif

namespace phi3 {
namespace {

#if defined(PHI3_CUDA_EMU)
std::string tiny_dir() { return test::source_dir() + "/data/models/tiny-temporal-phi3"; }

// The estimates' work as memory_plan.cpp walks it (estimates_peak_bytes).
void run_estimates(Backend& be, const Model& m, const PairBatch& pb, const EstimatesWork& w, bool ck) {
  ForwardOptions fo;
  fo.keep_mlp_post = w.neurons;
  fo.keep_pattern = w.pattern && !ck;
  fo.checkpoint = ck;
  PairForward p = forward_pair(be, m, pb.clean, pb.corrupted, fo);
  BackwardOptions bo;
  bo.keep_dmlp_post = w.neurons;
  if (!w.attribution_hooks.empty()) {
    if (ck) {
      attribution_streamed(be, m, p.corrupted, p.clean, pb.answer, pb.other, 1.0f, w.attribution_hooks, false, bo, "");
    } else {
      const Gradients g = backward(be, m, p.corrupted, pb.answer, pb.other, 1.0f, bo);
      for (Hook h : w.attribution_hooks) attribution(be, m, p.corrupted, p.clean, g, h);
    }
  }
  if (!w.atp_star_hooks.empty()) atp_star(be, m, p.corrupted, p.clean, pb.answer, pb.other, 1.0f, w.atp_star_hooks);
}
#endif

TEST(GpuMemory, PlannedPeakIsTheMeasuredDevicePeak) {
#if !defined(PHI3_CUDA_EMU)
  GTEST_SKIP() << "the device's exact live bytes are measured on the CPU emulator of CUDA (scripts/emu-check)";
#else
  struct Case {
    const char* name;
    bool checkpoint;
    EstimatesWork w;
  };
  std::vector<Case> cases(3);
  cases[0].name = "AtP, full pass";
  cases[0].w.attribution_hooks = {Hook::ResidPre, Hook::Z, Hook::MlpPost};
  cases[0].w.neurons = true;
  cases[1] = cases[0];
  cases[1].name = "AtP, checkpointed";
  cases[1].checkpoint = true;
  cases[2].name = "AtP* with the QK fix";
  cases[2].w.atp_star_hooks = {Hook::Q, Hook::K, Hook::AttnOut};
  cases[2].w.pattern = true;
  std::map<std::string, size_t> fp32_scratch;
  for (bool fp32 : {true, false}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(fp32 ? "fp32 " : "bf16 ") + c.name);
      auto gpu = make_backend("cuda", fp32);  // a fresh stream: no scratch held yet
      auto m = load_model(*gpu, tiny_dir());
      const PairBatch pb = make_pair_batch(load_pairs(test::source_dir() + "/data/temporal_scope_for_attribution_patching.json"),
                                           m->tok, m->cfg.pad_token_id, m->cfg.max_position_embeddings);
      const size_t predicted = estimates_peak_bytes(*gpu, *m, pb, c.w, c.checkpoint);
      gpu->synchronize();
      const size_t start = phi3emu::device_live_bytes();
      phi3emu::reset_device_peak();
      Trace t;
      TraceBackend traced(gpu.get(), t);  // the plan's count of the same run, beside the device's
      run_estimates(traced, *m, pb, c.w, c.checkpoint);
      gpu->synchronize();
      const size_t measured = phi3emu::device_peak_bytes() - start;
      EXPECT_EQ(predicted, measured);
      std::printf("  %s %s: planned %zu bytes, measured %zu (scratch %zu)\n", fp32 ? "fp32" : "bf16", c.name, predicted,
                  measured, traced.scratch_bytes());
      EXPECT_EQ(traced.peak_bytes(), measured);
      // The scratch is a real part of it: attention backward's row terms in every case, the
      // bf16 casts of the GEMM inputs on top with bf16 weights, the QK fix's key terms in AtP*.
      EXPECT_GT(traced.scratch_bytes(), 0u);
      if (fp32) {
        fp32_scratch[c.name] = traced.scratch_bytes();
      } else {
        EXPECT_GT(traced.scratch_bytes(), fp32_scratch[c.name]) << "bf16 weights: the casts";
      }
      if (!c.w.atp_star_hooks.empty()) {
        EXPECT_GE(traced.scratch_bytes(),
                  scratch_capacity(qk_fix_scratch(pb.clean.B, m->cfg.num_attention_heads, pb.clean.T)));
      }
      // Freed at the end except the scratch, which the stream keeps.
      EXPECT_EQ(phi3emu::device_live_bytes() - start, traced.scratch_bytes());
    }
  }
#endif
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(GpuMemory, FullDeviceTrimsThePoolAndRetries) {
#if !defined(PHI3_CUDA_EMU)
  GTEST_SKIP() << "the device size is set on the CPU emulator of CUDA (scripts/emu-check)";
#else
  constexpr size_t MiB = size_t(1) << 20;
  auto gpu = make_backend("cuda", /*fp32=*/false);
  gpu->free_memory();  // the pool gives back what it kept: the device holds the live blocks
  phi3emu::set_device_memory(phi3emu::device_occupied_bytes() + 64 * MiB);  // 64 MiB of room
  struct Restore {
    ~Restore() { phi3emu::set_device_memory(0); }
  } restore;

  void* a = gpu->alloc(48 * MiB);
  gpu->free(a);
  gpu->synchronize();
  EXPECT_GE(phi3emu::pool_reserved_bytes(), 48 * MiB) << "the pool keeps the freed block";
  // 60 MiB: the kept 48 MiB block is too small for it, and the device has 16 MiB besides.
  void* raw = nullptr;
  EXPECT_EQ(cudaMallocAsync(&raw, 60 * MiB, nullptr), cudaErrorMemoryAllocation) << "fails without the trim";
  (void)cudaGetLastError();
  void* b = nullptr;
  EXPECT_NO_THROW(b = gpu->alloc(60 * MiB)) << "the backend trims the pool and retries";
  gpu->free(b);
  gpu->synchronize();

  // free_memory counts no kept block as free: what it reports can be allocated at once.
  const size_t room = gpu->free_memory();
  EXPECT_EQ(room, 64 * MiB);
  EXPECT_EQ(cudaMallocAsync(&raw, room, nullptr), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync(raw, nullptr), cudaSuccess);

  // A request no trim can serve: the out-of-memory error with the sizes.
  try {
    gpu->alloc(80 * MiB);
    ADD_FAILURE() << "80 MiB allocated in 64";
  } catch (const OutOfMemory& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "CUDA out of memory: asked for 80.0 MiB with 64 MiB free of")) << msg;
    EXPECT_TRUE(contains(msg, "after trimming the pool")) << msg;
  }

  // The kernels' own scratch takes the same path: a bf16 GEMM whose input cast finds no room
  // names it. x [4096, 256] fp32 (4 MiB) leaves 60 MiB; fill all but 1 MiB of it.
  const int N = 4096, in = 256, out = 8;
  void* x = gpu->alloc(size_t(N) * in * 4);
  void* w = gpu->alloc(size_t(out) * in * 2);
  void* y = gpu->alloc(size_t(N) * out * 4);
  void* fill = gpu->alloc(gpu->free_memory() - MiB);
  Weight W;
  W.data = w;
  W.dtype = DType::BF16;
  W.rows = out;
  W.cols = in;
  GemmIn gin;
  gin.f32 = static_cast<const float*>(x);
  try {
    gpu->linear_forward(static_cast<float*>(y), gin, W, N, false);
    ADD_FAILURE() << "a 2.5 MiB cast in 1 MiB";
  } catch (const OutOfMemory& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "kernel scratch for the bf16 cast of a GEMM input of 2 MiB")) << msg;
  }
  for (void* p : {x, w, y, fill}) gpu->free(p);
#endif
}

// `run` reports its plan and the device's measured high-water mark (results.json "memory"): an
// AtP run's measured peak over its batch is the planned estimates pass, plus only the few small
// buffers the batch keeps beside it (ids, answers, the logit differences, the check flags).
TEST(GpuMemory, RunReportsThePlannedAndTheMeasuredPeak) {
#if !defined(PHI3_CUDA_EMU)
  GTEST_SKIP() << "the device's exact live bytes are measured on the CPU emulator of CUDA (scripts/emu-check)";
#else
  for (bool fp32 : {true, false}) {
    SCOPED_TRACE(fp32 ? "fp32" : "bf16");
    auto gpu = make_backend("cuda", fp32);
    auto m = load_model(*gpu, tiny_dir());
    ExperimentOptions opt;
    opt.pairs_file = test::source_dir() + "/data/temporal_scope_for_attribution_patching.json";
    opt.hooks = {Hook::ResidPre, Hook::AttnOut, Hook::MlpOut};
    opt.activation = false;
    const ExperimentResult R = run_experiment(*gpu, *m, opt);
    const MemoryReport& mr = R.memory;
    std::printf("  %s run: planned %zu bytes, measured %zu\n", fp32 ? "fp32" : "bf16", mr.planned_estimates_bytes,
                mr.measured_peak_bytes);
    ASSERT_TRUE(mr.measured);
    EXPECT_GT(mr.free_bytes, mr.plannable_bytes);
    EXPECT_EQ(mr.plannable_bytes, plannable_bytes(mr.free_bytes));
    ASSERT_GT(mr.planned_estimates_bytes, 0u);
    EXPECT_EQ(mr.planned_sweep_forwards_bytes, 0u) << "no exact sweep";
    EXPECT_GE(mr.measured_peak_bytes, mr.planned_estimates_bytes);
    EXPECT_LE(mr.measured_peak_bytes, mr.planned_estimates_bytes + 16 * 1024)
        << "planned " << mr.planned_estimates_bytes << ", measured " << mr.measured_peak_bytes;
    const std::string js = results_json(R);
    EXPECT_NE(js.find("\"measured_peak_bytes\": " + std::to_string(mr.measured_peak_bytes)), std::string::npos);
  }
#endif
}

}  // namespace
}  // namespace phi3
