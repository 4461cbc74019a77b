/* listener.h: the listening sockets of the configuration. */
#ifndef POSTERN_LISTENER_H
#define POSTERN_LISTENER_H

#include "config.h"

#include <uv.h>

int listeners_start(uv_loop_t *loop, config_t *cfg, char *err, size_t errlen);
/* After a reload with the same listen addresses: new sessions get cfg. */
void listeners_use(config_t *cfg);
void listeners_stop(void);

#endif
