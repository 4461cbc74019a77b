/* pool.c: fixed-size block pools (see pool.h). */
#include "pool.h"

#include "log.h"
#include "mem.h"

#include <stdlib.h>
#include <sys/mman.h>

#define POOL_KEEP_BYTES (4u << 20) /* free blocks kept per pool, in bytes */

/* Under AddressSanitizer blocks come from malloc and are poisoned while
 * they wait in the pool, so a block used after pool_put is reported
 * (not freed: ASan's quarantine would make every read look like growth
 * to the specs that watch memory under backpressure). */
#if defined(__SANITIZE_ADDRESS__)
#define POOL_CHECKED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_CHECKED 1
#endif
#endif
#ifdef POOL_CHECKED
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static void block_release(void *b, size_t size)
{
#ifdef POOL_CHECKED
    UNPOISON(b, size);
    free(b);
#else
    munmap(b, size);
#endif
}

typedef struct block {
    struct block *next;
} block_t;

struct pool {
    size_t size;
    size_t keep;           /* free blocks kept */
    size_t nfree, in_use;
    block_t *free;
    pool_t *next;
};

static pool_t *pools;

pool_t *pool_for(size_t size)
{
    for (pool_t *p = pools; p; p = p->next)
        if (p->size == size)
            return p;
    pool_t *p = xcalloc(1, sizeof *p);
    p->size = size;
    p->keep = POOL_KEEP_BYTES / size + 1;
    p->next = pools;
    pools = p;
    return p;
}

size_t pool_size(const pool_t *p)
{
    return p->size;
}

void *pool_get(pool_t *p)
{
    p->in_use++;
    if (p->free) {
        block_t *b = p->free;
        UNPOISON(b, p->size);
        p->free = b->next;
        p->nfree--;
        return b;
    }
#ifdef POOL_CHECKED
    return xmalloc(p->size);
#endif
    void *m = mmap(NULL, p->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        log_msg(LL_ALERT, "out of memory (a %zu-byte buffer)", p->size);
        abort();
    }
    return m;
}

void pool_put(pool_t *p, void *block)
{
    if (!block)
        return;
    p->in_use--;
    if (p->nfree >= p->keep) {
        block_release(block, p->size);
        return;
    }
    block_t *b = block;
    b->next = p->free;
    POISON(b, p->size);
    p->free = b;
    p->nfree++;
}

void pool_stats(size_t *in_use, size_t *free_blocks)
{
    *in_use = *free_blocks = 0;
    for (pool_t *p = pools; p; p = p->next) {
        *in_use += p->in_use;
        *free_blocks += p->nfree;
    }
}

void pool_drain(void)
{
    for (pool_t *p = pools; p; p = p->next) {
        while (p->free) {
            block_t *b = p->free;
            UNPOISON(b, p->size);
            p->free = b->next;
            block_release(b, p->size);
        }
        p->nfree = 0;
    }
}
