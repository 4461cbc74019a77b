/* imap_parse.c: IMAP command parsing (RFC 9051 / 3501: the grammar a
 * proxy needs before login), a pure function over a buffer (cmd.h). */
#include "imap_parse.h"

#include <string.h>
#include <strings.h>

static int is_tag_char(unsigned char c)
{
    /* ASTRING-CHAR except "+": no CTL, SP, ( ) { % * " \ (RFC 9051 §9). */
    if (c <= 0x20 || c >= 0x7f)
        return 0;
    return !strchr("(){%*\"\\+", c);
}

static int is_atom_end(unsigned char c)
{
    return c == ' ' || c == '\r' || c == '\n' || c == '(' || c == ')';
}

/* Bad line: report how far to skip (through the LF), 0 when not seen yet. */
static int bad(const char *buf, size_t len, size_t pos, cmd_t *cmd, const char *why)
{
    cmd->error = why;
    const char *lf = pos < len ? memchr(buf + pos, '\n', len - pos) : NULL;
    if (!lf) {
        cmd->consumed = 0;
        return PT_INVALID;
    }
    cmd->consumed = (size_t)(lf - buf) + 1;
    /* A line ending in "{n+}" is followed by literal bytes we cannot tell
     * from commands any more. */
    size_t e = (size_t)(lf - buf);
    if (e > 0 && buf[e - 1] == '\r')
        e--;
    if (e >= 3 && buf[e - 1] == '}' && buf[e - 2] == '+')
        cmd->close_after = 1;
    return PT_INVALID;
}

/* The command's name: letters and digits. pos is advanced past it. */
static int parse_name(const char *buf, size_t len, size_t *pos, cmd_t *cmd)
{
    size_t p = *pos;
    cmd->name_off = p;
    while (p < len && ((buf[p] >= 'a' && buf[p] <= 'z') || (buf[p] >= 'A' && buf[p] <= 'Z') ||
                       (buf[p] >= '0' && buf[p] <= '9')))
        p++;
    *pos = p;
    if (p == len)
        return PT_AGAIN;
    cmd->name_len = p - cmd->name_off;
    if (cmd->name_len == 0)
        return bad(buf, len, p, cmd, "Missing command");
    return PT_OK;
}

int imap_parse_command(const char *buf, size_t len, size_t max_literal, cmd_t *cmd)
{
    memset(cmd, 0, sizeof *cmd);
    size_t pos = 0;

    while (pos < len && is_tag_char((unsigned char)buf[pos]))
        pos++;
    if (pos == len)
        return PT_AGAIN;
    /* Without a valid tag the reply must be untagged: tag_len stays 0. */
    if (pos == 0 || buf[pos] != ' ')
        return bad(buf, len, pos, cmd, pos == 0 ? "Missing tag" : "Invalid tag");
    if (pos > IMAP_MAX_TAG)
        return bad(buf, len, pos, cmd, "Tag too long");
    cmd->tag_len = pos;
    pos++;
    int rc = parse_name(buf, len, &pos, cmd);
    if (rc != PT_OK)
        return rc;
    return imap_parse_args(buf, len, pos, max_literal, 0, cmd);
}

int imap_parse_unnamed(const char *buf, size_t len, size_t max_literal, int flags, cmd_t *cmd)
{
    memset(cmd, 0, sizeof *cmd);
    size_t pos = 0;
    int rc = parse_name(buf, len, &pos, cmd);
    if (rc != PT_OK)
        return rc;
    return imap_parse_args(buf, len, pos, max_literal, flags, cmd);
}

