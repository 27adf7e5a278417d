/* redis.c — hiredis async on the sbx loop, with reconnect, a handshake
 * (AUTH, SELECT, PING) and EVALSHA.
 *
 * hiredis asks its "event library" to start/stop watching the socket for
 * read and write; here those hooks map onto one sbx_io. Reconnects run on a
 * timer: 100 ms doubling to 5 s, with +-50% jitter so a fleet of workers does
 * not reconnect in lock-step after a Redis restart. The backoff starts over
 * only once a handshake succeeds, so a wrong password is retried every ~5 s,
 * not hammered.
 *
 * The handshake is pipelined (one round trip): AUTH must come first because
 * a Redis with requirepass answers NOAUTH to everything before it; PING
 * last, because its answer is the one proof the link is usable, and a
 * Redis that needs a password we were not given says NOAUTH to it.
 * Failures are remembered as one line (last_err): the first of a kind is
 * logged at error level, repeats at debug, so a worker pointed at a wrong
 * password says so once instead of every five seconds.
 */
#include "redis.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>

#include "log.h"

#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000

/* One line: a Redis error reply is a short sentence; what we add around it
 * is under 200 bytes. */
#define LAST_ERR_MAX 384

struct sbx_redis_script {
    char *lua;
    char sha[41];   /* "" until SCRIPT LOAD answered on this connection */
    sbx_redis_script *next;
};

struct sbx_redis {
    sbx_loop *loop;
    redisAsyncContext *ac;
    sbx_io io;
    int want;             /* SBX_READ|SBX_WRITE hiredis asked for */
    int connected;        /* the handshake's PING answered on this link */
    int refused;          /* a handshake reply of this link was an error */
    sbx_redis_url u;      /* holds the password: wiped by sbx_redis_free() */
    char target[300];     /* "host:port" or the socket path, for messages */
    char last_err[LAST_ERR_MAX];
    uint64_t backoff_ms;
    sbx_timer reconnect;
    sbx_redis_state_cb state_cb;
    void *state_arg;
    sbx_redis_script *scripts;  /* registered through evalsha, not owned */
    int closing;                /* sbx_redis_free(): callbacks are not called */
};

/* Records why the link is not usable; logs it at lvl when it differs from
 * the last reason, at debug otherwise. */
