// Token embedding lookup (CPU reference).
//   forward:  out[i, :] = table[ids[i], :] * scale   ids [N], table [V, D], out [N, D]
//             (scale: Gemma's sqrt(D); 1 elsewhere, then the rows are copied exactly)
// No backward: the model needs gradients of activations only, never of the table (and the
// ids are discrete). Table rows in BF16/F16 are widened to fp32; nothing is saved.
#include <cstring>
#include <string>

#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {

void embedding_forward(float* out /*[N,D]*/, const int32_t* ids /*[N]*/,
                       const Weight& table /*[V,D]*/, int N, Stream, float scale) {
  const int64_t V = table.rows, D = table.cols;
  for (int i = 0; i < N; ++i) {
    const int32_t id = ids[i];
    PHI3_CHECK(id >= 0 && id < V, "embedding: token id " + std::to_string(id) +
                                      " out of range [0, " + std::to_string(V) + ")");
    float* o = out + static_cast<int64_t>(i) * D;
    const int64_t off = static_cast<int64_t>(id) * D;
    switch (table.dtype) {
      case DType::F32:
        std::memcpy(o, static_cast<const float*>(table.data) + off, sizeof(float) * D);
        break;
      case DType::BF16: {
        const uint16_t* r = static_cast<const uint16_t*>(table.data) + off;
        for (int64_t d = 0; d < D; ++d) o[d] = bf16_bits_to_float(r[d]);
        break;
      }
      case DType::F16: {
        const uint16_t* r = static_cast<const uint16_t*>(table.data) + off;
        for (int64_t d = 0; d < D; ++d) o[d] = f16_bits_to_float(r[d]);
        break;
      }
      default:
        throw Error(std::string("embedding: unsupported table dtype ") + dtype_name(table.dtype));
    }
    if (scale != 1.0f)
      for (int64_t d = 0; d < D; ++d) o[d] *= scale;
  }
}

}  // namespace phi3::cpu
