/* buf.h: a byte buffer with a hard size limit (every protocol buffer in
 * postern is one: no input can make memory grow unbounded), and line
 * splitting. */
#ifndef POSTERN_BUF_H
#define POSTERN_BUF_H

#include <stddef.h>

typedef struct buf {
    char *data;
    size_t len;   /* bytes held */
    size_t cap;   /* bytes allocated */
    size_t max;   /* never grows past this */
    size_t hw;    /* high-water mark of len: what buf_free wipes */
} buf_t;

void buf_init(buf_t *b, size_t max);
void buf_free(buf_t *b);                           /* wipes the bytes that were held first */
int buf_append(buf_t *b, const void *p, size_t n); /* PT_OK, or PT_TOO_BIG past max */
int buf_reserve(buf_t *b, size_t n);               /* room for n more: PT_OK, or PT_TOO_BIG past max */
size_t buf_room(const buf_t *b);                   /* bytes that may still be added */
void buf_consume(buf_t *b, size_t n);              /* drop n bytes from the front */
void buf_clear(buf_t *b);                          /* drop them all (keeps the memory) */

/* Finds the first line in p[0..len): returns 1 and sets *line_len (without
 * CRLF or bare LF) and *consumed (with it), or 0 when no LF is there yet. */
int buf_find_line(const char *p, size_t len, size_t *line_len, size_t *consumed);

/* Copies p[0..len) into out as a string, cut to outlen - 1 bytes; returns
 * the length copied. */
size_t str_copy(char *out, size_t outlen, const char *p, size_t len);

#endif
