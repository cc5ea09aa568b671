#include "common/error.h"

#include <cstring>

namespace corral {
namespace {

std::string join_issues(const std::vector<ConfigIssue>& issues) {
  std::string out;
  for (const auto& issue : issues) {
    if (!out.empty()) out += '\n';
    out += issue.to_string();
  }
  return out;
}

}  // namespace

std::string ConfigIssue::to_string() const {
  if (mark.file.empty()) return message;
  if (mark.line <= 0) return mark.file + ": " + message;
  return mark.file + ":" + std::to_string(mark.line) + ":" + std::to_string(mark.column) + ": " +
         message;
}

ConfigError::ConfigError(std::vector<ConfigIssue> issues)
    : std::runtime_error(join_issues(issues)), issues_(std::move(issues)) {}

ConfigError::ConfigError(SourceMark mark, std::string message)
    : ConfigError(std::vector<ConfigIssue>{ConfigIssue{std::move(mark), std::move(message)}}) {}

ConfigError::ConfigError(std::string message)
    : ConfigError(std::vector<ConfigIssue>{ConfigIssue{{}, std::move(message)}}) {}

SetupError::SetupError(const std::string& call, const std::string& object, int err)
    : std::runtime_error(call + " " + object + ": " + std::strerror(err)), errno_(err) {}

SetupError::SetupError(const std::string& message) : std::runtime_error(message) {}

std::string Error::to_string() const {
  if (code == 0) return what;
  return what + ": " + std::strerror(code);
}

}  // namespace corral
