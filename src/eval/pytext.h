// Python's string semantics, where evaluation prompts depend on them.
//
// lm-evaluation-harness builds prompts with Python: str.strip() strips
// Unicode whitespace, len() counts code points (acc_norm divides by it),
// str.capitalize() lowercases the rest of the string, re.sub() follows
// Python's regex rules. A prompt that differs by one space from lm-eval's
// gives a different score, so these follow Python exactly on UTF-8 text.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace borealis::py {

// str.isspace() of one code point.
bool is_space(char32_t c);

std::string strip(std::string_view s);   // str.strip()
std::string lstrip(std::string_view s);  // str.lstrip()
std::string rstrip(std::string_view s);  // str.rstrip()
// str.capitalize(): the first character upper-cased (title case), the rest lower-cased.
std::string capitalize(std::string_view s);
// str.lower().
std::string lower(std::string_view s);
// len(s): code points (invalid UTF-8 bytes count one each).
std::size_t length(std::string_view s);
// s.replace(old, new): every non-overlapping occurrence, left to right.
std::string replace(std::string_view s, std::string_view old, std::string_view with);
// s.split(sep) with an explicit separator.
std::vector<std::string> split(std::string_view s, std::string_view sep);
// len(re.split(r"\s+", s)): lm-eval's word count for word perplexity.
std::size_t count_words(std::string_view s);

// re.sub(pattern, replacement, s) for the patterns the built-in tasks use,
// compiled once per pattern (PCRE2 with Unicode properties: \s is Python's
// Unicode \s). The replacement uses PCRE2's syntax: $1 for a group. Throws
// std::logic_error for a pattern that does not compile (a programming error).
std::string regex_sub(std::string_view pattern, std::string_view replacement, std::string_view s);

}  // namespace borealis::py
