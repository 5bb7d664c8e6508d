// GPU kernel benchmarks at Phi-3-mini shapes (d=3072, 32 heads x 96, ffn 8192), 64..4096
// rows. Each iteration is timed with CUDA events around the launch (UseManualTime), after an
// L2 flush (a memset over twice the L2 size, queued before the start event, so untimed).
// Bandwidth-bound kernels set bytes (read + written once each) so bytes_per_second prints;
// FLOP-bound ones set items = FLOPs and a TFLOP/s counter. BM_D2DCopy is the yardstick:
// the issue asks RMSNorm / rotary / SwiGLU / casts for >= 70% of its bandwidth
// (scripts/gpu-check computes the fractions). Every case reports
// SkipWithError("no CUDA GPU visible") when there is no GPU.
//
//   ./bench_gpu_kernels --benchmark_min_time=0.02 --benchmark_format=json
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "runtime/backend.h"

#if defined(PHI3_WITH_CUDA)
#include <cuda_runtime.h>

#include "kernels/cuda/cast.cuh"
#endif

namespace {

#if !defined(PHI3_WITH_CUDA)
void BM_NoCuda(benchmark::State& st) {
  st.SkipWithError("built without CUDA (nvcc not found at configure time)");
  for (auto _ : st) {
  }
}
BENCHMARK(BM_NoCuda);
#else

using namespace phi3;

constexpr int kD = 3072, kH = 32, kHD = 96, kF = 8192;

// Device buffer with deterministic pseudo-random contents in [-1, 1): fp32 values, or bf16
// ones (Fill::BF16: real bf16 numbers, not the halves of fp32 bit patterns, which include
// NaNs and huge exponents), or zeros (outputs).
enum class Fill { F32, BF16, Zero };
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t b, uint32_t seed = 1, bool fill = true) : Buf(b, seed, fill ? Fill::F32 : Fill::Zero) {}
  Buf(size_t b, uint32_t seed, Fill fill) : bytes(b) {
    if (cudaMalloc(&p, b) != cudaSuccess) {
      p = nullptr;
      return;
    }
    if (fill == Fill::Zero) {
      cudaMemset(p, 0, b);
      return;
    }
    std::vector<float> h((b + 3) / 4);
    uint32_t s = seed * 2654435761u + 1;
    for (auto& x : h) {
      s = s * 1664525u + 1013904223u;
      x = static_cast<float>(s >> 8) * (2.0f / 16777216.0f) - 1.0f;
    }
    if (fill == Fill::BF16) {
      std::vector<uint16_t> hb(b / 2);
      for (size_t i = 0; i < hb.size(); ++i) hb[i] = float_to_bf16_bits(h[i / 2] * (i & 1 ? -0.5f : 1.0f));
      cudaMemcpy(p, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice);
      return;
    }
    cudaMemcpy(p, h.data(), b, cudaMemcpyHostToDevice);
  }
  ~Buf() {
    if (p) cudaFree(p);
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  float* f() const { return static_cast<float*>(p); }
  uint16_t* h() const { return static_cast<uint16_t*>(p); }
  int32_t* i() const { return static_cast<int32_t*>(p); }
};

struct Ctx {
  cudaStream_t s = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  void* flush = nullptr;
  size_t flush_bytes = 0;
  Ctx() {
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    int dev = 0, l2 = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev);
    flush_bytes = 2 * static_cast<size_t>(l2 > 0 ? l2 : 64 << 20);
    if (cudaMalloc(&flush, flush_bytes) != cudaSuccess) flush = nullptr;
    // A failed optional call above leaves its error pending; clear it so that the first
    // kernel's launch check does not report it as its own.
    (void)cudaGetLastError();
  }
};
Ctx& ctx() {
  static Ctx c;
  return c;
}

bool have_gpu(benchmark::State& st) {
  if (!cuda_available()) {
    st.SkipWithError("no CUDA GPU visible");
    return false;
  }
  return true;
}

