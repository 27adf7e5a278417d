/* fuzz_agent.c — libFuzzer target for the VM agent's HTTP API: the real
 * server (agent/server.c on libmicrohttpd) and the real runs (agent/runs.c,
 * bubblewrap builds), hosted in this process on one sbx_loop, as
 * agent/main.c wires them (without Redis: the registry is not on the
 * request path).
 *
 * An input is up to SEG_MAX raw HTTP byte streams separated by the line
 * SEP; each goes out on its own TCP connection to the server on 127.0.0.1
 * once the previous one is answered (see QUIET_MS). Connections stay open
 * until the input ends (or the server's header and body deadlines,
 * HEADER_MS, close them), so a long poll or a followed log is still
 * listening when a later connection cancels its run. The server's question
 * about the newest issued token ({sbx}:fence, which Redis answers in the
 * agent) is answered on the next loop turn with the slot's newest token +
 * FENCE_AHEAD: tokens above that are refused as never issued. Before a stream is
 * sent, these placeholders are replaced, because the fuzzer cannot know
 * them:
 *   @RUN@  the last "run_id" any answer of this input named, else @FIX@
 *   @FIX@  the fixture: a finished run with a log and a preview
 *   @TOK@  the slot's newest fencing token + 1 (a wake that is not stale)
 *   @CUR@  the slot's newest token (a retried wake, a cancel)
 *          (both TOK_WIDTH characters wide, padded with spaces, so that
 *          a body keeps the length its Content-Length header says)
 *   @BIG@  BIG_BYTES spaces (a body over the server's limit)
 *   @WAIT@ nothing; once the stream is answered, the builds get WAIT_MS
 *          to end by themselves (a timeout, a long poll or a followed log
 *          that sees the end); once per input
 *
 * Checked for every input, beyond crashes, leaks and UB (ASan, UBSan, LSan):
 *  - a connection whose bytes do not contain the service key gets nothing
 *    from the handlers: every answer is 401, /livez's 200 "ok" or 405 (or
 *    libmicrohttpd's own 400, 413, 414, 431, 500, 501 or 505 for what it
 *    could not parse, never JSON) and none names a run; when it is the input's first stream (the
 *    agent is quiet then, so nothing else can act), the slot's token does
 *    not move and no build starts;
 *  - a wake whose "slot" is not exactly the agent's slot id (compared as
 *    the whole JSON string, with its length) never gets a run;
 *  - no answer ever contains the secret file kept beside the previews
 *    (a preview path that leaves its root, by "..", an absolute path or a
 *    symlink the build made);
 *  - afterwards every build ends (by itself, else canceled), every session
 *    sandbox a wake made goes when destroyed as the worker's sweeper would
 *    (DESTROY with the slot's newest token), every server connection is
 *    closed once its client is (the process holds no more descriptors than
 *    before the input), and /health with the key answers 200 "idle" within
 *    HEALTH_MS.
 * Between inputs the fixture is rebuilt when a run replaced its preview or
 * pushed it out of the history, and the whole agent is rebuilt when the
 * newest token passes TOKEN_RESET (a fuzzed huge token would make every
 * later @TOK@ stale), so each input starts from a similar state.
 *
 * Builds run as uid UID_BASE in WORK_DIR: run one instance at a time.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ctype.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "ref.h"
#include "runs.h"
#include "sandbox.h"
#include "sbx.h"
#include "server.h"

#define KEY "fuzz-agent-key-0123456789abcdef"
#define AGENT_ID "fuzz-agent"
/* No test or CI job builds as these uids (e2e: 61000-62999, unit: 200000+). */
#define UID_BASE 64000
#define WORK_DIR "/tmp/sbx-fuzz-agent-64000"
#define SEP "\n--next--\n"
/* Streams per input: enough for wake, watch, cancel, look. */
#define SEG_MAX 4
/* A stream is answered when the server closes it, when every request got
 * a status line, after QUIET_TURNS loop turns of QUIET_MS with nothing to
 * do, or at the latest when nothing moved for IDLE_MS or after SEG_MS. */
#define QUIET_MS 2
#define QUIET_TURNS 3
#define IDLE_MS 25
#define SEG_MS 500
/* Builds of an input get this long to end by themselves, then are
 * canceled and must be gone within KILL_GRACE_MS + END_MS. */
#define SETTLE_MS 100
#define WAIT_MS 1500
#define KILL_GRACE_MS 100
#define END_MS 5000
#define HEALTH_MS 2000
#define FD_MS 1000
#define FIXTURE_MS 20000
/* Answer bytes kept per connection for the checks; the rest is counted. */
#define RESP_KEEP (256 * 1024)
/* Over the server's body limit (a job message plus 64 KiB). */
#define BIG_BYTES (2 * SBX_MSG_MAX_BYTES)
#define TOKEN_RESET ((int64_t)1 << 40)
/* How far above the slot's newest token the fence oracle says tokens were
 * issued: @TOK@ is within, a fuzzed huge token is not. */
