#include "data/data_list.h"

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/text.h"
#include "data/indexed_dataset.h"

namespace borealis {

namespace {

double parse_weight(const std::string& text, const std::string& where) {
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const double w = std::strtod(begin, &end);
  if (end == begin || *end != '\0' || errno == ERANGE || !std::isfinite(w)) {
    throw Error(fmt::format("'{}' is not a weight (expected 'weight prefix [corpus]')", text),
                where);
  }
  if (w < 0) throw Error(fmt::format("negative weight {}", text), where);
  return w;
}

void normalize(std::vector<DataListEntry>& entries, const std::string& where) {
  if (entries.empty()) throw Error("the data list names no datasets", where);
  double total = 0;
  for (const auto& e : entries) total += e.weight;
  if (!(total > 0)) throw Error("the weights add up to zero", where);
  for (auto& e : entries) e.weight /= total;
}

std::vector<std::string> split_words(std::string_view line) {
  std::vector<std::string> words;
  std::istringstream in{std::string(line)};
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

}  // namespace

std::vector<DataListEntry> parse_data_list(std::string_view text, const std::string& source) {
  std::vector<DataListEntry> entries;
  std::size_t line_no = 0;
  text.remove_prefix(utf8_bom_length(text));  // written by Windows editors; not a field
  while (!text.empty()) {
    const auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    ++line_no;
    if (const auto hash = line.find('#'); hash != std::string_view::npos) {
      line = line.substr(0, hash);
    }
    const auto words = split_words(line);
    if (words.empty()) continue;
    const std::string where = fmt::format("{}:{}", source, line_no);
    if (words.size() < 2 || words.size() > 3) {
      throw Error(fmt::format("expected 'weight prefix [corpus]', found {} fields", words.size()),
                  where);
    }
    DataListEntry e;
    e.weight_text = words[0];
    e.weight = parse_weight(words[0], where);
    e.prefix = IndexedDataset::strip_suffix(words[1]);
    e.corpus = words.size() == 3 ? words[2] : e.prefix.string();
    e.where = where;
    entries.push_back(std::move(e));
  }
  normalize(entries, source);
  return entries;
}

std::vector<DataListEntry> read_data_list(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_errno("cannot read the data list", path.string(), errno);
  std::stringstream buf;
  buf << in.rdbuf();
  return parse_data_list(buf.str(), path.string());
}

std::vector<DataListEntry> data_list_from_args(const std::vector<std::string>& args) {
  if (args.size() % 2 != 0) {
    throw Error(fmt::format("expected pairs of 'weight prefix', got {} values", args.size()),
                "--data-path");
  }
  std::vector<DataListEntry> entries;
  for (std::size_t i = 0; i < args.size(); i += 2) {
    DataListEntry e;
    e.where = fmt::format("--data-path (pair {})", i / 2 + 1);
    e.weight_text = args[i];
    e.weight = parse_weight(args[i], e.where);
    e.prefix = IndexedDataset::strip_suffix(args[i + 1]);
    e.corpus = e.prefix.string();
    entries.push_back(std::move(e));
  }
  normalize(entries, "--data-path");
  return entries;
}

}  // namespace borealis
