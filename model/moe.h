// The sparse mixture-of-experts block (Mixtral, Qwen3-MoE, OLMoE), composed of the router ops
// (kernels/ops.h moe_route_*, moe_combine_*) and per-expert GEMMs over the token rows grouped
// by expert (linear_forward / linear_backward on each expert's contiguous range: cuBLAS per
// expert on CUDA, the blocked GEMM on the CPU):
//   logits = x Wr^T [N,E]; ids, gates = top-k routing of softmax(logits) [N,k];
//   rows grouped by expert (expert 0's tokens first, each expert's in token order);
//   y_e = down_e(silu(gate_e x) * up_e x) on its rows;  out[n] = sum_j gates[n,j] y[slot(n,j)].
// The grouping is built on the host from the downloaded ids (one sync per MoE layer).
// Backward: activation gradients with the routing held fixed (the top-k sets of the forward),
// through the gate weights into the router logits and on into x.
#pragma once
#include <functional>
#include <vector>

#include "model/model.h"
#include "runtime/backend.h"

namespace phi3 {

struct MoeActs {
  DeviceArray<float> router;   // [N,E] router logits (the `router` hook)
  DeviceArray<int32_t> ids;    // [N,k] the experts of each token, descending gate
  DeviceArray<float> gates;    // [N,k] their gate weights
  DeviceArray<int32_t> slot;   // [N,k] the grouped row of (token n, its j-th expert)
  DeviceArray<int32_t> src;    // [M = N k] the token row of each grouped row
  std::vector<int> count;      // [E] (host) grouped rows per expert, in expert order
  DeviceArray<float> x;        // [M,D] the block's input rows, grouped
  DeviceArray<float> h;        // [M,2F] gate|up of each grouped row
  DeviceArray<float> act;      // [M,F] silu(gate) * up
  DeviceArray<float> y;        // [M,D] each routed expert's output (before its gate weight)
  std::vector<int32_t> host_ids;  // [N,k] ids on the host (the routing, for tests and reports)
};

// out [N,D] (overwritten) = the MoE block of layer l on its normed input x [N,D] (fp32);
// every intermediate kept in `a` (reallocated when N differs).
// patch_logits: called on the router logits [N,E] before the routing (the router hook's patch).
void moe_forward(Backend& be, const Model& m, int l, const float* x, float* out, int N, MoeActs& a,
                 const std::function<void(float*)>& patch_logits = {});
// dx [N,D] (overwritten) = d out / d x^T dout with a's routing fixed.
// dlogits: optional [N,E], d of the router logits (the router hook's gradient).
void moe_backward(Backend& be, const Model& m, int l, const MoeActs& a, const float* dout, float* dx, int N,
                  float* dlogits = nullptr);

// The grouping of routed rows by expert: src[M], slot[N*k], count[E] from ids [N*k] (ids out of
// [0, E), as a tracing backend that computes nothing leaves them, go round-robin).
void moe_group(const std::vector<int32_t>& ids, int N, int E, int k, std::vector<int32_t>& src,
               std::vector<int32_t>& slot, std::vector<int>& count);

}  // namespace phi3
