/* sandbox.c — one build in a bubblewrap sandbox: spawn, watch, kill, clean.
 *
 * What a sandbox owns on the host, and how each thing is bounded:
 *  - A workspace <work_dir>/<name>, mode 0700, owned by the build's uid,
 *    bound read-write at /workspace. The job's files are written into it by
 *    us before anything runs (fresh directory, no racing writer), with every
 *    path checked to stay inside. Removed by an `rm -rf --one-file-system`
 *    child (rm walks any depth safely; removing a big tree must not block the
 *    loop) before on_exit, so a finished slot never leaves disk behind.
 *  - bwrap, exec'd by a forked child that first drops to the build's uid
 *    (setgroups(0), setresgid, setresuid), applies the rlimits, starts a new
 *    session and sets PR_SET_PDEATHSIG so a crashed worker takes its builds
 *    down. bwrap then makes every namespace (--unshare-all, the network one
 *    included: a build that asks for network gets a namespace of its own
 *    with a NAT and an egress filter, set up by netns.c while bwrap holds
 *    the command back on --block-fd), its own pid 1, a tmpfs root remounted
 *    read-only, read-only /usr plus the merged-/usr symlinks, a generated /etc/passwd and
 *    /etc/group, a handful of read-only /etc files, and size-capped tmpfs
 *    /tmp and /dev/shm. --die-with-parent: killing bwrap kills its pid 1, and
 *    the kernel then kills every process of that pid namespace. Last, just
 *    before it execs the command, bwrap loads the seccomp filter of
 *    seccomp_filter.c (read from a memfd on fd 7, --seccomp 7), so its own
 *    set-up runs unfiltered and nothing of the build does.
 *  - Secrets stay off the host's `ps`: bwrap's options, including every
 *    --setenv, are passed through a memfd (--args 3), not argv; bwrap itself
 *    is exec'd with an empty environment, so nothing the job sets (say
 *    LD_PRELOAD) acts on bwrap outside the sandbox.
 *  - A wrapper (`printf x >&6 && exec "$@"`) writes one byte just before it
 *    execs the command. No byte means bwrap never got that far (bad setup, no
 *    user namespaces left): the caller should report a provider error, not a
 *    failed build.
 *  - stdout and stderr share one pipe read non-blocking into a ring that
 *    keeps the last SBX_SANDBOX_TAIL_MAX bytes, so memory is bounded however
 *    much a build prints; the total is counted. A caller that wants the
 *    output live (spec->output) gets two pipes instead, so it can tell the
 *    streams apart, and each read is handed over as it comes; the ring then
 *    keeps the last bytes of both in the order they were read.
 *
 * Limits, first line: a cgroup per sandbox (cgroup.c; v2, else v1),
 * <own cgroup>/sbx/<hash of work_dir>-u<uid>/s-<name>, which the forked child joins
 * before it execs bwrap, so every process of the sandbox is inside:
 * memory_mb for all of them together, tmpfs pages included (/tmp,
 * /dev/shm, a disk_total workspace), no swap; a CFS quota of cpus cores;
 * pids.max = pids + 2. After the processes are gone we read whether its
 * OOM killer fired (status.oom_killed: the build's doing, so bwrap killed
 * by it is not "lost"), then remove it. Without a writable cgroup hierarchy
 * (not root) the rlimits below are all there is, and we say so once.
 *
 * Disk, with disk_total as root: one tmpfs of size=disk_mb mounted on
 * <work_dir>/<name> holds the workspace (ws/) and the build's /tmp (tmp/),
 * so the two together cannot pass disk_mb; the job's files are written into
 * it. A tmpfs rather than a loop-mounted ext4 image or project quotas: one
 * mount(2), no mkfs, no loop devices (often missing in containers), nothing
 * to install, gone with one umount; and its pages are charged to the
 * sandbox's memory cgroup, so disk cannot be used to escape the memory limit
 * (the price: a build's disk use counts as memory too). A failed build that
 * left the filesystem full is reported as "disk limit of N MB reached".
 * At the end it is emptied by rm while still mounted, then detached: a
 * descriptor the caller keeps (the agent's log) then holds that one file,
 * not the tree. Otherwise (not root, or disk_total off) the workspace is a
 * plain directory and /tmp a tmpfs of its own.
 *
 * Limits, second line: rlimits set before exec, inherited by everything in
 * the sandbox:
 *  - RLIMIT_AS = memory_mb, per process (a sandbox with N processes may use
 *    N times that; runtimes that reserve address space need a larger value).
 *  - RLIMIT_NPROC = pids + 2 (bwrap and its pid 1). Counted per uid, which is
 *    why each slot has its own uid: the limit is then per sandbox. A user
 *    namespace created under it inherits it as its ceiling.
 *  - RLIMIT_CPU = cpu_s per process, soft (SIGXCPU) then hard (SIGKILL) a few
 *    seconds later: a backstop against one process spinning on more cores
 *    than it paid for; wall time is the timer's job.
 *  - RLIMIT_FSIZE = disk_mb per file (SIGXFSZ). /dev/shm (and /tmp without
 *    disk_total) are tmpfs of min(disk_mb, memory_mb) each: tmpfs is RAM
 *    that RLIMIT_AS does not count.
 *  - RLIMIT_CORE = 0.
 *
 * Killing. Timeout: SIGKILL to bwrap's pid 1, which takes its whole pid
 * namespace with it; bwrap reaps it and exits (bwrap itself is killed only
 * if it has not within SB_KILL_WAIT_MS: killing it first would orphan its
 * pid 1). Cancel: SIGTERM to the command's process group (bwrap's pid 1
 * ignores it, as a pid-namespace init with no handler does), then the same
 * SIGKILL after kill_grace_ms. When we run as root each build has a uid of
 * its own, which gives the strongest guarantee there is: a child that
 * setuid()s to that uid and calls kill(-1, SIGKILL) kills every process of
 * it, inside or outside any namespace. Before every spawn, and after bwrap
 * exits, /proc must show no live process of the uid (swept if needed), and
 * on_exit waits for that. The uids from uid_base on must be reserved for
 * sandboxes: anything else running as them is killed.
 *
 * Lease. All of the above runs in the caller's loop, so a caller frozen
 * (SIGSTOP) kills nothing. sbx_sandbox_trust() hands the sandbox to a
 * supervisor process (supervise.c) with a deadline the caller keeps
 * pushing; past it, the supervisor SIGKILLs the sandbox by its cgroup and
 * bwrap's pidfd, and on_exit says expired.
 *
 * Orphans. bwrap exits as soon as its pid 1 reports the command's status, so
 * that pid 1 is sometimes reparented; a zombie left to a host init that never
 * reaps (common in containers) would count against the uid's RLIMIT_NPROC
 * forever. With per-slot uids the worker makes itself a child subreaper
 * (process-wide, once) and reaps zombie children of a sandbox uid while it
 * sweeps.
 *
 * Processes are watched with pidfds on the loop and reaped with
 * waitid(P_PIDFD), so the worker must not reap children it did not spawn
 * (no SIGCHLD = SIG_IGN, no waitpid(-1)).
 *
 * Sessions (sbx_sandbox_session_*, the last section): the same sandbox
 * kept between runs. A holder (the above, its command waiting forever)
 * owns it all; each run enters the holder's namespaces, cgroup and uid with
 * the same seccomp filter and no capabilities, and ends when its command
 * exits, leaving its background processes to the holder's pid 1. That
 * section's comment says how and why.
 *
 * Cost: each spawn and each end of a run scans /proc (a few hundred small
 * reads on a build host) in the loop; forks happen only to exec bwrap and
 * rm, and to sweep a uid that is not empty.
 */
#include "sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/nsfs.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "assert.h"
#include "buf.h"
#include "cgroup.h"
#include "log.h"
#include "seccomp_filter.h"
#include "supervise.h"

/* After bwrap exits, wait this long for output EOF: every writer lives in
 * the pid namespace, which dies with bwrap's pid 1, so EOF normally arrives
 * in the same loop turn. */
#define SB_DRAIN_MS 1000
/* After SIGKILL, how long processes of the uid may take to disappear (a task
 * in uninterruptible sleep finishes its syscall first). */
#define SB_REAP_MS 5000
/* Poll period while waiting for either of the above. */
#define SB_POLL_MS 10
/* After SIGKILL to bwrap's pid 1, how long bwrap may take to reap it and
 * exit before it is killed too. */
#define SB_KILL_WAIT_MS 1000
/* After bwrap exits, how long its pid 1 may take to follow before the uid
 * is swept: normally well under this. */
#define SB_LINGER_MS 200
/* Before a spawn, how long leftovers of the uid may take to die. */
#define SB_CLAIM_MS 500
/* One read: the default pipe capacity (16 pages). */
#define SB_READ_CHUNK 65536
/* Reads per callback: 1 MB, so a chatty build cannot starve the loop. */
#define SB_READS_PER_TURN 16
/* bwrap options: env and argv of a job are bounded by the message size
 * (SBX_MSG_MAX_BYTES), mounts add little; twice that is plenty. */
#define SB_ARGS_MAX (2 * SBX_MSG_MAX_BYTES)
/* RLIMIT_NPROC headroom for bwrap itself and its pid 1. */
#define SB_BWRAP_PROCS 2
/* RLIMIT_CPU hard limit after the soft one: time to handle SIGXCPU. */
#define SB_CPU_HARD_SLACK_S 5
/* Bytes of /proc/<pid>/status we need: State and Uid are in the first lines. */
#define SB_STATUS_HEAD 1024
/* A disk_total tmpfs with less than this free counts as full: the write
 * that failed may have wanted more than what is left. */
#define SB_DISK_FULL_SLACK (1024 * 1024)

#define SB_RM "/bin/rm"
#define SB_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
/* Runs inside the sandbox: mark "the command starts now" on fd 6, then
 * become the command with our private fds closed. */
#define SB_WRAPPER "printf x >&6 && exec \"$@\" 3>&- 4>&- 5>&- 6>&-"

/* Sessions. After a run's command exits, how long its output may still
 * come: background processes keep the pipe open, so EOF may never come. */
#define SS_DRAIN_MS 100
/* Output pipes of finished runs still held by background processes, kept
 * open and drained per session: closing them would SIGPIPE a dev server.
 * Past this many, the oldest is closed. */
#define SS_SINKS_MAX 8
/* Processes of a session beyond the job's pids: the holder's command and
 * a run's waiting parent (see child_enter). */
#define SS_EXTRA_PROCS 2
/* The holder's command: waits forever; bwrap's pid 1 reaps the orphans
 * runs leave. */
#define SS_HOLD_CMD "sleep"
#define SS_HOLD_ARG "infinity"

typedef enum sb_state {
    SB_RUNNING,   /* bwrap alive; output flows into the ring */
    SB_REAPING,   /* bwrap reaped; waiting for output EOF and an empty uid */
    SB_CLEANING,  /* rm -rf of the workspace running */
    SB_DONE,      /* on_exit due or delivered */
} sb_state;

static const char *const state_names[] = {"running", "reaping", "cleaning", "done"};

/* Namespaces a session run enters, in this order: the holder's outer user
 * namespace (it owns all the others), those others, then the inner user
 * namespace bwrap made for --disable-userns, where the holder's processes
 * live. */
enum { NS_USER_OUTER, NS_CGROUP, NS_IPC, NS_UTS, NS_NET, NS_PID, NS_MNT, NS_USER, NS_N };
static const char *const ns_names[NS_N] = {"user", "cgroup", "ipc", "uts", "net", "pid", "mnt",
                                           "user"};
static const int ns_types[NS_N] = {CLONE_NEWUSER, CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWUTS,
                                   CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWNS, CLONE_NEWUSER};

typedef enum ss_state {
    SS_STARTING,  /* the holder's command not yet running */
    SS_READY,     /* runs may enter */
    SS_DYING,     /* killed; the holder's cleanup runs */
    SS_DEAD,      /* the holder has ended */
} ss_state;

struct sbx_sandbox {
    sbx_loop *loop;
    sb_state state;
    sbx_sandbox_start_cb on_start;
    sbx_sandbox_exit_cb on_exit;
    void *arg;

    char root[PATH_MAX];  /* <work_dir>/<name>: what we create and remove */
    char ws[PATH_MAX + 8];  /* the workspace: root, or root/ws on a disk_total tmpfs */
    char tmp[PATH_MAX + 8]; /* /tmp on the disk_total tmpfs; "" without */
    int ws_exists;        /* root is ours to remove */
    int mounted;          /* a disk_total tmpfs is mounted on root */
    sbx_cgroup *cg;       /* NULL: rlimits only */
    int memory_mb, disk_mb;
    int uid, gid;         /* -1: not switching, no uid sweeps */
    int grace_ms;

