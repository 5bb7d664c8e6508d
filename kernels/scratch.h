// The device scratch the CUDA kernels take for themselves (kernels/cuda/context.cu), as plain
// functions of an op's arguments, so that the memory plan (runtime/trace_backend.cpp) counts
// the same bytes the kernels allocate: which slot an op uses, how many bytes it asks for, and
// the capacity a slot grows to. Every cuda::scratch() call site asks for exactly the bytes a
// function here gives (tests/gpu/test_memory_gpu.cpp: the plan is the emulated device's
// measured high-water mark, scratch included). No CUDA here: the trace is plain C++.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/ops.h"

namespace phi3 {

// One buffer per (device, stream, slot), grown on demand and kept for the stream's life.
enum ScratchSlot { kScratchCastA = 0, kScratchAttn = 1, kScratchQkFix = 2, kScratchSlots = 3 };

// The capacity a slot grows to when `bytes` exceed what it holds: 25% head-room (so that a
// slightly larger request does not regrow it), rounded up to 256 bytes. Growing frees the old
// block first (stream-ordered), then allocates the new one.
inline size_t scratch_capacity(size_t bytes) { return (bytes + bytes / 4 + 255) & ~size_t(255); }

// kScratchCastA: the bf16 copy of a GEMM's fp32 activation operand (bf16 weights only).
// Forward: x [N, in], unless the caller passes its bf16 copy (GemmIn::bf16).
inline size_t linear_forward_scratch(const Weight& W, int N, bool x_has_bf16) {
  if (W.dtype == DType::F32 || x_has_bf16 || N <= 0) return 0;
  return size_t(N) * size_t(W.cols) * 2;
}
// Backward: dy [N, out] is always fp32 (the gradients are).
inline size_t linear_backward_scratch(const Weight& W, int N) {
  if (W.dtype == DType::F32 || N <= 0) return 0;
  return size_t(N) * size_t(W.rows) * 2;
}
// kScratchAttn: attention_backward's per-row D = rowsum(dO * O), [n_segs, H, T] fp32.
inline size_t attention_backward_scratch(int n_segs, int H, int T) {
  if (n_segs <= 0) return 0;
  return size_t(n_segs) * size_t(H) * size_t(T) * sizeof(float);
}
// kScratchQkFix: the QK fix's key terms, [B, H, T, T] fp32, and one float per (b, h, t) row.
inline size_t qk_fix_scratch(int B, int H, int T) {
  if (B <= 0 || T <= 0) return 0;
  const size_t cells = size_t(B) * H * T * T, rows = size_t(B) * H * T;
  return (cells + rows) * sizeof(float);
}

}  // namespace phi3
