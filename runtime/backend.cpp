// Backend selection: "cpu", "cuda" or "auto" (DESIGN §7). make_cpu_backend() lives in
// runtime/cpu_backend.cpp, make_cuda_backend() in runtime/cuda/ (only with PHI3_WITH_CUDA).
#include <string>

#include "runtime/backend.h"

#include "runtime/closest_name.h"
#include "runtime/comm.h"
#include "runtime/cuda_backend.h"
#include "runtime/error.h"

namespace phi3 {

std::vector<Backend*> Backend::lanes(int n) {
  while (static_cast<int>(lanes_.size()) + 1 < n) {
    auto f = fork();
    if (!f) break;
    lanes_.push_back(std::move(f));
  }
  std::vector<Backend*> out = {this};
  for (int k = 0; k + 1 < n && k < static_cast<int>(lanes_.size()); ++k) out.push_back(lanes_[k].get());
  return out;
}

bool cuda_available() {
#if defined(PHI3_WITH_CUDA)
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& device, bool fp32) {
  // In a distributed job each rank takes GPU local_rank % device_count (one rank per GPU
  // across nodes with no extra flags).
  const Comm& comm = Comm::world();
  const int gpu = comm.distributed() ? comm.local_rank() : -1;
  (void)gpu;
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda") {
#if defined(PHI3_WITH_CUDA)
    return make_cuda_backend(fp32, gpu);
#else
    (void)fp32;
    throw Error("--device cuda: this binary was built without CUDA (nvcc was not found at configure time)");
#endif
  }
  if (device == "auto") {
#if defined(PHI3_WITH_CUDA)
    if (cuda_available()) return make_cuda_backend(fp32, gpu);
#endif
    return make_cpu_backend();
  }
  throw Error("--device '" + device + "': unknown device" + did_you_mean(device, {"cpu", "cuda", "auto"}) +
              " (expected cpu, cuda or auto)");
}

}  // namespace phi3
