// A bump allocator over one device allocation. The activation buffers of a forward pass
// (the patch caches) and the work buffers of a sweep chunk are carved from one arena sized
// from the model config and the batch, so a pass costs one device allocation and an
// out-of-memory error can say up front how much the whole pass needs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/backend.h"

namespace phi3 {

class Arena {
 public:
  static constexpr size_t kAlign = 256;  // bytes; keeps every buffer vector- and TMA-aligned
  static size_t padded(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

  // `what` names the pass in error messages ("forward pass of 4 x 31 tokens").
  Arena(Backend& be, size_t bytes, std::string what);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // `count` elements of T from the arena (kAlign-aligned); throws Error when it is full,
  // which means the size computation missed a buffer.
  template <typename T>
  DeviceArray<T> take(size_t count) {
    return DeviceArray<T>::borrowed(*be_, static_cast<T*>(take_bytes(count * sizeof(T))), count);
  }
  // A GEMM input of `count` elements (kernels/ops.h GemmOut): taken into `f` (fp32) or, when
  // `bf16` (Backend::gemm_in_bf16), into `h`; the other stays empty.
  GemmOut take_gemm_in(bool bf16, DeviceArray<float>& f, DeviceArray<uint16_t>& h, size_t count) {
    if (bf16) h = take<uint16_t>(count);
    else f = take<float>(count);
    return GemmOut(f.get(), h.get());
  }
  void reset() { used_ = 0; }
  size_t used() const { return used_; }
  size_t capacity() const { return bytes_; }
  Backend& backend() const { return *be_; }

 private:
  void* take_bytes(size_t bytes);
  Backend* be_;
  uint8_t* raw_ = nullptr;   // the device allocation
  uint8_t* base_ = nullptr;  // raw_ rounded up to kAlign
  size_t bytes_ = 0;
  size_t used_ = 0;
  std::string what_;
};

// Byte counter with the arena's padding, for sizing an arena before allocating it.
class ArenaPlan {
 public:
  template <typename T>
  ArenaPlan& add(size_t count) {
    bytes_ += Arena::padded(count * sizeof(T));
    return *this;
  }
  // What Arena::take_gemm_in takes.
  ArenaPlan& add_gemm_in(bool bf16, size_t count) { return bf16 ? add<uint16_t>(count) : add<float>(count); }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_ = 0;
};

}  // namespace phi3
