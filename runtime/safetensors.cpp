// safetensors reader (mmap, fully validated) and writer (atomic). See runtime/safetensors.h.
#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/json_util.h"

namespace phi3 {

using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // real headers are ~15 KB

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// JSON with duplicate keys rejected (nlohmann keeps the last duplicate silently).
// Returns the parsed value; throws naming `source` on syntax errors and duplicates.
json parse_json_strict(const char* begin, const char* end, const std::string& source,
                       const std::string& what) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string top_key;                      // last key of the outermost object, for context
  std::string dup;
  size_t dup_depth = 0;
  std::string dup_context;
  json::parser_callback_t cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) -> bool {
    if (ev == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == json::parse_event_t::key && !keys.empty()) {
      const std::string k = parsed.get<std::string>();
      if (!keys.back().insert(k).second && dup.empty()) {
        dup = k;
        dup_depth = keys.size();
        dup_context = top_key;
      }
      if (keys.size() == 1) top_key = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    throw Error(source + ": " + what + " is not valid JSON: " + e.what());
  }
  if (!dup.empty()) {
    if (dup_depth == 1) throw Error(source + ": duplicate key '" + dup + "' in the " + what);
    throw Error(source + ": duplicate key '" + dup + "' inside entry '" + dup_context + "' of the " + what);
  }
  return j;
}

bool json_is_int(const json& v) { return v.is_number_integer() || v.is_number_unsigned(); }

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "BF16") *out = DType::BF16;
  else if (s == "F16") *out = DType::F16;
  else if (s == "I32") *out = DType::I32;
  else return false;
  return true;
}

}  // namespace

// A read-only memory mapping of a whole file; unmapped on destruction.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      throw Error(path + ": cannot stat: " + std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error(path + ": not a regular file");
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int e = errno;
        ::close(fd);
        throw Error(path + ": cannot mmap: " + std::strerror(e));
      }
      data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);  // the mapping stays valid
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

struct LoadedFile {
  std::shared_ptr<MappedFile> file;
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

// Maps and validates one safetensors file.
LoadedFile load_file(const std::string& path) {
  if (!file_exists(path)) {
    if (dir_exists(path)) throw Error(path + ": is a directory, not a safetensors file");
    throw Error(path + ": safetensors file does not exist");
  }
  LoadedFile out;
  out.file = std::make_shared<MappedFile>(path);
  const uint8_t* base = out.file->data();
  const uint64_t fsize = out.file->size();
  if (fsize < 8)
    throw Error(path + ": file is " + std::to_string(fsize) +
                " bytes, too short for a safetensors header (at least 8 bytes)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];  // u64 little-endian
  if (n > fsize - 8)
    throw Error(path + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                std::to_string(fsize) + " bytes, so at most " + std::to_string(fsize - 8) + ")");
  if (n > kMaxHeaderBytes)
    throw Error(path + ": header length " + std::to_string(n) + " exceeds the " +
                std::to_string(kMaxHeaderBytes) + "-byte limit");
  if (n < 2) throw Error(path + ": header length " + std::to_string(n) + " is too short for a JSON object");
  const char* htext = reinterpret_cast<const char*>(base + 8);
  json header = parse_json_strict(htext, htext + n, path, "header");
  if (!header.is_object())
    throw Error(path + ": header is not a JSON object (got " + std::string(header.type_name()) + ")");

  const uint64_t data_size = fsize - 8 - n;
  const uint8_t* data = base + 8 + n;
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object())
        throw Error(path + ": __metadata__ is not a JSON object (got " + std::string(v.type_name()) + ")");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw Error(path + ": __metadata__ entry '" + m.key() + "' is not a string (got " +
                      std::string(m.value().type_name()) + ")");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (name.empty()) throw Error(path + ": a tensor has an empty name");
    if (!v.is_object()) throw Error(where + ": entry is not a JSON object (got " + std::string(v.type_name()) + ")");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!v.contains(key)) throw Error(where + ": missing '" + key + "'");

