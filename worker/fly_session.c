/* fly_session.c — a session's jobs in one Fly Machine, through exec.
 *
 * The machine. Created once per session with the session's name (Fly machine
 * names are unique in an app: a second create, from a racing or restarted
 * worker, is refused 409 instead of making a second machine) and metadata
 * sbx_session=<name>, by which any worker finds it again (list ?metadata.).
 * Not auto_destroy, restart policy "no", and no sbx_worker metadata: the
 * provider's sweep lists by sbx_worker, so it never sees a session machine
 * (sessions end by DESTROY). Its init is an idle shell loop: the machine
 * stays `started` between jobs, so what a job leaves running in the
 * background (a dev server) is still there for the next one.
 *
 * Why exec, and how. Fly's root filesystem is ephemeral: a stop/start (and
 * an update, which restarts) boots it afresh from the image (fly.io/docs/
 * volumes/overview; docs/apps/restart: "Restarting wipes the ephemeral file
 * system"). Running each job as the machine's main process (update + start
 * per job) would lose /workspace and every process between jobs. So the
 * machine keeps running and each job goes in through POST .../exec
 * (OpenAPI MachineExecRequest: command argv, stdin as one string, timeout; no
 * env, no working directory; reply {stdout, stderr, exit_code}). Exec answers
 * only when its command ends, and its timeout range is not documented while
 * every long request to the API is cut by Fly's proxy (the reason fly-go caps
 * wait at 60 s); a build lasts up to job->timeout_s. So no exec waits for a
 * job: one exec starts it detached (setsid, its own process group, output to
 * files under /tmp/.sbx/<run>/, its exit code to rc when it ends) and returns
 * at once; the run then polls with short execs, each returning the exit code
 * if there is one and the next bytes of stdout and stderr (base64, at most
 * FLY_SESS_CHUNK per stream, so the reply size never depends on the build).
 * Output is therefore exact (any bytes), in order per stream, live with a
 * poll_ms lag; nothing goes through the logs API. job->files and the job
 * script go in the start exec's stdin, one "<b64 path> <b64 content>" line
 * each. Each exec is one request per poll_ms on the machine, inside Fly's
 * 1 req/s (burst 3) per action per machine.
 *
 * A run: FIND (list by metadata) -> CREATE (none) | START (stopped: a fresh
 * root fs, so NEW; suspended: RESUMED, resume_ms from POST start to the
 * started wait) -> BOOT (wait?state=started) -> LAUNCH (exec) -> POLL ... ->
 * FINISHED. Timeout and cancel: KILL, one exec that sends SIGTERM to the
 * job's process group and SIGKILL after stop_grace_s; the machine stays. A
 * job whose worker died leaves no rc: the next job's launch kills its group
 * first, so it never runs beside its successor.
 *
 * PAUSE is POST .../suspend (fly.io/docs/reference/suspend-resume: the VM's
 * memory and processes are kept; start resumes in "a few hundred ms").
 * Suspend needs at most 2 GB of memory, no swap and no schedule ("Require-
 * ments"); for a bigger machine PAUSE is -ENOTSUP rather than a stop, because
 * a stop would throw the workspace away (ephemeral root fs) and the session
 * would silently lose it. DESTROY is DELETE ?force=true of every machine of
 * the session; 404 is success.
 *
 * Fencing: the Machines API keeps no token of ours, so the machine does:
 * the launch records the lease's token in /tmp/.sbx/token and refuses (BUSY,
 * provider.h) a token older than the newest it saw, as the agent does for
 * vmpool. PAUSE and DESTROY carry no check (a suspended machine runs no
 * exec); the sweeper runs them under its own lease.
 *
 * Previews (provider.h, "previews"). A machine's dev server is reached at
 * its 6PN address, private_ip in the API (fly.io/docs/reference/private-
 * networking: every machine has one, and the org's WireGuard peers reach
 * it; docs/getting-started/app-services, "A note on IPv4 and IPv6
 * wildcards": an app listens on fly-local-6pn or [::]); the worker sits on
 * that network as a peer, so its preview proxy dials private_ip:
 * preview_port and the browser still needs the preview's token. No Fly proxy service is
 * configured: a public port would be one without our token in front. The
 * address is read from the list or the create reply on every run, so a
 * worker that takes a session over opens its preview again; the proxy's
 * dial target lives here until DESTROY closes it.
 *
 * The warm pool (fly_warm.c): a session with no machine yet, whose job fits
 * the provider's defaults, takes a suspended warm machine instead of a
 * create. Its name stays (Fly cannot rename a machine); it becomes the
 * session's by metadata sbx_session, set with POST .../metadata/{key}
 * (fly-go SetMetadata), which is what every lookup here goes by. If that
 * fails the run creates a machine as usual and the pool destroys the warm
 * one.
 *
 * The image needs /bin/sh, setsid, base64, head and tail (any coreutils or
 * busybox).
 */
#include "fly_session.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "fly_warm.h"
#include "log.h"
#include "preview.h"
#include "text.h"

/* Bytes of each stream one poll returns: 2 x 64 KiB in base64 is ~175 KB, far
 * under the HTTP client's 1 MiB reply cap. */
#define FLY_SESS_CHUNK 65536
/* Machines a session's list may show; more would be a bug (names are unique). */
#define FLY_SESS_LOOKS 3
/* How long an exec may take before the API gives up on it: polls and the
 * start are quick; the kill exec waits out the grace. */
#define FLY_SESS_EXEC_S 30
#define FLY_SESS_WAIT_S 10
#define FLY_SESS_WAIT_SLACK_MS 15000
/* Lists a PAUSE/DESTROY makes before it believes there is no machine. */
#define FLY_SESS_OP_LOOKS 2
/* Polls answered with an error in a row before the run is an ERROR. */
#define FLY_SESS_POLL_ERRORS 5
#define FLY_SESS_DIR "/tmp/.sbx"
#define FLY_SESS_MEM_SUSPEND_MAX 2048
/* The launch's stdin: the whole job message is at most SBX_MSG_MAX_BYTES, and
 * base64 makes 4 bytes of 3; a margin for the paths. */
#define FLY_SESS_STDIN_MAX (SBX_MSG_MAX_BYTES / 3 * 4 + 64 * 1024)

/* $1: run id, $2: the lease's token. stdin: "<b64 path> <b64 content>"
 * lines, the job script first. Exits 0 once the job runs (its pid file
 * written), 124 when the machine saw a newer token. */