    pid_t pid;            /* bwrap */
    int reaped;           /* pid is no longer ours to signal */
    int pidfd;
    sbx_io pid_io;
    int out_fd;           /* read end of stdout (+stderr without output); -1 after EOF */
    sbx_io out_io;
    int err_fd;           /* read end of stderr with output, else -1 */
    sbx_io err_io;
    sbx_sandbox_output_cb output;
    void *output_arg;
    int mark_fd;          /* read end of the wrapper's "exec now" byte */
    pid_t rm_pid;
    int rm_pidfd;
    sbx_io rm_io;

    sbx_timer start_t;    /* on_start, next turn */
    sbx_timer wall_t;     /* timeout_s */
    sbx_timer kill_t;     /* cancel grace; then bwrap's time to follow its pid 1 */
    sbx_timer reap_t;     /* REAPING poll */
    sbx_timer done_t;     /* on_exit */
    sbx_netns *ns;        /* network: its namespace's set-up and NAT */
    sbx_supervisor *sv;   /* sbx_sandbox_trust(): kills the build at the deadline
                           * even while we are frozen; stopped when bwrap is reaped */
    int expired;          /* see sbx_sandbox_status.expired */

    int started;          /* on_start delivered */
    int end_set;
    sbx_sandbox_end end;
    int killed;           /* SIGKILL sent (to pid 1 first, see kill_all) */
    int exit_code;
    int ran;
    int lost;               /* see sbx_sandbox_status.lost */
    int uid_clear;
    uint64_t t0_ms, t_exit_ms, drain_deadline_ms, reap_deadline_ms;

    sbx_tail tail;        /* the last output, over tail_mem */
    char tail_mem[SBX_SANDBOX_TAIL_MAX + 1];
    uint64_t out_bytes;
    char error[256];
    int oom_killed, disk_full;
    char limit[128];      /* see sbx_sandbox_status.limit */

    sbx_sandbox_session *holds;   /* this sandbox is that session's holder */
    sbx_io mark_io;               /* holder: the "command runs" byte = session up */
    sbx_sandbox_session *session; /* a run inside that session; NULL otherwise */
    char **run_argv, **run_envp;  /* session run: what it execs, one malloc'd block */
    char *bpf;                    /* session run: the seccomp filter's instructions */
    size_t bpf_len;
    int launched;                 /* session run: its process was forked */
    int run_memory_mb, run_pids, run_cpu_s, run_disk_mb; /* session run: rlimits */
    uint64_t oom_base;            /* session run: the session's OOM kills at spawn */
};

struct sbx_sandbox_session {
    sbx_loop *loop;
    ss_state state;
    sbx_sandbox *holder;          /* owns workspace, uid, cgroup, namespaces */
    sbx_sandbox_session_cb on_end;
    void *arg;
    sbx_sandbox *run;             /* the run spawned and not yet on_exit'ed */
    int paused;
    int ns[NS_N];                 /* the holder's namespaces, open once it is up */
    int uid, gid, memory_mb, pids, disk_mb, network;
    int sinks[SS_SINKS_MAX];      /* see SS_SINKS_MAX; -1 when free */
    sbx_io sink_io[SS_SINKS_MAX];
    int next_sink;
    sbx_timer end_t;              /* on_end */
    int ended;
};

static void session_kill_now(sbx_sandbox_session *ss);
static void session_adopt_output(sbx_sandbox_session *ss, sbx_sandbox *s);
static void session_run_detached(sbx_sandbox_session *ss, sbx_sandbox *s);
static void on_mark(sbx_io *io, int events);

/* ---- small helpers ---- */

static int pidfd_open_(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

static int pidfd_kill(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

static void set_state(sbx_sandbox *s, sb_state to)
{
    sbx_debug("sandbox", "state %s -> %s pid=%d", state_names[s->state], state_names[to],
              (int)s->pid);
    s->state = to;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static pid_t wait_blocking(pid_t pid, int *status)
{
    pid_t r;
    do
        r = waitpid(pid, status, 0);
    while (r < 0 && errno == EINTR);
    return r;
}

/* ---- uid sweeps ---- */

/* Scans /proc for processes of uid (real, effective or saved). Counts the
 * live ones; zombies that are our children (bwrap's pid 1, adopted, see
 * adopt_orphans) are reaped when reap is set; other zombies run nothing and
 * are not ours to reap. */
static int scan_uid(uid_t uid, int reap, int thaw)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    pid_t self = getpid();
    int n = 0;

    if (!d)
        return -errno;
    while ((de = readdir(d)) != NULL) {
        char path[64], buf[SB_STATUS_HEAD + 1];
        const char *st, *u, *pp;
        unsigned r, e, sv;
        int ppid = 0, status;
        ssize_t len;
        int fd;

        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%.32s/status", de->d_name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue; /* exited meanwhile */
        len = read(fd, buf, SB_STATUS_HEAD);
        close(fd);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        st = strstr(buf, "\nState:\t");
        pp = strstr(buf, "\nPPid:\t");
        u = strstr(buf, "\nUid:\t");
        if (!u || sscanf(u, "\nUid:\t%u\t%u\t%u", &r, &e, &sv) != 3)
            continue;
        if (r != uid && e != uid && sv != uid)
            continue;
        if (st && (st[8] == 'Z' || st[8] == 'X')) {
            if (reap && pp && sscanf(pp, "\nPPid:\t%d", &ppid) == 1 && ppid == (int)self)
                waitpid((pid_t)atoi(de->d_name), &status, WNOHANG);
            continue;
        }
        if (thaw)
            sbx_cgroup_thaw_of((pid_t)atoi(de->d_name));
        n++;
    }
    closedir(d);
    return n;
}

int sbx_sandbox_count_uid(uid_t uid) { return scan_uid(uid, 0, 0); }

/* bwrap does not always outlive its pid 1: it exits as soon as pid 1 reports
 * the command's status, and pid 1 is then reparented. Without a subreaper it
 * goes to the host's init, and a zombie that init does not reap (container
 * inits often never do) still counts against the uid's RLIMIT_NPROC. As a
 * subreaper the worker adopts it and scan_uid() reaps it. Process-wide, set
 * once, only when we have per-slot uids to tell those zombies apart. */
static void adopt_orphans(void)
{
    static int done;
    if (!done && prctl(PR_SET_CHILD_SUBREAPER, 1) == 0)
        done = 1;
}

/* kill(-1, sig) as uid: every process the uid may signal, i.e. all of its. */
static int kill_uid(uid_t uid, int sig)
{
    int status;
    pid_t pid = fork();

    if (pid < 0)
        return -errno;
    if (pid == 0) {
        if (setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0)
            _exit(1);
        kill(-1, sig);
        _exit(0);
    }
    if (wait_blocking(pid, &status) < 0)
        return -errno;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EPERM;
}

int sbx_sandbox_sweep_uid(uid_t uid, int wait_ms)
{
    uint64_t deadline = sbx_now_ms() + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
    int n;

    adopt_orphans();
    n = scan_uid(uid, 1, 0);

    for (int round = 0; n != 0; round++) {
        int rc = kill_uid(uid, SIGKILL);
        if (rc < 0)
            return rc;
        if (sbx_now_ms() >= deadline)
            return -EBUSY;
        sleep_ms(5);
        /* Still there after a few rounds: maybe frozen (a paused session
         * whose owner died), which takes SIGKILL only once thawed. */
        n = scan_uid(uid, 1, round >= 3);
    }
    return 0;
}

/* ---- workspace ---- */

/* rm -rf of path, and of path2 too unless NULL. */
static pid_t spawn_rm(const char *path, const char *path2)
{
    pid_t pid = fork();
    if (pid == 0) {
        char *const argv[] = {"rm", "-rf", "--one-file-system", "--", (char *)path, (char *)path2, NULL};
        int fd = open("/dev/null", O_RDWR);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
        }
        close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
        execv(SB_RM, argv);
        _exit(127);
    }
    return pid;
}

/* A filesystem mounted on path itself (a disk_total tmpfs) is detached:
 * it then vanishes with its last user, and rm meets only the empty mount
 * point. MNT_DETACH because a process of the sandbox may still hold it. */
static int unmount_at(const char *path)
{
    struct stat st, up;
    char parent[PATH_MAX + 4];

    snprintf(parent, sizeof(parent), "%s/..", path);
    if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode) || stat(parent, &up) < 0 ||
        st.st_dev == up.st_dev)
        return 0;
    return umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0 ? 0 : -errno;
}

int sbx_sandbox_remove_tree(const char *path)
{
    struct stat st;
    int status;
    pid_t pid;

    if (lstat(path, &st) < 0 && errno == ENOENT)
        return 0;
    if (unmount_at(path) < 0)
        return -EBUSY;
    pid = spawn_rm(path, NULL);
    if (pid < 0)
        return -errno;
    if (wait_blocking(pid, &status) < 0)
        return -errno;
    if (lstat(path, &st) == 0)
        return -ENOTEMPTY;
    return 0;
}


int sbx_sandbox_try_reap(int pidfd, int *status, int *killed)
{
    siginfo_t si;

    memset(&si, 0, sizeof(si));
    if (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG) < 0)
        return errno == EINTR ? 0 : -errno;
    if (si.si_pid == 0)
        return 0;
    *status = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
    if (killed)
        *killed = si.si_code != CLD_EXITED;
    return 1;
}

