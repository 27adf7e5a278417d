/* netns.c — a networked sandbox's own network namespace, its NAT and its
 * egress filter, brought up while bwrap holds the command back.
 *
 * Design. bwrap always unshares the network namespace (a networked build
 * never shares the host's: no host loopback, no host abstract unix sockets,
 * no host interfaces). bwrap writes the sandbox's pid to --info-fd as soon
 * as the namespaces exist and waits on --block-fd before it runs the
 * command; in between, from the loop:
 *
 *   1. getent ahostsv4 <the job's host names>, as the sandbox's uid, in
 *      parallel with bwrap's own set-up (only if the job names hosts).
 *   2. nft -f (egress.c's ruleset) inside the namespace. Root in the initial
 *      user namespace may change any namespace's rules; as non-root we first
 *      join the namespace's owning user namespace, which is ours.
 *   3. slirp4netns on the namespace: it creates tap0 (10.0.2.100/24, gateway
 *      10.0.2.2, resolver 10.0.2.3) and carries the build's connections out
 *      as ordinary sockets of the host. --disable-host-loopback keeps the
 *      gateway from meaning the host's 127.0.0.1; the rules keep everything
 *      else in 10/8 (the gateway and any port of the resolver but 53) out.
 *      It runs as the sandbox's uid, unprivileged: a bug in its packet
 *      parsing gives a hostile build that uid outside the sandbox, not root.
 *      Its --enable-sandbox needs to be root in its own user namespace,
 *      which the sandbox's uid is not in bwrap's, so it is not used;
 *      --enable-seccomp is. /dev/net/tun is often root-only (0600): as root
 *      we give the NAT a private mount namespace where /dev/net holds a tun
 *      node owned by the sandbox's uid.
 *   4. On slirp4netns's --ready-fd byte, one byte to bwrap's block fd: the
 *      command starts with its network up and filtered.
 * Any failure or the setup deadline: cb(FAILED), and the caller kills the
 * sandbox; the command never runs without its rules.
 *
 * Why the build cannot undo the rules: bwrap gives the command no
 * capabilities, and --disable-userns (sandbox.c) stops it from making a user
 * namespace of its own, so it never holds CAP_NET_ADMIN over this namespace,
 * whose owner is bwrap's user namespace. Why slirp4netns and not pasta:
 * Debian 12's passt is an early snapshot whose defaults copy the host's
 * addresses and forward ports of the host's loopback into the namespace,
 * while slirp4netns (1.2) has the --ready-fd and --disable-host-loopback this
 * needs; both would need the same rules.
 *
 * Processes. Each helper is our child, watched with a pidfd on the loop and
 * reaped with waitid(P_PIDFD); they die with us (PR_SET_PDEATHSIG). The NAT
 * is killed when bwrap ends (sbx__netns_stop) and the sandbox waits for it
 * to be reaped before it reports the end. A uid sweep of sandbox.c may reap
 * a helper of the sandbox's uid first: waitid's ECHILD then means "gone".
 */
#include "netns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "sandbox.h"

/* slirp4netns's fixed addresses in its default 10.0.2.0/24. */
#define NS_DNS "10.0.2.3"
#define NS_RESOLV "nameserver " NS_DNS "\n"
/* bwrap's --info-fd JSON is about 250 bytes. */
#define NS_INFO_MAX 1024
/* The ruleset: at most four lists of SBX_EGRESS_MAX entries of at most 20
 * bytes each ("255.255.255.255/32, "), plus a page of fixed text. */
#define NS_RULES_MAX (4 * SBX_EGRESS_MAX * 20 + 4096)
/* getent prints three lines of about 40 bytes per address; more than
 * SBX_EGRESS_MAX addresses are not used anyway. */
#define NS_LOOKUP_MAX (3 * 48 * SBX_EGRESS_MAX)
/* How much of nft's complaint goes into the error line. */
#define NS_ERR_MAX 200
/* The whole setup when the caller gives no limit: name lookups may wait for
 * the resolver's own timeouts (5 s a try). */
