/* tls.c: the only file that knows mbedTLS's SSL API (2.28 here). Contexts
 * talk to the network through memory: ciphertext read from the socket is
 * fed in, ciphertext to send collects in an output buffer the caller
 * flushes, so the event loop never blocks on TLS. */
#include "tls.h"

#include "buf.h"
#include "mem.h"

#include <mbedtls/aesni.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_time.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TLS_IN_MAX (64 * 1024)        /* ciphertext buffered before mbedTLS reads it */
#define TLS_OUT_MAX (8 * 1024 * 1024) /* ciphertext not yet handed to the socket */
#define SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static int global_ready;
static mbedtls_ecp_group_id *default_curves; /* see "preferences" below */
static int *default_ciphers;

static mbedtls_ecp_group_id *curves_default(void);
static int *ciphers_default(void);
static void tickets_unshare(void);

typedef struct tls_cert {
    char *name;
    mbedtls_x509_crt crt;
    mbedtls_pk_context key;
} tls_cert_t;

struct tls_server {
    int refs;
    mbedtls_ssl_config conf;
    tls_cert_t *certs;
    int ncerts;
    mbedtls_x509_crt ca;
    mbedtls_ssl_cache_context cache;
    mbedtls_ssl_ticket_context ticket;
    uint32_t ticket_gen;      /* the shared keys' generation in ticket (0: none yet); under ticket.mutex */
    int *ciphers;
    mbedtls_ecp_group_id *curves;
    char alpn_id[16];
    const char *alpn[2];      /* mbedTLS keeps a pointer to this list */
};

/* A client certificate to show upstreams, with its own configs. */
typedef struct tls_identity {
    char *certificate, *key;
    tls_cert_t cert;
    mbedtls_ssl_config verify, noverify;
    struct tls_identity *next;
} tls_identity_t;

struct tls_client {
    mbedtls_ssl_config verify, noverify;
    mbedtls_x509_crt ca;
    tls_identity_t *ids;
};

struct tls_conn {
    mbedtls_ssl_context ssl;  /* first: the SNI callback finds the conn from it */
    tls_server_t *server;
    buf_t in;                 /* ciphertext fed, not yet read by mbedTLS */
    size_t in_off;
    buf_t out;                /* ciphertext to send */
    bool hs_done, failed;
    char sni[256];
    char err[200];
};

int tls_global_init(void)
{
    if (global_ready)
        return 0;
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, (const unsigned char *)"postern", 7) != 0)
        return -1;
    default_curves = curves_default();
    default_ciphers = ciphers_default();
    global_ready = 1;
    return 0;
}

void tls_global_free(void)
{
    if (!global_ready)
        return;
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    free(default_curves);
    free(default_ciphers);
    tickets_unshare();
    default_curves = NULL;
    default_ciphers = NULL;
    global_ready = 0;
}

const char *tls_library_version(void)
{
    return MBEDTLS_VERSION_STRING_FULL;
}

static void errtext(int rc, char *out, size_t len, const char *what)
{
    char e[160];
    mbedtls_strerror(rc, e, sizeof e);
    snprintf(out, len, "%s: %s", what, e);
}

/* ---- session tickets shared by the workers ----
 *
 * Resumption has two paths. The session ID cache (mbedtls_ssl_cache, one
 * per tls_server) lives in the memory of the process that did the full
 * handshake: with several workers it is per worker, and a client that
 * comes back on another worker's connection does a full handshake. Session
 * tickets are the shared path: the ticket carries the session, encrypted
 * under a key every worker holds, so any worker resumes it.
 *
 * The keys are made and rotated in the master only. tls_tickets_share(),
 * called once before the workers are forked, maps a small shared area
 * (MAP_SHARED | MAP_ANONYMOUS, inherited across fork) with two keys, the
 * active one's index and a generation; tls_tickets_rotate(), on the
 * master's timer every lifetime, writes a fresh key into the inactive slot
 * and makes it active. New tickets are written under the active key; the
 * other one, the previous, still decrypts tickets issued before the last
 * rotation, and a ticket from two rotations ago finds no key (a full
 * handshake). Tickets still expire after tls.ticket_lifetime whatever the
 * key (mbedTLS checks the session's start time on parse).
 *
 * Each tls_server keeps mbedTLS's own mbedtls_ssl_ticket_context; the
 * write and parse callbacks are wrappers that first copy the shared keys
 * into it when their generation changed, and set the active key's
 * generation time to now, so that mbedTLS's ssl_ticket_update_keys (run
 * at the start of every write and parse) never rotates by itself with
 * keys of its own. The master writes under a seqlock: a reader retries
 * while the sequence is odd (a write in progress) or changed while it
 * copied, so no worker applies half a key. Without tls_tickets_share (one
 * process, the unit tests) the callbacks are mbedTLS's own, unchanged:
 * each tls_server rotates its own keys every ticket lifetime. */

#define TICKET_KEY_WORDS 8 /* AES-256-GCM: 32 bytes */

typedef struct ticket_shared_key {
    uint32_t name;                    /* the 4 bytes tickets start with */
    uint32_t key[TICKET_KEY_WORDS];
    uint64_t time;                    /* when it was made (seconds) */
} ticket_shared_key_t;

typedef struct ticket_shared {
    uint32_t seq;                     /* seqlock: odd while the master writes */
    uint32_t generation;              /* bumped by each rotation, never 0 */
    uint32_t active;                  /* the key new tickets are written with */
    uint32_t lifetime;                /* the rotation interval (seconds), for the record */
    ticket_shared_key_t keys[2];
} ticket_shared_t;

