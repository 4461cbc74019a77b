/* config.c: loads proxy.conf.lua in a throw-away Lua state and copies it,
 * checked key by key, into a config_t. The first problem found is
 * reported as "file: key.path: what is wrong". */
#include "config.h"

#include "log.h"
#include "mem.h"
#include "proto.h"
#include "status.h"
#include "tls.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <uv.h>

#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct check {
    lua_State *L;
    char *err;
    size_t errlen;
    const char *file;
    int failed;
} check_t;

static int fail(check_t *c, const char *path, const char *fmt, ...)
{
    if (c->failed++)
        return PT_ERROR;
    int n = snprintf(c->err, c->errlen, "%s: %s: ", c->file, path);
    if (n < 0 || (size_t)n >= c->errlen)
        return PT_ERROR;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - n, fmt, ap);
    va_end(ap);
    return PT_ERROR;
}

/* Every key of the table at the top must be one of `known`. */
static int check_keys(check_t *c, const char *path, const char *const *known)
{
    lua_pushnil(c->L);
    while (lua_next(c->L, -2)) {
        lua_pop(c->L, 1);
        char kp[256];
        if (lua_type(c->L, -1) != LUA_TSTRING) {
            lua_pop(c->L, 1);
            return fail(c, path[0] ? path : "(top)", "keys must be names");
        }
        const char *k = lua_tostring(c->L, -1);
        int ok = 0;
        for (const char *const *p = known; *p; p++)
            if (strcmp(*p, k) == 0)
                ok = 1;
        if (!ok) {
            snprintf(kp, sizeof kp, "%s%s%s", path, path[0] ? "." : "", k);
            lua_pop(c->L, 1);
            return fail(c, kp, "unknown key");
        }
    }
    return 0;
}

/* Pushes t[key] and returns its type; the path of the value goes to kp. */
static int get_field(check_t *c, const char *path, const char *key, char *kp, size_t kplen)
{
    snprintf(kp, kplen, "%s%s%s", path, path[0] ? "." : "", key);
    lua_getfield(c->L, -1, key);
    return lua_type(c->L, -1);
}

static int opt_string(check_t *c, const char *path, const char *key, char **out)
{
    char kp[256];
    int t = get_field(c, path, key, kp, sizeof kp);
    int rc = 0;
    if (t == LUA_TSTRING) {
        free(*out);
        *out = xstrdup(lua_tostring(c->L, -1));
    } else if (t != LUA_TNIL) {
        rc = fail(c, kp, "expected a string, got %s", lua_typename(c->L, t));
    }
    lua_pop(c->L, 1);
    return rc;
}

static int opt_number(check_t *c, const char *path, const char *key, double *out, double min, double max)
{
    char kp[256];
    int t = get_field(c, path, key, kp, sizeof kp);
    int rc = 0;
    if (t == LUA_TNUMBER) {
        double v = lua_tonumber(c->L, -1);
        if (!(v >= min && v <= max)) /* NaN fails too */
            rc = fail(c, kp, "must be between %g and %g", min, max);
        else
            *out = v;
    } else if (t != LUA_TNIL) {
        rc = fail(c, kp, "expected a number, got %s", lua_typename(c->L, t));
    }
    lua_pop(c->L, 1);
    return rc;
}

static int opt_int(check_t *c, const char *path, const char *key, int *out, int min, int max)
{
    double v = *out;
    if (opt_number(c, path, key, &v, min, max) < 0)
        return PT_ERROR;
    if (v != (int)v) {
        char kp[256];
        snprintf(kp, sizeof kp, "%s%s%s", path, path[0] ? "." : "", key);
        return fail(c, kp, "must be a whole number");
    }
    *out = (int)v;
    return 0;
}

static int opt_bool(check_t *c, const char *path, const char *key, bool *out)
{
    char kp[256];
    int t = get_field(c, path, key, kp, sizeof kp);
    int rc = 0;
    if (t == LUA_TBOOLEAN)
        *out = lua_toboolean(c->L, -1);
    else if (t != LUA_TNIL)
        rc = fail(c, kp, "expected true or false, got %s", lua_typename(c->L, t));
    lua_pop(c->L, 1);
    return rc;
}