int sbx_sandbox_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Creates path (already checked) under root, with its missing parents. */
static int write_file(int root, const char *path, const char *content, int uid, int gid,
                      int replace)
{
    char comp[PATH_MAX];
    const char *c = path;
    int dir = root, rc = 0, fd;

    for (;;) {
        const char *e = strchr(c, '/');
        size_t n;
        int next;
        if (!e)
            break;
        n = (size_t)(e - c);
        memcpy(comp, c, n);
        comp[n] = '\0';
        if (mkdirat(dir, comp, 0755) == 0) {
            if (uid >= 0 && fchownat(dir, comp, (uid_t)uid, (gid_t)gid, AT_SYMLINK_NOFOLLOW) < 0) {
                rc = -errno;
                goto out;
            }
        } else if (errno != EEXIST) {
            rc = -errno;
            goto out;
        }
        next = openat(dir, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0) {
            rc = -errno;
            goto out;
        }
        if (dir != root)
            close(dir);
        dir = next;
        c = e + 1;
    }
    /* A session's workspace: the job's file replaces what is there (a
     * symlink the build made included: unlinked, never followed). */
    if (replace && unlinkat(dir, c, 0) < 0 && errno != ENOENT) {
        rc = -errno;
        goto out;
    }
    fd = openat(dir, c, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    rc = sbx_sandbox_write_all(fd, content, strlen(content));
    if (!rc && uid >= 0 && fchown(fd, (uid_t)uid, (gid_t)gid) < 0)
        rc = -errno;
    close(fd);
out:
    if (dir != root)
        close(dir);
    return rc;
}

/* The spec's files into the workspace dir. A clash or a name the
 * filesystem refuses is the job's own doing: -EINVAL, as for a path that
 * escapes. In a session (replace) a directory the build left where a file
 * goes is such a clash too. */
static int write_files(int dir, const sbx_sandbox_spec *spec, int uid, int gid, int replace,
                       char *err, size_t errlen)
{
    for (size_t i = 0; i < spec->nfiles; i++) {
        int rc = write_file(dir, spec->files[i].key,
                            spec->files[i].value ? spec->files[i].value : "", uid, gid, replace);
        if (rc) {
            int jobs = rc == -EEXIST || rc == -ENOTDIR || rc == -ELOOP || rc == -ENAMETOOLONG ||
                       (replace && rc == -EISDIR);
            snprintf(err, errlen, "files: %.128s: %s", spec->files[i].key,
                     rc == -ENAMETOOLONG ? "file name too long"
                     : !jobs             ? strerror(-rc)
                     : replace           ? "clashes with what the workspace holds"
                                         : "clashes with another file");
            return jobs ? -EINVAL : rc;
        }
    }
    return 0;
}

/* One tmpfs of disk_mb on root for the workspace and /tmp. Returns 0, 1
 * when mounting is not permitted here (the caller keeps a plain workspace),
 * or a negative errno. */
static int mount_disk(sbx_sandbox *s, const sbx_sandbox_spec *spec, char *err, size_t errlen)
{
    static int warned;
    char opts[128];
    int rc;

    snprintf(opts, sizeof(opts), "size=%llum,mode=0700,uid=%d,gid=%d",
             (unsigned long long)spec->disk_mb, spec->uid, spec->gid);
    if (mount("sbx-disk", s->root, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0) {
        if (errno == EPERM) {
            if (!warned++)
                sbx_warn("sandbox", "cannot mount a tmpfs per sandbox (%s): disk_mb limits "
                         "each file and /tmp, not the workspace as a whole", strerror(errno));
            return 1;
        }
        rc = -errno;
        snprintf(err, errlen, "workspace tmpfs %s: %s", s->root, strerror(errno));
        return rc;
    }
    s->mounted = 1;
    snprintf(s->ws, sizeof(s->ws), "%s/ws", s->root);
    snprintf(s->tmp, sizeof(s->tmp), "%s/tmp", s->root);
    /* mkdir's mode passes through the umask; chmod says it exactly. */
    if (mkdir(s->ws, 0700) < 0 || chown(s->ws, (uid_t)spec->uid, (gid_t)spec->gid) < 0 ||
        mkdir(s->tmp, 01777) < 0 || chmod(s->tmp, 01777) < 0 ||
        chown(s->tmp, (uid_t)spec->uid, (gid_t)spec->gid) < 0) {
        rc = -errno;
        snprintf(err, errlen, "workspace tmpfs %s: %s", s->root, strerror(errno));
        return rc;
    }
    return 0;
}

static int make_workspace(sbx_sandbox *s, const sbx_sandbox_spec *spec, char *err, size_t errlen)
{
    int dir = -1, rc = 0;

    if (mkdir(s->root, 0700) < 0) {
        rc = -errno;
        snprintf(err, errlen, "workspace %s: %s", s->root, strerror(errno));
        return rc;
    }
    s->ws_exists = 1;
    if (spec->disk_total && spec->disk_mb > 0 && spec->uid >= 0) {
        rc = mount_disk(s, spec, err, errlen);
        if (rc < 0)
            return rc;
        rc = 0;
    }
    dir = open(s->ws, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir < 0 || (s->uid >= 0 && fchown(dir, (uid_t)s->uid, (gid_t)s->gid) < 0)) {
        rc = -errno;
        snprintf(err, errlen, "workspace %s: %s", s->ws, strerror(errno));
        goto out;
    }
    rc = write_files(dir, spec, s->uid, s->gid, 0, err, errlen);
out:
    if (dir >= 0)
        close(dir);
    return rc;
}

/* ---- bwrap's options ---- */

/* bwrap's --args: NUL-terminated options in one sbx_buf capped at
 * SB_ARGS_MAX. The first error sticks, so building the list needs no check
 * per option; the spawn looks once. */
typedef struct abuf {
    sbx_buf b;
    int err;
} abuf;

static void add(abuf *b, const char *s)
{
    if (!b->err)
        b->err = sbx_buf_add(&b->b, s, strlen(s) + 1);
}

static void add2(abuf *b, const char *a, const char *c) { add(b, a); add(b, c); }
static void add3(abuf *b, const char *a, const char *c, const char *d)
{
    add(b, a);
    add(b, c);
    add(b, d);
}

/* Read-only /etc entries a build commonly needs; everything else of the
 * host's /etc stays out. */
static const char *const etc_always[] = {
    "/etc/alternatives", /* Debian's cc, awk, editor... are symlinks through it */
    "/etc/ld.so.cache", "/etc/hosts", "/etc/localtime",
};
/* resolv.conf comes from netns.c: the NAT's resolver, not the host's. */
static const char *const etc_network[] = {
    "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/ssl",
    "/etc/ca-certificates", "/etc/ca-certificates.conf",
};

/* /bin, /lib... are symlinks into /usr on merged-/usr systems (Debian 12):
 * recreate them; bind them read-only where they are real directories. */
static void add_root_dirs(abuf *b)
{
    static const char *const dirs[] = {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        struct stat st;
        char target[PATH_MAX];
        ssize_t n;
        if (lstat(dirs[i], &st) < 0)
            continue;
        if (S_ISLNK(st.st_mode)) {
            n = readlink(dirs[i], target, sizeof(target) - 1);
            if (n <= 0)
                continue;
            target[n] = '\0';
            add3(b, "--symlink", target, dirs[i]);
        } else if (S_ISDIR(st.st_mode)) {
            add3(b, "--ro-bind", dirs[i], dirs[i]);
        }
    }
}

static void build_options(abuf *b, const sbx_sandbox_spec *spec, const char *ws, const char *tmp)
{
    char size[32];
    int tmpfs_mb;

    add2(b, "--unshare-all", "--unshare-user");
    add(b, "--disable-userns"); /* no nested user namespaces: less kernel surface, and
                                 * never CAP_NET_ADMIN over the network namespace (netns.c) */
    add2(b, "--seccomp", "7");
    add3(b, "--die-with-parent", "--new-session", "--hostname");
    add(b, "sbx");
    add3(b, "--ro-bind", "/usr", "/usr");
    add_root_dirs(b);
    add2(b, "--proc", "/proc");
    add2(b, "--dev", "/dev");
    /* tmpfs lives in RAM, which RLIMIT_AS does not see: cap it by both. */
    tmpfs_mb = spec->disk_mb;
    if (spec->memory_mb > 0 && (tmpfs_mb <= 0 || spec->memory_mb < tmpfs_mb))
        tmpfs_mb = spec->memory_mb;
    snprintf(size, sizeof(size), "%llu", (unsigned long long)tmpfs_mb << 20);
    if (tmpfs_mb > 0)
        add2(b, "--size", size);
    add2(b, "--tmpfs", "/dev/shm");
    if (tmp[0]) {
        add3(b, "--bind", tmp, "/tmp");
    } else {
        if (tmpfs_mb > 0)
            add2(b, "--size", size);
        add2(b, "--tmpfs", "/tmp");
    }
    add3(b, "--bind", ws, "/workspace");
    add2(b, "--chdir", "/workspace");
    add3(b, "--perms", "0444", "--ro-bind-data");
    add2(b, "4", "/etc/passwd");
    add3(b, "--perms", "0444", "--ro-bind-data");
    add2(b, "5", "/etc/group");
    for (size_t i = 0; i < sizeof(etc_always) / sizeof(etc_always[0]); i++)
        add3(b, "--ro-bind-try", etc_always[i], etc_always[i]);
    if (spec->network) {
        for (size_t i = 0; i < sizeof(etc_network) / sizeof(etc_network[0]); i++)
            add3(b, "--ro-bind-try", etc_network[i], etc_network[i]);
        for (size_t i = 0; sbx__netns_bwrap_args[i]; i++)
            add(b, sbx__netns_bwrap_args[i]);
    }
    add2(b, "--remount-ro", "/dev");
    add2(b, "--remount-ro", "/");
    add(b, "--clearenv");
    add3(b, "--setenv", "PATH", SB_PATH);
    add3(b, "--setenv", "HOME", "/workspace");
    for (size_t i = 0; i < spec->nenv; i++)
        add3(b, "--setenv", spec->env[i].key, spec->env[i].value ? spec->env[i].value : "");
}

static int memfd_with(const char *name, const char *data, size_t len)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (sbx_sandbox_write_all(fd, data, len) < 0 || lseek(fd, 0, SEEK_SET) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* ---- the child between fork and exec: async-signal-safe calls only ---- */

enum { STAGE_SIGNALS = 1, STAGE_FDS, STAGE_LIMITS, STAGE_IDS, STAGE_EXEC, STAGE_CGROUP,
       STAGE_NS, STAGE_CAPS, STAGE_N };
static const char *const stage_names[] = {"", "signals", "fds", "rlimits", "uid/gid", "exec",
                                          "cgroup", "setns", "capabilities/seccomp"};

/* out_w, args, passwd, group, mark_w, seccomp -> fds 1(+2), 3, 4, 5, 6, 7;
 * then netns's SBX_NETNS_NFDS at SBX_NETNS_FD_INFO (8) on. */
#define SB_CHILD_FDS (6 + SBX_NETNS_NFDS)
_Static_assert(SBX_NETNS_FD_INFO == 8, "netns fds follow the seccomp fd (7)");

typedef struct child_plan {
    const char *bwrap;
    char **argv;
    int src[SB_CHILD_FDS];
    int nsrc;
    int stderr_src;         /* stderr's pipe, or -1: stderr shares src[0] */
    int err_w;
    int uid, gid;
    int memory_mb, pids, cpu_s, disk_mb;
    const sbx_cgroup *cg;
    pid_t parent;
} child_plan;

typedef struct child_err {
    int stage;
    int err;
} child_err;

static _Noreturn void child_fail(int err_w, int stage)
{
    child_err ce = {stage, errno};
    (void)!write(err_w, &ce, sizeof(ce));
    _exit(127);
}

static int set_limit(int res, rlim_t soft, rlim_t hard)
{
    struct rlimit rl = {soft, hard};
    return setrlimit(res, &rl);
}

/* The start of both children (a sandbox's bwrap, a command entering a
 * session): into the cgroup first, so all the child starts is inside;
 * default signal handling, whatever the worker set up; a session of its own. */
static void child_reset(const sbx_cgroup *cg, int err_w)
{
    struct sigaction sa;
    sigset_t none;

    if (cg) {
        int rc = sbx_cgroup_join(cg);
        if (rc < 0) {
            errno = -rc;
            child_fail(err_w, STAGE_CGROUP);
        }
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &sa, NULL);
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0 || setsid() < 0)
        child_fail(err_w, STAGE_SIGNALS);
}

/* Per-process limits (0: none) then the uid, which both children drop to
 * the same way; nproc is what the caller counts for its pids. */
static void child_limit_and_drop(int memory_mb, int nproc, int cpu_s, int disk_mb, int uid,
                                 int gid, int err_w)
{
    rlim_t mb = 1024 * 1024;

    if (set_limit(RLIMIT_CORE, 0, 0) < 0 ||
        (memory_mb > 0 &&
         set_limit(RLIMIT_AS, (rlim_t)memory_mb * mb, (rlim_t)memory_mb * mb) < 0) ||
        (nproc > 0 && set_limit(RLIMIT_NPROC, (rlim_t)nproc, (rlim_t)nproc) < 0) ||
        (cpu_s > 0 &&
         set_limit(RLIMIT_CPU, (rlim_t)cpu_s, (rlim_t)cpu_s + SB_CPU_HARD_SLACK_S) < 0) ||
        (disk_mb > 0 && set_limit(RLIMIT_FSIZE, (rlim_t)disk_mb * mb, (rlim_t)disk_mb * mb) < 0))
        child_fail(err_w, STAGE_LIMITS);
    if (uid >= 0 &&
        (setgroups(0, NULL) < 0 || setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) < 0 ||
         setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0))
        child_fail(err_w, STAGE_IDS);
}

static _Noreturn void child_exec(const child_plan *cp)
{
    static const int target[SB_CHILD_FDS] = {1, 3, 4, 5, 6, 7, 8, 9, 10};
    char *envp[] = {NULL};
    int hi[SB_CHILD_FDS], err_w, fd, errfd;

    /* First, as the cgroup's fds may have any number the moves below would
     * clobber. */
    child_reset(cp->cg, cp->err_w);

    /* Move everything above the targets first, so no dup2 clobbers a source. */
    err_w = fcntl(cp->err_w, F_DUPFD_CLOEXEC, 10);
    if (err_w < 0)
        child_fail(cp->err_w, STAGE_FDS);
    for (int i = 0; i < cp->nsrc; i++) {
        hi[i] = fcntl(cp->src[i], F_DUPFD_CLOEXEC, 10);
        if (hi[i] < 0)
            child_fail(err_w, STAGE_FDS);
    }
    errfd = cp->stderr_src >= 0 ? fcntl(cp->stderr_src, F_DUPFD_CLOEXEC, 10) : hi[0];
    fd = open("/dev/null", O_RDONLY);
    if (errfd < 0 || fd < 0 || dup2(fd, 0) < 0 || dup2(errfd, 2) < 0)
        child_fail(err_w, STAGE_FDS);
    for (int i = 0; i < cp->nsrc; i++)
        if (dup2(hi[i], target[i]) < 0)
            child_fail(err_w, STAGE_FDS);
    if (close_range((unsigned)target[cp->nsrc - 1] + 1, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        child_fail(err_w, STAGE_FDS);

    child_limit_and_drop(cp->memory_mb, cp->pids > 0 ? cp->pids + SB_BWRAP_PROCS : 0, cp->cpu_s,
                         cp->disk_mb, cp->uid, cp->gid, err_w);
    /* After the uid change, which clears it. If the worker died before this
     * line, nobody would kill us: check. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != cp->parent)
        child_fail(err_w, STAGE_IDS);
    if (chdir("/") < 0)
        child_fail(err_w, STAGE_EXEC);
    execve(cp->bwrap, cp->argv, envp);
    child_fail(err_w, STAGE_EXEC);
}

/* ---- loop side ---- */

/* Finds bwrap's pid 1 (its only child) and opens a pidfd on it, checking
 * after the open that it is still bwrap's child, so a recycled pid is never
 * signalled. Returns the pidfd or -1. */
static int open_init(pid_t bwrap, pid_t *init_out)
{
    char path[64], buf[512];
    const char *paren;
    ssize_t n;
    pid_t init;
    int fd, pfd, ppid;

    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)bwrap, (int)bwrap);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    init = (pid_t)atoi(buf);
    if (init <= 0)
        return -1;
    pfd = pidfd_open_(init);
    if (pfd < 0)
        return -1;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)init);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n > 0) {
        buf[n] = '\0';
        paren = strrchr(buf, ')'); /* the name may contain anything but ends there */
        if (paren && sscanf(paren + 1, " %*c %d", &ppid) == 1 && ppid == (int)bwrap) {
            *init_out = init;
            return pfd;
        }
    }
    close(pfd);
    return -1;
}

