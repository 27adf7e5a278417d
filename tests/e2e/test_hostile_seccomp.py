"""test_hostile_seccomp.py — the seccomp filter of common/seccomp_filter.c,
tried by hostile builds run by the real sbx-worker (local provider, real
bubblewrap, real Kafka, Redis and PostgreSQL).

A probe build calls each denied syscall itself (python3 ctypes, x86_64
numbers, arguments chosen so that an unfiltered kernel would let many of
them succeed: io_uring_setup returns a ring, add_key a key, open_tree an fd)
and prints what it got; every one must fail with EPERM (clone3 with ENOSYS,
on which libc falls back to clone). A 32-bit `int 0x80` and an x32 syscall
must kill the caller with SIGSYS. Controls show the filter takes nothing
else: getpid, the personality query, threads, fork, and real toolchain
builds (node, npm offline, python3 with a venv, gcc with pthreads, git).

Before the filter (base build, this machine, same sandbox): 12 probes
succeeded (io_uring_setup, add_key, keyctl, perf_event_open, userfaultfd,
open_tree, adjtimex, clock_adjtime, process_vm_readv, process_vm_writev,
name_to_handle_at, personality(READ_IMPLIES_EXEC)), 36 of the 51 did not
get EPERM (the rest failed on the kernel's own checks: EBADF, ENOSPC,
ENOSYS...), the 32-bit getpid ran, and /proc showed no filter. After: all
51 fail as listed (EPERM; clone3 ENOSYS), both other ABIs die of SIGSYS.
"""

import json
import re

from test_worker import enqueue, job, topics, wait_terminal, workdir  # noqa: F401 (fixtures)

