/* Unit tests of the line protocols' parsers (POP3, SMTP) and of
 * ManageSieve's, with the slices they return. */
#include "check.h"
#include "pop3_parse.h"
#include "sieve_parse.h"
#include "smtp_parse.h"

#define S(lit) lit, sizeof(lit) - 1

static int slice_is(const char *buf, size_t off, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(buf + off, want, len) == 0;
}

static void line_commands(void)
{
    cmd_t c;
    const char *b = "USER alice smith\r\nNOOP\r\n";
    CHECK_INT(pop3_parse_command(b, strlen(b), 100, &c), PT_OK);
    CHECK_INT(c.consumed, 18);
    CHECK(slice_is(b, c.name_off, c.name_len, "USER"));
    CHECK(slice_is(b, c.rest_off, c.rest_len, "alice smith")); /* the whole rest: USER names may hold spaces */

    CHECK_INT(pop3_parse_command(S("NOOP\n"), 100, &c), PT_OK); /* a bare LF ends a line too */
    CHECK(slice_is("NOOP\n", c.name_off, c.name_len, "NOOP"));
    CHECK_INT(c.rest_len, 0);
    CHECK_INT(pop3_parse_command(S("PASS sec"), 100, &c), PT_AGAIN);
    CHECK_INT(pop3_parse_command(S("PASS s\0c\r\n"), 100, &c), PT_INVALID);
    CHECK_INT(c.consumed, 10); /* the bad line is dropped whole */
    CHECK(strcmp(c.error, "NUL in command") == 0);
    CHECK_INT(smtp_parse_command(S("MAIL FROM:<a@b>\r\n"), 100, &c), PT_OK);
    CHECK(slice_is("MAIL FROM:<a@b>\r\n", c.rest_off, c.rest_len, "FROM:<a@b>"));
    CHECK_INT(smtp_parse_command(S("\r\n"), 100, &c), PT_OK);
    CHECK_INT(c.name_len, 0);
}

static void pop3_arguments(void)
{
    size_t nl, ml, irl;
    const char *digest, *ir;
    const char *a = "alice smith 0123456789ABCDEF0123456789abcdef";
    CHECK_INT(pop3_parse_apop(a, strlen(a), &nl, &digest), PT_OK);
    CHECK_INT(nl, 11); /* the name is everything before the last space */
    CHECK(digest == a + 12);
    CHECK_INT(pop3_parse_apop(S("alice 0123"), &nl, &digest), PT_INVALID);
    CHECK_INT(pop3_parse_apop(S("alice 0123456789abcdef0123456789abcdeg"), &nl, &digest), PT_INVALID);
    CHECK_INT(pop3_parse_apop(S(" 0123456789abcdef0123456789abcdef"), &nl, &digest), PT_INVALID); /* no name */
    CHECK_INT(pop3_parse_auth(S("PLAIN AGFsaWNl"), &ml, &ir, &irl), PT_OK);
    CHECK_INT(ml, 5);
    CHECK(ir && irl == 8);
    CHECK_INT(pop3_parse_auth(S("LOGIN"), &ml, &ir, &irl), PT_OK);
    CHECK(ir == NULL);
    CHECK_INT(pop3_parse_auth(S("PLAIN a b"), &ml, &ir, &irl), PT_INVALID);
}

static void smtp_arguments(void)
{
    size_t off, n;
    unsigned long long size = 0;
    const char *f = "FROM: <alice@example.com> SIZE=1000";
    CHECK_INT(smtp_parse_path(f, strlen(f), "FROM:", &off, &n), PT_OK);
    CHECK(slice_is(f, off, n, "alice@example.com"));
    CHECK_INT(smtp_parse_path(S("from:<>"), "FROM:", &off, &n), PT_OK); /* the null sender */
    CHECK_INT(n, 0);
    CHECK_INT(smtp_parse_path(S("TO:alice@example.com"), "TO:", &off, &n), PT_INVALID);
    CHECK_INT(smtp_parse_path(S("TO:<alice"), "TO:", &off, &n), PT_INVALID);
    CHECK_INT(smtp_parse_path(S("FROM:<a@b>"), "TO:", &off, &n), PT_INVALID);
    CHECK_INT(smtp_parse_size(f, strlen(f), &size), 1);
    CHECK_INT(size, 1000);
    CHECK_INT(smtp_parse_size(S("FROM:<a@b> BODY=8BITMIME"), &size), 0);
    CHECK_INT(smtp_parse_size(S("FROM:<a@b> SIZE=12x"), &size), PT_INVALID);
    CHECK_INT(smtp_parse_size(S("FROM:<a@b> SIZE="), &size), PT_INVALID);
    CHECK(smtp_valid_helo(S("mail.example.com")));
    CHECK(!smtp_valid_helo(S("")));
    CHECK(!smtp_valid_helo(S("a b")));
    CHECK(!smtp_valid_helo(S("a\rb"))); /* replayed upstream: nothing that could end a line */
}

static void sieve_commands(void)
{
    cmd_t c;
    char out[100];
    size_t n;
    const char *b = "AUTHENTICATE \"PLAIN\" {4+}\r\nAGFs\r\n";
    CHECK_INT(sieve_parse_command(b, strlen(b), 100, &c), PT_OK);
    CHECK(slice_is(b, c.name_off, c.name_len, "AUTHENTICATE"));
    CHECK_INT(c.nargs, 2);
    CHECK_INT(c.args[0].type, CMD_ARG_QUOTED);
    CHECK(slice_is(b, c.args[1].off, c.args[1].len, "AGFs"));
    /* {n} is read like {n+}: no continuation is waited for */
    b = "AUTHENTICATE \"PLAIN\" {4}\r\nAG";
    CHECK_INT(sieve_parse_command(b, strlen(b), 100, &c), PT_AGAIN);
    CHECK_INT(c.sync_literals, 0);
    CHECK_INT(sieve_parse_command(S("NOOP\r\n"), 100, &c), PT_OK);
    CHECK_INT(c.nargs, 0);
    CHECK_INT(sieve_parse_command(S("NOOP \"a\\\"b\"\r\n"), 100, &c), PT_OK);
    CHECK_INT(cmd_arg_copy("NOOP \"a\\\"b\"\r\n", &c.args[0], out, sizeof out), 3);
    CHECK(strcmp(out, "a\"b") == 0);
    CHECK_INT(sieve_parse_command(S("NOOP \"a\rb\"\r\n"), 100, &c), PT_INVALID);

    CHECK_INT(sieve_parse_response(S("\"AGFsaWNl\"\r\n"), &c, out, sizeof out, &n), PT_OK);
    CHECK(n == 8 && strcmp(out, "AGFsaWNl") == 0);
    CHECK_INT(sieve_parse_response(S("{3+}\r\nabc\r\n"), &c, out, sizeof out, &n), PT_OK);
    CHECK(n == 3 && strcmp(out, "abc") == 0);
    CHECK_INT(sieve_parse_response(S("\"*\"\r\n"), &c, out, sizeof out, &n), PT_OK);
    CHECK(strcmp(out, "*") == 0);
    CHECK_INT(sieve_parse_response(S("AGFsaWNl\r\n"), &c, out, sizeof out, &n), PT_INVALID); /* not a string */
    CHECK_INT(sieve_parse_response(S("\"a\" \"b\"\r\n"), &c, out, sizeof out, &n), PT_INVALID);
    CHECK_INT(sieve_parse_response(S("\"AGF"), &c, out, sizeof out, &n), PT_AGAIN);
}

int main(void)
{
    line_commands();
    pop3_arguments();
    smtp_arguments();
    sieve_commands();
    CHECK_DONE();
}
