// Mixture of experts (CPU reference): the router (softmax, top-k, renormalise) and its backward
// with the selection fixed, and the gate-weighted combine of the experts' outputs and its
// backward. The arithmetic is kernels/op_moe.h's, shared with the CUDA twins.
//   route:   ids, gates [N,k] from logits [N,E]            (nothing saved: backward re-softmaxes)
//   combine: out[n] = sum_j gates[n,j] y[slot[n,j]]         (y [M,D] grouped by expert)
//   combine backward: dy[slot[n,j]] = gates[n,j] dout[n],  dgates[n,j] = dout[n] . y[slot[n,j]]
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/op_moe.h"
#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {

namespace {
void check_route(int N, int E, int k) {
  PHI3_CHECK(N >= 0 && E > 0 && k > 0 && k <= E && E <= kMoeMaxExperts && k <= kMoeMaxTopK,
             "moe_route: N=" + std::to_string(N) + " E=" + std::to_string(E) + " k=" + std::to_string(k));
}
}  // namespace

void moe_route_forward(int32_t* ids, float* gates, const float* logits, int N, int E, int k, bool renorm, Stream) {
  check_route(N, E, k);
  parallel_for(N, 30.0 * N * E * k, [&](int64_t n0, int64_t n1) {
    std::vector<float> p(E);
    for (int64_t n = n0; n < n1; ++n) {
      moe_softmax(p.data(), logits + n * E, E);
      moe_topk(ids + n * k, gates + n * k, p.data(), E, k, renorm);
    }
  });
}

void moe_route_backward(float* dlogits, const float* dgates, const float* logits, const int32_t* ids, int N, int E,
                        int k, bool renorm, Stream) {
  check_route(N, E, k);
  parallel_for(N, 30.0 * N * E * k, [&](int64_t n0, int64_t n1) {
    std::vector<float> p(E);
    for (int64_t n = n0; n < n1; ++n) {
      moe_softmax(p.data(), logits + n * E, E);
      moe_route_grad(dlogits + n * E, dgates + n * k, p.data(), ids + n * k, E, k, renorm);
    }
  });
}

void moe_combine_forward(float* out, const float* y, const int32_t* slot, const float* gates, int N, int k, int D,
                         Stream) {
  PHI3_CHECK(N >= 0 && k > 0 && k <= kMoeMaxTopK && D > 0, "moe_combine_forward: bad shape");
  parallel_for(N, 2.0 * N * k * D, [&](int64_t n0, int64_t n1) {
    int32_t s[kMoeMaxTopK];
    for (int64_t n = n0; n < n1; ++n) {
      moe_sorted_slots(s, slot + n * k, k);
      float* o = out + n * D;
      for (int d = 0; d < D; ++d) o[d] = 0.0f;
      for (int i = 0; i < k; ++i) {
        float g = 1.0f;
        if (gates)
          for (int j = 0; j < k; ++j)
            if (slot[n * k + j] == s[i]) g = gates[n * k + j];
        const float* yr = y + int64_t(s[i]) * D;
        for (int d = 0; d < D; ++d) o[d] += yr[d] * g;
      }
    }
  });
}

void moe_combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* slot,
                          const float* gates, int N, int k, int D, Stream) {
  PHI3_CHECK(N >= 0 && k > 0 && D > 0, "moe_combine_backward: bad shape");
  parallel_for(N, 4.0 * N * k * D, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* g = dout + n * D;
      for (int j = 0; j < k; ++j) {
        const int64_t r = slot[n * k + j];
        const float w = gates ? gates[n * k + j] : 1.0f;
        float* d = dy + r * D;
        for (int i = 0; i < D; ++i) d[i] = g[i] * w;
        if (dgates) {
          const float* yr = y + r * D;
          double acc = 0.0;
          for (int i = 0; i < D; ++i) acc += double(g[i]) * yr[i];
          dgates[n * k + j] = static_cast<float>(acc);
        }
      }
    }
  });
}

void moe_sparsemixer_forward(int32_t* ids, float* gates, const float* logits, int N, int E, float eps, Stream) {
  PHI3_CHECK(N >= 0 && E >= 2 && E <= kMoeMaxExperts && eps >= 0.0f,
             "moe_sparsemixer_forward: N=" + std::to_string(N) + " E=" + std::to_string(E));
  parallel_for(N, 20.0 * N * E, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      moe_sparsemixer_row(ids + n * 2, gates + n * 2, logits + n * E, E, eps, nullptr, nullptr);
  });
}

void moe_sparsemixer_backward(float* dlogits, const float* dgates, const float* logits, int N, int E, float eps,
                              Stream) {
  PHI3_CHECK(N >= 0 && E >= 2 && E <= kMoeMaxExperts && eps >= 0.0f,
             "moe_sparsemixer_backward: N=" + std::to_string(N) + " E=" + std::to_string(E));
  parallel_for(N, 30.0 * N * E, [&](int64_t n0, int64_t n1) {
    std::vector<float> p1(E), p2(E);
    for (int64_t n = n0; n < n1; ++n)
      moe_sparsemixer_grad(dlogits + n * E, dgates + n * 2, logits + n * E, E, eps, p1.data(), p2.data());
  });
}

}  // namespace phi3::cpu
