// Errors that reach the user.
//
// A borealis::Error is a user-facing failure: bad input, a missing file, a
// corrupt dataset, an unmet requirement. It carries what went wrong and where
// (a path, "file:line", a flag name). The CLI turns it into the single line
//
//   error: <what> (<where>)
//
// and a non-zero exit. Programming mistakes use the standard exceptions
// (std::logic_error and friends) and are reported as internal errors.
#pragma once

#include <stdexcept>
#include <string>

namespace borealis {

class Error : public std::runtime_error {
 public:
  Error(std::string what, std::string where);

  const std::string& message() const { return what_; }
  const std::string& where() const { return where_; }

  // The one-line form printed by the CLI, without a trailing newline.
  std::string line() const;

 private:
  std::string what_;
  std::string where_;
};

// Text for an errno value, e.g. "No such file or directory".
std::string errno_text(int err);

// Throws Error(what + ": " + errno_text(err), where).
[[noreturn]] void throw_errno(const std::string& what, const std::string& where, int err);

}  // namespace borealis
