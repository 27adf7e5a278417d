/* loop.c — epoll plus a binary min-heap of timers.
 *
 * One iteration (sbx_loop_once): run the before-sleep hook (batched flushes
 * such as pipelined SQL), wait in epoll_wait until the nearest timer is due,
 * dispatch ready fds, then fire due timers. Work per iteration is bounded by
 * SBX_LOOP_MAX_EVENTS fds and by the timers due at the moment we looked, so a
 * timer that restarts itself with 0 ms runs on the next iteration, not in a
 * loop that starves the sockets (redis ae.c, libuv's timer phase).
 *
 * The heap stores pointers to caller-owned sbx_timer structs; each timer knows
 * its index so stopping one is O(log n).
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
    sbx_timer **heap;
    size_t nheap, capheap;
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
    free(l->heap);
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

static void heap_set(sbx_loop *l, size_t i, sbx_timer *t)
{
    l->heap[i] = t;
    t->heap_idx = i;
}

static void heap_up(sbx_loop *l, size_t i)
{
    sbx_timer *t = l->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!timer_less(t, l->heap[p]))
            break;
        heap_set(l, i, l->heap[p]);
        i = p;
    }
    heap_set(l, i, t);
}

static void heap_down(sbx_loop *l, size_t i)
{
    sbx_timer *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->nheap)
            break;
        if (c + 1 < l->nheap && timer_less(l->heap[c + 1], l->heap[c]))
            c++;
        if (!timer_less(l->heap[c], t))
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

void sbx_timer_init(sbx_timer *t, sbx_timer_cb cb, void *data)
{
    memset(t, 0, sizeof(*t));
    t->heap_idx = SIZE_MAX;
    t->cb = cb;
    t->data = data;
}

int sbx_timer_active(const sbx_timer *t) { return t->heap_idx != SIZE_MAX; }

void sbx_timer_stop(sbx_loop *l, sbx_timer *t)
{
    size_t i = t->heap_idx;
    if (i == SIZE_MAX)
        return;
    t->heap_idx = SIZE_MAX;
    l->nheap--;
    if (i == l->nheap)
        return;
    {
        sbx_timer *moved = l->heap[l->nheap];
        heap_set(l, i, moved);
        heap_up(l, i);
        heap_down(l, moved->heap_idx);
    }
}

int sbx_timer_start(sbx_loop *l, sbx_timer *t, uint64_t after_ms)
{
    sbx_timer_stop(l, t);
    if (l->nheap == l->capheap) {
        size_t cap = l->capheap ? l->capheap * 2 : 64;
        sbx_timer **h = realloc(l->heap, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        l->heap = h;
        l->capheap = cap;
    }
    t->due_ms = sbx_now_ms() + after_ms;
    t->seq = l->seq++;
    heap_set(l, l->nheap++, t);
    heap_up(l, t->heap_idx);
    return 0;
}

static void run_timers(sbx_loop *l)
{
    uint64_t now = sbx_now_ms();
    uint64_t limit = l->seq; /* timers started by callbacks wait a turn */

    while (l->nheap > 0 && l->heap[0]->due_ms <= now) {
        sbx_timer *t = l->heap[0];
        if (t->seq >= limit)
            break;
        sbx_timer_stop(l, t);
        t->cb(t);
    }
}

static int next_timeout(sbx_loop *l, int cap_ms)
{
    uint64_t now, due;
    if (l->nheap == 0)
        return cap_ms;
    now = sbx_now_ms();
    due = l->heap[0]->due_ms;
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
