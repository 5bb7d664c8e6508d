// The CPU CUDA emulator's runtime (see tests/emu/cuda_emu.h): fibers that run the threads
// of a block, barriers and warp exchanges between them, kernel launches, and the part of
// the CUDA runtime API that the project calls, with device memory in host memory.
//
// Checks a real GPU would make (or that catch our bugs earlier than a GPU would):
// launch configuration limits (threads per block, grid size, dynamic shared memory against
// the 48 KiB default or what cudaFuncSetAttribute allowed), copies whose device side is not
// inside a live allocation, frees of unknown pointers, use of a destroyed stream, barriers
// that can never complete and shuffles from lanes that did not take part. Fresh device
// memory and dynamic shared memory are filled with 0xFF bytes (NaN as floats), so results
// that read uninitialised memory show up. An error inside a kernel prints what happened and
// aborts (as a real kernel fault ends the process's CUDA context).
//
// Knobs (environment): PHI3_EMU_MEM_MIB, the emulated device memory (default 16384), so
// that out-of-memory paths can be tested; PHI3_EMU_SMS, the multiprocessor count reported
// (default 2: small grids, so grid-stride loops in the kernels really loop).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#define PHI3_EMU_NO_LANGUAGE  // the emulator itself: plain C++
#include "cuda_emu.h"

// AddressSanitizer must be told about every stack switch (else it reports false errors on
// fiber stacks); with it, the emulated kernels' device-memory accesses are bounds-checked.
#if defined(__SANITIZE_ADDRESS__)
#define PHI3_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define PHI3_EMU_ASAN 0
#endif

// ---- context switch (x86-64 System V) ---------------------------------------------------
// phi3emu_switch(save, load): pushes the callee-saved registers and the SSE/x87 control
// words on the current stack, stores the stack pointer to *save, switches to `load` and pops
// the same layout from there. A fresh fiber's stack is laid out so that the pops "return"
// into fiber_entry.
#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif
extern "C" void phi3emu_switch(void** save, void* load);
asm(R"(
  .text
  .globl phi3emu_switch
  .type phi3emu_switch, @function
phi3emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size phi3emu_switch, .-phi3emu_switch
)");

namespace phi3emu {
namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "\n[cuda emulator] %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end && *end == 0 && x > 0) ? x : fallback;
}

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kMaxSmemOptin = 227 * 1024;  // H100's opt-in maximum per block

struct Barrier {
  int arrived = 0;
  uint64_t gen = 0;
};

struct Fiber {
  void* sp = nullptr;
  ThreadCoords c{};
  int warp = 0, lane = 0;
  bool started = false, done = false;
  const Barrier* waiting = nullptr;
  uint64_t wait_gen = 0;
  const char* wait_what = "";
  uint64_t round = 0;  // warp exchanges this lane has made
  char* stack = nullptr;
  void* asan_fake = nullptr;
};

struct Warp {
  Barrier bar;
  int live = 0;
  uint64_t value[2][32];
  uint64_t stamp[2][32];
};

// One block being run on this OS thread.
struct BlockRun {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> order;
  Barrier block_bar;
  int live = 0;
  void* sched_sp = nullptr;
  const void* sched_stack = nullptr;  // the scheduler's stack, for ASan's fiber switches
  size_t sched_stack_size = 0;
  Fiber* cur = nullptr;
  std::vector<unsigned char> smem;  // dynamic shared memory (16-byte aligned start below)
  unsigned char* smem_base = nullptr;
  uint64_t progress = 0;
};

thread_local BlockRun* t_run = nullptr;
thread_local cudaError_t t_last_error = cudaSuccess;

// Fiber stacks of this OS thread: mmap'ed with a guard page below each, reused by blocks.
struct StackPool {
  std::vector<char*> stacks;
  ~StackPool() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (char* s : stacks) {
#if PHI3_EMU_ASAN
      __asan_unpoison_memory_region(s, kStackBytes);  // the addresses may be mapped again
#endif
      munmap(s - page, kStackBytes + page);
    }
  }
  char* get(size_t i) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    while (stacks.size() <= i) {
      void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) fail("cannot map a fiber stack");
      mprotect(m, page, PROT_NONE);  // overflow faults instead of corrupting memory
      stacks.push_back(static_cast<char*>(m) + page);
    }
    return stacks[i];
  }
};
thread_local StackPool t_stacks;