static const char launch_sh[] =
    "S=" FLY_SESS_DIR "; R=$S/$1\n"
    "mkdir -p \"$R\" /workspace || exit 120\n"
    /* fencing: a stale owner never starts a job after a newer one did */
    "if [ -s \"$S/token\" ] && [ \"$(cat \"$S/token\")\" -gt \"$2\" ]; then exit 124; fi\n"
    "echo \"$2\" > \"$S/token\"\n"
    /* the job before this one never ended (its worker died): kill it first */
    "if [ -f \"$S/cur\" ]; then o=$(cat \"$S/cur\");"
    " if [ ! -f \"$S/$o/rc\" ] && [ -s \"$S/$o/pid\" ]; then"
    " kill -KILL -\"$(cat \"$S/$o/pid\")\" 2>/dev/null; fi; fi\n"
    "while read -r p c; do p=$(printf %s \"$p\" | base64 -d) && mkdir -p \"${p%/*}\" &&"
    " printf %s \"$c\" | base64 -d > \"$p\" || exit 121; done\n"
    "echo \"$1\" > \"$S/cur\"\n"
    "cd /workspace || exit 122\n"
    "setsid /bin/sh -c 'echo $$ > \"$0/pid\"; /bin/sh \"$0/job.sh\" > \"$0/out\" 2> \"$0/err\""
    " < /dev/null; echo $? > \"$0/rc.tmp\"; mv \"$0/rc.tmp\" \"$0/rc\"' \"$R\""
    " > /dev/null 2>&1 < /dev/null &\n"
    "i=0; while [ ! -s \"$R/pid\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n"
    "[ -s \"$R/pid\" ] || exit 123\n";

/* $1: run id, $2/$3: stdout/stderr offsets, $4: chunk. Prints the exit code
 * or "-", then each stream's next bytes in base64, one line each. The exit
 * code is read first: once it is there the output files are complete. */
static const char poll_sh[] =
    "cd " FLY_SESS_DIR "/\"$1\" 2>/dev/null || exit 3\n"
    "rc=-; [ -f rc ] && rc=$(cat rc)\n"
    "echo \"$rc\"\n"
    "tail -c +$(($2+1)) out 2>/dev/null | head -c \"$4\" | base64 | tr -d '\\n'; echo\n"
    "tail -c +$(($3+1)) err 2>/dev/null | head -c \"$4\" | base64 | tr -d '\\n'; echo\n";

/* $1: run id, $2: grace in seconds. */
static const char kill_sh[] =
    "pg=$(cat " FLY_SESS_DIR "/\"$1\"/pid 2>/dev/null) || exit 0\n"
    "kill -TERM -\"$pg\" 2>/dev/null || exit 0\n"
    "i=0; while kill -0 -\"$pg\" 2>/dev/null && [ $i -lt $(($2*10)) ]; do"
    " sleep 0.1; i=$((i+1)); done\n"
    "kill -KILL -\"$pg\" 2>/dev/null; exit 0\n";

/* The machine's init: idle, so the machine stays started between jobs. */
static const char idle_sh[] = "mkdir -p /workspace; while :; do sleep 3600; done";

typedef enum srun_state {
    S_FIND, S_CREATE, S_ADOPT, S_START, S_BOOT, S_LAUNCH, S_POLL, S_KILL, S_DONE,
} srun_state;

static const char *const srun_names[] = {
    "find", "create", "adopt", "start", "boot", "launch", "poll", "kill", "done",
};

/* Where a session's preview goes: the proxy's dial argument, kept until the
 * session is destroyed (the preview outlives every run). */
struct sbx__fly_pv {
    sbx__fly_pv *next;
    char name[SBX_SESSION_NAME_MAX + 1];
    char ip[SBX_FLY_IP_MAX + 1];
    int port;
};

typedef void (*srun_step)(sbx__fly_srun *s);

struct sbx__fly_srun {
    sbx__fly_sessions *S;
    srun_state state;
    char name[SBX_SESSION_NAME_MAX + 1];
    char job_id[SBX_ID_MAX + 1];
    char run_id[17];
    char id[SBX_FLY_ID_MAX + 1];
    char ip[SBX_FLY_IP_MAX + 1];  /* the machine's private_ip, "" until known */
    int preview_port;             /* the job's session.preview_port, 0: none */
    int machine_port;             /* the machine's sbx_preview_port metadata, 0: none */
    sbx__fly_call meta_call;      /* records preview_port on the machine */
    char image[256];              /* what the job asks for: does a warm machine fit? */
    int cpus, mem_mb;
    json_object *create;          /* the create body, if the session has no machine */
    char *stdin_blob;             /* the launch exec's stdin: job script and files */
    int looks;                    /* finds since the last create refused or unclear */
    int poll_errors;
    uint64_t out_off, err_off;
    int full;                     /* the last poll returned a whole chunk: more waits */
    sbx_tail tail;
    char tail_mem[SBX_LOG_TAIL_MAX + 1];
    uint64_t boot_deadline_ms, resume_t0;
    int timeout_s;
    int launched, started, aborting, error, job_fault;
    int busy;                     /* the machine knows a newer token: BUSY */
    int64_t token;
    sbx_outcome abort;
    sbx_result res;
    sbx_output_fn out;
    void *out_arg;
    sbx__fly_call call;
    sbx_timer deadline_t, defer_t;
    srun_step deferred;
    sbx__fly_srun_cb cb;
    void *owner;
};

struct sbx__fly_sop {
    sbx__fly_sessions *S;
    sbx__fly_sop *next;
    sbx_session_op op;
    char name[SBX_SESSION_NAME_MAX + 1];
    char (*ids)[SBX_FLY_ID_MAX + 1];
    size_t n, i;
    int looks;                    /* lists so far: an empty one is looked at twice */
    sbx__fly_call call;
    sbx_timer defer_t;
    int rc;
    char why[200];
    sbx_session_cb cb;
    void *arg;
};

/* ---- helpers ---- */

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes n base64 characters into out (at least n * 3 / 4 bytes). Returns
 * the byte count, or -1 on a character that is not base64. */
