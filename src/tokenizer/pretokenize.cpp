#include "tokenizer/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include <array>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace borealis {

namespace {

using unicode::classify;

// One character of the input: its length in bytes and class; invalid bytes
// are characters of length 1 that belong to no class.
struct Ch {
  std::uint32_t len;
  std::uint8_t cls;
  bool valid;
  bool letter() const { return valid && (cls & unicode::kLetter); }
  bool number() const { return valid && (cls & unicode::kNumber); }
  bool space() const { return valid && (cls & unicode::kSpace); }
  // [^\s\p{L}\p{N}]
  bool other() const {
    return valid && !(cls & (unicode::kLetter | unicode::kNumber | unicode::kSpace));
  }
};

class Cursor {
 public:
  explicit Cursor(std::string_view text)
      : s_(reinterpret_cast<const unsigned char*>(text.data())), n_(text.size()) {}

  std::size_t size() const { return n_; }
  unsigned char byte(std::size_t i) const { return s_[i]; }

  Ch at(std::size_t i) const {
    const unsigned char c = s_[i];
    if (c < 0x80) return {1, ascii_class(c), true};
    std::uint32_t cp = 0;
    const std::size_t len = unicode::decode_utf8(s_ + i, n_ - i, cp);
    if (len == 0) return {1, 0, false};
    return {static_cast<std::uint32_t>(len), classify(cp), true};
  }

  // Advances past characters satisfying pred; returns the end.
  template <class Pred>
  std::size_t skip(std::size_t i, Pred pred) const {
    while (i < n_) {
      const Ch c = at(i);
      if (!pred(c)) break;
      i += c.len;
    }
    return i;
  }

 private:
  static std::uint8_t ascii_class(unsigned char c) {
    static const auto table = [] {
      std::array<std::uint8_t, 128> t{};
      for (int i = 0; i < 128; ++i) t[i] = classify(static_cast<std::uint32_t>(i));
      return t;
    }();
    return table[c];
  }

  const unsigned char* s_;
  std::size_t n_;
};

bool is_letter(const Ch& c) {
  return c.letter();
}
bool is_number(const Ch& c) {
  return c.number();
}
bool is_space(const Ch& c) {
  return c.space();
}
bool is_other(const Ch& c) {
  return c.other();
}

// \s+(?!\S) | \s+ for a whitespace run [i, j): the run, less its last
// character when a non-space character follows and the run is longer than one.
std::size_t end_of_space_run(const Cursor& cur, std::size_t i, std::size_t j) {
  if (j == cur.size() || !cur.at(j).valid) return j;
  std::size_t last = i;  // start of the run's last character
  for (std::size_t p = i; p < j; p += cur.at(p).len) last = p;
  return last > i ? last : j;
}

// A pre-tokenizer from a Matcher whose match(cursor, i) returns where the
// piece starting at i ends.
template <class Matcher>
class HandWrittenPreTokenizer final : public PreTokenizer {
 public:
  explicit HandWrittenPreTokenizer(std::string_view pattern) : PreTokenizer(pattern) {}
  const char* engine() const override { return Matcher::kEngine; }

  std::size_t split(std::string_view text, std::size_t from, std::vector<std::string_view>& pieces,
                    std::size_t max_pieces) const override {
    const Cursor cur(text);
    std::size_t i = from;
    for (std::size_t n = 0; i < cur.size() && n < max_pieces; ++n) {
      const std::size_t end = Matcher::match(cur, i);
      pieces.push_back(text.substr(i, end - i));
      i = end;
    }
    return i;
  }
};

// kGpt2Pattern.
struct Gpt2Matcher {
  static constexpr const char* kEngine = "gpt2";

