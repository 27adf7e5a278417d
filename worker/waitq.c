/* waitq.c — see waitq.h (and lease.c for the acquires it answers without
 * Redis, which park here like any other refusal).
 *
 * The FIFO is a doubly linked list through the waiters. Project queues are
 * found by id in a fixed table of PROJQ_BUCKETS chains: the number of busy
 * projects is at most the number of waiters, and a fixed table keeps the
 * lookup free of rehashing; a node lives while its project has a waiter.
 */
#include "waitq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobtable.h"
#include "sbx.h"

/* Buckets of the project index: a power of two well above the busy projects
 * one worker sees at once (its in-flight jobs, 1000 by default). */
#define PROJQ_BUCKETS 4096

struct sbx_projq {
    sbx_projq *next;            /* bucket chain */
    sbx_waiter *head, *tail;
    char id[SBX_ID_MAX + 1];
};

void sbx__waiter_init(sbx_waiter *wt, sbx_loop *loop, const char *project, sbx_timer *timer)
{
    memset(wt, 0, sizeof(*wt));
    wt->loop = loop;
    wt->project = project;
    wt->timer = timer;
}

static void wake(sbx_waiter *wt) { sbx_timer_start(wt->loop, wt->timer, 0); }

static sbx_projq **projq_slot(sbx_waitq *q, const char *id)
{
    sbx_projq **pp;
    if (!q->projects) {
        q->projects = calloc(PROJQ_BUCKETS, sizeof(*q->projects));
        if (!q->projects)
            return NULL;
    }
    for (pp = &q->projects[sbx__str_hash(id) % PROJQ_BUCKETS]; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->id, id) == 0)
            break;
    return pp;
}

int sbx__waitq_park(sbx_waitq *q, sbx_waiter *wt)
{
    sbx_projq **pp, *p;
    if (wt->pq)
        return wt->pq->head == wt;
    pp = projq_slot(q, wt->project);
    if (!pp)
        return 1;
    p = *pp;
    if (!p) {
        p = calloc(1, sizeof(*p));
        if (!p)
            return 1;
        snprintf(p->id, sizeof(p->id), "%s", wt->project);
        *pp = p;
    }
    wt->pq = p;
    wt->pprev = p->tail;
    wt->pnext = NULL;
    if (p->tail)
        p->tail->pnext = wt;
    else
        p->head = wt;
    p->tail = wt;
    return p->head == wt;
}

static void unpark(sbx_waitq *q, sbx_waiter *wt)
{
    sbx_projq *p = wt->pq, **pp;
    int was_head;
    if (!p)
        return;
    was_head = p->head == wt;
    if (wt->pprev)
        wt->pprev->pnext = wt->pnext;
    else
        p->head = wt->pnext;
    if (wt->pnext)
        wt->pnext->pprev = wt->pprev;
    else
        p->tail = wt->pprev;
    wt->pq = NULL;
    wt->pprev = wt->pnext = NULL;
    if (p->head) {
        if (was_head)
            wake(p->head);
        return;
    }
    pp = projq_slot(q, p->id);
    if (pp && *pp == p)
        *pp = p->next;
    free(p);
}

void sbx__waitq_unlist(sbx_waitq *q, sbx_waiter *wt)
{
    unpark(q, wt);
    if (!wt->listed)
        return;
    if (wt->prev)
        wt->prev->next = wt->next;
    else
        q->head = wt->next;
    if (wt->next)
        wt->next->prev = wt->prev;
    else
        q->tail = wt->prev;
    wt->prev = wt->next = NULL;
    wt->listed = 0;
}

void sbx__waitq_list(sbx_waitq *q, sbx_waiter *wt)
{
    if (wt->listed)
        return;
    wt->prev = q->tail;
    wt->next = NULL;
    if (q->tail)
        q->tail->next = wt;
    else
        q->head = wt;
    q->tail = wt;
    wt->listed = 1;
}

void sbx__waitq_wake(sbx_waitq *q, const char *project)
{
    sbx_projq **pp = project ? projq_slot(q, project) : NULL;
    sbx_waiter *same = pp && *pp ? (*pp)->head : NULL, *any = q->head;
    if (same)
        wake(same);
    /* The oldest waiter that asks on its own: not one parked behind another
     * of its project (that one asks for it). */
    while (any && any->pq && any->pq->head != any)
        any = any->next;
    if (any && any != same)
        wake(any);
}

void sbx__waitq_free(sbx_waitq *q)
{
    for (size_t i = 0; q->projects && i < PROJQ_BUCKETS; i++)
        while (q->projects[i]) {
            sbx_projq *p = q->projects[i];
            q->projects[i] = p->next;
            free(p);
        }
    free(q->projects);
    q->projects = NULL;
    q->head = q->tail = NULL;
}
