/* test_http.c — the curl-multi client on the event loop, against a real HTTP
 * server started by this test (a forked process listening on a free
 * 127.0.0.1 port and on a unix socket; one forked child per connection so
 * slow answers overlap).
 *
 * Server routes: /hello, /echo (any method: "<METHOD> <body>"),
 * /slow/<ms>, /big/<bytes>, /status/<code>, /stream/<lines>/<ms>,
 * /header (echoes X-Test).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "loop.h"

/* ---- the server ---- */

static pid_t srv_pid;
static int srv_port;
static char srv_dir[64];
static char srv_sock[96];
static char base[64];

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            _exit(0);
        p += w;
        n -= (size_t)w;
    }
}

static void reply(int fd, int code, const char *body, size_t len)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", code, len);
    write_all(fd, head, (size_t)n);
    write_all(fd, body, len);
}

static void serve_one(int fd)
{
    static char req[1 << 20];
    size_t have = 0, head_len, clen = 0;
    char method[16], path[256], *end, *cl, *xt;
    char out[1 << 16];

    for (;;) {
        ssize_t r = read(fd, req + have, sizeof(req) - 1 - have);
        if (r <= 0)
            _exit(0);
        have += (size_t)r;
        req[have] = '\0';
        if ((end = strstr(req, "\r\n\r\n")))
            break;
    }
    head_len = (size_t)(end - req) + 4;
    if (sscanf(req, "%15s %255s", method, path) != 2)
        _exit(0);
    if ((cl = strcasestr(req, "\r\nContent-Length:")))
        clen = strtoul(cl + 17, NULL, 10);
    while (have < head_len + clen) {
        ssize_t r = read(fd, req + have, sizeof(req) - 1 - have);
        if (r <= 0)
            _exit(0);
        have += (size_t)r;
    }

    if (strcmp(path, "/hello") == 0) {
        reply(fd, 200, "hello world", 11);
    } else if (strcmp(path, "/echo") == 0) {
        int n = snprintf(out, sizeof(out), "%s ", method);
        memcpy(out + n, req + head_len, clen);
        reply(fd, 200, out, (size_t)n + clen);
    } else if (strcmp(path, "/header") == 0) {
        char v[64] = "";
        if ((xt = strcasestr(req, "\r\nX-Test: ")))
            sscanf(xt + 10, "%63[^\r]", v);
        reply(fd, 200, v, strlen(v));
    } else if (strncmp(path, "/slow/", 6) == 0) {
        msleep(atoi(path + 6));
        reply(fd, 200, "slow", 4);
    } else if (strncmp(path, "/big/", 5) == 0) {
        size_t n = strtoul(path + 5, NULL, 10);
        int hn = snprintf(out, sizeof(out),
                          "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", n);
        write_all(fd, out, (size_t)hn);
        memset(out, 'x', sizeof(out));
        while (n > 0) {
            size_t k = n < sizeof(out) ? n : sizeof(out);
            write_all(fd, out, k);
            n -= k;
        }
    } else if (strncmp(path, "/status/", 8) == 0) {
        int n = snprintf(out, sizeof(out), "status %d", atoi(path + 8));
        reply(fd, atoi(path + 8), out, (size_t)n);
    } else if (strncmp(path, "/stream/", 8) == 0) {
        int lines = 0, ms = 0;
        sscanf(path + 8, "%d/%d", &lines, &ms);
        write_all(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 38);
        for (int i = 0; i < lines; i++) {
            int n = snprintf(out, sizeof(out), "line %d\n", i);
            msleep(ms);
            write_all(fd, out, (size_t)n);
        }
    } else {
        reply(fd, 404, "no route", 8);
    }
    shutdown(fd, SHUT_WR);
    while (read(fd, out, sizeof(out)) > 0)
        ;
    _exit(0);
}