static long b64_decode(const char *in, size_t n, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    long o = 0;
    for (size_t i = 0; i < n; i++) {
        int v;
        if (in[i] == '=')
            break;
        if ((v = b64val((unsigned char)in[i])) < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

/* Appends the shell single-quoted form of s. */
static int sh_quote(sbx_buf *b, const char *s)
{
    int rc = sbx_buf_add(b, "'", 1);
    for (; *s && rc == 0; s++)
        rc = *s == '\'' ? sbx_buf_add(b, "'\\''", 4) : sbx_buf_add(b, s, 1);
    return rc ? rc : sbx_buf_add(b, "'", 1);
}

static int env_key_ok(const char *k)
{
    if (!k || !(isalpha((unsigned char)*k) || *k == '_'))
        return 0;
    for (; *k; k++)
        if (!(isalnum((unsigned char)*k) || *k == '_'))
            return 0;
    return 1;
}

/* One stdin line: "<b64 path> <b64 content>\n". */
static int blob_line(sbx_buf *b, const char *path, const char *data, size_t n)
{
    char *p = sbx__base64((const unsigned char *)path, strlen(path));
    char *d = sbx__base64((const unsigned char *)data, n);
    int rc = -ENOMEM;
    if (p && d && sbx_buf_add(b, p, strlen(p)) == 0 && sbx_buf_add(b, " ", 1) == 0 &&
        sbx_buf_add(b, d, strlen(d)) == 0 && sbx_buf_add(b, "\n", 1) == 0)
        rc = 0;
    free(p);
    free(d);
    return rc;
}

/* The launch exec's stdin: the job script (env, workspace, the job) then
 * job->files under /workspace. NULL on -EINVAL (err says why) or no memory. */
static char *build_stdin(const sbx_job *job, const char *run_id, int *rc, char *err,
                         size_t errlen)
{
    sbx_buf script, blob;
    char path[64 + SBX_ID_MAX];
    char *out = NULL;

    sbx_buf_init(&script, SBX_MSG_MAX_BYTES);
    sbx_buf_init(&blob, FLY_SESS_STDIN_MAX);
    *rc = -ENOMEM;
    for (size_t i = 0; i < job->nenv; i++) {
        if (!env_key_ok(job->env[i].key)) {
            snprintf(err, errlen, "env name %.64s is not a shell variable name", job->env[i].key);
            *rc = -EINVAL;
            goto out;
        }
        if (sbx_buf_add(&script, "export ", 7) || sbx_buf_add(&script, job->env[i].key,
                                                                   strlen(job->env[i].key)) ||
            sbx_buf_add(&script, "=", 1) || sh_quote(&script, job->env[i].value) ||
            sbx_buf_add(&script, "\n", 1))
            goto out;
    }
    if (sbx_buf_add(&script, "cd /workspace || exit 126\n", 26))
        goto out;
    if (job->argv) {
        if (sbx_buf_add(&script, "exec", 4))
            goto out;
        for (size_t i = 0; i < job->argc; i++)
            if (sbx_buf_add(&script, " ", 1) || sh_quote(&script, job->argv[i]))
                goto out;
        if (sbx_buf_add(&script, "\n", 1))
            goto out;
    } else if (sbx_buf_add(&script, job->script, strlen(job->script)) ||
               sbx_buf_add(&script, "\n", 1)) {
        goto out;
    }
    snprintf(path, sizeof(path), FLY_SESS_DIR "/%s/job.sh", run_id);
    if (blob_line(&blob, path, sbx_buf_str(&script), script.len))
        goto out;
    for (size_t i = 0; i < job->nfiles; i++) {
        char fp[16 + SBX_ID_MAX * 8];
        if (snprintf(fp, sizeof(fp), "/workspace/%s", job->files[i].key) >= (int)sizeof(fp)) {
            snprintf(err, errlen, "file path too long");
            *rc = -EINVAL;
            goto out;
        }
        if (blob_line(&blob, fp, job->files[i].value, strlen(job->files[i].value)))
            goto out;
    }
    out = sbx_buf_take(&blob, NULL);
    if (out)
        *rc = 0;
out:
    sbx_buf_free(&script);
    sbx_buf_free(&blob);
    return out;
}

/* An exec request body: sh -c script with args, and stdin. */
static char *exec_body(const char *script, const char *const *args, size_t nargs,
                       const char *in, int timeout_s)
{
    json_object *o = json_object_new_object(), *cmd;
    const char *pre[] = {"/bin/sh", "-c", script, "sbx"};
    char *s;

    cmd = sbx__fly_str_array(pre, 4);
    for (size_t i = 0; i < nargs; i++)
        json_object_array_add(cmd, json_object_new_string(args[i]));
    json_object_object_add(o, "command", cmd);
    if (in)
        json_object_object_add(o, "stdin", json_object_new_string(in));
    json_object_object_add(o, "timeout", json_object_new_int(timeout_s));
    s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                  JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
    return s;
}

json_object *sbx__fly_idle_machine(const sbx__fly_sessions *S, const char *name, const char *image,
                                   int cpus, int mem_mb, const char *const *meta, size_t nmeta)
{
    json_object *body = json_object_new_object(), *cfg = json_object_new_object();
    json_object *guest = json_object_new_object(), *md = json_object_new_object();
    json_object *init = json_object_new_object(), *restart = json_object_new_object();
    const char *exec[] = {"/bin/sh", "-c", idle_sh};

    json_object_object_add(cfg, "image", json_object_new_string(image));
    json_object_object_add(guest, "cpu_kind", json_object_new_string(S->cpu_kind));
    json_object_object_add(guest, "cpus", json_object_new_int(cpus));
    json_object_object_add(guest, "memory_mb", json_object_new_int(mem_mb));
    json_object_object_add(cfg, "guest", guest);
    json_object_object_add(init, "exec", sbx__fly_str_array(exec, 3));
    json_object_object_add(cfg, "init", init);
    for (size_t i = 0; i + 1 < nmeta * 2; i += 2)
        json_object_object_add(md, meta[i], json_object_new_string(meta[i + 1]));
    json_object_object_add(cfg, "metadata", md);
    json_object_object_add(cfg, "auto_destroy", json_object_new_boolean(0));
    json_object_object_add(restart, "policy", json_object_new_string("no"));
    json_object_object_add(cfg, "restart", restart);
    json_object_object_add(body, "config", cfg);
    json_object_object_add(body, "name", json_object_new_string(name));
    return body;
}

static json_object *build_create(const sbx__fly_sessions *S, const sbx_run_req *req,
                                 const char *image, int cpus, int mem)
{
    char tok[24], port[16];
    const char *meta[] = {"sbx_session", req->session, "sbx_slot", req->slot,
                          "sbx_token", tok, "sbx_job", req->job->job_id,
                          "sbx_preview_port", port};
    snprintf(tok, sizeof(tok), "%lld", (long long)req->token);
    snprintf(port, sizeof(port), "%d", req->job->session_preview_port);
    return sbx__fly_idle_machine(S, req->session, image, cpus, mem, meta,
                                 req->job->session_preview_port > 0 ? 5 : 4);
}

/* ---- previews ---- */

static sbx__fly_pv *pv_find(sbx__fly_sessions *S, const char *name)
{
    for (sbx__fly_pv *v = S->pvs; v; v = v->next)
        if (strcmp(v->name, name) == 0)
            return v;
    return NULL;
}

/* The proxy's dial: a non-blocking connect to the machine's 6PN address. */
static int pv_dial(void *arg, char *err, size_t errlen)
{
    const sbx__fly_pv *v = arg;
    struct addrinfo hints, *ai = NULL;
    char port[8];
    int fd = -1, rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", v->port);
    if ((rc = getaddrinfo(v->ip, port, &hints, &ai)) != 0) {
        snprintf(err, errlen, "machine address %s: %s", v->ip, gai_strerror(rc));
        return -EINVAL;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
    } else if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        rc = -errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        snprintf(err, errlen, "connecting to [%s]:%d: %s", v->ip, v->port, strerror(-rc));
        return rc;
    }
    return fd;
}

static void on_port_recorded(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    char why[200];
    if (res->code == SBX_HTTP_OK && (res->status == 200 || res->status == 204))
        return;
    sbx__fly_api_error(res, why, sizeof(why));
    sbx_warn("fly", "session %s: recording preview port on machine %s: %s", s->name, s->id, why);
}

/* The machine remembers its dev server's port (metadata sbx_preview_port),
 * so a worker that takes the session over opens its preview again even
 * when its job names no port. Off the run's path: a run does not wait. */
static void record_port(sbx__fly_srun *s)
{
    char body[48];
    snprintf(body, sizeof(body), "{\"value\":\"%d\"}", s->preview_port);
    sbx__fly_call_start(&s->meta_call, "POST", strdup(body), SBX_FLY_CALL_TIMEOUT_MS,
                        SBX_FLY_RETRY_5XX, on_port_recorded,
                        "/apps/%s/machines/%s/metadata/sbx_preview_port", s->S->app, s->id);
}

/* Opens (again: sbx_preview_open keeps its port) the session's preview when
 * the job names a port or an earlier run did, and puts the URL in the
 * result. A preview that cannot open is logged; the run goes on. */
static void srun_preview(sbx__fly_srun *s)
{
    sbx__fly_sessions *S = s->S;
    sbx_previews *pp = S->prov ? S->prov->previews : NULL;
    sbx__fly_pv *v = pv_find(S, s->name);
    char err[200];

    if (!pp || (s->preview_port <= 0 && !v))
        return;
    if (!v) {
        if (!(v = calloc(1, sizeof(*v))))
            return;
        snprintf(v->name, sizeof(v->name), "%s", s->name);
        v->next = S->pvs;
        S->pvs = v;
    }
    if (s->preview_port > 0)
        v->port = s->preview_port;
    if (s->ip[0])
        snprintf(v->ip, sizeof(v->ip), "%s", s->ip);
    if (!v->ip[0] || v->port <= 0) {
        sbx_warn("fly", "session %s: machine %s has no private_ip; no preview", s->name, s->id);
        return;
    }
    if (sbx_preview_open(pp, s->name, pv_dial, v, s->res.preview_url, err, sizeof(err)) != 0)
        sbx_warn("fly", "session %s: preview: %s", s->name, err);
    if (s->preview_port > 0 && s->preview_port != s->machine_port)
        record_port(s);
}

static void pv_close(sbx__fly_sessions *S, const char *name)
{
    sbx__fly_pv **pp = &S->pvs;
    if (S->prov && S->prov->previews)
        sbx_preview_close(S->prov->previews, name);
    while (*pp && strcmp((*pp)->name, name) != 0)
        pp = &(*pp)->next;
    if (*pp) {
        sbx__fly_pv *v = *pp;
        *pp = v->next;
        free(v);
    }
}

/* The preview port the machine recorded; the job's own port wins. */
static void take_port(sbx__fly_srun *s, json_object *m)
{
    const char *p = sbx__fly_jstr(sbx__fly_meta(m), "sbx_preview_port");
    int n = p ? atoi(p) : 0;
    s->machine_port = n > 0 && n < 65536 ? n : 0;
    if (s->preview_port <= 0)
        s->preview_port = s->machine_port;
}

/* The machine's private_ip from a machine object, if it has one that fits. */
static void take_ip(sbx__fly_srun *s, json_object *m)
{
    const char *ip = sbx__fly_jstr(m, "private_ip");
    if (ip && strlen(ip) <= SBX_FLY_IP_MAX)
        snprintf(s->ip, sizeof(s->ip), "%s", ip);
}

/* ---- a session run ---- */

static void srun_set(sbx__fly_srun *s, srun_state st)
{
    sbx_debug("fly", "session %s run %s machine=%s %s -> %s", s->name, s->job_id,
              s->id[0] ? s->id : "-", srun_names[s->state], srun_names[st]);
    s->state = st;
}

static void srun_defer(sbx__fly_srun *s, srun_step step, uint64_t ms)
{
    s->deferred = step;
    sbx_timer_start(s->S->loop, &s->defer_t, ms);
}

static void srun_defer_fire(sbx_timer *t)
{
    sbx__fly_srun *s = t->data;
    srun_step step = s->deferred;
    s->deferred = NULL;
    if (step)
        step(s);
}

static void srun_fail(sbx__fly_srun *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void srun_fail(sbx__fly_srun *s, const char *fmt, ...)
{
    va_list ap;
    if (s->error)
        return;
    s->error = 1;
    va_start(ap, fmt);
    vsnprintf(s->res.error, sizeof(s->res.error), fmt, ap);
    va_end(ap);
}

void sbx__fly_srun_free(sbx__fly_srun *s)
{
    if (!s)
        return;
    sbx__fly_call_free(&s->call);
    sbx__fly_call_free(&s->meta_call);
    sbx_timer_stop(s->S->loop, &s->deadline_t);
    sbx_timer_stop(s->S->loop, &s->defer_t);
    json_object_put(s->create);
    free(s->stdin_blob);
    free(s);
}

/* The result's log tail must be text (it goes into JSON); the live output
 * stays raw (provider.h: cleaning is the sink's job). */
static void tail_to_result(sbx__fly_srun *s)
{
    const char *t = sbx_tail_str(&s->tail);
    s->res.log_tail_len = sbx__utf8_sanitize(t, s->tail.len, s->res.log_tail,
                                             sizeof(s->res.log_tail));
}

static void srun_finish(sbx__fly_srun *s)
{
    sbx_result *res = &s->res;

    srun_set(s, S_DONE);
    tail_to_result(s);
    if (s->aborting) {
        res->outcome = s->abort;
        if (!res->error[0])
            snprintf(res->error, sizeof(res->error), "%s",
                     s->abort == SBX_OUTCOME_TIMED_OUT ? "timed out" : "canceled");
    } else if (s->busy) {
        res->outcome = SBX_OUTCOME_BUSY;
    } else if (s->error) {
        res->outcome = s->job_fault ? SBX_OUTCOME_JOB_ERROR : SBX_OUTCOME_ERROR;
    } else {
        res->outcome = res->exit_code == 0 ? SBX_OUTCOME_SUCCEEDED : SBX_OUTCOME_FAILED;
    }
    sbx_info("fly", "session %s run %s machine=%s sandbox=%d resume_ms=%d outcome=%d exit=%d %s",
             s->name, s->job_id, s->id[0] ? s->id : "-", (int)res->sandbox, res->resume_ms,
             (int)res->outcome, res->exit_code, res->error);
    if (!s->started) {
        s->started = 1;
        s->cb(s->owner, SBX_RUN_STARTED, res);
    }
    s->cb(s->owner, SBX_RUN_FINISHED, res);
    sbx__fly_srun_free(s);
}

static void step_find(sbx__fly_srun *s);
static void step_adopt(sbx__fly_srun *s);
static void step_start(sbx__fly_srun *s);
static void step_create(sbx__fly_srun *s);
static void step_boot(sbx__fly_srun *s);
static void step_launch(sbx__fly_srun *s);
static void step_poll(sbx__fly_srun *s);
static void step_kill(sbx__fly_srun *s);

/* An abort that found nothing of the job running ends here. */
static int srun_aborted(sbx__fly_srun *s)
{
    if (!s->aborting)
        return 0;
    srun_finish(s);
    return 1;
}

/* A poll's reply: "<rc or ->\n<b64 stdout>\n<b64 stderr>\n". Returns 1 when the
 * job ended and its output is all read, 0 when it goes on, -1 on a bad reply. */
static int take_poll(sbx__fly_srun *s, const char *text)
{
    const char *l1 = strchr(text, '\n'), *l2, *l3;
    unsigned char *buf;
    long n1, n2;
    int done;

    if (!l1 || !(l2 = strchr(l1 + 1, '\n')) || !(l3 = strchr(l2 + 1, '\n')))
        return -1;
    buf = malloc((size_t)(l3 - l1) * 3 / 4 + 4);
    if (!buf)
        return -1;
    n1 = b64_decode(l1 + 1, (size_t)(l2 - l1 - 1), buf);
    if (n1 < 0) {
        free(buf);
        return -1;
    }
    if (n1 > 0) {
        sbx_run_output(s->out, s->out_arg, SBX_STREAM_STDOUT, (const char *)buf, (size_t)n1);
        sbx_tail_add(&s->tail, buf, (size_t)n1);
        s->out_off += (uint64_t)n1;
    }
    n2 = b64_decode(l2 + 1, (size_t)(l3 - l2 - 1), buf);
    if (n2 < 0) {
        free(buf);
        return -1;
    }
    if (n2 > 0) {
        sbx_run_output(s->out, s->out_arg, SBX_STREAM_STDERR, (const char *)buf, (size_t)n2);
        sbx_tail_add(&s->tail, buf, (size_t)n2);
        s->err_off += (uint64_t)n2;
    }
    free(buf);
    s->full = n1 == FLY_SESS_CHUNK || n2 == FLY_SESS_CHUNK;
    done = text[0] != '-' && !s->full;
    if (done)
        s->res.exit_code = atoi(text);
    return done;
}

static void on_poll(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    json_object *o = NULL, *ec;
    const char *text;
    char why[200];
    int r;

    if (s->aborting) {
        step_kill(s);
        return;
    }
    /* exit_code may be left out when 0 (Go's omitempty, as on machine events) */
    if (res->code == SBX_HTTP_OK && res->status == 200 && (o = json_tokener_parse(res->body)) &&
        (!(ec = sbx__fly_jobj(o, "exit_code")) || json_object_get_int(ec) == 0) &&
        (text = sbx__fly_jstr(o, "stdout")) && (r = take_poll(s, text)) >= 0) {
        json_object_put(o);
        s->poll_errors = 0;
        if (s->aborting)
            return;               /* canceled from the output sink: the kill is on its way */
        if (r == 1) {
            srun_finish(s);
            return;
        }
        /* a full chunk: more is waiting, ask again without the pause */
        srun_defer(s, step_poll, s->full ? 0 : (uint64_t)s->S->poll_ms);
        return;
    }
    json_object_put(o);
    sbx__fly_api_error(res, why, sizeof(why));
    if (res->code == SBX_HTTP_OK && (res->status == 404 || res->status == 412)) {
        /* the machine is gone, or no longer started (suspended, stopped or
         * restarted under the run): the job and its output went with it */
        srun_fail(s, "session machine %s stopped during the run (%s)", s->id, why);
        srun_finish(s);
        return;
    }
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        /* the poll ran but found no run directory: the root fs is new */
        srun_fail(s, "session machine %s lost the run (restarted?)", s->id);
        srun_finish(s);
        return;
    }
    if (++s->poll_errors >= FLY_SESS_POLL_ERRORS) {
        srun_fail(s, "polling the job on machine %s: %s", s->id, why);
        step_kill(s);
        return;
    }
    srun_defer(s, step_poll, (uint64_t)s->S->poll_ms);
}

static void step_poll(sbx__fly_srun *s)
{
    char o1[24], o2[24], chunk[16];
    const char *args[4] = {s->run_id, o1, o2, chunk};
    char *body;

    srun_set(s, S_POLL);
    snprintf(o1, sizeof(o1), "%llu", (unsigned long long)s->out_off);
    snprintf(o2, sizeof(o2), "%llu", (unsigned long long)s->err_off);
    snprintf(chunk, sizeof(chunk), "%d", FLY_SESS_CHUNK);
    body = exec_body(poll_sh, args, 4, NULL, FLY_SESS_EXEC_S);
    sbx__fly_call_start(&s->call, "POST", body, FLY_SESS_EXEC_S * 1000u + FLY_SESS_WAIT_SLACK_MS,
                        SBX_FLY_RETRY_5XX, on_poll, "/apps/%s/machines/%s/exec", s->S->app,
                        s->id);
}

static void on_kill(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    if (res->code != SBX_HTTP_OK || res->status != 200) {
        char why[200];
        sbx__fly_api_error(res, why, sizeof(why));
        /* The next job's launch kills an unfinished job's group before it
         * starts, so nothing runs beside it even if this kill was lost. */
        sbx_warn("fly", "session %s: killing run %s on machine %s: %s", s->name, s->job_id,
                 s->id, why);
    }
    srun_finish(s);
}

static void step_kill(sbx__fly_srun *s)
{
    char grace[16];
    const char *args[2] = {s->run_id, grace};
    int t = s->S->stop_grace_s + 5;
    char *body;

    srun_set(s, S_KILL);
    snprintf(grace, sizeof(grace), "%d", s->S->stop_grace_s);
    body = exec_body(kill_sh, args, 2, NULL, t > 60 ? 60 : t);
    sbx__fly_call_start(&s->call, "POST", body, (uint32_t)t * 1000u + FLY_SESS_WAIT_SLACK_MS,
                        SBX_FLY_RETRY_5XX, on_kill, "/apps/%s/machines/%s/exec", s->S->app,
                        s->id);
}

static void on_launch(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    json_object *o = NULL, *ec;
    char why[200];
    int code = -1;

    if (res->code == SBX_HTTP_OK && res->status == 200 && (o = json_tokener_parse(res->body)))
        code = (ec = sbx__fly_jobj(o, "exit_code")) ? json_object_get_int(ec) : 0;
    json_object_put(o);
    if (code == 0) {
        s->launched = 1;
        if (s->aborting) {
            step_kill(s);
            return;
        }
        s->started = 1;
        srun_preview(s);
        s->cb(s->owner, SBX_RUN_STARTED, &s->res);
        if (s->aborting)          /* canceled from the callback */
            return;
        step_poll(s);
        return;
    }
    sbx__fly_api_error(res, why, sizeof(why));
    if (code == 124) {
        s->busy = 1;
        snprintf(s->res.error, sizeof(s->res.error),
                 "session machine %s has seen a newer lease than token %lld", s->id,
                 (long long)s->token);
    } else if (code > 0)
        srun_fail(s, "starting the job in session machine %s: exit %d", s->id, code);
    else
        srun_fail(s, "starting the job in session machine %s: %s", s->id, why);
    srun_finish(s);
}

static void step_launch(sbx__fly_srun *s)
{
    char tok[24];
    const char *args[2] = {s->run_id, tok};
    char *body;

    if (srun_aborted(s))
        return;
    srun_set(s, S_LAUNCH);
    snprintf(tok, sizeof(tok), "%lld", (long long)s->token);
    body = exec_body(launch_sh, args, 2, s->stdin_blob, FLY_SESS_EXEC_S);
    sbx__fly_call_start(&s->call, "POST", body, FLY_SESS_EXEC_S * 1000u + FLY_SESS_WAIT_SLACK_MS,
                        0, on_launch, "/apps/%s/machines/%s/exec", s->S->app, s->id);
}

static void on_boot(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    char why[200];

    if (srun_aborted(s))
        return;
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        if (s->res.sandbox == SBX_SANDBOX_RESUMED || s->res.sandbox == SBX_SANDBOX_WARM) {
            s->res.resume_ms = (int)(sbx_now_ms() - s->resume_t0);
            sbx_info("fly", "session %s: machine %s resumed in %d ms", s->name, s->id,
                     s->res.resume_ms);
        }
        step_launch(s);
        return;
    }
    if (sbx_now_ms() < s->boot_deadline_ms &&
        (res->code != SBX_HTTP_OK || res->status == 408 || res->status == 404)) {
        step_boot(s);             /* 404: a machine just created (flyctl PR #4618) */
        return;
    }
    sbx__fly_api_error(res, why, sizeof(why));
    srun_fail(s, "session machine %s did not start: %s", s->id, why);
    srun_finish(s);
}

static void step_boot(sbx__fly_srun *s)
{
    srun_set(s, S_BOOT);
    sbx__fly_call_start(&s->call, "GET", NULL, FLY_SESS_WAIT_S * 1000u + FLY_SESS_WAIT_SLACK_MS,
                        SBX_FLY_RETRY_5XX, on_boot,
                        "/apps/%s/machines/%s/wait?state=started&timeout=%d", s->S->app, s->id,
                        FLY_SESS_WAIT_S);
}

static void on_start(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    char why[200];

    if (srun_aborted(s))
        return;
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        step_boot(s);
        return;
    }
    if (res->code == SBX_HTTP_OK && (res->status == 412 || res->status == 404) &&
        sbx_now_ms() < s->boot_deadline_ms) {
        /* it moved on between the list and the start: look again */
        srun_defer(s, step_find, (uint64_t)s->S->settle_ms);
        return;
    }
    sbx__fly_api_error(res, why, sizeof(why));
    srun_fail(s, "starting session machine %s: %s", s->id, why);
    srun_finish(s);
}