static ticket_shared_t *tickets; /* NULL: each tls_server rotates its own keys */

/* The writer's side (the master). Every field is stored with __atomic
 * stores, so a reader racing with a rotation reads stale or new words,
 * never torn ones, and the sequence tells it to retry. */
static void shared_write_begin(ticket_shared_t *t)
{
    uint32_t s = __atomic_load_n(&t->seq, __ATOMIC_RELAXED);
    for (;;) {
        if (!(s & 1) && __atomic_compare_exchange_n(&t->seq, &s, s + 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            break;
        if (s & 1) {
            sched_yield();
            s = __atomic_load_n(&t->seq, __ATOMIC_RELAXED);
        }
    }
    __atomic_thread_fence(__ATOMIC_RELEASE); /* seq odd before any data store */
}

static void shared_write_end(ticket_shared_t *t)
{
    __atomic_fetch_add(&t->seq, 1, __ATOMIC_RELEASE);
}

/* A fresh key from the DRBG, drawn before the write section. */
static int fresh_key(ticket_shared_key_t *k)
{
    uint32_t r[1 + TICKET_KEY_WORDS];
    if (mbedtls_ctr_drbg_random(&drbg, (unsigned char *)r, sizeof r) != 0)
        return -1;
    k->name = r[0];
    memcpy(k->key, r + 1, sizeof k->key);
    k->time = (uint64_t)mbedtls_time(NULL);
    mbedtls_platform_zeroize(r, sizeof r);
    return 0;
}

/* Slot i = k (inside shared_write_begin/end). */
static void shared_store_key(ticket_shared_t *t, unsigned i, const ticket_shared_key_t *k)
{
    __atomic_store_n(&t->keys[i].name, k->name, __ATOMIC_RELAXED);
    for (int w = 0; w < TICKET_KEY_WORDS; w++)
        __atomic_store_n(&t->keys[i].key[w], k->key[w], __ATOMIC_RELAXED);
    __atomic_store_n(&t->keys[i].time, k->time, __ATOMIC_RELAXED);
}

int tls_tickets_share(double lifetime_seconds)
{
    if (tickets)
        return 0;
    if (tls_global_init() < 0)
        return -EIO;
    /* slot 1 gets a key too: never written with, it only makes sure that
     * no slot holds a predictable key before the first rotation */
    ticket_shared_key_t k[2];
    if (fresh_key(&k[0]) < 0 || fresh_key(&k[1]) < 0) {
        mbedtls_platform_zeroize(k, sizeof k);
        return -EIO;
    }
    void *p = mmap(NULL, sizeof(ticket_shared_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        mbedtls_platform_zeroize(k, sizeof k);
        return -e;
    }
    ticket_shared_t *t = p; /* zero-filled */
    shared_write_begin(t);
    shared_store_key(t, 0, &k[0]);
    shared_store_key(t, 1, &k[1]);
    __atomic_store_n(&t->active, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&t->lifetime, (uint32_t)(lifetime_seconds > 0 ? lifetime_seconds : 3600), __ATOMIC_RELAXED);
    __atomic_store_n(&t->generation, 1, __ATOMIC_RELAXED);
    shared_write_end(t);
    mbedtls_platform_zeroize(k, sizeof k);
    tickets = t;
    return 0;
}

void tls_tickets_rotate(void)
{
    ticket_shared_t *t = tickets;
    ticket_shared_key_t k;
    if (!t || fresh_key(&k) < 0) /* no random bytes: the keys stay, rotated next time */
        return;
    shared_write_begin(t);
    uint32_t next = 1 - __atomic_load_n(&t->active, __ATOMIC_RELAXED);
    shared_store_key(t, next, &k);
    __atomic_store_n(&t->active, next, __ATOMIC_RELAXED);
    uint32_t g = __atomic_load_n(&t->generation, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&t->generation, g ? g : 1, __ATOMIC_RELAXED); /* 0 means "none yet" to a tls_server */
    shared_write_end(t);
    mbedtls_platform_zeroize(&k, sizeof k);
}

static void tickets_unshare(void)
{
    if (tickets)
        munmap(tickets, sizeof *tickets);
    tickets = NULL;
}

/* The reader's side: a consistent copy of the area, or -1 if a write
 * seems stuck (a master killed in the middle of one): then the caller
 * keeps the keys it has. */
static int shared_read(const ticket_shared_t *t, ticket_shared_t *copy)
{
    for (int tries = 0; tries < 100000; tries++) {
        uint32_t s1 = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
            sched_yield();
            continue;
        }
        copy->generation = __atomic_load_n(&t->generation, __ATOMIC_RELAXED);
        copy->active = __atomic_load_n(&t->active, __ATOMIC_RELAXED);
        for (int i = 0; i < 2; i++) {
            copy->keys[i].name = __atomic_load_n(&t->keys[i].name, __ATOMIC_RELAXED);
            for (int w = 0; w < TICKET_KEY_WORDS; w++)
                copy->keys[i].key[w] = __atomic_load_n(&t->keys[i].key[w], __ATOMIC_RELAXED);
            copy->keys[i].time = __atomic_load_n(&t->keys[i].time, __ATOMIC_RELAXED);
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&t->seq, __ATOMIC_RELAXED) == s1 && copy->active < 2)
            return 0;
    }
    return -1;
}

/* Brings s->ticket in line with the shared keys (their generation
 * changed) and keeps mbedTLS from rotating: the active key is always
 * "made now" when mbedTLS looks. Under the ticket context's mutex, which
 * mbedTLS's write and parse take too (handshakes run on pool threads). */
static int ticket_sync(tls_server_t *s)
{
    mbedtls_ssl_ticket_context *ctx = &s->ticket;
    int rc = 0;
#if defined(MBEDTLS_THREADING_C)
    if ((rc = mbedtls_mutex_lock(&ctx->mutex)) != 0)
        return rc;
#endif
    if (__atomic_load_n(&tickets->generation, __ATOMIC_ACQUIRE) != s->ticket_gen) {
        ticket_shared_t copy;
        if (shared_read(tickets, &copy) == 0) {
            for (int i = 0; i < 2 && rc == 0; i++) {
                memcpy(ctx->keys[i].name, &copy.keys[i].name, sizeof ctx->keys[i].name);
                ctx->keys[i].generation_time = (uint32_t)copy.keys[i].time;
                /* as ssl_ticket.c's ssl_ticket_gen_key: with GCM one
                 * context set for encryption decrypts as well */
                rc = mbedtls_cipher_setkey(&ctx->keys[i].ctx, (const unsigned char *)copy.keys[i].key,
                                           TICKET_KEY_WORDS * 32 /* bits a word */, MBEDTLS_ENCRYPT);
            }
            if (rc == 0) {
                ctx->active = (unsigned char)copy.active;
                s->ticket_gen = copy.generation;
            } else { /* no name may match a key half set: no ticket parses until the next try */
                for (int i = 0; i < 2; i++)
                    mbedtls_platform_zeroize(ctx->keys[i].name, sizeof ctx->keys[i].name);
                s->ticket_gen = 0;
            }
            mbedtls_platform_zeroize(&copy, sizeof copy);
        }
    }
    ctx->keys[ctx->active].generation_time = (uint32_t)mbedtls_time(NULL);
#if defined(MBEDTLS_THREADING_C)
    if (mbedtls_mutex_unlock(&ctx->mutex) != 0)
        return MBEDTLS_ERR_THREADING_MUTEX_ERROR;
#endif
    return rc;
}

static int ticket_write(void *p, const mbedtls_ssl_session *session, unsigned char *start, const unsigned char *end,
                        size_t *tlen, uint32_t *lifetime)
{
    tls_server_t *s = p;
    *tlen = 0;
    if (tickets) {
        int rc = ticket_sync(s);
        if (rc != 0)
            return rc;
    }
    return mbedtls_ssl_ticket_write(&s->ticket, session, start, end, tlen, lifetime);
}

static int ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf, size_t len)
{
    tls_server_t *s = p;
    if (tickets) {
        int rc = ticket_sync(s);
        if (rc != 0)
            return rc;
    }
    return mbedtls_ssl_ticket_parse(&s->ticket, session, buf, len);
}

