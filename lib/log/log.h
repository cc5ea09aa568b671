// Logging set-up: spdlog to stderr, or to the journal with structured fields.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace corral {

/// Parses "trace", "debug", "info", "warn", "error", "off". Throws ConfigError.
int parse_log_level(const std::string& text);

/// Installs the default logger: the journal when stderr is connected to it
/// (JOURNAL_STREAM), else stderr with timestamps. `level` from parse_log_level.
void setup_logging(int level);

/// The structured fields that log records written on this thread carry (in the journal:
/// CORRAL_JOB, CORRAL_SLOT, CORRAL_WORKER_PID). Unknown: empty job, slot -1, pid 0.
struct LogFields {
  std::string_view job;
  long slot = -1;
  long pid = 0;
};

/// While alive, log records written on this thread carry the given fields; those it
/// does not give are inherited from the enclosing LogContext, and the destructor restores
/// the enclosing ones. Use it around per-job or per-worker log calls:
///   LogContext ctx{job.cfg.name, w.slot, w.pid};
///   spdlog::warn("job {}: worker {} ...", ...);
/// `job` is not copied: it must outlive the context. Never throws, never allocates,
/// so it is safe in noexcept event-loop handlers. Not to be moved or heap-allocated.
class LogContext {
 public:
  explicit LogContext(std::string_view job) noexcept;
  LogContext(std::string_view job, unsigned slot) noexcept;
  LogContext(std::string_view job, unsigned slot, int pid) noexcept;
  ~LogContext();
  LogContext(const LogContext&) = delete;
  LogContext& operator=(const LogContext&) = delete;

  /// The fields in force on this thread.
  static const LogFields& current() noexcept;

 private:
  LogFields saved_;
};

/// True when fd 2 is the stream that JOURNAL_STREAM ("DEVICE:INODE", set by systemd for
/// StandardError=journal) names, compared with fstat(2) as systemd.exec(5) advises.
bool stderr_is_journal();

/// The journal fields ("NAME=value") of one record: MESSAGE, PRIORITY,
/// SYSLOG_IDENTIFIER=corral, then CORRAL_JOB, CORRAL_SLOT, CORRAL_WORKER_PID for the
/// fields that are known. `level` is an spdlog level. Pure.
std::vector<std::string> journal_fields(int level, std::string_view message,
                                        const LogFields& fields);

}  // namespace corral