static void step_start(sbx__fly_srun *s)
{
    srun_set(s, S_START);
    s->resume_t0 = sbx_now_ms();
    sbx__fly_call_start(&s->call, "POST", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                        on_start, "/apps/%s/machines/%s/start", s->S->app, s->id);
}

static void on_create(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    json_object *m = NULL;
    const char *id;
    char why[200];

    if (res->code == SBX_HTTP_OK && res->status == 200 && (m = json_tokener_parse(res->body)) &&
        (id = sbx__fly_jstr(m, "id")) && strlen(id) <= SBX_FLY_ID_MAX) {
        snprintf(s->id, sizeof(s->id), "%s", id);
        snprintf(s->res.instance, sizeof(s->res.instance), "%s", id);
        s->res.sandbox = SBX_SANDBOX_NEW;
        s->machine_port = s->preview_port;
        take_ip(s, m);
        json_object_put(m);
        sbx_info("fly", "session %s: created machine %s", s->name, s->id);
        if (srun_aborted(s))
            return;
        step_boot(s);
        return;
    }
    json_object_put(m);
    sbx__fly_api_error(res, why, sizeof(why));
    if (res->code == SBX_HTTP_EABORTED)
        return;
    if (res->code != SBX_HTTP_OK || res->status == 408 || res->status >= 500 ||
        (res->status == 409 && strstr(res->body ? res->body : "", "already exists"))) {
        /* another worker made it, or maybe we did: the list will say, once
         * it caught up (it is eventually consistent). A 409 is a machine
         * that was there already (the list had not caught up with it); an
         * unclear reply may have made a fresh one, which is NEW. */
        if (res->code != SBX_HTTP_OK || res->status != 409)
            s->res.sandbox = SBX_SANDBOX_NEW;
        sbx_info("fly", "session %s: create answered %s; looking again", s->name, why);
        if (s->looks >= FLY_SESS_LOOKS) {
            srun_fail(s, "session machine: create answered %s and no machine shows", why);
            srun_finish(s);
            return;
        }
        srun_defer(s, step_find, (uint64_t)s->S->settle_ms);
        return;
    }
    if (res->status == 400 || res->status == 422)
        s->job_fault = 1;
    srun_fail(s, "creating session machine: %s", why);
    srun_finish(s);
}

