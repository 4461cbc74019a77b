/* cmd.h: a client command as every protocol's parser returns it.
 *
 * Parsers (imap_parse.c, pop3_parse.c, smtp_parse.c, sieve_parse.c) are
 * pure functions over a buffer: they neither allocate nor copy, and every
 * part of a command is an (offset, length) slice of that buffer, so they
 * are unit-tested and fuzzed without sockets. They restart from the first
 * byte of the command on every call: commands are bounded by
 * client_buffer, so this stays cheap and needs no saved state.
 *
 * A parser returns PT_OK (a whole command: cmd->consumed bytes), PT_AGAIN
 * (more bytes needed; see sync_literals), PT_INVALID (an invalid command:
 * reply with cmd->error and drop cmd->consumed bytes; 0 means its end has
 * not arrived yet) or PT_TOO_BIG (a literal over the limit: reply and
 * close). */
#ifndef POSTERN_CMD_H
#define POSTERN_CMD_H

#include "status.h"

#include <stddef.h>

#define CMD_MAX_ARGS 64

enum { CMD_ARG_ATOM, CMD_ARG_QUOTED, CMD_ARG_LITERAL, CMD_ARG_LPAREN, CMD_ARG_RPAREN };

typedef struct cmd_arg {
    int type;
    size_t off, len;      /* QUOTED: between the quotes, escapes still in */
} cmd_arg_t;

typedef struct cmd {
    size_t tag_off, tag_len;    /* protocols with tags (IMAP); 0 when none was read */
    size_t name_off, name_len;  /* the command's name */
    size_t rest_off, rest_len;  /* line protocols: everything after the name and one space */
    cmd_arg_t args[CMD_MAX_ARGS];
    int nargs;
    size_t consumed;      /* OK/INVALID: bytes to drop, final LF included (INVALID: 0 = no LF yet) */
    int sync_literals;    /* AGAIN: ordinal of the synchronizing literal whose data we
                             wait for (0: none); answer R_LITERAL once per new ordinal */
    int close_after;      /* INVALID on a line ending in {n+}: cannot resynchronise */
    const char *error;    /* INVALID/TOO_BIG: why, for the reply */
} cmd_t;

/* Copies an argument with quoted-string escapes removed into out (which
 * holds outlen bytes, NUL added). Returns its length, or PT_TOO_BIG. */
long cmd_arg_copy(const char *buf, const cmd_arg_t *a, char *out, size_t outlen);

/* 1 when the argument is the atom s, case-insensitively. */
int cmd_arg_is(const char *buf, const cmd_arg_t *a, const char *s);

/* 1 when the command's name is `name`, case-insensitively. */
int cmd_is(const char *buf, const cmd_t *c, const char *name);

/* The text-line protocols (POP3, SMTP): one line, CRLF or a bare LF, with
 * no NUL in it; the name is the first word, `rest` what follows the first
 * space (arguments are the protocol's business). */
int cmd_parse_line(const char *buf, size_t len, cmd_t *cmd);
/* A SASL answer in those protocols: the line (no NUL) copied into out. */
int cmd_line_response(const char *buf, size_t len, cmd_t *cmd, char *out, size_t outlen, size_t *outn);
/* Splits "first[ rest]" at its first space: the first word's length, and
 * what follows the space (NULL when there is no space). */
size_t cmd_split_word(const char *s, size_t len, const char **after, size_t *after_len);

#endif
