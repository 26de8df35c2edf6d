#include "core/config.h"

#include <fmt/format.h>

#include <toml++/toml.h>
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/text.h"

namespace borealis {

namespace {

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};

std::string_view toml_type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "a list";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

std::string where_of(const toml::node& node, const std::string& source) {
  const auto& begin = node.source().begin;
  return fmt::format("{}:{}:{}", source, begin.line, begin.column);
}

std::string unknown_key_message(const ConfigSchema& schema, std::string_view path) {
  std::string message = fmt::format("unknown key '{}'", path);
  const std::string hint = closest_match(path, schema.paths());
  if (!hint.empty()) message += fmt::format("; did you mean '{}'?", hint);
  return message;
}

// Scalar conversions shared by TOML nodes and --set text.
struct Expect {
  const ConfigKey& key;
  const std::string& where;

  [[noreturn]] void fail(std::string_view got, std::string_view element = {}) const {
    throw Error(fmt::format("key '{}'{} must be {}, got {}", key.path, element,
                            config_type_name(key.default_value), got),
                where);
  }
};

template <class T>
T scalar_from_node(const toml::node& node, const Expect& expect, std::string_view element) {
  if constexpr (std::is_same_v<T, double>) {
    if (auto v = node.value_exact<double>()) return *v;
    if (auto v = node.value_exact<std::int64_t>()) return static_cast<double>(*v);
  } else {
    if (auto v = node.value_exact<T>()) return *v;
  }
  expect.fail(toml_type_name(node), element);
}

template <class T>
std::vector<T> list_from_node(const toml::node& node, const Expect& expect) {
  const toml::array* array = node.as_array();
  if (array == nullptr) expect.fail(toml_type_name(node));
  std::vector<T> out;
  out.reserve(array->size());
  for (std::size_t i = 0; i < array->size(); ++i) {
    out.push_back(scalar_from_node<T>((*array)[i], expect, fmt::format(" (element {})", i + 1)));
  }
  return out;
}

ConfigValue value_from_node(const toml::node& node, const Expect& expect) {
  return std::visit(
      [&](const auto& def) -> ConfigValue {
        using T = std::decay_t<decltype(def)>;
        if constexpr (std::is_same_v<T, std::vector<std::int64_t>>) {
          return list_from_node<std::int64_t>(node, expect);
        } else if constexpr (std::is_same_v<T, std::vector<double>>) {
          return list_from_node<double>(node, expect);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          return list_from_node<std::string>(node, expect);
        } else {
          return scalar_from_node<T>(node, expect, {});
        }
      },
      expect.key.default_value);
}

// --set values: typed by the key, so that strings need no quotes.
template <class T>
T scalar_from_text(std::string_view text, const Expect& expect, std::string_view element) {
  const std::string shown = fmt::format("'{}'", text);
  if constexpr (std::is_same_v<T, bool>) {
    if (text == "true") return true;
    if (text == "false") return false;
    expect.fail(shown, element);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!text.empty() && (text.front() == '"' || text.front() == '\'')) {
      try {
        const toml::table t = toml::parse(fmt::format("v = {}", text));
        if (auto v = t["v"].value_exact<std::string>()) return *v;
      } catch (const toml::parse_error&) {
      }
      expect.fail(fmt::format("a malformed quoted string {}", shown), element);
    }
    return std::string(text);
  } else {
    std::string digits;
    for (char c : text) {
      if (c != '_') digits.push_back(c);  // TOML-style 1_000_000
    }
    T value{};
    const char* end = digits.data() + digits.size();
    const auto [ptr, ec] = std::from_chars(digits.data(), end, value);
    if (ec == std::errc::result_out_of_range) expect.fail(shown + " (out of range)", element);
    if (ec != std::errc() || ptr != end || digits.empty()) expect.fail(shown, element);
    return value;
  }
}

template <class T>
std::vector<T> list_from_text(std::string_view text, const Expect& expect) {
  text = trim(text);
  if (text.starts_with('[')) {
    if (!text.ends_with(']')) expect.fail(fmt::format("'{}' (missing ']')", text));
    text = trim(text.substr(1, text.size() - 2));
  }
  std::vector<T> out;
  if (text.empty()) return out;
  const auto parts = split(text, ',');
  for (std::size_t i = 0; i < parts.size(); ++i) {
    out.push_back(scalar_from_text<T>(trim(parts[i]), expect, fmt::format(" (element {})", i + 1)));
  }
  return out;
}

