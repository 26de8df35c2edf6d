#include "train/metrics_writer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cmath>

#include "core/error.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

// Cuts an unfinished last line (one without its newline) off the file.
void drop_unfinished_line(const fs::path& path) {
  std::error_code ec;
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec || size == 0) return;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw_errno("cannot open the metrics file", path.string(), errno);
  std::uintmax_t end = size;  // keep [0, end)
  char buf[4096];
  bool found = false;
  while (end > 0 && !found) {
    const std::uintmax_t n = std::min<std::uintmax_t>(end, sizeof buf);
    if (std::fseek(f, static_cast<long>(end - n), SEEK_SET) != 0 || std::fread(buf, 1, n, f) != n) {
      std::fclose(f);
      throw_errno("cannot read the metrics file", path.string(), errno);
    }
    for (std::uintmax_t i = n; i > 0; --i) {
      if (buf[i - 1] == '\n') {
        found = true;
        break;
      }
      --end;
    }
  }
  std::fclose(f);
  if (end != size) {
    spdlog::warn("{}: dropping an unfinished last line of {} bytes", path.string(), size - end);
    fs::resize_file(path, end);
  }
}

}  // namespace

std::string json_number(double v) {
  return std::isfinite(v) ? fmt::format("{}", v) : "null";
}

MetricsWriter::MetricsWriter(const fs::path& path) : path_(path) {
  drop_unfinished_line(path);
  file_ = std::fopen(path.c_str(), "a");
  if (file_ == nullptr) throw_errno("cannot open the metrics file", path.string(), errno);
}

MetricsWriter::~MetricsWriter() {
  std::fclose(file_);
}

void MetricsWriter::write(const std::string& line) {
  if (std::fputs(line.c_str(), file_) < 0 || std::fputc('\n', file_) < 0 ||
      std::fflush(file_) != 0) {
    throw_errno("cannot write the metrics file", path_.string(), errno);
  }
}

}  // namespace borealis
