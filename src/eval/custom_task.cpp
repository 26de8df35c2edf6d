#include "eval/custom_task.h"

#include <fmt/format.h>

#include <toml++/toml.h>
#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"

namespace borealis {

using nlohmann::json;

namespace {

// The value at a path like "a.b[2].c" in a record.
const json* lookup(const json& doc, const std::string& path) {
  const json* cur = &doc;
  std::size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '[') {
      const std::size_t close = path.find(']', i);
      if (close == std::string::npos) return nullptr;
      const std::string num = path.substr(i + 1, close - i - 1);
      if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) return nullptr;
      const auto k = std::stoul(num);
      if (!cur->is_array() || k >= cur->size()) return nullptr;
      cur = &(*cur)[k];
      i = close + 1;
    } else {
      if (path[i] == '.') ++i;
      const std::size_t end = path.find_first_of(".[", i);
      const std::string key =
          path.substr(i, end == std::string::npos ? std::string::npos : end - i);
      if (!cur->is_object()) return nullptr;
      const auto it = cur->find(key);
      if (it == cur->end()) return nullptr;
      cur = &*it;
      i = end == std::string::npos ? path.size() : end;
    }
  }
  return cur;
}

std::string as_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

}  // namespace

std::string render_template(const std::string& tmpl, const json& doc, const std::string& where) {
  std::string out;
  for (std::size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if (c == '{' && i + 1 < tmpl.size() && tmpl[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (c == '}' && i + 1 < tmpl.size() && tmpl[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (c == '{') {
      const std::size_t close = tmpl.find('}', i);
      if (close == std::string::npos) throw Error("unclosed { in template \"" + tmpl + "\"", where);
      const std::string path = tmpl.substr(i + 1, close - i - 1);
      const json* v = lookup(doc, path);
      if (v == nullptr || v->is_null())
        throw Error(fmt::format("missing field \"{}\"", path), where);
      out += as_text(*v);
      i = close;
    } else {
      out += c;
    }
  }
  return out;
}

TaskSpec load_custom_task(const std::filesystem::path& path) {
  const std::string file = path.string();
  toml::table t;
  try {
    t = toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    throw Error(std::string(e.description()), fmt::format("{}:{}", file, e.source().begin.line));
  }
  static const std::set<std::string> known = {"name",
                                              "type",
                                              "test",
                                              "fewshot",
                                              "fewshot_sampler",
                                              "description",
                                              "text",
                                              "choices",
                                              "choices_field",
                                              "gold",
                                              "target",
                                              "metrics",
                                              "target_delimiter",
                                              "fewshot_delimiter",
                                              "until",
                                              "max_gen_toks",
                                              "ignore_case",
                                              "ignore_punctuation",
                                              "strip",
                                              "version"};
  for (const auto& [k, v] : t) {
    if (!known.count(std::string(k.str()))) {
      throw Error(fmt::format("unknown key \"{}\"", k.str()), file);
    }
  }
  const auto str = [&](const char* key, bool required, std::string fallback = "") {
    const auto v = t[key].value<std::string>();
    if (!v && t.contains(key)) throw Error(fmt::format("\"{}\" must be a string", key), file);
    if (!v && required) throw Error(fmt::format("missing key \"{}\"", key), file);
    return v ? *v : fallback;
  };
  const auto strs = [&](const char* key) {
    std::vector<std::string> out;
    if (!t.contains(key)) return out;
    const toml::array* arr = t[key].as_array();
    if (arr == nullptr) throw Error(fmt::format("\"{}\" must be a list of strings", key), file);
    for (const auto& e : *arr) {
      const auto s = e.value<std::string>();
      if (!s) throw Error(fmt::format("\"{}\" must be a list of strings", key), file);
      out.push_back(*s);
    }
    return out;
  };
  const auto flag = [&](const char* key) { return t[key].value<bool>().value_or(false); };

  TaskSpec task;
  task.name = str("name", true);
  task.dataset = task.name;
  task.source = "custom task " + file;
  const std::string type = str("type", true);
  if (type == "multiple_choice") {
    task.output = OutputType::kMultipleChoice;
  } else if (type == "loglikelihood") {
    task.output = OutputType::kLoglikelihood;
  } else if (type == "loglikelihood_rolling") {
    task.output = OutputType::kLoglikelihoodRolling;
  } else if (type == "generate_until") {
    task.output = OutputType::kGenerateUntil;
  } else {
    throw Error(fmt::format("type \"{}\" is not multiple_choice, loglikelihood, "
                            "loglikelihood_rolling or generate_until",
                            type),
                file);
  }
  const std::filesystem::path base = path.parent_path();
  task.test_split = "test";
  task.split_files["test"] = base / str("test", true);
  if (t.contains("fewshot")) {
    task.fewshot_split = "fewshot";
    task.split_files["fewshot"] = base / str("fewshot", true);
  }
  const std::string sampler = str("fewshot_sampler", false, "random");
  if (sampler != "random" && sampler != "first_n") {
    throw Error("fewshot_sampler must be \"random\" or \"first_n\"", file);
  }
  task.first_n = sampler == "first_n";
  task.target_delimiter = str("target_delimiter", false, " ");
  task.fewshot_delimiter = str("fewshot_delimiter", false, "\n\n");
  task.version = t["version"].value<double>().value_or(1.0);
  task.until = strs("until");
  if (task.output == OutputType::kGenerateUntil && !t.contains("until")) {
    task.until = {task.fewshot_delimiter};  // lm-eval's default
  }
  task.max_gen_toks = t["max_gen_toks"].value<int>().value_or(256);
  task.exact_match = {flag("ignore_case"), flag("ignore_punctuation"), flag("strip")};

  const std::string description = str("description", false);
  const std::string text = str("text", task.output != OutputType::kLoglikelihoodRolling);
  const std::vector<std::string> choices = strs("choices");
  const std::string choices_field = str("choices_field", false);
  const std::string gold = str("gold", task.output == OutputType::kMultipleChoice);
  const std::string target = str("target", task.output != OutputType::kMultipleChoice);
  if (task.output == OutputType::kMultipleChoice && choices.empty() == choices_field.empty()) {
    throw Error("a multiple_choice task needs one of \"choices\" and \"choices_field\"", file);
  }
  std::vector<std::string> metrics = strs("metrics");
  if (metrics.empty()) {
    switch (task.output) {
      case OutputType::kMultipleChoice:
        metrics = {"acc", "acc_norm"};
        break;
      case OutputType::kLoglikelihood:
        metrics = {"perplexity", "acc"};
        break;
      case OutputType::kLoglikelihoodRolling:
        metrics = {"word_perplexity", "byte_perplexity", "bits_per_byte"};
        break;
      case OutputType::kGenerateUntil:
        metrics = {"exact_match"};
        break;
    }
  }
  static const std::map<OutputType, std::set<std::string>> allowed = {
      {OutputType::kMultipleChoice, {"acc", "acc_norm"}},
      {OutputType::kLoglikelihood, {"perplexity", "acc"}},
      {OutputType::kLoglikelihoodRolling, {"word_perplexity", "byte_perplexity", "bits_per_byte"}},
      {OutputType::kGenerateUntil, {"exact_match"}}};
  for (const std::string& m : metrics) {
    if (!allowed.at(task.output).count(m)) {
      throw Error(fmt::format("metric \"{}\" does not apply to a {} task", m, type), file);
    }
  }
  task.metrics = metrics;

  const OutputType output = task.output;
  task.format = [=](const json& doc, const std::string& where) {
    Formatted f;
    f.description = render_template(description, doc, where);
    if (!text.empty()) f.text = render_template(text, doc, where);
    f.decontamination_query = f.text;
    if (output == OutputType::kMultipleChoice) {
      if (!choices_field.empty()) {
        f.choices = doc_strings(doc, choices_field, where);
      } else {
        for (const std::string& c : choices) f.choices.push_back(render_template(c, doc, where));
      }
      const std::string g = render_template(gold, doc, where);
      const auto it = std::find(f.choices.begin(), f.choices.end(), g);
      if (it != f.choices.end()) {
        f.gold = static_cast<int>(it - f.choices.begin());
      } else if (!g.empty() && g.size() < 9 &&
                 g.find_first_not_of("0123456789") == std::string::npos) {
        f.gold = std::stoi(g);
      } else {
        throw Error(fmt::format("gold \"{}\" is neither an index nor one of the choices", g),
                    where);
      }
      if (f.gold >= static_cast<int>(f.choices.size())) {
        throw Error(
            fmt::format("gold answer index {} is outside the {} choices", f.gold, f.choices.size()),
            where);
      }
      for (std::size_t i = 0; i < f.choices.size(); ++i) {
        if (f.choices[i].empty()) throw Error(fmt::format("choice {} is empty", i), where);
      }
    } else {
      f.target = render_template(target, doc, where);
      if (output == OutputType::kLoglikelihoodRolling) f.decontamination_query = f.target;
    }
    return f;
  };
  return task;
}

}  // namespace borealis
