// Configuration: TOML files checked against a schema, plus --set overrides.
//
// Each module declares the keys it reads in a ConfigSchema ("section.key",
// a default that fixes the type, a line of help, optional allowed values).
// Loading a file then checks every key: an unknown key, a value of the wrong
// type or a value outside the allowed set is an Error naming the key and
// "file:line:column" (with a "did you mean" for likely typos). Overrides
// given as `--set section.key=value` are parsed by the key's type, so strings
// need no quotes: `--set data.path=/scratch/x`. Every value remembers where
// it came from, and to_toml() writes the fully resolved configuration.
//
//   ConfigSchema schema;
//   schema.add("train.steps", std::int64_t{1000}, "optimizer steps");
//   Config cfg = load_config(schema, "run.toml", {"train.steps=10"});
//   auto steps = cfg.get<std::int64_t>("train.steps");
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace borealis {

using ConfigValue = std::variant<bool, std::int64_t, double, std::string, std::vector<std::int64_t>,
                                 std::vector<double>, std::vector<std::string>>;

// "a boolean", "an integer", "a number", "a string", "a list of integers", ...
std::string_view config_type_name(const ConfigValue& value);

// The value as a TOML literal (strings quoted and escaped).
std::string config_value_to_toml(const ConfigValue& value);

struct ConfigKey {
  std::string path;
  ConfigValue default_value;
  std::string help;
  std::vector<std::string> choices;  // for strings: the allowed values, if limited
};

class ConfigSchema {
 public:
  // Declares a key. The default's type is the key's type; an integer is
  // accepted where a number (double) is declared.
  ConfigSchema& add(std::string path, ConfigValue default_value, std::string help,
                    std::vector<std::string> choices = {});

  const ConfigKey* find(std::string_view path) const;
  // True when `prefix` names a section: some key starts with "prefix.".
  bool is_section(std::string_view prefix) const;
  const std::vector<ConfigKey>& keys() const { return keys_; }
  std::vector<std::string> paths() const;

 private:
  std::vector<ConfigKey> keys_;  // in declaration order
};

class Config {
 public:
  // All keys at their defaults.
  explicit Config(ConfigSchema schema);

  // Applies the keys of a TOML document; `source` names it in errors.
  void merge_toml(std::string_view text, const std::string& source);
  void merge_file(const std::filesystem::path& path);
  // Applies one "section.key=value" override.
  void set(std::string_view assignment);

  template <class T>
  const T& get(std::string_view path) const {
    const ConfigValue& value = lookup(path);
    if (const T* typed = std::get_if<T>(&value)) return *typed;
    throw_wrong_type(path);
  }

  // The value of a key, whatever its type.
  const ConfigValue& value(std::string_view path) const { return lookup(path); }

  // Where the value came from: "file:line:column", "--set key=value" or "default".
  const std::string& origin(std::string_view path) const;
  bool is_default(std::string_view path) const { return origin(path) == "default"; }

  // The resolved configuration as a TOML document, keys in schema order.
  std::string to_toml() const;

  const ConfigSchema& schema() const { return schema_; }

 private:
  struct Entry {
    ConfigValue value;
    std::string origin;
  };
  const ConfigValue& lookup(std::string_view path) const;
  [[noreturn]] void throw_wrong_type(std::string_view path) const;
  void assign(const ConfigKey& key, ConfigValue value, const std::string& where);

  ConfigSchema schema_;
  std::map<std::string, Entry, std::less<>> entries_;
};

// Defaults, then `file` (if not empty), then each override in order.
Config load_config(const ConfigSchema& schema, const std::filesystem::path& file,
                   const std::vector<std::string>& overrides);

}  // namespace borealis
