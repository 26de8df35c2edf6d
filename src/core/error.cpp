#include "core/error.h"

#include <cstring>

namespace borealis {

namespace {
std::string compose(const std::string& what, const std::string& where) {
  return where.empty() ? what : what + " (" + where + ")";
}
}  // namespace

Error::Error(std::string what, std::string where)
    : std::runtime_error(compose(what, where)), what_(std::move(what)), where_(std::move(where)) {}

std::string Error::line() const {
  return "error: " + std::string(std::runtime_error::what());
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns a pointer that may or may not be buf.
  const char* text = strerror_r(err, buf, sizeof buf);
  return text;
}

void throw_errno(const std::string& what, const std::string& where, int err) {
  throw Error(what + ": " + errno_text(err), where);
}

}  // namespace borealis
