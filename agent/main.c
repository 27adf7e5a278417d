/* main.c — sbx-agent: one per VM of the vmpool; runs the builds workers
 * send it, in the bubblewrap sandbox, and keeps the VM registered in Redis.
 *
 *   sbx-agent [--flag value]...   run (see --help for every setting)
 *   sbx-agent --check-config      print the effective settings and exit
 *
 * Wiring: one sbx_loop drives the HTTP server (server.c), the builds
 * (runs.c), the Redis connection (common/redis.c), the lease checks of the
 * running builds (leasewatch.c) and two timers: the heartbeat and, while
 * stopping, the drain check. The settings, signals and
 * the loop's start and end are common/daemon.c's, shared with sbx-worker.
 *
 * Life in Redis (registry.h): a full registration as soon as Redis answers
 * (again after every reconnect), then a heartbeat every SBX_AGENT_HEARTBEAT_MS
 * and whenever the VM turns busy or idle. SIGTERM: state=draining, the
 * slots that are not leased leave the pool, /wake answers 503, running
 * builds get SBX_SHUTDOWN_GRACE_MS to finish (heartbeats go on, so the VM
 * is not taken for dead meanwhile); then what is left is killed and the
 * agent exits. A second signal stops at once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_config.h"
#include "daemon.h"
#include "leasewatch.h"
#include "log.h"
#include "preview.h"
#include "redis.h"
#include "registry.h"
#include "rkeys.h"
#include "runs.h"
#include "server.h"

/* Sandbox cancel: SIGTERM, then SIGKILL after this (the local provider's). */
#define AGENT_KILL_GRACE_MS 2000
/* While stopping: how often the drain is checked. */
#define AGENT_STOP_POLL_MS 100
/* At exit, how long the last deregistration may take. */
#define AGENT_LEAVE_WAIT_MS 1000

typedef struct agent {
    sbx_agent_config cfg;
    sbx_daemon d;
    sbx_loop *loop;          /* d.loop */
    sbx_runs *runs;
    sbx_previews *previews;      /* sessions' live previews (runs.h) */
    sbx_server *server;
    sbx_redis *redis;
    sbx_registry *reg;
    sbx_leasewatch *lw;      /* builds die with their worker's lease */
    sbx_timer beat_t;
    sbx_timer stop_t;
    int stopping;
    uint64_t stop_deadline_ms;
    int beat_state;          /* -1 unknown, 0 failing, 1 ok: log transitions only */
    size_t beat_active;      /* running builds at the last beat */
    int leave_done;
} agent;

static void on_beat(void *arg, int ok, const char *error)
{
    agent *a = arg;
    if (ok && a->beat_state != 1)
        sbx_info("agent", "registered in pool " SBX_VMPOOL_POOL " as %s (%s)", a->cfg.id, a->cfg.url);
    else if (!ok && a->beat_state != 0)
        sbx_warn("agent", "heartbeat failed: %s", error ? error : "?");
    a->beat_state = ok;
}

static void beat(agent *a)
{
    int busy[SBX_AGENT_CAPACITY_MAX];
    size_t cap = sbx_runs_capacity(a->runs);
    const char *state;
    int rc;

    for (size_t i = 0; i < cap; i++)
        busy[i] = sbx_runs_slot_busy(a->runs, i);
    a->beat_active = sbx_runs_active(a->runs);
    state = a->stopping ? SBX_VM_DRAINING : a->beat_active ? SBX_VM_BUSY : SBX_VM_IDLE;
    rc = sbx_registry_beat(a->reg, state, busy, on_beat, a);
    if (rc && a->beat_state != 0) {
        sbx_warn("agent", "heartbeat deferred: redis %s", rc == -ENOTCONN ? "unreachable" : strerror(-rc));
        a->beat_state = 0;
    }
    sbx_timer_start(a->loop, &a->beat_t, (uint64_t)a->cfg.heartbeat_ms);
}

static void on_beat_timer(sbx_timer *t) { beat(t->data); }

static void on_left(void *arg, int ok, const char *error)
{
    agent *a = arg;
    a->leave_done = 1;
    if (ok)
        sbx_info("agent", "deregistered: state=draining, unleased slots left the pool");
    else
        sbx_warn("agent", "deregistration failed: %s", error ? error : "?");
}

static void leave(agent *a)
{
    a->leave_done = 0;
    if (sbx_registry_leave(a->reg, on_left, a) != 0) {
        a->leave_done = 1;
        sbx_warn("agent", "deregistration skipped: redis unreachable");
    }
}

