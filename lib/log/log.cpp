#include "log/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "common/error.h"

namespace corral {

int parse_log_level(const std::string& text) {
  auto level = spdlog::level::from_str(text);
  if (level == spdlog::level::off && text != "off")
    throw ConfigError("unknown log level \"" + text +
                      "\" (use trace, debug, info, warn, error or off)");
  return static_cast<int>(level);
}

void setup_logging(int level) {
  auto logger = spdlog::stderr_logger_st("corral");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e corral[%P] %l: %v");
  logger->set_level(static_cast<spdlog::level::level_enum>(level));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

}  // namespace corral
