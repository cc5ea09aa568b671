// Sizes as the configuration writes them: "512", "64KiB", "256MiB", "2GiB", "1TiB"
// (powers of 1024), and "infinity" where a limit allows it.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace corral {

/// Parses a size. Returns nullopt for "infinity" when `allow_infinity`. Throws ConfigError
/// (without position) naming the text; "64K", "64M", "64G" and their lower-case and
/// "KB" forms are refused with a did-you-mean for KiB/MiB/GiB, since it is not clear
/// whether a power of 1000 or 1024 was meant.
std::optional<std::uint64_t> parse_size(std::string_view text, bool allow_infinity);

}  // namespace corral
