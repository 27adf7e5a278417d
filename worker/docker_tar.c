/* docker_tar.c — the job files' archive for the docker provider; see
 * docker_tar.h. ustar (POSIX.1-1988) because every engine's archive
 * endpoint reads it and it needs no extension headers for our paths: a job
 * path is at most 255 bytes after "workspace/" (prefix + name). Built whole
 * in memory, in one sbx_buf capped at SBX_DOCKER_TAR_MAX.
 */
#include "docker_tar.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop.h"

/* ustar names: up to 100 bytes, or a prefix of up to 155 and a name of up
 * to 100 split at a '/'. */
static int tar_split(const char *full, char name[101], char prefix[156])
{
    size_t len = strlen(full);
    prefix[0] = '\0';
    if (len <= 100) {
        memcpy(name, full, len + 1);
        return 0;
    }
    for (size_t i = len - 1; i > 0; i--) {
        if (full[i] != '/' || i == len - 1)
            continue;
        if (i <= 155 && len - i - 1 <= 100) {
            memcpy(prefix, full, i);
            prefix[i] = '\0';
            memcpy(name, full + i + 1, len - i);
            return 0;
        }
    }
    return -ENAMETOOLONG;
}

static int tar_add(sbx_buf *t, const char *path, char type, unsigned mode, unsigned uid,
                   unsigned gid, const char *data, size_t len)
{
    char name[101], prefix[156];
    unsigned char h[512];
    unsigned sum = 0;
    size_t pad = (512 - len % 512) % 512;
    int rc;

    if (len > 077777777777ULL) /* what 11 octal digits hold; jobs are far smaller */
        return -EFBIG;
    if ((rc = tar_split(path, name, prefix)) < 0)
        return rc;
    /* The whole entry fits or none of it goes in. */
    if (512 + len + pad > t->max - t->len)
        return -E2BIG;
    memset(h, 0, sizeof(h));
    memcpy(h, name, strlen(name));
    snprintf((char *)h + 100, 8, "%07o", mode & 07777);
    snprintf((char *)h + 108, 8, "%07o", uid & 07777777);
    snprintf((char *)h + 116, 8, "%07o", gid & 07777777);
    snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)len & 077777777777ULL);
    snprintf((char *)h + 136, 12, "%011o", (unsigned)(sbx_wall_ms() / 1000) & 07777777777u);
    memset(h + 148, ' ', 8);
    h[156] = (unsigned char)type;
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memcpy(h + 345, prefix, strlen(prefix));
    for (int i = 0; i < 512; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum & 0777777);
    h[155] = ' ';
    if ((rc = sbx_buf_add(t, h, sizeof(h))) < 0 || (rc = sbx_buf_add(t, data, len)) < 0 ||
        (rc = sbx_buf_fill(t, 0, pad)) < 0)
        return rc;
    return 0;
}

/* Adds "<root>/<dir>/" entries for every parent of path not yet in t. */
static int tar_parents(sbx_buf *t, const char *root, unsigned uid, unsigned gid, const char *path,
                       char **seen, size_t *nseen, size_t maxseen)
{
    char dir[SBX_DOCKER_TAR_ROOT_MAX + 1 + 256 + 1];
    const char *s = path;
    while ((s = strchr(s, '/'))) {
        size_t i;
        int n = snprintf(dir, sizeof(dir), "%s/%.*s/", root, (int)(s - path), path);
        if (n < 0 || (size_t)n >= sizeof(dir))
            return -ENAMETOOLONG;
        for (i = 0; i < *nseen && strcmp(seen[i], dir) != 0; i++)
            ;
        if (i == *nseen) {
            int rc;
            if (*nseen == maxseen)
                return -E2BIG;
            if (!(seen[*nseen] = strdup(dir)))
                return -ENOMEM;
            (*nseen)++;
            if ((rc = tar_add(t, dir, '5', 0755, uid, gid, NULL, 0)) < 0)
                return rc;
        }
        s++;
    }
    return 0;
}

int sbx__docker_tar(const sbx_job *job, const char *root, unsigned uid, unsigned gid, sbx_buf *out,
                    char *err, size_t errlen)
{
    /* Parent directories: each file adds at most its depth, and a job has at
     * most SBX_FILES_MAX files; SBX_DOCKER_TAR_DEPTH levels each is plenty
     * for a workspace. */
    enum { MAX_DIRS = SBX_FILES_MAX * SBX_DOCKER_TAR_DEPTH };
    char **seen = calloc(MAX_DIRS, sizeof(*seen));
    size_t nseen = 0;
    int rc = -ENOMEM, said = 0;

    sbx_buf_init(out, SBX_DOCKER_TAR_MAX);
    if (!seen)
        goto out;
    /* root and each directory above it, outermost first. */
    for (const char *s = root;; s++) {
        char dir[SBX_DOCKER_TAR_ROOT_MAX + 2];
        int n;
        if (*s != '/' && *s != '\0')
            continue;
        n = snprintf(dir, sizeof(dir), "%.*s/", (int)(s - root), root);
        if (n < 0 || (size_t)n >= sizeof(dir)) {
            rc = -ENAMETOOLONG;
            goto out;
        }
        if ((rc = tar_add(out, dir, '5', 0755, uid, gid, NULL, 0)) < 0)
            goto out;
        if (!*s)
            break;
    }
    for (size_t i = 0; i < job->nfiles; i++) {
        const char *path = job->files[i].key, *data = job->files[i].value;
        size_t len = strlen(data);
        char full[SBX_DOCKER_TAR_ROOT_MAX + 1 + 256 + 1];
        if (!sbx_job_path_ok(path)) {
            snprintf(err, errlen, "file path \"%.100s\" leaves the workspace", path);
            said = 1;
            rc = -EINVAL;
            goto out;
        }
        snprintf(full, sizeof(full), "%s/%s", root, path);
        unsigned mode = len >= 2 && data[0] == '#' && data[1] == '!' ? 0755 : 0644;
        if ((rc = tar_parents(out, root, uid, gid, path, seen, &nseen, MAX_DIRS)) < 0 ||
            (rc = tar_add(out, full, '0', mode, uid, gid, data, len)) < 0) {
            snprintf(err, errlen, "file \"%.100s\": %s", path, strerror(-rc));
            said = 1;
            goto out;
        }
    }
    /* Two zero blocks end the archive. */
    rc = sbx_buf_fill(out, 0, 1024);
out:
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory building the workspace archive");
    else if (rc < 0 && !said)
        snprintf(err, errlen, "workspace archive: %s", strerror(-rc));
    for (size_t i = 0; i < nseen; i++)
        free(seen[i]);
    free(seen);
    if (rc < 0)
        sbx_buf_free(out);
    return rc;
}
