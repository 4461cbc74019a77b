/* Fuzz test of the IMAP parser (see fuzz.h): inputs built from IMAP's own
 * tokens, cut at random points; the invariants every caller relies on
 * (nothing read past the end, consumed within bounds, arguments inside
 * the buffer, a tag when the command parsed). */
#include "imap_parse.h"

#define FUZZ_TOKENS                                                                                          \
    "a1", " ", "LOGIN", "AUTHENTICATE", "ID", "\"", "\\", "\\\"", "{", "}", "+", "5", "0",                   \
        "99999999999999999999", "\r\n", "\n", "\r", "(", ")", "NIL", "alice", "x y", "\0", "*", "%", "]",     \
        "\xff", "{3}\r\nabc", "{2+}\r\nab", "\"q\\\\\""
#include "fuzz.h"

static void check_one(const char *data, size_t len)
{
    /* a private heap copy so ASan sees any read past the end */
    char *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    cmd_t c;
    int rc = imap_parse_command(buf, len, 4096, &c);
    CHECK_CMD(rc, c, len);
    if (rc == PT_OK)
        CHECK(c.tag_len > 0 && c.tag_len <= IMAP_MAX_TAG);
    free(buf);
}
