/* redis.h — one hiredis async connection driven by the sbx loop.
 *
 * The connection reconnects by itself with capped exponential backoff and
 * jitter; while it is down, sbx_redis_cmd() refuses (-ENOTCONN) and the
 * caller decides (a job retries on its own timer). A command in flight when
 * the link drops gets its callback with reply == NULL.
 *
 * Scripts: sbx_redis_script() registers a Lua script once; sbx_redis_evalsha()
 * sends EVALSHA and, on NOSCRIPT (a restarted or flushed Redis), sends the
 * same call as EVAL transparently, so callers see one reply.
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
 * the forms sbx_redis_new() accepts, as the settings' help names them. */
#define SBX_REDIS_URL_DEFAULT "redis://127.0.0.1:6379"
#define SBX_REDIS_URL_FORMS   "redis://host:port[/db] or unix:/path"

/* url: one of SBX_REDIS_URL_FORMS. */
int sbx_redis_new(sbx_loop *loop, const char *url, sbx_redis_state_cb state_cb, void *arg,
                  sbx_redis **out, char *err, size_t errlen);
/* Drops the connection; callbacks of commands still pending are not called. */
void sbx_redis_free(sbx_redis *r);
int sbx_redis_connected(const sbx_redis *r);

int sbx_redis_cmd(sbx_redis *r, sbx_redis_cb cb, void *arg, int argc, const char **argv,
                  const size_t *lens);

sbx_redis_script *sbx_redis_script_new(const char *lua);
void sbx_redis_script_free(sbx_redis_script *s);
/* argv/lens hold numkeys, the keys, then the args (what follows the sha). */
int sbx_redis_evalsha(sbx_redis *r, sbx_redis_script *s, sbx_redis_cb cb, void *arg, int argc,
                      const char **argv, const size_t *lens);

#endif
