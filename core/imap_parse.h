/* imap_parse.h: the IMAP command parser (RFC 9051 / 3501 grammar subset a
 * proxy needs before login). A pure function over a buffer: it neither
 * allocates nor copies, so it is unit-tested and fuzzed on its own. */
#ifndef POSTERN_IMAP_PARSE_H
#define POSTERN_IMAP_PARSE_H

#include "status.h"

#include <stddef.h>

#define IMAP_MAX_ARGS 64
#define IMAP_MAX_TAG 128 /* RFC 9051 sets none; Dovecot takes 100, nginx 32 */

/* imap_parse_command returns:
 *   PT_OK       a whole command: see cmd->consumed
 *   PT_AGAIN    need more bytes (check cmd->sync_literals)
 *   PT_INVALID  an invalid line: reply BAD, drop cmd->consumed bytes
 *   PT_TOO_BIG  a literal larger than allowed: reply BAD, close */

enum { IMAP_ARG_ATOM, IMAP_ARG_QUOTED, IMAP_ARG_LITERAL, IMAP_ARG_LPAREN, IMAP_ARG_RPAREN };

typedef struct imap_arg {
    int type;
    size_t off, len;      /* QUOTED: between the quotes, escapes still in */
} imap_arg_t;

typedef struct imap_command {
    size_t tag_off, tag_len;
    size_t name_off, name_len;
    imap_arg_t args[IMAP_MAX_ARGS];
    int nargs;
    size_t consumed;      /* OK/BAD: bytes to drop, final LF included (BAD: 0 = no LF yet) */
    int sync_literals;    /* AGAIN: ordinal of the synchronizing literal whose data we
                             wait for (0: none); send one "+" per new ordinal */
    int close_after;      /* BAD on a line ending in {n+}: cannot resynchronise */
    const char *error;    /* BAD/TOO_BIG: why, for the reply */
} imap_command_t;

int imap_parse_command(const char *buf, size_t len, size_t max_literal, imap_command_t *cmd);

/* Copies an argument with quoted-string escapes removed into out (which
 * holds outlen bytes, NUL added). Returns its length, or -1 if too long. */
long imap_arg_copy(const char *buf, const imap_arg_t *a, char *out, size_t outlen);

/* 1 when the argument equals the string s, case-insensitively. */
int imap_arg_is(const char *buf, const imap_arg_t *a, const char *s);

#endif
