// flag_nonfinite (CPU reference): the flag (kernels/finite_flag.h) of the first NaN/Inf of
// x[0, n), raised into *flag (max); *flag untouched when all n values are finite.
#include "kernels/finite_flag.h"
#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {

void flag_nonfinite(uint64_t* flag, const float* x, int64_t n, Stream) {
  PHI3_CHECK(n >= 0, "flag_nonfinite: negative n");
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t f = nonfinite_flag(i, x[i]);
    if (f) {
      if (f > *flag) *flag = f;
      return;
    }
  }
}

}  // namespace phi3::cpu