// Fiber -> scheduler. `dying`: the fiber never resumes (ASan frees its fake stack).
void switch_to_scheduler(BlockRun& r, Fiber& f, bool dying) {
#if PHI3_EMU_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f.asan_fake, r.sched_stack, r.sched_stack_size);
#endif
  void* dead = nullptr;
  phi3emu_switch(dying ? &dead : &f.sp, r.sched_sp);
#if PHI3_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake, nullptr, nullptr);
#endif
}

// Scheduler -> fiber.
void switch_to_fiber(BlockRun& r, Fiber& f) {
#if PHI3_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
  phi3emu_switch(&r.sched_sp, f.sp);
#if PHI3_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &r.sched_stack, &r.sched_stack_size);
#endif
}

void yield_to_scheduler() {
  BlockRun& r = *t_run;
  switch_to_scheduler(r, *r.cur, false);
}

void release_if_complete(Barrier& b, int expected, BlockRun& r) {
  if (b.arrived > 0 && b.arrived >= expected) {
    b.arrived = 0;
    ++b.gen;
    ++r.progress;
  }
}

void wait_at(Barrier& b, int expected, const char* what) {
  BlockRun& r = *t_run;
  Fiber& f = *r.cur;
  const uint64_t gen = b.gen;
  ++b.arrived;
  release_if_complete(b, expected, r);
  if (b.gen != gen) return;  // this thread completed the barrier
  f.waiting = &b;
  f.wait_gen = gen;
  f.wait_what = what;
  yield_to_scheduler();  // resumed only once b.gen != gen
  f.waiting = nullptr;
}

void fiber_entry() {
  BlockRun& r = *t_run;
#if PHI3_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.sched_stack, &r.sched_stack_size);
#endif
  try {
    (*r.body)();
  } catch (const std::exception& e) {
    fail(std::string("exception thrown inside a kernel: ") + e.what());
  } catch (...) {
    fail("exception thrown inside a kernel");
  }
  Fiber& f = *r.cur;
  f.done = true;
  --r.live;
  --r.warps[f.warp].live;
  ++r.progress;
  // Threads that exited no longer count at barriers (as on Volta and later GPUs).
  release_if_complete(r.block_bar, r.live, r);
  release_if_complete(r.warps[f.warp].bar, r.warps[f.warp].live, r);
  switch_to_scheduler(r, f, /*dying=*/true);
  fail("a finished fiber was resumed");
}

void start_fiber(Fiber& f) {
#if PHI3_EMU_ASAN
  // A previous fiber on this stack ended without unwinding: its frames' redzones remain.
  __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
  uint64_t ctrl = 0;
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  ctrl = mxcsr | (static_cast<uint64_t>(fpucw) << 32);
  auto* top = reinterpret_cast<uint64_t*>(
      (reinterpret_cast<uintptr_t>(f.stack + kStackBytes)) & ~uintptr_t(15));
  uint64_t* sp = top;
  *--sp = 0;                                             // fiber_entry's "return address"
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);      // popped by ret (16-aligned slot)
  for (int i = 0; i < 6; ++i) *--sp = 0;                 // rbp rbx r12 r13 r14 r15
  *--sp = ctrl;
  f.sp = sp;
  f.started = true;
}

std::string deadlock_report(const BlockRun& r) {
  std::string s = "deadlock: no thread of block (" + std::to_string(r.fibers[0].c.block_idx.x) +
                  "," + std::to_string(r.fibers[0].c.block_idx.y) + "," +
                  std::to_string(r.fibers[0].c.block_idx.z) +
                  ") can go on; a barrier or shuffle is reached by some threads only.";
  int shown = 0;
  for (size_t i = 0; i < r.fibers.size() && shown < 8; ++i) {
    const Fiber& f = r.fibers[i];
    if (f.done) continue;
    s += "\n  thread " + std::to_string(i) + " (warp " + std::to_string(f.warp) + ") waits at " +
         f.wait_what;
    ++shown;
  }
  return s;
}

