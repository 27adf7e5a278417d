/* alloc.c — see alloc.h. Compiled without the -Dmalloc redirection, so the
 * names below are the C library's. */
#include "alloc.h"

#include <stdlib.h>

size_t fuzz_alloc_count;
static size_t fail_at;
static int failed;

void fuzz_alloc_reset(size_t at)
{
    fuzz_alloc_count = 0;
    fail_at = at;
    failed = 0;
}

int fuzz_alloc_failed(void) { return failed; }

static int should_fail(void)
{
    if (++fuzz_alloc_count != fail_at)
        return 0;
    failed = 1;
    return 1;
}

void *fuzz_malloc(size_t n) { return should_fail() ? NULL : malloc(n); }

void *fuzz_calloc(size_t count, size_t size) { return should_fail() ? NULL : calloc(count, size); }

void *fuzz_realloc(void *p, size_t n) { return should_fail() ? NULL : realloc(p, n); }
