/* buf.c: bounded byte buffers and line splitting. */
#include "buf.h"

#include "mem.h"
#include "status.h"

#include <stdlib.h>
#include <string.h>

void buf_init(buf_t *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = b->hw = 0;
    b->max = max;
}

/* Writers add to len directly after buf_reserve (reads land in place):
 * the mark is taken whenever len is about to drop. */
static void mark(buf_t *b)
{
    if (b->len > b->hw)
        b->hw = b->len;
}

void buf_free(buf_t *b)
{
    if (b->data) {
        /* Buffers hold credentials before login: leave nothing behind.
         * Only what was ever held: a 16 KiB buffer that saw a 30-byte
         * LOGIN costs 30 bytes of wiping, not 16384. */
        mark(b);
        explicit_bzero(b->data, b->hw);
        free(b->data);
    }
    b->data = NULL;
    b->len = b->cap = b->hw = 0;
}

int buf_reserve(buf_t *b, size_t n)
{
    if (n > b->max - b->len)
        return PT_TOO_BIG;
    if (b->len + n <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n)
        cap *= 2;
    if (cap > b->max)
        cap = b->max;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
    return PT_OK;
}

size_t buf_room(const buf_t *b)
{
    return b->max - b->len;
}

int buf_append(buf_t *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return PT_TOO_BIG;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return PT_OK;
}

void buf_clear(buf_t *b)
{
    mark(b);
    b->len = 0;
}

void buf_consume(buf_t *b, size_t n)
{
    mark(b);
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

int buf_find_line(const char *p, size_t len, size_t *line_len, size_t *consumed)
{
    const char *lf = memchr(p, '\n', len);
    if (!lf)
        return 0;
    size_t l = (size_t)(lf - p);
    *consumed = l + 1;
    if (l > 0 && p[l - 1] == '\r')
        l--;
    *line_len = l;
    return 1;
}

size_t str_copy(char *out, size_t outlen, const char *p, size_t len)
{
    if (len >= outlen)
        len = outlen - 1;
    memcpy(out, p, len);
    out[len] = '\0';
    return len;
}
