/* test_docker_remote.c — the docker provider's remote hosts: https:// with
 * client certificates and ssh:// through a tunnel, against a real dockerd
 * and a real sshd that tests/services/remote-docker/remote-docker.sh starts
 * on 127.0.0.1 (it sets SBX_TEST_RD_*; without them this exits 77).
 *
 * What is checked:
 *  - the endpoint rules without the network: plain tcp:// and http:// only
 *    to loopback unless insecure_tcp, and each refusal names the setting
 *    and its fix (https files, known_hosts, ssh destinations that would be
 *    options on ssh's command line);
 *  - a job runs end to end on the TLS host (files from the cert dir in
 *    Docker's layout), and the engine is asked nothing without TLS: a wrong
 *    CA, a client certificate of another CA, and no client certificate at
 *    all are each refused with the TLS library's reason;
 *  - a job runs through the ssh tunnel; a killed ssh is started again and
 *    the next job runs; a host key that is not the one in known_hosts keeps
 *    the tunnel down, and start() says ssh's own reason;
 *  - --check-config's probe reaches each host as runs do and says why not.
 *
 * Jobs carry no files: dockerd 20.10 refuses to write into a read-only
 * root filesystem (issue 15, item 1), which is not what this tests.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "docker_hosts.h"
#include "http.h"
#include "loop.h"
#include "provider.h"
#include "provider_docker.h"

static const char *IMAGE, *SOCK, *TLS, *CERTS, *SSH, *SSH_DIR;
/* The engine behind the ssh tunnel: Podman's service when
 * tests/services/podman/podman-service.sh runs around us, else the dockerd. */
static const char *SSH_SOCK, *SSH_IMAGE;
static char WORKER[64];
static sbx_loop *L;
static sbx_provider *P;

static char path_buf[8][512];
static const char *path(int i, const char *fmt, const char *a, const char *b)
{
    snprintf(path_buf[i], sizeof(path_buf[i]), fmt, a, b);
    return path_buf[i];
}

/* ---- a provider per test, on one host ---- */

static void base_config(sbx_docker_config *cfg, sbx_docker_host *h)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->worker_id = WORKER;
    cfg->hosts = h;
    cfg->nhosts = 1;
    cfg->default_image = IMAGE;
    cfg->default_memory_mb = 64;
    cfg->request_timeout_ms = 15000;
    cfg->kill_grace_ms = 5000;
    cfg->no_start_sweep = 1;
}

static int up(void **state)
{
    (void)state;
    return sbx_loop_new(&L) < 0 ? -1 : 0;
}

static int down(void **state)
{
    (void)state;
    if (P) {
        assert_int_equal(sbx_docker_active(P), 0);
        P->ops->destroy(P);
        P = NULL;
    }
    sbx_loop_free(L);
    return 0;
}

static void make(const sbx_docker_config *cfg)
{
    char err[512] = "";
    int rc = sbx_docker_new(L, cfg, &P, err, sizeof(err));
    if (rc < 0)
        fail_msg("sbx_docker_new: %s", err);
}

/* ---- runs ---- */

typedef struct rec {
    int started, finished;
    sbx_result res;
    sbx_run *run;
} rec;

static void on_run(void *arg, sbx_run_event ev, const sbx_result *res)
{
    rec *r = arg;
    if (ev == SBX_RUN_STARTED) {
        r->started++;
        return;
    }
    r->finished++;
    memcpy(&r->res, res, sizeof(*res));
}

static void run_until(const int *flag, int ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)ms;
    while (!*flag && sbx_now_ms() < end)
        sbx_loop_once(L, 20);
}

static int start(const char *slot, const char *script, rec *r, char *err, size_t errlen)
{
    static sbx_job job;
    static int n;
    sbx_run_req req = {.job = &job, .slot = slot, .token = 4242, .attempt = 1};
    memset(&job, 0, sizeof(job));
    snprintf(job.job_id, sizeof(job.job_id), "rd-%d-%d", (int)getpid(), ++n);
    snprintf(job.project_id, sizeof(job.project_id), "p-%d", n);
    job.script = (char *)script;
    job.timeout_s = 60;
    memset(r, 0, sizeof(*r));
    return P->ops->start(P, &req, on_run, r, &r->run, err, errlen);
}