  static std::size_t match(const Cursor& cur, std::size_t i) {
    const std::size_t n = cur.size();
    const Ch c = cur.at(i);
    if (!c.valid) return i + 1;
    if (cur.byte(i) == '\'' && i + 1 < n) {  // 's|'t|'re|'ve|'m|'ll|'d
      const unsigned char b = cur.byte(i + 1);
      if (b == 's' || b == 't' || b == 'm' || b == 'd') return i + 2;
      if (i + 2 < n) {
        const unsigned char b2 = cur.byte(i + 2);
        if ((b == 'r' && b2 == 'e') || (b == 'v' && b2 == 'e') || (b == 'l' && b2 == 'l'))
          return i + 3;
      }
    }
    std::size_t p = i;
    Ch first = c;
    if (cur.byte(i) == ' ' && i + 1 < n) {  // the optional leading space
      const Ch next = cur.at(i + 1);
      if (next.letter() || next.number() || next.other()) {
        p = i + 1;
        first = next;
      }
    }
    if (first.letter()) return cur.skip(p, is_letter);
    if (first.number()) return cur.skip(p, is_number);
    if (first.other()) return cur.skip(p, is_other);
    return end_of_space_run(cur, i, cur.skip(i, is_space));
  }
};

// kCl100kPattern (also Llama 3's).
struct Cl100kMatcher {
  static constexpr const char* kEngine = "cl100k";

  // Length of the case-insensitive contraction at i ('s, 'T, 'Re, 'ſ ...), or 0.
  static std::size_t contraction(const Cursor& cur, std::size_t i) {
    const std::size_t n = cur.size();
    if (cur.byte(i) != '\'' || i + 1 >= n) return 0;
    const unsigned char b = cur.byte(i + 1) | 0x20;  // ASCII lower case
    if (b == 's' || b == 't' || b == 'm' || b == 'd') return 2;
    // U+017F LATIN SMALL LETTER LONG S case-folds to 's'.
    if (cur.byte(i + 1) == 0xC5 && i + 2 < n && cur.byte(i + 2) == 0xBF) return 3;
    if (i + 2 < n) {
      const unsigned char b2 = cur.byte(i + 2) | 0x20;
      if ((b == 'r' && b2 == 'e') || (b == 'v' && b2 == 'e') || (b == 'l' && b2 == 'l')) return 3;
    }
    return 0;
  }

