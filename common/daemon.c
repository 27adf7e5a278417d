/* daemon.c — see daemon.h. Both programs used to carry this code twice; it
 * is kept free of either one's settings, which reach it only through the
 * load/print callbacks, so the two command lines stay each program's own.
 */
#include "daemon.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "log.h"
#include "sbx.h"

/* sbx_redis_new()'s reasons are one short line; a URL is at most a setting
 * (the settings tables cap SBX_REDIS_URL at 512 bytes). */
#define REDIS_ERR_MAX 512
#define REDIS_URL_SHOWN_MAX 1024

int sbx_daemon_settings(int argc, char **argv, void *cfg, sbx_daemon_load_fn load,
                        sbx_daemon_print_fn print)
{
    int check_only = 0, rc;

    /* --version anywhere wins, before settings are read: it must answer on a
     * host where none is set yet. The name is the one the program was
     * started by (sbx-worker, sbx-agent, sbx-worker-bench). */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--version") == 0) {
            const char *slash = strrchr(argv[0], '/');
            char line[256];
            sbx_version_line(slash ? slash + 1 : argv[0], line, sizeof(line));
            printf("%s\n", line);
            return 0;
        }
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--check-config") == 0) {
            check_only = 1;
            memmove(&argv[i], &argv[i + 1], (size_t)(argc - i) * sizeof(char *));
            argc--;
            break;
        }
    rc = load(cfg, argc, argv, stderr);
    if (rc == 2)
        return 0;
    if (rc)
        return 2;
    if (check_only) {
        print(cfg, stdout);
        return 0;
    }
    return SBX_DAEMON_RUN;
}

static void on_signal(sbx_io *io, int events)
{
    sbx_daemon *d = io->data;
    struct signalfd_siginfo si;

    (void)events;
    while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (d->signals++) {
            sbx_warn(d->comp, "second signal: stopping now");
            sbx_loop_stop(d->loop);
            return;
        }
        d->on_stop(d->arg, (int)si.ssi_signo);
    }
}

int sbx_daemon_start(sbx_daemon *d, const char *prog, const char *comp, sbx_daemon_stop_cb on_stop,
                     void *arg)
{
    sigset_t mask;

    memset(d, 0, sizeof(*d));
    d->prog = prog;
    d->comp = comp;
    d->on_stop = on_stop;
    d->arg = arg;
    /* Backoff jitter (reconnects, retries) must differ between processes
     * started together. */
    srand((unsigned)(getpid() ^ sbx_now_us()));
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    d->sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (d->sig_fd < 0 || sbx_loop_new(&d->loop) != 0) {
        fprintf(stderr, "%s: cannot create the event loop\n", prog);
        if (d->sig_fd >= 0)
            close(d->sig_fd);
        return 1;
    }
    sbx_io_init(&d->sig_io, d->sig_fd, on_signal, d);
    return 0;
}

int sbx_daemon_redis(sbx_daemon *d, const char *url, sbx_redis_state_cb state_cb, void *arg,
                     sbx_redis **out)
{
    char err[REDIS_ERR_MAX], shown[REDIS_URL_SHOWN_MAX];

    if (sbx_redis_new(d->loop, url, state_cb, arg, out, err, sizeof(err)) == 0)
        return 0;
    sbx_log_redact(url, shown, sizeof(shown));
    fprintf(stderr, "%s: SBX_REDIS_URL=%s: %s\n", d->prog, shown, err);
    return 2;
}

int sbx_daemon_run(sbx_daemon *d)
{
    int rc;

    sbx_io_set(d->loop, &d->sig_io, SBX_READ);
    sbx_info(d->comp, "ready");
    rc = sbx_loop_run(d->loop);
    sbx_io_stop(&d->sig_io);
    return rc;
}

void sbx_daemon_end(sbx_daemon *d)
{
    sbx_loop_free(d->loop);
    d->loop = NULL;
    close(d->sig_fd);
    d->sig_fd = -1;
    sbx_info(d->comp, "stopped");
}
