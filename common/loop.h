/* loop.h — the one event loop of an sbx-worker process.
 *
 * Everything a worker does is driven from here: Kafka's queue fd, hiredis'
 * socket, libpq's socket, libcurl multi's sockets, build processes' pipes and
 * pidfds, and timers. There is no thread per job (see README "Design").
 *
 * Handles are owned by the caller and embedded in its structs (libuv style),
 * so starting a timer or watching an fd never allocates, and starting a timer
 * cannot fail.
 *
 * Rules:
 *  - A callback may stop any handle, including its own. An io handle stopped
 *    inside a callback may still be looked at until the iteration ends, so
 *    its memory is freed at a safe point (a timer or the before-sleep hook),
 *    never inside a callback (redis freeClientAsync).
 *  - Timers with the same due time fire in the order they were started.
 *  - Time is CLOCK_MONOTONIC in milliseconds (sbx_now_ms()).
 */
#ifndef SBX_LOOP_H
#define SBX_LOOP_H

#include <stddef.h>
#include <stdint.h>

typedef struct sbx_loop sbx_loop;

enum { SBX_READ = 1, SBX_WRITE = 2, SBX_ERROR = 4 };

typedef struct sbx_io sbx_io;
typedef void (*sbx_io_cb)(sbx_io *io, int events);
struct sbx_io {
    int fd;
    int events;          /* SBX_READ | SBX_WRITE currently watched */
    sbx_io_cb cb;
    void *data;          /* the owner's */
    sbx_loop *loop;      /* set while started */
};

typedef struct sbx_timer sbx_timer;
typedef void (*sbx_timer_cb)(sbx_timer *t);
struct sbx_timer {
    uint64_t due_ms;
    uint64_t seq;        /* start order, for ties */
    sbx_timer *left, *right, *parent;   /* the loop's heap links */
    int active;          /* in the heap */
    sbx_timer_cb cb;
    void *data;          /* the owner's */
};

uint64_t sbx_now_ms(void);
uint64_t sbx_now_us(void);
uint64_t sbx_wall_ms(void);

int sbx_loop_new(sbx_loop **out);
void sbx_loop_free(sbx_loop *l);
/* Runs until sbx_loop_stop(). Returns 0, or -1 on a fatal epoll error. */
int sbx_loop_run(sbx_loop *l);
void sbx_loop_stop(sbx_loop *l);
/* Runs one iteration, waiting at most timeout_ms (-1: until something happens). */
int sbx_loop_once(sbx_loop *l, int timeout_ms);

void sbx_io_init(sbx_io *io, int fd, sbx_io_cb cb, void *data);
/* Watch io->fd for events (SBX_READ|SBX_WRITE); 0 = stop watching. */
int sbx_io_set(sbx_loop *l, sbx_io *io, int events);
void sbx_io_stop(sbx_io *io);

void sbx_timer_init(sbx_timer *t, sbx_timer_cb cb, void *data);
/* (Re)starts the timer to fire once after_ms from now. Never fails. */
void sbx_timer_start(sbx_loop *l, sbx_timer *t, uint64_t after_ms);
void sbx_timer_stop(sbx_loop *l, sbx_timer *t);
int sbx_timer_active(const sbx_timer *t);

/* Hook run once per iteration before the loop sleeps (batched flushes). */
typedef void (*sbx_before_sleep_cb)(void *arg);
void sbx_loop_before_sleep(sbx_loop *l, sbx_before_sleep_cb cb, void *arg);

#endif
