#include "common/duration.h"

#include <cctype>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "common/error.h"

namespace corral {
namespace {

[[noreturn]] void bad_duration(std::string_view text, std::string_view why) {
  throw ConfigError("invalid duration \"" + std::string(text) + "\": " + std::string(why) +
                    " (write e.g. 500ms, 30s, 5m, 1h, 1m30s, or a number of seconds)");
}

// Nanoseconds per unit, or 0 for an unknown unit.
double unit_ns(std::string_view unit) {
  if (unit == "ns") return 1;
  if (unit == "us") return 1e3;
  if (unit == "ms") return 1e6;
  if (unit == "s") return 1e9;
  if (unit == "m" || unit == "min") return 60e9;
  if (unit == "h") return 3600e9;
  if (unit == "d") return 86400e9;
  return 0;
}

}  // namespace

Duration parse_duration(std::string_view text) {
  if (text.empty()) bad_duration(text, "empty");
  double total_ns = 0;
  size_t i = 0;
  bool any = false;
  while (i < text.size()) {
    size_t start = i;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
      ++i;
    if (i == start) bad_duration(text, "expected a number");
    std::string number(text.substr(start, i - start));
    if (number.find('.') != number.rfind('.') || number == ".")
      bad_duration(text, "malformed number");
    double value = 0;
    try {
      value = std::stod(number);
    } catch (const std::out_of_range&) {
      // More digits than a double holds: std::stod throws instead of returning inf.
      bad_duration(text, "too long");
    }
    size_t ustart = i;
    while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]))) ++i;
    std::string_view unit = text.substr(ustart, i - ustart);
    if (unit.empty()) {
      if (any || i != text.size()) bad_duration(text, "a unit is missing");
      total_ns += value * 1e9;  // a plain number is seconds
    } else {
      double ns = unit_ns(unit);
      if (ns == 0) bad_duration(text, "unknown unit \"" + std::string(unit) + "\"");
      total_ns += value * ns;
    }
    any = true;
  }
  if (!std::isfinite(total_ns) || total_ns > 1e18) bad_duration(text, "too long");
  return Duration(static_cast<Duration::rep>(std::llround(total_ns)));
}

std::string format_duration(Duration d) {
  auto ns = d.count();
  if (ns == 0) return "0s";
  std::string out;
  if (ns % 1000 != 0) return std::to_string(ns) + "ns";  // "1us" for 1500ns would not be exact
  if (ns % 1000000 != 0) return std::to_string(ns / 1000) + "us";
  if (ns % 1000000000 != 0) return std::to_string(ns / 1000000) + "ms";
  auto s = ns / 1000000000;
  if (s >= 3600) {
    out += std::to_string(s / 3600) + "h";
    s %= 3600;
  }
  if (s >= 60) {
    out += std::to_string(s / 60) + "m";
    s %= 60;
  }
  if (s > 0) out += std::to_string(s) + "s";
  return out;
}

}  // namespace corral
