/* session.c — the session sweeper: idle sessions are paused, then ended.
 *
 * A session (migrations/0010_sessions.sql) keeps its sandbox on one slot
 * between its jobs; its jobs move it busy <-> idle through the trigger on
 * sbx.runs, with no code here. What no job does is the idle end of its
 * life: past pause_after_s its sandbox is paused (where the provider can),
 * past idle_timeout_s, max_lifetime_s or `sbx session stop` it is destroyed
 * and the slot freed. Every worker runs this sweeper for its own provider,
 * once a second from the cron (main.c); a pass works through what
 * sbx.sessions_due() returns, one session after the other:
 *
 *   LEASING    acquire "!<name>": the session's own slot, under the
 *              project's one lease, with a token newer than its last job's
 *              (BUSY: a job or another sweeper has it, or it is another
 *              pool's: skip; GONE: Redis keeps no slot for it, so there is
 *              no sandbox to touch: straight to PARKING with GONE's token)
 *   OP         provider->session_op(PAUSE | DESTROY) with that token
 *   RELEASING  release; after a DESTROY with mode "end", so the slot is free
 *   PARKING    sbx.park_session(token): paused / ended, fenced: a job that
 *              claimed the session meanwhile holds a newer token and the
 *              write changes nothing (that job resumes a paused sandbox, or
 *              finds none and makes a new one)
 *
 * Why this order: the slot is given back before the row says ended, so a
 * worker that dies in between leaves a row still due, which the next pass
 * ends with GONE's token; the other order would leave a slot kept for a
 * session the row says ended, which nothing would ever free.
 *
 * Failures: a provider that cannot pause (-ENOTSUP) is not asked again by
 * this worker (its idle sessions wait for their end); any other failure is
 * logged and the session is simply still due at the next pass.
 *
 * Reconciliation. A row ended by anything but this sweeper (a hand-written
 * UPDATE, park_session called from outside, a restore of the database)
 * would leave its slot kept in Redis forever, and its sandbox alive: the
 * pool shrinks by one for good. So every RECONCILE_MS a pass reads a page
 * of {sbx}:kept instead (HSCAN, RECONCILE_PAGE at a time, the cursor kept
 * between passes) and asks PostgreSQL which of those slots no live session
 * row names. Each such slot goes through LEASING, OP (DESTROY) and
 * RELEASING (mode "end") like an ended session, without PARKING: there is
 * no row to write. The lease is what makes this safe: a job of the session
 * holds it from before its claim (which writes the slot on the row) until
 * its release, so a slot between those steps answers BUSY and is left; and
 * a slot of another provider's pool answers BUSY too (acquire.lua).
 */
#include "session.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rkeys.h"
#include "sbx.h"
#include "sbx_sha256.h"

/* Sessions per pass: a pass is sequential and a pause or destroy takes up to
 * a provider call (a second on Fly), so a small batch keeps a pass short;
 * the next pass takes the rest a second later. */
#define PASS_MAX 16
/* How often a pass reconciles {sbx}:kept with sbx.sessions, and how many
 * entries of it one such pass reads. */
#define RECONCILE_MS 10000
#define RECONCILE_PAGE "64"

typedef enum sstate { S_LEASING, S_OP, S_RELEASING, S_PARKING, S_DONE } sstate;

static const char *const sstate_names[] = {"leasing", "op", "releasing", "parking", "done"};

typedef struct item {
    sbx_sessions *s;
    sstate st;
    char project[SBX_ID_MAX + 1], sid[SBX_ID_MAX + 1];
    char name[SBX_SESSION_NAME_MAX + 1];
    char slot[SBX_LEASE_SLOT_MAX + 1];
    char reason[16];
    sbx_session_op op;
    int64_t token;
    int then_park;            /* RELEASING: the op was done, PARKING follows */
    int orphan;               /* a kept slot no live row names: no PARKING */
} item;

struct sbx_sessions {
    sbx_sessions_cfg cfg;
    char *slots;              /* the slots we serve as a text[] literal; NULL: any */
    int pause_ok;             /* 0 once the provider said it cannot pause */
    int busy;                 /* a pass is under way */
    int n, cur;               /* the pass's items, the one in hand */
    item items[PASS_MAX];
    sbx_timer next;           /* the next item, from the loop */
    sbx_sessions_stats st;
    uint64_t reconciled_ms;   /* when the last reconciliation began */
    char cursor[24];          /* HSCAN's cursor over {sbx}:kept ("0": from the start) */
};

