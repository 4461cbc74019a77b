/* relay.h: after login, bytes both ways between two connections with
 * bounded memory. Reading a side stops while its bytes wait to be written
 * to the other (backpressure); no per-byte work happens here.
 *
 * The relay borrows the two connections (it installs its own handlers on
 * them) and never closes them: it calls `done` once, when the session is
 * over (the upstream ended and its last bytes reached the client, or a
 * side failed), and the owner closes both. */
#ifndef POSTERN_RELAY_H
#define POSTERN_RELAY_H

#include "conn.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct relay relay_t;

typedef struct relay_conf {
    size_t buffer;           /* bytes per direction (proxy_buffer) */
    bool client_eof;         /* the client already half-closed: pass it on at once */
    uint64_t *bytes_in;      /* counters to add to: client -> upstream */
    uint64_t *bytes_out;     /* upstream -> client */
    /* why: the reason for the log; detail: a failed side's TLS error, or NULL */
    void (*done)(void *arg, const char *why, const char *detail);
    void *arg;
} relay_conf_t;

/* Starts relaying; NULL (and nothing changed) when it cannot start. */
relay_t *relay_start(conn_t *client, conn_t *upstream, const relay_conf_t *conf, uint64_t now_ms);
/* When bytes last moved, for the owner's idle timeout (proxy_timeout). */
uint64_t relay_last_active(const relay_t *r);
/* Stops (handlers detached from both connections) and frees. */
void relay_free(relay_t *r);

#endif