#define NS_SETUP_MS 15000
/* The tun device (Documentation/networking/tuntap.rst). */
#define NS_TUN_MAJOR 10
#define NS_TUN_MINOR 200

const char *const sbx__netns_bwrap_args[] = {
    "--info-fd", "8", "--block-fd", "9",
    "--perms", "0444", "--ro-bind-data", "10", "/etc/resolv.conf", NULL,
};
_Static_assert(SBX_NETNS_FD_INFO == 8 && SBX_NETNS_FD_BLOCK == 9 && SBX_NETNS_FD_RESOLV == 10,
               "sbx__netns_bwrap_args spells the fd numbers");

typedef enum ns_state {
    NS_WAIT_PID,  /* reading the sandbox's pid from bwrap; names may be resolving */
    NS_RULES,     /* nft running in the namespace */
    NS_NAT,       /* slirp4netns started; waiting for its ready byte */
    NS_UP,        /* the command is released; the NAT runs */
    NS_STOPPED,   /* failed or stopped: helpers killed, waiting to reap them */
} ns_state;

static const char *const state_names[] = {"wait_pid", "rules", "nat", "up", "stopped"};

typedef struct ns_proc {
    sbx_netns *ns;
    const char *what;     /* for messages */
    pid_t pid;            /* 0: not running */
    int pidfd;
    sbx_io io;
    int out;              /* memfd its output went to, or -1 */
    int status;           /* exit code, 128+signal, or -1 if unknown */
} ns_proc;

struct sbx_netns {
    sbx_loop *loop;
    ns_state state;
    sbx_netns_cb cb;
    void *arg;
    const sbx_netns_host *host;
    int uid, gid;
    pid_t bwrap;

    sbx_cidrs job;        /* the job's list, names resolved into it */
    int job_set;
    char **lookup_argv;   /* getent ahostsv4 <names>; NULL: no names */
    int looked_up;

    int info_r, info_w, block_r, block_w, resolv;
    int net_fd, user_fd;  /* the sandbox's namespace and its owner */
    int ready_r;
    int got_pid;
    sbx_io info_io, ready_io;
    char info[NS_INFO_MAX + 1];
    size_t info_len;

    ns_proc lookup, nft, nat;
    sbx_timer setup_t;
    int setup_ms;
    char pending[128];    /* a failure inside our own call, reported by setup_t */
};

