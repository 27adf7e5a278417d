/* loop.c — epoll plus a binary min-heap of timers.
 *
 * One iteration (sbx_loop_once): run the before-sleep hook (batched flushes
 * such as pipelined SQL), wait in epoll_wait until the nearest timer is due,
 * dispatch ready fds, then fire due timers. Work per iteration is bounded by
 * SBX_LOOP_MAX_EVENTS fds and by the timers due at the moment we looked, so a
 * timer that restarts itself with 0 ms runs on the next iteration, not in a
 * loop that starves the sockets (redis ae.c, libuv's timer phase).
 *
 * Timers live in an intrusive binary min-heap (libuv's heap-inl.h shape): the
 * tree links are inside each caller-owned sbx_timer, so starting a timer
 * never allocates and cannot fail, and stopping one is O(log n). The heap is
 * a complete binary tree; the path from the root to position k (1-based) is
 * the bits of k below its highest one, read from the top (0 = left).
 */
#include "loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

/* epoll_wait batch: more only means fewer syscalls under load. */
#define SBX_LOOP_MAX_EVENTS 256

struct sbx_loop {
    int epfd;
    int stop;
    sbx_timer *root;            /* the timer due first, NULL when none */
    size_t nheap;
    uint64_t seq;
    sbx_before_sleep_cb before_sleep;
    void *before_sleep_arg;
};

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t sbx_now_ms(void) { return clock_ns(CLOCK_MONOTONIC) / 1000000u; }
uint64_t sbx_now_us(void) { return clock_ns(CLOCK_MONOTONIC) / 1000u; }
uint64_t sbx_wall_ms(void) { return clock_ns(CLOCK_REALTIME) / 1000000u; }

int sbx_loop_new(sbx_loop **out)
{
    sbx_loop *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        int e = errno;
        free(l);
        return -e;
    }
    *out = l;
    return 0;
}

void sbx_loop_free(sbx_loop *l)
{
    if (!l)
        return;
    close(l->epfd);
    free(l);
}

void sbx_loop_stop(sbx_loop *l) { l->stop = 1; }

void sbx_loop_before_sleep(sbx_loop *l, sbx_before_sleep_cb cb, void *arg)
{
    l->before_sleep = cb;
    l->before_sleep_arg = arg;
}

/* ---- fds ---- */

void sbx_io_init(sbx_io *io, int fd, sbx_io_cb cb, void *data)
{
    memset(io, 0, sizeof(*io));
    io->fd = fd;
    io->cb = cb;
    io->data = data;
}

int sbx_io_set(sbx_loop *l, sbx_io *io, int events)
{
    struct epoll_event ev = {0};
    int op;

    if (events == io->events && io->loop)
        return 0;
    if (events == 0) {
        sbx_io_stop(io);
        return 0;
    }
    ev.events = ((events & SBX_READ) ? EPOLLIN : 0) | ((events & SBX_WRITE) ? EPOLLOUT : 0);
    ev.data.ptr = io;
    op = io->loop ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(l->epfd, op, io->fd, &ev) < 0)
        return -errno;
    io->loop = l;
    io->events = events;
    return 0;
}