void tls_after_fork(void)
{
    if (!global_ready)
        return;
    /* The worker inherited the master's DRBG state: reseed from the
     * system's entropy, the pid as additional data, so that no two
     * processes draw the same IVs, nonces or ECDHE keys. */
    pid_t pid = getpid();
    int rc = -1;
#if defined(MBEDTLS_THREADING_C)
    if (mbedtls_mutex_lock(&drbg.mutex) == 0) {
#endif
        rc = mbedtls_ctr_drbg_reseed(&drbg, (const unsigned char *)&pid, sizeof pid);
        if (rc != 0) { /* no entropy: at least make the stream this process's own */
            struct {
                pid_t pid;
                struct timespec ts;
            } add = { pid, { 0, 0 } };
            clock_gettime(CLOCK_MONOTONIC, &add.ts);
            rc = mbedtls_ctr_drbg_update_ret(&drbg, (const unsigned char *)&add, sizeof add);
        }
#if defined(MBEDTLS_THREADING_C)
        mbedtls_mutex_unlock(&drbg.mutex);
    }
#endif
    if (rc != 0) {
        fprintf(stderr, "postern: cannot reseed the random generator after fork\n");
        abort(); /* a worker must never share the master's random stream */
    }
}

/* ---- server ---- */

static int sni_match(const char *pattern, const char *name, size_t len)
{
    size_t pl = strlen(pattern);
    if (pl == len && strncasecmp(pattern, name, len) == 0)
        return 1;
    /* "*.example.com" matches one label */
    if (pl > 2 && pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = memchr(name, '.', len);
        return dot && (size_t)(name + len - dot) == pl - 1 && strncasecmp(dot, pattern + 1, pl - 1) == 0;
    }
    return 0;
}

static int on_sni(void *p, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    tls_server_t *s = p;
    tls_conn_t *t = (tls_conn_t *)ssl;
    size_t n = len < sizeof t->sni - 1 ? len : sizeof t->sni - 1;
    memcpy(t->sni, name, n);
    t->sni[n] = '\0';
    for (int i = 1; i < s->ncerts; i++)
        if (sni_match(s->certs[i].name, (const char *)name, len))
            return mbedtls_ssl_set_hs_own_cert(ssl, &s->certs[i].crt, &s->certs[i].key);
    return 0; /* the default certificate */
}

/* mbedTLS reads a directory as a file of LONG_MAX bytes: check first */
static int regular_file(const char *path, const char *what, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s %s: not a readable regular file", what, path);
        return 0;
    }
    return 1;
}