static void server_main(int tcp, int un)
{
    struct pollfd p[2] = {{.fd = tcp, .events = POLLIN}, {.fd = un, .events = POLLIN}};
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        if (poll(p, 2, -1) < 0)
            continue;
        for (int i = 0; i < 2; i++) {
            int c;
            if (!(p[i].revents & POLLIN))
                continue;
            c = accept(p[i].fd, NULL, NULL);
            if (c < 0)
                continue;
            if (fork() == 0) {
                close(tcp);
                close(un);
                serve_one(c);
            }
            close(c);
        }
    }
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s >= 0);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
    close(s);
    return ntohs(a.sin_port);
}

static int server_up(void **state)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_un u = {.sun_family = AF_UNIX};
    socklen_t al = sizeof(a);
    int tcp, un, one = 1;
    (void)state;

    signal(SIGPIPE, SIG_IGN);
    snprintf(srv_dir, sizeof(srv_dir), "/tmp/sbx-test-http.XXXXXX");
    if (!mkdtemp(srv_dir))
        return -1;
    snprintf(srv_sock, sizeof(srv_sock), "%s/http.sock", srv_dir);
    snprintf(u.sun_path, sizeof(u.sun_path), "%s", srv_sock);

    tcp = socket(AF_INET, SOCK_STREAM, 0);
    un = socket(AF_UNIX, SOCK_STREAM, 0);
    setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(tcp, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(tcp, 512) < 0 ||
        getsockname(tcp, (struct sockaddr *)&a, &al) < 0)
        return -1;
    if (bind(un, (struct sockaddr *)&u, sizeof(u)) < 0 || listen(un, 512) < 0)
        return -1;
    srv_port = ntohs(a.sin_port);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", srv_port);
    srv_pid = fork();
    if (srv_pid < 0)
        return -1;
    if (srv_pid == 0) {
        setpgid(0, 0);
        server_main(tcp, un);
    }
    setpgid(srv_pid, srv_pid);
    close(tcp);
    close(un);
    return 0;
}

static int server_down(void **state)
{
    (void)state;
    kill(-srv_pid, SIGKILL);
    waitpid(srv_pid, NULL, 0);
    unlink(srv_sock);
    rmdir(srv_dir);
    return 0;
}

/* ---- client side helpers ---- */

typedef struct result {
    int done;
    sbx_http_code code;
    long status;
    char body[4096];
    size_t body_len;
    char error[256];
    char chunks[4096];
    size_t chunks_len;
    int nchunks;
    int cancel_in_chunk;     /* cancel own handle from the first chunk */
    int abort_in_chunk;      /* return non-zero from the first chunk */
    sbx_http_handle *h;
} result;

static int ndone; /* finished requests since client_up */

static void on_done(void *arg, const sbx_http_res *res)
{
    result *r = arg;
    ndone++;
    r->done++;
    r->code = res->code;
    r->status = res->status;
    r->body_len = res->body_len;
    memcpy(r->body, res->body, res->body_len < sizeof(r->body) ? res->body_len : sizeof(r->body) - 1);
    assert_int_equal(res->body[res->body_len], '\0');
    snprintf(r->error, sizeof(r->error), "%s", res->error);
}

static int on_chunk(void *arg, const char *data, size_t len)
{
    result *r = arg;
    r->nchunks++;
    if (r->chunks_len + len < sizeof(r->chunks)) {
        memcpy(r->chunks + r->chunks_len, data, len);
        r->chunks_len += len;
    }
    if (r->cancel_in_chunk) {
        sbx_http_cancel(r->h);
        return 0;
    }
    return r->abort_in_chunk;
}

static sbx_loop *L;
static sbx_http *H;

static int client_up(void **state)
{
    (void)state;
    ndone = 0;
    if (sbx_loop_new(&L) < 0 || sbx_http_new(L, &H) < 0)
        return -1;
    return 0;
}

static int client_down(void **state)
{
    (void)state;
    sbx_http_free(H);
    sbx_loop_free(L);
    return 0;
}

/* Runs the loop until *done >= want or the deadline passes. */
static void run_until(const int *done, int want, int deadline_ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)deadline_ms;
    while (*done < want && sbx_now_ms() < end)
        sbx_loop_once(L, 50);
}

