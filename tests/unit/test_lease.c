/* test_lease.c — the lease scripts against a real redis-server: one build per
 * project, tokens only grow, a lost token cannot renew or release, expired
 * leases are reaped and their slots come back, a Redis restart is survived. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lease.h"
#include "rkeys.h"
#include "svc.h"

static test_redis srv;
static sbx_loop *L;
static sbx_redis *R, *R2;
static sbx_leases *LS, *LS2;   /* two workers, each its own connection */
static volatile int got;
static sbx_lease_reply last;
static char last_slot[192];
static volatile int connected;

static void on_state(void *arg, int up) { (void)arg; connected = up; }

static void on_rep(void *arg, const sbx_lease_reply *rep)
{
    (void)arg;
    last = *rep;
    snprintf(last_slot, sizeof(last_slot), "%s", rep->slot);
    got = 1;
}

#define CALL(expr)                                   \
    do {                                             \
        got = 0;                                     \
        assert_int_equal((expr), 0);                 \
        assert_true(test_run_until(L, &got, 5000));  \
    } while (0)

static int setup(void **state)
{
    char url[64], err[128];
    (void)state;
    if (test_redis_start(&srv) != 0)
        return -1;
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", srv.port);
    sbx_loop_new(&L);
    connected = 0;
    if (sbx_redis_new(L, url, on_state, NULL, &R, err, sizeof(err)) != 0)
        return -1;
    test_run_until(L, &connected, 5000);
    if (!connected || sbx_redis_new(L, url, NULL, NULL, &R2, err, sizeof(err)) != 0)
        return -1;
    for (int i = 0; i < 250 && !sbx_redis_connected(R2); i++)
        sbx_loop_once(L, 20);
    sbx_leases_new(R, &LS);
    sbx_leases_new(R2, &LS2);
    return sbx_redis_connected(R2) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    sbx_leases_free(LS);
    sbx_leases_free(LS2);
    sbx_redis_free(R);
    sbx_redis_free(R2);
    sbx_loop_free(L);
    test_redis_stop(&srv);
    return 0;
}

static void renew(const char *pool, const char *slot, const char *project, const char *job,
                  int64_t token, int64_t ttl)
{
    sbx_lease_id id = {pool, slot, project, job, "w", token};
    CALL(sbx_lease_renew(LS, &id, ttl, on_rep, NULL));
}