static int load_cert(tls_cert_t *c, const tls_cert_conf_t *cc, char *err, size_t errlen)
{
    mbedtls_x509_crt_init(&c->crt);
    mbedtls_pk_init(&c->key);
    c->name = cc->name ? xstrdup(cc->name) : NULL;
    if (!regular_file(cc->certificate, "certificate", err, errlen) || !regular_file(cc->key, "key", err, errlen))
        return -1;
    int rc = mbedtls_x509_crt_parse_file(&c->crt, cc->certificate);
    if (rc != 0) {
        char what[600];
        snprintf(what, sizeof what, "certificate %s", cc->certificate);
        errtext(rc, err, errlen, what);
        return -1;
    }
    rc = mbedtls_pk_parse_keyfile(&c->key, cc->key, NULL);
    if (rc != 0) {
        char what[600];
        snprintf(what, sizeof what, "key %s", cc->key);
        errtext(rc, err, errlen, what);
        return -1;
    }
    if (mbedtls_pk_check_pair(&c->crt.pk, &c->key) != 0) {
        snprintf(err, errlen, "key %s does not match certificate %s", cc->key, cc->certificate);
        return -1;
    }
    return 0;
}

static int *parse_ciphers(const char *list, char *err, size_t errlen)
{
    int *ids = xcalloc(256, sizeof *ids), n = 0;
    char *copy = xstrdup(list), *save = NULL;
    for (char *w = strtok_r(copy, ": ,", &save); w && n < 255; w = strtok_r(NULL, ": ,", &save)) {
        int id = mbedtls_ssl_get_ciphersuite_id(w);
        if (id == 0) {
            snprintf(err, errlen, "unknown cipher suite \"%s\" (use IANA names, e.g. "
                                  "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256)", w);
            free(copy);
            free(ids);
            return NULL;
        }
        ids[n++] = id;
    }
    free(copy);
    return ids;
}

/* ---- preferences ----
 *
 * mbedTLS 2.28 prefers secp521r1 for ECDHE and ChaCha20 over AES-GCM;
 * both cost this proxy most of a handshake's CPU (an ECDH on secp521r1
 * is several times one on P-256, and AES-GCM runs on AES-NI). The server
 * chooses by its own preference, so these lists decide. */

/* The curves in order of preference when tls.curves is not set: the
 * fast ones first, every one mbedTLS offers after them (an upstream or a
 * client with only brainpool curves is still served). */
static const mbedtls_ecp_group_id curves_preferred[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_SECP521R1,
};

static mbedtls_ecp_group_id *curves_default(void)
{
    size_t np = sizeof curves_preferred / sizeof curves_preferred[0], n = 0;
    const mbedtls_ecp_group_id *all = mbedtls_ecp_grp_id_list();
    size_t nall = 0;
    while (all[nall] != MBEDTLS_ECP_DP_NONE)
        nall++;
    mbedtls_ecp_group_id *list = xcalloc(np + nall + 1, sizeof *list);
    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; j < nall; j++)
            if (all[j] == curves_preferred[i])
                list[n++] = curves_preferred[i];
    for (size_t j = 0; j < nall; j++) {
        bool seen = false;
        for (size_t i = 0; i < n; i++)
            seen = seen || list[i] == all[j];
        if (!seen)
            list[n++] = all[j];
    }
    list[n] = MBEDTLS_ECP_DP_NONE;
    return list;
}

/* nginx's ssl_ecdh_curve names (OpenSSL's) and mbedTLS's own. */
static const struct {
    const char *alias, *name;
} curve_aliases[] = {
    { "X25519", "x25519" }, { "X448", "x448" },          { "prime256v1", "secp256r1" },
    { "P-256", "secp256r1" }, { "P-384", "secp384r1" }, { "P-521", "secp521r1" },
};

/* "X25519:prime256v1" → a list for mbedtls_ssl_conf_curves; "auto":
 * the default order. */
static mbedtls_ecp_group_id *parse_curves(const char *text, char *err, size_t errlen)
{
    if (strcasecmp(text, "auto") == 0)
        return curves_default();
    mbedtls_ecp_group_id *list = xcalloc(64, sizeof *list);
    int n = 0;
    char *copy = xstrdup(text), *save = NULL;
    for (char *w = strtok_r(copy, ": ,", &save); w && n < 63; w = strtok_r(NULL, ": ,", &save)) {
        const char *name = w;
        for (size_t i = 0; i < sizeof curve_aliases / sizeof curve_aliases[0]; i++)
            if (strcasecmp(w, curve_aliases[i].alias) == 0)
                name = curve_aliases[i].name;
        const mbedtls_ecp_curve_info *info = NULL;
        for (const mbedtls_ecp_curve_info *ci = mbedtls_ecp_curve_list(); ci->grp_id != MBEDTLS_ECP_DP_NONE; ci++)
            if (strcasecmp(ci->name, name) == 0)
                info = ci;
        if (!info) {
            snprintf(err, errlen, "unknown curve \"%s\" (known: X25519, prime256v1, secp384r1, secp521r1, "
                                  "brainpoolP256r1, ...)", w);
            free(copy);
            free(list);
            return NULL;
        }
        list[n++] = info->grp_id;
    }
    free(copy);
    if (n == 0) {
        snprintf(err, errlen, "no curve named");
        free(list);
        return NULL;
    }
    list[n] = MBEDTLS_ECP_DP_NONE;
    return list;
}

/* The rank of a suite when tls.ciphers is not set: forward secrecy with
 * an AEAD first, AES-GCM before ChaCha20 where the CPU has AES
 * instructions (the reverse without), 128-bit keys before 256 (as fast
 * to break as the ECDHE that carries them); mbedTLS's order otherwise. */
