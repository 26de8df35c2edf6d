// Data lists: which token datasets a training run blends, and how much of each.
//
// The format is Megatron-DeepSpeed's / AuroraGPT's: one line per dataset,
//
//   weight prefix [corpus]      # comment
//
// with blank lines and '#' comments allowed, and a UTF-8 byte-order mark at the
// start of the text skipped. A ".bin" or ".idx" suffix on the
// prefix is dropped. Files without a corpus form a corpus of their own (named
// by their prefix). The command-line form is the flat list
// "w1 p1 w2 p2 ..." of --data-path. Weights are normalized to sum to 1; a
// negative or non-numeric weight, a missing prefix, or a zero total is an
// Error naming the list and line (or the flag).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace borealis {

struct DataListEntry {
  double weight = 0;        // normalized: the entries' weights sum to 1
  std::string weight_text;  // as written
  std::filesystem::path prefix;
  std::string corpus;
  std::string where;  // "LIST:LINE" or "--data-path (pair K)", for error messages
};

// Parses list text; `source` names it in errors (a path, usually).
std::vector<DataListEntry> parse_data_list(std::string_view text, const std::string& source);
// Reads and parses a list file; relative prefixes stay relative to the working directory,
// as in Megatron.
std::vector<DataListEntry> read_data_list(const std::filesystem::path& path);
// The --data-path form: weight, prefix, weight, prefix, ...
std::vector<DataListEntry> data_list_from_args(const std::vector<std::string>& args);

}  // namespace borealis
