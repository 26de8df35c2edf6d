#include "tokenizer/hf_json.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace borealis {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Reader {
  std::string file;

  [[noreturn]] void unsupported(const std::string& what, const std::string& json_path) const {
    throw Error(what + " is not supported", file + ": " + json_path);
  }
  [[noreturn]] void invalid(const std::string& what, const std::string& json_path) const {
    throw Error(what, file + ": " + json_path);
  }
  std::string type_of(const json& node, const std::string& json_path) const {
    if (!node.is_object() || !node.contains("type") || !node["type"].is_string()) {
      invalid("expected an object with a string 'type'", json_path);
    }
    return node["type"].get<std::string>();
  }
  bool flag(const json& node, const char* key, bool fallback, const std::string& json_path) const {
    if (!node.contains(key) || node[key].is_null()) return fallback;
    if (!node[key].is_boolean())
      invalid(fmt::format("'{}' must be true or false", key), json_path + "." + key);
    return node[key].get<bool>();
  }
  void require_empty(const json& node, const char* key, const std::string& json_path) const {
    if (!node.contains(key) || node[key].is_null()) return;
    if (node[key].is_string() && node[key].get<std::string>().empty()) return;
    unsupported(fmt::format("'{}' = {}", key, node[key].dump()), json_path + "." + key);
  }
};