static void step_create(sbx__fly_srun *s)
{
    const char *b = json_object_to_json_string_ext(s->create, JSON_C_TO_STRING_PLAIN |
                                                                  JSON_C_TO_STRING_NOSLASHESCAPE);
    srun_set(s, S_CREATE);
    sbx__fly_call_start(&s->call, "POST", b ? strdup(b) : NULL, SBX_FLY_CALL_TIMEOUT_MS, 0,
                        on_create, "/apps/%s/machines", s->S->app);
}

static void on_adopt(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    char why[200];

    if (res->code == SBX_HTTP_OK && (res->status == 200 || res->status == 204)) {
        sbx__fly_warm_done(s->S->warm, s->id, 1);
        sbx_info("fly", "session %s: took warm machine %s", s->name, s->id);
        if (srun_aborted(s))
            return;
        s->res.sandbox = SBX_SANDBOX_WARM;
        snprintf(s->res.instance, sizeof(s->res.instance), "%s", s->id);
        step_start(s);
        return;
    }
    if (res->code == SBX_HTTP_EABORTED)
        return;
    sbx__fly_api_error(res, why, sizeof(why));
    sbx_warn("fly", "session %s: warm machine %s not taken (%s); creating one", s->name, s->id,
             why);
    sbx__fly_warm_done(s->S->warm, s->id, 0);
    s->id[0] = s->ip[0] = '\0';
    if (srun_aborted(s))
        return;
    step_create(s);
}

