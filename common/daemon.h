/* daemon.h — what sbx-worker's and sbx-agent's main() share around their
 * own wiring: the settings (with --help and --check-config), the process
 * set-up (a seeded rand(), SIGPIPE ignored, SIGTERM/SIGINT read from a
 * signalfd on the loop, the loop itself), the Redis connection both open
 * from SBX_REDIS_URL, and running and ending the loop.
 *
 *   rc = sbx_daemon_settings(argc, argv, &cfg, load, print);
 *   if (rc != SBX_DAEMON_RUN) return rc;
 *   if (sbx_daemon_start(&d, "sbx-worker", "worker", on_stop, w)) return 1;
 *   ... wiring on d.loop ...
 *   rc = sbx_daemon_run(&d);      (logs "ready"; returns when the loop stops)
 *   ... teardown ...
 *   sbx_daemon_end(&d);           (logs "stopped")
 *
 * Signals are blocked at start and only read once the loop runs, so one
 * that arrives during start-up is handled then, never lost. The first
 * SIGTERM/SIGINT calls on_stop, which begins the program's own graceful
 * stop; a second one stops the loop at once.
 */
#ifndef SBX_DAEMON_H
#define SBX_DAEMON_H

#include <stdio.h>

#include "loop.h"
#include "redis.h"

/* sbx_daemon_settings(): go on and start (any other value is the exit status). */
#define SBX_DAEMON_RUN (-1)

/* The program's settings reader: 0, 1 after printing what is wrong to err,
 * or 2 when --help was asked (usage printed). */
typedef int (*sbx_daemon_load_fn)(void *cfg, int argc, char **argv, FILE *err);
/* The effective settings, secrets hidden (--check-config). */
typedef void (*sbx_daemon_print_fn)(const void *cfg, FILE *out);
/* The first SIGTERM or SIGINT. */
typedef void (*sbx_daemon_stop_cb)(void *arg, int signo);

typedef struct sbx_daemon {
    const char *prog;      /* "sbx-worker": first word of stderr lines */
    const char *comp;      /* "worker": log component */
    sbx_loop *loop;
    sbx_daemon_stop_cb on_stop;
    void *arg;
    int signals;           /* SIGTERM/SIGINT read so far */
    int sig_fd;
    sbx_io sig_io;
} sbx_daemon;

/* Reads the settings into cfg; --check-config (anywhere in argv) prints
 * them and exits 0; --version prints "<argv[0]'s name> 0.3.0 (git ...)"
 * and exits 0 without reading any setting. Returns SBX_DAEMON_RUN, or the exit status: 0 after
 * --help or --check-config, 2 when a setting is wrong. */
int sbx_daemon_settings(int argc, char **argv, void *cfg, sbx_daemon_load_fn load,
                        sbx_daemon_print_fn print);
/* Seeds rand(), ignores SIGPIPE, blocks SIGTERM/SIGINT into a signalfd and
 * creates d->loop. Returns 0, or 1 (the exit status) after printing why. */
int sbx_daemon_start(sbx_daemon *d, const char *prog, const char *comp, sbx_daemon_stop_cb on_stop,
                     void *arg);
/* sbx_redis_new() on d->loop; when the URL is refused, prints
 * "<prog>: SBX_REDIS_URL=<url, password hidden>: <why>" and returns 2. */
int sbx_daemon_redis(sbx_daemon *d, const char *url, sbx_redis_state_cb state_cb, void *arg,
                     sbx_redis **out);
/* Watches the signals, logs "ready" and runs the loop until sbx_loop_stop();
 * signals are not read after it returns. sbx_loop_run()'s result. */
int sbx_daemon_run(sbx_daemon *d);
/* Frees the loop and the signalfd; logs "stopped". */
void sbx_daemon_end(sbx_daemon *d);

#endif
