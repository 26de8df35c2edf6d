// Shared by the benchmark programs: the demo corpus and a main() that turns
// errors into one line with a hint on what to fetch first.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/stopwatch.h"

namespace borealis::bench {

using Clock = std::chrono::steady_clock;

// A flag's value as an integer in [1, 2^30]; throws Error naming the flag.
inline int parse_positive_int(const std::string& flag, const char* value) {
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || v <= 0 || v > 1 << 30) {
    throw Error(std::string("expected a positive integer, got '") + value + "'", flag);
  }
  return static_cast<int>(v);
}

using borealis::seconds_since;

// The texts of data/brown/brown.jsonl (scripts/get-brown.sh).
inline std::vector<std::string> brown_documents() {
  const MappedFile file("data/brown/brown.jsonl");
  std::vector<std::string> docs;
  std::string_view rest = file.text();
  while (!rest.empty()) {
    const auto end = std::min(rest.find('\n'), rest.size());
    docs.push_back(nlohmann::json::parse(rest.substr(0, end))["text"].get<std::string>());
    rest.remove_prefix(std::min(end + 1, rest.size()));
  }
  return docs;
}

// Runs a benchmark; an Error ends it with its one line and `hint`.
template <class Run>
int main_with_errors(Run run, const char* hint =
                                  "run from the repository root after scripts/get-brown.sh and "
                                  "scripts/get-tokenizers.sh") {
  try {
    return run();
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n(%s)\n", e.line().c_str(), hint);
    return 1;
  }
}

}  // namespace borealis::bench