static void get(const char *path, sbx_http_req *req, char *url, size_t urlsz)
{
    snprintf(url, urlsz, "%s%s", base, path);
    memset(req, 0, sizeof(*req));
    req->method = "GET";
    req->url = url;
    req->timeout_ms = 10000;
}

/* ---- tests ---- */

static void test_get_post_put_delete(void **state)
{
    static const char bin[] = {'a', 0, 'b', '\n', 0, 'c'};
    const char *hdrs[] = {"X-Test: abc123", NULL};
    result r[5] = {{0}};
    sbx_http_req q[5];
    char url[5][128];
    (void)state;

    get("/hello", &q[0], url[0], sizeof(url[0]));
    get("/echo", &q[1], url[1], sizeof(url[1]));
    q[1].method = "POST";
    q[1].body = "{\"a\":1}";
    q[1].body_len = 7;
    get("/echo", &q[2], url[2], sizeof(url[2]));
    q[2].method = "PUT";
    q[2].body = bin;
    q[2].body_len = sizeof(bin);
    get("/echo", &q[3], url[3], sizeof(url[3]));
    q[3].method = "DELETE";
    get("/header", &q[4], url[4], sizeof(url[4]));
    q[4].headers = hdrs;
    for (int i = 0; i < 5; i++)
        assert_int_equal(sbx_http_request(H, &q[i], on_done, &r[i], NULL), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(r[i].done, 0); /* never from inside sbx_http_request() */

    run_until(&ndone, 5, 5000);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(r[i].done, 1);
        assert_int_equal(r[i].code, SBX_HTTP_OK);
        assert_int_equal(r[i].status, 200);
        assert_string_equal(r[i].error, "");
    }
    assert_string_equal(r[0].body, "hello world");
    assert_string_equal(r[1].body, "POST {\"a\":1}");
    assert_int_equal(r[2].body_len, 4 + sizeof(bin));
    assert_memory_equal(r[2].body, "PUT ", 4);
    assert_memory_equal(r[2].body + 4, bin, sizeof(bin));
    assert_string_equal(r[3].body, "DELETE ");
    assert_string_equal(r[4].body, "abc123");
    assert_int_equal(sbx_http_pending(H), 0);
}

static void test_unix_socket(void **state)
{
    result r = {0};
    sbx_http_req q = {.method = "POST", .url = "http://localhost/echo",
                      .unix_socket_path = srv_sock, .body = "over unix", .body_len = 9,
                      .timeout_ms = 5000};
    (void)state;
    assert_int_equal(sbx_http_request(H, &q, on_done, &r, NULL), 0);
    run_until(&r.done, 1, 5000);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.code, SBX_HTTP_OK);
    assert_string_equal(r.body, "POST over unix");
}

static void test_error_status_is_not_transport_error(void **state)
{
    result r = {0};
    sbx_http_req q;
    char url[128];
    (void)state;
    get("/status/404", &q, url, sizeof(url));
    assert_int_equal(sbx_http_request(H, &q, on_done, &r, NULL), 0);
    run_until(&r.done, 1, 5000);
    assert_int_equal(r.code, SBX_HTTP_OK);
    assert_int_equal(r.status, 404);
    assert_string_equal(r.body, "status 404");
}

static void test_timeout(void **state)
{
    result r = {0};
    sbx_http_req q;
    char url[128];
    uint64_t t0;
    (void)state;
    get("/slow/3000", &q, url, sizeof(url));
    q.timeout_ms = 200;
    t0 = sbx_now_ms();
    assert_int_equal(sbx_http_request(H, &q, on_done, &r, NULL), 0);
    run_until(&r.done, 1, 5000);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.code, SBX_HTTP_ETIMEDOUT);
    assert_int_equal(r.status, 0);
    assert_true(r.error[0] != '\0');
    assert_true(sbx_now_ms() - t0 >= 190);
    assert_true(sbx_now_ms() - t0 < 1500);
}