/* The warm machine becomes the session's: its metadata is what every
 * lookup of the session goes by (its name cannot change). */
static void step_adopt(sbx__fly_srun *s)
{
    json_object *o = json_object_new_object();
    const char *b;

    srun_set(s, S_ADOPT);
    json_object_object_add(o, "value", json_object_new_string(s->name));
    b = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    sbx__fly_call_start(&s->call, "POST", b ? strdup(b) : NULL, SBX_FLY_CALL_TIMEOUT_MS,
                        SBX_FLY_RETRY_5XX, on_adopt, "/apps/%s/machines/%s/metadata/sbx_session",
                        s->S->app, s->id);
    json_object_put(o);
}

/* The live machine of a list, or NULL; *busy when one is on its way out. */
static json_object *pick(json_object *list, int *busy)
{
    json_object *found = NULL;
    *busy = 0;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *m = json_object_array_get_idx(list, i);
        const char *st = sbx__fly_jstr(m, "state");
        if (!st || strcmp(st, "destroyed") == 0)
            continue;
        if (strcmp(st, "destroying") == 0) {
            *busy = 1;
            continue;
        }
        if (!found)
            found = m;
    }
    return found;
}

static void on_find(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_srun *s = c->owner;
    json_object *list = NULL, *m;
    const char *st, *id;
    char why[200], state[32];
    int busy;

    if (srun_aborted(s))
        return;
    if (res->code != SBX_HTTP_OK || res->status != 200 ||
        !(list = json_tokener_parse(res->body)) || !json_object_is_type(list, json_type_array)) {
        sbx__fly_api_error(res, why, sizeof(why));
        json_object_put(list);
        srun_fail(s, "listing the session's machine: %s", why);
        srun_finish(s);
        return;
    }
    m = pick(list, &busy);
    snprintf(state, sizeof(state), "%s",
             m && sbx__fly_jstr(m, "state") ? sbx__fly_jstr(m, "state") : "");
    st = state;                   /* the list is freed below; the state is needed after */
    id = m ? sbx__fly_jstr(m, "id") : NULL;
    if (!m || !id || strlen(id) > SBX_FLY_ID_MAX) {
        json_object_put(list);
        if (busy && sbx_now_ms() < s->boot_deadline_ms) {
            srun_defer(s, step_find, (uint64_t)s->S->settle_ms);
            return;
        }
        if (s->S->warm && s->res.sandbox != SBX_SANDBOX_NEW &&
            sbx__fly_warm_take(s->S->warm, s->image, s->cpus, s->mem_mb, s->id, s->ip)) {
            step_adopt(s);
            return;
        }
        step_create(s);
        return;
    }
    take_ip(s, m);
    take_port(s, m);
    snprintf(s->id, sizeof(s->id), "%s", id);
    snprintf(s->res.instance, sizeof(s->res.instance), "%s", id);
    if (strcmp(st, "started") == 0) {
        s->res.sandbox = s->res.sandbox == SBX_SANDBOX_NEW ? SBX_SANDBOX_NEW : SBX_SANDBOX_REUSED;
        json_object_put(list);
        step_launch(s);
        return;
    }
    if (strcmp(st, "suspended") == 0) {
        s->res.sandbox = SBX_SANDBOX_RESUMED;
        json_object_put(list);
        step_start(s);
        return;
    }
    /* stopped, created or failed: the next start boots a fresh root fs, so
     * the workspace is gone; starting: on its way there */
    s->res.sandbox = SBX_SANDBOX_NEW;
    if (strcmp(st, "stopped") == 0 || strcmp(st, "created") == 0 || strcmp(st, "failed") == 0) {
        json_object_put(list);
        step_start(s);
        return;
    }
    if (strcmp(st, "starting") == 0) {
        json_object_put(list);
        step_boot(s);
        return;
    }
    json_object_put(list);
    if (sbx_now_ms() >= s->boot_deadline_ms) {
        srun_fail(s, "session machine %s stuck in %s", s->id, st);
        srun_finish(s);
        return;
    }
    srun_defer(s, step_find, (uint64_t)s->S->settle_ms);   /* suspending, stopping, ... */
}

