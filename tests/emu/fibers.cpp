// The CPU CUDA emulator's threads (see tests/emu/cuda_emu.h): every GPU thread of a block is
// a fiber on the launching OS thread; blocks run one after another. A fiber switches only at
// a barrier (__syncthreads, __syncwarp, a warp shuffle), so __shared__ variables
// (thread_local statics) are per block. Between barriers the block's
// threads run in a shuffled order, so a missing barrier changes the answer. A barrier that
// can never complete (some threads wait elsewhere) and a shuffle from a lane that did not
// take part abort with a report naming the block and where each thread waits. Launch
// configurations are checked as a GPU checks them (threads per block, grid size, dynamic
// shared memory against the kernel's limit); dynamic shared memory starts filled with 0xFF
// bytes (NaN as floats), so reads of unwritten shared memory show up.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#define PHI3_EMU_NO_LANGUAGE  // the emulator itself: plain C++
#include "cuda_emu.h"
#include "emu_state.h"

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
// phi3emu_switch(save, load): pushes the callee-saved registers on the current stack, stores
// the stack pointer to *save, switches to `load` and pops the same layout from there. A fresh
// fiber's stack is laid out so that the pops "return" into fiber_entry. The MXCSR and x87 control words are not switched: no kernel changes
// them, and saving and loading them (stmxcsr/ldmxcsr, fnstcw/fldcw serialise the pipeline)
// was over 80% of a switch's time.
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
  movq %rsp, (%rdi)
  movq %rsi, %rsp
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

constexpr size_t kStackBytes = 256 * 1024;

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
  int n = 0, pos = 0;  // threads in the block; where the next pick in `order` starts
  Barrier block_bar;
  int live = 0;
  void* sched_sp = nullptr;
  const void* sched_stack = nullptr;  // the scheduler's stack, for ASan's fiber switches
  size_t sched_stack_size = 0;
  Fiber* cur = nullptr;
  std::vector<unsigned char> smem;  // dynamic shared memory (16-byte aligned start below)
  unsigned char* smem_base = nullptr;
};

thread_local BlockRun* t_run = nullptr;

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

// The next thread to run: the first in the block's shuffled order, from where the last pick
// stopped, that has not finished and does not wait at an incomplete barrier; nullptr if none.
Fiber* next_runnable(BlockRun& r) {
  for (int tried = 0; tried < r.n; ++tried) {
    Fiber& f = r.fibers[r.order[r.pos]];
    r.pos = r.pos + 1 == r.n ? 0 : r.pos + 1;
    if (!f.done && (!f.waiting || f.waiting->gen != f.wait_gen)) return &f;
  }
  return nullptr;
}

void start_fiber(Fiber& f);

// A thread waits: the next runnable thread takes over. Straight from thread to thread (half
// the switches of going through the scheduler), except under ASan, whose fiber annotations
// go through the scheduler; the scheduler itself sees threads finish, and a deadlock (no
// thread can run).
void yield_to_scheduler() {
  BlockRun& r = *t_run;
  Fiber& f = *r.cur;
#if !PHI3_EMU_ASAN
  if (Fiber* next = next_runnable(r)) {
    if (!next->started) start_fiber(*next);
    r.cur = next;
    phi3emu_switch(&f.sp, next->sp);
    return;  // resumed: whoever switched here set r.cur = &f
  }
#endif
  switch_to_scheduler(r, f, false);
}

void release_if_complete(Barrier& b, int expected) {
  if (b.arrived > 0 && b.arrived >= expected) {
    b.arrived = 0;
    ++b.gen;
  }
}

void wait_at(Barrier& b, int expected, const char* what) {
  BlockRun& r = *t_run;
  Fiber& f = *r.cur;
  const uint64_t gen = b.gen;
  ++b.arrived;
  release_if_complete(b, expected);
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
  // Threads that exited no longer count at barriers (as on Volta and later GPUs).
  release_if_complete(r.block_bar, r.live);
  release_if_complete(r.warps[f.warp].bar, r.warps[f.warp].live);
  switch_to_scheduler(r, f, /*dying=*/true);
  fail("a finished fiber was resumed");
}

void start_fiber(Fiber& f) {
#if PHI3_EMU_ASAN
  // A previous fiber on this stack ended without unwinding: its frames' redzones remain.
  __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
  auto* top = reinterpret_cast<uint64_t*>(
      (reinterpret_cast<uintptr_t>(f.stack + kStackBytes)) & ~uintptr_t(15));
  uint64_t* sp = top;
  *--sp = 0;                                             // fiber_entry's "return address"
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);      // popped by ret (16-aligned slot)
  for (int i = 0; i < 6; ++i) *--sp = 0;                 // rbp rbx r12 r13 r14 r15
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
  r.n = n;
  r.pos = 0;
  int remaining = n;
  while (remaining > 0) {
    Fiber* next = next_runnable(r);
    if (!next) fail(deadlock_report(r));
    if (!next->started) start_fiber(*next);
    r.cur = next;
    switch_to_fiber(r, *next);
    if (r.cur->done) --remaining;  // the thread that came back (threads hand over among themselves)
  }
  r.cur = nullptr;
}

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

void warp_collective(const char* op, uint64_t digest) {
  if (!t_run || !t_run->cur) fail(std::string(op) + " outside a kernel");
  BlockRun& r = *t_run;
  Fiber& f = *r.cur;
  Warp& w = r.warps[f.warp];
  // One exchange round (as warp_exchange): every lane must have published this round.
  const uint64_t round = ++f.round;
  const int buf = static_cast<int>(round & 1);
  w.value[buf][f.lane] = digest;
  w.stamp[buf][f.lane] = round;
  wait_at(w.bar, w.live, op);
  for (int i = 0; i < 32; ++i)
    if (w.stamp[buf][i] != round)
      fail(std::string(op) + ": lane " + std::to_string(i) + " of warp " + std::to_string(f.warp) +
           " did not call it (exited, or diverged); all 32 lanes of a full warp must");
  if (w.value[buf][0] != digest)
    fail(std::string(op) + ": lane " + std::to_string(f.lane) + " of warp " + std::to_string(f.warp) +
         " passes different fragment contents or arguments than lane 0 (the element mapping of a "
         "fragment is unspecified: only warp-uniform operations on x[] are portable)");
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
  auto bad = [](cudaError_t e) { set_last_error(e); };
  if (threads == 0 || threads > kMaxThreads || block.z > 64) return bad(cudaErrorInvalidConfiguration);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 ||
      grid.x > 0x7fffffffu)
    return bad(cudaErrorInvalidConfiguration);
  if (smem > smem_limit(kernel)) return bad(cudaErrorInvalidValue);
  if (!stream_live(stream)) return bad(cudaErrorInvalidResourceHandle);
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

}  // namespace phi3emu
