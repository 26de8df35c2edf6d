// Running gnuplot as a child process.
//
// find_gnuplot() starts `gnuplot` (searched on PATH) once to learn its
// version and the terminals it was built with; a missing program is an Error
// that says to install gnuplot-nox. run_script() runs a script file with
// stdin from /dev/null, stdout and stderr captured; a failure (non-zero exit,
// a signal) is an Error that carries what gnuplot printed.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace borealis {

struct Gnuplot {
  std::string program = "gnuplot";
  std::string version;                 // e.g. "5.4 patchlevel 4"
  std::vector<std::string> terminals;  // names from GPVAL_TERMINALS

  bool has_terminal(const std::string& name) const;
  // "pngcairo" when available (anti-aliased), else "png"; Error when neither.
  std::string png_terminal() const;
};

// Finds and probes gnuplot. `program` is a name looked up on PATH or a path.
Gnuplot find_gnuplot(const std::string& program = "gnuplot");

struct GnuplotOutput {
  std::string out;  // what gnuplot printed on stdout
  std::string err;  // and on stderr (warnings, when it succeeded)
};

// Runs `gnuplot script`; throws Error (where = the script's purpose) with
// gnuplot's stderr when it fails.
GnuplotOutput run_gnuplot(const Gnuplot& gnuplot, const std::filesystem::path& script,
                          const std::string& where);

// Quotes text as a gnuplot single-quoted string ('' stands for ').
std::string gnuplot_quote(const std::string& text);

// A scratch directory, removed with its contents on destruction.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix);
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace borealis
