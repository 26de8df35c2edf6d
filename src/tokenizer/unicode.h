// Unicode facts the pre-tokenizers need: UTF-8 decoding that tolerates invalid
// bytes, and per-code-point classes (letter subcategories, mark, number,
// White_Space) as used by the \p{..} and \s of tiktoken's patterns.
#pragma once

#include <cstddef>
#include <cstdint>

namespace borealis::unicode {

enum Class : std::uint8_t {
  kLu = 1,       // uppercase letter
  kLl = 2,       // lowercase letter
  kLt = 4,       // titlecase letter
  kLm = 8,       // modifier letter
  kLo = 16,      // other letter
  kMark = 32,    // \p{M}
  kNumber = 64,  // \p{N}
  kSpace = 128,  // White_Space
  kLetter = kLu | kLl | kLt | kLm | kLo,
};

// Class flags of a code point (0 for anything else, e.g. punctuation).
std::uint8_t classify(std::uint32_t cp);

// Decodes one UTF-8 sequence at s[0..n). Returns its length (1-4) and sets cp,
// or returns 0 for an invalid or truncated sequence (overlong forms,
// surrogates and values above U+10FFFF are invalid).
inline std::size_t decode_utf8(const unsigned char* s, std::size_t n, std::uint32_t& cp) {
  const unsigned c = s[0];
  if (c < 0x80) {
    cp = c;
    return 1;
  }
  if (c < 0xC2) return 0;
  if (c < 0xE0) {
    if (n < 2 || (s[1] & 0xC0) != 0x80) return 0;
    cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    return 2;
  }
  if (c < 0xF0) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
    cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    if (cp < 0x10000 || cp > 0x10FFFF) return 0;
    return 4;
  }
  return 0;
}

// Appends the UTF-8 encoding of cp to out; returns the number of bytes.
std::size_t encode_utf8(std::uint32_t cp, char* out);

}  // namespace borealis::unicode
