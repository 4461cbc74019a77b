/* imap_parse.c: IMAP command parsing. The parser restarts from the first
 * byte of the command on every call: commands are bounded by the client
 * buffer, so this stays cheap and needs no saved state. */
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
static int bad(const char *buf, size_t len, size_t pos, imap_command_t *cmd, const char *why)
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

int imap_parse_command(const char *buf, size_t len, size_t max_literal, imap_command_t *cmd)
{
    memset(cmd, 0, sizeof *cmd);
    size_t pos = 0;
    int sync_seen = 0;

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

    cmd->name_off = pos;
    while (pos < len && ((buf[pos] >= 'a' && buf[pos] <= 'z') || (buf[pos] >= 'A' && buf[pos] <= 'Z') ||
                         (buf[pos] >= '0' && buf[pos] <= '9')))
        pos++;
    if (pos == len)
        return PT_AGAIN;
    cmd->name_len = pos - cmd->name_off;
    if (cmd->name_len == 0)
        return bad(buf, len, pos, cmd, "Missing command");

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
        int after_paren = cmd->nargs > 0 && cmd->args[cmd->nargs - 1].type == IMAP_ARG_LPAREN;
        if (c == ' ') {
            while (pos < len && buf[pos] == ' ')
                pos++;
            if (pos == len)
                return PT_AGAIN;
            c = (unsigned char)buf[pos];
            if (c == '\r' || c == '\n')
                return bad(buf, len, pos, cmd, "Trailing space");
        } else if (c != ')' && !after_paren) {
            return bad(buf, len, pos, cmd, "Expected a space between arguments");
        }
        if (cmd->nargs == IMAP_MAX_ARGS)
            return bad(buf, len, pos, cmd, "Too many arguments");
        imap_arg_t *a = &cmd->args[cmd->nargs];

        if (c == '(' || c == ')') {
            a->type = c == '(' ? IMAP_ARG_LPAREN : IMAP_ARG_RPAREN;
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
            a->type = IMAP_ARG_QUOTED;
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
            int sync = 1;
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
            a->type = IMAP_ARG_LITERAL;
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
            a->type = IMAP_ARG_ATOM;
            a->off = start;
            a->len = pos - start;
        }
        cmd->nargs++;
    }
}

long imap_arg_copy(const char *buf, const imap_arg_t *a, char *out, size_t outlen)
{
    size_t n = 0;
    for (size_t i = 0; i < a->len; i++) {
        char ch = buf[a->off + i];
        if (a->type == IMAP_ARG_QUOTED && ch == '\\' && i + 1 < a->len)
            ch = buf[a->off + ++i];
        if (n + 1 >= outlen)
            return -1;
        out[n++] = ch;
    }
    out[n] = '\0';
    return (long)n;
}

int imap_arg_is(const char *buf, const imap_arg_t *a, const char *s)
{
    return a->type == IMAP_ARG_ATOM && strlen(s) == a->len && strncasecmp(buf + a->off, s, a->len) == 0;
}
