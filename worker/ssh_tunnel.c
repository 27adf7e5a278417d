/* ssh_tunnel.c — spawn, watch and respawn `ssh -N -L local:remote`.
 *
 * Three handles on the loop follow the child: its pidfd (readable once it
 * exits), the read end of its stderr pipe, and one timer that does double
 * duty: while ssh is starting it looks every POLL_MS for the local socket
 * (ssh creates it only after the host key was checked, the login accepted
 * and the forward bound, so "the socket exists" is "the tunnel is up"); while
 * no ssh runs it is the backoff before the next spawn.
 *
 * fork() rather than posix_spawn(): the child must reset what the worker
 * changed and exec does not undo — the blocked signal mask (the daemon takes
 * SIGTERM through a signalfd, and a blocked SIGTERM would survive exec) and
 * SIGPIPE ignored — and ask for PR_SET_PDEATHSIG. Between fork and exec it
 * calls only async-signal-safe functions; argv is built before the fork.
 */
#include "ssh_tunnel.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static const char COMP[] = "ssh";

/* While starting: how often to look for the local socket. */
#define POLL_MS 100
/* Respawn delays: the first retry soon (a dropped connection), then back
 * off so a host that refuses us is not hammered; reset by a tunnel that
 * stayed up STABLE_MS. */
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 60000
/* ssh's argv: the fixed options below plus -i, -p, -L and the destination. */
#define ARGV_MAX 40
/* One stderr line kept: ssh's messages are a sentence. */
#define LINE_MAX_LEN 256

struct sbx_ssh_tunnel {
    sbx_loop *loop;
    char *name;
    char *local_socket;
    char *strs;                  /* the strings argv points into */
    char *argv[ARGV_MAX + 1];
    void (*on_state)(void *arg, int up);
    void *arg;
    pid_t pid;                   /* 0: none running */
    int pidfd;
    sbx_io pid_io;
    int errfd;                   /* -1 once closed */
    sbx_io err_io;
    char line[LINE_MAX_LEN];     /* the stderr line being read */
    size_t line_len;
    char why[LINE_MAX_LEN + 64]; /* why it is down */
    int said;                    /* this ssh printed a line (why holds it) */
    sbx_timer timer;             /* socket poll while starting, else backoff */
    uint64_t up_since_ms;
    int up;
    unsigned spawns;
    uint32_t delay_ms;
};

static int pidfd_open_(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

static void spawn(sbx_ssh_tunnel *t);

static void set_up(sbx_ssh_tunnel *t, int up)
{
    if (t->up == up)
        return;
    t->up = up;
    if (up) {
        t->up_since_ms = sbx_now_ms();
        sbx_info(COMP, "tunnel %s up (pid %d)", t->name, (int)t->pid);
    }
    if (t->on_state)
        t->on_state(t->arg, up);
}

static void keep_line(sbx_ssh_tunnel *t)
{
    t->line[t->line_len] = '\0';
    t->line_len = 0;
    if (!t->line[0])
        return;
    /* At debug: ssh's reason is its last line, which the "down" line
     * carries; the banner around a changed host key would repeat at every
     * retry. */
    sbx_debug(COMP, "tunnel %s: %s", t->name, t->line);
    snprintf(t->why, sizeof(t->why), "ssh: %s", t->line);
    t->said = 1;
}

static void close_err(sbx_ssh_tunnel *t)
{
    if (t->errfd < 0)
        return;
    sbx_io_stop(&t->err_io);
    close(t->errfd);
    t->errfd = -1;
    if (t->line_len)
        keep_line(t);
}

/* Reads what ssh printed; line by line into the log. */
static void drain_err(sbx_ssh_tunnel *t)
{
    char buf[1024];
    for (;;) {
        ssize_t n = read(t->errfd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            close_err(t);
            return;
        }
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == '\n' || buf[i] == '\r') {
                keep_line(t);
            } else if (t->line_len < sizeof(t->line) - 1) {
                t->line[t->line_len++] = buf[i];
            }
        }
    }
}

static void on_err_io(sbx_io *io, int events)
{
    (void)events;
    drain_err(io->data);
}

static void on_timer(sbx_timer *tm)
{
    sbx_ssh_tunnel *t = tm->data;
    struct stat st;

    if (!t->pid) {
        spawn(t);
        return;
    }
    if (stat(t->local_socket, &st) == 0 && S_ISSOCK(st.st_mode)) {
        set_up(t, 1);
        return;
    }
    sbx_timer_start(t->loop, &t->timer, POLL_MS);
}

