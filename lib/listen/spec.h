// What the configuration says about one listening socket (lib/config fills it in, lib/listen
// opens it). Kept here so that lib/listen needs nothing from lib/config.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "common/error.h"
#include "listen/access.h"
#include "listen/address.h"

namespace corral {

struct ListenerSpec {
  ListenAddress address;
  std::string name;                 // defaults to the job's name
  std::optional<mode_t> unix_mode;  // unix sockets: default 0666
  std::string owner;                // unix sockets: user name, "" = the supervisor's
  std::string group;
  int backlog = 1024;
  AccessRules access;          // allow:/deny: in force here (the listener's own, else the job's)
  bool own_access = false;     // the listener had allow: or deny: of its own
  bool kernel_filter = false;  // prefork/plain: enforced by a socket filter (SO_ATTACH_FILTER)
  SourceMark mark;
};

}  // namespace corral
