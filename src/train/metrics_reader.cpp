// Parses metrics.jsonl line by line with nlohmann::json. Records are kept in
// a map keyed by step while reading, so that a line logged again by a resumed
// run replaces the earlier one; the maps become the sorted vectors at the end.
#include "train/metrics_reader.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace borealis {

namespace {

using nlohmann::json;

std::string location(const std::string& name, std::size_t line) {
  return name + ":" + std::to_string(line);
}

// A required non-negative integer field.
std::int64_t get_count(const json& obj, const char* key, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    throw Error(std::string("record has no \"") + key + "\"", where);
  }
  if (it->is_number_unsigned()) return static_cast<std::int64_t>(it->get<std::uint64_t>());
  if (it->is_number_integer()) {
    const auto v = it->get<std::int64_t>();
    if (v >= 0) return v;
  } else if (it->is_number_float()) {
    const double v = it->get<double>();
    if (v >= 0 && v < 9.2e18 && std::floor(v) == v) return static_cast<std::int64_t>(v);
  }
  throw Error(std::string("\"") + key + "\" must be a non-negative integer, not " + it->dump(),
              where);
}

// An optional number: missing and null are both "no value".
std::optional<double> get_number(const json& obj, const char* key, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) {
    throw Error(std::string("\"") + key + "\" must be a number or null, not " + it->dump(), where);
  }
  return it->get<double>();
}

bool get_flag(const json& obj, const char* key, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return false;
  if (!it->is_boolean()) {
    throw Error(std::string("\"") + key + "\" must be true or false, not " + it->dump(), where);
  }
  return it->get<bool>();
}

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string parse_message(const nlohmann::json::parse_error& e) {
  std::string text = e.what();
  const std::size_t cut = text.find("] ");
  if (text.starts_with("[json.exception") && cut != std::string::npos) text.erase(0, cut + 2);
  return text;
}

struct Line {
  std::size_t number = 0;  // 1-based
  std::string_view text;
};

// Non-blank lines, with their numbers in the file.
std::vector<Line> split_lines(std::string_view text) {
  std::vector<Line> lines;
  std::size_t number = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    ++number;
    std::string_view line = text.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") != std::string_view::npos) lines.push_back({number, line});
    pos = end + 1;
  }
  return lines;
}

}  // namespace

MetricsLog parse_metrics(std::string_view text, const std::string& name) {
  MetricsLog log;
  std::map<std::int64_t, TrainRecord> train;
  std::map<std::int64_t, ValidRecord> valid;

  const std::vector<Line> lines = split_lines(text);
  log.lines = lines.size();
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string where = location(name, lines[i].number);
    json obj;
    try {
      obj = json::parse(lines[i].text);
    } catch (const json::parse_error& e) {
      if (i + 1 == lines.size()) {
        // A run killed mid-write leaves a partial last line; everything
        // before it is intact.
        log.truncated_tail = true;
        log.tail_line = lines[i].number;
        log.tail_error = parse_message(e);
        break;
      }
      throw Error("malformed JSON line: " + parse_message(e), where);
    }
    if (!obj.is_object()) throw Error("line is not a JSON object", where);
    const auto kind_it = obj.find("kind");
    if (kind_it == obj.end() || !kind_it->is_string()) {
      throw Error("record has no \"kind\" string", where);
    }
    const std::string kind = kind_it->get<std::string>();
    if (kind == "train") {
      TrainRecord r;
      r.step = get_count(obj, "step", where);
      r.tokens = get_count(obj, "tokens", where);
      r.loss = get_number(obj, "loss", where);
      r.lr = get_number(obj, "lr", where);
      r.grad_norm = get_number(obj, "grad_norm", where);
      r.tokens_per_s = get_number(obj, "tokens_per_s", where);
      r.mfu = get_number(obj, "mfu", where);
      r.elapsed_s = get_number(obj, "elapsed_s", where);
      r.skipped = get_flag(obj, "skipped", where);
      if (!train.insert_or_assign(r.step, r).second) ++log.replaced;
    } else if (kind == "valid") {
      ValidRecord r;
      r.step = get_count(obj, "step", where);
      r.tokens = get_count(obj, "tokens", where);
      r.loss = get_number(obj, "loss", where);
      r.elapsed_s = get_number(obj, "elapsed_s", where);
      if (!valid.insert_or_assign(r.step, r).second) ++log.replaced;
    } else {
      ++log.other;
    }
  }
  log.train.reserve(train.size());
  for (auto& [step, r] : train) log.train.push_back(r);
  log.valid.reserve(valid.size());
  for (auto& [step, r] : valid) log.valid.push_back(r);
  return log;
}

MetricsLog read_metrics(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_errno("cannot open metrics log", path.string(), errno);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw_errno("cannot read metrics log", path.string(), errno);
  MetricsLog log = parse_metrics(buffer.str(), path.string());
  if (log.truncated_tail) {
    spdlog::warn(
        "{}:{}: ignoring the unfinished last line (the run was stopped while writing it): {}",
        path.string(), log.tail_line, log.tail_error);
  }
  return log;
}

}  // namespace borealis
