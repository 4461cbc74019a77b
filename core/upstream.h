/* upstream.h: the upstreams a policy chooses, and the connection to one
 * of them: resolve, connect, send a PROXY header when asked. The login
 * (login.h: TLS, then the protocol's steps) runs on the connection this
 * hands over. Nothing here knows sessions. */
#ifndef POSTERN_UPSTREAM_H
#define POSTERN_UPSTREAM_H

#include "conn.h"

#include <stdbool.h>

enum { UPSTREAM_TLS_OFF, UPSTREAM_TLS_ON, UPSTREAM_TLS_STARTTLS };

/* An upstream the policy chose. */
typedef struct upstream {
    char *host;
    int port;
    char *user;              /* NULL: the client's */
    char *password;
    int tls;                 /* UPSTREAM_TLS_* */
    bool verify;             /* check the upstream's certificate (default) */
    char *sni;               /* the name sent and checked; NULL: host */
    char *certificate, *key; /* a client certificate for the upstream, PEM files */
    char *auth;              /* mechanism to log in upstream with, NULL: the protocol picks */
    int proxy_protocol;      /* 0, or the PROXY protocol version (1, 2) to send first */
    unsigned opt_set, opt_on; /* protocol options (SMTP's xclient...), bits by proto_option_index() */
} upstream_t;

void upstreams_free(upstream_t *u, int n);

typedef struct upstream_conn upstream_conn_t;

typedef struct upstream_events {
    /* Connected (the PROXY header sent): the login may start on c. */
    void (*connected)(void *owner, conn_t *c);
    void (*failed)(void *owner, const char *why);
} upstream_events_t;

typedef struct upstream_params {
    const upstream_t *u;             /* must stay valid until connected, failed or closed */
    const char *proxy_header;        /* sent first when u->proxy_protocol is set */
    size_t proxy_header_len;
    const upstream_events_t *ev;
    void *owner;
} upstream_params_t;

/* Starts connecting; exactly one event follows, never before this
 * returns. NULL (err says why) when it cannot even start. */
upstream_conn_t *upstream_connect(uv_loop_t *loop, const upstream_params_t *p, char *err, size_t errlen);
/* The connection, once connected (NULL before). */
conn_t *upstream_conn(upstream_conn_t *uc);
/* Detaches and closes: no event is called after this; memory is
 * released once libuv is done with it. */
void upstream_close(upstream_conn_t *uc);

#endif
