// Entry points of the CUDA backend (runtime/cuda/*.cu), compiled only when nvcc exists.
#pragma once
#include <memory>

#include "runtime/backend.h"

namespace phi3 {
#if defined(PHI3_WITH_CUDA)
int cuda_device_count();  // 0 when no GPU is visible or the driver is missing (never throws)
// GPU `device` modulo the visible count (< 0: the current device); throws Error when no GPU.
std::unique_ptr<Backend> make_cuda_backend(bool fp32, int device = -1);
#endif
}  // namespace phi3
