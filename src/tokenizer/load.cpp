// Tokenizer::load: GPT-2 encoder.json + vocab.bpe, tiktoken JSON and rank
// files, through the binary cache (cache.cpp). Hugging Face tokenizer.json is
// in hf_json.cpp.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/text.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/cache.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Patterns of the encodings tiktoken ships, for rank files (which carry none).
constexpr std::string_view kO200kPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct KnownEncoding {
  const char* name;
  std::string_view pattern;
  std::vector<AddedToken> specials;
};

const KnownEncoding* known_encoding(std::string_view name) {
  static const std::vector<KnownEncoding> known = {
      {"gpt2", kGpt2Pattern, {{"<|endoftext|>", 50256, true}}},
      {"r50k_base", kGpt2Pattern, {{"<|endoftext|>", 50256, true}}},
      {"p50k_base", kGpt2Pattern, {{"<|endoftext|>", 50256, true}}},
      {"cl100k_base",
       kCl100kPattern,
       {{"<|endoftext|>", 100257, true},
        {"<|fim_prefix|>", 100258, true},
        {"<|fim_middle|>", 100259, true},
        {"<|fim_suffix|>", 100260, true},
        {"<|endofprompt|>", 100276, true}}},
      {"o200k_base",
       kO200kPattern,
       {{"<|endoftext|>", 199999, true}, {"<|endofprompt|>", 200018, true}}},
  };
  for (const auto& k : known) {
    if (name == k.name) return &k;
  }
  return nullptr;
}

json parse_json(const fs::path& path) {
  const MappedFile file(path);
  try {
    return json::parse(file.text());
  } catch (const json::parse_error& e) {
    throw Error(fmt::format("invalid JSON at byte {}: {}", e.byte, e.what()), path.string());
  }
}

std::string decode_base64(std::string_view text, const std::string& where) {
  static const auto table = [] {
    std::array<int, 256> t{};
    t.fill(-1);
    const std::string_view chars =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (std::size_t i = 0; i < chars.size(); ++i)
      t[static_cast<unsigned char>(chars[i])] = static_cast<int>(i);
    return t;
  }();
  std::string out;
  unsigned buffer = 0;
  int bits = 0;
  for (const char c : text) {
    if (c == '=') break;
    const int v = table[static_cast<unsigned char>(c)];
    if (v < 0) throw Error(fmt::format("invalid base64 token '{}'", text), where);
    buffer = (buffer << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((buffer >> bits) & 0xFF));
    }
  }
  return out;
}

// Places token bytes at their rank; ranks must be unique.
void put_rank(std::vector<std::string>& tokens, std::uint64_t rank, std::string bytes,
              const std::string& where) {
  if (rank > (1u << 24)) throw Error(fmt::format("rank {} is implausibly large", rank), where);
  if (rank >= tokens.size()) tokens.resize(rank + 1);
  if (!tokens[rank].empty()) throw Error(fmt::format("rank {} appears twice", rank), where);
  tokens[rank] = std::move(bytes);
}

void check_dense(const std::vector<std::string>& tokens, const std::string& where) {
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    if (tokens[r].empty()) throw Error(fmt::format("rank {} is missing", r), where);
  }
}

std::vector<AddedToken> specials_from_json(const json& j, const std::string& where) {
  std::vector<AddedToken> out;
  if (!j.contains("special_tokens")) return out;
  const json& s = j["special_tokens"];
  if (!s.is_object()) throw Error("'special_tokens' must be an object", where);
  for (const auto& [text, id] : s.items()) {
    if (!id.is_number_unsigned())
      throw Error(fmt::format("special_tokens.{} must be an id", text), where);
    out.push_back({text, id.get<std::uint32_t>(), true});
  }
  return out;
}

// The npm tiktoken JSON: {"pat_str", "special_tokens", "bpe_ranks"} where
// bpe_ranks holds lines "<tag> <first rank> <base64> <base64> ..." giving
// consecutive ranks.
Tokenizer load_tiktoken_json(const json& j, const fs::path& path) {
  const std::string where = path.string();
  if (!j["pat_str"].is_string() || !j["bpe_ranks"].is_string()) {
    throw Error("'pat_str' and 'bpe_ranks' must be strings", where);
  }
  std::vector<std::string> tokens;
  for (const auto& line : split(j["bpe_ranks"].get<std::string>(), '\n')) {
    if (trim(line).empty()) continue;
    const auto fields = split(trim(line), ' ');
    if (fields.size() < 2) throw Error("bpe_ranks line without a first rank", where);
    std::uint64_t rank = 0;
    try {
      rank = std::stoull(fields[1]);
    } catch (const std::exception&) {
      throw Error(fmt::format("bpe_ranks: '{}' is not a rank", fields[1]), where);
    }
    for (std::size_t i = 2; i < fields.size(); ++i) {
      put_rank(tokens, rank++, decode_base64(fields[i], where), where);
    }
  }
  check_dense(tokens, where);
  auto pre = PreTokenizer::create(j["pat_str"].get<std::string>(), where + ": pat_str");
  return Tokenizer(BpeModel::from_ranks(std::move(tokens), where), std::move(pre),
                   specials_from_json(j, where), "tiktoken-json");
}

