// The part of the CUDA runtime API the project calls, for the CPU CUDA emulator
// (tests/emu/cuda_emu.h): devices, errors, streams, device memory (in host memory),
// copies, memsets, the stream-ordered pool (reserved blocks held until trimmed; see
// "device memory" below and emu_memory.h), events (host time). Device memory is checked:
// copies whose device side is not inside one live allocation, frees of unknown pointers and
// use of a destroyed stream fail as on a GPU, fresh allocations are filled with 0xFF bytes
// (NaN as floats) so reads of uninitialised memory show up, and PHI3_EMU_MEM_MIB (default
// 16384) sets the device size, so out-of-memory paths can be tested. PHI3_EMU_SMS (default
// 2) is the multiprocessor count reported: small grids, so grid-stride loops really loop.
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>

#define PHI3_EMU_NO_LANGUAGE  // the emulator itself: plain C++
#include "cuda_emu.h"
#include "emu_memory.h"
#include "emu_state.h"

namespace phi3emu {
namespace {

thread_local cudaError_t t_last_error = cudaSuccess;
std::mutex g_mu;
std::map<const void*, size_t> g_smem_limit;  // kernel -> allowed dynamic shared memory
std::set<cudaStream_t> g_streams;

}  // namespace

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

void set_last_error(cudaError_t e) { t_last_error = e; }

size_t smem_limit(const void* kernel) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_smem_limit.find(kernel);
  return it == g_smem_limit.end() ? kDefaultSmem : std::max(kDefaultSmem, it->second);
}

bool stream_live(cudaStream_t s) {
  if (!s) return true;
  std::lock_guard<std::mutex> lk(g_mu);
  return g_streams.count(s) > 0;
}

// ---- device memory ---------------------------------------------------------------------
// cudaMalloc blocks are the device's until cudaFree. cudaMallocAsync blocks come from the
// default pool: a freed one (cudaFreeAsync, or cudaFree) stays reserved by the pool, whole,
// and serves a later cudaMallocAsync of at most its size (the smallest that fits); the pool
// gives reserved blocks back to the device at cudaMemPoolTrimTo, and at a synchronisation
// down to its release threshold (cudaMemPoolAttrReleaseThreshold, default 0). A reserved
// block holds no host memory (only its size is counted); a reused one is filled with 0xFF
// again. An allocation the reserved blocks cannot serve fails when the device is full: the
// pool is not trimmed for it (that is the caller's move, as on a GPU whose pool holds
// fragments).
namespace {

struct Block {
  size_t bytes;  // requested (what copies may touch)
  size_t cap;    // counted against the device (a reused pool block: the block's size)
  bool pool;
};

struct Memory {
  std::mutex mu;
  std::map<uintptr_t, Block> allocs;           // live: start -> block
  std::multimap<size_t, int> pool_free;        // reserved, unused pool blocks: size -> (none)
  size_t live = 0, peak = 0;                   // requested bytes of the live blocks
  size_t occupied = 0;                         // live caps + reserved unused pool blocks
  size_t pool_reserved = 0;                    // live pool caps + reserved unused pool blocks
  size_t pool_used = 0;                        // requested bytes of live pool blocks
  size_t pool_used_high = 0;                   // their most since the last reset (UsedMemHigh)
  size_t limit = 0;                            // 0: PHI3_EMU_MEM_MIB
  uint64_t release_threshold = 0;
  size_t total() const {
    return limit ? limit : static_cast<size_t>(env_long("PHI3_EMU_MEM_MIB", 16384)) << 20;
  }

  cudaError_t alloc(void** p, size_t bytes, bool pool) {
    if (!p) return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> lk(mu);
    size_t cap = bytes;
    auto reuse = pool ? pool_free.lower_bound(bytes) : pool_free.end();
    if (reuse != pool_free.end()) {
      cap = reuse->first;
      pool_free.erase(reuse);  // already counted in occupied and pool_reserved
    } else {
      if (bytes > total() - std::min(occupied, total())) return cudaErrorMemoryAllocation;
      occupied += cap;
      if (pool) pool_reserved += cap;
    }
    const size_t rounded = (std::max<size_t>(bytes, 1) + 255) & ~size_t(255);
    void* m = std::aligned_alloc(256, rounded);
    if (!m) return cudaErrorMemoryAllocation;
    // Uninitialised device memory reads as NaN. An allocation above 1 GiB is left as the OS
    // gives it (zero pages, taken only where written): a test can hold an address range past
    // 2^31 floats (8 GiB) without 8 GiB of host memory.
    if (rounded <= (size_t(1) << 30)) std::memset(m, 0xFF, rounded);
    allocs[reinterpret_cast<uintptr_t>(m)] = Block{bytes, cap, pool};
    live += bytes;
    peak = std::max(peak, live);
    if (pool) {
      pool_used += bytes;
      pool_used_high = std::max(pool_used_high, pool_used);
    }
    *p = m;
    return cudaSuccess;
  }
  cudaError_t release(void* p) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> lk(mu);
    auto it = allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == allocs.end()) return cudaErrorInvalidValue;
    const Block b = it->second;
    live -= b.bytes;
    if (b.pool) {
      pool_used -= b.bytes;
      pool_free.emplace(b.cap, 0);  // stays reserved
    } else {
      occupied -= b.cap;
    }
    allocs.erase(it);
    std::free(p);
    return cudaSuccess;
  }
  // Gives unused reserved blocks back until the pool holds at most `keep` bytes.
  void trim(size_t keep) {
    std::lock_guard<std::mutex> lk(mu);
    while (pool_reserved > keep && !pool_free.empty()) {
      auto it = std::prev(pool_free.end());  // largest first
      pool_reserved -= it->first;
      occupied -= it->first;
      pool_free.erase(it);
    }
  }
  // Whether [p, p + bytes) lies inside one live allocation.
  bool is_device(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lk(mu);
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = allocs.upper_bound(a);
    if (it == allocs.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second.bytes;
  }
};
Memory& memory() {
  static Memory* m = new Memory;  // never destroyed: frees may run during static teardown
  return *m;
}

