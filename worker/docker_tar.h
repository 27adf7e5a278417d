/* docker_tar.h — the archive of a job's files that the docker provider
 * uploads with PUT /containers/{id}/archive into the run's staging volume
 * before the start (the build's first command copies it into /workspace).
 *
 * The archive holds a root directory (owned by the run's user):
 * "workspace" for a one-off run, "<tag>/workspace" for a session's run
 * (each run of a session stages its files apart, provider_docker.c says
 * why), and each job file under it with its parent directories; a file starting with "#!"
 * gets mode 0755, any other 0644. Why a staging volume and a copy rather
 * than an upload into the container's layer: provider_docker.c.
 */
#ifndef SBX_DOCKER_TAR_H
#define SBX_DOCKER_TAR_H

#include <stddef.h>

#include "buf.h"
#include "sbx.h"

/* The largest archive a valid job makes: every file's bytes plus, per
 * file, a 512-byte header and under 512 bytes of padding; at most 16
 * parent directories per file, one header each; the root's (at most two)
 * directories and the two zero blocks that end the archive. A job past it is not valid
 * (SBX_FILES_MAX, SBX_FILES_BYTES_MAX), so the cap never refuses one. */
#define SBX_DOCKER_TAR_DEPTH 16
#define SBX_DOCKER_TAR_MAX                                                                 \
    ((size_t)SBX_FILES_BYTES_MAX + (size_t)SBX_FILES_MAX * 1024 +                          \
     (size_t)SBX_FILES_MAX * SBX_DOCKER_TAR_DEPTH * 512 + 5 * 512)
/* The root's length (a session's tag is a token and an attempt). */
#define SBX_DOCKER_TAR_ROOT_MAX 64

/* Builds the ustar archive of job's files under root (at most
 * SBX_DOCKER_TAR_ROOT_MAX bytes, one '/' at most) into out, which must be
 * empty and is set up here with SBX_DOCKER_TAR_MAX as its cap; uid/gid own
 * root's directories and the files. Returns 0, or -EINVAL (a path leaving the
 * workspace), -ENAMETOOLONG, -E2BIG, -EFBIG or -ENOMEM with one line in
 * err; out is then freed. */
int sbx__docker_tar(const sbx_job *job, const char *root, unsigned uid, unsigned gid, sbx_buf *out,
                    char *err, size_t errlen);

#endif
