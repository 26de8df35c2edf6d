// Parses metrics.jsonl line by line with simdjson's DOM parser (a long run's
// log has millions of lines). Records are kept in a map keyed by step while
// reading, so that a line logged again by a resumed run replaces the earlier
// one; the maps become the sorted vectors at the end.
#include "train/metrics_reader.h"

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "core/mapped_file.h"

namespace borealis {

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

std::string location(const std::string& name, std::size_t line) {
  return name + ":" + std::to_string(line);
}

// A value as JSON text, for error messages (cut short when long).
std::string shown(const element& value) {
  std::string text = simdjson::minify(value);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// A required non-negative integer field.
std::int64_t get_count(const object& obj, const char* key, const std::string& where) {
  element value;
  if (obj.at_key(key).get(value) || value.is_null()) {
    throw Error(std::string("record has no \"") + key + "\"", where);
  }
  switch (value.type()) {
    case element_type::UINT64:
      if (value.get_uint64().value_unsafe() <= static_cast<std::uint64_t>(INT64_MAX)) {
        return static_cast<std::int64_t>(value.get_uint64().value_unsafe());
      }
      break;
    case element_type::INT64:
      if (value.get_int64().value_unsafe() >= 0) return value.get_int64().value_unsafe();
      break;
    case element_type::DOUBLE: {
      const double v = value.get_double().value_unsafe();
      if (v >= 0 && v < 9.2e18 && std::floor(v) == v) return static_cast<std::int64_t>(v);
      break;
    }
    default:
      break;
  }
  throw Error(std::string("\"") + key + "\" must be a non-negative integer, not " + shown(value),
              where);
}

// An optional number: missing and null are both "no value".
std::optional<double> get_number(const object& obj, const char* key, const std::string& where) {
  element value;
  if (obj.at_key(key).get(value) || value.is_null()) return std::nullopt;
  double v = 0;
  if (value.get_double().get(v)) {  // also converts integers
    throw Error(std::string("\"") + key + "\" must be a number or null, not " + shown(value),
                where);
  }
  return v;
}

bool get_flag(const object& obj, const char* key, const std::string& where) {
  element value;
  if (obj.at_key(key).get(value) || value.is_null()) return false;
  bool v = false;
  if (value.get_bool().get(v)) {
    throw Error(std::string("\"") + key + "\" must be true or false, not " + shown(value), where);
  }
  return v;
}

// An eval record: the known fields, and every other one as a metric.
EvalRecord read_eval(const object& obj, const std::string& where) {
  EvalRecord r;
  r.step = get_count(obj, "step", where);
  r.tokens = get_count(obj, "tokens", where);
  std::string_view task;
  if (obj.at_key("task").get_string().get(task) || task.empty()) {
    throw Error("eval record has no \"task\" string", where);
  }
  r.task = task;
  r.elapsed_s = get_number(obj, "elapsed_s", where);
  r.eval_s = get_number(obj, "eval_s", where);
  for (const auto field : obj) {
    const std::string_view key = field.key;
    if (key == "kind" || key == "step" || key == "tokens" || key == "task" || key == "elapsed_s" ||
        key == "eval_s") {
      continue;
    }
    const std::string name(key);
    r.metrics[name] = get_number(obj, name.c_str(), where);
  }
  return r;
}

// An optional string: missing and null are both empty.
std::string get_string(const object& obj, const char* key, const std::string& where) {
  element value;
  if (obj.at_key(key).get(value) || value.is_null()) return {};
  std::string_view v;
  if (value.get_string().get(v)) {
    throw Error(std::string("\"") + key + "\" must be a string, not " + shown(value), where);
  }
  return std::string(v);
}

// A straggler record's array of ranks ("slowest" or "stragglers").
std::vector<StragglerRank> read_ranks(const object& obj, const char* key,
                                      const std::string& where) {
  std::vector<StragglerRank> ranks;
  element value;
  if (obj.at_key(key).get(value) || value.is_null()) return ranks;
  simdjson::dom::array array;
  if (value.get_array().get(array)) {
    throw Error(std::string("\"") + key + "\" must be an array of ranks, not " + shown(value),
                where);
  }
  for (const element item : array) {
    object rank;
    if (item.get_object().get(rank)) {
      throw Error(std::string("\"") + key + "\" holds " + shown(item) + ", not a rank object",
                  where);
    }
    StragglerRank r;
    const std::int64_t number = get_count(rank, "rank", where);
    if (number > INT32_MAX) throw Error("\"rank\" is out of range", where);
    r.rank = static_cast<int>(number);
    r.host = get_string(rank, "host", where);
    r.busy_s = get_number(rank, "busy_s", where);
    r.compute_s = get_number(rank, "compute_s", where);
    r.data_s = get_number(rank, "data_s", where);
    r.comm_s = get_number(rank, "comm_s", where);
    r.ratio = get_number(rank, "ratio", where);
    r.z = get_number(rank, "z", where);
    r.slow_phase = get_string(rank, "slow_phase", where);
    ranks.push_back(std::move(r));
  }
  return ranks;
}

StragglerRecord read_straggler(const object& obj, const std::string& where) {
  StragglerRecord r;
  r.step = get_count(obj, "step", where);
  r.first_step = get_count(obj, "first_step", where);
  r.median_busy_s = get_number(obj, "median_busy_s", where);
  r.median_compute_s = get_number(obj, "median_compute_s", where);
  r.median_data_s = get_number(obj, "median_data_s", where);
  r.median_comm_s = get_number(obj, "median_comm_s", where);
  r.slowest = read_ranks(obj, "slowest", where);
  r.stragglers = read_ranks(obj, "stragglers", where);
  return r;
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
  std::map<std::pair<std::int64_t, std::string>, EvalRecord> eval;
  std::map<std::int64_t, StragglerRecord> straggler;

  const std::vector<Line> lines = split_lines(text);
  log.lines = lines.size();
  simdjson::dom::parser parser;
  std::string padded;  // simdjson reads a little past the end of its input
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string where = location(name, lines[i].number);
    padded.assign(lines[i].text);
    padded.append(simdjson::SIMDJSON_PADDING, '\0');
    element doc;
    if (const auto err = parser.parse(padded.data(), lines[i].text.size(), false).get(doc)) {
      if (i + 1 == lines.size()) {
        // A run killed mid-write leaves a partial last line; everything
        // before it is intact.
        log.truncated_tail = true;
        log.tail_line = lines[i].number;
        log.tail_error = simdjson::error_message(err);
        break;
      }
      throw Error(std::string("malformed JSON line: ") + simdjson::error_message(err), where);
    }
    object obj;
    if (doc.get_object().get(obj)) throw Error("line is not a JSON object", where);
    std::string_view kind;
    if (obj.at_key("kind").get_string().get(kind)) {
      throw Error("record has no \"kind\" string", where);
    }
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
    } else if (kind == "eval") {
      EvalRecord r = read_eval(obj, where);
      const std::int64_t step = r.step;
      std::string task = r.task;
      if (!eval.insert_or_assign({step, std::move(task)}, std::move(r)).second) ++log.replaced;
    } else if (kind == "straggler") {
      StragglerRecord r = read_straggler(obj, where);
      const std::int64_t step = r.step;
      if (!straggler.insert_or_assign(step, std::move(r)).second) ++log.replaced;
    } else {
      ++log.other;
    }
  }
  log.train.reserve(train.size());
  for (auto& [step, r] : train) log.train.push_back(r);
  log.valid.reserve(valid.size());
  for (auto& [step, r] : valid) log.valid.push_back(r);
  log.eval.reserve(eval.size());
  for (auto& [key, r] : eval) log.eval.push_back(std::move(r));
  log.straggler.reserve(straggler.size());
  for (auto& [step, r] : straggler) log.straggler.push_back(std::move(r));
  return log;
}

MetricsLog read_metrics(const std::filesystem::path& path) {
  // Mapped, not copied: the trainer only appends, and what it appends after
  // this point is simply not read.
  const MappedFile file(path, MappedFile::Access::Sequential);
  MetricsLog log = parse_metrics(file.text(), path.string());
  if (log.truncated_tail) {
    spdlog::warn(
        "{}:{}: ignoring the unfinished last line (the run was stopped while writing it): {}",
        path.string(), log.tail_line, log.tail_error);
  }
  return log;
}

}  // namespace borealis
