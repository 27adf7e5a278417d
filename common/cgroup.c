/* cgroup.c — a control group per sandbox (cgroup.h), v2 or v1.
 *
 * Why cgroups: rlimits count per process (RLIMIT_AS) or per uid
 * (RLIMIT_NPROC) and not at all for tmpfs pages or for CPU shares, so a
 * build of several processes could use many times its memory_mb, and any
 * number of cores. A cgroup counts the sandbox as one: every page it
 * touches (tmpfs and /dev/shm too: shmem is charged to the cgroup that
 * faults it in), its CPU time against a CFS quota, its tasks against
 * pids.max. The limits hold for bwrap and everything below it because the
 * forked child joins before it execs bwrap.
 *
 * Where. We nest under the cgroup we were started in (/proc/self/cgroup),
 * the way a delegated service should: whatever limits the host put on the
 * worker also bound its builds. v2 when the unified hierarchy offers
 * memory, cpu and pids in our cgroup (we enable them for our subtree; the
 * kernel refuses that while our own cgroup holds processes and is not the
 * root, and we then fall back); else v1, one directory per hierarchy
 * (memory is required, cpu, pids and freezer are used when mounted; controllers
 * co-mounted in one hierarchy share a directory). The probe runs once per
 * process and checks that we can create directories there: anything else
 * (not root, read-only cgroupfs) means "no cgroups", and the caller keeps
 * its rlimits. Under systemd (Delegate=yes) the unit's cgroup holds our own
 * process, so we first move into a leaf of it (move_to_leaf()).
 *
 * Pausing (a session's sandbox, sbx_cgroup_freeze): v2's cgroup.freeze, or
 * v1's freezer hierarchy. A frozen v1 task takes SIGKILL only once thawed,
 * so every removal thaws first, a crashed predecessor's leftovers too.
 *
 * Ending. The caller frees the cgroup only once the sandbox's processes are
 * gone (its uid sweep), so rmdir normally succeeds at once; whatever is
 * still inside is SIGKILLed from cgroup.procs and waited for (bounded by
 * CG_EMPTY_MS). Charges of tmpfs pages still mounted do not keep a cgroup
 * alive: rmdir succeeds and the kernel drops the memcg when they go.
 */
#include "cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* CFS period: the kernel's default; the quota is cpus times it. */
#define CG_PERIOD_US 100000
/* The smallest quota the kernel takes. */
#define CG_MIN_QUOTA_US 1000
/* How long processes left inside may take to die before rmdir gives up. */
#define CG_EMPTY_MS 2000
/* One line of /proc/self/mountinfo or /proc/self/cgroup: paths are bounded
 * by PATH_MAX, the rest is short. */
#define CG_LINE_MAX (2 * PATH_MAX + 512)
/* Control files we read (memory.events, oom_control...): a few lines. */
#define CG_SMALL_READ 1024

enum { CG_MEM, CG_CPU, CG_PIDS, CG_FRZ, CG_N };
static const char *const ctl_names[CG_N] = {"memory", "cpu", "pids", "freezer"};
/* How long freezing may take: the kernel stops each task at its next
 * return to user space, normally within a few ms. */
#define CG_FREEZE_MS 2000

/* The probe's answer: our own cgroup's directory per controller. */
static struct {
    int probed;
    int version;            /* 0: none, 1, 2 */
    char base[CG_N][PATH_MAX];
} g;

struct sbx_cgroup {
    int ndirs;
    char dir[CG_N][PATH_MAX];
    int ctl[CG_N];          /* which controller dir[i] is for (v1); CG_MEM for v2 */
    int procs[CG_N];        /* dir[i]/cgroup.procs, open for the child's join */
    int frozen;             /* sbx_cgroup_freeze(cg, 1) last */
};

/* ---- files ---- */

static int put(const char *dir, const char *file, const char *val)
{
    char path[PATH_MAX];
    int fd, rc = 0;
    ssize_t n;

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return -ENAMETOOLONG;
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    n = write(fd, val, strlen(val));
    if (n < 0)
        rc = -errno;
    close(fd);
    return rc;
}

