#include "log/log.h"

#include <spdlog/details/null_mutex.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <unistd.h>

// The location would be this file's, for every record: leave it out.
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "common/error.h"

namespace corral {
namespace {

constexpr const char* kStderrPattern = "%Y-%m-%dT%H:%M:%S.%e corral[%P] %l: %v";

thread_local LogFields current_fields;

int syslog_priority(int level) {
  switch (static_cast<spdlog::level::level_enum>(level)) {
    case spdlog::level::trace:
    case spdlog::level::debug: return LOG_DEBUG;
    case spdlog::level::info: return LOG_INFO;
    case spdlog::level::warn: return LOG_WARNING;
    case spdlog::level::err: return LOG_ERR;
    case spdlog::level::critical: return LOG_CRIT;
    default: return LOG_INFO;
  }
}

// spdlog 1.10's systemd_sink sends MESSAGE, PRIORITY and SYSLOG_IDENTIFIER only; this
// one adds the fields of the LogContext in force. A record the journal refuses (its
// socket gone) is written to stderr instead, which is the journal stream anyway, so it
// still arrives, without the fields.
class JournalSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  JournalSink() { fallback_.set_pattern(kStderrPattern); }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    auto fields = journal_fields(static_cast<int>(msg.level),
                                 std::string_view(msg.payload.data(), msg.payload.size()),
                                 LogContext::current());
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (auto& f : fields) iov.push_back(iovec{f.data(), f.size()});
    if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) < 0) fallback_.log(msg);
  }
  void flush_() override {}

 private:
  spdlog::sinks::stderr_sink_st fallback_;
};

}  // namespace

int parse_log_level(const std::string& text) {
  auto level = spdlog::level::from_str(text);
  if (level == spdlog::level::off && text != "off")
    throw ConfigError("unknown log level \"" + text +
                      "\" (use trace, debug, info, warn, error or off)");
  return static_cast<int>(level);
}

LogContext::LogContext(std::string_view job) noexcept : saved_(current_fields) {
  current_fields.job = job;
}

LogContext::LogContext(std::string_view job, unsigned slot) noexcept : saved_(current_fields) {
  current_fields.job = job;
  current_fields.slot = static_cast<long>(slot);
}

LogContext::LogContext(std::string_view job, unsigned slot, int pid) noexcept
    : saved_(current_fields) {
  current_fields.job = job;
  current_fields.slot = static_cast<long>(slot);
  if (pid > 0) current_fields.pid = pid;
}

LogContext::~LogContext() {
  current_fields = saved_;
}

const LogFields& LogContext::current() noexcept {
  return current_fields;
}

bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long dev = 0;
  unsigned long long ino = 0;
  char extra = 0;
  if (std::sscanf(stream, "%llu:%llu%c", &dev, &ino, &extra) != 2) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

std::vector<std::string> journal_fields(int level, std::string_view message,
                                        const LogFields& fields) {
  std::vector<std::string> out;
  out.reserve(6);
  out.push_back("MESSAGE=" + std::string(message));
  out.push_back("PRIORITY=" + std::to_string(syslog_priority(level)));
  out.emplace_back("SYSLOG_IDENTIFIER=corral");
  if (!fields.job.empty()) out.push_back("CORRAL_JOB=" + std::string(fields.job));
  if (fields.slot >= 0) out.push_back("CORRAL_SLOT=" + std::to_string(fields.slot));
  if (fields.pid > 0) out.push_back("CORRAL_WORKER_PID=" + std::to_string(fields.pid));
  return out;
}

void setup_logging(int level) {
  std::shared_ptr<spdlog::logger> logger;
  if (stderr_is_journal()) {
    // journald stamps time, pid and level itself.
    logger = std::make_shared<spdlog::logger>("corral", std::make_shared<JournalSink>());
  } else {
    logger = spdlog::stderr_logger_st("corral");
    logger->set_pattern(kStderrPattern);
  }
  logger->set_level(static_cast<spdlog::level::level_enum>(level));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

}  // namespace corral
