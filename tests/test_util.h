// Helpers shared by the tests: scratch directories, file I/O, and running the
// borealis binary as a user would.
#pragma once

#include <filesystem>
#include <functional>
#include <ios>
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