/* An IMAP atom: what may stand in a capability list. */
static int is_atom(const char *w)
{
    if (!*w)
        return 0;
    for (const unsigned char *p = (const unsigned char *)w; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || strchr("(){%*\"\\]", *p))
            return 0;
    return 1;
}

/* Every space-separated word of an entry must be an atom. */
static int is_entry(const char *e)
{
    char *copy = xstrdup(e), *save = NULL;
    int ok = 1, words = 0;
    for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save), words++)
        ok &= is_atom(w);
    free(copy);
    return ok && words > 0 && !strchr(e, '\n');
}

/* A capability list: an array of entries ({ "IDLE", "SIZE 10485760" }) or
 * one string of space-separated words. Returned "\n"-separated, or NULL
 * when absent. */
static int opt_words(check_t *c, const char *path, const char *key, char **out)
{
    char kp[256];
    int t = get_field(c, path, key, kp, sizeof kp);
    int rc = 0;
    lua_State *L = c->L;
    if (t == LUA_TSTRING) {
        const char *w = lua_tostring(L, -1);
        char *copy = xstrdup(w), *save = NULL, *list = xcalloc(1, strlen(w) + 1);
        for (char *tok = strtok_r(copy, " ", &save); tok && rc == 0; tok = strtok_r(NULL, " ", &save)) {
            if (!is_atom(tok))
                rc = fail(c, kp, "\"%s\" is not a word of atom characters", tok);
            else
                strcat(strcat(list, list[0] ? "\n" : ""), tok);
        }
        free(copy);
        if (rc == 0)
            *out = list;
        else
            free(list);
    } else if (t == LUA_TTABLE) {
        int n = (int)lua_objlen(L, -1);
        size_t total = 1;
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            int bad = lua_type(L, -1) != LUA_TSTRING || !is_entry(lua_tostring(L, -1));
            total += lua_objlen(L, -1) + 1;
            lua_pop(L, 1);
            if (bad) {
                char ip[300];
                snprintf(ip, sizeof ip, "%s[%d]", kp, i);
                rc = fail(c, ip, "expected words of atom characters (no control, ( ) { %% * \" \\ ])");
                break;
            }
        }
        if (rc == 0) {
            char *list = xcalloc(1, total);
            for (int i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                strcat(strcat(list, i > 1 ? "\n" : ""), lua_tostring(L, -1));
                lua_pop(L, 1);
            }
            *out = list;
        }
    } else if (t != LUA_TNIL) {
        rc = fail(c, kp, "expected a list of strings, got %s", lua_typename(L, t));
    }
    lua_pop(L, 1);
    return rc;
}

static int parse_address(const char *a, struct sockaddr_storage *ss, int *port)
{
    char host[128];
    const char *colon = strrchr(a, ':');
    const char *ps = colon ? colon + 1 : a;
    char *end;
    long p = strtol(ps, &end, 10);
    if (*ps == '\0' || *end != '\0' || p < 1 || p > 65535)
        return PT_ERROR;
    *port = (int)p;
    size_t hl = colon ? (size_t)(colon - a) : 0;
    if (hl >= sizeof host)
        return PT_ERROR;
    memcpy(host, a, hl);
    host[hl] = '\0';
    memset(ss, 0, sizeof *ss);
    if (hl == 0 || strcmp(host, "*") == 0)
        strcpy(host, "0.0.0.0");
    if (host[0] == '[') {
        size_t l = strlen(host);
        if (l < 3 || host[l - 1] != ']')
            return PT_ERROR;
        host[l - 1] = '\0';
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)p);
        return inet_pton(AF_INET6, host + 1, &s6->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)p);
    return inet_pton(AF_INET, host, &s4->sin_addr) == 1 ? 0 : -1;
}

/* proxy_protocol_trusted = { "10.0.0.0/8", "2001:db8::5", ... }: the
 * senders whose PROXY headers are believed (absent: any). */