// Times `launch` (queued on ctx().s) per iteration with events; stops with an error on any
// CUDA failure (including exceptions thrown by the op launchers).
template <typename F>
void run_timed(benchmark::State& st, F&& launch) {
  Ctx& c = ctx();
  int it = 0;
  for (auto _ : st) {
    if (c.flush) cudaMemsetAsync(c.flush, it++ & 0xff, c.flush_bytes, c.s);
    cudaEventRecord(c.e0, c.s);
    try {
      launch(c.s);
    } catch (const std::exception& e) {
      st.SkipWithError(e.what());
      break;
    }
    cudaEventRecord(c.e1, c.s);
    cudaError_t err = cudaEventSynchronize(c.e1);
    if (err != cudaSuccess) {
      st.SkipWithError(cudaGetErrorString(err));
      break;
    }
    float ms = 0;
    cudaEventElapsedTime(&ms, c.e0, c.e1);
    st.SetIterationTime(ms * 1e-3);
  }
}

void set_bytes(benchmark::State& st, double bytes_per_iter) {
  st.SetBytesProcessed(static_cast<int64_t>(bytes_per_iter * static_cast<double>(st.iterations())));
}
void set_flops(benchmark::State& st, double flops_per_iter) {
  st.SetItemsProcessed(static_cast<int64_t>(flops_per_iter * static_cast<double>(st.iterations())));
  st.counters["TFLOP/s"] = benchmark::Counter(flops_per_iter * static_cast<double>(st.iterations()) / 1e12,
                                              benchmark::Counter::kIsRate);
}

// ---- yardstick: device-to-device copy of a [rows, 3072] fp32 activation -----------------
void BM_D2DCopy(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const size_t bytes = static_cast<size_t>(st.range(0)) * kD * 4;
  Buf a(bytes), b(bytes, 2, false);
  run_timed(st, [&](cudaStream_t s) {
    cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, s);
  });
  set_bytes(st, 2.0 * bytes);
}

// ---- RMSNorm: [rows, 3072] --------------------------------------------------------------
void BM_RmsNorm(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int N = static_cast<int>(st.range(0));
  Buf x((size_t)N * kD * 4), w(kD * 4, 3), out((size_t)N * kD * 4, 4, false), rstd(N * 4, 5, false);
  run_timed(st, [&](cudaStream_t s) {
    cuda::rmsnorm_forward(out.f(), rstd.f(), x.f(), w.f(), N, kD, 1e-5f, s);
  });
  set_bytes(st, 2.0 * N * kD * 4 + kD * 4 + N * 4);
}

void BM_RmsNormBackward(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int N = static_cast<int>(st.range(0));
  Buf x((size_t)N * kD * 4), w(kD * 4, 3), dout((size_t)N * kD * 4, 4), dx((size_t)N * kD * 4, 6),
      rstd(N * 4, 5);
  run_timed(st, [&](cudaStream_t s) {
    cuda::rmsnorm_backward(dx.f(), dout.f(), x.f(), w.f(), rstd.f(), N, kD, s);
  });
  set_bytes(st, 4.0 * N * kD * 4 + kD * 4 + N * 4);  // read x, dout, dx; write dx
}

// ---- rotary: the q heads of [rows, 32 x 96], out of place -------------------------------
void BM_Rotary(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int N = static_cast<int>(st.range(0));
  std::vector<float> inv(kHD / 2);
  for (int i = 0; i < kHD / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / kHD);
  Buf invd(inv.size() * 4, 1, false), pos(N * 4, 1, false), in((size_t)N * kD * 4),
      out((size_t)N * kD * 4, 2, false);
  cudaMemcpy(invd.p, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice);
  std::vector<int32_t> p(N);
  for (int i = 0; i < N; ++i) p[i] = i % 4096;
  cudaMemcpy(pos.p, p.data(), N * 4, cudaMemcpyHostToDevice);
  RopeParams rope{invd.f(), kHD, 1.0f};
  run_timed(st, [&](cudaStream_t s) {
    cuda::rotary_forward(out.f(), kD, in.f(), kD, pos.i(), N, kH, kHD, rope, s);
  });
  set_bytes(st, 2.0 * N * kD * 4 + N * 4);
}