void run_block(BlockRun& r, int n) {
  r.live = n;
  r.block_bar = Barrier{};
  for (Warp& w : r.warps) w.bar = Barrier{}, w.live = 0;
  for (int i = 0; i < n; ++i) {
    Fiber& f = r.fibers[i];
    f.sp = nullptr;
    f.started = f.done = false;
    f.waiting = nullptr;
    f.round = 0;
    ++r.warps[f.warp].live;
  }
  int remaining = n, pos = 0;
  while (remaining > 0) {
    Fiber* next = nullptr;
    for (int tried = 0; tried < n && !next; ++tried) {
      Fiber& f = r.fibers[r.order[pos]];
      pos = pos + 1 == n ? 0 : pos + 1;
      if (!f.done && (!f.waiting || f.waiting->gen != f.wait_gen)) next = &f;
    }
    if (!next) fail(deadlock_report(r));
    if (!next->started) start_fiber(*next);
    r.cur = next;
    switch_to_fiber(r, *next);
    if (next->done) --remaining;
  }
  r.cur = nullptr;
}

std::mutex g_mu;
std::map<const void*, size_t> g_smem_limit;   // kernel -> allowed dynamic shared memory
std::set<cudaStream_t> g_streams;
std::atomic<uint64_t> g_launches{0};

}  // namespace

const ThreadCoords& coords() {
  if (!t_run || !t_run->cur) fail("threadIdx/blockIdx used outside a kernel");
  return t_run->cur->c;
}

int lane_id() {
  if (!t_run || !t_run->cur) fail("a warp intrinsic used outside a kernel");
  return t_run->cur->lane;
}

void sync_block() {
  if (!t_run || !t_run->cur) fail("__syncthreads() outside a kernel");
  wait_at(t_run->block_bar, t_run->live, "__syncthreads()");
}

void sync_warp() {
  if (!t_run || !t_run->cur) fail("__syncwarp() outside a kernel");
  Warp& w = t_run->warps[t_run->cur->warp];
  wait_at(w.bar, w.live, "__syncwarp()");
}

uint64_t warp_exchange(uint64_t mine, int src) {
  if (!t_run || !t_run->cur) fail("warp shuffle outside a kernel");
  BlockRun& r = *t_run;
  Fiber& f = *r.cur;
  Warp& w = r.warps[f.warp];
  const uint64_t round = ++f.round;
  const int buf = static_cast<int>(round & 1);
  w.value[buf][f.lane] = mine;
  w.stamp[buf][f.lane] = round;
  // A lane two rounds ahead would overwrite this buffer only after passing the next
  // round's barrier, which needs this lane there first: one barrier per exchange suffices.
  wait_at(w.bar, w.live, "a warp shuffle");
  if (src < 0 || src >= 32) fail("warp shuffle from lane " + std::to_string(src));
  if (w.stamp[buf][src] != round)
    fail("warp shuffle: lane " + std::to_string(f.lane) + " of warp " + std::to_string(f.warp) +
         " reads lane " + std::to_string(src) +
         ", which did not take part in this shuffle (exited, or diverged)");
  return w.value[buf][src];
}

void* dynamic_shared() {
  if (!t_run || !t_run->cur) fail("dynamic shared memory used outside a kernel");
  return t_run->smem_base;
}

void launch(const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            const std::function<void()>& body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  auto bad = [](cudaError_t e) { t_last_error = e; };
  if (threads == 0 || threads > kMaxThreads || block.z > 64) return bad(cudaErrorInvalidConfiguration);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 ||
      grid.x > 0x7fffffffu)
    return bad(cudaErrorInvalidConfiguration);
  {
    std::lock_guard<std::mutex> lk(g_mu);
    size_t limit = kDefaultSmem;
    auto it = g_smem_limit.find(kernel);
    if (it != g_smem_limit.end()) limit = std::max(limit, it->second);
    if (smem > limit) return bad(cudaErrorInvalidValue);
    if (stream && !g_streams.count(stream)) return bad(cudaErrorInvalidResourceHandle);
  }
  if (t_run) fail("a kernel launched from inside a kernel");
  BlockRun r;
  r.body = &body;
  const int n = static_cast<int>(threads);
  r.fibers.resize(n);
  r.warps.resize((n + 31) / 32);
  r.order.resize(n);
  for (int i = 0; i < n; ++i) {
    r.order[i] = i;
    r.fibers[i].stack = t_stacks.get(i);
    r.fibers[i].warp = i / 32;
    r.fibers[i].lane = i % 32;
    r.fibers[i].c.block_dim = block;
    r.fibers[i].c.grid_dim = grid;
    r.fibers[i].c.thread_idx = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
  }
  r.smem.resize(smem + 16);
  r.smem_base = r.smem.data() + ((16 - reinterpret_cast<uintptr_t>(r.smem.data()) % 16) % 16);
  std::mt19937 rng(static_cast<unsigned>(g_launches.fetch_add(1)));
  t_run = &r;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        for (Fiber& f : r.fibers) f.c.block_idx = make_uint3(x, y, z);
        std::memset(r.smem_base, 0xFF, smem);
        std::shuffle(r.order.begin(), r.order.end(), rng);
        run_block(r, n);
      }
  t_run = nullptr;
}