void sbx__session_name(const char *project, const char *session_id,
                       char out[SBX_SESSION_NAME_MAX + 1])
{
    char key[2 * SBX_ID_MAX + 2], hex[65];
    size_t pl = strlen(project), sl = strlen(session_id);
    /* A NUL between the two: no project/session pair spells another's. */
    memcpy(key, project, pl);
    key[pl] = '\0';
    memcpy(key + pl + 1, session_id, sl);
    sbx__sha256_hex(key, pl + 1 + sl, hex);
    snprintf(out, SBX_SESSION_NAME_MAX + 1, "s-%.32s", hex);
}

static void move(item *it, sstate to)
{
    sbx_debug("session", "session %s/%s (%s): %s -> %s", it->project, it->sid, it->name,
              sstate_names[it->st], sstate_names[to]);
    it->st = to;
}

/* The item is over; the pass goes on with the next one from the loop. */
static void finish(item *it)
{
    sbx_sessions *s = it->s;
    move(it, S_DONE);
    s->cur++;
    sbx_timer_start(s->cfg.loop, &s->next, 0);
}

static void on_parked(void *arg, PGresult *res, const char *err)
{
    item *it = arg;
    const char *to = it->op == SBX_SESSION_PAUSE ? "paused" : "ended";
    if (!res || PQntuples(res) != 1) {
        sbx_warn("session", "session %s/%s: recording it %s failed: %s", it->project, it->sid,
                 to, err ? err : "no row");
        it->s->st.failed++;
    } else if (strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
        sbx_info("session", "session %s/%s %s (%s) on %s", it->project, it->sid, to, it->reason,
                 it->slot[0] ? it->slot : "no slot");
        if (it->op == SBX_SESSION_PAUSE)
            it->s->st.paused++;
        else
            it->s->st.ended++;
    } else {
        sbx_info("session", "session %s/%s: not %s, a job took it meanwhile", it->project,
                 it->sid, to);
    }
    finish(it);
}

static void park(item *it)
{
    char tok[24];
    const char *p[6];
    snprintf(tok, sizeof(tok), "%" PRId64, it->token);
    p[0] = it->project;
    p[1] = it->sid;
    p[2] = tok;
    p[3] = it->op == SBX_SESSION_PAUSE ? "paused" : "ended";
    p[4] = it->reason;
    p[5] = it->s->cfg.worker_id;
    move(it, S_PARKING);
    if (sbx_db_query(it->s->cfg.db, "SELECT sbx.park_session($1,$2,$3,$4,$5,$6)", 6, p,
                     on_parked, it) != 0) {
        it->s->st.failed++;
        finish(it);
    }
}

static void on_released(void *arg, const sbx_lease_reply *rep)
{
    item *it = arg;
    if (rep->status != SBX_LEASE_OK)
        sbx_warn("session", "session %s/%s: releasing %s: %s", it->project, it->sid, it->slot,
                 rep->error ? rep->error : "lease lost");
    if (it->orphan && it->then_park && rep->status == SBX_LEASE_OK) {
        sbx_info("session", "slot %s was kept for %s, whose session is over: sandbox destroyed, "
                 "slot freed", it->slot, it->name);
        it->s->st.ended++;
    }
    /* A failed op leaves the row as it was: due again at the next pass. */
    if (it->then_park && rep->status == SBX_LEASE_OK && !it->orphan)
        park(it);
    else
        finish(it);
}

static void release(item *it, int end, int then_park)
{
    move(it, S_RELEASING);
    it->then_park = then_park;
    /* Redis down: the lease expires by itself; the session is due again. */
    if (sbx_lease_release_session(it->s->cfg.leases, it->slot, it->token, end, on_released,
                                  it) != 0)
        finish(it);
}

static void on_op(void *arg, int rc, const char *why)
{
    item *it = arg;
    sbx_sessions *s = it->s;
    if (rc == -ENOTSUP && it->op == SBX_SESSION_PAUSE) {
        sbx_info("session", "provider %s cannot pause sessions: idle ones wait for their end",
                 s->cfg.provider);
        s->pause_ok = 0;
        release(it, 0, 0);
        return;
    }
    if (rc != 0) {
        sbx_warn("session", "session %s/%s: %s on %s failed: %s", it->project, it->sid,
                 it->op == SBX_SESSION_PAUSE ? "pause" : "destroy", it->slot,
                 why && *why ? why : strerror(rc < 0 ? -rc : rc));
        s->st.failed++;
        release(it, 0, 0);
        return;
    }
    release(it, it->op == SBX_SESSION_DESTROY, 1);
}

