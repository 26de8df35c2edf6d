#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "core/error.h"

namespace borealis {

void init_logging() {
  static bool done = false;
  if (!done) {
    auto logger = spdlog::stderr_color_mt("borealis");
    logger->set_pattern("%^[%Y-%m-%d %H:%M:%S.%e] [%l]%$ %v");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::info);
    done = true;
  }
  if (const char* env = std::getenv("BOREALIS_LOG_LEVEL"); env != nullptr && *env != '\0') {
    set_log_level(env, "BOREALIS_LOG_LEVEL");
  }
}

void set_log_level(std::string_view name, const std::string& where) {
  for (const char* level : kLogLevels) {
    if (name == level) {
      spdlog::set_level(spdlog::level::from_str(level));
      return;
    }
  }
  throw Error("unknown log level '" + std::string(name) +
                  "'; expected one of trace, debug, info, warn, error, off",
              where);
}

std::string log_level_name() {
  for (const char* level : kLogLevels) {
    if (spdlog::level::from_str(level) == spdlog::get_level()) return level;
  }
  return "info";
}

}  // namespace borealis
