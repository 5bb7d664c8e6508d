#include "model/finite_check.h"

#include "kernels/finite_flag.h"
#include "runtime/error.h"

namespace phi3 {

FiniteCheck::FiniteCheck(Backend& be, size_t capacity) : be_(be), flags_(be, capacity) {
  if (capacity) be_.zero(flags_.get(), capacity * sizeof(uint64_t));
}

void FiniteCheck::check(const float* x, int64_t n, int64_t width, Message msg) {
  if (n == 0) return;
  PHI3_CHECK(slots_.size() < flags_.size(), "FiniteCheck: more checks than the " + std::to_string(flags_.size()) +
                                                " it was made for");
  PHI3_CHECK(width > 0, "FiniteCheck: row width must be positive");
  const int k = pending_.count++;
  pending_.x[k] = x;
  pending_.n[k] = n;
  pending_.flag[k] = flags_.get() + slots_.size();
  slots_.push_back({width, std::move(msg)});
  if (pending_.count == NonfiniteBatch::kMax) flush();
}

void FiniteCheck::flush() {
  if (pending_.count) be_.flag_nonfinite(pending_);
  pending_.count = 0;
}

void FiniteCheck::throw_first() {
  flush();
  if (slots_.empty()) return;
  std::vector<uint64_t> f(slots_.size());
  be_.download(f.data(), flags_.get(), f.size() * sizeof(uint64_t));
  for (size_t k = 0; k < f.size(); ++k)
    if (f[k]) throw Error(slots_[k].msg(std::to_string(nonfinite_value(f[k])), nonfinite_index(f[k]) / slots_[k].width));
}

}  // namespace phi3
