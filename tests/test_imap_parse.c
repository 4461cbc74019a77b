/* Unit tests of the IMAP command parser: every syntax the pre-auth state
 * accepts, and every way input can be cut or malformed. */
#include "check.h"
#include "imap_parse.h"

#define MAXLIT 1000

static int parse(const char *s, cmd_t *c)
{
    return imap_parse_command(s, strlen(s), MAXLIT, c);
}

static int arg_eq(const char *buf, const cmd_t *c, int i, const char *want)
{
    char out[256];
    long n = cmd_arg_copy(buf, &c->args[i], out, sizeof out);
    return n >= 0 && strcmp(out, want) == 0;
}

int main(void)
{
    cmd_t c;
    const char *s;

    s = "a1 LOGIN alice secret\r\n";
    CHECK_INT(parse(s, &c), PT_OK);
    CHECK_INT(c.tag_len, 2);
    CHECK_INT(c.name_len, 5);
    CHECK_INT(c.nargs, 2);
    CHECK(arg_eq(s, &c, 0, "alice") && arg_eq(s, &c, 1, "secret"));
    CHECK_INT(c.consumed, strlen(s));

    /* tags up to IMAP_MAX_TAG bytes; one more is refused */
    char longtag[IMAP_MAX_TAG + 20];
    memset(longtag, 'T', IMAP_MAX_TAG);
    strcpy(longtag + IMAP_MAX_TAG, " NOOP\r\n");
    CHECK_INT(parse(longtag, &c), PT_OK);
    CHECK_INT(c.tag_len, IMAP_MAX_TAG);
    memset(longtag, 'T', IMAP_MAX_TAG + 1);
    strcpy(longtag + IMAP_MAX_TAG + 1, " NOOP\r\n");
    CHECK(parse(longtag, &c) != PT_OK);

    s = "a2 login \"al ice\" \"p\\\"w\\\\\"\r\n"; /* quoted with \" and \\ */
    CHECK_INT(parse(s, &c), PT_OK);
    CHECK(arg_eq(s, &c, 0, "al ice"));
    CHECK(arg_eq(s, &c, 1, "p\"w\\"));

    s = "a3 LOGIN {5}\r\nalice {6}\r\nsecret\r\n";
    CHECK_INT(parse(s, &c), PT_OK);
    CHECK_INT(c.args[0].type, CMD_ARG_LITERAL);
    CHECK(arg_eq(s, &c, 0, "alice") && arg_eq(s, &c, 1, "secret"));

    /* A synchronizing literal announced, its data not here: ask for it. */
    s = "a4 LOGIN {5}\r\n";
    CHECK_INT(parse(s, &c), PT_AGAIN);
    CHECK_INT(c.sync_literals, 1);
    s = "a4 LOGIN {5}\r\nalice {6}\r\n";
    CHECK_INT(parse(s, &c), PT_AGAIN);
    CHECK_INT(c.sync_literals, 2);
    /* Non-synchronizing literals never ask. */
    s = "a5 LOGIN {5+}\r\nali";
    CHECK_INT(parse(s, &c), PT_AGAIN);
    CHECK_INT(c.sync_literals, 0);
    s = "a5 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n";
    CHECK_INT(parse(s, &c), PT_OK);
    CHECK(arg_eq(s, &c, 1, "secret"));

    /* Literal bytes are data: CRLF inside a literal is not a line end. */
    s = "a6 LOGIN {7}\r\nal\r\nice pw\r\n";
    CHECK_INT(parse(s, &c), PT_OK);
    CHECK(arg_eq(s, &c, 0, "al\r\nice"));

    /* Pipelined: only the first command is consumed. */
    s = "a7 NOOP\r\na8 NOOP\r\n";
    CHECK_INT(parse(s, &c), PT_OK);
    CHECK_INT(c.consumed, 9);

    /* Cut anywhere: never OK before the end, never a crash. */
    s = "a9 LOGIN \"x y\" {3}\r\nabc\r\n";
    for (size_t i = 0; i < strlen(s); i++)
        CHECK_INT(imap_parse_command(s, i, MAXLIT, &c), PT_AGAIN);
    CHECK_INT(parse(s, &c), PT_OK);

    /* Bare LF ends a line. */
    CHECK_INT(parse("b1 NOOP\n", &c), PT_OK);

    /* ID with a parenthesized list. */
    s = "b2 ID (\"name\" \"Thunderbird\" \"version\" NIL)\r\n";
    CHECK_INT(parse(s, &c), PT_OK);
    CHECK_INT(c.nargs, 6);
    CHECK_INT(c.args[0].type, CMD_ARG_LPAREN);
    CHECK_INT(c.args[5].type, CMD_ARG_RPAREN);
    CHECK(arg_eq(s, &c, 2, "Thunderbird"));

    /* Bad input. */
    CHECK_INT(parse("\r\n", &c), PT_INVALID);
    CHECK_INT(c.consumed, 2);
    CHECK_INT(parse("a*b NOOP\r\n", &c), PT_INVALID);
    CHECK_INT(parse("c1\r\n", &c), PT_INVALID);
    CHECK_INT(parse("c2 LOGIN \"unterminated\r\n", &c), PT_INVALID);
    CHECK_INT(parse("c3 LOGIN \"bad\\escape\" x\r\n", &c), PT_INVALID);
    CHECK_INT(parse("c4 LOGIN {x}\r\n", &c), PT_INVALID);
    CHECK_INT(parse("c5 LOGIN {3}x\r\n", &c), PT_INVALID);
    CHECK_INT(parse("c6 LOGIN {3}\r\nabcX\r\n", &c), PT_INVALID); /* junk after literal */
    CHECK_INT(parse("c7 LOGIN a \r\n", &c), PT_INVALID);
    CHECK_INT(parse("c8 NOOP\rX\r\n", &c), PT_INVALID);
    /* A bad line is skipped up to its LF; until the LF arrives we wait. */
    CHECK_INT(parse("c9 LOGIN \"x\n", &c), PT_INVALID);
    CHECK_INT(c.consumed, 12);
    CHECK_INT(parse("d1 LOGIN \"", &c), PT_AGAIN);
    CHECK_INT(parse("d*", &c), PT_INVALID);
    CHECK_INT(c.consumed, 0);
    /* A bad line ending in a non-synchronizing literal cannot be resynced. */
    CHECK_INT(parse("d2 LOGIN \"a\\x\" {5+}\r\n", &c), PT_INVALID);
    CHECK_INT(c.close_after, 1);

    /* Limits: literal size, tag length, argument count, number overflow. */
    CHECK_INT(parse("e1 LOGIN {1001}\r\n", &c), PT_TOO_BIG);
    CHECK_INT(parse("e2 LOGIN {99999999999999999999999999}\r\n", &c), PT_TOO_BIG);
    char toolong[IMAP_MAX_TAG + 40];
    memset(toolong, 'a', IMAP_MAX_TAG + 30);
    strcpy(toolong + IMAP_MAX_TAG + 30, " NOOP\r\n");
    CHECK_INT(parse(toolong, &c), PT_INVALID);
    char many[1024] = "e3 X";
    for (int i = 0; i < CMD_MAX_ARGS + 1; i++)
        strcat(many, " a");
    strcat(many, "\r\n");
    CHECK_INT(parse(many, &c), PT_INVALID);

    CHECK_DONE();
}
