/* agent_config.c — sbx-agent's settings table (common/opts.h does the
 * reading, as for sbx-worker); the cross-field rules (listen address,
 * advertised URL, key, heartbeat against TTL) follow the table. */
#include "agent_config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "egress.h"
#include "opts.h"
#include "redis.h"
#include "sbx.h"

#define STR SBX_OPT_STR
#define INT SBX_OPT_INT
#define BOOL SBX_OPT_BOOL
#define S(f) SBX_OPT_STR_FIELD(sbx_agent_config, f)
#define I(f) SBX_OPT_INT_FIELD(sbx_agent_config, f)

/* flag NULL: environment only (the key). The key's presence and shape are
 * checked below, with a message about what it is for. */
static const sbx_opt opts[] = {
    {"SBX_AGENT_ID", "id", "", "this VM's id: slot names and {sbx}:vm:<id> (default: hostname)", STR, S(id), 0, 0, 0, 0},
    {"SBX_AGENT_LISTEN", "listen", "127.0.0.1:8470", "HTTP listen address, ip:port or [ip6]:port", STR, S(listen), 0, 0, 0, 0},
    {"SBX_AGENT_URL", "url", "", "base URL workers and previews use (default: http://<listen>)", STR, S(url), 0, 0, 0, 0},
    {"SBX_REDIS_URL", "redis-url", SBX_REDIS_URL_DEFAULT, "Redis of the leases: " SBX_REDIS_URL_FORMS, STR, S(redis_url), 0, 0, 0, 0},
    {"SBX_AGENT_KEY", NULL, NULL, "service key every request must carry as a Bearer token (env only)", STR, S(key), 0, 0, 0, 1},
    {"SBX_AGENT_CAPACITY", "capacity", "1", "concurrent builds (slots) on this VM", INT, I(capacity), 1, SBX_AGENT_CAPACITY_MAX, 0, 0},
    {"SBX_AGENT_LABELS", "labels", "", "free text stored with the VM (k=v,k=v)", STR, S(labels), 0, 0, 0, 0},
    {"SBX_AGENT_HEARTBEAT_MS", "heartbeat-ms", "30000", "how often the VM hash is refreshed", INT, I(heartbeat_ms), 50, 3600000, 0, 0},
    {"SBX_AGENT_TTL_MS", "ttl-ms", "90000", "a heartbeat older than this takes the VM out of the pool", INT, I(ttl_ms), 100, 86400000, 0, 0},
    /* Connections (server.c "Hostile clients"). 256 was the whole cap before:
     * workers, log followers and preview browsers, i.e. requests past their
     * headers; the rest is room for connections still sending headers. */
    {"SBX_AGENT_CONN_MAX", "conn-max", "512", "open HTTP connections at most (also raises the fd limit)", INT, I(conn_max), 16, 65536, 0, 0},
    /* Half of the connections may be waiting for headers; at the cap the
     * oldest of them is closed: a real client's headers come in one packet. */
    {"SBX_AGENT_PENDING_MAX", "pending-max", "256", "connections still sending request headers; the oldest is closed beyond", INT, I(pending_max), 1, 65535, 0, 0},
    /* A quarter of those per client address (IPv6: per /64), so one host's
     * slow connections leave room for everyone else's. */
    {"SBX_AGENT_PENDING_PER_IP", "pending-per-ip", "64", "of those, per client address (IPv6: /64); the oldest is closed beyond", INT, I(pending_per_ip), 1, 65535, 0, 0},
    /* Apache mod_reqtimeout's default: header=20 (seconds for all the headers). */
    {"SBX_AGENT_HEADER_TIMEOUT_MS", "header-timeout-ms", "20000", "request headers must be complete this long after accept (or the last answer): total, not idle", INT, I(header_timeout_ms), 100, 3600000, 0, 0},
    /* mod_reqtimeout's body=20, raised so a full 1 MiB job message passes at
     * 35 KB/s. */
    {"SBX_AGENT_BODY_TIMEOUT_MS", "body-timeout-ms", "30000", "a request body must be complete this long after its headers: total, not idle", INT, I(body_timeout_ms), 100, 3600000, 0, 0},
    {"SBX_WORK_DIR", "work-dir", "/var/tmp/sbx-agent", "workspaces, previews and the token file", STR, S(work_dir), 0, 0, 0, 0},
    {"SBX_UID_BASE", "uid-base", "60000", "when root, slot i builds as uid/gid base+i", INT, I(uid_base), 1000, 2000000000L, 0, 0},
    {"SBX_ALLOW_NETWORK", "allow-network", "0", "jobs may ask for network access (0/1)", BOOL, I(allow_network), 0, 1, 0, 0},
    {"SBX_EGRESS_ALLOW", "egress-allow", "", "networked builds may reach only these CIDRs and host names (comma-separated; names resolved at start-up); empty: any public IPv4 address", STR, S(egress_allow), 0, 0, 0, 0},
    {"SBX_EGRESS_DENY", "egress-deny", "", "networked builds may never reach these CIDRs and host names, on top of loopback, private, link-local, CGNAT and metadata ranges and this host's addresses", STR, S(egress_deny), 0, 0, 0, 0},
    {"SBX_SHUTDOWN_GRACE_MS", "shutdown-grace-ms", "30000", "on SIGTERM, how long running builds may finish", INT, I(shutdown_grace_ms), 0, 86400000, 0, 0},
    {"SBX_BWRAP", "bwrap", "bwrap", "bubblewrap executable", STR, S(bwrap), 0, 0, 0, 0},
    {"SBX_LOG_LEVEL", "log-level", "info", "debug, info, warn or error", STR, S(log_level), 0, 0, 0, 0},
    {"SBX_LOG_FORMAT", "log-format", "text", "text, or json: one JSON object per line (ts, level, area, msg, job and project ids, the line's key=value fields)", STR, S(log_format), 0, 0, 0, 0},
    {"SBX_AGENT_PREVIEW_LISTEN", "preview-listen", "", "IPv4 address sessions' live previews (session.preview_port) listen on, one port each (default: the host of SBX_AGENT_URL when it is an IPv4 address, else that of SBX_AGENT_LISTEN, else 127.0.0.1)", STR, S(preview_listen), 0, 0, 0, 0},
    {"SBX_AGENT_PREVIEW_PORTS", "preview-ports", "20000-20999", "the ports previews get, first-last", STR, S(preview_ports), 0, 0, 0, 0},
    {"SBX_AGENT_PREVIEW_PUBLIC_HOST", "preview-public-host", "", "the host name preview URLs carry (default: the host of SBX_AGENT_URL)", STR, S(preview_public_host), 0, 0, 0, 0},
    {"SBX_AGENT_PREVIEW_SECRET", NULL, "", "keys the previews' access tokens (default: random per start; environment only; never printed)", STR, S(preview_secret), 0, 0, 0, 1},
    /* A warm holder is one slot's sandbox made ahead: at most every slot. */
    {"SBX_AGENT_WARM", "warm", "0", "session sandboxes kept made and frozen ahead on free slots, with the defaults; a session's first run takes one", INT, I(warm), 0, SBX_AGENT_CAPACITY_MAX, 0, 0},
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

void sbx_agent_config_print(const sbx_agent_config *cfg, FILE *out)
{
    sbx_opts_print(opts, NOPTS, cfg, out);
}

/* "1.2.3.4:80" or "[::1]:80" into host and port. */
static int parse_listen(sbx_agent_config *cfg)
{
    const char *l = cfg->listen, *colon;
    unsigned char buf[sizeof(struct in6_addr)];
    char *end;
    size_t hlen;
    long port;

    if (l[0] == '[') {
        const char *rb = strchr(l, ']');
        if (!rb || rb[1] != ':')
            return -1;
        hlen = (size_t)(rb - l - 1);
        if (hlen == 0 || hlen >= sizeof(cfg->listen_host))
            return -1;
        memcpy(cfg->listen_host, l + 1, hlen);
        cfg->listen_host[hlen] = '\0';
        colon = rb + 1;
        if (inet_pton(AF_INET6, cfg->listen_host, buf) != 1)
            return -1;
    } else {
        colon = strrchr(l, ':');
        if (!colon)
            return -1;
        hlen = (size_t)(colon - l);
        if (hlen == 0 || hlen >= sizeof(cfg->listen_host))
            return -1;
        memcpy(cfg->listen_host, l, hlen);
        cfg->listen_host[hlen] = '\0';
        if (inet_pton(AF_INET, cfg->listen_host, buf) != 1)
            return -1;
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 1 || port > 65535)
        return -1;
    cfg->listen_port = (int)port;
    return 0;
}

static int key_ok(const char *k)
{
    size_t n = strlen(k);
    if (n < SBX_AGENT_KEY_MIN || n > SBX_AGENT_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (k[i] < '!' || k[i] > '~')
            return 0;
    return 1;
}

/* The host of a http(s) URL ("[v6]" keeps its brackets), or "" when it
 * does not fit. */
static void url_host(const char *url, char *host, size_t cap)
{
    const char *h = strstr(url, "://"), *end;
    size_t n;

    host[0] = '\0';
    if (!h)
        return;
    h += 3;
    end = *h == '[' ? strchr(h, ']') : NULL;
    end = end ? end + 1 : h + strcspn(h, ":/");
    n = (size_t)(end - h);
    if (n > 0 && n < cap) {
        memcpy(host, h, n);
        host[n] = '\0';
    }
}

/* Previews: the bind address, the port range and the URLs' host. The
 * defaults follow the advertised URL, which is where browsers reach this
 * VM already. */
static int preview_checks(sbx_agent_config *cfg, FILE *err)
{
    char host[256];
    struct in_addr a;
    int bad = 0;

    url_host(cfg->url, host, sizeof(host));
    /* A URL naming the VM by name: where the API listens, if IPv4. */
    if (!*cfg->preview_listen)
        snprintf(cfg->preview_listen, sizeof(cfg->preview_listen), "%s",
                 inet_pton(AF_INET, host, &a) == 1            ? host
                 : inet_pton(AF_INET, cfg->listen_host, &a) == 1 ? cfg->listen_host
                                                                 : "127.0.0.1");
    if (inet_pton(AF_INET, cfg->preview_listen, &a) != 1) {
        fprintf(err, "sbx-agent: SBX_AGENT_PREVIEW_LISTEN=%s is not valid: use an IPv4 address\n",
                cfg->preview_listen);
        bad = 1;
    }
    if (!*cfg->preview_public_host)
        snprintf(cfg->preview_public_host, sizeof(cfg->preview_public_host), "%s",
                 *host && strcmp(host, "0.0.0.0") != 0 ? host : cfg->preview_listen);
    if (strpbrk(cfg->preview_public_host, " \t\r\n/?#@")) {
        fprintf(err, "sbx-agent: SBX_AGENT_PREVIEW_PUBLIC_HOST=%s is not valid: use a host name "
                     "or address\n", cfg->preview_public_host);
        bad = 1;
    }
    {
        char tail;
        if (sscanf(cfg->preview_ports, "%d-%d%c", &cfg->preview_port_min, &cfg->preview_port_max,
                   &tail) != 2 ||
            cfg->preview_port_min < 1 || cfg->preview_port_max > 65535 ||
            cfg->preview_port_min > cfg->preview_port_max) {
            fprintf(err, "sbx-agent: SBX_AGENT_PREVIEW_PORTS=%s is not a port range: give "
                         "first-last, such as 20000-20999\n", cfg->preview_ports);
            bad = 1;
        }
    }
    if (cfg->warm > cfg->capacity) {
        fprintf(err, "sbx-agent: SBX_AGENT_WARM=%d is not valid: at most SBX_AGENT_CAPACITY=%d "
                     "(a warm sandbox holds a slot's uid)\n", cfg->warm, cfg->capacity);
        bad = 1;
    }
    return bad;
}

static int checks(sbx_agent_config *cfg, FILE *err)
{
    int bad = 0;

    if (!*cfg->id) {
        if (gethostname(cfg->id, sizeof(cfg->id)) != 0)
            cfg->id[0] = '\0';
        cfg->id[sizeof(cfg->id) - 1] = '\0';
    }
    /* The id names Redis keys and prefixes slot ids ("<id>#<i>"); the id
     * alphabet of jobs keeps both unambiguous. */
    if (!sbx_id_valid(cfg->id) || strlen(cfg->id) > 100) {
        fprintf(err, "sbx-agent: SBX_AGENT_ID=%s is not valid: use 1-100 of [A-Za-z0-9._:-], "
                     "starting with a letter or digit\n", cfg->id);
        bad = 1;
    }
    if (parse_listen(cfg) != 0) {
        fprintf(err, "sbx-agent: SBX_AGENT_LISTEN=%s is not valid: use ip:port or [ip6]:port\n",
                cfg->listen);
        bad = 1;
    } else if (!*cfg->url) {
        if (!strcmp(cfg->listen_host, "0.0.0.0") || !strcmp(cfg->listen_host, "::")) {
            fprintf(err, "sbx-agent: SBX_AGENT_URL is not set: required when SBX_AGENT_LISTEN "
                         "binds every address (workers need a reachable URL)\n");
            bad = 1;
        } else {
            snprintf(cfg->url, sizeof(cfg->url), "http://%s", cfg->listen);
        }
    }
    if (*cfg->url) {
        size_t n = strlen(cfg->url);
        while (n > 0 && cfg->url[n - 1] == '/')
            cfg->url[--n] = '\0';
        if ((strncmp(cfg->url, "http://", 7) != 0 && strncmp(cfg->url, "https://", 8) != 0) ||
            strpbrk(cfg->url, " \t\r\n?#")) {
            fprintf(err, "sbx-agent: SBX_AGENT_URL=%s is not valid: use http(s)://host[:port][/path]\n",
                    cfg->url);
            bad = 1;
        }
    }
    if (!key_ok(cfg->key)) {
        if (*cfg->key)
            fprintf(err, "sbx-agent: SBX_AGENT_KEY is not valid: use %d-%d printable characters "
                         "without spaces\n", SBX_AGENT_KEY_MIN, SBX_AGENT_KEY_MAX);
        else
            fprintf(err, "sbx-agent: SBX_AGENT_KEY is not set: the service key workers send "
                         "(at least %d printable characters)\n", SBX_AGENT_KEY_MIN);
        bad = 1;
    }
    if (cfg->ttl_ms <= cfg->heartbeat_ms) {
        fprintf(err, "sbx-agent: SBX_AGENT_TTL_MS=%d is not valid: it must exceed "
                     "SBX_AGENT_HEARTBEAT_MS=%d (about 3 times is usual)\n", cfg->ttl_ms,
                cfg->heartbeat_ms);
        bad = 1;
    }
    if (cfg->pending_max >= cfg->conn_max) {
        fprintf(err, "sbx-agent: SBX_AGENT_PENDING_MAX=%d is not valid: it must be below "
                     "SBX_AGENT_CONN_MAX=%d (requests past their headers need room)\n",
                cfg->pending_max, cfg->conn_max);
        bad = 1;
    }
    if (cfg->work_dir[0] != '/') {
        fprintf(err, "sbx-agent: SBX_WORK_DIR=%s is not valid: use an absolute path\n", cfg->work_dir);
        bad = 1;
    }
    if (cfg->uid_base + SBX_AGENT_CAPACITY_MAX < cfg->uid_base) {
        fprintf(err, "sbx-agent: SBX_UID_BASE=%d is too large\n", cfg->uid_base);
        bad = 1;
    }
    {
        char e[256];
        if (sbx_egress_check("SBX_EGRESS_ALLOW", cfg->egress_allow, e, sizeof(e)) ||
            sbx_egress_check("SBX_EGRESS_DENY", cfg->egress_deny, e, sizeof(e))) {
            fprintf(err, "sbx-agent: %s\n", e);
            bad = 1;
        }
    }
    if (preview_checks(cfg, err))
        bad = 1;
    if (sbx_opts_log_level("sbx-agent", cfg->log_level, err))
        bad = 1;
    if (sbx_opts_log_format("sbx-agent", cfg->log_format, err))
        bad = 1;
    return bad;
}

int sbx_agent_config_load(sbx_agent_config *cfg, int argc, char **argv, FILE *err)
{
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    rc = sbx_opts_load("sbx-agent", opts, NOPTS, cfg, argc, argv, err);
    if (rc)
        return rc;
    return checks(cfg, err) ? 1 : 0;
}
