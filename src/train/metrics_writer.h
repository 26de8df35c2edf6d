// metrics.jsonl of a training run: one JSON object per line, appended and
// flushed as written. A run killed while writing a record leaves an
// unfinished last line; opening the file again cuts it off, so the next
// record starts a line of its own (the step it described is logged again
// when the run resumes).
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

namespace borealis {

// A JSON number, or null for NaN and infinities.
std::string json_number(double v);

class MetricsWriter {
 public:
  explicit MetricsWriter(const std::filesystem::path& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Appends one record (a JSON object without the newline).
  void write(const std::string& line);

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace borealis
