// What a tokenizer's model does below the added-token layer (runtime/tokenizer.h): encode a
// stretch of plain text, decode ids, name pieces. Two implementations: SentencePiece
// (tokenizer.model, Phi-3) and byte-level BPE (tokenizer.json, Phi-4 / Phi-4-mini / GPT-2).
#pragma once
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace phi3 {

class TokenizerModel {
 public:
  virtual ~TokenizerModel() = default;
  virtual std::string kind() const = 0;          // "SentencePiece", "byte-level BPE"
  virtual int piece_count() const = 0;           // every model id is below this
  virtual bool has_piece(int id) const = 0;      // id is one of the model's pieces
  virtual std::string piece(int id) const = 0;   // its text as the vocabulary writes it ("▁short", "Ġshort")
  // How reports show the piece: the piece itself, or (byte-level BPE) its decoded text.
  virtual std::string label(int id) const { return piece(id); }
  virtual int piece_id(const std::string& piece) const = 0;  // -1 when there is no such piece
  // Appends the ids of `text` (valid UTF-8 holding no added token); starts_input: the text
  // begins the input (SentencePiece adds its dummy prefix only there).
  virtual void encode(std::string_view text, bool starts_input, std::vector<int>* out) const = 0;
  // The text of `ids`: model pieces, or added tokens looked up in `added` (id -> content);
  // throws naming an id that is neither.
  virtual std::string decode(const std::vector<int>& ids, const std::map<int, std::string>& added) const = 0;
  // The text an answer word is encoded from, so that it becomes the word as it follows a space
  // in running text: SentencePiece with a dummy prefix marks the word start itself; without one
  // (Gemma) and byte-level BPE need the space.
  virtual std::string answer_text(const std::string& word) const = 0;
  virtual int bos_id() const = 0;                // -1 when the model names none
  virtual bool bos_by_default() const = 0;       // whether prompts start with BOS unless the config says
};

}  // namespace phi3