/* Registers slots pool/0 .. pool/n-1 (n at most REG_MAX). */
enum { REG_MAX = 150 };
static void reg(const char *pool, int n)
{
    static char buf[REG_MAX][32];
    static const char *ids[REG_MAX];
    for (int i = 0; i < n; i++) {
        snprintf(buf[i], sizeof(buf[i]), "%s/%d", pool, i);
        ids[i] = buf[i];
    }
    CALL(sbx_lease_register(LS, pool, "t", ids, n, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
}

static void test_one_build_per_project_and_tokens_grow(void **state)
{
    int64_t t1, t2;
    char s1[192];
    (void)state;
    reg("p1", 2);
    CALL(sbx_lease_acquire(LS, "p1", "projA", "job1", "w1", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    t1 = last.token;
    snprintf(s1, sizeof(s1), "%s", last_slot);
    CALL(sbx_lease_acquire(LS2, "p1", "projA", "job2", "w2", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_BUSY);
    CALL(sbx_lease_acquire(LS2, "p1", "projA", "job1", "w2", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_HELD);
    assert_true(last.ttl_left_ms > 5000);
    CALL(sbx_lease_acquire(LS, "p1", "projB", "job3", "w1", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    t2 = last.token;
    assert_true(t2 > t1);
    CALL(sbx_lease_acquire(LS, "p1", "projC", "job4", "w1", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_NOCAP);
    /* A stale token can neither renew nor release. */
    renew("p1", s1, "projA", "job1", t1 + 1000, 10000);
    assert_int_equal(last.status, SBX_LEASE_LOST);
    CALL(sbx_lease_release(LS, s1, t1 - 1, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_LOST);
    renew("p1", s1, "projA", "job1", t1, 10000);
    assert_int_equal(last.status, SBX_LEASE_OK);
    CALL(sbx_lease_release(LS, s1, t1, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    /* The project is free again and the slot is back. */
    CALL(sbx_lease_acquire(LS, "p1", "projA", "job2", "w2", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_true(last.token > t2);
}

/* A session keeps its slot between its jobs: nobody else gets it, its
 * next job does, so does its sweeper; release "end" frees it, after which
 * the sweeper hears GONE (with a fresh token) and a new job of the session
 * takes any free slot. An expired session lease keeps the slot too, and
 * re-registering the pool does not free it. */
static void test_session_keeps_its_slot(void **state)
{
    int64_t t1, t;
    char s1[192];
    (void)state;
    reg("ps", 1);
    CALL(sbx_lease_acquire_session(LS, "ps", "projS", "j1", "w", 10000, 0, "s-aa", on_rep,
                                   NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    t1 = last.token;
    snprintf(s1, sizeof(s1), "%s", last_slot);
    CALL(sbx_lease_release(LS, s1, t1, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    /* Kept: another project finds no capacity, even after a re-registration. */
    reg("ps", 1);
    CALL(sbx_lease_acquire(LS, "ps", "projKept", "jx", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_NOCAP);
    /* Its next job gets that very slot; a sweeper meanwhile is told BUSY. */
    CALL(sbx_lease_acquire_session(LS, "ps", "projS", "j2", "w", 300, 0, "s-aa", on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last_slot, s1);
    assert_true(last.token > t1);
    CALL(sbx_lease_acquire_session(LS2, "ps", "projS", "session:s-aa", "w2", 10000, 0, "!s-aa",
                                   on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_BUSY);
    /* The job's worker dies: its lease expires and is reaped, the slot stays kept. */
    usleep(400 * 1000);
    CALL(sbx_lease_acquire(LS2, "ps", "projKept", "jx", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_NOCAP);
    /* Another pool's sweeper leaves it alone. */
    CALL(sbx_lease_acquire_session(LS2, "elsewhere", "projS", "session:s-aa", "w2", 10000, 0,
                                   "!s-aa", on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_BUSY);
    CALL(sbx_lease_acquire_session(LS2, "ps", "projS", "session:s-aa", "w2", 10000, 0, "!s-aa",
                                   on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last_slot, s1);
    t = last.token;
    CALL(sbx_lease_release_session(LS2, s1, t, 1, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    CALL(sbx_lease_acquire_session(LS2, "ps", "projS", "session:s-aa", "w2", 10000, 0, "!s-aa",
                                   on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_GONE);
    assert_true(last.token > t);
    /* Free for anyone again. */
    CALL(sbx_lease_acquire(LS, "ps", "projKept", "jx", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last_slot, s1);
}

/* Spill-over: with several pools, comma-separated, the first with a free
 * slot gives it and the reply names that pool; NOCAP only when all are
 * full. A session's later jobs go back to its pool even when an earlier
 * pool has room again, and a job that may not use the session's pool drops
 * the binding (the slot goes back to its own pool). */
static void test_pools_in_order_spill_over(void **state)
{
    int64_t ta;
    char sa[192], sb[192];
    (void)state;
    reg("sp-a", 1);
    reg("sp-b", 2);
    CALL(sbx_lease_acquire(LS, "sp-a,sp-b", "spA", "ja", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last.pool, "sp-a");
    assert_string_equal(last_slot, "sp-a/0");
    ta = last.token;
    snprintf(sa, sizeof(sa), "%s", last_slot);
    CALL(sbx_lease_acquire_session(LS, "sp-a,sp-b", "spB", "jb", "w", 10000, 0, "s-sp", on_rep,
                                   NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last.pool, "sp-b");
    snprintf(sb, sizeof(sb), "%s", last_slot);
    CALL(sbx_lease_release(LS, sb, last.token, on_rep, NULL));
    CALL(sbx_lease_acquire(LS, "sp-a,sp-b", "spC", "jc", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last.pool, "sp-b");
    assert_string_not_equal(last_slot, sb); /* kept for the session */
    CALL(sbx_lease_acquire(LS, "sp-a,sp-b", "spD", "jd", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_NOCAP);
    /* sp-a frees; the session's next job still goes to its slot in sp-b. */
    CALL(sbx_lease_release(LS, sa, ta, on_rep, NULL));
    CALL(sbx_lease_acquire_session(LS, "sp-a,sp-b", "spB", "jb2", "w", 10000, 0, "s-sp", on_rep,
                                   NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last.pool, "sp-b");
    assert_string_equal(last_slot, sb);
    CALL(sbx_lease_release(LS, sb, last.token, on_rep, NULL));
    /* A job of the session that may use sp-a only: a new slot there, and
     * the old one is free again for anyone. */
    CALL(sbx_lease_acquire_session(LS, "sp-a", "spB", "jb3", "w", 10000, 0, "s-sp", on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last.pool, "sp-a");
    CALL(sbx_lease_acquire(LS, "sp-b", "spD", "jd", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last_slot, sb);
}

static void test_expired_lease_is_reaped(void **state)
{
    int64_t t;
    char s[192];
    struct timespec ts = {0, 400 * 1000000};
    (void)state;
    reg("p2", 1);
    CALL(sbx_lease_acquire(LS, "p2", "projX", "jobX", "dead-worker", 300, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    t = last.token;
    snprintf(s, sizeof(s), "%s", last_slot);
    nanosleep(&ts, NULL);
    /* The dead worker's renew is refused once expired... */
    renew("p2", s, "projX", "jobX", t, 300);
    assert_int_equal(last.status, SBX_LEASE_LOST);
    /* ...and the next acquire reaps it and takes the slot with a newer token. */
    CALL(sbx_lease_acquire(LS, "p2", "projX", "jobX", "w2", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_int_equal(last.reaped, 1);
    assert_string_equal(last_slot, s);
    assert_true(last.token > t);
    /* The old owner's release is refused: it cannot free the new lease. */
    CALL(sbx_lease_release(LS, s, t, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_LOST);
}

static void test_register_many_slots_in_chunks(void **state)
{
    enum { N = 1000 };
    static char buf[N][32];
    static const char *ids[N];
    (void)state;
    for (int i = 0; i < N; i++) {
        snprintf(buf[i], sizeof(buf[i]), "big/%d", i);
        ids[i] = buf[i];
    }
    CALL(sbx_lease_register(LS, "big", "t", ids, N, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    for (int i = 0; i < N; i++) {
        char proj[16];
        snprintf(proj, sizeof(proj), "bp%d", i);
        CALL(sbx_lease_acquire(LS, "big", proj, proj, "w", 10000, 0, on_rep, NULL));
        assert_int_equal(last.status, SBX_LEASE_OK);
    }
    CALL(sbx_lease_acquire(LS, "big", "one-more", "one-more", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_NOCAP);
    /* Registering fewer drops the rest, in one chunk too. */
    CALL(sbx_lease_register(LS, "big", "t", ids, 10, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
}

static void test_register_shrinks_pool(void **state)
{
    (void)state;
    reg("p3", 3);
    reg("p3", 1);
    CALL(sbx_lease_acquire(LS, "p3", "a", "j-a", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last_slot, "p3/0");
    CALL(sbx_lease_acquire(LS, "p3", "b", "j-b", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_NOCAP);
}

static volatile int cmd_done;
static void on_cmd(void *arg, redisReply *rep) { (void)arg; (void)rep; cmd_done = 1; }

static void redis_do(const char *a0, const char *a1, const char *a2, const char *a3,
                     const char *a4, const char *a5)
{
    const char *argv[6] = {a0, a1, a2, a3, a4, a5};
    size_t lens[6];
    int n = 0;
    while (n < 6 && argv[n]) {
        lens[n] = strlen(argv[n]);
        n++;
    }
    cmd_done = 0;
    assert_int_equal(sbx_redis_cmd(R, on_cmd, NULL, n, argv, lens), 0);
    assert_true(test_run_until(L, &cmd_done, 5000));
}

static void test_vm_without_heartbeat_is_never_handed_out(void **state)
{
    const char *ids[2] = {"vm-dead", "vm-live"};
    (void)state;
    /* Heartbeats in Redis server time: one from 1970, one far in the future. */
    redis_do("HSET", "{sbx}:vm:vm-dead", "heartbeat_ms", "1000", "ttl_ms", "90000");
    redis_do("HSET", "{sbx}:vm:vm-live", "heartbeat_ms", "99999999999999", "ttl_ms", "90000");
    CALL(sbx_lease_register(LS, "vmp", "t", ids, 2, on_rep, NULL));
    for (int i = 0; i < 2; i++) {
        char proj[16];
        snprintf(proj, sizeof(proj), "vp%d", i);
        CALL(sbx_lease_acquire(LS, "vmp", proj, proj, "w", 10000, 0, on_rep, NULL));
        if (i == 0) {
            assert_int_equal(last.status, SBX_LEASE_OK);
            assert_string_equal(last_slot, "vm-live");
        } else {
            assert_int_equal(last.status, SBX_LEASE_NOCAP);
        }
    }
}

static void test_renew_restores_a_lease_redis_lost(void **state)
{
    char s1[192];
    int64_t t1;
    const char *ids[2] = {"dl/0", "dl/1"};
    const char *busy[2] = {"!dl/0", "dl/1"};
    (void)state;
    CALL(sbx_lease_register(LS, "dl", "t", ids, 2, on_rep, NULL));
    CALL(sbx_lease_acquire(LS, "dl", "projD", "jobD", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    snprintf(s1, sizeof(s1), "%s", last_slot);
    t1 = last.token;
    /* Redis loses everything (a restart without persistence). */
    redis_do("FLUSHALL", NULL, NULL, NULL, NULL, NULL);
    /* The worker re-registers, marking the slot its build holds busy... */
    busy[0] = strcmp(s1, "dl/0") == 0 ? "!dl/0" : "dl/0";
    busy[1] = strcmp(s1, "dl/1") == 0 ? "!dl/1" : "dl/1";
    CALL(sbx_lease_register(LS, "dl", "t", busy, 2, on_rep, NULL));
    /* ...so the other slot is the only one handed out, */
    CALL(sbx_lease_acquire(LS, "dl", "projE", "jobE", "w2", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_not_equal(last_slot, s1);
    /* and its renewal takes the lease back and lifts the counter above it; */
    renew("dl", s1, "projD", "jobD", t1, 10000);
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_int_equal(last.reaped, 1);
    CALL(sbx_lease_acquire(LS, "dl", "projD", "jobOther", "w3", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_BUSY);
    /* other owners may be taking theirs back too: one ttl without new leases. */
    CALL(sbx_lease_acquire(LS, "dl", "projF", "jobF", "w3", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_QUIET);
    assert_true(last.ttl_left_ms > 9000 && last.ttl_left_ms <= 10000);
    redis_do("DEL", SBX_RKEY_QUIET, NULL, NULL, NULL, NULL); /* the ttl went by */
    CALL(sbx_lease_release(LS, s1, t1, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    CALL(sbx_lease_acquire(LS, "dl", "projF", "jobF", "w3", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_true(last.token > t1);
    /* A lease whose project another holder took meanwhile is lost. */
    redis_do("FLUSHALL", NULL, NULL, NULL, NULL, NULL);
    CALL(sbx_lease_register(LS, "dl", "t", ids, 2, on_rep, NULL));
    CALL(sbx_lease_acquire(LS, "dl", "projD", "jobD2", "w4", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    renew("dl", strcmp(last_slot, "dl/0") == 0 ? "dl/1" : "dl/0", "projD", "jobD", t1, 10000);
    assert_int_equal(last.status, SBX_LEASE_LOST);
    /* The fence floor lifts a counter that fell behind, and holds new
     * leases back for the ttl it is given. */
    CALL(sbx_lease_fence_floor(LS, 900000, 300, on_rep, NULL));
    assert_int_equal(last.reaped, 1);
    CALL(sbx_lease_acquire(LS, "dl", "projG", "jobG", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_QUIET);
    assert_true(last.ttl_left_ms > 0 && last.ttl_left_ms <= 300);
    {
        struct timespec ts = {0, (long)(last.ttl_left_ms + 20) * 1000000L};
        nanosleep(&ts, NULL);
    }
    CALL(sbx_lease_acquire(LS, "dl", "projG", "jobG", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_int_equal(last.token, 900001);
}

/* Redis forgets a running build's lease. A worker that knows a newer token
 * than the counter (another job of the same project, the same job after a
 * rebalance) gets no lease for one ttl, in which the owner's renewal takes
 * its lease back: the project is then busy, not handed out twice. */
/* Redis lost a lease and the worker registered its slot busy; the build
 * ends before its renewal took the lease back. The release finds no lease
 * (LOST), and the slot is free again all the same: before, it stayed out
 * of the pool until the worker registered again (chaos_short, asan). */
static void test_release_after_data_loss_frees_a_marked_slot(void **state)
{
    const char *busy[1] = {"!ml/0"};
    (void)state;
    redis_do("FLUSHALL", NULL, NULL, NULL, NULL, NULL);
    CALL(sbx_lease_register(LS, "ml", "t", busy, 1, on_rep, NULL));
    CALL(sbx_lease_acquire(LS, "ml", "projM", "jobM", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_NOCAP);
    CALL(sbx_lease_release(LS, "ml/0", 77, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_LOST);
    CALL(sbx_lease_acquire(LS, "ml", "projM", "jobM", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_string_equal(last_slot, "ml/0");
    /* A stale release of a slot someone leases changes nothing. */
    CALL(sbx_lease_release(LS, "ml/0", 77, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_LOST);
    CALL(sbx_lease_acquire(LS, "ml", "projN", "jobN", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_NOCAP);
}

static void test_data_loss_holds_new_leases_back(void **state)
{
    char s1[192];
    int64_t t1;
    const char *ids[2] = {"dq/0", "dq/1"};
    (void)state;
    CALL(sbx_lease_register(LS, "dq", "t", ids, 2, on_rep, NULL));
    CALL(sbx_lease_acquire(LS, "dq", "projQ", "jobQ1", "w1", 400, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    snprintf(s1, sizeof(s1), "%s", last_slot);
    t1 = last.token;
    redis_do("FLUSHALL", NULL, NULL, NULL, NULL, NULL);
    CALL(sbx_lease_register(LS, "dq", "t", ids, 2, on_rep, NULL));
    /* A floor above the counter: the loss is seen. */
    CALL(sbx_lease_acquire(LS2, "dq", "projQ", "jobQ2", "w2", 400, t1, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_QUIET);
    assert_true(last.ttl_left_ms > 0 && last.ttl_left_ms <= 400);
    CALL(sbx_lease_acquire(LS, "dq", "projOther", "jobO", "w2", 400, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_QUIET);
    /* The owner renews within the ttl and takes its lease back. */
    renew("dq", s1, "projQ", "jobQ1", t1, 400);
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_int_equal(last.reaped, 1);
    {
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
        renew("dq", s1, "projQ", "jobQ1", t1, 10000);
        assert_int_equal(last.status, SBX_LEASE_OK);
        assert_int_equal(last.reaped, 0);
        ts.tv_nsec = 300 * 1000000L; /* the quiet ttl runs out */
        nanosleep(&ts, NULL);
    }
    CALL(sbx_lease_acquire(LS2, "dq", "projQ", "jobQ2", "w2", 400, t1, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_BUSY);
    CALL(sbx_lease_acquire(LS, "dq", "projOther", "jobO", "w2", 400, t1, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_true(last.token > t1);
}

/* Starts Redis again on its port and dir (empty: no persistence) and waits
 * for both handles to reconnect. */
static void restart_server(void)
{
    struct timespec ts = {0, 50 * 1000000};
    char port[16];
    pid_t pid;
    snprintf(port, sizeof(port), "%d", srv.port);
    pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--dir", srv.dir, (char *)NULL);
        _exit(127);
    }
    srv.pid = pid;
    nanosleep(&ts, NULL);
    assert_true(test_run_until(L, &connected, 10000));
    for (int i = 0; i < 250 && !sbx_redis_connected(R2); i++)
        sbx_loop_once(L, 20);
}

/* Redis killed and started again empty: calls are refused while it is
 * down, scripts load again after, and tokens keep growing from the floor. */
static void test_survives_redis_restart(void **state)
{
    (void)state;
    /* Kill the server: commands are refused while it is down... */
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, NULL, 0);
    for (int i = 0; i < 100 && connected; i++)
        sbx_loop_once(L, 20);
    assert_false(connected);
    assert_int_not_equal(sbx_lease_acquire(LS, "p1", "q", "j", "w", 1000, 0, on_rep, NULL), 0);
    /* ...and after it comes back (empty), the client reconnects and the
     * scripts load again (NOSCRIPT is handled). */
    restart_server();
    reg("p4", 1);
    /* The restarted Redis lost the counter; the floor from PostgreSQL keeps
     * tokens growing, once the builds of forgotten leases had their ttl to
     * take them back. */
    CALL(sbx_lease_acquire(LS, "p4", "q", "j", "w", 300, 5000, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_QUIET);
    {
        struct timespec ts = {0, (long)(last.ttl_left_ms + 20) * 1000000L};
        nanosleep(&ts, NULL);
    }
    CALL(sbx_lease_acquire(LS, "p4", "q", "j", "w", 1000, 5000, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_int_equal(last.token, 5001);
}

/* ---- batches and local answers ---- */

static volatile int stats_done;
static long long script_calls_seen;

static void on_cmdstats(void *arg, redisReply *rep)
{
    const char *p;
    (void)arg;
    script_calls_seen = 0;
    /* EVALSHA and EVAL both count: a call that went as EVAL is a script
     * call all the same. */
    for (p = rep && rep->type == REDIS_REPLY_STRING ? rep->str : ""; (p = strstr(p, "cmdstat_eval"));) {
        const char *c = strstr(p, "calls=");
        if (c)
            script_calls_seen += strtoll(c + 6, NULL, 10);
        p += 12;
    }
    stats_done = 1;
}

/* Script calls Redis has run since it started. */
static long long script_calls(void)
{
    const char *argv[2] = {"INFO", "commandstats"};
    size_t lens[2] = {4, 12};
    stats_done = 0;
    assert_int_equal(sbx_redis_cmd(R, on_cmdstats, NULL, 2, argv, lens), 0);
    assert_true(test_run_until(L, &stats_done, 5000));
    return script_calls_seen;
}

/* One reply slot per call of a batch: how many times each callback came,
 * and its last reply. */
enum { NB = 150 };
static int nreplies[NB];
static sbx_lease_reply replies[NB];
static char errors[NB][128];
static volatile int nleft;

static void on_nth(void *arg, const sbx_lease_reply *rep)
{
    int i = (int)(intptr_t)arg;
    nreplies[i]++;
    replies[i] = *rep;
    snprintf(errors[i], sizeof(errors[i]), "%s", rep->error ? rep->error : "");
    replies[i].error = NULL;
    if (nreplies[i] == 1 && --nleft == 0)
        got = 1;
}

static void expect_replies(int n)
{
    memset(nreplies, 0, sizeof(nreplies));
    nleft = n;
    got = 0;
}

static void wait_replies(void)
{
    assert_true(test_run_until(L, &got, 5000));
    /* Nothing else comes: every callback once. */
    for (int i = 0; i < 20; i++)
        sbx_loop_once(L, 5);
}

/* 150 acquires of one loop turn, more than a batch holds, over 100 slots:
 * 100 OK (each a token of its own), 50 NOCAP, in 3 script calls. */
static void test_batch_of_many_acquires(void **state)
{
    static char proj[NB][16];
    long long before;
    int ok = 0, nocap = 0;
    (void)state;
    reg("mb", 100);
    before = script_calls();
    expect_replies(NB);
    for (int i = 0; i < NB; i++) {
        snprintf(proj[i], sizeof(proj[i]), "mbp%d", i);
        assert_int_equal(sbx_lease_acquire(LS, "mb", proj[i], proj[i], "w", 10000, 0, on_nth,
                                           (void *)(intptr_t)i),
                         0);
    }
    assert_int_equal(got, 0); /* never from inside the call */
    wait_replies();
    for (int i = 0; i < NB; i++) {
        assert_int_equal(nreplies[i], 1);
        if (replies[i].status == SBX_LEASE_OK) {
            ok++;
            for (int k = 0; k < i; k++)
                if (replies[k].status == SBX_LEASE_OK)
                    assert_true(replies[k].token < replies[i].token);
        } else {
            assert_int_equal(replies[i].status, SBX_LEASE_NOCAP);
            nocap++;
        }
    }
    assert_int_equal(ok, 100);
    assert_int_equal(nocap, 50);
    /* 64 + 64 + 22, in call order: the first 100 got the slots. */
    assert_int_equal(replies[99].status, SBX_LEASE_OK);
    assert_int_equal(replies[100].status, SBX_LEASE_NOCAP);
    assert_int_equal(script_calls() - before, 3);
}

/* Every outcome in one batch, each job decided as if it were alone. */
static void test_batch_of_mixed_outcomes(void **state)
{
    sbx_leases_stats st0, st1;
    long long before;
    (void)state;
    reg("mx", 3);
    /* Another worker holds project m0 for job jH. */
    CALL(sbx_lease_acquire(LS2, "mx", "m0", "jH", "w2", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    sbx_leases_get_stats(LS, &st0);
    before = script_calls();
    expect_replies(6);
    /* 0: m0 is the other worker's; 1, 2: the two free slots; 3: none left;
     * 4: m1 again, behind 1 here; 5: jH's own lease (after 0's answer). */
    assert_int_equal(sbx_lease_acquire(LS, "mx", "m0", "jA", "w", 10000, 0, on_nth, (void *)0), 0);
    assert_int_equal(sbx_lease_acquire(LS, "mx", "m1", "jB", "w", 10000, 0, on_nth, (void *)1), 0);
    assert_int_equal(sbx_lease_acquire(LS, "mx", "m2", "jC", "w", 10000, 0, on_nth, (void *)2), 0);
    assert_int_equal(sbx_lease_acquire(LS, "mx", "m3", "jD", "w", 10000, 0, on_nth, (void *)3), 0);
    assert_int_equal(sbx_lease_acquire(LS, "mx", "m1", "jB2", "w", 10000, 0, on_nth, (void *)4), 0);
    assert_int_equal(sbx_lease_acquire(LS, "mx", "m0", "jH", "w", 10000, 0, on_nth, (void *)5), 0);
    wait_replies();
    for (int i = 0; i < 6; i++)
        assert_int_equal(nreplies[i], 1);
    assert_int_equal(replies[0].status, SBX_LEASE_BUSY);
    assert_int_equal(replies[1].status, SBX_LEASE_OK);
    assert_int_equal(replies[2].status, SBX_LEASE_OK);
    assert_true(replies[2].token > replies[1].token);
    assert_int_equal(replies[3].status, SBX_LEASE_NOCAP);
    assert_int_equal(replies[4].status, SBX_LEASE_BUSY);
    assert_string_equal(replies[4].slot, replies[1].slot);
    assert_true(replies[4].ttl_left_ms > 9000);
    assert_int_equal(replies[5].status, SBX_LEASE_HELD);
    /* One batch of four, then jH's (it waited for jA's answer, which only
     * Redis could give); jB2 never reached Redis. */
    assert_int_equal(script_calls() - before, 2);
    sbx_leases_get_stats(LS, &st1);
    assert_int_equal(st1.acquires_sent - st0.acquires_sent, 5);
    assert_int_equal(st1.local_busy - st0.local_busy, 1);
    /* Releases batch too, and each answers for itself. */
    expect_replies(3);
    assert_int_equal(sbx_lease_release(LS, replies[1].slot, replies[1].token, on_nth, (void *)1), 0);
    assert_int_equal(sbx_lease_release(LS, replies[2].slot, replies[2].token + 1000, on_nth,
                                       (void *)2), 0);
    assert_int_equal(sbx_lease_release(LS, replies[2].slot, replies[2].token, on_nth, (void *)0), 0);
    wait_replies();
    assert_int_equal(replies[1].status, SBX_LEASE_OK);
    assert_int_equal(replies[2].status, SBX_LEASE_LOST);
    assert_int_equal(replies[0].status, SBX_LEASE_OK);
}

/* Two workers' batches race for the same projects, each on its own
 * connection: every project is leased exactly once. */
static void test_two_workers_race(void **state)
{
    enum { NP = 40 };
    static char proj[NP][16], job[2 * NP][16];
    int wins[NP] = {0};
    (void)state;
    reg("rc", 100);
    expect_replies(2 * NP);
    for (int i = 0; i < NP; i++) {
        snprintf(proj[i], sizeof(proj[i]), "rp%d", i);
        for (int w = 0; w < 2; w++) {
            int k = 2 * i + w;
            snprintf(job[k], sizeof(job[k]), "rj%d", k);
            assert_int_equal(sbx_lease_acquire(w ? LS2 : LS, "rc", proj[i], job[k], w ? "w2" : "w1",
                                               10000, 0, on_nth, (void *)(intptr_t)k),
                             0);
        }
    }
    wait_replies();
    for (int k = 0; k < 2 * NP; k++) {
        assert_int_equal(nreplies[k], 1);
        if (replies[k].status == SBX_LEASE_OK)
            wins[k / 2]++;
        else
            assert_int_equal(replies[k].status, SBX_LEASE_BUSY);
    }
    for (int i = 0; i < NP; i++)
        assert_int_equal(wins[i], 1);
}

/* A job of a project this worker holds waits here: no script call until the
 * holder's release, and then its acquire goes to Redis and wins. */
static void test_held_project_is_answered_here(void **state)
{
    char slot[192];
    int64_t tok;
    long long before;
    (void)state;
    reg("lw", 2);
    CALL(sbx_lease_acquire(LS, "lw", "projL", "jobL1", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    snprintf(slot, sizeof(slot), "%s", last_slot);
    tok = last.token;
    before = script_calls();
    for (int i = 0; i < 5; i++) {
        CALL(sbx_lease_acquire(LS, "lw", "projL", i % 2 ? "jobL2" : "jobL3", "w", 10000, 0, on_rep,
                               NULL));
        assert_int_equal(last.status, SBX_LEASE_BUSY);
        assert_string_equal(last_slot, slot);
        assert_true(last.ttl_left_ms > 9000 && last.ttl_left_ms <= 10000);
    }
    assert_int_equal(script_calls() - before, 0);
    /* The holder's own job still asks Redis (it may be its past self). */
    CALL(sbx_lease_acquire(LS, "lw", "projL", "jobL1", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_HELD);
    CALL(sbx_lease_release(LS, slot, tok, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    before = script_calls();
    CALL(sbx_lease_acquire(LS, "lw", "projL", "jobL2", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    assert_int_equal(script_calls() - before, 1);
    /* A renewal refused as LOST forgets the holder: Redis decides again. */
    {
        sbx_lease_id id = {"lw", last_slot, "projL", "jobL2", "w", last.token + 1};
        CALL(sbx_lease_renew(LS, &id, 10000, on_rep, NULL));
        assert_int_equal(last.status, SBX_LEASE_LOST);
    }
}

/* Redis refuses a batch (an error reply for the whole call), or each job of
 * it (an error raised inside the script): every call gets ERROR once, with
 * Redis' text, and the holders are forgotten (the next acquire asks). */
static void test_redis_errors_fail_each_call_once(void **state)
{
    (void)state;
    reg("er", 4);
    redis_do("ACL", "SETUSER", "default", "-evalsha", "-eval", NULL);
    expect_replies(4);
    for (int i = 0; i < 4; i++) {
        char p[16], j[16];
        snprintf(p, sizeof(p), "e%d", i % 3); /* e0 twice: the second waits */
        snprintf(j, sizeof(j), "ej%d", i);
        assert_int_equal(sbx_lease_acquire(LS, "er", p, j, "w", 10000, 0, on_nth,
                                           (void *)(intptr_t)i), 0);
    }
    wait_replies();
    redis_do("ACL", "SETUSER", "default", "+@all", NULL, NULL);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(nreplies[i], 1);
        assert_int_equal(replies[i].status, SBX_LEASE_ERROR);
        assert_non_null(strstr(errors[i], "NOPERM"));
    }
    /* A job whose decision raises (its pool's free set is a string) gets
     * ERROR with Redis' text; its batch-mates are decided as usual. */
    redis_do("SET", "{sbx}:free:bad", "not-a-set", NULL, NULL, NULL);
    expect_replies(3);
    assert_int_equal(sbx_lease_acquire(LS, "er", "eo0", "eo0", "w", 10000, 0, on_nth, (void *)0), 0);
    assert_int_equal(sbx_lease_acquire(LS, "bad", "eo1", "eo1", "w", 10000, 0, on_nth, (void *)1), 0);
    assert_int_equal(sbx_lease_acquire(LS, "er", "eo2", "eo2", "w", 10000, 0, on_nth, (void *)2), 0);
    wait_replies();
    for (int i = 0; i < 3; i++)
        assert_int_equal(nreplies[i], 1);
    assert_int_equal(replies[0].status, SBX_LEASE_OK);
    assert_int_equal(replies[1].status, SBX_LEASE_ERROR);
    assert_non_null(strstr(errors[1], "WRONGTYPE"));
    assert_int_equal(replies[2].status, SBX_LEASE_OK);
    CALL(sbx_lease_acquire(LS, "er", "e0", "ej3", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
}

/* The connection drops with a batch sent and unanswered: every call of it,
 * and every call waiting behind one, gets ERROR exactly once. */
static void test_connection_lost_mid_batch(void **state)
{
    (void)state;
    reg("cl", 4);
    CALL(sbx_lease_acquire(LS, "cl", "held", "jh", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
    /* Redis stops answering; the batch is written but never read. */
    kill(srv.pid, SIGSTOP);
    expect_replies(8);
    for (int i = 0; i < 5; i++) {
        char p[16], j[16];
        snprintf(p, sizeof(p), "c%d", i % 3); /* c0, c1 twice: one waits behind */
        snprintf(j, sizeof(j), "cj%d", i);
        assert_int_equal(sbx_lease_acquire(LS, "cl", p, j, "w", 10000, 0, on_nth,
                                           (void *)(intptr_t)i), 0);
    }
    assert_int_equal(sbx_lease_release(LS, last_slot, last.token, on_nth, (void *)5), 0);
    assert_int_equal(sbx_lease_release(LS, "cl/9", 1, on_nth, (void *)6), 0);
    {
        sbx_lease_id id = {"cl", last_slot, "held", "jh", "w", last.token};
        assert_int_equal(sbx_lease_renew(LS, &id, 10000, on_nth, (void *)7), 0);
    }
    for (int i = 0; i < 10; i++)
        sbx_loop_once(L, 5);
    assert_int_equal(got, 0);
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, NULL, 0);
    wait_replies();
    for (int i = 0; i < 8; i++) {
        assert_int_equal(nreplies[i], 1);
        assert_int_equal(replies[i].status, SBX_LEASE_ERROR);
    }
    restart_server();
    /* Nothing of the dead link is left behind: a new lease works. */
    reg("cl", 1);
    CALL(sbx_lease_acquire(LS, "cl", "c0", "cj0", "w", 10000, 0, on_rep, NULL));
    assert_int_equal(last.status, SBX_LEASE_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_build_per_project_and_tokens_grow),
        cmocka_unit_test(test_expired_lease_is_reaped),
        cmocka_unit_test(test_session_keeps_its_slot),
        cmocka_unit_test(test_pools_in_order_spill_over),
        cmocka_unit_test(test_register_shrinks_pool),
        cmocka_unit_test(test_register_many_slots_in_chunks),
        cmocka_unit_test(test_vm_without_heartbeat_is_never_handed_out),
        cmocka_unit_test(test_renew_restores_a_lease_redis_lost),
        cmocka_unit_test(test_release_after_data_loss_frees_a_marked_slot),
        cmocka_unit_test(test_data_loss_holds_new_leases_back),
        cmocka_unit_test(test_survives_redis_restart),
        cmocka_unit_test(test_batch_of_many_acquires),
        cmocka_unit_test(test_batch_of_mixed_outcomes),
        cmocka_unit_test(test_two_workers_race),
        cmocka_unit_test(test_held_project_is_answered_here),
        cmocka_unit_test(test_redis_errors_fail_each_call_once),
        cmocka_unit_test(test_connection_lost_mid_batch),
    };
    return cmocka_run_group_tests_name("lease", tests, setup, teardown);
}
