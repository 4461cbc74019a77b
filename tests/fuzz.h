/* fuzz.h: one driver for the parser fuzz tests. A test defines
 * check_one(data, len), which runs a parser on a private heap copy and
 * checks the invariants its callers rely on, and FUZZ_TOKENS, the
 * protocol's own tokens. Built plainly it is a deterministic random test
 * (inputs made of those tokens, cut at random points: under ASan it also
 * proves no overread); built with -DPOSTERN_LIBFUZZER and clang's
 * -fsanitize=fuzzer it is a coverage-guided libFuzzer target. */
#ifndef POSTERN_TEST_FUZZ_H
#define POSTERN_TEST_FUZZ_H

#include "check.h"

#include <stdint.h>
#include <stdlib.h>

static void check_one(const char *data, size_t len);

/* The invariants of cmd.h for a parser's result over len bytes. */
#define CHECK_CMD(rc, c, len)                                                                                \
    do {                                                                                                     \
        CHECK((rc) == PT_OK || (rc) == PT_AGAIN || (rc) == PT_INVALID || (rc) == PT_TOO_BIG);              \
        if ((rc) == PT_OK) {                                                                                 \
            CHECK((c).consumed > 0 && (c).consumed <= (len));                                                \
            CHECK((c).nargs >= 0 && (c).nargs <= CMD_MAX_ARGS);                                              \
            for (int i_ = 0; i_ < (c).nargs; i_++)                                                           \
                CHECK((c).args[i_].off + (c).args[i_].len <= (c).consumed);                                  \
            CHECK((c).name_off + (c).name_len <= (c).consumed);                                              \
            CHECK((c).rest_off + (c).rest_len <= (c).consumed);                                              \
        }                                                                                                    \
        if ((rc) == PT_INVALID)                                                                              \
            CHECK((c).consumed <= (len) && (c).error != NULL);                                               \
    } while (0)

#ifdef POSTERN_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_one((const char *)data, size);
    if (check_failures)
        abort();
    return 0;
}
#else
static uint64_t fuzz_rng = 0x9e3779b97f4a7c15ull;
static unsigned fuzz_next(unsigned n)
{
    fuzz_rng ^= fuzz_rng << 13;
    fuzz_rng ^= fuzz_rng >> 7;
    fuzz_rng ^= fuzz_rng << 17;
    return (unsigned)(fuzz_rng % n);
}

int main(void)
{
    static const char *const tokens[] = { FUZZ_TOKENS };
    const int ntok = sizeof tokens / sizeof *tokens;
    char buf[512];
    int checks_before = check_count;
    for (int iter = 0; iter < 200000; iter++) {
        size_t len = 0;
        int parts = 1 + (int)fuzz_next(24);
        for (int p = 0; p < parts; p++) {
            const char *t = tokens[fuzz_next(ntok)];
            size_t tl = t[0] ? strlen(t) : 1;
            if (len + tl >= sizeof buf)
                break;
            memcpy(buf + len, t, tl);
            len += tl;
        }
        check_one(buf, fuzz_next((unsigned)len + 1)); /* a random cut */
        check_one(buf, len);
    }
    printf("%d parser invariants checked\n", check_count - checks_before);
    CHECK_DONE();
}
#endif

#endif