static void note_failure(sbx_redis *r, enum sbx_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note_failure(sbx_redis *r, enum sbx_log_level lvl, const char *fmt, ...)
{
    char msg[LAST_ERR_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sbx_log(strcmp(msg, r->last_err) == 0 ? SBX_LOG_DEBUG : lvl, "redis", "%s", msg);
    memcpy(r->last_err, msg, sizeof(msg));
}

/* ---- hiredis event hooks ---- */

static void ev_update(sbx_redis *r)
{
    if (!r->ac)
        return;
    sbx_io_set(r->loop, &r->io, r->want);
}
static void ev_add_read(void *p) { sbx_redis *r = p; r->want |= SBX_READ; ev_update(r); }
static void ev_del_read(void *p) { sbx_redis *r = p; r->want &= ~SBX_READ; ev_update(r); }
static void ev_add_write(void *p) { sbx_redis *r = p; r->want |= SBX_WRITE; ev_update(r); }
static void ev_del_write(void *p) { sbx_redis *r = p; r->want &= ~SBX_WRITE; ev_update(r); }
static void ev_cleanup(void *p)
{
    sbx_redis *r = p;
    r->want = 0;
    sbx_io_stop(&r->io);
}

static void on_io(sbx_io *io, int events)
{
    sbx_redis *r = io->data;
    /* A read callback may disconnect and free ac; check before writing. */
    if ((events & SBX_READ) && r->ac)
        redisAsyncHandleRead(r->ac);
    if ((events & SBX_WRITE) && r->ac)
        redisAsyncHandleWrite(r->ac);
}

static void schedule_reconnect(sbx_redis *r)
{
    uint64_t d = r->backoff_ms;
    d = d / 2 + (uint64_t)(rand() % (int)(d + 1));
    r->backoff_ms = r->backoff_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : r->backoff_ms * 2;
    sbx_timer_start(r->loop, &r->reconnect, d);
}

static void set_connected(sbx_redis *r, int up)
{
    if (r->connected == up)
        return;
    r->connected = up;
    if (r->state_cb)
        r->state_cb(r->state_arg, up);
}

static void on_script_loaded(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *rep = reply;
    sbx_redis_script *s = priv;
    (void)ac;
    if (rep && rep->type == REDIS_REPLY_STRING && rep->len == 40)
        memcpy(s->sha, rep->str, 41);
}

static void load_script(sbx_redis *r, sbx_redis_script *s)
{
    s->sha[0] = '\0';
    redisAsyncCommand(r->ac, on_script_loaded, s, "SCRIPT LOAD %s", s->lua);
}

/* The handshake's steps; the address is the callback's priv. */
static const char STEP_AUTH[] = "AUTH", STEP_SELECT[] = "SELECT", STEP_PING[] = "PING";

static void handshake_done(sbx_redis *r)
{
    if (r->last_err[0])
        sbx_info("redis", "connected to %s (was: %s)", r->target, r->last_err);
    else
        sbx_info("redis", "connected to %s", r->target);
    r->last_err[0] = '\0';
    r->backoff_ms = RECONNECT_MIN_MS;
    for (sbx_redis_script *s = r->scripts; s; s = s->next)
        load_script(r, s);
    set_connected(r, 1);
}

/* A handshake step answered with an error: say which setting to fix, then
 * drop the link (the reconnect timer tries again). */
static void handshake_refused(sbx_redis *r, const char *step, const char *why)
{
    /* Redis never echoes AUTH's arguments; whatever answers here might. */
    if (r->u.pass[0] && strstr(why, r->u.pass))
        why = "(reply not shown: it quotes the password)";
    if (step == STEP_AUTH)
        note_failure(r, SBX_LOG_ERROR, "%s refused AUTH%s%s: %s; check the user and password "
                     "in SBX_REDIS_URL", r->target, r->u.user[0] ? " as user " : "", r->u.user, why);
    else if (strncmp(why, "NOAUTH", 6) == 0)
        note_failure(r, SBX_LOG_ERROR, "%s wants a password (%s); give it in SBX_REDIS_URL: "
                     "redis://:PASSWORD@host or redis://USER:PASSWORD@host", r->target, why);
    else if (step == STEP_SELECT)
        note_failure(r, SBX_LOG_ERROR, "%s refused SELECT %d: %s; fix the /db of SBX_REDIS_URL",
                     r->target, r->u.db, why);
    else if (strncmp(why, "LOADING", 7) == 0)
        note_failure(r, SBX_LOG_WARN, "%s not ready yet: %s", r->target, why);
    else
        note_failure(r, SBX_LOG_ERROR, "%s refused %s: %s (SBX_REDIS_URL)", r->target, step, why);
    redisAsyncDisconnect(r->ac);
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *priv)
{
    sbx_redis *r = ac->data;
    redisReply *rep = reply;

    /* NULL: the link dropped or is being freed; on_disconnect handles it.
     * After one refusal the later steps only echo it (NOAUTH). */
    if (!rep || r->closing || r->refused)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        r->refused = 1;
        handshake_refused(r, priv, rep->str);
        return;
    }
    if (priv == STEP_PING)
        handshake_done(r);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    sbx_redis *r = ac->data;
    const char *argv[3];
    int argc = 0;

    if (status != REDIS_OK) {
        note_failure(r, SBX_LOG_WARN, "connect to %s failed: %s", r->target, ac->errstr);
        r->ac = NULL; /* hiredis frees it after this callback */
        schedule_reconnect(r);
        return;
    }
    r->refused = 0;
    if (r->u.pass[0]) {
        argv[argc++] = "AUTH";
        if (r->u.user[0])
            argv[argc++] = r->u.user;
        argv[argc++] = r->u.pass;
        redisAsyncCommandArgv(r->ac, on_handshake, (void *)STEP_AUTH, argc, argv, NULL);
    }
    if (r->u.db > 0)
        redisAsyncCommand(r->ac, on_handshake, (void *)STEP_SELECT, "SELECT %d", r->u.db);
    redisAsyncCommand(r->ac, on_handshake, (void *)STEP_PING, "PING");
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    sbx_redis *r = ac->data;
    r->ac = NULL;
    if (status != REDIS_OK)
        note_failure(r, SBX_LOG_WARN, "connection to %s lost: %s", r->target, ac->errstr);
    set_connected(r, 0);
    if (r->loop)
        schedule_reconnect(r);
}

static int connect_now(sbx_redis *r)
{
    redisAsyncContext *ac = r->u.unix_path[0] ? redisAsyncConnectUnix(r->u.unix_path)
                                              : redisAsyncConnect(r->u.host, r->u.port);
    if (!ac)
        return -ENOMEM;
    if (ac->err) {
        note_failure(r, SBX_LOG_WARN, "connect to %s failed: %s", r->target, ac->errstr);
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return 0;
    }
    r->ac = ac;
    ac->data = r;
    ac->ev.data = r;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    sbx_io_init(&r->io, ac->c.fd, on_io, r);
    r->want = 0;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* hiredis connects non-blocking: completion shows as writability. */
    ev_add_write(r);
    return 0;
}

static void on_reconnect_timer(sbx_timer *t)
{
    sbx_redis *r = t->data;
    if (!r->ac)
        connect_now(r);
}

/* ---- SBX_REDIS_URL ---- */

static int bad(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes in[0..n) into out (cap bytes with the NUL). Messages
 * name the part (what), never its bytes: it may be a password. */
static int decode(const char *in, size_t n, char *out, size_t cap, const char *what, char *err,
                  size_t errlen)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            int hi = i + 2 < n ? hexval(in[i + 1]) : -1, lo = i + 2 < n ? hexval(in[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return bad(err, errlen, "the %s has a '%%' not followed by two hex digits "
                           "(write a '%%' as %%25)", what);
            c = hi * 16 + lo;
            if (c == 0)
                return bad(err, errlen, "the %s holds %%00; a NUL byte cannot be sent", what);
            i += 2;
        }
        if (o + 1 >= cap)
            return bad(err, errlen, "the %s is longer than %zu bytes", what, cap - 1);
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* A database number: digits only, as SELECT takes it. */
static int parse_db(const char *s, size_t n, int *db, char *err, size_t errlen)
{
    long v = 0;

    if (n == 0 || n > 9)
        return bad(err, errlen, "the database must be a number from 0 (as in /0 or db=0)");
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return bad(err, errlen, "the database must be a number from 0 (as in /0 or db=0)");
        v = v * 10 + (s[i] - '0');
    }
    *db = (int)v;
    return 0;
}

/* redis://[[USER]:PASSWORD@]host[:port][/db]. The userinfo ends at the
 * last '@': host, port and db never hold one, so a password may hold raw
 * '@', ':' and '/' (sbx_log_redact() hides the same span). */
static int parse_tcp(const char *p, sbx_redis_url *u, char *err, size_t errlen)
{
    const char *at = strrchr(p, '@');
    size_t hl;
    int rc;

    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            return bad(err, errlen, "a user needs a password: redis://USER:PASSWORD@host "
                       "(a password alone: redis://:PASSWORD@host)");
        rc = decode(p, (size_t)(colon - p), u->user, sizeof(u->user), "user", err, errlen);
        if (rc == 0)
            rc = decode(colon + 1, (size_t)(at - colon - 1), u->pass, sizeof(u->pass),
                        "password", err, errlen);
        if (rc)
            return rc;
        if (!u->pass[0])
            return bad(err, errlen, "the password after ':' is empty; leave out '%s@' for none",
                       u->user[0] ? "USER:" : ":");
        p = at + 1;
    }
    if (*p == '[') {
        const char *end = strchr(p, ']');
        if (!end)
            return bad(err, errlen, "an IPv6 host needs its closing ']'");
        hl = (size_t)(end - p - 1);
        p++;
    } else {
        hl = strcspn(p, ":/?#");
    }
    if (hl == 0 || hl >= sizeof(u->host))
        return bad(err, errlen, "missing host");
    memcpy(u->host, p, hl);
    u->host[hl] = '\0';
    p += hl + (p[hl] == ']');
    if (*p == ':') {
        long port = 0;
        p++;
        while (*p >= '0' && *p <= '9' && port <= 65535)
            port = port * 10 + (*p++ - '0');
        if (port <= 0 || port > 65535)
            return bad(err, errlen, "bad port: use a number from 1 to 65535");
        u->port = (int)port;
    }
    if (*p == '/' && p[1]) {
        rc = parse_db(p + 1, strlen(p + 1), &u->db, err, errlen);
        if (rc)
            return rc;
    } else if (*p && strcmp(p, "/") != 0) {
        return bad(err, errlen, "unexpected text after host[:port] (query parameters belong to the "
                   "unix: form; a password goes before the host: redis://:PASSWORD@host)");
    }
    return 0;
}

/* unix:/path[?password=PASSWORD[&user=USER][&db=N]]: a socket path has no
 * host to hang userinfo on, so the credentials ride in the query. */
static int parse_unix(const char *p, sbx_redis_url *u, char *err, size_t errlen)
{
    size_t pl = strcspn(p, "?");
    const char *q = p + pl;
    int have_db = 0, rc;

    if (pl == 0)
        return bad(err, errlen, "missing socket path after unix:");
    if (pl >= sizeof(u->unix_path))
        return bad(err, errlen, "the socket path is longer than %zu bytes", sizeof(u->unix_path) - 1);
    memcpy(u->unix_path, p, pl);
    u->unix_path[pl] = '\0';
    while (*q) {
        const char *k = q + 1, *eq, *v;
        size_t kl, vl;
        q = k + strcspn(k, "&");
        eq = memchr(k, '=', (size_t)(q - k));
        if (!eq)
            return bad(err, errlen, "each query parameter must be key=value (a '&' inside a value "
                       "is written %%26)");
        kl = (size_t)(eq - k);
        v = eq + 1;
        vl = (size_t)(q - v);
        if (kl == 8 && memcmp(k, "password", 8) == 0) {
            if (u->pass[0])
                return bad(err, errlen, "password= is given twice");
            rc = decode(v, vl, u->pass, sizeof(u->pass), "password", err, errlen);
            if (rc == 0 && !u->pass[0])
                rc = bad(err, errlen, "password= is empty; leave it out for none");
        } else if (kl == 4 && memcmp(k, "user", 4) == 0) {
            if (u->user[0])
                return bad(err, errlen, "user= is given twice");
            rc = decode(v, vl, u->user, sizeof(u->user), "user", err, errlen);
        } else if (kl == 2 && memcmp(k, "db", 2) == 0) {
            if (have_db++)
                return bad(err, errlen, "db= is given twice");
            rc = parse_db(v, vl, &u->db, err, errlen);
        } else {
            rc = bad(err, errlen, "unknown query parameter (known: password, user, db)");
        }
        if (rc)
            return rc;
    }
    if (u->user[0] && !u->pass[0])
        return bad(err, errlen, "user= needs password= too");
    return 0;
}

int sbx_redis_parse_url(const char *url, sbx_redis_url *u, char *err, size_t errlen)
{
    int rc;

    memset(u, 0, sizeof(*u));
    u->port = 6379;
    if (strncmp(url, "unix:", 5) == 0)
        rc = parse_unix(url + 5, u, err, errlen);
    else if (strncmp(url, "redis://", 8) == 0)
        rc = parse_tcp(url + 8, u, err, errlen);
    else if (strncmp(url, "rediss://", 9) == 0)
        rc = bad(err, errlen, "TLS (rediss://) needs hiredis 1.0 or newer, and this build has "
                 "hiredis %d.%d; reach Redis through a TLS sidecar (stunnel, spiped) on "
                 "127.0.0.1 or a unix socket instead", HIREDIS_MAJOR, HIREDIS_MINOR);
    else
        rc = bad(err, errlen, "must look like %s", SBX_REDIS_URL_FORMS);
    if (rc)
        explicit_bzero(u, sizeof(*u));
    return rc;
}

int sbx_redis_new(sbx_loop *loop, const char *url, sbx_redis_state_cb state_cb, void *arg,
                  sbx_redis **out, char *err, size_t errlen)
{
    int rc;
    sbx_redis *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->loop = loop;
    r->state_cb = state_cb;
    r->state_arg = arg;
    r->backoff_ms = RECONNECT_MIN_MS;
    sbx_timer_init(&r->reconnect, on_reconnect_timer, r);
    rc = sbx_redis_parse_url(url, &r->u, err, errlen);
    if (rc)
        goto fail;
    if (r->u.unix_path[0])
        snprintf(r->target, sizeof(r->target), "redis at %s", r->u.unix_path);
    else
        snprintf(r->target, sizeof(r->target), strchr(r->u.host, ':') ? "redis at [%s]:%d"
                 : "redis at %s:%d", r->u.host, r->u.port);
    rc = connect_now(r);
    if (rc)
        goto fail;
    *out = r;
    return 0;
fail:
    explicit_bzero(&r->u, sizeof(r->u));
    free(r);
    return rc;
}

void sbx_redis_free(sbx_redis *r)
{
    if (!r)
        return;
    sbx_timer_stop(r->loop, &r->reconnect);
    r->state_cb = NULL;
    r->closing = 1;
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->loop = NULL; /* on_disconnect must not schedule */
        redisAsyncFree(ac);
    }
    explicit_bzero(&r->u, sizeof(r->u));
    free(r);
}

