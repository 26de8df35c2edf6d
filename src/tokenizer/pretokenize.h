// Pre-tokenization: splitting text into the pieces that BPE encodes one by
// one, by a regular expression such as GPT-2's or cl100k's.
//
// The patterns of GPT-2 and of cl100k / Llama 3 have hand-written matchers
// that give exactly the pieces tiktoken's regex engine gives (leftmost-first
// alternation, \s as Unicode White_Space), many times faster. Any other
// pattern runs on PCRE2 with its JIT, with \s rewritten to the same
// White_Space set. Bytes that are not valid UTF-8 match nothing in these
// patterns; each becomes a piece of its own, so the pieces always
// concatenate back to the input.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace borealis {

inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kCl100kPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class PreTokenizer {
 public:
  // Throws Error (naming `where`) when the pattern is not a valid regex.
  static std::unique_ptr<PreTokenizer> create(std::string_view pattern,
                                              const std::string& where = "pattern");
  // The PCRE2 matcher even for known patterns (to cross-check the fast ones).
  static std::unique_ptr<PreTokenizer> create_regex(std::string_view pattern,
                                                    const std::string& where = "pattern");
  // The whole text as one piece (no pre-tokenizer).
  static std::unique_ptr<PreTokenizer> whole_text();
  // A new piece before every occurrence of `delimiter` (Metaspace's split).
  static std::unique_ptr<PreTokenizer> split_before(std::string delimiter);
  virtual ~PreTokenizer() = default;

  // Appends the pieces of `text` to `pieces` (views into `text`).
  void split(std::string_view text, std::vector<std::string_view>& pieces) const {
    split(text, 0, pieces, static_cast<std::size_t>(-1));
  }
  // Appends the pieces of text[from..) but at most `max_pieces` of them and
  // returns where the next piece starts (text.size() at the end). `from` must
  // be 0 or a value returned before for the same text; the pieces are those
  // of one whole split, so large texts can be split in batches that stay in
  // cache.
  virtual std::size_t split(std::string_view text, std::size_t from,
                            std::vector<std::string_view>& pieces,
                            std::size_t max_pieces) const = 0;

  const std::string& pattern() const { return pattern_; }
  // "gpt2", "cl100k", "pcre2", "none" or "metaspace".
  virtual const char* engine() const = 0;

 protected:
  explicit PreTokenizer(std::string_view pattern) : pattern_(pattern) {}

 private:
  std::string pattern_;
};

}  // namespace borealis
