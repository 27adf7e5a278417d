/* supervise.c — one watchdog process per sandbox: no build outlives the
 * trust its owner has in its lease (supervise.h).
 *
 * Why a process. A build must stop before its lease can expire in Redis and
 * be handed to another worker, or two builds of one project overlap. The
 * worker stops its build itself when it cannot renew (job.c), but only
 * while it is scheduled: a worker frozen by SIGSTOP, a stopped container
 * process or a debugger does nothing, and its sandbox (a separate session,
 * its own cgroup) runs on. A timer in the worker, a thread of it, or
 * anything else that shares its fate would be frozen with it. So the
 * deadline lives in a separate process, forked by the owner right after the
 * sandbox starts, in a session of its own (a signal to the worker's process
 * group does not reach it), that does nothing but wait in poll(2) for the
 * next deadline.
 *
 * The protocol is one pipe, owner -> supervisor, carrying 8-byte absolute
 * deadlines on CLOCK_BOOTTIME (which keeps counting through a host suspend,
 * as Redis' wall clock does; CLOCK_MONOTONIC does not). Writes of 8 bytes
 * are atomic on a pipe, and the owner's end is non-blocking: pushing a
 * deadline never waits. The supervisor keeps the last value it read.
 *   - deadline reached: fire.
 *   - EOF: every copy of the write end is closed, i.e. the owner died
 *     (kill -9): fire. bwrap's PR_SET_PDEATHSIG does the same already; this
 *     covers the cgroup too.
 *   - the owner ending the sandbox normally SIGKILLs the supervisor and
 *     reaps it (sbx_supervisor_stop) before it closes the pipe, so a normal
 *     end never fires.
 * Firing: SIGKILL to everything of the sandbox, by descriptors only —
 * cgroup.kill (v2: the kernel kills every member at once, forks included),
 * else every pid read from the cgroup v1 procs file (three rounds, for
 * forks in flight), and bwrap's pidfd (its --die-with-parent then takes the
 * build's pid namespace). A descriptor outlives its object harmlessly (a
 * write to a removed cgroup fails, a reaped pidfd answers ESRCH), so a
 * supervisor that fires late cannot touch a later build of the slot: that
 * is why it never kills by uid. Then it exits with SV_FIRED.
 *
 * Between fork and _exit the child may only make async-signal-safe calls
 * (the worker has librdkafka's threads): poll, read, write, kill, the
 * pidfd syscall, clock_gettime. It closes every descriptor but its four, so
 * it holds no other sandbox's pipe open (that sandbox's EOF must still come)
 * and no socket of the worker.
 *
 * Cost: one fork and a sleeping 1-page-of-stack process per running build,
 * one 8-byte write per lease renewal.
 */
#include "supervise.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

/* Exit statuses of the supervisor: fired at its deadline, fired at EOF. */
#define SV_FIRED 3
#define SV_ORPHANED 4
/* Rounds of "kill every pid listed" on cgroup v1: a process forked while we
 * read is listed by the next round. */
#define SV_V1_ROUNDS 3
/* One read of cgroup.procs: ~7 bytes a pid; a sandbox has pids.max (a few
 * hundred) processes, and the loop reads until EOF anyway. */
#define SV_PROCS_CHUNK 4096
/* Where the child puts its descriptors: the pipe, bwrap, cgroup kill/procs. */
enum { FD_PIPE = 3, FD_PID, FD_KILL, FD_PROCS, FD_FIRST_FREE };
/* Above this the child moves descriptors before dup2() puts them at 3..6. */
#define SV_FD_HIGH 64

struct sbx_supervisor {
    pid_t pid;
    int pidfd;          /* the supervisor process */
    int wfd;            /* write end of the deadline pipe, non-blocking */
    uint64_t until_ms;  /* last pushed, sbx_now_ms() clock */
};

static uint64_t boot_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* until on the monotonic clock -> the same instant on CLOCK_BOOTTIME: the two
 * advance together while the host runs, so the distance from now carries. */
static uint64_t to_boot(uint64_t until_ms)
{
    uint64_t mono = sbx_now_ms(), boot = boot_ms();
    if (until_ms == UINT64_MAX)
        return UINT64_MAX;
    return until_ms > mono ? boot + (until_ms - mono) : boot;
}

/* ---- the supervisor process: async-signal-safe calls only ---- */

static void kill_listed(int procs)
{
    char buf[SV_PROCS_CHUNK];
    long pid = 0;
    int digits = 0;
    ssize_t n;

    if (lseek(procs, 0, SEEK_SET) < 0)
        return;
    while ((n = read(procs, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] >= '0' && buf[i] <= '9') {
                pid = pid * 10 + (buf[i] - '0');
                digits++;
                continue;
            }
            if (digits && pid > 1 && pid <= INT_MAX)
                kill((pid_t)pid, SIGKILL);
            pid = 0;
            digits = 0;
        }
    }
    if (digits && pid > 1 && pid <= INT_MAX)
        kill((pid_t)pid, SIGKILL);
}

static _Noreturn void fire(int status)
{
    if (write(FD_KILL, "1", 1) != 1)
        for (int i = 0; i < SV_V1_ROUNDS; i++)
            kill_listed(FD_PROCS);
    syscall(SYS_pidfd_send_signal, FD_PID, SIGKILL, NULL, 0);
    _exit(status);
}

