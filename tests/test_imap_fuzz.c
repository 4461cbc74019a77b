/* A deterministic random test of the IMAP parser: many inputs built from
 * IMAP's own tokens, cut at random points. It checks the invariants every
 * caller relies on (nothing read past the end, consumed within bounds,
 * arguments inside the buffer); under ASan it also proves no overread.
 * Build with -DPOSTERN_LIBFUZZER and clang -fsanitize=fuzzer for a
 * coverage-guided run of the same check. */
#include "check.h"
#include "imap_parse.h"

#include <stdint.h>
#include <stdlib.h>

static void check_one(const char *data, size_t len)
{
    /* a private heap copy so ASan sees any read past the end */
    char *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    cmd_t c;
    int rc = imap_parse_command(buf, len, 4096, &c);
    CHECK(rc == PT_OK || rc == PT_AGAIN || rc == PT_INVALID || rc == PT_TOO_BIG);
    if (rc == PT_OK) {
        CHECK(c.consumed > 0 && c.consumed <= len);
        CHECK(c.nargs >= 0 && c.nargs <= CMD_MAX_ARGS);
        for (int i = 0; i < c.nargs; i++)
            CHECK(c.args[i].off + c.args[i].len <= c.consumed);
        CHECK(c.tag_len > 0 && c.tag_len <= IMAP_MAX_TAG);
    }
    if (rc == PT_INVALID)
        CHECK(c.consumed <= len);
    free(buf);
}

#ifdef POSTERN_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_one((const char *)data, size);
    return 0;
}
#else
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static unsigned next(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

int main(void)
{
    static const char *const tokens[] = {
        "a1", " ", "LOGIN", "AUTHENTICATE", "ID", "\"", "\\", "\\\"", "{", "}", "+", "5", "0",
        "99999999999999999999", "\r\n", "\n", "\r", "(", ")", "NIL", "alice", "x y", "\0", "*", "%", "]",
        "\xff", "{3}\r\nabc", "{2+}\r\nab", "\"q\\\\\"",
    };
    const int ntok = sizeof tokens / sizeof *tokens;
    char buf[512];
    int checks_before = check_count;
    for (int iter = 0; iter < 200000; iter++) {
        size_t len = 0;
        int parts = 1 + (int)next(24);
        for (int p = 0; p < parts; p++) {
            const char *t = tokens[next(ntok)];
            size_t tl = t[0] ? strlen(t) : 1;
            if (len + tl >= sizeof buf)
                break;
            memcpy(buf + len, t, tl);
            len += tl;
        }
        check_one(buf, next((unsigned)len + 1)); /* a random cut */
        check_one(buf, len);
    }
    printf("%d parser invariants checked\n", check_count - checks_before);
    CHECK_DONE();
}
#endif