static void run_job(const char *slot, const char *script, rec *r)
{
    char err[512] = "";
    int rc = start(slot, script, r, err, sizeof(err));
    if (rc != 0)
        fail_msg("start: %s", err);
    run_until(&r->finished, 60000);
    assert_int_equal(r->finished, 1);
    assert_int_equal(r->started, 1);
}

/* The host is up as the provider sees it, within ms. */
static int wait_up(int want, int ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)ms;
    while (sbx_docker_host_up(P, 0, NULL) != want && sbx_now_ms() < end)
        sbx_loop_once(L, 20);
    return sbx_docker_host_up(P, 0, NULL) == want;
}

/* ---- the endpoint rules ---- */

static void expect_refused(const sbx_docker_config *cfg, const char *want1, const char *want2)
{
    char err[1024] = "";
    assert_int_equal(sbx_docker_check_config(cfg, err, sizeof(err)), -EINVAL);
    if (!strstr(err, want1) || (want2 && !strstr(err, want2)))
        fail_msg("error \"%s\" does not say \"%s\" / \"%s\"", err, want1, want2 ? want2 : "");
    assert_int_equal(sbx_docker_new(L, cfg, &P, err, sizeof(err)), -EINVAL);
    assert_null(P);
}

static void expect_ok(const sbx_docker_config *cfg)
{
    char err[1024] = "";
    if (sbx_docker_check_config(cfg, err, sizeof(err)) != 0)
        fail_msg("refused: %s", err);
}

static void test_plain_tcp_only_to_loopback(void **state)
{
    static const char *const loopback[] = {"tcp://127.0.0.1:2375", "http://127.8.9.10:2375/",
                                           "tcp://localhost:2375", "http://[::1]:2375"};
    static const char *const remote[] = {"tcp://10.0.0.5:2375", "http://192.0.2.1:2375",
                                         "tcp://127.0.0.1.example.com:2375", "tcp://[::2]:2375",
                                         "http://docker.example.com:2375"};
    sbx_docker_host h = {"h", NULL, 1};
    sbx_docker_config cfg;
    (void)state;
    base_config(&cfg, &h);
    for (size_t i = 0; i < sizeof(loopback) / sizeof(*loopback); i++) {
        h.endpoint = loopback[i];
        expect_ok(&cfg);
    }
    for (size_t i = 0; i < sizeof(remote) / sizeof(*remote); i++) {
        h.endpoint = remote[i];
        cfg.insecure_tcp = 0;
        expect_refused(&cfg, "SBX_DOCKER_INSECURE_TCP=1", "https://");
        cfg.insecure_tcp = 1;   /* the operator's explicit choice */
        expect_ok(&cfg);
    }
    cfg.insecure_tcp = 0;
    h.endpoint = "tcp://127.0.0.1";   /* no port */
    expect_refused(&cfg, "SBX_DOCKER_HOSTS: host h has endpoint", NULL);
}

