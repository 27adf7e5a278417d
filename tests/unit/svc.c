/* svc.c — see svc.h. */
#include "svc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int test_free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int can_connect(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

int test_redis_start(test_redis *r)
{
    char port[16];
    snprintf(r->dir, sizeof(r->dir), "/tmp/sbx-test-redis-XXXXXX");
    if (!mkdtemp(r->dir))
        return -1;
    r->port = test_free_port();
    snprintf(port, sizeof(port), "%d", r->port);
    r->pid = fork();
    if (r->pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--dir", r->dir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        struct timespec ts = {0, 20 * 1000000};
        if (can_connect(r->port))
            return 0;
        nanosleep(&ts, NULL);
    }
    test_redis_stop(r);
    return -1;
}

void test_redis_stop(test_redis *r)
{
    char cmd[128];
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
    snprintf(cmd, sizeof(cmd), "rm -rf %s", r->dir);
    if (r->dir[0])
        (void)!system(cmd);
}

int test_run_until(sbx_loop *l, volatile int *flag, int timeout_ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)timeout_ms;
    while (!*flag && sbx_now_ms() < end)
        sbx_loop_once(l, 50);
    return *flag;
}
