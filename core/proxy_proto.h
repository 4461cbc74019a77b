/* proxy_proto.h: the PROXY protocol (HAProxy's proxy-protocol.txt, v1
 * text and v2 binary): reading the header a load balancer puts in front
 * of a client connection, and writing one for an upstream. Pure
 * functions over buffers. */
#ifndef POSTERN_PROXY_PROTO_H
#define POSTERN_PROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>

struct sockaddr;

#define PROXY_V1_MAX 107      /* the longest v1 line, CRLF included */
#define PROXY_V2_MAX 4096     /* a v2 header with its TLVs; longer is refused */
#define PROXY_HEADER_OUT_MAX 128

typedef struct proxy_addr {
    bool known;               /* false: UNKNOWN (v1) or LOCAL/UNSPEC (v2): keep the socket's addresses */
    int version;              /* 1 or 2 */
    char src_ip[64], dst_ip[64];
    int src_port, dst_port;
} proxy_addr_t;

/* Parses the header at the start of data. Returns the header's length
 * (> 0) with *out filled, PT_AGAIN when more bytes are needed, or
 * PT_INVALID when this is not a valid PROXY header (err says why). */
int proxy_parse(const char *data, size_t len, proxy_addr_t *out, const char **err);

/* Writes a version 1 or 2 header for a connection from src to dst (IP
 * strings, both IPv4 or both IPv6) into out; when the addresses cannot be
 * expressed it writes "UNKNOWN" (v1) or a LOCAL header (v2). Returns the
 * length written. */
size_t proxy_format(int version, const char *src_ip, int src_port, const char *dst_ip, int dst_port,
                    char out[PROXY_HEADER_OUT_MAX]);

/* A network, e.g. the balancers a proxy_protocol listener trusts. An
 * IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) is stored as the IPv4
 * one (10.0.0.0/8), so it matches either way of writing the peer. */
typedef struct cidr {
    int family;               /* AF_INET or AF_INET6 */
    int prefix;               /* 0..32 or 0..128 */
    unsigned char addr[16];   /* network byte order, 4 or 16 bytes used */
} cidr_t;

/* Parses "ADDRESS" (a host: /32 or /128) or "ADDRESS/PREFIX", IPv4 or
 * IPv6. Returns 0, or -1 with a reason in *err (bits set past the prefix,
 * as in 10.0.0.1/8, are refused: the network is 10.0.0.0/8). */
int cidr_parse(const char *text, cidr_t *out, const char **err);

/* Whether peer (AF_INET or AF_INET6; an IPv4-mapped IPv6 address counts
 * as its IPv4 address) is inside one of the n networks. False for any
 * other address family, and when n is 0. */
bool proxy_trusted(const cidr_t *list, int n, const struct sockaddr *peer);

#endif
