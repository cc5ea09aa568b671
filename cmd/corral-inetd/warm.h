/* Warm inetd mode (`inetd: { warm: true }`): the acceptor starts the legacy program
 * before it accepts, on two pipes, so that the program runs its start-up and blocks in
 * its first read while no client waits; an accepted connection is then relayed to it
 * with splice(2). docs/INETD.md has the reasoning and the figures. */
#ifndef CORRAL_INETD_WARM_H
#define CORRAL_INETD_WARM_H

#include <corral/worker.h>
#include <sys/socket.h>

/* CORRAL_INETD_WARM, set by the supervisor for a warm job and stripped before the
 * program's exec: "1", or "proxy-v1" for `warm_header: proxy-v1`. */
#define CORRAL_ENV_INETD_WARM "CORRAL_INETD_WARM"

/* The acceptor's exit status when its waiting program exited, crashed or wrote before
 * any client connected: the supervisor counts it as a failure and backs off. */
#define CORRAL_WARM_LOST_EXIT 3

enum warm_header { WARM_HEADER_NONE = 0, WARM_HEADER_PROXY_V1 = 1 };

/* Starts PROGRAM (argv, envp) on two pipes and waits until it blocks in a read of its
 * stdin (or a bounded while). Returns 0; on a program that exits or writes before it is
 * ready, logs and exits the process with CORRAL_WARM_LOST_EXIT (the slot still says
 * STARTING, so the supervisor's usual start-up failure backoff applies); on a failed
 * exec, writes REPORT_FD's report and exits 127. Afterwards, until warm_serve(), a
 * program that exits or writes makes the process leave with CORRAL_WARM_LOST_EXIT. */
int warm_start(corral_worker* w, const char* job, const char* program, char** argv, char** envp,
               int report_fd, enum warm_header header);

/* Nonzero when the program was lost while corral_worker_accept() ran (it then said
 * ESHUTDOWN): exit with CORRAL_WARM_LOST_EXIT. */
int warm_lost(void);

/* Ends the waiting program (the acceptor is stopping, or a connection is about to be
 * served cold) and reaps it. */
void warm_abandon(void);

/* Joins the accepted connection CONN to the waiting program and relays until both
 * directions are done; returns the exit status for the acceptor (the program's), or -1
 * when the program was found gone or misbehaving at the join: the caller then serves
 * CONN cold, by exec'ing the program on it as plain inetd mode does. */
int warm_serve(int conn, const struct sockaddr* peer, socklen_t peer_len,
               const struct sockaddr* local, socklen_t local_len);

#endif
