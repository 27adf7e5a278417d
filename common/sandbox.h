/* sandbox.h — run one command in a bubblewrap sandbox, driven by the loop.
 *
 * A sandbox owns everything one build touches on the host: its workspace
 * directory, the bwrap process and the processes inside it, the pipe carrying
 * their output, and (when the caller runs as root) the uid it runs as. It
 * knows nothing about jobs, slots or providers, so the local provider and the
 * VM agent share it: the caller says what to run and with which limits, and
 * hears back twice, from the loop:
 *
 *   sbx_sandbox_spawn() -> on_start -> on_exit
 *
 * on_start fires on the next loop turn after a successful spawn; on_exit
 * fires exactly once, always after on_start, and only when the process has
 * exited, its output has reached EOF (or a short drain deadline passed), no
 * process of the sandbox's uid is left, and the workspace is removed. When
 * spawn returns an error, neither callback is called.
 *
 * A sandbox may also be kept between runs: see "Sessions" below.
 *
 * Memory: the sandbox is the caller's to free with sbx_sandbox_free(), which
 * may be called from inside on_exit (both callbacks run from timers, never
 * from an fd callback). Freeing a sandbox that has not finished kills it,
 * reaps it and removes its workspace synchronously, without callbacks.
 */
#ifndef SBX_SANDBOX_H
#define SBX_SANDBOX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"
#include "loop.h"
#include "netns.h"
#include "sbx.h"

/* Bytes of output kept: the last ones, as many as the runs table stores. */
#define SBX_SANDBOX_TAIL_MAX SBX_LOG_TAIL_MAX

typedef struct sbx_sandbox sbx_sandbox;
typedef struct sbx_sandbox_session sbx_sandbox_session;

/* Live output: stream 1 is stdout, 2 stderr; data is raw, as read. Called
 * from the loop (an fd callback), after spawn returned and before on_exit. */
typedef void (*sbx_sandbox_output_cb)(void *arg, int stream, const char *data, size_t len);

typedef struct sbx_sandbox_spec {
    const char *bwrap;       /* absolute path of bwrap */
    const char *work_dir;    /* absolute, existing parent of the workspace */
    const char *name;        /* workspace directory name; no '/' */
    char *const *argv;       /* NULL-terminated command, or NULL to run script */
    const char *script;      /* run with /bin/sh -c when argv is NULL */
    const sbx_kv *env;       /* the command's environment, after PATH and HOME=/workspace */
    size_t nenv;
    const sbx_kv *files;     /* relative path -> content, written into the workspace */
    size_t nfiles;
    int uid, gid;            /* run as these (needs root); -1: as the caller */
    int network;             /* its own network namespace with a NAT and the
                                egress filter (netns.h); else loopback only */
    const sbx_netns_host *net; /* network: the host's policy and tools */
    char *const *egress;     /* network: the job's allowlist, NULL-terminated;
                                NULL: not given */
    int memory_mb;           /* the sandbox's cgroup (tmpfs pages included) and
                                RLIMIT_AS per process; 0: none */
    int pids;                /* the cgroup's pids.max, RLIMIT_NPROC of the uid; 0: none */
    double cpus;             /* the cgroup's CPU quota in cores; 0: none */
    int cpu_s;               /* RLIMIT_CPU per process; 0: none */
    int disk_mb;             /* RLIMIT_FSIZE per file; 0: none. /tmp and /dev/shm
                                are tmpfs of min(disk_mb, memory_mb) */
    int disk_total;          /* as root with disk_mb > 0: the workspace and /tmp
                                share one tmpfs of disk_mb (the workspace is then
                                <name>/ws, see sbx_sandbox_workspace) */
    int timeout_s;           /* wall time from spawn; 0: none */
    int kill_grace_ms;       /* cancel: SIGTERM, then SIGKILL after this */
    sbx_sandbox_output_cb output; /* NULL: stdout and stderr share one pipe, only
                                     the tail is kept; else two pipes, each read
                                     handed over as it comes */
    void *output_arg;
    sbx_sandbox_session *session; /* NULL: a one-off sandbox, as above. Else
                                     the command runs inside that session (see
                                     "Sessions" below): only argv, script, env,
                                     files, cpu_s, timeout_s, kill_grace_ms and
                                     output are read; the rest is the session's */
} sbx_sandbox_spec;

typedef enum sbx_sandbox_end {
    SBX_SANDBOX_EXITED,      /* the command ended by itself */
    SBX_SANDBOX_TIMED_OUT,   /* killed at timeout_s */
    SBX_SANDBOX_CANCELED,    /* sbx_sandbox_cancel() was called first */
} sbx_sandbox_end;

