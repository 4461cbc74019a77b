/* pool.h: fixed-size blocks for bytes in flight (the relay's reads, TLS
 * ciphertext reads), taken when a read arrives and given back when its
 * write completed, so an idle session holds none.
 *
 * Blocks are mapped with mmap: a pool keeps up to `keep` free blocks for
 * the next reads and unmaps the rest, so memory goes back to the system
 * after a peak (malloc would keep a fragmented heap). */
#ifndef POSTERN_POOL_H
#define POSTERN_POOL_H

#include <stddef.h>

typedef struct pool pool_t;

/* The process's pool for blocks of `size` bytes (made on first use; the
 * event loop's thread only). */
pool_t *pool_for(size_t size);
size_t pool_size(const pool_t *p);
void *pool_get(pool_t *p);
/* Gives a block back; it is not wiped (the pool holds no secrets:
 * relayed bytes are the client's and the upstream's, after login). */
void pool_put(pool_t *p, void *block);
/* Blocks in use and free, of every pool (for tests and figures). */
void pool_stats(size_t *in_use, size_t *free_blocks);
/* Unmaps every free block (at exit, and in tests); the pools stay. */
void pool_drain(void);

#endif
