/* fly_warm.h — the fly provider's warm pool (provider.h, ops->warm): idle
 * machines made ahead with the provider's defaults and suspended, so a new
 * session resumes one instead of creating and booting its own.
 *
 * A warm machine carries metadata sbx_worker=<worker id> and sbx_warm=<this
 * pool's tag> (random per provider): the provider's sweep passes over its
 * own pool's machines and destroys those of an earlier process with the
 * same worker id, whose pool died with it. A taken machine gets
 * sbx_session (fly_session.c), which every sweep passes over.
 */
#ifndef SBX_FLY_WARM_H
#define SBX_FLY_WARM_H

#include <stddef.h>

#include "fly_session.h"

/* A pool of n machines of image, cpus and mem_mb (what a job with no size
 * of its own gets), filled from the loop. Returns 0, -EINVAL (no image, or
 * n out of range) or -ENOMEM. */
int sbx__fly_warm_new(sbx__fly_sessions *S, const char *worker_id, const char *image, int cpus,
                      int mem_mb, int n, sbx__fly_warm **out);
/* A ready (suspended) machine for a job of this image and size: 1, its id
 * and private_ip, and a replacement is being made; 0 when none fits or none
 * is ready. */
int sbx__fly_warm_take(sbx__fly_warm *w, const char *image, int cpus, int mem_mb,
                       char id[SBX_FLY_ID_MAX + 1], char ip[SBX_FLY_IP_MAX + 1]);
/* The machine taken is the session's now (adopted), or could not be made
 * so: the pool destroys it. */
void sbx__fly_warm_done(sbx__fly_warm *w, const char *id, int adopted);
/* The tag in this pool's machines' sbx_warm metadata. */
const char *sbx__fly_warm_tag(const sbx__fly_warm *w);
/* Machines the pool holds now, at most cap of them into ids (for the
 * provider's reap at exit). */
size_t sbx__fly_warm_ids(const sbx__fly_warm *w, char (*ids)[SBX_FLY_ID_MAX + 1], size_t cap);
/* Drops every call without callbacks; the machines are the caller's to reap. */
void sbx__fly_warm_free(sbx__fly_warm *w);

#endif
