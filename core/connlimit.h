/* connlimit.h: max_connections and max_connections_per_ip, counted across
 * every worker of an instance in memory shared with the master. */
#ifndef POSTERN_CONNLIMIT_H
#define POSTERN_CONNLIMIT_H

#include <stdint.h>

#define CONNLIMIT_SLOTS 256 /* worker slots: the running workers and the ones still draining */

enum { CONNLIMIT_OK = 0, CONNLIMIT_TOTAL = 1, CONNLIMIT_PER_IP = 2 };

/* Master, once, before the first fork (a negative errno on failure). */
int connlimit_init(void);
/* In a worker, right after the fork: the slot its counts are kept under. */
void connlimit_set_slot(int slot);
/* Takes one connection from the client address ip (16 octets, IPv4 as
 * ::ffff:a.b.c.d) unless it would pass a limit (0: none). */
int connlimit_acquire(const uint8_t ip[16], int max_total, int max_per_ip);
void connlimit_release(const uint8_t ip[16]);
/* Master: a worker died; what it held is let go. */
void connlimit_forget_slot(int slot);
/* The connections held now: all of them, and from ip (NULL: skipped). */
unsigned connlimit_count(const uint8_t ip[16], unsigned *from_ip);
/* "192.0.2.1" or "2001:db8::1" to the 16-octet key (-1 if neither). */
int connlimit_ip_key(const char *text, uint8_t ip[16]);

#endif