static void test_connection_refused(void **state)
{
    result r = {0};
    sbx_http_req q = {0};
    char url[128];
    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", free_port());
    q.url = url;
    q.timeout_ms = 5000;
    assert_int_equal(sbx_http_request(H, &q, on_done, &r, NULL), 0);
    assert_int_equal(r.done, 0);
    run_until(&r.done, 1, 5000);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.code, SBX_HTTP_ETRANSPORT);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.error, "onnect"));

    /* A unix socket that does not exist is the same kind of error. */
    memset(&r, 0, sizeof(r));
    q.url = "http://localhost/x";
    q.unix_socket_path = "/nonexistent/sbx.sock";
    assert_int_equal(sbx_http_request(H, &q, on_done, &r, NULL), 0);
    run_until(&r.done, 1, 5000);
    assert_int_equal(r.code, SBX_HTTP_ETRANSPORT);
}

static void test_oversize_body(void **state)
{
    result r[2] = {{0}};
    sbx_http_req q[2];
    char url[2][128];
    (void)state;
    get("/big/1000", &q[0], url[0], sizeof(url[0]));
    q[0].max_response_bytes = 1000; /* exactly the cap: fine */
    get("/big/300000", &q[1], url[1], sizeof(url[1]));
    q[1].max_response_bytes = 1000;
    assert_int_equal(sbx_http_request(H, &q[0], on_done, &r[0], NULL), 0);
    assert_int_equal(sbx_http_request(H, &q[1], on_done, &r[1], NULL), 0);
    run_until(&r[0].done, 1, 5000);
    run_until(&r[1].done, 1, 5000);
    assert_int_equal(r[0].code, SBX_HTTP_OK);
    assert_int_equal(r[0].body_len, 1000);
    assert_int_equal(r[1].code, SBX_HTTP_ETOOBIG);
    assert_true(r[1].body_len <= 1000);
    assert_non_null(strstr(r[1].error, "1000"));
}

#define MANY 200
static void test_many_concurrent(void **state)
{
    static result r[MANY];
    static char url[MANY][128];
    sbx_http_req q;
    uint64_t t0 = sbx_now_ms();
    (void)state;
    memset(r, 0, sizeof(r));
    for (int i = 0; i < MANY; i++) {
        get(i % 2 ? "/slow/300" : "/echo", &q, url[i], sizeof(url[i]));
        if (i % 2 == 0) {
            q.method = "POST";
            q.body = url[i];
            q.body_len = strlen(url[i]);
        }
        assert_int_equal(sbx_http_request(H, &q, on_done, &r[i], NULL), 0);
    }
    assert_int_equal(sbx_http_pending(H), MANY);
    run_until(&ndone, MANY, 20000);
    assert_int_equal(ndone, MANY);
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(r[i].code, SBX_HTTP_OK);
        assert_int_equal(r[i].status, 200);
        if (i % 2 == 0)
            assert_memory_equal(r[i].body + 5, url[i], strlen(url[i]));
    }
    /* 100 answers of 300 ms each, one after another, would take 30 s. */
    print_message("%d requests in %llu ms\n", MANY, (unsigned long long)(sbx_now_ms() - t0));
    assert_true(sbx_now_ms() - t0 < 10000);
    assert_int_equal(sbx_http_pending(H), 0);
}

static void test_cancel(void **state)
{
    result r[3] = {{0}};
    sbx_http_req q;
    char url[3][128];
    sbx_http_handle *h[3];
    (void)state;
    for (int i = 0; i < 3; i++) {
        get("/slow/300", &q, url[i], sizeof(url[i]));
        assert_int_equal(sbx_http_request(H, &q, on_done, &r[i], &h[i]), 0);
    }
    sbx_http_cancel(h[0]); /* before it even connected */
    sbx_loop_once(L, 50);
    sbx_loop_once(L, 50);
    sbx_http_cancel(h[2]); /* while the server is answering */
    run_until(&r[1].done, 1, 5000);
    run_until(&ndone, 2, 700); /* give canceled ones time to (wrongly) finish */
    assert_int_equal(r[0].done, 0);
    assert_int_equal(r[1].done, 1);
    assert_int_equal(r[1].code, SBX_HTTP_OK);
    assert_int_equal(r[2].done, 0);
    assert_int_equal(sbx_http_pending(H), 0);
}

