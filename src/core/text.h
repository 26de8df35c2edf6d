// Small text helpers shared by the CLI and the library: human-readable sizes,
// "did you mean" suggestions, trimming and splitting.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace borealis {

// "1.5 GiB", "512 B". Binary units.
std::string format_bytes(std::uint64_t bytes);

// "45s", "12m03s", "3h07m" (rounded to whole seconds or minutes).
std::string format_duration(double seconds);

// Parses a size such as "512", "64K", "1.5GiB", "10GB" (K/M/G/T and KiB.. are
// powers of 1024, KB/MB/GB/TB powers of 1000). Throws Error naming `where`.
std::uint64_t parse_bytes(std::string_view text, const std::string& where);

// Edit distance (insertions, deletions, substitutions).
std::size_t edit_distance(std::string_view a, std::string_view b);

// The candidate closest to `word` if it is close enough to be a likely typo
// (or shares its last dotted component), else "".
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

std::string_view trim(std::string_view text);

// The length of the longest prefix of text that ends on a whole UTF-8
// sequence: a trailing lead byte still waiting for its continuation bytes
// is left out (text streamed token by token holds it back until the next
// token completes it).
std::size_t complete_utf8_prefix(std::string_view text);

// Length of the UTF-8 byte-order mark (EF BB BF) that `text` begins with: 3, or
// 0 when there is none. Windows editors and exporters write one at the start of
// a file; it is not content, so readers skip it there (and only there).
std::size_t utf8_bom_length(std::string_view text);
std::vector<std::string> split(std::string_view text, char sep);

}  // namespace borealis
