/* runs.c — slots, runs, tokens, logs and previews of one agent (runs.h).
 *
 * A build runs in the sandbox of common/sandbox.c exactly as the local
 * provider runs it (same limits, same uid-per-slot rule), with one
 * difference: the agent must still read two things out of the workspace,
 * and the sandbox removes the workspace before it reports the exit. So the
 * command is wrapped in a few lines of sh (RUN_WRAPPER) that run inside the
 * sandbox:
 *
 *   1. stdout and stderr go to <workspace>/.sbx-agent/log, a file the
 *      sandbox creates with the job's files (so it exists before anything
 *      runs). The agent opens it right after the spawn and keeps that
 *      descriptor: the log can be streamed while the build runs, read again
 *      after the workspace is gone, and its last bytes are the run's tail.
 *      Its size is bounded by the build's RLIMIT_FSIZE (disk_mb).
 *   2. When the command has exited, the wrapper makes a FIFO ".sbx-agent/
 *      gate" and waits on it. The agent sees the FIFO appear (inotify on
 *      .sbx-agent; a 1 s sweep covers a lost event), takes public/ (or
 *      dist/) out of the workspace into previews/<run id>, then writes a
 *      newline into the FIFO, and the wrapper exits with the command's
 *      status.
 *
 * Disk: as root the workspace and /tmp share one tmpfs of disk_mb
 * (sandbox.c's disk_total), so taking the preview out crosses a filesystem.
 * Without that mount one renameat() does it (no copy, no symlink followed);
 * across it (EXDEV) a child process copies the tree (copy_tree()), watched
 * by a pidfd on the loop, and the gate opens when it has exited: the copy
 * runs inside the build's wall time, and the build's timeout or cancel
 * kills it. The copy takes regular files and directories only, through
 * descriptors (openat, O_NOFOLLOW), as the slot's uid, within caps of
 * depth, entries and bytes; a tree over a cap is not kept at all. The log
 * stays readable after the run: its descriptor outlives the unmount, and
 * sandbox.c empties the tmpfs before detaching it, so the descriptor pins
 * the log alone.
 *   The paths under .sbx-agent are reserved: a job file there is refused by
 *   the sandbox as a clash. Whatever the build does to them only harms its
 *   own log and preview.
 *
 * Fencing: a wake or cancel whose token is older than the newest this slot
 * has seen is refused, and a newer one is written to disk (tokens.c) before
 * it is acted on. A wake with a newer token for a slot that still runs an
 * older token's build cancels that build (its owner lost the lease: the
 * design notes' "verify the old build is gone before reuse") and answers
 * busy until the slot is free. A wake repeating the token and job of the
 * slot's current or last run answers with that run (the worker retried a
 * request whose answer it lost); the same token with another job is stale.
 *
 * Sessions (runs.h). A slot holds at most one session sandbox
 * (sandbox.h "Sessions": a holder process keeps workspace, namespaces,
 * cgroup and background processes), created by the session's first run and
 * named "<session>-<slot index>" in ws/. Per slot it is
 *
 *   none -> live (idle, running a run, or paused) -> dying -> none
 *
 * logged as "slot <id> session <name> a -> b" in set_sess(). dying is the
 * time between sbx_sandbox_session_kill() and its on_end (processes, uid,
 * cgroup and workspace being removed): the slot takes no wake then (busy),
 * so a new sandbox never shares the uid with the remains of an old one. A
 * wake for another session (or none) on a slot whose sandbox is live kills
 * it and answers busy: the worker retries, and the new owner gets the slot
 * once it is empty (see runs.h for why not refuse). DESTROY kills it too
 * and answers "removing" until on_end, which emits SBX_RUNS_SESSION_END
 * (server.c holds the request until then): the worker's DESTROY is done
 * when nothing is left. A run in a session uses the same
 * wrapper, log and gate as any run; the workspace stays, so before each run
 * the previous run's log and gate are unlinked (the previous run's log
 * descriptor keeps its file), and its preview is always copied out, never
 * renamed away from the workspace.
 *
 * Run states: running -> succeeded | failed | timed_out | canceled | error,
 * logged as "run <id> state a -> b" in set_state().
 */
#include "runs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "assert.h"
#include "buf.h"
#include "log.h"
#include "sandbox.h"
#include "tokens.h"


/* Limits of a job that gives none: the local provider's defaults. */
#define RUN_DEFAULT_MEMORY_MB 1024
#define RUN_DEFAULT_PIDS 256
#define RUN_DEFAULT_CPUS 1.0
#define RUN_DEFAULT_DISK_MB 4096
/* Startup: how long leftovers of a crashed agent may take to die. */
#define RUN_SWEEP_MS 2000
/* Fallback for lost inotify events (gate) and the trash remover's pace. */
#define RUN_CRON_MS 1000
/* One read of the inotify fd; events are small (16 bytes + name). */
#define RUN_INOTIFY_BUF 16384
/* Reads per callback, so a chatty build's log events cannot hold the loop;
 * the fd stays readable and the loop comes back. */
#define RUN_INOTIFY_READS 8
/* The work dir path: what the config accepts (SBX_WORK_DIR), so every path
 * under it fits PATH_MAX with a run id and a file name. */
#define RUN_WORK_DIR_MAX 512
/* Preview copy across the tmpfs (copy_tree). Depth: each level holds two
 * descriptors and a directory stream in the child, far below its
 * RLIMIT_NOFILE (1024); a site nests a handful of levels. Entries: the
 * previews live on the agent's own disk, where an empty file costs an
 * inode and no byte of disk_mb; a large static site has some 10^4 files.
 * Bytes: disk_mb, what the tmpfs holds; the cap still matters because a
 * hardlinked file is copied once per name (and a sparse one in full). */
#define RUN_COPY_DEPTH 64
#define RUN_COPY_ENTRIES 100000
#define RUN_COPY_CHUNK 65536
/* The copy child's exit status: copied, a cap reached, a host error. */
enum { COPY_OK, COPY_DEPTH, COPY_ENTRIES, COPY_BYTES, COPY_FAILED };

#define AGENT_DIR ".sbx-agent"
#define AGENT_LOG AGENT_DIR "/log"
#define WS_DIR "ws"
#define PREVIEW_DIR "previews"
#define TRASH_DIR "trash"
#define TOKENS_FILE "tokens"

/* Runs inside the sandbox as: sh -c RUN_WRAPPER sbx-build <command...> */
#define RUN_WRAPPER                                                              \
    "exec >>/workspace/" AGENT_LOG " 2>&1\n"                                     \
    "\"$@\"\n"                                                                   \
    "sbx_rc=$?\n"                                                                \
    "exec >/dev/null 2>&1\n"                                                     \
    "mkfifo /workspace/" AGENT_DIR "/gate && read -r sbx_x </workspace/" AGENT_DIR "/gate\n" \
    "exit $sbx_rc\n"

static const char *const state_names[] = {"running", "succeeded", "failed",
                                          "timed_out", "canceled", "error"};
static const char *const sandbox_names[] = {"one_off", "new", "reused", "resumed"};

typedef struct arun arun;

typedef enum sess_state { SS_NONE, SS_LIVE, SS_DYING } sess_state;
static const char *const sess_names[] = {"none", "live", "dying"};

typedef struct slot {
    sbx_runs *r;
    int index;
    char id[128];
    int uid;                     /* -1: build as the agent's uid */
    sess_state sess;
    char session[SBX_RUNS_SESSION_MAX + 1]; /* whose sandbox ss is, "" when none */
    sbx_sandbox_session *ss;     /* live or dying */
    arun *run;                   /* running, or NULL */
    arun *last;                  /* the last finished run of this slot (in history) */
    int64_t last_token;          /* token of the newest run this slot had */
    char last_run_id[SBX_RUN_ID_MAX];
    char last_job_id[SBX_ID_MAX + 1];
    char preview_run[SBX_RUN_ID_MAX];   /* whose preview is kept, "" if none */
} slot;

