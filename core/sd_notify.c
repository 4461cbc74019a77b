/* sd_notify.c: the sd_notify(3) protocol without libsystemd. systemd
 * passes a socket address in $NOTIFY_SOCKET (a path, or "@name" for the
 * Linux abstract namespace); the service sends it one AF_UNIX datagram of
 * newline-separated VAR=value assignments per state change. systemd-less
 * runs (no NOTIFY_SOCKET) send nothing. */
#include "sd_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@'))
        return; /* unset, or a kind of address we do not speak (vsock:) */
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t len = strlen(path);
    if (len < 2 || len >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: the length, not a NUL, ends the name */
    int saved = errno, fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        (void)!sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
                      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
        close(fd);
    }
    errno = saved;
}

void sd_notify_ready(void)
{
    char msg[64];
    snprintf(msg, sizeof msg, "READY=1\nMAINPID=%ld", (long)getpid());
    notify(msg);
}

/* systemd >= 253 (Type=notify-reload) wants the CLOCK_MONOTONIC time of the
 * reload's start with RELOADING=1; older versions ignore the variable. */
void sd_notify_reloading(void)
{
    struct timespec ts;
    char msg[64];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    notify(msg);
}

void sd_notify_stopping(void)
{
    notify("STOPPING=1");
}

void sd_notify_status(const char *text)
{
    char msg[512];
    snprintf(msg, sizeof msg, "STATUS=%s", text ? text : "");
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' '; /* a newline would start another assignment */
    notify(msg);
}
