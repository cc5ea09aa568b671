#include "common/environment.h"

#include <string_view>

extern char** environ;

namespace corral {

std::vector<std::string> inheritable_environment() {
  std::vector<std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    auto key = kv.substr(0, kv.find('='));
    if (key == "NOTIFY_SOCKET" || key == "WATCHDOG_USEC" || key == "WATCHDOG_PID" ||
        key.starts_with("LISTEN_"))
      continue;
    out.emplace_back(kv);
  }
  return out;
}

}  // namespace corral