#define FENCE_AHEAD ((int64_t)1 << 20)
/* The server's connection settings: small caps, so that an input's few
 * connections can reach them, and deadlines above SEG_MS, so that a stream
 * that is being answered is not cut. */
#define CONN_MAX 16
#define PENDING_MAX 8
#define PENDING_PER_IP 3
#define HEADER_MS 2000
#define BODY_MS 2000
/* @TOK@ and @CUR@: a token right-aligned in spaces (JSON allows them). */
#define TOK_WIDTH 20

typedef struct conn {
    int fd;
    sbx_io io;
    char *out;                 /* the stream after substitution */
    size_t out_len, sent;
    char *resp;
    size_t resp_len;
    int closed;                /* the server closed (or reset) it */
    int keyless;
    int wait;                  /* @WAIT@ */
    size_t nreq;               /* request lines sent (count_versions) */
    uint64_t last_ms;          /* last progress either way */
} conn;

static struct {
    sbx_loop *loop;
    sbx_runs *runs;
    sbx_server *server;
    int port;
    char fixture[SBX_RUN_ID_MAX];
    char cur_run[SBX_RUN_ID_MAX];
    char secret[65];
    int base_fds;
    int waited;                /* this input used its @WAIT@ */
    int verbose;
    sbx_timer fence_t;         /* answers the server's fence question */
} g;

/* ---- the agent ---- */

static void on_runs_event(void *arg, const char *run_id, sbx_runs_event ev)
{
    (void)arg;
    if (g.server)
        sbx_server_notify(g.server, run_id, ev);
}

static int64_t newest_token(void);

static void on_fence_timer(sbx_timer *t)
{
    (void)t;
    if (g.server)
        sbx_server_fence(g.server, newest_token() + FENCE_AHEAD);
}

/* As agent/main.c asks Redis: the answer comes from the loop, later. */
static int fence_ask(void *arg)
{
    (void)arg;
    sbx_timer_start(g.loop, &g.fence_t, 0);
    return 0;
}

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* The slot's newest token, from the file runs.c keeps it in. */
static int64_t newest_token(void)
{
    char line[256];
    int64_t t = 0;
    FILE *f = fopen(WORK_DIR "/tokens", "r");

    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, AGENT_ID " ", sizeof(AGENT_ID)) == 0)
            t = strtoll(line + sizeof(AGENT_ID), NULL, 10);
    fclose(f);
    return t;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int n = 0;

    if (!d)
        return -1;
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own */
}

/* For a failed descriptor check: what is open. */
static void list_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    char path[300], target[256];
    ssize_t n;

    if (!d)
        return;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
        n = readlink(path, target, sizeof(target) - 1);
        target[n > 0 ? n : 0] = '\0';
        fprintf(stderr, "  fd %s -> %s\n", de->d_name, target);
    }
    closedir(d);
}

static void wait_until(int (*done)(void), uint64_t ms)
{
    uint64_t until = sbx_now_ms() + ms;
    while (!done() && sbx_now_ms() < until)
        sbx_loop_once(g.loop, 5);
}

static int runs_idle(void) { return sbx_runs_active(g.runs) == 0; }

/* Runs the loop until QUIET_TURNS turns in a row had nothing to do (a turn
 * that slept its whole QUIET_MS and not much longer), or max_ms pass. */
static void loop_until_quiet(uint64_t max_ms)
{
    uint64_t until = sbx_now_ms() + max_ms;
    int quiet = 0;

    while (quiet < QUIET_TURNS && sbx_now_ms() < until) {
        uint64_t t0 = sbx_now_us();
        sbx_loop_once(g.loop, QUIET_MS);
        t0 = sbx_now_us() - t0;
        quiet = t0 >= QUIET_MS * 1000 && t0 < QUIET_MS * 1000 + 1000 ? quiet + 1 : 0;
    }
}

static int fixture_over(void)
{
    sbx_run_view v;
    return sbx_runs_view(g.runs, g.fixture, &v) != 0 || v.state != SBX_RS_RUNNING;
}

/* A finished run with a log of a few non-UTF-8 bytes and a preview holding
 * files, a subdirectory, a FIFO and symlinks that point out of it. */
