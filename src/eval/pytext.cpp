#include "eval/pytext.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <locale.h>
#include <pcre2.h>
#include <wctype.h>

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace borealis::py {

namespace {

// One code point at s[i]; advances i. An invalid byte is taken as itself.
char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  int n = 0;
  char32_t c = 0;
  if (b0 < 0x80) {
    ++i;
    return b0;
  } else if ((b0 & 0xE0) == 0xC0) {
    n = 1;
    c = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 2;
    c = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 3;
    c = b0 & 0x07;
  } else {
    ++i;
    return b0;
  }
  if (i + static_cast<std::size_t>(n) >= s.size()) {
    ++i;
    return b0;
  }
  for (int k = 1; k <= n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
    if ((b & 0xC0) != 0x80) {
      ++i;
      return b0;
    }
    c = (c << 6) | (b & 0x3F);
  }
  i += static_cast<std::size_t>(n) + 1;
  return c;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Unicode case mapping from the C library's UTF-8 locale (the "C" locale
// maps ASCII only).
locale_t utf8_locale() {
  static const locale_t loc = [] {
    locale_t l = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
    if (l == static_cast<locale_t>(nullptr)) {
      l = newlocale(LC_CTYPE_MASK, "C", static_cast<locale_t>(nullptr));
    }
    return l;
  }();
  return loc;
}

char32_t to_upper(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  return static_cast<char32_t>(towupper_l(static_cast<wint_t>(c), utf8_locale()));
}

char32_t to_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  return static_cast<char32_t>(towlower_l(static_cast<wint_t>(c), utf8_locale()));
}

// Byte offsets of the first non-space code point and one past the last.
std::size_t first_non_space(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = i;
    if (!is_space(next_code_point(s, j))) break;
    i = j;
  }
  return i;
}

std::size_t end_non_space(std::string_view s) {
  std::size_t end = 0;
  std::size_t i = 0;
  while (i < s.size()) {
    if (!is_space(next_code_point(s, i))) end = i;
  }
  return end;
}

}  // namespace

bool is_space(char32_t c) {
  switch (c) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

std::string strip(std::string_view s) {
  const std::size_t b = first_non_space(s);
  const std::size_t e = end_non_space(s);
  return e > b ? std::string(s.substr(b, e - b)) : std::string();
}

std::string lstrip(std::string_view s) {
  return std::string(s.substr(first_non_space(s)));
}

std::string rstrip(std::string_view s) {
  return std::string(s.substr(0, end_non_space(s)));
}

std::string capitalize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  bool first = true;
  while (i < s.size()) {
    const char32_t c = next_code_point(s, i);
    append_utf8(out, first ? to_upper(c) : to_lower(c));
    first = false;
  }
  return out;
}

std::string lower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) append_utf8(out, to_lower(next_code_point(s, i)));
  return out;
}

std::size_t length(std::string_view s) {
  std::size_t n = 0;
  std::size_t i = 0;
  while (i < s.size()) {
    next_code_point(s, i);
    ++n;
  }
  return n;
}

std::string replace(std::string_view s, std::string_view old, std::string_view with) {
  if (old.empty()) throw std::logic_error("py::replace of an empty string");
  std::string out;
  std::size_t pos = 0;
  for (;;) {
    const std::size_t hit = s.find(old, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(with);
    pos = hit + old.size();
  }
  out.append(s.substr(pos));
  return out;
}

std::vector<std::string> split(std::string_view s, std::string_view sep) {
  if (sep.empty()) throw std::logic_error("py::split with an empty separator");
  std::vector<std::string> out;
  std::size_t pos = 0;
  for (;;) {
    const std::size_t hit = s.find(sep, pos);
    if (hit == std::string_view::npos) break;
    out.emplace_back(s.substr(pos, hit - pos));
    pos = hit + sep.size();
  }
  out.emplace_back(s.substr(pos));
  return out;
}

std::size_t count_words(std::string_view s) {
  std::size_t pieces = 1;
  bool in_space = false;
  std::size_t i = 0;
  while (i < s.size()) {
    const bool space = is_space(next_code_point(s, i));
    if (space && !in_space) ++pieces;
    in_space = space;
  }
  return pieces;
}

namespace {

struct CompiledPattern {
  pcre2_code* code = nullptr;
  ~CompiledPattern() { pcre2_code_free(code); }
};

pcre2_code* compiled(std::string_view pattern) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<CompiledPattern>, std::less<>> cache;
  std::lock_guard lock(mu);
  auto it = cache.find(pattern);
  if (it != cache.end()) return it->second->code;
  int err = 0;
  PCRE2_SIZE offset = 0;
  auto p = std::make_unique<CompiledPattern>();
  p->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
  if (p->code == nullptr) {
    throw std::logic_error("regex does not compile: " + std::string(pattern));
  }
  pcre2_code* code = p->code;
  cache.emplace(std::string(pattern), std::move(p));
  return code;
}

}  // namespace

std::string regex_sub(std::string_view pattern, std::string_view replacement, std::string_view s) {
  pcre2_code* code = compiled(pattern);
  std::string out(s.size() + s.size() / 4 + 64, '\0');
  for (int attempt = 0; attempt < 2; ++attempt) {
    PCRE2_SIZE out_len = out.size();
    const int rc =
        pcre2_substitute(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0,
                         PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH, nullptr,
                         nullptr, reinterpret_cast<PCRE2_SPTR>(replacement.data()),
                         replacement.size(), reinterpret_cast<PCRE2_UCHAR*>(out.data()), &out_len);
    if (rc >= 0) {
      out.resize(out_len);
      return out;
    }
    if (rc != PCRE2_ERROR_NOMEMORY) {
      throw std::logic_error("regex substitution failed for " + std::string(pattern));
    }
    out.resize(out_len);
  }
  throw std::logic_error("regex substitution did not fit for " + std::string(pattern));
}

}  // namespace borealis::py