int sbx_redis_connected(const sbx_redis *r) { return r->connected && r->ac; }

const char *sbx_redis_last_error(const sbx_redis *r) { return r->last_err; }

/* ---- commands ---- */

typedef struct pending {
    sbx_redis *r;
    sbx_redis_cb cb;
    void *arg;
    sbx_redis_script *script;  /* set for EVALSHA: resend as EVAL on NOSCRIPT */
    int argc;
    char **argv;               /* EVAL: the whole command, argv[0..1] not owned */
    size_t *lens;
} pending;

static void pending_free(pending *p)
{
    if (p->argv) {
        /* An EVAL's first two are the command and the script's (send_eval). */
        for (int i = p->script ? 2 : 0; i < p->argc; i++)
            free(p->argv[i]);
        free(p->argv);
        free(p->lens);
    }
    free(p);
}

static int send_eval(pending *p, int use_sha);

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    pending *p = priv;
    redisReply *rep = reply;
    (void)ac;
    if (p->r->closing) {
        pending_free(p);
        return;
    }
    if (p->script && rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* Redis lost its scripts (restart, SCRIPT FLUSH): this call goes
         * as EVAL, and the script is loaded again for the next ones. */
        load_script(p->r, p->script);
        if (send_eval(p, 0) == 0)
            return;
        rep = NULL;
    }
    if (p->cb)
        p->cb(p->arg, rep);
    pending_free(p);
}

