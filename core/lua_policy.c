/* lua_policy.c: the policy's Lua state and its hooks. A hook call is a
 * task (lua_task.h) with the session it serves (none for on_close); the
 * session table the hook sees and the result it returns are marshalled
 * here, checked field by field: an invalid result is that session's
 * internal error and a log line. */
#include "lua_policy.h"

#include "buf.h"
#include "log.h"
#include "lua_lib.h"
#include "lua_task.h"
#include "mem.h"
#include "sasl.h"
#include "session.h"
#include "status.h"
#include "tls.h"

#include <lauxlib.h>
#include <lualib.h>
#include <mbedtls/constant_time.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct policy {
    lua_State *L;
    int refs;
    int hooks_ref;       /* the table the policy returned */
    bool has[3];
};

enum { HOOK_ON_CONNECT, HOOK_AUTHENTICATE, HOOK_ON_CLOSE };
static const char *const hook_names[] = { "on_connect", "authenticate", "on_close" };

/* One hook call. */
struct policy_call {
    task_t task;         /* first: the task layer hands back &call->task */
    policy_t *p;         /* pinned while the call runs */
    session_t *s;        /* NULL: on_close, or cancelled */
    int hook;
    uint64_t sid;        /* the session id, for log lines */
};

static policy_t *current;

static void call_free(policy_call_t *c)
{
    task_release(&c->task);
    policy_release(c->p);
    free(c);
}

void policy_cancel(policy_call_t *c)
{
    if (c)
        call_free(c);
}

static void call_log(task_t *t, int level, const char *msg)
{
    policy_call_t *c = (policy_call_t *)t;
    if (c->s)
        session_log(c->s, level, "%s", msg);
    else
        log_msg(level, "*%llu %s", (unsigned long long)c->sid, msg);
}

/* ---- reading what a hook returned ---- */

static char *opt_str(lua_State *L, int idx, const char *key, const char *path, char *err, size_t errlen, int *bad)
{
    lua_getfield(L, idx, key);
    char *r = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t len;
        const char *v = lua_tolstring(L, -1, &len);
        if (strlen(v) != len && !*bad) {
            snprintf(err, errlen, "%s.%s: contains a NUL byte", path, key);
            *bad = 1;
        }
        r = xstrdup(v);
    } else if (!lua_isnil(L, -1) && !*bad) {
        snprintf(err, errlen, "%s.%s: expected a string, got %s", path, key, luaL_typename(L, -1));
        *bad = 1;
    }
    lua_pop(L, 1);
    return r;
}

