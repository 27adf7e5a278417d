/* provider_docker.c — one container per run (or per session, see
 * "Sessions" below), through the Docker Engine API
 * (dockerd itself, or Podman's compatible service), on the event loop via
 * http.c.
 *
 * A run is a chain of engine calls, one in flight at a time, plus a log
 * read beside the wait and at most one kill:
 *
 *   [ping ─▶ info] ─▶ create [─▶ pull ─▶ create] [─▶ put archive] ─▶ start
 *     ─▶ wait (∥ logs every POLL_MS) ─▶ logs since the last read ─▶ delete ─▶ FINISHED
 *
 * Choices, and why:
 *  - API version: negotiated per host, once, with GET /_ping (served
 *    without a version; its Api-Version header is what the docker CLI
 *    negotiates with, and Podman answers it at once where /version takes
 *    it 400 ms): min(1.API_MAX_MINOR, the engine's API version); an
 *    engine older than 1.API_MIN_MINOR is refused with a clear error (the run ends
 *    as the provider's error, retried: the operator must upgrade). A
 *    pinned version breaks both ways: Docker 29.0-29.2 refuse anything
 *    below 1.44 and Podman 4.3 serves nothing above 1.41. A 400 "client
 *    version" later (the engine was changed under us) makes the next run
 *    ask again; runs in flight keep the version they have. GET /info gives NCPU and MemTotal, once per host, in the
 *    background (a run waits for it only when it asks for more than one
 *    CPU): the configured capacity is checked against them (a warning in
 *    the log, not a clamp: the slots are already registered), and a job's
 *    CPUs are capped at NCPU, which dockerd otherwise refuses ("range of
 *    CPUs").
 *  - Memory below 6 MB: dockerd refuses it and Podman is killed at once;
 *    start() refuses it as the job's own error (-EINVAL), a default below
 *    it is a configuration error. Not floored: a job that asked for 4 MB
 *    and ran with 6 would pass tests it should fail.
 *  - Job files: dockerd refuses PUT archive anywhere on a read-only root
 *    filesystem except into a volume ("container rootfs is marked
 *    read-only"), and writes into a tmpfs of a running container land in
 *    the layer underneath it, unseen (measured on 20.10). Podman took an
 *    upload into the layer and copied it up with its own tmpfs options
 *    (tmpcopyup, U), which dockerd refuses. What both take: an anonymous
 *    volume mounted at /.sbx (a staging area on the engine's disk, deleted
 *    with the container by DELETE ?v=1), the tar uploaded into it before
 *    the start, and the command wrapped in one `cp -R /.sbx/workspace/.
 *    /workspace/ && exec "$@"` by /bin/sh. So /workspace stays a tmpfs of
 *    disk_mb (in memory, counted in Memory), the root stays read-only, and
 *    the cost is what a job with files needs of its image: /bin/sh and cp,
 *    as any image that runs a script has. A job without files gets no
 *    volume and no wrapper (any image, argv as given). Rejected: a volume
 *    as the workspace itself (no size limit on disk), a tmpfs-backed
 *    volume written after the start (Podman ignores the driver options of
 *    anonymous volumes, and the build must then wait for a marker), files
 *    in the environment (argv/env size limits).
 *  - Tmpfs options: rw, exec, nosuid, nodev, size and mode=1777, which both
 *    engines take, and the workspace's owner, which neither spells like
 *    the other: runc gives a tmpfs the mode of the directory it covers,
 *    and dockerd creates WorkingDir (/workspace) root-owned 0755 before
 *    that, so the mode alone leaves the workspace unwritable (measured on
 *    20.10); dockerd passes uid=/gid= to the kernel, Podman refuses them
 *    and has its own U. The probe tells the engines apart (Podman's _ping
 *    answer has a Libpod-Api-Version header). Never tmpcopyup (Podman-only; dockerd refuses to start):
 *    a tmpfs hides what the image has in /workspace and /tmp on dockerd,
 *    so images must not count on it, and an image's /tmp must be 1777.
 *  - Missing image: create answers 404; the image is pulled once (POST
 *    /images/create, with X-Registry-Auth when configured; a reference
 *    without tag or digest gets ":latest", else the engine pulls every
 *    tag) and the create sent again. A pull that fails (also inside the
 *    200 progress stream, where engines put their errors) ends the run as
 *    the job's error, "image not found: <image>: <why>" (an engine that
 *    cannot be reached during the pull is the provider's error).
 *  - Live output: while the build runs, the log is read every POLL_MS
 *    (timestamps=1, since a second before where the last read got to) and
 *    handed to the sink; when the wait returns, a read in flight is dropped
 *    and one more read delivers the rest. The reader (docker_logs.c) keeps
 *    a cursor per stream, so each read skips exactly what the ones before
 *    delivered. Not a follow (logs?follow=1): Podman 4.3's follow skips
 *    messages mid-stream (measured: of `seq 1 120000`, lines 6929-6969 never
 *    came while later ones did) and ends before the end of the output, so
 *    no cursor over it can be exact; a plain read is the log file as it is.
 *    The cost: up to POLL_MS of latency, and each read re-reads the last
 *    second or two of output. The container is deleted only after the last
 *    read: the engine keeps its log until then, so nothing is lost, not
 *    even from a command that exits right after printing. Measured
 *    (test_live_output_*): a build that prints, sleeps 2 s and prints has
 *    its first line out 2.0-2.3 s before FINISHED on both engines; 0.9 MB
 *    printed in bursts over 3 s came 640 KB while it ran and 255 KB after
 *    the exit, each line once (the run's "run finished" log line counts
 *    both).
 *  - LogConfig json-file with max-size LOG_MAX_SIZE: an engine whose
 *    default driver is not readable (journald without a journal, "none")
 *    would return no output, and an unbounded log fills the engine's disk.
 *  - Stop (timeout or cancel): POST kill with SIGKILL, and the pending wait
 *    returns. If the engine does not report the exit within kill_grace_ms,
 *    we stop waiting and force-delete.
 *  - Everything the engine refuses (4xx/5xx), an error in the wait's 200
 *    body, or a dead socket ends the run with SBX_OUTCOME_ERROR and the
 *    engine's own message; the container, if one was created, is still
 *    deleted, and the sweeper catches whatever a failed delete leaves
 *    behind. Except what the job itself caused, which ends
 *    SBX_OUTCOME_JOB_ERROR (provider.h: failed at once, not retried): files
 *    that cannot be written as given or a memory limit below 6 MB (start()
 *    says -EINVAL before any call), an image that cannot be pulled or
 *    parsed (create: 400, or Podman's 500 "invalid reference format"), a
 *    command that does not exist (start: 400, or Podman's 500 "command that
 *    was not found").
 *
 * Sessions (provider.h, issue 13). A session's sandbox is one container on
 * its slot, named "sbx-<session>-<host>-<i>" and labelled sbx.session, so any
 * worker finds it by name (a restarted one, another one after a handover)
 * and the sweeper and destroy() leave it (only DESTROY removes it). A
 * session's run is a chain of its own:
 *
 *   [ping] ─▶ inspect by name ─┬─ 404 ────────────▶ create ─▶ start ─┐ (NEW)
 *                              ├─ running ──────────────────────────┤ (REUSED)
 *                              ├─ paused ─▶ unpause ────────────────┤ (RESUMED)
 *                              └─ stopped ─▶ delete ─▶ create ─▶ start ┘ (NEW)
 *     ─▶ [put archive] ─▶ exec create ─▶ exec start (the output streams back)
 *     ─▶ exec inspect (exit code) ─▶ FINISHED, the container kept
 *
 *  - The container runs a shell that only waits (SESSION_KEEPER); limits,
 *    image and network are the first run's; each run is an exec as the
 *    configured user in /workspace with its own job's environment. A run's
 *    background processes stay with the container. One that keeps the
 *    build's stdout open (a dev server started with `&`) does not hold the
 *    run up: Podman 4.3 ends the exec's stream when the build's process
 *    exits, dockerd 20.10 about 2 s after (measured with `sleep 5 &` and
 *    `sleep 8 &`); what it prints after that is not read.
 *  - Files: the staging volume is always mounted; a run's archive goes to
 *    STAGE_DIR/r<token>-<attempt>/workspace (each run apart, as the user
 *    cannot delete what an earlier one staged under the volume's root-owned
 *    top, and a copy of everything staged would write old files over newer
 *    ones), copied into /workspace by the exec's wrapper. The staged copies
 *    stay in the volume until the session ends (a job's files are bounded,
 *    SBX_FILES_BYTES_MAX).
 *  - The workspace is a tmpfs, as for a one-off run: a stopped container
 *    (killed, the engine restarted) lost it, so the next run replaces the
 *    container and says NEW; so does PAUSE, which is why it is the
 *    engine's pause (the cgroup freezer: processes and tmpfs kept), never a
 *    stop. It works on both engines here, cgroup v1 with the freezer
 *    mounted; an engine that says pause is not supported makes PAUSE
 *    -ENOTSUP (the session then stays idle until it ends). Measured
 *    (test_docker_session, the median of 5 unpauses, over several runs):
 *    dockerd 20.10 7-12 ms, Podman 4.3 6-7 ms; a pause 8-12 and 5-6 ms.
 *  - Timeout and cancel: the engine cannot kill an exec, so the wrapper
 *    writes its pid (a process group leader: runc execs in a new session)
 *    to EXEC_PID_FILE and a second exec kills that group, which takes the
 *    run's background processes along and leaves earlier runs' and the
 *    container: the session goes on (REUSED). If the exec is still running
 *    after that (the job overwrote the file, the kill came before the pid
 *    was written), the kill grace deletes the container: nothing of a
 *    stopped run keeps running, and the next run is NEW. destroy() (worker
 *    exit) leaves a session's container and the build in it, as a kill -9
 *    does: the session's next run, whoever runs it, kills that build first
 *    (EXEC_WRAPPER_FMT), so it never runs beside a newer one.
 *  - No fencing on the engine's side: it keeps no owner, and the lease
 *    layer gives the session's slot to one owner at a time.
 *
 * Previews (provider.h, issue 13 item 3). A session run whose job names
 * session.preview_port, with the worker serving previews (p->previews),
 * makes its container on a network, and the worker's proxy
 * (common/preview.h) dials the container's own address on it
 * (NetworkSettings.Networks.*.IPAddress, from the inspect of every run:
 * a worker that finds the container after a restart opens the preview
 * again, under the session's name, the URL in the result at STARTED and
 * FINISHED; DESTROY closes it).
 *  - The network: a job without network joins PREVIEW_NET, an internal
 *    bridge made once per engine (POST /networks/create; dockerd says 409
 *    when it is there, Podman 500 "already exists"): no route out, and
 *    the host reaches it. A job with network keeps the default bridge.
 *  - Why the address and not a published port: dockerd publishes nothing
 *    on an internal network (and with --iptables=false and no userland
 *    proxy, as the test engine runs, nothing at all), and Podman 4.3 gave a
 *    127.0.0.1 binding on one that accepted and never answered (measured).
 *    The address is reachable only from the engine's own machine, so
 *    previews are served for hosts reached over a unix socket; a tcp or
 *    ssh host's session runs without a URL (a warning in the log).
 *  - What the sandbox can still reach on PREVIEW_NET that it could not with
 *    network none: the bridge's gateway address, i.e. the engine host's
 *    own listening services (not the outside). Operators keep those off
 *    the bridge as for networked builds (README: DOCKER-USER rules).
 *  - A session's container made by a run without preview_port has no
 *    network; a later run that asks for a preview runs without one.
 *
 * Warm pool (provider.h, issue 13 item 4). ops->warm(n) keeps n containers
 * per host made, started and paused, named WARM_PREFIX<host>-<tag>-<seq>
 * (tag: random per provider) and labelled sbx.warm with this worker's id:
 * a session container of the provider's defaults (image, limits, no
 * network). A session's first run with nothing on its slot (the find said
 * 404) takes one of its host's when its job fits the defaults (and asks no
 * preview): POST rename to the session's name, then unpause; WARM, and
 * another is made in the background. A one-off job never takes one (its
 * container runs the job's own command from the create). The sweeper
 * removes a warm-labelled container of this worker id only while it still
 * has a warm name and this provider neither keeps it nor is taking it (a
 * predecessor's); a renamed one is a session's. destroy() deletes the
 * pool. A failed step drops that container; the sweep (every minute)
 * fills the pool again. A missing default image is not pulled for it.
 * Measured, start() to STARTED (test_docker_session, medians of 3 over
 * five runs each, ASan included): Podman 4.3 cold 79-135 ms, warm 18-37
 * ms; dockerd 20.10 cold 90-104 ms, warm 16-32 ms. Through the whole
 * worker (test_sessions.py, provisioning to running): Podman cold 127 ms,
 * warm 19 ms; dockerd cold 159 ms, warm 26 ms.
 *
 * The log stream is Docker's multiplexed format (Tty false), read by
 * docker_logs.c. Only the last SBX_LOG_TAIL_MAX bytes are kept for the
 * result (an sbx_tail over the result's log_tail, buf.h).
 */
#include "provider_docker.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "assert.h"
#include "buf.h"
#include "docker_hosts.h"
#include "docker_logs.h"
#include "docker_tar.h"
#include "http.h"
#include "jobfiles.h"
#include "log.h"
#include "preview.h"

/* The API versions this provider speaks (see the top of the file): 1.41
 * is what Podman 4.3 and Docker 20.10 serve; nothing we send changed up to
 * 1.47 (Docker 27), and Docker 29 wants at least 1.44. */
#define API_MIN_MINOR 41
#define API_MAX_MINOR 47
/* dockerd refuses a memory limit below 6 MB ("Minimum memory limit allowed
 * is 6MB"). */
#define MEMORY_MIN_MB 6
/* The container's json-file log. dockerd stores each line as a JSON object
 * of about 70 bytes around it, so `seq 1 1500000` (10.9 MB) is ~117 MB of
 * file: with one file, rotation at max-size threw away the middle before
 * the reader got to it (measured: 3.6 of 10.9 MB arrived on a loaded
 * box). dockerd's log reads span the rotated files, so LOG_MAX_FILES of
 * LOG_MAX_SIZE hold at least SBX_LOG_MAX_BYTES of short lines while still
 * bounding the engine's disk. Podman's k8s-file log costs about 40 bytes a
 * line (the same output fits one file) and is not sent max-file. */
#define LOG_MAX_SIZE "100m"
#define LOG_MAX_FILES "5"
/* A pull's progress stream is read a line at a time for its error; a line
 * is a JSON object of a few hundred bytes. */
#define PULL_LINE_MAX 4096
/* Where the job files are staged (a volume) and the command that copies
 * them into the workspace before the build's own command. */
/* The live output's latency: a log read every POLL_MS while the build
 * runs (each re-reads at most the last second or two of output). */
#define POLL_MS 500
#define STAGE_DIR "/.sbx"
#define STAGE_COPY "cp -R " STAGE_DIR "/workspace/. /workspace/ && exec \"$@\""
/* A session's run stages its files in STAGE_DIR/<tag>/workspace, tag
 * "r<token>-<attempt>": 20 digits, '-', 10 digits at most. */
#define STAGE_TAG_MAX 40
#define STAGE_COPY_FMT "cp -R " STAGE_DIR "/%s/workspace/. /workspace/ && "
/* A session's build runs as `sh -c EXEC_WRAPPER sbx argv...`: the exec's
 * process leads a process group of its own (runc makes it a session
 * leader), which EXEC_KILL kills on timeout or cancel, from a second exec
 * (the engine has no "kill exec"). Runs of a session come one at a time, so
 * one file holds the group of the run in progress; a background process of
 * an earlier run is in another group and stays. A pid that is not there
 * (the file overwritten, or not written yet) leaves the build running:
 * then the container goes (see run_remove).
 * The wrapper first kills the group of a run before it whose leader is
 * still alive: a run whose worker died (kill -9, or destroy() at exit,
 * which leaves session containers) never ran to its end, and its build
 * must not run beside the next one. A run that ended has no leader left;
 * its background processes keep the group's number, which Linux does not
 * give to a new process while the group lives, so `kill -0` on the leader
 * cannot hit one of them. */
