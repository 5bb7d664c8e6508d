// CpuBackend: the fp32 reference device. "Device memory" is 64-byte aligned host memory, the
// copies are memcpy, and every op forwards to phi3::cpu (kernels/cpu/*.cpp). Weights are
// stored in fp32.
#include <cblas.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

#include "runtime/backend.h"
#include "runtime/error.h"

namespace phi3 {

namespace {

constexpr size_t kAlign = 64;  // a cache line; also enough for any SIMD load

class CpuBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::CPU; }
  std::string name() const override {
    return "cpu (OpenBLAS, " + std::to_string(openblas_get_num_threads()) + " threads)";
  }
  DType weight_dtype() const override { return DType::F32; }

  void* alloc(size_t bytes) override {
    // aligned_alloc wants a multiple of the alignment; 0 bytes still gives a unique pointer.
    const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
    void* p = bytes > SIZE_MAX - kAlign ? nullptr
                                        : std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
    if (!p) throw OutOfMemory("cannot allocate " + std::to_string(bytes) + " bytes on the CPU");
    return p;
  }
  void free(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(dst, 0, bytes);
  }
  void synchronize() override {}
  // Host memory is shared by every CPU backend; a fork lets callers run independent work
  // from several threads (the ops themselves are thread-safe).
  std::unique_ptr<Backend> fork() override { return std::make_unique<CpuBackend>(); }
  size_t free_memory() const override {
    std::ifstream f("/proc/meminfo");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("MemAvailable:", 0) == 0) {
        std::istringstream is(line.substr(13));
        size_t kb = 0;
        if (is >> kb) return kb * 1024;
      }
    }
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  }

  // ---- ops ----
  void moe_route_forward(int32_t* ids, float* gates, const float* logits, int N, int E, int k, bool renorm) override {
    cpu::moe_route_forward(ids, gates, logits, N, E, k, renorm, nullptr);
  }
  void moe_route_backward(float* dlogits, const float* dgates, const float* logits, const int32_t* ids, int N, int E,
                          int k, bool renorm) override {
    cpu::moe_route_backward(dlogits, dgates, logits, ids, N, E, k, renorm, nullptr);
  }
  void moe_combine_forward(float* out, const float* y, const int32_t* slot, const float* gates, int N, int k,
                           int D) override {
    cpu::moe_combine_forward(out, y, slot, gates, N, k, D, nullptr);
  }
  void moe_combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* slot,
                            const float* gates, int N, int k, int D) override {
    cpu::moe_combine_backward(dy, dgates, dout, y, slot, gates, N, k, D, nullptr);
  }
  void moe_sparsemixer_forward(int32_t* ids, float* gates, const float* logits, int N, int E, float eps) override {
    cpu::moe_sparsemixer_forward(ids, gates, logits, N, E, eps, nullptr);
  }
  void moe_sparsemixer_backward(float* dlogits, const float* dgates, const float* logits, int N, int E,
                                float eps) override {
    cpu::moe_sparsemixer_backward(dlogits, dgates, logits, N, E, eps, nullptr);
  }
  void softcap_forward(float* x, int64_t n, float cap) override { cpu::softcap_forward(x, n, cap, nullptr); }
  void softcap_backward(float* dx, const float* y, int64_t n, float cap) override {
    cpu::softcap_backward(dx, y, n, cap, nullptr);
  }
  void embedding_forward(float* out, const int32_t* ids, const Weight& table, int N, float scale = 1.0f) override {
    cpu::embedding_forward(out, ids, table, N, nullptr, scale);
  }
  void rmsnorm_forward(GemmOut out, float* rstd, const float* x, const float* w, int N, int D,
                       float eps, bool center = false, const float* bias = nullptr) override {
    cpu::rmsnorm_forward(out, rstd, x, w, N, D, eps, nullptr, center, bias);
  }
  void add_rmsnorm_forward(float* sum, GemmOut out, float* rstd, const float* a, const float* b,
                           const float* w, int N, int D, float eps, bool center = false,
                           const float* bias = nullptr) override {
    cpu::add_rmsnorm_forward(sum, out, rstd, a, b, w, N, D, eps, nullptr, center, bias);
  }
  void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* w,
                        const float* rstd, int N, int D, bool center = false) override {
    cpu::rmsnorm_backward(dx, dout, x, w, rstd, N, D, nullptr, center);
  }
  void linear_forward(float* y, GemmIn x, const Weight& W, int N, bool accumulate) override {
    cpu::linear_forward(y, x, W, N, accumulate, nullptr);
  }
  void linear_backward(float* dx, const float* dy, const Weight& W, int N,
                       bool accumulate) override {
    cpu::linear_backward(dx, dy, W, N, accumulate, nullptr);
  }
  void rotary_forward(float* out, int64_t out_stride, const float* in, int64_t in_stride,
                      const int32_t* pos, int N, int n_heads, int HD,
                      const RopeParams& rope) override {
    cpu::rotary_forward(out, out_stride, in, in_stride, pos, N, n_heads, HD, rope, nullptr);
  }
  void rotary_backward(float* din, int64_t din_stride, const float* dout, int64_t dout_stride,
                       const int32_t* pos, int N, int n_heads, int HD,
                       const RopeParams& rope) override {
    cpu::rotary_backward(din, din_stride, dout, dout_stride, pos, N, n_heads, HD, rope, nullptr);
  }
  void rotary_qkv_forward(float* q, float* k, float* v, const float* qkv, const int32_t* pos, int N,
                          int H, int KVH, int HD, const RopeParams& rope) override {
    cpu::rotary_qkv_forward(q, k, v, qkv, pos, N, H, KVH, HD, rope, nullptr);
  }
  void attention_forward(const AttnParams& p) override { cpu::attention_forward(p, nullptr); }
  void attention_backward(const AttnBackwardParams& p) override {
    cpu::attention_backward(p, nullptr);
  }
  void swiglu_forward(GemmOut out, const float* gu, int N, int F, MlpAct act = MlpAct::Silu) override {
    cpu::swiglu_forward(out, gu, N, F, nullptr, act);
  }
  void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F,
                       MlpAct act = MlpAct::Silu) override {
    cpu::swiglu_backward(dgu, dout, gu, N, F, nullptr, act);
  }
  void add(float* out, const float* a, const float* b, int64_t n) override {
    cpu::add(out, a, b, n, nullptr);
  }
  void sub(float* out, const float* a, const float* b, int64_t n) override {
    cpu::sub(out, a, b, n, nullptr);
  }
  void copy_rows(float* dst, int64_t dst_stride, const int32_t* dst_idx, const float* src,
                 int64_t src_stride, const int32_t* src_idx, int n, int width) override {
    cpu::copy_rows(dst, dst_stride, dst_idx, src, src_stride, src_idx, n, width, nullptr);
  }
  void flag_nonfinite(const NonfiniteBatch& b) override { cpu::flag_nonfinite(b, nullptr); }
  void logit_diff_forward(float* ld, const float* logits, int64_t stride, const int32_t* ans,
                          const int32_t* other, int B) override {
    cpu::logit_diff_forward(ld, logits, stride, ans, other, B, nullptr);
  }
  void logit_diff_backward(float* dlogits, int64_t stride, const int32_t* ans,
                           const int32_t* other, float scale, int B, int V) override {
    cpu::logit_diff_backward(dlogits, stride, ans, other, scale, B, V, nullptr);
  }
  void metric_forward(float* out, const float* logits, const MetricParams& p) override {
    cpu::metric_forward(out, logits, p, nullptr);
  }
  void metric_backward(float* dlogits, int64_t dstride, const float* logits, const MetricParams& p,
                       float scale) override {
    cpu::metric_backward(dlogits, dstride, logits, p, scale, nullptr);
  }
  void attribution_reduce(float* out, const float* const* a, const float* const* c,
                          const float* const* grad, int L, int B, int T, int G, int W,
                          int64_t stride) override {
    cpu::attribution_reduce(out, a, c, grad, L, B, T, G, W, stride, nullptr);
  }
  void attn_qk_fix(const QkFixParams& p) override { cpu::attn_qk_fix(p, nullptr); }
  void attn_apply_pattern(const ApplyPatternParams& p) override { cpu::attn_apply_pattern(p, nullptr); }
  void rows_equal(uint8_t* eq, const float* a, const float* c, int B, int T, int G, int W,
                  int64_t stride) override {
    cpu::rows_equal(eq, a, c, B, T, G, W, stride, nullptr);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace phi3
