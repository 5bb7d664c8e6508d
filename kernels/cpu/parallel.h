// The CPU ops' one threading primitive: a static contiguous split of independent work items
// over std::threads. Each item is computed by exactly one thread with a fixed order of
// arithmetic inside it, so results never depend on the thread count (the reference stays
// deterministic). Small calls run inline: a thread start + join costs ~20-50 us, i.e. the
// time of ~1e5 scalar multiply-adds, so a call is split only when every thread gets at
// least kMinWorkPerThread of them.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace phi3::cpu {

inline constexpr double kMinWorkPerThread = 1 << 18;  // multiply-adds (see above)

inline std::atomic<int>& thread_setting() {
  static std::atomic<int> n{0};
  return n;
}
// Threads the CPU ops may use: set_num_threads(n) (n <= 0 restores the default, the
// hardware concurrency).
inline int num_threads() {
  int n = thread_setting().load(std::memory_order_relaxed);
  if (n > 0) return n;
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min(hc, 64u));
}
inline void set_num_threads(int n) { thread_setting().store(n, std::memory_order_relaxed); }
// The CPU ops' threads and OpenBLAS's (kernels/cpu/linear.cpp): what a rank uses when
// several ranks share a node's cores. (OpenBLAS's results change in the last bits with its
// thread count and with a GEMM's row count, so results are equal across thread and rank
// counts to about 1e-7 relative, not bitwise.)
void set_all_threads(int n);

// Calls fn(begin, end) over a partition of [0, n); `work` is the total cost in multiply-adds.
template <typename F>
void parallel_for(int64_t n, double work, F&& fn) {
  if (n <= 0) return;
  int64_t by_work = static_cast<int64_t>(work / kMinWorkPerThread);
  int64_t nt = std::min<int64_t>({static_cast<int64_t>(num_threads()), n, by_work});
  if (nt <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(nt));
  threads.reserve(static_cast<size_t>(nt - 1));
  auto chunk = [&](int64_t i) {
    try {
      fn(n * i / nt, n * (i + 1) / nt);
    } catch (...) {
      errors[static_cast<size_t>(i)] = std::current_exception();
    }
  };
  for (int64_t i = 1; i < nt; ++i) threads.emplace_back(chunk, i);
  chunk(0);
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace phi3::cpu