    TensorInfo t;
    t.name = name;
    t.file = path;
    const json& jd = v["dtype"];
    if (!jd.is_string()) throw Error(where + ": dtype is not a string (got " + std::string(jd.type_name()) + ")");
    if (!parse_dtype(jd.get<std::string>(), &t.dtype))
      throw Error(where + ": unsupported dtype '" + jd.get<std::string>() + "' (supported: F32, BF16, F16, I32)");

    const json& js = v["shape"];
    if (!js.is_array()) throw Error(where + ": shape is not an array (got " + std::string(js.type_name()) + ")");
    for (const json& d : js) {
      if (!json_is_int(d))
        throw Error(where + ": shape " + json_brief(js) + " has a non-integer entry " + json_brief(d));
      if (d.is_number_integer() && d.get<int64_t>() < 0)
        throw Error(where + ": shape " + json_brief(js) + " has a negative entry " + json_brief(d));
      if (d.is_number_unsigned() && d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        throw Error(where + ": shape " + json_brief(js) + " has an entry that is too large");
      t.shape.push_back(d.get<int64_t>());
    }
    // numel * dtype size without overflow
    unsigned __int128 need = dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      need *= static_cast<uint64_t>(d);
      if (need > static_cast<unsigned __int128>(UINT64_MAX))
        throw Error(where + ": shape " + shape_str(t.shape) + " is too large (byte size overflows)");
    }

    const json& jo = v["data_offsets"];
    if (!jo.is_array() || jo.size() != 2)
      throw Error(where + ": data_offsets is not an array of two integers (got " + json_brief(jo) + ")");
    for (const json& o : jo)
      if (!json_is_int(o) || (o.is_number_integer() && o.get<int64_t>() < 0))
        throw Error(where + ": data_offsets " + json_brief(jo) + " must be two non-negative integers");
    const uint64_t b = jo[0].get<uint64_t>(), e = jo[1].get<uint64_t>();
    const std::string offs = "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "]";
    if (b > e) throw Error(where + ": " + offs + " are reversed (begin > end)");
    if (e > data_size)
      throw Error(where + ": " + offs + " run past the end of the data section (" + std::to_string(data_size) +
                  " bytes)");
    if (static_cast<unsigned __int128>(e - b) != need)
      throw Error(where + ": " + offs + " give " + std::to_string(e - b) + " bytes but " + dtype_name(t.dtype) +
                  " " + shape_str(t.shape) + " needs " + std::to_string(static_cast<uint64_t>(need)));
    t.data = data + b;
    t.nbytes = static_cast<size_t>(e - b);
    auto ins = out.tensors.emplace(name, std::move(t));
    ranges.push_back({b, e, &ins.first->first});
  }

  // No two tensors may share bytes (empty tensors occupy none).
  std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) {
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  const Range* prev = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;
    if (prev && r.begin < prev->end)
      throw Error(path + ": tensors '" + *prev->name + "' [" + std::to_string(prev->begin) + ", " +
                  std::to_string(prev->end) + "] and '" + *r.name + "' [" + std::to_string(r.begin) + ", " +
                  std::to_string(r.end) + "] overlap");
    if (!prev || r.end > prev->end) prev = &r;
  }
  return out;
}

}  // namespace

SafeTensors SafeTensors::open_file(const std::string& path) {
  LoadedFile f = load_file(path);
  SafeTensors st;
  st.files_.push_back(f.file);
  st.tensors_ = std::move(f.tensors);
  st.metadata_ = std::move(f.metadata);
  return st;
}

