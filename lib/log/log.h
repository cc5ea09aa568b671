// Logging set-up: spdlog to stderr, or to the journal with structured fields.
#pragma once

#include <string>

namespace corral {

/// Parses "trace", "debug", "info", "warn", "error", "off". Throws ConfigError.
int parse_log_level(const std::string& text);

/// Installs the default logger: the journal when stderr is connected to it
/// (JOURNAL_STREAM), else stderr with timestamps. `level` from parse_log_level.
void setup_logging(int level);

}  // namespace corral
