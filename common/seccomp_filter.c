/* seccomp_filter.c — the system calls a sandboxed build may not make.
 *
 * A build is hostile until proven otherwise, and the kernel is the thing it
 * attacks once it is inside bubblewrap's namespaces: most local privilege
 * escalations of the last decade went through a handful of subsystems that
 * no compiler, package manager or test suite needs. This filter takes those
 * away and leaves everything else alone.
 *
 * Shape. Default ALLOW with a deny list, not an allow list: builds run
 * arbitrary toolchains (node, python, gcc, git, JVMs, Go binaries, static
 * musl programs) and an allow list that misses one syscall breaks a real
 * build in a way its author cannot fix. Denied calls fail with EPERM, not
 * SIGSYS: a runtime that probes a feature (libuv tries io_uring, glibc tries
 * clone3, Python tries perf and keyring helpers) sees "not permitted" and
 * takes its fallback instead of dying. The exception is clone3, see below.
 *
 * What is denied, by group, and why a build never needs it:
 *  - io_uring (io_uring_setup, io_uring_enter, io_uring_register): a second
 *    syscall interface that bypasses per-syscall filtering and has been the
 *    richest source of kernel exploits since 5.x; libuv falls back to its
 *    thread pool.
 *  - bpf: loads programs into the kernel (verifier bugs are escalations).
 *  - keyctl family (add_key, request_key, keyctl): kernel keyrings are not
 *    namespaced; a build could read or plant keys visible to other
 *    processes of the uid, and the code has a long CVE history.
 *  - perf_event_open: profiling counters leak kernel addresses and timing
 *    across processes and have had many escalations.
 *  - userfaultfd: lets a build stall kernel copies at will, the standard
 *    tool for winning kernel races.
 *  - kexec_load, kexec_file_load, init_module, finit_module, delete_module:
 *    replacing the kernel or loading code into it.
 *  - the mount family (mount, umount2, pivot_root, move_mount, open_tree,
 *    fsopen, fsconfig, fsmount, fspick, mount_setattr): bwrap has built the
 *    build's view of the filesystem before the filter applies; nothing in the
 *    build may change it, and filesystem parsers are reachable through them.
 *  - swapon, swapoff, reboot, acct, quotactl, quotactl_fd: host
 *    administration.
 *  - clock setting (settimeofday, clock_settime, adjtimex, clock_adjtime):
 *    the clock is the host's, not the sandbox's.
 *  - syslog: the kernel log (addresses, other tenants' messages).
 *  - ptrace, process_vm_readv, process_vm_writev, pidfd_getfd: reading and
 *    writing another process's memory or descriptors. Inside the sandbox
 *    they could only reach the build's own processes, but ptrace is a large
 *    kernel surface of its own; the cost is that gdb, strace and
 *    LeakSanitizer (which stops threads with ptrace) do not work in a build.
 *  - setns, and clone/unshare with CLONE_NEWUSER: a new user namespace
 *    hands the build every capability inside it, which opens kernel code
 *    (netfilter, filesystems) otherwise reserved to root. bwrap's
 *    --disable-userns already stops this by the namespace limit; the filter
 *    is a second line. clone3 passes its flags in memory a filter cannot
 *    read, so it fails with ENOSYS, the one errno on which glibc (and Rust,
 *    Go) fall back to clone, whose flags are checked.
 *  - personality with READ_IMPLIES_EXEC: makes every readable mapping
 *    executable, undoing NX for the process and its children. Other
 *    personalities (and the 0xffffffff query) stay allowed.
 *  - lookup_dcookie, nfsservctl, uselib: obsolete interfaces kept only for
 *    old binaries, with old bugs.
 *  - open_by_handle_at, name_to_handle_at: open files by inode handle,
 *    around the mount namespace (the "shocker" container escape).
 *  - iopl, ioperm, vm86, vm86old: hardware port access and 16-bit mode
 *    (vm86 exists only in the 32-bit ABI, which is denied anyway).
 *  - other ABIs: only the native architecture is in the filter. A 32-bit
 *    (int 0x80) or x32 syscall takes the bad-architecture action and the
 *    process is killed (SIGSYS): the compat entry paths are a kernel surface
 *    of their own, and a process that switched ABI has nothing useful to
 *    fall back to (EPERM on every call, exit included, would leave it
 *    spinning). 32-bit programs therefore cannot run in a build.
 *
 * Where it applies: bubblewrap loads it (`--seccomp FD`, sandbox.c) after its
 * own set-up and just before it execs the build, and on its pid 1, so
 * bwrap's mounts and namespaces are made unfiltered and everything of the
 * build is filtered, with no way to lift it (filters only stack).
 *
 * Cost: the filter is built and exported once per process; each spawn then
 * copies its bytes (under 2 KB) into a fresh memfd, because bwrap reads the
 * fd from its current offset and concurrent spawns must not share one.
 */