static int read_trusted(check_t *c, const char *path, listen_conf_t *l)
{
    lua_State *L = c->L;
    char kp[256];
    int t = get_field(c, path, "proxy_protocol_trusted", kp, sizeof kp);
    int rc = 0;
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    int n = t == LUA_TTABLE ? (int)lua_objlen(L, -1) : 0, count = 0;
    if (t == LUA_TTABLE) { /* a list, nothing but its entries */
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            count++;
        }
    }
    if (t != LUA_TTABLE || count != n) {
        rc = fail(c, kp, "expected a list of addresses or networks, e.g. { \"10.0.0.0/8\", \"2001:db8::5\" }");
    } else if (n == 0) {
        rc = fail(c, kp, "an empty list trusts no sender: list the load balancers' addresses");
    } else if (!l->proxy_protocol) {
        rc = fail(c, kp, "needs proxy_protocol = true on this listener");
    } else {
        l->proxy_trusted = xcalloc((size_t)n, sizeof *l->proxy_trusted);
        l->nproxy_trusted = n;
        for (int i = 1; i <= n && rc == 0; i++) {
            lua_rawgeti(L, -1, i);
            char ip[300];
            snprintf(ip, sizeof ip, "%s[%d]", kp, i);
            const char *why = NULL;
            if (lua_type(L, -1) != LUA_TSTRING)
                rc = fail(c, ip, "expected a string such as \"10.0.0.0/8\", got %s",
                          lua_typename(L, lua_type(L, -1)));
            else if (cidr_parse(lua_tostring(L, -1), &l->proxy_trusted[i - 1], &why) < 0)
                rc = fail(c, ip, "\"%s\": %s", lua_tostring(L, -1), why);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return rc;
}

static const struct { const char *name; unsigned bit; } auth_names[] = {
    { "login", AUTH_LOGIN }, { "plain", AUTH_PLAIN }, { "cram-md5", AUTH_CRAM_MD5 },
    { "external", AUTH_EXTERNAL }, { "user", AUTH_USER }, { "apop", AUTH_APOP },
    { "none", AUTH_NONE }, { "xoauth2", AUTH_XOAUTH2 }, { "oauthbearer", AUTH_OAUTHBEARER },
};

/* The index of p among the registered protocols. */
static int proto_index(const proto_t *p)
{
    int i = 0;
    for (const proto_t *const *q = proto_all(); *q && *q != p; q++)
        i++;
    return i;
}

static int read_listener(check_t *c, config_t *cfg, int i, char *const global_caps[])
{
    static const char *const base_keys[] = { "address", "protocol", "auth", "starttls", "tls", "capabilities",
                                             "verify_client", "client_ca", "proxy_protocol",
                                             "proxy_protocol_trusted" };
    enum { NBASE = sizeof base_keys / sizeof *base_keys };
    const char *keys[NBASE + PROTO_MAX_OPTIONS + 1];
    int nkeys = 0;
    for (int k = 0; k < NBASE; k++)
        keys[nkeys++] = base_keys[k];
    for (int k = 0; k < proto_option_count() && k < PROTO_MAX_OPTIONS; k++)
        keys[nkeys++] = proto_option_name(k);
    keys[nkeys] = NULL;
    lua_State *L = c->L;
    listen_conf_t *l = &cfg->listen[i];
    char path[64], kp[256];
    snprintf(path, sizeof path, "listen[%d]", i + 1);
    if (lua_type(L, -1) != LUA_TTABLE)
        return fail(c, path, "expected a table like { address = \"127.0.0.1:1143\" }");
    if (check_keys(c, path, keys) < 0)
        return PT_ERROR;
    if (opt_string(c, path, "address", &l->address) < 0)
        return PT_ERROR;
    snprintf(kp, sizeof kp, "%s.address", path);
    if (!l->address)
        return fail(c, kp, "missing (e.g. \"127.0.0.1:1143\")");
    int port;
    if (parse_address(l->address, &l->addr, &port) < 0)
        return fail(c, kp, "\"%s\" is not ADDRESS:PORT with a numeric address", l->address);
    for (int j = 0; j < i; j++)
        if (strcmp(cfg->listen[j].address, l->address) == 0)
            return fail(c, kp, "\"%s\" is also listen[%d]", l->address, j + 1);

    char *proto = NULL;
    if (opt_string(c, path, "protocol", &proto) < 0)
        return PT_ERROR;
    snprintf(kp, sizeof kp, "%s.protocol", path);
    if (proto) {
        l->proto = proto_find(proto);
        if (!l->proto) {
            char names[128] = "";
            for (const proto_t *const *p = proto_all(); *p; p++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", names[0] ? ", " : "", (*p)->name);
            int rc = fail(c, kp, "\"%s\" is not a protocol this build speaks (%s)", proto, names);
            free(proto);
            return rc;
        }
        free(proto);
    } else {
        l->proto = proto_for_port(port);
        if (!l->proto)
            return fail(c, kp, "missing, and port %d does not imply one", port);
    }

    lua_getfield(L, -1, "auth");
    snprintf(kp, sizeof kp, "%s.auth", path);
    if (lua_isnil(L, -1)) {
        l->auth = l->proto->default_auth;
    } else if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 1);
        return fail(c, kp, "expected a list such as { \"plain\", \"login\" }");
    } else {
        int n = (int)lua_objlen(L, -1);
        for (int k = 1; k <= n; k++) {
            lua_rawgeti(L, -1, k);
            const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
            unsigned bit = 0;
            for (size_t a = 0; a < sizeof auth_names / sizeof *auth_names; a++)
                if (strcmp(auth_names[a].name, m) == 0)
                    bit = auth_names[a].bit;
            lua_pop(L, 1);
            if (!(bit & l->proto->allowed_auth)) {
                lua_pop(L, 1);
                char ip[300];
                snprintf(ip, sizeof ip, "%s[%d]", kp, k);
                return fail(c, ip, "\"%s\" is not a mechanism %s offers here", m, l->proto->name);
            }
            l->auth |= bit;
        }
    }
    lua_pop(L, 1);

    char *starttls = NULL;
    if (opt_string(c, path, "starttls", &starttls) < 0)
        return PT_ERROR;
    if (starttls) {
        snprintf(kp, sizeof kp, "%s.starttls", path);
        int bad = strcmp(starttls, "off") != 0 && strcmp(starttls, "on") != 0 && strcmp(starttls, "only") != 0;
        l->starttls = strcmp(starttls, "on") == 0 ? 1 : strcmp(starttls, "only") == 0 ? 2 : 0;
        free(starttls);
        if (bad)
            return fail(c, kp, "must be \"off\", \"on\" or \"only\"");
    }
    if (opt_bool(c, path, "tls", &l->tls) < 0 || opt_bool(c, path, "proxy_protocol", &l->proxy_protocol) < 0 ||
        read_trusted(c, path, l) < 0)
        return PT_ERROR;
    for (int k = 0; k < proto_option_count() && k < PROTO_MAX_OPTIONS; k++) { /* SMTP's xclient... */
        bool on = false;
        if (opt_bool(c, path, proto_option_name(k), &on) < 0)
            return PT_ERROR;
        l->opt_on |= on ? 1u << k : 0;
    }
    if (l->tls && l->starttls) {
        snprintf(kp, sizeof kp, "%s.starttls", path);
        return fail(c, kp, "a tls = true listener is TLS from the start: STARTTLS makes no sense there");
    }
    char *vc = NULL;
    if (opt_string(c, path, "verify_client", &vc) < 0 || opt_string(c, path, "client_ca", &l->client_ca) < 0) {
        free(vc);
        return PT_ERROR;
    }
    if (vc) {
        l->verify_client = strcmp(vc, "optional") == 0 ? 1 : strcmp(vc, "on") == 0 ? 2 : 0;
        int bad = l->verify_client == 0 && strcmp(vc, "off") != 0;
        free(vc);
        snprintf(kp, sizeof kp, "%s.verify_client", path);
        if (bad)
            return fail(c, kp, "must be \"off\", \"optional\" or \"on\"");
        if (l->verify_client && !l->client_ca)
            return fail(c, kp, "needs client_ca, the CA file client certificates are checked against");
    }
    if (l->client_ca) {
        char *p = config_path(cfg, l->client_ca);
        free(l->client_ca);
        l->client_ca = p;
    }
    if ((l->auth & AUTH_EXTERNAL) && !l->verify_client) {
        snprintf(kp, sizeof kp, "%s.auth", path);
        return fail(c, kp, "\"external\" needs client certificates: set verify_client and client_ca");
    }
    if (l->tls || l->starttls) {
        if (cfg->ntls_certs == 0) {
            snprintf(kp, sizeof kp, "%s.%s", path, l->tls ? "tls" : "starttls");
            return fail(c, kp, "needs a certificate: set tls = { certificate = ..., key = ... }");
        }
        tls_server_conf_t tc = { .certs = cfg->tls_certs, .ncerts = cfg->ntls_certs, .protocols = cfg->tls_protocols,
                                 .ciphers = cfg->tls_ciphers, .curves = cfg->tls_curves, .client_ca = l->client_ca,
                                 .verify_client = l->verify_client, .ticket_lifetime = cfg->tls_ticket_lifetime,
                                 .alpn = l->proto->alpn };
        char err[600];
        l->tls_server = tls_server_new(&tc, err, sizeof err);
        if (!l->tls_server)
            return fail(c, "tls", "%s", err);
    }
    char *caps = NULL;
    if (opt_words(c, path, "capabilities", &caps) < 0)
        return PT_ERROR;
    const char *dflt = global_caps[proto_index(l->proto)];
    l->capabilities = l->proto->capabilities(caps ? caps : dflt, l->auth, 0);
    if (l->starttls) /* EXTERNAL only once a certificate can be there */
        l->capabilities_starttls =
            l->proto->capabilities(caps ? caps : dflt, l->auth & ~(unsigned)AUTH_EXTERNAL, l->starttls);
    free(caps);
    return 0;
}

