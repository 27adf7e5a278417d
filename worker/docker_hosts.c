/* docker_hosts.c — endpoints of docker hosts: parsing, the rules they must
 * pass, the links runs reach them through, and --check-config's probe.
 *
 * Choices, and why:
 *  - Parsed by hand, strictly: an endpoint becomes a URL for libcurl and,
 *    for ssh://, arguments on ssh's command line, so only what the forms
 *    need is let through (a user or host that starts with '-' would be an
 *    option to ssh; ':' in a socket path would split -L's local:remote).
 *  - Loopback is decided on the text, never by resolving a name: what a
 *    name resolves to may change after the check. "localhost", 127.0.0.0/8
 *    and ::1 are loopback; everything else needs SBX_DOCKER_INSECURE_TCP.
 *  - TLS files follow Docker's layout (cert_dir/<host>/ca.pem, cert.pem,
 *    key.pem): one directory per host, the files `docker --tlsverify`
 *    reads, so an operator copies what already works. They must be
 *    readable at start-up; libcurl reads them again for each connection, so
 *    a renewed certificate is picked up without a restart.
 *  - An ssh host's tunnel socket lives in a private 0700 directory of its
 *    own (RUNTIME_DIRECTORY under systemd, else /tmp): whoever can connect
 *    to it is root on the remote host.
 *  - The probe builds links, not a provider: it never lists or removes
 *    containers, so a check run with a live worker's SBX_WORKER_ID cannot
 *    take that worker's containers for orphans.
 */
#include "docker_hosts.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

typedef enum ep_kind { EP_UNIX, EP_TCP, EP_TLS, EP_SSH } ep_kind;
typedef struct endpoint {
    ep_kind kind;
    char base[SBX__DOCKER_FIELD_MAX];   /* "http(s)://host:port"; "http://docker" for a socket */
    char path[SBX__DOCKER_FIELD_MAX];   /* unix: the socket; ssh: the socket on the far side */
    char dest[SBX__DOCKER_FIELD_MAX];   /* ssh: "[user@]host" */
    int port;                           /* ssh: 0 = 22 */
} endpoint;
/* A TLS file's path: cert_dir/<host>/<file>. */
#define TLS_PATH_MAX 512