static void on_leased(void *arg, const sbx_lease_reply *rep)
{
    item *it = arg;
    sbx_sessions *s = it->s;
    int rc;

    if (rep->status == SBX_LEASE_GONE && it->orphan) {
        finish(it); /* freed meanwhile */
        return;
    }
    if (rep->status == SBX_LEASE_GONE) {
        /* No slot kept: there is no sandbox of it anywhere to pause or
         * destroy. An idle row without one is over. */
        it->token = rep->token;
        it->op = SBX_SESSION_DESTROY;
        if (strcmp(it->reason, "idle") == 0)
            snprintf(it->reason, sizeof(it->reason), "%s", "no_sandbox");
        park(it);
        return;
    }
    if (rep->status != SBX_LEASE_OK) {
        finish(it); /* a job or another sweeper has it: due again later */
        return;
    }
    it->token = rep->token;
    snprintf(it->slot, sizeof(it->slot), "%s", rep->slot);
    move(it, S_OP);
    if (!s->cfg.prov->ops->session_op) {
        on_op(it, it->op == SBX_SESSION_PAUSE ? -ENOTSUP : 0, NULL);
        return;
    }
    rc = s->cfg.prov->ops->session_op(s->cfg.prov, it->op, it->slot, it->name, it->token, on_op,
                                      it);
    if (rc)
        on_op(it, rc, "could not ask the provider");
}

static void step(item *it)
{
    sbx_sessions *s = it->s;
    char job[SBX_SESSION_NAME_MAX + 16], sweeper[SBX_SESSION_NAME_MAX + 2];
    snprintf(job, sizeof(job), "session:%s", it->name);
    snprintf(sweeper, sizeof(sweeper), "!%s", it->name);
    if (sbx_lease_acquire_session(s->cfg.leases, s->cfg.prov->ops->pool(s->cfg.prov),
                                  it->project, job, s->cfg.worker_id, s->cfg.lease_ttl_ms, 0,
                                  sweeper, on_leased, it) != 0)
        finish(it);
}

/* The slots of the page that no live session row names: orphans. */
static void on_orphans(void *arg, PGresult *res, const char *err)
{
    sbx_sessions *s = arg;
    s->n = 0;
    s->cur = 0;
    if (!res) {
        sbx_debug("session", "reconciling kept slots: %s", err ? err : "no result");
        s->busy = 0;
        return;
    }
    for (int i = 0; i < PQntuples(res) && s->n < PASS_MAX; i++) {
        item *it = &s->items[s->n++];
        memset(it, 0, sizeof(*it));
        it->s = s;
        it->orphan = 1;
        it->op = SBX_SESSION_DESTROY;
        snprintf(it->slot, sizeof(it->slot), "%s", PQgetvalue(res, i, 0));
        snprintf(it->name, sizeof(it->name), "%s", PQgetvalue(res, i, 1));
        /* The lease's project: the row (and so the project) may be gone. */
        snprintf(it->project, sizeof(it->project), "kept:%s", PQgetvalue(res, i, 1));
        snprintf(it->sid, sizeof(it->sid), "%s", PQgetvalue(res, i, 1));
        snprintf(it->reason, sizeof(it->reason), "%s", "reconciled");
    }
    if (s->n == 0) {
        s->busy = 0;
        return;
    }
    step(&s->items[0]);
}

static int text_array(const char *const *ids, size_t n, char **out);

/* Entries of one page of {sbx}:kept looked at: a page is a hint to Redis
 * (COUNT), so this caps it; entries past it wait for the next round. */
#define KEPT_PAGE_MAX 256

static void on_kept(void *arg, redisReply *rep)
{
    sbx_sessions *s = arg;
    const char *slots[KEPT_PAGE_MAX], *names[KEPT_PAGE_MAX];
    char *p[2] = {NULL, NULL};
    size_t n = 0;
    redisReply *kv;

    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_ARRAY) {
        s->busy = 0;
        return;
    }
    snprintf(s->cursor, sizeof(s->cursor), "%s", rep->element[0]->str);
    kv = rep->element[1];
    for (size_t i = 0; i + 1 < kv->elements && n < KEPT_PAGE_MAX; i += 2) {
        if (kv->element[i]->type != REDIS_REPLY_STRING ||
            kv->element[i + 1]->type != REDIS_REPLY_STRING)
            continue;
        slots[n] = kv->element[i]->str;
        names[n++] = kv->element[i + 1]->str;
    }
    if (text_array(slots, n, &p[0]) != 0 || text_array(names, n, &p[1]) != 0 || !p[0] ||
        sbx_db_query(s->cfg.db,
                     "SELECT k.slot, k.name FROM unnest($1::text[], $2::text[]) AS k(slot, name)"
                     " WHERE NOT EXISTS (SELECT 1 FROM sbx.sessions x WHERE x.slot = k.slot"
                     " AND x.state <> 'ended')",
                     2, (const char *const *)p, on_orphans, s) != 0)
        s->busy = 0;
    free(p[0]);
    free(p[1]);
}