static int get(const char *dir, const char *file, char *buf, size_t len)
{
    char path[PATH_MAX];
    ssize_t n;
    int fd;

    buf[0] = '\0';
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return -ENAMETOOLONG;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    return 0;
}

/* The number after "key " in a "key value" list (memory.events, oom_control). */
static uint64_t keyed(const char *text, const char *key)
{
    size_t kl = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
        if (strncmp(l, key, kl) == 0 && l[kl] == ' ')
            return strtoull(l + kl + 1, NULL, 10);
    return 0;
}

/* Is word one of the comma-separated tokens of list? */
static int has_token(const char *list, const char *word, char sep)
{
    size_t wl = strlen(word);
    for (const char *c = list; c; c = strchr(c, sep), c = c ? c + 1 : NULL)
        if (strncmp(c, word, wl) == 0 && (c[wl] == sep || c[wl] == '\0' || c[wl] == ' ' ||
                                          c[wl] == '\n'))
            return 1;
    return 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- the probe ---- */

/* Our path in the hierarchy whose /proc/self/cgroup controller list has ctl
 * ("" for v2's "0::" line). */
static int own_path(const char *ctl, char *out, size_t len)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    char line[CG_LINE_MAX];
    int found = 0;

    if (!f)
        return 0;
    while (!found && fgets(line, sizeof(line), f)) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        if (ctl[0] ? !has_token(c1 + 1, ctl, ',') : c1[1] != '\0')
            continue;
        c2[1 + strcspn(c2 + 1, "\n")] = '\0';
        found = (size_t)snprintf(out, len, "%s", c2 + 1) < len;
    }
    fclose(f);
    return found;
}

/* base = mount point + our path below the mount's root. */
static int join_base(char *base, const char *mnt, const char *mroot, const char *own)
{
    size_t rl = strlen(mroot);
    if (strcmp(mroot, "/") != 0) {
        if (strncmp(own, mroot, rl) != 0 || (own[rl] != '/' && own[rl] != '\0'))
            return 0; /* we live outside what is mounted */
        own += rl;
    }
    return (size_t)snprintf(base, PATH_MAX, "%s%s", mnt, strcmp(own, "/") ? own : "") < PATH_MAX;
}

/* Walks /proc/self/mountinfo: "id parent maj:min root mnt opts ... - type src superopts". */
static void probe_mounts(char v2mnt[PATH_MAX], char v1[CG_N][PATH_MAX])
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[CG_LINE_MAX];

    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        char root[PATH_MAX], mnt[PATH_MAX], type[32], super[512];
        const char *dash = strstr(line, " - ");
        if (!dash || sscanf(line, "%*s %*s %*s %4095s %4095s", root, mnt) != 2 ||
            sscanf(dash + 3, "%31s %*s %511s", type, super) != 2)
            continue;
        if (strcmp(type, "cgroup2") == 0) {
            char own[PATH_MAX];
            if (!v2mnt[0] && own_path("", own, sizeof(own)))
                join_base(v2mnt, mnt, root, own);
        } else if (strcmp(type, "cgroup") == 0) {
            for (int i = 0; i < CG_N; i++) {
                char own[PATH_MAX];
                if (!v1[i][0] && has_token(super, ctl_names[i], ',') &&
                    own_path(ctl_names[i], own, sizeof(own)))
                    join_base(v1[i], mnt, root, own);
            }
        }
    }
    fclose(f);
}

