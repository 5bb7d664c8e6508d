// Reader and writer for Hugging Face safetensors checkpoints.
// Format: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "BF16"|"F16"|"F32"|"I32", "shape": [...], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {...}}, then the data section; offsets are relative to its start.
// Files are memory-mapped; everything is validated before use (header length inside the
// file, well-formed JSON, known dtype, offsets inside the data section, non-overlapping,
// byte size == dtype size x product(shape), no duplicate names) and every failure names
// the file and the tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <cstring>
#include <vector>

#include "runtime/dtype.h"

namespace phi3 {

struct TensorInfo {
  std::string name;
  std::string file;  // path of the file holding it
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping
  size_t nbytes = 0;
  int64_t numel() const;
  // Element i as a float (F32, BF16 and F16 exactly; I32 rounded beyond 2^24).
  float value(int64_t i) const {
    switch (dtype) {
      case DType::F32: {
        float f;
        std::memcpy(&f, data + 4 * i, 4);
        return f;
      }
      case DType::BF16:
      case DType::F16: {
        uint16_t h;
        std::memcpy(&h, data + 2 * i, 2);
        return dtype == DType::BF16 ? bf16_bits_to_float(h) : f16_bits_to_float(h);
      }
      case DType::I32: {
        int32_t v;
        std::memcpy(&v, data + 4 * i, 4);
        return static_cast<float>(v);
      }
    }
    return 0.0f;
  }
};

class MappedFile;  // runtime/safetensors.cpp

class SafeTensors {
 public:
  // One file.
  static SafeTensors open_file(const std::string& path);
  // A checkpoint directory: model.safetensors, or model.safetensors.index.json naming the
  // shards (every shard must exist; every tensor of the index must be in its shard).
  static SafeTensors open_dir(const std::string& dir);

  bool has(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;  // throws naming the tensor
  std::vector<std::string> names() const;                 // sorted
  size_t size() const { return tensors_.size(); }
  std::map<std::string, std::string> metadata() const { return metadata_; }

  // Converted copies (any stored dtype).
  std::vector<float> to_f32(const std::string& name) const;
  std::vector<uint16_t> to_bf16(const std::string& name) const;
  // Integer tensors (stored as I32 by tensor_i32); throws naming the tensor for other dtypes.
  std::vector<int32_t> to_i32(const std::string& name) const;

 private:
  std::vector<std::shared_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: raw little-endian bytes of `dtype`.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
TensorToWrite tensor_f32(const std::string& name, const std::vector<int64_t>& shape,
                         const std::vector<float>& values);
TensorToWrite tensor_bf16(const std::string& name, const std::vector<int64_t>& shape,
                          const std::vector<float>& values);  // rounded to nearest even
TensorToWrite tensor_i32(const std::string& name, const std::vector<int64_t>& shape,
                         const std::vector<int32_t>& values);  // stored with dtype "I32"

// Writes a safetensors file atomically (temp file + rename). Names must be unique.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace phi3
