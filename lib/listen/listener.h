// Listening sockets: bound by corral, or inherited from systemd; kept across reloads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "listen/spec.h"

namespace corral {

/// One open listening socket.
struct Listener {
  UniqueFd fd;
  std::string key;         // identity across reloads: the configured address text
  std::string name;        // LISTEN_FDNAMES entry handed to workers
  std::string display;     // the bound address as clients reach it ("127.0.0.1:41234")
  bool inherited = false;  // passed in by systemd (LISTEN_FDS) from a socket unit
  bool used = false;       // taken by a job of the current configuration
  bool stored = false;     // in the service manager's fd store (deposited, or handed back)
  std::string store_name;  // its FDNAME there (fd_store_name)
};

/// The FDNAME under which corral deposits a socket it bound itself in the fd store:
/// "corral-bound." and the address, with ':' and non-printable bytes as '_'
/// ("corral-bound.127.0.0.1_8080"). Unique per socket, so FDSTOREREMOVE removes only
/// that one, and distinct from the names of socket units, so that `systemd:NAME` never
/// takes a stored socket back: those are adopted by address.
std::string fd_store_name(const std::string& display);

/// Owns every listening socket of the supervisor. Not thread-safe; single loop.
class ListenerSet {
 public:
  /// Takes the sockets passed through LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES (checking
  /// LISTEN_PID, as sd_listen_fds does) and unsets those variables so that they do not
  /// leak to workers. Returns the number adopted. Logs a warning on a LISTEN_PID mismatch.
  /// Sockets named by fd_store_name are corral's own, back from the fd store: not
  /// `inherited`, but `stored`, adopted by address only, and closed when no job uses them.
  int adopt_systemd_listeners();

  /// Opens (or reuses, or adopts from systemd) the sockets `specs` of the job named `job`, in
  /// configuration order (a systemd:NAME listener may yield several). A job keeps its sockets alive
  /// for as long as it holds them, even after the set dropped them. Sockets already open under the
  /// same key are reused untouched, so a reload keeps their backlog. Throws SetupError naming the
  /// address (e.g. "bind 127.0.0.1:80: Address already in use").
  /// `spec_of`, when given, receives for each returned socket the index of its spec.
  std::vector<std::shared_ptr<Listener>> open_for_job(const std::string& job,
                                                      const std::vector<ListenerSpec>& specs,
                                                      std::vector<size_t>* spec_of = nullptr);

  /// Marks every socket unused; open_for_job marks the ones it returns.
  void begin_generation();
  /// Takes a socket handed over by the previous image (binary upgrade).
  void add(std::shared_ptr<Listener> listener) { listeners_.push_back(std::move(listener)); }
  /// Closes the sockets no job uses, except inherited ones (kept for a later reload).
  /// Returns the displays of what was closed.
  std::vector<std::string> close_unused();
  /// The store_name of every stored socket closed since the last call, for FDSTOREREMOVE.
  std::vector<std::string> take_removed_from_store();
  /// Logs inherited sockets that no job uses.
  void report_unused_inherited() const;

  [[nodiscard]] size_t size() const { return listeners_.size(); }
  /// Every socket (for the binary upgrade hand-over and the fd store).
  [[nodiscard]] const std::vector<std::shared_ptr<Listener>>& all() const { return listeners_; }

 private:
  std::vector<std::shared_ptr<Listener>> listeners_;
  std::vector<std::string> removed_from_store_;
};

/// Binds and listens on one TCP or unix address (binds a datagram one: udp:, unix-dgram:;
/// an abstract unix:@name has no file). Sets IPV6_V6ONLY off for ":port", SO_REUSEADDR for
/// IP; replaces a stale unix socket file but never another kind of file; applies unix
/// mode/owner/group; attaches the access filter (spec.kernel_filter) before listen().
/// Throws SetupError.
UniqueFd bind_listener(const ListenerSpec& spec);

/// Removes the unix socket file at `path` if, and only if, it is still the file `sock`
/// is bound to (not a link, not something renamed over it since). Returns whether it
/// removed it.
bool unlink_own_socket_file(int sock, const std::string& path);

/// The address a listening socket is bound to, formatted for users ("127.0.0.1:8080",
/// "udp:127.0.0.1:5353", "unix:/run/a.sock", "unix-dgram:/run/a.dgram", "@name").
std::string local_address_of(int fd);

/// The socket file of a display ("unix:/p" and "unix-dgram:/p" give "/p"), "" when none.
std::string socket_file_of(const std::string& display);

}  // namespace corral