#include "seccomp_filter.h"

#include <errno.h>
#include <linux/filter.h>
#include <sched.h>
#include <seccomp.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <unistd.h>

#include "log.h"

/* The kernel refuses a program of more than BPF_MAXINSNS instructions, so
 * nothing larger is worth keeping. */
#define SC_PROG_MAX (BPF_MAXINSNS * sizeof(struct sock_filter))

/* Denied outright with EPERM; grouped and explained in the design comment. */
static const char *const denied[] = {
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "bpf",
    "add_key", "request_key", "keyctl",
    "perf_event_open",
    "userfaultfd",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
    "syslog",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "setns",
    "lookup_dcookie", "nfsservctl", "uselib",
    "open_by_handle_at", "name_to_handle_at",
    "iopl", "ioperm", "vm86", "vm86old",
};

static unsigned char prog[SC_PROG_MAX];
static size_t prog_len; /* 0 until built */

static int rule(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned n,
                const struct scmp_arg_cmp *cmp)
{
    int nr = seccomp_syscall_resolve_name(name);
    int rc;

    /* Every name is known to Debian 12's libseccomp; an older library that
     * lacks one must not quietly build a weaker filter. */
    if (nr == __NR_SCMP_ERROR) {
        sbx_error("seccomp", "libseccomp does not know syscall %s", name);
        return -ENOSYS;
    }
    rc = seccomp_rule_add_array(ctx, action, nr, n, cmp);
    if (rc < 0)
        sbx_error("seccomp", "rule for %s: %s", name, strerror(-rc));
    return rc;
}

static int add_rules(scmp_filter_ctx ctx)
{
    const struct scmp_arg_cmp newuser = SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER);
    int rc = 0;

    for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]) && rc == 0; i++)
        rc = rule(ctx, SCMP_ACT_ERRNO(EPERM), denied[i], 0, NULL);
    if (rc == 0)
        rc = rule(ctx, SCMP_ACT_ERRNO(EPERM), "clone", 1, &newuser);
    if (rc == 0)
        rc = rule(ctx, SCMP_ACT_ERRNO(EPERM), "unshare", 1, &newuser);
    if (rc == 0)
        rc = rule(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL);
    /* personality(p) with READ_IMPLIES_EXEC set, unless p is the query
     * 0xffffffff (the kernel reads 32 bits). libseccomp compares an argument
     * once per rule, so "and not the query" becomes one rule per other bit
     * of the 32: READ_IMPLIES_EXEC set and that bit clear. */
    for (unsigned bit = 0; bit < 32 && rc == 0; bit++) {
        const uint64_t rie = READ_IMPLIES_EXEC, other = UINT64_C(1) << bit;
        const struct scmp_arg_cmp cmp = SCMP_A0(SCMP_CMP_MASKED_EQ, rie | other, rie);
        if (other != rie)
            rc = rule(ctx, SCMP_ACT_ERRNO(EPERM), "personality", 1, &cmp);
    }
    return rc;
}

/* Builds the filter and exports it into prog. */
static int build(void)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW); /* native arch only */
    off_t size;
    ssize_t n;
    int fd = -1, rc;

    if (!ctx)
        return -ENOMEM;
    rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    if (rc == 0)
        rc = add_rules(ctx);
    if (rc < 0)
        goto out;
    /* libseccomp 2.5 exports to an fd only. */
    fd = memfd_create("sbx-seccomp-export", MFD_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    rc = seccomp_export_bpf(ctx, fd);
    if (rc < 0)
        goto out;
    size = lseek(fd, 0, SEEK_END);
    if (size <= 0 || (size_t)size > sizeof(prog) || size % sizeof(struct sock_filter)) {
        rc = size < 0 ? -errno : -E2BIG;
        goto out;
    }
    n = pread(fd, prog, (size_t)size, 0);
    if (n != size) {
        rc = n < 0 ? -errno : -EIO;
        goto out;
    }
    prog_len = (size_t)size;
    sbx_debug("seccomp", "filter built: %zu instructions", prog_len / sizeof(struct sock_filter));
out:
    if (fd >= 0)
        close(fd);
    seccomp_release(ctx);
    return rc;
}

int sbx_seccomp_fd(void)
{
    size_t off = 0;
    int fd = -1, rc = 0;

    /* Only success is kept: a failure (say ENOMEM) is tried again next spawn. */
    if (prog_len == 0 && (rc = build()) < 0) {
        sbx_error("seccomp", "cannot build the filter: %s", strerror(-rc));
        goto out;
    }
    fd = memfd_create("sbx-seccomp", MFD_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    while (off < prog_len) {
        ssize_t w = write(fd, prog + off, prog_len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = -errno;
            goto out;
        }
        off += (size_t)w;
    }
    if (lseek(fd, 0, SEEK_SET) < 0)
        rc = -errno;
out:
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    return fd;
}