static void step_find(sbx__fly_srun *s)
{
    srun_set(s, S_FIND);
    s->looks++;
    sbx__fly_call_start(&s->call, "GET", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                        on_find, "/apps/%s/machines?metadata.sbx_session=%s", s->S->app,
                        s->name);
}

static void srun_deadline(sbx_timer *t)
{
    sbx__fly_srun *s = t->data;
    if (s->aborting)
        return;
    snprintf(s->res.error, sizeof(s->res.error), "timed out after %d s", s->timeout_s);
    sbx__fly_srun_abort(s, SBX_OUTCOME_TIMED_OUT);
}

void sbx__fly_srun_abort(sbx__fly_srun *s, sbx_outcome why)
{
    if (s->aborting || s->state == S_DONE)
        return;
    s->aborting = 1;
    s->abort = why;
    switch (s->state) {
    case S_POLL:
        sbx__fly_call_cancel(&s->call);
        sbx_timer_stop(s->S->loop, &s->defer_t);
        s->deferred = NULL;
        step_kill(s);
        return;
    case S_LAUNCH:
    case S_KILL:
        return;                   /* the launch's reply says whether there is a job to kill */
    case S_ADOPT:
        /* the warm machine may or may not be the session's yet: the pool
         * destroys it (the session's next run then reports NEW) */
        sbx__fly_warm_done(s->S->warm, s->id, 0);
        /* fall through */
    default:
        /* nothing of the job runs yet; a create or start in flight is the
         * session's, harmless to let finish */
        sbx__fly_call_cancel(&s->call);
        sbx_timer_stop(s->S->loop, &s->defer_t);
        srun_defer(s, srun_finish, 0);
        return;
    }
}

int sbx__fly_srun_start(sbx__fly_sessions *S, const sbx_run_req *req, const char *image,
                        int cpus, int mem_mb, sbx__fly_srun_cb cb, void *owner,
                        sbx__fly_srun **out, char *err, size_t errlen)
{
    const sbx_job *job = req->job;
    sbx__fly_srun *s;
    int rc;

    if (!sbx_session_name_ok(req->session)) {
        snprintf(err, errlen, "session name %.40s is not name-safe", req->session);
        return -EINVAL;
    }
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->S = S;
    s->cb = cb;
    s->owner = owner;
    s->out = req->output;
    s->out_arg = req->output_arg;
    snprintf(s->name, sizeof(s->name), "%s", req->session);
    snprintf(s->job_id, sizeof(s->job_id), "%s", job->job_id);
    s->token = req->token;
    s->preview_port = job->session_preview_port;
    snprintf(s->image, sizeof(s->image), "%s", image);
    s->cpus = cpus;
    s->mem_mb = mem_mb;
    snprintf(s->run_id, sizeof(s->run_id), "%016llx", (unsigned long long)sbx__fly_api_rand(S->api));
    s->res.exit_code = -1;
    s->res.sandbox = SBX_SANDBOX_REUSED;
    sbx_tail_init(&s->tail, s->tail_mem, SBX_LOG_TAIL_MAX);
    s->timeout_s = job->timeout_s > 0 ? job->timeout_s : SBX_DEFAULT_TIMEOUT_S;
    s->stdin_blob = build_stdin(job, s->run_id, &rc, err, errlen);
    s->create = build_create(S, req, image, cpus, mem_mb);
    if (!s->stdin_blob || !s->create) {
        json_object_put(s->create);
        free(s->stdin_blob);
        free(s);
        if (rc == 0)
            rc = -ENOMEM;
        return rc;
    }
    sbx__fly_call_init(&s->call, S->api, s);
    sbx__fly_call_init(&s->meta_call, S->api, s);
    sbx_timer_init(&s->deadline_t, srun_deadline, s);
    sbx_timer_init(&s->defer_t, srun_defer_fire, s);
    s->boot_deadline_ms = sbx_now_ms() + (uint64_t)S->boot_timeout_s * 1000u;
    sbx_timer_start(S->loop, &s->deadline_t, (uint64_t)s->timeout_s * 1000u);
    sbx_info("fly", "session %s run %s slot=%s attempt=%d", s->name, s->job_id, req->slot,
             req->attempt);
    step_find(s);
    *out = s;
    return 0;
}

/* ---- PAUSE and DESTROY ---- */

static void sop_end(sbx__fly_sop *o, int rc, const char *why)
{
    sbx__fly_sessions *S = o->S;
    sbx__fly_sop **pp = &S->ops;
    sbx_session_cb cb = o->cb;
    void *arg = o->arg;
    char msg[200];

    snprintf(msg, sizeof(msg), "%s", why);
    if (o->op == SBX_SESSION_DESTROY && rc == 0)
        pv_close(S, o->name);
    while (*pp != o)
        pp = &(*pp)->next;
    *pp = o->next;
    sbx__fly_call_free(&o->call);
    sbx_timer_stop(S->loop, &o->defer_t);
    sbx_info("fly", "session %s: %s rc=%d %s", o->name,
             o->op == SBX_SESSION_PAUSE ? "pause" : "destroy", rc, msg);
    free(o->ids);
    free(o);
    cb(arg, rc, msg);
}

static void sop_delete_next(sbx__fly_sop *o);