/* A certificate/key pair at the top of the stack (`path` for errors). */
static int read_pair(check_t *c, config_t *cfg, const char *path, const char *name)
{
    static const char *const keys[] = { "certificate", "key", NULL };
    if (lua_type(c->L, -1) != LUA_TTABLE)
        return fail(c, path, "expected { certificate = \"...pem\", key = \"...key\" }");
    if (name && check_keys(c, path, keys) < 0)
        return PT_ERROR;
    char *crt = NULL, *key = NULL;
    if (opt_string(c, path, "certificate", &crt) < 0 || opt_string(c, path, "key", &key) < 0 || !crt || !key) {
        free(crt);
        free(key);
        return c->failed ? -1 : fail(c, path, "needs both certificate and key");
    }
    tls_cert_conf_t *t = &cfg->tls_certs[cfg->ntls_certs++];
    t->name = name ? xstrdup(name) : NULL;
    t->certificate = config_path(cfg, crt);
    t->key = config_path(cfg, key);
    free(crt);
    free(key);
    return 0;
}

static int read_tls(check_t *c, config_t *cfg)
{
    static const char *const keys[] = { "certificate", "key", "certificates", "protocols", "ciphers",
                                        "curves", "upstream_ca", "ticket_lifetime", NULL };
    lua_State *L = c->L;
    if (lua_type(L, -1) != LUA_TTABLE)
        return fail(c, "tls", "expected a table: { certificate = ..., key = ... }");
    if (check_keys(c, "tls", keys) < 0)
        return PT_ERROR;
    int n = 1;
    lua_getfield(L, -1, "certificates");
    if (lua_type(L, -1) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            n++;
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return fail(c, "tls.certificates", "expected { [\"mail.example.com\"] = { certificate = ..., key = ... } }");
    }
    cfg->tls_certs = xcalloc((size_t)n, sizeof *cfg->tls_certs);
    lua_pop(L, 1);
    lua_getfield(L, -1, "certificate");
    int has_default = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!has_default)
        return fail(c, "tls.certificate", "missing (the default certificate, PEM with its chain)");
    lua_pushvalue(L, -1);
    int rc = read_pair(c, cfg, "tls", NULL);
    lua_pop(L, 1);
    if (rc < 0)
        return PT_ERROR;
    lua_getfield(L, -1, "certificates");
    if (lua_type(L, -1) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2) && rc == 0) {
            char kp[300];
            const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            snprintf(kp, sizeof kp, "tls.certificates[\"%s\"]", name);
            rc = read_pair(c, cfg, kp, name);
            lua_pop(L, 1);
        }
        if (rc < 0)
            lua_pop(L, 1); /* the key lua_next left */
    }
    lua_pop(L, 1);
    if (rc < 0)
        return PT_ERROR;
    if (opt_string(c, "tls", "protocols", &cfg->tls_protocols) < 0 ||
        opt_string(c, "tls", "ciphers", &cfg->tls_ciphers) < 0 ||
        opt_string(c, "tls", "curves", &cfg->tls_curves) < 0 ||
        opt_string(c, "tls", "upstream_ca", &cfg->tls_upstream_ca) < 0 ||
        opt_number(c, "tls", "ticket_lifetime", &cfg->tls_ticket_lifetime, 60, 86400 * 7) < 0)
        return PT_ERROR;
    if (cfg->tls_upstream_ca) {
        char *p = config_path(cfg, cfg->tls_upstream_ca);
        free(cfg->tls_upstream_ca);
        cfg->tls_upstream_ca = p;
        /* parsed now, so postern -t finds a bad file */
        char err[600];
        cfg->tls_client = tls_client_new(p, err, sizeof err);
        if (!cfg->tls_client)
            return fail(c, "tls.upstream_ca", "%s", err);
    }
    return 0;
}

