// The Prometheus text exposition format, version 0.0.4, written directly: families
// (HELP, TYPE, then their samples), label values escaped. Pure; no I/O.
// docs/METRICS.md says why corral writes it itself rather than linking prometheus-cpp.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace corral {

/// The Content-Type of the text format.
inline constexpr std::string_view kExpositionContentType =
    "text/plain; version=0.0.4; charset=utf-8";

struct MetricLabel {
  std::string_view name;
  std::string_view value;  // any bytes; escaped on output
};

/// Builds one exposition. Call family() once per metric name, then its samples.
/// Names and label names are corral's own constants (not checked); values are escaped.
class Exposition {
 public:
  /// `type`: "counter", "gauge", "untyped", ...
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, std::initializer_list<MetricLabel> labels, double value);
  void sample(std::string_view name, std::initializer_list<MetricLabel> labels,
              std::uint64_t value);
  [[nodiscard]] const std::string& text() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  void labels(std::initializer_list<MetricLabel> labels);
  std::string out_;
};

/// A label value as the text format writes it: `\` `"` and newline escaped.
std::string escape_label_value(std::string_view value);

/// A sample value: integers exactly, others in the shortest form that reads back
/// (`+Inf`, `-Inf`, `NaN` as the format spells them).
std::string format_sample_value(double value);

}  // namespace corral
