/* main.c — sbx-worker: wiring, the stop on SIGTERM, periodic duties.
 *
 *   sbx-worker [--flag value]...   run (see --help for every setting)
 *   sbx-worker --check-config      print the effective settings, then try
 *                                  each service (checks.c); exit 0 only if
 *                                  all answered as needed
 *
 * The settings, signals and the loop's start and end are common/daemon.c's,
 * shared with sbx-agent.
 *
 * Periodic duties live in cron(): stats, provider sweeps, retention passes
 * of runs and of dead letters (prune.c).
 *
 * The consumer is created outside the group; deps.c joins it once Redis and
 * PostgreSQL answer (or stops the loop when SBX_STARTUP_WAIT_MS runs out),
 * and takes it out of the group and back in around long outages.
 *
 * Shutdown (SIGTERM/SIGINT): intake stops at once; running builds get
 * SBX_SHUTDOWN_GRACE_MS to finish and be recorded; what is left is abandoned
 * without a write (its lease expires, its offset was never committed, so the
 * next owner runs it with a newer token); then the consumer leaves the group.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "daemon.h"
#include "log.h"
#include "preview.h"
#include "runlog.h"
#include "session.h"
#include "worker.h"

/* After the grace period, how long stopping builds, requeueing and releasing
 * may take before the worker exits anyway. */
#define HANDBACK_MAX_MS 10000

/* How often provider-side orphans are looked for (also once at start). */
#define SWEEP_PERIOD_MS 60000

/* How often a retention pass starts (also once at start). A pass goes on
 * batch after batch while batches come back full (prune.c), so the period
 * only bounds how soon newly expired runs go. */
#define PRUNE_PERIOD_MS 60000

static void on_message(void *arg, const sbx_kafka_msg *m) { sbx__job_intake(arg, m); }

