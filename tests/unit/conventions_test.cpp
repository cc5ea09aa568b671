// lib/supervisor/conventions: the einhorn and Server::Starter variables, formatted as those
// launchers format them.
#include "supervisor/conventions.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <doctest/doctest.h>

#include <cstring>

namespace {

std::string v4(const char* host, std::uint16_t port) {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_port = htons(port);
  ::inet_pton(AF_INET, host, &in.sin_addr);
  return corral::server_starter_address(reinterpret_cast<sockaddr*>(&in), sizeof in, false);
}

std::string v6(const char* host, std::uint16_t port, bool dual) {
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  in6.sin6_port = htons(port);
  ::inet_pton(AF_INET6, host, &in6.sin6_addr);
  return corral::server_starter_address(reinterpret_cast<sockaddr*>(&in6), sizeof in6, dual);
}

}  // namespace

TEST_CASE("Server::Starter addresses as start_server writes them") {
  CHECK(v4("127.0.0.1", 8080) == "127.0.0.1:8080");
  CHECK(v6("::1", 8080, false) == "[::1]:8080");
  CHECK(v6("::", 8080, true) == "8080");  // ":8080": every address, named by its port
  CHECK(v6("::", 8080, false) == "[::]:8080");
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::strcpy(un.sun_path, "/run/app.sock");
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 14);
  CHECK(corral::server_starter_address(reinterpret_cast<sockaddr*>(&un), len, false) ==
        "/run/app.sock");
  CHECK(corral::server_starter_port(
            {{"127.0.0.1:8080", 3}, {"[::1]:8080", 4}, {"8080", 5}, {"/run/app.sock", 6}}) ==
        "127.0.0.1:8080=3;[::1]:8080=4;8080=5;/run/app.sock=6");
}

TEST_CASE("einhorn variables: a count, one per fd, the child index, no master pid") {
  auto env = corral::einhorn_env({3, 4}, 7);
  CHECK(env == std::vector<std::pair<std::string, std::string>>{{"EINHORN_FD_COUNT", "2"},
                                                                {"EINHORN_FD_0", "3"},
                                                                {"EINHORN_FD_1", "4"},
                                                                {"EINHORN_CHILD_INDEX", "7"}});
}
