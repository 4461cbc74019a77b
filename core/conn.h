/* conn.h: one TCP connection with optional TLS, and the one read/write
 * path every side of postern uses: the client before and after login, the
 * upstream during its login, and the relay between them.
 *
 * The owner of a connection installs a handler: where plaintext goes
 * (buffer), what arrived (data), and what happened (eof, error, written,
 * tls_ready). When TLS is on, conn.c feeds the ciphertext it reads into
 * the TLS context and hands the handler plaintext; writes are encrypted
 * and flushed here too. No caller touches a TLS context's buffers.
 *
 * Rules: callbacks are never called after conn_close(); the conn's memory
 * must stay valid until `closed` runs (libuv frees nothing before its close
 * callback). conn_read_start() may deliver plaintext that TLS already held
 * before it returns; a delivery that would nest inside another one on the
 * same conn is run by the outer one instead, so a handler is never
 * re-entered for the same conn. */
#ifndef POSTERN_CONN_H
#define POSTERN_CONN_H

#include "tls.h"

#include <uv.h>

#include <stdbool.h>
#include <stddef.h>

typedef struct conn conn_t;

typedef struct conn_handler {
    /* Room for plaintext: returns where it goes and sets *room (0: none
     * now; reading pauses until conn_read_start). */
    char *(*buffer)(conn_t *c, size_t *room);
    /* n bytes of plaintext were put where the last buffer() said. */
    void (*data)(conn_t *c, size_t n);
    /* The peer ended (TCP EOF, or TLS close_notify), after its last data. */
    void (*eof)(conn_t *c);
    /* The connection failed: `why` is a short reason for the close
     * ("TLS error", "ECONNRESET"), conn_error_detail() the long one. */
    void (*error)(conn_t *c, const char *why);
    /* Optional: a write completed (conn_queued() went down). */
    void (*written)(conn_t *c);
    /* Optional: the TLS handshake completed. */
    void (*tls_ready)(conn_t *c);
    /* Optional: the room the last buffer() gave got nothing (the read
     * found no bytes, or ended): a pooled buffer may go back. */
    void (*release)(conn_t *c);
} conn_handler_t;

struct conn {
    uv_tcp_t tcp;
    const conn_handler_t *h;    /* NULL once closing: nothing is called */
    void *data;                 /* the handler's */
    void (*closed)(conn_t *c);  /* after the handle closed: the owner may free */
    tls_conn_t *tls;
    char *raw;                  /* ciphertext read buffer, TLS only, pooled: held during one read */
    size_t queued;              /* bytes handed to libuv, not yet written */
    char *detail;               /* the last error's long form, or NULL */
    bool reading;               /* uv_read_start is in force */
    bool tls_up;                /* the handshake is done */
    bool delivering, redeliver; /* see deliver() in conn.c */
    bool eof_seen;              /* the socket said EOF (TLS: deliver what is left, then eof) */
    bool eof_told;              /* the handler heard it */
    bool shut;                  /* conn_shutdown called */
    bool tls_failed;            /* the last failure was the TLS layer's */
    bool closing;
    bool hs_busy;               /* a handshake step runs on the thread pool */
    bool hs_resume;             /* read again when it is back */
    bool close_deferred;        /* closed meanwhile: finish when it is back */
    /* one zero-copy write at a time (conn_write_ref) */
    uv_write_t zreq;
    bool zbusy;
    size_t zlen;
    void (*zdone)(conn_t *c, int status);
    uv_shutdown_t sreq;
    void (*shutdown_done)(conn_t *c);
};

/* Sets up the handle (it must be closed with conn_close from now on). */
void conn_init(conn_t *c, uv_loop_t *loop);
void conn_set_handler(conn_t *c, const conn_handler_t *h, void *data);
/* Accepts from a listening socket: PT_OK or PT_ERROR. */
int conn_accept(conn_t *c, uv_stream_t *server);

/* The socket's local address as text: PT_OK or PT_ERROR. */
int conn_local(conn_t *c, char *ip, size_t iplen, int *port);
/* The peer's address itself: PT_OK or PT_ERROR (ss zeroed). */
int conn_peer_addr(conn_t *c, struct sockaddr_storage *ss);
/* The same for an address the caller has (a listener's). */
int conn_addr_text(const struct sockaddr_storage *ss, char *ip, size_t iplen, int *port);

void conn_read_start(conn_t *c);
void conn_read_stop(conn_t *c);

/* Starts TLS as a server (the client's leg) or a client (an upstream's):
 * the handshake runs on what is read next, then tls_ready is called.
 * Returns PT_OK, or PT_ERROR with the reason in err. */
int conn_tls_server(conn_t *c, tls_server_t *srv, char *err, size_t errlen);
int conn_tls_client(conn_t *c, tls_client_t *cli, const char *sni, bool verify, const char *cert, const char *key,
                    char *err, size_t errlen);
/* Ciphertext that arrived before TLS was started (read as plaintext
 * behind a PROXY header): handled as if just read. */
void conn_tls_input(conn_t *c, const char *data, size_t len);
bool conn_tls_active(const conn_t *c);   /* the handshake is done */
tls_conn_t *conn_tls(const conn_t *c);  /* the TLS context, NULL when plaintext */

/* Queues a copy of data (encrypted when TLS is up): PT_OK, or PT_ERROR
 * (the connection failed; the error callback is not called for it). */
int conn_write(conn_t *c, const void *data, size_t len);
/* Plaintext only: writes from the caller's buffer without a copy.
 * PT_OK: all written now, done is not called; PT_AGAIN: the rest is
 * queued and done(c, status) runs when it is written (the buffer must
 * stay untouched until then); PT_ERROR: failed. */
int conn_write_ref(conn_t *c, const char *data, size_t len, void (*done)(conn_t *c, int status));
size_t conn_queued(const conn_t *c);

/* TLS close_notify (when TLS is up), written after the queued bytes. */
void conn_close_notify(conn_t *c);
/* Half-close: close_notify, then a TCP FIN once the queue is written;
 * done (optional) runs after. PT_OK or PT_ERROR. */
int conn_shutdown(conn_t *c, void (*done)(conn_t *c));
/* Closes now: queued writes are dropped; c->closed runs later. */
void conn_close(conn_t *c);

/* The long form of the last error (TLS's message), or "". */
const char *conn_error_detail(const conn_t *c);
/* The last failure was the TLS layer's (handshake, record, input too
 * large), not the socket's. */
bool conn_failed_in_tls(const conn_t *c);

#endif
