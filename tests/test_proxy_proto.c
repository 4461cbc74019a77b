/* Unit tests of the PROXY protocol parser and formatter: every header a
 * balancer sends, cut at every length, and what must be refused; and the
 * trusted senders' networks (proxy_protocol_trusted): parsed, matched. */
#include "check.h"
#include "proxy_proto.h"
#include "status.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static const char V2SIG[] = "\r\n\r\n\0\r\nQUIT\n";

/* A peer address as accept() gives it: AF_INET for a dotted quad, AF_INET6
 * otherwise (so "::ffff:10.1.2.3" is an IPv4-mapped IPv6 peer). */
static struct sockaddr_storage peer(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(40000);
    } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(40000);
    }
    return ss;
}

/* peer ip against the networks in texts (all must parse) */
static int trusted(const char *ip, const char *const *texts, int n)
{
    cidr_t list[8];
    for (int i = 0; i < n; i++) {
        const char *err = NULL;
        if (cidr_parse(texts[i], &list[i], &err) != 0) {
            fprintf(stderr, "cidr_parse(\"%s\"): %s\n", texts[i], err);
            return -1;
        }
    }
    struct sockaddr_storage ss = peer(ip);
    return proxy_trusted(list, n, (const struct sockaddr *)&ss);
}

static void test_trusted(void)
{
    cidr_t c;
    const char *err = NULL;
    CHECK_INT(cidr_parse("10.0.0.0/8", &c, &err), 0);
    CHECK(c.family == AF_INET && c.prefix == 8 && c.addr[0] == 10);
    CHECK_INT(cidr_parse("192.0.2.7", &c, &err), 0); /* no prefix: the host */
    CHECK_INT(c.prefix, 32);
    CHECK_INT(cidr_parse("2001:db8::5", &c, &err), 0);
    CHECK(c.family == AF_INET6 && c.prefix == 128);
    CHECK_INT(cidr_parse("2001:db8::/32", &c, &err), 0);
    CHECK_INT(c.prefix, 32);
    CHECK_INT(cidr_parse("0.0.0.0/0", &c, &err), 0);
    CHECK_INT(cidr_parse("::/0", &c, &err), 0);
    CHECK_INT(cidr_parse("::ffff:10.0.0.0/104", &c, &err), 0); /* stored as the IPv4 network */
    CHECK(c.family == AF_INET && c.prefix == 8 && c.addr[0] == 10 && c.addr[1] == 0);
    CHECK_INT(cidr_parse("::ffff:192.0.2.7", &c, &err), 0);
    CHECK(c.family == AF_INET && c.prefix == 32 && c.addr[3] == 7);

    const char *bad[] = {
        "", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/08", "10.0.0.0/8x",
        "10.0.0.0/8/8", "10.0.0/8", "10.0.0.256", "2001:db8::/129", "2001:db8::/1000", "example.com",
        "10.0.0.1/8",      /* bits past the prefix */
        "2001:db8::1/64",
        "fe80::1%eth0",    /* no zones */
        " 10.0.0.1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err = NULL;
        CHECK_INT(cidr_parse(bad[i], &c, &err), -1);
        if (!err)
            fprintf(stderr, "no reason for \"%s\"\n", bad[i]);
        CHECK(err != NULL);
    }

    const char *lb[] = { "127.0.0.1/32", "10.1.0.0/16", "192.0.2.128/25", "2001:db8:1::/48" };
    CHECK_INT(trusted("127.0.0.1", lb, 4), 1);
    CHECK_INT(trusted("127.0.0.3", lb, 4), 0);
    CHECK_INT(trusted("10.1.255.254", lb, 4), 1);
    CHECK_INT(trusted("10.2.0.1", lb, 4), 0);
    CHECK_INT(trusted("192.0.2.128", lb, 4), 1);
    CHECK_INT(trusted("192.0.2.255", lb, 4), 1);
    CHECK_INT(trusted("192.0.2.127", lb, 4), 0);
    CHECK_INT(trusted("2001:db8:1:ffff::9", lb, 4), 1);
    CHECK_INT(trusted("2001:db8:2::9", lb, 4), 0);
    CHECK_INT(trusted("::ffff:127.0.0.1", lb, 4), 1); /* a dual-stack listener's IPv4 peer */
    CHECK_INT(trusted("::ffff:10.1.2.3", lb, 4), 1);
    CHECK_INT(trusted("::ffff:127.0.0.3", lb, 4), 0);
    CHECK_INT(trusted("::1", lb, 4), 0);
    CHECK_INT(trusted("::127.0.0.1", lb, 4), 0); /* IPv4-compatible is not IPv4-mapped */
    CHECK_INT(trusted("127.0.0.1", lb, 0), 0);   /* an empty list trusts nobody */

    const char *mapped[] = { "::ffff:10.0.0.0/104" }; /* the IPv4 network, written as IPv6 */
    CHECK_INT(trusted("10.9.9.9", mapped, 1), 1);
    CHECK_INT(trusted("::ffff:10.9.9.9", mapped, 1), 1);
    CHECK_INT(trusted("11.0.0.1", mapped, 1), 0);

    const char *odd[] = { "192.0.2.0/27", "2001:db8::/33", "0.0.0.0/0" };
    CHECK_INT(trusted("192.0.2.31", odd, 1), 1);
    CHECK_INT(trusted("192.0.2.32", odd, 1), 0);
    CHECK_INT(trusted("2001:db8:7fff::1", odd + 1, 1), 1);
    CHECK_INT(trusted("2001:db8:8000::1", odd + 1, 1), 0);
    CHECK_INT(trusted("203.0.113.1", odd + 2, 1), 1); /* /0: every IPv4 sender */
    CHECK_INT(trusted("::ffff:203.0.113.1", odd + 2, 1), 1);
    CHECK_INT(trusted("2001:db8::1", odd + 2, 1), 0);  /* but no IPv6 one */

    struct sockaddr_storage unix_peer;
    memset(&unix_peer, 0, sizeof unix_peer);
    unix_peer.ss_family = AF_UNIX;
    cidr_t all;
    CHECK_INT(cidr_parse("0.0.0.0/0", &all, &err), 0);
    CHECK(!proxy_trusted(&all, 1, (const struct sockaddr *)&unix_peer));
}

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

    test_trusted();
    CHECK_DONE();
}
