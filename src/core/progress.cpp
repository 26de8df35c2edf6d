#include "core/progress.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace borealis {

Progress::Progress(std::string label, std::uint64_t total, std::string unit, bool enabled)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) == 1 && spdlog::should_log(spdlog::level::info)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

// Work that ends early (an error) gets no final line, only the end of the bar.
Progress::~Progress() {
  if (!finished_ && enabled_ && tty_ && last_draw_ != start_) std::fputc('\n', stderr);
}

void Progress::update(std::uint64_t done, std::string extra) {
  done_ = done;
  extra_ = std::move(extra);
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (now - last_draw_ >= std::chrono::milliseconds(100)) {
      last_draw_ = now;
      draw(false);
    }
  } else if (total_ > 0) {
    const int decile = static_cast<int>(10 * done_ / total_);
    if (decile > last_decile_ && decile > 0 && decile < 10) {
      last_decile_ = decile;
      draw(false);
    }
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_) draw(true);
}

void Progress::draw(bool final) {
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = secs > 0 ? static_cast<double>(done_) / secs : 0.0;
  std::string text =
      fmt::format("{}: {}{}", label_, done_, total_ > 0 ? fmt::format("/{}", total_) : "");
  if (!unit_.empty()) text += " " + unit_;
  if (total_ > 0) {
    const double frac = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    text =
        fmt::format("{} [{}{}] {:3.0f}%", text, std::string(static_cast<std::size_t>(filled), '#'),
                    std::string(static_cast<std::size_t>(kWidth - filled), '.'), 100 * frac);
    if (!final && rate > 0 && done_ < total_) {
      text += fmt::format(", ETA {:.0f} s", static_cast<double>(total_ - done_) / rate);
    }
  }
  if (!extra_.empty()) text += ", " + extra_;
  text += fmt::format(", {:.1f} s", secs);
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s", text.c_str(), final ? "\n" : "");
    std::fflush(stderr);
  } else {
    spdlog::info("{}", text);
  }
}

}  // namespace borealis