static void test_stream(void **state)
{
    result r = {0};
    sbx_http_req q;
    char url[128], want[256] = "";
    (void)state;
    get("/stream/6/30", &q, url, sizeof(url));
    q.timeout_ms = 0;
    assert_int_equal(sbx_http_stream(H, &q, on_chunk, on_done, &r, NULL), 0);
    run_until(&r.done, 1, 5000);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.code, SBX_HTTP_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0); /* streamed, not buffered */
    for (int i = 0; i < 6; i++)
        snprintf(want + strlen(want), sizeof(want) - strlen(want), "line %d\n", i);
    assert_int_equal(r.chunks_len, strlen(want));
    assert_memory_equal(r.chunks, want, strlen(want));
    assert_true(r.nchunks >= 2); /* it did arrive in pieces */
}

static void test_stream_cancel_from_chunk(void **state)
{
    result r = {0}, other = {0};
    sbx_http_req q;
    char url[128], url2[128];
    (void)state;
    get("/stream/50/20", &q, url, sizeof(url));
    r.cancel_in_chunk = 1;
    assert_int_equal(sbx_http_stream(H, &q, on_chunk, on_done, &r, &r.h), 0);
    get("/hello", &q, url2, sizeof(url2));
    assert_int_equal(sbx_http_request(H, &q, on_done, &other, NULL), 0);
    run_until(&other.done, 1, 5000);
    run_until(&r.done, 1, 500);
    assert_int_equal(r.nchunks, 1);
    assert_int_equal(r.done, 0);
    assert_int_equal(other.code, SBX_HTTP_OK);
    assert_int_equal(sbx_http_pending(H), 0);
}

static void test_stream_abort_and_error_status(void **state)
{
    result r = {0}, e = {0};
    sbx_http_req q;
    char url[128], url2[128];
    (void)state;
    get("/stream/50/20", &q, url, sizeof(url));
    r.abort_in_chunk = 1;
    assert_int_equal(sbx_http_stream(H, &q, on_chunk, on_done, &r, NULL), 0);
    get("/status/500", &q, url2, sizeof(url2));
    assert_int_equal(sbx_http_stream(H, &q, on_chunk, on_done, &e, NULL), 0);
    run_until(&r.done, 1, 5000);
    run_until(&e.done, 1, 5000);
    assert_int_equal(r.code, SBX_HTTP_EABORTED);
    assert_int_equal(r.nchunks, 1);
    /* A non-2xx body is the server's message, not stream data. */
    assert_int_equal(e.code, SBX_HTTP_OK);
    assert_int_equal(e.status, 500);
    assert_int_equal(e.nchunks, 0);
    assert_string_equal(e.body, "status 500");
}

static void test_free_with_pending(void **state)
{
    result r[4] = {{0}};
    sbx_http_req q;
    char url[4][128];
    sbx_http *h2;
    (void)state;
    assert_int_equal(sbx_http_new(L, &h2), 0);
    for (int i = 0; i < 4; i++) {
        get(i < 2 ? "/slow/2000" : "/stream/100/50", &q, url[i], sizeof(url[i]));
        if (i < 2)
            assert_int_equal(sbx_http_request(h2, &q, on_done, &r[i], NULL), 0);
        else
            assert_int_equal(sbx_http_stream(h2, &q, on_chunk, on_done, &r[i], NULL), 0);
    }
    run_until(&r[2].nchunks, 1, 3000);
    assert_true(r[2].nchunks >= 1);
    sbx_http_free(h2);
    for (int i = 0; i < 20; i++)
        sbx_loop_once(L, 10); /* nothing of h2 may fire now */
    for (int i = 0; i < 4; i++)
        assert_int_equal(r[i].done, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_post_put_delete, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_unix_socket, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_error_status_is_not_transport_error, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_timeout, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_connection_refused, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_oversize_body, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_many_concurrent, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_cancel, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_stream, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_stream_cancel_from_chunk, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_stream_abort_and_error_status, client_up, client_down),
        cmocka_unit_test_setup_teardown(test_free_with_pending, client_up, client_down),
    };
    return cmocka_run_group_tests(tests, server_up, server_down);
}