static int pidfd_open_(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

static int pidfd_kill(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void set_state(sbx_netns *ns, ns_state to)
{
    sbx_debug("netns", "state %s -> %s bwrap=%d", state_names[ns->state], state_names[to],
              (int)ns->bwrap);
    ns->state = to;
}

static int memfd_with(const char *name, const char *data, size_t len)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if ((len && sbx_sandbox_write_all(fd, data, len) < 0) || lseek(fd, 0, SEEK_SET) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* ---- the host's tools and policy ---- */

static char *find_tool(const char *name)
{
    static const char *const dirs[] = {"/usr/sbin", "/usr/bin", "/sbin", "/bin"};
    char path[64];
    char *p = sbx_sandbox_resolve_exe(name);

    /* nft lives in /usr/sbin, which a non-root PATH often lacks. */
    for (size_t i = 0; !p && i < sizeof(dirs) / sizeof(*dirs); i++) {
        snprintf(path, sizeof(path), "%s/%s", dirs[i], name);
        if (access(path, X_OK) == 0)
            p = strdup(path);
    }
    return p;
}

int sbx_netns_host_init(sbx_netns_host *h, const char *allow, const char *deny, char *err,
                        size_t errlen)
{
    static const struct {
        const char *name, *package;
        size_t off;
    } tools[] = {
        {"slirp4netns", "slirp4netns", offsetof(sbx_netns_host, nat)},
        {"nft", "nftables", offsetof(sbx_netns_host, nft)},
        {"getent", "libc-bin", offsetof(sbx_netns_host, getent)},
    };
    int rc;

    memset(h, 0, sizeof(*h));
    rc = sbx_egress_init(&h->egress, allow, deny, err, errlen);
    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof(tools) / sizeof(*tools); i++) {
        char **slot = (char **)((char *)h + tools[i].off);
        *slot = find_tool(tools[i].name);
        if (!*slot) {
            snprintf(err, errlen, "network for builds needs %s (Debian package %s)",
                     tools[i].name, tools[i].package);
            sbx_netns_host_free(h);
            return -ENOENT;
        }
    }
    return 0;
}

void sbx_netns_host_free(sbx_netns_host *h)
{
    sbx_egress_free(&h->egress);
    free(h->nat);
    free(h->nft);
    free(h->getent);
    memset(h, 0, sizeof(*h));
}

/* ---- helper processes: the child between fork and exec ---- */

typedef struct helper {
    const char *exe;
    char *const *argv;
    int in, out, err;        /* -> 0, 1, 2; -1: /dev/null */
    int extra[3];            /* -> 3, 4, 5 */
    int nextra;
    int user_fd, net_fd;     /* namespaces to join, in that order; -1: none */
    int uid, gid;            /* -1: stay */
    int tun;                 /* a tun node of uid's in a private mount namespace */
    pid_t parent;
} helper;

/* Async-signal-safe calls only: the worker has threads (librdkafka's). */
static _Noreturn void helper_exec(const helper *h)
{
    char *envp[] = {NULL};
    struct sigaction sa;
    sigset_t none;
    int src[6], hi[6], n = 3 + h->nextra, null;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &sa, NULL);
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0 || setsid() < 0)
        _exit(120);
    null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        _exit(121);
    src[0] = h->in >= 0 ? h->in : null;
    src[1] = h->out >= 0 ? h->out : null;
    src[2] = h->err >= 0 ? h->err : null;
    for (int i = 0; i < h->nextra; i++)
        src[3 + i] = h->extra[i];
    /* Above every target first, so no dup2 clobbers a source. */
    for (int i = 0; i < n; i++)
        if ((hi[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 16)) < 0)
            _exit(121);
    for (int i = 0; i < n; i++)
        if (dup2(hi[i], i) < 0)
            _exit(121);
    if (close_range((unsigned)n, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        _exit(121);
    if (h->tun) {
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("tmpfs", "/dev/net", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=4k") < 0 ||
            mknod("/dev/net/tun", S_IFCHR | 0600, makedev(NS_TUN_MAJOR, NS_TUN_MINOR)) < 0 ||
            chown("/dev/net/tun", (uid_t)h->uid, (gid_t)h->gid) < 0)
            _exit(122);
    }
    if ((h->user_fd >= 0 && setns(h->user_fd, CLONE_NEWUSER) < 0) ||
        (h->net_fd >= 0 && setns(h->net_fd, CLONE_NEWNET) < 0))
        _exit(123);
    if (h->uid >= 0 &&
        (setgroups(0, NULL) < 0 || setresgid((gid_t)h->gid, (gid_t)h->gid, (gid_t)h->gid) < 0 ||
         setresuid((uid_t)h->uid, (uid_t)h->uid, (uid_t)h->uid) < 0))
        _exit(124);
    /* After the uid change, which clears it; if we were orphaned before, go. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != h->parent)
        _exit(125);
    execve(h->exe, h->argv, envp);
    _exit(127);
}

static const char *exit_meaning(int status)
{
    switch (status) {
    case 120: return " (signals)";
    case 121: return " (fds)";
    case 122: return " (tun device)";
    case 123: return " (joining the namespace)";
    case 124: return " (uid/gid)";
    case 125: return " (parent gone)";
    case 127: return " (exec)";
    default: return "";
    }
}

/* ---- helper processes: the loop side ---- */

static void proc_done(sbx_netns *ns, ns_proc *p);

static void on_proc_exit(sbx_io *io, int events)
{
    ns_proc *p = io->data;
    int status, rc;
    (void)events;

    rc = sbx_sandbox_try_reap(p->pidfd, &status, NULL);
    if (rc == 0)
        return;
    p->status = rc < 0 ? -1 : status; /* ECHILD: a uid sweep reaped it first */
    sbx_io_stop(&p->io);
    close_fd(&p->pidfd);
    p->pid = 0;
    sbx_debug("netns", "%s exited status=%d bwrap=%d", p->what, p->status, (int)p->ns->bwrap);
    proc_done(p->ns, p);
}

static void proc_reap(ns_proc *p);

static int proc_spawn(sbx_netns *ns, ns_proc *p, const helper *h)
{
    helper hh = *h;
    int e;

    hh.parent = getpid();
    p->pid = fork();
    if (p->pid < 0) {
        e = errno;
        p->pid = 0;
        return -e;
    }
    if (p->pid == 0)
        helper_exec(&hh);
    p->pidfd = pidfd_open_(p->pid);
    if (p->pidfd < 0) {
        int status;
        e = errno;
        kill(p->pid, SIGKILL);
        while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
            ;
        p->pid = 0;
        return -e;
    }
    sbx_io_init(&p->io, p->pidfd, on_proc_exit, p);
    if ((e = sbx_io_set(ns->loop, &p->io, SBX_READ)) != 0) {
        proc_reap(p); /* unwatched, it would never be reaped from the loop */
        return e;
    }
    return 0;
}

static void proc_kill(ns_proc *p)
{
    if (p->pid > 0 && p->pidfd >= 0)
        pidfd_kill(p->pidfd, SIGKILL);
}

/* Blocking: for free, after SIGKILL. */
static void proc_reap(ns_proc *p)
{
    siginfo_t si;
    sbx_io_stop(&p->io);
    if (p->pid > 0 && p->pidfd >= 0) {
        pidfd_kill(p->pidfd, SIGKILL);
        while (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
    }
    close_fd(&p->pidfd);
    close_fd(&p->out);
    p->pid = 0;
}

/* The first line of what p printed, for an error message. */
static void proc_output(ns_proc *p, char *out, size_t outlen)
{
    ssize_t n = p->out >= 0 ? pread(p->out, out, outlen - 1, 0) : -1;
    out[n > 0 ? n : 0] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
}

/* ---- the steps ---- */

static void fail(sbx_netns *ns, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void stop_all(sbx_netns *ns)
{
    sbx_timer_stop(ns->loop, &ns->setup_t);
    sbx_io_stop(&ns->info_io);
    sbx_io_stop(&ns->ready_io);
    proc_kill(&ns->lookup);
    proc_kill(&ns->nft);
    proc_kill(&ns->nat);
    if (ns->state != NS_STOPPED)
        set_state(ns, NS_STOPPED);
}

static void fail(sbx_netns *ns, const char *fmt, ...)
{
    char why[NS_ERR_MAX + 64];
    va_list ap;

    if (ns->state == NS_STOPPED || ns->state == NS_UP)
        return;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    sbx_warn("netns", "network setup failed bwrap=%d: %s", (int)ns->bwrap, why);
    stop_all(ns);
    ns->cb(ns->arg, SBX_NETNS_FAILED, why);
}

/* Lines of `getent ahostsv4`: "<address> STREAM <name>", each address three
 * times (STREAM, DGRAM, RAW). Exit 2 means some name had no address: those
 * allow nothing, which is the safe reading. */
static void read_lookup(sbx_netns *ns)
{
    char *buf = malloc(NS_LOOKUP_MAX + 1);
    ssize_t n;

    if (!buf) {
        fail(ns, "out of memory");
        return;
    }
    n = pread(ns->lookup.out, buf, NS_LOOKUP_MAX, 0);
    buf[n > 0 ? n : 0] = '\0';
    for (char *line = buf, *next; line && *line; line = next) {
        char addr[INET_ADDRSTRLEN + 1];
        sbx_cidr c;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (sscanf(line, "%16s", addr) != 1)
            continue;
        memset(&c, 0, sizeof(c));
        c.family = AF_INET;
        c.bits = 32;
        if (inet_pton(AF_INET, addr, c.addr) != 1 || sbx_cidrs_has(&ns->job, AF_INET, c.addr))
            continue;
        if (sbx_cidrs_add(&ns->job, &c) != 0)
            break; /* the cap: fewer destinations, never more */
    }
    free(buf);
    if (ns->lookup.status != 0)
        sbx_info("netns", "job egress: some host names did not resolve (getent exit %d)",
                 ns->lookup.status);
    close_fd(&ns->lookup.out);
    ns->looked_up = 1;
}

static void on_ready(sbx_io *io, int events)
{
    sbx_netns *ns = io->data;
    char c;
    ssize_t n = read(ns->ready_r, &c, 1);
    (void)events;

    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    sbx_io_stop(&ns->ready_io);
    close_fd(&ns->ready_r);
    if (n != 1)
        return; /* slirp4netns died; on_proc_exit says so */
    if (write(ns->block_w, "x", 1) != 1) {
        fail(ns, "releasing the command: %s", strerror(errno));
        return;
    }
    close_fd(&ns->block_w);
    sbx_timer_stop(ns->loop, &ns->setup_t);
    set_state(ns, NS_UP);
}

static void start_nat(sbx_netns *ns)
{
    static char *const argv[] = {
        "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
        "--enable-seccomp", "--ready-fd=3", "--userns-path=/proc/self/fd/4",
        "--netns-type=path", "/proc/self/fd/5", "tap0", NULL,
    };
    helper h = {.exe = ns->host->nat, .argv = argv, .in = -1, .out = -1, .err = -1,
                .user_fd = -1, .net_fd = -1, .uid = ns->uid, .gid = ns->gid};
    int p[2], rc;

    if (pipe2(p, O_CLOEXEC) < 0) {
        fail(ns, "pipe: %s", strerror(errno));
        return;
    }
    h.extra[0] = p[1];
    h.extra[1] = ns->user_fd;
    h.extra[2] = ns->net_fd;
    h.nextra = 3;
    h.tun = geteuid() == 0 && ns->uid >= 0;
    ns->ready_r = p[0];
    set_state(ns, NS_NAT);
    rc = proc_spawn(ns, &ns->nat, &h);
    close(p[1]);
    if (rc) {
        fail(ns, "starting slirp4netns: %s", strerror(-rc));
        return;
    }
    fcntl(ns->ready_r, F_SETFL, fcntl(ns->ready_r, F_GETFL) | O_NONBLOCK);
    sbx_io_init(&ns->ready_io, ns->ready_r, on_ready, ns);
    if ((rc = sbx_io_set(ns->loop, &ns->ready_io, SBX_READ)) != 0)
        fail(ns, "loop: %s", strerror(-rc));
}

static void start_rules(sbx_netns *ns)
{
    static char *const argv[] = {"nft", "-f", "/dev/stdin", NULL};
    unsigned char dns[4];
    sbx_cidrs hostaddrs = {0};
    sbx_buf rules;
    helper h = {.exe = ns->host->nft, .argv = argv, .out = -1, .user_fd = -1, .uid = -1,
                .gid = -1};
    int rc, in = -1;

    sbx_buf_init(&rules, NS_RULES_MAX);
    inet_pton(AF_INET, NS_DNS, dns);
    rc = sbx_egress_host_addrs(&hostaddrs);
    if (!rc)
        rc = sbx_egress_ruleset(&ns->host->egress, &hostaddrs, ns->job_set ? &ns->job : NULL,
                                dns, &rules);
    if (rc) {
        fail(ns, "egress rules: %s", strerror(-rc));
        goto out;
    }
    in = memfd_with("sbx-nft", rules.p, rules.len);
    ns->nft.out = memfd_with("sbx-nft-err", NULL, 0);
    if (in < 0 || ns->nft.out < 0) {
        fail(ns, "memfd: %s", strerror(-(in < 0 ? in : ns->nft.out)));
        goto out;
    }
    h.in = in;
    h.err = ns->nft.out;
    h.net_fd = ns->net_fd;
    /* Root may change any namespace; otherwise become its owner first. */
    if (geteuid() != 0)
        h.user_fd = ns->user_fd;
    set_state(ns, NS_RULES);
    rc = proc_spawn(ns, &ns->nft, &h);
    if (rc)
        fail(ns, "starting nft: %s", strerror(-rc));
out:
    if (in >= 0)
        close(in);
    sbx_cidrs_free(&hostaddrs);
    sbx_buf_free(&rules);
}

/* Both the pid and the job's addresses are in: on to the rules. */
static void maybe_rules(sbx_netns *ns)
{
    if (ns->state == NS_WAIT_PID && ns->got_pid && ns->looked_up)
        start_rules(ns);
}

static void proc_done(sbx_netns *ns, ns_proc *p)
{
    char msg[NS_ERR_MAX];

    if (ns->state == NS_STOPPED) {
        if (sbx__netns_idle(ns))
            ns->cb(ns->arg, SBX_NETNS_IDLE, "");
        return;
    }
    if (p == &ns->lookup) {
        read_lookup(ns);
        maybe_rules(ns);
    } else if (p == &ns->nft) {
        if (p->status != 0) {
            proc_output(p, msg, sizeof(msg));
            fail(ns, "nft exit %d%s: %s", p->status, exit_meaning(p->status), msg);
            return;
        }
        close_fd(&p->out);
        start_nat(ns);
    } else if (ns->state == NS_UP) {
        sbx_warn("netns", "slirp4netns exited (status %d) bwrap=%d: the build has no network "
                 "from now on", p->status, (int)ns->bwrap);
    } else {
        fail(ns, "slirp4netns exit %d%s before the network was up", p->status,
             exit_meaning(p->status));
    }
}

/* The sandbox's pid 1 -> its network namespace and that namespace's owner.
 * The pidfd is opened first and checked last, so the namespace opened in
 * between is that process's even if the pid were reused. */
static int open_namespaces(sbx_netns *ns, pid_t child)
{
    char path[64], buf[512];
    const char *paren;
    struct pollfd pfd;
    int fd, ppid = 0, rc = -ESRCH;
    ssize_t n;

    pfd.fd = pidfd_open_(child);
    pfd.events = POLLIN;
    if (pfd.fd < 0)
        return -errno;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)child);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        goto out;
    buf[n] = '\0';
    paren = strrchr(buf, ')'); /* the name may contain anything but ends there */
    if (!paren || sscanf(paren + 1, " %*c %d", &ppid) != 1 || ppid != (int)ns->bwrap)
        goto out;
    snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)child);
    ns->net_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (ns->net_fd < 0) {
        rc = -errno;
        goto out;
    }
    if (poll(&pfd, 1, 0) != 0)
        goto out; /* exited: the namespace may not be its */
    ns->user_fd = ioctl(ns->net_fd, NS_GET_USERNS);
    if (ns->user_fd < 0) {
        rc = -errno;
        goto out;
    }
    fcntl(ns->user_fd, F_SETFD, FD_CLOEXEC);
    rc = 0;
out:
    close(pfd.fd);
    return rc;
}

/* bwrap's info: {"child-pid": N, ...} */
static void on_info(sbx_io *io, int events)
{
    sbx_netns *ns = io->data;
    const char *k, *c;
    int eof = 0, rc;
    long pid = 0;
    (void)events;

    for (;;) {
        ssize_t n = read(ns->info_r, ns->info + ns->info_len, NS_INFO_MAX - ns->info_len);
        if (n > 0) {
            ns->info_len += (size_t)n;
            ns->info[ns->info_len] = '\0';
            if (ns->info_len < NS_INFO_MAX)
                continue;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n == 0) {
            eof = 1;
        }
        break;
    }
    k = strstr(ns->info, "\"child-pid\"");
    c = k ? k + strlen("\"child-pid\"") : NULL;
    while (c && (*c == ' ' || *c == ':' || *c == '\n' || *c == '\t'))
        c++;
    if (c && *c >= '1' && *c <= '9') {
        const char *d = c;
        while (*d >= '0' && *d <= '9' && pid < 1 << 30)
            pid = pid * 10 + (*d++ - '0');
        if (!*d)
            pid = 0; /* the number may go on in the next read */
    }
    if (pid <= 0) {
        if (eof || ns->info_len >= NS_INFO_MAX)
            fail(ns, "bwrap gave no sandbox pid on its info fd");
        return;
    }
    /* The read end stays open until the end: bwrap writes its info in
     * several write()s (the pid, then each namespace's id), and a write
     * after we closed would kill bwrap with SIGPIPE. The rest is a few
     * hundred bytes, which the pipe holds unread. */
    sbx_io_stop(&ns->info_io);
    rc = open_namespaces(ns, (pid_t)pid);
    if (rc) {
        fail(ns, "the sandbox's network namespace (pid %ld): %s", pid, strerror(-rc));
        return;
    }
    ns->got_pid = 1;
    maybe_rules(ns);
}

static void on_setup_timeout(sbx_timer *t)
{
    sbx_netns *ns = t->data;
    if (ns->pending[0])
        fail(ns, "%s", ns->pending);
    else
        fail(ns, "network setup took longer than %d ms (state %s)", ns->setup_ms,
             state_names[ns->state]);
}

/* ---- the API ---- */

int sbx__netns_new(sbx_loop *loop, const sbx_netns_spec *spec, sbx_netns_cb cb, void *arg,
                   sbx_netns **out, char *err, size_t errlen)
{
    sbx_netns *ns;
    size_t nnames = 0, nall = 0;
    int p[2], rc = 0;

    if (!spec->host || !spec->host->nat) {
        snprintf(err, errlen, "network: the host has no network set-up");
        return -EINVAL;
    }
    ns = calloc(1, sizeof(*ns));
    if (!ns) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    ns->loop = loop;
    ns->cb = cb;
    ns->arg = arg;
    ns->host = spec->host;
    ns->uid = spec->uid;
    ns->gid = spec->gid;
    ns->setup_ms = spec->setup_ms > 0 ? spec->setup_ms : NS_SETUP_MS;
    ns->info_r = ns->info_w = ns->block_r = ns->block_w = ns->resolv = -1;
    ns->net_fd = ns->user_fd = ns->ready_r = -1;
    ns->lookup = (ns_proc){.ns = ns, .what = "getent", .pidfd = -1, .out = -1};
    ns->nft = (ns_proc){.ns = ns, .what = "nft", .pidfd = -1, .out = -1};
    ns->nat = (ns_proc){.ns = ns, .what = "slirp4netns", .pidfd = -1, .out = -1};
    sbx_timer_init(&ns->setup_t, on_setup_timeout, ns);
    ns->looked_up = 1;

    /* The job's list: addresses now, names for getent. */
    if (spec->allow) {
        ns->job_set = 1;
        while (spec->allow[nall])
            nall++;
        for (size_t i = 0; i < nall && !rc; i++) {
            sbx_cidr c;
            switch (sbx_egress_entry_kind(spec->allow[i])) {
            case SBX_EGRESS_CIDR:
                sbx_cidr_parse(spec->allow[i], &c);
                rc = sbx_cidrs_add(&ns->job, &c);
                break;
            case SBX_EGRESS_NAME:
                nnames++;
                break;
            default:
                snprintf(err, errlen, "egress: %.64s is not a CIDR or host name", spec->allow[i]);
                rc = -EINVAL;
            }
        }
        if (!rc && nnames) {
            ns->lookup_argv = calloc(nnames + 3, sizeof(*ns->lookup_argv));
            rc = ns->lookup_argv ? 0 : -ENOMEM;
            if (!rc) {
                size_t k = 0;
                ns->lookup_argv[k++] = "getent";
                ns->lookup_argv[k++] = "ahostsv4";
                for (size_t i = 0; i < nall; i++)
                    if (sbx_egress_entry_kind(spec->allow[i]) == SBX_EGRESS_NAME)
                        ns->lookup_argv[k++] = spec->allow[i];
                ns->looked_up = 0;
            }
        }
        if (rc) {
            if (rc != -EINVAL)
                snprintf(err, errlen, "egress: %s", strerror(-rc));
            goto out;
        }
    }

    /* What bwrap holds. */
    if (pipe2(p, O_CLOEXEC) < 0)
        goto sys;
    ns->info_r = p[0];
    ns->info_w = p[1];
    if (pipe2(p, O_CLOEXEC) < 0)
        goto sys;
    ns->block_r = p[0];
    ns->block_w = p[1];
    ns->resolv = memfd_with("sbx-resolv", NS_RESOLV, strlen(NS_RESOLV));
    if (ns->resolv < 0) {
        errno = -ns->resolv;
        goto sys;
    }
    *out = ns;
    return 0;
sys:
    rc = -errno;
    snprintf(err, errlen, "network: %s", strerror(errno));
out:
    sbx__netns_free(ns);
    return rc;
}

void sbx__netns_child_fds(const sbx_netns *ns, int fds[SBX_NETNS_NFDS])
{
    fds[0] = ns->info_w;
    fds[1] = ns->block_r;
    fds[2] = ns->resolv;
}

/* A failure found inside one of our calls is reported from the loop. */
static void fail_soon(sbx_netns *ns, const char *what, int rc)
{
    snprintf(ns->pending, sizeof(ns->pending), "%s: %s", what, strerror(-rc));
    sbx_timer_stop(ns->loop, &ns->setup_t);
    sbx_timer_start(ns->loop, &ns->setup_t, 0);
}

void sbx__netns_start(sbx_netns *ns, pid_t bwrap)
{
    int rc;

    ns->bwrap = bwrap;
    close_fd(&ns->info_w);
    close_fd(&ns->block_r);
    close_fd(&ns->resolv);
    sbx_timer_start(ns->loop, &ns->setup_t, (uint64_t)ns->setup_ms);
    fcntl(ns->info_r, F_SETFL, fcntl(ns->info_r, F_GETFL) | O_NONBLOCK);
    sbx_io_init(&ns->info_io, ns->info_r, on_info, ns);
    if ((rc = sbx_io_set(ns->loop, &ns->info_io, SBX_READ)) != 0) {
        fail_soon(ns, "loop", rc);
        return;
    }
    if (ns->lookup_argv) {
        helper h = {.exe = ns->host->getent, .argv = ns->lookup_argv, .in = -1, .err = -1,
                    .user_fd = -1, .net_fd = -1, .uid = ns->uid, .gid = ns->gid};
        ns->lookup.out = memfd_with("sbx-getent", NULL, 0);
        h.out = ns->lookup.out;
        rc = ns->lookup.out < 0 ? ns->lookup.out : proc_spawn(ns, &ns->lookup, &h);
        if (rc)
            fail_soon(ns, "starting getent", rc);
    }
}

void sbx__netns_stop(sbx_netns *ns)
{
    if (ns)
        stop_all(ns);
}

int sbx__netns_idle(const sbx_netns *ns)
{
    return !ns || (ns->lookup.pid == 0 && ns->nft.pid == 0 && ns->nat.pid == 0);
}

void sbx__netns_free(sbx_netns *ns)
{
    if (!ns)
        return;
    stop_all(ns);
    proc_reap(&ns->lookup);
    proc_reap(&ns->nft);
    proc_reap(&ns->nat);
    close_fd(&ns->info_r);
    close_fd(&ns->info_w);
    close_fd(&ns->block_r);
    close_fd(&ns->block_w);
    close_fd(&ns->resolv);
    close_fd(&ns->net_fd);
    close_fd(&ns->user_fd);
    close_fd(&ns->ready_r);
    sbx_cidrs_free(&ns->job);
    free(ns->lookup_argv);
    free(ns);
}