static int read_upstream(lua_State *L, int idx, upstream_t *u, const char *path, char *err, size_t errlen)
{
    static const char *const known[] = { "host", "port", "user", "password", "auth", "tls", "verify", "sni", "weight", "certificate", "key",
                                         "proxy_protocol", "name", NULL };
    int bad = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
        int ok = proto_option_index(k) >= 0; /* a protocol's own (SMTP's xclient) */
        for (const char *const *q = known; *q; q++)
            ok |= strcmp(*q, k) == 0;
        if (!ok && !bad) {
            snprintf(err, errlen, "%s.%s: unknown key", path, k);
            bad = 1;
        }
    }
    u->host = opt_str(L, idx, "host", path, err, errlen, &bad);
    u->user = opt_str(L, idx, "user", path, err, errlen, &bad);
    u->password = opt_str(L, idx, "password", path, err, errlen, &bad);
    u->auth = opt_str(L, idx, "auth", path, err, errlen, &bad);
    static const char *const mechs[] = { "plain", "login", "apop", "xoauth2", "oauthbearer", NULL };
    int known_mech = !u->auth;
    for (const char *const *m = mechs; u->auth && *m; m++)
        known_mech |= strcasecmp(u->auth, *m) == 0;
    if (!known_mech && !bad) {
        snprintf(err, errlen, "%s.auth: \"%s\" is not one of plain, login, apop, xoauth2, oauthbearer", path,
                 u->auth);
        bad = 1;
    }
    /* values that would end a protocol line upstream */
    if (!bad && ((u->user && !sasl_safe_credential(u->user, strlen(u->user))) ||
                 (u->password && !sasl_safe_credential(u->password, strlen(u->password))))) {
        snprintf(err, errlen, "%s: user and password must not contain CR, LF or NUL", path);
        bad = 1;
    }
    for (int i = 0; i < proto_option_count(); i++) {
        lua_getfield(L, idx, proto_option_name(i));
        if (!lua_isnil(L, -1)) {
            u->opt_set |= 1u << i;
            u->opt_on |= lua_toboolean(L, -1) ? 1u << i : 0;
        }
        lua_pop(L, 1);
    }
    char *tls = opt_str(L, idx, "tls", path, err, errlen, &bad);
    u->tls = !tls || strcmp(tls, "off") == 0 ? UPSTREAM_TLS_OFF
             : strcmp(tls, "on") == 0        ? UPSTREAM_TLS_ON
             : strcmp(tls, "starttls") == 0  ? UPSTREAM_TLS_STARTTLS
                                             : -1;
    if (u->tls < 0 && !bad) {
        snprintf(err, errlen, "%s.tls: \"%s\" is not \"off\", \"on\" or \"starttls\"", path, tls);
        bad = 1;
    }
    free(tls);
    u->sni = opt_str(L, idx, "sni", path, err, errlen, &bad);
    u->certificate = opt_str(L, idx, "certificate", path, err, errlen, &bad);
    u->key = opt_str(L, idx, "key", path, err, errlen, &bad);
    if (!bad && (!u->certificate != !u->key)) {
        snprintf(err, errlen, "%s: a client certificate needs both certificate and key", path);
        bad = 1;
    }
    lua_getfield(L, idx, "verify");
    u->verify = lua_isnil(L, -1) ? true : lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "proxy_protocol");
    if (lua_isnumber(L, -1) && (lua_tonumber(L, -1) == 1 || lua_tonumber(L, -1) == 2))
        u->proxy_protocol = (int)lua_tonumber(L, -1);
    else if (!lua_isnil(L, -1) && !(lua_isboolean(L, -1) && !lua_toboolean(L, -1)) && !bad) {
        snprintf(err, errlen, "%s.proxy_protocol: must be 1 or 2", path);
        bad = 1;
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "port");
    double port = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : -1;
    lua_pop(L, 1);
    if (!bad && (!u->host || !u->host[0])) {
        snprintf(err, errlen, "%s.host: missing", path);
        bad = 1;
    }
    if (!bad && (port < 1 || port > 65535 || port != floor(port))) {
        snprintf(err, errlen, "%s.port: missing or not a port number", path);
        bad = 1;
    }
    u->port = (int)port;
    return bad ? -1 : 0;
}

/* The upstream(s) at `idx`: one table with a host, or a list of them. */
static int read_upstreams(lua_State *L, int idx, upstream_t **out, int *n, char *err, size_t errlen)
{
    lua_getfield(L, idx, "host");
    int single = !lua_isnil(L, -1);
    lua_pop(L, 1);
    int count = single ? 1 : (int)lua_objlen(L, idx);
    if (count == 0) {
        snprintf(err, errlen, "upstream: expected { host = ..., port = ... } or a list of them");
        return PT_ERROR;
    }
    if (count > 64)
        count = 64;
    upstream_t *u = xcalloc(count, sizeof *u);
    for (int i = 0; i < count; i++) {
        char path[32];
        int rc;
        if (single) {
            rc = read_upstream(L, idx, &u[i], "upstream", err, errlen);
        } else {
            snprintf(path, sizeof path, "upstream[%d]", i + 1);
            lua_rawgeti(L, idx, i + 1);
            if (lua_type(L, -1) != LUA_TTABLE) {
                snprintf(err, errlen, "%s: expected a table", path);
                rc = -1;
            } else {
                rc = read_upstream(L, lua_gettop(L), &u[i], path, err, errlen);
            }
            lua_pop(L, 1);
        }
        if (rc < 0) {
            upstreams_free(u, count);
            return PT_ERROR;
        }
    }
    *out = u;
    *n = count;
    return 0;
}

