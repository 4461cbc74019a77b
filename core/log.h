/* log.h: the error log (one file or stderr), nginx-style lines.
 * Passwords never go through here: callers log user names only. */
#ifndef POSTERN_LOG_H
#define POSTERN_LOG_H

enum { LL_ALERT = 0, LL_ERROR, LL_WARN, LL_INFO, LL_DEBUG };

extern int log_level;

int log_level_parse(const char *name);           /* -1 when unknown */
const char *log_level_name(int level);
int log_open(const char *path);                  /* "stderr" or a file; 0 or -errno */
void log_close(void);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_enabled(l) ((l) <= log_level)

#endif
