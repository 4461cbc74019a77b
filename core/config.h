/* config.h: proxy.conf.lua, loaded and checked into plain C structs.
 * Unknown keys and bad values are errors that name the key path. */
#ifndef POSTERN_CONFIG_H
#define POSTERN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "proxy_proto.h"

struct proto;
struct tls_server;

#define CONFIG_MAX_WORKERS 64  /* `workers` at most */
#define PROTO_MAX 8            /* registered protocols */
#define PROTO_MAX_OPTIONS 16   /* their boolean options, all together */
#define PROTO_MAX_SETTINGS 16  /* their top-level numbers, all together */
struct tls_client;

/* SASL mechanisms a listener may offer (the listener's `auth` list). */
enum {
    AUTH_LOGIN = 1 << 0,
    AUTH_PLAIN = 1 << 1,
    AUTH_CRAM_MD5 = 1 << 2,
    AUTH_EXTERNAL = 1 << 3,
    AUTH_USER = 1 << 4, /* POP3 USER/PASS */
    AUTH_APOP = 1 << 5,
    AUTH_NONE = 1 << 6, /* SMTP without AUTH */
    AUTH_XOAUTH2 = 1 << 7,
    AUTH_OAUTHBEARER = 1 << 8,
};

typedef struct listen_conf {
    char *address;                 /* as written, for logs */
    struct sockaddr_storage addr;
    const struct proto *proto;
    unsigned auth;                 /* AUTH_* mask */
    int starttls;                  /* 0 off, 1 on, 2 only */
    bool tls;                      /* implicit TLS (993, 995, 465) */
    unsigned opt_on;               /* the protocols' boolean options (SMTP's xclient), by proto_option_index() */
    bool proxy_protocol;           /* a PROXY v1/v2 header from a load balancer precedes everything */
    cidr_t *proxy_trusted;         /* proxy_protocol_trusted: the balancers; NULL: any sender */
    int nproxy_trusted;
    int verify_client;             /* 0 off, 1 optional, 2 required */
    char *client_ca;
    char *capabilities;            /* pre-auth capabilities, "\n"-separated entries */
    char *capabilities_starttls;   /* the same before STARTTLS (starttls on/only) */
    struct tls_server *tls_server; /* certificates etc., when tls or starttls */
} listen_conf_t;

typedef struct config {
    int refs;                      /* the listeners and every session hold one */
    char *path;                    /* the configuration file */
    char *dir;                     /* its directory: relative paths start here */
    char *server_name;
    char *policy;                  /* absolute or relative to cwd */
    char *policy_text;             /* its text, read once when first loaded (policy_load) */
    size_t policy_len;
    int log_level;
    char *error_log;
    char *pidfile;
    int workers;                   /* worker processes (`workers`; "auto" resolved) */
    double shutdown_timeout;       /* graceful stop: how long relaying sessions may go on */
    int max_connections;           /* whole instance; 0 = no limit */
    int max_connections_per_ip;    /* per client address; 0 = no limit */
    char *user, *group;            /* the workers' account (NULL: stay who started us) */
    unsigned uid, gid;             /* resolved from user/group */
    bool proxy_pass_error_message;
    double timeout, proxy_timeout, connect_timeout, auth_timeout;
    double settings[PROTO_MAX_SETTINGS]; /* the protocols' top-level numbers, by proto_setting_index() */
    int max_errors;
    int max_login_attempts;
    size_t client_buffer;          /* pre-auth command + literal limit */
    size_t proxy_buffer;           /* relay buffer per direction */
    listen_conf_t *listen;
    int nlisten;
    /* tls = { ... } */
    struct tls_cert_conf *tls_certs; /* [0] the default (certificate, key), then by SNI name */
    int ntls_certs;
    char *tls_protocols, *tls_ciphers, *tls_curves, *tls_upstream_ca;
    double tls_ticket_lifetime;
    struct tls_client *tls_client;   /* towards upstreams: made on first use */
} config_t;

/* Returns NULL and a message in err ("file: key.path: problem"). */
config_t *config_load(const char *path, char *err, size_t errlen);
void config_free(config_t *cfg);
config_t *config_acquire(config_t *cfg);
void config_release(config_t *cfg);   /* frees at the last reference */

/* A protocol's top-level number (proto_setting_t), e.g. smtp_greeting_delay. */
double config_setting(const config_t *cfg, const char *key);

/* The upstream TLS client of this configuration (NULL and a log line if
 * its CA file cannot be read). */
struct tls_client *config_tls_client(config_t *cfg);

/* Resolves a path from the configuration against its directory (malloc'd). */
char *config_path(const config_t *cfg, const char *p);

#endif
