/* jobtable.c — see jobtable.h.
 *
 * Why a hash table: a worker holds up to SBX_MAX_INFLIGHT jobs (1000 by
 * default, far more in the benchmarks) and looks one up on every duplicate
 * delivery and every `sbx cancel` NOTIFY. The table starts at 256 buckets
 * and doubles when it holds as many jobs as buckets, so chains stay short;
 * it never shrinks (a worker's peak load is its steady state).
 */
#include "jobtable.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define JOBTAB_FIRST_SLOTS 256

size_t sbx__str_hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

job *sbx__jobtab_find(const sbx_jobtab *t, const char *id)
{
    if (!t->nslots)
        return NULL;
    for (sbx_jobtab_entry *e = t->slots[sbx__str_hash(id) % t->nslots]; e; e = e->next)
        if (strcmp(e->id, id) == 0)
            return e->job;
    return NULL;
}

static int grow(sbx_jobtab *t)
{
    size_t n = t->nslots ? t->nslots * 2 : JOBTAB_FIRST_SLOTS;
    sbx_jobtab_entry **s = calloc(n, sizeof(*s));
    if (!s)
        return -ENOMEM;
    for (size_t i = 0; i < t->nslots; i++) {
        sbx_jobtab_entry *e = t->slots[i], *next;
        for (; e; e = next) {
            next = e->next;
            e->next = s[sbx__str_hash(e->id) % n];
            s[sbx__str_hash(e->id) % n] = e;
        }
    }
    free(t->slots);
    t->slots = s;
    t->nslots = n;
    return 0;
}

int sbx__jobtab_add(sbx_jobtab *t, sbx_jobtab_entry *e)
{
    size_t b;
    if (t->count >= t->nslots && grow(t) != 0)
        return -ENOMEM;
    b = sbx__str_hash(e->id) % t->nslots;
    e->next = t->slots[b];
    t->slots[b] = e;
    t->count++;
    return 0;
}

void sbx__jobtab_del(sbx_jobtab *t, sbx_jobtab_entry *e)
{
    sbx_jobtab_entry **pp;
    if (!t->nslots)
        return;
    for (pp = &t->slots[sbx__str_hash(e->id) % t->nslots]; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            e->next = NULL;
            t->count--;
            return;
        }
}

void sbx__jobtab_each(sbx_jobtab *t, void (*fn)(job *j, void *arg), void *arg)
{
    for (size_t i = 0; i < t->nslots; i++) {
        sbx_jobtab_entry *e = t->slots[i], *next;
        for (; e; e = next) {
            next = e->next;
            fn(e->job, arg);
        }
    }
}

void sbx__jobtab_clear(sbx_jobtab *t)
{
    free(t->slots);
    t->slots = NULL;
    t->nslots = 0;
    t->count = 0;
}
