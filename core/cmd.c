/* cmd.c: reading the slices of a parsed command (cmd.h). */
#include "cmd.h"

#include "buf.h"

#include <string.h>
#include <strings.h>

long cmd_arg_copy(const char *buf, const cmd_arg_t *a, char *out, size_t outlen)
{
    size_t n = 0;
    for (size_t i = 0; i < a->len; i++) {
        char ch = buf[a->off + i];
        if (a->type == CMD_ARG_QUOTED && ch == '\\' && i + 1 < a->len)
            ch = buf[a->off + ++i];
        if (n + 1 >= outlen)
            return PT_TOO_BIG;
        out[n++] = ch;
    }
    out[n] = '\0';
    return (long)n;
}

int cmd_arg_is(const char *buf, const cmd_arg_t *a, const char *s)
{
    return a->type == CMD_ARG_ATOM && strlen(s) == a->len && strncasecmp(buf + a->off, s, a->len) == 0;
}

int cmd_is(const char *buf, const cmd_t *c, const char *name)
{
    return strlen(name) == c->name_len && strncasecmp(buf + c->name_off, name, c->name_len) == 0;
}

int cmd_parse_line(const char *buf, size_t len, cmd_t *cmd)
{
    size_t ll, used;
    memset(cmd, 0, sizeof *cmd);
    if (!buf_find_line(buf, len, &ll, &used))
        return PT_AGAIN;
    cmd->consumed = used;
    if (memchr(buf, '\0', ll)) {
        cmd->error = "NUL in command";
        return PT_INVALID;
    }
    const char *sp = memchr(buf, ' ', ll);
    cmd->name_len = sp ? (size_t)(sp - buf) : ll;
    cmd->rest_off = sp ? cmd->name_len + 1 : ll;
    cmd->rest_len = ll - cmd->rest_off;
    return PT_OK;
}

int cmd_line_response(const char *buf, size_t len, cmd_t *cmd, char *out, size_t outlen, size_t *outn)
{
    int rc = cmd_parse_line(buf, len, cmd);
    if (rc != PT_OK)
        return rc;
    size_t ll = cmd->consumed - 1; /* without the LF, and a CR before it */
    if (ll > 0 && buf[ll - 1] == '\r')
        ll--;
    if (ll >= outlen)
        return PT_TOO_BIG;
    *outn = str_copy(out, outlen, buf, ll);
    return PT_OK;
}

size_t cmd_split_word(const char *s, size_t len, const char **after, size_t *after_len)
{
    const char *sp = memchr(s, ' ', len);
    *after = sp ? sp + 1 : NULL;
    *after_len = sp ? len - (size_t)(sp + 1 - s) : 0;
    return sp ? (size_t)(sp - s) : len;
}