static void make_fixture(void)
{
    /* C "\\\\377" is JSON "\\377" is \377 for printf: bytes that are not UTF-8. */
    static const char job[] =
        "{\"job_id\":\"fixture\",\"project_id\":\"fuzz\",\"timeout_s\":30,\"script\":\""
        "printf 'fixture log\\\\n\\\\377\\\\376 end\\\\n'; "
        "mkdir -p public/sub public/empty && echo '<h1>fixture</h1>' > public/index.html && "
        "echo sub > public/sub/index.html && echo '{}' > public/a.json && printf x > public/noext && "
        "mkfifo public/fifo && ln -s " WORK_DIR "/secret public/leak && ln -s ../.. public/up && "
        "ln -s /etc public/etc\"}";
    char err[512], run_id[SBX_RUN_ID_MAX];
    int64_t newest = 0;
    sbx_wake_req w;
    sbx_wake_status st;
    sbx_run_view v;

    memset(&w, 0, sizeof(w));
    w.slot = AGENT_ID;
    w.token = newest_token() + 1;
    w.attempt = 1;
    w.job = job;
    w.job_len = sizeof(job) - 1;
    st = sbx_runs_wake(g.runs, &w, run_id, &newest, err, sizeof(err));
    FUZZ_CHECK(st == SBX_WAKE_STARTED, "the fixture's wake: %s", err);
    snprintf(g.fixture, sizeof(g.fixture), "%s", run_id);
    wait_until(fixture_over, FIXTURE_MS);
    FUZZ_CHECK(sbx_runs_view(g.runs, g.fixture, &v) == 0, "the fixture run %s is gone", g.fixture);
    if (v.state != SBX_RS_SUCCEEDED || !v.has_preview) {
        char tail[SBX_RUNS_TAIL_MAX + 1];
        sbx_runs_tail(g.runs, g.fixture, tail, sizeof(tail));
        FUZZ_CHECK(0, "the fixture run %s ended %s, preview %d, error \"%s\", output:\n%s", g.fixture,
                   sbx_run_state_name(v.state), v.has_preview, v.error, tail);
    }
}

static void agent_stop(void)
{
    sbx_timer_stop(g.loop, &g.fence_t);
    sbx_server_free(g.server);
    g.server = NULL;
    sbx_runs_free(g.runs);
    g.runs = NULL;
}

static void agent_start(void)
{
    sbx_runs_config rcfg;
    sbx_server_config sc;
    char err[512], url[64];
    int fd, rc;

    memset(&rcfg, 0, sizeof(rcfg));
    rcfg.agent_id = AGENT_ID;
    rcfg.work_dir = WORK_DIR;
    rcfg.bwrap = "bwrap";
    rcfg.capacity = 1;
    rcfg.uid_base = UID_BASE;
    rcfg.kill_grace_ms = KILL_GRACE_MS;
    rc = sbx_runs_new(g.loop, &rcfg, on_runs_event, NULL, &g.runs, err, sizeof(err));
    FUZZ_CHECK(rc == 0, "runs: %s", err);

    /* Beside previews/, where a path escaping a preview would land. */
    fd = open(WORK_DIR "/secret", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FUZZ_CHECK(fd >= 0 && write(fd, g.secret, strlen(g.secret)) == (ssize_t)strlen(g.secret),
               "secret: %s", strerror(errno));
    close(fd);

    /* Another process may take the free port first: try a few. */
    for (int i = 0; i < 5 && !g.server; i++) {
        g.port = free_port();
        snprintf(url, sizeof(url), "http://127.0.0.1:%d", g.port);
        memset(&sc, 0, sizeof(sc));
        sc.host = "127.0.0.1";
        sc.port = g.port;
        sc.key = KEY;
        sc.agent_id = AGENT_ID;
        sc.base_url = url;
        sc.conn_max = CONN_MAX;
        sc.pending_max = PENDING_MAX;
        sc.pending_per_ip = PENDING_PER_IP;
        sc.header_timeout_ms = HEADER_MS;
        sc.body_timeout_ms = BODY_MS;
        sc.fence_ask = fence_ask;
        snprintf(err, sizeof(err), "no free port");
        if (g.port > 0)
            sbx_server_new(g.loop, g.runs, &sc, &g.server, err, sizeof(err));
    }
    FUZZ_CHECK(g.server != NULL, "server: %s", err);
    make_fixture();
    g.cur_run[0] = '\0';
    g.base_fds = count_fds();
}

static void at_exit(void)
{
    agent_stop();
    sbx_loop_free(g.loop);
    sbx_sandbox_remove_tree(WORK_DIR);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    unsigned char rnd[16];
    (void)argc;
    (void)argv;

    g.verbose = getenv("FUZZ_AGENT_VERBOSE") != NULL;
    sbx_log_set_level(g.verbose ? SBX_LOG_DEBUG : SBX_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    FUZZ_CHECK(getrandom(rnd, sizeof(rnd), 0) == (ssize_t)sizeof(rnd), "getrandom: %s", strerror(errno));
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(g.secret + 2 * i, 3, "%02x", rnd[i]);
    memcpy(g.secret, "SECRET", 6);
    /* Leftovers of an instance that crashed: runs.c kills their builds. */
    sbx_sandbox_remove_tree(WORK_DIR);
    FUZZ_CHECK(sbx_loop_new(&g.loop) == 0, "cannot create the loop");
    sbx_timer_init(&g.fence_t, on_fence_timer, NULL);
    agent_start();
    atexit(at_exit);
    return 0;
}

/* ---- connections ---- */

static void on_conn(sbx_io *io, int events)
{
    conn *c = io->data;
    char buf[65536];
    ssize_t n;

    if (c->sent < c->out_len && (events & (SBX_WRITE | SBX_ERROR))) {
        n = send(c->fd, c->out + c->sent, c->out_len - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            c->last_ms = sbx_now_ms();
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            c->sent = c->out_len; /* the server stopped reading: keep what it said */
        }
        if (c->sent == c->out_len)
            sbx_io_set(g.loop, &c->io, SBX_READ);
    }
    while (!c->closed) {
        n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            c->closed = 1;
            sbx_io_stop(&c->io);
            break;
        }
        c->last_ms = sbx_now_ms();
        if (c->resp_len < RESP_KEEP) {
            size_t k = (size_t)n < RESP_KEEP - c->resp_len ? (size_t)n : RESP_KEEP - c->resp_len;
            memcpy(c->resp + c->resp_len, buf, k);
            c->resp_len += k;
        }
    }
}

static void conn_free(conn *c)
{
    if (c->fd >= 0) {
        sbx_io_stop(&c->io);
        close(c->fd);
    }
    free(c->out);
    free(c->resp);
}

static void append(char **out, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 1024;
        while (nc < *len + n)
            nc *= 2;
        *out = realloc(*out, nc);
        FUZZ_CHECK(*out != NULL, "out of memory");
        *cap = nc;
    }
    memcpy(*out + *len, p, n);
    *len += n;
}

