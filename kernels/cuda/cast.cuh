// fp32 <-> bf16 conversion kernels (kernels/cuda/elementwise.cu). Rounding is
// round-to-nearest-even with NaN kept quiet: runtime/dtype.h's float_to_bf16_bits, the
// same function the CPU side uses, so host- and device-converted weights are bitwise equal.
// bf16 values are passed as their uint16_t bit patterns (layout-compatible with
// __nv_bfloat16). Both kernels use 16-byte loads when every pointer allows it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace phi3::cuda {

void cast_f32_to_bf16(uint16_t* out /*[n]*/, const float* in /*[n]*/, int64_t n,
                      cudaStream_t stream);
void cast_bf16_to_f32(float* out /*[n]*/, const uint16_t* in /*[n]*/, int64_t n,
                      cudaStream_t stream);

}  // namespace phi3::cuda
