// BPE from a Hugging Face tokenizer.json, in two kinds:
// - byte-level (Phi-4, Phi-4-mini, GPT-2 family, Qwen2/3, Llama 3, OLMoE): a ByteLevel
//   pre-tokenizer and decoder, every byte a character of the byte-level alphabet;
// - SentencePiece-style (Gemma 3, Llama 2, Mistral / Mixtral files converted from a
//   tokenizer.model): characters as symbols, spaces as "▁" (a Replace / Prepend normalizer or
//   a Metaspace pre-tokenizer), unknown characters as <0xNN> pieces (byte_fallback), and a
//   decoder chain (Replace, ByteFallback, Fuse, Strip, Metaspace) run as Hugging Face does.
// model.vocab, model.merges (strings "a b" or pairs ["a", "b"]; the rank is the position),
// model.ignore_merges, model.unk_token / fuse_unk; the normalizer and pre-tokenizer
// (runtime/normalizer.h, pretokenizer.h); BOS from a TemplateProcessing post-processor. What
// would change the ids and is not supported (dropout, subword prefixes or suffixes, other
// decoders) is refused at load, naming the field.
// Each word is merged with a priority queue of candidate pairs (lowest rank first, leftmost on
// ties, as Hugging Face's Word::merge_all), O(n log n) in the word's length; results are cached.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/normalizer.h"
#include "runtime/pretokenizer.h"
#include "runtime/tokenizer_model.h"

namespace phi3 {

class BpeModel : public TokenizerModel {
 public:
  // From the parsed tokenizer.json; `path` names it in errors.
  static std::unique_ptr<BpeModel> from_json(const nlohmann::json& j, const std::string& path);

  // One step of a SentencePiece-style decoder chain.
  struct DecodeStep {
    enum class Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind = Kind::kFuse;
    std::string a, b;        // Replace: a -> b; Strip: the character; Metaspace: the replacement
    int start = 0, stop = 0;  // Strip: copies cut at each end; Metaspace: start = 1 if a prefix was added
  };

  std::string kind() const override;
  int piece_count() const override { return static_cast<int>(pieces_.size()); }
  bool has_piece(int id) const override { return id >= 0 && id < piece_count() && present_[id]; }
  std::string piece(int id) const override { return pieces_.at(id); }
  // Byte-level: the decoded text (" short" for "Ġshort"); a piece holding part of a UTF-8
  // character shows its bytes as <0xNN>. SentencePiece-style: the piece ("▁short").
  std::string label(int id) const override;
  int piece_id(const std::string& piece) const override;
  void encode(std::string_view text, bool starts_input, std::vector<int>* out) const override;
  std::string decode(const std::vector<int>& ids, const std::map<int, std::string>& added) const override;
  std::string answer_text(const std::string& word) const override;
  int bos_id() const override { return template_bos_; }
  bool bos_by_default() const override { return template_bos_ >= 0; }

  const PreTokenizer& pre_tokenizer() const { return pre_; }
  size_t merge_count() const { return merges_.size(); }
  // The ids of one pre-tokenized (byte-level) word.
  void encode_word(const std::string& word, std::vector<int>* out) const;

 private:
  BpeModel() = default;
  static uint64_t pair_key(int a, int b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }
  void merge_word(const std::string& word, std::vector<int>* out) const;

  PreTokenizer pre_;
  std::unordered_map<std::string, int> vocab_;
  std::vector<std::string> pieces_;  // id -> piece ("" where the vocabulary has a gap)
  std::vector<bool> present_;
  std::unordered_map<uint64_t, std::pair<int, int>> merges_;  // (left id, right id) -> (rank, merged id)
  bool ignore_merges_ = false;
  bool byte_level_ = true;      // else SentencePiece-style
  bool byte_fallback_ = false;  // SentencePiece-style: unknown characters as <0xNN> pieces
  std::vector<DecodeStep> decode_steps_;  // SentencePiece-style decoder chain
  Normalizer norm_;  // tokenizer.json's normalizer (NFC for Qwen2), applied before pre_
  int unk_id_ = -1;
  bool fuse_unk_ = false;
  int template_bos_ = -1;

  static constexpr size_t kCacheCapacity = 1 << 16;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

}  // namespace phi3