typedef struct sbx_sandbox_status {
    sbx_sandbox_end end;
    int ran;                 /* 0: bwrap never got to exec the command */
    int lost;                /* bwrap itself died by a signal sbx did not send
                              * (the host or an operator killed it, not the build:
                              * bwrap exits normally with the build's status) */
    int exit_code;           /* 0..255; 128+signal when killed */
    const char *tail;        /* last output bytes, NUL-terminated; valid during the call */
    size_t tail_len;
    uint64_t out_bytes;      /* all output bytes, kept or not */
    uint64_t duration_ms;    /* spawn to exit */
    const char *error;       /* "" or a cleanup problem worth reporting */
    int oom_killed;          /* the cgroup's memory limit killed a process */
    int expired;             /* its supervisor killed it: the deadline of
                              * sbx_sandbox_trust() passed without a newer one */
    int disk_full;           /* the command failed with the disk_total tmpfs full */
    const char *limit;       /* "" or which limit stopped it, worded for the run's
                              * error: "memory limit of 256 MB reached: killed by
                              * the OOM killer", "disk limit of 100 MB reached" */
} sbx_sandbox_status;

typedef void (*sbx_sandbox_start_cb)(void *arg, sbx_sandbox *s);
typedef void (*sbx_sandbox_exit_cb)(void *arg, sbx_sandbox *s, const sbx_sandbox_status *st);

/* Creates the workspace, writes the files and starts bwrap. Returns 0 and
 * sets *out, or a negative errno and one line in err: -EINVAL for a bad spec
 * (a file path escaping the workspace, files that clash, a file name too
 * long for the filesystem, an env name with '='), -EBUSY when
 * processes of spec->uid survive a kill, -EEXIST when the workspace exists. */
int sbx_sandbox_spawn(sbx_loop *loop, const sbx_sandbox_spec *spec,
                      sbx_sandbox_start_cb on_start, sbx_sandbox_exit_cb on_exit, void *arg,
                      sbx_sandbox **out, char *err, size_t errlen);
/* SIGTERM to the command's session now, SIGKILL to everything after
 * kill_grace_ms; on_exit reports SBX_SANDBOX_CANCELED. */
void sbx_sandbox_cancel(sbx_sandbox *s);
pid_t sbx_sandbox_pid(const sbx_sandbox *s);
/* The owner vouches for the build until until_ms (sbx_now_ms() clock): the
 * first call starts the sandbox's supervisor (supervise.h), a process that
 * SIGKILLs the whole sandbox when that passes without a newer call, or when
 * we die, even if this process is frozen (SIGSTOP) and never runs again;
 * later calls move the deadline (one non-blocking write). on_exit then
 * reports expired. Without a call, no supervisor. 0 or a negative errno
 * (no supervisor: the build runs on, as without a call). */
int sbx_sandbox_trust(sbx_sandbox *s, uint64_t until_ms);
const char *sbx_sandbox_workspace(const sbx_sandbox *s);
void sbx_sandbox_free(sbx_sandbox *s);

/* ---- Sessions ----
 *
 * A session sandbox is kept between runs: its workspace (and disk_total
 * tmpfs), uid, cgroup (limits), namespaces (network included) and the
 * processes a run leaves in the background (a dev server), so a later run
 * sees them alive. A holder process (bwrap whose command waits forever) owns
 * it; each run enters the holder's namespaces and cgroup, with the same
 * seccomp filter, uid and rlimits:
 *
 *   sbx_sandbox_session_new(spec)            the holder; workspace created
 *   spec.session = ss; sbx_sandbox_spawn()   one run at a time, as often as
 *                                            wanted: on_start -> on_exit
 *   sbx_sandbox_session_pause() / _resume()  freeze / thaw its cgroup
 *   sbx_sandbox_session_kill() -> on_end     everything killed and removed
 *   sbx_sandbox_session_free()
 *
 * A run in a session: job files are written over the workspace (replacing
 * files of the same name); on_exit fires once the command itself has exited
 * (plus a short drain of its output: background processes may keep the pipe
 * open, and their later output is read and dropped, never left to block or
 * SIGPIPE them); no uid sweep before or after it. A timeout kills the whole
 * session; so does a cancel, after SIGTERM to the command's process group
 * and up to kill_grace_ms for it to exit (what the job left in the
 * background is the job's too). on_end follows, and the caller's next run
 * needs a new session. A run's on_exit may come before the session's
 * cleanup has finished; on_end says when it has. Spawn returns -EBUSY
 * while the session has a run, -ESRCH when the session is dead or dying,
 * and resumes a paused session first (call _resume() yourself to learn how
 * long that took).
 * A spawn right after _new() is fine: the command waits until the holder is
 * up (network set up included), and on_start comes once it runs (so it
 * marks create-to-running); if the holder dies first, the run ends with
 * ran = 0 (on_start, then on_exit).
 *
 * on_end(arg, ss) fires exactly once, from the loop, when the session died
 * (killed, its holder lost, or its supervisor fired) and everything is gone:
 * processes, uid, cgroup, workspace. A run still going then has had its
 * on_exit before. The caller frees ss (may do so inside on_end).
 */