static const char NAME_CHARS[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
/* ssh destinations and socket paths go on ssh's command line: no option
 * look-alikes, no spaces, no ':' (which splits -L's local:remote). */
static const char HOST_CHARS[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-";
static const char PATH_CHARS[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/+@";
#define DEFAULT_REMOTE_SOCKET "/var/run/docker.sock"

static int all_of(const char *s, size_t n, const char *set)
{
    for (size_t i = 0; i < n; i++)
        if (!s[i] || !strchr(set, s[i]))
            return 0;
    return 1;
}

static int port_of(const char *s, size_t n)
{
    int v = 0;
    if (n == 0 || n > 5 || !all_of(s, n, "0123456789"))
        return -1;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v >= 1 && v <= 65535 ? v : -1;
}

/* "host:port" or "[v6]:port": where the host is, and whether the port is
 * sound. The host is copied without brackets. */
static int split_authority(const char *a, size_t alen, char *hostbuf, size_t hostlen, int *port)
{
    const char *colon;
    const char *h = a;
    size_t hl;
    if (alen && a[0] == '[') {
        const char *rb = memchr(a, ']', alen);
        if (!rb)
            return -1;
        h = a + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1 < a + alen && rb[1] == ':' ? rb + 1 : NULL;
        if (!colon && rb + 1 != a + alen)
            return -1;
    } else {
        colon = memchr(a, ':', alen);
        hl = colon ? (size_t)(colon - a) : alen;
    }
    if (hl == 0 || hl >= hostlen)
        return -1;
    memcpy(hostbuf, h, hl);
    hostbuf[hl] = '\0';
    *port = 0;
    if (colon && (*port = port_of(colon + 1, (size_t)(a + alen - colon - 1))) < 0)
        return -1;
    return 0;
}

static int is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return 0;
}

/* One endpoint of SBX_DOCKER_HOSTS. Names are never resolved here: what a
 * name resolves to may change, so only loopback addresses and "localhost"
 * count as loopback. */
static int parse_endpoint(const char *name, const char *ep, int insecure_tcp, endpoint *out,
                          char *err, size_t errlen)
{
    char hostbuf[SBX__DOCKER_FIELD_MAX];
    int port;
    memset(out, 0, sizeof(*out));
    if (strlen(ep) >= SBX__DOCKER_FIELD_MAX - 16)
        goto bad;
    if (strncmp(ep, "unix://", 7) == 0 && ep[7] == '/') {
        out->kind = EP_UNIX;
        snprintf(out->path, sizeof(out->path), "%s", ep + 7);
        snprintf(out->base, sizeof(out->base), "http://docker");
        return 0;
    }
    if (strncmp(ep, "tcp://", 6) == 0 || strncmp(ep, "http://", 7) == 0 ||
        strncmp(ep, "https://", 8) == 0) {
        const char *a = strstr(ep, "://") + 3;
        size_t alen = strlen(a);
        if (alen && a[alen - 1] == '/')
            alen--;
        if (split_authority(a, alen, hostbuf, sizeof(hostbuf), &port) < 0 || port == 0 ||
            memchr(a, '/', alen) || memchr(a, '@', alen))
            goto bad;
        if (ep[4] == 's') {
            out->kind = EP_TLS;
            snprintf(out->base, sizeof(out->base), "https://%.*s", (int)alen, a);
            return 0;
        }
        if (!insecure_tcp && !is_loopback(hostbuf)) {
            snprintf(err, errlen,
                     "SBX_DOCKER_HOSTS: host %s is %.100s, plain HTTP to a non-loopback address, "
                     "which lets anyone on the path run containers: use https://%.100s with "
                     "certificates (SBX_DOCKER_CERT_DIR) or ssh://user@%.100s, or set "
                     "SBX_DOCKER_INSECURE_TCP=1 to allow it", name, ep, a, hostbuf);
            return -EINVAL;
        }
        out->kind = EP_TCP;
        snprintf(out->base, sizeof(out->base), "http://%.*s", (int)alen, a);
        return 0;
    }
    if (strncmp(ep, "ssh://", 6) == 0) {
        const char *a = ep + 6, *slash = strchr(a, '/'), *at;
        size_t alen = slash ? (size_t)(slash - a) : strlen(a);
        size_t ulen = 0;
        out->kind = EP_SSH;
        at = memchr(a, '@', alen);
        if (at) {
            ulen = (size_t)(at - a);
            if (ulen == 0 || a[0] == '-' || !all_of(a, ulen, NAME_CHARS))
                goto bad;
            alen -= ulen + 1;
            a = at + 1;
        }
        if (split_authority(a, alen, hostbuf, sizeof(hostbuf), &port) < 0 || hostbuf[0] == '-' ||
            (!all_of(hostbuf, strlen(hostbuf), HOST_CHARS) &&
             !all_of(hostbuf, strlen(hostbuf), "0123456789abcdefABCDEF:.")))
            goto bad;
        if ((size_t)snprintf(out->dest, sizeof(out->dest), "%.*s%s%s", (int)ulen,
                             ulen ? ep + 6 : "", ulen ? "@" : "", hostbuf) >= sizeof(out->dest))
            goto bad;
        out->port = port;
        snprintf(out->path, sizeof(out->path), "%s", slash && slash[1] ? slash : DEFAULT_REMOTE_SOCKET);
        if (!all_of(out->path, strlen(out->path), PATH_CHARS))
            goto bad;
        snprintf(out->base, sizeof(out->base), "http://docker");
        return 0;
    }
bad:
    snprintf(err, errlen,
             "SBX_DOCKER_HOSTS: host %s has endpoint \"%.100s\": use unix:///path/docker.sock, "
             "https://host:port, ssh://user@host[:port][/path/docker.sock], or tcp://host:port "
             "(loopback only)", name, ep);
    return -EINVAL;
}

/* The three TLS files of an https host, in Docker's layout under cert_dir.
 * Each must be readable now (an operator learns of a missing one at
 * start-up, not at the first job). */
static int tls_files(const sbx_docker_config *cfg, const sbx_docker_host *hc, char out[3][TLS_PATH_MAX],
                     char *err, size_t errlen)
{
    static const char *const base[3] = {"ca.pem", "cert.pem", "key.pem"};
    const char *dir = cfg->cert_dir && *cfg->cert_dir ? cfg->cert_dir : SBX_DOCKER_CERT_DIR_DEFAULT;
    for (int i = 0; i < 3; i++) {
        int n = snprintf(out[i], TLS_PATH_MAX, "%s/%s/%s", dir, hc->name, base[i]);
        if (n < 0 || n >= TLS_PATH_MAX || access(out[i], R_OK) != 0) {
            snprintf(err, errlen,
                     "SBX_DOCKER_CERT_DIR: https host %s needs %.300s, which cannot be read (%s): "
                     "put the CA of the engine's certificate in %s/%s/ca.pem, the client "
                     "certificate in cert.pem and its key in key.pem", hc->name, out[i],
                     n >= TLS_PATH_MAX ? "path too long" : strerror(errno), dir, hc->name);
            return -EINVAL;
        }
    }
    return 0;
}

static int check_host(const sbx_docker_config *cfg, const sbx_docker_host *hc, endpoint *ep,
                      char tls[3][TLS_PATH_MAX], char *err, size_t errlen)
{
    int rc;
    if (!hc->name || !hc->name[0] || strlen(hc->name) > SBX_DOCKER_HOST_NAME_MAX ||
        strspn(hc->name, NAME_CHARS) != strlen(hc->name)) {
        snprintf(err, errlen, "SBX_DOCKER_HOSTS: host name \"%.60s\" must be 1-%d of [A-Za-z0-9._-]",
                 hc->name ? hc->name : "", SBX_DOCKER_HOST_NAME_MAX);
        return -EINVAL;
    }
    /* The provider's slot ids and per-slot table: a host's capacity is its
     * CPU count or so; 1024 is far above any real one and keeps them small. */
    if (hc->capacity < 1 || hc->capacity > 1024) {
        snprintf(err, errlen, "SBX_DOCKER_HOSTS: capacity of host %s must be 1..1024", hc->name);
        return -EINVAL;
    }
    if ((rc = parse_endpoint(hc->name, hc->endpoint ? hc->endpoint : "", cfg->insecure_tcp, ep,
                             err, errlen)) < 0)
        return rc;
    if (ep->kind == EP_TLS)
        return tls_files(cfg, hc, tls, err, errlen);
    if (ep->kind == EP_SSH) {
        const char *kh = cfg->ssh_known_hosts;
        if (!kh || !*kh || access(kh, R_OK) != 0) {
            snprintf(err, errlen,
                     "SBX_DOCKER_SSH_KNOWN_HOSTS%s%.300s%s: ssh host %s needs a known_hosts file "
                     "holding its host key (ssh-keyscan -p PORT HOST, checked against the host): "
                     "set SBX_DOCKER_SSH_KNOWN_HOSTS to it", kh && *kh ? "=" : " is not set",
                     kh && *kh ? kh : "", kh && *kh ? " cannot be read" : "", hc->name);
            return -EINVAL;
        }
        if (strpbrk(kh, " \t\n")) {
            snprintf(err, errlen, "SBX_DOCKER_SSH_KNOWN_HOSTS=%.300s: a path without spaces, please",
                     kh);
            return -EINVAL;
        }
        if (cfg->ssh_key && *cfg->ssh_key && access(cfg->ssh_key, R_OK) != 0) {
            snprintf(err, errlen, "SBX_DOCKER_SSH_KEY=%.300s cannot be read (%s): set it to the "
                     "private key ssh logs in with, or leave it empty for ssh's defaults",
                     cfg->ssh_key, strerror(errno));
            return -EINVAL;
        }
    }
    return 0;
}

int sbx_docker_check_config(const sbx_docker_config *cfg, char *err, size_t errlen)
{
    endpoint ep;
    char tls[3][TLS_PATH_MAX];
    if (cfg->nhosts == 0 || !cfg->hosts) {
        snprintf(err, errlen, "SBX_DOCKER_HOSTS names no host: use name=unix:///path/docker.sock@capacity[,...]");
        return -EINVAL;
    }
    for (size_t i = 0; i < cfg->nhosts; i++) {
        int rc = check_host(cfg, &cfg->hosts[i], &ep, tls, err, errlen);
        if (rc < 0)
            return rc;
        for (size_t k = 0; k < i; k++) {
            if (strcmp(cfg->hosts[i].name, cfg->hosts[k].name) == 0) {
                snprintf(err, errlen, "SBX_DOCKER_HOSTS: host %s is listed twice", cfg->hosts[i].name);
                return -EINVAL;
            }
        }
    }
    return 0;
}

int sbx_docker_parse_hosts(char *buf, sbx_docker_host *hosts, size_t max, size_t *n, char *err,
                           size_t errlen)
{
    char *save = NULL;
    *n = 0;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '='), *at = strrchr(item, '@'), *end;
        long cap;
        if (*n == max) {
            snprintf(err, errlen, "SBX_DOCKER_HOSTS: more than %zu hosts", max);
            return -EINVAL;
        }
        if (!eq || !at || at < eq) {
            snprintf(err, errlen, "SBX_DOCKER_HOSTS entry '%.200s' is not name=endpoint@capacity",
                     item);
            return -EINVAL;
        }
        *eq = *at = '\0';
        cap = strtol(at + 1, &end, 10);
        if (*end || cap < 1 || cap > 10000) {
            snprintf(err, errlen, "SBX_DOCKER_HOSTS: capacity of %.60s must be 1..10000", item);
            return -EINVAL;
        }
        memset(&hosts[*n], 0, sizeof(hosts[*n]));
        hosts[*n].name = item;
        hosts[*n].endpoint = eq + 1;
        hosts[*n].capacity = (int)cap;
        (*n)++;
    }
    return 0;
}