/* The length of name when p starts with it, else 0. */
static size_t starts(const char *p, size_t left, const char *name)
{
    size_t k = strlen(name);
    return left >= k && !memcmp(p, name, k) ? k : 0;
}

/* The stream with the placeholders of the top comment replaced. */
static void substitute(conn *c, const uint8_t *d, size_t n)
{
    size_t cap = n + 64, bigs = 0, k;
    char num[32];
    const char *run = g.cur_run[0] ? g.cur_run : g.fixture;
    int64_t newest = newest_token();

    c->out = malloc(cap);
    FUZZ_CHECK(c->out != NULL, "out of memory");
    for (size_t i = 0; i < n; i += k) {
        const char *p = (const char *)d + i;
        size_t left = n - i;

        if ((k = starts(p, left, "@RUN@"))) {
            append(&c->out, &c->out_len, &cap, run, strlen(run));
        } else if ((k = starts(p, left, "@FIX@"))) {
            append(&c->out, &c->out_len, &cap, g.fixture, strlen(g.fixture));
        } else if ((k = starts(p, left, "@TOK@")) || (k = starts(p, left, "@CUR@"))) {
            /* Always TOK_WIDTH characters, so a seed's Content-Length holds. */
            snprintf(num, sizeof(num), "%*" PRId64, TOK_WIDTH, newest + (p[1] == 'T'));
            append(&c->out, &c->out_len, &cap, num, strlen(num));
        } else if ((k = starts(p, left, "@BIG@"))) {
            if (bigs++ == 0) {
                char *sp = malloc(BIG_BYTES);
                FUZZ_CHECK(sp != NULL, "out of memory");
                memset(sp, ' ', BIG_BYTES);
                append(&c->out, &c->out_len, &cap, sp, BIG_BYTES);
                free(sp);
            }
        } else if ((k = starts(p, left, "@WAIT@"))) {
            c->wait = 1;
        } else {
            k = 1;
            append(&c->out, &c->out_len, &cap, p, 1);
        }
    }
}

static int has(const char *h, size_t n, const char *needle)
{
    return n > 0 && memmem(h, n, needle, strlen(needle)) != NULL;
}

/* The running build's id into id (capacity 1); returns 0 when none. */
static int running_id(char id[SBX_RUN_ID_MAX])
{
    const char *ids[1];
    id[0] = '\0';
    if (sbx_runs_running_ids(g.runs, ids, 1) != 1)
        return 0;
    snprintf(id, SBX_RUN_ID_MAX, "%s", ids[0]);
    return 1;
}

