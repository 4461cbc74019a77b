/* connlimit.c: connection counts shared by the master and its workers.
 *
 * One anonymous MAP_SHARED mapping, made before the first fork, holds a
 * robust process-shared mutex, the number of connections each worker
 * slot holds, and a linear-probing table of (client address, slot) ->
 * count. Every count is recorded against the slot of the worker holding
 * it, so that when a worker dies (its sessions with it) the master drops
 * exactly what it held. The mutex is held for a few hundred nanoseconds
 * per accepted and per closed connection; a worker killed while holding
 * it leaves it to the next taker (EOWNERDEAD), not locked for ever. */
#include "connlimit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>

#define IP_TABLE 65536 /* entries; a power of two */

typedef struct ip_entry {
    uint8_t ip[16];
    uint16_t slot;
    uint16_t used;
    uint32_t count;
} ip_entry_t;

typedef struct shared {
    pthread_mutex_t lock;
    uint32_t slot_total[CONNLIMIT_SLOTS];
    uint32_t nentries;
    ip_entry_t table[IP_TABLE];
} shared_t;

static shared_t *sh;
static int my_slot;

int connlimit_init(void)
{
    if (sh)
        return 0;
    void *p = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    sh = p; /* zero-filled: untouched pages cost nothing */
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&sh->lock, &a);
    pthread_mutexattr_destroy(&a);
    return 0;
}

void connlimit_set_slot(int slot)
{
    my_slot = slot;
}

static void lock(void)
{
    if (pthread_mutex_lock(&sh->lock) == EOWNERDEAD)
        pthread_mutex_consistent(&sh->lock); /* a worker died inside: its slot is forgotten anyway */
}

static void unlock(void)
{
    pthread_mutex_unlock(&sh->lock);
}

static uint32_t hash_ip(const uint8_t ip[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ ip[i]) * 16777619u;
    return h & (IP_TABLE - 1);
}

/* Walks ip's probe run: the sum over every slot, and this slot's entry
 * (or the empty place where it would go). */
static uint32_t probe(const uint8_t ip[16], int slot, ip_entry_t **mine, ip_entry_t **empty)
{
    uint32_t sum = 0;
    *mine = *empty = NULL;
    for (uint32_t i = hash_ip(ip), n = 0; n < IP_TABLE; i = (i + 1) & (IP_TABLE - 1), n++) {
        ip_entry_t *e = &sh->table[i];
        if (!e->used) {
            *empty = e;
            break;
        }
        if (memcmp(e->ip, ip, 16) == 0) {
            sum += e->count;
            if (e->slot == slot)
                *mine = e;
        }
    }
    return sum;
}

/* Backward-shift deletion: the probe runs stay unbroken without tombstones. */
static void remove_entry(ip_entry_t *e)
{
    uint32_t hole = (uint32_t)(e - sh->table);
    for (uint32_t i = (hole + 1) & (IP_TABLE - 1);; i = (i + 1) & (IP_TABLE - 1)) {
        ip_entry_t *n = &sh->table[i];
        if (!n->used)
            break;
        uint32_t home = hash_ip(n->ip);
        /* n may move into the hole unless its home lies cyclically in (hole, i] */
        bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            sh->table[hole] = *n;
            hole = i;
        }
    }
    memset(&sh->table[hole], 0, sizeof sh->table[hole]);
    sh->nentries--;
}

static uint32_t total(void)
{
    uint32_t t = 0;
    for (int i = 0; i < CONNLIMIT_SLOTS; i++)
        t += sh->slot_total[i];
    return t;
}

int connlimit_acquire(const uint8_t ip[16], int max_total, int max_per_ip)
{
    if (!sh)
        return CONNLIMIT_OK;
    lock();
    int rc = CONNLIMIT_OK;
    if (max_total > 0 && total() >= (uint32_t)max_total)
        rc = CONNLIMIT_TOTAL;
    ip_entry_t *mine, *empty;
    uint32_t from_ip = probe(ip, my_slot, &mine, &empty);
    if (rc == CONNLIMIT_OK && max_per_ip > 0 && from_ip >= (uint32_t)max_per_ip)
        rc = CONNLIMIT_PER_IP;
    /* a full table (65536 addresses at once) counts no more addresses:
     * the total limit still holds */
    if (rc == CONNLIMIT_OK && !mine && empty && sh->nentries < IP_TABLE - 1) {
        memcpy(empty->ip, ip, 16);
        empty->slot = (uint16_t)my_slot;
        empty->used = 1;
        empty->count = 0;
        sh->nentries++;
        mine = empty;
    }
    if (rc == CONNLIMIT_OK) {
        if (mine)
            mine->count++;
        sh->slot_total[my_slot]++;
    }
    unlock();
    return rc;
}

void connlimit_release(const uint8_t ip[16])
{
    if (!sh)
        return;
    lock();
    ip_entry_t *mine, *empty;
    probe(ip, my_slot, &mine, &empty);
    if (mine && --mine->count == 0)
        remove_entry(mine);
    if (sh->slot_total[my_slot] > 0)
        sh->slot_total[my_slot]--;
    unlock();
}

void connlimit_forget_slot(int slot)
{
    if (!sh || slot < 0 || slot >= CONNLIMIT_SLOTS)
        return;
    lock();
    sh->slot_total[slot] = 0;
    for (uint32_t i = 0; i < IP_TABLE;) {
        ip_entry_t *e = &sh->table[i];
        if (e->used && e->slot == slot)
            remove_entry(e); /* a later entry may have moved into i: look again */
        else
            i++;
    }
    unlock();
}

unsigned connlimit_count(const uint8_t ip[16], unsigned *from_ip)
{
    if (!sh)
        return 0;
    lock();
    unsigned t = total();
    if (ip && from_ip) {
        ip_entry_t *mine, *empty;
        *from_ip = probe(ip, -1, &mine, &empty);
    }
    unlock();
    return t;
}

int connlimit_ip_key(const char *text, uint8_t ip[16])
{
    struct in_addr a4;
    if (inet_pton(AF_INET, text, &a4) == 1) {
        memset(ip, 0, 10);
        ip[10] = ip[11] = 0xff;
        memcpy(ip + 12, &a4, 4);
        return 0;
    }
    return inet_pton(AF_INET6, text, ip) == 1 ? 0 : -1;
}
