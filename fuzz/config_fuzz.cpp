// libFuzzer target: the YAML configuration loader on arbitrary text.
//
// The contract (issue 7, "Hostile input"): load_config_text either returns a Config
// or throws corral::ConfigError with at least one issue. Anything else (a crash, a
// sanitizer report, a hang, a leak, another exception escaping) is a finding; an
// exception other than ConfigError escapes this function and libFuzzer reports it.
// A Config that loads must also keep the promises the rest of corral relies on.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <variant>

#include "config/config.h"
#include "listen/address.h"

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "config_fuzz: invariant broken: %s\n", what);
  std::abort();
}

void check_config(const corral::Config& config) {
  if (config.jobs.empty()) broken("a loaded config has no job");
  for (const auto& job : config.jobs) {
    if (job.name.empty()) broken("a job without a name");
    if (job.command.empty() || job.command[0].empty()) broken("a job without a command");
    const auto& w = job.workers;
    if (w.start > w.max) broken("workers.start > workers.max");
    if (job.mode != corral::Mode::plain) {
      if (job.listeners.empty()) broken("a prefork/inetd job without a listener");
      if (w.min_spare > w.max_spare || w.min_spare > w.max) broken("spare range inverted");
    }
    if (w.max > 16384 || w.max == 0) broken("workers.max out of range");
    for (const auto& l : job.listeners) {
      if (l.name.empty()) broken("a listener without a name");
      if (l.backlog < 1 || l.backlog > 65535) broken("backlog out of range");
      // The canonical text must read back as the same address (duplicate detection
      // and the scoreboard's listener list rely on it).
      auto text = corral::to_string(l.address);
      try {
        if (corral::parse_listen_address(text) != l.address) broken("address round trip");
      } catch (const corral::ConfigError&) {
        broken("canonical address text does not parse");
      }
      if (!std::holds_alternative<corral::SystemdAddress>(l.address)) {
        try {
          (void)corral::to_socket_address(l.address);
        } catch (const corral::ConfigError&) {
          broken("an accepted address cannot be bound");
        }
      }
    }
  }
  (void)corral::summarize(config);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto config =
        corral::load_config_text(text, "/tmp/fuzz/x.yaml", corral::CheckOptions{false, false});
    check_config(config);
  } catch (const corral::ConfigError& e) {
    if (e.issues().empty()) broken("ConfigError without an issue");
    for (const auto& issue : e.issues()) {
      if (issue.message.empty()) broken("an issue without a message");
      (void)issue.to_string();
    }
  }
  return 0;
}