/* Remembers the last run id an answer named, for @RUN@. */
static void note_run_id(const conn *c)
{
    static const char tag[] = "\"run_id\":\"";
    const char *p = c->resp, *end = c->resp + c->resp_len, *hit = NULL;

    while ((p = memmem(p, (size_t)(end - p), tag, sizeof(tag) - 1)) != NULL) {
        hit = p + sizeof(tag) - 1;
        p = hit;
    }
    if (hit) {
        const char *q = memchr(hit, '"', (size_t)(end - hit));
        if (q && q > hit && (size_t)(q - hit) < SBX_RUN_ID_MAX)
            snprintf(g.cur_run, sizeof(g.cur_run), "%.*s", (int)(q - hit), hit);
    }
}

/* What a connection without the key was answered: run once the stream is
 * answered and again before it is closed (late answers). */
static void check_keyless_answers(const conn *c)
{
    static const char body401[] = "{\"error\":\"unauthorized\"}", livez[] = "ok\n";
    const char *p = c->resp, *end = c->resp + c->resp_len;

    while ((p = memmem(p, (size_t)(end - p), "HTTP/1.", 7)) != NULL) {
        const char *hdr_end = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        size_t hn = hdr_end ? (size_t)(hdr_end - p) : (size_t)(end - p), got;
        int status, mhd_own, livez_own;

        if (end - p < 12)
            break; /* the rest has not arrived (yet) */
        status = atoi(p + 9);
        mhd_own = status == 400 || status == 413 || status == 414 || status == 431 || status == 500 ||
                  status == 501 || status == 505;
        /* /livez: its "ok", or 405 with an Allow header. */
        livez_own = (status == 200 || status == 405) && !has(p, hn, "application/json");
        FUZZ_CHECK(status == 401 || status == 100 || livez_own ||
                   (mhd_own && !has(p, hn, "application/json")),
                   "a request without the key got %.*s", (int)(hn < 200 ? hn : 200), p);
        got = hdr_end ? (size_t)(end - hdr_end - 4) : 0;
        if (status == 200 && got > 0 && memcmp(hdr_end + 4, "HTTP/1.", got < 7 ? got : 7) != 0) {
            size_t k = got < sizeof(livez) - 1 ? got : sizeof(livez) - 1;
            FUZZ_CHECK(!memcmp(hdr_end + 4, livez, k), "200 without the key: %.*s", (int)k, hdr_end + 4);
        }
        if (status == 401 && got > 0 && hdr_end[4] == '{') {
            got = got < sizeof(body401) - 1 ? got : sizeof(body401) - 1;
            FUZZ_CHECK(!memcmp(hdr_end + 4, body401, got), "401 with another body: %.*s", (int)got,
                       hdr_end + 4);
        }
        p += 7;
    }
    FUZZ_CHECK(!has(c->resp, c->resp_len, "\"run_id\""), "a request without the key named a run");
}

/* What it did: nothing (only for a stream sent to a quiet agent). */
static void check_keyless(const conn *c, int64_t tok0, const char *running0)
{
    char now[SBX_RUN_ID_MAX];

    check_keyless_answers(c);
    FUZZ_CHECK(newest_token() == tok0, "a request without the key moved the token %" PRId64 " -> %" PRId64,
               tok0, newest_token());
    /* Builds of earlier streams may end meanwhile; none may start. */
    FUZZ_CHECK(running_id(now) == 0 || strcmp(now, running0) == 0,
               "a request without the key started build %s", now);
}

/* Occurrences of an HTTP version followed by a space and a digit: request
 * lines end in a version, status lines start with one (100 Continue is not
 * an answer). A body that holds such text only makes a stream end early or
 * late, never a check fail. */
static size_t count_versions(const char *p, size_t n, int status)
{
    const char *end = p + n;
    size_t k = 0;

    while ((p = memmem(p, (size_t)(end - p), "HTTP/1.", 7)) != NULL) {
        if (!status)
            k += end - p >= 10 && (p[8] == '\r' || p[8] == '\n');
        else
            k += end - p >= 12 && p[8] == ' ' && p[9] >= '0' && p[9] <= '9' && p[9] != '1';
        p += 7;
    }
    return k;
}

/* The body of a stream that is one "POST /wake" framed by one plain
 * Content-Length, or NULL for anything else: there, what the server takes
 * for the body is not certain enough to judge its answer by. */
