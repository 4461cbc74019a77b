/* proxy_proto.c: PROXY protocol v1/v2 headers, parsed and formatted
 * (https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt). */
#include "proxy_proto.h"

#include "status.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char V2_SIG[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

static int fail(const char **err, const char *why)
{
    if (err)
        *err = why;
    return PT_INVALID;
}

/* A decimal port, 0..65535, no sign, no leading zero but "0" itself. */
static bool parse_port(const char *p, int *port)
{
    if (!*p || strlen(p) > 5 || (p[0] == '0' && p[1]))
        return false;
    long v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    if (v > 65535)
        return false;
    *port = (int)v;
    return true;
}

static int parse_v1(const char *data, size_t len, proxy_addr_t *out, const char **err)
{
    size_t n = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;
    const char *crlf = NULL;
    for (size_t i = 0; i + 1 < n; i++)
        if (data[i] == '\r' && data[i + 1] == '\n') {
            crlf = data + i;
            break;
        }
    if (!crlf) {
        if (len >= PROXY_V1_MAX)
            return fail(err, "PROXY v1 line too long");
        for (size_t i = 0; i < len; i++) /* fail early on what cannot be a header */
            if ((unsigned char)data[i] < 0x20 && data[i] != '\r')
                return fail(err, "bad PROXY v1 line");
        return PT_AGAIN;
    }
    size_t linelen = (size_t)(crlf - data);
    char line[PROXY_V1_MAX + 1];
    memcpy(line, data, linelen);
    line[linelen] = '\0';

    char *f[7];
    int nf = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " ", &save); t && nf < 7; t = strtok_r(NULL, " ", &save))
        f[nf++] = t;
    memset(out, 0, sizeof *out);
    out->version = 1;
    if (nf >= 2 && strcmp(f[1], "UNKNOWN") == 0) /* the rest of the line is ignored */
        return (int)(linelen + 2);
    if (nf != 6)
        return fail(err, "bad PROXY v1 line");
    int af;
    if (strcmp(f[1], "TCP4") == 0)
        af = AF_INET;
    else if (strcmp(f[1], "TCP6") == 0)
        af = AF_INET6;
    else
        return fail(err, "bad PROXY v1 protocol");
    unsigned char a[16];
    if (inet_pton(af, f[2], a) != 1 || inet_pton(af, f[3], a) != 1)
        return fail(err, "bad PROXY v1 address");
    if (!parse_port(f[4], &out->src_port) || !parse_port(f[5], &out->dst_port))
        return fail(err, "bad PROXY v1 port");
    snprintf(out->src_ip, sizeof out->src_ip, "%s", f[2]);
    snprintf(out->dst_ip, sizeof out->dst_ip, "%s", f[3]);
    out->known = true;
    return (int)(linelen + 2);
}

static int parse_v2(const unsigned char *d, size_t len, proxy_addr_t *out, const char **err)
{
    if (len < 16)
        return PT_AGAIN;
    if ((d[12] >> 4) != 2)
        return fail(err, "bad PROXY v2 version");
    int cmd = d[12] & 0x0F;
    if (cmd > 1)
        return fail(err, "bad PROXY v2 command");
    size_t body = ((size_t)d[14] << 8) | d[15];
    if (16 + body > PROXY_V2_MAX)
        return fail(err, "PROXY v2 header too long");
    if (len < 16 + body)
        return PT_AGAIN;
    memset(out, 0, sizeof *out);
    out->version = 2;
    int total = (int)(16 + body);
    if (cmd == 0) /* LOCAL: the balancer's own connection (health check) */
        return total;
    int fam = d[13] >> 4, proto = d[13] & 0x0F;
    if (proto != 1 || (fam != 1 && fam != 2)) /* not TCP over IPv4/IPv6: keep the socket's */
        return total;
    const unsigned char *p = d + 16;
    if (fam == 1) {
        if (body < 12)
            return fail(err, "short PROXY v2 address block");
        inet_ntop(AF_INET, p, out->src_ip, sizeof out->src_ip);
        inet_ntop(AF_INET, p + 4, out->dst_ip, sizeof out->dst_ip);
        out->src_port = (p[8] << 8) | p[9];
        out->dst_port = (p[10] << 8) | p[11];
    } else {
        if (body < 36)
            return fail(err, "short PROXY v2 address block");
        inet_ntop(AF_INET6, p, out->src_ip, sizeof out->src_ip);
        inet_ntop(AF_INET6, p + 16, out->dst_ip, sizeof out->dst_ip);
        out->src_port = (p[32] << 8) | p[33];
        out->dst_port = (p[34] << 8) | p[35];
    }
    out->known = true;
    return total;
}

int proxy_parse(const char *data, size_t len, proxy_addr_t *out, const char **err)
{
    if (len == 0)
        return PT_AGAIN;
    size_t n = len < sizeof V2_SIG ? len : sizeof V2_SIG;
    if (memcmp(data, V2_SIG, n) == 0)
        return len < sizeof V2_SIG ? PT_AGAIN : parse_v2((const unsigned char *)data, len, out, err);
    n = len < 6 ? len : 6;
    if (memcmp(data, "PROXY ", n) == 0)
        return len < 6 ? PT_AGAIN : parse_v1(data, len, out, err);
    return fail(err, "no PROXY protocol header");
}

