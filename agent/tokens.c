/* tokens.c — see tokens.h. The file is a header line and one "<slot>
 * <token>" line per slot ever seen here; a handful of lines, so a raise
 * rewrites it whole.
 *
 * Tokens from the future. A raise is for good: a token far above anything
 * issued (a forged 2^62, say) would make the slot refuse every real owner
 * for as long as the counter needs to get there, i.e. forever. Tokens come
 * from one counter, {sbx}:fence in Redis (common/rkeys.h): acquire INCRs
 * it, and renew and fence.lua lift it to at least every token they see, so
 * every token a worker holds is at most the counter. The rule is therefore
 * exact rather than a guess: a token above the newest issued token the
 * agent knows of is held until the agent has read the counter (GET, on
 * the connection the registry already uses), and refused if it is still
 * above it (409 future_token; 503 token_unverified when Redis does not
 * answer within a couple of seconds). A token at most the last counter
 * read needs no round trip. Why not "at most JUMP above the newest seen
 * for the slot": the counter is shared by every slot of every VM, so a
 * slot's next real token can be any distance above its last one (a slot
 * idle while thousands of leases went elsewhere, a fresh slot whose first
 * token is in the millions), and a forger could climb JUMP at a time. The
 * check is server.c's (it has the loop and the Redis question); this file
 * only keeps what was accepted. */
#include "tokens.h"
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOKENS_HEADER "sbx-agent-tokens v1\n"
/* Slots a VM has ever had: capacity is at most 64 at a time; a long-lived
 * work dir that saw many capacities and ids still stays far below this. */
#define TOKENS_MAX 1024
/* Longest slot id: a 100-byte agent id plus "#63". */
#define TOKENS_SLOT_MAX 127
/* Longest line: slot, space, 20 digits, newline. */
#define TOKENS_LINE_MAX (TOKENS_SLOT_MAX + 24)

typedef struct entry {
    char slot[TOKENS_SLOT_MAX + 1];
    int64_t token;
} entry;

struct sbx_tokens {
    char path[PATH_MAX];
    char tmp[PATH_MAX];
    char dir[PATH_MAX];
    entry *e;
    size_t n;
};

static entry *find(const sbx_tokens *t, const char *slot)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->e[i].slot, slot) == 0)
            return &t->e[i];
    return NULL;
}

static int parse_line(sbx_tokens *t, char *line)
{
    char *sp = strchr(line, ' '), *end;
    long long v;

    if (!sp || sp == line || (size_t)(sp - line) > TOKENS_SLOT_MAX)
        return -1;
    *sp = '\0';
    errno = 0;
    v = strtoll(sp + 1, &end, 10);
    if (errno || end == sp + 1 || *end != '\0' || v < 0 || find(t, line) || t->n >= TOKENS_MAX)
        return -1;
    snprintf(t->e[t->n].slot, sizeof(t->e[t->n].slot), "%s", line);
    t->e[t->n].token = v;
    t->n++;
    return 0;
}

static int load(sbx_tokens *t, char *err, size_t errlen)
{
    FILE *f = fopen(t->path, "re");
    char line[TOKENS_LINE_MAX + 2];
    int lineno = 0, rc = 0;

    if (!f) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "%s: %s", t->path, strerror(errno));
        return -errno;
    }
    while (fgets(line, sizeof(line), f)) {
        size_t len = strlen(line);
        lineno++;
        if (len == 0 || line[len - 1] != '\n') {
            rc = -EINVAL;
            break;
        }
        if (lineno == 1) {
            if (strcmp(line, TOKENS_HEADER) != 0) {
                rc = -EINVAL;
                break;
            }
            continue;
        }
        line[len - 1] = '\0';
        if (parse_line(t, line) != 0) {
            rc = -EINVAL;
            break;
        }
    }
    if (!rc && (ferror(f) || lineno == 0))
        rc = -EINVAL;
    fclose(f);
    if (rc)
        snprintf(err, errlen, "%s: line %d is not what sbx-agent writes; the fencing tokens "
                 "cannot be trusted (restore the file, or delete it only if no old worker "
                 "can still reach this VM)", t->path, lineno);
    return rc;
}

int sbx_tokens_open(const char *path, sbx_tokens **out, char *err, size_t errlen)
{
    sbx_tokens *t = calloc(1, sizeof(*t));
    char *slash;
    int rc;

    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->e = calloc(TOKENS_MAX, sizeof(*t->e));
    if (!t->e || (size_t)snprintf(t->path, sizeof(t->path), "%s", path) >= sizeof(t->path) ||
        (size_t)snprintf(t->tmp, sizeof(t->tmp), "%s.tmp", path) >= sizeof(t->tmp)) {
        rc = t->e ? -ENAMETOOLONG : -ENOMEM;
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        sbx_tokens_free(t);
        return rc;
    }
    snprintf(t->dir, sizeof(t->dir), "%s", path);
    slash = strrchr(t->dir, '/');
    if (slash && slash != t->dir)
        *slash = '\0';
    else
        snprintf(t->dir, sizeof(t->dir), "%s", slash ? "/" : ".");
    rc = load(t, err, errlen);
    if (rc) {
        sbx_tokens_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void sbx_tokens_free(sbx_tokens *t)
{
    if (!t)
        return;
    free(t->e);
    free(t);
}

int64_t sbx_tokens_get(const sbx_tokens *t, const char *slot)
{
    const entry *e = find(t, slot);
    return e ? e->token : 0;
}

static int save(const sbx_tokens *t)
{
    char *buf = malloc(sizeof(TOKENS_HEADER) + t->n * (TOKENS_LINE_MAX + 1));
    size_t len;
    int fd = -1, dfd = -1, rc = 0;

    if (!buf)
        return -ENOMEM;
    len = (size_t)sprintf(buf, "%s", TOKENS_HEADER);
    for (size_t i = 0; i < t->n; i++)
        len += (size_t)sprintf(buf + len, "%s %" PRId64 "\n", t->e[i].slot, t->e[i].token);
    fd = open(t->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    rc = sbx_sandbox_write_all(fd, buf, len);
    if (!rc && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && !rc)
        rc = -errno;
    if (rc)
        goto out;
    if (rename(t->tmp, t->path) < 0) {
        rc = -errno;
        goto out;
    }
    /* The rename itself must survive a power cut too. */
    dfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        rc = -errno;
out:
    if (dfd >= 0)
        close(dfd);
    if (rc)
        unlink(t->tmp);
    free(buf);
    return rc;
}

int sbx_tokens_raise(sbx_tokens *t, const char *slot, int64_t token)
{
    entry *e = find(t, slot);
    int64_t old;
    int rc;

    if (strlen(slot) > TOKENS_SLOT_MAX || strchr(slot, ' ') || strchr(slot, '\n'))
        return -EINVAL;
    if (e && e->token >= token)
        return 0;
    if (!e) {
        if (t->n >= TOKENS_MAX)
            return -ENOSPC;
        e = &t->e[t->n++];
        snprintf(e->slot, sizeof(e->slot), "%s", slot);
        e->token = 0;
    }
    old = e->token;
    e->token = token;
    rc = save(t);
    if (rc) {
        e->token = old;
        if (old == 0 && e == &t->e[t->n - 1])
            t->n--;
    }
    return rc;
}