#define EXEC_PID_FILE "/tmp/.sbx-run"
#define EXEC_WRAPPER_FMT                                                                   \
    "if [ -f " EXEC_PID_FILE " ] && read p <" EXEC_PID_FILE " && [ \"$p\" -gt 1 ] 2>/dev/null" \
    " && kill -0 \"$p\" 2>/dev/null; then kill -KILL \"-$p\" 2>/dev/null; fi;"                 \
    " echo $$ >" EXEC_PID_FILE "; %sexec \"$@\""
#define EXEC_KILL "read p <" EXEC_PID_FILE " && [ \"$p\" -gt 1 ] && kill -KILL \"-$p\""
/* A session's container does nothing but stay alive; runs are execs. */
#define SESSION_KEEPER "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"
/* Container names "sbx-<session>-<host>-<i>": 4 + 34 + 1 + 48 + 1 + 10. */
#define CONTAINER_NAME_MAX 100
/* After an exec's stream ends the engine may still report it running for
 * a moment (Podman): inspect again every EXEC_POLL_MS, EXEC_POLLS times. */
#define EXEC_POLL_MS 20
#define EXEC_POLLS 250
/* Slot ids "docker/<host>/<i>" and host names are short by construction. */
#define SLOT_ID_MAX 96
#define HOST_NAME_MAX_LEN SBX_DOCKER_HOST_NAME_MAX
/* The engine network a previewed session without network joins (see
 * "Previews" at the top): internal, so it has no route out. */
#define PREVIEW_NET "sbx-preview-internal"
/* Warm containers are named "sbx-warm-<host>-<8 hex>-<seq>" (see "Warm
 * pool"): the sweeper tells one not yet taken by the prefix. */
#define WARM_PREFIX "sbx-warm-"
/* Container ids are 64 hex digits. */
#define CONTAINER_ID_MAX 64
/* A URL: base + "/v1.xx" + a path of ids and a few query parameters. */
#define URL_MAX 512
/* One sweep's list reply: an entry is 1-2 KiB with our labels, so 4 MiB is
 * a couple of thousand containers, far above any host's capacity (and the
 * filter returns only ours). */
#define LIST_MAX_BYTES (4 * 1024 * 1024)

static const char COMP[] = "docker";

typedef struct sbx_docker sbx_docker;

typedef struct host {
    sbx_docker *d;
    char name[HOST_NAME_MAX_LEN + 1];
    sbx__docker_link link;   /* how requests reach it (docker_hosts.h) */
    int capacity;
    char **slot_ids;         /* capacity entries, into d->slot_ptrs */
    sbx_run **busy;          /* the run on each slot, or NULL */
    char api[16];            /* "/v1.41": negotiated, "" until a probe answered */
    int podman;              /* the engine is Podman's compatible service */
    int reprobe;             /* the engine refused api: the next run asks again */
    int ncpu;                /* the engine's NCPU, 0 if unknown */
    int64_t mem_total;       /* the engine's MemTotal in bytes, 0 if unknown */
    int told;                /* what the probe found is in the log */
    int net_ready;           /* PREVIEW_NET exists on the engine */
    int nwarm;               /* warm containers of this host, made or being made */
    sbx_http_handle *info_call; /* GET /info in the background */
} host;

typedef struct sweep sweep;
typedef struct sess_op sess_op;
typedef struct warm warm;
typedef struct preview_dst preview_dst;
typedef struct sbx_docker sbx_docker;

/* One probe of a host's version and capacity (GET /version, then GET
 * /info), embedded in what waits for it: a run or a sweep's list. */
typedef void (*probe_cb)(void *owner, const char *err);
typedef struct probe {
    sbx_docker *d;
    host *h;
    probe_cb done;
    void *owner;
    sbx_http_handle **step;  /* the owner's slot for the call in flight */
    int need_info;           /* wait for NCPU too */
} probe;

struct sbx_docker {
    sbx_provider base;       /* first: sbx_provider * <-> sbx_docker * */
    sbx_http *http;
    host *hosts;
    size_t nhosts;
    const char **slot_ptrs;  /* every slot id, host by host */
    size_t nslots;
    char *worker_id;
    char *default_image;
    char *registry_auth;     /* X-Registry-Auth for pulls, or NULL */
    char *user;
    unsigned uid, gid;
    int allow_network;
    int memory_mb, pids, disk_mb, tmp_mb;
    double cpus;
    uint32_t req_timeout_ms;
    int kill_grace_ms;
    sbx_run *runs;           /* active runs */
    size_t nruns;
    sweep *sweep;            /* the sweep in progress, or NULL */
    sess_op *ops;            /* session_op calls in flight */
    preview_dst *dsts;       /* where each open preview dials */
    warm *warms;             /* the warm pool, every host's */
    int warm_n;              /* per host (ops->warm) */
    unsigned warm_seq;
    char warm_tag[9];        /* random hex: this provider's warm names */
    int no_start_sweep;      /* also no sweep when a tunnel comes up */
};

typedef enum run_state {
    RUN_PROBING,     /* GET /version or /info of the host in flight */
    RUN_CREATING,    /* POST /containers/create in flight */
    RUN_PULLING,     /* POST /images/create in flight (the image was missing) */
    RUN_COPYING,     /* PUT archive (job files) in flight */
    RUN_STARTING,    /* POST start in flight */
    RUN_RUNNING,     /* POST wait in flight (and a kill, once asked to stop) */
    RUN_COLLECTING,  /* exited; GET logs in flight */
    RUN_REMOVING,    /* DELETE in flight; FINISHED when it answers */
    RUN_FINDING,     /* session: GET the session's container by name */
    RUN_UNPAUSING,   /* session: POST unpause */
    RUN_CLEARING,    /* session: DELETE a container of the session that stopped */
    RUN_EXEC_CREATING, /* session: POST /containers/{id}/exec */
    RUN_NETWORKING,  /* session: POST /networks/create (PREVIEW_NET) */
    RUN_ADOPTING,    /* session: a warm container renamed, then unpaused */
} run_state;

/* For a session's run RUNNING is the exec's stream and COLLECTING its
 * inspect (GET /exec/{id}/json). */
static const char *const state_names[] = {"probing",  "creating",  "pulling", "copying",
                                          "starting", "running",   "collecting", "removing",
                                          "finding",  "unpausing", "clearing", "exec-creating",
                                          "networking", "adopting"};

struct sbx_run {
    sbx_docker *d;
    host *host;
    int slot_idx;
    run_state state;
    sbx_run_cb cb;
    void *arg;
    char job_id[SBX_ID_MAX + 1];
    char slot[SLOT_ID_MAX + 1];
    int64_t token;
    int timeout_s;
    const sbx_job *job;               /* valid until FINISHED (provider.h) */
    sbx_output_fn output;             /* the live sink, may be NULL */
    void *output_arg;
    char id[CONTAINER_ID_MAX + 1];    /* "" until create answered */
    sbx_buf tar;                      /* the archive (docker_tar.h), until PUT is sent */
    sbx_http_handle *step;            /* the one chained call in flight */
    sbx_http_handle *poll;            /* a log read beside the wait */
    sbx_timer poll_timer;             /* the next one */
    sbx_http_handle *kill;
    probe probe;
    int pulled;                       /* the image was pulled once already */
    char pull_line[PULL_LINE_MAX + 1];/* the pull's progress line being read */
    size_t pull_have;
    char pull_error[200];             /* "" or the error the pull stream said */
    sbx_timer deadline;               /* job timeout, then kill grace */
    sbx_outcome stop;                 /* TIMED_OUT or CANCELED once asked, else SUCCEEDED */
    int killing;                      /* kill asked; deadline now counts the grace */
    int started;                      /* STARTED reported */
    int exited;
    int failed;                       /* res.error says why */
    int job_fault;                    /* ... and it is the job's (provider.h) */
    sbx_docker_logs logs;             /* the log reads and what they delivered */
    size_t out_live, out_after;       /* bytes delivered while it ran, by the last read */
    sbx_tail tail;                    /* the last output, over res.log_tail */
    sbx_run *prev, *next;
    sbx_result res;
    /* A session's run (see "Sessions" at the top of the file). */
    int session;
    char sess[SBX_SESSION_NAME_MAX + 1]; /* req->session */
    char name[CONTAINER_NAME_MAX + 1];  /* the session's container */
    char stage[STAGE_TAG_MAX + 1];      /* this run's staging directory under STAGE_DIR */
    char exec_id[CONTAINER_ID_MAX + 1];
    int exec_started;                 /* the build may be running in the container */
    int exec_ended;                   /* ... and the engine said it is not any more */
    int exec_polls;                   /* inspects that still saw it running */
    sbx_timer exec_timer;             /* the next inspect */
    uint64_t t_unpause_us;
    int preview;                      /* the session's container serves job->session_preview_port */
    int refind;                       /* created: inspected again for its address */
    int warm;                         /* building a warm container, not a run (build_create) */
    char warm_name[CONTAINER_NAME_MAX + 1]; /* the warm container being taken, "" */
};

typedef struct sweep_list {
    sweep *s;
    host *h;
    probe probe;
    sbx_http_handle *step;   /* unused: a sweep is never canceled but whole */
} sweep_list;

struct sweep {
    sbx_docker *d;
    sbx_docker_sweep_cb done;
    void *arg;
    sbx_timer kick;          /* drops the sweep's own count from the loop */
    int pending;             /* list and delete calls in flight, plus our own count */
    int removed, failed;
    char **seen;             /* ids already sent a delete: two host entries may
                              * name one engine */
    size_t nseen, capseen;
    sweep_list lists[];      /* one per host */
};

static sbx_docker *docker_of(sbx_provider *p) { return (sbx_docker *)p; }

/* ---- small helpers ---- */

static void set_state(sbx_run *r, run_state to)
{
    sbx_debug(COMP, "run %s -> %s job=%s slot=%s", state_names[r->state], state_names[to],
              r->job_id, r->slot);
    r->state = to;
}

/* Records the first error only: later ones are usually its consequences. */
static void run_fail(sbx_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void run_fail(sbx_run *r, const char *fmt, ...)
{
    va_list ap;
    if (r->failed)
        return;
    r->failed = 1;
    va_start(ap, fmt);
    vsnprintf(r->res.error, sizeof(r->res.error), fmt, ap);
    va_end(ap);
    sbx_warn(COMP, "run failed job=%s slot=%s container=%.12s error=\"%s\"", r->job_id, r->slot,
             r->id, r->res.error);
}

/* "what: 404 no such container" from an engine reply; the engine's JSON
 * message when there is one, else the start of the body. */
static void engine_error(char *out, size_t outlen, const char *what, const sbx_http_res *res)
{
    json_object *o, *m;
    if (res->code != SBX_HTTP_OK) {
        snprintf(out, outlen, "%s: %s", what, res->error);
        return;
    }
    o = json_tokener_parse(res->body);
    if (o && json_object_object_get_ex(o, "message", &m) && json_object_is_type(m, json_type_string))
        snprintf(out, outlen, "%s: engine said %ld: %s", what, res->status, json_object_get_string(m));
    else
        snprintf(out, outlen, "%s: engine said %ld: %.120s", what, res->status, res->body);
    json_object_put(o);
}

static const char *label_of(json_object *labels, const char *key)
{
    json_object *v;
    if (!labels || !json_object_object_get_ex(labels, key, &v) || !json_object_is_type(v, json_type_string))
        return "";
    return json_object_get_string(v);
}

/* Engine ids are hex; anything else never goes into a URL of ours. */
static int id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    return n >= 12 && n <= CONTAINER_ID_MAX && strspn(id, "0123456789abcdef") == n;
}

static void fail_engine(sbx_run *r, const char *what, const sbx_http_res *res)
{
    char msg[sizeof(r->res.error)];
    engine_error(msg, sizeof(msg), what, res);
    run_fail(r, "%s", msg);
}

/* Whether the engine refused the create or the start because of what the
 * job asked for (see the top of the file). Docker answers 404 for a missing
 * image and 400 for a bad reference or command; Podman 4.3 answers 404 for
 * a missing image and 500 for the other two, with their words in the
 * message. Checked after the first failure only, as run_fail keeps it. */
static int job_caused(const char *what, const sbx_http_res *res, const char *msg)
{
    if (res->code != SBX_HTTP_OK)
        return 0;
    if (strstr(msg, "client version"))
        return 0; /* ours, not the job's: see fail_step */
    if (strcmp(what, "create") == 0)
        return res->status == 404 || res->status == 400 ||
               (res->status == 500 && strstr(msg, "invalid reference format"));
    if (strcmp(what, "start") == 0)
        return res->status == 400 ||
               (res->status == 500 && (strstr(msg, "command that was not found") ||
                                       strstr(msg, "executable file not found")));
    return 0;
}

/* A refusal of create or start: the job's fault or the engine's. */
static void fail_step(sbx_run *r, const char *what, const sbx_http_res *res)
{
    int first = !r->failed;
    fail_engine(r, what, res);
    if (first && job_caused(what, res, r->res.error))
        r->job_fault = 1;
    /* "client version 1.41 is too old" (the engine was upgraded since the
     * probe): ask again on the next run. */
    if (res->code == SBX_HTTP_OK && res->status == 400 && strstr(r->res.error, "client version")) {
        sbx_warn(COMP, "host %s: engine refuses API %s; probing again", r->host->name, r->host->api + 2);
        r->host->reprobe = 1; /* runs in flight keep the version they have */
    }
}

/* ---- output: the log reader's sink ---- */

/* Every byte the reader (docker_logs.c) lets through: the result's tail
 * and the live sink. */
static void deliver(void *arg, sbx_stream stream, const char *p, size_t n)
{
    sbx_run *r = arg;
    if (r->state == RUN_COLLECTING)
        r->out_after += n;
    else
        r->out_live += n;
    sbx_tail_add(&r->tail, p, n);
    sbx_run_output(r->output, r->output_arg, stream, p, n);
}

/* ---- the create body ---- */

typedef struct jb {
    int oom;
} jb;

static json_object *jchk(jb *b, json_object *o)
{
    if (!o)
        b->oom = 1;
    return o;
}

static void jset(jb *b, json_object *obj, const char *key, json_object *v)
{
    if (!v || !obj || json_object_object_add(obj, key, v) != 0) {
        b->oom = 1;
        json_object_put(v);
    }
}

static void jpush(jb *b, json_object *arr, json_object *v)
{
    if (!v || !arr || json_object_array_add(arr, v) != 0) {
        b->oom = 1;
        json_object_put(v);
    }
}

/* The job's command into cmd, behind wrapper (the staging copy: `sh -c
 * wrapper sbx argv...`) when there is one. */
static void add_command(jb *b, json_object *cmd, const sbx_job *job, const char *wrapper)
{
    if (wrapper) {
        jpush(b, cmd, json_object_new_string("/bin/sh"));
        jpush(b, cmd, json_object_new_string("-c"));
        jpush(b, cmd, json_object_new_string(wrapper));
        jpush(b, cmd, json_object_new_string("sbx"));
    }
    if (job->argv && job->argc > 0) {
        for (size_t i = 0; i < job->argc; i++)
            jpush(b, cmd, json_object_new_string(job->argv[i]));
    } else {
        jpush(b, cmd, json_object_new_string("/bin/sh"));
        jpush(b, cmd, json_object_new_string("-c"));
        jpush(b, cmd, json_object_new_string(job->script));
    }
}

/* The job's environment, and HOME=/workspace unless it sets HOME: the
 * user has no home in most images, and the root fs is read-only. */
static void add_env(jb *b, json_object *env, const sbx_job *job)
{
    int home = 0;
    for (size_t i = 0; job && i < job->nenv; i++) {
        size_t kl = strlen(job->env[i].key), vl = strlen(job->env[i].value);
        char *kv = malloc(kl + vl + 2);
        if (!kv) {
            b->oom = 1;
            return;
        }
        memcpy(kv, job->env[i].key, kl);
        kv[kl] = '=';
        memcpy(kv + kl + 1, job->env[i].value, vl + 1);
        jpush(b, env, json_object_new_string(kv));
        free(kv);
        home |= strcmp(job->env[i].key, "HOME") == 0;
    }
    if (!home)
        jpush(b, env, json_object_new_string("HOME=/workspace"));
}

