/* jobtable.h — the worker's jobs, found by id.
 *
 * A chained hash table that doubles as it fills. It is intrusive (libuv,
 * beanstalkd): each job embeds its entry, so adding a job allocates nothing
 * but, now and then, a bigger bucket array; the table never owns a job.
 * Ids are the job_id of the message (at most SBX_ID_MAX bytes).
 */
#ifndef SBX_JOBTABLE_H
#define SBX_JOBTABLE_H

#include <stddef.h>

typedef struct job job;

typedef struct sbx_jobtab_entry {
    struct sbx_jobtab_entry *next;  /* bucket chain */
    const char *id;                 /* the job's own id string */
    job *job;
} sbx_jobtab_entry;

typedef struct sbx_jobtab {
    sbx_jobtab_entry **slots;
    size_t nslots, count;
} sbx_jobtab;

/* FNV-1a of a NUL-terminated string (also the wait queues' project index). */
size_t sbx__str_hash(const char *s);

job *sbx__jobtab_find(const sbx_jobtab *t, const char *id);
/* 0, or -ENOMEM when the table had to grow and could not (nothing added). */
int sbx__jobtab_add(sbx_jobtab *t, sbx_jobtab_entry *e);
/* Removes e if it is in the table. */
void sbx__jobtab_del(sbx_jobtab *t, sbx_jobtab_entry *e);
/* Calls fn on every job; fn may remove the job it was given (only that one). */
void sbx__jobtab_each(sbx_jobtab *t, void (*fn)(job *j, void *arg), void *arg);
/* Empties the table and frees its buckets; the jobs are the caller's. */
void sbx__jobtab_clear(sbx_jobtab *t);

#endif
