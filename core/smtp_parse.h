/* smtp_parse.h: SMTP commands before login (RFC 5321, 4954, 1870), pure
 * functions over a buffer (cmd.h): the line, then the arguments of the
 * commands that have structure. */
#ifndef SMTP_PARSE_H
#define SMTP_PARSE_H

#include "cmd.h"

#include <stdbool.h>

#define SMTP_MAX_ARG 1024

/* One command line: the verb and the rest. */
int smtp_parse_command(const char *buf, size_t len, size_t max, cmd_t *cmd);

/* "FROM:<a@b> SIZE=10" / "TO:<a@b>" with prefix "FROM:" / "TO:": the
 * address between < and > as a slice of arg. PT_OK, or PT_INVALID. */
int smtp_parse_path(const char *arg, size_t len, const char *prefix, size_t *addr_off, size_t *addr_len);

/* MAIL FROM's SIZE= parameter (RFC 1870): 1 with *size set, 0 when there
 * is none, PT_INVALID when it is not a number. */
int smtp_parse_size(const char *arg, size_t len, unsigned long long *size);

/* An EHLO/HELO argument: 1 to 255 printable characters, no space or
 * control character (it is replayed upstream). */
bool smtp_valid_helo(const char *arg, size_t len);

#endif
