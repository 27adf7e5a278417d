/* alloc.h — allocation failure injection for project code under fuzzing.
 *
 * fuzz.mk compiles the project files a target tests with -Dmalloc=fuzz_malloc
 * (and calloc, realloc), so their allocations, and only theirs, pass through
 * here; libraries (json-c) and the fuzzer itself allocate normally. A target
 * counts the allocations one call makes, then repeats the call with the k-th
 * one failing and checks the code reports ENOMEM and leaks nothing (the
 * beanstalkd falloc / curl torture idea, one failure point per input).
 */
#ifndef SBX_FUZZ_ALLOC_H
#define SBX_FUZZ_ALLOC_H

#include <stddef.h>

void *fuzz_malloc(size_t n);
void *fuzz_calloc(size_t count, size_t size);
void *fuzz_realloc(void *p, size_t n);

/* Allocations since the last fuzz_alloc_reset(). */
extern size_t fuzz_alloc_count;
/* Start counting from zero; fail the allocation numbered fail_at (1-based),
 * or none when fail_at is 0. */
void fuzz_alloc_reset(size_t fail_at);
/* Whether the armed failure has happened since the last reset. */
int fuzz_alloc_failed(void);

#endif
