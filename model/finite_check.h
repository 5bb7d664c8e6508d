// The NaN/Inf checks of one pass, reduced on the device (issue 31): check() gives a tensor its
// own 8-byte flag in one small device buffer and queues it for flag_nonfinite, which scans up
// to NonfiniteBatch::kMax tensors a launch (flush() launches what is queued; no host
// synchronisation). throw_first() downloads the buffer once and, when a flag is raised, throws
// the message of the first such tensor in check order, naming its first bad value and row from
// the flag alone (kernels/finite_flag.h). No tensor is read back on the host, so a tensor may
// be freed once flush() has queued its scan.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/backend.h"

namespace phi3 {

class FiniteCheck {
 public:
  // The error message for a non-finite `value` (as std::to_string prints it) first at `row`.
  using Message = std::function<std::string(const std::string& value, int64_t row)>;
  // Room for `capacity` checks (one zeroed device buffer of that many flags).
  FiniteCheck(Backend& be, size_t capacity);
  // Queues the scan of x[0, n), rows of `width` values. n == 0: nothing to check.
  void check(const float* x, int64_t n, int64_t width, Message msg);
  // Launches the queued scans (on the backend's stream).
  void flush();
  // Flushes, reads every flag (one download) and throws Error for the first raised one.
  void throw_first();
  size_t size() const { return slots_.size(); }

 private:
  struct Slot {
    int64_t width;
    Message msg;
  };
  Backend& be_;
  DeviceArray<uint64_t> flags_;
  std::vector<Slot> slots_;
  NonfiniteBatch pending_;
};

}  // namespace phi3