double config_setting(const config_t *cfg, const char *key)
{
    int i = proto_setting_index(key, NULL);
    return i >= 0 && i < PROTO_MAX_SETTINGS ? cfg->settings[i] : 0;
}

struct tls_client *config_tls_client(config_t *cfg)
{
    if (!cfg->tls_client) {
        char err[600];
        cfg->tls_client = tls_client_new(cfg->tls_upstream_ca, err, sizeof err);
        if (!cfg->tls_client)
            log_msg(LL_ERROR, "TLS towards upstreams: %s", err);
    }
    return cfg->tls_client;
}

/* workers = "auto" | N: "auto" is one per CPU this process may run on. */
static int read_workers(check_t *c, config_t *cfg)
{
    lua_State *L = c->L;
    lua_getfield(L, -1, "workers");
    int t = lua_type(L, -1);
    bool is_auto = t == LUA_TSTRING && strcmp(lua_tostring(L, -1), "auto") == 0;
    lua_pop(L, 1);
    if (t == LUA_TNIL || is_auto) {
        cfg->workers = (int)uv_available_parallelism();
        if (cfg->workers > CONFIG_MAX_WORKERS)
            cfg->workers = CONFIG_MAX_WORKERS;
        return 0;
    }
    if (t != LUA_TNUMBER)
        return fail(c, "workers", "must be \"auto\" or a number of processes");
    return opt_int(c, "", "workers", &cfg->workers, 1, CONFIG_MAX_WORKERS);
}