static void test_bad_endpoints_and_files_refused(void **state)
{
    static const char *const bad_ssh[] = {
        "ssh://-oProxyCommand=touch@h",   /* would be an option to ssh */
        "ssh://u@-oProxyCommand=x",
        "ssh://u@h:0", "ssh://u@h:99999", "ssh://u@h/run/a:b.sock", "ssh://u@h/run/a b.sock",
        "ssh://@h", "ftp://h:1", "https://h", "https://u@h:2376"};
    sbx_docker_host h = {"vps1", NULL, 1};
    sbx_docker_config cfg;
    (void)state;
    base_config(&cfg, &h);
    for (size_t i = 0; i < sizeof(bad_ssh) / sizeof(*bad_ssh); i++) {
        h.endpoint = bad_ssh[i];
        expect_refused(&cfg, "SBX_DOCKER_HOSTS: host vps1 has endpoint", NULL);
    }
    /* https: the three files of Docker's layout, each named when missing. */
    h.endpoint = "https://127.0.0.1:2376";
    cfg.cert_dir = "/nonexistent/sbx-certs";
    expect_refused(&cfg, "SBX_DOCKER_CERT_DIR", "/nonexistent/sbx-certs/vps1/ca.pem");
    h.name = "tls";
    cfg.cert_dir = path(0, "%s/hosts", CERTS, NULL);
    expect_ok(&cfg);
    h.name = "nokey";   /* a directory with no files */
    cfg.cert_dir = path(2, "%s", CERTS, NULL);
    expect_refused(&cfg, "SBX_DOCKER_CERT_DIR", "/nokey/ca.pem");
    h.name = "tls";
    /* ssh: known_hosts is required, the key must be readable. */
    h.endpoint = "ssh://root@127.0.0.1:22";
    expect_refused(&cfg, "SBX_DOCKER_SSH_KNOWN_HOSTS is not set", NULL);
    cfg.ssh_known_hosts = "/nonexistent/known_hosts";
    expect_refused(&cfg, "SBX_DOCKER_SSH_KNOWN_HOSTS=/nonexistent/known_hosts cannot be read", NULL);
    cfg.ssh_known_hosts = path(1, "%s/known_hosts", SSH_DIR, NULL);
    expect_ok(&cfg);
    cfg.ssh_key = "/nonexistent/id";
    expect_refused(&cfg, "SBX_DOCKER_SSH_KEY=/nonexistent/id", NULL);
}