int sbx_redis_cmd(sbx_redis *r, sbx_redis_cb cb, void *arg, int argc, const char **argv,
                  const size_t *lens)
{
    pending *p;
    if (!sbx_redis_connected(r))
        return -ENOTCONN;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->r = r;
    p->cb = cb;
    p->arg = arg;
    if (redisAsyncCommandArgv(r->ac, on_reply, p, argc, argv, lens) != REDIS_OK) {
        free(p);
        return -ENOTCONN;
    }
    return 0;
}

sbx_redis_script *sbx_redis_script_new(const char *lua)
{
    sbx_redis_script *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->lua = strdup(lua);
    if (!s->lua) {
        free(s);
        return NULL;
    }
    return s;
}

void sbx_redis_script_free(sbx_redis_script *s)
{
    if (!s)
        return;
    free(s->lua);
    free(s);
}

/* Scripts are few (one per lease operation): keep them on a list the
 * connect callback walks to SCRIPT LOAD them again. A script first seen on a
 * live link is loaded now, pipelined ahead of its first call (which goes as
 * EVAL): without that, a script registered after the handshake would never
 * get its sha and every call would send its whole body. */
static void remember_script(sbx_redis *r, sbx_redis_script *s)
{
    for (sbx_redis_script *x = r->scripts; x; x = x->next)
        if (x == s)
            return;
    s->next = r->scripts;
    r->scripts = s;
    load_script(r, s);
}