static char *build_create(const sbx_docker *d, const sbx_run *r, char *err, size_t errlen)
{
    const sbx_job *job = r->job;
    const host *h = r->host;
    jb b = {0};
    json_object *o = jchk(&b, json_object_new_object());
    json_object *hc = jchk(&b, json_object_new_object());
    json_object *cmd = jchk(&b, json_object_new_array());
    json_object *env = jchk(&b, json_object_new_array());
    json_object *labels = jchk(&b, json_object_new_object());
    json_object *tmpfs = jchk(&b, json_object_new_object());
    json_object *caps = jchk(&b, json_object_new_array());
    json_object *secopt = jchk(&b, json_object_new_array());
    json_object *logcfg = jchk(&b, json_object_new_object());
    json_object *logopt = jchk(&b, json_object_new_object());
    json_object *mounts = NULL;
    char buf[128], *out = NULL;
    int memory_mb = job->memory_mb > 0 ? job->memory_mb : d->memory_mb;
    int pids = job->pids > 0 ? job->pids : d->pids;
    int disk_mb = job->disk_mb > 0 ? job->disk_mb : d->disk_mb;
    double cpus = job->cpus > 0 ? job->cpus : d->cpus;

    if (!(job->argv && job->argc > 0) && !job->script) {
        snprintf(err, errlen, "job has neither command nor script");
        goto out;
    }
    /* A session's later runs may bring files: its container always has
     * the staging volume. */
    if (job->nfiles > 0 || r->session) {
        json_object *m = jchk(&b, json_object_new_object());
        mounts = jchk(&b, json_object_new_array());
        jset(&b, m, "Type", json_object_new_string("volume"));
        jset(&b, m, "Target", json_object_new_string(STAGE_DIR));
        jpush(&b, mounts, m);
    }
    if (h->ncpu > 0 && cpus > h->ncpu) {
        sbx_info(COMP, "cpus capped job=%s host=%s asked=%g ncpu=%d", job->job_id, h->name, cpus,
                 h->ncpu);
        cpus = h->ncpu;
    }
    if (r->session) {
        /* The runs come as execs, each with its job's environment. */
        jpush(&b, cmd, json_object_new_string("/bin/sh"));
        jpush(&b, cmd, json_object_new_string("-c"));
        jpush(&b, cmd, json_object_new_string(SESSION_KEEPER));
        add_env(&b, env, NULL);
        if (r->warm)
            jset(&b, labels, "sbx.warm", json_object_new_string("1"));
        else
            jset(&b, labels, "sbx.session", json_object_new_string(r->sess));
    } else {
        add_command(&b, cmd, job, job->nfiles > 0 ? STAGE_COPY : NULL);
        add_env(&b, env, job);
    }

    if (r->preview) {
        snprintf(buf, sizeof(buf), "%d", job->session_preview_port);
        jset(&b, labels, "sbx.preview", json_object_new_string(buf));
    }
    jset(&b, labels, "sbx.job", json_object_new_string(job->job_id));
    jset(&b, labels, "sbx.project", json_object_new_string(job->project_id));
    snprintf(buf, sizeof(buf), "%" PRId64, r->token);
    jset(&b, labels, "sbx.token", json_object_new_string(buf));
    jset(&b, labels, "sbx.slot", json_object_new_string(r->slot));
    jset(&b, labels, "sbx.worker", json_object_new_string(d->worker_id));
    jset(&b, labels, "sbx.pool", json_object_new_string(SBX_DOCKER_POOL));

    /* The workspace lives in memory: its pages count toward Memory. */
    if (h->podman)
        snprintf(buf, sizeof(buf), "rw,exec,nosuid,nodev,size=%dm,mode=1777,U", disk_mb);
    else
        snprintf(buf, sizeof(buf), "rw,exec,nosuid,nodev,size=%dm,mode=1777,uid=%u,gid=%u", disk_mb,
                 d->uid, d->gid);
    jset(&b, tmpfs, "/workspace", json_object_new_string(buf));
    snprintf(buf, sizeof(buf), "rw,nosuid,nodev,size=%dm,mode=1777", d->tmp_mb);
    jset(&b, tmpfs, "/tmp", json_object_new_string(buf));
    jpush(&b, caps, json_object_new_string("ALL"));
    jpush(&b, secopt, json_object_new_string("no-new-privileges"));

    jset(&b, hc, "Memory", json_object_new_int64((int64_t)memory_mb * 1024 * 1024));
    jset(&b, hc, "MemorySwap", json_object_new_int64((int64_t)memory_mb * 1024 * 1024));
    jset(&b, hc, "NanoCpus", json_object_new_int64((int64_t)(cpus * 1e9)));
    jset(&b, hc, "PidsLimit", json_object_new_int64(pids));
    jset(&b, hc, "ReadonlyRootfs", json_object_new_boolean(1));
    jset(&b, hc, "CapDrop", caps);
    caps = NULL;
    jset(&b, hc, "SecurityOpt", secopt);
    secopt = NULL;
    jset(&b, hc, "Tmpfs", tmpfs);
    tmpfs = NULL;
    if (mounts) {
        jset(&b, hc, "Mounts", mounts);
        mounts = NULL;
    }
    jset(&b, logcfg, "Type", json_object_new_string("json-file"));
    jset(&b, logopt, "max-size", json_object_new_string(LOG_MAX_SIZE));
    if (!h->podman)
        jset(&b, logopt, "max-file", json_object_new_string(LOG_MAX_FILES));
    jset(&b, logcfg, "Config", logopt);
    logopt = NULL;
    jset(&b, hc, "LogConfig", logcfg);
    logcfg = NULL;

    jset(&b, o, "Image", json_object_new_string(job->image ? job->image : d->default_image));
    jset(&b, o, "Cmd", cmd);
    cmd = NULL;
    jset(&b, o, "Env", env);
    env = NULL;
    jset(&b, o, "User", json_object_new_string(d->user));
    jset(&b, o, "WorkingDir", json_object_new_string("/workspace"));
    jset(&b, o, "Labels", labels);
    labels = NULL;
    jset(&b, o, "Tty", json_object_new_boolean(0));
    jset(&b, o, "StopTimeout", json_object_new_int(1));
    /* Never the engine's host network: a networked build gets the default
     * bridge, named here so an engine default can never make it "host".
     * Keeping the bridge away from internal services is the operator's
     * firewall (README: DOCKER-USER rules); egress.c does not reach in here. */
    if (r->preview) {
        /* The proxy dials the container's address: a network it has, but
         * an internal one unless the job may have a way out. */
        jset(&b, hc, "NetworkMode",
             json_object_new_string(job->network && d->allow_network ? "bridge" : PREVIEW_NET));
    } else if (!(job->network && d->allow_network)) {
        jset(&b, o, "NetworkDisabled", json_object_new_boolean(1));
        jset(&b, hc, "NetworkMode", json_object_new_string("none"));
    } else {
        jset(&b, hc, "NetworkMode", json_object_new_string("bridge"));
    }
    jset(&b, o, "HostConfig", hc);
    hc = NULL;

    if (!b.oom) {
        out = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        b.oom = !out;
    }
    if (b.oom)
        snprintf(err, errlen, "out of memory building the create request");
out:
    json_object_put(mounts);
    json_object_put(logcfg);
    json_object_put(logopt);
    json_object_put(caps);
    json_object_put(secopt);
    json_object_put(tmpfs);
    json_object_put(cmd);
    json_object_put(env);
    json_object_put(labels);
    json_object_put(hc);
    json_object_put(o);
    return out;
}

/* ---- engine calls ---- */

/* One engine call: path under the host's negotiated version (versioned),
 * or as given (GET /version, which every version serves). extra is one
 * more "Name: value" header or NULL. */
static int call_ex(sbx_docker *d, host *h, int versioned, const char *extra, const char *method,
                   const char *path, const char *ctype, const void *body, size_t body_len,
                   uint32_t timeout_ms, size_t max_bytes, sbx_http_chunk_cb chunk_cb,
                   sbx_http_done_cb done_cb, void *arg, sbx_http_handle **out)
{
    char url[URL_MAX], hdr[64];
    const char *hdrs[3] = {NULL, NULL, NULL};
    size_t nh = 0;
    sbx_http_req q = {0};
    int n = snprintf(url, sizeof(url), "%s%s%s", h->link.base, versioned ? h->api : "", path);

    if (!SBX_ASSERT(!versioned || h->api[0]))
        return -EINVAL;
    if (n < 0 || (size_t)n >= sizeof(url))
        return -ENAMETOOLONG;
    if (ctype) {
        snprintf(hdr, sizeof(hdr), "Content-Type: %s", ctype);
        hdrs[nh++] = hdr;
    }
    if (extra)
        hdrs[nh++] = extra;
    q.method = method;
    q.url = url;
    sbx__docker_link_req(&h->link, &q);
    q.headers = hdrs;
    q.body = body;
    q.body_len = body_len;
    q.timeout_ms = timeout_ms;
    q.connect_timeout_ms = d->req_timeout_ms < 10000 ? d->req_timeout_ms : 10000;
    q.max_response_bytes = max_bytes;
    if (chunk_cb)
        return sbx_http_stream(d->http, &q, chunk_cb, done_cb, arg, out);
    return sbx_http_request(d->http, &q, done_cb, arg, out);
}

static int call(sbx_docker *d, host *h, const char *method, const char *path, const char *ctype,
                const void *body, size_t body_len, uint32_t timeout_ms, size_t max_bytes,
                sbx_http_chunk_cb chunk_cb, sbx_http_done_cb done_cb, void *arg,
                sbx_http_handle **out)
{
    return call_ex(d, h, 1, NULL, method, path, ctype, body, body_len, timeout_ms, max_bytes,
                   chunk_cb, done_cb, arg, out);
}

static int run_call(sbx_run *r, const char *method, const char *fmt_path, const char *ctype,
                    const void *body, size_t body_len, sbx_http_done_cb done_cb)
{
    char path[URL_MAX];
    snprintf(path, sizeof(path), fmt_path, r->id);
    return call(r->d, r->host, method, path, ctype, body, body_len, r->d->req_timeout_ms, 0,
                NULL, done_cb, r, &r->step);
}

/* ---- the host probe: API version, then NCPU and MemTotal ---- */

/* What GET /info says of the host; logged (with the capacity check) the
 * first time. */
static void host_set_info(host *h, const sbx_http_res *res)
{
    sbx_docker *d = h->d;
    json_object *o = NULL, *v;
    int64_t need_mem = (int64_t)d->memory_mb * 1024 * 1024 * h->capacity;
    double need_cpus = d->cpus * h->capacity;

    if (res->code == SBX_HTTP_OK && res->status == 200 && (o = json_tokener_parse(res->body))) {
        if (json_object_object_get_ex(o, "NCPU", &v))
            h->ncpu = json_object_get_int(v);
        if (json_object_object_get_ex(o, "MemTotal", &v))
            h->mem_total = json_object_get_int64(v);
    }
    json_object_put(o);
    if (h->told || h->ncpu <= 0)
        return;
    h->told = 1;
    sbx_info(COMP, "host %s: engine %s API %s ncpu=%d mem_total_mb=%" PRId64 " capacity=%d", h->name,
             h->podman ? "podman" : "docker", h->api + 2, h->ncpu, h->mem_total / (1024 * 1024),
             h->capacity);
    /* Not a clamp: the slots are registered; the operator decides. */
    if (need_cpus > h->ncpu)
        sbx_warn(COMP, "host %s: capacity %d x %g CPUs is more than its %d CPUs: builds share them",
                 h->name, h->capacity, d->cpus, h->ncpu);
    if (h->mem_total > 0 && need_mem > h->mem_total)
        sbx_warn(COMP, "host %s: capacity %d x %d MB is more than its %" PRId64
                       " MB of memory: builds may be OOM-killed",
                 h->name, h->capacity, d->memory_mb, h->mem_total / (1024 * 1024));
}

static void on_host_info(void *arg, const sbx_http_res *res)
{
    host *h = arg;
    h->info_call = NULL;
    host_set_info(h, res);
}

/* /info beside the runs, once per host: Podman takes ~250 ms to answer
 * it, which no run with the default CPUs needs to wait for. */
static void host_info_background(host *h)
{
    if (h->ncpu > 0 || h->info_call)
        return;
    if (call(h->d, h, "GET", "/info", NULL, NULL, 0, h->d->req_timeout_ms, 0, NULL, on_host_info, h,
             &h->info_call) < 0)
        h->info_call = NULL;
}

static void probe_end(probe *pr, const char *err)
{
    *pr->step = NULL;
    pr->done(pr->owner, err);
}

static void on_probe_info(void *arg, const sbx_http_res *res)
{
    probe *pr = arg;
    *pr->step = NULL;
    host_set_info(pr->h, res);
    probe_end(pr, NULL);
}

/* The version is known: wait for /info only when the run may ask for more
 * CPUs than the host has (dockerd refuses that create), else let it come
 * in the background. */
static void probe_info(probe *pr)
{
    host *h = pr->h;
    if (h->ncpu > 0 || !pr->need_info) {
        host_info_background(h);
        probe_end(pr, NULL);
        return;
    }
    if (call(pr->d, h, "GET", "/info", NULL, NULL, 0, pr->d->req_timeout_ms, 0, NULL, on_probe_info,
             pr, pr->step) < 0)
        probe_end(pr, NULL); /* the version is what matters; info is a check */
}

/* GET /_ping: the cheapest call every engine and version serves, with the
 * API version in a header (Podman takes 400 ms to answer /version). */
static void on_probe_ping(void *arg, const sbx_http_res *res)
{
    probe *pr = arg;
    host *h = pr->h;
    const char *v = res->code == SBX_HTTP_OK ? sbx_http_res_header(res, "Api-Version") : NULL;
    char msg[256];
    int major = 0, minor = 0;

    *pr->step = NULL;
    if (res->code != SBX_HTTP_OK || res->status != 200) {
        engine_error(msg, sizeof(msg), "version", res);
        probe_end(pr, msg);
        return;
    }
    if (!v || sscanf(v, "%d.%d", &major, &minor) != 2) {
        probe_end(pr, "version: no Api-Version in the engine's answer to /_ping");
        return;
    }
    if (major != 1 || minor < API_MIN_MINOR) {
        snprintf(msg, sizeof(msg),
                 "engine API %d.%d on host %s is older than 1.%d, the oldest this provider speaks",
                 major, minor, h->name, API_MIN_MINOR);
        probe_end(pr, msg);
        return;
    }
    h->podman = sbx_http_res_header(res, "Libpod-Api-Version") != NULL;
    h->reprobe = 0;
    snprintf(h->api, sizeof(h->api), "/v1.%d", minor < API_MAX_MINOR ? minor : API_MAX_MINOR);
    sbx_debug(COMP, "host %s: API %s (engine %s)", h->name, h->api + 2, v);
    probe_info(pr);
}

/* Makes h ready for owner: its version negotiated (unless known) and, with
 * need_info, its CPUs known. done runs from the loop, never from here;
 * returns -errno if nothing could be sent (done is then not called). */
static int probe_start(probe *pr, sbx_docker *d, host *h, int need_info, probe_cb done, void *owner,
                       sbx_http_handle **step)
{
    pr->d = d;
    pr->h = h;
    pr->done = done;
    pr->owner = owner;
    pr->step = step;
    pr->need_info = need_info;
    if (h->api[0] && !h->reprobe)
        return call(d, h, "GET", "/info", NULL, NULL, 0, d->req_timeout_ms, 0, NULL, on_probe_info,
                    pr, step);
    return call_ex(d, h, 0, NULL, "GET", "/_ping", NULL, NULL, 0, d->req_timeout_ms, 0, NULL,
                   on_probe_ping, pr, step);
}

/* ---- the run's chain ---- */

