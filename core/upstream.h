/* upstream.h: connecting to the upstreams the policy chose, in order,
 * each with a timeout; the protocol's upstream login runs on top. */
#ifndef POSTERN_UPSTREAM_H
#define POSTERN_UPSTREAM_H

#include <stddef.h>

struct session;

void upstream_connect_next(struct session *s); /* try s->upstreams[s->upstream_idx++] */
void upstream_close(struct session *s);        /* detach and close the current one */
struct uv_stream_s *upstream_stream(struct session *s);
struct tls_conn *upstream_tls(struct session *s);   /* when TLS is up towards the upstream */
void upstream_write(struct session *s, const void *data, size_t len);

#endif
