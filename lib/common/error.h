// Errors of the two regimes: setup/configuration errors are thrown with context;
// the event loop uses Result<T> and never throws.
#pragma once

#include <cerrno>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace corral {

/// Where a configuration value came from. line/column are 1-based; 0 means unknown.
struct SourceMark {
  std::string file;
  int line = 0;
  int column = 0;
};

/// One configuration problem, printed as `FILE:LINE:COLUMN: message`.
struct ConfigIssue {
  SourceMark mark;
  std::string message;
  [[nodiscard]] std::string to_string() const;
};

/// Thrown by the configuration layer with every problem it found (at least one).
class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(std::vector<ConfigIssue> issues);
  ConfigError(SourceMark mark, std::string message);
  /// A problem with no position (command-line values, pure parsers).
  explicit ConfigError(std::string message);
  [[nodiscard]] const std::vector<ConfigIssue>& issues() const { return issues_; }

 private:
  std::vector<ConfigIssue> issues_;
};

/// A failed system call during setup: prints `call object: strerror(errno)`,
/// e.g. `bind 127.0.0.1:8080: Address already in use`.
class SetupError : public std::runtime_error {
 public:
  SetupError(const std::string& call, const std::string& object, int err);
  /// A setup failure that is not a single system call.
  explicit SetupError(const std::string& message);
  [[nodiscard]] int error_number() const { return errno_; }

 private:
  int errno_ = 0;
};

/// An error code with its context, for code the event loop calls.
struct Error {
  int code = 0;      // errno value, or 0 when `what` says it all
  std::string what;  // "exec /srv/app", "fork worker 3 of job web"
  [[nodiscard]] std::string to_string() const;
};

/// The shape std::expected takes in C++23: a value or an Error.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)
  [[nodiscard]] bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T& operator*() { return value(); }
  T* operator->() { return &value(); }
  [[nodiscard]] const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

/// Result<void> equivalent.
struct Ok {};
using Status = Result<Ok>;

/// Builds an Error from the current errno.
inline Error errno_error(std::string what) {
  return Error{errno, std::move(what)};
}

}  // namespace corral
