// Shared by the benchmark programs: the demo corpus and a main() that turns
// errors into one line with a hint on what to fetch first.
#pragma once

#include <sys/wait.h>
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

// The items of a comma-separated flag value ("a,b,c"), empty ones left out.
inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at <= text.size()) {
    const std::size_t end = std::min(text.find(',', at), text.size());
    if (end > at) out.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  return out;
}

// The positive integers of a comma-separated flag value.
inline std::vector<int> parse_int_list(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  for (const std::string& item : split_list(text))
    out.push_back(parse_positive_int(flag, item.c_str()));
  return out;
}

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

// Quotes s for a POSIX shell.
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

// Runs a PyTorch baseline script (a shell command line) and returns the JSON
// object it prints last. Errors name the script and say what it needs.
inline nlohmann::json run_torch_script(const std::string& command, const std::string& script,
                                       const std::string& python) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw Error("cannot start the PyTorch benchmark", script);
  std::string out;
  char buf[4096];
  while (const std::size_t n = std::fread(buf, 1, sizeof(buf), pipe)) out.append(buf, n);
  const int status = ::pclose(pipe);
  if (status != 0) {
    throw Error(std::string("the PyTorch benchmark failed (") +
                    (WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                       : std::string("killed by a signal")) +
                    "); it needs Debian's python3-torch and python3-numpy under " + python,
                script);
  }
  const auto start = out.rfind("\n{");
  const auto j = nlohmann::json::parse(start == std::string::npos ? out : out.substr(start + 1),
                                       nullptr, false);
  if (!j.is_object()) throw Error("the PyTorch benchmark printed no JSON result", script);
  return j;
}

}  // namespace borealis::bench
