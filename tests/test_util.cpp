#include "test_util.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sys/wait.h>
#include <sstream>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>

namespace phi3::test {

std::vector<float> random_vec(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<int32_t> random_ints(size_t n, int lo, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int run_cli(const std::string& binary, const std::string& args, const std::string& dir) {
  const std::string cmd = binary + " " + args + " >" + dir + "/stdout.txt 2>" + dir + "/stderr.txt";
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

std::string Diff::str() const {
  std::ostringstream os;
  os << "max_abs=" << max_abs << " max_ref=" << max_ref << " rel=" << rel() << " nmse=" << nmse
     << " worst_index=" << worst << (finite ? "" : " NON-FINITE");
  return os.str();
}

Diff compare(const std::vector<float>& a, const std::vector<float>& ref) {
  Diff d;
  if (a.size() != ref.size()) {
    d.finite = false;
    d.max_abs = INFINITY;
    return d;
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) d.finite = false;
    double e = std::fabs(static_cast<double>(a[i]) - ref[i]);
    if (e > d.max_abs || !std::isfinite(e)) {
      d.max_abs = std::isfinite(e) ? e : INFINITY;
      d.worst = i;
    }
    d.max_ref = std::max(d.max_ref, std::fabs(static_cast<double>(ref[i])));
    num += e * e;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  d.nmse = den > 0 ? num / den : num;
  return d;
}

std::string source_dir() { return PHI3_SOURCE_DIR; }

std::string shared_reference_dir() {
  return (std::filesystem::path(PHI3_SOURCE_DIR) / ".." / "shared" / "phi3-reference").lexically_normal().string();
}

uintmax_t size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  return ec ? 0 : n;
}

bool wait_for(const std::function<bool()>& pred, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

namespace {
// The directories temp_dir made, removed when the test program ends with every test passed
// (kept, and named on stderr, after a failure or with PHI3_KEEP_TEST_DIRS set). Only the
// process that made them removes them: a forked child's exit leaves them to its parent.
struct TempDirs {
  std::vector<std::filesystem::path> dirs;
  pid_t owner = ::getpid();
  ~TempDirs() {
    if (::getpid() != owner || dirs.empty()) return;
    const bool keep = std::getenv("PHI3_KEEP_TEST_DIRS") != nullptr || !::testing::UnitTest::GetInstance()->Passed();
    for (const auto& d : dirs) {
      if (keep) {
        std::fprintf(stderr, "test output kept: %s\n", d.string().c_str());
      } else {
        std::error_code ec;
        std::filesystem::remove_all(d, ec);
      }
    }
  }
};
TempDirs& temp_dirs() {
  static TempDirs t;
  return t;
}
}  // namespace

std::string temp_dir(const std::string& tag) {
  auto base = std::filesystem::temp_directory_path() / ("phi3test-" + tag + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(base);
  std::filesystem::create_directories(base);
  TempDirs& t = temp_dirs();
  if (std::find(t.dirs.begin(), t.dirs.end(), base) == t.dirs.end()) t.dirs.push_back(base);
  return base.string();
}

}  // namespace phi3::test
