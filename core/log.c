/* log.c: timestamped log lines, "2026/12/01 10:00:00 [info] 123: message",
 * so existing nginx log scrapers (fail2ban) can be adapted easily. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int log_level = LL_INFO;
static FILE *log_file;

static const char *const level_names[] = { "alert", "error", "warn", "info", "debug" };

int log_level_parse(const char *name)
{
    for (int i = LL_ERROR; i <= LL_DEBUG; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

const char *log_level_name(int level)
{
    return level_names[level < 0 ? 0 : level > LL_DEBUG ? LL_DEBUG : level];
}

int log_open(const char *path)
{
    FILE *f = stderr;
    if (path && strcmp(path, "stderr") != 0) {
        f = fopen(path, "a");
        if (!f)
            return -errno;
        setvbuf(f, NULL, _IOLBF, 0);
    }
    log_close();
    log_file = f;
    return 0;
}

void log_close(void)
{
    if (log_file && log_file != stderr)
        fclose(log_file);
    log_file = NULL;
}

void log_msg(int level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char line[4096];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    int n = (int)strftime(line, sizeof line, "%Y/%m/%d %H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - n, " [%s] %d: ", level_names[level], (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n = n + m >= (int)sizeof line - 1 ? (int)sizeof line - 2 : n + m;
    /* One write per line: lines from several workers never interleave. */
    for (int i = 0; i < n; i++)
        if (line[i] == '\n' && i < n - 1 && level != LL_ERROR)
            line[i] = ' ';
    line[n++] = '\n';
    FILE *f = log_file ? log_file : stderr;
    fwrite(line, 1, n, f);
    fflush(f);
}