size_t proxy_format(int version, const char *src_ip, int src_port, const char *dst_ip, int dst_port,
                    char out[PROXY_HEADER_OUT_MAX])
{
    unsigned char s4[4], d4[4], s6[16], d6[16];
    int af = 0;
    if (inet_pton(AF_INET, src_ip, s4) == 1 && inet_pton(AF_INET, dst_ip, d4) == 1)
        af = AF_INET;
    else if (inet_pton(AF_INET6, src_ip, s6) == 1 && inet_pton(AF_INET6, dst_ip, d6) == 1)
        af = AF_INET6;
    if (version == 1) {
        int n = af ? snprintf(out, PROXY_HEADER_OUT_MAX, "PROXY %s %s %s %d %d\r\n", af == AF_INET ? "TCP4" : "TCP6",
                              src_ip, dst_ip, src_port, dst_port)
                   : snprintf(out, PROXY_HEADER_OUT_MAX, "PROXY UNKNOWN\r\n");
        return (size_t)n;
    }
    unsigned char *o = (unsigned char *)out;
    memcpy(o, V2_SIG, sizeof V2_SIG);
    o[12] = af ? 0x21 : 0x20; /* version 2, PROXY or LOCAL */
    size_t body = af == AF_INET ? 12 : af == AF_INET6 ? 36 : 0;
    o[13] = af == AF_INET ? 0x11 : af == AF_INET6 ? 0x21 : 0x00;
    o[14] = 0;
    o[15] = (unsigned char)body;
    unsigned char *p = o + 16;
    size_t alen = af == AF_INET ? 4 : 16;
    if (af) {
        memcpy(p, af == AF_INET ? s4 : s6, alen);
        memcpy(p + alen, af == AF_INET ? d4 : d6, alen);
        p += 2 * alen;
        p[0] = (unsigned char)(src_port >> 8);
        p[1] = (unsigned char)src_port;
        p[2] = (unsigned char)(dst_port >> 8);
        p[3] = (unsigned char)dst_port;
    }
    return 16 + body;
}

/* ---- trusted senders ---- */

static const unsigned char V4_MAPPED[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* The first `prefix` bits of a and b are the same. */
static bool prefix_equal(const unsigned char *a, const unsigned char *b, int prefix)
{
    int bytes = prefix / 8, bits = prefix % 8;
    if (memcmp(a, b, (size_t)bytes) != 0)
        return false;
    if (bits == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - bits));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

int cidr_parse(const char *text, cidr_t *out, const char **err)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(text, '/');
    size_t hl = slash ? (size_t)(slash - text) : strlen(text);
    if (hl == 0 || hl >= sizeof host) {
        *err = "not an IPv4 or IPv6 address";
        return -1;
    }
    memcpy(host, text, hl);
    host[hl] = '\0';
    memset(out, 0, sizeof *out);
    int max;
    if (inet_pton(AF_INET, host, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, host, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        *err = "not an IPv4 or IPv6 address";
        return -1;
    }
    out->prefix = max;
    if (slash) {
        const char *p = slash + 1;
        int v = 0;
        if (!*p || strlen(p) > 3 || (p[0] == '0' && p[1])) {
            *err = "bad prefix length after /";
            return -1;
        }
        for (; *p; p++) {
            if (*p < '0' || *p > '9') {
                *err = "bad prefix length after /";
                return -1;
            }
            v = v * 10 + (*p - '0');
        }
        if (v > max) {
            *err = max == 32 ? "prefix length above 32" : "prefix length above 128";
            return -1;
        }
        out->prefix = v;
    }
    for (int bit = out->prefix; bit < max; bit++)
        if (out->addr[bit / 8] & (0x80 >> (bit % 8))) {
            *err = "address bits set past the prefix length (write the network's first address)";
            return -1;
        }
    if (out->family == AF_INET6 && out->prefix >= 96 && memcmp(out->addr, V4_MAPPED, 12) == 0) {
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
        out->family = AF_INET;
        out->prefix -= 96;
    }
    return 0;
}

bool proxy_trusted(const cidr_t *list, int n, const struct sockaddr *peer)
{
    unsigned char a[16];
    int family;
    if (peer->sa_family == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)peer)->sin_addr, 4);
        family = AF_INET;
    } else if (peer->sa_family == AF_INET6) {
        const unsigned char *b = ((const struct sockaddr_in6 *)peer)->sin6_addr.s6_addr;
        if (memcmp(b, V4_MAPPED, 12) == 0) {
            memcpy(a, b + 12, 4);
            family = AF_INET;
        } else {
            memcpy(a, b, 16);
            family = AF_INET6;
        }
    } else {
        return false;
    }
    for (int i = 0; i < n; i++)
        if (list[i].family == family && prefix_equal(a, list[i].addr, list[i].prefix))
            return true;
    return false;
}