// ---- device memory ---------------------------------------------------------------------
namespace {

struct Memory {
  std::mutex mu;
  std::map<uintptr_t, size_t> allocs;  // start -> bytes
  size_t used = 0;
  size_t total() const { return static_cast<size_t>(env_long("PHI3_EMU_MEM_MIB", 16384)) << 20; }

  cudaError_t alloc(void** p, size_t bytes) {
    if (!p) return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> lk(mu);
    if (bytes > total() - std::min(used, total())) return cudaErrorMemoryAllocation;
    const size_t rounded = (std::max<size_t>(bytes, 1) + 255) & ~size_t(255);
    void* m = std::aligned_alloc(256, rounded);
    if (!m) return cudaErrorMemoryAllocation;
    std::memset(m, 0xFF, rounded);  // uninitialised device memory reads as NaN
    allocs[reinterpret_cast<uintptr_t>(m)] = bytes;
    used += bytes;
    *p = m;
    return cudaSuccess;
  }
  cudaError_t release(void* p) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> lk(mu);
    auto it = allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == allocs.end()) return cudaErrorInvalidValue;
    used -= it->second;
    allocs.erase(it);
    std::free(p);
    return cudaSuccess;
  }
  // Whether [p, p + bytes) lies inside one live allocation.
  bool is_device(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lk(mu);
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = allocs.upper_bound(a);
    if (it == allocs.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
  }
};
Memory& memory() {
  static Memory* m = new Memory;  // never destroyed: frees may run during static teardown
  return *m;
}

cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

cudaError_t check_stream(cudaStream_t s) {
  if (!s) return cudaSuccess;
  std::lock_guard<std::mutex> lk(g_mu);
  return g_streams.count(s) ? cudaSuccess : cudaErrorInvalidResourceHandle;
}

cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return cudaErrorInvalidValue;
  Memory& m = memory();
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyDefault) {
    // allowed either way
  } else if ((dst_dev && !m.is_device(dst, bytes)) || (src_dev && !m.is_device(src, bytes)) ||
             (!dst_dev && m.is_device(dst, 1)) || (!src_dev && m.is_device(src, 1))) {
    return cudaErrorInvalidValue;
  }
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

}  // namespace
}  // namespace phi3emu

// ---- the CUDA runtime API (the subset the project calls) --------------------------------
using phi3emu::ret;