static void on_exit_io(sbx_io *io, int events)
{
    sbx_ssh_tunnel *t = io->data;
    siginfo_t si;
    int stable;
    (void)events;

    memset(&si, 0, sizeof(si));
    if (waitid((idtype_t)P_PIDFD, (id_t)t->pidfd, &si, WEXITED | WNOHANG) < 0) {
        if (errno == EINTR)
            return;
        si.si_code = 0;   /* reaped by someone else: gone, status unknown */
    } else if (si.si_pid == 0) {
        return;   /* not yet: the pidfd stays readable until reaped */
    }
    sbx_io_stop(&t->pid_io);
    close(t->pidfd);
    t->pidfd = -1;
    t->pid = 0;
    sbx_timer_stop(t->loop, &t->timer);
    if (t->errfd >= 0)
        drain_err(t);
    close_err(t);
    /* ssh's last line says why it gave up; a signal came from elsewhere,
     * and an older line (a refused forward) would mislead. */
    if (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED)
        snprintf(t->why, sizeof(t->why), "ssh killed by signal %d", si.si_status);
    else if (si.si_code != CLD_EXITED)
        snprintf(t->why, sizeof(t->why), "ssh is gone (reaped elsewhere)");
    else if (!t->said)
        snprintf(t->why, sizeof(t->why), "ssh exited with status %d", si.si_status);
    stable = t->up && sbx_now_ms() - t->up_since_ms >= STABLE_MS;
    t->delay_ms = stable || !t->delay_ms ? BACKOFF_MIN_MS
                  : t->delay_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : t->delay_ms * 2;
    unlink(t->local_socket);
    sbx_warn(COMP, "tunnel %s down (%s); starting ssh again in %u ms", t->name, t->why,
             (unsigned)t->delay_ms);
    set_up(t, 0);
    sbx_timer_start(t->loop, &t->timer, t->delay_ms);
}

/* In the child, before exec: async-signal-safe calls only. */
static void child(sbx_ssh_tunnel *t, int errw, pid_t parent)
{
    sigset_t none;
    int null;
    /* The pipe first: it may sit on fd 0, 1 or 2 in a worker started with
     * those closed (and dup2 onto itself would keep its close-on-exec). */
    if ((errw == 2 ? fcntl(2, F_SETFD, 0) : dup2(errw, 2)) < 0 ||
        (null = open("/dev/null", O_RDWR)) < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0)
        _exit(127);
    closefrom(3);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);   /* the worker died before the prctl */
    execvp(t->argv[0], t->argv);
    {
        static const char msg[] = "cannot run ssh: exec failed\n";
        ssize_t n = write(2, msg, sizeof(msg) - 1);
        (void)n;
    }
    _exit(127);
}

/* Starts one ssh. A failure to fork or to watch it is a down tunnel like
 * any other: retried after the backoff. */
static void spawn(sbx_ssh_tunnel *t)
{
    int pipefd[2] = {-1, -1};
    pid_t parent = getpid(), pid;

    unlink(t->local_socket);   /* else the stat in on_timer sees the old one */
    snprintf(t->why, sizeof(t->why), "ssh is connecting");
    t->said = 0;
    t->line_len = 0;
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        goto fail;
    pid = fork();
    if (pid < 0)
        goto fail;
    if (pid == 0)
        child(t, pipefd[1], parent);
    close(pipefd[1]);
    pipefd[1] = -1;
    t->pid = pid;
    t->spawns++;
    t->errfd = pipefd[0];
    fcntl(t->errfd, F_SETFL, fcntl(t->errfd, F_GETFL) | O_NONBLOCK);
    sbx_io_init(&t->err_io, t->errfd, on_err_io, t);
    if ((t->pidfd = pidfd_open_(pid)) < 0) {
        /* Without a pidfd we cannot see it exit: stop it now and retry. */
        snprintf(t->why, sizeof(t->why), "pidfd_open: %s", strerror(errno));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        t->pid = 0;
        close_err(t);
        goto retry;
    }
    sbx_io_init(&t->pid_io, t->pidfd, on_exit_io, t);
    sbx_io_set(t->loop, &t->pid_io, SBX_READ);
    sbx_io_set(t->loop, &t->err_io, SBX_READ);
    sbx_debug(COMP, "tunnel %s: ssh started (pid %d)", t->name, (int)pid);
    sbx_timer_start(t->loop, &t->timer, POLL_MS);
    return;

fail:
    snprintf(t->why, sizeof(t->why), "cannot start ssh: %s", strerror(errno));
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
retry:
    sbx_warn(COMP, "tunnel %s: %s", t->name, t->why);
    t->delay_ms = t->delay_ms ? (t->delay_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : t->delay_ms * 2)
                              : BACKOFF_MIN_MS;
    sbx_timer_start(t->loop, &t->timer, t->delay_ms);
}

