/* Fuzz test of the ManageSieve parsers (see fuzz.h). */
#include "sieve_parse.h"

#define FUZZ_TOKENS                                                                                          \
    "AUTHENTICATE", "NOOP", "STARTTLS", " ", "\"", "\\", "\\\"", "{", "}", "+", "5", "0", "\"PLAIN\"",      \
        "99999999999999999999", "\r\n", "\n", "\r", "(", ")", "\0", "*", "\xff", "{3}\r\nabc", "{2+}\r\nab",  \
        "\"AGFsaWNlAHNlY3JldA==\""
#include "fuzz.h"

static void check_one(const char *data, size_t len)
{
    char *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    cmd_t c;
    int rc = sieve_parse_command(buf, len, 4096, &c);
    CHECK_CMD(rc, c, len);
    char out[600];
    size_t n = 0;
    rc = sieve_parse_response(buf, len, &c, out, sizeof out, &n);
    CHECK_CMD(rc, c, len);
    if (rc == PT_OK)
        CHECK(n < sizeof out && out[n] == '\0');
    free(buf);
}