# Runs in the build: each probe is (name, x86_64 number, arguments), the
# buffers built here because they must live in the probing process. Prints
# "PROBE name ok:<return>" or "PROBE name <errno name>".
PROBE = r'''
import ctypes, errno, os, signal, subprocess, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
P = ctypes.c_void_p
L = ctypes.c_long

def buf(n):
    return ctypes.create_string_buffer(n)

def addr(b):
    return ctypes.cast(b, P).value

def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(L(nr), *[L(a) if isinstance(a, int) else a for a in args])
    e = ctypes.get_errno()
    return r, e

def show(name, r, e):
    print("PROBE %s %s" % (name, ("ok:%d" % r) if r >= 0 else errno.errorcode.get(e, str(e))),
          flush=True)

iov_local = buf(16); iov_remote = buf(16); data = buf(8); dst = buf(8)
ctypes.memmove(iov_local, (ctypes.c_uint64 * 2)(addr(dst), 8), 16)
ctypes.memmove(iov_remote, (ctypes.c_uint64 * 2)(addr(data), 8), 16)

uring = buf(120)                                     # struct io_uring_params
bpfattr = buf(72)                                    # BPF_MAP_CREATE: array, 4/4 bytes, 1 entry
ctypes.memmove(bpfattr, (ctypes.c_uint32 * 4)(2, 4, 4, 1), 16)
perf = buf(128)                                      # software cpu-clock, user only
ctypes.memmove(perf, (ctypes.c_uint32 * 2)(1, 128), 8)
ctypes.memmove(ctypes.byref(perf, 40), (ctypes.c_uint64 * 1)(1 << 5), 8)  # exclude_kernel
timex = buf(256)                                     # modes 0: a read-only query
handle = buf(136); ctypes.memmove(handle, (ctypes.c_uint32 * 1)(128), 4)
mount_id = buf(4)

probes = [
    ("io_uring_setup", 425, 1, uring),
    ("io_uring_enter", 426, -1, 0, 0, 0, 0, 0),
    ("io_uring_register", 427, -1, 0, 0, 0),
    ("bpf", 321, 0, bpfattr, 72),
    ("add_key", 248, b"user", b"sbx-probe", b"x", 1, -2),
    ("request_key", 249, b"user", b"sbx-nokey", 0, 0),
    ("keyctl", 250, 0, -3, 1),
    ("perf_event_open", 298, perf, 0, -1, -1, 0),
    ("userfaultfd", 323, 1),                          # UFFD_USER_MODE_ONLY
    ("kexec_load", 246, 0, 0, 0, 0),
    ("kexec_file_load", 320, -1, -1, 0, 0, 0),
    ("init_module", 175, 0, 0, b""),
    ("finit_module", 313, -1, b"", 0),
    ("delete_module", 176, b"sbxnone", 0),
    ("mount", 165, b"none", b"/tmp", b"tmpfs", 0, 0),
    ("umount2", 166, b"/tmp", 0),
    ("pivot_root", 155, b"/tmp", b"/tmp"),
    ("open_tree", 428, -100, b"/tmp", 0),             # AT_FDCWD, no clone flag
    ("move_mount", 429, -1, b"", -1, b"", 0),
    ("fsopen", 430, b"tmpfs", 0),
    ("fsconfig", 431, -1, 0, 0, 0, 0),
    ("fsmount", 432, -1, 0, 0),
    ("fspick", 433, -100, b"/tmp", 0),
    ("mount_setattr", 442, -100, b"/tmp", 0, 0, 0),
    ("swapon", 167, b"/tmp/none", 0),
    ("swapoff", 168, b"/tmp/none"),
    ("reboot", 169, 0, 0, 0, 0),                      # bad magic: harmless even unfiltered
    ("settimeofday", 164, 0, 0),
    ("clock_settime", 227, 0, 0),
    ("adjtimex", 159, timex),
    ("clock_adjtime", 305, 0, timex),
    ("acct", 163, 0),
    ("quotactl", 179, 0, 0, 0, 0),
    ("quotactl_fd", 443, -1, 0, 0, 0),
    ("syslog", 103, 10, 0, 0),                        # SYSLOG_ACTION_SIZE_BUFFER
    ("ptrace", 101, 3, 999999, 0, 0),                 # PEEKUSER of no process
    ("process_vm_readv", 310, os.getpid(), iov_local, 1, iov_remote, 1, 0),
    ("process_vm_writev", 311, os.getpid(), iov_local, 1, iov_remote, 1, 0),
    ("pidfd_getfd", 438, -1, 0, 0),
    ("setns", 308, -1, 0),
    ("unshare_newuser", 272, 0x10000000),
    ("clone_newuser", 56, 0x10000000 | 17, 0, 0, 0, 0),   # CLONE_NEWUSER | SIGCHLD
    ("clone3", 435, 0, 0),
    ("personality_rie", 135, 0x0400000),              # READ_IMPLIES_EXEC
    ("lookup_dcookie", 212, 0, 0, 0),
    ("nfsservctl", 180, 0, 0, 0),
    ("uselib", 134, 0),
    ("open_by_handle_at", 304, -100, handle, 0),
    ("name_to_handle_at", 303, -100, b"/tmp", handle, mount_id, 0),
    ("iopl", 172, 3),
    ("ioperm", 173, 0, 1, 1),
]
for name, nr, *args in probes:
    r, e = call(nr, *args)
    if name == "clone_newuser" and r == 0:
        os._exit(0)                                   # the child of a clone that worked
    if name == "clone_newuser" and r > 0:
        os.waitpid(r, 0)
    show(name, r, e)

# Controls: what builds do must still work.
show("getpid", *call(39))
show("personality_query", *call(135, 0xffffffff))
show("personality_linux", *call(135, 0))
show("unshare_none", *call(272, 0))
import threading
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("PROBE thread ok:0", flush=True)
pid = os.fork()
if pid == 0:
    os._exit(7)
print("PROBE fork ok:%d" % os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)

# Other ABIs, each in a child that may be killed: x32 getpid, then 32-bit.
def child(name, argv):
    p = subprocess.run(argv)
    print("PROBE %s %s" % (name, ("killed:" + signal.Signals(-p.returncode).name)
                           if p.returncode < 0 else "exit:%d" % p.returncode), flush=True)

child("x32_getpid", [sys.executable, "-c",
      "import ctypes; l = ctypes.CDLL(None, use_errno=True); l.syscall.restype = ctypes.c_long;"
      "r = l.syscall(ctypes.c_long(0x40000000 | 39)); raise SystemExit(0 if r > 0 else 3)"])
child("int80_getpid", ["./int80"])
# bwrap closes the filter's fd after reading it; the wrapper closes 3..6.
print("PROBE fds %s" % ",".join(sorted(os.listdir("/proc/self/fd"), key=int)), flush=True)
print("PROBE done yes", flush=True)
'''

# i386 getpid (20) through int 0x80 from a 64-bit program: exit 0 if it
# returned a pid, 3 if it returned an error.
INT80 = r'''
int main(void)
{
    long r = 20;
    __asm__ volatile("int $0x80" : "+a"(r) : : "memory");
    return r > 0 ? 0 : 3;
}
'''

# Every denied probe and the errno it must get.
DENIED = {n: "EPERM" for n in (
    "io_uring_setup io_uring_enter io_uring_register bpf add_key request_key keyctl "
    "perf_event_open userfaultfd kexec_load kexec_file_load init_module finit_module "
    "delete_module mount umount2 pivot_root open_tree move_mount fsopen fsconfig fsmount "
    "fspick mount_setattr swapon swapoff reboot settimeofday clock_settime adjtimex "
    "clock_adjtime acct quotactl quotactl_fd syslog ptrace process_vm_readv "
    "process_vm_writev pidfd_getfd setns unshare_newuser clone_newuser personality_rie "
    "lookup_dcookie nfsservctl uselib open_by_handle_at name_to_handle_at iopl ioperm").split()}
DENIED["clone3"] = "ENOSYS"


def run_one(run_sbx, pg, start_worker, topics, workdir, j, timeout=180):  # noqa: F811
    w = start_worker(SBX_WORK_DIR=workdir, **topics)
    ids = enqueue(run_sbx, topics, [j])
    wait_terminal(pg, ids, timeout, [w])
    return pg.query("SELECT status, exit_code, log_tail, error FROM sbx.runs WHERE job_id = %s",
                    j["job_id"])[0]