std::string regex_escape(std::string_view literal) {
  std::string out;
  for (const char c : literal) {
    if (std::string_view(R"(\^$.|?*+()[]{}/-)").find(c) != std::string_view::npos)
      out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// The list of steps of a node that may be a Sequence.
std::vector<std::pair<json, std::string>> steps_of(const Reader& r, const json& node,
                                                   const std::string& at, const char* list_key) {
  std::vector<std::pair<json, std::string>> steps;
  if (r.type_of(node, at) != "Sequence") {
    steps.emplace_back(node, at);
    return steps;
  }
  if (!node.contains(list_key) || !node[list_key].is_array()) {
    r.invalid(fmt::format("a Sequence needs a '{}' list", list_key), at);
  }
  for (std::size_t i = 0; i < node[list_key].size(); ++i) {
    steps.emplace_back(node[list_key][i], fmt::format("{}.{}[{}]", at, list_key, i));
  }
  return steps;
}

std::string string_pattern(const Reader& r, const json& step, const std::string& at) {
  const json& pattern = step.value("pattern", json());
  if (pattern.contains("String") && pattern["String"].is_string())
    return pattern["String"].get<std::string>();
  if (pattern.contains("Regex")) r.unsupported("a Regex pattern here", at + ".pattern");
  r.invalid("expected a pattern {\"String\": ...}", at + ".pattern");
}

std::string string_field(const Reader& r, const json& step, const char* key,
                         const std::string& at) {
  if (!step.contains(key) || !step[key].is_string())
    r.invalid(fmt::format("'{}' must be a string", key), at + "." + key);
  return step[key].get<std::string>();
}

// Normalizers: Prepend and Replace (string patterns), alone or in a Sequence.
std::vector<NormalizeStep> read_normalizer(const Reader& r, const json& j) {
  std::vector<NormalizeStep> out;
  if (!j.contains("normalizer") || j["normalizer"].is_null()) return out;
  for (const auto& [step, at] : steps_of(r, j["normalizer"], "normalizer", "normalizers")) {
    const std::string type = r.type_of(step, at);
    if (type == "Prepend") {
      out.push_back(
          {NormalizeStep::Kind::Prepend, string_field(r, step, "prepend", at), "", false, false});
    } else if (type == "Replace") {
      out.push_back({NormalizeStep::Kind::Replace, string_pattern(r, step, at),
                     string_field(r, step, "content", at), false, false});
    } else {
      r.unsupported(fmt::format("normalizer '{}'", type), at + ".type");
    }
  }
  return out;
}

struct PreTokenizerSpec {
  std::unique_ptr<PreTokenizer> pre;
  bool byte_level = false;
  std::vector<NormalizeStep> steps;  // ByteLevel's prefix space, Metaspace's replacement
};

// None (the whole text), Split, ByteLevel and Metaspace, alone or in a Sequence.
PreTokenizerSpec read_pre_tokenizer(const Reader& r, const json& node) {
  PreTokenizerSpec spec;
  if (node.is_null()) {
    spec.pre = PreTokenizer::whole_text();
    return spec;
  }
  std::string pattern;
  std::string metaspace;  // the replacement character when Metaspace splits
  const auto steps = steps_of(r, node, "pre_tokenizer", "pretokenizers");
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const auto& [step, at] = steps[i];
    const std::string type = r.type_of(step, at);
    if (type == "Split") {
      if (!pattern.empty() || spec.byte_level)
        r.unsupported("a Split after another pre-tokenizer", at);
      const json& p = step.value("pattern", json());
      if (p.contains("Regex") && p["Regex"].is_string()) {
        pattern = p["Regex"].get<std::string>();
      } else if (p.contains("String") && p["String"].is_string()) {
        pattern = regex_escape(p["String"].get<std::string>());
      } else {
        r.invalid("Split needs a pattern {\"Regex\": ...} or {\"String\": ...}", at + ".pattern");
      }
      const std::string behavior = step.value("behavior", std::string("Isolated"));
      if (behavior != "Isolated")
        r.unsupported(fmt::format("Split behavior '{}'", behavior), at + ".behavior");
      if (r.flag(step, "invert", false, at))
        r.unsupported("Split with invert: true", at + ".invert");
    } else if (type == "ByteLevel") {
      if (i + 1 != steps.size()) r.unsupported("pre-tokenizers after ByteLevel", at);
      spec.byte_level = true;
      if (r.flag(step, "add_prefix_space", false, at)) {
        spec.steps.push_back({NormalizeStep::Kind::Prepend, " ", "", true, false});
      }
      if (r.flag(step, "use_regex", true, at)) {
        if (!pattern.empty()) r.unsupported("ByteLevel use_regex after a Split", at + ".use_regex");
        pattern = std::string(kGpt2Pattern);
      }
    } else if (type == "Metaspace") {
      if (steps.size() != 1) r.unsupported("Metaspace combined with other pre-tokenizers", at);
      const std::string rep = step.value("replacement", std::string("\u2581"));
      std::string scheme = step.value("prepend_scheme", std::string());
      if (scheme.empty()) scheme = r.flag(step, "add_prefix_space", true, at) ? "always" : "never";
      if (scheme != "always" && scheme != "first" && scheme != "never") {
        r.unsupported(fmt::format("Metaspace prepend_scheme '{}'", scheme), at + ".prepend_scheme");
      }
      spec.steps.push_back({NormalizeStep::Kind::Replace, " ", rep, false, false});
      if (scheme != "never")
        spec.steps.push_back({NormalizeStep::Kind::Prepend, rep, "", true, scheme == "first"});
      if (r.flag(step, "split", true, at)) metaspace = rep;
    } else {
      r.unsupported(fmt::format("pre-tokenizer '{}'", type), at + ".type");
    }
  }
  if (!metaspace.empty()) {
    spec.pre = PreTokenizer::split_before(metaspace);
  } else if (!pattern.empty()) {
    spec.pre = PreTokenizer::create(pattern, r.file + ": pre_tokenizer");
  } else {
    spec.pre = PreTokenizer::whole_text();
  }
  return spec;
}

// Decoders of character-level models: Replace (string), ByteFallback, Fuse,
// Strip (leading only), or Metaspace. Byte-level models take ByteLevel.
DecodeSteps read_decoder(const Reader& r, const json& j, bool byte_level) {
  DecodeSteps d;
  if (!j.contains("decoder") || j["decoder"].is_null()) return d;
  for (const auto& [step, at] : steps_of(r, j["decoder"], "decoder", "decoders")) {
    const std::string type = r.type_of(step, at);
    if (type == "ByteLevel" && byte_level) continue;  // token bytes are already decoded
    if (type == "ByteLevel")
      r.unsupported("decoder 'ByteLevel' with a character-level model", at + ".type");
    if (byte_level)
      r.unsupported(fmt::format("decoder '{}' with a ByteLevel model", type), at + ".type");
    if (type == "Replace") {
      d.replace.emplace_back(string_pattern(r, step, at), string_field(r, step, "content", at));
    } else if (type == "ByteFallback") {
      d.byte_fallback = true;
    } else if (type == "Fuse") {
      // Tokens are joined anyway.
    } else if (type == "Strip") {
      const std::string content = string_field(r, step, "content", at);
      if (content.size() != 1 || step.value("stop", 0) != 0)
        r.unsupported("Strip other than of leading characters", at);
      d.strip_char = content[0];
      d.strip_start = step.value("start", std::size_t{0});
    } else if (type == "Metaspace") {
      const std::string rep = step.value("replacement", std::string("\u2581"));
      d.replace.emplace_back(rep, " ");
      std::string scheme = step.value("prepend_scheme", std::string());
      if (scheme.empty()) scheme = r.flag(step, "add_prefix_space", true, at) ? "always" : "never";
      if (scheme != "never") d.strip_start = 1;
    } else {
      r.unsupported(fmt::format("decoder '{}'", type), at + ".type");
    }
  }
  return d;
}

void check_post_processor(const Reader& r, const json& j) {
  if (!j.contains("post_processor") || j["post_processor"].is_null()) return;
  const std::string type = r.type_of(j["post_processor"], "post_processor");
  // TemplateProcessing only adds BOS/EOS around sequences; Borealis never adds
  // them implicitly (data prepare has --append-eod), so it has no effect here.
  if (type != "ByteLevel" && type != "TemplateProcessing") {
    r.unsupported(fmt::format("post-processor '{}'", type), "post_processor.type");
  }
}

std::vector<AddedToken> read_added_tokens(const Reader& r, const json& j) {
  std::vector<AddedToken> out;
  if (!j.contains("added_tokens") || j["added_tokens"].is_null()) return out;
  if (!j["added_tokens"].is_array()) r.invalid("'added_tokens' must be a list", "added_tokens");
  for (std::size_t i = 0; i < j["added_tokens"].size(); ++i) {
    const json& t = j["added_tokens"][i];
    const std::string at = fmt::format("added_tokens[{}]", i);
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_unsigned() ||
        !t.contains("content") || !t["content"].is_string()) {
      r.invalid("an added token needs an integer 'id' and a string 'content'", at);
    }
    for (const char* key : {"single_word", "lstrip", "rstrip"}) {
      if (r.flag(t, key, false, at))
        r.unsupported(fmt::format("added token with {}: true", key), at + "." + key);
    }
    out.push_back({t["content"].get<std::string>(), t["id"].get<std::uint32_t>(),
                   r.flag(t, "special", false, at)});
  }
  return out;
}

}  // namespace

