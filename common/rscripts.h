/* rscripts.h — the Lua scripts sbx-worker and sbx-agent run in Redis, one
 * constant per common/lua/<name>.lua. Each file's opening comment gives its
 * ARGV and reply; rkeys.h the keys they touch.
 *
 * The build turns the .lua files into $(BUILD)/gen/common/rscripts.c
 * (common/lua/embed.awk, leaving out comments), so the scripts are edited as
 * Lua and there is no second copy in C. Callers hand them to
 * sbx_redis_script_new() (redis.h), which loads them for EVALSHA.
 */
#ifndef SBX_RSCRIPTS_H
#define SBX_RSCRIPTS_H

/* The worker's leases (worker/lease.c). */
extern const char sbx_lua_acquire[];
extern const char sbx_lua_renew[];
extern const char sbx_lua_fence[];
extern const char sbx_lua_release[];
extern const char sbx_lua_register[];

/* The agent's registration (agent/registry.c). */
extern const char sbx_lua_beat[];
extern const char sbx_lua_leave[];
/* The agent: a slot's lease still ours, and its time left (agent/leasewatch.c). */
extern const char sbx_lua_lease_left[];

#endif
