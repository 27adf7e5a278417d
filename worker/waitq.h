/* waitq.h — jobs waiting for capacity: one FIFO of every waiter, and a queue
 * per busy project.
 *
 * A job that got no lease (no free slot, its project busy, its own lease
 * still held) is listed here and polls on its own timer. When a lease of
 * this worker is released, sbx__waitq_wake() starts the timer of the waiter
 * that can use it at once, so a slot does not sit idle until the next poll.
 *
 * Waiters on a busy project are also parked behind each other: only the
 * first of each project asks Redis again, the others wait until it leaves
 * the queue. Without that, a hundred queued builds of one project would each
 * poll every second (a lease storm measured in the benchmarks), and the
 * project's order would be left to chance.
 *
 * A project this worker holds costs no Redis call at all: lease.c answers
 * an acquire of it BUSY itself (it knows our holders), so the job parks
 * here at once, and our release's sbx__waitq_wake() starts the project's
 * first waiter, whose acquire then goes to Redis. Only a project held by
 * another worker is polled in Redis, by its first waiter alone.
 *
 * Intrusive: each job embeds its sbx_waiter; the queue only allocates a small
 * node per busy project.
 */
#ifndef SBX_WAITQ_H
#define SBX_WAITQ_H

#include "loop.h"

typedef struct sbx_projq sbx_projq;

typedef struct sbx_waiter {
    struct sbx_waiter *prev, *next;     /* the FIFO */
    int listed;                         /* on the FIFO */
    sbx_projq *pq;                      /* its project's queue, when parked there */
    struct sbx_waiter *pprev, *pnext;
    const char *project;                /* the owner's project id */
    sbx_loop *loop;
    sbx_timer *timer;                   /* the owner's: started at 0 ms to wake it */
} sbx_waiter;

typedef struct sbx_waitq {
    sbx_waiter *head, *tail;
    sbx_projq **projects;               /* hash buckets, allocated on first use */
} sbx_waitq;

void sbx__waiter_init(sbx_waiter *wt, sbx_loop *loop, const char *project, sbx_timer *timer);
/* Appends wt to the FIFO (no-op when listed). */
void sbx__waitq_list(sbx_waitq *q, sbx_waiter *wt);
/* Queues wt behind the other waiters of its project; returns whether wt is
 * the first (the one that keeps asking). Out of memory: 1 (it just polls). */
int sbx__waitq_park(sbx_waitq *q, sbx_waiter *wt);
/* Takes wt off the FIFO and its project queue; when it was the project's
 * first, the next one is woken to ask in its place. */
void sbx__waitq_unlist(sbx_waitq *q, sbx_waiter *wt);
/* A lease of `project` (or, NULL, just a slot) was released: wakes the
 * project's first waiter and the oldest waiter that asks on its own. */
void sbx__waitq_wake(sbx_waitq *q, const char *project);
/* Frees the project nodes; the waiters are their owners'. */
void sbx__waitq_free(sbx_waitq *q);

#endif
