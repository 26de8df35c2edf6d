// gnuplot is started with posix_spawnp; its stdout and stderr go to files in a
// scratch directory, which avoids pipe deadlocks whatever it prints, and are
// read back once it has exited.
#include "train/gnuplot.h"

#include <fcntl.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <system_error>

#include "core/error.h"
#include "core/text.h"

extern char** environ;

namespace borealis {

namespace {

constexpr const char* kInstallHint =
    "install the Debian package gnuplot-nox (scripts/setup.sh does it)";

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

struct Exit {
  int status = 0;  // exit status, or -signal when killed
  GnuplotOutput output;
};

Exit spawn(const std::string& program, const std::vector<std::string>& args) {
  ScratchDir dir("borealis-gnuplot");
  const std::string out_path = (dir.path() / "stdout").string();
  const std::string err_path = (dir.path() / "stderr").string();

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  std::vector<std::string> strings{program};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  pid_t pid = 0;
  const int rc = ::posix_spawnp(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc == ENOENT) throw Error("gnuplot not found; " + std::string(kInstallHint), program);
  if (rc != 0) throw_errno("cannot start gnuplot", program, rc);

  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno("cannot wait for gnuplot", program, errno);
  }
  Exit result;
  if (WIFEXITED(status)) {
    result.status = WEXITSTATUS(status);
  } else {
    result.status = WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
  }
  result.output.out = slurp(out_path);
  result.output.err = slurp(err_path);
  return result;
}

std::string describe(const Exit& e) {
  if (e.status >= 0) return "exit status " + std::to_string(e.status);
  return "killed by signal " + std::to_string(-e.status);
}

// The last non-blank line gnuplot printed: its error message.
std::string last_line(const std::string& text) {
  const auto lines = split(text, '\n');
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    const std::string_view line = trim(*it);
    if (!line.empty()) return std::string(line);
  }
  return "no message";
}

}  // namespace

bool Gnuplot::has_terminal(const std::string& name) const {
  for (const auto& t : terminals) {
    if (t == name) return true;
  }
  return false;
}

std::string Gnuplot::png_terminal() const {
  if (has_terminal("pngcairo")) return "pngcairo";
  if (has_terminal("png")) return "png";
  throw Error(
      "this gnuplot has no PNG terminal (neither pngcairo nor png); " + std::string(kInstallHint),
      program);
}

Gnuplot find_gnuplot(const std::string& program) {
  // 'print' writes to stderr unless told otherwise.
  const Exit e = spawn(program, {"-e",
                                 "set print '-'; print sprintf('%g patchlevel %s', GPVAL_VERSION, "
                                 "GPVAL_PATCHLEVEL); print GPVAL_TERMINALS"});
  if (e.status != 0) {
    throw Error("gnuplot does not run (" + describe(e) + "): " + last_line(e.output.err), program);
  }
  const auto lines = split(e.output.out, '\n');
  if (lines.size() < 2) {
    throw Error("unexpected answer from gnuplot: " + last_line(e.output.out), program);
  }
  Gnuplot g;
  g.program = program;
  g.version = std::string(trim(lines[0]));
  for (const auto& t : split(lines[1], ' ')) {
    if (!trim(t).empty()) g.terminals.emplace_back(trim(t));
  }
  return g;
}

GnuplotOutput run_gnuplot(const Gnuplot& gnuplot, const std::filesystem::path& script,
                          const std::string& where) {
  const Exit e = spawn(gnuplot.program, {script.string()});
  if (e.status != 0) {
    for (const auto& line : split(e.output.err, '\n')) {
      if (!trim(line).empty()) spdlog::error("gnuplot: {}", line);
    }
    throw Error("gnuplot failed (" + describe(e) + "): " + last_line(e.output.err), where);
  }
  for (const auto& line : split(e.output.err, '\n')) {
    if (!trim(line).empty()) spdlog::debug("gnuplot: {}", line);
  }
  return e.output;
}

std::string gnuplot_quote(const std::string& text) {
  std::string quoted = "'";
  for (const char c : text) {
    if (c == '\'') quoted += '\'';
    if (c == '\n') {
      quoted += ' ';
      continue;
    }
    quoted += c;
  }
  quoted += '\'';
  return quoted;
}

ScratchDir::ScratchDir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + ".XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw_errno("cannot create a scratch directory", pattern, errno);
  }
  path_ = pattern;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace borealis
