// flag_nonfinite (CPU reference): for each tensor of the batch, the flag (kernels/finite_flag.h)
// of its first NaN/Inf raised into its flag (max); a flag is untouched when all are finite.
#include "kernels/finite_flag.h"
#include "kernels/ops.h"
#include "runtime/error.h"

namespace phi3::cpu {

void flag_nonfinite(const NonfiniteBatch& b, Stream) {
  PHI3_CHECK(b.count >= 0 && b.count <= NonfiniteBatch::kMax, "flag_nonfinite: bad tensor count");
  for (int k = 0; k < b.count; ++k) {
    PHI3_CHECK(b.n[k] >= 0, "flag_nonfinite: negative n");
    for (int64_t i = 0; i < b.n[k]; ++i) {
      const uint64_t f = nonfinite_flag(i, b.x[k][i]);
      if (f) {
        if (f > *b.flag[k]) *b.flag[k] = f;
        break;
      }
    }
  }
}

}  // namespace phi3::cpu
