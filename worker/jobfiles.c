/* jobfiles.c — see jobfiles.h. A job has at most SBX_FILES_MAX (64) files,
 * so comparing every pair is 2016 prefix tests at most: no index needed. */
#include "jobfiles.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Whether dir is a proper parent directory of path ("a" of "a/b"). */
static int parent_of(const char *dir, const char *path)
{
    size_t n = strlen(dir);
    return strncmp(dir, path, n) == 0 && path[n] == '/';
}

int sbx__job_files_check(const sbx_job *job, char *err, size_t errlen)
{
    for (size_t i = 0; i < job->nfiles; i++) {
        const char *p = job->files[i].key;
        for (const char *c = p; *c;) {
            size_t n = strcspn(c, "/");
            if (n > SBX_FILE_NAME_MAX) {
                snprintf(err, errlen, "files: %.100s...: a name longer than %d bytes", p,
                         SBX_FILE_NAME_MAX);
                return -EINVAL;
            }
            c += n + (c[n] == '/');
        }
        for (size_t k = 0; k < job->nfiles; k++) {
            const char *q = job->files[k].key;
            if (k != i && (strcmp(p, q) == 0 || parent_of(p, q))) {
                snprintf(err, errlen, "files: %.100s clashes with %.100s (a file and a directory)",
                         p, q);
                return -EINVAL;
            }
        }
    }
    return 0;
}