Tokenizer load_hf_tokenizer(const json& j, const fs::path& path) {
  const Reader r{path.string()};
  const json& model = j["model"];
  if (!model.is_object()) r.invalid("'model' must be an object", "model");
  const std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE") r.unsupported(fmt::format("model type '{}'", type), "model.type");
  if (model.contains("dropout") && !model["dropout"].is_null())
    r.unsupported("BPE dropout", "model.dropout");
  r.require_empty(model, "continuing_subword_prefix", "model");
  r.require_empty(model, "end_of_word_suffix", "model");
  std::vector<NormalizeStep> normalizer = read_normalizer(r, j);
  PreTokenizerSpec spec = read_pre_tokenizer(r, j.value("pre_tokenizer", json()));
  normalizer.insert(normalizer.end(), spec.steps.begin(), spec.steps.end());
  const DecodeSteps decoder = read_decoder(r, j, spec.byte_level);
  check_post_processor(r, j);
  std::vector<AddedToken> added = read_added_tokens(r, j);

  if (!model.contains("vocab") || !model["vocab"].is_object())
    r.invalid("'vocab' must be an object", "model.vocab");
  std::vector<std::string> tokens;
  std::unordered_map<std::string, std::uint32_t> ids;  // byte-level text -> id
  for (const auto& [text, id] : model["vocab"].items()) {
    if (!id.is_number_unsigned())
      r.invalid(fmt::format("token '{}' needs an integer id", text), "model.vocab");
    const auto n = id.get<std::uint32_t>();
    ids.emplace(text, n);
    bool is_added = false;
    for (const auto& a : added) is_added = is_added || a.id == n;
    if (is_added) continue;  // added tokens are matched as text, not built by merges
    if (n >= tokens.size()) tokens.resize(n + 1);
    tokens[n] = spec.byte_level ? byte_level_decode(text, r.file + ": model.vocab") : text;
  }
  if (!model.contains("merges") || !model["merges"].is_array())
    r.invalid("'merges' must be a list", "model.merges");
  std::vector<BpeModel::Merge> merges;
  merges.reserve(model["merges"].size());
  for (std::size_t i = 0; i < model["merges"].size(); ++i) {
    const json& m = model["merges"][i];
    const std::string at = fmt::format("model.merges[{}]", i);
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const auto space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        r.invalid(fmt::format("merge '{}' is not two tokens separated by a space", s), at);
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      r.invalid("a merge must be \"left right\" or [\"left\", \"right\"]", at);
    }
    const auto l = ids.find(left);
    const auto rt = ids.find(right);
    if (l == ids.end() || rt == ids.end()) {
      r.invalid(fmt::format("merge names '{}', which is not in the vocabulary",
                            l == ids.end() ? left : right),
                at);
    }
    if (ids.find(left + right) == ids.end()) {
      r.invalid(
          fmt::format("merge '{} {}' makes a token that is not in the vocabulary", left, right),
          at);
    }
    merges.push_back({l->second, rt->second});
  }
  BpeModel::CharLevel chars;
  if (!spec.byte_level) {
    chars.byte_fallback = r.flag(model, "byte_fallback", false, "model");
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      const auto unk = ids.find(model["unk_token"].get<std::string>());
      if (unk == ids.end()) r.invalid("the unk_token is not in the vocabulary", "model.unk_token");
      chars.unk = unk->second;
    }
  }
  BpeModel bpe = BpeModel::from_merges(std::move(tokens), merges,
                                       r.flag(model, "ignore_merges", false, "model"),
                                       r.file + ": model", spec.byte_level ? nullptr : &chars);
  Tokenizer tok(std::move(bpe), std::move(spec.pre), std::move(added), "huggingface");
  tok.set_normalizer(std::move(normalizer));
  if (!spec.byte_level) tok.set_decoder(decoder);
  return tok;
}

std::string hf_tokenizer_json(const Tokenizer& tok) {
  using ojson = nlohmann::ordered_json;
  const BpeModel& m = tok.model();
  // A plain (sorted) object: ordered_json inserts in linear time per key.
  json vocab = json::object();
  for (std::uint32_t id = 0; id < m.size(); ++id) {
    if (!m.token(id).empty()) vocab[byte_level_encode(m.token(id))] = id;
  }
  ojson merges = ojson::array();
  for (const auto& mg : m.merges()) {
    merges.push_back(byte_level_encode(m.token(mg.left)) + " " +
                     byte_level_encode(m.token(mg.right)));
  }
  ojson added = ojson::array();
  std::vector<AddedToken> by_id = tok.added_tokens();
  std::sort(by_id.begin(), by_id.end(),
            [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  for (const auto& a : by_id) {
    added.push_back({{"id", a.id},
                     {"content", a.text},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", a.special}});
  }
  ojson j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", tok.pre_tokenizer().pattern()}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", m.whole_piece_lookup()},
        {"vocab", vocab},
        {"merges", merges}}},
  };
  return j.dump(2) + "\n";
}

}  // namespace borealis