// A synchronisation: the pool keeps at most its release threshold of reserved bytes.
void on_synchronize() {
  Memory& m = memory();
  uint64_t t;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    t = m.release_threshold;
  }
  m.trim(static_cast<size_t>(std::min<uint64_t>(t, SIZE_MAX)));
}

cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

cudaError_t check_stream(cudaStream_t s) {
  return stream_live(s) ? cudaSuccess : cudaErrorInvalidResourceHandle;
}

std::atomic<uint64_t> g_d2h_bytes{0};  // emu_memory.h

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
  if (kind == cudaMemcpyDeviceToHost || (kind == cudaMemcpyDefault && m.is_device(src, 1) && !m.is_device(dst, 1)))
    g_d2h_bytes += bytes;
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

}  // namespace

uint64_t d2h_bytes() { return g_d2h_bytes.load(); }

bool is_device_range(const void* p, size_t bytes) { return memory().is_device(p, bytes); }

size_t device_live_bytes() {
  std::lock_guard<std::mutex> lk(memory().mu);
  return memory().live;
}
size_t device_peak_bytes() {
  std::lock_guard<std::mutex> lk(memory().mu);
  return memory().peak;
}
void reset_device_peak() {
  std::lock_guard<std::mutex> lk(memory().mu);
  memory().peak = memory().live;
}
size_t pool_reserved_bytes() {
  std::lock_guard<std::mutex> lk(memory().mu);
  return memory().pool_reserved;
}
size_t device_occupied_bytes() {
  std::lock_guard<std::mutex> lk(memory().mu);
  return memory().occupied;
}
void set_device_memory(size_t bytes) {
  std::lock_guard<std::mutex> lk(memory().mu);
  memory().limit = bytes;
}

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
    case cudaDevAttrL2CacheSize:
      *v = 50 << 20;  // as an H100
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
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  std::lock_guard<std::mutex> lk(phi3emu::g_mu);
  if (!phi3emu::g_streams.erase(s)) return ret(cudaErrorInvalidResourceHandle);
  delete[] reinterpret_cast<char*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (cudaError_t e = phi3emu::check_stream(s)) return ret(e);
  phi3emu::on_synchronize();
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  phi3emu::on_synchronize();
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) { return ret(phi3emu::memory().alloc(p, bytes, false)); }
cudaError_t cudaFree(void* p) { return ret(phi3emu::memory().release(p)); }
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t s) {
  if (cudaError_t e = phi3emu::check_stream(s)) return ret(e);
  return ret(phi3emu::memory().alloc(p, bytes, true));
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  if (cudaError_t e = phi3emu::check_stream(s)) return ret(e);
  return ret(phi3emu::memory().release(p));
}
// Pinned host memory is host memory here (every emulated copy is synchronous).
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) {
  if (!p) return ret(cudaErrorInvalidValue);
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : ret(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  phi3emu::Memory& m = phi3emu::memory();
  std::lock_guard<std::mutex> lk(m.mu);
  if (total_b) *total_b = m.total();
  if (free_b) *free_b = m.total() - std::min(m.occupied, m.total());
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int d) {
  if (!pool) return ret(cudaErrorInvalidValue);
  if (d != 0) return ret(cudaErrorInvalidDevice);
  static char the_pool;
  *pool = reinterpret_cast<cudaMemPool_t>(&the_pool);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* v) {
  if (!pool || !v) return ret(cudaErrorInvalidValue);
  phi3emu::Memory& m = phi3emu::memory();
  std::lock_guard<std::mutex> lk(m.mu);
  if (attr == cudaMemPoolAttrUsedMemHigh) {  // CUDA: may only be reset to zero
    if (*static_cast<uint64_t*>(v) != 0) return ret(cudaErrorInvalidValue);
    m.pool_used_high = m.pool_used;
    return cudaSuccess;
  }
  if (attr != cudaMemPoolAttrReleaseThreshold) return ret(cudaErrorInvalidValue);
  m.release_threshold = *static_cast<uint64_t*>(v);
  return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* v) {
  if (!pool || !v) return ret(cudaErrorInvalidValue);
  phi3emu::Memory& m = phi3emu::memory();
  std::lock_guard<std::mutex> lk(m.mu);
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: *static_cast<uint64_t*>(v) = m.release_threshold; return cudaSuccess;
    case cudaMemPoolAttrReservedMemCurrent: *static_cast<uint64_t*>(v) = m.pool_reserved; return cudaSuccess;
    case cudaMemPoolAttrUsedMemCurrent: *static_cast<uint64_t*>(v) = m.pool_used; return cudaSuccess;
    case cudaMemPoolAttrUsedMemHigh: *static_cast<uint64_t*>(v) = m.pool_used_high; return cudaSuccess;
    default: return ret(cudaErrorInvalidValue);
  }
}
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep) {
  if (!pool) return ret(cudaErrorInvalidValue);
  phi3emu::memory().trim(keep);
  return cudaSuccess;
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
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  if (!e) return ret(cudaErrorInvalidResourceHandle);
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  *reinterpret_cast<double*>(e) = ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!e) return ret(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<double*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  phi3emu::on_synchronize();
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!ms || !a || !b) return ret(cudaErrorInvalidValue);
  *ms = static_cast<float>(*reinterpret_cast<double*>(b) - *reinterpret_cast<double*>(a));
  return cudaSuccess;
}

}  // extern "C"