ConfigValue value_from_text(std::string_view text, const Expect& expect) {
  return std::visit(
      [&](const auto& def) -> ConfigValue {
        using T = std::decay_t<decltype(def)>;
        if constexpr (std::is_same_v<T, std::vector<std::int64_t>>) {
          return list_from_text<std::int64_t>(text, expect);
        } else if constexpr (std::is_same_v<T, std::vector<double>>) {
          return list_from_text<double>(text, expect);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          return list_from_text<std::string>(text, expect);
        } else if constexpr (std::is_same_v<T, std::string>) {
          return scalar_from_text<T>(text, expect, {});
        } else {
          return scalar_from_text<T>(trim(text), expect, {});
        }
      },
      expect.key.default_value);
}

std::string quote_toml(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += fmt::format("\\u{:04X}", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
}

std::string scalar_to_toml(bool v) {
  return v ? "true" : "false";
}
std::string scalar_to_toml(std::int64_t v) {
  return fmt::format("{}", v);
}
std::string scalar_to_toml(const std::string& v) {
  return quote_toml(v);
}
std::string scalar_to_toml(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", v);  // shortest text that reads back exactly
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

}  // namespace

std::string_view config_type_name(const ConfigValue& value) {
  return std::visit(Overloaded{
                        [](bool) { return "a boolean"; },
                        [](std::int64_t) { return "an integer"; },
                        [](double) { return "a number"; },
                        [](const std::string&) { return "a string"; },
                        [](const std::vector<std::int64_t>&) { return "a list of integers"; },
                        [](const std::vector<double>&) { return "a list of numbers"; },
                        [](const std::vector<std::string>&) { return "a list of strings"; },
                    },
                    value);
}

std::string config_value_to_toml(const ConfigValue& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (requires { v.begin(); } && !std::is_same_v<T, std::string>) {
          std::string out = "[";
          for (std::size_t i = 0; i < v.size(); ++i) {
            if (i > 0) out += ", ";
            out += scalar_to_toml(v[i]);
          }
          return out + "]";
        } else {
          return scalar_to_toml(v);
        }
      },
      value);
}

ConfigSchema& ConfigSchema::add(std::string path, ConfigValue default_value, std::string help,
                                std::vector<std::string> choices) {
  const bool bare = std::all_of(path.begin(), path.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
  if (!bare || path.empty() || path.front() == '.' || path.back() == '.' ||
      path.find("..") != std::string::npos) {
    throw std::logic_error("bad config key path: '" + path + "'");
  }
  if (find(path) != nullptr || is_section(path)) {
    throw std::logic_error("config key declared twice: " + path);
  }
  for (auto dot = path.find('.'); dot != std::string::npos; dot = path.find('.', dot + 1)) {
    if (find(std::string_view(path).substr(0, dot)) != nullptr) {
      throw std::logic_error("config key is inside another key: " + path);
    }
  }
  if (!choices.empty() && !std::holds_alternative<std::string>(default_value)) {
    throw std::logic_error("choices are for string keys: " + path);
  }
  keys_.push_back({std::move(path), std::move(default_value), std::move(help), std::move(choices)});
  return *this;
}

const ConfigKey* ConfigSchema::find(std::string_view path) const {
  for (const auto& key : keys_) {
    if (key.path == path) return &key;
  }
  return nullptr;
}

bool ConfigSchema::is_section(std::string_view prefix) const {
  for (const auto& key : keys_) {
    if (key.path.size() > prefix.size() && key.path.starts_with(prefix) &&
        key.path[prefix.size()] == '.') {
      return true;
    }
  }
  return false;
}

std::vector<std::string> ConfigSchema::paths() const {
  std::vector<std::string> out;
  out.reserve(keys_.size());
  for (const auto& key : keys_) out.push_back(key.path);
  return out;
}

Config::Config(ConfigSchema schema) : schema_(std::move(schema)) {
  for (const auto& key : schema_.keys()) entries_[key.path] = {key.default_value, "default"};
}

void Config::assign(const ConfigKey& key, ConfigValue value, const std::string& where) {
  if (!key.choices.empty()) {
    const auto& text = std::get<std::string>(value);
    bool allowed = false;
    for (const auto& choice : key.choices) allowed = allowed || choice == text;
    if (!allowed) {
      std::string list;
      for (const auto& choice : key.choices) list += (list.empty() ? "" : ", ") + choice;
      throw Error(fmt::format("key '{}' must be one of {}, got '{}'", key.path, list, text), where);
    }
  }
  entries_[key.path] = {std::move(value), where};
}

void Config::merge_toml(std::string_view text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& begin = e.source().begin;
    throw Error(fmt::format("invalid TOML: {}", e.description()),
                fmt::format("{}:{}:{}", source, begin.line, begin.column));
  }
  // Walks tables; every leaf must be a declared key.
  auto walk = [&](auto&& self, const toml::table& table, const std::string& prefix) -> void {
    for (auto&& [name, node] : table) {
      const std::string path =
          prefix.empty() ? std::string(name.str()) : prefix + "." + std::string(name.str());
      const std::string where = where_of(node, source);
      if (const ConfigKey* key = schema_.find(path)) {
        assign(*key, value_from_node(node, Expect{*key, where}), where);
      } else if (schema_.is_section(path)) {
        const toml::table* sub = node.as_table();
        if (sub == nullptr) {
          throw Error(fmt::format("'{}' is a section and must be a table, got {}", path,
                                  toml_type_name(node)),
                      where);
        }
        self(self, *sub, path);
      } else {
        throw Error(unknown_key_message(schema_, path), where);
      }
    }
  };
  walk(walk, root, "");
}

