/* proto.c: the protocols this build speaks, found by name or by port. */
#include "proto.h"

#include <strings.h>

static const proto_t *const protocols[] = { &proto_imap, &proto_pop3, &proto_smtp, NULL };

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