/* SIGKILL, in the order that orphans nothing: bwrap's pid 1 first (the
 * kernel then kills its whole pid namespace, and bwrap reaps it and exits by
 * itself); bwrap and every process of the uid only if that did not work
 * within SB_KILL_WAIT_MS. Killing bwrap first would leave its pid 1 to the
 * host's init, and a zombie there still counts against the uid's
 * RLIMIT_NPROC until that init reaps it (container inits often never do). */
static void kill_all(sbx_sandbox *s)
{
    /* A session run's processes live in the session's pid namespace, so
     * they die with it; its own process outside follows, else SIGKILL. */
    if (s->session) {
        if (!s->killed) {
            s->killed = 1;
            session_kill_now(s->session);
            if (s->pid > 0 && !s->reaped) {
                sbx_timer_start(s->loop, &s->kill_t, SB_KILL_WAIT_MS);
                return;
            }
        }
        if (s->pid > 0 && !s->reaped && s->pidfd >= 0)
            pidfd_kill(s->pidfd, SIGKILL);
        return;
    }
    if (s->pid > 0 && !s->reaped && !s->killed) {
        pid_t init;
        int fd = open_init(s->pid, &init);
        s->killed = 1;
        if (fd >= 0) {
            int sent = pidfd_kill(fd, SIGKILL) == 0;
            close(fd);
            if (sent) {
                sbx_timer_start(s->loop, &s->kill_t, SB_KILL_WAIT_MS);
                return;
            }
        }
    }
    s->killed = 1;
    /* Not reaped yet, so the pid cannot have been reused. */
    if (s->pid > 0 && !s->reaped && (s->pidfd < 0 || pidfd_kill(s->pidfd, SIGKILL) < 0))
        kill(s->pid, SIGKILL);
    if (s->uid >= 0)
        kill_uid((uid_t)s->uid, SIGKILL);
}

static void close_output(sbx_sandbox *s)
{
    sbx_io_stop(&s->out_io);
    close_fd(&s->out_fd);
    sbx_io_stop(&s->err_io);
    close_fd(&s->err_fd);
}

/* One pipe at EOF (or broken); the output is over when both are. */
static void close_stream(sbx_sandbox *s, int err)
{
    sbx_io_stop(err ? &s->err_io : &s->out_io);
    close_fd(err ? &s->err_fd : &s->out_fd);
}

static int output_open(const sbx_sandbox *s) { return s->out_fd >= 0 || s->err_fd >= 0; }

static void advance(sbx_sandbox *s);