static _Noreturn void supervise(uint64_t deadline)
{
    uint64_t msgs[64];

    for (;;) {
        struct pollfd p = {.fd = FD_PIPE, .events = POLLIN};
        uint64_t now = boot_ms();
        int wait;
        ssize_t n;

        if (now >= deadline)
            fire(SV_FIRED);
        wait = deadline - now > INT_MAX ? INT_MAX : (int)(deadline - now);
        if (poll(&p, 1, wait) <= 0)
            continue; /* timeout or EINTR: the top of the loop decides */
        n = read(FD_PIPE, msgs, sizeof(msgs));
        if (n == 0)
            fire(SV_ORPHANED);
        if (n >= (ssize_t)sizeof(msgs[0]))
            deadline = msgs[(size_t)n / sizeof(msgs[0]) - 1];
    }
}

/* Puts src at dst; src was first moved above SV_FD_HIGH, so no source is
 * clobbered. Without a src, dst is closed: whatever the worker had there
 * must not receive fire()'s write. */
static int place(int src, int dst)
{
    if (src < 0) {
        close(dst);
        return 0;
    }
    return dup2(src, dst) == dst ? 0 : -1;
}

static _Noreturn void child(int rfd, const sbx_supervise_target *t, uint64_t deadline)
{
    int src[4] = {rfd, t->pidfd, t->cgroup_kill, t->cgroup_procs}, hi[4];
    struct sigaction sa;
    sigset_t none;

    for (int i = 0; i < 4; i++)
        hi[i] = src[i] >= 0 ? fcntl(src[i], F_DUPFD, SV_FD_HIGH) : -1;
    for (int i = 0; i < 4; i++)
        if ((src[i] >= 0 && hi[i] < 0) || place(hi[i], FD_PIPE + i) < 0)
            _exit(127);
    /* Everything else: other sandboxes' pipes, the worker's sockets. */
    if (syscall(SYS_close_range, FD_FIRST_FREE, ~0U, 0) < 0) {
        struct rlimit rl;
        int max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? (int)rl.rlim_cur
                                                                             : 65536;
        for (int fd = FD_FIRST_FREE; fd < max; fd++)
            close(fd);
    }
    /* Deaf to what is meant for the worker (its process group, a terminal),
     * and never stopped by a signal sent to its group. */
    setsid();
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &sa, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_NAME, "sbx-supervise", 0, 0, 0);
    supervise(deadline);
}

/* ---- the owner's side ---- */

int sbx_supervisor_start(const sbx_supervise_target *t, uint64_t until_ms,
                         sbx_supervisor **out)
{
    sbx_supervisor *sv;
    int p[2], rc;
    uint64_t deadline = to_boot(until_ms);

    sv = calloc(1, sizeof(*sv));
    if (!sv)
        return -ENOMEM;
    sv->pidfd = sv->wfd = -1;
    sv->until_ms = until_ms;
    if (pipe2(p, O_CLOEXEC) < 0) {
        rc = -errno;
        free(sv);
        return rc;
    }
    sv->pid = fork();
    if (sv->pid == 0)
        child(p[0], t, deadline);
    rc = sv->pid < 0 ? -errno : 0;
    close(p[0]);
    sv->wfd = p[1];
    if (!rc) {
        sv->pidfd = (int)syscall(SYS_pidfd_open, sv->pid, 0);
        if (sv->pidfd < 0)
            rc = -errno;
    }
    if (rc) {
        if (sv->pid > 0) {
            kill(sv->pid, SIGKILL);
            waitpid(sv->pid, NULL, 0);
        }
        close(sv->wfd);
        free(sv);
        return rc;
    }
    fcntl(sv->wfd, F_SETFL, fcntl(sv->wfd, F_GETFL) | O_NONBLOCK);
    *out = sv;
    return 0;
}

void sbx_supervisor_trust(sbx_supervisor *sv, uint64_t until_ms)
{
    uint64_t d = to_boot(until_ms);
    sv->until_ms = until_ms;
    /* A full pipe (64 KiB of unread deadlines) means the supervisor is not
     * reading; dropping one push only makes it fire earlier. */
    (void)!write(sv->wfd, &d, sizeof(d));
}

uint64_t sbx_supervisor_until(const sbx_supervisor *sv) { return sv->until_ms; }

int sbx_supervisor_stop(sbx_supervisor *sv)
{
    siginfo_t si;
    int fired = 0, rc;

    if (!sv)
        return 0;
    /* Dead before the pipe closes, so the close is no EOF it acts on. */
    syscall(SYS_pidfd_send_signal, sv->pidfd, SIGKILL, NULL, 0);
    memset(&si, 0, sizeof(si));
    do
        rc = waitid(P_PIDFD, (id_t)sv->pidfd, &si, WEXITED);
    while (rc < 0 && errno == EINTR);
    if (rc == 0 && si.si_code == CLD_EXITED)
        fired = si.si_status == SV_FIRED || si.si_status == SV_ORPHANED;
    close(sv->pidfd);
    close(sv->wfd);
    free(sv);
    return fired;
}