void Config::merge_file(const std::filesystem::path& path) {
  const MappedFile file(path);
  merge_toml(file.text(), path.string());
}

void Config::set(std::string_view assignment) {
  const std::string where = "--set " + std::string(assignment);
  const auto eq = assignment.find('=');
  if (eq == std::string_view::npos) {
    throw Error("expected section.key=value", where);
  }
  const std::string path(trim(assignment.substr(0, eq)));
  const ConfigKey* key = schema_.find(path);
  if (key == nullptr) {
    if (schema_.is_section(path)) {
      throw Error(fmt::format("'{}' is a section; set one of its keys", path), where);
    }
    throw Error(unknown_key_message(schema_, path), where);
  }
  assign(*key, value_from_text(assignment.substr(eq + 1), Expect{*key, where}), where);
}

const ConfigValue& Config::lookup(std::string_view path) const {
  const auto it = entries_.find(path);
  if (it == entries_.end()) throw std::logic_error("config key not declared: " + std::string(path));
  return it->second.value;
}

void Config::throw_wrong_type(std::string_view path) const {
  throw std::logic_error(fmt::format("config key '{}' read with the wrong type (it is {})", path,
                                     config_type_name(lookup(path))));
}

const std::string& Config::origin(std::string_view path) const {
  const auto it = entries_.find(path);
  if (it == entries_.end()) throw std::logic_error("config key not declared: " + std::string(path));
  return it->second.origin;
}

std::string Config::to_toml() const {
  // Top-level keys first (TOML requires them before any table header), then
  // one table per section in order of first declaration.
  std::vector<std::string> sections;
  for (const auto& key : schema_.keys()) {
    const auto dot = key.path.rfind('.');
    const std::string section = dot == std::string::npos ? "" : key.path.substr(0, dot);
    bool seen = false;
    for (const auto& s : sections) seen = seen || s == section;
    if (!seen) sections.push_back(section);
  }
  std::stable_sort(
      sections.begin(), sections.end(),
      [](const std::string& a, const std::string& b) { return a.empty() && !b.empty(); });
  std::string out;
  for (const auto& section : sections) {
    if (!section.empty()) out += fmt::format("{}[{}]\n", out.empty() ? "" : "\n", section);
    for (const auto& key : schema_.keys()) {
      const auto dot = key.path.rfind('.');
      const std::string key_section = dot == std::string::npos ? "" : key.path.substr(0, dot);
      if (key_section != section) continue;
      const std::string name = dot == std::string::npos ? key.path : key.path.substr(dot + 1);
      out += fmt::format("{} = {}\n", name, config_value_to_toml(entries_.at(key.path).value));
    }
  }
  return out;
}

Config load_config(const ConfigSchema& schema, const std::filesystem::path& file,
                   const std::vector<std::string>& overrides) {
  Config config(schema);
  if (!file.empty()) config.merge_file(file);
  for (const auto& assignment : overrides) config.set(assignment);
  return config;
}

}  // namespace borealis