static const char *lone_wake_body(const conn *c, size_t *len)
{
    static const char line[] = "POST /wake HTTP/1.1\r\n";
    char hdr[8192];
    const char *end, *cl;
    size_t hn;
    char *digits_end;
    unsigned long long n;

    if (c->nreq != 1 || c->out_len < sizeof(line) - 1 || memcmp(c->out, line, sizeof(line) - 1))
        return NULL;
    end = memmem(c->out, c->out_len, "\r\n\r\n", 4);
    hn = end ? (size_t)(end - c->out) + 2 : 0;
    if (!end || hn >= sizeof(hdr))
        return NULL;
    for (size_t i = 0; i < hn; i++) {
        char ch = c->out[i];
        /* Bare LF, folded lines and NUL: framing a parser may read its own way. */
        if (ch == '\0' || (ch == '\n' && (i == 0 || c->out[i - 1] != '\r')) ||
            (ch == '\n' && i + 1 < hn && (c->out[i + 1] == ' ' || c->out[i + 1] == '\t')))
            return NULL;
        hdr[i] = (char)tolower((unsigned char)ch);
    }
    hdr[hn] = '\0';
    cl = strstr(hdr, "\r\ncontent-length:");
    if (!cl || strstr(cl + 1, "\r\ncontent-length:") || strstr(hdr, "transfer-encoding"))
        return NULL;
    cl += 17;
    while (*cl == ' ' || *cl == '\t')
        cl++;
    if (!isdigit((unsigned char)*cl))
        return NULL;
    errno = 0;
    n = strtoull(cl, &digits_end, 10);
    while (*digits_end == ' ' || *digits_end == '\t')
        digits_end++;
    if (errno || *digits_end != '\r' || n > c->out_len - hn - 2)
        return NULL;
    *len = (size_t)n;
    return end + 4;
}

/* A wake names its slot by the whole JSON string: "fuzz-agent\u0000x" or
 * "fuzz-agent " is another slot (404 unknown_slot), not this one. */
static void check_wake_slot(const conn *c)
{
    size_t len = 0, want = strlen(AGENT_ID);
    const char *body = lone_wake_body(c, &len);
    json_tokener *tok;
    json_object *o, *slot;

    if (!body || len == 0 || len > INT32_MAX || !has(c->resp, c->resp_len, "\"run_id\""))
        return;
    tok = json_tokener_new();
    FUZZ_CHECK(tok != NULL, "out of memory");
    o = json_tokener_parse_ex(tok, body, (int)len);
    if (o && json_object_object_get_ex(o, "slot", &slot) && json_object_is_type(slot, json_type_string)) {
        const char *v = json_object_get_string(slot);
        size_t vn = (size_t)json_object_get_string_len(slot);
        char shown[4 * 64 + 1];
        size_t k = 0;
        for (size_t i = 0; i < vn && i < 64; i++)
            k += (size_t)snprintf(shown + k, sizeof(shown) - k, isprint((unsigned char)v[i]) ? "%c" : "\\x%02x",
                                  (unsigned char)v[i]);
        FUZZ_CHECK(vn == want && !memcmp(v, AGENT_ID, want),
                   "a wake for slot \"%s\" (%zu bytes; the agent's is \"%s\") got a run:\n%.*s", shown, vn,
                   AGENT_ID, (int)(c->resp_len < 400 ? c->resp_len : 400), c->resp);
    }
    json_object_put(o);
    json_tokener_free(tok);
}

static int answered(const conn *c)
{
    return c->closed || (c->sent == c->out_len && c->nreq > 0 &&
                         count_versions(c->resp, c->resp_len, 1) >= c->nreq);
}

/* A non-blocking connection to the agent on loopback. Loopback completes
 * the handshake from the backlog, but a signal (libFuzzer's timer, a
 * reaped child) may interrupt connect(): the handshake then goes on in the
 * kernel, and we wait for it here. */
static int connect_agent(void)
{
    struct sockaddr_in a;
    struct pollfd p;
    int fd, err = 0;
    socklen_t len = sizeof(err);

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)g.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    FUZZ_CHECK(fd >= 0, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
        return fd;
    FUZZ_CHECK(errno == EINPROGRESS || errno == EINTR, "connect to the agent: %s",
               strerror(errno));
    p.fd = fd;
    p.events = POLLOUT;
    p.revents = 0;
    while (poll(&p, 1, 5000) < 0 && errno == EINTR)
        ;
    FUZZ_CHECK(p.revents && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0,
               "connect to the agent: %s", strerror(err ? err : ETIMEDOUT));
    return fd;
}

/* Sends one stream and runs the loop until it is answered: the server
 * closed it, or every request line got a status line, or it is quiet. */