// ---- SwiGLU: gu [rows, 2 x 8192] -> [rows, 8192] ----------------------------------------
void BM_Swiglu(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int N = static_cast<int>(st.range(0));
  Buf gu((size_t)N * 2 * kF * 4), out((size_t)N * kF * 4, 2, false);
  run_timed(st, [&](cudaStream_t s) { cuda::swiglu_forward(out.f(), gu.f(), N, kF, s); });
  set_bytes(st, 3.0 * N * kF * 4);
}

void BM_SwigluBackward(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int N = static_cast<int>(st.range(0));
  Buf gu((size_t)N * 2 * kF * 4), dout((size_t)N * kF * 4, 3), dgu((size_t)N * 2 * kF * 4, 2, false);
  run_timed(st, [&](cudaStream_t s) { cuda::swiglu_backward(dgu.f(), dout.f(), gu.f(), N, kF, s); });
  set_bytes(st, 5.0 * N * kF * 4);
}

// ---- casts: [rows, 3072] ----------------------------------------------------------------
void BM_CastF32ToBF16(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int64_t n = st.range(0) * kD;
  Buf in(n * 4), out(n * 2, 2, false);
  run_timed(st, [&](cudaStream_t s) { cuda::cast_f32_to_bf16(out.h(), in.f(), n, s); });
  set_bytes(st, 6.0 * n);
}
void BM_CastBF16ToF32(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int64_t n = st.range(0) * kD;
  Buf in(n * 2, 1, Fill::BF16), out(n * 4, 2, false);
  run_timed(st, [&](cudaStream_t s) { cuda::cast_bf16_to_f32(out.f(), in.h(), n, s); });
  set_bytes(st, 6.0 * n);
}

// ---- attention: B rows of T tokens, 32 heads x 96, fused qkv rows ------------------------
// FLOPs: QK^T and PV over the causal half, 2 FLOPs per multiply-add: 4 B H HD T(T+1)/2.
struct AttnBufs {
  int B, T;
  Buf qkv, z, pattern, stats, pad, segs;
  AttnParams p;
  AttnBufs(int B_, int T_, bool with_pattern)
      : B(B_), T(T_),
        qkv((size_t)B_ * T_ * 3 * kD * 4),
        z((size_t)B_ * T_ * kD * 4, 2, false),
        pattern(with_pattern ? (size_t)B_ * kH * T_ * T_ * 4 : 4, 3, false),
        stats((size_t)B_ * kH * T_ * 2 * 4, 6, false),
        pad(B_ * 4, 4, false),
        segs(B_ * sizeof(AttnSegment), 5, false) {
    std::vector<AttnSegment> sg;
    for (int b = 0; b < B; ++b) sg.push_back(AttnSegment{b, 0, b * T, 0, b * T});
    cudaMemcpy(segs.p, sg.data(), sg.size() * sizeof(AttnSegment), cudaMemcpyHostToDevice);
    p.q = qkv.f();
    p.k = qkv.f() + kD;
    p.v = qkv.f() + 2 * kD;
    p.z = z.f();
    p.pattern = with_pattern ? pattern.f() : nullptr;
    p.stats = stats.f();
    p.pad = pad.i();
    p.segs = static_cast<const AttnSegment*>(segs.p);
    p.q_stride = p.kv_stride = 3 * kD;
    p.z_stride = kD;
    p.n_segs = B;
    p.T = T;
    p.H = kH;
    p.KVH = kH;
    p.HD = kHD;
    p.scale = 1.0f / std::sqrt(static_cast<float>(kHD));
  }
  double flops() const { return 4.0 * B * kH * kHD * (double)T * (T + 1) / 2.0; }
};

void BM_AttentionForward(benchmark::State& st) {
  if (!have_gpu(st)) return;
  AttnBufs a(static_cast<int>(st.range(1)), static_cast<int>(st.range(0)), false);
  run_timed(st, [&](cudaStream_t s) { cuda::attention_forward(a.p, s); });
  set_flops(st, a.flops());
  st.counters["B"] = static_cast<double>(a.B);
  st.counters["T"] = static_cast<double>(a.T);
}

