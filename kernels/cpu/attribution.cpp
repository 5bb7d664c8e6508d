// Attribution-patching reduction (CPU reference), DESIGN §5.
//   out[t, g] = sum_b sum_{w<W} (a - c)[b*T + t, g*W + w] * grad[b*T + t, g*W + w]
//   a (clean), c (corrupted), grad (d metric / d act on the corrupted run): [B*T, G*W];
//   out [T, G]. G groups of W elements: G=1, W=D for a whole hook; G=H, W=HD per head.
//   One call covers L layers (arrays of L pointers; out [L, T, G]).
//   Accumulates in double (the terms cancel a lot); a pure reduction, no backward.
#include <cstring>

#include "kernels/ops.h"

namespace phi3::cpu {

namespace {

void reduce_layer(float* out /*[T,G]*/, const float* a /*[B*T,G*W]*/, const float* c,
                  const float* grad, int B, int T, int G, int W, int64_t row) {
  for (int t = 0; t < T; ++t) {
    for (int g = 0; g < G; ++g) {
      double acc = 0;
      for (int b = 0; b < B; ++b) {
        const int64_t off = (static_cast<int64_t>(b) * T + t) * row + static_cast<int64_t>(g) * W;
        for (int w = 0; w < W; ++w)
          acc += (static_cast<double>(a[off + w]) - c[off + w]) * grad[off + w];
      }
      out[static_cast<int64_t>(t) * G + g] = static_cast<float>(acc);
    }
  }
}

}  // namespace

void attribution_reduce(float* out /*[L,T,G]*/, const float* const* a, const float* const* c,
                        const float* const* grad, int L, int B, int T, int G, int W, int64_t stride,
                        Stream) {
  for (int l = 0; l < L; ++l)
    reduce_layer(out + static_cast<int64_t>(l) * T * G, a[l], c[l], grad[l], B, T, G, W, stride);
}

// The fast sweep's no-op test (a patch that writes the value already there changes nothing):
//   eq[t, g] = 1 iff a and c hold the same bits in [b*T + t, g*W, (g+1)*W) for every b.
void rows_equal(uint8_t* eq /*[T,G]*/, const float* a /*[B*T,G*W]*/, const float* c, int B,
                int T, int G, int W, int64_t row, Stream) {
  for (int t = 0; t < T; ++t)
    for (int g = 0; g < G; ++g) {
      bool same = true;
      for (int b = 0; b < B && same; ++b) {
        const int64_t off = (static_cast<int64_t>(b) * T + t) * row + static_cast<int64_t>(g) * W;
        same = std::memcmp(a + off, c + off, sizeof(float) * W) == 0;
      }
      eq[static_cast<int64_t>(t) * G + g] = same ? 1 : 0;
    }
}

}  // namespace phi3::cpu
