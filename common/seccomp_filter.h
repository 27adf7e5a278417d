/* seccomp_filter.h — the system-call filter every sandboxed build runs under.
 *
 * One filter, built once per process with libseccomp and kept as exported
 * BPF bytes; each spawn asks for a fresh file descriptor holding them and
 * hands it to bubblewrap (`--seccomp FD`), which reads it, closes it and
 * loads the filter just before it execs the build, so bwrap's own set-up
 * (mounts, namespaces) runs unfiltered and everything of the build runs
 * filtered. What the filter denies and why is in seccomp_filter.c.
 *
 * Named seccomp_filter, not seccomp: common/ is on the include path, and a
 * common/seccomp.h would hide libseccomp's <seccomp.h>.
 *
 * Not thread-safe: called from the loop thread only (the first call builds).
 */
#ifndef SBX_SECCOMP_FILTER_H
#define SBX_SECCOMP_FILTER_H

/* Returns a new memfd (close-on-exec, offset 0) holding the filter as
 * struct sock_filter instructions, for one spawn; the caller closes it.
 * Returns a negative errno if the filter cannot be built or the fd made:
 * a sandbox must then not start (never run a build unfiltered). */
int sbx_seccomp_fd(void);

#endif