static int cipher_rank(int id, bool aes_fast)
{
    const mbedtls_ssl_ciphersuite_t *cs = mbedtls_ssl_ciphersuite_from_id(id);
    if (!cs)
        return 9;
    bool ecdhe = cs->key_exchange == MBEDTLS_KEY_EXCHANGE_ECDHE_ECDSA ||
                 cs->key_exchange == MBEDTLS_KEY_EXCHANGE_ECDHE_RSA;
    bool gcm = cs->cipher == MBEDTLS_CIPHER_AES_128_GCM || cs->cipher == MBEDTLS_CIPHER_AES_256_GCM;
    bool chacha = cs->cipher == MBEDTLS_CIPHER_CHACHA20_POLY1305;
    if (!ecdhe || (!gcm && !chacha))
        return 9;
    if (gcm)
        return (aes_fast ? 0 : 2) + (cs->cipher == MBEDTLS_CIPHER_AES_256_GCM);
    return aes_fast ? 2 : 0;
}

static int *ciphers_default(void)
{
    bool aes_fast = mbedtls_aesni_has_support(MBEDTLS_AESNI_AES);
    const int *all = mbedtls_ssl_list_ciphersuites();
    size_t n = 0;
    while (all[n])
        n++;
    int *list = xcalloc(n + 1, sizeof *list);
    size_t k = 0;
    for (int rank = 0; rank <= 9; rank++) /* stable: mbedTLS's order within a rank */
        for (size_t i = 0; i < n; i++)
            if (cipher_rank(all[i], aes_fast) == rank)
                list[k++] = all[i];
    list[k] = 0;
    return list;
}