static refusal_t *read_refusal(lua_State *L, int idx)
{
    refusal_t *r = xcalloc(1, sizeof *r);
    if (lua_type(L, idx) == LUA_TSTRING) {
        r->message = xstrdup(lua_tostring(L, idx));
    } else if (lua_type(L, idx) == LUA_TTABLE) {
        lua_getfield(L, idx, "message");
        if (lua_type(L, -1) == LUA_TSTRING)
            r->message = xstrdup(lua_tostring(L, -1));
        lua_getfield(L, idx, "wait");
        r->wait = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
        lua_getfield(L, idx, "code");
        if (lua_type(L, -1) == LUA_TNUMBER || lua_type(L, -1) == LUA_TSTRING) {
            /* 451 or "451 4.3.0": digits, dots and spaces only */
            const char *c = lua_tostring(L, -1);
            if (strlen(c) >= 3 && strlen(c) < 16 && strspn(c, "0123456789. ") == strlen(c) &&
                (c[0] == '4' || c[0] == '5'))
                r->code = xstrdup(c);
        }
        lua_getfield(L, idx, "temporary");
        r->temporary = lua_toboolean(L, -1);
        lua_getfield(L, idx, "close");
        r->close = lua_toboolean(L, -1);
        lua_pop(L, 5);
    }
    if (!(r->wait >= 0))
        r->wait = 0;
    if (r->wait > 3600) /* a typo must not park a session for days */
        r->wait = 3600;
    if (r->message && strlen(r->message) > 400)
        r->message[400] = '\0';
    return r;
}

static void call_finished(task_t *task, int rc)
{
    policy_call_t *t = (policy_call_t *)task;
    lua_State *co = task->co;
    session_t *s = t->s;
    policy_outcome_t outcome = POLICY_ERROR;
    upstream_t *ups = NULL;
    int nups = 0;
    refusal_t *r = NULL;
    char err[512] = "";

    if (rc != 0) {
        lua_State *L = t->p->L;
        const char *msg = lua_tostring(co, -1);
        luaL_traceback(L, co, msg ? msg : "(error object is not a string)", 0);
        char line[4096];
        snprintf(line, sizeof line, "policy error in %s: %s", hook_names[t->hook], lua_tostring(L, -1));
        lua_pop(L, 1);
        call_log(task, LL_ERROR, line);
    } else if (t->hook == HOOK_ON_CLOSE) {
        outcome = POLICY_CONTINUE;
    } else {
        int n = lua_gettop(co);
        int t1 = n >= 1 ? lua_type(co, 1) : LUA_TNIL;
        if (t1 == LUA_TTABLE) {
            if (read_upstreams(co, 1, &ups, &nups, err, sizeof err) == 0)
                outcome = POLICY_UPSTREAMS;
        } else if (t->hook == HOOK_ON_CONNECT && (t1 == LUA_TNIL || (t1 == LUA_TBOOLEAN && lua_toboolean(co, 1)))) {
            outcome = POLICY_CONTINUE;
        } else if (t1 == LUA_TNIL || (t1 == LUA_TBOOLEAN && !lua_toboolean(co, 1))) {
            outcome = POLICY_REFUSE;
            r = read_refusal(co, 2);
        } else {
            snprintf(err, sizeof err, "expected an upstream table or nil and a refusal, got %s",
                     lua_typename(co, t1));
        }
        if (err[0]) {
            char line[700];
            snprintf(line, sizeof line, "policy %s returned an invalid result: %s", hook_names[t->hook], err);
            call_log(task, LL_ERROR, line);
        }
    }
    if (s) {
        s->hook = NULL;
        t->s = NULL;
        session_hook_done(s, outcome, ups, nups, r);
    } else {
        upstreams_free(ups, nups);
        refusal_free(r);
    }
    call_free(t);
}

/* ---- the session table given to hooks ---- */

static int session_newindex(lua_State *L)
{
    return luaL_error(L, "session fields are read-only (use s.vars for your own data)");
}

/* s:check_password(cleartext): true when the client proved it knows it,
 * whatever the mechanism: a constant-time comparison for cleartext ones,
 * the digest recomputed for CRAM-MD5 (RFC 2195) and APOP (RFC 1939). */