static void on_redis_state(void *arg, int up)
{
    agent *a = arg;
    if (!a->reg || !a->runs)
        return;
    sbx_registry_reset(a->reg);
    if (!up)
        return;
    if (a->stopping)
        leave(a);
    beat(a);
}

static void on_runs_event(void *arg, const char *run_id, sbx_runs_event ev)
{
    agent *a = arg;
    if (a->server)
        sbx_server_notify(a->server, run_id, ev);
    /* busy <-> idle shows in the VM hash without waiting for the timer. */
    if (ev == SBX_RUNS_END && a->reg && (sbx_runs_active(a->runs) == 0) != (a->beat_active == 0))
        beat(a);
}

static void on_stop_timer(sbx_timer *t)
{
    agent *a = t->data;
    size_t n = sbx_runs_active(a->runs);
    if (n == 0) {
        sbx_info("agent", "all builds finished; leaving");
        sbx_loop_stop(a->loop);
        return;
    }
    if (sbx_now_ms() >= a->stop_deadline_ms) {
        sbx_warn("agent", "grace period over with %zu builds running; killing them", n);
        sbx_loop_stop(a->loop);
        return;
    }
    sbx_timer_start(a->loop, t, AGENT_STOP_POLL_MS);
}

/* The first SIGTERM/SIGINT (daemon.c stops the loop on a second one). */
static void on_stop(void *arg, int signo)
{
    agent *a = arg;
    sbx_info("agent", "signal %d: draining; %zu builds running get %d ms to finish", signo,
             sbx_runs_active(a->runs), a->cfg.shutdown_grace_ms);
    a->stopping = 1;
    a->stop_deadline_ms = sbx_now_ms() + (uint64_t)a->cfg.shutdown_grace_ms;
    sbx_runs_drain(a->runs);
    leave(a);
    beat(a);
    sbx_timer_start(a->loop, &a->stop_t, 0);
}

/* The server's question about {sbx}:fence (tokens.c "Tokens from the
 * future"); a->server is NULL once the server is gone. */
static void on_fence(void *arg, redisReply *r)
{
    agent *a = arg;
    int64_t v = -1;
    char *end;

    if (r && r->type == REDIS_REPLY_NIL) {
        v = 0;
    } else if (r && r->type == REDIS_REPLY_STRING) {
        errno = 0;
        v = strtoll(r->str, &end, 10);
        if (errno || end == r->str || *end || v < 0)
            v = -1;
    }
    if (a->server)
        sbx_server_fence(a->server, v);
}

static int ask_fence(void *arg)
{
    agent *a = arg;
    const char *argv[] = {"GET", SBX_RKEY_FENCE};
    return a->redis ? sbx_redis_cmd(a->redis, on_fence, a, 2, argv, NULL) : -ENOTCONN;
}

static int load_config(void *cfg, int argc, char **argv, FILE *err)
{
    return sbx_agent_config_load(cfg, argc, argv, err);
}

static void print_config(const void *cfg, FILE *out) { sbx_agent_config_print(cfg, out); }

