// The traffic and roofline model of the CUDA ops (issue 15): for each op of kernels/ops.h,
// the bytes its CUDA kernels move to and from device memory and the FLOPs they do, from the
// op's arguments alone. One function per op, in the order of ops.h; plain C++ (no CUDA), so
// `phi3patch bench --predict` runs anywhere.
//
// Bytes are compulsory traffic of the kernels as written: every input read once, every
// output written once (an accumulated output read and written), the fp32 -> bf16 cast in
// front of a bf16 GEMM a pass of its own (a separate kernel) unless the op producing the
// input wrote it in bf16 already (GemmOut / GemmIn, kernels/ops.h), key/value rows of
// a batch row's prefix cache counted once per call (the kernels re-read them per query
// block, from L2 at these sizes). A multiply-add is 2 FLOPs; GEMM FLOPs are kept apart by
// precision (they run on tensor cores in bf16, on CUDA cores in fp32); everything else is
// CUDA-core fp32 work. `launches` counts kernels (cuBLAS GEMM = 1).
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace phi3::cost {

struct OpCost {
  double bytes = 0;            // device memory read + written
  double gemm_bf16_flops = 0;  // tensor-core GEMM work
  double gemm_f32_flops = 0;   // fp32 GEMM work (fp32 mode)
  double flops = 0;            // other CUDA-core work
  double launches = 0;
  OpCost& operator+=(const OpCost& o) {
    bytes += o.bytes;
    gemm_bf16_flops += o.gemm_bf16_flops;
    gemm_f32_flops += o.gemm_f32_flops;
    flops += o.flops;
    launches += o.launches;
    return *this;
  }
};

inline double wsize(DType t) { return t == DType::F32 ? 4.0 : 2.0; }

inline OpCost embedding_forward(int N, int64_t D, DType table) {
  return {N * 4.0 + N * D * (wsize(table) + 4.0), 0, 0, 0, 1};
}
// out_bytes: bytes per output element written (4 fp32, 2 bf16, 6 both); add: the residual
// add in front (a second input read and the sum written).
inline OpCost rmsnorm_forward(int N, int D, double out_bytes = 4, bool add = false) {
  const double e = double(N) * D;
  return {e * (4 + out_bytes + (add ? 8 : 0)) + D * 4.0 + N * 4.0, 0, 0, (add ? 4.0 : 3.0) * e, 1};
}
inline OpCost rmsnorm_backward(int N, int D) {  // dx +=
  return {4.0 * N * D * 4 + D * 4.0 + N * 4.0, 0, 0, 7.0 * N * D, 1};
}
// y [N, out] (+)= x [N, in] W^T; bf16: x cast to bf16 first (read 4, write 2, then the GEMM
// reads 2) unless x_bf16 (the input came in bf16); accumulate reads y too (beta = 1).
inline OpCost linear_forward(int N, int64_t in, int64_t out, DType w, bool x_bf16 = false,
                             bool accumulate = false) {
  OpCost c;
  const double gemm = 2.0 * N * in * out;
  if (w == DType::F32) {
    c = {in * out * 4.0 + N * in * 4.0 + N * out * 4.0, 0, gemm, 0, 1};
  } else if (x_bf16) {
    c = {in * out * 2.0 + N * in * 2.0 + N * out * 4.0, gemm, 0, 0, 1};
  } else {
    c = {in * out * 2.0 + N * in * 6.0 + N * in * 2.0 + N * out * 4.0, gemm, 0, 0, 2};
  }
  if (accumulate) c.bytes += N * out * 4.0;
  return c;
}
// dx [N, in] (+)= dy [N, out] W
inline OpCost linear_backward(int N, int64_t in, int64_t out, DType w, bool accumulate) {
  OpCost c = linear_forward(N, out, in, w);  // same shapes with in and out swapped
  if (accumulate) c.bytes += N * in * 4.0;
  return c;
}
inline OpCost rotary(int N, int n_heads, int HD) {
  const double e = double(N) * n_heads * HD;
  return {2.0 * e * 4 + N * 4.0, 0, 0, 4.0 * e, 1};
}
// The fused split: the qkv row read once, q, k, v written (rotation of q and k heads).
inline OpCost rotary_qkv(int N, int H, int KVH, int HD) {
  const double e = double(N) * (H + 2 * KVH) * HD;
  return {2.0 * e * 4 + N * 4.0, 0, 0, 4.0 * N * (H + KVH) * HD, 1};
}

// Attention: the segments and pads as the host uploaded them (the op's device copies).
struct AttnShape {
  int H = 0, KVH = 0, HD = 0, T = 0, window = 0;
  bool pattern = false;
  bool cache = false;  // prefix keys/values read from a cache (the sweep)
  bool z16 = false;    // z also written in bf16 (the o_proj input)
  bool tensor_cores = false;  // the bf16 tensor-core kernels (AttnParams::tensor_cores, no pattern)
  std::vector<AttnSegment> segs;
  std::vector<int32_t> pad;  // [B]
};
// Visible (query, key) pairs and query rows of a call; keys j of query t: pad <= j <= t,
// within the window.
inline void attn_pairs(const AttnShape& a, double& pairs, double& q_rows, double& fresh_kv, int& batch_rows) {
  pairs = q_rows = fresh_kv = 0;
  std::vector<char> seen(a.pad.size(), 0);
  for (const auto& s : a.segs) {
    const int pad = s.batch < static_cast<int>(a.pad.size()) ? a.pad[s.batch] : 0;
    for (int t = s.q_start; t < a.T; ++t) {
      int lo = pad;
      if (a.window > 0) lo = std::max(lo, t - a.window + 1);
      if (t >= pad) pairs += t - lo + 1;
    }
    q_rows += a.T - s.q_start;
    fresh_kv += a.T - s.fresh_start;
    if (s.batch < static_cast<int>(seen.size())) seen[s.batch] = 1;
  }
  batch_rows = 0;
  for (char x : seen) batch_rows += x;
}
inline OpCost attention_forward(const AttnShape& a) {
  double pairs, q_rows, fresh_kv;
  int batch_rows;
  attn_pairs(a, pairs, q_rows, fresh_kv, batch_rows);
  const double qw = double(a.H) * a.HD * 4, kvw = double(a.KVH) * a.HD * 4;
  OpCost c;
  c.bytes = 2 * q_rows * qw + 2 * fresh_kv * kvw + (a.cache ? 2.0 * batch_rows * a.T * kvw : 0) + a.segs.size() * 20.0;
  if (a.z16) c.bytes += q_rows * qw / 2;  // z also written in bf16
  if (a.tensor_cores) {  // S = Q K^T and P V as bf16 tensor-core products, the softmax on CUDA cores
    c.gemm_bf16_flops = a.H * pairs * 4.0 * a.HD;
    c.flops = a.H * pairs * 5.0;
  } else {
    c.flops = a.H * pairs * (4.0 * a.HD + 5);  // q.k and P v per visible pair, softmax
  }
  if (a.pattern) {
    c.bytes += double(a.pad.size()) * a.H * a.T * a.T * 4;  // [B, H, T, T] written
    c.flops += a.H * pairs * (2.0 * a.HD + 3);               // the scores again
  }
  c.launches = 1;
  return c;
}
inline OpCost attention_backward(const AttnShape& a) {  // plain pass, pattern saved
  double pairs, q_rows, fresh_kv;
  int batch_rows;
  attn_pairs(a, pairs, q_rows, fresh_kv, batch_rows);
  const double qw = double(a.H) * a.HD * 4, kvw = double(a.KVH) * a.HD * 4;
  OpCost c;
  // reads q, k, v, dz, pattern; writes dq, dk, dv; D_t scratch written and read
  c.bytes = 3 * q_rows * qw + 4 * fresh_kv * kvw + double(a.pad.size()) * a.H * a.T * a.T * 4 + 2 * q_rows * a.H * 4;
  c.flops = a.H * pairs * (10.0 * a.HD + 6);  // dP = dz.v, dS, dq, dk (per head of the group), dv
  if (a.tensor_cores) {
    // attention_tc_backward.cu: 9 products of 2 HD FLOPs per visible pair and head (S and dP
    // three times, dq, dk, dv) on bf16 tensor cores; P recomputed three times and dS twice on
    // CUDA cores; no [T, T] buffer read (P is recomputed from the stats).
    c.bytes -= double(a.pad.size()) * a.H * a.T * a.T * 4;
    c.gemm_bf16_flops = a.H * pairs * 18.0 * a.HD;
    c.flops = a.H * pairs * 24.0;
  }
  c.launches = 2;
  return c;
}
// out_bytes: 4 fp32, 2 bf16, 6 both.
inline OpCost swiglu_forward(int N, int F, double out_bytes = 4) {
  return {double(N) * F * (8 + out_bytes), 0, 0, 6.0 * N * F, 1};
}
inline OpCost swiglu_backward(int N, int F) { return {5.0 * N * F * 4, 0, 0, 12.0 * N * F, 1}; }
inline OpCost add(int64_t n) { return {3.0 * n * 4, 0, 0, double(n), 1}; }
// A one-pass elementwise kernel over n fp32 elements touching `arrays` arrays (each read or
// written once) with `flops` CUDA-core FLOPs per element (tanh counted as ~20).
inline OpCost elementwise(int64_t n, int arrays, double flops) { return {arrays * 4.0 * n, 0, 0, flops * n, 1}; }
inline OpCost copy_rows(int n, int width, bool dst_idx, bool src_idx) {
  return {2.0 * n * width * 4 + (dst_idx ? n * 4.0 : 0) + (src_idx ? n * 4.0 : 0), 0, 0, 0, 1};
}
// The NaN/Inf scan of up to 64 tensors in one launch: each read once, each flag written (at
// most one atomic per block).
inline OpCost flag_nonfinite(const NonfiniteBatch& b) {
  double n = 0;
  for (int k = 0; k < b.count; ++k) n += double(b.n[k]);
  return {n * 4 + b.count * 8.0, 0, 0, n, 1};
}
inline OpCost logit_diff_forward(int B) { return {B * (8.0 + 2 * 32 + 4), 0, 0, double(B), 1}; }
inline OpCost logit_diff_backward(int B, int V) { return {double(B) * V * 4 + B * 8.0, 0, 0, 0, 1}; }
// Softmax metrics (kind != 0, MetricKind): the row read twice (max, sum exp in double; kl
// also reads the reference row), out one float per row; backward also writes the row.
inline OpCost metric_forward(int B, int V, int kind) {
  if (kind == 0) return logit_diff_forward(B);
  const double reads = kind == 3 ? 4.0 : 2.0;
  return {double(B) * V * 4 * reads + B * 4.0, 0, 0, double(B) * V * (kind == 3 ? 24.0 : 12.0), 1};
}
inline OpCost metric_backward(int B, int V, int kind) {
  if (kind == 0) return logit_diff_backward(B, V);
  const double rw = kind == 3 ? 5.0 : 4.0;
  return {double(B) * V * 4 * rw, 0, 0, double(B) * V * 24.0, 1};
}
inline OpCost attribution_reduce(int L, int B, int T, int G, int W) {
  const double e = double(L) * B * T * G * W;
  return {3 * e * 4 + double(L) * T * G * 4 + L * 24.0, 0, 0, 3 * e, 1};
}
inline OpCost rows_equal(int B, int T, int G, int W) {
  const double e = double(B) * T * G * W;
  return {2 * e * 4 + double(T) * G, 0, 0, e, 1};
}
// Three score passes per (query row, key) for the query fix, every key from the source and
// the single-key deltas; pattern and its gradient read once.
// z = P v for nh heads: the pattern rows read once, v rows from cache, z written.
inline OpCost attn_apply_pattern(int B, int T, int nh, int HD) {
  const double rows = double(B) * nh * T;
  return {rows * T * 4 + double(B) * T * HD * 4 + rows * HD * 4, 0, 0, rows * T * HD * 2.0, 1};
}

inline OpCost attn_qk_fix(int B, int T, int H, int KVH, int HD) {
  const double pairs = double(B) * H * T * (T + 1) / 2;
  const double rows = double(B) * T;
  return {2 * double(B) * H * T * T * 4 + 2 * rows * (H + KVH) * HD * 4 * 2 + rows * (H + KVH) * 4, 0, 0,
          pairs * (8.0 * HD + 20), 3};
}
inline OpCost device_copy(double bytes) { return {2 * bytes, 0, 0, 0, 1}; }
inline OpCost device_zero(double bytes) { return {bytes, 0, 0, 0, 1}; }

// A device's figures for the roofline. Time of an op = the largest of bytes / bandwidth,
// bf16 GEMM FLOPs / bf16 peak + fp32 GEMM FLOPs / fp32 GEMM peak + other FLOPs / CUDA-core
// peak, and launches x launch time (the host issues kernels no faster than that; a longer
// kernel hides the next launch); host transfers at the host link's rate, plus a sync each for a
// download and a launch each for an upload (queued through pinned staging, no sync).
// Ops run one after another on a stream (the sweep's overlapping streams are not credited).
struct DeviceFigures {
  const char* key;
  const char* name;
  double hbm_GBps;          // device memory, as a device-to-device copy achieves it
  double bf16_tflops;       // dense bf16 GEMM, fp32 accumulate
  double f32_gemm_tflops;   // fp32 GEMM (no TF32)
  double f32_tflops;        // CUDA-core fp32 (FMA = 2)
  double host_GBps;         // host <-> device copies (pageable memory)
  double launch_us;         // per kernel launch in a dependent stream
  double transfer_us;       // per synchronous host transfer
  double memory_GB;         // device memory (chunking of the sweep)
  const char* source;
};
// Documented figures, stated in every prediction (`phi3patch bench --predict KEY`).
inline const std::vector<DeviceFigures>& known_devices() {
  static const std::vector<DeviceFigures> d = {
      {"h100", "NVIDIA H100 SXM 80 GB", 3000, 800, 51, 67, 25, 4.0, 15, 80,
       "copy bandwidth 3.0 TB/s and bf16 GEMM 800 TFLOP/s as measured on an H100 SXM (DESIGN.md section 9); "
       "fp32 CUDA-core peak 67 TFLOP/s (NVIDIA data sheet), fp32 GEMM taken as 3/4 of it; host copies "
       "25 GB/s (PCIe Gen5, pageable), 15 us per synchronous transfer; 4 us per kernel launch"},
      {"h200", "NVIDIA H200 141 GB", 4300, 780, 51, 67, 25, 4.0, 15, 141,
       "device-to-device copy 4.3 TB/s and bf16 GEMM 769-798 TFLOP/s on random data, as seen on this "
       "workplace's H200 machines (device notes, 2026-11-04); fp32 CUDA-core peak 67 TFLOP/s (data sheet), "
       "fp32 GEMM taken as 3/4 of it; host copies 25 GB/s, 15 us per synchronous transfer; 4 us per launch"},
  };
  return d;
}
inline const DeviceFigures* find_device(const std::string& key) {
  for (const auto& d : known_devices())
    if (key == d.key) return &d;
  return nullptr;
}

inline double op_seconds(const OpCost& c, const DeviceFigures& d) {
  const double mem = c.bytes / (d.hbm_GBps * 1e9);
  const double compute = c.gemm_bf16_flops / (d.bf16_tflops * 1e12) + c.gemm_f32_flops / (d.f32_gemm_tflops * 1e12) +
                         c.flops / (d.f32_tflops * 1e12);
  return std::max({mem, compute, c.launches * d.launch_us * 1e-6});
}

}  // namespace phi3::cost
