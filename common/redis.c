/* redis.c — hiredis async on the sbx loop, with reconnect and EVALSHA.
 *
 * hiredis asks its "event library" to start/stop watching the socket for
 * read and write; here those hooks map onto one sbx_io. Reconnects run on a
 * timer: 100 ms doubling to 5 s, with +-50% jitter so a fleet of workers does
 * not reconnect in lock-step after a Redis restart.
 */
#include "redis.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>

#include "log.h"

#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000

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
    int connected;
    char host[256];
    int port;
    char unix_path[256];
    int db;
    uint64_t backoff_ms;
    sbx_timer reconnect;
    sbx_redis_state_cb state_cb;
    void *state_arg;
    sbx_redis_script *scripts;  /* registered through evalsha, not owned */
    int closing;                /* sbx_redis_free(): callbacks are not called */
};

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

static void on_connect(const redisAsyncContext *ac, int status)
{
    sbx_redis *r = ac->data;
    if (status != REDIS_OK) {
        sbx_warn("redis", "connect failed: %s", ac->errstr);
        r->ac = NULL; /* hiredis frees it after this callback */
        schedule_reconnect(r);
        return;
    }
    sbx_info("redis", "connected");
    r->backoff_ms = RECONNECT_MIN_MS;
    for (sbx_redis_script *s = r->scripts; s; s = s->next) {
        s->sha[0] = '\0';
        redisAsyncCommand(r->ac, on_script_loaded, s, "SCRIPT LOAD %s", s->lua);
    }
    set_connected(r, 1);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    sbx_redis *r = ac->data;
    r->ac = NULL;
    if (status != REDIS_OK)
        sbx_warn("redis", "connection lost: %s", ac->errstr);
    set_connected(r, 0);
    if (r->loop)
        schedule_reconnect(r);
}

static int connect_now(sbx_redis *r)
{
    redisAsyncContext *ac = r->unix_path[0] ? redisAsyncConnectUnix(r->unix_path)
                                            : redisAsyncConnect(r->host, r->port);
    if (!ac)
        return -ENOMEM;
    if (ac->err) {
        sbx_warn("redis", "connect failed: %s", ac->errstr);
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
    if (r->db > 0)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", r->db);
    return 0;
}

static void on_reconnect_timer(sbx_timer *t)
{
    sbx_redis *r = t->data;
    if (!r->ac)
        connect_now(r);
}

static int parse_url(sbx_redis *r, const char *url, char *err, size_t errlen)
{
    const char *p;
    if (strncmp(url, "unix:", 5) == 0) {
        snprintf(r->unix_path, sizeof(r->unix_path), "%s", url + 5);
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "must look like redis://HOST:PORT[/DB] or unix:/PATH");
        return -EINVAL;
    }
    p = url + 8;
    if (strchr(p, '@')) {
        snprintf(err, errlen, "passwords in the URL are not supported yet");
        return -EINVAL;
    }
    r->port = 6379;
    {
        size_t hl = strcspn(p, ":/");
        if (hl == 0 || hl >= sizeof(r->host)) {
            snprintf(err, errlen, "missing host");
            return -EINVAL;
        }
        memcpy(r->host, p, hl);
        r->host[hl] = '\0';
        p += hl;
    }
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port <= 0 || port > 65535) {
            snprintf(err, errlen, "bad port");
            return -EINVAL;
        }
        r->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1])
        r->db = atoi(p + 1);
    return 0;
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
    rc = parse_url(r, url, err, errlen);
    if (rc)
        goto fail;
    rc = connect_now(r);
    if (rc)
        goto fail;
    *out = r;
    return 0;
fail:
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
    free(r);
}

int sbx_redis_connected(const sbx_redis *r) { return r->connected && r->ac; }

/* ---- commands ---- */

typedef struct pending {
    sbx_redis *r;
    sbx_redis_cb cb;
    void *arg;
    sbx_redis_script *script;  /* set for EVALSHA: resend as EVAL on NOSCRIPT */
    int argc;
    char **argv;
    size_t *lens;
} pending;

static void pending_free(pending *p)
{
    if (p->argv) {
        for (int i = 0; i < p->argc; i++)
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
        p->script->sha[0] = '\0';
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
 * connect callback walks to SCRIPT LOAD them again. */
static void remember_script(sbx_redis *r, sbx_redis_script *s)
{
    for (sbx_redis_script *x = r->scripts; x; x = x->next)
        if (x == s)
            return;
    s->next = r->scripts;
    r->scripts = s;
}

/* Lua scripts bound the arguments we send: a lease call has fewer than 16. */
#define EVAL_MAX_ARGS 64

static int send_eval(pending *p, int use_sha)
{
    const char *argv[EVAL_MAX_ARGS + 2];
    size_t lens[EVAL_MAX_ARGS + 2];
    sbx_redis *r = p->r;

    if (!sbx_redis_connected(r))
        return -ENOTCONN;
    argv[0] = use_sha ? "EVALSHA" : "EVAL";
    lens[0] = strlen(argv[0]);
    argv[1] = use_sha ? p->script->sha : p->script->lua;
    lens[1] = strlen(argv[1]);
    for (int i = 0; i < p->argc; i++) {
        argv[i + 2] = p->argv[i];
        lens[i + 2] = p->lens[i];
    }
    if (redisAsyncCommandArgv(r->ac, on_reply, p, p->argc + 2, argv, lens) != REDIS_OK)
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
    p->argc = argc;
    p->argv = calloc((size_t)argc + 1, sizeof(char *));
    p->lens = calloc((size_t)argc + 1, sizeof(size_t));
    if (!p->argv || !p->lens)
        goto fail;
    for (int i = 0; i < argc; i++) {
        p->argv[i] = malloc(lens[i] + 1);
        if (!p->argv[i])
            goto fail;
        memcpy(p->argv[i], argv[i], lens[i]);
        p->argv[i][lens[i]] = '\0';
        p->lens[i] = lens[i];
    }
    rc = send_eval(p, s->sha[0] != '\0');
    if (rc)
        goto fail;
    return 0;
fail:
    pending_free(p);
    return rc;
}
