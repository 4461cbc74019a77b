/* smtp_parse.c: SMTP command parsing (smtp_parse.h). */
#include "smtp_parse.h"

#include <string.h>
#include <strings.h>

int smtp_parse_command(const char *buf, size_t len, size_t max, cmd_t *cmd)
{
    (void)max; /* a line is bounded by the caller's buffer */
    return cmd_parse_line(buf, len, cmd);
}

int smtp_parse_path(const char *arg, size_t len, const char *prefix, size_t *addr_off, size_t *addr_len)
{
    size_t pl = strlen(prefix);
    if (len < pl || strncasecmp(arg, prefix, pl) != 0)
        return PT_INVALID;
    const char *p = arg + pl, *end = arg + len;
    while (p < end && *p == ' ')
        p++;
    if (p >= end || *p != '<')
        return PT_INVALID;
    const char *gt = memchr(p, '>', (size_t)(end - p));
    if (!gt)
        return PT_INVALID;
    *addr_off = (size_t)(p + 1 - arg);
    *addr_len = (size_t)(gt - p - 1);
    return PT_OK;
}

int smtp_parse_size(const char *arg, size_t len, unsigned long long *size)
{
    const char *gt = memchr(arg, '>', len);
    if (!gt)
        return 0;
    for (const char *p = gt + 1; p < arg + len; p++) {
        if (*p != ' ' || arg + len - (p + 1) < 5 || strncasecmp(p + 1, "SIZE=", 5) != 0)
            continue;
        const char *v = p + 6, *e = v;
        unsigned long long n = 0;
        while (e < arg + len && *e >= '0' && *e <= '9' && e - v < 19)
            n = n * 10 + (unsigned long long)(*e++ - '0');
        if (e == v || (e < arg + len && *e != ' '))
            return PT_INVALID;
        *size = n;
        return 1;
    }
    return 0;
}

bool smtp_valid_helo(const char *arg, size_t len)
{
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++) /* a bare CR, a TAB...: no domain has them */
        if ((unsigned char)arg[i] < 0x21 || arg[i] == 0x7f)
            return false;
    return true;
}
