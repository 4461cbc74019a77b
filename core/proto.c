/* proto.c: the protocols this build speaks, found by name or by port, and
 * the options and settings they declare, numbered across all of them so
 * the configuration and the policy's upstream tables can hold them
 * without knowing which protocol reads them. Adding a protocol is one
 * line in `protocols` below. */
#include "proto.h"

#include "config.h"
#include "upstream.h"

#include <string.h>
#include <strings.h>

extern const proto_t proto_imap, proto_pop3, proto_smtp, proto_sieve;

static const proto_t *const protocols[] = { &proto_imap, &proto_pop3, &proto_smtp, &proto_sieve, NULL };

const proto_t *const *proto_all(void)
{
    return protocols;
}

const proto_t *proto_find(const char *name)
{
    for (const proto_t *const *p = protocols; *p; p++)
        if (strcasecmp((*p)->name, name) == 0)
            return *p;
    return NULL;
}

const proto_t *proto_for_port(int port)
{
    for (const proto_t *const *p = protocols; *p; p++)
        for (int i = 0; i < 4 && (*p)->default_ports[i]; i++)
            if ((*p)->default_ports[i] == port)
                return *p;
    return NULL;
}

/* Walks every protocol's names in `which` (options or settings): the
 * index of `name` among the distinct names met, or the count of all
 * distinct names when name is NULL. */
static int walk(const char *name, bool settings, const void **found)
{
    const char *seen[32];
    int n = 0;
    for (const proto_t *const *p = protocols; *p; p++) {
        for (int i = 0;; i++) {
            const char *k;
            const void *item;
            if (settings) {
                if (!(*p)->settings || !(*p)->settings[i].key)
                    break;
                item = &(*p)->settings[i];
                k = (*p)->settings[i].key;
            } else {
                if (!(*p)->options || !(*p)->options[i])
                    break;
                item = k = (*p)->options[i];
            }
            int j = 0;
            while (j < n && strcmp(seen[j], k) != 0)
                j++;
            if (j == n && n < 32)
                seen[n++] = k;
            if (name && strcmp(name, k) == 0) {
                if (found)
                    *found = item;
                return j;
            }
        }
    }
    return name ? -1 : n;
}

int proto_option_index(const char *name)
{
    return walk(name, false, NULL);
}

int proto_option_count(void)
{
    return walk(NULL, false, NULL);
}

const char *proto_option_name(int i)
{
    for (const proto_t *const *p = protocols; *p; p++)
        for (int k = 0; (*p)->options && (*p)->options[k]; k++)
            if (proto_option_index((*p)->options[k]) == i)
                return (*p)->options[k];
    return NULL;
}

int proto_upstream_option(const upstream_t *u, const char *name)
{
    int i = proto_option_index(name);
    if (i < 0 || !(u->opt_set & (1u << i)))
        return -1;
    return (u->opt_on >> i) & 1;
}

bool proto_listener_option(const listen_conf_t *l, const char *name)
{
    int i = proto_option_index(name);
    return i >= 0 && (l->opt_on >> i) & 1;
}

int proto_setting_index(const char *key, const proto_setting_t **setting)
{
    return walk(key, true, (const void **)setting);
}

int proto_setting_count(void)
{
    return walk(NULL, true, NULL);
}

const proto_setting_t *proto_setting_at(int i)
{
    for (const proto_t *const *p = protocols; *p; p++)
        for (int k = 0; (*p)->settings && (*p)->settings[k].key; k++)
            if (proto_setting_index((*p)->settings[k].key, NULL) == i)
                return &(*p)->settings[k];
    return NULL;
}