tls_server_t *tls_server_new(const tls_server_conf_t *c, char *err, size_t errlen)
{
    if (tls_global_init() < 0) {
        snprintf(err, errlen, "cannot seed the random generator");
        return NULL;
    }
    tls_server_t *s = xcalloc(1, sizeof *s);
    s->refs = 1;
    mbedtls_ssl_config_init(&s->conf);
    mbedtls_x509_crt_init(&s->ca);
    mbedtls_ssl_cache_init(&s->cache);
    mbedtls_ssl_ticket_init(&s->ticket);
    s->certs = xcalloc(c->ncerts, sizeof *s->certs);
    for (int i = 0; i < c->ncerts; i++) {
        s->ncerts++;
        if (load_cert(&s->certs[i], &c->certs[i], err, errlen) < 0)
            goto bad;
    }
    if (mbedtls_ssl_config_defaults(&s->conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0) {
        snprintf(err, errlen, "cannot set up TLS");
        goto bad;
    }
    if (c->alpn) {
        /* ALPACA (cross-protocol attacks): a client that asks for another
         * protocol by ALPN gets a no_application_protocol alert, as from
         * nginx; a client that sends no ALPN is served */
        snprintf(s->alpn_id, sizeof s->alpn_id, "%s", c->alpn);
        s->alpn[0] = s->alpn_id;
        s->alpn[1] = NULL;
        mbedtls_ssl_conf_alpn_protocols(&s->conf, s->alpn);
    }
    mbedtls_ssl_conf_rng(&s->conf, mbedtls_ctr_drbg_random, &drbg);
    /* TLS 1.2 at least: 2.28's default minimum is TLS 1.0 */
    mbedtls_ssl_conf_min_version(&s->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    if (c->protocols && !strstr(c->protocols, "TLSv1.2") && !strstr(c->protocols, "TLSv1.3")) {
        snprintf(err, errlen, "protocols: only TLSv1.2 (and TLSv1.3, not yet in this mbedTLS) are offered");
        goto bad;
    }
    if (c->ciphers && !(s->ciphers = parse_ciphers(c->ciphers, err, errlen)))
        goto bad;
    mbedtls_ssl_conf_ciphersuites(&s->conf, s->ciphers ? s->ciphers : default_ciphers);
    if (c->curves && !(s->curves = parse_curves(c->curves, err, errlen)))
        goto bad;
    mbedtls_ssl_conf_curves(&s->conf, s->curves ? s->curves : default_curves);
    if (mbedtls_ssl_conf_own_cert(&s->conf, &s->certs[0].crt, &s->certs[0].key) != 0) {
        snprintf(err, errlen, "cannot use the certificate");
        goto bad;
    }
    mbedtls_ssl_conf_sni(&s->conf, on_sni, s);
    mbedtls_ssl_cache_set_max_entries(&s->cache, 1000);
    mbedtls_ssl_conf_session_cache(&s->conf, &s->cache, mbedtls_ssl_cache_get, mbedtls_ssl_cache_set);
    /* tickets: two keys, the older replaced every lifetime (rotation);
     * the keys are the master's when tls_tickets_share was called (see
     * "session tickets shared by the workers" above). The lifetime is the
     * tickets' own: mbedTLS refuses one whose session started longer ago. */
    if (mbedtls_ssl_ticket_setup(&s->ticket, mbedtls_ctr_drbg_random, &drbg, MBEDTLS_CIPHER_AES_256_GCM,
                                 (uint32_t)(c->ticket_lifetime > 0 ? c->ticket_lifetime : 3600)) == 0)
        mbedtls_ssl_conf_session_tickets_cb(&s->conf, ticket_write, ticket_parse, s);
    if (c->verify_client) {
        if (c->client_ca && !regular_file(c->client_ca, "client_ca", err, errlen))
            goto bad;
        int rc = c->client_ca ? mbedtls_x509_crt_parse_file(&s->ca, c->client_ca) : -1;
        if (rc < 0) {
            snprintf(err, errlen, "client certificates need a readable CA file (client_ca)");
            goto bad;
        }
        mbedtls_ssl_conf_ca_chain(&s->conf, &s->ca, NULL);
        mbedtls_ssl_conf_authmode(&s->conf, c->verify_client == 2 ? MBEDTLS_SSL_VERIFY_REQUIRED
                                                                  : MBEDTLS_SSL_VERIFY_OPTIONAL);
    } else {
        mbedtls_ssl_conf_authmode(&s->conf, MBEDTLS_SSL_VERIFY_NONE);
    }
    return s;
bad:
    s->refs = 1;
    tls_server_unref(s);
    return NULL;
}

void tls_server_ref(tls_server_t *s)
{
    s->refs++;
}

void tls_server_unref(tls_server_t *s)
{
    if (!s || --s->refs > 0)
        return;
    for (int i = 0; i < s->ncerts; i++) {
        free(s->certs[i].name);
        mbedtls_x509_crt_free(&s->certs[i].crt);
        mbedtls_pk_free(&s->certs[i].key);
    }
    free(s->certs);
    mbedtls_ssl_config_free(&s->conf);
    mbedtls_x509_crt_free(&s->ca);
    mbedtls_ssl_cache_free(&s->cache);
    mbedtls_ssl_ticket_free(&s->ticket);
    free(s->ciphers);
    free(s->curves);
    free(s);
}

/* ---- client ---- */

static void client_confs(tls_client_t *c, mbedtls_ssl_config *verify, mbedtls_ssl_config *noverify);

tls_client_t *tls_client_new(const char *ca_file, char *err, size_t errlen)
{
    if (tls_global_init() < 0) {
        snprintf(err, errlen, "cannot seed the random generator");
        return NULL;
    }
    tls_client_t *c = xcalloc(1, sizeof *c);
    mbedtls_x509_crt_init(&c->ca);
    mbedtls_ssl_config_init(&c->verify);
    mbedtls_ssl_config_init(&c->noverify);
    const char *ca = ca_file ? ca_file : SYSTEM_CA;
    if (!regular_file(ca, "CA file", err, errlen)) {
        tls_client_free(c);
        return NULL;
    }
    int rc = mbedtls_x509_crt_parse_file(&c->ca, ca);
    if (rc < 0) {
        char what[600];
        snprintf(what, sizeof what, "CA file %s", ca);
        errtext(rc, err, errlen, what);
        tls_client_free(c);
        return NULL;
    }
    client_confs(c, &c->verify, &c->noverify);
    return c;
}

static void client_confs(tls_client_t *c, mbedtls_ssl_config *verify, mbedtls_ssl_config *noverify)
{
    mbedtls_ssl_config *confs[2] = { verify, noverify };
    for (int i = 0; i < 2; i++) {
        mbedtls_ssl_config_defaults(confs[i], MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT);
        mbedtls_ssl_conf_rng(confs[i], mbedtls_ctr_drbg_random, &drbg);
        mbedtls_ssl_conf_min_version(confs[i], MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
        mbedtls_ssl_conf_ca_chain(confs[i], &c->ca, NULL);
        mbedtls_ssl_conf_ciphersuites(confs[i], default_ciphers);
        mbedtls_ssl_conf_curves(confs[i], default_curves);
    }
    mbedtls_ssl_conf_authmode(verify, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_authmode(noverify, MBEDTLS_SSL_VERIFY_NONE);
}

static void identity_free(tls_identity_t *id)
{
    free(id->certificate);
    free(id->key);
    free(id->cert.name);
    mbedtls_x509_crt_free(&id->cert.crt);
    mbedtls_pk_free(&id->cert.key);
    mbedtls_ssl_config_free(&id->verify);
    mbedtls_ssl_config_free(&id->noverify);
    free(id);
}

/* The configs that show this certificate, loaded on first use. */
static tls_identity_t *identity(tls_client_t *c, const char *cert, const char *key, char *err, size_t errlen)
{
    for (tls_identity_t *id = c->ids; id; id = id->next)
        if (strcmp(id->certificate, cert) == 0 && strcmp(id->key, key) == 0)
            return id;
    tls_identity_t *id = xcalloc(1, sizeof *id);
    id->certificate = xstrdup(cert);
    id->key = xstrdup(key);
    mbedtls_ssl_config_init(&id->verify);
    mbedtls_ssl_config_init(&id->noverify);
    tls_cert_conf_t cc = { NULL, cert, key };
    if (load_cert(&id->cert, &cc, err, errlen) < 0) {
        identity_free(id);
        return NULL;
    }
    client_confs(c, &id->verify, &id->noverify);
    mbedtls_ssl_conf_own_cert(&id->verify, &id->cert.crt, &id->cert.key);
    mbedtls_ssl_conf_own_cert(&id->noverify, &id->cert.crt, &id->cert.key);
    id->next = c->ids;
    c->ids = id;
    return id;
}

void tls_client_free(tls_client_t *c)
{
    if (!c)
        return;
    while (c->ids) {
        tls_identity_t *id = c->ids;
        c->ids = id->next;
        identity_free(id);
    }
    mbedtls_ssl_config_free(&c->verify);
    mbedtls_ssl_config_free(&c->noverify);
    mbedtls_x509_crt_free(&c->ca);
    free(c);
}

/* ---- connections ---- */

static int bio_send(void *p, const unsigned char *data, size_t len)
{
    tls_conn_t *t = p;
    if (buf_append(&t->out, data, len) < 0)
        return MBEDTLS_ERR_SSL_ALLOC_FAILED; /* the peer does not read: give up on it */
    return (int)len;
}

static int bio_recv(void *p, unsigned char *data, size_t len)
{
    tls_conn_t *t = p;
    size_t avail = t->in.len - t->in_off;
    if (avail == 0) {
        t->in.len = t->in_off = 0;
        return MBEDTLS_ERR_SSL_WANT_READ; /* the socket's EOF is conn.c's to tell */
    }
    size_t n = len < avail ? len : avail;
    memcpy(data, t->in.data + t->in_off, n);
    t->in_off += n;
    return (int)n;
}

static tls_conn_t *conn_new(const mbedtls_ssl_config *conf)
{
    tls_conn_t *t = xcalloc(1, sizeof *t);
    mbedtls_ssl_init(&t->ssl);
    buf_init(&t->in, TLS_IN_MAX);
    buf_init(&t->out, TLS_OUT_MAX);
    if (mbedtls_ssl_setup(&t->ssl, conf) != 0) {
        tls_conn_free(t);
        return NULL;
    }
    mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
    return t;
}

tls_conn_t *tls_conn_server(tls_server_t *s)
{
    tls_conn_t *t = conn_new(&s->conf);
    if (t) {
        t->server = s;
        tls_server_ref(s);
    }
    return t;
}

tls_conn_t *tls_conn_client(tls_client_t *c, const char *sni, bool verify, const char *cert, const char *key,
                            char *err, size_t errlen)
{
    const mbedtls_ssl_config *conf = verify ? &c->verify : &c->noverify;
    if (cert && key) {
        tls_identity_t *id = identity(c, cert, key, err, errlen);
        if (!id)
            return NULL;
        conf = verify ? &id->verify : &id->noverify;
    }
    tls_conn_t *t = conn_new(conf);
    /* Always set it when verifying: 2.28.3 skips the name check without a
     * word otherwise (CVE-2025-27809). */
    if (t && sni && mbedtls_ssl_set_hostname(&t->ssl, sni) != 0) {
        tls_conn_free(t);
        return NULL;
    }
    return t;
}

void tls_conn_free(tls_conn_t *t)
{
    if (!t)
        return;
    mbedtls_ssl_free(&t->ssl);
    buf_free(&t->in);
    buf_free(&t->out);
    tls_server_unref(t->server);
    free(t);
}

int tls_feed(tls_conn_t *t, const char *data, size_t len)
{
    if (t->in_off > 0 && t->in_off == t->in.len)
        t->in.len = t->in_off = 0;
    if (t->in_off > 0 && buf_room(&t->in) < len) { /* compact */
        buf_consume(&t->in, t->in_off);
        t->in_off = 0;
    }
    return buf_append(&t->in, data, len) < 0 ? PT_ERROR : PT_OK;
}

static int fail(tls_conn_t *t, int rc, const char *what)
{
    t->failed = true;
    if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
        char info[160] = "";
        uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
        mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
        char *nl = strchr(info, '\n');
        if (nl)
            *nl = '\0';
        snprintf(t->err, sizeof t->err, "%s: certificate verification failed: %s", what, info);
    } else if (rc == MBEDTLS_ERR_SSL_CONN_EOF) {
        snprintf(t->err, sizeof t->err, "%s: connection closed", what);
    } else {
        errtext(rc, t->err, sizeof t->err, what);
    }
    return PT_ERROR;
}

int tls_handshake(tls_conn_t *t)
{
    if (t->hs_done)
        return PT_OK;
    if (t->failed)
        return PT_ERROR;
    int rc = mbedtls_ssl_handshake(&t->ssl);
    if (rc == 0) {
        t->hs_done = true;
        return PT_OK;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        return PT_AGAIN;
    return fail(t, rc, "TLS handshake");
}

int tls_read(tls_conn_t *t, char *out, size_t len)
{
    for (int empty = 0; empty < 4; empty++) {
        int rc = mbedtls_ssl_read(&t->ssl, (unsigned char *)out, len);
        if (rc > 0)
            return rc;
        if (rc == 0) /* an empty record (Mbed-TLS/mbedtls#6508): read on */
            continue;
        if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
            return PT_AGAIN;
        if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
            return PT_EOF;
        return fail(t, rc, "TLS read");
    }
    return PT_AGAIN;
}

int tls_write(tls_conn_t *t, const char *data, size_t len)
{
    size_t done = 0;
    while (done < len) {
        int rc = mbedtls_ssl_write(&t->ssl, (const unsigned char *)data + done, len - done);
        if (rc > 0) {
            done += (size_t)rc;
            continue;
        }
        if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ)
            continue; /* our BIO never blocks: try again */
        return fail(t, rc, "TLS write");
    }
    return PT_OK;
}

void tls_close_notify(tls_conn_t *t)
{
    if (t->hs_done && !t->failed)
        mbedtls_ssl_close_notify(&t->ssl);
}

const char *tls_out_peek(const tls_conn_t *t, size_t *len)
{
    *len = t->out.len;
    return t->out.len ? t->out.data : NULL;
}

void tls_out_consume(tls_conn_t *t, size_t len)
{
    buf_consume(&t->out, len);
}

bool tls_pending(const tls_conn_t *t)
{
    return mbedtls_ssl_get_bytes_avail(&t->ssl) > 0 || t->in_off < t->in.len;
}

const char *tls_error(const tls_conn_t *t)
{
    return t->err[0] ? t->err : "TLS error";
}

const char *tls_sni(const tls_conn_t *t)
{
    return t->sni[0] ? t->sni : NULL;
}

const char *tls_protocol(const tls_conn_t *t)
{
    return mbedtls_ssl_get_version(&t->ssl);
}

const char *tls_cipher(const tls_conn_t *t)
{
    return mbedtls_ssl_get_ciphersuite(&t->ssl);
}

bool tls_peer_cert(const tls_conn_t *t, char *subject, size_t sl, char *issuer, size_t il, char *serial, size_t srl,
                   char *fingerprint, size_t fl)
{
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&t->ssl);
    if (!crt || mbedtls_ssl_get_verify_result(&t->ssl) != 0)
        return false;
    mbedtls_x509_dn_gets(subject, sl, &crt->subject);
    mbedtls_x509_dn_gets(issuer, il, &crt->issuer);
    mbedtls_x509_serial_gets(serial, srl, &crt->serial);
    unsigned char d[32];
    mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), crt->raw.p, crt->raw.len, d);
    size_t n = 0;
    for (int i = 0; i < 32 && n + 3 < fl; i++)
        n += (size_t)snprintf(fingerprint + n, fl - n, "%s%02X", i ? ":" : "", d[i]);
    return true;
}

