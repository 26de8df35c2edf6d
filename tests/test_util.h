// Helpers shared by the tests: scratch directories, file I/O, log capture, and
// running the borealis binary as a user would.
#pragma once

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <functional>
#include <ios>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace borealis::test {

// A fresh directory under $TMPDIR, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Runs fn and returns the one-line form ("error: <what> (<where>)") of the
// borealis::Error it throws, or "no error".
std::string error_line(const std::function<void()>& fn);

std::string read_file(const std::filesystem::path& path);
void write_file(const std::filesystem::path& path, const std::string& contents);
std::vector<std::string> list_dir(const std::filesystem::path& dir);
// XORs the byte at offset `at` of a file with `mask`, in place: damage that
// keeps the file's size, for the checksum tests.
void flip_bits(const std::filesystem::path& path, std::streamoff at, unsigned char mask);

// While alive, a copy of everything spdlog's default logger writes goes
// to `out`.
class LogCapture {
 public:
  explicit LogCapture(std::ostringstream& out)
      : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out)) {
    spdlog::default_logger()->sinks().push_back(sink_);
  }
  ~LogCapture() { std::erase(spdlog::default_logger()->sinks(), sink_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

 private:
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string out;
  std::string err;
};

// Runs `program args...` with extra environment entries ("NAME=value"),
// capturing stdout and stderr.
RunResult run_program(const std::string& program, const std::vector<std::string>& args,
                      const std::vector<std::string>& env = {});

// Runs the borealis binary under test.
RunResult run_borealis(const std::vector<std::string>& args,
                       const std::vector<std::string>& env = {});

}  // namespace borealis::test
