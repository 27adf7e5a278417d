/* jobfiles.h — what a job's `files` must also be, beyond the schema, before a
 * provider that ships them whole (docker's archive, fly's config.files) hands
 * them on: no component longer than a filesystem takes (NAME_MAX, 255 bytes)
 * and no two entries that clash (one path a parent directory of another: a
 * file and a directory of the same path). The schema cannot say either, and
 * the backend would refuse them only later, as an error that looks like its
 * own. The local provider and the agent find the same while writing the
 * workspace (common/sandbox.c). Paths are otherwise valid (the parser checked
 * sbx_job_path_ok), and JSON member names are unique, so no two are equal.
 */
#ifndef SBX_JOBFILES_H
#define SBX_JOBFILES_H

#include <stddef.h>

#include "sbx.h"

/* NAME_MAX of the filesystems builds write to (ext4, xfs, tmpfs, overlay). */
#define SBX_FILE_NAME_MAX 255

/* 0 when every file can be written as given; else -EINVAL and one line in
 * err naming the first offending path (the job's fault, provider.h). */
int sbx__job_files_check(const sbx_job *job, char *err, size_t errlen);

#endif
