#include "tokenizer/unicode.h"

#include <algorithm>
#include <iterator>
#include <vector>

namespace borealis::unicode {

namespace {

struct Range {
  std::uint32_t first;
  std::uint8_t flags;
};

constexpr Range kRanges[] = {
#include "tokenizer/unicode_tables.inc"
};

// White_Space (PropList.txt), the definition of \s in tiktoken's regex engine.
constexpr std::uint32_t kWhiteSpace[] = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,
                                         0xA0,   0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
                                         0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028,
                                         0x2029, 0x202F, 0x205F, 0x3000};

// One byte per code point, built once: lookups are a single load.
const std::vector<std::uint8_t>& table() {
  static const std::vector<std::uint8_t> t = [] {
    std::vector<std::uint8_t> v(0x110000, 0);
    for (std::size_t i = 0; i < std::size(kRanges); ++i) {
      const std::uint32_t end = i + 1 < std::size(kRanges) ? kRanges[i + 1].first : 0x110000;
      std::fill(v.begin() + kRanges[i].first, v.begin() + end, kRanges[i].flags);
    }
    for (std::uint32_t cp : kWhiteSpace) v[cp] |= kSpace;
    return v;
  }();
  return t;
}

}  // namespace

std::uint8_t classify(std::uint32_t cp) {
  static const std::uint8_t* t = table().data();
  return cp < 0x110000 ? t[cp] : 0;
}

std::size_t encode_utf8(std::uint32_t cp, char* out) {
  if (cp < 0x80) {
    out[0] = static_cast<char>(cp);
    return 1;
  }
  if (cp < 0x800) {
    out[0] = static_cast<char>(0xC0 | (cp >> 6));
    out[1] = static_cast<char>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = static_cast<char>(0xE0 | (cp >> 12));
    out[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out[2] = static_cast<char>(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = static_cast<char>(0xF0 | (cp >> 18));
  out[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
  out[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
  out[3] = static_cast<char>(0x80 | (cp & 0x3F));
  return 4;
}

}  // namespace borealis::unicode
