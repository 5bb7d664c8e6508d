#include "runtime/arena.h"

#include "runtime/error.h"

namespace phi3 {

namespace {
std::string mib(size_t b) { return std::to_string((b + (1 << 20) - 1) >> 20); }
}  // namespace

Arena::Arena(Backend& be, size_t bytes, std::string what) : be_(&be), bytes_(bytes), what_(std::move(what)) {
  if (bytes_ == 0) return;
  try {
    // Over-allocate so the base can be rounded up to kAlign whatever the device gives.
    raw_ = static_cast<uint8_t*>(be.alloc(bytes_ + kAlign));
    base_ = raw_ + (kAlign - reinterpret_cast<uintptr_t>(raw_) % kAlign) % kAlign;
  } catch (const OutOfMemory& e) {
    throw OutOfMemory("the " + what_ + " needs " + mib(bytes_) + " MiB of activation buffers on " + be.name() +
                      ": " + e.what());
  }
}

Arena::~Arena() {
  if (raw_) be_->free(raw_);
}

void* Arena::take_bytes(size_t bytes) {
  const size_t need = padded(bytes);
  if (used_ + need > bytes_)
    throw Error("arena of the " + what_ + " is full (" + std::to_string(used_) + " + " + std::to_string(need) +
                " > " + std::to_string(bytes_) + " bytes): its size plan misses a buffer");
  void* p = base_ + used_;
  used_ += need;
  return p;
}

}  // namespace phi3