static void send_stream(conn *c, const uint8_t *d, size_t n, int first)
{
    int64_t tok0 = newest_token();
    char running0[SBX_RUN_ID_MAX];
    uint64_t start = sbx_now_ms();
    int quiet = 0;

    running_id(running0);
    substitute(c, d, n);
    c->keyless = !has(c->out, c->out_len, KEY);
    c->resp = malloc(RESP_KEEP);
    FUZZ_CHECK(c->resp != NULL, "out of memory");
    c->fd = connect_agent();
    sbx_io_init(&c->io, c->fd, on_conn, c);
    sbx_io_set(g.loop, &c->io, c->out_len ? SBX_READ | SBX_WRITE : SBX_READ);
    c->last_ms = start;
    c->nreq = count_versions(c->out, c->out_len, 0);
    while (!c->closed) {
        uint64_t now = sbx_now_ms(), t0;
        size_t before = c->resp_len + c->sent;
        if (now - start >= SEG_MS || (c->sent == c->out_len && now - c->last_ms >= IDLE_MS))
            break;
        if (answered(c))
            break;
        if (c->sent == c->out_len && quiet >= QUIET_TURNS)
            break;
        t0 = sbx_now_us();
        sbx_loop_once(g.loop, QUIET_MS);
        /* A turn that slept its whole timeout and not much longer handled
         * nothing: the server waits for bytes that will not come. */
        t0 = sbx_now_us() - t0;
        quiet = c->resp_len + c->sent == before && t0 >= QUIET_MS * 1000 && t0 < QUIET_MS * 1000 + 1000
                    ? quiet + 1 : 0;
    }
    if (c->wait && !g.waited) {
        g.waited = 1;
        wait_until(runs_idle, WAIT_MS);
    }
    if (g.verbose)
        fprintf(stderr, "---- sent %zu bytes, got %zu in %" PRIu64 " ms%s:\n%.*s\n", c->sent, c->resp_len,
                c->last_ms - start,
                c->closed ? " (closed)" : "", (int)(c->resp_len < 2000 ? c->resp_len : 2000), c->resp);
    FUZZ_CHECK(!has(c->resp, c->resp_len, g.secret), "an answer holds the secret file beside the previews");
    if (c->keyless && first)
        check_keyless(c, tok0, running0);
    else if (c->keyless)
        check_keyless_answers(c);
    else
        check_wake_slot(c);
    if (!c->keyless)
        note_run_id(c);
}

/* ---- between inputs ---- */

/* With the slot's newest token, which is never stale; canceling a run that
 * is already stopping changes nothing. */
static void cancel_running(void)
{
    char id[SBX_RUN_ID_MAX];
    int64_t newest = newest_token();

    if (running_id(id))
        FUZZ_CHECK(sbx_runs_cancel(g.runs, id, newest > 0 ? newest : 1, &newest) == SBX_CANCEL_OK,
                   "cannot cancel run %s (newest token %" PRId64 ")", id, newest);
}

/* A session's sandbox stays between runs, with its descriptors: DESTROY
 * it as the sweeper would. A run still on the slot makes that busy (the
 * cancel above ends it); a dying sandbox is gone at its on_end. */
static int end_sessions(void)
{
    int none = 1;
    for (size_t i = 0; i < sbx_runs_capacity(g.runs); i++) {
        const char *name, *state;
        char n[SBX_RUNS_SESSION_MAX + 1], err[256];
        int64_t newest = newest_token();
        if (!sbx_runs_slot_session(g.runs, i, &name, &state))
            continue;
        none = 0;
        snprintf(n, sizeof(n), "%s", name);
        sbx_runs_session_op(g.runs, SBX_SOP_DESTROY, sbx_runs_slot_id(g.runs, i), n,
                            newest > 0 ? newest : 1, &newest, err, sizeof(err));
    }
    return none;
}

static int fds_back(void) { return count_fds() <= g.base_fds; }

static int agent_quiet(void) { return runs_idle() && end_sessions() && fds_back(); }

/* Once the client sides are closed: nothing is left that could act later.
 * A pipelined wake behind a suspended long poll starts its build only when
 * the poll's run ends, so builds are canceled until no server-side
 * connection is left either (the descriptor count is back). */
static void quiesce(void)
{
    uint64_t until = sbx_now_ms() + KILL_GRACE_MS + END_MS;

    while (!agent_quiet() && sbx_now_ms() < until) {
        cancel_running();
        sbx_loop_once(g.loop, 5);
    }
    FUZZ_CHECK(runs_idle(), "a build is still running %d ms after its cancel", KILL_GRACE_MS + END_MS);
    FUZZ_CHECK(end_sessions(), "a session sandbox is still there %d ms after its DESTROY",
               KILL_GRACE_MS + END_MS);
    if (!fds_back())
        list_fds();
    FUZZ_CHECK(fds_back(), "%d descriptors open after the input, %d before", count_fds(), g.base_fds);
}

/* The fixture's whole log goes when the slot's next run starts (only its
 * tail stays): that branch is worth reaching too, so only a lost preview or
 * a run pushed out of the history makes a new fixture. */
static void fresh_fixture(void)
{
    sbx_run_view v;

    if (sbx_runs_view(g.runs, g.fixture, &v) != 0 || !v.has_preview)
        make_fixture();
}