/* One attribute value, escaped as RFC 2253 (and OpenSSL's
 * XN_FLAG_RFC2253, which also escapes bytes outside printable ASCII). */
static size_t dn_escape(char *out, size_t room, const unsigned char *v, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 4 < room; i++) {
        unsigned char c = v[i];
        bool special = strchr(",+\"\\<>;", c) != NULL || (i == 0 && (c == '#' || c == ' ')) ||
                       (i == len - 1 && c == ' ');
        if (c < 0x20 || c >= 0x7F)
            n += (size_t)snprintf(out + n, room - n, "\\%02X", c);
        else if (special && c)
            n += (size_t)snprintf(out + n, room - n, "\\%c", c);
        else
            out[n++] = (char)c;
    }
    out[n] = '\0';
    return n;
}

/* RFC 2253: the RDNs in reverse order, "," between them, "+" inside a
 * multi-valued one. mbedTLS keeps them in certificate order, with
 * next_merged set on all but the last attribute of a multi-valued RDN. */
static void dn_rfc2253(char *out, size_t room, const mbedtls_x509_name *dn)
{
    const mbedtls_x509_name *attr[64];
    int n = 0;
    for (const mbedtls_x509_name *a = dn; a && n < 64; a = a->next)
        if (a->oid.p)
            attr[n++] = a;
    size_t len = 0;
    out[0] = '\0';
    int end = n;
    while (end > 0 && len + 8 < room) {
        int start = end - 1; /* find the first attribute of the last RDN */
        while (start > 0 && attr[start - 1]->next_merged)
            start--;
        if (len)
            out[len++] = ',';
        for (int i = start; i < end && len + 8 < room; i++) {
            if (i > start)
                out[len++] = '+';
            const char *name = NULL;
            char oid[64];
            if (mbedtls_oid_get_attr_short_name(&attr[i]->oid, &name) != 0) {
                mbedtls_oid_get_numeric_string(oid, sizeof oid, &attr[i]->oid);
                name = oid;
            }
            len += (size_t)snprintf(out + len, room - len, "%s=", name);
            if (len + 8 >= room)
                break;
            len += dn_escape(out + len, room - len, attr[i]->val.p, attr[i]->val.len);
        }
        end = start;
    }
    if (len >= room)
        len = room - 1;
    out[len] = '\0';
}