void BM_AttentionForwardPattern(benchmark::State& st) {
  if (!have_gpu(st)) return;
  AttnBufs a(static_cast<int>(st.range(1)), static_cast<int>(st.range(0)), true);
  run_timed(st, [&](cudaStream_t s) { cuda::attention_forward(a.p, s); });
  set_flops(st, 1.5 * a.flops());  // the pattern sweep recomputes QK^T
}

void BM_AttentionBackward(benchmark::State& st) {
  if (!have_gpu(st)) return;
  AttnBufs a(static_cast<int>(st.range(1)), static_cast<int>(st.range(0)), false);  // no pattern: recomputed
  Buf dz((size_t)a.B * a.T * kD * 4, 7), dqkv((size_t)a.B * a.T * 3 * kD * 4, 8, false);
  cuda::attention_forward(a.p, ctx().s);
  AttnBackwardParams bp{a.p, dz.f(), dqkv.f(), dqkv.f() + kD, dqkv.f() + 2 * kD};
  run_timed(st, [&](cudaStream_t s) { cuda::attention_backward(bp, s); });
  // 9 causal-half matmuls: query side S, dP (D_t sweep) and S, dP, dq;
  // key side S, dP, dk, dv (each half of flops(), which counts QK^T and PV)
  set_flops(st, 4.5 * a.flops());
}

// ---- linear, bf16 weights: [rows, in] x [out, in]^T ---------------------------------------
// range(1) selects the Phi-3-mini projection: 0 qkv 3072->9216, 1 o 3072->3072,
// 2 gate_up 3072->16384, 3 down 8192->3072.
void BM_LinearBF16(benchmark::State& st) {
  if (!have_gpu(st)) return;
  static const int shapes[4][2] = {{3072, 9216}, {3072, 3072}, {3072, 16384}, {8192, 3072}};
  static const char* names[4] = {"qkv", "o", "gate_up", "down"};
  const int N = static_cast<int>(st.range(0));
  const int in = shapes[st.range(1)][0], out = shapes[st.range(1)][1];
  Buf W((size_t)in * out * 2, 1, Fill::BF16), x((size_t)N * in * 4, 2), y((size_t)N * out * 4, 3, false);
  const Weight w{W.p, DType::BF16, out, in};
  run_timed(st, [&](cudaStream_t s) { cuda::linear_forward(y.f(), x.f(), w, N, false, s); });
  set_flops(st, 2.0 * N * in * out);
  st.SetLabel(names[st.range(1)]);
}

void BM_LinearF32(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int N = static_cast<int>(st.range(0)), in = 3072, out = 9216;
  Buf W((size_t)in * out * 4), x((size_t)N * in * 4, 2), y((size_t)N * out * 4, 3, false);
  const Weight w{W.p, DType::F32, out, in};
  run_timed(st, [&](cudaStream_t s) { cuda::linear_forward(y.f(), x.f(), w, N, false, s); });
  set_flops(st, 2.0 * N * in * out);
  st.SetLabel("qkv fp32");
}

// ---- issue 15's fused forms ---------------------------------------------------------------
// The residual add and the next RMSNorm in one kernel, the GEMM input written in bf16.
void BM_AddRmsNormBf16(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int N = static_cast<int>(st.range(0));
  Buf a((size_t)N * kD * 4), b((size_t)N * kD * 4, 2), w(kD * 4, 3), sum((size_t)N * kD * 4, 4, false),
      out16((size_t)N * kD * 2, 5, false), rstd(N * 4, 6, false);
  run_timed(st, [&](cudaStream_t s) {
    cuda::add_rmsnorm_forward(sum.f(), GemmOut(nullptr, static_cast<uint16_t*>(out16.p)), rstd.f(), a.f(), b.f(),
                              w.f(), N, kD, 1e-5f, s);
  });
  set_bytes(st, 4.0 * N * kD * 3 + 2.0 * N * kD + kD * 4 + N * 4);  // read a, b; write sum, bf16 out
}

