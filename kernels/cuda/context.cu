// Per-thread cache of cuBLAS handles and scratch buffers, keyed by (device, stream).
// One handle per thread and stream: cuBLAS allows a handle to be used from one thread at a
// time with one stream set; the stream is re-set on every lookup (cheap) so a stream that
// reuses a destroyed stream's address still gets a correctly bound handle.
#include <map>
#include <utility>

#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

struct StreamResources {
  cublasHandle_t handle = nullptr;
  void* buf[kScratchSlots] = {};
  size_t cap[kScratchSlots] = {};
  int device = 0;
  ~StreamResources() {
    // Runs at thread exit or on release; errors are ignored (the context may be gone).
    int prev = 0;
    if (cudaGetDevice(&prev) == cudaSuccess) cudaSetDevice(device);
    for (void* p : buf)
      if (p) cudaFree(p);
    if (handle) cublasDestroy(handle);
    cudaSetDevice(prev);
    (void)cudaGetLastError();
  }
};

using Key = std::pair<int, cudaStream_t>;
struct Cache {
  std::map<Key, StreamResources> entries;
  StreamResources& get(cudaStream_t stream) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    auto [it, inserted] = entries.try_emplace(Key{dev, stream});
    if (inserted) it->second.device = dev;
    return it->second;
  }
};
// The cache lives on the heap behind trivially destructible thread_locals, so a Backend
// destroyed after this thread's thread_locals (e.g. a function-local static in the main
// thread, destroyed after them) can still call release_stream_resources safely.
thread_local Cache* t_cache = nullptr;
thread_local bool t_cache_closed = false;
struct CacheOwner {
  ~CacheOwner() {
    delete t_cache;
    t_cache = nullptr;
    t_cache_closed = true;
  }
};
thread_local CacheOwner t_owner;

Cache& cache() {
  if (!t_cache) {
    t_cache = new Cache;  // after close (thread teardown) this one is leaked on purpose
    if (!t_cache_closed) (void)&t_owner;  // odr-use: registers the owner's destructor
  }
  return *t_cache;
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
  StreamResources& r = cache().get(stream);
  if (!r.handle) {
    CUBLAS_CHECK(cublasCreate(&r.handle));
    // Pure fp32 / fp32-accumulate GEMMs: TF32 stays off so the fp32 mode tracks the CPU.
    CUBLAS_CHECK(cublasSetMathMode(r.handle, CUBLAS_DEFAULT_MATH));
  }
  CUBLAS_CHECK(cublasSetStream(r.handle, stream));
  return r.handle;
}

void* scratch(cudaStream_t stream, size_t bytes, int slot) {
  StreamResources& r = cache().get(stream);
  if (bytes <= r.cap[slot]) return r.buf[slot];
  if (r.buf[slot]) {
    CUDA_CHECK(cudaStreamSynchronize(stream));  // earlier work may still read the old buffer
    CUDA_CHECK(cudaFree(r.buf[slot]));
    r.buf[slot] = nullptr;
    r.cap[slot] = 0;
  }
  size_t want = bytes + bytes / 4;  // grow by 25% headroom to avoid regrowing every call
  want = (want + 255) & ~size_t(255);
  CUDA_CHECK(cudaMalloc(&r.buf[slot], want));
  r.cap[slot] = want;
  return r.buf[slot];
}

void release_stream_resources(cudaStream_t stream) {
  if (!t_cache) return;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return;
  t_cache->entries.erase(Key{dev, stream});
}

}  // namespace phi3::cuda