/* Lays the strings end to end in t->strs and points argv at them. */
static int build_argv(sbx_ssh_tunnel *t, const sbx_ssh_tunnel_config *cfg)
{
    char kh[600], fwd[400], port[16];
    const char *a[ARGV_MAX];
    size_t n = 0, total = 0;
    char *p;

    snprintf(kh, sizeof(kh), "UserKnownHostsFile=%s", cfg->known_hosts);
    snprintf(port, sizeof(port), "%d", cfg->port > 0 ? cfg->port : 22);
    snprintf(fwd, sizeof(fwd), "%s:%s", cfg->local_socket, cfg->remote_socket);
    a[n++] = cfg->ssh && *cfg->ssh ? cfg->ssh : "ssh";
    a[n++] = "-F";  a[n++] = "none";   /* no user or system config decides for us */
    a[n++] = "-N";  a[n++] = "-T";
    a[n++] = "-o";  a[n++] = "BatchMode=yes";
    a[n++] = "-o";  a[n++] = "StrictHostKeyChecking=yes";
    a[n++] = "-o";  a[n++] = kh;
    a[n++] = "-o";  a[n++] = "GlobalKnownHostsFile=/dev/null";
    a[n++] = "-o";  a[n++] = "ExitOnForwardFailure=yes";
    a[n++] = "-o";  a[n++] = "ServerAliveInterval=10";
    a[n++] = "-o";  a[n++] = "ServerAliveCountMax=3";
    a[n++] = "-o";  a[n++] = "ConnectTimeout=10";
    a[n++] = "-o";  a[n++] = "StreamLocalBindMask=0177";
    /* INFO, not ERROR: a forward the far side cannot open ("channel 3:
     * open failed: connect failed") is said at INFO. */
    a[n++] = "-o";  a[n++] = "LogLevel=INFO";
    if (cfg->identity && *cfg->identity) {
        a[n++] = "-o";  a[n++] = "IdentitiesOnly=yes";
        a[n++] = "-i";  a[n++] = cfg->identity;
    }
    a[n++] = "-p";  a[n++] = port;
    a[n++] = "-L";  a[n++] = fwd;
    a[n++] = "--";  a[n++] = cfg->destination;
    for (size_t i = 0; i < n; i++)
        total += strlen(a[i]) + 1;
    if (!(t->strs = malloc(total)))
        return -ENOMEM;
    p = t->strs;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(a[i]) + 1;
        memcpy(p, a[i], l);
        t->argv[i] = p;
        p += l;
    }
    t->argv[n] = NULL;
    return 0;
}

int sbx_ssh_tunnel_new(sbx_loop *loop, const sbx_ssh_tunnel_config *cfg, sbx_ssh_tunnel **out,
                       char *err, size_t errlen)
{
    sbx_ssh_tunnel *t;

    if (!cfg->known_hosts || !*cfg->known_hosts || !cfg->destination || !*cfg->destination ||
        !cfg->remote_socket || !cfg->local_socket) {
        snprintf(err, errlen, "ssh tunnel %s: needs a destination, sockets and a known_hosts file",
                 cfg->name ? cfg->name : "");
        return -EINVAL;
    }
    if (!(t = calloc(1, sizeof(*t))))
        goto nomem;
    t->loop = loop;
    t->pidfd = t->errfd = -1;
    t->on_state = cfg->on_state;
    t->arg = cfg->arg;
    sbx_timer_init(&t->timer, on_timer, t);
    if (!(t->name = strdup(cfg->name ? cfg->name : "")) ||
        !(t->local_socket = strdup(cfg->local_socket)) || build_argv(t, cfg) < 0) {
        sbx_ssh_tunnel_free(t);
        goto nomem;
    }
    spawn(t);
    *out = t;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
}

void sbx_ssh_tunnel_free(sbx_ssh_tunnel *t)
{
    if (!t)
        return;
    sbx_timer_stop(t->loop, &t->timer);
    if (t->pid) {
        siginfo_t si;
        sbx_io_stop(&t->pid_io);
        kill(t->pid, SIGKILL);
        while (waitid((idtype_t)P_PIDFD, (id_t)t->pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
        close(t->pidfd);
    }
    close_err(t);
    if (t->local_socket)
        unlink(t->local_socket);
    free(t->name);
    free(t->local_socket);
    free(t->strs);
    free(t);
}

int sbx_ssh_tunnel_up(const sbx_ssh_tunnel *t) { return t->up; }

const char *sbx_ssh_tunnel_error(const sbx_ssh_tunnel *t) { return t->up ? "" : t->why; }

unsigned sbx_ssh_tunnel_spawns(const sbx_ssh_tunnel *t) { return t->spawns; }

pid_t sbx_ssh_tunnel_pid(const sbx_ssh_tunnel *t) { return t->pid; }
