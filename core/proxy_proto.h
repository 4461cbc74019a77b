/* proxy_proto.h: the PROXY protocol (HAProxy's proxy-protocol.txt, v1
 * text and v2 binary): reading the header a load balancer puts in front
 * of a client connection, and writing one for an upstream. Pure
 * functions over buffers. */
#ifndef POSTERN_PROXY_PROTO_H
#define POSTERN_PROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>

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

#endif
