/* test_rkeys.c — the Redis contract holds together: every key the Lua
 * scripts (common/lua/) name is one common/rkeys.h describes, every key
 * rkeys.h lists is used by some script, and the embedding (embed.awk) sent
 * code only. What the scripts do is test_lease.c's and test_vmpool.c's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rkeys.h"
#include "rscripts.h"

static const struct { const char *name, *lua; } scripts[] = {
    {"acquire", sbx_lua_acquire}, {"renew", sbx_lua_renew},       {"fence", sbx_lua_fence},
    {"release", sbx_lua_release}, {"register", sbx_lua_register}, {"beat", sbx_lua_beat},
    {"leave", sbx_lua_leave},     {"lease_left", sbx_lua_lease_left},
};
#define NSCRIPTS (sizeof(scripts) / sizeof(scripts[0]))

/* Whole keys, then prefixes (a prefix is followed by an id in the script). */
static const char *const whole[] = {SBX_RKEY_FENCE, SBX_RKEY_DEADLINES, SBX_RKEY_QUIET,
                                    SBX_RKEY_KEPT, SBX_RKEY_MARKED, SBX_RKEY_SLOTS SBX_VMPOOL_POOL,
                                    SBX_RKEY_FREE SBX_VMPOOL_POOL};
static const char *const prefixes[] = {SBX_RKEY_SLOTS, SBX_RKEY_SLOTS_NEW, SBX_RKEY_FREE,
                                       SBX_RKEY_LEASE, SBX_RKEY_PROJECT,   SBX_RKEY_VM,
                                       SBX_RKEY_SESSION};
#define NWHOLE (sizeof(whole) / sizeof(whole[0]))
#define NPREFIXES (sizeof(prefixes) / sizeof(prefixes[0]))

static int known(const char *key, size_t len)
{
    for (size_t i = 0; i < NWHOLE; i++)
        if (strlen(whole[i]) == len && memcmp(whole[i], key, len) == 0)
            return 1;
    for (size_t i = 0; i < NPREFIXES; i++)
        if (strlen(prefixes[i]) == len && memcmp(prefixes[i], key, len) == 0)
            return 1;
    return 0;
}

/* Every quoted '{sbx}:...' literal of every script is in rkeys.h. */
static void test_scripts_name_only_known_keys(void **state)
{
    int seen = 0;
    (void)state;
    for (size_t s = 0; s < NSCRIPTS; s++) {
        for (const char *p = scripts[s].lua; (p = strstr(p, "'{sbx}")) != NULL; p++) {
            const char *end = strchr(p + 1, '\'');
            assert_non_null(end);
            if (!known(p + 1, (size_t)(end - p - 1)))
                fail_msg("%s.lua names %.*s, which rkeys.h does not describe", scripts[s].name,
                         (int)(end - p - 1), p + 1);
            seen++;
        }
    }
    assert_true(seen > 0);
}

/* Nothing in rkeys.h is stale: some script uses every key. */
static void test_every_key_is_used(void **state)
{
    (void)state;
    for (size_t i = 0; i < NWHOLE + NPREFIXES; i++) {
        const char *key = i < NWHOLE ? whole[i] : prefixes[i - NWHOLE];
        char quoted[64];
        int used = 0;
        snprintf(quoted, sizeof(quoted), "'%s'", key);
        if (i >= NWHOLE)
            quoted[strlen(quoted) - 1] = '\0'; /* a prefix: the id follows */
        for (size_t s = 0; s < NSCRIPTS && !used; s++)
            used = strstr(scripts[s].lua, quoted) != NULL;
        if (!used)
            fail_msg("no script uses %s", key);
    }
}

/* embed.awk leaves comments and blank lines out, and the include in. */
static void test_embedded_code_only(void **state)
{
    (void)state;
    for (size_t s = 0; s < NSCRIPTS; s++) {
        const char *lua = scripts[s].lua;
        size_t n = strlen(lua);
        assert_true(n > 0);
        assert_int_equal(lua[n - 1], '\n');
        for (const char *line = lua; *line; line = strchr(line, '\n') + 1) {
            const char *c = line + strspn(line, " ");
            if (*c == '\n' || strncmp(c, "--", 2) == 0)
                fail_msg("%s.lua: a blank or comment line was embedded", scripts[s].name);
        }
    }
    /* vm_slots.lua opens both VM scripts. */
    assert_true(strncmp(sbx_lua_beat, "local id, cap = ARGV[1], tonumber(ARGV[2])\n", 43) == 0);
    assert_true(strncmp(sbx_lua_leave, "local id, cap = ARGV[1], tonumber(ARGV[2])\n", 43) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scripts_name_only_known_keys),
        cmocka_unit_test(test_every_key_is_used),
        cmocka_unit_test(test_embedded_code_only),
    };
    return cmocka_run_group_tests_name("rkeys", tests, NULL, NULL);
}