// A tiktoken rank file: lines "<base64 token> <rank>". The pattern and
// special tokens come from the encoding's name (the file's stem).
Tokenizer load_tiktoken_ranks(const fs::path& path) {
  const std::string where = path.string();
  const KnownEncoding* known = known_encoding(path.stem().string());
  if (known == nullptr) {
    throw Error(
        fmt::format("unknown tiktoken encoding '{}': rank files carry no pattern; name the "
                    "file gpt2, r50k_base, p50k_base, cl100k_base or o200k_base, or use a JSON "
                    "encoding with 'pat_str'",
                    path.stem().string()),
        where);
  }
  const MappedFile file(path);
  std::vector<std::string> tokens;
  std::size_t line_no = 0;
  for (const auto& line : split(file.text(), '\n')) {
    ++line_no;
    if (trim(line).empty()) continue;
    const auto fields = split(trim(line), ' ');
    const std::string at = fmt::format("{}:{}", where, line_no);
    if (fields.size() != 2) throw Error("expected '<base64 token> <rank>'", at);
    std::uint64_t rank = 0;
    try {
      rank = std::stoull(fields[1]);
    } catch (const std::exception&) {
      throw Error(fmt::format("'{}' is not a rank", fields[1]), at);
    }
    put_rank(tokens, rank, decode_base64(fields[0], at), at);
  }
  check_dense(tokens, where);
  return Tokenizer(BpeModel::from_ranks(std::move(tokens), where),
                   PreTokenizer::create(known->pattern), known->specials, "tiktoken");
}

// GPT-2's encoder.json (byte-level token text -> id) and vocab.bpe (merges).
Tokenizer load_gpt2(const fs::path& encoder_path, const fs::path& merges_path) {
  const std::string where = encoder_path.string();
  const json enc = parse_json(encoder_path);
  if (!enc.is_object()) throw Error("encoder.json must be an object of token -> id", where);
  std::vector<std::string> tokens;
  std::vector<AddedToken> specials;
  for (const auto& [text, id] : enc.items()) {
    if (!id.is_number_unsigned())
      throw Error(fmt::format("token '{}' has no integer id", text), where);
    const auto n = id.get<std::uint32_t>();
    if (text == "<|endoftext|>") {
      specials.push_back({text, n, true});
      continue;
    }
    if (n >= tokens.size()) tokens.resize(n + 1);
    tokens[n] = byte_level_decode(text, fmt::format("{}: token '{}'", where, text));
  }
  std::vector<BpeModel::Merge> merges;
  const MappedFile file(merges_path);
  std::size_t line_no = 0;
  BpeModel::Merge merge{};
  std::unordered_map<std::string, std::uint32_t> ids;
  for (std::uint32_t i = 0; i < tokens.size(); ++i) ids.emplace(tokens[i], i);
  for (const auto& line : split(file.text(), '\n')) {
    ++line_no;
    if (line.empty() || line.starts_with("#version")) continue;
    const std::string at = fmt::format("{}:{}", merges_path.string(), line_no);
    const auto fields = split(line, ' ');
    if (fields.size() != 2) throw Error("expected a merge 'left right'", at);
    for (int side = 0; side < 2; ++side) {
      const auto it = ids.find(byte_level_decode(fields[side], at));
      if (it == ids.end())
        throw Error(fmt::format("merge names '{}', which is not a token", fields[side]), at);
      (side == 0 ? merge.left : merge.right) = it->second;
    }
    merges.push_back(merge);
  }
  return Tokenizer(BpeModel::from_merges(std::move(tokens), merges, false, where),
                   PreTokenizer::create(kGpt2Pattern), std::move(specials), "gpt2");
}

Tokenizer load_source(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "tokenizer.json"))
      return load_hf_tokenizer(parse_json(path / "tokenizer.json"), path / "tokenizer.json");
    if (fs::exists(path / "encoder.json") && fs::exists(path / "vocab.bpe")) {
      return load_gpt2(path / "encoder.json", path / "vocab.bpe");
    }
    throw Error("directory holds neither tokenizer.json nor encoder.json + vocab.bpe",
                path.string());
  }
  if (path.extension() == ".tiktoken") return load_tiktoken_ranks(path);
  if (path.filename() == "vocab.bpe") return load_gpt2(path.parent_path() / "encoder.json", path);
  const json j = parse_json(path);
  if (!j.is_object()) throw Error("expected a JSON object", path.string());
  if (j.contains("model")) return load_hf_tokenizer(j, path);
  if (j.contains("bpe_ranks")) return load_tiktoken_json(j, path);
  if (fs::exists(path.parent_path() / "vocab.bpe"))
    return load_gpt2(path, path.parent_path() / "vocab.bpe");
  throw Error(
      "not a tokenizer: expected a Hugging Face tokenizer.json ('model'), a tiktoken encoding "
      "('bpe_ranks') or a GPT-2 encoder.json beside vocab.bpe",
      path.string());
}

}  // namespace

Tokenizer Tokenizer::load(const fs::path& path) {
  return load(path, default_tokenizer_cache_dir());
}

Tokenizer Tokenizer::load(const fs::path& path, const fs::path& cache_dir) {
  return load_tokenizer_cached(path, cache_dir, [&] { return load_source(path); });
}

}  // namespace borealis
