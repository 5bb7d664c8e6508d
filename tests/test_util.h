// Helpers shared by the tests: random inputs, error metrics with a worst-element report,
// paths to the shared reference data.
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace phi3::test {

// The message of the phi3::Error that `fn` throws ("" when it throws none).
template <class F>
std::string error_of(F fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<float> random_vec(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f);
std::vector<int32_t> random_ints(size_t n, int lo, int hi, uint32_t seed);  // uniform in [lo, hi]
std::vector<double> to_double(const std::vector<float>& v);

struct Diff {
  double max_abs = 0;   // worst |a-b|
  double max_ref = 0;   // max |b| (reference magnitude)
  double nmse = 0;      // sum (a-b)^2 / sum b^2
  size_t worst = 0;     // index of the worst element
  bool finite = true;   // no NaN/Inf in a
  double rel() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }  // relative to max magnitude
  std::string str() const;
};
Diff compare(const std::vector<float>& a, const std::vector<float>& ref);

std::string slurp(const std::string& path);  // a whole file ("" when unreadable)
uintmax_t size_or_zero(const std::string& path);  // a file's size, 0 when it is gone
// Polls `pred` every 10 ms until it holds (true) or `seconds` pass (false).
bool wait_for(const std::function<bool()>& pred, double seconds);
// Runs `binary args` through the shell with stdout and stderr in dir/stdout.txt and
// dir/stderr.txt; returns the exit code (128 when it did not exit normally).
int run_cli(const std::string& binary, const std::string& args, const std::string& dir);

std::string source_dir();                 // repository root
std::string shared_reference_dir();       // ../shared/phi3-reference (may not exist)
// A fresh empty directory under /tmp, removed when the test program ends with every test
// passed (kept and named on stderr after a failure, or with PHI3_KEEP_TEST_DIRS set).
std::string temp_dir(const std::string& tag);

}  // namespace phi3::test
