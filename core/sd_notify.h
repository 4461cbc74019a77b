/* sd_notify.h: tell systemd (Type=notify units) where postern stands,
 * with the sd_notify(3) datagram protocol and no libsystemd. Each call is
 * a no-op when NOTIFY_SOCKET is unset (not started by systemd), and errors
 * are ignored: the notification is advisory. Call from the event loop (the
 * master), not from a signal handler. */
#ifndef POSTERN_SD_NOTIFY_H
#define POSTERN_SD_NOTIFY_H

void sd_notify_ready(void);               /* READY=1, MAINPID=<getpid()>: listening */
void sd_notify_reloading(void);           /* RELOADING=1, MONOTONIC_USEC=<now>: on SIGHUP,
                                             before reading the configuration; send
                                             sd_notify_ready() when done, even if refused */
void sd_notify_stopping(void);            /* STOPPING=1: shutdown has begun */
void sd_notify_status(const char *text);  /* STATUS=<text> (one line; newlines become spaces) */

#endif
