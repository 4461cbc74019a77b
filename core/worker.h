/* worker.h: one worker process, as the master forks it. */
#ifndef POSTERN_WORKER_H
#define POSTERN_WORKER_H

#include "config.h"

/* Messages on the channel between the master and a worker (one octet). */
enum {
    CHAN_READY = 'R',  /* worker -> master: accepting */
    CHAN_RETIRE = 'r', /* master -> worker: a reload replaced you; finish your sessions */
    CHAN_QUIT = 'q',   /* master -> worker: graceful stop */
    CHAN_HANDOVER = 'h', /* master -> worker: graceful stop while a new master serves (after an
                          * upgrade): sessions before login may finish their login too */
};

/* Runs the worker until it stops; returns its exit status. fds are the
 * listening sockets of cfg's `listen` entries, chan the worker's end of
 * its channel, slot its place in the shared limits. */
int worker_run(config_t *cfg, const int *fds, int chan, int slot);

#endif
