/* Unit tests of the PROXY protocol parser and formatter: every header a
 * balancer sends, cut at every length, and what must be refused. */
#include "check.h"
#include "proxy_proto.h"
#include "status.h"

static const char V2SIG[] = "\r\n\r\n\0\r\nQUIT\n";

int main(void)
{
    proxy_addr_t a;
    const char *err = NULL;

    const char *v1 = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 143\r\na1 LOGIN";
    int hl = (int)(strstr(v1, "\r\n") - v1) + 2;
    CHECK_INT(proxy_parse(v1, strlen(v1), &a, &err), hl);
    CHECK(a.known && a.version == 1);
    CHECK(strcmp(a.src_ip, "192.0.2.7") == 0 && strcmp(a.dst_ip, "198.51.100.1") == 0);
    CHECK_INT(a.src_port, 56324);
    CHECK_INT(a.dst_port, 143);
    for (int n = 0; n < hl; n++) /* a header cut anywhere just needs more bytes */
        CHECK_INT(proxy_parse(v1, (size_t)n, &a, &err), PT_AGAIN);

    const char *v6 = "PROXY TCP6 2001:db8::1 2001:db8::2 1000 993\r\n";
    CHECK_INT(proxy_parse(v6, strlen(v6), &a, &err), (int)strlen(v6));
    CHECK(a.known && strcmp(a.src_ip, "2001:db8::1") == 0 && a.dst_port == 993);

    const char *unk = "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
    CHECK_INT(proxy_parse(unk, strlen(unk), &a, &err), (int)strlen(unk));
    CHECK(!a.known);
    CHECK_INT(proxy_parse("PROXY UNKNOWN\r\n", 15, &a, &err), 15);

    const char *bad[] = {
        "a1 LOGIN user pass\r\n",                          /* no header at all */
        "PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",      /* a field missing */
        "PROXY TCP5 192.0.2.7 198.51.100.1 1 2\r\n",        /* unknown protocol */
        "PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",      /* address of the other family */
        "PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",    /* port out of range */
        "PROXY TCP4 192.0.2.7 198.51.100.1 -1 2\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",      /* a field too many */
        "PROXY TCP4 192.0.2.7\n",                           /* control character before CRLF */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err = NULL;
        CHECK_INT(proxy_parse(bad[i], strlen(bad[i]), &a, &err), PT_INVALID);
        CHECK(err != NULL);
    }
    char longline[200];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "PROXY TCP4 ", 11);
    CHECK_INT(proxy_parse(longline, sizeof longline, &a, &err), PT_INVALID); /* no CRLF within 107 bytes */

    /* v2, formatted by us and parsed back, cut at every length */
    char out[PROXY_HEADER_OUT_MAX];
    size_t n = proxy_format(2, "192.0.2.7", 56324, "198.51.100.1", 143, out);
    CHECK_INT(n, 28);
    CHECK(memcmp(out, V2SIG, 12) == 0);
    CHECK_INT((unsigned char)out[12], 0x21);
    CHECK_INT((unsigned char)out[13], 0x11);
    for (size_t k = 0; k < n; k++)
        CHECK_INT(proxy_parse(out, k, &a, &err), PT_AGAIN);
    CHECK_INT(proxy_parse(out, n, &a, &err), 28);
    CHECK(a.known && a.version == 2 && strcmp(a.src_ip, "192.0.2.7") == 0 && a.src_port == 56324);
    CHECK(strcmp(a.dst_ip, "198.51.100.1") == 0 && a.dst_port == 143);

    n = proxy_format(2, "2001:db8::1", 1, "2001:db8::2", 65535, out);
    CHECK_INT(n, 52);
    CHECK_INT(proxy_parse(out, n, &a, &err), 52);
    CHECK(a.known && strcmp(a.src_ip, "2001:db8::1") == 0 && a.dst_port == 65535);

    n = proxy_format(2, "192.0.2.7", 1, "2001:db8::2", 2, out); /* mixed families: LOCAL */
    CHECK_INT(n, 16);
    CHECK_INT((unsigned char)out[12], 0x20);
    CHECK_INT(proxy_parse(out, n, &a, &err), 16);
    CHECK(!a.known);

    /* v2 with TLVs after the addresses: skipped whole */
    char tlv[PROXY_HEADER_OUT_MAX];
    proxy_format(2, "192.0.2.7", 1, "198.51.100.1", 2, tlv);
    tlv[15] = 12 + 7;
    memcpy(tlv + 28, "\x04\x00\x04" "abcd", 7);
    CHECK_INT(proxy_parse(tlv, 28 + 7, &a, &err), 28 + 7);
    CHECK(a.known && strcmp(a.src_ip, "192.0.2.7") == 0);

    /* v2 refusals: version 1 in the v2 form, unknown command, short address block, too long */
    char v2[PROXY_HEADER_OUT_MAX];
    proxy_format(2, "192.0.2.7", 1, "198.51.100.1", 2, v2);
    v2[12] = 0x11;
    CHECK_INT(proxy_parse(v2, 28, &a, &err), PT_INVALID);
    v2[12] = 0x22;
    CHECK_INT(proxy_parse(v2, 28, &a, &err), PT_INVALID);
    v2[12] = 0x21;
    v2[15] = 8;
    CHECK_INT(proxy_parse(v2, 24, &a, &err), PT_INVALID);
    v2[14] = 0x20; /* 8 KiB */
    CHECK_INT(proxy_parse(v2, 28, &a, &err), PT_INVALID);

    /* v1 formatting */
    n = proxy_format(1, "192.0.2.7", 56324, "198.51.100.1", 143, out);
    CHECK(n == strlen("PROXY TCP4 192.0.2.7 198.51.100.1 56324 143\r\n"));
    CHECK(memcmp(out, "PROXY TCP4 192.0.2.7 198.51.100.1 56324 143\r\n", n) == 0);
    n = proxy_format(1, "::1", 5, "::1", 6, out);
    CHECK(memcmp(out, "PROXY TCP6 ::1 ::1 5 6\r\n", n) == 0);
    n = proxy_format(1, "192.0.2.7", 5, "::1", 6, out);
    CHECK(memcmp(out, "PROXY UNKNOWN\r\n", n) == 0);

    /* random bytes behind both signatures: never a crash, never a length past the input */
    unsigned seed = 12345;
    char fz[600];
    int bad_len = 0;
    for (int round = 0; round < 20000; round++) {
        size_t len = 1 + (seed = seed * 1103515245u + 12345u) % sizeof fz;
        for (size_t i = 0; i < len; i++)
            fz[i] = (char)((seed = seed * 1103515245u + 12345u) >> 16);
        if (round % 2 == 0 && len > 16)
            memcpy(fz, V2SIG, 12);
        else if (len > 6)
            memcpy(fz, "PROXY ", 6);
        int r = proxy_parse(fz, len, &a, &err);
        bad_len += r > (int)len;
    }
    CHECK_INT(bad_len, 0);
    CHECK_DONE();
}