typedef void (*sbx_sandbox_session_cb)(void *arg, sbx_sandbox_session *ss);

/* Reads every field of spec but argv, script, env, files, cpu_s,
 * timeout_s, output and session. Errors as sbx_sandbox_spawn(). */
int sbx_sandbox_session_new(sbx_loop *loop, const sbx_sandbox_spec *spec,
                            sbx_sandbox_session_cb on_end, void *arg,
                            sbx_sandbox_session **out, char *err, size_t errlen);
/* 1 while the session can take a run (starting, running, idle or paused);
 * 0 once it is dying or dead. */
int sbx_sandbox_session_alive(const sbx_sandbox_session *ss);
/* 1 when it has a run (spawned and not yet on_exit'ed). */
int sbx_sandbox_session_busy(const sbx_sandbox_session *ss);
/* Freezes every process of the session (cgroup freezer: v1 freezer.state,
 * v2 cgroup.freeze), synchronously. 0 (also when already paused), -EBUSY
 * while a run is going, -ENOTSUP without a freezer, -ESRCH when dead. */
int sbx_sandbox_session_pause(sbx_sandbox_session *ss);
int sbx_sandbox_session_paused(const sbx_sandbox_session *ss);
/* Thaws it, synchronously; *resume_ms (may be NULL) is how long that took,
 * 0 when it was not paused. 0 or a negative errno. */
int sbx_sandbox_session_resume(sbx_sandbox_session *ss, int *resume_ms);
/* Kills everything of the session (a run going ends first, CANCELED);
 * cleanup runs from the loop and on_end follows. No-op when dying. */
void sbx_sandbox_session_kill(sbx_sandbox_session *ss);
/* Kills, reaps and removes synchronously what is left, without callbacks;
 * a run still going must have been freed first. NULL is fine. */
void sbx_sandbox_session_free(sbx_sandbox_session *ss);
/* The workspace on the host (what /workspace is inside). */
const char *sbx_sandbox_session_workspace(const sbx_sandbox_session *ss);
/* A TCP socket to 127.0.0.1:port inside the session's network namespace
 * (a dev server's, for the preview proxy), non-blocking, its connect
 * started (poll for writable, then SO_ERROR says how it went). The socket is
 * made by a short-lived thread that enters the namespace, so the caller's
 * thread never changes namespace. The caller needs CAP_SYS_ADMIN over the
 * holder's user namespace (root, as whoever spawns sessions with a uid is).
 * Works with network on or off (loopback is always up). Returns the fd, or
 * -errno with a line in err: -EAGAIN before the session is up, -ESRCH when
 * it is dead or dying. A paused session's kernel still accepts the
 * connection; its server answers once resumed. */
int sbx_sandbox_session_dial(sbx_sandbox_session *ss, int port, char *err, size_t errlen);

/* Host chores, synchronous, for startup and shutdown. */
/* SIGKILLs every process of uid (the caller must be root; uid must be one
 * reserved for sandboxes) and waits up to wait_ms until none is left.
 * Returns 0, or -EBUSY if some remain. */
int sbx_sandbox_sweep_uid(uid_t uid, int wait_ms);
/* Counts the live (non-zombie) processes whose real, effective or saved uid
 * is uid. */
int sbx_sandbox_count_uid(uid_t uid);
/* rm -rf --one-file-system path, after detaching a filesystem mounted on
 * path itself (a disk_total tmpfs); returns 0 or a negative errno. */
int sbx_sandbox_remove_tree(const char *path);
/* Removes the cgroups that sandboxes of (work_dir, uid) left behind (a
 * crashed predecessor's), after uid was swept. Every spawn with a uid does
 * this for its own; this is for start-up and tests. */
void sbx_sandbox_sweep_cgroups(const char *work_dir, int uid);

/* bwrap given as a bare name is looked up in PATH, once, by whoever spawns
 * sandboxes: the sandbox execs an absolute path with an empty environment.
 * Returns a malloc'd absolute path, or NULL if there is no such executable. */
char *sbx_sandbox_resolve_exe(const char *name);
/* write(2) until all n bytes are out (EINTR retried); 0 or -errno. */
int sbx_sandbox_write_all(int fd, const char *p, size_t n);
/* Reaps the child behind pidfd without blocking, for a pidfd watched on the
 * loop. Returns 1 when it is gone and sets *status to its exit code, or to
 * 128 + the signal that killed it (*killed = 1; killed may be NULL); 0 when it
 * has not exited yet (or EINTR): wait for the pidfd again; -errno when waitid
 * failed (ECHILD: someone else reaped it, e.g. a uid sweep), the child being
 * gone either way. */
int sbx_sandbox_try_reap(int pidfd, int *status, int *killed);

#endif