static void on_output(sbx_io *io, int events)
{
    sbx_sandbox *s = io->data;
    int err = io == &s->err_io;
    char buf[SB_READ_CHUNK];
    (void)events;

    for (int i = 0; i < SB_READS_PER_TURN; i++) {
        ssize_t n = read(err ? s->err_fd : s->out_fd, buf, sizeof(buf));
        if (n > 0) {
            s->out_bytes += (uint64_t)n;
            sbx_tail_add(&s->tail, buf, (size_t)n);
            if (s->output)
                s->output(s->output_arg, err ? 2 : 1, buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        close_stream(s, err); /* EOF, or an error that will not go away */
        advance(s);
        return;
    }
}

static void finish(sbx_sandbox *s)
{
    set_state(s, SB_DONE);
    sbx_timer_start(s->loop, &s->done_t, 0);
}

static void on_rm_exit(sbx_io *io, int events)
{
    sbx_sandbox *s = io->data;
    struct stat st;
    int status;
    (void)events;

    if (sbx_sandbox_try_reap(s->rm_pidfd, &status, NULL) == 0)
        return; /* not yet */
    sbx_io_stop(&s->rm_io);
    close_fd(&s->rm_pidfd);
    s->rm_pid = 0;
    if (s->mounted) {
        /* Emptied; what is left open (the agent's log) stays readable. */
        if (umount2(s->root, MNT_DETACH | UMOUNT_NOFOLLOW) == 0)
            s->mounted = 0;
        else
            sbx_warn("sandbox", "workspace tmpfs not unmounted ws=%s: %s", s->root, strerror(errno));
        rmdir(s->root);
    }
    if (lstat(s->root, &st) == 0) {
        snprintf(s->error, sizeof(s->error), "workspace %.200s not removed", s->root);
        sbx_warn("sandbox", "workspace not removed ws=%s", s->root);
    } else {
        s->ws_exists = 0;
    }
    finish(s);
}

/* The cgroup, once no process of the sandbox is left: what the limits did
 * first (a full disk_total tmpfs too), then it goes. The tmpfs stays
 * mounted until start_cleaning's rm has emptied it (cgroup.c: its charges
 * do not keep the cgroup alive). */
static void release_limits(sbx_sandbox *s)
{
    sbx_sandbox *h = s->session ? s->session->holder : NULL;

    if (h) {
        /* A session run: what the session's limits did since it began. */
        struct statfs fs;
        if (h->cg) {
            sbx_cgroup_usage u;
            sbx_cgroup_usage_of(h->cg, &u);
            s->oom_killed = u.oom_kills > s->oom_base;
        }
        if (h->mounted && s->exit_code != 0 && statfs(h->root, &fs) == 0 &&
            (unsigned long long)fs.f_bavail * (unsigned long long)fs.f_bsize < SB_DISK_FULL_SLACK)
            s->disk_full = 1;
    }
    if (s->cg) {
        sbx_cgroup_usage u;
        sbx_cgroup_usage_of(s->cg, &u);
        s->oom_killed = u.oom_kills > 0;
        sbx_debug("sandbox", "cgroup pid=%d memory_peak=%llu oom_kills=%llu", (int)s->pid,
                  (unsigned long long)u.memory_peak, (unsigned long long)u.oom_kills);
    }
    if (s->mounted) {
        struct statfs fs;
        if (s->exit_code != 0 && statfs(s->root, &fs) == 0 &&
            (unsigned long long)fs.f_bavail * (unsigned long long)fs.f_bsize < SB_DISK_FULL_SLACK)
            s->disk_full = 1;
    }
    if (s->oom_killed) {
        snprintf(s->limit, sizeof(s->limit),
                 "memory limit of %d MB reached: killed by the OOM killer", s->memory_mb);
        s->lost = 0; /* bwrap killed by it: the build's doing, not the host's */
    } else if (s->disk_full) {
        snprintf(s->limit, sizeof(s->limit), "disk limit of %d MB reached", s->disk_mb);
    }
    if (sbx_cgroup_free(s->cg) != 0 && !s->error[0])
        snprintf(s->error, sizeof(s->error), "the sandbox's cgroup was not removed");
    s->cg = NULL;
}

static void start_cleaning(sbx_sandbox *s)
{
    set_state(s, SB_CLEANING);
    release_limits(s);
    if (!s->ws_exists) {
        finish(s);
        return;
    }
    /* A disk_total tmpfs is emptied while mounted and detached after
     * (on_rm_exit): detached first, a descriptor still open into it (the
     * agent keeps the build's log) would pin the whole tree in RAM. */
    s->rm_pid = s->mounted ? spawn_rm(s->ws, s->tmp) : spawn_rm(s->root, NULL);
    if (s->rm_pid > 0)
        s->rm_pidfd = pidfd_open_(s->rm_pid);
    if (s->rm_pid <= 0 || s->rm_pidfd < 0) {
        /* No child to wait for: remove inline, which blocks the loop. */
        int status;
        if (s->rm_pid > 0)
            wait_blocking(s->rm_pid, &status);
        s->rm_pid = 0;
        if (sbx_sandbox_remove_tree(s->root) == 0)
            s->ws_exists = s->mounted = 0;
        else
            snprintf(s->error, sizeof(s->error), "workspace %.200s not removed", s->root);
        finish(s);
        return;
    }
    sbx_io_init(&s->rm_io, s->rm_pidfd, on_rm_exit, s);
    sbx_io_set(s->loop, &s->rm_io, SBX_READ);
}

/* REAPING: done when output hit EOF (or the drain deadline passed) and no
 * process of the uid is left (or the reap deadline passed). */
static void advance(sbx_sandbox *s)
{
    uint64_t now = sbx_now_ms();

    if (s->state != SB_REAPING)
        return;
    if (output_open(s) && now >= s->drain_deadline_ms) {
        if (s->session) {
            session_adopt_output(s->session, s); /* a background process holds it */
        } else {
            sbx_warn("sandbox", "output still open %d ms after exit, cut pid=%d", SB_DRAIN_MS,
                     (int)s->pid);
            close_output(s);
        }
    }
    if (s->uid >= 0 && !s->uid_clear) {
        int n = scan_uid((uid_t)s->uid, 1, 0);
        if (n == 0) {
            s->uid_clear = 1;
        } else if (now >= s->reap_deadline_ms) {
            snprintf(s->error, sizeof(s->error), "%d processes of uid %d survived SIGKILL", n,
                     s->uid);
            sbx_warn("sandbox", "processes survived SIGKILL uid=%d count=%d", s->uid, n);
            s->uid_clear = 1;
        } else if (now >= s->t_exit_ms + SB_LINGER_MS) {
            kill_uid((uid_t)s->uid, SIGKILL);
        }
    }
    if (output_open(s) || (s->uid >= 0 && !s->uid_clear) || !sbx__netns_idle(s->ns)) {
        if (!sbx_timer_active(&s->reap_t))
            sbx_timer_start(s->loop, &s->reap_t, SB_POLL_MS);
        return;
    }
    sbx_timer_stop(s->loop, &s->reap_t);
    if (s->mark_fd >= 0) {
        char c;
        sbx_io_stop(&s->mark_io);
        s->ran = read(s->mark_fd, &c, 1) == 1;
        close_fd(&s->mark_fd);
    }
    start_cleaning(s);
}

static void on_reap_timer(sbx_timer *t) { advance(t->data); }

static void on_pid_exit(sbx_io *io, int events)
{
    sbx_sandbox *s = io->data;
    int status, killed, rc;
    (void)events;

    rc = sbx_sandbox_try_reap(s->pidfd, &status, &killed);
    if (rc == 0)
        return; /* not yet */
    if (rc == -ECHILD && s->session && (s->killed || !sbx_sandbox_session_alive(s->session))) {
        /* The killed session's uid sweep reaped our run's process first:
         * it died with the session. */
        s->exit_code = 128 + SIGKILL;
    } else if (rc < 0) {
        sbx_warn("sandbox", "waitid failed pid=%d: %s", (int)s->pid, strerror(-rc));
        s->exit_code = -1;
    } else {
        s->exit_code = status;
        s->lost = killed && !s->end_set;
    }
    s->reaped = 1;
    s->t_exit_ms = sbx_now_ms();
    if (s->sv) {
        /* It fired, or would have: bwrap died at or after the deadline. */
        int late = s->lost && s->t_exit_ms >= sbx_supervisor_until(s->sv);
        s->expired = sbx_supervisor_stop(s->sv) || late;
        s->sv = NULL;
        if (s->expired) {
            s->lost = 0;
            if (!s->end_set)
                snprintf(s->error, sizeof(s->error), "killed by its supervisor: the owner's "
                         "trust in its lease ran out");
        }
    }
    /* A session run canceled (or timed out) that exited by itself within its
     * grace: what it left in the background is the job's too, and only the
     * session's end is sure to take it. */
    if (s->session && s->end_set && !s->killed) {
        s->killed = 1;
        session_kill_now(s->session);
    }
    sbx__netns_stop(s->ns); /* the NAT has nothing left to carry */
    sbx_io_stop(&s->pid_io);
    close_fd(&s->pidfd);
    sbx_timer_stop(s->loop, &s->wall_t);
    sbx_timer_stop(s->loop, &s->kill_t);
    set_state(s, SB_REAPING);
    s->drain_deadline_ms = s->t_exit_ms + (s->session ? SS_DRAIN_MS : SB_DRAIN_MS);
    s->reap_deadline_ms = s->t_exit_ms + SB_REAP_MS;
    /* bwrap's pid namespace is gone or going (its pid 1 may still be
     * exiting); advance() waits for the uid to empty and sweeps it if
     * anything lingers. */
    advance(s);
}

/* netns.c: setup failed (the command never ran: kill, and report why), or
 * its last helper has been reaped (REAPING waits for that). */
/* Takes the read ends of a started child's pipes (output, stderr or -1,
 * mark) and watches them and its pidfd: a sandbox's bwrap and a session's
 * run alike. Returns 0 or the loop's error; the caller ends the child. */
static int watch_child(sbx_sandbox *s, int outp[2], int serrp[2], int markp[2])
{
    int rc;

    s->out_fd = outp[0];
    outp[0] = -1;
    s->err_fd = serrp[0];
    serrp[0] = -1;
    s->mark_fd = markp[0];
    markp[0] = -1;
    fcntl(s->out_fd, F_SETFL, fcntl(s->out_fd, F_GETFL) | O_NONBLOCK);
    fcntl(s->mark_fd, F_SETFL, fcntl(s->mark_fd, F_GETFL) | O_NONBLOCK);
    sbx_io_init(&s->pid_io, s->pidfd, on_pid_exit, s);
    sbx_io_init(&s->out_io, s->out_fd, on_output, s);
    if (s->err_fd >= 0) {
        fcntl(s->err_fd, F_SETFL, fcntl(s->err_fd, F_GETFL) | O_NONBLOCK);
        sbx_io_init(&s->err_io, s->err_fd, on_output, s);
    }
    if ((rc = sbx_io_set(s->loop, &s->pid_io, SBX_READ)) != 0 ||
        (rc = sbx_io_set(s->loop, &s->out_io, SBX_READ)) != 0 ||
        (s->err_fd >= 0 && (rc = sbx_io_set(s->loop, &s->err_io, SBX_READ)) != 0))
        return rc;
    return 0;
}

static void on_netns(void *arg, sbx_netns_event ev, const char *why)
{
    sbx_sandbox *s = arg;

    if (ev == SBX_NETNS_IDLE) {
        advance(s);
        return;
    }
    if (s->state != SB_RUNNING)
        return;
    snprintf(s->error, sizeof(s->error), "network: %.200s", why);
    kill_all(s);
}

static void on_wall(sbx_timer *t)
{
    sbx_sandbox *s = t->data;
    if (!s->end_set) {
        s->end = SBX_SANDBOX_TIMED_OUT;
        s->end_set = 1;
    }
    kill_all(s);
}

static void on_grace(sbx_timer *t) { kill_all(t->data); }

static void on_start_timer(sbx_timer *t)
{
    sbx_sandbox *s = t->data;
    s->started = 1;
    s->on_start(s->arg, s);
}

static void on_done(sbx_timer *t)
{
    sbx_sandbox *s = t->data;
    sbx_sandbox_status st;

    if (!s->started) {
        /* on_start first; it may free s, so on_exit waits a turn. */
        sbx_timer_stop(s->loop, &s->start_t);
        sbx_timer_start(s->loop, &s->done_t, 0);
        on_start_timer(&s->start_t);
        return;
    }
    if (s->session) {
        /* The session takes its next run from inside on_exit. */
        sbx_sandbox_session *ss = s->session;
        s->session = NULL;
        session_run_detached(ss, s);
    }
    memset(&st, 0, sizeof(st));
    st.end = s->end_set ? s->end : SBX_SANDBOX_EXITED;
    st.ran = s->ran;
    st.lost = s->lost;
    st.exit_code = s->exit_code;
    st.tail = sbx_tail_str(&s->tail);
    st.tail_len = s->tail.len;
    st.out_bytes = s->out_bytes;
    st.duration_ms = s->t_exit_ms - s->t0_ms;
    st.error = s->error;
    st.oom_killed = s->oom_killed;
    st.expired = s->expired;
    st.disk_full = s->disk_full;
    st.limit = s->limit;
    s->on_exit(s->arg, s, &st);
}

void sbx_sandbox_cancel(sbx_sandbox *s)
{
    pid_t init;
    int fd;

    if (!s->end_set) {
        s->end = SBX_SANDBOX_CANCELED;
        s->end_set = 1;
    }
    if (s->state != SB_RUNNING || s->killed || sbx_timer_active(&s->kill_t))
        return;
    if (s->session) {
        /* Its waiting parent relays SIGTERM to the command's group. */
        if (s->grace_ms > 0 && s->pid > 0 && !s->reaped && pidfd_kill(s->pidfd, SIGTERM) == 0) {
            sbx_timer_start(s->loop, &s->kill_t, (uint64_t)s->grace_ms);
            return;
        }
        kill_all(s);
        return;
    }
    /* With --new-session the command is in a session and process group whose
     * id is bwrap's pid 1, which ignores SIGTERM as a namespace init without
     * a handler does. A pid cannot be reused while a group carries its id. */
    fd = s->grace_ms > 0 ? open_init(s->pid, &init) : -1;
    if (fd >= 0) {
        int sent = kill(-init, SIGTERM) == 0;
        close(fd);
        if (sent) {
            sbx_timer_start(s->loop, &s->kill_t, (uint64_t)s->grace_ms);
            return;
        }
    }
    kill_all(s);
}

/* ---- spawn / free ---- */

/* The cgroups of one slot's sandboxes live under one parent, named by a
 * hash of work_dir (FNV-1a 64) and the slot's uid: unique on the host (two
 * workers may share a work_dir, never a uid), bounded in length, the same
 * again after a restart. Without a uid of its own a sandbox's parent is
 * named by our pid: nothing else may sweep it. */
static void cgroup_group(const char *work_dir, int uid, char out[48])
{
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *c = (const unsigned char *)work_dir; *c; c++)
        h = (h ^ *c) * 1099511628211ULL;
    if (uid >= 0)
        snprintf(out, 48, "w%016llx-u%d", (unsigned long long)h, uid);
    else
        snprintf(out, 48, "w%016llx-p%d", (unsigned long long)h, (int)getpid());
}

void sbx_sandbox_sweep_cgroups(const char *work_dir, int uid)
{
    char group[48];
    cgroup_group(work_dir, uid, group);
    sbx_cgroup_sweep(group);
}

static int make_cgroup(sbx_sandbox *s, const sbx_sandbox_spec *spec, int extra, char *err,
                       size_t errlen)
{
    static int warned;
    sbx_cgroup_limits lim;
    char group[48];
    int rc;

    if (!sbx_cgroup_mode()) {
        if (!warned++)
            sbx_warn("sandbox", "no writable cgroup hierarchy (not root?): memory, CPU and pids "
                     "are limited per process (rlimits), not per sandbox");
        return 0;
    }
    memset(&lim, 0, sizeof(lim));
    lim.memory_mb = spec->memory_mb;
    lim.cpus = spec->cpus;
    lim.pids = spec->pids > 0 ? spec->pids + SB_BWRAP_PROCS + extra : 0;
    cgroup_group(spec->work_dir, spec->uid, group);
    /* The slot's uid was just swept: anything left in its group is a
     * killed predecessor's, so callers need no start-up call. */
    if (spec->uid >= 0)
        sbx_cgroup_sweep(group);
    rc = sbx_cgroup_new(group, spec->name, &lim, &s->cg, err, errlen);
    return rc == -ENOTSUP ? 0 : rc;
}

/* What a run needs of its spec, checked alike by a one-shot sandbox and
 * a run in a session: a command, env names, files inside the workspace. */
static int check_command(const sbx_sandbox_spec *spec, char *err, size_t errlen)
{
    if (!(spec->argv && spec->argv[0] && spec->argv[0][0]) && !spec->script) {
        snprintf(err, errlen, "nothing to run: need argv or script");
        return -EINVAL;
    }
    for (size_t i = 0; i < spec->nenv; i++) {
        const char *k = spec->env[i].key;
        if (!k || !k[0] || strchr(k, '=')) {
            snprintf(err, errlen, "env: invalid variable name");
            return -EINVAL;
        }
    }
    for (size_t i = 0; i < spec->nfiles; i++) {
        if (!spec->files[i].key || !sbx_job_path_ok(spec->files[i].key)) {
            snprintf(err, errlen, "files: path %.128s escapes the workspace",
                     spec->files[i].key ? spec->files[i].key : "(null)");
            return -EINVAL;
        }
    }
    return 0;
}

static int check_spec(const sbx_sandbox_spec *spec, char *err, size_t errlen)
{
    if (!spec->bwrap || spec->bwrap[0] != '/') {
        snprintf(err, errlen, "bwrap: need an absolute path");
        return -EINVAL;
    }
    if (!spec->work_dir || spec->work_dir[0] != '/') {
        snprintf(err, errlen, "work_dir: need an absolute path");
        return -EINVAL;
    }
    if (!spec->name || !spec->name[0] || strchr(spec->name, '/') || !strcmp(spec->name, ".") ||
        !strcmp(spec->name, "..")) {
        snprintf(err, errlen, "workspace name: need one path component");
        return -EINVAL;
    }
    if ((spec->uid >= 0) != (spec->gid >= 0)) {
        snprintf(err, errlen, "uid and gid: set both or neither");
        return -EINVAL;
    }
    return check_command(spec, err, errlen);
}

/* argv of bwrap: options come from fd 3; the wrapper then the command. */
static char **build_argv(const sbx_sandbox_spec *spec)
{
    static char *const head[] = {"bwrap", "--args", "3", "--", "/bin/sh", "-c", SB_WRAPPER,
                                 "sbx-start"};
    size_t nhead = sizeof(head) / sizeof(head[0]), ncmd = 0;
    char **argv;

    if (spec->argv && spec->argv[0])
        while (spec->argv[ncmd])
            ncmd++;
    else
        ncmd = 3;
    argv = calloc(nhead + ncmd + 1, sizeof(*argv));
    if (!argv)
        return NULL;
    memcpy(argv, head, sizeof(head));
    if (spec->argv && spec->argv[0]) {
        for (size_t i = 0; i < ncmd; i++)
            argv[nhead + i] = spec->argv[i];
    } else {
        argv[nhead] = "/bin/sh";
        argv[nhead + 1] = "-c";
        argv[nhead + 2] = (char *)spec->script;
    }
    return argv;
}

static void init_handles(sbx_sandbox *s)
{
    s->pidfd = s->out_fd = s->err_fd = s->mark_fd = s->rm_pidfd = -1;
    sbx_timer_init(&s->start_t, on_start_timer, s);
    sbx_timer_init(&s->wall_t, on_wall, s);
    sbx_timer_init(&s->kill_t, on_grace, s);
    sbx_timer_init(&s->reap_t, on_reap_timer, s);
    sbx_timer_init(&s->done_t, on_done, s);
    sbx_io_init(&s->mark_io, -1, on_mark, s);
    sbx_tail_init(&s->tail, s->tail_mem, SBX_SANDBOX_TAIL_MAX);
}

/* A one-off sandbox, or (holds set) a session's holder. */
static int spawn_bwrap(sbx_loop *loop, const sbx_sandbox_spec *spec, sbx_sandbox_session *holds,
                       sbx_sandbox_start_cb on_start, sbx_sandbox_exit_cb on_exit, void *arg,
                       sbx_sandbox **out, char *err, size_t errlen)
{
    sbx_sandbox *s = NULL;
    abuf opts = {.err = 0};
    child_plan cp;
    child_err ce;
    char pw[512], gr[256];
    char **argv = NULL;
    int memfds[4] = {-1, -1, -1, -1}, outp[2] = {-1, -1}, markp[2] = {-1, -1}, errp[2] = {-1, -1};
    int serrp[2] = {-1, -1};
    int rc, in_uid, in_gid;
    ssize_t n;

    if (err && errlen)
        err[0] = '\0';
    rc = check_spec(spec, err, errlen);
    if (rc)
        goto out;
    if (spec->uid >= 0) {
        rc = sbx_sandbox_sweep_uid((uid_t)spec->uid, SB_CLAIM_MS);
        if (rc) {
            snprintf(err, errlen, "processes of uid %d survive SIGKILL", spec->uid);
            rc = -EBUSY;
            goto out;
        }
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        rc = -ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    init_handles(s);
    s->loop = loop;
    s->on_start = on_start;
    s->on_exit = on_exit;
    s->arg = arg;
    s->uid = spec->uid;
    s->gid = spec->gid;
    s->grace_ms = spec->kill_grace_ms;
    s->memory_mb = spec->memory_mb;
    s->disk_mb = spec->disk_mb;
    s->holds = holds;
    if ((size_t)snprintf(s->root, sizeof(s->root), "%s/%s", spec->work_dir, spec->name) >=
        sizeof(s->root)) {
        rc = -ENAMETOOLONG;
        snprintf(err, errlen, "workspace path too long");
        goto out;
    }
    snprintf(s->ws, sizeof(s->ws), "%s", s->root);

    /* 0. The cgroup, before anything is charged to it. */
    rc = make_cgroup(s, spec, holds ? SS_EXTRA_PROCS : 0, err, errlen);
    if (rc)
        goto out;

    /* 1. The workspace, with the job's files. */
    rc = make_workspace(s, spec, err, errlen);
    if (rc)
        goto out;

    /* 2. What bwrap reads: options on fd 3, passwd and group on fds 4, 5. */
    in_uid = spec->uid >= 0 ? spec->uid : (int)geteuid();
    in_gid = spec->gid >= 0 ? spec->gid : (int)getegid();
    snprintf(pw, sizeof(pw),
             "root:x:0:0:root:/root:/usr/sbin/nologin\n"
             "build:x:%d:%d:sbx build:/workspace:/bin/sh\n"
             "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
             in_uid, in_gid);
    snprintf(gr, sizeof(gr), "root:x:0:\nbuild:x:%d:\nnogroup:x:65534:\n", in_gid);
    sbx_buf_init(&opts.b, SB_ARGS_MAX);
    build_options(&opts, spec, s->ws, s->tmp);
    argv = build_argv(spec);
    if (opts.err || !argv) {
        rc = opts.err ? opts.err : -ENOMEM;
        snprintf(err, errlen, "bwrap options: %s", strerror(-rc));
        goto out;
    }
    if (spec->network) {
        sbx_netns_spec ns = {.host = spec->net, .allow = spec->egress, .uid = spec->uid,
                             .gid = spec->gid};
        rc = sbx__netns_new(loop, &ns, on_netns, s, &s->ns, err, errlen);
        if (rc)
            goto out;
    }
    memfds[0] = memfd_with("sbx-args", opts.b.p, opts.b.len);
    memfds[1] = memfd_with("sbx-passwd", pw, strlen(pw));
    memfds[2] = memfd_with("sbx-group", gr, strlen(gr));
    memfds[3] = sbx_seccomp_fd(); /* a fresh one: bwrap reads it to EOF */
    for (int i = 0; i < 4; i++) {
        if (memfds[i] < 0) {
            rc = memfds[i];
            snprintf(err, errlen, "%s: %s", i == 3 ? "seccomp filter" : "memfd", strerror(-rc));
            goto out;
        }
    }
    if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(markp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0 ||
        (spec->output && pipe2(serrp, O_CLOEXEC) < 0)) {
        rc = -errno;
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto out;
    }

    /* 3. Fork; the child execs bwrap or reports why not on errp. */
    memset(&cp, 0, sizeof(cp));
    cp.bwrap = spec->bwrap;
    cp.argv = argv;
    cp.src[0] = outp[1];
    cp.src[1] = memfds[0];
    cp.src[2] = memfds[1];
    cp.src[3] = memfds[2];
    cp.src[4] = markp[1];
    cp.src[5] = memfds[3];
    cp.nsrc = 6;
    cp.stderr_src = serrp[1];
    if (s->ns) {
        sbx__netns_child_fds(s->ns, &cp.src[6]);
        cp.nsrc += SBX_NETNS_NFDS;
    }
    cp.err_w = errp[1];
    cp.uid = spec->uid;
    cp.gid = spec->gid;
    cp.memory_mb = spec->memory_mb;
    cp.pids = spec->pids > 0 && s->ns ? spec->pids + SBX_NETNS_PROCS : spec->pids;
    if (cp.pids > 0 && holds)
        cp.pids += SS_EXTRA_PROCS;
    cp.cpu_s = spec->cpu_s;
    cp.disk_mb = spec->disk_mb;
    cp.cg = s->cg;
    cp.parent = getpid();
    s->t0_ms = sbx_now_ms();
    s->pid = fork();
    if (s->pid < 0) {
        rc = -errno;
        s->pid = 0;
        snprintf(err, errlen, "fork: %s", strerror(errno));
        goto out;
    }
    if (s->pid == 0)
        child_exec(&cp);
    close_fd(&outp[1]);
    close_fd(&serrp[1]);
    close_fd(&markp[1]);
    close_fd(&errp[1]);
    if (s->ns)
        sbx__netns_start(s->ns, s->pid);
    do
        n = read(errp[0], &ce, sizeof(ce));
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(ce)) {
        int status;
        wait_blocking(s->pid, &status);
        s->pid = 0;
        rc = ce.err ? -ce.err : -EIO;
        snprintf(err, errlen, "starting %s: %s: %s", spec->bwrap,
                 stage_names[ce.stage >= 1 && ce.stage <= STAGE_CGROUP ? ce.stage : 0],
                 strerror(ce.err));
        goto out;
    }

    /* 4. Watch it. */
    s->pidfd = pidfd_open_(s->pid);
    if (s->pidfd < 0) {
        rc = -errno;
        snprintf(err, errlen, "pidfd_open: %s", strerror(errno));
        goto out;
    }
    s->output = spec->output;
    s->output_arg = spec->output_arg;
    if ((rc = watch_child(s, outp, serrp, markp)) != 0) {
        snprintf(err, errlen, "loop: %s", strerror(-rc));
        goto out;
    }
    if (holds) {
        /* The session is up once its command runs (network set up too). */
        sbx_io_init(&s->mark_io, s->mark_fd, on_mark, s);
        if ((rc = sbx_io_set(loop, &s->mark_io, SBX_READ)) != 0) {
            snprintf(err, errlen, "loop: %s", strerror(-rc));
            goto out;
        }
    }
    sbx_timer_start(loop, &s->start_t, 0);
    if (spec->timeout_s > 0)
        sbx_timer_start(loop, &s->wall_t, (uint64_t)spec->timeout_s * 1000u);
    sbx_debug("sandbox", "spawned pid=%d ws=%s uid=%d", (int)s->pid, s->ws, s->uid);
    *out = s;
    s = NULL;
out:
    if (s)
        sbx_sandbox_free(s); /* kills, reaps and removes what got made */
    for (int i = 0; i < 4; i++)
        close_fd(&memfds[i]);
    for (int i = 0; i < 2; i++) {
        close_fd(&outp[i]);
        close_fd(&serrp[i]);
        close_fd(&markp[i]);
        close_fd(&errp[i]);
    }
    sbx_buf_free(&opts.b);
    free(argv);
    return rc;
}

pid_t sbx_sandbox_pid(const sbx_sandbox *s) { return s->pid; }

const char *sbx_sandbox_workspace(const sbx_sandbox *s) { return s->ws; }

int sbx_sandbox_trust(sbx_sandbox *s, uint64_t until_ms)
{
    sbx_supervise_target t = {.pidfd = s->pidfd, .cgroup_kill = -1, .cgroup_procs = -1};
    int rc;

    if (s->sv) {
        sbx_supervisor_trust(s->sv, until_ms);
        return 0;
    }
    if (s->state != SB_RUNNING || s->reaped)
        return 0; /* bwrap is gone: nothing left for a supervisor to kill */
    sbx_cgroup_kill_fds(s->session ? s->session->holder->cg : s->cg, &t.cgroup_kill,
                        &t.cgroup_procs);
    rc = sbx_supervisor_start(&t, until_ms, &s->sv);
    close_fd(&t.cgroup_kill);
    close_fd(&t.cgroup_procs);
    if (rc)
        sbx_warn("sandbox", "no supervisor pid=%d: %s", (int)s->pid, strerror(-rc));
    return rc;
}

void sbx_sandbox_free(sbx_sandbox *s)
{
    int status;

    if (!s)
        return;
    sbx_supervisor_stop(s->sv);
    s->sv = NULL;
    sbx_timer_stop(s->loop, &s->start_t);
    sbx_timer_stop(s->loop, &s->wall_t);
    sbx_timer_stop(s->loop, &s->kill_t);
    sbx_timer_stop(s->loop, &s->reap_t);
    sbx_timer_stop(s->loop, &s->done_t);
    sbx_io_stop(&s->pid_io);
    sbx_io_stop(&s->rm_io);
    sbx_io_stop(&s->mark_io);
    close_output(s);
    if (s->session && s->state != SB_DONE)
        session_kill_now(s->session); /* what killing a session run means */
    if (s->pid > 0 && !s->reaped) {
        uint64_t until = sbx_now_ms() + SB_KILL_WAIT_MS;
        pid_t r;
        s->killed = 0;
        kill_all(s); /* pid 1 first, then poll for bwrap to follow */
        sbx_timer_stop(s->loop, &s->kill_t);
        for (;;) {
            r = waitpid(s->pid, &status, WNOHANG);
            if (r != 0 && !(r < 0 && errno == EINTR))
                break;
            if (sbx_now_ms() >= until)
                break;
            sleep_ms(2);
        }
        if (r == 0 || (r < 0 && errno == EINTR)) {
            kill_all(s);
            wait_blocking(s->pid, &status);
        }
        s->reaped = 1;
    }
    sbx__netns_free(s->ns); /* its helpers, killed and reaped */
    s->ns = NULL;
    if (s->uid >= 0 && s->state != SB_DONE &&
        sbx_sandbox_sweep_uid((uid_t)s->uid, SB_REAP_MS) != 0)
        sbx_warn("sandbox", "processes survived SIGKILL uid=%d", s->uid);
    if (s->rm_pid > 0) {
        wait_blocking(s->rm_pid, &status);
        s->rm_pid = 0;
    }
    sbx_cgroup_free(s->cg);
    if (s->ws_exists && sbx_sandbox_remove_tree(s->root) != 0)
        sbx_warn("sandbox", "workspace not removed ws=%s", s->root);
    close_fd(&s->pidfd);
    close_fd(&s->rm_pidfd);
    close_fd(&s->mark_fd);
    if (s->session) {
        sbx_sandbox_session *ss = s->session;
        s->session = NULL;
        session_run_detached(ss, s);
    }
    free(s->run_argv);
    free(s->bpf);
    free(s);
}

char *sbx_sandbox_resolve_exe(const char *name)
{
    const char *path, *c;
    char buf[PATH_MAX];

    if (strchr(name, '/'))
        return access(name, X_OK) == 0 ? realpath(name, NULL) : NULL;
    path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (c = path; *c;) {
        const char *e = strchr(c, ':');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (n > 0 && (size_t)snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, c, name) < sizeof(buf) &&
            buf[0] == '/' && access(buf, X_OK) == 0)
            return strdup(buf);
        if (!e)
            break;
        c = e + 1;
    }
    return NULL;
}

