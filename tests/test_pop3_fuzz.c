/* Fuzz test of the POP3 parser and argument splitters (see fuzz.h). */
#include "pop3_parse.h"

#define FUZZ_TOKENS                                                                                          \
    "USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", " ", "  ", "\r\n", "\n", "\r", "\0", "alice",            \
        "0123456789abcdef0123456789abcdef", "PLAIN", "AGFsaWNlAHNlY3JldA==", "=", "*", "\xff", "x y"
#include "fuzz.h"

static void check_one(const char *data, size_t len)
{
    char *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    cmd_t c;
    int rc = pop3_parse_command(buf, len, 4096, &c);
    CHECK_CMD(rc, c, len);
    if (rc == PT_OK) {
        const char *rest = buf + c.rest_off, *digest, *ir;
        size_t nl, ml, irl;
        if (pop3_parse_apop(rest, c.rest_len, &nl, &digest) == PT_OK)
            CHECK(nl < c.rest_len && digest + 32 <= rest + c.rest_len);
        if (pop3_parse_auth(rest, c.rest_len, &ml, &ir, &irl) == PT_OK)
            CHECK(ml <= c.rest_len && (!ir || ir + irl <= rest + c.rest_len));
    }
    free(buf);
}