void sbx_io_stop(sbx_io *io)
{
    if (!io->loop)
        return;
    /* The fd may already be closed by its owner; then epoll dropped it. */
    epoll_ctl(io->loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    io->loop = NULL;
    io->events = 0;
}

/* ---- timers ---- */

static int timer_less(const sbx_timer *a, const sbx_timer *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

/* Exchanges a timer with its parent in the tree (the child moves up). */
static void swap_with_parent(sbx_loop *l, sbx_timer *child)
{
    sbx_timer *parent = child->parent, *grand = parent->parent, *sibling;
    sbx_timer *cl = child->left, *cr = child->right;

    if (parent->left == child) {
        sibling = parent->right;
        child->left = parent;
        child->right = sibling;
    } else {
        sibling = parent->left;
        child->left = sibling;
        child->right = parent;
    }
    if (sibling)
        sibling->parent = child;
    child->parent = grand;
    if (!grand)
        l->root = child;
    else if (grand->left == parent)
        grand->left = child;
    else
        grand->right = child;
    parent->parent = child;
    parent->left = cl;
    parent->right = cr;
    if (cl)
        cl->parent = parent;
    if (cr)
        cr->parent = parent;
}

/* The link that holds position k (1-based, k >= 2) and, in *parent, the
 * node it hangs from. Position k may be empty (insert) or taken (last). */
static sbx_timer **link_of(sbx_loop *l, size_t k, sbx_timer **parent)
{
    sbx_timer **link = &l->root;
    int bit = 63 - __builtin_clzll((unsigned long long)k);

    *parent = NULL;
    while (bit-- > 0) {
        *parent = *link;
        link = ((k >> bit) & 1) ? &(*link)->right : &(*link)->left;
    }
    return link;
}

static void sift_up(sbx_loop *l, sbx_timer *t)
{
    while (t->parent && timer_less(t, t->parent))
        swap_with_parent(l, t);
}

static void sift_down(sbx_loop *l, sbx_timer *t)
{
    for (;;) {
        sbx_timer *c = t->left;
        if (!c)
            break;
        if (t->right && timer_less(t->right, c))
            c = t->right;
        if (!timer_less(c, t))
            break;
        swap_with_parent(l, c);
    }
}

void sbx_timer_init(sbx_timer *t, sbx_timer_cb cb, void *data)
{
    memset(t, 0, sizeof(*t));
    t->cb = cb;
    t->data = data;
}

int sbx_timer_active(const sbx_timer *t) { return t->active; }

void sbx_timer_stop(sbx_loop *l, sbx_timer *t)
{
    sbx_timer *parent, **link, *last;

    if (!t->active)
        return;
    t->active = 0;
    /* Take the last position's timer out, then put it where t was. */
    link = link_of(l, l->nheap, &parent);
    last = *link;
    *link = NULL;
    l->nheap--;
    if (last != t) {
        last->left = t->left;
        last->right = t->right;
        last->parent = t->parent;
        if (last->left)
            last->left->parent = last;
        if (last->right)
            last->right->parent = last;
        if (!t->parent)
            l->root = last;
        else if (t->parent->left == t)
            t->parent->left = last;
        else
            t->parent->right = last;
        sift_down(l, last);
        sift_up(l, last);
    }
    t->left = t->right = t->parent = NULL;
}

void sbx_timer_start(sbx_loop *l, sbx_timer *t, uint64_t after_ms)
{
    sbx_timer *parent, **link;

    sbx_timer_stop(l, t);
    t->due_ms = sbx_now_ms() + after_ms;
    t->seq = l->seq++;
    t->left = t->right = NULL;
    link = link_of(l, ++l->nheap, &parent);
    *link = t;
    t->parent = parent;
    t->active = 1;
    sift_up(l, t);
}

static void run_timers(sbx_loop *l)
{
    uint64_t now = sbx_now_ms();
    uint64_t limit = l->seq; /* timers started by callbacks wait a turn */

    while (l->root && l->root->due_ms <= now) {
        sbx_timer *t = l->root;
        if (t->seq >= limit)
            break;
        sbx_timer_stop(l, t);
        t->cb(t);
    }
}

static int next_timeout(sbx_loop *l, int cap_ms)
{
    uint64_t now, due;
    if (!l->root)
        return cap_ms;
    now = sbx_now_ms();
    due = l->root->due_ms;
    if (due <= now)
        return 0;
    if (cap_ms >= 0 && due - now > (uint64_t)cap_ms)
        return cap_ms;
    return due - now > 3600000u ? 3600000 : (int)(due - now);
}

int sbx_loop_once(sbx_loop *l, int timeout_ms)
{
    struct epoll_event evs[SBX_LOOP_MAX_EVENTS];
    int n, i;

    if (l->before_sleep)
        l->before_sleep(l->before_sleep_arg);
    n = epoll_wait(l->epfd, evs, SBX_LOOP_MAX_EVENTS, next_timeout(l, timeout_ms));
    if (n < 0 && errno != EINTR)
        return -errno;
    for (i = 0; i < n; i++) {
        sbx_io *io = evs[i].data.ptr;
        int events = 0;
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
            events |= SBX_READ;
        if (evs[i].events & EPOLLOUT)
            events |= SBX_WRITE;
        if (evs[i].events & EPOLLERR)
            events |= SBX_ERROR | SBX_READ;
        /* An earlier callback of this batch may have stopped this io. */
        if (io->loop)
            io->cb(io, events);
    }
    run_timers(l);
    return 0;
}

int sbx_loop_run(sbx_loop *l)
{
    l->stop = 0;
    while (!l->stop) {
        int rc = sbx_loop_once(l, -1);
        if (rc < 0)
            return rc;
    }
    return 0;
}