static void run_remove(sbx_run *r);
static void send_kill(sbx_run *r);
static void send_create(sbx_run *r);
static void send_find(sbx_run *r);
static void session_files(sbx_run *r);
static void session_create(sbx_run *r);
static void exec_create(sbx_run *r);
static void preview_open(sbx_run *r, json_object *inspect);
static int warm_adopt(sbx_run *r);
static void warm_fill(sbx_docker *d);
static int warm_owned(const sbx_docker *d, const char *name);

static void finish(sbx_run *r)
{
    sbx_docker *d = r->d;
    sbx_result *res = &r->res;

    sbx_timer_stop(d->base.loop, &r->deadline);
    sbx_timer_stop(d->base.loop, &r->exec_timer);
    /* provider.h's life of a run is STARTED then FINISHED; a run that was
     * stopped or failed before its container started still gets both. */
    if (!r->started) {
        r->started = 1;
        r->cb(r->arg, SBX_RUN_STARTED, res);
    }
    if (r->stop != SBX_OUTCOME_SUCCEEDED)
        res->outcome = r->stop;
    else if (r->failed)
        res->outcome = r->job_fault ? SBX_OUTCOME_JOB_ERROR : SBX_OUTCOME_ERROR;
    else
        res->outcome = res->exit_code == 0 ? SBX_OUTCOME_SUCCEEDED : SBX_OUTCOME_FAILED;
    if (r->stop == SBX_OUTCOME_TIMED_OUT && !res->error[0])
        snprintf(res->error, sizeof(res->error), "timed out after %d s", r->timeout_s);
    sbx_tail_str(&r->tail);
    res->log_tail_len = r->tail.len;

    if (r->prev)
        r->prev->next = r->next;
    else
        d->runs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    d->nruns--;
    r->host->busy[r->slot_idx] = NULL;

    sbx_info(COMP, "run finished job=%s slot=%s container=%.12s outcome=%d exit=%d output_live=%zu output_after=%zu%s%s sandbox=%d resume_ms=%d",
             r->job_id, r->slot, r->id, (int)res->outcome, res->exit_code, r->out_live, r->out_after,
             r->session ? " session=" : "", r->sess, (int)res->sandbox, res->resume_ms);
    r->cb(r->arg, SBX_RUN_FINISHED, res);
    sbx_buf_free(&r->tar);
    free(r);
}

static void on_removed(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    r->step = NULL;
    if (res->code != SBX_HTTP_OK || (res->status >= 300 && res->status != 404)) {
        char msg[256];
        engine_error(msg, sizeof(msg), "delete", res);
        /* The build's outcome stands; the sweeper removes the container. */
        sbx_warn(COMP, "container left behind container=%.12s error=\"%s\"", r->id, msg);
    }
    finish(r);
}

/* Everything else is over or abandoned: delete the container (if there is
 * one), then finish. */
static void run_remove(sbx_run *r)
{
    sbx_docker *d = r->d;
    int rc;

    sbx_http_cancel(r->kill);
    r->kill = NULL;
    sbx_http_cancel(r->poll);
    r->poll = NULL;
    sbx_timer_stop(d->base.loop, &r->poll_timer);
    sbx_http_cancel(r->step);
    r->step = NULL;
    sbx_timer_stop(d->base.loop, &r->deadline);
    sbx_timer_stop(d->base.loop, &r->exec_timer);
    set_state(r, RUN_REMOVING);
    /* A session's container stays, unless its build may still be running
     * in it (timed out, canceled, or its end never seen): there is no way
     * to kill an exec but with its container. */
    if (!r->id[0] || (r->session && !(r->exec_started && !r->exec_ended))) {
        finish(r);
        return;
    }
    if (r->session)
        sbx_info(COMP, "session container removed to stop its build job=%s container=%.12s session=%s",
                 r->job_id, r->id, r->sess);
    rc = run_call(r, "DELETE", "/containers/%s?force=1&v=1", NULL, NULL, 0, on_removed);
    if (rc < 0) {
        sbx_warn(COMP, "container left behind container=%.12s error=\"%s\"", r->id, strerror(-rc));
        finish(r);
    }
}

static int on_log_chunk(void *arg, const char *data, size_t len)
{
    sbx_run *r = arg;
    sbx__docker_logs_feed(&r->logs, data, len);
    return 0;
}

static void on_logs_done(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    r->step = NULL;
    if (res->code != SBX_HTTP_OK || res->status != 200)
        fail_engine(r, "logs", res);
    run_remove(r);
}

/* GET logs from where the reader got to (a second before: engines take
 * whole seconds), timestamped; the reader skips what it delivered. */
static int logs_read(sbx_run *r, sbx_http_done_cb done, sbx_http_handle **h)
{
    char path[URL_MAX];
    int64_t since = sbx__docker_logs_since_s(&r->logs);
    int n;

    sbx__docker_logs_read(&r->logs);
    if (since > 0)
        n = snprintf(path, sizeof(path),
                     "/containers/%s/logs?stdout=1&stderr=1&timestamps=1&since=%" PRId64, r->id, since);
    else
        n = snprintf(path, sizeof(path), "/containers/%s/logs?stdout=1&stderr=1&timestamps=1", r->id);
    if (n < 0 || (size_t)n >= sizeof(path))
        return -ENAMETOOLONG;
    return call(r->d, r->host, "GET", path, NULL, NULL, 0, r->d->req_timeout_ms, 0, on_log_chunk, done,
                r, h);
}

/* A read while it runs is done: the next one after POLL_MS. A refusal is
 * only noted: the read after the exit delivers what this one did not. */
static void on_poll_done(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    r->poll = NULL;
    if (res->code != SBX_HTTP_OK || res->status != 200) {
        char msg[256];
        engine_error(msg, sizeof(msg), "logs while running", res);
        sbx_debug(COMP, "log read failed container=%.12s error=\"%s\"", r->id, msg);
    } else {
        sbx__docker_logs_read_done(&r->logs);
    }
    if (r->state == RUN_RUNNING && !r->exited)
        sbx_timer_start(r->d->base.loop, &r->poll_timer, POLL_MS);
}

static void on_poll_timer(sbx_timer *t)
{
    sbx_run *r = t->data;
    int rc;
    if (r->state != RUN_RUNNING || r->exited || r->poll)
        return;
    if ((rc = logs_read(r, on_poll_done, &r->poll)) < 0) {
        sbx_debug(COMP, "log read not sent container=%.12s error=\"%s\"", r->id, strerror(-rc));
        sbx_timer_start(r->d->base.loop, &r->poll_timer, POLL_MS);
    }
}

/* The container exited (or the wait failed): drop a read in flight (the
 * reader counts what it delivered of a message cut short), and read the
 * rest. */
static void collect_logs(sbx_run *r)
{
    sbx_http_cancel(r->poll);
    r->poll = NULL;
    sbx_timer_stop(r->d->base.loop, &r->poll_timer);
    set_state(r, RUN_COLLECTING);
    if (logs_read(r, on_logs_done, &r->step) < 0) {
        run_fail(r, "logs: could not send the request");
        run_remove(r);
    }
}

static void on_wait(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    json_object *o, *code, *e, *m;

    r->step = NULL;
    if (res->code != SBX_HTTP_OK || res->status != 200) {
        fail_engine(r, "wait", res);
        run_remove(r);
        return;
    }
    o = json_tokener_parse(res->body);
    if (!o || !json_object_object_get_ex(o, "StatusCode", &code)) {
        run_fail(r, "wait: no StatusCode in the engine's reply");
        json_object_put(o);
        run_remove(r);
        return;
    }
    r->res.exit_code = json_object_get_int(code);
    /* An error the engine had while waiting comes in the 200 body
     * ({"Error":{"Message":...}}): the status code is then not the
     * build's. The output is still read. */
    if (json_object_object_get_ex(o, "Error", &e) && json_object_is_type(e, json_type_object) &&
        json_object_object_get_ex(e, "Message", &m) && json_object_get_string_len(m) > 0)
        run_fail(r, "wait: engine said: %.200s", json_object_get_string(m));
    json_object_put(o);
    r->exited = 1;
    sbx_timer_stop(r->d->base.loop, &r->deadline);
    sbx_http_cancel(r->kill);
    r->kill = NULL;
    collect_logs(r);
}

static void on_killed(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    r->kill = NULL;
    /* 404/409: it is gone or no longer running, which is what we wanted. */
    if (res->code != SBX_HTTP_OK ||
        (res->status >= 300 && res->status != 404 && res->status != 409)) {
        char msg[256];
        engine_error(msg, sizeof(msg), "kill", res);
        sbx_warn(COMP, "kill failed container=%.12s error=\"%s\"", r->id, msg);
    }
}

static void session_kill(sbx_run *r);

static void send_kill(sbx_run *r)
{
    char path[URL_MAX];
    int rc;
    if (r->kill || r->exited)
        return;
    if (r->session) {
        session_kill(r);
        return;
    }
    snprintf(path, sizeof(path), "/containers/%s/kill?signal=KILL", r->id);
    rc = call(r->d, r->host, "POST", path, NULL, NULL, 0, r->d->req_timeout_ms, 0, NULL, on_killed,
              r, &r->kill);
    if (rc < 0)
        sbx_warn(COMP, "kill not sent container=%.12s error=\"%s\"", r->id, strerror(-rc));
}

static void on_started(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    char path[URL_MAX];
    int rc;

    r->step = NULL;
    if (res->code != SBX_HTTP_OK || (res->status != 204 && res->status != 304)) {
        fail_step(r, "start", res);
        run_remove(r);
        return;
    }
    if (r->session) {
        r->res.sandbox = SBX_SANDBOX_NEW;
        if (r->preview) {
            /* Its address comes with the start: inspect it again. */
            r->refind = 1;
            send_find(r);
            return;
        }
        session_files(r);
        return;
    }
    set_state(r, RUN_RUNNING);
    /* No timeout: the job's deadline and the kill grace bound the wait. */
    snprintf(path, sizeof(path), "/containers/%s/wait", r->id);
    rc = call(r->d, r->host, "POST", path, NULL, NULL, 0, 0, 0, NULL, on_wait, r, &r->step);
    if (rc < 0) {
        run_fail(r, "wait: %s", strerror(-rc));
        run_remove(r);
        return;
    }
    /* Beside the wait: the live output, read every POLL_MS. */
    sbx_timer_start(r->d->base.loop, &r->poll_timer, POLL_MS);
    if (r->stop != SBX_OUTCOME_SUCCEEDED)
        send_kill(r);
    /* Last: the callback may cancel this run, which is ready for it now. */
    r->started = 1;
    r->cb(r->arg, SBX_RUN_STARTED, &r->res);
}

static void send_start(sbx_run *r)
{
    set_state(r, RUN_STARTING);
    if (run_call(r, "POST", "/containers/%s/start", NULL, NULL, 0, on_started) < 0) {
        run_fail(r, "start: could not send the request");
        run_remove(r);
    }
}

static void on_copied(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    r->step = NULL;
    sbx_buf_free(&r->tar);
    if (res->code != SBX_HTTP_OK || res->status != 200) {
        fail_engine(r, "copy files", res);
        run_remove(r);
        return;
    }
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    if (r->session)
        exec_create(r);
    else
        send_start(r);
}

/* The pull's progress: JSON objects, one a line; an error is one with an
 * "error" (or "errorDetail") member, in a 200 reply. The first is kept. */
static int on_pull_chunk(void *arg, const char *data, size_t len)
{
    sbx_run *r = arg;
    for (size_t i = 0; i < len; i++) {
        json_object *o, *e, *m;
        if (data[i] != '\n') {
            if (r->pull_have < PULL_LINE_MAX) /* a longer line is cut: still JSON-ish */
                r->pull_line[r->pull_have++] = data[i];
            continue;
        }
        r->pull_line[r->pull_have] = '\0';
        r->pull_have = 0;
        if (r->pull_error[0] || !strstr(r->pull_line, "\"error"))
            continue;
        o = json_tokener_parse(r->pull_line);
        if (o && json_object_object_get_ex(o, "errorDetail", &e) &&
            json_object_object_get_ex(e, "message", &m))
            snprintf(r->pull_error, sizeof(r->pull_error), "%s", json_object_get_string(m));
        else if (o && json_object_object_get_ex(o, "error", &e))
            snprintf(r->pull_error, sizeof(r->pull_error), "%s", json_object_get_string(e));
        else
            snprintf(r->pull_error, sizeof(r->pull_error), "%.190s", r->pull_line);
        json_object_put(o);
    }
    return 0;
}

static const char *run_image(const sbx_run *r)
{
    return r->job->image ? r->job->image : r->d->default_image;
}

static void on_pulled(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    r->step = NULL;
    if (r->pull_have && !r->pull_error[0]) /* a last line without '\n' */
        on_pull_chunk(r, "\n", 1);
    if (res->code != SBX_HTTP_OK) {
        /* The engine, not the image: the provider's error, retried. */
        run_fail(r, "pull: %s", res->error);
        run_remove(r);
        return;
    }
    if (res->status != 200 || r->pull_error[0]) {
        char msg[256];
        if (r->pull_error[0])
            snprintf(msg, sizeof(msg), "%s", r->pull_error);
        else
            engine_error(msg, sizeof(msg), "pull", res);
        run_fail(r, "image not found: %.100s: %.140s", run_image(r), msg);
        r->job_fault = 1; /* the job's image (provider.h): failed at once */
        run_remove(r);
        return;
    }
    sbx_info(COMP, "image pulled job=%s image=%s host=%s", r->job_id, run_image(r), r->host->name);
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    send_create(r);
}

/* The image is not on the host: pull it once. */
static void send_pull(sbx_run *r)
{
    const char *image = run_image(r);
    const char *last = strrchr(image, '/');
    char path[URL_MAX], *esc, *auth = NULL;
    int tagged = strchr(image, '@') || strchr(last ? last : image, ':'), rc = -ENOMEM;

    r->pulled = 1;
    set_state(r, RUN_PULLING);
    if (!(esc = curl_easy_escape(NULL, image, 0)))
        goto fail;
    rc = snprintf(path, sizeof(path), "/images/create?fromImage=%s%s", esc, tagged ? "" : "&tag=latest");
    curl_free(esc);
    if (rc < 0 || (size_t)rc >= sizeof(path)) {
        rc = -ENAMETOOLONG;
        goto fail;
    }
    if (r->d->registry_auth) {
        size_t n = strlen(r->d->registry_auth) + sizeof("X-Registry-Auth: ");
        if (!(auth = malloc(n))) {
            rc = -ENOMEM;
            goto fail;
        }
        snprintf(auth, n, "X-Registry-Auth: %s", r->d->registry_auth);
    }
    /* No timeout of its own: the job's deadline bounds it. */
    rc = call_ex(r->d, r->host, 1, auth, "POST", path, NULL, NULL, 0, 0, 0, on_pull_chunk, on_pulled,
                 r, &r->step);
    free(auth);
    if (rc == 0)
        return;
fail:
    run_fail(r, "pull: %s", strerror(-rc));
    run_remove(r);
}

static void on_created(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    json_object *o, *id;

    r->step = NULL;
    if (res->code == SBX_HTTP_OK && res->status == 404 && !r->pulled && r->stop == SBX_OUTCOME_SUCCEEDED) {
        send_pull(r);
        return;
    }
    if (res->code != SBX_HTTP_OK || (res->status != 201 && res->status != 200)) {
        fail_step(r, "create", res);
        run_remove(r);
        return;
    }
    o = json_tokener_parse(res->body);
    if (!o || !json_object_object_get_ex(o, "Id", &id) || !id_ok(json_object_get_string(id))) {
        run_fail(r, "create: no container id in the engine's reply");
        json_object_put(o);
        run_remove(r);
        return;
    }
    snprintf(r->id, sizeof(r->id), "%s", json_object_get_string(id));
    snprintf(r->res.instance, sizeof(r->res.instance), "%s", r->id);
    json_object_put(o);
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    if (r->job->nfiles == 0 || r->session) {
        send_start(r); /* a session's files go in once it runs */
        return;
    }
    set_state(r, RUN_COPYING);
    if (run_call(r, "PUT", "/containers/%s/archive?path=" STAGE_DIR, "application/x-tar", r->tar.p,
                 r->tar.len, on_copied) < 0) {
        run_fail(r, "copy files: could not send the request");
        run_remove(r);
    }
}