bool tls_peer_nginx(const tls_conn_t *t, tls_peer_nginx_t *out)
{
    memset(out, 0, sizeof *out);
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&t->ssl);
    if (!crt) {
        snprintf(out->verify, sizeof out->verify, "NONE");
        return false;
    }
    if (mbedtls_ssl_get_verify_result(&t->ssl) == 0)
        snprintf(out->verify, sizeof out->verify, "SUCCESS");
    else
        snprintf(out->verify, sizeof out->verify, "FAILED:%.190s", tls_peer_verify_error(t));
    dn_rfc2253(out->subject, sizeof out->subject, &crt->subject);
    dn_rfc2253(out->issuer, sizeof out->issuer, &crt->issuer);
    const unsigned char *sp = crt->serial.p;
    size_t sl = crt->serial.len;
    while (sl > 1 && sp[0] == 0) { /* the DER sign byte is not part of the number */
        sp++;
        sl--;
    }
    size_t n = 0;
    for (size_t i = 0; i < sl && n + 3 <= sizeof out->serial; i++)
        n += (size_t)snprintf(out->serial + n, sizeof out->serial - n, "%02X", sp[i]);
    unsigned char d[20];
    mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA1), crt->raw.p, crt->raw.len, d);
    for (int i = 0; i < 20; i++)
        snprintf(out->fingerprint + 2 * i, 3, "%02x", d[i]);
    static const char begin[] = "-----BEGIN CERTIFICATE-----\n", end[] = "-----END CERTIFICATE-----\n";
    size_t pemlen = 0; /* a first call only measures */
    mbedtls_pem_write_buffer(begin, end, crt->raw.p, crt->raw.len, NULL, 0, &pemlen);
    out->pem = xmalloc(pemlen + 1);
    if (out->pem &&
        mbedtls_pem_write_buffer(begin, end, crt->raw.p, crt->raw.len, (unsigned char *)out->pem, pemlen + 1, &pemlen) != 0) {
        free(out->pem);
        out->pem = NULL;
    }
    return true;
}

bool tls_peer_cert_failed(const tls_conn_t *t)
{
    return mbedtls_ssl_get_peer_cert(&t->ssl) && mbedtls_ssl_get_verify_result(&t->ssl) != 0;
}

const char *tls_peer_verify_error(const tls_conn_t *t)
{
    static char info[512];
    info[0] = '\0';
    mbedtls_x509_crt_verify_info(info, sizeof info, "", mbedtls_ssl_get_verify_result(&t->ssl));
    info[strcspn(info, "\n")] = '\0';
    return info;
}