def test_denied_syscalls_fail_with_eperm(run_sbx, pg, start_worker, topics, workdir):  # noqa: F811
    """Each syscall of the deny list fails with EPERM inside a build (clone3:
    ENOSYS), the filter is loaded (/proc/self/status), other ABIs are killed,
    and the controls work."""
    j = job("p-seccomp", "grep -E '^Seccomp' /proc/self/status | sed 's/^/STATUS /'; "
            "gcc -O0 -o int80 int80.c && python3 probe.py",
            files={"probe.py": PROBE, "int80.c": INT80}, timeout_s=120)
    st, code, tail, err = run_one(run_sbx, pg, start_worker, topics, workdir, j)
    got = dict(m.groups() for m in re.finditer(r"^PROBE (\S+) (\S+)$", tail or "", re.M))
    print("probe results:", json.dumps(got, sort_keys=True))
    assert (st, code) == ("succeeded", 0) and got.get("done") == "yes", (st, code, err, tail)
    wrong = {n: got.get(n) for n, want in DENIED.items() if got.get(n) != want}
    assert not wrong, "denied syscalls that did not fail as they should: %r" % wrong
    status = dict(m.groups() for m in re.finditer(r"^STATUS (\S+):\s+(\S+)$", tail, re.M))
    assert status.get("Seccomp") == "2" and int(status.get("Seccomp_filters", "0")) >= 1, status
    assert got["x32_getpid"] == "killed:SIGSYS", got["x32_getpid"]
    assert got["int80_getpid"] == "killed:SIGSYS", got["int80_getpid"]
    for control in ("getpid", "personality_query", "personality_linux", "unshare_none", "thread"):
        assert got[control].startswith("ok:"), (control, got[control])
    assert got["fork"] == "ok:7", got["fork"]
    assert got["fds"] == "0,1,2,3", "descriptors leaked into the build: " + got["fds"]


TOOLCHAINS = r'''
set -eu
export GIT_AUTHOR_NAME=sbx GIT_AUTHOR_EMAIL=sbx@example.invalid
export GIT_COMMITTER_NAME=sbx GIT_COMMITTER_EMAIL=sbx@example.invalid
export npm_config_cache=/tmp/npm-cache npm_config_offline=true npm_config_audit=false
export npm_config_fund=false npm_config_update_notifier=false

echo "== node"
node -e 'const fs = require("fs"); fs.readFile("/etc/hosts", (e, d) => {
  if (e) throw e; console.log("node-async-read", d.length > 0, require("os").cpus().length > 0); })'

echo "== npm"
mkdir -p dep app
cd dep
npm init -y >/dev/null
echo 'module.exports = () => "dep-works";' > index.js
npm pack --silent
cd ../app
npm init -y >/dev/null
npm install ../dep/dep-1.0.0.tgz
node -e 'console.log("npm-" + require("dep")())'
cd ..

echo "== python"
python3 -m venv --without-pip /tmp/venv
/tmp/venv/bin/python -c '
import sys, threading, subprocess, concurrent.futures as cf
assert sys.prefix == "/tmp/venv", sys.prefix
with cf.ThreadPoolExecutor(4) as ex:
    assert sum(ex.map(lambda x: x * x, range(10))) == 285
print("python-" + subprocess.run(["echo", "sub"], capture_output=True, text=True).stdout.strip())'

echo "== gcc"
cat > t.c <<'EOF'
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static void *run(void *a) { return a; }
int main(void)
{
    pthread_t t;
    void *r;
    int st;
    pid_t p;
    if (pthread_create(&t, NULL, run, (void *)42) || pthread_join(t, &r) || r != (void *)42)
        return 1;
    p = fork();
    if (p == 0)
        _exit(5);
    if (waitpid(p, &st, 0) != p || WEXITSTATUS(st) != 5)
        return 2;
    printf("gcc-works\n");
    return 0;
}
EOF
gcc -O2 -pthread -o t t.c
./t

echo "== git"
git init -q repo
cd repo
echo hello > a.txt
git add a.txt
git commit -q -m "first commit"
git log --oneline | sed 's/^[0-9a-f]* /git-log: /'
echo "== all toolchains ok"
'''


def test_toolchains_still_build(run_sbx, pg, start_worker, topics, workdir):  # noqa: F811
    """node, npm (offline: pack and install a local package), python3 (a venv,
    threads, a subprocess), gcc (pthreads, fork) and git (init, add, commit,
    log) all work under the filter."""
    # node reserves far more address space than it uses, and RLIMIT_AS counts it.
    j = job("p-toolchains", TOOLCHAINS, timeout_s=240,
            resources={"memory_mb": 8192, "pids": 512})
    st, code, tail, err = run_one(run_sbx, pg, start_worker, topics, workdir, j, timeout=300)
    assert (st, code) == ("succeeded", 0), (st, code, err, tail)
    for want in ("node-async-read true true", "npm-dep-works", "python-sub", "gcc-works",
                 "git-log: first commit", "== all toolchains ok"):
        assert want in tail, (want, tail)
