// What the configuration says about one listening socket (lib/config fills it in, lib/listen
// opens it). Kept here so that lib/listen needs nothing from lib/config.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "common/error.h"
#include "listen/address.h"

namespace corral {

struct ListenerSpec {
  ListenAddress address;
  std::string name;                 // defaults to the job's name
  std::optional<mode_t> unix_mode;  // unix sockets: default 0666
  std::string owner;                // unix sockets: user name, "" = the supervisor's
  std::string group;
  int backlog = 1024;
  SourceMark mark;
};

}  // namespace corral
