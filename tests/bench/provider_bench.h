/* provider_bench.h — the benchmark provider: builds that do nothing and end
 * at once (hold_ms = 0) or after hold_ms, so benchmarks measure the worker's
 * own cost. Never the default; SBX_PROVIDER=bench names it explicitly. */
#ifndef SBX_PROVIDER_BENCH_H
#define SBX_PROVIDER_BENCH_H

#include "provider.h"

int sbx_bench_new(sbx_loop *loop, const char *node, int slots, int hold_ms, sbx_provider **out,
                  char *err, size_t errlen);

#endif