struct arun {
    sbx_runs *r;
    char id[SBX_RUN_ID_MAX];
    int slot;
    int64_t token;
    int attempt;
    char job_id[SBX_ID_MAX + 1];
    char session[SBX_RUNS_SESSION_MAX + 1];
    sbx_runs_sandbox sandbox;
    int resume_ms;
    uint64_t resume_us;          /* the same, finer, for the log */
    sbx_run_state state;
    int canceled;
    int exit_code;
    uint64_t started_ms, finished_ms;
    char error[256];
    sbx_sandbox *sb;
    int ws_fd;                   /* O_PATH of the workspace, while running */
    int adir_fd;                 /* <ws>/.sbx-agent, while running */
    int log_fd;                  /* the whole log; see runs.h for how long */
    int gate_fd;                 /* the FIFO we answered, kept until the exit */
    int wd;                      /* inotify watch on .sbx-agent, -1 when none */
    int gated;
    pid_t copy_pid;              /* preview copy child, 0 when none */
    int copy_pidfd;
    sbx_io copy_io;
    int disk_mb;                 /* the job's, for the copy's byte cap */
    int log_dirty;
    int has_preview;
    char *tail;                  /* at the end: the last SBX_RUNS_TAIL_MAX bytes */
    size_t tail_len;
    arun *prev, *next;           /* history, oldest first */
};

struct sbx_runs {
    sbx_loop *loop;
    sbx_runs_event_cb cb;
    void *cb_arg;
    char work_dir[RUN_WORK_DIR_MAX];
    char ws_dir[RUN_WORK_DIR_MAX + 8];
    char *bwrap;
    int allow_network;
    sbx_netns_host net;          /* set up when allow_network (common/netns.h) */
    int kill_grace_ms;
    int capacity;
    slot *slots;
    sbx_tokens *tokens;
    int preview_fd;              /* O_PATH of previews/ */
    int trash_fd;                /* O_PATH of trash/ */
    int ino_fd;
    sbx_io ino_io;
    sbx_timer cron_t;
    pid_t rm_pid;                /* trash remover, 0 when none */
    int rm_pidfd;
    sbx_io rm_io;
    arun *hist_head, *hist_tail;
    size_t nhist;
    size_t active;
    uint32_t nonce;
    uint64_t seq;                /* run ids */
    uint64_t trash_seq;
    int draining;
    int no_sessions;             /* the sandbox has no session support: said once */
};

const char *sbx_run_state_name(sbx_run_state s)
{
    return (unsigned)s < sizeof(state_names) / sizeof(state_names[0]) ? state_names[s] : "?";
}

static void set_state(arun *a, sbx_run_state to)
{
    sbx_debug("runs", "run %s state %s -> %s", a->id, state_names[a->state], state_names[to]);
    a->state = to;
}

const char *sbx_runs_sandbox_name(sbx_runs_sandbox s)
{
    return (unsigned)s < sizeof(sandbox_names) / sizeof(sandbox_names[0]) ? sandbox_names[s] : "?";
}

int sbx_runs_session_ok(const char *s, size_t len)
{
    if (!s || len == 0 || len > SBX_RUNS_SESSION_MAX || strlen(s) < len)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

static void set_sess(slot *s, sess_state to)
{
    sbx_info("runs", "slot %s session %s %s -> %s", s->id, s->session[0] ? s->session : "-",
             sess_names[s->sess], sess_names[to]);
    s->sess = to;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void emit(sbx_runs *r, const char *id, sbx_runs_event ev)
{
    if (r->cb)
        r->cb(r->cb_arg, id, ev);
}

/* ---- lookup ---- */

static arun *find_run(const sbx_runs *r, const char *id)
{
    for (int i = 0; i < r->capacity; i++)
        if (r->slots[i].run && strcmp(r->slots[i].run->id, id) == 0)
            return r->slots[i].run;
    for (arun *a = r->hist_tail; a; a = a->prev)
        if (strcmp(a->id, id) == 0)
            return a;
    return NULL;
}

static int find_slot(const sbx_runs *r, const char *id)
{
    for (int i = 0; i < r->capacity; i++)
        if (strcmp(r->slots[i].id, id) == 0)
            return i;
    return -1;
}

/* ---- trash: previews replaced by newer ones, removed in the background ---- */

static void trash_next(sbx_runs *r);

static void on_rm_exit(sbx_io *io, int events)
{
    sbx_runs *r = io->data;
    int status;
    (void)events;

    if (sbx_sandbox_try_reap(r->rm_pidfd, &status, NULL) == 0)
        return; /* not yet */
    sbx_io_stop(&r->rm_io);
    close_fd(&r->rm_pidfd);
    r->rm_pid = 0;
    trash_next(r);
}

/* Starts `rm -rf` on one entry of trash/, if none is running. */
static void trash_next(sbx_runs *r)
{
    char path[PATH_MAX + 64];
    struct dirent *de;
    DIR *d;
    int fd;

    if (r->rm_pid > 0)
        return;
    fd = openat(r->trash_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || !(d = fdopendir(fd))) {
        if (fd >= 0)
            close(fd);
        return;
    }
    path[0] = '\0';
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(path, sizeof(path), "%s/" TRASH_DIR "/%s", r->work_dir, de->d_name);
            break;
        }
    }
    closedir(d);
    if (!path[0])
        return;
    r->rm_pid = fork();
    if (r->rm_pid == 0) {
        char *const argv[] = {"rm", "-rf", "--one-file-system", "--", path, NULL};
        int null = open("/dev/null", O_RDWR);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL); /* the agent blocks SIGTERM for signalfd */
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
        }
        close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
        execv("/bin/rm", argv);
        _exit(127);
    }
    if (r->rm_pid < 0) {
        r->rm_pid = 0;
        return;
    }
    r->rm_pidfd = (int)syscall(SYS_pidfd_open, r->rm_pid, 0);
    if (r->rm_pidfd < 0) {
        waitpid(r->rm_pid, NULL, 0);
        r->rm_pid = 0;
        return;
    }
    sbx_io_init(&r->rm_io, r->rm_pidfd, on_rm_exit, r);
    sbx_io_set(r->loop, &r->rm_io, SBX_READ);
}

/* Moves previews/<name> into trash/ (one rename, whatever is inside). */
static void trash_preview(sbx_runs *r, const char *name)
{
    char dst[SBX_RUN_ID_MAX + 32];
    snprintf(dst, sizeof(dst), "%s.%" PRIu64, name, r->trash_seq++);
    if (renameat(r->preview_fd, name, r->trash_fd, dst) < 0 && errno != ENOENT)
        sbx_warn("runs", "preview %s not moved to trash: %s", name, strerror(errno));
    trash_next(r);
}

/* ---- preview and gate ---- */

/* ---- preview copy (child process) ---- */

typedef struct copy_budget {
    uint64_t entries, bytes, max_bytes;
    dev_t dev;                   /* the source tree's filesystem */
    char buf[RUN_COPY_CHUNK];
} copy_budget;

static int copy_file(int sdir, int ddir, const char *name, copy_budget *b)
{
    struct stat st;
    int in, out, rc = COPY_OK;

    /* O_NONBLOCK: a FIFO swapped in after the fstatat does not block the
     * open; fstat then sees it is not a regular file. */
    in = openat(sdir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (in < 0)
        return COPY_OK; /* gone, or unreadable by the build's own uid: skipped */
    if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode) || st.st_dev != b->dev) {
        close(in);
        return COPY_OK;
    }
    out = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return COPY_FAILED;
    }
    for (;;) {
        ssize_t n = read(in, b->buf, sizeof(b->buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? COPY_FAILED : COPY_OK;
            break;
        }
        if (b->bytes + (uint64_t)n > b->max_bytes) {
            rc = COPY_BYTES;
            break;
        }
        b->bytes += (uint64_t)n;
        if (sbx_sandbox_write_all(out, b->buf, (size_t)n) != 0) {
            rc = COPY_FAILED;
            break;
        }
    }
    close(in);
    close(out);
    return rc;
}