/* Sends the create; on an error no callback follows and err says why. */
static int create_send(sbx_run *r, char *err, size_t errlen)
{
    char *body;
    int rc;

    char path[URL_MAX];

    r->state = RUN_CREATING;
    if (!(body = build_create(r->d, r, err, errlen)))
        return -ENOMEM; /* start() checked the command: only memory is left */
    /* A session's container is found again by its name. */
    if (r->session)
        snprintf(path, sizeof(path), "/containers/create?name=%s", r->name);
    else
        snprintf(path, sizeof(path), "/containers/create");
    rc = call(r->d, r->host, "POST", path, "application/json", body, strlen(body),
              r->d->req_timeout_ms, 0, NULL, on_created, r, &r->step);
    free(body);
    if (rc < 0)
        snprintf(err, errlen, "create: %s", strerror(-rc));
    return rc;
}

static void send_create(sbx_run *r)
{
    char err[256];
    sbx_debug(COMP, "run %s -> creating job=%s slot=%s", state_names[r->state], r->job_id, r->slot);
    if (create_send(r, err, sizeof(err)) < 0) {
        run_fail(r, "%s", err);
        run_remove(r);
    }
}

static void on_run_probed(void *owner, const char *err)
{
    sbx_run *r = owner;
    if (err) {
        run_fail(r, "%s", err);
        run_remove(r);
        return;
    }
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    if (r->session)
        send_find(r);
    else
        send_create(r);
}

/* ---- previews: where the proxy dials a session's dev server ---- */

struct preview_dst {
    char sess[SBX_SESSION_NAME_MAX + 1];
    struct sockaddr_in addr;     /* the container's address and the preview port */
    preview_dst *next;
};

/* sbx_preview_dial_fn: a connect started to the container's address. */
static int preview_dial(void *arg, char *err, size_t errlen)
{
    const preview_dst *t = arg;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), e;
    if (fd < 0) {
        e = errno;
        snprintf(err, errlen, "socket: %s", strerror(e));
        return -e;
    }
    if (connect(fd, (const struct sockaddr *)&t->addr, sizeof(t->addr)) < 0 && errno != EINPROGRESS) {
        e = errno;
        snprintf(err, errlen, "connect to the session's container: %s", strerror(e));
        close(fd);
        return -e;
    }
    return fd;
}

static void preview_close(sbx_docker *d, const char *sess)
{
    for (preview_dst **pp = &d->dsts; *pp; pp = &(*pp)->next) {
        preview_dst *t = *pp;
        if (strcmp(t->sess, sess) != 0)
            continue;
        if (d->base.previews)
            sbx_preview_close(d->base.previews, sess);
        *pp = t->next;
        free(t);
        return;
    }
}

/* The session's container is there (inspect says where): opens its
 * preview at the address it has on its network, which is also how a
 * worker that finds the container after a restart opens it again. A
 * preview that cannot be opened leaves the run as it is, without a URL. */
static void preview_open(sbx_run *r, json_object *inspect)
{
    sbx_docker *d = r->d;
    json_object *ns, *nets, *a;
    const char *ip = NULL;
    preview_dst *t;
    struct in_addr in;
    char err[256];

    if (!r->preview)
        return;
    if (json_object_object_get_ex(inspect, "NetworkSettings", &ns) &&
        json_object_object_get_ex(ns, "Networks", &nets) && json_object_is_type(nets, json_type_object)) {
        json_object_object_foreach(nets, net, v) {
            (void)net;
            if (json_object_object_get_ex(v, "IPAddress", &a) && json_object_get_string_len(a) > 0) {
                ip = json_object_get_string(a);
                break;
            }
        }
    }
    if (!ip || inet_pton(AF_INET, ip, &in) != 1) {
        sbx_warn(COMP, "preview not opened job=%s session=%s container=%.12s why=\"no IPv4 address "
                       "(made by a run without preview_port?)\"", r->job_id, r->sess, r->id);
        return;
    }
    for (t = d->dsts; t && strcmp(t->sess, r->sess) != 0; t = t->next)
        ;
    if (!t) {
        if (!(t = calloc(1, sizeof(*t)))) {
            sbx_warn(COMP, "preview not opened session=%s why=\"out of memory\"", r->sess);
            return;
        }
        snprintf(t->sess, sizeof(t->sess), "%s", r->sess);
        t->next = d->dsts;
        d->dsts = t;
    }
    t->addr.sin_family = AF_INET;
    t->addr.sin_addr = in;
    t->addr.sin_port = htons((uint16_t)r->job->session_preview_port);
    if (sbx_preview_open(d->base.previews, r->sess, preview_dial, t, r->res.preview_url, err,
                         sizeof(err)) < 0) {
        r->res.preview_url[0] = '\0';
        sbx_warn(COMP, "preview not opened job=%s session=%s error=\"%s\"", r->job_id, r->sess, err);
        return;
    }
    sbx_debug(COMP, "preview open session=%s dial=%s:%d", r->sess, ip, r->job->session_preview_port);
}

/* ---- a session's run: find (or create) its container, then exec ---- */

static void exec_inspect(sbx_run *r);

static void on_exec_inspected(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    json_object *o = NULL, *v;

    r->step = NULL;
    if (res->code != SBX_HTTP_OK || res->status != 200 || !(o = json_tokener_parse(res->body))) {
        fail_engine(r, "exec inspect", res);
        goto out;
    }
    if (json_object_object_get_ex(o, "Running", &v) && json_object_get_boolean(v)) {
        if (++r->exec_polls < EXEC_POLLS) {
            sbx_timer_start(r->d->base.loop, &r->exec_timer, EXEC_POLL_MS);
            json_object_put(o);
            return;
        }
        run_fail(r, "exec: the engine still says it runs %d ms after its output ended",
                 EXEC_POLLS * EXEC_POLL_MS);
        goto out;
    }
    r->exec_ended = 1;
    if (json_object_object_get_ex(o, "ExitCode", &v) && json_object_is_type(v, json_type_int))
        r->res.exit_code = json_object_get_int(v);
    else
        run_fail(r, "exec inspect: no ExitCode in the engine's reply");
out:
    json_object_put(o);
    run_remove(r);
}

static void on_exec_timer(sbx_timer *t) { exec_inspect(t->data); }

static void exec_inspect(sbx_run *r)
{
    char path[URL_MAX];
    set_state(r, RUN_COLLECTING);
    snprintf(path, sizeof(path), "/exec/%s/json", r->exec_id);
    if (call(r->d, r->host, "GET", path, NULL, NULL, 0, r->d->req_timeout_ms, 0, NULL,
             on_exec_inspected, r, &r->step) < 0) {
        run_fail(r, "exec inspect: could not send the request");
        run_remove(r);
    }
}

static int on_exec_chunk(void *arg, const char *data, size_t len)
{
    sbx_run *r = arg;
    sbx__docker_logs_feed(&r->logs, data, len);
    return 0;
}

/* The exec's stream ended: its process exited, or its container went. */
static void on_exec_done(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    r->step = NULL;
    /* Stopped: the inspect says whether the kill got it (else the
     * container goes). */
    if (res->code != SBX_HTTP_OK || res->status != 200) {
        if (r->stop != SBX_OUTCOME_SUCCEEDED) {
            run_remove(r);
            return;
        }
        fail_engine(r, "exec start", res);
        run_remove(r);
        return;
    }
    exec_inspect(r);
}

static void on_exec_created(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    json_object *o, *id;
    char path[URL_MAX];
    static const char body[] = "{\"Detach\":false,\"Tty\":false}";

    r->step = NULL;
    if (res->code != SBX_HTTP_OK || (res->status != 201 && res->status != 200)) {
        fail_engine(r, "exec create", res);
        run_remove(r);
        return;
    }
    o = json_tokener_parse(res->body);
    if (!o || !json_object_object_get_ex(o, "Id", &id) || !id_ok(json_object_get_string(id))) {
        run_fail(r, "exec create: no exec id in the engine's reply");
        json_object_put(o);
        run_remove(r);
        return;
    }
    snprintf(r->exec_id, sizeof(r->exec_id), "%s", json_object_get_string(id));
    json_object_put(o);
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    set_state(r, RUN_RUNNING);
    /* The output streams back on this call until the process exits; no
     * timeout of its own: the job's deadline bounds it. */
    snprintf(path, sizeof(path), "/exec/%s/start", r->exec_id);
    r->exec_started = 1;
    if (call(r->d, r->host, "POST", path, "application/json", body, sizeof(body) - 1, 0, 0,
             on_exec_chunk, on_exec_done, r, &r->step) < 0) {
        r->exec_started = 0;
        run_fail(r, "exec start: could not send the request");
        run_remove(r);
        return;
    }
    /* Last: the callback may cancel this run, which is ready for it now. */
    r->started = 1;
    r->cb(r->arg, SBX_RUN_STARTED, &r->res);
}

static void exec_create(sbx_run *r)
{
    sbx_docker *d = r->d;
    jb b = {0};
    json_object *o = jchk(&b, json_object_new_object());
    json_object *cmd = jchk(&b, json_object_new_array());
    json_object *env = jchk(&b, json_object_new_array());
    char copy[sizeof(STAGE_COPY_FMT) + STAGE_TAG_MAX] = "";
    char wrapper[sizeof(EXEC_WRAPPER_FMT) + sizeof(copy)], path[URL_MAX];
    int rc = -ENOMEM;

    if (r->job->nfiles > 0)
        snprintf(copy, sizeof(copy), STAGE_COPY_FMT, r->stage);
    snprintf(wrapper, sizeof(wrapper), EXEC_WRAPPER_FMT, copy);
    add_command(&b, cmd, r->job, wrapper);
    add_env(&b, env, r->job);
    jset(&b, o, "Cmd", cmd);
    jset(&b, o, "Env", env);
    jset(&b, o, "User", json_object_new_string(d->user));
    jset(&b, o, "WorkingDir", json_object_new_string("/workspace"));
    jset(&b, o, "AttachStdin", json_object_new_boolean(0));
    jset(&b, o, "AttachStdout", json_object_new_boolean(1));
    jset(&b, o, "AttachStderr", json_object_new_boolean(1));
    jset(&b, o, "Tty", json_object_new_boolean(0));
    set_state(r, RUN_EXEC_CREATING);
    if (!b.oom) {
        const char *body = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
        snprintf(path, sizeof(path), "/containers/%s/exec", r->id);
        rc = call(d, r->host, "POST", path, "application/json", body, strlen(body), d->req_timeout_ms,
                  0, NULL, on_exec_created, r, &r->step);
    }
    json_object_put(o);
    if (rc < 0) {
        run_fail(r, "exec create: %s", strerror(-rc));
        run_remove(r);
    }
}

static void on_kill_exec_created(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    json_object *o, *id;
    char path[URL_MAX];
    static const char body[] = "{\"Detach\":true,\"Tty\":false}";

    r->kill = NULL;
    if (res->code != SBX_HTTP_OK || (res->status != 201 && res->status != 200) ||
        !(o = json_tokener_parse(res->body))) {
        on_killed(r, res);
        return;
    }
    if (json_object_object_get_ex(o, "Id", &id) && id_ok(json_object_get_string(id))) {
        snprintf(path, sizeof(path), "/exec/%s/start", json_object_get_string(id));
        if (call(r->d, r->host, "POST", path, "application/json", body, sizeof(body) - 1,
                 r->d->req_timeout_ms, 0, NULL, on_killed, r, &r->kill) < 0)
            sbx_warn(COMP, "kill not sent container=%.12s", r->id);
    }
    json_object_put(o);
}

/* Kills the build's process group from a second exec (EXEC_KILL); the
 * build's stream then ends. What this cannot reach, the kill grace and
 * run_remove do: the container goes. */
static void session_kill(sbx_run *r)
{
    jb b = {0};
    json_object *o = jchk(&b, json_object_new_object());
    json_object *cmd = jchk(&b, json_object_new_array());
    char path[URL_MAX];
    int rc = -ENOMEM;

    if (!r->exec_started)
        return; /* the step in flight sees r->stop */
    jpush(&b, cmd, json_object_new_string("/bin/sh"));
    jpush(&b, cmd, json_object_new_string("-c"));
    jpush(&b, cmd, json_object_new_string(EXEC_KILL));
    jset(&b, o, "Cmd", cmd);
    jset(&b, o, "User", json_object_new_string(r->d->user));
    if (!b.oom) {
        const char *body = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
        snprintf(path, sizeof(path), "/containers/%s/exec", r->id);
        rc = call(r->d, r->host, "POST", path, "application/json", body, strlen(body),
                  r->d->req_timeout_ms, 0, NULL, on_kill_exec_created, r, &r->kill);
    }
    json_object_put(o);
    if (rc < 0)
        sbx_warn(COMP, "kill not sent container=%.12s error=\"%s\"", r->id, strerror(-rc));
}

/* The container is running: this run's files go into its staging
 * volume, then the build is exec'd. */
static void session_files(sbx_run *r)
{
    char path[URL_MAX];
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    if (r->job->nfiles == 0) {
        exec_create(r);
        return;
    }
    set_state(r, RUN_COPYING);
    snprintf(path, sizeof(path), "/containers/%s/archive?path=" STAGE_DIR, r->id);
    if (call(r->d, r->host, "PUT", path, "application/x-tar", r->tar.p, r->tar.len,
             r->d->req_timeout_ms, 0, NULL, on_copied, r, &r->step) < 0) {
        run_fail(r, "copy files: could not send the request");
        run_remove(r);
    }
}

static void on_cleared(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    r->step = NULL;
    if (res->code != SBX_HTTP_OK || (res->status >= 300 && res->status != 404)) {
        fail_engine(r, "remove the session's stopped container", res);
        r->id[0] = '\0'; /* not ours to delete again: the next run finds it */
        run_remove(r);
        return;
    }
    r->id[0] = '\0';
    r->res.instance[0] = '\0';
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    session_create(r);
}

/* The session's container is there but cannot take an exec (it stopped:
 * its workspace, a tmpfs, went with it; or it would not unpause): it goes,
 * and the run starts over in a new one. */
static void session_clear(sbx_run *r, const char *why)
{
    sbx_info(COMP, "session container replaced job=%s session=%s container=%.12s why=\"%s\"", r->job_id,
             r->sess, r->id, why);
    set_state(r, RUN_CLEARING);
    if (run_call(r, "DELETE", "/containers/%s?force=1&v=1", NULL, NULL, 0, on_cleared) < 0) {
        run_fail(r, "remove the session's stopped container: could not send the request");
        r->id[0] = '\0';
        run_remove(r);
    }
}

static void on_unpaused(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    char msg[256];
    r->step = NULL;
    if (res->code == SBX_HTTP_OK && res->status < 300) {
        r->res.sandbox = SBX_SANDBOX_RESUMED;
        r->res.resume_ms = (int)((sbx_now_us() - r->t_unpause_us + 999) / 1000);
        sbx_info(COMP, "session resumed job=%s session=%s container=%.12s resume_ms=%d", r->job_id,
                 r->sess, r->id, r->res.resume_ms);
        session_files(r);
        return;
    }
    if (res->code != SBX_HTTP_OK) {
        fail_engine(r, "unpause", res);
        run_remove(r);
        return;
    }
    engine_error(msg, sizeof(msg), "unpause", res);
    session_clear(r, msg);
}

