/* sieve_parse.h: ManageSieve commands before login (RFC 5804 §4), pure
 * functions over a buffer (cmd.h). ManageSieve borrows IMAP's strings
 * (quoted, and literals a client sends without waiting: {n+}, and {n},
 * read the same way, as Dovecot does), without tags. */
#ifndef SIEVE_PARSE_H
#define SIEVE_PARSE_H

#include "cmd.h"

#define SIEVE_MAX_QUOTED 1024 /* RFC 5804 §4: a quoted string holds at most 1024 octets */

/* One command: its name, then its arguments. */
int sieve_parse_command(const char *buf, size_t len, size_t max, cmd_t *cmd);

/* A client's answer during AUTHENTICATE: one string on its line, copied
 * (escapes removed) into out. */
int sieve_parse_response(const char *buf, size_t len, cmd_t *cmd, char *out, size_t outlen, size_t *outn);

/* 1 when the argument is a string (quoted or literal). */
int sieve_arg_is_string(const cmd_arg_t *a);

#endif
