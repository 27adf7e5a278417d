/* test_preview.c — the preview proxy (common/preview.c) between a real
 * client and a real dev server: tests/unit/preview_check.py plays both (a
 * browser that signs in with the URL's token and then uses the cookie, an
 * HTTP + WebSocket echo server on the port the proxy dials) while this
 * program runs the proxy on its loop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "loop.h"
#include "preview.h"

static int dev_port;

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* The "sandbox": the dev server on 127.0.0.1:dev_port. */
static int dial(void *arg, char *err, size_t errlen)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)dev_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    (void)arg;
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "connect: %s", strerror(e));
        return -e;
    }
    return fd;
}

static int connects(const char *url)
{
    int port = atoi(strrchr(url, ':') + 1);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static void test_browser_http_and_websocket(void **state)
{
    sbx_loop *l;
    sbx_previews *ps;
    char url[SBX_PREVIEW_URL_MAX], url2[SBX_PREVIEW_URL_MAX], err[256] = "", port[16];
    int base = 20000 + (int)(getpid() % 2000) * 10, status = -1;
    sbx_previews_cfg cfg = {0};
    pid_t child;
    (void)state;

    assert_int_equal(sbx_loop_new(&l), 0);
    cfg.loop = l;
    cfg.bind_host = "127.0.0.1";
    cfg.port_min = base;
    cfg.port_max = base + 9;
    cfg.secret = "test-secret";
    assert_int_equal(sbx_previews_new(&cfg, &ps, err, sizeof(err)), 0);
    assert_int_equal(sbx_preview_open(ps, "s-0123", dial, NULL, url, err, sizeof(err)), 0);
    /* Opening it again keeps its port and token. */
    assert_int_equal(sbx_preview_open(ps, "s-0123", dial, NULL, url2, err, sizeof(err)), 0);
    assert_string_equal(url, url2);
    assert_non_null(strstr(url, "?sbx_token="));
    dev_port = free_port();
    snprintf(port, sizeof(port), "%d", dev_port);

    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        execlp("python3", "python3", "tests/unit/preview_check.py", url, port, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 3000; i++) {
        if (waitpid(child, &status, WNOHANG) == child)
            break;
        sbx_loop_once(l, 10);
    }
    if (waitpid(child, &status, WNOHANG) == 0) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        fail_msg("preview_check.py did not finish in 30 s");
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* Closed: the port no longer answers. */
    assert_true(connects(url));
    sbx_preview_close(ps, "s-0123");
    sbx_loop_once(l, 0);
    assert_false(connects(url));
    sbx_previews_free(ps);
    sbx_loop_free(l);
}

static void test_token_is_keyed_and_bad_config_refused(void **state)
{
    sbx_loop *l;
    sbx_previews *a, *b;
    sbx_previews_cfg cfg = {0};
    char ta[65], tb[65], tc[65], err[256];
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    cfg.loop = l;
    cfg.bind_host = "127.0.0.1";
    cfg.port_min = 1;
    cfg.port_max = 2;
    cfg.secret = "one";
    assert_int_equal(sbx_previews_new(&cfg, &a, err, sizeof(err)), 0);
    cfg.secret = "two";
    assert_int_equal(sbx_previews_new(&cfg, &b, err, sizeof(err)), 0);
    sbx_preview_token(a, "s-x", ta);
    sbx_preview_token(b, "s-x", tb);
    sbx_preview_token(a, "s-y", tc);
    assert_int_equal(strlen(ta), 32);
    assert_string_not_equal(ta, tb);
    assert_string_not_equal(ta, tc);
    sbx_previews_free(b);
    cfg.port_min = 10;
    cfg.port_max = 5;
    assert_int_equal(sbx_previews_new(&cfg, &b, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "10-5"));
    sbx_previews_free(a);
    sbx_previews_new(&(sbx_previews_cfg){.loop = l, .bind_host = "localhost", .port_min = 1,
                                         .port_max = 2},
                     &a, err, sizeof(err));
    assert_non_null(strstr(err, "IPv4"));
    sbx_loop_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_browser_http_and_websocket),
        cmocka_unit_test(test_token_is_keyed_and_bad_config_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