static void on_sop_delete(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_sop *o = c->owner;
    if (!(res->code == SBX_HTTP_OK && (res->status == 200 || res->status == 404))) {
        sbx__fly_api_error(res, o->why, sizeof(o->why));
        o->rc = -EIO;
    }
    o->i++;
    sop_delete_next(o);
}

static void sop_delete_next(sbx__fly_sop *o)
{
    if (o->i >= o->n) {
        sop_end(o, o->rc, o->why);
        return;
    }
    sbx__fly_call_start(&o->call, "DELETE", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                        on_sop_delete, "/apps/%s/machines/%s?force=true", o->S->app,
                        o->ids[o->i]);
}

static void on_sop_suspended(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_sop *o = c->owner;
    char why[200];
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        sop_end(o, 0, "suspended");
        return;
    }
    sbx__fly_api_error(res, why, sizeof(why));
    sop_end(o, -EAGAIN, why);
}

static void on_sop_suspend(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_sop *o = c->owner;
    char why[200];

    if (res->code == SBX_HTTP_OK && res->status == 200) {
        sbx__fly_call_start(&o->call, "GET", NULL, 60000u + FLY_SESS_WAIT_SLACK_MS,
                            SBX_FLY_RETRY_5XX, on_sop_suspended,
                            "/apps/%s/machines/%s/wait?state=suspended&timeout=60", o->S->app,
                            o->ids[0]);
        return;
    }
    sbx__fly_api_error(res, why, sizeof(why));
    if (res->code == SBX_HTTP_OK && res->status == 404) {
        sop_end(o, 0, "no machine");
        return;
    }
    sop_end(o, res->code == SBX_HTTP_OK && res->status == 412 && strstr(why, "cannot be suspended")
                   ? -ENOTSUP : -EAGAIN, why);
}

/* Why this machine cannot be suspended (suspend-resume, "Requirements"), or
 * NULL. */
static const char *no_suspend(json_object *m)
{
    json_object *cfg = sbx__fly_jobj(m, "config");
    json_object *mem = sbx__fly_jobj(sbx__fly_jobj(cfg, "guest"), "memory_mb");
    json_object *swap = sbx__fly_jobj(sbx__fly_jobj(cfg, "init"), "swap_size_mb");
    if (mem && json_object_get_int(mem) > FLY_SESS_MEM_SUSPEND_MAX)
        return "Fly suspends machines of at most 2048 MB; a stop would lose the workspace";
    if (swap && json_object_get_int(swap) > 0)
        return "Fly does not suspend a machine with swap";
    if (sbx__fly_jobj(cfg, "schedule"))
        return "Fly does not suspend a scheduled machine";
    return NULL;
}

static void on_sop_list(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_sop *o = c->owner;
    json_object *list = NULL, *m;
    const char *st, *why;
    char state[32];
    size_t n;
    int busy;

    if (res->code != SBX_HTTP_OK || res->status != 200 ||
        !(list = json_tokener_parse(res->body)) || !json_object_is_type(list, json_type_array)) {
        char msg[200];
        sbx__fly_api_error(res, msg, sizeof(msg));
        json_object_put(list);
        sop_end(o, -EIO, msg);
        return;
    }
    n = json_object_array_length(list);
    m = pick(list, &busy);
    if ((!m || busy) && o->looks < FLY_SESS_OP_LOOKS) {
        /* The list is eventually consistent (flyctl PR #4618): a machine
         * created moments ago may not show yet, and ending a session on a
         * list that missed it would leave the machine running forever. */
        json_object_put(list);
        sbx_timer_start(o->S->loop, &o->defer_t, (uint64_t)o->S->settle_ms);
        return;
    }
    free(o->ids);
    o->ids = calloc(n ? n : 1, sizeof(*o->ids));
    if (!o->ids) {
        json_object_put(list);
        sop_end(o, -ENOMEM, "out of memory");
        return;
    }
    if (o->op == SBX_SESSION_DESTROY) {
        for (size_t i = 0; i < n; i++) {
            json_object *x = json_object_array_get_idx(list, i);
            const char *id = sbx__fly_jstr(x, "id"), *xs = sbx__fly_jstr(x, "state");
            if (id && strlen(id) <= SBX_FLY_ID_MAX && (!xs || strcmp(xs, "destroyed") != 0))
                snprintf(o->ids[o->n++], sizeof(o->ids[0]), "%s", id);
        }
        json_object_put(list);
        sop_delete_next(o);
        return;
    }
    snprintf(state, sizeof(state), "%s",
             m && sbx__fly_jstr(m, "state") ? sbx__fly_jstr(m, "state") : "");
    st = state;                   /* the list is freed below; the state is needed after */
    if (!m || !st[0] || !sbx__fly_jstr(m, "id") ||
        strlen(sbx__fly_jstr(m, "id")) > SBX_FLY_ID_MAX) {
        json_object_put(list);
        sop_end(o, 0, "no machine");
        return;
    }
    snprintf(o->ids[0], sizeof(o->ids[0]), "%s", sbx__fly_jstr(m, "id"));
    o->n = 1;
    if (strcmp(st, "started") != 0) {
        json_object_put(list);
        /* suspended already, or stopped (costs what a suspended one does) */
        if (strcmp(st, "suspended") == 0 || strcmp(st, "stopped") == 0)
            sop_end(o, 0, st);
        else
            sop_end(o, -EAGAIN, st);
        return;
    }
    if ((why = no_suspend(m)) != NULL) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", why);
        json_object_put(list);
        sop_end(o, -ENOTSUP, msg);
        return;
    }
    json_object_put(list);
    sbx__fly_call_start(&o->call, "POST", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                        on_sop_suspend, "/apps/%s/machines/%s/suspend", o->S->app, o->ids[0]);
}

static void sop_list(sbx_timer *t)
{
    sbx__fly_sop *o = t->data;
    o->looks++;
    sbx__fly_call_start(&o->call, "GET", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                        on_sop_list, "/apps/%s/machines?metadata.sbx_session=%s", o->S->app,
                        o->name);
}

int sbx__fly_sop_start(sbx__fly_sessions *S, sbx_session_op op, const char *session,
                       sbx_session_cb cb, void *arg)
{
    sbx__fly_sop *o;

    if (!sbx_session_name_ok(session) || !cb)
        return -EINVAL;
    o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->S = S;
    o->op = op;
    o->cb = cb;
    o->arg = arg;
    snprintf(o->name, sizeof(o->name), "%s", session);
    sbx__fly_call_init(&o->call, S->api, o);
    /* from the loop, never from inside this call (provider.h) */
    sbx_timer_init(&o->defer_t, sop_list, o);
    sbx_timer_start(S->loop, &o->defer_t, 0);
    o->next = S->ops;
    S->ops = o;
    return 0;
}

void sbx__fly_sessions_close(sbx__fly_sessions *S)
{
    while (S->pvs) {
        sbx__fly_pv *v = S->pvs;
        S->pvs = v->next;
        free(v);
    }
    while (S->ops) {
        sbx__fly_sop *o = S->ops;
        S->ops = o->next;
        sbx__fly_call_free(&o->call);
        if (S->loop)
            sbx_timer_stop(S->loop, &o->defer_t);
        free(o->ids);
        free(o);
    }
}