static int make_dir(const char *base, const char *sub, char *out)
{
    if ((size_t)snprintf(out, PATH_MAX, "%s/%s", base, sub) >= PATH_MAX)
        return -ENAMETOOLONG;
    if (mkdir(out, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* A delegated systemd service (Delegate=yes: docker/systemd/) starts in a
 * cgroup of its own, which holds its main process; the kernel refuses to
 * enable controllers for the children of a non-root cgroup that holds
 * processes. So, as systemd's delegation rules ask, the process moves into
 * a leaf of its cgroup, supervisor/, and the cgroup itself then holds only
 * cgroups. Only when we are alone there: out of a cgroup shared with other
 * processes (a shell, a test runner) the move would not help, and would
 * change where we are for nothing. Returns 0 when moved. */
static int move_to_leaf(const char *v2)
{
    char buf[CG_SMALL_READ], d[PATH_MAX], self[24];

    if (get(v2, "cgroup.procs", buf, sizeof(buf)) != 0)
        return -1;
    snprintf(self, sizeof(self), "%ld", (long)getpid());
    for (const char *c = buf; *c;) {
        size_t n = strcspn(c, "\n");
        if (n && (n != strlen(self) || strncmp(c, self, n) != 0))
            return -1;
        c += n + (c[n] != '\0');
    }
    if (make_dir(v2, "supervisor", d) != 0 || put(d, "cgroup.procs", "0") != 0)
        return -1;
    return 0;
}

static void probe(void)
{
    char v2[PATH_MAX] = "", v1[CG_N][PATH_MAX], buf[CG_SMALL_READ], d[PATH_MAX];

    g.probed = 1;
    memset(v1, 0, sizeof(v1));
    probe_mounts(v2, v1);
    if (v2[0] && get(v2, "cgroup.controllers", buf, sizeof(buf)) == 0 &&
        has_token(buf, "memory", ' ') && has_token(buf, "cpu", ' ') && has_token(buf, "pids", ' ')) {
        /* Our subtree must offer the controllers to sbx/ and below. */
        int offered = put(v2, "cgroup.subtree_control", "+memory +cpu +pids") == 0 ||
                      (move_to_leaf(v2) == 0 &&
                       put(v2, "cgroup.subtree_control", "+memory +cpu +pids") == 0);
        if (offered &&
            make_dir(v2, "sbx", d) == 0 &&
            put(d, "cgroup.subtree_control", "+memory +cpu +pids") == 0) {
            for (int i = 0; i < CG_N; i++)
                memcpy(g.base[i], v2, PATH_MAX);
            g.version = 2;
            return;
        }
    }
    if (v1[CG_MEM][0]) {
        for (int i = 0; i < CG_N; i++) {
            if (!v1[i][0] || make_dir(v1[i], "sbx", d) != 0) {
                if (i == CG_MEM)
                    return;
                continue;
            }
            memcpy(g.base[i], v1[i], PATH_MAX);
        }
        g.version = 1;
    }
}

const char *sbx_cgroup_mode(void)
{
    if (!g.probed)
        probe();
    return g.version == 2 ? "v2" : g.version == 1 ? "v1" : NULL;
}

/* ---- one cgroup ---- */

/* SIGKILLs what dir holds until it is empty, then removes it. */
static int remove_dir(const char *dir)
{
    char path[PATH_MAX];
    int waited = 0;

    if ((size_t)snprintf(path, sizeof(path), "%s/cgroup.procs", dir) >= sizeof(path))
        return -ENAMETOOLONG;
    /* A frozen task takes SIGKILL only once thawed (v1): a paused session's,
     * or a crashed predecessor's. Neither file exists elsewhere. */
    put(dir, "freezer.state", "THAWED");
    put(dir, "cgroup.freeze", "0");
    for (;;) {
        FILE *f;
        int pid;
        if (rmdir(dir) == 0 || errno == ENOENT)
            return 0;
        if (errno != EBUSY || waited >= CG_EMPTY_MS)
            return -errno;
        f = fopen(path, "re");
        if (f) {
            while (fscanf(f, "%d", &pid) == 1)
                if (pid > 0)
                    kill(pid, SIGKILL);
            fclose(f);
        }
        sleep_ms(5);
        waited += 5;
    }
}

static int set_limits(const sbx_cgroup *cg, const sbx_cgroup_limits *lim, char *err, size_t errlen)
{
    char v[64];
    int rc = 0;

    for (int i = 0; i < cg->ndirs && !rc; i++) {
        const char *d = cg->dir[i];
        int c = cg->ctl[i];
        int all = g.version == 2; /* one directory carries every controller */
        if ((all || c == CG_MEM) && lim->memory_mb > 0) {
            snprintf(v, sizeof(v), "%llu", (unsigned long long)lim->memory_mb << 20);
            rc = put(d, all ? "memory.max" : "memory.limit_in_bytes", v);
            /* No swap beyond the limit; absent when the kernel has no swap
             * accounting, which then means nothing to bound. */
            if (!rc && all)
                put(d, "memory.swap.max", "0");
            else if (!rc)
                put(d, "memory.memsw.limit_in_bytes", v);
            if (rc)
                snprintf(err, errlen, "cgroup %s: memory limit: %s", d, strerror(-rc));
        }
        if (!rc && (all || c == CG_CPU) && lim->cpus > 0) {
            long long q = (long long)(lim->cpus * CG_PERIOD_US + 0.5);
            if (q < CG_MIN_QUOTA_US)
                q = CG_MIN_QUOTA_US;
            if (all) {
                snprintf(v, sizeof(v), "%lld %d", q, CG_PERIOD_US);
                rc = put(d, "cpu.max", v);
            } else {
                snprintf(v, sizeof(v), "%d", CG_PERIOD_US);
                rc = put(d, "cpu.cfs_period_us", v);
                snprintf(v, sizeof(v), "%lld", q);
                if (!rc)
                    rc = put(d, "cpu.cfs_quota_us", v);
            }
            if (rc)
                snprintf(err, errlen, "cgroup %s: cpu quota: %s", d, strerror(-rc));
        }
        if (!rc && (all || c == CG_PIDS) && lim->pids > 0) {
            snprintf(v, sizeof(v), "%d", lim->pids);
            rc = put(d, "pids.max", v);
            if (rc)
                snprintf(err, errlen, "cgroup %s: pids limit: %s", d, strerror(-rc));
        }
    }
    return rc;
}

int sbx_cgroup_new(const char *group, const char *name, const sbx_cgroup_limits *lim,
                   sbx_cgroup **out, char *err, size_t errlen)
{
    sbx_cgroup *cg;
    char sub[PATH_MAX], gdir[PATH_MAX];
    int rc = 0;

    *out = NULL;
    if (!sbx_cgroup_mode())
        return -ENOTSUP;
    if (!group[0] || strchr(group, '/') || !name[0] || strchr(name, '/')) {
        snprintf(err, errlen, "cgroup: bad name");
        return -EINVAL;
    }
    cg = calloc(1, sizeof(*cg));
    if (!cg) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (int i = 0; i < CG_N; i++)
        cg->procs[i] = -1;
    for (int i = 0; i < CG_N; i++) {
        int dup = 0;
        if (!g.base[i][0])
            continue;
        for (int j = 0; j < cg->ndirs; j++)
            dup |= strcmp(g.base[cg->ctl[j]], g.base[i]) == 0;
        if (dup)
            continue; /* co-mounted with a controller already handled */
        snprintf(sub, sizeof(sub), "sbx/%s", group);
        rc = make_dir(g.base[i], sub, gdir);
        if (!rc && g.version == 2)
            rc = put(gdir, "cgroup.subtree_control", "+memory +cpu +pids");
        if (!rc && (size_t)snprintf(cg->dir[cg->ndirs], PATH_MAX, "%s/s-%s", gdir, name) >= PATH_MAX)
            rc = -ENAMETOOLONG;
        if (!rc && remove_dir(cg->dir[cg->ndirs]) != 0)
            rc = -EBUSY; /* a leftover of this name that will not go */
        if (!rc && mkdir(cg->dir[cg->ndirs], 0755) < 0)
            rc = -errno;
        if (rc) {
            snprintf(err, errlen, "cgroup %s/%s: %s", gdir, name, strerror(-rc));
            goto out;
        }
        cg->ctl[cg->ndirs++] = i;
    }
    rc = set_limits(cg, lim, err, errlen);
    for (int i = 0; i < cg->ndirs && !rc; i++) {
        snprintf(sub, sizeof(sub), "%s/cgroup.procs", cg->dir[i]);
        cg->procs[i] = open(sub, O_WRONLY | O_CLOEXEC);
        if (cg->procs[i] < 0) {
            rc = -errno;
            snprintf(err, errlen, "cgroup %s: %s", sub, strerror(errno));
        }
    }
out:
    if (rc) {
        sbx_cgroup_free(cg);
        return rc;
    }
    *out = cg;
    return 0;
}

int sbx_cgroup_join(const sbx_cgroup *cg)
{
    /* "0" is the writer itself, in v1 as in v2. */
    for (int i = 0; i < cg->ndirs; i++)
        if (write(cg->procs[i], "0", 1) != 1)
            return -errno;
    return 0;
}

void sbx_cgroup_usage_of(const sbx_cgroup *cg, sbx_cgroup_usage *u)
{
    char buf[CG_SMALL_READ];

    memset(u, 0, sizeof(*u));
    for (int i = 0; i < cg->ndirs; i++) {
        if (cg->ctl[i] != CG_MEM)
            continue;
        if (g.version == 2) {
            if (get(cg->dir[i], "memory.events", buf, sizeof(buf)) == 0)
                u->oom_kills = keyed(buf, "oom_kill");
            if (get(cg->dir[i], "memory.peak", buf, sizeof(buf)) == 0)
                u->memory_peak = strtoull(buf, NULL, 10);
        } else {
            if (get(cg->dir[i], "memory.oom_control", buf, sizeof(buf)) == 0)
                u->oom_kills = keyed(buf, "oom_kill");
            if (get(cg->dir[i], "memory.max_usage_in_bytes", buf, sizeof(buf)) == 0)
                u->memory_peak = strtoull(buf, NULL, 10);
        }
    }
}

void sbx_cgroup_kill_fds(const sbx_cgroup *cg, int *kill_fd, int *procs_fd)
{
    char path[PATH_MAX];

    *kill_fd = *procs_fd = -1;
    if (!cg || cg->ndirs < 1)
        return;
    /* dir[0]: v2's one directory, or v1's memory hierarchy (always there). */
    if (g.version == 2 &&
        (size_t)snprintf(path, sizeof(path), "%s/cgroup.kill", cg->dir[0]) < sizeof(path))
        *kill_fd = open(path, O_WRONLY | O_CLOEXEC);
    if ((size_t)snprintf(path, sizeof(path), "%s/cgroup.procs", cg->dir[0]) < sizeof(path))
        *procs_fd = open(path, O_RDONLY | O_CLOEXEC);
}

int sbx_cgroup_free(sbx_cgroup *cg)
{
    int rc = 0;

    if (!cg)
        return 0;
    if (cg->frozen)
        sbx_cgroup_freeze(cg, 0);
    for (int i = 0; i < cg->ndirs; i++) {
        if (cg->procs[i] >= 0)
            close(cg->procs[i]);
        int r = remove_dir(cg->dir[i]);
        if (r != 0) {
            sbx_warn("cgroup", "not removed dir=%s: %s", cg->dir[i], strerror(-r));
            rc = -EBUSY;
        } else {
            /* The owner's group too, once its last sandbox is gone: a
             * test's or a moved work_dir's would otherwise stay forever. */
            char *slash = strrchr(cg->dir[i], '/');
            *slash = '\0';
            rmdir(cg->dir[i]);
        }
    }
    free(cg);
    return rc;
}

/* v2: cgroup.freeze, and "frozen 1" in cgroup.events once done; v1:
 * freezer.state reads FREEZING until every task is stopped. */
static int freeze_done(const sbx_cgroup *cg, int i, int frozen)
{
    char buf[CG_SMALL_READ];
    if (g.version == 2)
        return get(cg->dir[i], "cgroup.events", buf, sizeof(buf)) == 0 &&
               keyed(buf, "frozen") == (uint64_t)frozen;
    return get(cg->dir[i], "freezer.state", buf, sizeof(buf)) == 0 &&
           strncmp(buf, frozen ? "FROZEN" : "THAWED", 6) == 0;
}

int sbx_cgroup_freeze(sbx_cgroup *cg, int frozen)
{
    int i = -1, waited = 0, rc;

    if (!cg)
        return -ENOTSUP;
    for (int j = 0; j < cg->ndirs; j++)
        if (g.version == 2 || cg->ctl[j] == CG_FRZ)
            i = j;
    if (i < 0)
        return -ENOTSUP;
    rc = g.version == 2 ? put(cg->dir[i], "cgroup.freeze", frozen ? "1" : "0")
                        : put(cg->dir[i], "freezer.state", frozen ? "FROZEN" : "THAWED");
    if (rc)
        return rc == -ENOENT ? -ENOTSUP : rc;
    cg->frozen = frozen;
    while (!freeze_done(cg, i, frozen)) {
        if (waited >= CG_FREEZE_MS)
            return -ETIMEDOUT;
        /* v1: a write of FROZEN again retries tasks that were busy. */
        if (frozen && g.version == 1)
            put(cg->dir[i], "freezer.state", "FROZEN");
        sleep_ms(1);
        waited += 1;
    }
    return 0;
}

void sbx_cgroup_thaw_of(pid_t pid)
{
    char path[64], line[CG_LINE_MAX], dir[PATH_MAX];
    int i = g.version == 2 ? CG_MEM : CG_FRZ;
    FILE *f;

    if (!sbx_cgroup_mode() || !g.base[i][0])
        return;
    snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
    f = fopen(path, "re");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL, *sbx;
        if (!c2)
            continue;
        *c2 = '\0';
        if (g.version == 2 ? c1[1] != '\0' : !has_token(c1 + 1, "freezer", ','))
            continue;
        c2[1 + strcspn(c2 + 1, "\n")] = '\0';
        /* Ours live at <our base>/sbx/...: the same base as a predecessor's
         * when we run where it ran; anything else is left alone. */
        sbx = strstr(c2 + 1, "/sbx/");
        if (sbx && (size_t)snprintf(dir, sizeof(dir), "%s%s", g.base[i], sbx) < sizeof(dir))
            put(dir, g.version == 2 ? "cgroup.freeze" : "freezer.state",
                g.version == 2 ? "0" : "THAWED");
        break;
    }
    fclose(f);
}

void sbx_cgroup_sweep(const char *group)
{
    char gdir[PATH_MAX], d[PATH_MAX];
    int n = 0;

    if (!sbx_cgroup_mode() || !group[0] || strchr(group, '/'))
        return;
    /* The freezer hierarchy first: its remove_dir thaws what a frozen
     * leftover holds, so the others' SIGKILLs take. */
    for (int i = CG_N - 1; i >= 0; i--) {
        DIR *dir;
        struct dirent *de;
        if (!g.base[i][0] ||
            (size_t)snprintf(gdir, sizeof(gdir), "%s/sbx/%s", g.base[i], group) >= sizeof(gdir))
            continue;
        dir = opendir(gdir);
        if (!dir)
            continue;
        while ((de = readdir(dir)) != NULL) {
            if (strncmp(de->d_name, "s-", 2) != 0 || de->d_type != DT_DIR ||
                (size_t)snprintf(d, sizeof(d), "%s/%s", gdir, de->d_name) >= sizeof(d))
                continue;
            int r = remove_dir(d);
            if (r == 0)
                n++;
            else
                sbx_warn("cgroup", "leftover not removed dir=%s: %s", d, strerror(-r));
        }
        closedir(dir);
        rmdir(gdir); /* recreated by the next sbx_cgroup_new; busy if one runs */
    }
    if (n)
        sbx_info("cgroup", "removed leftover cgroups count=%d group=%s", n, group);
}
