/* version.c — what sbx_version() and sbx_version_git() return (sbx.h).
 *
 * The Makefile compiles this one file with -DSBX_VERSION="x.y.z" (the
 * VERSION file at the top of the repository) and -DSBX_GIT="<git describe
 * --always --dirty>", empty when the tree is no git checkout (a release
 * tarball). Only this object is rebuilt when either changes
 * ($(BUILD)/gen/version.txt), so a new commit does not recompile the rest.
 */
#include "sbx.h"

#include <stdio.h>

#ifndef SBX_VERSION
#define SBX_VERSION "0.0.0"
#endif
#ifndef SBX_GIT
#define SBX_GIT ""
#endif

const char *sbx_version(void) { return SBX_VERSION; }

const char *sbx_version_git(void) { return SBX_GIT; }

void sbx_version_line(const char *prog, char *out, size_t outlen)
{
    if (*SBX_GIT)
        snprintf(out, outlen, "%s %s (git %s)", prog, SBX_VERSION, SBX_GIT);
    else
        snprintf(out, outlen, "%s %s", prog, SBX_VERSION);
}
