/* redact.c — see sbx_redact.h. The list of members the job schema names is
 * kept here, next to the rule that uses it; a member added to the schema and
 * not here shows as SBX_REDACTED in stored specs, which is the safe way to
 * be out of date. */
#include "sbx_redact.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sbx_sha256.h"
#include "sbx_utf8.h"

/* The top-level members of schemas/job.v1.schema.json (and "egress", the
 * per-job network allowlist of issue 9). "env" is among them: its values are
 * redacted one by one below. "session" must be kept: the trigger that
 * follows a session's runs reads it from sbx.runs.spec (0010). */
static const char *const known[] = {
    "v", "job_id", "project_id", "command", "script", "env", "files", "image", "timeout_s",
    "resources", "network", "egress", "provider", "trace", "metadata", "session", "submitted_at",
};

static int is_known(const char *name)
{
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(name, known[i]) == 0)
            return 1;
    return 0;
}

/* Replaces the value of member `name` of o in place, without disturbing the
 * iteration over o (json_object_object_add on an existing key swaps the
 * value in its slot). */
static int blank(json_object *o, const char *name)
{
    json_object *r = json_object_new_string(SBX_REDACTED);
    if (!r || json_object_object_add(o, name, r) != 0) {
        json_object_put(r);
        return -ENOMEM;
    }
    return 0;
}

static int redact(json_object *root)
{
    struct json_object_iterator it = json_object_iter_begin(root), end = json_object_iter_end(root);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *name = json_object_iter_peek_name(&it);
        json_object *v = json_object_iter_peek_value(&it);
        int rc = 0;
        if (strcmp(name, "env") == 0 && json_object_is_type(v, json_type_object)) {
            struct json_object_iterator e = json_object_iter_begin(v), eend = json_object_iter_end(v);
            for (; !json_object_iter_equal(&e, &eend) && !rc; json_object_iter_next(&e))
                rc = blank(v, json_object_iter_peek_name(&e));
        } else if (strcmp(name, "env") == 0 || !is_known(name)) {
            rc = blank(root, name);
        }
        if (rc)
            return rc;
    }
    return 0;
}

int sbx__redact_job(const char *msg, size_t len, char **out)
{
    json_tokener *tok = NULL;
    json_object *root = NULL;
    const char *text;
    int rc = -EINVAL;

    *out = NULL;
    if (!msg || len > INT32_MAX || !sbx__utf8_valid(msg, len))
        goto out;
    if (!(tok = json_tokener_new_ex(SBX_REDACT_DEPTH))) {
        rc = -ENOMEM;
        goto out;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    root = json_tokener_parse_ex(tok, msg, (int)len);
    /* Whole and an object: a prefix that parses, then more than white
     * space, is not it. */
    if (!root || json_tokener_get_error(tok) != json_tokener_success ||
        !json_object_is_type(root, json_type_object))
        goto out;
    for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
        if (!strchr(" \t\r\n", msg[i]) || msg[i] == '\0')
            goto out;
    if ((rc = redact(root)) != 0)
        goto out;
    text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
                                                    JSON_C_TO_STRING_NOSLASHESCAPE);
    rc = text && (*out = strdup(text)) ? 0 : -ENOMEM;
out:
    json_object_put(root);
    if (tok)
        json_tokener_free(tok);
    return rc;
}

int sbx__job_fingerprint(const char *msg, size_t len, char **redacted, char hex[65])
{
    char *text = NULL;
    int rc = sbx__redact_job(msg, len, &text);
    if (rc)
        return rc;
    sbx__sha256_hex(text, strlen(text), hex);
    if (redacted)
        *redacted = text;
    else
        free(text);
    return 0;
}
