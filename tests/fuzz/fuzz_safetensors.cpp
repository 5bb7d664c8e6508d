// libFuzzer target: the safetensors reader. Input bytes become a model.safetensors file
// (SafeTensors::open_file; on success every tensor is converted) or, when they start with
// '{', a model.safetensors.index.json next to a valid shard "a.safetensors"
// (SafeTensors::open_dir). Only phi3::Error may come out; anything else is a crash.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

using namespace phi3;

namespace {
void exercise(const SafeTensors& st) {
  for (const auto& name : st.names()) {
    const TensorInfo& t = st.get(name);
    volatile float sink = 0;
    if (t.dtype == DType::I32) {
      for (int32_t v : st.to_i32(name)) sink = sink + static_cast<float>(v);
    } else {
      for (float v : st.to_f32(name)) sink = sink + v;
      for (uint16_t v : st.to_bf16(name)) sink = sink + v;
    }
    (void)t.numel();
  }
  (void)st.metadata();
}

const std::string& index_dir() {
  static const std::string dir = [] {
    std::string d = fuzz::scratch_dir() + "/index";
    std::filesystem::create_directories(d);
    write_safetensors(d + "/a.safetensors", {tensor_f32("w", {2, 2}, {1, 2, 3, 4}), tensor_i32("ids", {3}, {1, 2, 3})},
                      {{"format", "pt"}});
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    if (size > 0 && data[0] == '{') {
      fuzz::write_bytes(index_dir() + "/model.safetensors.index.json", data, size);
      exercise(SafeTensors::open_dir(index_dir()));
    } else {
      const std::string path = fuzz::scratch_dir() + "/model.safetensors";
      fuzz::write_bytes(path, data, size);
      exercise(SafeTensors::open_file(path));
    }
  } catch (const Error&) {
  }
  return 0;
}