/* Copies the entries of directory sdir into ddir: directories and regular
 * files, nothing else, never through a symlink (every open is relative to
 * a directory descriptor, with O_NOFOLLOW). */
static int copy_tree(int sdir, int ddir, int depth, copy_budget *b)
{
    struct dirent *de;
    struct stat st;
    DIR *d;
    int fd, rc = COPY_OK;

    if (depth > RUN_COPY_DEPTH)
        return COPY_DEPTH;
    fd = openat(sdir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || !(d = fdopendir(fd))) {
        if (fd >= 0)
            close(fd);
        return COPY_FAILED;
    }
    while (rc == COPY_OK && (de = readdir(d)) != NULL) {
        int cs, cd;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (++b->entries > RUN_COPY_ENTRIES) {
            rc = COPY_ENTRIES;
            break;
        }
        if (fstatat(sdir, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != b->dev)
            continue;
        if (S_ISREG(st.st_mode)) {
            rc = copy_file(sdir, ddir, de->d_name, b);
            continue;
        }
        if (!S_ISDIR(st.st_mode))
            continue; /* symlinks, devices, FIFOs, sockets */
        cs = openat(sdir, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (cs < 0)
            continue;
        if (mkdirat(ddir, de->d_name, 0755) < 0 ||
            (cd = openat(ddir, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
            close(cs);
            rc = COPY_FAILED;
            break;
        }
        rc = copy_tree(cs, cd, depth + 1, b);
        close(cs);
        close(cd);
    }
    closedir(d);
    return rc;
}


/* ---- preview and gate ---- */

static void release_gate(arun *a);

/* previews/<run id> is complete: it becomes the slot's preview. A
 * swapped-in non-directory is thrown away; serving resolves paths without
 * symlinks anyway. */
static void keep_preview(arun *a, const char *from)
{
    sbx_runs *r = a->r;
    slot *s = &r->slots[a->slot];
    struct stat st;

    if (fstatat(r->preview_fd, a->id, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)) {
        trash_preview(r, a->id);
        return;
    }
    if (s->preview_run[0])
        trash_preview(r, s->preview_run);
    snprintf(s->preview_run, sizeof(s->preview_run), "%s", a->id);
    a->has_preview = 1;
    sbx_debug("runs", "run %s preview from %s/", a->id, from);
}

/* Kills and reaps the copy child, if any; returns 1 if there was one. */
static int copy_kill(arun *a)
{
    if (a->copy_pid <= 0)
        return 0;
    sbx_io_stop(&a->copy_io);
    kill(a->copy_pid, SIGKILL);
    waitpid(a->copy_pid, NULL, 0);
    a->copy_pid = 0;
    close_fd(&a->copy_pidfd);
    return 1;
}

static void on_copy_exit(sbx_io *io, int events)
{
    arun *a = io->data;
    int status, killed, rc;
    (void)events;

    rc = sbx_sandbox_try_reap(a->copy_pidfd, &status, &killed);
    if (rc == 0)
        return; /* not yet */
    if (rc < 0 || killed)
        status = COPY_FAILED;
    sbx_io_stop(&a->copy_io);
    close_fd(&a->copy_pidfd);
    a->copy_pid = 0;
    if (status == COPY_OK) {
        keep_preview(a, "a copy of the build");
    } else {
        if (status == COPY_DEPTH)
            sbx_warn("runs", "run %s preview not kept: deeper than %d levels", a->id, RUN_COPY_DEPTH);
        else if (status == COPY_ENTRIES)
            sbx_warn("runs", "run %s preview not kept: more than %d entries", a->id, RUN_COPY_ENTRIES);
        else if (status == COPY_BYTES)
            sbx_warn("runs", "run %s preview not kept: more than %d MB", a->id, a->disk_mb);
        else
            sbx_warn("runs", "run %s preview not kept: copy failed", a->id);
        trash_preview(a->r, a->id);
    }
    release_gate(a);
}

/* Starts the copy of <ws>/name into previews/<run id> in a child that
 * runs as the slot's uid. Returns 0 when started (the gate waits for it). */
static int copy_start(arun *a, const char *name)
{
    sbx_runs *r = a->r;
    int uid = r->slots[a->slot].uid, src = -1, dst = -1, rc = -1;
    struct stat st;
    copy_budget *b = NULL;

    if (mkdirat(r->preview_fd, a->id, 0755) < 0)
        goto out;
    src = openat(a->ws_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    dst = openat(r->preview_fd, a->id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (src < 0 || dst < 0 || fstat(src, &st) < 0 ||
        (uid >= 0 && fchown(dst, (uid_t)uid, (gid_t)uid) < 0))
        goto out;
    /* Allocated before the fork: the child only runs the copy. */
    b = calloc(1, sizeof(*b));
    if (!b)
        goto out;
    b->dev = st.st_dev;
    b->max_bytes = (uint64_t)a->disk_mb * 1024 * 1024;
    a->copy_pid = fork();
    if (a->copy_pid == 0) {
        int lo = src < dst ? src : dst, hi = src < dst ? dst : src;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* Nothing of the agent's (sockets, the token file) but the two trees. */
        close_range(3, (unsigned)lo - 1, 0);
        close_range((unsigned)lo + 1, (unsigned)hi - 1, 0);
        close_range((unsigned)hi + 1, ~0U, 0);
        /* As the build's uid: the copy can read no more than the build
         * could, and writes nothing a root process would. */
        if (uid >= 0 && (setgroups(0, NULL) < 0 || setresgid((gid_t)uid, (gid_t)uid, (gid_t)uid) < 0 ||
                         setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0))
            _exit(COPY_FAILED);
        _exit(copy_tree(src, dst, 1, b));
    }
    if (a->copy_pid < 0) {
        a->copy_pid = 0;
        goto out;
    }
    a->copy_pidfd = (int)syscall(SYS_pidfd_open, a->copy_pid, 0);
    if (a->copy_pidfd < 0) {
        /* No pidfd: this copy is not watched; it ends with its tree trashed. */
        copy_kill(a);
        trash_preview(r, a->id);
        rc = -2;
        goto out;
    }
    sbx_io_init(&a->copy_io, a->copy_pidfd, on_copy_exit, a);
    sbx_io_set(r->loop, &a->copy_io, SBX_READ);
    rc = 0;
out:
    if (rc == -1) {
        sbx_warn("runs", "run %s preview %s/ not copied: %s", a->id, name, strerror(errno));
        trash_preview(r, a->id);
    }
    free(b);
    close_fd(&src);
    close_fd(&dst);
    return rc;
}

/* Takes the workspace's public/ or dist/ to previews/<run id>: one
 * renameat (neither follows a symlink nor copies) when both are on one
 * filesystem, else a copy. A session's workspace keeps its public/ for the
 * next run, so there it is always a copy. Returns 1 while the copy runs. */
static int capture_preview(arun *a)
{
    static const char *const names[] = {"public", "dist"};
    sbx_runs *r = a->r;
    struct stat st;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (fstatat(a->ws_fd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
            continue;
        if (a->session[0])
            return copy_start(a, names[i]) == 0;
        if (renameat(a->ws_fd, names[i], r->preview_fd, a->id) == 0) {
            keep_preview(a, names[i]);
            return 0;
        }
        if (errno == EXDEV)
            return copy_start(a, names[i]) == 0;
        sbx_warn("runs", "run %s preview %s not kept: %s", a->id, names[i], strerror(errno));
        return 0;
    }
    return 0;
}

/* The wrapper waits on .sbx-agent/gate once the command has exited. */
static void try_gate(arun *a)
{
    struct stat st;

    if (a->gated || a->adir_fd < 0 || a->state != SBX_RS_RUNNING)
        return;
    if (fstatat(a->adir_fd, "gate", &st, AT_SYMLINK_NOFOLLOW) < 0)
        return;
    a->gated = 1;
    if (!capture_preview(a))
        release_gate(a);
}

/* The newline that lets the wrapper exit, once the preview is taken. */
static void release_gate(arun *a)
{
    struct stat st;
    int fd;

    /* O_RDWR never blocks on a FIFO and makes us a writer whether or not the
     * wrapper has opened its end yet; the newline waits in the pipe. */
    fd = openat(a->adir_fd, "gate", O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode) || write(fd, "\n", 1) != 1) {
        /* The build replaced the gate (its own business) or we are out of
         * descriptors; then the wrapper waits until the timeout. */
        sbx_warn("runs", "run %s: gate not opened: %s", a->id, fd < 0 ? strerror(errno) : "not a FIFO");
        if (fd >= 0)
            close(fd);
        return;
    }
    a->gate_fd = fd;
}

/* ---- inotify ---- */

static void on_inotify(sbx_io *io, int events)
{
    sbx_runs *r = io->data;
    char buf[RUN_INOTIFY_BUF] __attribute__((aligned(__alignof__(struct inotify_event))));
    int overflow = 0;
    (void)events;

    for (int reads = 0; reads < RUN_INOTIFY_READS; reads++) {
        ssize_t n = read(r->ino_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            p += sizeof(*ev) + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) {
                overflow = 1;
                continue;
            }
            for (int i = 0; i < r->capacity; i++) {
                arun *a = r->slots[i].run;
                if (!a || a->wd != ev->wd)
                    continue;
                if (ev->mask & IN_IGNORED)
                    a->wd = -1;
                else if (ev->len && strcmp(ev->name, "log") == 0)
                    a->log_dirty = 1;
                else if (ev->len && strcmp(ev->name, "gate") == 0)
                    try_gate(a);
            }
        }
    }
    for (int i = 0; i < r->capacity; i++) {
        arun *a = r->slots[i].run;
        if (!a)
            continue;
        if (overflow) {
            try_gate(a);
            a->log_dirty = 1;
        }
        if (a->log_dirty) {
            a->log_dirty = 0;
            emit(r, a->id, SBX_RUNS_LOG);
        }
    }
}

static void on_cron(sbx_timer *t)
{
    sbx_runs *r = t->data;
    for (int i = 0; i < r->capacity; i++)
        if (r->slots[i].run)
            try_gate(r->slots[i].run);
    trash_next(r);
    sbx_timer_start(r->loop, &r->cron_t, RUN_CRON_MS);
}

/* ---- history ---- */

static void run_free(arun *a)
{
    if (!a)
        return;
    copy_kill(a); /* shutdown: its tree goes with the next start's clean-up */
    close_fd(&a->ws_fd);
    close_fd(&a->adir_fd);
    close_fd(&a->log_fd);
    close_fd(&a->gate_fd);
    free(a->tail);
    free(a);
}

static void hist_push(sbx_runs *r, arun *a)
{
    a->prev = r->hist_tail;
    a->next = NULL;
    if (r->hist_tail)
        r->hist_tail->next = a;
    else
        r->hist_head = a;
    r->hist_tail = a;
    r->nhist++;
    while (r->nhist > SBX_RUNS_HISTORY) {
        arun *old = r->hist_head;
        r->hist_head = old->next;
        if (r->hist_head)
            r->hist_head->prev = NULL;
        else
            r->hist_tail = NULL;
        r->nhist--;
        if (r->slots[old->slot].last == old)
            r->slots[old->slot].last = NULL;
        run_free(old);
    }
}

/* ---- the end of a run ---- */

/* The last keep bytes of a log file into buf (keep + 1 bytes),
 * NUL-terminated; returns how many. A file is cut by where the read starts,
 * so the bytes before are never read (sbx_tail_of() is the cut in memory). */
static size_t read_log_tail(int fd, char *buf, size_t keep)
{
    struct stat st;
    size_t n = 0;

    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
        size_t size = (size_t)st.st_size, want = size < keep ? size : keep;
        ssize_t got = pread(fd, buf, want, (off_t)(size - want));
        n = got > 0 ? (size_t)got : 0;
    }
    buf[n] = '\0';
    return n;
}

static void read_tail(arun *a)
{
    a->tail = malloc(SBX_RUNS_TAIL_MAX + 1);
    if (a->tail)
        a->tail_len = read_log_tail(a->log_fd, a->tail, SBX_RUNS_TAIL_MAX);
}

static void on_sb_start(void *arg, sbx_sandbox *sb)
{
    arun *a = arg;
    (void)sb;
    sbx_debug("runs", "run %s sandbox started", a->id);
}

static void on_sb_exit(void *arg, sbx_sandbox *sb, const sbx_sandbox_status *st)
{
    arun *a = arg;
    sbx_runs *r = a->r;
    slot *s = &r->slots[a->slot];
    sbx_run_state to;
    struct stat lst;
    uint64_t log_bytes = 0, duration_ms = st->duration_ms;
    int cleanup_error = st->error && st->error[0]; /* st points into sb, freed below */

    a->exit_code = st->exit_code;
    if (a->canceled)
        to = SBX_RS_CANCELED;
    else if (st->expired)
        to = SBX_RS_ERROR;
    else if (st->end == SBX_SANDBOX_TIMED_OUT)
        to = SBX_RS_TIMED_OUT;
    else if (!st->ran || st->lost)
        to = SBX_RS_ERROR;
    else
        to = st->exit_code == 0 ? SBX_RS_SUCCEEDED : SBX_RS_FAILED;
    if (st->expired) {
        /* leasewatch.c: its worker's lease ran out in Redis. */
        snprintf(a->error, sizeof(a->error), "%s", st->error);
        a->exit_code = -1;
    } else if (to == SBX_RS_ERROR) {
        /* The sandbox's own output is bwrap's complaint; a network set-up
         * that failed says so in st->error. */
        snprintf(a->error, sizeof(a->error), "sandbox did not start the command (bwrap exit %d): %.150s",
                 st->exit_code, cleanup_error ? st->error : st->tail ? st->tail : "");
        for (char *c = a->error; *c; c++)
            if (*c == '\n')
                *c = ' ';
        a->exit_code = -1;
    } else if (to == SBX_RS_FAILED && st->limit && st->limit[0]) {
        snprintf(a->error, sizeof(a->error), "%s%s%s", st->limit, cleanup_error ? "; " : "",
                 cleanup_error ? st->error : "");
    } else if (cleanup_error) {
        snprintf(a->error, sizeof(a->error), "%s", st->error);
    } else if (to == SBX_RS_TIMED_OUT) {
        snprintf(a->error, sizeof(a->error), "killed after the timeout");
    }
    a->finished_ms = sbx_wall_ms();
    read_tail(a);
    if (a->log_fd >= 0 && fstat(a->log_fd, &lst) == 0)
        log_bytes = (uint64_t)lst.st_size;
    set_state(a, to);
    if (a->wd >= 0)
        inotify_rm_watch(r->ino_fd, a->wd);
    a->wd = -1;
    if (copy_kill(a)) /* timed out or canceled while copying its preview */
        trash_preview(r, a->id);
    close_fd(&a->gate_fd);
    close_fd(&a->adir_fd);
    close_fd(&a->ws_fd);
    sbx_sandbox_free(sb);
    a->sb = NULL;
    sbx_log(to == SBX_RS_ERROR || cleanup_error ? SBX_LOG_WARN : SBX_LOG_INFO, "runs",
            "run end id=%s slot=%s token=%" PRId64 " job=%s state=%s exit_code=%d log_bytes=%" PRIu64
            " duration_ms=%" PRIu64 " preview=%d%s%s",
            a->id, s->id, a->token, a->job_id, state_names[to], a->exit_code, log_bytes,
            duration_ms, a->has_preview, a->error[0] ? " error=" : "", a->error);

    s->run = NULL;
    if (s->last)
        close_fd(&s->last->log_fd); /* one whole log per slot beyond the running one */
    s->last = a;
    r->active--;
    hist_push(r, a);
    emit(r, a->id, SBX_RUNS_END);
}

/* ---- wake ---- */

/* Makes path a directory with mode; own = 0 leaves an existing one's mode
 * alone (the operator's work dir) but checks the slot uids can pass it. */
static int ensure_dir(const char *path, mode_t mode, int own, char *err, size_t errlen)
{
    struct stat st;
    int rc;

    if (mkdir(path, mode) < 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a directory", path);
        return -ENOTDIR;
    }
    if (own && chmod(path, mode) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    if (!own && geteuid() == 0 && !(st.st_mode & S_IXOTH)) {
        snprintf(err, errlen, "%s: sandbox uids cannot enter it (chmod o+x)", path);
        return -EACCES;
    }
    return 0;
}

/* The sandbox's side of a job: limits, network, uid, where; the same for a
 * one-off run and for a session's holder (whose first job sets them). */
static void job_spec(sbx_runs *r, const slot *s, const sbx_job *job, sbx_sandbox_spec *spec)
{
    int timeout_s = job->timeout_s > 0 ? job->timeout_s : SBX_DEFAULT_TIMEOUT_S;
    double cpus = job->cpus > 0 ? job->cpus : RUN_DEFAULT_CPUS;
    double cpu_s;

    memset(spec, 0, sizeof(*spec));
    spec->bwrap = r->bwrap;
    spec->work_dir = r->ws_dir;
    spec->uid = s->uid;
    spec->gid = s->uid;
    spec->network = job->network && r->allow_network;
    spec->net = &r->net;
    spec->egress = job->egress;
    spec->memory_mb = job->memory_mb > 0 ? job->memory_mb : RUN_DEFAULT_MEMORY_MB;
    spec->pids = job->pids > 0 ? job->pids : RUN_DEFAULT_PIDS;
    /* As the local provider: one process may use its whole wall time. */
    cpu_s = (double)timeout_s * (cpus > 1 ? cpus : 1);
    spec->cpu_s = cpu_s < INT32_MAX ? (int)cpu_s + ((double)(int)cpu_s < cpu_s) : INT32_MAX;
    spec->cpus = cpus; /* the cgroup's quota, when the agent runs as root */
    spec->disk_mb = job->disk_mb > 0 ? job->disk_mb : RUN_DEFAULT_DISK_MB;
    spec->disk_total = 1; /* as root: workspace and /tmp share one tmpfs of disk_mb */
    spec->timeout_s = timeout_s;
    spec->kill_grace_ms = r->kill_grace_ms;
}

/* The previous run of a session left its log and gate in the workspace:
 * unlinked, so this run's wrapper makes fresh ones (the earlier run keeps
 * its log through its descriptor). Relative to descriptors, following no
 * symlink: the build owns the workspace. */
static void session_ws_reset(const char *ws)
{
    int wfd = open(ws, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), afd;

    if (wfd < 0)
        return;
    afd = openat(wfd, AGENT_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (afd >= 0) {
        unlinkat(afd, "log", 0);
        unlinkat(afd, "gate", 0);
        close(afd);
    }
    close(wfd);
}

/* Everything the build needs from the job, as sandbox.h wants it; ss: the
 * session sandbox to run in, or NULL for a one-off. */
static int spawn(arun *a, const sbx_job *job, sbx_sandbox_session *ss, char *err, size_t errlen)
{
    sbx_runs *r = a->r;
    slot *s = &r->slots[a->slot];
    sbx_sandbox_spec spec;
    sbx_kv *files = NULL;
    char **argv = NULL, path[PATH_MAX], sess[SBX_RUNS_SESSION_MAX + 64] = "";
    size_t n = 0;
    int rc;

    files = calloc(job->nfiles + 1, sizeof(*files));
    argv = calloc(job->argc + 8, sizeof(*argv));
    if (!files || !argv) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    if (job->nfiles)
        memcpy(files, job->files, job->nfiles * sizeof(*files));
    files[job->nfiles].key = (char *)AGENT_LOG;
    files[job->nfiles].value = (char *)"";
    argv[n++] = (char *)"/bin/sh";
    argv[n++] = (char *)"-c";
    argv[n++] = (char *)RUN_WRAPPER;
    argv[n++] = (char *)"sbx-build";
    if (job->script) {
        argv[n++] = (char *)"/bin/sh";
        argv[n++] = (char *)"-c";
        argv[n++] = job->script;
    } else {
        for (size_t i = 0; i < job->argc; i++)
            argv[n++] = job->argv[i];
    }
    argv[n] = NULL;

    job_spec(r, s, job, &spec);
    spec.name = a->id;
    spec.argv = argv;
    spec.env = job->env;
    spec.nenv = job->nenv;
    spec.files = files;
    spec.nfiles = job->nfiles + 1;
    spec.session = ss;
    a->disk_mb = spec.disk_mb;
    if (ss)
        session_ws_reset(sbx_sandbox_session_workspace(ss));

    rc = sbx_sandbox_spawn(r->loop, &spec, on_sb_start, on_sb_exit, a, &a->sb, err, errlen);
    if (rc)
        goto out;

    /* The log and the gate live in the workspace; hold on to both now. */
    snprintf(path, sizeof(path), "%s",
             ss ? sbx_sandbox_session_workspace(ss) : sbx_sandbox_workspace(a->sb));
    a->ws_fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    a->adir_fd = a->ws_fd >= 0 ? openat(a->ws_fd, AGENT_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1;
    a->log_fd = a->adir_fd >= 0 ? openat(a->adir_fd, "log", O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
    if (a->log_fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "workspace %s: %s", path, strerror(-rc));
        sbx_sandbox_free(a->sb); /* kills, reaps, removes; no callbacks */
        a->sb = NULL;
        goto out;
    }
    snprintf(path + strlen(path), sizeof(path) - strlen(path), "/" AGENT_DIR);
    a->wd = inotify_add_watch(r->ino_fd, path, IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_ONLYDIR |
                                                   IN_DONT_FOLLOW);
    if (a->wd < 0)
        sbx_warn("runs", "run %s: inotify: %s (the 1 s sweep takes over)", a->id, strerror(errno));
    if (ss)
        snprintf(sess, sizeof(sess), " session=%s sandbox=%s resume_us=%" PRIu64, a->session,
                 sandbox_names[a->sandbox], a->resume_us);
    sbx_info("runs",
             "run start id=%s slot=%s token=%" PRId64 " job=%s attempt=%d pid=%d uid=%d network=%d "
             "memory_mb=%d pids=%d cpus=%g disk_mb=%d timeout_s=%d%s",
             a->id, s->id, a->token, a->job_id, a->attempt, (int)sbx_sandbox_pid(a->sb), spec.uid,
             spec.network, spec.memory_mb, spec.pids, spec.cpus, spec.disk_mb, spec.timeout_s, sess);
out:
    free(files);
    free(argv);
    return rc;
}

/* ---- session sandboxes ---- */

static void on_session_end(void *arg, sbx_sandbox_session *ss)
{
    slot *s = arg;

    if (!SBX_ASSERT(ss == s->ss)) {
        sbx_sandbox_session_free(ss);
        return;
    }
    set_sess(s, SS_NONE);
    s->ss = NULL;
    s->session[0] = '\0';
    sbx_sandbox_session_free(ss);
    emit(s->r, s->id, SBX_RUNS_SESSION_END);
}

/* Ends the slot's session sandbox (live -> dying); on_session_end follows. */
static void session_kill(slot *s, const char *why)
{
    if (s->sess != SS_LIVE)
        return;
    sbx_info("runs", "slot %s session %s: destroying its sandbox (%s)", s->id, s->session, why);
    set_sess(s, SS_DYING);
    sbx_sandbox_session_kill(s->ss);
}

/* The holder of a session's first run on slot s (none -> live). Returns 0,
 * -ENOSYS/-ENOTSUP when the sandbox has no sessions, or another negative
 * errno (-EINVAL: the job's own fault). */
static int session_open(sbx_runs *r, slot *s, const char *session, const sbx_job *job, char *err,
                        size_t errlen)
{
    sbx_sandbox_spec spec;
    char name[SBX_RUNS_SESSION_MAX + 16];
    int rc;

    job_spec(r, s, job, &spec);
    snprintf(name, sizeof(name), "%s-%d", session, s->index);
    spec.name = name;
    rc = sbx_sandbox_session_new(r->loop, &spec, on_session_end, s, &s->ss, err, errlen);
    if (rc) {
        s->ss = NULL;
        return rc;
    }
    snprintf(s->session, sizeof(s->session), "%s", session);
    set_sess(s, SS_LIVE);
    return 0;
}

/* Gets the slot ready for a run of session (NULL: a one-off run). Returns
 * 0 with *ss the sandbox to run in (NULL: one-off) and a->sandbox,
 * a->resume_ms set; or a wake status to answer, with err. */
static int session_for_run(sbx_runs *r, slot *s, arun *a, const char *session, const sbx_job *job,
                           sbx_sandbox_session **ss, sbx_wake_status *st, char *err, size_t errlen)
{
    int rc;

    *ss = NULL;
    a->sandbox = session ? SBX_RUNS_NEW : SBX_RUNS_ONE_OFF;
    a->resume_ms = 0;
    if (s->sess == SS_LIVE && !sbx_sandbox_session_alive(s->ss))
        set_sess(s, SS_DYING); /* its holder died; on_end is on its way */
    if (s->sess == SS_LIVE && (!session || strcmp(session, s->session) != 0))
        session_kill(s, session ? "the slot was leased to another session" : "a run without a session");
    if (s->sess == SS_DYING) {
        snprintf(err, errlen, "slot %s: the sandbox of session %s is being removed", s->id, s->session);
        *st = SBX_WAKE_BUSY;
        return -1;
    }
    if (!session)
        return 0;
    snprintf(a->session, sizeof(a->session), "%s", session);
    if (s->sess == SS_LIVE) {
        int paused = sbx_sandbox_session_paused(s->ss);
        uint64_t t0 = sbx_now_us();
        rc = sbx_sandbox_session_resume(s->ss, &a->resume_ms);
        a->resume_us = paused ? sbx_now_us() - t0 : 0;
        if (rc) {
            snprintf(err, errlen, "slot %s: session %s does not resume: %s", s->id, session, strerror(-rc));
            session_kill(s, "it did not resume");
            *st = SBX_WAKE_BUSY;
            return -1;
        }
        a->sandbox = paused ? SBX_RUNS_RESUMED : SBX_RUNS_REUSED;
        *ss = s->ss;
        return 0;
    }
    rc = session_open(r, s, session, job, err, errlen);
    if (rc == -ENOSYS || rc == -ENOTSUP) {
        /* A sandbox without sessions: each run of the session is new. */
        if (!r->no_sessions)
            sbx_warn("runs", "session sandboxes unavailable (%s): session runs get a fresh sandbox each",
                     err);
        r->no_sessions = 1;
        err[0] = '\0';
        return 0;
    }
    if (rc) {
        *st = rc == -EINVAL ? SBX_WAKE_INVALID : SBX_WAKE_FAILED;
        return -1;
    }
    *ss = s->ss;
    return 0;
}

sbx_wake_status sbx_runs_wake(sbx_runs *r, const sbx_wake_req *w, char run_id[SBX_RUN_ID_MAX],
                              int64_t *newest, char *err, size_t errlen)
{
    sbx_job *job = NULL;
    sbx_sandbox_session *ss = NULL;
    sbx_reject reject;
    arun *a = NULL;
    slot *s;
    int i, rc;
    sbx_wake_status st;

    err[0] = '\0';
    i = w->slot ? find_slot(r, w->slot) : -1;
    if (i < 0) {
        snprintf(err, errlen, "slot %.128s is not on this agent", w->slot ? w->slot : "(none)");
        return SBX_WAKE_NO_SLOT;
    }
    s = &r->slots[i];
    if (w->token <= 0) {
        snprintf(err, errlen, "token must be a positive integer");
        return SBX_WAKE_INVALID;
    }
    *newest = sbx_tokens_get(r->tokens, s->id);
    if (w->token < *newest) {
        snprintf(err, errlen, "token %" PRId64 " is older than %" PRId64 " for slot %s", w->token,
                 *newest, s->id);
        sbx_warn("runs", "wake refused: stale token slot=%s token=%" PRId64 " newest=%" PRId64,
                 s->id, w->token, *newest);
        return SBX_WAKE_STALE;
    }
    if (sbx_job_parse(w->job, w->job_len, &job, &reject, err, errlen) != SBX_OK)
        return SBX_WAKE_INVALID;
    if (s->last_token == w->token && s->last_run_id[0]) {
        /* A token is one lease of one job: the same pair is a retry. */
        if (strcmp(s->last_job_id, job->job_id) == 0) {
            snprintf(run_id, SBX_RUN_ID_MAX, "%s", s->last_run_id);
            st = SBX_WAKE_EXISTING;
        } else {
            snprintf(err, errlen, "token %" PRId64 " of slot %s was used for job %s", w->token,
                     s->id, s->last_job_id);
            st = SBX_WAKE_STALE;
        }
        goto out;
    }
    if (s->run) {
        snprintf(run_id, SBX_RUN_ID_MAX, "%s", s->run->id);
        snprintf(err, errlen, "slot %s runs %s (token %" PRId64 ")", s->id, s->run->id, s->run->token);
        if (w->token > s->run->token) {
            if (sbx_tokens_raise(r->tokens, s->id, w->token) == 0)
                *newest = w->token;
            if (!s->run->canceled) {
                sbx_warn("runs", "run %s lost its lease to token %" PRId64 ": canceling",
                         s->run->id, w->token);
                s->run->canceled = 1;
                sbx_sandbox_cancel(s->run->sb);
            }
        }
        st = SBX_WAKE_BUSY;
        goto out;
    }
    if (r->draining) {
        snprintf(err, errlen, "agent is shutting down");
        st = SBX_WAKE_DRAINING;
        goto out;
    }

    rc = sbx_tokens_raise(r->tokens, s->id, w->token);
    if (rc) {
        snprintf(err, errlen, "cannot record the token: %s", strerror(-rc));
        st = SBX_WAKE_FAILED;
        goto out;
    }
    *newest = w->token;
    a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        st = SBX_WAKE_FAILED;
        goto out;
    }
    a->r = r;
    a->ws_fd = a->adir_fd = a->log_fd = a->gate_fd = a->wd = a->copy_pidfd = -1;
    a->slot = i;
    a->token = w->token;
    a->attempt = w->attempt;
    a->exit_code = -1;
    a->state = SBX_RS_RUNNING;
    a->started_ms = sbx_wall_ms();
    snprintf(a->id, sizeof(a->id), "r%08" PRIx32 "-%" PRIu64, r->nonce, ++r->seq);
    snprintf(a->job_id, sizeof(a->job_id), "%s", job->job_id);
    if (session_for_run(r, s, a, w->session, job, &ss, &st, err, errlen) != 0) {
        if (st != SBX_WAKE_BUSY)
            sbx_warn("runs", "wake failed slot=%s token=%" PRId64 " job=%s session=%s: %s", s->id,
                     w->token, a->job_id, w->session ? w->session : "-", err);
        goto out;
    }
    rc = spawn(a, job, ss, err, errlen);
    if (rc) {
        sbx_warn("runs", "wake failed slot=%s token=%" PRId64 " job=%s: %s", s->id, w->token,
                 a->job_id, err);
        st = rc == -EINVAL ? SBX_WAKE_INVALID : SBX_WAKE_FAILED;
        if (ss && rc != -EINVAL)
            session_kill(s, "a run could not start in it");
        goto out;
    }
    if (s->last)
        close_fd(&s->last->log_fd);
    s->run = a;
    s->last_token = w->token;
    snprintf(s->last_run_id, sizeof(s->last_run_id), "%s", a->id);
    snprintf(s->last_job_id, sizeof(s->last_job_id), "%s", a->job_id);
    r->active++;
    snprintf(run_id, SBX_RUN_ID_MAX, "%s", a->id);
    a = NULL;
    st = SBX_WAKE_STARTED;
    /* The command may have been quicker than the watch. */
    try_gate(s->run);
out:
    run_free(a);
    sbx_job_free(job);
    return st;
}

sbx_cancel_status sbx_runs_cancel(sbx_runs *r, const char *run_id, int64_t token, int64_t *newest)
{
    arun *a = find_run(r, run_id);
    slot *s;

    if (!a)
        return SBX_CANCEL_UNKNOWN;
    s = &r->slots[a->slot];
    *newest = sbx_tokens_get(r->tokens, s->id);
    if (token < *newest || token <= 0) {
        sbx_warn("runs", "cancel refused: stale token run=%s slot=%s token=%" PRId64
                 " newest=%" PRId64, a->id, s->id, token, *newest);
        return SBX_CANCEL_STALE;
    }
    if (a->state != SBX_RS_RUNNING || a->canceled)
        return SBX_CANCEL_OK;
    if (token > *newest && sbx_tokens_raise(r->tokens, s->id, token) == 0)
        *newest = token;
    sbx_info("runs", "run cancel id=%s slot=%s token=%" PRId64, a->id, s->id, token);
    a->canceled = 1;
    sbx_sandbox_cancel(a->sb);
    return SBX_CANCEL_OK;
}

sbx_sop_status sbx_runs_session_op(sbx_runs *r, sbx_sop op, const char *slot_id, const char *session,
                                   int64_t token, int64_t *newest, char *err, size_t errlen)
{
    const char *what = op == SBX_SOP_PAUSE ? "pause" : "destroy";
    int i = slot_id ? find_slot(r, slot_id) : -1;
    slot *s;
    int rc;

    err[0] = '\0';
    if (i < 0) {
        snprintf(err, errlen, "slot %.128s is not on this agent", slot_id ? slot_id : "(none)");
        return SBX_SOP_NO_SLOT;
    }
    s = &r->slots[i];
    *newest = sbx_tokens_get(r->tokens, s->id);
    if (token <= 0 || token < *newest) {
        snprintf(err, errlen, "token %" PRId64 " is older than %" PRId64 " for slot %s", token,
                 *newest, s->id);
        sbx_warn("runs", "session %s refused: stale token slot=%s session=%s token=%" PRId64
                 " newest=%" PRId64, what, s->id, session, token, *newest);
        return SBX_SOP_STALE;
    }
    /* Recorded before it is acted on, as for a wake. */
    if (token > *newest) {
        rc = sbx_tokens_raise(r->tokens, s->id, token);
        if (rc) {
            snprintf(err, errlen, "cannot record the token: %s", strerror(-rc));
            return SBX_SOP_FAILED;
        }
        *newest = token;
    }
    if (s->run) {
        /* The sweeper holds the slot's lease: a run of an older token has
         * lost it (as in a wake); one of this token is the caller's own. */
        snprintf(err, errlen, "slot %s runs %s (token %" PRId64 ")", s->id, s->run->id, s->run->token);
        if (token > s->run->token && !s->run->canceled) {
            sbx_warn("runs", "run %s lost its lease to token %" PRId64 " (session %s): canceling",
                     s->run->id, token, what);
            s->run->canceled = 1;
            sbx_sandbox_cancel(s->run->sb);
        }
        return SBX_SOP_BUSY;
    }
    if (s->sess == SS_LIVE && !sbx_sandbox_session_alive(s->ss))
        set_sess(s, SS_DYING);
    if (s->sess == SS_NONE || strcmp(s->session, session) != 0) {
        snprintf(err, errlen, "slot %s holds no sandbox of session %s", s->id, session);
        return SBX_SOP_ABSENT;
    }
    if (op == SBX_SOP_DESTROY)
        session_kill(s, "DESTROY");
    if (s->sess == SS_DYING) {
        /* Done once on_end has removed it all: then "absent". */
        snprintf(err, errlen, "slot %s: the sandbox of session %s is being removed", s->id, session);
        return SBX_SOP_REMOVING;
    }
    rc = sbx_sandbox_session_pause(s->ss);
    switch (rc) {
    case 0:
        sbx_info("runs", "slot %s session %s paused token=%" PRId64, s->id, session, token);
        return SBX_SOP_DONE;
    case -ENOTSUP:
    case -ENOSYS:
        snprintf(err, errlen, "no cgroup freezer on this agent: %s", strerror(-rc));
        return SBX_SOP_UNSUPPORTED;
    case -EBUSY:
        snprintf(err, errlen, "slot %s: session %s has a run", s->id, session);
        return SBX_SOP_BUSY;
    case -ESRCH:
        snprintf(err, errlen, "slot %s: session %s is gone", s->id, session);
        return SBX_SOP_ABSENT;
    default:
        snprintf(err, errlen, "slot %s: session %s not paused: %s", s->id, session, strerror(-rc));
        return SBX_SOP_FAILED;
    }
}

/* ---- queries ---- */

size_t sbx_runs_capacity(const sbx_runs *r) { return (size_t)r->capacity; }
const char *sbx_runs_slot_id(const sbx_runs *r, size_t i) { return r->slots[i].id; }
int sbx_runs_slot_busy(const sbx_runs *r, size_t i) { return r->slots[i].run != NULL; }

int sbx_runs_slot_session(const sbx_runs *r, size_t i, const char **name, const char **state)
{
    const slot *s = &r->slots[i];
    if (s->sess == SS_NONE)
        return 0;
    *name = s->session;
    *state = s->sess == SS_DYING                      ? "dying"
             : s->run                                 ? "running"
             : sbx_sandbox_session_paused(s->ss)      ? "paused"
                                                      : "idle";
    return 1;
}
size_t sbx_runs_active(const sbx_runs *r) { return r->active; }
void sbx_runs_drain(sbx_runs *r) { r->draining = 1; }
int sbx_runs_draining(const sbx_runs *r) { return r->draining; }

size_t sbx_runs_running_ids(const sbx_runs *r, const char **ids, size_t max)
{
    size_t n = 0;
    for (int i = 0; i < r->capacity && n < max; i++)
        if (r->slots[i].run)
            ids[n++] = r->slots[i].run->id;
    return n;
}

int sbx_runs_trust(sbx_runs *r, const char *run_id, uint64_t until_ms)
{
    arun *a = find_run(r, run_id);
    if (!a || !a->sb || a->state != SBX_RS_RUNNING)
        return -ENOENT;
    return sbx_sandbox_trust(a->sb, until_ms);
}

int sbx_runs_view(sbx_runs *r, const char *run_id, sbx_run_view *v)
{
    arun *a = find_run(r, run_id);
    struct stat st;

    if (!a)
        return -ENOENT;
    memset(v, 0, sizeof(*v));
    v->id = a->id;
    v->slot = r->slots[a->slot].id;
    v->job_id = a->job_id;
    v->token = a->token;
    v->attempt = a->attempt;
    v->state = a->state;
    v->exit_code = a->state == SBX_RS_RUNNING ? -1 : a->exit_code;
    v->started_ms = a->started_ms;
    v->finished_ms = a->finished_ms;
    v->error = a->error;
    v->has_preview = a->has_preview && strcmp(r->slots[a->slot].preview_run, a->id) == 0;
    v->session = a->session;
    v->sandbox = a->sandbox;
    v->resume_ms = a->resume_ms;
    if (a->log_fd >= 0 && fstat(a->log_fd, &st) == 0)
        v->log_bytes = (uint64_t)st.st_size;
    else
        v->log_bytes = a->tail_len;
    return 0;
}

long sbx_runs_tail(sbx_runs *r, const char *run_id, char *buf, size_t cap)
{
    arun *a = find_run(r, run_id);

    if (!a || cap == 0)
        return -1;
    if (a->tail) {
        size_t n = a->tail_len;
        const char *t = sbx_tail_of(a->tail, &n, cap - 1);
        memcpy(buf, t, n);
        buf[n] = '\0';
        return (long)n;
    }
    return (long)read_log_tail(a->log_fd, buf, cap - 1);
}

int sbx_runs_log_open(sbx_runs *r, const char *run_id)
{
    arun *a = find_run(r, run_id);
    int fd;
    if (!a)
        return -ENOENT;
    if (a->log_fd < 0)
        return -ENODATA;
    fd = fcntl(a->log_fd, F_DUPFD_CLOEXEC, 3);
    return fd < 0 ? -errno : fd;
}

int sbx_runs_preview_open(sbx_runs *r, const char *run_id)
{
    int fd;
    for (int i = 0; i < r->capacity; i++) {
        if (strcmp(r->slots[i].preview_run, run_id) != 0)
            continue;
        fd = openat(r->preview_fd, run_id, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        return fd < 0 ? -errno : fd;
    }
    return -ENOENT;
}

/* ---- setup ---- */

/* A crashed agent's workspaces may each still be a mounted tmpfs, which
 * one rm --one-file-system of ws/ would skip: each is removed on its own,
 * after sbx_sandbox_remove_tree detaches it. */
static int clean_workspaces(const char *ws)
{
    char path[PATH_MAX + 16];
    struct dirent *de;
    DIR *d = opendir(ws);
    int rc = 0;

    if (!d)
        return errno == ENOENT ? 0 : -errno;
    while (!rc && (de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", ws, de->d_name) >= sizeof(path))
            rc = -ENAMETOOLONG;
        else
            rc = sbx_sandbox_remove_tree(path);
    }
    closedir(d);
    return rc;
}

/* Leftovers of a previous agent on this work dir: its builds' processes,
 * workspaces and previews (their runs are gone with its memory). */
static int clean_start(sbx_runs *r, char *err, size_t errlen)
{
    static const char *const dirs[] = {WS_DIR, PREVIEW_DIR, TRASH_DIR};
    char path[PATH_MAX + 16];
    int rc;

    for (int i = 0; i < r->capacity; i++)
        if (r->slots[i].uid >= 0 && sbx_sandbox_sweep_uid((uid_t)r->slots[i].uid, RUN_SWEEP_MS) != 0) {
            snprintf(err, errlen, "processes of uid %d survive SIGKILL (SBX_UID_BASE must be "
                     "reserved for this agent)", r->slots[i].uid);
            return -EBUSY;
        }
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", r->work_dir, dirs[i]);
        rc = i == 0 ? clean_workspaces(path) : 0;
        if (!rc)
            rc = sbx_sandbox_remove_tree(path);
        if (rc) {
            snprintf(err, errlen, "%s: not removed: %s", path, strerror(-rc));
            return rc;
        }
        /* bwrap runs as the slot uid and must reach ws/<run> to bind it. */
        rc = ensure_dir(path, i == 0 ? 0711 : 0700, 1, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

int sbx_runs_new(sbx_loop *loop, const sbx_runs_config *cfg, sbx_runs_event_cb cb, void *arg,
                 sbx_runs **out, char *err, size_t errlen)
{
    sbx_runs *r = calloc(1, sizeof(*r));
    char path[PATH_MAX + 16];
    int rc = 0, root = geteuid() == 0;

    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->loop = loop;
    r->cb = cb;
    r->cb_arg = arg;
    r->preview_fd = r->trash_fd = r->ino_fd = r->rm_pidfd = -1;
    r->capacity = cfg->capacity;
    r->allow_network = cfg->allow_network;
    r->kill_grace_ms = cfg->kill_grace_ms;
    sbx_timer_init(&r->cron_t, on_cron, r);
    if (getrandom(&r->nonce, sizeof(r->nonce), 0) != sizeof(r->nonce))
        r->nonce = (uint32_t)(sbx_wall_ms() ^ (uint64_t)getpid() << 16);
    if (cfg->capacity < 1 ||
        (size_t)snprintf(r->work_dir, sizeof(r->work_dir), "%s", cfg->work_dir) >= sizeof(r->work_dir)) {
        snprintf(err, errlen, "work dir path too long or capacity < 1");
        rc = -EINVAL;
        goto out;
    }
    snprintf(r->ws_dir, sizeof(r->ws_dir), "%s/" WS_DIR, r->work_dir);
    r->bwrap = sbx_sandbox_resolve_exe(cfg->bwrap);
    if (!r->bwrap) {
        snprintf(err, errlen, "bwrap %s: not found or not executable", cfg->bwrap);
        rc = -ENOENT;
        goto out;
    }
    if (r->allow_network) {
        rc = sbx_netns_host_init(&r->net, cfg->egress_allow, cfg->egress_deny, err, errlen);
        if (rc)
            goto out;
    }
    r->slots = calloc((size_t)cfg->capacity, sizeof(*r->slots));
    if (!r->slots) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    for (int i = 0; i < cfg->capacity; i++) {
        slot *s = &r->slots[i];
        if (cfg->capacity == 1)
            snprintf(s->id, sizeof(s->id), "%s", cfg->agent_id);
        else
            snprintf(s->id, sizeof(s->id), "%s#%d", cfg->agent_id, i);
        s->uid = root ? cfg->uid_base + i : -1;
        s->r = r;
        s->index = i;
    }

    rc = ensure_dir(r->work_dir, 0711, 0, err, errlen);
    if (rc)
        goto out;
    rc = clean_start(r, err, errlen);
    if (rc)
        goto out;
    snprintf(path, sizeof(path), "%s/" TOKENS_FILE, r->work_dir);
    rc = sbx_tokens_open(path, &r->tokens, err, errlen);
    if (rc)
        goto out;
    snprintf(path, sizeof(path), "%s/" PREVIEW_DIR, r->work_dir);
    r->preview_fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    snprintf(path, sizeof(path), "%s/" TRASH_DIR, r->work_dir);
    r->trash_fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    r->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (r->preview_fd < 0 || r->trash_fd < 0 || r->ino_fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", r->work_dir, strerror(errno));
        goto out;
    }
    sbx_io_init(&r->ino_io, r->ino_fd, on_inotify, r);
    if ((rc = sbx_io_set(loop, &r->ino_io, SBX_READ)) != 0) {
        snprintf(err, errlen, "loop: %s", strerror(-rc));
        goto out;
    }
    sbx_timer_start(loop, &r->cron_t, RUN_CRON_MS);
    *out = r;
    r = NULL;
out:
    if (r)
        sbx_runs_free(r);
    return rc;
}

void sbx_runs_free(sbx_runs *r)
{
    if (!r)
        return;
    sbx_timer_stop(r->loop, &r->cron_t);
    sbx_io_stop(&r->ino_io);
    sbx_io_stop(&r->rm_io);
    if (r->slots) {
        for (int i = 0; i < r->capacity; i++) {
            arun *a = r->slots[i].run;
            if (!a)
                continue;
            sbx_sandbox_free(a->sb); /* SIGKILL, reap, remove; no callbacks */
            sbx_info("runs", "run killed at shutdown id=%s slot=%s token=%" PRId64, a->id,
                     r->slots[i].id, a->token);
            run_free(a);
        }
        for (int i = 0; i < r->capacity; i++) {
            slot *s = &r->slots[i];
            if (!s->ss)
                continue;
            sbx_info("runs", "slot %s session %s: sandbox removed at shutdown", s->id, s->session);
            sbx_sandbox_session_free(s->ss); /* SIGKILL, reap, remove; no callbacks */
            s->ss = NULL;
        }
    }
    while (r->hist_head) {
        arun *a = r->hist_head;
        r->hist_head = a->next;
        run_free(a);
    }
    if (r->rm_pid > 0) {
        kill(r->rm_pid, SIGKILL);
        waitpid(r->rm_pid, NULL, 0);
    }
    close_fd(&r->rm_pidfd);
    close_fd(&r->ino_fd);
    close_fd(&r->preview_fd);
    close_fd(&r->trash_fd);
    sbx_tokens_free(r->tokens);
    free(r->slots);
    free(r->bwrap);
    sbx_netns_host_free(&r->net);
    free(r);
}