/* One page of {sbx}:kept; 0 when it was asked. */
static int reconcile(sbx_sessions *s)
{
    const char *argv[6] = {"HSCAN", SBX_RKEY_KEPT, s->cursor, "COUNT", RECONCILE_PAGE, NULL};
    if (!s->cfg.redis)
        return -1;
    return sbx_redis_cmd(s->cfg.redis, on_kept, s, 5, argv, NULL);
}

static void on_next(sbx_timer *t)
{
    sbx_sessions *s = t->data;
    if (s->cur >= s->n) {
        s->busy = 0;
        return;
    }
    step(&s->items[s->cur]);
}

static void on_due(void *arg, PGresult *res, const char *err)
{
    sbx_sessions *s = arg;
    int rows;
    if (!res) {
        /* Before `sbx migrate` 0010, or the database is away: quietly later. */
        sbx_debug("session", "sessions_due: %s", err ? err : "no result");
        s->busy = 0;
        return;
    }
    rows = PQntuples(res);
    s->n = 0;
    s->cur = 0;
    for (int i = 0; i < rows && s->n < PASS_MAX; i++) {
        item *it = &s->items[s->n++];
        memset(it, 0, sizeof(*it));
        it->s = s;
        snprintf(it->project, sizeof(it->project), "%s", PQgetvalue(res, i, 0));
        snprintf(it->sid, sizeof(it->sid), "%s", PQgetvalue(res, i, 1));
        it->op = strcmp(PQgetvalue(res, i, 3), "pause") == 0 ? SBX_SESSION_PAUSE
                                                             : SBX_SESSION_DESTROY;
        snprintf(it->reason, sizeof(it->reason), "%s", PQgetvalue(res, i, 4));
        sbx__session_name(it->project, it->sid, it->name);
    }
    if (s->n == 0) {
        s->busy = 0;
        return;
    }
    step(&s->items[0]);
}

void sbx_sessions_pass(sbx_sessions *s)
{
    char lim[8];
    const char *p[4];
    /* A provider without sessions has none to end (its jobs that name one
     * fail before a sandbox exists). */
    if (s->busy || !s->cfg.prov->ops->session_op)
        return;
    if (sbx_now_ms() - s->reconciled_ms >= RECONCILE_MS) {
        s->reconciled_ms = sbx_now_ms();
        if (reconcile(s) == 0) {
            s->busy = 1;
            return;
        }
    }
    snprintf(lim, sizeof(lim), "%d", PASS_MAX);
    p[0] = s->cfg.provider;
    p[1] = s->pause_ok ? "true" : "false";
    p[2] = lim;
    p[3] = s->slots;
    if (sbx_db_query(s->cfg.db,
                     "SELECT project_id, session_id, slot, op, reason"
                     " FROM sbx.sessions_due($1, $2::boolean, $3::integer, $4::text[])",
                     4, p, on_due, s) == 0)
        s->busy = 1;
}

/* ids as a PostgreSQL text[] literal, each element quoted ("a","b#1");
 * NULL when n is 0. */
static int text_array(const char *const *ids, size_t n, char **out)
{
    size_t len = 3;
    char *lit, *w;
    *out = NULL;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        len += 2 * strlen(ids[i]) + 3;
    if (!(lit = w = malloc(len)))
        return -ENOMEM;
    *w++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *w++ = ',';
        *w++ = '"';
        for (const char *c = ids[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                *w++ = '\\';
            *w++ = *c;
        }
        *w++ = '"';
    }
    *w++ = '}';
    *w = '\0';
    *out = lit;
    return 0;
}

/* The provider's slots as a text[] literal; NULL when it offers none
 * (vmpool: any slot of the pool). */
static int slots_literal(sbx_provider *prov, char **out)
{
    const char **ids;
    size_t n = prov->ops->slots(prov, &ids);
    return text_array(ids, n, out);
}

int sbx_sessions_new(const sbx_sessions_cfg *cfg, sbx_sessions **out)
{
    sbx_sessions *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = *cfg;
    s->pause_ok = cfg->prov->ops->session_op != NULL;
    snprintf(s->cursor, sizeof(s->cursor), "0");
    sbx_timer_init(&s->next, on_next, s);
    if (slots_literal(cfg->prov, &s->slots) != 0) {
        free(s);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

void sbx_sessions_add_stats(const sbx_sessions *s, sbx_sessions_stats *out)
{
    out->paused += s->st.paused;
    out->ended += s->st.ended;
    out->failed += s->st.failed;
}

void sbx_sessions_free(sbx_sessions *s)
{
    if (!s)
        return;
    sbx_timer_stop(s->cfg.loop, &s->next);
    free(s->slots);
    free(s);
}
