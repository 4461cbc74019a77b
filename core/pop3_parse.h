/* pop3_parse.h: POP3 commands before login (RFC 1939, 2449, 5034), pure
 * functions over a buffer (cmd.h): the line, then the arguments of the
 * commands that have structure. */
#ifndef POP3_PARSE_H
#define POP3_PARSE_H

#include "cmd.h"

#include <stdbool.h>

#define POP3_MAX_CRED 1024

/* One command line: name and rest (USER and PASS take the whole rest,
 * spaces included, as RFC 1939 has it). */
int pop3_parse_command(const char *buf, size_t len, size_t max, cmd_t *cmd);

/* APOP's "name digest": the name is everything before the last space, the
 * digest 32 hex digits. PT_OK, or PT_INVALID. */
int pop3_parse_apop(const char *rest, size_t len, size_t *name_len, const char **digest);

/* AUTH's "mechanism [initial-response]": PT_OK (ir NULL when absent), or
 * PT_INVALID when more words follow. */
int pop3_parse_auth(const char *rest, size_t len, size_t *mech_len, const char **ir, size_t *ir_len);

#endif