SafeTensors SafeTensors::open_dir(const std::string& dir) {
  if (!dir_exists(dir)) throw Error("model directory '" + dir + "' does not exist");
  const std::string single = path_join(dir, "model.safetensors");
  const std::string index_path = path_join(dir, "model.safetensors.index.json");
  if (file_exists(single)) return open_file(single);  // transformers prefers the single file too
  if (!file_exists(index_path))
    throw Error("'" + dir + "' has neither model.safetensors nor model.safetensors.index.json");

  const std::string text = read_text_file(index_path, "safetensors index");
  json index = parse_json_strict(text.data(), text.data() + text.size(), index_path, "index");
  if (!index.is_object())
    throw Error(index_path + ": index is not a JSON object (got " + std::string(index.type_name()) + ")");
  if (!index.contains("weight_map")) throw Error(index_path + ": missing 'weight_map'");
  const json& wm = index["weight_map"];
  if (!wm.is_object())
    throw Error(index_path + ": 'weight_map' is not a JSON object (got " + std::string(wm.type_name()) + ")");

  SafeTensors st;
  if (index.contains("metadata") && !index["metadata"].is_null()) {
    const json& md = index["metadata"];
    if (!md.is_object())
      throw Error(index_path + ": 'metadata' is not a JSON object (got " + std::string(md.type_name()) + ")");
    for (auto it = md.begin(); it != md.end(); ++it)
      st.metadata_[it.key()] = it.value().is_string() ? it.value().get<std::string>() : json_brief(it.value(), 4096);
  }

  std::map<std::string, std::string> first_tensor_of_shard;  // shard -> a tensor naming it
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it.value().is_string())
      throw Error(index_path + ": weight_map entry '" + it.key() + "' is not a file name (got " +
                  std::string(it.value().type_name()) + ")");
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard[0] == '/' || shard.find("..") != std::string::npos)
      throw Error(index_path + ": weight_map entry '" + it.key() + "' names '" + shard +
                  "', which is not a file name inside the model directory");
    first_tensor_of_shard.emplace(shard, it.key());
  }
  for (const auto& [shard, tensor] : first_tensor_of_shard) {
    const std::string shard_path = path_join(dir, shard);
    if (!file_exists(shard_path))
      throw Error(index_path + ": shard '" + shard + "' (holding tensor '" + tensor + "') does not exist");
  }

  std::map<std::string, std::string> shard_of;  // tensor -> shard that holds it
  for (const auto& entry : first_tensor_of_shard) {
    const std::string& shard = entry.first;
    LoadedFile f = load_file(path_join(dir, shard));
    st.files_.push_back(f.file);
    for (auto& [name, info] : f.tensors) {
      auto prev = shard_of.find(name);
      if (prev != shard_of.end())
        throw Error(index_path + ": tensor '" + name + "' is in two shards: '" + prev->second + "' and '" + shard +
                    "'");
      shard_of[name] = shard;
      st.tensors_.emplace(name, std::move(info));
    }
    for (auto& [k, v] : f.metadata) st.metadata_.emplace(k, v);
  }
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    const std::string shard = it.value().get<std::string>();
    auto found = shard_of.find(it.key());
    if (found == shard_of.end() || found->second != shard)
      throw Error(index_path + ": tensor '" + it.key() + "' is mapped to shard '" + shard +
                  "', which does not contain it");
  }
  return st;
}

bool SafeTensors::has(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorInfo& SafeTensors::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    std::string where = files_.empty() ? "an empty checkpoint" : files_[0]->path();
    if (files_.size() > 1) where += " and " + std::to_string(files_.size() - 1) + " more shard(s)";
    throw Error("tensor '" + name + "' not found in " + where);
  }
  return it->second;
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

std::vector<float> SafeTensors::to_f32(const std::string& name) const {
  const TensorInfo& t = get(name);
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  if (t.dtype == DType::F32) {
    if (n) std::memcpy(out.data(), t.data, n * 4);
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = t.value(static_cast<int64_t>(i));
  }
  return out;
}

