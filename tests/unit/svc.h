/* svc.h — helpers for unit tests that talk to a real server: start a private
 * redis-server on a free 127.0.0.1 port, and run the loop until a condition
 * holds or a deadline passes. */
#ifndef SBX_TEST_SVC_H
#define SBX_TEST_SVC_H

#include <stdint.h>
#include <sys/types.h>

#include "loop.h"

typedef struct test_redis {
    pid_t pid;
    int port;
    char dir[64];
} test_redis;

int test_free_port(void);
/* Starts redis-server and waits until it answers; 0 or -1. */
int test_redis_start(test_redis *r);
void test_redis_stop(test_redis *r);
/* Runs the loop until *flag != 0 or timeout_ms passes; returns *flag. */
int test_run_until(sbx_loop *l, volatile int *flag, int timeout_ms);

#endif