static void on_found(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    json_object *o = NULL, *v, *cfg = NULL, *labels = NULL;
    const char *status = "";

    r->step = NULL;
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    if (res->code == SBX_HTTP_OK && res->status == 404 && !r->refind) {
        r->res.sandbox = SBX_SANDBOX_NEW;
        if (!warm_adopt(r))
            session_create(r);
        return;
    }
    if (res->code != SBX_HTTP_OK || res->status != 200 || !(o = json_tokener_parse(res->body)) ||
        !json_object_object_get_ex(o, "Id", &v) || !id_ok(json_object_get_string(v))) {
        fail_engine(r, "find the session's container", res);
        json_object_put(o);
        run_remove(r);
        return;
    }
    if (json_object_object_get_ex(o, "Config", &cfg))
        json_object_object_get_ex(cfg, "Labels", &labels);
    /* The name is ours by construction; the label says a container of that
     * name is indeed the session's before a build goes into it (or a warm
     * one, which only a take renames to a session's name). */
    if (strcmp(label_of(labels, "sbx.session"), r->sess) != 0 && !label_of(labels, "sbx.warm")[0]) {
        run_fail(r, "container %s is not session %s's (label sbx.session=\"%.40s\")", r->name, r->sess,
                 label_of(labels, "sbx.session"));
        json_object_put(o);
        run_remove(r);
        return;
    }
    snprintf(r->id, sizeof(r->id), "%s", json_object_get_string(v));
    snprintf(r->res.instance, sizeof(r->res.instance), "%s", r->id);
    if (json_object_object_get_ex(o, "State", &v) && json_object_object_get_ex(v, "Status", &v))
        status = json_object_get_string(v);
    preview_open(r, o);
    if (strcmp(status, "running") == 0 && r->refind) {
        session_files(r); /* just made: NEW */
    } else if (strcmp(status, "paused") == 0) {
        set_state(r, RUN_UNPAUSING);
        r->t_unpause_us = sbx_now_us();
        if (run_call(r, "POST", "/containers/%s/unpause", NULL, NULL, 0, on_unpaused) < 0) {
            run_fail(r, "unpause: could not send the request");
            run_remove(r);
        }
    } else if (strcmp(status, "running") == 0) {
        r->res.sandbox = SBX_SANDBOX_REUSED;
        session_files(r);
    } else if (r->refind) {
        /* Made and started a moment ago: replacing it again could loop. */
        run_fail(r, "the session's new container is %.40s right after its start", status);
        run_remove(r);
    } else {
        char why[64];
        snprintf(why, sizeof(why), "status %.40s", status);
        session_clear(r, why);
    }
    json_object_put(o);
}

static void on_network(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    char msg[256];
    r->step = NULL;
    /* It is there already (an earlier run, another worker): dockerd says
     * 409, Podman 4.3 500 "network already exists". */
    engine_error(msg, sizeof(msg), "create the preview network " PREVIEW_NET, res);
    if (res->code != SBX_HTTP_OK ||
        (res->status >= 300 && res->status != 409 && !strstr(msg, "already exists"))) {
        run_fail(r, "%s", msg);
        run_remove(r);
        return;
    }
    r->host->net_ready = 1;
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r);
        return;
    }
    send_create(r);
}

/* The session's container is to be made: a previewed one without network
 * joins PREVIEW_NET, made on the host the first time it is needed. */
static void session_create(sbx_run *r)
{
    static const char body[] = "{\"Name\":\"" PREVIEW_NET "\",\"Driver\":\"bridge\",\"Internal\":true,"
                               "\"CheckDuplicate\":true,\"Labels\":{\"sbx.pool\":\"" SBX_DOCKER_POOL "\"}}";
    if (!r->preview || r->host->net_ready || (r->job->network && r->d->allow_network)) {
        send_create(r);
        return;
    }
    set_state(r, RUN_NETWORKING);
    if (call(r->d, r->host, "POST", "/networks/create", "application/json", body, sizeof(body) - 1,
             r->d->req_timeout_ms, 0, NULL, on_network, r, &r->step) < 0) {
        run_fail(r, "create the preview network: could not send the request");
        run_remove(r);
    }
}

static void send_find(sbx_run *r)
{
    char path[URL_MAX];
    set_state(r, RUN_FINDING);
    snprintf(path, sizeof(path), "/containers/%s/json", r->name);
    if (call(r->d, r->host, "GET", path, NULL, NULL, 0, r->d->req_timeout_ms, 0, NULL, on_found, r,
             &r->step) < 0) {
        run_fail(r, "find the session's container: could not send the request");
        run_remove(r);
    }
}

/* The job's time is up, or after a kill the engine took too long. */
static void on_deadline(sbx_timer *t)
{
    sbx_run *r = t->data;
    if (!r->killing) {
        if (r->stop == SBX_OUTCOME_SUCCEEDED)
            r->stop = SBX_OUTCOME_TIMED_OUT;
        r->killing = 1;
        sbx_timer_start(r->d->base.loop, &r->deadline, (uint64_t)r->d->kill_grace_ms);
        if (r->state == RUN_RUNNING)
            send_kill(r);
        return;
    }
    run_fail(r, "engine did not report the end of %s within %d ms of the kill",
             r->id[0] ? r->id : "the container", r->d->kill_grace_ms);
    run_remove(r);
}

/* ---- provider ops ---- */

static int parse_slot(sbx_docker *d, const char *slot, host **h, int *idx)
{
    const char *name, *slash;
    char *end;
    long i;
    if (strncmp(slot, SBX_DOCKER_POOL "/", sizeof(SBX_DOCKER_POOL)) != 0)
        return -1;
    name = slot + sizeof(SBX_DOCKER_POOL);
    if (!(slash = strchr(name, '/')))
        return -1;
    for (size_t k = 0; k < d->nhosts; k++) {
        host *hh = &d->hosts[k];
        if (strlen(hh->name) != (size_t)(slash - name) || strncmp(hh->name, name, (size_t)(slash - name)))
            continue;
        i = strtol(slash + 1, &end, 10);
        if (*end || end == slash + 1 || i < 0 || i >= hh->capacity)
            return -1;
        *h = hh;
        *idx = (int)i;
        return 0;
    }
    return -1;
}

static int docker_start(sbx_provider *p, const sbx_run_req *req, sbx_run_cb cb, void *arg,
                        sbx_run **out, char *err, size_t errlen)
{
    sbx_docker *d = docker_of(p);
    sbx_run *r = NULL;
    const char *why;
    host *h;
    int idx, rc, need_info;
    char root[SBX_DOCKER_TAR_ROOT_MAX + 1], path[URL_MAX];

    if (parse_slot(d, req->slot, &h, &idx) < 0) {
        snprintf(err, errlen, "slot %.100s is not one of this provider's", req->slot);
        return -ENOENT;
    }
    if (h->busy[idx]) {
        snprintf(err, errlen, "slot %.100s is busy with job %s", req->slot, h->busy[idx]->job_id);
        return -EBUSY;
    }
    if (!sbx__docker_link_up(&h->link, &why)) {
        /* The host has no capacity until its tunnel is back: the job waits
         * (provider.h's -EBUSY) instead of spending attempts on calls bound
         * to fail, and the next lease may well be on another host. */
        snprintf(err, errlen, "docker host %s: ssh tunnel is down: %.200s", h->name, why);
        return -EBUSY;
    }
    if (!req->job->image && !d->default_image) {
        snprintf(err, errlen, "job names no image and the provider has no default");
        return -EINVAL;
    }
    if (!(req->job->argv && req->job->argc > 0) && !req->job->script) {
        snprintf(err, errlen, "job has neither command nor script");
        return -EINVAL;
    }
    if (req->job->memory_mb > 0 && req->job->memory_mb < MEMORY_MIN_MB) {
        snprintf(err, errlen, "memory_mb %d is below the %d MB a container needs", req->job->memory_mb,
                 MEMORY_MIN_MB);
        return -EINVAL;
    }
    if (req->session && !sbx_session_name_ok(req->session)) {
        snprintf(err, errlen, "session name \"%.40s\" is not [a-z0-9-]{1,%d}", req->session,
                 SBX_SESSION_NAME_MAX);
        return -EINVAL;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->d = d;
    r->host = h;
    r->slot_idx = idx;
    r->cb = cb;
    r->arg = arg;
    r->token = req->token;
    r->job = req->job;
    r->output = req->output;
    r->output_arg = req->output_arg;
    r->timeout_s = req->job->timeout_s > 0 ? req->job->timeout_s : SBX_DEFAULT_TIMEOUT_S;
    r->stop = SBX_OUTCOME_SUCCEEDED;
    r->res.exit_code = -1;
    snprintf(r->job_id, sizeof(r->job_id), "%s", req->job->job_id);
    snprintf(r->slot, sizeof(r->slot), "%s", req->slot);
    sbx_timer_init(&r->deadline, on_deadline, r);
    sbx_timer_init(&r->poll_timer, on_poll_timer, r);
    sbx_timer_init(&r->exec_timer, on_exec_timer, r);
    sbx_tail_init(&r->tail, r->res.log_tail, SBX_LOG_TAIL_MAX);
    sbx__docker_logs_init(&r->logs, deliver, r);
    snprintf(root, sizeof(root), "workspace");
    if (req->session) {
        r->session = 1;
        snprintf(r->sess, sizeof(r->sess), "%s", req->session);
        snprintf(r->name, sizeof(r->name), "sbx-%s-%s-%d", req->session, h->name, idx);
        snprintf(r->stage, sizeof(r->stage), "r%" PRId64 "-%d", req->token, req->attempt);
        snprintf(root, sizeof(root), "%s/workspace", r->stage);
        sbx__docker_logs_plain(&r->logs);
        if (req->job->session_preview_port > 0 && p->previews) {
            /* The proxy dials the container's own address, which only a
             * worker beside the engine can reach (see "Previews"). */
            if (h->link.unix_path && !h->link.tunnel)
                r->preview = 1;
            else
                sbx_warn(COMP, "preview not served job=%s session=%s host=%s why=\"previews need the "
                               "engine on this machine (a unix socket)\"", r->job_id, req->session, h->name);
        }
    }

    /* A ustar name is a 155-byte prefix, '/' and a 100-byte name at most:
     * the root, '/' and the path must fit. */
    for (size_t i = 0; i < req->job->nfiles; i++)
        if (strlen(root) + 1 + strlen(req->job->files[i].key) > 155 + 1 + 100) {
            snprintf(err, errlen, "files: %.100s...: path longer than the archive holds (%zu bytes)",
                     req->job->files[i].key, 155 + 1 + 100 - strlen(root) - 1);
            rc = -EINVAL;
            goto fail;
        }
    if ((rc = sbx__job_files_check(req->job, err, errlen)) < 0)
        goto fail;
    /* Anything but memory that the archive refuses is the job's files. */
    if (req->job->nfiles > 0 &&
        (rc = sbx__docker_tar(req->job, root, d->uid, d->gid, &r->tar, err, errlen)) < 0) {
        if (rc != -ENOMEM)
            rc = -EINVAL;
        goto fail;
    }
    /* More CPUs than one may be more than the host has: know first. */
    need_info = (req->job->cpus > 0 ? req->job->cpus : d->cpus) > 1 && h->ncpu <= 0;
    if (h->api[0] && !h->reprobe && !need_info && r->session) {
        r->state = RUN_FINDING;
        snprintf(path, sizeof(path), "/containers/%s/json", r->name);
        if ((rc = call(d, h, "GET", path, NULL, NULL, 0, d->req_timeout_ms, 0, NULL, on_found, r,
                       &r->step)) < 0) {
            snprintf(err, errlen, "find the session's container: %s", strerror(-rc));
            goto fail;
        }
    } else if (h->api[0] && !h->reprobe && !need_info) {
        if ((rc = create_send(r, err, errlen)) < 0)
            goto fail;
    } else {
        r->state = RUN_PROBING;
        if ((rc = probe_start(&r->probe, d, h, need_info, on_run_probed, r, &r->step)) < 0) {
            snprintf(err, errlen, "version: %s", strerror(-rc));
            goto fail;
        }
    }
    /* The job's time counts from here: a slow engine is part of it. */
    sbx_timer_start(p->loop, &r->deadline, (uint64_t)r->timeout_s * 1000);
    h->busy[idx] = r;
    r->next = d->runs;
    if (d->runs)
        d->runs->prev = r;
    d->runs = r;
    d->nruns++;
    sbx_info(COMP, "run %s job=%s slot=%s token=%" PRId64 " attempt=%d", state_names[r->state],
             r->job_id, r->slot, r->token, req->attempt);
    *out = r;
    return 0;

fail:
    sbx_buf_free(&r->tar);
    free(r);
    return rc;
}

static void docker_cancel(sbx_provider *p, sbx_run *r)
{
    (void)p;
    if (r->stop != SBX_OUTCOME_SUCCEEDED)
        return;
    r->stop = SBX_OUTCOME_CANCELED;
    if (r->state == RUN_REMOVING)
        return; /* the delete's answer finishes it, as canceled */
    sbx_info(COMP, "run cancel job=%s slot=%s state=%s", r->job_id, r->slot, state_names[r->state]);
    if (r->state == RUN_RUNNING)
        send_kill(r);
    /* Creating/copying/starting: the step's answer sees r->stop. Bound the
     * wait for it as for a kill. */
    r->killing = 1;
    sbx_timer_start(p->loop, &r->deadline, (uint64_t)r->d->kill_grace_ms);
}

static size_t docker_slots(sbx_provider *p, const char ***ids)
{
    sbx_docker *d = docker_of(p);
    *ids = d->slot_ptrs;
    return d->nslots;
}

static const char *docker_pool(sbx_provider *p)
{
    (void)p;
    return SBX_DOCKER_POOL;
}

/* ---- the sweeper ---- */

static void sweep_free(sweep *s)
{
    for (size_t i = 0; i < s->nseen; i++)
        free(s->seen[i]);
    free(s->seen);
    free(s);
}

static void sweep_step_done(sweep *s)
{
    if (--s->pending > 0)
        return;
    s->d->sweep = NULL;
    sbx_info(COMP, "sweep done removed=%d failed=%d", s->removed, s->failed);
    if (s->done)
        s->done(s->arg, s->removed, s->failed);
    sweep_free(s);
}

/* 1 if id was already taken care of in this sweep, else records it. */
static int sweep_seen(sweep *s, const char *id)
{
    for (size_t i = 0; i < s->nseen; i++)
        if (strcmp(s->seen[i], id) == 0)
            return 1;
    if (s->nseen == s->capseen) {
        size_t cap = s->capseen ? s->capseen * 2 : 16;
        char **n = realloc(s->seen, cap * sizeof(*n));
        if (!n)
            return 0;
        s->seen = n;
        s->capseen = cap;
    }
    if ((s->seen[s->nseen] = strdup(id)))
        s->nseen++;
    return 0;
}

static void on_sweep_kick(sbx_timer *t) { sweep_step_done(t->data); }

static void on_sweep_removed(void *arg, const sbx_http_res *res)
{
    sweep *s = arg;
    if (res->code == SBX_HTTP_OK && res->status < 300)
        s->removed++;
    else if (!(res->code == SBX_HTTP_OK && res->status == 404)) /* someone beat us to it */
        s->failed++;
    sweep_step_done(s);
}

static int run_owns(const sbx_docker *d, const char *slot, const char *token)
{
    char buf[32];
    for (const sbx_run *r = d->runs; r; r = r->next) {
        snprintf(buf, sizeof(buf), "%" PRId64, r->token);
        if (strcmp(r->slot, slot) == 0 && strcmp(buf, token) == 0)
            return 1;
    }
    return 0;
}


static void on_sweep_list(void *arg, const sbx_http_res *res)
{
    sweep_list *sl = arg;
    sweep *s = sl->s;
    host *h = sl->h;
    json_object *arr = NULL;

    sl->step = NULL;
    if (res->code != SBX_HTTP_OK || res->status != 200 ||
        !(arr = json_tokener_parse(res->body)) || !json_object_is_type(arr, json_type_array)) {
        char msg[256];
        engine_error(msg, sizeof(msg), "list containers", res);
        sbx_warn(COMP, "sweep skipped host=%s error=\"%s\"", h->name, msg);
        s->failed++;
        goto out;
    }
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *c = json_object_array_get_idx(arr, i), *idv, *labels = NULL, *names;
        const char *id, *slot, *token, *name = "";
        char path[URL_MAX];
        if (!json_object_object_get_ex(c, "Id", &idv))
            continue;
        id = json_object_get_string(idv);
        json_object_object_get_ex(c, "Labels", &labels);
        slot = label_of(labels, "sbx.slot");
        token = label_of(labels, "sbx.token");
        if (json_object_object_get_ex(c, "Names", &names) && json_object_array_length(names) > 0)
            name = json_object_get_string(json_object_array_get_idx(names, 0));
        if (name && name[0] == '/')
            name++;
        /* A warm one: ours while in the pool or being taken; renamed, it
         * is a session's (only DESTROY removes it). */
        if (label_of(labels, "sbx.warm")[0] &&
            (!name || strncmp(name, WARM_PREFIX, sizeof(WARM_PREFIX) - 1) != 0 || warm_owned(s->d, name)))
            continue;
        /* The filter asked for these labels; check anyway before deleting. */
        /* A session's container outlives its runs: only DESTROY removes it. */
        if (strcmp(label_of(labels, "sbx.worker"), s->d->worker_id) != 0 ||
            strcmp(label_of(labels, "sbx.pool"), SBX_DOCKER_POOL) != 0 ||
            label_of(labels, "sbx.session")[0] ||
            !id_ok(id) || run_owns(s->d, slot, token) || sweep_seen(s, id))
            continue;
        sbx_info(COMP, "sweep removing orphan host=%s container=%.12s job=%s slot=%s token=%s", h->name,
                 id, label_of(labels, "sbx.job"), slot, token);
        snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", id);
        if (call(s->d, h, "DELETE", path, NULL, NULL, 0, s->d->req_timeout_ms, 0, NULL,
                 on_sweep_removed, s, NULL) < 0) {
            s->failed++;
            continue;
        }
        s->pending++;
    }
out:
    json_object_put(arr);
    sweep_step_done(s);
}