// Rotary + q/k/v split of a Phi-3-mini qkv row [rows, 9216] with a cos/sin table.
void BM_RotaryQkv(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int N = static_cast<int>(st.range(0)), W = 3 * kD, half = kHD / 2, n_pos = 4096;
  std::vector<float> table((size_t)n_pos * half * 2);
  for (int p = 0; p < n_pos; ++p)
    for (int i = 0; i < half; ++i) {
      const float ang = p * std::pow(10000.0f, -2.0f * i / kHD);
      table[((size_t)p * half + i) * 2] = std::cos(ang);
      table[((size_t)p * half + i) * 2 + 1] = std::sin(ang);
    }
  Buf tab(table.size() * 4, 1, false), pos(N * 4, 1, false), qkv((size_t)N * W * 4),
      q((size_t)N * kD * 4, 2, false), k((size_t)N * kD * 4, 3, false), v((size_t)N * kD * 4, 4, false);
  cudaMemcpy(tab.p, table.data(), table.size() * 4, cudaMemcpyHostToDevice);
  std::vector<int32_t> p(N);
  for (int i = 0; i < N; ++i) p[i] = i % n_pos;
  cudaMemcpy(pos.p, p.data(), N * 4, cudaMemcpyHostToDevice);
  RopeParams rope{nullptr, kHD, 1.0f, tab.f(), n_pos};
  run_timed(st, [&](cudaStream_t s) {
    cuda::rotary_qkv_forward(q.f(), k.f(), v.f(), qkv.f(), pos.i(), N, kH, kH, kHD, rope, s);
  });
  set_bytes(st, 2.0 * N * W * 4 + N * 4);
}

// The sweep's device no-op test over one layer of resid_pre: [4 x rows, 3072], 1 group.
void BM_RowsEqual(benchmark::State& st) {
  if (!have_gpu(st)) return;
  const int T = static_cast<int>(st.range(0)), B = 4;
  Buf a((size_t)B * T * kD * 4), c((size_t)B * T * kD * 4), eq(T, 1, false);
  cudaMemcpy(c.p, a.p, (size_t)B * T * kD * 4, cudaMemcpyDeviceToDevice);  // equal: every byte read
  run_timed(st, [&](cudaStream_t s) {
    cuda::rows_equal(static_cast<uint8_t*>(eq.p), a.f(), c.f(), B, T, 1, kD, kD, s);
  });
  set_bytes(st, 2.0 * B * T * kD * 4);
}

void rows_args(benchmark::internal::Benchmark* b) {
  for (int r : {64, 512, 4096}) b->Arg(r);
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}
void attn_args(benchmark::internal::Benchmark* b) {
  for (int T : {31, 64, 128, 256, 512}) b->Args({T, 4});
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}
void linear_args(benchmark::internal::Benchmark* b) {
  for (int shape = 0; shape < 4; ++shape)
    for (int r : {64, 512, 4096}) b->Args({r, shape});
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_D2DCopy)->Apply(rows_args);
BENCHMARK(BM_RmsNorm)->Apply(rows_args);
BENCHMARK(BM_RmsNormBackward)->Apply(rows_args);
BENCHMARK(BM_Rotary)->Apply(rows_args);
BENCHMARK(BM_Swiglu)->Apply(rows_args);
BENCHMARK(BM_SwigluBackward)->Apply(rows_args);
BENCHMARK(BM_CastF32ToBF16)->Apply(rows_args);
BENCHMARK(BM_CastBF16ToF32)->Apply(rows_args);
BENCHMARK(BM_AttentionForward)->Apply(attn_args);
BENCHMARK(BM_AttentionForwardPattern)->Args({31, 4})->Args({512, 4})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionBackward)->Args({31, 4})->Args({512, 4})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LinearBF16)->Apply(linear_args);
BENCHMARK(BM_LinearF32)->Arg(64)->Arg(512)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AddRmsNormBf16)->Apply(rows_args);
BENCHMARK(BM_RotaryQkv)->Apply(rows_args);
BENCHMARK(BM_RowsEqual)->Arg(31)->Arg(512)->UseManualTime()->Unit(benchmark::kMicrosecond);

#endif  // PHI3_WITH_CUDA

}  // namespace

BENCHMARK_MAIN();
