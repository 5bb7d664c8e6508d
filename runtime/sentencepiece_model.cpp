// SentencePiece model: load (with a no-dummy-prefix twin), encode, decode; see sentencepiece_model.h.
#include "runtime/sentencepiece_model.h"

#include <sentencepiece_processor.h>

#include "runtime/error.h"
#include "runtime/file_util.h"

namespace phi3 {

namespace {

const char kSpaceMark[] = "\xe2\x96\x81";  // "▁" (U+2581)

// ---- minimal protobuf wire editing, to switch off NormalizerSpec.add_dummy_prefix ----
// ModelProto field 3 = normalizer_spec (message); NormalizerSpec field 3 = add_dummy_prefix.
bool read_varint(const std::string& s, size_t* pos, uint64_t* out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= s.size()) return false;
    uint8_t b = static_cast<uint8_t>(s[(*pos)++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return true;
    }
  }
  return false;
}

void write_varint(std::string* s, uint64_t v) {
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    s->push_back(static_cast<char>(v ? (b | 0x80) : b));
  } while (v);
}

// Splits a message into (field number, raw bytes of the whole field) pairs.
bool split_fields(const std::string& msg, std::vector<std::pair<uint64_t, std::string>>* out) {
  size_t pos = 0;
  while (pos < msg.size()) {
    const size_t start = pos;
    uint64_t tag = 0, len = 0;
    if (!read_varint(msg, &pos, &tag)) return false;
    switch (tag & 7) {
      case 0:
        if (!read_varint(msg, &pos, &len)) return false;
        break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2:
        if (!read_varint(msg, &pos, &len) || len > msg.size() - pos) return false;
        pos += len;
        break;
      default: return false;  // groups do not occur in sentencepiece models
    }
    if (pos > msg.size()) return false;
    out->emplace_back(tag >> 3, msg.substr(start, pos - start));
  }
  return true;
}

// Returns the serialized model with normalizer_spec.add_dummy_prefix = false.
std::string without_dummy_prefix(const std::string& model, const std::string& path) {
  std::vector<std::pair<uint64_t, std::string>> fields;
  if (!split_fields(model, &fields)) throw Error(path + ": cannot parse the SentencePiece model protobuf");
  std::string out;
  bool done = false;
  for (auto& [num, raw] : fields) {
    if (num != 3 || done) {
      out += raw;
      continue;
    }
    size_t pos = 0;
    uint64_t tag = 0, len = 0;
    read_varint(raw, &pos, &tag);
    if ((tag & 7) != 2 || !read_varint(raw, &pos, &len))
      throw Error(path + ": unexpected normalizer_spec encoding in the SentencePiece model");
    std::vector<std::pair<uint64_t, std::string>> sub;
    if (!split_fields(raw.substr(pos, len), &sub)) throw Error(path + ": cannot parse normalizer_spec");
    std::string spec;
    for (auto& [n, r] : sub)
      if (n != 3) spec += r;
    spec += std::string("\x18\x00", 2);  // field 3, varint 0
    write_varint(&out, (3u << 3) | 2);
    write_varint(&out, spec.size());
    out += spec;
    done = true;
  }
  if (!done) {
    write_varint(&out, (3u << 3) | 2);
    write_varint(&out, 2);
    out += std::string("\x18\x00", 2);
  }
  return out;
}

}  // namespace

SentencePieceModel::SentencePieceModel() = default;
SentencePieceModel::~SentencePieceModel() = default;

std::unique_ptr<SentencePieceModel> SentencePieceModel::load(const std::string& path) {
  if (!file_exists(path)) {
    if (dir_exists(path)) throw Error("tokenizer model '" + path + "' is a directory, not a file");
    throw Error("tokenizer model '" + path + "' does not exist");
  }
  std::unique_ptr<SentencePieceModel> t(new SentencePieceModel());
  t->sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st = t->sp_->Load(path);
  if (!st.ok()) {
    // SentencePiece's status names its own source line; keep only what helps the user.
    std::string why = st.ToString();
    if (why.find("ParseFromArray") != std::string::npos) why = "the file does not parse as a ModelProto";
    while (!why.empty() && (why.back() == ' ' || why.back() == '\n')) why.pop_back();
    throw Error("tokenizer model '" + path + "' is not a SentencePiece model (" + why + ")");
  }
  if (t->sp_->GetPieceSize() <= 0) throw Error("tokenizer model '" + path + "' has no pieces");
  t->sp_no_prefix_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st2 = t->sp_no_prefix_->LoadFromSerializedProto(without_dummy_prefix(t->sp_->serialized_model_proto(), path));
  if (!st2.ok()) throw Error("tokenizer model '" + path + "': cannot build the no-prefix variant: " + st2.ToString());
  std::vector<int> with, without;  // the two models encode alike when the model adds no prefix
  if (t->sp_->Encode("a", &with).ok() && t->sp_no_prefix_->Encode("a", &without).ok())
    t->dummy_prefix_ = with != without;
  return t;
}

int SentencePieceModel::piece_count() const { return sp_->GetPieceSize(); }

std::string SentencePieceModel::piece(int id) const { return sp_->IdToPiece(id); }

int SentencePieceModel::piece_id(const std::string& piece) const {
  const int id = sp_->PieceToId(piece);
  return has_piece(id) && sp_->IdToPiece(id) == piece ? id : -1;
}

int SentencePieceModel::bos_id() const { return sp_->bos_id(); }

void SentencePieceModel::encode(std::string_view text, bool starts_input, std::vector<int>* out) const {
  if (text.empty()) return;
  std::vector<int> ids;
  auto& sp = starts_input ? *sp_ : *sp_no_prefix_;
  auto st = sp.Encode(text, &ids);
  if (!st.ok()) throw Error("tokenizer: SentencePiece failed to encode: " + st.ToString());
  out->insert(out->end(), ids.begin(), ids.end());
}

std::string SentencePieceModel::decode(const std::vector<int>& ids, const std::map<int, std::string>& added) const {
  std::string out;
  bool strip_leading_space = false;
  bool first = true;
  for (int id : ids) {
    if (has_piece(id)) {
      if (sp_->IsControl(id)) continue;  // <s>, </s>: not text (and not the first piece)
      if (sp_->IsUnknown(id)) {
        out += " \xe2\x81\x87 ";  // SentencePiece's unk surface " ⁇ "
      } else if (sp_->IsByte(id)) {
        const std::string p = sp_->IdToPiece(id);  // "<0xNN>"
        out.push_back(static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
      } else {
        std::string p = sp_->IdToPiece(id);
        if (first && dummy_prefix_ && p.compare(0, 3, kSpaceMark) == 0) strip_leading_space = true;  // the dummy prefix
        for (size_t k = 0; k < p.size();) {
          if (p.compare(k, 3, kSpaceMark) == 0) {
            out.push_back(' ');
            k += 3;
          } else {
            out.push_back(p[k++]);
          }
        }
      }
    } else {
      auto a = added.find(id);
      if (a == added.end())
        throw Error("tokenizer: cannot decode token id " + std::to_string(id) + " (not a piece or added token)");
      out += a->second;
    }
    first = false;
  }
  if (strip_leading_space && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

}  // namespace phi3
