// Durations as the configuration writes them.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace corral {

using Duration = std::chrono::nanoseconds;

/// Parses "500ms", "30s", "5m", "1h", "1m30s", "250us", or a plain number of seconds
/// ("2", "0.5"). "0" is zero (which disables a timeout). Pure. Throws ConfigError
/// (without position) naming the text and the accepted forms.
Duration parse_duration(std::string_view text);

/// "1m30s", "500ms", "0s": the shortest exact form, for logs and summaries.
std::string format_duration(Duration d);

}  // namespace corral