/* Lists one host's containers of ours (the probe done, if it was needed). */
static void sweep_list_send(sweep_list *sl)
{
    sbx_docker *d = sl->s->d;
    char filters[512], path[URL_MAX], *esc;

    snprintf(filters, sizeof(filters), "{\"label\":[\"sbx.worker=%s\",\"sbx.pool=" SBX_DOCKER_POOL "\"]}",
             d->worker_id);
    if (!(esc = curl_easy_escape(NULL, filters, 0)))
        goto fail;
    snprintf(path, sizeof(path), "/containers/json?all=1&filters=%s", esc);
    curl_free(esc);
    if (call(d, sl->h, "GET", path, NULL, NULL, 0, d->req_timeout_ms, LIST_MAX_BYTES, NULL,
             on_sweep_list, sl, &sl->step) == 0)
        return;
fail:
    sl->s->failed++;
    sweep_step_done(sl->s);
}

static void on_sweep_probed(void *owner, const char *err)
{
    sweep_list *sl = owner;
    if (err) {
        sbx_warn(COMP, "sweep skipped host=%s error=\"%s\"", sl->h->name, err);
        sl->s->failed++;
        sweep_step_done(sl->s);
        return;
    }
    sweep_list_send(sl);
}

int sbx_docker_sweep(sbx_provider *p, sbx_docker_sweep_cb done, void *arg)
{
    sbx_docker *d = docker_of(p);
    sweep *s;

    warm_fill(d); /* what failed to be made since, or a host whose tunnel came up */
    if (d->sweep)
        return -EBUSY;
    if (!(s = calloc(1, sizeof(*s) + d->nhosts * sizeof(s->lists[0]))))
        return -ENOMEM;
    s->d = d;
    s->done = done;
    s->arg = arg;
    sbx_timer_init(&s->kick, on_sweep_kick, s);
    /* Our own count keeps the sweep open while the lists are being sent; a
     * zero timer drops it, so done never runs inside this call. */
    s->pending = 1;
    sbx_timer_start(p->loop, &s->kick, 0);
    d->sweep = s;
    for (size_t i = 0; i < d->nhosts; i++) {
        sweep_list *sl = &s->lists[i];
        sl->s = s;
        sl->h = &d->hosts[i];
        if (!sbx__docker_link_up(&sl->h->link, NULL))
            continue;   /* swept when its tunnel comes up (on_tunnel) */
        /* Counted before the call: a failed send below counts itself down. */
        s->pending++;
        if (sl->h->api[0] && !sl->h->reprobe) {
            sweep_list_send(sl);
        } else if (probe_start(&sl->probe, d, sl->h, 0, on_sweep_probed, sl, &sl->step) < 0) {
            s->failed++;
            s->pending--;
        }
    }
    return 0;
}

/* ---- session_op: PAUSE and DESTROY of a session's container ---- */

struct sess_op {
    sbx_docker *d;
    host *h;
    sbx_session_op op;
    char name[CONTAINER_NAME_MAX + 1];
    char sess[SBX_SESSION_NAME_MAX + 1];
    sbx_session_cb cb;
    void *arg;
    probe probe;
    sbx_http_handle *step;
    uint64_t t0_us;
    sess_op *prev, *next;
};

static void op_end(sess_op *o, int rc, const char *why)
{
    sbx_docker *d = o->d;
    if (o->prev)
        o->prev->next = o->next;
    else
        d->ops = o->next;
    if (o->next)
        o->next->prev = o->prev;
    sbx_info(COMP, "session %s session=%s container=%s rc=%d ms=%" PRIu64 "%s%s",
             o->op == SBX_SESSION_PAUSE ? "pause" : "destroy", o->sess, o->name, rc,
             (sbx_now_us() - o->t0_us) / 1000, why ? " why=" : "", why ? why : "");
    if (o->op == SBX_SESSION_DESTROY && rc == 0)
        preview_close(d, o->sess);
    o->cb(o->arg, rc, why);
    free(o);
}

/* PAUSE: a container that is not there, already paused, or not running
 * has nothing to pause (a stopped one is replaced by the next run); 
 * DESTROY: gone is gone, whoever removed it. */
static void on_op_done(void *arg, const sbx_http_res *res)
{
    sess_op *o = arg;
    char msg[256];
    o->step = NULL;
    if (res->code == SBX_HTTP_OK && (res->status < 300 || res->status == 404)) {
        op_end(o, 0, NULL);
        return;
    }
    engine_error(msg, sizeof(msg), o->op == SBX_SESSION_PAUSE ? "pause" : "destroy", res);
    if (o->op == SBX_SESSION_PAUSE && res->code == SBX_HTTP_OK &&
        (strstr(msg, "already paused") || strstr(msg, "not running"))) {
        op_end(o, 0, NULL);
        return;
    }
    /* No freezer for it (rootless Podman on cgroup v1, say): a stop would
     * lose the workspace, so the session stays as it is. */
    if (o->op == SBX_SESSION_PAUSE && res->code == SBX_HTTP_OK &&
        (strstr(msg, "not supported") || strstr(msg, "freezer"))) {
        op_end(o, -ENOTSUP, msg);
        return;
    }
    op_end(o, -EIO, msg);
}

static int op_send(sess_op *o)
{
    char path[URL_MAX];
    if (o->op == SBX_SESSION_PAUSE) {
        snprintf(path, sizeof(path), "/containers/%s/pause", o->name);
        return call(o->d, o->h, "POST", path, NULL, NULL, 0, o->d->req_timeout_ms, 0, NULL, on_op_done,
                    o, &o->step);
    }
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", o->name);
    return call(o->d, o->h, "DELETE", path, NULL, NULL, 0, o->d->req_timeout_ms, 0, NULL, on_op_done, o,
                &o->step);
}

static void on_op_probed(void *owner, const char *err)
{
    sess_op *o = owner;
    int rc;
    if (err) {
        op_end(o, -EIO, err);
        return;
    }
    if ((rc = op_send(o)) < 0)
        op_end(o, rc, "could not send the request");
}

static int docker_session_op(sbx_provider *p, sbx_session_op op, const char *slot, const char *session,
                             int64_t token, sbx_session_cb cb, void *arg)
{
    sbx_docker *d = docker_of(p);
    sess_op *o;
    host *h;
    int idx, rc;

    (void)token; /* the engine keeps no owner: the lease around this call fences */
    if (parse_slot(d, slot, &h, &idx) < 0)
        return -ENOENT;
    if (!sbx_session_name_ok(session) || (op != SBX_SESSION_PAUSE && op != SBX_SESSION_DESTROY))
        return -EINVAL;
    if (h->busy[idx])
        return -EBUSY;
    if (!sbx__docker_link_up(&h->link, NULL))
        return -EAGAIN;
    if (!(o = calloc(1, sizeof(*o))))
        return -ENOMEM;
    o->d = d;
    o->h = h;
    o->op = op;
    o->cb = cb;
    o->arg = arg;
    o->t0_us = sbx_now_us();
    snprintf(o->sess, sizeof(o->sess), "%s", session);
    snprintf(o->name, sizeof(o->name), "sbx-%s-%s-%d", session, h->name, idx);
    if (h->api[0] && !h->reprobe)
        rc = op_send(o);
    else
        rc = probe_start(&o->probe, d, h, 0, on_op_probed, o, &o->step);
    if (rc < 0) {
        free(o);
        return rc;
    }
    o->next = d->ops;
    if (d->ops)
        d->ops->prev = o;
    d->ops = o;
    return 0;
}

/* ---- the warm pool ---- */

struct warm {
    sbx_docker *d;
    host *h;
    char name[CONTAINER_NAME_MAX + 1];
    char id[CONTAINER_ID_MAX + 1];
    int ready;               /* created, started and paused */
    probe probe;
    sbx_http_handle *step;
    uint64_t t0_us;
    warm *prev, *next;
};

/* What a warm container is made of: the provider's defaults (build_create
 * takes limits and image from the provider when the job names none). */
static const sbx_job warm_job = {.job_id = "warm", .script = "true"};

static void warm_unlink(warm *w)
{
    sbx_docker *d = w->d;
    if (w->prev)
        w->prev->next = w->next;
    else
        d->warms = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    w->h->nwarm--;
}

static void on_warm_deleted(void *arg, const sbx_http_res *res)
{
    (void)arg;
    (void)res; /* what a failed delete leaves, the sweeper removes */
}

/* Fire and forget: nobody waits for a warm container's delete. */
static void warm_delete(sbx_docker *d, host *h, const char *name)
{
    char path[URL_MAX];
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", name);
    (void)call(d, h, "DELETE", path, NULL, NULL, 0, d->req_timeout_ms, 0, NULL, on_warm_deleted, NULL,
               NULL);
}

/* A step failed: the container (if made) goes and the pool is one short
 * until the next take or sweep fills it (no retry loop against an engine
 * that refuses). */
static void warm_fail(warm *w, const char *what, const sbx_http_res *res)
{
    char msg[256];
    if (res)
        engine_error(msg, sizeof(msg), what, res);
    else
        snprintf(msg, sizeof(msg), "%s: could not send the request", what);
    sbx_warn(COMP, "warm container failed host=%s name=%s error=\"%s\"", w->h->name, w->name, msg);
    warm_unlink(w);
    if (w->id[0])
        warm_delete(w->d, w->h, w->name);
    free(w);
}

static int warm_call(warm *w, const char *method, const char *fmt, const char *ctype, const char *body,
                     sbx_http_done_cb done)
{
    char path[URL_MAX];
    snprintf(path, sizeof(path), fmt, w->id[0] ? w->id : w->name);
    return call(w->d, w->h, method, path, ctype, body, body ? strlen(body) : 0, w->d->req_timeout_ms, 0,
                NULL, done, w, &w->step);
}

static void on_warm_paused(void *arg, const sbx_http_res *res)
{
    warm *w = arg;
    w->step = NULL;
    if (res->code != SBX_HTTP_OK || res->status >= 300) {
        warm_fail(w, "pause", res);
        return;
    }
    w->ready = 1;
    sbx_info(COMP, "warm container ready host=%s container=%.12s ms=%" PRIu64, w->h->name, w->id,
             (sbx_now_us() - w->t0_us) / 1000);
}

static void on_warm_started(void *arg, const sbx_http_res *res)
{
    warm *w = arg;
    w->step = NULL;
    if (res->code != SBX_HTTP_OK || (res->status != 204 && res->status != 304)) {
        warm_fail(w, "start", res);
        return;
    }
    if (warm_call(w, "POST", "/containers/%s/pause", NULL, NULL, on_warm_paused) < 0)
        warm_fail(w, "pause", NULL);
}

static void on_warm_created(void *arg, const sbx_http_res *res)
{
    warm *w = arg;
    json_object *o = NULL, *id;
    w->step = NULL;
    if (res->code != SBX_HTTP_OK || (res->status != 201 && res->status != 200) ||
        !(o = json_tokener_parse(res->body)) || !json_object_object_get_ex(o, "Id", &id) ||
        !id_ok(json_object_get_string(id))) {
        json_object_put(o);
        warm_fail(w, "create", res); /* a missing default image is not pulled for the pool */
        return;
    }
    snprintf(w->id, sizeof(w->id), "%s", json_object_get_string(id));
    json_object_put(o);
    if (warm_call(w, "POST", "/containers/%s/start", NULL, NULL, on_warm_started) < 0)
        warm_fail(w, "start", NULL);
}

static void warm_create(warm *w)
{
    sbx_run *t = calloc(1, sizeof(*t));
    char err[256], *body = NULL;
    int rc = -ENOMEM;

    if (t) {
        /* The body of a session's container, as build_create makes it for a
         * run of the provider's defaults, labelled warm. */
        t->job = &warm_job;
        t->host = w->h;
        t->session = t->warm = 1;
        body = build_create(w->d, t, err, sizeof(err));
        free(t);
    }
    if (body)
        rc = warm_call(w, "POST", "/containers/create?name=%s", "application/json", body, on_warm_created);
    free(body);
    if (rc < 0)
        warm_fail(w, "create", NULL);
}

static void on_warm_probed(void *owner, const char *err)
{
    warm *w = owner;
    if (err) {
        sbx_warn(COMP, "warm container failed host=%s error=\"%s\"", w->h->name, err);
        warm_unlink(w);
        free(w);
        return;
    }
    warm_create(w);
}

/* Makes the pool whole again on every host whose link is up. */
static void warm_fill(sbx_docker *d)
{
    for (size_t i = 0; i < d->nhosts; i++) {
        host *h = &d->hosts[i];
        while (h->nwarm < d->warm_n && sbx__docker_link_up(&h->link, NULL)) {
            warm *w = calloc(1, sizeof(*w));
            int rc;
            if (!w)
                return;
            w->d = d;
            w->h = h;
            w->t0_us = sbx_now_us();
            snprintf(w->name, sizeof(w->name), WARM_PREFIX "%s-%s-%u", h->name, d->warm_tag, ++d->warm_seq);
            w->next = d->warms;
            if (d->warms)
                d->warms->prev = w;
            d->warms = w;
            h->nwarm++;
            if (h->api[0] && !h->reprobe) {
                warm_create(w);
                continue;
            }
            if ((rc = probe_start(&w->probe, d, h, 0, on_warm_probed, w, &w->step)) < 0) {
                sbx_warn(COMP, "warm container not made host=%s error=\"%s\"", h->name, strerror(-rc));
                warm_unlink(w);
                free(w);
                break;
            }
        }
    }
}

/* Whether a warm container can stand in for the one this session's run
 * would create: what build_create would make of its job is the defaults. */
static int warm_fits(const sbx_run *r)
{
    const sbx_docker *d = r->d;
    const sbx_job *j = r->job;
    if (j->image && !(d->default_image && strcmp(j->image, d->default_image) == 0))
        return 0;
    return (j->memory_mb <= 0 || j->memory_mb == d->memory_mb) && (j->pids <= 0 || j->pids == d->pids) &&
           (j->disk_mb <= 0 || j->disk_mb == d->disk_mb) && (j->cpus <= 0 || j->cpus == d->cpus) &&
           !(j->network && d->allow_network) && !r->preview;
}