/* ---- sessions ----
 *
 * The holder is an ordinary sandbox (spawn_bwrap) whose command waits
 * forever: it owns the workspace, the uid, the cgroup and the namespaces,
 * and its end (killed, or lost) cleans them all up as a one-off's end does.
 * A run does not go through bwrap: a forked child joins the session's
 * cgroup, drops to its uid, enters the holder's namespaces (setns: the
 * outer user namespace first, which owns the others, then the inner one
 * where the holder's processes live), and forks the command, which drops
 * every capability, sets no_new_privs and loads the same seccomp filter
 * before it execs the wrapper. So the command sees the holder's /, /tmp and
 * /workspace, its network and its processes; what it leaves running is
 * reparented to the holder's pid 1 (bwrap's, which reaps). The child stays
 * outside the pid namespace and waits for the command, so the run ends when
 * the command exits, whatever it left behind; SIGTERM to it is relayed to
 * the command's process group (cancel).
 *
 * Killing a run (timeout, cancel past its grace, free) kills the session:
 * SIGKILL to the holder's pid 1 takes its whole pid namespace, the run's
 * command included. Pause is the cgroup freezer: nothing of the session
 * runs, memory and workspace stay; a kill thaws after signalling, as v1
 * delivers SIGKILL to a frozen task only once it is thawed.
 */

typedef struct enter_plan {
    int out_w, serr_w, mark_w, err_w;   /* serr_w: -1, stderr shares out_w */
    const int *ns;                      /* NS_N descriptors */
    const sbx_cgroup *cg;
    int uid, gid;
    int memory_mb, pids, cpu_s, disk_mb;
    char **argv, **envp;
    const char *bpf;
    size_t bpf_len;
    pid_t parent;
} enter_plan;

/* The command's pid, for relay_term; set in the forked child only. */
static volatile pid_t enter_cmd;

static void relay_term(int sig)
{
    (void)sig;
    if (enter_cmd > 0)
        kill(-enter_cmd, SIGTERM);
}

/* Between fork and exec, async-signal-safe calls only: see the comment at
 * the top of this section. */
