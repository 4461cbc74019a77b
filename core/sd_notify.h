/* TEMP stub until the sdnotify branch merges */
#ifndef POSTERN_SD_NOTIFY_H
#define POSTERN_SD_NOTIFY_H
void sd_notify_ready(void);
void sd_notify_reloading(void);
void sd_notify_stopping(void);
void sd_notify_status(const char *text);
#endif
