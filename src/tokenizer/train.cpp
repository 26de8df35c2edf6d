#include "tokenizer/train.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/text.h"

namespace borealis {

namespace {

using Clock = std::chrono::steady_clock;

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceCounts = std::unordered_map<std::string, std::uint64_t, StringHash, std::equal_to<>>;

// Counts pieces of documents on all threads, one map per thread.
class Counter {
 public:
  Counter(const PreTokenizer& pre, int threads)
      : pre_(pre), maps_(static_cast<std::size_t>(threads)) {}

  // Documents given as views; `decode` turns one into text (e.g. parses JSON).
  template <class Decode>
  void add(const std::vector<std::string_view>& items, Decode decode) {
    const auto n = static_cast<std::int64_t>(items.size());
    std::uint64_t pieces = 0;
    bool failed = false;
    Error failure("", "");
#pragma omp parallel num_threads(static_cast <int>(maps_.size())) reduction(+ : pieces)
    {
      PieceCounts& counts = maps_[static_cast<std::size_t>(omp_get_thread_num())];
      std::vector<std::string_view> split;
      std::string text;
#pragma omp for schedule(dynamic, 16)
      for (std::int64_t i = 0; i < n; ++i) {
        try {
          const std::string_view doc =
              decode(static_cast<std::size_t>(i), items[static_cast<std::size_t>(i)], text);
          split.clear();
          pre_.split(doc, split);
          pieces += split.size();
          for (const auto piece : split) {
            const auto it = counts.find(piece);
            if (it != counts.end()) {
              ++it->second;
            } else {
              counts.emplace(std::string(piece), 1);
            }
          }
        } catch (const Error& e) {
#pragma omp critical
          if (!failed) {
            failed = true;
            failure = e;
          }
        }
      }
    }
    if (failed) throw failure;
    pieces_ += pieces;
  }

  // All pieces with their counts, sorted by bytes.
  std::vector<std::pair<std::string, std::uint64_t>> take_sorted() {
    PieceCounts all = std::move(maps_[0]);
    for (std::size_t t = 1; t < maps_.size(); ++t) {
      for (auto& [piece, count] : maps_[t]) all[piece] += count;
      PieceCounts().swap(maps_[t]);
    }
    std::vector<std::pair<std::string, std::uint64_t>> out(std::make_move_iterator(all.begin()),
                                                           std::make_move_iterator(all.end()));
    std::sort(out.begin(), out.end());
    return out;
  }

  std::uint64_t pieces() const {
    return pieces_;
  }

 private:
  const PreTokenizer& pre_;
  std::vector<PieceCounts> maps_;
  std::uint64_t pieces_ = 0;
};

std::uint64_t key(std::uint32_t a, std::uint32_t b) {
  return (std::uint64_t{a} << 32) | b;
}

struct Word {
  std::vector<std::uint32_t> symbols;
  std::uint64_t count;
  std::uint32_t stamp = 0;  // last merge that rewrote this word
};

// Learns merges over the counted pieces.
class Merger {
 public:
  Merger(std::vector<std::pair<std::string, std::uint64_t>> pieces) {
    words_.reserve(pieces.size());
    for (auto& [bytes, count] : pieces) {
      Word w{{}, count};
      w.symbols.reserve(bytes.size());
      for (const char c : bytes) w.symbols.push_back(static_cast<unsigned char>(c));
      words_.push_back(std::move(w));
    }
    for (std::uint32_t b = 0; b < 256; ++b) tokens_.emplace_back(1, static_cast<char>(b));
    for (std::uint32_t i = 0; i < words_.size(); ++i) add_pairs(i, +1);
    for (const auto& [k, count] : counts_) {
      if (count > 0) heap_.push({static_cast<std::uint64_t>(count), k});
    }
  }

  // Merges until `target_tokens` tokens exist or no pair is frequent enough.
  void run(std::size_t target_tokens, std::uint64_t min_frequency, bool show_progress) {
    std::unordered_map<std::string, std::uint32_t> ids;
    for (std::uint32_t i = 0; i < tokens_.size(); ++i) ids.emplace(tokens_[i], i);
    Progress progress("learning merges", target_tokens > 256 ? target_tokens - 256 : 0, "tokens",
                      show_progress);
    while (tokens_.size() < target_tokens && !heap_.empty()) {
      const Entry top = heap_.top();
      heap_.pop();
      const std::int64_t current = counts_[top.pair];
      if (static_cast<std::uint64_t>(current) != top.count) {
        if (current > 0) heap_.push({static_cast<std::uint64_t>(current), top.pair});
        continue;  // stale entry
      }
      if (top.count < min_frequency) break;
      const auto a = static_cast<std::uint32_t>(top.pair >> 32);
      const auto b = static_cast<std::uint32_t>(top.pair);
      std::string bytes = tokens_[a] + tokens_[b];
      std::uint32_t z = 0;
      if (const auto it = ids.find(bytes); it != ids.end()) {
        z = it->second;  // the same bytes reached by another pair
      } else {
        z = static_cast<std::uint32_t>(tokens_.size());
        ids.emplace(bytes, z);
        tokens_.push_back(std::move(bytes));
      }
      merges_.push_back({a, b});
      apply(a, b, z);
      progress.update(tokens_.size() - 256);
    }
    progress.finish();
  }

