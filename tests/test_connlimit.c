/* Unit tests of the connection counts shared between processes: limits,
 * release, a dead worker's slot forgotten, and the probe table staying
 * consistent through thousands of inserts and deletions (a reference
 * model checks every count). */
#include "check.h"
#include "connlimit.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define N 3000

static void ip_of(int i, uint8_t ip[16])
{
    char text[32];
    snprintf(text, sizeof text, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    connlimit_ip_key(text, ip);
}

int main(void)
{
    CHECK_INT(connlimit_init(), 0);
    uint8_t a[16], b[16], v6[16];
    CHECK_INT(connlimit_ip_key("192.0.2.1", a), 0);
    CHECK_INT(a[10], 0xff); /* IPv4 as ::ffff:a.b.c.d */
    CHECK_INT(connlimit_ip_key("192.0.2.2", b), 0);
    CHECK_INT(connlimit_ip_key("2001:db8::1", v6), 0);
    CHECK_INT(connlimit_ip_key("not an address", v6), -1);
    connlimit_ip_key("2001:db8::1", v6);

    /* per address and in all, across two slots */
    connlimit_set_slot(0);
    CHECK_INT(connlimit_acquire(a, 0, 2), CONNLIMIT_OK);
    connlimit_set_slot(1);
    CHECK_INT(connlimit_acquire(a, 0, 2), CONNLIMIT_OK);
    CHECK_INT(connlimit_acquire(a, 0, 2), CONNLIMIT_PER_IP); /* counted over both slots */
    CHECK_INT(connlimit_acquire(b, 3, 2), CONNLIMIT_OK);
    CHECK_INT(connlimit_acquire(v6, 3, 2), CONNLIMIT_TOTAL);
    unsigned from_a = 0;
    CHECK_INT(connlimit_count(a, &from_a), 3);
    CHECK_INT(from_a, 2);
    connlimit_release(a); /* slot 1's */
    CHECK_INT(connlimit_count(a, &from_a), 2);
    CHECK_INT(from_a, 1);
    /* slot 0 dies: its connection from a goes */
    connlimit_forget_slot(0);
    CHECK_INT(connlimit_count(a, &from_a), 1);
    CHECK_INT(from_a, 0);
    connlimit_release(b);
    CHECK_INT(connlimit_count(NULL, NULL), 0);

    /* another process counts in the same table */
    pid_t pid = fork();
    if (pid == 0) {
        connlimit_set_slot(5);
        _exit(connlimit_acquire(a, 0, 0) == CONNLIMIT_OK ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_INT(connlimit_count(a, &from_a), 1);
    CHECK_INT(from_a, 1);
    connlimit_forget_slot(5);
    CHECK_INT(connlimit_count(a, &from_a), 0);

    /* many addresses over three slots, released in a shuffled order:
     * every count matches the model at each step (backward-shift
     * deletion keeps each probe run whole) */
    static int model[N][3];
    static int order[N * 3];
    int n = 0;
    srand(7);
    for (int i = 0; i < N; i++)
        for (int s = 0; s < 3; s++)
            if (rand() % 3) {
                connlimit_set_slot(s);
                uint8_t ip[16];
                ip_of(i, ip);
                CHECK_INT(connlimit_acquire(ip, 0, 0), CONNLIMIT_OK);
                model[i][s]++;
                order[n++] = i * 3 + s;
            }
    CHECK_INT(connlimit_count(NULL, NULL), n);
    for (int i = n - 1; i > 0; i--) {
        int j = rand() % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int bad = 0;
    for (int k = 0; k < n; k++) {
        int i = order[k] / 3, s = order[k] % 3;
        uint8_t ip[16];
        ip_of(i, ip);
        connlimit_set_slot(s);
        connlimit_release(ip);
        model[i][s]--;
        if (k % 97 == 0) /* spot checks of every address */
            for (int x = 0; x < N; x++) {
                uint8_t xip[16];
                unsigned got = 0;
                ip_of(x, xip);
                connlimit_count(xip, &got);
                if (got != (unsigned)(model[x][0] + model[x][1] + model[x][2]))
                    bad++;
            }
        if (k == n / 2) { /* and a slot forgotten half way */
            connlimit_forget_slot(2);
            for (int x = 0; x < N; x++)
                model[x][2] = 0;
            int left = 0;
            for (int r = k + 1; r < n; r++)
                if (order[r] % 3 != 2)
                    order[left++ + k + 1] = order[r];
            n = k + 1 + left;
        }
    }
    CHECK_INT(bad, 0);
    CHECK_INT(connlimit_count(NULL, NULL), 0);
    CHECK_DONE();
}
