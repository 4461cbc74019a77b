/* imap_parse.h: the IMAP command parser (RFC 9051 / 3501 grammar subset a
 * proxy needs before login): tag, name, then atoms, quoted strings,
 * literals ({n} and {n+}) and parentheses, as cmd.h describes. */
#ifndef POSTERN_IMAP_PARSE_H
#define POSTERN_IMAP_PARSE_H

#include "cmd.h"

#define IMAP_MAX_TAG 128 /* RFC 9051 sets none; Dovecot takes 100, nginx 32 */

int imap_parse_command(const char *buf, size_t len, size_t max_literal, cmd_t *cmd);

/* The same grammar for protocols that borrow it (ManageSieve, RFC 5804):
 * a command with no tag; with IMAP_ARGS_NOSYNC a literal {n} is read like
 * {n+}, without waiting for a "+" (ManageSieve has no continuation). */
#define IMAP_ARGS_NOSYNC 1
#define IMAP_ARGS_FIRST 2 /* the first argument needs no space before it (a line of arguments only) */
int imap_parse_unnamed(const char *buf, size_t len, size_t max_literal, int flags, cmd_t *cmd);
/* The arguments from pos to the end of the command. */
int imap_parse_args(const char *buf, size_t len, size_t pos, size_t max_literal, int flags, cmd_t *cmd);

#endif
