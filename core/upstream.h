/* upstream.h: connecting to the upstreams the policy chose, in order,
 * each with a timeout; the protocol's upstream login runs on top. */
#ifndef POSTERN_UPSTREAM_H
#define POSTERN_UPSTREAM_H

struct session;

void upstream_connect_next(struct session *s); /* try s->upstreams[s->upstream_idx++] */
void upstream_close(struct session *s);        /* detach and close the current one */
struct uv_stream_s *upstream_stream(struct session *s);

#endif
