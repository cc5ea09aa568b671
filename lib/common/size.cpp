#include "common/size.h"

#include <cctype>
#include <charconv>
#include <limits>
#include <string>

#include "common/error.h"

namespace corral {

std::optional<std::uint64_t> parse_size(std::string_view text, bool allow_infinity) {
  const std::string shown(text);
  if (text == "infinity") {
    if (allow_infinity) return std::nullopt;
    throw ConfigError("\"infinity\" is not allowed here; give a size such as 256MiB");
  }
  std::uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ptr == text.data() || ec == std::errc::invalid_argument)
    throw ConfigError("\"" + shown + "\" is not a size; write 512, 64KiB, 256MiB or 2GiB" +
                      (allow_infinity ? ", or infinity" : ""));
  if (ec == std::errc::result_out_of_range) throw ConfigError("\"" + shown + "\" is too large");
  std::string_view unit(ptr, static_cast<std::size_t>(text.data() + text.size() - ptr));
  unsigned shift = 0;
  if (unit.empty() || unit == "B") {
    shift = 0;
  } else if (unit == "KiB") {
    shift = 10;
  } else if (unit == "MiB") {
    shift = 20;
  } else if (unit == "GiB") {
    shift = 30;
  } else if (unit == "TiB") {
    shift = 40;
  } else {
    std::string u(unit);
    char first =
        u.empty() ? '\0' : static_cast<char>(std::toupper(static_cast<unsigned char>(u[0])));
    const char* fix = first == 'K'   ? "KiB"
                      : first == 'M' ? "MiB"
                      : first == 'G' ? "GiB"
                      : first == 'T' ? "TiB"
                                     : nullptr;
    if (fix != nullptr)
      throw ConfigError("\"" + shown + "\": \"" + u + "\" is ambiguous; did you mean " +
                        std::to_string(value) + fix +
                        "? (sizes are powers of 1024: KiB, MiB, GiB)");
    throw ConfigError("\"" + shown + "\" has an unknown unit \"" + u +
                      "\"; use KiB, MiB, GiB or TiB");
  }
  if (shift != 0 && value > (std::numeric_limits<std::uint64_t>::max() >> shift))
    throw ConfigError("\"" + shown + "\" is too large");
  return value << shift;
}

}  // namespace corral
