/* tls.h: TLS for both legs, over mbedTLS. Everything that depends on the
 * mbedTLS version (Debian's 2.28: TLS 1.2) stays in tls.c; the rest of
 * postern sees contexts that eat ciphertext and plaintext through memory
 * buffers, so the event loop never blocks on TLS. */
#ifndef POSTERN_TLS_H
#define POSTERN_TLS_H

#include "status.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct tls_server tls_server_t;   /* certificates etc. of a listener */
typedef struct tls_client tls_client_t;   /* the upstream side */
typedef struct tls_conn tls_conn_t;       /* one connection */

struct tls_cert_conf {
    const char *name;        /* SNI name ("*.example.com" allowed), NULL for the default */
    const char *certificate; /* PEM, chain included */
    const char *key;
};
typedef struct tls_cert_conf tls_cert_conf_t;

typedef struct tls_server_conf {
    const tls_cert_conf_t *certs;  /* certs[0] is the default */
    int ncerts;
    const char *protocols;         /* "TLSv1.2" (minimum); NULL: TLSv1.2 */
    const char *ciphers;           /* IANA names separated by ":" or spaces; NULL: ECDHE with AEADs first */
    const char *curves;            /* ECDHE curves by preference ("X25519:prime256v1"); NULL or "auto": X25519, P-256 first */
    const char *client_ca;         /* verify client certificates against this CA file */
    int verify_client;             /* 0 off, 1 optional, 2 required */
    double ticket_lifetime;        /* session tickets; keys rotate every lifetime */
    const char *alpn;              /* the protocol's ALPN id ("imap"); a client offering only others is refused */
} tls_server_conf_t;

/* Once per process. */
int tls_global_init(void);
void tls_global_free(void);

/* Master and workers. The session ID cache is per process (per worker);
 * session tickets are the shared path: any worker resumes a ticket that
 * another issued, with keys made and rotated by the master only.
 *
 * tls_tickets_share: once, in the master, before the first fork (before or
 * after the configuration's tls_server_new, either works): maps the shared
 * ticket keys and makes the first one. Returns 0 or a negative errno.
 * Without it every tls_server makes and rotates its own keys (one process).
 * tls_tickets_rotate: in the master, on a timer every lifetime_seconds
 * (tls.ticket_lifetime): a new key for new tickets; tickets under the
 * previous key still resume, older ones do not. No-op without sharing.
 * tls_after_fork: in each worker at once after fork, before any TLS:
 * reseeds the random generator it inherited (aborts if it cannot). No
 * handshake may be running on another thread of the master at fork. */
int tls_tickets_share(double lifetime_seconds);
void tls_tickets_rotate(void);
void tls_after_fork(void);

tls_server_t *tls_server_new(const tls_server_conf_t *c, char *err, size_t errlen);
void tls_server_ref(tls_server_t *s);
void tls_server_unref(tls_server_t *s);

/* ca_file NULL: the system bundle. */
tls_client_t *tls_client_new(const char *ca_file, char *err, size_t errlen);
void tls_client_free(tls_client_t *c);

tls_conn_t *tls_conn_server(tls_server_t *s);
/* sni: the name sent and checked (verify); cert/key: a client certificate
 * to show (NULL: none); err says why on NULL */
tls_conn_t *tls_conn_client(tls_client_t *c, const char *sni, bool verify, const char *cert, const char *key,
                            char *err, size_t errlen);
void tls_conn_free(tls_conn_t *t);

/* Ciphertext from the socket. */
int tls_feed(tls_conn_t *t, const char *data, size_t len);
/* PT_OK when the handshake is complete, PT_AGAIN to wait for input,
 * PT_ERROR (tls_error says why). Flush tls_out afterwards. */
int tls_handshake(tls_conn_t *t);
/* Plaintext: > 0 bytes, PT_AGAIN (nothing buffered), PT_EOF, PT_ERROR. */
int tls_read(tls_conn_t *t, char *out, size_t len);
/* Encrypts all of data into the output buffer; 0 or PT_ERROR. */
int tls_write(tls_conn_t *t, const char *data, size_t len);
void tls_close_notify(tls_conn_t *t);
/* The ciphertext waiting to be sent (NULL, 0 when none); the caller
 * copies what it does not send now, then consumes it all. */
const char *tls_out_peek(const tls_conn_t *t, size_t *len);
void tls_out_consume(tls_conn_t *t, size_t len);
/* Plaintext or ciphertext still inside: call tls_read again. */
bool tls_pending(const tls_conn_t *t);

const char *tls_error(const tls_conn_t *t);
const char *tls_sni(const tls_conn_t *t);          /* the name the client asked for, or NULL */
const char *tls_protocol(const tls_conn_t *t);     /* "TLSv1.2" */
const char *tls_cipher(const tls_conn_t *t);

/* The client's verified certificate (server side), or false. */
bool tls_peer_cert(const tls_conn_t *t, char *subject, size_t sl, char *issuer, size_t il, char *serial, size_t srl,
                   char *fingerprint, size_t fl);

/* The client certificate as nginx's auth_http reports it (server side,
 * a listener that asks for certificates): verify is "SUCCESS", "NONE"
 * or "FAILED:<reason>"; when a certificate was sent, subject and issuer
 * in RFC 2253 form, serial in upper-case hex, the SHA-1 fingerprint in
 * lower-case hex and *pem (malloc'd, the caller frees) are filled and
 * true is returned. */
typedef struct tls_peer_nginx {
    char verify[200];
    char subject[512], issuer[512];
    char serial[160];
    char fingerprint[41];
    char *pem;
} tls_peer_nginx_t;
bool tls_peer_nginx(const tls_conn_t *t, tls_peer_nginx_t *out);
/* The client sent a certificate that did not verify (optional mode). */
bool tls_peer_cert_failed(const tls_conn_t *t);
const char *tls_peer_verify_error(const tls_conn_t *t); /* its first reason, static storage */

const char *tls_library_version(void);

#endif
