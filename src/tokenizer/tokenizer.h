// A tokenizer: pre-tokenizer + byte-level BPE + special tokens.
//
//   Tokenizer tok = Tokenizer::load("cl100k_base.json");
//   std::vector<std::uint32_t> ids = tok.encode("Hello world");
//   std::string text = tok.decode(ids);             // the exact bytes
//
// load() reads GPT-2 encoder.json + vocab.bpe, tiktoken encodings (the JSON
// form with pattern, special tokens and ranks, or a .tiktoken rank file) and
// Hugging Face tokenizer.json files with a byte-level BPE model. What a file
// asks for and Borealis does not implement is an Error naming the feature and
// its JSON path: never a silently different encoding.
//
// Special tokens are recognised in text only when the caller allows it;
// otherwise "<|endoftext|>" is encoded as ordinary text. Added tokens that
// are not special (Hugging Face "special": false) are always recognised.
// Encoding is const and thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/pretokenize.h"

namespace borealis {

struct AddedToken {
  std::string text;
  std::uint32_t id;
  bool special;  // matched only when allowed
};

// Text changes before pre-tokenization, applied in order to each stretch of
// text between added tokens (Hugging Face normalizers and Metaspace).
struct NormalizeStep {
  enum class Kind { Prepend, Replace } kind;
  std::string text;         // Prepend: what to prepend; Replace: the pattern
  std::string replacement;  // Replace only
  bool if_missing = false;  // Prepend only when the text does not start with it already
  bool first_only = false;  // Prepend only at the very start of the input
};

// How token ids become text, beyond concatenating token bytes: per-token
// replacements (e.g. "▁" -> " "), "<0xAB>" byte-fallback tokens as bytes,
// and leading characters stripped from the result.
struct DecodeSteps {
  std::vector<std::pair<std::string, std::string>> replace;
  bool byte_fallback = false;
  std::size_t strip_start = 0;
  char strip_char = ' ';
};

class Tokenizer {
 public:
  Tokenizer(BpeModel model, std::unique_ptr<PreTokenizer> pre, std::vector<AddedToken> added,
            std::string source_format);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Detects the format from the path (a directory with encoder.json and
  // vocab.bpe, *.tiktoken, or a JSON file of any of the other kinds). Parsed
  // tokenizers are cached in binary form in `cache_dir` (tokenizer/cache.h;
  // by default default_tokenizer_cache_dir(), empty for no cache).
  static Tokenizer load(const std::filesystem::path& path);
  static Tokenizer load(const std::filesystem::path& path, const std::filesystem::path& cache_dir);

  std::vector<std::uint32_t> encode(std::string_view text, bool allow_special = false) const;
  // Appends to `out`.
  void encode(std::string_view text, std::vector<std::uint32_t>& out,
              bool allow_special = false) const;

  // Throws Error for an id outside the vocabulary.
  std::string decode(std::span<const std::uint32_t> ids) const;
  // The bytes of one token (for added tokens, their text).
  std::string_view token_bytes(std::uint32_t id) const;

  // One more than the largest id, added tokens included.
  std::size_t vocab_size() const { return vocab_size_; }
  const BpeModel& model() const { return model_; }
  const PreTokenizer& pre_tokenizer() const { return *pre_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  std::optional<std::uint32_t> added_token_id(std::string_view text) const;
  // The end-of-document token: <|endoftext|>, <|end_of_text|>, </s> or <eos>, if present.
  std::optional<std::uint32_t> eod_id() const;
  const std::string& source_format() const { return source_format_; }
  void set_normalizer(std::vector<NormalizeStep> steps) { normalize_ = std::move(steps); }
  const std::vector<NormalizeStep>& normalizer() const { return normalize_; }
  void set_decoder(const DecodeSteps& steps);

 private:
  friend struct TokenizerCodec;  // the binary cache (tokenizer/cache.cpp)

  void encode_ordinary(std::string_view text, bool at_start, std::vector<std::uint32_t>& out) const;
  // The earliest added token in text[from..) that may match; npos if none.
  std::size_t find_added(std::string_view text, std::size_t from, bool allow_special,
                         const AddedToken*& found) const;

  BpeModel model_;
  std::unique_ptr<PreTokenizer> pre_;
  std::vector<AddedToken> added_;  // longest first, so overlapping texts match the longest
  std::size_t vocab_size_ = 0;
  std::string source_format_;
  std::vector<NormalizeStep> normalize_;
  std::vector<std::string> decoded_;  // per model token when decoding is more than its bytes
  DecodeSteps decode_;
  bool first_byte_[256] = {};  // first bytes of added tokens
};

}  // namespace borealis