int imap_parse_args(const char *buf, size_t len, size_t pos, size_t max_literal, int flags, cmd_t *cmd)
{
    int sync_seen = 0;
    const size_t start = pos;
    for (;;) {
        if (pos == len)
            return PT_AGAIN;
        unsigned char c = (unsigned char)buf[pos];
        if (c == '\n' || (c == '\r' && pos + 1 < len && buf[pos + 1] == '\n')) {
            cmd->consumed = pos + (c == '\r' ? 2 : 1);
            return PT_OK;
        }
        if (c == '\r')
            return pos + 1 == len ? PT_AGAIN : bad(buf, len, pos, cmd, "Bare CR");

        /* Arguments are separated by spaces; lists need none inside. */
        int after_paren = cmd->nargs > 0 && cmd->args[cmd->nargs - 1].type == CMD_ARG_LPAREN;
        if (c == ' ') {
            while (pos < len && buf[pos] == ' ')
                pos++;
            if (pos == len)
                return PT_AGAIN;
            c = (unsigned char)buf[pos];
            if (c == '\r' || c == '\n')
                return bad(buf, len, pos, cmd, "Trailing space");
        } else if (c != ')' && !after_paren && !(pos == start && (flags & IMAP_ARGS_FIRST))) {
            return bad(buf, len, pos, cmd, "Expected a space between arguments");
        }
        if (cmd->nargs == CMD_MAX_ARGS)
            return bad(buf, len, pos, cmd, "Too many arguments");
        cmd_arg_t *a = &cmd->args[cmd->nargs];

        if (c == '(' || c == ')') {
            a->type = c == '(' ? CMD_ARG_LPAREN : CMD_ARG_RPAREN;
            a->off = pos++;
            a->len = 1;
        } else if (c == '"') {
            size_t start = ++pos;
            for (;;) {
                if (pos == len)
                    return PT_AGAIN;
                char q = buf[pos];
                if (q == '\r' || q == '\n' || q == '\0')
                    return bad(buf, len, pos, cmd, "Line break in quoted string");
                if (q == '"')
                    break;
                if (q == '\\') {
                    if (pos + 1 == len)
                        return PT_AGAIN;
                    if (buf[pos + 1] != '"' && buf[pos + 1] != '\\')
                        return bad(buf, len, pos, cmd, "Invalid escape in quoted string");
                    pos++;
                }
                pos++;
            }
            a->type = CMD_ARG_QUOTED;
            a->off = start;
            a->len = pos - start;
            pos++;
        } else if (c == '{') {
            size_t n = 0, digits = 0;
            pos++;
            while (pos < len && buf[pos] >= '0' && buf[pos] <= '9') {
                if (n > (max_literal + 1) * 10 + 9) { /* overflow guard: already far too big */
                    cmd->error = "Literal too large";
                    return PT_TOO_BIG;
                }
                n = n * 10 + (size_t)(buf[pos] - '0');
                pos++;
                digits++;
            }
            if (pos == len)
                return PT_AGAIN;
            int sync = !(flags & IMAP_ARGS_NOSYNC);
            if (buf[pos] == '+') {
                sync = 0;
                pos++;
                if (pos == len)
                    return PT_AGAIN;
            }
            if (digits == 0 || buf[pos] != '}')
                return bad(buf, len, pos, cmd, "Invalid literal");
            pos++;
            if (pos == len || (buf[pos] == '\r' && pos + 1 == len))
                return PT_AGAIN;
            if (buf[pos] == '\r')
                pos++;
            if (buf[pos] != '\n')
                return bad(buf, len, pos, cmd, "Literal must end the line");
            pos++;
            sync_seen += sync;
            if (n > max_literal) {
                cmd->error = "Literal too large";
                return PT_TOO_BIG;
            }
            if (len - pos < n) {
                cmd->sync_literals = sync ? sync_seen : 0;
                return PT_AGAIN;
            }
            a->type = CMD_ARG_LITERAL;
            a->off = pos;
            a->len = n;
            pos += n;
            /* {0}: no data to wait for, but the client still waits for
             * our "+" before it sends the rest of the line. */
            if (sync && n == 0 && pos == len) {
                cmd->sync_literals = sync_seen;
                return PT_AGAIN;
            }
            if (pos < len && !is_atom_end((unsigned char)buf[pos]))
                return bad(buf, len, pos, cmd, "Junk after literal");
        } else {
            size_t start = pos;
            while (pos < len && !is_atom_end((unsigned char)buf[pos])) {
                unsigned char ac = (unsigned char)buf[pos];
                if (ac < 0x20 || ac == 0x7f || ac == '{' || ac == '"')
                    return bad(buf, len, pos, cmd, "Invalid character in atom");
                pos++;
            }
            if (pos == len)
                return PT_AGAIN;
            a->type = CMD_ARG_ATOM;
            a->off = start;
            a->len = pos - start;
        }
        cmd->nargs++;
    }
}