static _Noreturn void child_enter(const enter_plan *ep)
{
    struct sigaction sa;
    int src[3 + NS_N], hi[3 + NS_N], n = 0, err_w, nul, status;
    pid_t pid, r;

    child_reset(ep->cg, ep->err_w);

    /* Above every target first, so no dup2 clobbers a source. */
    err_w = fcntl(ep->err_w, F_DUPFD_CLOEXEC, 16);
    if (err_w < 0)
        child_fail(ep->err_w, STAGE_FDS);
    src[n++] = ep->out_w;
    src[n++] = ep->serr_w >= 0 ? ep->serr_w : ep->out_w;
    src[n++] = ep->mark_w;
    for (int i = 0; i < NS_N; i++)
        src[n++] = ep->ns[i];
    for (int i = 0; i < n; i++)
        if ((hi[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 16)) < 0)
            child_fail(err_w, STAGE_FDS);
    nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nul < 0 || dup2(nul, 0) < 0 || dup2(hi[0], 1) < 0 || dup2(hi[1], 2) < 0 ||
        dup2(hi[2], 6) < 0 || close_range(3, 5, 0) < 0 ||
        close_range(7, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        child_fail(err_w, STAGE_FDS);

    child_limit_and_drop(ep->memory_mb, ep->pids, ep->cpu_s, ep->disk_mb, ep->uid, ep->gid, err_w);
    /* As the session's uid, which owns the outer user namespace. */
    for (int i = 0; i < NS_N; i++)
        if (setns(hi[3 + i], ns_types[i]) < 0)
            child_fail(err_w, STAGE_NS);
    /* After the credential changes, which clear it. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != ep->parent)
        child_fail(err_w, STAGE_IDS);
    if (chdir("/workspace") < 0)
        child_fail(err_w, STAGE_EXEC);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = relay_term;
    sigaction(SIGTERM, &sa, NULL);

    pid = fork();
    if (pid < 0)
        child_fail(err_w, STAGE_EXEC);
    if (pid == 0) {
        struct sock_fprog prog = {(unsigned short)(ep->bpf_len / sizeof(struct sock_filter)),
                                  (struct sock_filter *)ep->bpf};
        sa.sa_handler = SIG_DFL;
        sigaction(SIGTERM, &sa, NULL);
        if (setsid() < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
            child_fail(err_w, STAGE_SIGNALS);
        /* Entering the user namespace gave us every capability in it:
         * none may reach the command (bwrap drops them the same way). */
        for (int c = 0; c < 64; c++)
            if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
                child_fail(err_w, STAGE_CAPS);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 ||
            prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
            child_fail(err_w, STAGE_CAPS);
        execve("/bin/sh", ep->argv, ep->envp);
        child_fail(err_w, STAGE_EXEC);
    }
    enter_cmd = pid;
    /* Only the command holds the output, the mark and the error pipe now
     * (our copies, the originals too: the worker reads to EOF). */
    close_range(0, ~0U, 0);
    do
        r = waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        _exit(127);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

/* A session run that could not start: it ends as one bwrap never ran. */
static void end_unlaunched(sbx_sandbox *s, const char *why)
{
    if (!s->error[0])
        snprintf(s->error, sizeof(s->error), "%.200s", why);
    s->launched = 1;
    s->exit_code = -1;
    s->reaped = 1;
    s->t_exit_ms = sbx_now_ms();
    sbx_timer_stop(s->loop, &s->wall_t);
    sbx_timer_stop(s->loop, &s->kill_t);
    set_state(s, SB_REAPING);
    advance(s);
}

/* Forks the run into its session, which is up. On failure the run ends
 * (ran = 0) from the loop. */
static void launch_run(sbx_sandbox *s)
{
    sbx_sandbox_session *ss = s->session;
    enter_plan ep;
    child_err ce;
    int outp[2] = {-1, -1}, serrp[2] = {-1, -1}, markp[2] = {-1, -1}, errp[2] = {-1, -1};
    int rc = 0;
    ssize_t n;

    s->launched = 1;
    if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(markp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0 ||
        (s->output && pipe2(serrp, O_CLOEXEC) < 0)) {
        rc = -errno;
        snprintf(s->error, sizeof(s->error), "pipe: %s", strerror(errno));
        goto out;
    }
    memset(&ep, 0, sizeof(ep));
    ep.out_w = outp[1];
    ep.serr_w = serrp[1];
    ep.mark_w = markp[1];
    ep.err_w = errp[1];
    ep.ns = ss->ns;
    ep.cg = ss->holder->cg;
    ep.uid = ss->uid;
    ep.gid = ss->gid;
    ep.memory_mb = s->run_memory_mb;
    ep.pids = s->run_pids;
    ep.cpu_s = s->run_cpu_s;
    ep.disk_mb = s->run_disk_mb;
    ep.argv = s->run_argv;
    ep.envp = s->run_envp;
    ep.bpf = s->bpf;
    ep.bpf_len = s->bpf_len;
    ep.parent = getpid();
    s->pid = fork();
    if (s->pid < 0) {
        rc = -errno;
        s->pid = 0;
        snprintf(s->error, sizeof(s->error), "fork: %s", strerror(errno));
        goto out;
    }
    if (s->pid == 0)
        child_enter(&ep);
    close_fd(&outp[1]);
    close_fd(&serrp[1]);
    close_fd(&markp[1]);
    close_fd(&errp[1]);
    do
        n = read(errp[0], &ce, sizeof(ce));
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(ce)) {
        int status;
        wait_blocking(s->pid, &status);
        s->pid = 0;
        rc = ce.err ? -ce.err : -EIO;
        snprintf(s->error, sizeof(s->error), "entering the session: %s: %s",
                 stage_names[ce.stage >= 1 && ce.stage < STAGE_N ? ce.stage : 0],
                 strerror(ce.err));
        goto out;
    }
    s->pidfd = pidfd_open_(s->pid);
    if (s->pidfd < 0) {
        int status;
        rc = -errno;
        kill(s->pid, SIGKILL);
        wait_blocking(s->pid, &status);
        s->pid = 0;
        snprintf(s->error, sizeof(s->error), "pidfd_open: %s", strerror(-rc));
        goto out;
    }
    if ((rc = watch_child(s, outp, serrp, markp)) != 0) {
        /* Nothing watches it: end it here. */
        int status;
        pidfd_kill(s->pidfd, SIGKILL);
        wait_blocking(s->pid, &status);
        s->pid = 0;
        close_fd(&s->pidfd);
        close_output(s);
        close_fd(&s->mark_fd);
        snprintf(s->error, sizeof(s->error), "loop: %s", strerror(-rc));
        goto out;
    }
    sbx_debug("sandbox", "session run pid=%d ws=%s uid=%d", (int)s->pid, s->ws, ss->uid);
    /* on_start says the command runs: a new session's first run waits for
     * its holder, and a caller's create-to-running counts that wait. */
    sbx_timer_start(s->loop, &s->start_t, 0);
out:
    for (int i = 0; i < 2; i++) {
        close_fd(&outp[i]);
        close_fd(&serrp[i]);
        close_fd(&markp[i]);
        close_fd(&errp[i]);
    }
    if (rc)
        end_unlaunched(s, s->error);
}

/* argv and envp of the wrapper, in one block: pointers, then strings. */
static int build_run_exec(sbx_sandbox *s, const sbx_sandbox_spec *spec)
{
    static const char *const head[] = {"/bin/sh", "-c", SB_WRAPPER, "sbx-start"};
    size_t nhead = sizeof(head) / sizeof(head[0]), ncmd = 0, nenv = 2 + spec->nenv, bytes = 0;
    const char *cmd3[3];
    const char *const *cmd;
    char **v, *p;

    if (spec->argv && spec->argv[0]) {
        while (spec->argv[ncmd])
            ncmd++;
        cmd = (const char *const *)spec->argv;
    } else {
        cmd3[0] = "/bin/sh";
        cmd3[1] = "-c";
        cmd3[2] = spec->script;
        cmd = cmd3;
        ncmd = 3;
    }
    for (size_t i = 0; i < nhead; i++)
        bytes += strlen(head[i]) + 1;
    for (size_t i = 0; i < ncmd; i++)
        bytes += strlen(cmd[i]) + 1;
    bytes += sizeof("PATH=" SB_PATH) + sizeof("HOME=/workspace");
    for (size_t i = 0; i < spec->nenv; i++)
        bytes += strlen(spec->env[i].key) + 2 +
                 (spec->env[i].value ? strlen(spec->env[i].value) : 0);
    v = malloc((nhead + ncmd + 1 + nenv + 1) * sizeof(*v) + bytes);
    if (!v)
        return -ENOMEM;
    p = (char *)(v + nhead + ncmd + 1 + nenv + 1);
    s->run_argv = v;
    for (size_t i = 0; i < nhead + ncmd; i++) {
        const char *a = i < nhead ? head[i] : cmd[i - nhead];
        size_t l = strlen(a) + 1;
        memcpy(p, a, l);
        *v++ = p;
        p += l;
    }
    *v++ = NULL;
    s->run_envp = v;
    p += sprintf(p, "PATH=%s", SB_PATH) + 1;
    *v++ = p - sizeof("PATH=" SB_PATH);
    p += sprintf(p, "HOME=/workspace") + 1;
    *v++ = p - sizeof("HOME=/workspace");
    for (size_t i = 0; i < spec->nenv; i++) {
        char *e = p;
        p += sprintf(p, "%s=%s", spec->env[i].key, spec->env[i].value ? spec->env[i].value : "") +
             1;
        *v++ = e;
    }
    *v = NULL;
    return 0;
}

