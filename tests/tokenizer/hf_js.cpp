#include "tokenizer/hf_js.h"

#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "test_util.h"

namespace borealis::test {

namespace {
const std::filesystem::path kData = BOREALIS_DATA_DIR;
}

std::vector<std::string> brown_documents(std::size_t n) {
  std::istringstream in(read_file(kData / "brown" / "brown.jsonl"));
  std::vector<std::string> docs;
  std::string line;
  while (docs.size() < n && std::getline(in, line)) {
    docs.push_back(nlohmann::json::parse(line)["text"].get<std::string>());
  }
  return docs;
}

std::vector<std::vector<std::uint32_t>> hf_js_encode(const std::filesystem::path& tokenizer_json,
                                                     std::size_t n) {
  TempDir dir;
  const auto r =
      run_program("/usr/bin/env", {"node", BOREALIS_SOURCE_DIR "/tests/tokenizer/hf-encode.mjs",
                                   (kData / "npm").string(), tokenizer_json.string(),
                                   (kData / "brown" / "brown.jsonl").string(), std::to_string(n),
                                   (dir / "ids.txt").string()});
  if (r.exit_code != 0) {
    throw std::runtime_error("tokenizers.js failed (needs node and scripts/get-tokenizers.sh): " +
                             r.err);
  }
  std::istringstream in(read_file(dir / "ids.txt"));
  std::vector<std::vector<std::uint32_t>> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::vector<std::uint32_t> ids;
    std::uint32_t id = 0;
    while (words >> id) ids.push_back(id);
    out.push_back(std::move(ids));
  }
  return out;
}

}  // namespace borealis::test