/* user/group: the account the workers run as (looked up now, so that a
 * typo is a `postern -t` error and not a failure at start). */
static int read_user(check_t *c, config_t *cfg)
{
    if (cfg->group && !cfg->user)
        return fail(c, "group", "needs user as well");
    if (!cfg->user)
        return 0;
    struct passwd *pw = getpwnam(cfg->user);
    if (!pw)
        return fail(c, "user", "no such user \"%s\"", cfg->user);
    cfg->uid = pw->pw_uid;
    cfg->gid = pw->pw_gid;
    if (cfg->group) {
        struct group *gr = getgrnam(cfg->group);
        if (!gr)
            return fail(c, "group", "no such group \"%s\"", cfg->group);
        cfg->gid = gr->gr_gid;
    }
    return 0;
}

static int read_config(check_t *c, config_t *cfg)
{
    static const char *const base_keys[] = {
        "server_name", "policy", "log_level", "error_log", "pidfile", "proxy_pass_error_message",
        "timeout", "proxy_timeout", "connect_timeout", "auth_timeout", "max_errors",
        "max_login_attempts", "client_buffer", "proxy_buffer", "tls", "listen", "workers", "shutdown_timeout",
        "max_connections", "max_connections_per_ip", "user", "group" };
    enum { NBASE = sizeof base_keys / sizeof *base_keys };
    /* and each protocol's capability list and settings */
    const char *keys[NBASE + PROTO_MAX + PROTO_MAX_SETTINGS + 1];
    int nkeys = 0;
    for (int k = 0; k < NBASE; k++)
        keys[nkeys++] = base_keys[k];
    for (const proto_t *const *p = proto_all(); *p; p++)
        keys[nkeys++] = (*p)->capabilities_key;
    for (int k = 0; k < proto_setting_count() && k < PROTO_MAX_SETTINGS; k++)
        keys[nkeys++] = proto_setting_at(k)->key;
    keys[nkeys] = NULL;
    lua_State *L = c->L;
    if (check_keys(c, "", keys) < 0)
        return PT_ERROR;
    char *level = NULL;
    double cb = (double)cfg->client_buffer, pb = (double)cfg->proxy_buffer;
    if (opt_string(c, "", "server_name", &cfg->server_name) < 0 ||
        opt_string(c, "", "policy", &cfg->policy) < 0 ||
        opt_string(c, "", "log_level", &level) < 0 ||
        opt_string(c, "", "error_log", &cfg->error_log) < 0 ||
        opt_string(c, "", "pidfile", &cfg->pidfile) < 0 ||
        opt_bool(c, "", "proxy_pass_error_message", &cfg->proxy_pass_error_message) < 0 ||
        opt_number(c, "", "timeout", &cfg->timeout, 0.1, 86400 * 7) < 0 ||
        opt_number(c, "", "proxy_timeout", &cfg->proxy_timeout, 0.1, 86400 * 7) < 0 ||
        opt_number(c, "", "connect_timeout", &cfg->connect_timeout, 0.1, 3600) < 0 ||
        opt_number(c, "", "auth_timeout", &cfg->auth_timeout, 0.1, 3600) < 0 ||
        opt_int(c, "", "max_errors", &cfg->max_errors, 1, 1000) < 0 ||
        opt_int(c, "", "max_login_attempts", &cfg->max_login_attempts, 1, 1000) < 0 ||
        opt_number(c, "", "client_buffer", &cb, 1024, 16 * 1024 * 1024) < 0 ||
        opt_number(c, "", "proxy_buffer", &pb, 1024, 16 * 1024 * 1024) < 0 ||
        read_workers(c, cfg) < 0 ||
        opt_number(c, "", "shutdown_timeout", &cfg->shutdown_timeout, 0, 86400) < 0 ||
        opt_int(c, "", "max_connections", &cfg->max_connections, 0, 10000000) < 0 ||
        opt_int(c, "", "max_connections_per_ip", &cfg->max_connections_per_ip, 0, 10000000) < 0 ||
        opt_string(c, "", "user", &cfg->user) < 0 || opt_string(c, "", "group", &cfg->group) < 0 ||
        read_user(c, cfg) < 0) {
        free(level);
        return PT_ERROR;
    }
    for (int k = 0; k < proto_setting_count() && k < PROTO_MAX_SETTINGS; k++) {
        const proto_setting_t *ps = proto_setting_at(k);
        cfg->settings[k] = ps->dflt;
        if (opt_number(c, "", ps->key, &cfg->settings[k], ps->min, ps->max) < 0) {
            free(level);
            return PT_ERROR;
        }
    }
    cfg->client_buffer = (size_t)cb;
    cfg->proxy_buffer = (size_t)pb;
    if (level) {
        cfg->log_level = log_level_parse(level);
        free(level);
        if (cfg->log_level < 0)
            return fail(c, "log_level", "must be \"error\", \"warn\", \"info\" or \"debug\"");
    }
    if (cfg->server_name)
        for (const char *p = cfg->server_name; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f)
                return fail(c, "server_name", "must be one word of printable characters (a host name)");
    if (!cfg->policy)
        return fail(c, "policy", "missing (the Lua policy file, e.g. \"scripts/static_users.lua\")");
    char *p = config_path(cfg, cfg->policy);
    free(cfg->policy);
    cfg->policy = p;
    if (access(cfg->policy, R_OK) != 0)
        return fail(c, "policy", "cannot read \"%s\"", cfg->policy);
    if (cfg->error_log && strcmp(cfg->error_log, "stderr") != 0) {
        p = config_path(cfg, cfg->error_log);
        free(cfg->error_log);
        cfg->error_log = p;
    }
    if (cfg->pidfile) {
        p = config_path(cfg, cfg->pidfile);
        free(cfg->pidfile);
        cfg->pidfile = p;
    }

    lua_getfield(L, -1, "tls");
    if (!lua_isnil(L, -1) && read_tls(c, cfg) < 0) {
        lua_pop(L, 1);
        return PT_ERROR;
    }
    lua_pop(L, 1);

    char *global_caps[PROTO_MAX] = { NULL };
    int nprotos = 0;
    for (const proto_t *const *p = proto_all(); *p; p++, nprotos++)
        if (opt_words(c, "", (*p)->capabilities_key, &global_caps[nprotos]) < 0) {
            for (int k = 0; k < PROTO_MAX; k++)
                free(global_caps[k]);
            return PT_ERROR;
        }
    lua_getfield(L, -1, "listen");
    int rc = 0;
    if (lua_type(L, -1) != LUA_TTABLE || lua_objlen(L, -1) == 0) {
        rc = fail(c, "listen", "expected a list of listeners, e.g. { { address = \"127.0.0.1:1143\", protocol = \"imap\" } }");
    } else {
        cfg->nlisten = (int)lua_objlen(L, -1);
        cfg->listen = xcalloc(cfg->nlisten, sizeof *cfg->listen);
        for (int i = 0; i < cfg->nlisten && rc == 0; i++) {
            lua_rawgeti(L, -1, i + 1);
            rc = read_listener(c, cfg, i, global_caps);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    for (int k = 0; k < PROTO_MAX; k++)
        free(global_caps[k]);
    return rc;
}

char *config_path(const config_t *cfg, const char *p)
{
    if (p[0] == '/' || !cfg->dir || strcmp(cfg->dir, ".") == 0)
        return xstrdup(p);
    size_t n = strlen(cfg->dir) + strlen(p) + 2;
    char *r = xmalloc(n);
    snprintf(r, n, "%s/%s", cfg->dir, p);
    return r;
}

config_t *config_load(const char *path, char *err, size_t errlen)
{
    config_t *cfg = xcalloc(1, sizeof *cfg);
    cfg->refs = 1;
    cfg->path = xstrdup(path);
    const char *slash = strrchr(path, '/');
    cfg->dir = slash ? xstrndup(path, (size_t)(slash - path) ? (size_t)(slash - path) : 1) : xstrdup(".");
    cfg->log_level = LL_INFO;
    cfg->proxy_pass_error_message = true;
    cfg->timeout = 60;
    cfg->proxy_timeout = 600;
    cfg->connect_timeout = 10;
    cfg->auth_timeout = 30;
    cfg->shutdown_timeout = 60;
    cfg->max_errors = 5;
    cfg->max_login_attempts = 5;
    cfg->client_buffer = 16384;
    cfg->proxy_buffer = 65536; /* one read of a busy direction: 64 KiB halves the CPU per byte of 16 KiB (docs/performance.md); held only while in flight */

    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    check_t c = { L, err, errlen, path, 0 };
    if (luaL_loadfile(L, path) != 0 || lua_pcall(L, 0, 1, 0) != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto bad;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        snprintf(err, errlen, "%s: must return a table (return { listen = ..., policy = ... })", path);
        goto bad;
    }
    if (read_config(&c, cfg) < 0)
        goto bad;
    if (!cfg->server_name) {
        char host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        cfg->server_name = xstrdup(host);
    }
    lua_close(L);
    return cfg;
bad:
    lua_close(L);
    config_free(cfg);
    return NULL;
}

void config_free(config_t *cfg)
{
    if (!cfg)
        return;
    for (int i = 0; i < cfg->nlisten; i++) {
        free(cfg->listen[i].address);
        free(cfg->listen[i].capabilities);
        free(cfg->listen[i].capabilities_starttls);
        free(cfg->listen[i].client_ca);
        free(cfg->listen[i].proxy_trusted);
        tls_server_unref(cfg->listen[i].tls_server);
    }
    for (int i = 0; i < cfg->ntls_certs; i++) {
        free((char *)cfg->tls_certs[i].name);
        free((char *)cfg->tls_certs[i].certificate);
        free((char *)cfg->tls_certs[i].key);
    }
    free(cfg->tls_certs);
    free(cfg->tls_protocols);
    free(cfg->tls_ciphers);
    free(cfg->tls_curves);
    free(cfg->tls_upstream_ca);
    tls_client_free(cfg->tls_client);
    free(cfg->listen);
    free(cfg->path);
    free(cfg->dir);
    free(cfg->server_name);
    free(cfg->policy);
    free(cfg->error_log);
    free(cfg->pidfile);
    free(cfg->user);
    free(cfg->group);
    free(cfg->policy_text);
    free(cfg);
}

config_t *config_acquire(config_t *cfg)
{
    cfg->refs++;
    return cfg;
}

void config_release(config_t *cfg)
{
    if (cfg && --cfg->refs == 0)
        config_free(cfg);
}