int main(int argc, char **argv)
{
    agent a;
    char err[512], redacted[1024];
    int rc, status = 1;
    sbx_runs_config rc_cfg;
    sbx_server_config sc;
    sbx_registry_config gc;

    memset(&a, 0, sizeof(a));
    a.beat_state = -1;
    rc = sbx_daemon_settings(argc, argv, &a.cfg, load_config, print_config);
    if (rc != SBX_DAEMON_RUN)
        return rc;
    if (sbx_daemon_start(&a.d, "sbx-agent", "agent", on_stop, &a) != 0)
        return 1;
    a.loop = a.d.loop;
    sbx_timer_init(&a.beat_t, on_beat_timer, &a);
    sbx_timer_init(&a.stop_t, on_stop_timer, &a);
    sbx_log_redact(a.cfg.redis_url, redacted, sizeof(redacted));
    sbx_info("agent", "starting %s: listen=%s url=%s capacity=%d redis=%s work_dir=%s "
             "heartbeat_ms=%d ttl_ms=%d previews=%s:%s warm=%d", a.cfg.id, a.cfg.listen, a.cfg.url,
             a.cfg.capacity, redacted, a.cfg.work_dir, a.cfg.heartbeat_ms, a.cfg.ttl_ms,
             a.cfg.preview_listen, a.cfg.preview_ports, a.cfg.warm);

    memset(&rc_cfg, 0, sizeof(rc_cfg));
    rc_cfg.agent_id = a.cfg.id;
    rc_cfg.work_dir = a.cfg.work_dir;
    rc_cfg.bwrap = a.cfg.bwrap;
    rc_cfg.capacity = a.cfg.capacity;
    rc_cfg.uid_base = a.cfg.uid_base;
    rc_cfg.allow_network = a.cfg.allow_network;
    rc_cfg.egress_allow = a.cfg.egress_allow;
    rc_cfg.egress_deny = a.cfg.egress_deny;
    rc_cfg.kill_grace_ms = AGENT_KILL_GRACE_MS;
    rc_cfg.warm = a.cfg.warm;
    {
        sbx_previews_cfg pc = {
            .loop = a.loop,
            .bind_host = a.cfg.preview_listen,
            .public_host = a.cfg.preview_public_host,
            .port_min = a.cfg.preview_port_min,
            .port_max = a.cfg.preview_port_max,
            .secret = a.cfg.preview_secret,
        };
        if (sbx_previews_new(&pc, &a.previews, err, sizeof(err)) != 0) {
            fprintf(stderr, "sbx-agent: SBX_AGENT_PREVIEW_LISTEN=%s: %s\n", a.cfg.preview_listen, err);
            status = 2;
            goto out;
        }
    }
    rc_cfg.previews = a.previews;
    rc = sbx_runs_new(a.loop, &rc_cfg, on_runs_event, &a, &a.runs, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "sbx-agent: SBX_WORK_DIR=%s: %s\n", a.cfg.work_dir, err);
        status = 2;
        goto out;
    }
    memset(&sc, 0, sizeof(sc));
    sc.host = a.cfg.listen_host;
    sc.port = a.cfg.listen_port;
    sc.key = a.cfg.key;
    sc.agent_id = a.cfg.id;
    sc.base_url = a.cfg.url;
    sc.conn_max = a.cfg.conn_max;
    sc.pending_max = a.cfg.pending_max;
    sc.pending_per_ip = a.cfg.pending_per_ip;
    sc.header_timeout_ms = a.cfg.header_timeout_ms;
    sc.body_timeout_ms = a.cfg.body_timeout_ms;
    sc.fence_ask = ask_fence;
    sc.fence_arg = &a;
    rc = sbx_server_new(a.loop, a.runs, &sc, &a.server, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "sbx-agent: SBX_AGENT_LISTEN=%s: %s\n", a.cfg.listen, err);
        status = 2;
        goto out;
    }
    if (sbx_daemon_redis(&a.d, a.cfg.redis_url, on_redis_state, &a, &a.redis) != 0) {
        status = 2;
        goto out;
    }
    memset(&gc, 0, sizeof(gc));
    gc.id = a.cfg.id;
    gc.base_url = a.cfg.url;
    gc.labels = a.cfg.labels;
    gc.capacity = a.cfg.capacity;
    gc.ttl_ms = a.cfg.ttl_ms;
    if (sbx_registry_new(a.redis, &gc, &a.reg) != 0 ||
        sbx_leasewatch_new(a.loop, a.redis, a.runs, &a.lw) != 0) {
        fprintf(stderr, "sbx-agent: out of memory\n");
        goto out;
    }
    /* The first beat goes out when Redis answers (on_redis_state). */
    if (sbx_redis_connected(a.redis))
        beat(&a);
    else
        sbx_timer_start(a.loop, &a.beat_t, (uint64_t)a.cfg.heartbeat_ms);

    rc = sbx_daemon_run(&a.d);

    /* Builds still running are killed below; their slots leave the pool
     * unless a worker still leases them. */
    if (a.stopping) {
        uint64_t until = sbx_now_ms() + AGENT_LEAVE_WAIT_MS;
        sbx_timer_stop(a.loop, &a.beat_t);
        sbx_timer_stop(a.loop, &a.stop_t);
        sbx_server_free(a.server);
        a.server = NULL;
        sbx_leasewatch_stop(a.lw);
        sbx_runs_free(a.runs);
        a.runs = NULL;
        leave(&a);
        while (!a.leave_done && sbx_now_ms() < until)
            sbx_loop_once(a.loop, 50);
    }
    status = rc ? 1 : 0;
out:
    sbx_timer_stop(a.loop, &a.beat_t);
    sbx_timer_stop(a.loop, &a.stop_t);
    sbx_server_free(a.server);
    sbx_leasewatch_stop(a.lw);
    sbx_runs_free(a.runs);
    sbx_previews_free(a.previews);
    sbx_redis_free(a.redis);
    sbx_registry_free(a.reg);
    sbx_leasewatch_free(a.lw);
    sbx_daemon_end(&a.d);
    return status;
}