static void check_health(void)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer " KEY
                              "\r\nConnection: close\r\n\r\n";
    conn c;
    uint64_t until = sbx_now_ms() + HEALTH_MS;

    memset(&c, 0, sizeof(c));
    c.out = strdup(req);
    c.out_len = sizeof(req) - 1;
    c.resp = malloc(RESP_KEEP);
    FUZZ_CHECK(c.out && c.resp, "out of memory");
    c.fd = connect_agent();
    sbx_io_init(&c.io, c.fd, on_conn, &c);
    sbx_io_set(g.loop, &c.io, SBX_READ | SBX_WRITE);
    while (!c.closed && sbx_now_ms() < until)
        sbx_loop_once(g.loop, 10);
    FUZZ_CHECK(c.closed && c.resp_len >= 12 && !memcmp(c.resp, "HTTP/1.1 200", 12) &&
                   has(c.resp, c.resp_len, "\"state\":\"idle\""),
               "/health after the input: %s%.*s", c.closed ? "" : "(no end within the deadline) ",
               (int)(c.resp_len < 500 ? c.resp_len : 500), c.resp);
    conn_free(&c);
}

/* ---- mutation ---- */

/* Line-level edits besides libFuzzer's byte-level ones: dropping the
 * Authorization line, doubling a header or swapping the method are one
 * step here, but a long, unlikely chain of byte edits for libFuzzer. */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
    size_t lines[256], n = 0, b, e, sp;
    unsigned int r = seed;

    if (size == 0 || rand_r(&r) % 4 != 0)
        return LLVMFuzzerMutate(data, size, max_size);
    lines[n++] = 0;
    for (size_t i = 0; i + 1 < size && n < sizeof(lines) / sizeof(lines[0]); i++)
        if (data[i] == '\n')
            lines[n++] = i + 1;
    b = lines[(size_t)rand_r(&r) % n];
    e = b;
    while (e < size && data[e] != '\n')
        e++;
    e += e < size;
    switch (rand_r(&r) % 3) {
    case 0:
        memmove(data + b, data + e, size - e);
        return size - (e - b);
    case 1:
        if (size + (e - b) > max_size)
            break;
        memmove(data + e + (e - b), data + e, size - e);
        memcpy(data + e, data + b, e - b);
        return size + (e - b);
    default: {
        const char *m = methods[(size_t)rand_r(&r) % (sizeof(methods) / sizeof(methods[0]))];
        size_t mn = strlen(m);
        for (sp = b; sp < e && data[sp] != ' '; sp++)
            ;
        if (sp == e || size - (sp - b) + mn > max_size)
            break;
        memmove(data + b + mn, data + sp, size - sp);
        memcpy(data + b, m, mn);
        return size - (sp - b) + mn;
    }
    }
    return LLVMFuzzerMutate(data, size, max_size);
}

/* ---- one input ---- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    conn cs[SEG_MAX];
    size_t nc = 0, pos = 0;

    memset(cs, 0, sizeof(cs));
    for (size_t i = 0; i < SEG_MAX; i++)
        cs[i].fd = -1;
    g.cur_run[0] = '\0';
    g.waited = 0;

    /* 1. The streams, one connection each. */
    while (nc < SEG_MAX) {
        const uint8_t *sep =
            nc + 1 < SEG_MAX && size > pos ? memmem(data + pos, size - pos, SEP, sizeof(SEP) - 1) : NULL;
        size_t n = sep ? (size_t)(sep - (data + pos)) : size - pos;
        send_stream(&cs[nc], data + pos, n, nc == 0);
        nc++;
        if (!sep)
            break;
        pos += n + sizeof(SEP) - 1;
    }

    /* 2. Builds end while the connections still listen, then they go. */
    wait_until(runs_idle, SETTLE_MS);
    cancel_running();
    wait_until(runs_idle, KILL_GRACE_MS + END_MS);
    for (size_t i = 0; i < nc; i++)
        if (!answered(&cs[i])) {
            /* A long poll resumed by the end of its run answers on the
             * next turns. */
            loop_until_quiet(SEG_MS);
            break;
        }
    for (size_t i = 0; i < nc; i++) {
        if (!cs[i].closed)
            on_conn(&cs[i].io, SBX_READ);
        FUZZ_CHECK(!has(cs[i].resp, cs[i].resp_len, g.secret),
                   "an answer holds the secret file beside the previews");
        if (cs[i].keyless)
            check_keyless_answers(&cs[i]);
        conn_free(&cs[i]);
    }
    quiesce();

    /* 3. The same starting point for the next input. */
    if (newest_token() > TOKEN_RESET) {
        agent_stop();
        unlink(WORK_DIR "/tokens");
        agent_start();
    } else {
        fresh_fixture();
    }
    check_health();
    wait_until(fds_back, FD_MS);
    if (!fds_back())
        list_fds();
    FUZZ_CHECK(fds_back(), "%d descriptors open after /health, %d before", count_fds(), g.base_fds);
    return 0;
}
