/* relay.h: after login, bytes both ways with bounded buffers.
 * Reading a side stops while its bytes wait to be written to the other
 * (backpressure); no per-byte work happens here. */
#ifndef POSTERN_RELAY_H
#define POSTERN_RELAY_H

struct session;
struct relay;

int relay_start(struct session *s);
void relay_free(struct relay *r);

#endif
