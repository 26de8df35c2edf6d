#include "tokenizer/byte_level.h"

#include <fmt/format.h>

#include <array>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace borealis {

namespace {

struct Alphabet {
  std::array<std::uint32_t, 256> to_cp{};
  std::array<int, 512> to_byte{};  // every code point of the alphabet is below 512
};

const Alphabet& alphabet() {
  static const Alphabet a = [] {
    Alphabet t;
    t.to_byte.fill(-1);
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    std::uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      t.to_cp[b] = printable(b) ? static_cast<std::uint32_t>(b) : next++;
      t.to_byte[t.to_cp[b]] = b;
    }
    return t;
  }();
  return a;
}

}  // namespace

std::string byte_level_encode(std::string_view bytes) {
  const Alphabet& a = alphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  char buf[4];
  for (const char c : bytes) {
    const std::size_t n = unicode::encode_utf8(a.to_cp[static_cast<unsigned char>(c)], buf);
    out.append(buf, n);
  }
  return out;
}

std::string byte_level_decode(std::string_view text, const std::string& where) {
  const Alphabet& a = alphabet();
  std::string out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  for (std::size_t i = 0; i < text.size();) {
    std::uint32_t cp = 0;
    const std::size_t len = unicode::decode_utf8(s + i, text.size() - i, cp);
    if (len == 0 || cp >= a.to_byte.size() || a.to_byte[cp] < 0) {
      throw Error(fmt::format("'{}' is not in the byte-level alphabet", text), where);
    }
    out.push_back(static_cast<char>(a.to_byte[cp]));
    i += len;
  }
  return out;
}

}  // namespace borealis
