/* listener.h: the listening sockets. The master binds them (and keeps
 * them across reloads and upgrades); each worker accepts from them. */
#ifndef POSTERN_LISTENER_H
#define POSTERN_LISTENER_H

#include "config.h"

#include <uv.h>

/* ---- master ---- */

/* The sockets for every `listen` entry of cfg, in order, in fds: the ones
 * already bound for the same address are reused, the others bound now.
 * On failure, what this call bound is closed and err says why. */
int listen_sockets_prepare(const config_t *cfg, int *fds, char *err, size_t errlen);
/* cfg is in force: the sockets it does not use are closed. */
void listen_sockets_commit(const config_t *cfg);
/* Closes every listening socket of this process (a stop). */
void listen_sockets_close_all(void);
/* Adopts the sockets of an upgrading master ("3,4,7", from the
 * environment); the ones no `listen` entry claims are closed at commit. */
int listen_sockets_inherit(const char *list);
/* For a new binary started by USR2: clears close-on-exec on every socket
 * and writes their list ("3,4,7") into out. */
void listen_sockets_export(char *out, size_t outlen);
/* In a new worker: closes the sockets it does not accept from (a socket
 * a reload removes must close for good when the master lets it go). */
void listen_sockets_close_except(const int *keep, int nkeep);

/* ---- worker ---- */

/* Accepts on fds (as listen_sockets_prepare gave them) for cfg. */
int listeners_start(uv_loop_t *loop, config_t *cfg, const int *fds, char *err, size_t errlen);
/* Stops accepting; sessions in progress go on. */
void listeners_stop(void);

#endif