  static std::size_t match(const Cursor& cur, std::size_t i) {
    const std::size_t n = cur.size();
    const Ch c = cur.at(i);
    if (!c.valid) return i + 1;
    if (const std::size_t len = contraction(cur, i)) return i + len;
    const unsigned char b = cur.byte(i);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (c.letter()) return cur.skip(i, is_letter);
    if (b != '\r' && b != '\n' && !c.number() && i + c.len < n && cur.at(i + c.len).letter()) {
      return cur.skip(i + c.len, is_letter);
    }
    // \p{N}{1,3}
    if (c.number()) {
      std::size_t p = i;
      for (int k = 0; k < 3 && p < n; ++k) {
        const Ch d = cur.at(p);
        if (!d.number()) break;
        p += d.len;
      }
      return p;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    std::size_t p = i;
    if (b == ' ' && i + 1 < n && cur.at(i + 1).other()) p = i + 1;
    if (cur.at(p).other()) {
      p = cur.skip(p, is_other);
      while (p < n && (cur.byte(p) == '\r' || cur.byte(p) == '\n')) ++p;
      return p;
    }
    // \s*[\r\n]+ : up to the last line break of the whitespace run
    const std::size_t j = cur.skip(i, is_space);
    for (std::size_t q = j; q > i; --q) {
      if (cur.byte(q - 1) == '\r' || cur.byte(q - 1) == '\n') return q;
    }
    return end_of_space_run(cur, i, j);
  }
};

// \s and \S as Unicode White_Space, the meaning tiktoken's engine gives them
// (PCRE2's own \s differs for U+0085 and a few others).
constexpr std::string_view kSpaceSet =
    R"(\t-\r\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";

std::string rewrite_spaces(std::string_view pattern, const std::string& where) {
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      if (e == 's') {
        out += in_class ? std::string(kSpaceSet) : "[" + std::string(kSpaceSet) + "]";
      } else if (e == 'S') {
        if (in_class) throw Error("\\S inside a character class is not supported", where);
        out += "[^" + std::string(kSpaceSet) + "]";
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // literal ]
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

class RegexPreTokenizer final : public PreTokenizer {
 public:
  RegexPreTokenizer(std::string_view pattern, const std::string& where) : PreTokenizer(pattern) {
    const std::string rewritten = rewrite_spaces(pattern, where);
    int code = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(code, message, sizeof message);
      throw Error(fmt::format("invalid regular expression at offset {}: {}", offset,
                              reinterpret_cast<const char*>(message)),
                  where);
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable
  }
  ~RegexPreTokenizer() override { pcre2_code_free(code_); }
  RegexPreTokenizer(const RegexPreTokenizer&) = delete;
  RegexPreTokenizer& operator=(const RegexPreTokenizer&) = delete;

  const char* engine() const override { return "pcre2"; }

  std::size_t split(std::string_view text, std::size_t from, std::vector<std::string_view>& pieces,
                    std::size_t max_pieces) const override {
    // Match data per call: split() may run on many threads at once.
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    const std::size_t stop =
        max_pieces > SIZE_MAX - pieces.size() ? SIZE_MAX : pieces.size() + max_pieces;
    std::size_t pos = from;
    while (pos < text.size() && pieces.size() < stop) {
      const int rc = pcre2_match(code_, subject, text.size(), pos, 0, md, nullptr);
      std::size_t start = text.size();
      std::size_t end = text.size();
      if (rc > 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        start = ov[0];
        end = ov[1];
      }
      emit_gap(text, pos, start, pieces);
      if (start == text.size()) {  // no match in the rest: the gap ends the text
        pos = text.size();
        break;
      }
      if (end == start) {  // empty match: take one character as a piece of its own
        const Cursor cur(text);
        end = start + cur.at(start).len;
      }
      pieces.push_back(text.substr(start, end - start));
      pos = end;
    }
    pcre2_match_data_free(md);
    return pos;
  }

 private:
  // Text no match covers: runs of valid UTF-8 stay together, invalid bytes
  // become pieces of one byte (as in the hand-written matchers).
  static void emit_gap(std::string_view text, std::size_t from, std::size_t to,
                       std::vector<std::string_view>& pieces) {
    const Cursor cur(text);
    std::size_t run = from;
    for (std::size_t p = from; p < to;) {
      const Ch c = cur.at(p);
      if (!c.valid) {
        if (run < p) pieces.push_back(text.substr(run, p - run));
        pieces.push_back(text.substr(p, 1));
        run = p + 1;
      }
      p += c.len;
    }
    if (run < to) pieces.push_back(text.substr(run, to - run));
  }

  pcre2_code* code_ = nullptr;
};

class WholeText final : public PreTokenizer {
 public:
  WholeText() : PreTokenizer("") {}
  const char* engine() const override { return "none"; }
  std::size_t split(std::string_view text, std::size_t from, std::vector<std::string_view>& pieces,
                    std::size_t max_pieces) const override {
    if (from < text.size() && max_pieces > 0) {
      pieces.push_back(text.substr(from));
      return text.size();
    }
    return from;
  }
};

class SplitBefore final : public PreTokenizer {
 public:
  explicit SplitBefore(std::string delimiter)
      : PreTokenizer(delimiter), delimiter_(std::move(delimiter)) {}
  const char* engine() const override { return "metaspace"; }
  std::size_t split(std::string_view text, std::size_t from, std::vector<std::string_view>& pieces,
                    std::size_t max_pieces) const override {
    std::size_t start = from;
    for (std::size_t n = 0; start < text.size() && n < max_pieces; ++n) {
      std::size_t next = text.find(delimiter_, start + 1);
      if (next == std::string_view::npos) next = text.size();
      pieces.push_back(text.substr(start, next - start));
      start = next;
    }
    return start;
  }

 private:
  std::string delimiter_;
};

}  // namespace

std::unique_ptr<PreTokenizer> PreTokenizer::whole_text() {
  return std::make_unique<WholeText>();
}

std::unique_ptr<PreTokenizer> PreTokenizer::split_before(std::string delimiter) {
  return std::make_unique<SplitBefore>(std::move(delimiter));
}

std::unique_ptr<PreTokenizer> PreTokenizer::create(std::string_view pattern,
                                                   const std::string& where) {
  if (pattern == kGpt2Pattern)
    return std::make_unique<HandWrittenPreTokenizer<Gpt2Matcher>>(pattern);
  if (pattern == kCl100kPattern)
    return std::make_unique<HandWrittenPreTokenizer<Cl100kMatcher>>(pattern);
  return create_regex(pattern, where);
}

std::unique_ptr<PreTokenizer> PreTokenizer::create_regex(std::string_view pattern,
                                                         const std::string& where) {
  return std::make_unique<RegexPreTokenizer>(pattern, where);
}

}  // namespace borealis