  std::vector<std::string> take_tokens() { return std::move(tokens_); }
  const std::vector<BpeModel::Merge>& merges() const { return merges_; }

 private:
  struct Entry {
    std::uint64_t count;
    std::uint64_t pair;
    // Highest count first; among equal counts the smaller pair (deterministic).
    bool operator<(const Entry& o) const {
      return count != o.count ? count < o.count : pair > o.pair;
    }
  };

  void add_pairs(std::uint32_t word, int sign) {
    const Word& w = words_[word];
    for (std::size_t i = 0; i + 1 < w.symbols.size(); ++i) {
      const std::uint64_t k = key(w.symbols[i], w.symbols[i + 1]);
      counts_[k] += sign * static_cast<std::int64_t>(w.count);
      if (sign > 0) where_[k].push_back(word);
    }
  }

  // Rewrites every word holding (a, b); pairs that gained count re-enter the heap.
  void apply(std::uint32_t a, std::uint32_t b, std::uint32_t z) {
    ++stamp_;
    std::vector<std::uint32_t> holders = std::move(where_[key(a, b)]);
    where_.erase(key(a, b));
    for (const std::uint32_t idx : holders) {
      Word& w = words_[idx];
      if (w.stamp == stamp_) continue;  // listed twice
      w.stamp = stamp_;
      bool found = false;
      for (std::size_t i = 0; i + 1 < w.symbols.size() && !found; ++i) {
        found = w.symbols[i] == a && w.symbols[i + 1] == b;
      }
      if (!found) continue;  // stale: an earlier merge rewrote it
      add_pairs(idx, -1);
      std::size_t out = 0;
      for (std::size_t i = 0; i < w.symbols.size(); ++i) {
        if (i + 1 < w.symbols.size() && w.symbols[i] == a && w.symbols[i + 1] == b) {
          w.symbols[out++] = z;
          ++i;
        } else {
          w.symbols[out++] = w.symbols[i];
        }
      }
      w.symbols.resize(out);
      add_pairs(idx, +1);
      for (std::size_t i = 0; i + 1 < w.symbols.size(); ++i) {
        if (w.symbols[i] == z || w.symbols[i + 1] == z)
          touched_.push_back(key(w.symbols[i], w.symbols[i + 1]));
      }
    }
    std::sort(touched_.begin(), touched_.end());
    touched_.erase(std::unique(touched_.begin(), touched_.end()), touched_.end());
    for (const std::uint64_t k : touched_) {
      const std::int64_t c = counts_[k];
      if (c > 0) heap_.push({static_cast<std::uint64_t>(c), k});
    }
    touched_.clear();
  }

