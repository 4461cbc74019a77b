/* Fuzz test of the SMTP parser and argument parsers (see fuzz.h). */
#include "smtp_parse.h"

#define FUZZ_TOKENS                                                                                          \
    "EHLO", "MAIL", "RCPT", "AUTH", "FROM:", "TO:", "<", ">", "a@b", " ", "SIZE=", "10", "x",                \
        "99999999999999999999", "\r\n", "\n", "\r", "\0", "\t", "\xff", "BODY=8BITMIME"
#include "fuzz.h"

static void check_one(const char *data, size_t len)
{
    char *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    cmd_t c;
    int rc = smtp_parse_command(buf, len, 4096, &c);
    CHECK_CMD(rc, c, len);
    if (rc == PT_OK) {
        const char *arg = buf + c.rest_off;
        size_t off, n;
        unsigned long long size;
        if (smtp_parse_path(arg, c.rest_len, "FROM:", &off, &n) == PT_OK)
            CHECK(off + n <= c.rest_len);
        if (smtp_parse_path(arg, c.rest_len, "TO:", &off, &n) == PT_OK)
            CHECK(off + n <= c.rest_len);
        int s = smtp_parse_size(arg, c.rest_len, &size);
        CHECK(s == 0 || s == 1 || s == PT_INVALID);
        smtp_valid_helo(arg, c.rest_len);
    }
    free(buf);
}