static int session_check_password(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t clen, plen;
    const char *clear = luaL_checklstring(L, 2, &clen);
    lua_getfield(L, 1, "mechanism");
    const char *mech = lua_tostring(L, -1);
    lua_getfield(L, 1, "salt");
    const char *salt = lua_tostring(L, -1);
    lua_getfield(L, 1, "digest");
    const char *digest = lua_tostring(L, -1);
    int ok = 0;
    if (mech && salt && digest && strlen(digest) == 32 &&
        (strcmp(mech, "cram-md5") == 0 || strcmp(mech, "apop") == 0)) {
        char want[33];
        if (mech[0] == 'c') {
            sasl_hmac_md5_hex(clear, clen, salt, strlen(salt), want);
        } else {
            size_t sl = strlen(salt);
            char *buf = xmalloc(sl + clen);
            memcpy(buf, salt, sl);
            memcpy(buf + sl, clear, clen);
            sasl_md5_hex(buf, sl + clen, want);
            explicit_bzero(buf, sl + clen);
            free(buf);
        }
        ok = mbedtls_ct_memcmp(want, digest, 32) == 0;
    } else {
        lua_getfield(L, 1, "password");
        const char *pw = lua_tolstring(L, -1, &plen);
        ok = pw && plen == clen && mbedtls_ct_memcmp(pw, clear, clen) == 0;
    }
    lua_pushboolean(L, ok);
    return 1;
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (!v)
        return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void set_num(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static void sink_string(void *ctx, const char *name, const char *value)
{
    set_str(ctx, name, value);
}

static void sink_list(void *ctx, const char *name, char *const *values, int n)
{
    lua_State *L = ctx;
    if (n <= 0)
        return;
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, values[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, name);
}

static const proto_fields_t field_sink = { sink_string, sink_list };

static void push_session(lua_State *L, session_t *s)
{
    lua_newtable(L); /* the proxy the hook sees */
    lua_newtable(L); /* its fields */
    set_num(L, "id", (double)s->id);
    set_str(L, "protocol", s->proto->name);
    set_str(L, "client_ip", s->client_ip);
    set_num(L, "client_port", s->client_port);
    set_str(L, "local_ip", s->local_ip);
    set_num(L, "local_port", s->local_port);
    set_str(L, "server_name", s->cfg->server_name);
    if (s->proxied) { /* the addresses a load balancer gave in its PROXY header */
        set_str(L, "proxy_protocol_addr", s->client_ip);
        set_num(L, "proxy_protocol_port", s->client_port);
        set_str(L, "proxy_protocol_server_addr", s->local_ip);
        set_num(L, "proxy_protocol_server_port", s->local_port);
        set_str(L, "peer_ip", s->peer_ip);
    }
    tls_conn_t *ctls = session_tls_active(s) ? conn_tls(&s->client) : NULL;
    lua_pushboolean(L, ctls != NULL);
    lua_setfield(L, -2, "tls");
    if (ctls) {
        set_str(L, "sni", tls_sni(ctls));
        set_str(L, "tls_protocol", tls_protocol(ctls));
        set_str(L, "tls_cipher", tls_cipher(ctls));
        char subject[512], issuer[512], serial[128], fp[128];
        if (tls_peer_cert(ctls, subject, sizeof subject, issuer, sizeof issuer, serial, sizeof serial, fp,
                          sizeof fp)) {
            lua_createtable(L, 0, 4);
            set_str(L, "subject", subject);
            set_str(L, "issuer", issuer);
            set_str(L, "serial", serial);
            set_str(L, "fingerprint", fp);
            lua_setfield(L, -2, "client_cert");
        }
        if (s->listener->verify_client) { /* what nginx's auth_http sends as Auth-SSL-* */
            tls_peer_nginx_t pn;
            bool cert = tls_peer_nginx(ctls, &pn);
            set_str(L, "tls_verify", pn.verify);
            if (cert) {
                set_str(L, "tls_subject", pn.subject);
                set_str(L, "tls_issuer", pn.issuer);
                set_str(L, "tls_serial", pn.serial);
                set_str(L, "tls_fingerprint", pn.fingerprint);
                set_str(L, "tls_cert", pn.pem);
            }
            free(pn.pem);
        }
    }
    set_str(L, "user", s->cred.user);
    set_str(L, "password", s->cred.password);
    set_str(L, "authzid", s->cred.authzid);
    set_str(L, "mechanism", s->cred.mechanism);
    set_str(L, "salt", s->cred.salt);
    set_str(L, "digest", s->cred.digest);
    if (s->proto->fields) /* the protocol's own (SMTP's envelope) */
        s->proto->fields(s, &field_sink, L);
    set_num(L, "login_attempt", s->login_attempt);
    lua_pushcfunction(L, session_check_password);
    lua_setfield(L, -2, "check_password");
    if (s->vars_ref == LUA_NOREF) {
        lua_newtable(L);
        s->vars_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->vars_ref);
    lua_setfield(L, -2, "vars");

    lua_newtable(L); /* metatable */
    lua_insert(L, -2);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, session_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}

static policy_call_t *call_new(policy_t *p, session_t *s, int hook)
{
    lua_State *L = p->L;
    policy_call_t *c = xcalloc(1, sizeof *c);
    c->p = p;
    p->refs++;
    c->s = s;
    c->sid = s->id;
    c->hook = hook;
    task_init(&c->task, L);
    c->task.finished = call_finished;
    c->task.log = call_log;
    /* the hook function, then the session table */
    lua_State *co = c->task.co;
    lua_rawgeti(co, LUA_REGISTRYINDEX, p->hooks_ref);
    lua_getfield(co, -1, hook_names[hook]);
    lua_remove(co, -2);
    push_session(co, s);
    return c;
}

static void run_hook(session_t *s, int hook)
{
    policy_call_t *c = call_new(s->policy, s, hook);
    s->hook = c;
    task_resume(&c->task, 1);
}

void policy_run_connect(session_t *s)
{
    run_hook(s, HOOK_ON_CONNECT);
}

void policy_run_authenticate(session_t *s)
{
    run_hook(s, HOOK_AUTHENTICATE);
}

void policy_run_close(session_t *s)
{
    policy_call_t *c = call_new(s->policy, s, HOOK_ON_CLOSE);
    c->s = NULL; /* on its own: the session is going away */
    lua_State *co = c->task.co;
    lua_newtable(co);
    set_num(co, "bytes_in", (double)s->bytes_in);
    set_num(co, "bytes_out", (double)s->bytes_out);
    set_num(co, "duration", (double)(uv_now(s->loop) - s->start_ms) / 1000.0);
    if (s->upstream_name[0])
        set_str(co, "upstream", s->upstream_name);
    set_str(co, "reason", s->close_reason);
    task_resume(&c->task, 2);
}

void policy_session_release(session_t *s)
{
    if (s->policy && s->vars_ref != LUA_NOREF)
        luaL_unref(s->policy->L, LUA_REGISTRYINDEX, s->vars_ref);
    s->vars_ref = LUA_NOREF;
}

/* ---- loading a policy ---- */

static int traceback(lua_State *L)
{
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

static void set_path(lua_State *L, const char *policy)
{
    char dir[1024] = ".";
    const char *slash = strrchr(policy, '/');
    if (slash && (size_t)(slash - policy) < sizeof dir) {
        memcpy(dir, policy, (size_t)(slash - policy));
        dir[slash - policy] = '\0';
    }
    /* The policy's directory, the source tree's lua/ (a build run in
     * place), then the installed copy next to the binary. */
    char exe[1024];
    size_t exelen = sizeof exe;
    char installed[1100] = "";
    if (uv_exepath(exe, &exelen) == 0) {
        char *sl = strrchr(exe, '/');
        if (sl) {
            *sl = '\0';
            snprintf(installed, sizeof installed, "%s/../share/postern/lua/?.lua;", exe);
        }
    }
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?.lua;%s/?/init.lua;%s%s", dir, POSTERN_LUA_DIR, POSTERN_LUA_DIR, installed,
                    lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

static policy_t *load(uv_loop_t *loop, const char *file, const char *text, size_t len, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "cannot create a Lua state");
        return NULL;
    }
    luaL_openlibs(L);
    set_path(L, file);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, lib_open);
    lua_setfield(L, -2, "postern");
    lua_pop(L, 2);

    policy_t *p = xcalloc(1, sizeof *p);
    p->L = L;
    p->refs = 1;
    task_state_init(L, loop);
    /* Seed per process: LuaJIT repeats the same sequence otherwise. */
    luaL_dostring(L, "math.randomseed(os.time() + (tonumber(tostring({}):match('0x(%x+)'), 16) or 0) % 100000)");

    lua_pushcfunction(L, traceback);
    char chunkname[1024];
    snprintf(chunkname, sizeof chunkname, "@%s", file); /* errors name the file, as luaL_loadfile's do */
    if (luaL_loadbuffer(L, text, len, chunkname) != 0 || lua_pcall(L, 0, 1, -2) != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto bad;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        snprintf(err, errlen, "%s: the policy must return a table of hooks (got %s)", file, luaL_typename(L, -1));
        goto bad;
    }
    for (int h = 0; h < 3; h++) {
        lua_getfield(L, -1, hook_names[h]);
        int ty = lua_type(L, -1);
        lua_pop(L, 1);
        if (ty != LUA_TNIL && ty != LUA_TFUNCTION) {
            snprintf(err, errlen, "%s: %s must be a function, got %s", file, hook_names[h], lua_typename(L, ty));
            goto bad;
        }
        p->has[h] = ty == LUA_TFUNCTION;
    }
    if (!p->has[HOOK_AUTHENTICATE]) {
        snprintf(err, errlen, "%s: the policy has no authenticate function", file);
        goto bad;
    }
    p->hooks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    return p;
bad:
    lua_close(L);
    free(p);
    return NULL;
}

/* The policy file's text, read once per configuration: the workers a
 * master starts (after a crash, say) run what the master checked, even if
 * the file has been edited since without a reload. */
static int read_policy(config_t *cfg, char *err, size_t errlen)
{
    if (cfg->policy_text)
        return PT_OK;
    FILE *f = fopen(cfg->policy, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", cfg->policy, strerror(errno));
        return PT_ERROR;
    }
    buf_t b;
    buf_init(&b, 64 * 1024 * 1024);
    char chunk[16384];
    size_t n;
    int rc = PT_OK;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (buf_append(&b, chunk, n) < 0) {
            snprintf(err, errlen, "%s: larger than 64 MiB", cfg->policy);
            rc = PT_ERROR;
            break;
        }
    if (rc == PT_OK && ferror(f)) {
        snprintf(err, errlen, "cannot read %s: %s", cfg->policy, strerror(errno));
        rc = PT_ERROR;
    }
    fclose(f);
    if (rc == PT_OK) {
        cfg->policy_len = b.len;
        cfg->policy_text = xmalloc(b.len + 1);
        memcpy(cfg->policy_text, b.data ? b.data : "", b.len);
        cfg->policy_text[b.len] = '\0';
    }
    buf_free(&b);
    return rc;
}

int policy_load(uv_loop_t *loop, config_t *cfg, char *err, size_t errlen)
{
    if (read_policy(cfg, err, errlen) < 0)
        return PT_ERROR;
    policy_t *p = load(loop, cfg->policy, cfg->policy_text, cfg->policy_len, err, errlen);
    if (!p)
        return PT_ERROR;
    policy_release(current);
    current = p;
    return PT_OK;
}

void policy_shutdown(void)
{
    for (task_t *t; (t = task_first());) { /* every task here is a hook call */
        policy_call_t *c = (policy_call_t *)t;
        if (c->s) {
            c->s->hook = NULL;
            c->s = NULL;
        }
        call_free(c);
    }
    policy_release(current);
    current = NULL;
    lib_shutdown();
}

policy_t *policy_acquire(void)
{
    if (current)
        current->refs++;
    return current;
}

void policy_release(policy_t *p)
{
    if (p && --p->refs == 0) {
        lua_close(p->L);
        free(p);
    }
}

bool policy_has_hook(const policy_t *p, const char *name)
{
    for (int h = 0; p && h < 3; h++)
        if (strcmp(name, hook_names[h]) == 0)
            return p->has[h];
    return false;
}