static void on_adopt_unpaused(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    char msg[256];
    r->step = NULL;
    if (res->code != SBX_HTTP_OK || res->status >= 300) {
        engine_error(msg, sizeof(msg), "unpause the warm container", res);
        session_clear(r, msg); /* it is the session's now: replaced by a new one */
        return;
    }
    r->res.sandbox = SBX_SANDBOX_WARM;
    sbx_info(COMP, "session took a warm container job=%s session=%s container=%.12s ms=%" PRIu64,
             r->job_id, r->sess, r->id, (sbx_now_us() - r->t_unpause_us) / 1000);
    session_files(r);
}

static void on_adopt_renamed(void *arg, const sbx_http_res *res)
{
    sbx_run *r = arg;
    char msg[256];
    r->step = NULL;
    r->warm_name[0] = '\0';
    if (res->code != SBX_HTTP_OK || res->status >= 300) {
        /* Still a warm one by its name: it goes, and the session gets a
         * container of its own. */
        engine_error(msg, sizeof(msg), "rename the warm container", res);
        sbx_warn(COMP, "warm container not taken job=%s container=%.12s error=\"%s\"", r->job_id, r->id, msg);
        warm_delete(r->d, r->host, r->id);
        r->id[0] = '\0';
        r->res.instance[0] = '\0';
        if (r->stop != SBX_OUTCOME_SUCCEEDED)
            run_remove(r);
        else
            session_create(r);
        return;
    }
    if (r->stop != SBX_OUTCOME_SUCCEEDED) {
        run_remove(r); /* the session's now, paused: its next run resumes it */
        return;
    }
    if (run_call(r, "POST", "/containers/%s/unpause", NULL, NULL, 0, on_adopt_unpaused) < 0) {
        run_fail(r, "unpause: could not send the request");
        run_remove(r);
    }
}

/* The session has no container on the slot: take a ready warm one of the
 * slot's host when the job fits the defaults, renamed to the session's
 * name (POST rename, then unpause), and make another in the background.
 * 0: none taken (the caller creates one). */
static int warm_adopt(sbx_run *r)
{
    sbx_docker *d = r->d;
    char path[URL_MAX];
    warm *w;

    if (!d->warm_n || !warm_fits(r))
        return 0;
    for (w = d->warms; w && !(w->h == r->host && w->ready); w = w->next)
        ;
    if (!w)
        return 0;
    warm_unlink(w);
    snprintf(r->id, sizeof(r->id), "%s", w->id);
    snprintf(r->res.instance, sizeof(r->res.instance), "%s", r->id);
    snprintf(r->warm_name, sizeof(r->warm_name), "%s", w->name); /* the sweeper leaves it */
    free(w);
    warm_fill(d);
    set_state(r, RUN_ADOPTING);
    r->t_unpause_us = sbx_now_us();
    snprintf(path, sizeof(path), "/containers/%s/rename?name=%s", r->id, r->name);
    if (call(d, r->host, "POST", path, NULL, NULL, 0, d->req_timeout_ms, 0, NULL, on_adopt_renamed, r,
             &r->step) < 0) {
        r->warm_name[0] = '\0';
        warm_delete(d, r->host, r->id);
        r->id[0] = '\0';
        r->res.instance[0] = '\0';
        return 0;
    }
    return 1;
}

/* Whether the warm container called name is this provider's: in the pool,
 * or being taken by a run. */
static int warm_owned(const sbx_docker *d, const char *name)
{
    for (const warm *w = d->warms; w; w = w->next)
        if (strcmp(w->name, name) == 0)
            return 1;
    for (const sbx_run *r = d->runs; r; r = r->next)
        if (strcmp(r->warm_name, name) == 0)
            return 1;
    return 0;
}

static void docker_warm(sbx_provider *p, int n)
{
    sbx_docker *d = docker_of(p);
    if (!d->default_image) {
        sbx_warn(COMP, "SBX_WARM=%d: no default image to make warm containers of; ignored", n);
        return;
    }
    d->warm_n = n > 0 ? n : 0;
    sbx_info(COMP, "warm pool of %d per host", d->warm_n);
    warm_fill(d);
}

/* ---- lifetime ---- */

static size_t discard(char *p, size_t size, size_t nmemb, void *u)
{
    (void)p;
    (void)u;
    return size * nmemb;
}

/* Worker exit: no loop to come back to, so delete the containers with a
 * blocking multi transfer, all at once, within DESTROY_MS. What it misses,
 * the next start-up sweep of this worker id removes. */
#define DESTROY_MS 10000
static CURL *delete_now(CURLM *m, const host *h, const char *what)
{
    char url[URL_MAX];
    CURL *e;
    if (!h->api[0] || !(e = curl_easy_init()))
        return NULL;
    snprintf(url, sizeof(url), "%s%s/containers/%s?force=1&v=1", h->link.base, h->api, what);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)DESTROY_MS);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    sbx__docker_link_curl(&h->link, e);
    if (curl_multi_add_handle(m, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}

static void delete_all_now(sbx_docker *d)
{
    size_t nwarm = 0;
    for (warm *w = d->warms; w; w = w->next)
        nwarm++;
    CURLM *m = curl_multi_init();
    CURL **all = calloc(d->nruns + nwarm + 1, sizeof(*all));
    uint64_t end = sbx_now_ms() + DESTROY_MS;
    size_t n = 0;
    int running = 0;

    if (!m || !all)
        goto out;
    /* A session's container stays for the session's next owner
     * (provider.h). */
    for (sbx_run *r = d->runs; r; r = r->next)
        if (r->id[0] && !r->session && (all[n] = delete_now(m, r->host, r->id)))
            n++;
    /* Warm ones hold nobody's work; by name, as one being made has no id
     * yet (its create may still land: the next sweep of this id gets it). */
    for (warm *w = d->warms; w; w = w->next)
        if ((all[n] = delete_now(m, w->h, w->name)))
            n++;
    do {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    } while (running && sbx_now_ms() < end);
    for (CURLMsg *msg; (msg = curl_multi_info_read(m, &running));)
        if (msg->msg == CURLMSG_DONE && msg->data.result != CURLE_OK)
            sbx_warn(COMP, "delete at exit failed: %s", curl_easy_strerror(msg->data.result));
    for (size_t i = 0; i < n; i++) {
        curl_multi_remove_handle(m, all[i]);
        curl_easy_cleanup(all[i]);
    }
out:
    free(all);
    if (m)
        curl_multi_cleanup(m);
}

static void docker_free(sbx_docker *d)
{
    if (!d)
        return;
    if (d->sweep) {
        sbx_timer_stop(d->base.loop, &d->sweep->kick);
        sweep_free(d->sweep);
    }
    sbx_http_free(d->http); /* cancels every call: no callback runs after this */
    while (d->runs) {
        sbx_run *r = d->runs;
        d->runs = r->next;
        sbx_timer_stop(d->base.loop, &r->deadline);
        sbx_timer_stop(d->base.loop, &r->poll_timer);
        sbx_timer_stop(d->base.loop, &r->exec_timer);
        sbx_buf_free(&r->tar);
        free(r);
    }
    while (d->ops) {
        sess_op *o = d->ops;
        d->ops = o->next;
        free(o);
    }
    while (d->warms) {
        warm *w = d->warms;
        d->warms = w->next;
        free(w);
    }
    while (d->dsts) {
        preview_dst *t = d->dsts;
        d->dsts = t->next;
        /* The worker's proxy outlives us: it must not dial into freed memory. */
        if (d->base.previews)
            sbx_preview_close(d->base.previews, t->sess);
        free(t);
    }
    for (size_t i = 0; d->hosts && i < d->nhosts; i++) {
        host *h = &d->hosts[i];
        for (int k = 0; h->slot_ids && k < h->capacity; k++)
            free(h->slot_ids[k]);
        free(h->slot_ids);
        free(h->busy);
        sbx__docker_link_free(&h->link);
    }
    free(d->hosts);
    free(d->slot_ptrs);
    free(d->worker_id);
    free(d->default_image);
    free(d->registry_auth);
    free(d->user);
    free(d);
}

static void docker_destroy(sbx_provider *p)
{
    sbx_docker *d = docker_of(p);
    if (d->nruns || d->warms)
        sbx_info(COMP, "deleting %zu containers at exit, and the warm pool", d->nruns);
    delete_all_now(d);
    docker_free(d);
}

/* A sweep already running covers this one (-EBUSY is fine). */
static void docker_sweep_op(sbx_provider *p) { (void)sbx_docker_sweep(p, NULL, NULL); }

static const sbx_provider_ops docker_ops = {
    .name = "docker",
    .start = docker_start,
    .cancel = docker_cancel,
    .slots = docker_slots,
    .pool = docker_pool,
    .sweep = docker_sweep_op,
    .session_op = docker_session_op,
    .warm = docker_warm,
    .destroy = docker_destroy,
};

/* ---- hosts ---- */

/* A tunnel came up: containers a crashed predecessor left on that host
 * could not be listed while it was down, so sweep now. */
static void on_tunnel(void *arg, int up)
{
    host *h = arg;
    if (up && !h->d->no_start_sweep)
        (void)sbx_docker_sweep(&h->d->base, NULL, NULL);
}

static int host_init(sbx_docker *d, host *h, const sbx_docker_config *dc, const sbx_docker_host *cfg,
                     char *err, size_t errlen)
{
    int rc = sbx__docker_link_new(d->base.loop, dc, cfg, on_tunnel, h, &h->link, err, errlen);
    if (rc < 0)
        return rc;
    h->d = d;
    snprintf(h->name, sizeof(h->name), "%s", cfg->name);
    h->capacity = cfg->capacity;
    h->slot_ids = calloc((size_t)cfg->capacity, sizeof(*h->slot_ids));
    h->busy = calloc((size_t)cfg->capacity, sizeof(*h->busy));
    if (!h->slot_ids || !h->busy)
        return -ENOMEM;
    for (int i = 0; i < cfg->capacity; i++) {
        char id[SLOT_ID_MAX + 1];
        snprintf(id, sizeof(id), SBX_DOCKER_POOL "/%s/%d", h->name, i);
        if (!(h->slot_ids[i] = strdup(id)))
            return -ENOMEM;
        d->slot_ptrs[d->nslots++] = h->slot_ids[i];
    }
    return 0;
}

static int parse_user(sbx_docker *d, const char *user, char *err, size_t errlen)
{
    unsigned long uid, gid;
    char *end;
    uid = strtoul(user, &end, 10);
    if (end == user || (*end != ':' && *end) || uid > 0x7fffffffUL)
        goto bad;
    gid = uid;
    if (*end == ':') {
        const char *g = end + 1;
        gid = strtoul(g, &end, 10);
        if (end == g || *end || gid > 0x7fffffffUL)
            goto bad;
    }
    if (uid == 0) {
        snprintf(err, errlen, "docker user must not be root");
        return -EINVAL;
    }
    d->uid = (unsigned)uid;
    d->gid = (unsigned)gid;
    return 0;
bad:
    snprintf(err, errlen, "docker user \"%.40s\" must be numeric uid[:gid]", user);
    return -EINVAL;
}

int sbx_docker_new(sbx_loop *loop, const sbx_docker_config *cfg, sbx_provider **out,
                   char *err, size_t errlen)
{
    sbx_docker *d;
    size_t total = 0;
    int rc = -ENOMEM;

    if (!cfg->worker_id || !cfg->worker_id[0] || strlen(cfg->worker_id) > 128 ||
        strpbrk(cfg->worker_id, "\"\\")) {
        snprintf(err, errlen, "docker provider needs a worker id (1-128 chars, no quotes)");
        return -EINVAL;
    }
    if ((rc = sbx_docker_check_config(cfg, err, errlen)) < 0)
        return rc;
    if (!(d = calloc(1, sizeof(*d))))
        goto nomem;
    d->base.ops = &docker_ops;
    d->base.loop = loop;
    d->allow_network = cfg->allow_network;
    d->no_start_sweep = cfg->no_start_sweep;
    d->memory_mb = cfg->default_memory_mb > 0 ? cfg->default_memory_mb : 1024;
    d->pids = cfg->default_pids > 0 ? cfg->default_pids : 512;
    d->cpus = cfg->default_cpus > 0 ? cfg->default_cpus : 1.0;
    d->disk_mb = cfg->default_disk_mb > 0 ? cfg->default_disk_mb : 1024;
    d->tmp_mb = cfg->tmp_mb > 0 ? cfg->tmp_mb : 256;
    d->req_timeout_ms = cfg->request_timeout_ms > 0 ? (uint32_t)cfg->request_timeout_ms : 30000;
    d->kill_grace_ms = cfg->kill_grace_ms > 0 ? cfg->kill_grace_ms : 10000;
    if (!(d->worker_id = strdup(cfg->worker_id)) ||
        !(d->user = strdup(cfg->user ? cfg->user : "65534:65534")) ||
        (cfg->default_image && !(d->default_image = strdup(cfg->default_image))) ||
        (cfg->registry_auth && cfg->registry_auth[0] && !(d->registry_auth = strdup(cfg->registry_auth))))
        goto nomem;
    if (d->memory_mb < MEMORY_MIN_MB) {
        snprintf(err, errlen, "docker default memory %d MB is below the %d MB a container needs",
                 d->memory_mb, MEMORY_MIN_MB);
        rc = -EINVAL;
        goto fail;
    }
    if (d->registry_auth && strpbrk(d->registry_auth, "\r\n")) {
        snprintf(err, errlen, "docker registry auth must be one line (base64url of the JSON)");
        rc = -EINVAL;
        goto fail;
    }
    if ((rc = parse_user(d, d->user, err, errlen)) < 0)
        goto fail;
    {
        /* Warm names of two providers on one engine must not meet. */
        unsigned char rnd[4];
        if (getentropy(rnd, sizeof(rnd)) < 0)
            memset(rnd, 0, sizeof(rnd));
        snprintf(d->warm_tag, sizeof(d->warm_tag), "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
    }
    for (size_t i = 0; i < cfg->nhosts; i++)
        total += cfg->hosts[i].capacity > 0 ? (size_t)cfg->hosts[i].capacity : 0;
    if (!(d->hosts = calloc(cfg->nhosts, sizeof(*d->hosts))) ||
        !(d->slot_ptrs = calloc(total + 1, sizeof(*d->slot_ptrs))))
        goto nomem;
    for (size_t i = 0; i < cfg->nhosts; i++) {
        d->nhosts = i + 1;
        if ((rc = host_init(d, &d->hosts[i], cfg, &cfg->hosts[i], err, errlen)) < 0) {
            if (rc == -ENOMEM)
                goto nomem;
            goto fail;
        }
    }
    if ((rc = sbx_http_new(loop, &d->http)) < 0)
        goto nomem;
    if (!cfg->no_start_sweep && (rc = sbx_docker_sweep(&d->base, NULL, NULL)) < 0)
        goto nomem;
    sbx_info(COMP, "provider ready worker=%s hosts=%zu slots=%zu", d->worker_id, d->nhosts, d->nslots);
    *out = &d->base;
    return 0;

nomem:
    rc = -ENOMEM;
    snprintf(err, errlen, "out of memory");
fail:
    docker_free(d);
    return rc;
}

size_t sbx_docker_host_count(sbx_provider *p) { return docker_of(p)->nhosts; }

const char *sbx_docker_host_name(sbx_provider *p, size_t host_i)
{
    sbx_docker *d = docker_of(p);
    return host_i < d->nhosts ? d->hosts[host_i].name : NULL;
}

size_t sbx_docker_host_slots(sbx_provider *p, size_t host_i, const char ***ids)
{
    sbx_docker *d = docker_of(p);
    size_t first = 0;
    if (host_i >= d->nhosts) {
        *ids = NULL;
        return 0;
    }
    for (size_t i = 0; i < host_i; i++)
        first += (size_t)d->hosts[i].capacity;
    *ids = d->slot_ptrs + first;
    return (size_t)d->hosts[host_i].capacity;
}

int sbx_docker_host_up(sbx_provider *p, size_t host_i, const char **why)
{
    sbx_docker *d = docker_of(p);
    if (host_i >= d->nhosts) {
        if (why)
            *why = "no such host";
        return 0;
    }
    return sbx__docker_link_up(&d->hosts[host_i].link, why);
}

size_t sbx_docker_active(sbx_provider *p) { return docker_of(p)->nruns; }
