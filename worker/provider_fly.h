/* provider_fly.h — builds on Fly.io Machines (api.machines.dev/v1).
 *
 * One build is one Machine: created with auto_destroy and restart policy
 * "no", watched through the documented wait endpoint, its exit code read from
 * its newest `exit` event, then destroyed. Every call goes through the
 * worker's event loop (http.h); nothing blocks.
 *
 * Slots are "fly/<app>/<i>" for i < max_machines, all in pool "fly": every
 * worker offering the same app shares one budget of machines.
 *
 * Every machine carries metadata sbx_job, sbx_token (the lease's fencing
 * token), sbx_worker, sbx_slot and sbx_run (a random id per run), so
 * sbx_fly_sweep() can find and destroy machines nobody is watching any more
 * (a crashed worker, a create whose reply was lost).
 *
 * Output: read from Fly's HTTP logs API by instance (GET <logs_url>/api/v1/
 * apps/{app}/logs?instance=<machine id>&next_token=..., what `flyctl logs`
 * polls), while the machine runs and to the end after it stopped; it feeds
 * the live-output sink and the result's log tail. See provider_fly.c.
 *
 * Sessions (provider.h): one long-lived machine per session, named after it,
 * found by metadata sbx_session by any worker; jobs run in it through exec;
 * PAUSE suspends it, DESTROY deletes it. See fly_session.c.
 */
#ifndef SBX_PROVIDER_FLY_H
#define SBX_PROVIDER_FLY_H

#include <stddef.h>

#include "loop.h"
#include "provider.h"

typedef struct sbx_fly_config {
    const char *api_url;      /* NULL/"": https://api.machines.dev/v1 */
    const char *app;          /* required: the Fly app the machines live in */
    const char *token;        /* required, secret: "Bearer" is added unless it starts "FlyV1 " */
    const char *regions;      /* "iad,ord": tried in order on capacity errors; NULL/"": Fly picks */
    const char *worker_id;    /* required: metadata sbx_worker, what sweeps look for */
    int max_machines;         /* slots; 0: 4 */
    const char *cpu_kind;     /* NULL: "shared" */
    int cpus;                 /* 0: 1; jobs asking for more get more */
    int memory_mb;            /* 0: 256; jobs asking for more get more */
    const char *image;        /* for jobs without "image"; NULL: such jobs are refused */
    const char *logs_url;     /* the logs API's base; NULL/"": https://api.fly.io; "off": none */
    int max_attempts;         /* per API call, counting the first; 0: 6 */
    int backoff_base_ms;      /* 0: 200; full jitter, doubling */
    int backoff_max_ms;       /* 0: 10000 */
    int stop_grace_s;         /* timeout/cancel: SIGTERM, SIGKILL after this; 0: 5 */
    int boot_timeout_s;       /* created/starting longer than this is wedged; 0: 300 */
    int first_wait_s;         /* first wait?state=started slice; 0: 1 (see provider_fly.c) */
    int run_wait_s;           /* wait?state=stopped slice; 0: 5 (a `failed` machine is seen within it) */
    int create_rate;          /* creates per second for the whole app, shared by all runs; 0: 1 */
    int create_burst;         /* ... with this burst; 0: 3 (Fly's documented limit) */
    int settle_ms;            /* after an ambiguous create, wait this before listing; 0: 500 */
    int logs_poll_ms;         /* logs API poll interval while a machine runs; 0: 1000 */
    int logs_drain_ms;        /* after the machine stopped, read logs until an empty page
                               * at least this much later (Fly ships logs with a lag); 0: 2000 */
} sbx_fly_config;

/* Fills cfg from the environment: SBX_FLY_API_URL, SBX_FLY_APP,
 * SBX_FLY_API_TOKEN (else FLY_API_TOKEN), SBX_FLY_REGIONS, SBX_FLY_MAX_MACHINES,
 * SBX_FLY_CPU_KIND, SBX_FLY_CPUS, SBX_FLY_MEMORY_MB, SBX_FLY_IMAGE,
 * SBX_FLY_LOGS_URL, SBX_FLY_CREATE_RATE, SBX_FLY_CREATE_BURST. worker_id is the caller's. The strings point into the
 * environment. Returns 0, or -EINVAL and one line in err. */
int sbx_fly_config_from_env(sbx_fly_config *cfg, const char *worker_id, char *err, size_t errlen);

/* Returns 0 and sets *out, or -EINVAL/-ENOMEM and one line in err. */
int sbx_fly_new(sbx_loop *loop, const sbx_fly_config *cfg, sbx_provider **out,
                char *err, size_t errlen);

/* Destroys the machines of `worker_id` (NULL: this provider's) that no run of
 * this provider is watching. cb runs once, from the loop, with how many were
 * destroyed and how many could not be; err is "" or why the list failed.
 * cb may be NULL. Returns 0, or -errno and then cb is never called. Sweeps still running when
 * the provider is destroyed end without their callback. */
typedef void (*sbx_fly_sweep_cb)(void *arg, int destroyed, int failed, const char *err);
int sbx_fly_sweep(sbx_provider *p, const char *worker_id, sbx_fly_sweep_cb cb, void *arg);

#endif
