// Process-wide cache of cuBLAS handles and scratch buffers, keyed by (device, stream): the
// resources live as long as the stream, so a backend's lanes (runtime/backend.h), reused by
// every sweep from whichever worker thread runs them, create their cuBLAS handle and grow
// their scratch once, not per sweep or per thread. A stream is driven by one thread at a
// time in this engine (each lane by its worker), which is what cuBLAS asks of a handle
// bound to it. Lookups take a mutex once per (thread, stream) change: a thread-local
// last-hit entry answers the repeated lookups of one stream's ops, checked against a
// generation counter that release_stream_resources bumps.
// Scratch grows stream-ordered (cudaFreeAsync of the old block, cudaMallocAsync of the new
// one on the same stream): no device synchronisation and no cudaFree in the hot path. A
// growth the device has no room for trims the pool and retries once (malloc_async_or_trim),
// then throws OutOfMemory naming the scratch and the sizes.
#include <atomic>
#include <map>
#include <mutex>
#include <utility>

#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

struct StreamResources {
  cublasHandle_t handle = nullptr;
  void* buf[kScratchSlots] = {};
  size_t cap[kScratchSlots] = {};
  int device = 0;
  cudaStream_t stream = nullptr;
  void release() {
    // Errors are ignored: the context may be gone at process exit.
    int prev = 0;
    if (cudaGetDevice(&prev) == cudaSuccess) cudaSetDevice(device);
    cudaStreamSynchronize(stream);
    for (void*& p : buf)
      if (p) {
        cudaFree(p);
        p = nullptr;
      }
    if (handle) cublasDestroy(handle);
    handle = nullptr;
    cudaSetDevice(prev);
    (void)cudaGetLastError();
  }
};

using Key = std::pair<int, cudaStream_t>;
struct Cache {
  std::mutex mu;
  std::map<Key, StreamResources*> entries;  // never freed while the process runs (see release)
  std::atomic<uint64_t> generation{1};
};
// Leaked on purpose: backends destroyed during static destruction may still release.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

struct LastHit {
  int device = -1;
  cudaStream_t stream = nullptr;
  uint64_t generation = 0;
  StreamResources* r = nullptr;
};
thread_local LastHit t_last;

StreamResources& resources(cudaStream_t stream) {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  Cache& c = cache();
  const uint64_t gen = c.generation.load(std::memory_order_acquire);
  if (t_last.r && t_last.device == dev && t_last.stream == stream && t_last.generation == gen) return *t_last.r;
  std::lock_guard<std::mutex> lock(c.mu);
  StreamResources*& r = c.entries[Key{dev, stream}];
  if (!r) {
    r = new StreamResources;
    r->device = dev;
    r->stream = stream;
  }
  t_last = LastHit{dev, stream, gen, r};
  return *r;
}

}  // namespace

int sm_count() {
  static thread_local std::map<int, int> counts;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  auto it = counts.find(dev);
  if (it != counts.end()) return it->second;
  int n = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  counts[dev] = n;
  return n;
}

cublasHandle_t blas_handle(cudaStream_t stream) {
  StreamResources& r = resources(stream);
  if (!r.handle) {
    CUBLAS_CHECK(cublasCreate(&r.handle));
    // Pure fp32 / fp32-accumulate GEMMs: TF32 stays off so the fp32 mode tracks the CPU.
    CUBLAS_CHECK(cublasSetMathMode(r.handle, CUBLAS_DEFAULT_MATH));
    CUBLAS_CHECK(cublasSetStream(r.handle, stream));
  }
  return r.handle;
}

void* scratch(cudaStream_t stream, size_t bytes, int slot) {
  StreamResources& r = resources(stream);
  if (bytes <= r.cap[slot]) return r.buf[slot];
  if (r.buf[slot]) {
    // Ordered after the work already queued on this stream that reads the old block.
    CUDA_CHECK(cudaFreeAsync(r.buf[slot], stream));
    r.buf[slot] = nullptr;
    r.cap[slot] = 0;
  }
  // 25% head-room against regrowing every call; the memory plan counts the same capacity.
  const size_t want = scratch_capacity(bytes);
  const cudaError_t e = malloc_async_or_trim(&r.buf[slot], want, stream);
  if (e == cudaErrorMemoryAllocation) {
    static const char* const names[kScratchSlots] = {"the bf16 cast of a GEMM input", "attention backward's row terms",
                                                     "the QK fix's key terms"};
    throw OutOfMemory("CUDA out of memory: kernel scratch for " + std::string(names[slot]) + " of " +
                      std::to_string(want >> 20) + " MiB with " + device_memory_note() +
                      " (after trimming the pool); lower --mem-budget or --batch");
  }
  CUDA_CHECK(e);
  r.cap[slot] = want;
  return r.buf[slot];
}

cudaError_t malloc_async_or_trim(void** p, size_t bytes, cudaStream_t stream) {
  cudaError_t e = cudaMallocAsync(p, bytes, stream);
  if (e != cudaErrorMemoryAllocation) return e;
  (void)cudaGetLastError();
  trim_pool();
  e = cudaMallocAsync(p, bytes, stream);
  if (e == cudaErrorMemoryAllocation) (void)cudaGetLastError();
  return e;
}

void trim_pool() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceSynchronize());  // frees queued on any stream have returned to the pool
  cudaMemPool_t pool;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
  CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
}

std::string device_memory_note() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    (void)cudaGetLastError();
    return "unknown free memory";
  }
  return std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) + " MiB";
}

void release_stream_resources(cudaStream_t stream) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return;
  Cache& c = cache();
  StreamResources* r = nullptr;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.entries.find(Key{dev, stream});
    if (it == c.entries.end()) return;
    r = it->second;
    c.entries.erase(it);
    c.generation.fetch_add(1, std::memory_order_acq_rel);  // invalidates every thread's last hit
  }
  r->release();
  // The struct itself is kept: another thread's stale last-hit pointer is never dereferenced
  // (its generation no longer matches), but freeing it here would race with that check.
}

}  // namespace phi3::cuda