std::vector<uint16_t> SafeTensors::to_bf16(const std::string& name) const {
  const TensorInfo& t = get(name);
  if (t.dtype == DType::BF16) {
    std::vector<uint16_t> out(static_cast<size_t>(t.numel()));
    if (!out.empty()) std::memcpy(out.data(), t.data, out.size() * 2);
    return out;
  }
  std::vector<float> f = to_f32(name);  // exact for F16 and F32; I32 rounds beyond 2^24
  std::vector<uint16_t> out(f.size());
  for (size_t i = 0; i < f.size(); ++i) out[i] = float_to_bf16_bits(f[i]);
  return out;
}

std::vector<int32_t> SafeTensors::to_i32(const std::string& name) const {
  const TensorInfo& t = get(name);
  if (t.dtype != DType::I32)
    throw Error(t.file + ": tensor '" + name + "' is " + dtype_name(t.dtype) + ", not I32");
  std::vector<int32_t> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) std::memcpy(out.data(), t.data, out.size() * 4);
  return out;
}

// ---- writer ------------------------------------------------------------------------

TensorToWrite tensor_f32(const std::string& name, const std::vector<int64_t>& shape,
                         const std::vector<float>& values) {
  TensorToWrite t{name, DType::F32, shape, std::vector<uint8_t>(values.size() * 4)};
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

TensorToWrite tensor_bf16(const std::string& name, const std::vector<int64_t>& shape,
                          const std::vector<float>& values) {
  TensorToWrite t{name, DType::BF16, shape, std::vector<uint8_t>(values.size() * 2)};
  for (size_t i = 0; i < values.size(); ++i) {
    uint16_t h = float_to_bf16_bits(values[i]);
    std::memcpy(t.bytes.data() + 2 * i, &h, 2);
  }
  return t;
}

TensorToWrite tensor_i32(const std::string& name, const std::vector<int64_t>& shape,
                         const std::vector<int32_t>& values) {
  TensorToWrite t{name, DType::I32, shape, std::vector<uint8_t>(values.size() * 4)};
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  for (const TensorToWrite& t : tensors) {
    const std::string where = path + ": tensor '" + t.name + "'";
    if (t.name.empty()) throw Error(path + ": cannot write a tensor with an empty name");
    if (t.name == "__metadata__") throw Error(path + ": '__metadata__' is reserved, not a tensor name");
    if (!seen.insert(t.name).second) throw Error(where + ": name given twice");
    unsigned __int128 need = dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) throw Error(where + ": shape " + shape_str(t.shape) + " has a negative entry");
      need *= static_cast<uint64_t>(d);
      if (need > static_cast<unsigned __int128>(SIZE_MAX)) throw Error(where + ": shape is too large");
    }
    if (static_cast<unsigned __int128>(t.bytes.size()) != need)
      throw Error(where + ": " + std::to_string(t.bytes.size()) + " bytes given but " + dtype_name(t.dtype) + " " +
                  shape_str(t.shape) + " needs " + std::to_string(static_cast<uint64_t>(need)));
  }
  // Widest dtypes first, so that with an 8-aligned data section every tensor is aligned
  // to its element size (the data section itself has no gaps, as the format requires).
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });

  json header = json::object();
  if (!metadata.empty()) {
    json md = json::object();
    for (const auto& [k, v] : metadata) md[k] = v;
    header["__metadata__"] = md;
  }
  uint64_t offset = 0;
  for (const TensorToWrite* t : order) {
    header[t->name] = {{"dtype", dtype_name(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->bytes.size()}}};
    offset += t->bytes.size();
  }
  std::string htext = header.dump();
  while (htext.size() % 8 != 0) htext.push_back(' ');

  std::string content;
  content.reserve(8 + htext.size() + offset);
  const uint64_t n = htext.size();
  for (int i = 0; i < 8; ++i) content.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  content += htext;
  for (const TensorToWrite* t : order) content.append(reinterpret_cast<const char*>(t->bytes.data()), t->bytes.size());
  write_file_atomic(path, content);
}

}  // namespace phi3
