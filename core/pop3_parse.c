/* pop3_parse.c: POP3 command parsing (pop3_parse.h). */
#include "pop3_parse.h"

#include <string.h>

int pop3_parse_command(const char *buf, size_t len, size_t max, cmd_t *cmd)
{
    (void)max; /* a line is bounded by the caller's buffer */
    return cmd_parse_line(buf, len, cmd);
}

int pop3_parse_apop(const char *rest, size_t len, size_t *name_len, const char **digest)
{
    const char *sp = len ? memrchr(rest, ' ', len) : NULL;
    if (!sp || sp == rest)
        return PT_INVALID;
    size_t dl = len - (size_t)(sp + 1 - rest);
    if (dl != 32)
        return PT_INVALID;
    for (size_t i = 0; i < 32; i++)
        if (!strchr("0123456789abcdefABCDEF", sp[1 + i]) || sp[1 + i] == '\0')
            return PT_INVALID;
    *name_len = (size_t)(sp - rest);
    *digest = sp + 1;
    return PT_OK;
}

int pop3_parse_auth(const char *rest, size_t len, size_t *mech_len, const char **ir, size_t *ir_len)
{
    *mech_len = cmd_split_word(rest, len, ir, ir_len);
    if (*ir && memchr(*ir, ' ', *ir_len))
        return PT_INVALID;
    return PT_OK;
}