static void on_registered(void *arg, const sbx_lease_reply *rep)
{
    sbx_provider *prov = arg;
    if (rep->status == SBX_LEASE_OK)
        sbx_info("lease", "pool %s registered", prov->ops->pool(prov));
    else
        sbx_warn("lease", "pool %s registration failed: %s", prov->ops->pool(prov),
                 rep->error ? rep->error : "?");
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Registers a provider's slots; the ones our running jobs hold are marked
 * busy, so a Redis that lost its data (and with it our leases) does not
 * hand them to someone else before our renewals restore the leases. */
static void register_pool(sbx_worker *w, sbx_provider *prov)
{
    const char **ids, **list = NULL, **leased = NULL;
    char *marks = NULL;
    size_t n = prov->ops->slots(prov, &ids), nleased, off = 0;

    /* Providers whose slots register themselves (VM agents) offer none. */
    if (n == 0)
        return;
    list = malloc(n * sizeof(*list));
    leased = malloc(n * sizeof(*leased));
    if (!list || !leased)
        goto out;
    nleased = sbx__jobs_leased_slots(w, prov, leased, n);
    qsort(leased, nleased, sizeof(*leased), cmp_str);
    marks = malloc(nleased * (SBX_LEASE_SLOT_MAX + 2) + 1);
    if (!marks)
        goto out;
    for (size_t i = 0; i < n; i++) {
        list[i] = ids[i];
        if (nleased && bsearch(&ids[i], leased, nleased, sizeof(*leased), cmp_str)) {
            int k = snprintf(marks + off, SBX_LEASE_SLOT_MAX + 2, "!%s", ids[i]);
            list[i] = marks + off;
            off += (size_t)k + 1;
        }
    }
    if (sbx_lease_register(w->leases, prov->ops->pool(prov), w->cfg.worker_id, list, (int)n,
                           on_registered, prov) != 0)
        sbx_warn("lease", "pool registration deferred: redis unavailable");
out:
    free(list);
    free(leased);
    free(marks);
}

static void on_fence_floor(void *arg, const sbx_lease_reply *rep)
{
    sbx_worker *w = arg;
    if (rep->status == SBX_LEASE_OK && rep->reaped)
        sbx_warn("lease", "token counter was behind PostgreSQL (Redis lost data?); lifted to "
                 "%lld, and no new lease for %d ms while live builds take theirs back",
                 (long long)rep->token, w->cfg.lease_ttl_ms);
}

static void on_max_token(void *arg, PGresult *res, const char *err)
{
    sbx_worker *w = arg;
    int64_t t;

    if (!res || PQntuples(res) != 1) {
        sbx_warn("lease", "newest token from PostgreSQL: %s", err ? err : "no row");
        return;
    }
    t = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (t > w->tokens_seen)
        w->tokens_seen = t;
    sbx_lease_fence_floor(w->leases, t, w->cfg.lease_ttl_ms, on_fence_floor, w);
}

/* Slots are registered when Redis connects (at start, and after every
 * reconnect: it may have restarted empty), not on a timer — a pool of
 * 100,000 slots costs ~1,700 script calls to register. */
static void on_redis_state(void *arg, int up)
{
    sbx_worker *w = arg;
    if (!up || !w->leases || !w->nprov)
        return;
    for (int i = 0; i < w->nprov; i++)
        register_pool(w, w->provs[i]);
    if (w->db)
        sbx_db_query(w->db, "SELECT coalesce(max(lease_token), 0) FROM sbx.runs", 0, NULL,
                     on_max_token, w);
}

static void on_cancel_notify(void *arg, const char *job_id) { sbx__jobs_cancel(arg, job_id); }

static void before_sleep(void *arg) { sbx__jobs_reap(arg); }

/* lease_waits counts every refusal a job saw, lease_refused_redis only
 * those Redis gave (lease.c answers a project held here itself). */
static void log_stats(sbx_worker *w, const char *why)
{
    sbx_stats *s = &w->stats;
    sbx_db_count c;
    sbx_leases_stats ls = {0};
    sbx_sessions_stats ss;
    uint64_t waits;
    int wait50 = sbx_kafka_intake_wait_ms(w->kafka, 50, &waits);
    int wait99 = sbx_kafka_intake_wait_ms(w->kafka, 99, &waits);
    sbx_db_counts(w->db, &c);
    if (w->leases)
        sbx_leases_get_stats(w->leases, &ls);
    sbx__sessions_stats(w, &ss);
    /* tests/bench/bench.py reads this line: keep its key=value shape. */
    sbx_info("stats", "%s: jobs=%zu pending_offsets=%zu received=%" PRIu64 " succeeded=%" PRIu64
             " failed=%" PRIu64 " timed_out=%" PRIu64 " canceled=%" PRIu64 " dead_lettered=%" PRIu64
             " duplicates=%" PRIu64 " lease_waits=%" PRIu64 " fenced_out=%" PRIu64 " retries=%" PRIu64
             " db_queue=%zu intake_wait_n=%" PRIu64 " intake_wait_p50_ms=%d intake_wait_p99_ms=%d"
             " db_calls=%" PRIu64 " db_statements=%" PRIu64 " db_wait_us=%" PRIu64
             " db_round_us=%" PRIu64 " redis=%s db=%s lease_script_calls=%" PRIu64
             " lease_refused_redis=%" PRIu64 " lease_answered_here=%" PRIu64
             " sessions_paused=%" PRIu64 " sessions_ended=%" PRIu64,
             why, sbx__jobs_count(w), sbx_kafka_pending(w->kafka), s->received, s->succeeded,
             s->failed, s->timed_out, s->canceled, s->dead_lettered, s->duplicates, s->lease_waits,
             s->fenced_out, s->retries, sbx_db_queued(w->db), waits, wait50 < 0 ? 0 : wait50,
             wait99 < 0 ? 0 : wait99, c.calls, c.statements, c.wait_us, c.round_us,
             sbx_redis_connected(w->redis) ? "up" : "down", sbx_db_connected(w->db) ? "up" : "down",
             ls.script_calls, ls.refused_remote, ls.local_busy, ss.paused, ss.ended);
}

/* SBX_PRICE_PER_HOUR recorded (migrations/0011_costs.sql). */
static void on_price(void *arg, PGresult *res, const char *err)
{
    sbx_provider *prov = arg;
    if (!res || PQntuples(res) != 1)
        sbx_warn("worker", "recording provider %s's SBX_PRICE_PER_HOUR in sbx.prices failed: %s",
                 prov->ops->name, err ? err : "no row");
    else
        sbx_info("worker", "price of provider %s: %s per hour held, %s paused (%s)",
                 prov->ops->name, PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
                 strcmp(PQgetvalue(res, 0, 0), "t") == 0 ? "recorded" : "unchanged");
}

/* Each provider's SBX_PRICE_PER_HOUR (and paused) into sbx.prices. */
static void record_prices(sbx_worker *w)
{
    for (int i = 0; i < w->nprov; i++) {
        const char *name = w->provs[i]->ops->name;
        char run[32], paused[32] = "0";
        const char *p[3] = {name, run, paused};
        if (!sbx__config_price(w->cfg.price_per_hour, name, run, sizeof(run)))
            continue;
        sbx__config_price(w->cfg.price_paused_per_hour, name, paused, sizeof(paused));
        sbx_db_query(w->db, "SELECT sbx.set_price($1, $2::numeric, $3::numeric), $2, $3", 3, p,
                     on_price, w->provs[i]);
    }
}

/* Periodic duties, each with its own period (redis serverCron). */
static void cron(sbx_timer *t)
{
    sbx_worker *w = t->data;
    static uint64_t last_stats, last_sweep, last_prune, last_prune_dlq;
    uint64_t now = sbx_now_ms();

    if (now - last_stats >= 30000) {
        last_stats = now;
        log_stats(w, "periodic");
    }
    if (!w->stopping && (last_sweep == 0 || now - last_sweep >= SWEEP_PERIOD_MS)) {
        last_sweep = now;
        sbx__provider_sweep(w);
    }
    /* Idle sessions pause and end within a second of their time. */
    for (int i = 0; i < w->nprov && !w->stopping && sbx_redis_connected(w->redis) &&
                    sbx_db_connected(w->db); i++)
        if (w->sessions[i])
            sbx_sessions_pass(w->sessions[i]);
    if (w->prune && !w->stopping && (last_prune == 0 || now - last_prune >= PRUNE_PERIOD_MS)) {
        last_prune = now;
        sbx_prune_pass(w->prune);
    }
    if (w->prune_dlq && !w->stopping &&
        (last_prune_dlq == 0 || now - last_prune_dlq >= PRUNE_PERIOD_MS)) {
        last_prune_dlq = now;
        sbx_prune_pass(w->prune_dlq);
    }
    if (w->stopping) {
        if (sbx__jobs_count(w) == 0) {
            sbx_info("worker", "all jobs finished; leaving");
            sbx_loop_stop(w->loop);
            return;
        }
        if (w->stopping == 1 && now >= w->stop_deadline_ms) {
            sbx_warn("worker", "grace period over with %zu jobs unfinished; handing them back",
                     sbx__jobs_count(w));
            w->stopping = 2;
            sbx__jobs_shutdown(w, 1);
        } else if (now >= w->stop_deadline_ms + HANDBACK_MAX_MS) {
            sbx_warn("worker", "%zu jobs not handed back in time; their leases will expire",
                     sbx__jobs_count(w));
            sbx_loop_stop(w->loop);
            return;
        }
    }
    sbx_timer_start(w->loop, t, w->stopping ? 100 : 1000);
}

/* The first SIGTERM/SIGINT (daemon.c stops the loop on a second one). */
static void on_stop(void *arg, int signo)
{
    sbx_worker *w = arg;
    sbx_info("worker", "signal %d: no new jobs; %zu running get %d ms to finish", signo,
             sbx__jobs_count(w), w->cfg.shutdown_grace_ms);
    w->stopping = 1;
    w->stop_deadline_ms = sbx_now_ms() + (uint64_t)w->cfg.shutdown_grace_ms;
    sbx_kafka_hold(w->kafka, 1);
    sbx__jobs_shutdown(w, 0);
}

/* --help was asked: sbx_daemon_settings() returns 0 for it as for
 * --check-config, and only the latter goes on to the service checks. */
static int asked_help;

static int load_config(void *cfg, int argc, char **argv, FILE *err)
{
    int rc = sbx_config_load(cfg, argc, argv, err);
    asked_help = rc == 2;
    return rc;
}

static void print_config(const void *cfg, FILE *out) { sbx_config_print(cfg, out); }

int main(int argc, char **argv)
{
    sbx_worker w;
    sbx_daemon d;
    sbx_kafka_config kc;
    sbx_kafka_settings ks;
    char err[512], redis_shown[1024], db_shown[1024];
    int rc, status = 1, check_only = 0;
    sbx_timer cron_t;
    sbx_admin *admin = NULL;
    sbx_previews *previews = NULL;

    memset(&w, 0, sizeof(w));
    for (int i = 1; i < argc; i++)
        check_only |= strcmp(argv[i], "--check-config") == 0;
    rc = sbx_daemon_settings(argc, argv, &w.cfg, load_config, print_config);
    if (rc == 0 && check_only && !asked_help)
        return sbx__check_services(&w.cfg, stdout) ? 1 : 0;
    if (rc != SBX_DAEMON_RUN)
        return rc;
    if (sbx_daemon_start(&d, "sbx-worker", "worker", on_stop, &w) != 0)
        return 1;
    w.loop = d.loop;
    sbx_timer_init(&cron_t, cron, &w);
    sbx_log_redact(w.cfg.redis_url, redis_shown, sizeof(redis_shown));
    sbx_log_redact(w.cfg.database_url, db_shown, sizeof(db_shown));
    sbx_info("worker", "starting %s: brokers=%s kafka_security=%s%s%s topic=%s group=%s redis=%s "
             "db=%s provider=%s", w.cfg.worker_id, w.cfg.brokers, w.cfg.kafka_security_protocol,
             *w.cfg.kafka_sasl_mechanism ? "/" : "", w.cfg.kafka_sasl_mechanism, w.cfg.topic,
             w.cfg.group, redis_shown, db_shown, w.cfg.provider);

    rc = sbx__provider_new(&w, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "sbx-worker: %s\n", err);
        status = 2;
        goto out;
    }
    if (w.cfg.preview_listen[0]) {
        sbx_previews_cfg pc = {w.loop, w.cfg.preview_listen, w.cfg.preview_public_host,
                               w.cfg.preview_port_min, w.cfg.preview_port_max,
                               w.cfg.preview_secret, 0};
        rc = sbx_previews_new(&pc, &previews, err, sizeof(err));
        if (rc) {
            fprintf(stderr, "sbx-worker: SBX_PREVIEW_LISTEN / SBX_PREVIEW_PORTS: %s\n", err);
            status = 2;
            goto out;
        }
        for (int i = 0; i < w.nprov; i++)
            w.provs[i]->previews = previews;
    }
    for (int i = 0; i < w.nprov && w.cfg.warm > 0; i++) {
        if (w.provs[i]->ops->warm)
            w.provs[i]->ops->warm(w.provs[i], w.cfg.warm);
        else
            sbx_warn("worker", "SBX_WARM=%d: provider %s keeps no warm pool; ignored",
                     w.cfg.warm, w.provs[i]->ops->name);
    }
    if (sbx_daemon_redis(&d, w.cfg.redis_url, on_redis_state, &w, &w.redis) != 0) {
        status = 2;
        goto out;
    }
    if (sbx_leases_new(w.redis, &w.leases) != 0 ||
        sbx_db_new(w.loop, w.cfg.database_url, NULL, NULL, &w.db) != 0) {
        fprintf(stderr, "sbx-worker: out of memory\n");
        goto out;
    }
    if (sbx_redis_connected(w.redis))
        on_redis_state(&w, 1);
    sbx_db_listen(w.db, "sbx_cancel", on_cancel_notify, &w);
    if (w.cfg.retention_s > 0 && sbx_prune_new(w.loop, w.db, w.cfg.retention_s, SBX_PRUNE_BATCH,
                                               SBX_PRUNE_PAUSE_MS, &w.prune) != 0) {
        fprintf(stderr, "sbx-worker: out of memory\n");
        goto out;
    }
    if (w.cfg.dlq_retention_s > 0 &&
        sbx_prune_new_table(w.loop, w.db, SBX_PRUNE_DEAD_LETTERS, w.cfg.dlq_retention_s,
                            SBX_PRUNE_BATCH, SBX_PRUNE_PAUSE_MS, &w.prune_dlq) != 0) {
        fprintf(stderr, "sbx-worker: out of memory\n");
        goto out;
    }

    record_prices(&w);
    for (int i = 0; i < w.nprov; i++) {
        sbx_sessions_cfg sc = {w.loop, w.db, w.leases, w.redis, w.provs[i],
                               w.provs[i]->ops->name, w.cfg.worker_id, w.cfg.lease_ttl_ms};
        if (sbx_sessions_new(&sc, &w.sessions[i]) != 0) {
            fprintf(stderr, "sbx-worker: out of memory\n");
            goto out;
        }
    }

    if (sbx__config_kafka_settings(&w.cfg, &ks, err, sizeof(err)) != 0) {
        fprintf(stderr, "sbx-worker: %s\n", err);
        status = 2;
        goto out;
    }
    memset(&kc, 0, sizeof(kc));
    kc.brokers = w.cfg.brokers;
    kc.topic = w.cfg.topic;
    kc.dlq_topic = w.cfg.dlq_topic;
    kc.group = w.cfg.group;
    kc.client_id = w.cfg.worker_id;
    kc.session_timeout_ms = w.cfg.session_timeout_ms;
    kc.max_inflight = w.cfg.max_inflight;
    kc.join_later = 1;
    kc.extra = ks.kv;
    rc = sbx_kafka_new(w.loop, &kc, on_message, &w, &w.kafka, err, sizeof(err));
    /* librdkafka holds its own copy of the password now. */
    sbx__config_kafka_settings_wipe(&ks);
    if (rc) {
        fprintf(stderr, "sbx-worker: SBX_BROKERS / SBX_KAFKA_CONF: %s\n", err);
        status = 2;
        goto out;
    }
    if (sbx__deps_new(&w, &w.deps) != 0) {
        fprintf(stderr, "sbx-worker: out of memory\n");
        goto out;
    }

    if (w.cfg.admin_listen[0]) {
        rc = sbx_admin_new(&w, w.cfg.admin_listen, &admin, err, sizeof(err));
        if (rc) {
            fprintf(stderr, "sbx-worker: %s\n", err);
            status = 2;
            goto out;
        }
    }
    sbx_timer_start(w.loop, &cron_t, 1000);
    sbx_loop_before_sleep(w.loop, before_sleep, &w);

    rc = sbx_daemon_run(&d);
    log_stats(&w, "exit");
    status = rc || sbx__deps_state(w.deps) == SBX_DEPS_FAILED ? 1 : 0;
out:
    sbx_admin_free(admin);
    sbx__deps_free(w.deps);
    sbx_timer_stop(w.loop, &cron_t);
    for (int i = 0; i < w.nprov; i++)
        w.provs[i]->ops->destroy(w.provs[i]);
    w.nprov = 0;
    sbx_previews_free(previews);
    sbx_kafka_close(w.kafka);
    sbx_redis_free(w.redis);
    sbx_db_free(w.db);
    for (int i = 0; i < SBX_PROVIDERS_MAX; i++)
        sbx_sessions_free(w.sessions[i]); /* after redis and db: no callback of theirs is left */
    sbx__runlog_free_all(&w.runlogs);
    sbx_prune_free(w.prune);
    sbx_prune_free(w.prune_dlq);
    sbx__dead_letters_free(&w);
    sbx__jobs_abandon(&w);
    sbx_leases_free(w.leases);
    sbx_daemon_end(&d);
    return status;
}
