/* mem.h: the allocation policy of core/.
 *
 * Every allocation goes through these helpers, and none of them returns
 * NULL: when the heap is exhausted postern logs "out of memory" and
 * aborts. A mail proxy that goes on with half its state missing would
 * serve sessions wrongly (a lost credential buffer is a login to the
 * wrong account); with Linux's overcommit malloc hardly ever fails
 * anyway, and what input can make grow is bounded by limits (buf_t's
 * max, client_buffer, proxy_buffer) before it reaches the heap. */
#ifndef POSTERN_MEM_H
#define POSTERN_MEM_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Zeroes a string (it may hold a password), frees it, NULLs the pointer. */
void str_wipe_free(char **p);

#endif
