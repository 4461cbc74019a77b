/* master.h: the process started by the user, which binds the listeners
 * and keeps its workers running. */
#ifndef POSTERN_MASTER_H
#define POSTERN_MASTER_H

#include "config.h"

/* Runs until the instance stops; returns the process exit status.
 * cfg is checked (policy included); argv is kept for a binary upgrade. */
int master_run(config_t *cfg, char **argv);

#endif