/* The most arguments one script call carries: a lease batch (lease.c
 * BATCH_MAX jobs of at most 7 arguments, plus one) stays under it. Redis
 * itself takes far more; the cap only catches a caller's runaway count. */
#define EVAL_MAX_ARGS 1024

/* p->argv[0..1] are the command and the sha or body (not owned); the
 * caller's arguments follow. */
static int send_eval(pending *p, int use_sha)
{
    sbx_redis *r = p->r;

    if (!sbx_redis_connected(r))
        return -ENOTCONN;
    p->argv[0] = use_sha ? "EVALSHA" : "EVAL";
    p->lens[0] = strlen(p->argv[0]);
    p->argv[1] = use_sha ? p->script->sha : p->script->lua;
    p->lens[1] = strlen(p->argv[1]);
    if (redisAsyncCommandArgv(r->ac, on_reply, p, p->argc, (const char **)p->argv, p->lens) !=
        REDIS_OK)
        return -ENOTCONN;
    return 0;
}

int sbx_redis_evalsha(sbx_redis *r, sbx_redis_script *s, sbx_redis_cb cb, void *arg, int argc,
                      const char **argv, const size_t *lens)
{
    pending *p;
    int rc = -ENOMEM;

    if (argc > EVAL_MAX_ARGS)
        return -E2BIG;
    if (!sbx_redis_connected(r))
        return -ENOTCONN;
    remember_script(r, s);
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->r = r;
    p->cb = cb;
    p->arg = arg;
    p->script = s;
    p->argc = argc + 2;
    p->argv = calloc((size_t)argc + 2, sizeof(char *));
    p->lens = calloc((size_t)argc + 2, sizeof(size_t));
    if (!p->argv || !p->lens)
        goto fail;
    for (int i = 0; i < argc; i++) {
        p->argv[i + 2] = malloc(lens[i] + 1);
        if (!p->argv[i + 2])
            goto fail;
        memcpy(p->argv[i + 2], argv[i], lens[i]);
        p->argv[i + 2][lens[i]] = '\0';
        p->lens[i + 2] = lens[i];
    }
    rc = send_eval(p, s->sha[0] != '\0');
    if (rc)
        goto fail;
    return 0;
fail:
    pending_free(p);
    return rc;
}

sbx_loop *sbx_redis_loop(const sbx_redis *r) { return r->loop; }
