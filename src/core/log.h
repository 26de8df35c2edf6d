// Logging: spdlog, to stderr, so that stdout stays for a command's output.
//
// Modules log with spdlog's free functions (spdlog::info, spdlog::debug, ...).
// The level comes from --log-level, else from BOREALIS_LOG_LEVEL, else "info".
#pragma once

#include <string>
#include <string_view>

namespace borealis {

// Names accepted by --log-level, in increasing severity.
inline constexpr const char* kLogLevels[] = {"trace", "debug", "info", "warn", "error", "off"};

// Installs the stderr logger (idempotent) and sets the level from the
// BOREALIS_LOG_LEVEL environment variable when it is set.
void init_logging();

// Sets the level by name; throws Error naming `where` for an unknown name.
void set_log_level(std::string_view name, const std::string& where = "--log-level");

std::string log_level_name();

}  // namespace borealis