/* The seccomp filter's instructions, read from the memfd bwrap would get. */
static int read_filter(sbx_sandbox *s)
{
    size_t cap = BPF_MAXINSNS * sizeof(struct sock_filter); /* the kernel's limit */
    int fd = sbx_seccomp_fd(), rc = 0;
    ssize_t n;

    if (fd < 0)
        return fd;
    s->bpf = malloc(cap);
    if (!s->bpf) {
        close(fd);
        return -ENOMEM;
    }
    while (s->bpf_len < cap && (n = read(fd, s->bpf + s->bpf_len, cap - s->bpf_len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            break;
        }
        s->bpf_len += (size_t)n;
    }
    close(fd);
    if (!rc && (s->bpf_len == 0 || s->bpf_len % sizeof(struct sock_filter)))
        rc = -EINVAL;
    return rc;
}

static int spawn_in_session(sbx_loop *loop, const sbx_sandbox_spec *spec,
                            sbx_sandbox_start_cb on_start, sbx_sandbox_exit_cb on_exit, void *arg,
                            sbx_sandbox **out, char *err, size_t errlen)
{
    sbx_sandbox_session *ss = spec->session;
    sbx_sandbox *s = NULL;
    int rc = 0, dir = -1;

    if (!sbx_sandbox_session_alive(ss)) {
        snprintf(err, errlen, "the session's sandbox has ended");
        return -ESRCH;
    }
    if (ss->run) {
        snprintf(err, errlen, "the session already has a run");
        return -EBUSY;
    }
    if ((rc = check_command(spec, err, errlen)) != 0)
        return rc;
    if (ss->paused && (rc = sbx_sandbox_session_resume(ss, NULL)) != 0) {
        snprintf(err, errlen, "resuming the session: %s", strerror(-rc));
        return rc;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    init_handles(s);
    s->loop = loop;
    s->on_start = on_start;
    s->on_exit = on_exit;
    s->arg = arg;
    s->uid = s->gid = -1; /* the uid is the session's: no sweeps per run */
    s->grace_ms = spec->kill_grace_ms;
    s->memory_mb = ss->memory_mb;
    s->disk_mb = ss->disk_mb;
    s->run_memory_mb = ss->memory_mb;
    s->run_disk_mb = ss->disk_mb;
    s->run_cpu_s = spec->cpu_s;
    s->run_pids = ss->pids > 0 ? ss->pids + SB_BWRAP_PROCS + SS_EXTRA_PROCS +
                                     (ss->network ? SBX_NETNS_PROCS : 0)
                               : 0;
    s->output = spec->output;
    s->output_arg = spec->output_arg;
    snprintf(s->root, sizeof(s->root), "%s", ss->holder->root);
    snprintf(s->ws, sizeof(s->ws), "%s", ss->holder->ws);

    dir = open(s->ws, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir < 0) {
        rc = -errno;
        snprintf(err, errlen, "workspace %s: %s", s->ws, strerror(errno));
        goto out;
    }
    if ((rc = write_files(dir, spec, ss->uid, ss->gid, 1, err, errlen)) != 0)
        goto out;
    if ((rc = build_run_exec(s, spec)) != 0 || (rc = read_filter(s)) != 0) {
        snprintf(err, errlen, "%s: %s", s->run_argv ? "seccomp filter" : "exec", strerror(-rc));
        goto out;
    }
    if (ss->holder->cg) {
        sbx_cgroup_usage u;
        sbx_cgroup_usage_of(ss->holder->cg, &u);
        s->oom_base = u.oom_kills;
    }
    s->session = ss;
    ss->run = s;
    s->t0_ms = sbx_now_ms();
    if (spec->timeout_s > 0)
        sbx_timer_start(loop, &s->wall_t, (uint64_t)spec->timeout_s * 1000u);
    if (ss->state == SS_READY)
        launch_run(s); /* else on_mark does, once the holder is up */
    *out = s;
    s = NULL;
out:
    if (dir >= 0)
        close(dir);
    if (s)
        sbx_sandbox_free(s);
    return rc;
}

int sbx_sandbox_spawn(sbx_loop *loop, const sbx_sandbox_spec *spec,
                      sbx_sandbox_start_cb on_start, sbx_sandbox_exit_cb on_exit, void *arg,
                      sbx_sandbox **out, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (spec->session)
        return spawn_in_session(loop, spec, on_start, on_exit, arg, out, err, errlen);
    return spawn_bwrap(loop, spec, NULL, on_start, on_exit, arg, out, err, errlen);
}

/* The holder's namespaces, through its pid 1 (bwrap's, a child of the
 * bwrap we forked: open_init checks that after opening its pidfd). */
static int open_session_ns(sbx_sandbox_session *ss)
{
    char path[64];
    pid_t init;
    int pfd = open_init(ss->holder->pid, &init), rc = 0;

    if (pfd < 0)
        return -ESRCH;
    for (int i = 1; i < NS_N && !rc; i++) {
        snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)init, ns_names[i]);
        ss->ns[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (ss->ns[i] < 0)
            rc = -errno;
    }
    if (!rc && (ss->ns[NS_USER_OUTER] = ioctl(ss->ns[NS_USER], NS_GET_PARENT)) < 0)
        rc = -errno;
    if (!rc)
        fcntl(ss->ns[NS_USER_OUTER], F_SETFD, FD_CLOEXEC);
    /* Still alive after the opens: they are its namespaces, not a recycled pid's. */
    if (!rc && pidfd_kill(pfd, 0) < 0)
        rc = -ESRCH;
    close(pfd);
    return rc;
}

/* Holder: the wrapper's byte says the command runs; EOF, that it never will. */
static void on_mark(sbx_io *io, int events)
{
    sbx_sandbox *h = io->data;
    sbx_sandbox_session *ss = h->holds;
    char c;
    ssize_t n;
    int rc;
    (void)events;

    n = read(h->mark_fd, &c, 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    sbx_io_stop(&h->mark_io);
    close_fd(&h->mark_fd);
    h->ran = n == 1;
    if (n != 1 || ss->state != SS_STARTING)
        return; /* its end (on_exit) tells the session */
    rc = open_session_ns(ss);
    if (rc) {
        sbx_warn("sandbox", "session namespaces pid=%d: %s", (int)h->pid, strerror(-rc));
        if (ss->run && !ss->run->error[0])
            snprintf(ss->run->error, sizeof(ss->run->error), "session namespaces: %s",
                     strerror(-rc));
        session_kill_now(ss);
        return;
    }
    ss->state = SS_READY;
    sbx_debug("sandbox", "session up pid=%d ws=%s", (int)h->pid, h->ws);
    if (ss->run && !ss->run->launched)
        launch_run(ss->run);
}

static void on_sink(sbx_io *io, int events)
{
    sbx_sandbox_session *ss = io->data;
    int i = (int)(io - ss->sink_io);
    char buf[SB_READ_CHUNK];
    (void)events;

    for (int k = 0; k < SB_READS_PER_TURN; k++) {
        ssize_t n = read(ss->sinks[i], buf, sizeof(buf));
        if (n > 0 || (n < 0 && errno == EINTR))
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        break;
    }
    sbx_io_stop(io);
    close_fd(&ss->sinks[i]);
}

static void close_sinks(sbx_sandbox_session *ss)
{
    for (int i = 0; i < SS_SINKS_MAX; i++) {
        sbx_io_stop(&ss->sink_io[i]);
        close_fd(&ss->sinks[i]);
    }
}

static void session_adopt_output(sbx_sandbox_session *ss, sbx_sandbox *s)
{
    int *fds[2] = {&s->out_fd, &s->err_fd};

    sbx_io_stop(&s->out_io);
    sbx_io_stop(&s->err_io);
    for (int k = 0; k < 2; k++) {
        int i = ss->next_sink;
        if (*fds[k] < 0)
            continue;
        if (ss->state == SS_DYING || ss->state == SS_DEAD) {
            close_fd(fds[k]);
            continue;
        }
        ss->next_sink = (i + 1) % SS_SINKS_MAX;
        sbx_io_stop(&ss->sink_io[i]);
        close_fd(&ss->sinks[i]);
        ss->sinks[i] = *fds[k];
        *fds[k] = -1;
        sbx_io_init(&ss->sink_io[i], ss->sinks[i], on_sink, ss);
        if (sbx_io_set(ss->loop, &ss->sink_io[i], SBX_READ) != 0)
            close_fd(&ss->sinks[i]);
    }
}

static void on_session_end(sbx_timer *t)
{
    sbx_sandbox_session *ss = t->data;
    if (ss->ended)
        return;
    ss->ended = 1;
    ss->on_end(ss->arg, ss);
}

static void session_run_detached(sbx_sandbox_session *ss, sbx_sandbox *s)
{
    if (ss->run != s)
        return;
    ss->run = NULL;
    if (ss->state == SS_DEAD && !ss->ended)
        sbx_timer_start(ss->loop, &ss->end_t, 0);
}

static void holder_start(void *arg, sbx_sandbox *h)
{
    (void)arg;
    (void)h;
}

static void holder_exit(void *arg, sbx_sandbox *h, const sbx_sandbox_status *st)
{
    sbx_sandbox_session *ss = arg;

    sbx_log(st->error[0] || ss->state != SS_DYING ? SBX_LOG_WARN : SBX_LOG_INFO, "sandbox",
            "session ended pid=%d ws=%s killed=%d%s%s", (int)h->pid, h->ws,
            ss->state == SS_DYING, st->error[0] ? " error=" : "", st->error);
    ss->state = SS_DEAD;
    ss->paused = 0;
    for (int i = 0; i < NS_N; i++)
        close_fd(&ss->ns[i]);
    close_sinks(ss);
    if (ss->run && !ss->run->launched)
        end_unlaunched(ss->run, "the session's sandbox ended before the command started");
    if (!ss->run)
        sbx_timer_start(ss->loop, &ss->end_t, 0);
}

static void session_kill_now(sbx_sandbox_session *ss)
{
    if (ss->state == SS_DYING || ss->state == SS_DEAD)
        return;
    ss->state = SS_DYING;
    if (ss->holder->state == SB_RUNNING)
        kill_all(ss->holder); /* its pid 1: the whole pid namespace goes */
    if (ss->paused) {
        sbx_cgroup_freeze(ss->holder->cg, 0); /* frozen tasks take SIGKILL once thawed */
        ss->paused = 0;
    }
}

int sbx_sandbox_session_new(sbx_loop *loop, const sbx_sandbox_spec *spec,
                            sbx_sandbox_session_cb on_end, void *arg,
                            sbx_sandbox_session **out, char *err, size_t errlen)
{
    static char *const hold_argv[] = {SS_HOLD_CMD, SS_HOLD_ARG, NULL};
    sbx_sandbox_spec hs = *spec;
    sbx_sandbox_session *ss;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    ss = calloc(1, sizeof(*ss));
    if (!ss) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    ss->loop = loop;
    ss->on_end = on_end;
    ss->arg = arg;
    for (int i = 0; i < NS_N; i++)
        ss->ns[i] = -1;
    for (int i = 0; i < SS_SINKS_MAX; i++) {
        ss->sinks[i] = -1;
        sbx_io_init(&ss->sink_io[i], -1, on_sink, ss);
    }
    sbx_timer_init(&ss->end_t, on_session_end, ss);
    ss->uid = spec->uid;
    ss->gid = spec->gid;
    ss->memory_mb = spec->memory_mb;
    ss->pids = spec->pids;
    ss->disk_mb = spec->disk_mb;
    ss->network = spec->network;
    hs.argv = hold_argv;
    hs.script = NULL;
    hs.env = NULL;
    hs.nenv = 0;
    hs.files = NULL;
    hs.nfiles = 0;
    hs.cpu_s = 0;
    hs.timeout_s = 0;
    hs.output = NULL;
    hs.output_arg = NULL;
    hs.session = NULL;
    rc = spawn_bwrap(loop, &hs, ss, holder_start, holder_exit, ss, &ss->holder, err, errlen);
    if (rc) {
        free(ss);
        return rc;
    }
    *out = ss;
    return 0;
}

int sbx_sandbox_session_alive(const sbx_sandbox_session *ss)
{
    return ss && (ss->state == SS_STARTING || ss->state == SS_READY) &&
           ss->holder->state == SB_RUNNING && !ss->holder->reaped;
}

int sbx_sandbox_session_busy(const sbx_sandbox_session *ss) { return ss && ss->run != NULL; }

int sbx_sandbox_session_pause(sbx_sandbox_session *ss)
{
    int rc;

    if (!sbx_sandbox_session_alive(ss))
        return -ESRCH;
    if (ss->run)
        return -EBUSY;
    if (ss->paused)
        return 0;
    rc = sbx_cgroup_freeze(ss->holder->cg, 1);
    if (rc) {
        sbx_cgroup_freeze(ss->holder->cg, 0);
        return rc;
    }
    ss->paused = 1;
    sbx_debug("sandbox", "session paused pid=%d", (int)ss->holder->pid);
    return 0;
}

int sbx_sandbox_session_paused(const sbx_sandbox_session *ss) { return ss && ss->paused; }

int sbx_sandbox_session_resume(sbx_sandbox_session *ss, int *resume_ms)
{
    struct timespec a, b;
    int rc;

    if (resume_ms)
        *resume_ms = 0;
    if (!sbx_sandbox_session_alive(ss))
        return -ESRCH;
    if (!ss->paused)
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    rc = sbx_cgroup_freeze(ss->holder->cg, 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (rc)
        return rc;
    ss->paused = 0;
    if (resume_ms)
        *resume_ms = (int)((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000);
    sbx_debug("sandbox", "session resumed pid=%d", (int)ss->holder->pid);
    return 0;
}

void sbx_sandbox_session_kill(sbx_sandbox_session *ss)
{
    if (ss->run && !ss->run->end_set) {
        ss->run->end = SBX_SANDBOX_CANCELED;
        ss->run->end_set = 1;
    }
    session_kill_now(ss);
}

void sbx_sandbox_session_free(sbx_sandbox_session *ss)
{
    if (!ss)
        return;
    if (!SBX_ASSERT(ss->run == NULL))
        ss->run->session = NULL;
    sbx_timer_stop(ss->loop, &ss->end_t);
    if (ss->paused)
        sbx_cgroup_freeze(ss->holder->cg, 0);
    sbx_sandbox_free(ss->holder); /* kills, reaps, sweeps, removes; no callbacks */
    for (int i = 0; i < NS_N; i++)
        close_fd(&ss->ns[i]);
    close_sinks(ss);
    free(ss);
}

const char *sbx_sandbox_session_workspace(const sbx_sandbox_session *ss)
{
    return ss->holder->ws;
}

/* ---- dialing into a session ----
 *
 * A socket belongs to the network namespace of the thread that made it, for
 * life; connect() and the bytes after it need no namespace of the caller's.
 * So a thread of ours enters the holder's namespace (setns needs only that
 * thread, not the process, for CLONE_NEWNET), makes and connects the socket,
 * and exits: the loop thread's namespace never changes, even for an
 * instant, and there is no way back to get wrong. It is joined at once, a
 * few tens of microseconds on the loop. */

typedef struct dial_job {
    int netns, port;
    int fd;       /* the socket, or -errno */
    char why[64]; /* which step failed */
} dial_job;

static void *dial_thread(void *arg)
{
    dial_job *dj = arg;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)dj->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd;

    if (setns(dj->netns, CLONE_NEWNET) < 0) {
        dj->fd = -errno;
        snprintf(dj->why, sizeof(dj->why), "setns");
        return NULL;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        dj->fd = -errno;
        snprintf(dj->why, sizeof(dj->why), "socket");
        return NULL;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        dj->fd = -errno;
        snprintf(dj->why, sizeof(dj->why), "connect 127.0.0.1:%d", dj->port);
        close(fd);
        return NULL;
    }
    dj->fd = fd;
    return NULL;
}

int sbx_sandbox_session_dial(sbx_sandbox_session *ss, int port, char *err, size_t errlen)
{
    dial_job dj = {.netns = -1, .port = port, .fd = -EIO};
    pthread_t t;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if (port < 1 || port > 65535) {
        snprintf(err, errlen, "port %d out of range", port);
        return -EINVAL;
    }
    if (!sbx_sandbox_session_alive(ss)) {
        snprintf(err, errlen, "the session's sandbox is gone");
        return -ESRCH;
    }
    if (ss->state != SS_READY || ss->ns[NS_NET] < 0) {
        snprintf(err, errlen, "the session's sandbox is not up yet");
        return -EAGAIN;
    }
    dj.netns = ss->ns[NS_NET];
    rc = pthread_create(&t, NULL, dial_thread, &dj);
    if (rc) {
        snprintf(err, errlen, "thread: %s", strerror(rc));
        return -rc;
    }
    pthread_join(t, NULL);
    if (dj.fd < 0)
        snprintf(err, errlen, "%s: %s", dj.why, strerror(-dj.fd));
    return dj.fd;
}
