/* redis.h — one hiredis async connection driven by the sbx loop.
 *
 * The connection reconnects by itself with capped exponential backoff and
 * jitter; while it is down, sbx_redis_cmd() refuses (-ENOTCONN) and the
 * caller decides (a job retries on its own timer). A command in flight when
 * the link drops gets its callback with reply == NULL.
 *
 * Scripts: sbx_redis_script() registers a Lua script once; sbx_redis_evalsha()
 * sends EVALSHA and, on NOSCRIPT (a restarted or flushed Redis), sends the
 * same call as EVAL transparently, so callers see one reply. A script is
 * loaded (SCRIPT LOAD) when first used and again on every connection, so
 * its calls carry the sha, not the body.
 *
 * Every (re)connection first sends, pipelined, AUTH (when the URL carries a
 * password), SELECT (db > 0) and PING; only when PING answers is the link
 * "connected", the scripts loaded and state_cb told. A refusal (wrong
 * password, NOAUTH, a bad db) is logged once at error level naming
 * SBX_REDIS_URL, kept for sbx_redis_last_error(), and the connection is
 * retried with the same backoff. No log line or error ever holds the
 * password: it lives only in the handle, and is wiped when it is freed.
 *
 * TLS (rediss://) is refused: hiredis 0.14 (Debian 12) has no TLS; see the
 * README for a sidecar.
 */
#ifndef SBX_REDIS_H
#define SBX_REDIS_H

#include <stddef.h>
#include <hiredis/hiredis.h>

#include "loop.h"

typedef struct sbx_redis sbx_redis;
typedef struct sbx_redis_script sbx_redis_script;

/* reply is NULL when the connection failed; it is freed after the call. */
typedef void (*sbx_redis_cb)(void *arg, redisReply *reply);
typedef void (*sbx_redis_state_cb)(void *arg, int connected);

/* SBX_REDIS_URL, read by sbx-worker and sbx-agent alike: its default and
 * the forms sbx_redis_new() accepts, as the settings' help names them.
 * USER and PASSWORD are percent-decoded; the userinfo ends at the last '@',
 * so a raw '@', ':' or '/' in the password works too (a '%' must be %25).
 * In the unix form the query (user=, password=, db=) is percent-decoded,
 * '&' in a value must be %26. */
#define SBX_REDIS_URL_DEFAULT "redis://127.0.0.1:6379"
#define SBX_REDIS_URL_FORMS                                                   \
    "redis://[[USER]:PASSWORD@]host[:port][/db] or "                          \
    "unix:/path[?password=PASSWORD[&user=USER][&db=N]]"

/* The settings tables cap SBX_REDIS_URL at 511 bytes, so no decoded part
 * is longer; sun_path (108 bytes) caps a socket path. */
#define SBX_REDIS_CRED_MAX 512
#define SBX_REDIS_PATH_MAX 108

/* What SBX_REDIS_URL says. user is "" for the default user, pass "" for
 * no AUTH; unix_path "" for TCP. */
typedef struct sbx_redis_url {
    char host[256];
    int port;
    char unix_path[SBX_REDIS_PATH_MAX];
    int db;
    char user[SBX_REDIS_CRED_MAX];
    char pass[SBX_REDIS_CRED_MAX];
} sbx_redis_url;

/* Parses url (one of SBX_REDIS_URL_FORMS) into out. Returns 0, or -EINVAL
 * with one line in err saying what to fix; err never quotes the URL. */
int sbx_redis_parse_url(const char *url, sbx_redis_url *out, char *err, size_t errlen);

/* url: one of SBX_REDIS_URL_FORMS. */
int sbx_redis_new(sbx_loop *loop, const char *url, sbx_redis_state_cb state_cb, void *arg,
                  sbx_redis **out, char *err, size_t errlen);
/* Drops the connection; callbacks of commands still pending are not called. */
void sbx_redis_free(sbx_redis *r);
int sbx_redis_connected(const sbx_redis *r);
/* Why the last connection attempt was refused or failed ("" once
 * connected): one line, no password; for readiness reports. */
const char *sbx_redis_last_error(const sbx_redis *r);

int sbx_redis_cmd(sbx_redis *r, sbx_redis_cb cb, void *arg, int argc, const char **argv,
                  const size_t *lens);

sbx_redis_script *sbx_redis_script_new(const char *lua);
void sbx_redis_script_free(sbx_redis_script *s);
/* argv/lens hold numkeys, the keys, then the args (what follows the sha). */
int sbx_redis_evalsha(sbx_redis *r, sbx_redis_script *s, sbx_redis_cb cb, void *arg, int argc,
                      const char **argv, const size_t *lens);
/* The loop the connection runs on (a caller that batches its commands
 * flushes them on its timers). */
sbx_loop *sbx_redis_loop(const sbx_redis *r);

#endif
