// Progress of long work on stderr: a bar redrawn in place when stderr is a
// terminal, otherwise a log line every 10% (so batch logs stay readable).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace borealis {

class Progress {
 public:
  // total == 0: unknown; only counts and rates are shown. A disabled
  // Progress prints nothing.
  Progress(std::string label, std::uint64_t total, std::string unit = "", bool enabled = true);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Sets the amount done so far (not thread-safe: call from one thread);
  // `extra` is shown after the bar (e.g. counts and rates).
  void update(std::uint64_t done, std::string extra = "");
  // Prints the final line (once).
  void finish();

 private:
  void draw(bool final);

  std::string label_;
  std::uint64_t total_;
  std::string unit_;
  std::uint64_t done_ = 0;
  std::string extra_;
  bool enabled_;
  bool tty_;
  bool finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace borealis