/* SBX_DOCKER_HOSTS as the worker reads it: the capacity after the last '@'. */
static void test_parse_hosts(void **state)
{
    char buf[256];
    sbx_docker_host hosts[4];
    size_t n;
    char err[256];
    (void)state;
    snprintf(buf, sizeof(buf), "a=unix:///run/d.sock@2,b=ssh://root@vps:2222/run/p.sock@8,"
                               "c=https://10.0.0.5:2376@4");
    assert_int_equal(sbx_docker_parse_hosts(buf, hosts, 4, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 3);
    assert_string_equal(hosts[1].name, "b");
    assert_string_equal(hosts[1].endpoint, "ssh://root@vps:2222/run/p.sock");
    assert_int_equal(hosts[1].capacity, 8);
    assert_string_equal(hosts[2].endpoint, "https://10.0.0.5:2376");
    snprintf(buf, sizeof(buf), "b=ssh://root@vps");
    assert_int_equal(sbx_docker_parse_hosts(buf, hosts, 4, &n, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "capacity"));
}

/* ---- TLS ---- */

typedef struct reply {
    int done;
    sbx_http_res res;
    char text[512];
} reply;

static void on_reply(void *arg, const sbx_http_res *res)
{
    reply *r = arg;
    r->done = 1;
    r->res = *res;
    snprintf(r->text, sizeof(r->text), "%s", res->code == SBX_HTTP_OK ? res->body : res->error);
}

/* The TLS engine asked directly, with the good client certificate. */
static long tls_call(sbx_http *http, const char *method, const char *p, const char *body,
                     reply *r)
{
    char url[256];
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    sbx_http_req q = {.method = method, .url = url, .headers = hdrs, .body = body,
                      .body_len = body ? strlen(body) : 0, .timeout_ms = 15000};
    q.tls_ca = path(5, "%s/good/ca.pem", CERTS, NULL);
    q.tls_cert = path(6, "%s/client.pem", CERTS, NULL);
    q.tls_key = path(7, "%s/client-key.pem", CERTS, NULL);
    snprintf(url, sizeof(url), "https://%s/v1.41%s", TLS, p);
    memset(r, 0, sizeof(*r));
    assert_int_equal(sbx_http_request(http, &q, on_reply, r, NULL), 0);
    run_until(&r->done, 20000);
    assert_true(r->done);
    if (r->res.code != SBX_HTTP_OK)
        fail_msg("%s %s: %s", method, p, r->text);
    return r->res.status;
}

static void tls_host(sbx_docker_host *h, char *endpoint, size_t len)
{
    snprintf(endpoint, len, "https://%s", TLS);
    memset(h, 0, sizeof(*h));
    h->name = "tls";
    h->endpoint = endpoint;
    h->capacity = 2;
}

static void test_tls_job_runs(void **state)
{
    sbx_docker_host h;
    sbx_docker_config cfg;
    char ep[128];
    rec r;
    (void)state;
    tls_host(&h, ep, sizeof(ep));
    base_config(&cfg, &h);
    cfg.cert_dir = path(0, "%s/hosts", CERTS, NULL);
    make(&cfg);
    run_job("docker/tls/0", "echo hello over tls; id -u", &r);
    /* create answered over TLS: the engine named the container. */
    assert_int_equal(strlen(r.res.instance), 64);
    if (r.res.outcome != SBX_OUTCOME_SUCCEEDED)
        fail_msg("outcome %d error \"%s\" tail \"%s\"", r.res.outcome, r.res.error, r.res.log_tail);
    assert_non_null(strstr(r.res.log_tail, "hello over tls\n"));
    assert_non_null(strstr(r.res.log_tail, "65534\n"));
}

/* The sweep over TLS: a container of ours made behind the provider's back
 * is listed and removed through the https endpoint. */
static int swept, swept_removed;
static void on_swept(void *arg, int removed, int failed)
{
    (void)arg;
    (void)failed;
    swept_removed = removed;
    swept = 1;
}

static void test_tls_sweep_lists_and_removes(void **state)
{
    sbx_docker_host h;
    sbx_docker_config cfg;
    sbx_http *http;
    char ep[128], body[512];
    static reply r;
    (void)state;
    tls_host(&h, ep, sizeof(ep));
    base_config(&cfg, &h);
    cfg.cert_dir = path(0, "%s/hosts", CERTS, NULL);
    make(&cfg);
    assert_int_equal(sbx_http_new(L, &http), 0);
    snprintf(body, sizeof(body),
             "{\"Image\":\"%s\",\"Cmd\":[\"/bin/sh\"],\"Labels\":{\"sbx.worker\":\"%s\","
             "\"sbx.pool\":\"docker\",\"sbx.slot\":\"docker/tls/1\",\"sbx.token\":\"7\","
             "\"sbx.job\":\"orphan\"}}", IMAGE, WORKER);
    assert_int_equal(tls_call(http, "POST", "/containers/create", body, &r), 201);
    swept = 0;
    assert_int_equal(sbx_docker_sweep(P, on_swept, NULL), 0);
    run_until(&swept, 20000);
    assert_int_equal(swept, 1);
    assert_int_equal(swept_removed, 1);
    sbx_http_free(http);
}

/* A TLS host whose files (certs/hosts/<name>/) are wrong; the run must not
 * reach the engine, and the error says why in the TLS library's words. */
static void expect_tls_refused(const char *name, const char *why)
{
    sbx_docker_host h;
    sbx_docker_config cfg;
    char ep[128], slot[64];
    rec r;
    tls_host(&h, ep, sizeof(ep));
    h.name = name;
    base_config(&cfg, &h);
    cfg.cert_dir = path(0, "%s/hosts", CERTS, NULL);
    make(&cfg);
    snprintf(slot, sizeof(slot), "docker/%s/0", name);
    run_job(slot, "echo must not run", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    /* The first call to the host (the API version probe) is refused. */
    if (!strstr(r.res.error, why))
        fail_msg("error \"%s\" does not say \"%s\"", r.res.error, why);
    assert_int_equal(r.res.log_tail_len, 0);
    P->ops->destroy(P);
    P = NULL;
}

static void test_tls_wrong_ca_or_client_cert_refused(void **state)
{
    (void)state;
    /* We do not trust the engine's certificate. */
    expect_tls_refused("badca", "SSL certificate problem: unable to get local issuer certificate");
    /* The engine does not trust ours. */
    expect_tls_refused("badclient", "alert bad certificate");
}

/* No client certificate at all: the provider never sends a request like
 * that (its files are required), so ask through http.c directly. */
static void test_tls_without_client_cert_refused(void **state)
{
    sbx_http *http;
    char url[256];
    reply r = {0}, ok = {0};
    sbx_http_req q = {.method = "GET", .url = url, .timeout_ms = 10000};
    (void)state;
    assert_int_equal(sbx_http_new(L, &http), 0);
    snprintf(url, sizeof(url), "https://%s/v1.41/version", TLS);
    q.tls_ca = path(0, "%s/good/ca.pem", CERTS, NULL);
    assert_int_equal(sbx_http_request(http, &q, on_reply, &r, NULL), 0);
    run_until(&r.done, 15000);
    assert_true(r.done);
    assert_int_not_equal(r.res.code, SBX_HTTP_OK);
    assert_int_equal(r.res.status, 0);
    if (!strstr(r.text, "alert") && !strstr(r.text, "SSL"))
        fail_msg("no TLS reason in \"%s\"", r.text);
    /* The same request with the client certificate is answered. */
    q.tls_cert = path(1, "%s/client.pem", CERTS, NULL);
    q.tls_key = path(2, "%s/client-key.pem", CERTS, NULL);
    assert_int_equal(sbx_http_request(http, &q, on_reply, &ok, NULL), 0);
    run_until(&ok.done, 15000);
    assert_int_equal(ok.res.code, SBX_HTTP_OK);
    assert_int_equal(ok.res.status, 200);
    assert_non_null(strstr(ok.text, "ApiVersion"));
    sbx_http_free(http);
}

/* ---- SSH ---- */

static void ssh_config(sbx_docker_config *cfg, sbx_docker_host *h, char *ep, size_t len,
                       const char *known_hosts)
{
    snprintf(ep, len, "ssh://%s%s", SSH, SSH_SOCK);
    memset(h, 0, sizeof(*h));
    h->name = "ssh";
    h->endpoint = ep;
    h->capacity = 2;
    base_config(cfg, h);
    cfg->ssh_known_hosts = path(0, "%s/%s", SSH_DIR, known_hosts);
    cfg->ssh_key = path(1, "%s/id_ed25519", SSH_DIR, NULL);
    cfg->default_image = SSH_IMAGE;
}

static void test_ssh_job_runs_and_tunnel_restarts(void **state)
{
    sbx_docker_host h;
    sbx_docker_config cfg;
    char ep[512], err[512];
    rec r;
    pid_t first;
    (void)state;
    ssh_config(&cfg, &h, ep, sizeof(ep), "known_hosts");
    make(&cfg);
    assert_true(wait_up(1, 15000));
    run_job("docker/ssh/0", "echo hello over ssh", &r);
    if (r.res.outcome != SBX_OUTCOME_SUCCEEDED)
        fail_msg("outcome %d error \"%s\"", r.res.outcome, r.res.error);
    assert_non_null(strstr(r.res.log_tail, "hello over ssh\n"));

    /* ssh dies: the host is down, start() says so, and a new ssh follows. */
    first = 0;
    {
        /* The tunnel's pid is not in the provider's API; find it by the
         * socket dir's process: pgrep would match other helpers' too. */
        char cmd[256];
        FILE *f;
        snprintf(cmd, sizeof(cmd), "pgrep -f -n -- '-L [^ ]*/ssh.sock:%s'", SSH_SOCK);
        f = popen(cmd, "r");
        assert_non_null(f);
        assert_int_equal(fscanf(f, "%d", &first), 1);
        pclose(f);
    }
    assert_int_equal(kill(first, SIGKILL), 0);
    assert_true(wait_up(0, 5000));
    assert_int_equal(start("docker/ssh/0", "true", &r, err, sizeof(err)), -EBUSY);
    if (!strstr(err, "docker host ssh: ssh tunnel is down: ssh killed by signal 9"))
        fail_msg("start said \"%s\"", err);
    assert_true(wait_up(1, 15000));
    run_job("docker/ssh/1", "echo again", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "again\n"));
}

/* A host key other than the one in known_hosts, or none known at all:
 * the tunnel stays down, and start() says ssh's reason. */
static void host_key_refused(const char *known_hosts)
{
    sbx_docker_host h;
    sbx_docker_config cfg;
    char ep[512], err[512];
    const char *why = "";
    rec r;
    uint64_t end;
    ssh_config(&cfg, &h, ep, sizeof(ep), known_hosts);
    make(&cfg);
    end = sbx_now_ms() + 15000;
    while (sbx_now_ms() < end) {
        sbx_loop_once(L, 20);
        sbx_docker_host_up(P, 0, &why);
        if (strstr(why, "Host key verification failed"))
            break;
    }
    assert_false(sbx_docker_host_up(P, 0, &why));
    if (!strstr(why, "Host key verification failed"))
        fail_msg("%s: tunnel down because \"%s\"", known_hosts, why);
    assert_int_equal(start("docker/ssh/0", "true", &r, err, sizeof(err)), -EBUSY);
    assert_non_null(strstr(err, "Host key verification failed"));
    assert_int_equal(r.finished, 0);
    P->ops->destroy(P);
    P = NULL;
}

static void test_ssh_unknown_host_key_refused(void **state)
{
    (void)state;
    host_key_refused("known_hosts.wrong");
    host_key_refused("known_hosts.empty");
}

/* ---- --check-config's probe ---- */

typedef struct probed {
    int n;
    char host[4][32];
    int ok[4];
    char msg[4][400];
} probed;

static void on_probed(void *arg, const char *host, int ok, const char *msg)
{
    probed *p = arg;
    assert_true(p->n < 4);
    snprintf(p->host[p->n], sizeof(p->host[0]), "%s", host);
    p->ok[p->n] = ok;
    snprintf(p->msg[p->n], sizeof(p->msg[0]), "%s", msg);
    p->n++;
}

static void test_probe_reaches_hosts_as_runs_do(void **state)
{
    char tls_ep[128], ssh_ep[512], err[256];
    sbx_docker_host hosts[3];
    sbx_docker_config cfg;
    probed pr = {0};
    uint64_t t0;
    (void)state;
    snprintf(tls_ep, sizeof(tls_ep), "https://%s", TLS);
    snprintf(ssh_ep, sizeof(ssh_ep), "ssh://%s%s", SSH, SSH_SOCK);
    hosts[0] = (sbx_docker_host){"tls", tls_ep, 1};
    hosts[1] = (sbx_docker_host){"badca", tls_ep, 1};
    hosts[2] = (sbx_docker_host){"ssh", ssh_ep, 1};
    base_config(&cfg, hosts);
    cfg.nhosts = 3;
    cfg.cert_dir = path(2, "%s/hosts", CERTS, NULL);
    cfg.ssh_known_hosts = path(0, "%s/known_hosts", SSH_DIR, NULL);
    cfg.ssh_key = path(1, "%s/id_ed25519", SSH_DIR, NULL);
    assert_int_equal(sbx_docker_probe(&cfg, 10000, on_probed, &pr, err, sizeof(err)), 1);
    assert_int_equal(pr.n, 3);
    assert_string_equal(pr.host[0], "tls");
    assert_true(pr.ok[0]);
    assert_string_equal(pr.msg[0], "the engine answered /_ping over TLS");
    assert_false(pr.ok[1]);
    assert_non_null(strstr(pr.msg[1], "unable to get local issuer certificate"));
    assert_true(pr.ok[2]);
    assert_string_equal(pr.msg[2], "the engine answered /_ping through the ssh tunnel");

    /* An unknown host key is the answer as soon as ssh gives up. */
    memset(&pr, 0, sizeof(pr));
    cfg.hosts = hosts + 2;
    cfg.nhosts = 1;
    cfg.ssh_known_hosts = path(0, "%s/known_hosts.empty", SSH_DIR, NULL);
    t0 = sbx_now_ms();
    assert_int_equal(sbx_docker_probe(&cfg, 10000, on_probed, &pr, err, sizeof(err)), 1);
    assert_true(sbx_now_ms() - t0 < 5000);
    assert_int_equal(pr.n, 1);
    assert_false(pr.ok[0]);
    if (!strstr(pr.msg[0], "ssh tunnel did not come up: ssh: Host key verification failed."))
        fail_msg("probe said \"%s\"", pr.msg[0]);

    /* ssh logs in, but there is no engine socket at that path. */
    memset(&pr, 0, sizeof(pr));
    snprintf(ssh_ep, sizeof(ssh_ep), "ssh://%s/run/sbx-no-such-engine.sock", SSH);
    cfg.ssh_known_hosts = path(0, "%s/known_hosts", SSH_DIR, NULL);
    assert_int_equal(sbx_docker_probe(&cfg, 10000, on_probed, &pr, err, sizeof(err)), 1);
    if (pr.ok[0] || !strstr(pr.msg[0], "through the ssh tunnel: is /run/sbx-no-such-engine.sock "
                                       "the engine's socket on host ssh"))
        fail_msg("probe said \"%s\"", pr.msg[0]);

    /* Refused settings are refused here too. */
    cfg.ssh_known_hosts = NULL;
    assert_int_equal(sbx_docker_probe(&cfg, 10000, on_probed, &pr, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "SBX_DOCKER_SSH_KNOWN_HOSTS"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_plain_tcp_only_to_loopback, up, down),
        cmocka_unit_test_setup_teardown(test_bad_endpoints_and_files_refused, up, down),
        cmocka_unit_test_setup_teardown(test_parse_hosts, up, down),
        cmocka_unit_test_setup_teardown(test_tls_job_runs, up, down),
        cmocka_unit_test_setup_teardown(test_tls_sweep_lists_and_removes, up, down),
        cmocka_unit_test_setup_teardown(test_tls_wrong_ca_or_client_cert_refused, up, down),
        cmocka_unit_test_setup_teardown(test_tls_without_client_cert_refused, up, down),
        cmocka_unit_test_setup_teardown(test_ssh_job_runs_and_tunnel_restarts, up, down),
        cmocka_unit_test_setup_teardown(test_ssh_unknown_host_key_refused, up, down),
        cmocka_unit_test_setup_teardown(test_probe_reaches_hosts_as_runs_do, up, down),
    };
    IMAGE = getenv("SBX_TEST_RD_IMAGE");
    SOCK = getenv("SBX_TEST_RD_SOCK");
    TLS = getenv("SBX_TEST_RD_TLS");
    CERTS = getenv("SBX_TEST_RD_CERTS");
    SSH = getenv("SBX_TEST_RD_SSH");
    SSH_DIR = getenv("SBX_TEST_RD_SSH_DIR");
    if (!IMAGE || !SOCK || !TLS || !CERTS || !SSH || !SSH_DIR) {
        fprintf(stderr, "test_docker_remote: SBX_TEST_RD_* not set; run it under "
                        "tests/services/remote-docker/remote-docker.sh (skipped)\n");
        return 77;
    }
    SSH_SOCK = getenv("SBX_TEST_DOCKER_SOCK") ? getenv("SBX_TEST_DOCKER_SOCK") : SOCK;
    SSH_IMAGE = getenv("SBX_TEST_DOCKER_IMAGE") ? getenv("SBX_TEST_DOCKER_IMAGE") : IMAGE;
    fprintf(stderr, "test_docker_remote: ssh tunnel to %s (%s)\n", SSH_SOCK,
            SSH_SOCK == SOCK ? "dockerd" : "Podman");
    snprintf(WORKER, sizeof(WORKER), "rd-test-%d", (int)getpid());
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