/* ---- links ---- */

/* The private directory of one tunnel's socket, mode 0700. */
static int tunnel_dir(const sbx_docker_config *cfg, char **out, char *err, size_t errlen)
{
    const char *parent = cfg->run_dir && *cfg->run_dir ? cfg->run_dir : getenv("RUNTIME_DIRECTORY");
    char tmpl[256];
    if (!parent || !*parent || strchr(parent, ':'))
        parent = "/tmp";   /* systemd may list several, colon-separated */
    snprintf(tmpl, sizeof(tmpl), "%s/sbx-docker-ssh.XXXXXX", parent);
    if (!mkdtemp(tmpl)) {
        snprintf(err, errlen, "docker ssh tunnels: cannot make a directory in %.200s: %s", parent,
                 strerror(errno));
        return -EIO;
    }
    if (!(*out = strdup(tmpl))) {
        rmdir(tmpl);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

int sbx__docker_link_new(sbx_loop *loop, const sbx_docker_config *cfg, const sbx_docker_host *h,
                         void (*on_state)(void *arg, int up), void *arg, sbx__docker_link *l,
                         char *err, size_t errlen)
{
    endpoint ep;
    char tls[3][TLS_PATH_MAX];
    int rc;

    memset(l, 0, sizeof(*l));
    if ((rc = check_host(cfg, h, &ep, tls, err, errlen)) < 0)
        return rc;
    snprintf(l->base, sizeof(l->base), "%s", ep.base);
    if (ep.kind == EP_UNIX && !(l->unix_path = strdup(ep.path)))
        goto nomem;
    if (ep.kind == EP_TLS &&
        (!(l->tls_ca = strdup(tls[0])) || !(l->tls_cert = strdup(tls[1])) ||
         !(l->tls_key = strdup(tls[2]))))
        goto nomem;
    if (ep.kind == EP_SSH) {
        sbx_ssh_tunnel_config tc = {0};
        char local[sizeof(((struct sockaddr_un *)0)->sun_path)];
        int n;
        if ((rc = tunnel_dir(cfg, &l->tunnel_dir, err, errlen)) < 0)
            goto fail;
        n = snprintf(local, sizeof(local), "%s/%s.sock", l->tunnel_dir, h->name);
        if (n < 0 || (size_t)n >= sizeof(local)) {
            snprintf(err, errlen, "docker host %s: the tunnel's socket path %s/%s.sock is longer "
                     "than a unix socket allows: use a shorter RUNTIME_DIRECTORY or host name",
                     h->name, l->tunnel_dir, h->name);
            rc = -EINVAL;
            goto fail;
        }
        if (!(l->unix_path = strdup(local)))
            goto nomem;
        snprintf(l->remote_socket, sizeof(l->remote_socket), "%s", ep.path);
        tc.name = h->name;
        tc.destination = ep.dest;
        tc.port = ep.port;
        tc.remote_socket = ep.path;
        tc.local_socket = local;
        tc.known_hosts = cfg->ssh_known_hosts;
        tc.identity = cfg->ssh_key;
        tc.ssh = cfg->ssh_command;
        tc.on_state = on_state;
        tc.arg = arg;
        if ((rc = sbx_ssh_tunnel_new(loop, &tc, &l->tunnel, err, errlen)) < 0)
            goto fail;
    }
    return 0;

nomem:
    rc = -ENOMEM;
    snprintf(err, errlen, "out of memory");
fail:
    sbx__docker_link_free(l);
    return rc;
}

void sbx__docker_link_free(sbx__docker_link *l)
{
    sbx_ssh_tunnel_free(l->tunnel);   /* removes its socket */
    if (l->tunnel_dir)
        rmdir(l->tunnel_dir);
    free(l->tunnel_dir);
    free(l->unix_path);
    free(l->tls_ca);
    free(l->tls_cert);
    free(l->tls_key);
    memset(l, 0, sizeof(*l));
}

void sbx__docker_link_req(const sbx__docker_link *l, sbx_http_req *q)
{
    q->unix_socket_path = l->unix_path;
    q->tls_ca = l->tls_ca;
    q->tls_cert = l->tls_cert;
    q->tls_key = l->tls_key;
}

void sbx__docker_link_curl(const sbx__docker_link *l, void *easy)
{
    CURL *e = easy;
    if (l->unix_path)
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, l->unix_path);
    if (l->tls_ca) {
        curl_easy_setopt(e, CURLOPT_CAINFO, l->tls_ca);
        curl_easy_setopt(e, CURLOPT_SSLCERT, l->tls_cert);
        curl_easy_setopt(e, CURLOPT_SSLKEY, l->tls_key);
    }
}

int sbx__docker_link_up(const sbx__docker_link *l, const char **why)
{
    if (why)
        *why = l->tunnel ? sbx_ssh_tunnel_error(l->tunnel) : "";
    return !l->tunnel || sbx_ssh_tunnel_up(l->tunnel);
}

/* ---- --check-config ---- */

typedef struct probe {
    sbx__docker_link link;
    int made;       /* link made (else msg says why) */
    int asked;      /* GET /_ping sent */
    int done;       /* ... and answered, or failed */
    int ok;
    char msg[300];
} probe;

static void on_probe(void *arg, const sbx_http_res *res)
{
    probe *pr = arg;
    pr->done = 1;
    if (res->code != SBX_HTTP_OK)
        snprintf(pr->msg, sizeof(pr->msg), "%s", res->error);
    else if (res->status != 200)
        snprintf(pr->msg, sizeof(pr->msg), "GET /_ping answered %ld: %.200s", res->status, res->body);
    else
        pr->ok = 1;
}

/* A host still worth waiting for: its tunnel is connecting for the first
 * time. Once ssh has exited, its reason is the answer. */
static int tunnel_pending(const probe *pr)
{
    const sbx_ssh_tunnel *t = pr->link.tunnel;
    return t && !sbx_ssh_tunnel_up(t) && sbx_ssh_tunnel_pid(t) != 0 &&
           sbx_ssh_tunnel_spawns(t) == 1;
}

static void probe_line(const sbx_docker_host *h, const probe *pr, char *line, size_t len)
{
    const sbx__docker_link *l = &pr->link;
    if (!pr->made)
        snprintf(line, len, "%.300s", pr->msg);
    else if (l->tunnel && !pr->asked)
        snprintf(line, len, "ssh tunnel did not come up: %.300s", sbx_ssh_tunnel_error(l->tunnel));
    else if (!pr->done)
        snprintf(line, len, "no answer in time");
    else if (l->tunnel && strncmp(pr->msg, "GET", 3) != 0)
        /* ssh logged in, but the far side could not open the socket. */
        snprintf(line, len, "%.200s through the ssh tunnel: is %s the engine's socket on host %s, "
                 "and may the ssh user use it?", pr->msg, l->remote_socket, h->name);
    else
        snprintf(line, len, "%.300s", pr->msg);
}

int sbx_docker_probe(const sbx_docker_config *cfg, int timeout_ms, sbx_docker_probe_cb report,
                     void *arg, char *err, size_t errlen)
{
    sbx_loop *loop = NULL;
    sbx_http *http = NULL;
    probe *pr = NULL;
    uint64_t end = sbx_now_ms() + (uint64_t)timeout_ms;
    int failed = 0, rc;

    if ((rc = sbx_docker_check_config(cfg, err, errlen)) < 0)
        return rc;
    if (sbx_loop_new(&loop) < 0 || sbx_http_new(loop, &http) < 0 ||
        !(pr = calloc(cfg->nhosts, sizeof(*pr)))) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < cfg->nhosts; i++)
        pr[i].made = sbx__docker_link_new(loop, cfg, &cfg->hosts[i], NULL, NULL, &pr[i].link,
                                          pr[i].msg, sizeof(pr[i].msg)) == 0;
    /* Each host is asked once its link is up; tunnels take a login. */
    for (;;) {
        int waiting = 0;
        for (size_t i = 0; i < cfg->nhosts; i++) {
            char url[SBX__DOCKER_FIELD_MAX + 16];
            sbx_http_req q = {0};
            if (!pr[i].made || pr[i].asked)
                continue;
            if (!sbx__docker_link_up(&pr[i].link, NULL)) {
                waiting |= tunnel_pending(&pr[i]);
                continue;
            }
            snprintf(url, sizeof(url), "%s/_ping", pr[i].link.base);
            q.url = url;
            sbx__docker_link_req(&pr[i].link, &q);
            q.timeout_ms = (uint32_t)(end > sbx_now_ms() ? end - sbx_now_ms() : 1);
            q.max_response_bytes = 4096;
            pr[i].asked = 1;
            if (sbx_http_request(http, &q, on_probe, &pr[i], NULL) < 0) {
                pr[i].done = 1;
                snprintf(pr[i].msg, sizeof(pr[i].msg), "cannot start the request");
            }
        }
        for (size_t i = 0; i < cfg->nhosts; i++)
            waiting |= pr[i].asked && !pr[i].done;
        if (!waiting || sbx_now_ms() >= end)
            break;
        sbx_loop_once(loop, 20);
    }
    for (size_t i = 0; i < cfg->nhosts; i++) {
        const sbx__docker_link *l = &pr[i].link;
        char line[SBX__DOCKER_FIELD_MAX + 512];
        if (pr[i].ok) {
            snprintf(line, sizeof(line), "the engine answered /_ping%s",
                     l->tunnel ? " through the ssh tunnel" : l->tls_ca ? " over TLS" : "");
        } else {
            failed++;
            probe_line(&cfg->hosts[i], &pr[i], line, sizeof(line));
        }
        report(arg, cfg->hosts[i].name, pr[i].ok, line);
    }
    rc = failed;
out:
    sbx_http_free(http);   /* before the links: no callback after this */
    for (size_t i = 0; pr && i < cfg->nhosts; i++)
        sbx__docker_link_free(&pr[i].link);
    free(pr);
    if (loop)
        sbx_loop_free(loop);
    return rc;
}