extern "C" {

cudaError_t cudaGetDeviceCount(int* n) {
  if (!n) return ret(cudaErrorInvalidValue);
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  if (!d) return ret(cudaErrorInvalidValue);
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : ret(cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (!p) return ret(cudaErrorInvalidValue);
  if (d != 0) return ret(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "CUDA emulator on the CPU (tests/emu)");
  p->totalGlobalMem = static_cast<size_t>(phi3emu::env_long("PHI3_EMU_MEM_MIB", 16384)) << 20;
  p->sharedMemPerBlock = phi3emu::kDefaultSmem;
  p->sharedMemPerBlockOptin = phi3emu::kMaxSmemOptin;
  p->warpSize = 32;
  p->maxThreadsPerBlock = phi3emu::kMaxThreads;
  p->multiProcessorCount = static_cast<int>(phi3emu::env_long("PHI3_EMU_SMS", 2));
  p->major = 9;
  p->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  if (!v) return ret(cudaErrorInvalidValue);
  if (d != 0) return ret(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *v = static_cast<int>(phi3emu::env_long("PHI3_EMU_SMS", 2));
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = static_cast<int>(phi3emu::kMaxSmemOptin);
      return cudaSuccess;
    case cudaDevAttrL2CacheSize:
      *v = 50 << 20;  // as an H100
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *v = phi3emu::kMaxThreads;
      return cudaSuccess;
    default:
      return ret(cudaErrorInvalidValue);
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return ret(cudaErrorInvalidValue);
  if (value < 0 || static_cast<size_t>(value) > phi3emu::kMaxSmemOptin) return ret(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lk(phi3emu::g_mu);
  phi3emu::g_smem_limit[func] = static_cast<size_t>(value);
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  cudaError_t e = phi3emu::t_last_error;
  phi3emu::t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return phi3emu::t_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    default: return "unknown error";
  }
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  if (!s) return ret(cudaErrorInvalidValue);
  *s = reinterpret_cast<cudaStream_t>(new char[1]);
  std::lock_guard<std::mutex> lk(phi3emu::g_mu);
  phi3emu::g_streams.insert(*s);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  std::lock_guard<std::mutex> lk(phi3emu::g_mu);
  if (!phi3emu::g_streams.erase(s)) return ret(cudaErrorInvalidResourceHandle);
  delete[] reinterpret_cast<char*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) { return ret(phi3emu::check_stream(s)); }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaMalloc(void** p, size_t bytes) { return ret(phi3emu::memory().alloc(p, bytes)); }
cudaError_t cudaFree(void* p) { return ret(phi3emu::memory().release(p)); }
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t s) {
  if (cudaError_t e = phi3emu::check_stream(s)) return ret(e);
  return ret(phi3emu::memory().alloc(p, bytes));
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  if (cudaError_t e = phi3emu::check_stream(s)) return ret(e);
  return ret(phi3emu::memory().release(p));
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  phi3emu::Memory& m = phi3emu::memory();
  std::lock_guard<std::mutex> lk(m.mu);
  if (total_b) *total_b = m.total();
  if (free_b) *free_b = m.total() - std::min(m.used, m.total());
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int d) {
  if (!pool) return ret(cudaErrorInvalidValue);
  if (d != 0) return ret(cudaErrorInvalidDevice);
  static char the_pool;
  *pool = reinterpret_cast<cudaMemPool_t>(&the_pool);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr attr, void* v) {
  if (!v) return ret(cudaErrorInvalidValue);
  phi3emu::Memory& m = phi3emu::memory();
  std::lock_guard<std::mutex> lk(m.mu);
  // No pooling: every freed block goes back at once, so reserved == used.
  if (attr == cudaMemPoolAttrReservedMemCurrent || attr == cudaMemPoolAttrUsedMemCurrent) {
    *static_cast<uint64_t*>(v) = m.used;
    return cudaSuccess;
  }
  return ret(cudaErrorInvalidValue);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return ret(phi3emu::copy(dst, src, bytes, kind));
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s) {
  if (cudaError_t e = phi3emu::check_stream(s)) return ret(e);
  return ret(phi3emu::copy(dst, src, bytes, kind));
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!phi3emu::memory().is_device(dst, bytes)) return ret(cudaErrorInvalidValue);
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s) {
  if (cudaError_t e = phi3emu::check_stream(s)) return ret(e);
  return cudaMemset(dst, value, bytes);
}

// Events measure host time (the emulator's "device" is the host).
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  if (!e) return ret(cudaErrorInvalidValue);
  *e = reinterpret_cast<cudaEvent_t>(new double(0.0));
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<double*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  if (!e) return ret(cudaErrorInvalidResourceHandle);
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  *reinterpret_cast<double*>(e) = ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!ms || !a || !b) return ret(cudaErrorInvalidValue);
  *ms = static_cast<float>(*reinterpret_cast<double*>(b) - *reinterpret_cast<double*>(a));
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return ret(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) { return cudaDriverGetVersion(v); }

}  // extern "C"

namespace phi3emu {
bool is_device_range(const void* p, size_t bytes) { return memory().is_device(p, bytes); }
}  // namespace phi3emu