  std::vector<Word> words_;
  std::vector<std::string> tokens_;
  std::vector<BpeModel::Merge> merges_;
  std::unordered_map<std::uint64_t, std::int64_t> counts_;
  std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> where_;
  std::priority_queue<Entry> heap_;
  std::vector<std::uint64_t> touched_;
  std::uint32_t stamp_ = 0;
};

Tokenizer finish(Counter& counter, const PreTokenizer& pre, const BpeTrainOptions& o,
                 BpeTrainStats& stats, Clock::time_point start) {
  stats.pieces = counter.pieces();
  auto pieces = counter.take_sorted();
  stats.distinct_pieces = pieces.size();
  stats.count_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  const auto merge_start = Clock::now();
  Merger merger(std::move(pieces));
  merger.run(o.vocab_size - o.special_tokens.size(), std::max<std::uint64_t>(1, o.min_frequency),
             o.progress);
  stats.merges = merger.merges().size();
  std::vector<std::string> tokens = merger.take_tokens();
  std::vector<AddedToken> specials;
  for (const auto& s : o.special_tokens) {
    specials.push_back({s, static_cast<std::uint32_t>(tokens.size() + specials.size()), true});
  }
  BpeModel model =
      BpeModel::from_merges(std::move(tokens), merger.merges(), false, "trained vocabulary");
  stats.merge_seconds = std::chrono::duration<double>(Clock::now() - merge_start).count();
  return Tokenizer(std::move(model), PreTokenizer::create(pre.pattern()), std::move(specials),
                   "trained");
}

void check_options(const BpeTrainOptions& o) {
  if (o.vocab_size < 256 + o.special_tokens.size()) {
    throw Error(
        fmt::format(
            "vocabulary size {} is too small: it needs 256 byte tokens and {} special token(s)",
            o.vocab_size, o.special_tokens.size()),
        "--vocab-size");
  }
  for (const auto& s : o.special_tokens) {
    if (s.empty()) throw Error("special tokens cannot be empty", "--special");
  }
}

int thread_count(const BpeTrainOptions& o) {
  return o.threads > 0 ? o.threads : omp_get_max_threads();
}

// Checks the options, counts pieces with feed(counter, stats), learns merges.
template <class Feed>
Tokenizer train(const BpeTrainOptions& o, BpeTrainStats* stats_out, Feed feed) {
  check_options(o);
  const auto start = Clock::now();
  const auto pre = PreTokenizer::create(o.pattern, "--pattern");
  BpeTrainStats stats;
  Counter counter(*pre, thread_count(o));
  feed(counter, stats);
  Tokenizer tok = finish(counter, *pre, o, stats, start);
  if (stats_out != nullptr) *stats_out = stats;
  return tok;
}

// Counts the pieces of input files (defined below the public functions).
void count_files(const std::vector<std::filesystem::path>& inputs, const BpeTrainOptions& o,
                 Counter& counter, BpeTrainStats& stats);

}  // namespace

Tokenizer train_bpe_documents(const std::vector<std::string>& documents, const BpeTrainOptions& o,
                              BpeTrainStats* stats_out) {
  return train(o, stats_out, [&](Counter& counter, BpeTrainStats& stats) {
    std::vector<std::string_view> views(documents.begin(), documents.end());
    counter.add(views, [](std::size_t, std::string_view doc, std::string&) { return doc; });
    stats.documents = documents.size();
    for (const auto& d : documents) stats.bytes += d.size();
  });
}

Tokenizer train_bpe(const std::vector<std::filesystem::path>& inputs, const BpeTrainOptions& o,
                    BpeTrainStats* stats_out) {
  return train(o, stats_out, [&](Counter& counter, BpeTrainStats& stats) {
    count_files(inputs, o, counter, stats);
  });
}

namespace {

void count_files(const std::vector<std::filesystem::path>& inputs, const BpeTrainOptions& o,
                 Counter& counter, BpeTrainStats& stats) {
  std::uint64_t total_bytes = 0;
  for (const auto& path : inputs) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) throw Error("cannot read input: " + ec.message(), path.string());
    total_bytes += size;
  }
  Progress progress("counting pieces", total_bytes, "bytes", o.progress);
  std::uint64_t done = 0;
  for (const auto& path : inputs) {
    const MappedFile file(path, MappedFile::Access::Sequential);
    const std::string where = path.string();
    if (path.extension() == ".jsonl") {
      // Batches of lines, so memory stays bounded whatever the file size.
      constexpr std::size_t kBatchBytes = 32 << 20;
      std::vector<std::string_view> lines;
      std::vector<std::size_t> line_numbers;
      std::size_t batch_bytes = 0;
      const std::string key = o.json_key;
      auto flush = [&] {
        counter.add(
            lines,
            [&](std::size_t i, std::string_view line, std::string& text) -> std::string_view {
              const std::string at = fmt::format("{}:{}", where, line_numbers[i]);
              nlohmann::json j;
              try {
                j = nlohmann::json::parse(line);
              } catch (const nlohmann::json::parse_error& e) {
                throw Error(fmt::format("malformed JSON: {}", e.what()), at);
              }
              if (!j.is_object() || !j.contains(key))
                throw Error(fmt::format("no '{}' field", key), at);
              if (!j[key].is_string()) throw Error(fmt::format("'{}' is not a string", key), at);
              text = j[key].get<std::string>();
              return text;
            });
        stats.documents += lines.size();
        done += batch_bytes;
        progress.update(done);
        lines.clear();
        line_numbers.clear();
        batch_bytes = 0;
      };
      std::string_view rest = file.text();
      std::size_t line_no = 0;
      while (!rest.empty()) {
        const std::size_t end = std::min(rest.find('\n'), rest.size());
        ++line_no;
        if (!trim(rest.substr(0, end)).empty()) {
          lines.push_back(rest.substr(0, end));
          line_numbers.push_back(line_no);
        }
        batch_bytes += std::min(end + 1, rest.size());
        rest.remove_prefix(std::min(end + 1, rest.size()));
        if (batch_bytes >= kBatchBytes) flush();
      }
      flush();
    } else {
      counter.add({file.text()},
                  [](std::size_t, std::string_view doc, std::string&) { return doc; });
      stats.documents += 1;
      done += file.size();
      progress.update(done);
    }
    stats.bytes += file.size();
  }
  progress.finish();
}

}  // namespace

}  // namespace borealis
