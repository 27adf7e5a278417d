/* config.c — sbx-worker's settings table (opts.h does the reading) and the
 * checks that span settings. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "egress.h"
#include "log.h"
#include "opts.h"
#include "redis.h"
#include "sbx.h"

#define STR SBX_OPT_STR
#define INT SBX_OPT_INT
#define BOOL SBX_OPT_BOOL
#define S(f) SBX_OPT_STR_FIELD(sbx_config, f)
#define I(f) SBX_OPT_INT_FIELD(sbx_config, f)

static const sbx_opt opts[] = {
    {"SBX_BROKERS", "brokers", NULL, "Kafka bootstrap servers, host:port[,host:port]", STR, S(brokers), 0, 0, 1, 0},
    {"SBX_TOPIC", "topic", "sbx.jobs", "topic of job messages", STR, S(topic), 0, 0, 0, 0},
    {"SBX_DLQ_TOPIC", "dlq-topic", "sbx.jobs.dlq", "dead-letter topic", STR, S(dlq_topic), 0, 0, 0, 0},
    {"SBX_DLQ_PAYLOAD_MAX", "dlq-payload-max", "65536", "bytes of a dead letter's redacted payload kept; a longer one is cut, marked truncated, with its size and SHA-256", INT, I(dlq_payload_max), 0, 262144, 0, 0},
    {"SBX_LOG_MAX_BYTES", "log-max-bytes", "10485760", "text of a build's live log kept per attempt (sbx.run_logs); the rest is dropped and counted in a last 'sbx' chunk", INT, I(log_max_bytes), 0, 1073741824, 0, 0},
    {"SBX_GROUP", "group", "sbx-workers", "Kafka consumer group", STR, S(group), 0, 0, 0, 0},
    {"SBX_REDIS_URL", "redis-url", SBX_REDIS_URL_DEFAULT, "Redis for leases: " SBX_REDIS_URL_FORMS, STR, S(redis_url), 0, 0, 0, 0},
    {"SBX_DATABASE_URL", "database-url", NULL, "PostgreSQL conninfo or URL (postgresql://user@host:port/db)", STR, S(database_url), 0, 0, 1, 0},
    {"SBX_WORKER_ID", "worker-id", "", "this worker's name in leases and run rows (default: node-pid)", STR, S(worker_id), 0, 0, 0, 0},
    {"SBX_NODE", "node", "", "host name for the local pool (default: hostname)", STR, S(node), 0, 0, 0, 0},
    {"SBX_PROVIDER", "provider", "local", "build provider: local, vmpool (reads SBX_VMPOOL_KEY), docker or fly (reads SBX_FLY_*); or several, comma-separated, in spill-over order (fly,vmpool,docker): a job with provider any takes the first with a free slot", STR, S(provider), 0, 0, 0, 0},
    {"SBX_LOCAL_SLOTS", "local-slots", "4", "concurrent builds on this host (local provider)", INT, I(local_slots), 1, 64, 0, 0},
    {"SBX_WORK_DIR", "work-dir", "/var/tmp/sbx-work", "parent dir of build workspaces (local provider)", STR, S(work_dir), 0, 0, 0, 0},
    {"SBX_UID_BASE", "uid-base", "60000", "when root, slot i builds as uid/gid base+i", INT, I(uid_base), 1000, 4000000000L / 2, 0, 0},
    {"SBX_ALLOW_NETWORK", "allow-network", "0", "jobs may ask for network access (0/1)", BOOL, I(allow_network), 0, 1, 0, 0},
    {"SBX_EGRESS_ALLOW", "egress-allow", "", "networked builds may reach only these CIDRs and host names (comma-separated; names resolved at start-up); empty: any public IPv4 address", STR, S(egress_allow), 0, 0, 0, 0},
    {"SBX_EGRESS_DENY", "egress-deny", "", "networked builds may never reach these CIDRs and host names, on top of loopback, private, link-local, CGNAT and metadata ranges and this host's addresses", STR, S(egress_deny), 0, 0, 0, 0},
    {"SBX_LEASE_TTL_MS", "lease-ttl-ms", "30000", "lease time-to-live; renewed every third of it", INT, I(lease_ttl_ms), 1000, 3600000, 0, 0},
    {"SBX_MAX_INFLIGHT", "max-inflight", "1000", "unfinished jobs before intake pauses", INT, I(max_inflight), 1, 1000000, 0, 0},
    {"SBX_PREVIEW_LISTEN", "preview-listen", "", "serve sessions' dev servers (session.preview_port) on this IPv4 address, one port per preview from SBX_PREVIEW_PORTS; empty: no previews (local, docker, fly; vmpool's agents serve their own)", STR, S(preview_listen), 0, 0, 0, 0},
    {"SBX_PREVIEW_PORTS", "preview-ports", "20000-20999", "the ports previews get, first-last", STR, S(preview_ports), 0, 0, 0, 0},
    {"SBX_PREVIEW_PUBLIC_HOST", "preview-public-host", "", "the host name preview URLs carry (default: SBX_PREVIEW_LISTEN)", STR, S(preview_public_host), 0, 0, 0, 0},
    {"SBX_PREVIEW_SECRET", NULL, "", "keys the previews' access tokens; give every worker the same so a session keeps its URL when another worker takes it over (default: random per start; environment only; never printed)", STR, S(preview_secret), 0, 0, 0, 1},
    {"SBX_WARM", "warm", "0", "sandboxes this worker keeps made and paused ahead with the provider's defaults, so a new session (or a job the defaults fit) starts from one (vmpool: SBX_AGENT_WARM on the agents)", INT, I(warm), 0, 1000, 0, 0},
    {"SBX_PRICE_PER_HOUR", "price-per-hour", "", "what one of this provider's sandboxes costs per hour held (a decimal, any currency), recorded in sbx.prices for sbx.project_costs(); name=price,... gives each of several providers its own (fly=0.10,docker=0.02); empty: leave sbx.prices as it is", STR, S(price_per_hour), 0, 0, 0, 0},
    {"SBX_PRICE_PAUSED_PER_HOUR", "price-paused-per-hour", "0", "the same for a paused session's sandbox (with SBX_PRICE_PER_HOUR)", STR, S(price_paused_per_hour), 0, 0, 0, 0},
    {"SBX_MAX_ATTEMPTS", "max-attempts", "3", "tries of a job whose provider failed (not the build)", INT, I(max_attempts), 1, 100, 0, 0},
    {"SBX_RETRY_BASE_MS", "retry-base-ms", "200", "first retry delay; doubles, with jitter, up to 30 s", INT, I(retry_base_ms), 1, 60000, 0, 0},
    {"SBX_KAFKA_SESSION_TIMEOUT_MS", "kafka-session-timeout-ms", "10000", "how soon a dead worker's partitions move", INT, I(session_timeout_ms), 1000, 3600000, 0, 0},
    {"SBX_STARTUP_WAIT_MS", "startup-wait-ms", "60000", "at start, how long to wait for Redis and PostgreSQL before joining the consumer group; past it the worker exits non-zero", INT, I(startup_wait_ms), 1000, 3600000, 0, 0},
    {"SBX_DEPENDENCY_GRACE_MS", "dependency-grace-ms", "30000", "Redis or PostgreSQL down this long: intake pauses and the worker leaves the consumer group (its builds keep running) until the dependency is back", INT, I(dependency_grace_ms), 1000, 86400000, 0, 0},
    {"SBX_SHUTDOWN_GRACE_MS", "shutdown-grace-ms", "30000", "on SIGTERM, how long running builds may finish", INT, I(shutdown_grace_ms), 0, 86400000, 0, 0},
    {"SBX_RETENTION", "retention", "7d", "terminal runs and their history older than this are deleted (s, m, h or d: 7d, 24h, 3600s); 0: keep forever", STR, S(retention), 0, 0, 0, 0},
    {"SBX_DLQ_RETENTION", "dlq-retention", "30d", "rows of sbx.dead_letters (and the originals kept for `sbx dlq replay`) older than this are deleted (s, m, h or d); 0: keep forever", STR, S(dlq_retention), 0, 0, 0, 0},
    {"SBX_PROJECT_POLICY", "project-policy", "queue", "when a project already has a build running: queue (wait), reject (end the new job canceled) or supersede (cancel the older builds)", STR, S(project_policy), 0, 0, 0, 0},
    {"SBX_ADMIN_LISTEN", "admin-listen", "", "ip:port of /healthz, /readyz and /metrics (Prometheus); empty: off", STR, S(admin_listen), 0, 0, 0, 0},
    {"SBX_LOG_LEVEL", "log-level", "info", "debug, info, warn or error", STR, S(log_level), 0, 0, 0, 0},
    {"SBX_LOG_FORMAT", "log-format", "text", "text, or json: one JSON object per line (ts, level, area, msg, job and project ids, the line's key=value fields)", STR, S(log_format), 0, 0, 0, 0},
    {"SBX_KAFKA_CONF", "kafka-conf", "", "extra librdkafka settings, k=v[,k=v], applied after the SBX_KAFKA_* ones (security.*, sasl.* and ssl.* reach the dead-letter producer too)", STR, S(kafka_conf), 0, 0, 0, 0},
    {"SBX_KAFKA_SECURITY_PROTOCOL", "kafka-security-protocol", "plaintext", "plaintext, ssl (TLS), sasl_ssl (TLS and a password) or sasl_plaintext", STR, S(kafka_security_protocol), 0, 0, 0, 0},
    {"SBX_KAFKA_SSL_CA", "kafka-ssl-ca", "", "PEM file of the CA that signed the brokers' certificates (empty: the system's CAs); host names are verified", STR, S(kafka_ssl_ca), 0, 0, 0, 0},
    {"SBX_KAFKA_SSL_CERT", "kafka-ssl-cert", "", "PEM client certificate, for brokers that require one (mutual TLS)", STR, S(kafka_ssl_cert), 0, 0, 0, 0},
    {"SBX_KAFKA_SSL_KEY", "kafka-ssl-key", "", "PEM private key of SBX_KAFKA_SSL_CERT (unencrypted; keep it mode 0600)", STR, S(kafka_ssl_key), 0, 0, 0, 0},
    {"SBX_KAFKA_SASL_MECHANISM", "kafka-sasl-mechanism", "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (sasl_* protocols)", STR, S(kafka_sasl_mechanism), 0, 0, 0, 0},
    {"SBX_KAFKA_SASL_USERNAME", "kafka-sasl-username", "", "SASL user name", STR, S(kafka_sasl_username), 0, 0, 0, 0},
    {"SBX_KAFKA_SASL_PASSWORD_FILE", "kafka-sasl-password-file", "", "file whose first line is the SASL password (preferred to SBX_KAFKA_SASL_PASSWORD)", STR, S(kafka_sasl_password_file), 0, 0, 0, 0},
    {"SBX_KAFKA_SASL_PASSWORD", NULL, "", "SASL password (environment only; never printed)", STR, S(kafka_sasl_password), 0, 0, 0, 1},
    {"SBX_DOCKER_HOSTS", "docker-hosts", "", "docker provider: name=endpoint@capacity, comma-separated; endpoint: unix:///path/docker.sock, https://host:port (TLS, SBX_DOCKER_CERT_DIR), ssh://user@host[:port][/path/docker.sock] (SBX_DOCKER_SSH_*), or tcp://host:port to loopback only", STR, S(docker_hosts), 0, 0, 0, 0},
    {"SBX_DOCKER_IMAGE", "docker-image", "", "docker provider: image of jobs that name none", STR, S(docker_image), 0, 0, 0, 0},
    {"SBX_DOCKER_CERT_DIR", "docker-cert-dir", "/etc/sbx/docker", "https docker hosts: <dir>/<host name>/ca.pem (the engine's CA), cert.pem and key.pem (the client certificate and key), Docker's layout", STR, S(docker_cert_dir), 0, 0, 0, 0},
    {"SBX_DOCKER_SSH_KNOWN_HOSTS", "docker-ssh-known-hosts", "", "ssh docker hosts: known_hosts file with their host keys, the only ones trusted (required for ssh://)", STR, S(docker_ssh_known_hosts), 0, 0, 0, 0},
    {"SBX_DOCKER_SSH_KEY", "docker-ssh-key", "", "ssh docker hosts: private key file to log in with (empty: ssh's defaults)", STR, S(docker_ssh_key), 0, 0, 0, 0},
    {"SBX_DOCKER_INSECURE_TCP", "docker-insecure-tcp", "0", "allow tcp:// and http:// docker hosts at non-loopback addresses: unencrypted, unauthenticated root on the engine to anyone on the path (0/1)", BOOL, I(docker_insecure_tcp), 0, 1, 0, 0},

    {"SBX_DOCKER_REGISTRY_AUTH", NULL, "", "docker provider: X-Registry-Auth sent with image pulls (base64url of the registry credentials' JSON; environment only; never printed)", STR, S(docker_registry_auth), 0, 0, 0, 1},
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

/* The longest SBX_RETENTION: 100 years, far beyond any use, and small
 * enough that the seconds fit an interval and a long long. */
#define RETENTION_MAX_S (36500LL * 86400)
/* How much of a bad SBX_BROKERS entry the error line quotes. */
#define BROKER_SHOWN_MAX 200

/* A retention setting: N followed by s, m, h or d; "0" alone is off. name
 * is the variable, for the error line; *out gets the seconds. */
static int check_retention(const char *name, const char *s, long long *out, FILE *err)
{
    long long n = 0, mult = 0;
    size_t i = 0;

    while (isdigit((unsigned char)s[i]) && n <= RETENTION_MAX_S)
        n = n * 10 + (s[i++] - '0');
    if (i > 0 && s[i] && !s[i + 1]) {
        switch (s[i]) {
        case 's': mult = 1; break;
        case 'm': mult = 60; break;
        case 'h': mult = 3600; break;
        case 'd': mult = 86400; break;
        }
    } else if (i > 0 && !s[i] && n == 0) {
        mult = 1;
    }
    if (mult == 0 || n > RETENTION_MAX_S / mult) {
        fprintf(err, "sbx-worker: %s=%s is not a duration: use a number with s, m, h or d (7d, "
                     "24h, 3600s) up to 36500d, or 0 to keep rows forever\n", name, s);
        return 1;
    }
    *out = n * mult;
    return 0;
}

/* A price as PostgreSQL's numeric takes it and sbx.prices allows: digits
 * with at most one '.', 0..1000000; len bytes of s. */
static int price_ok(const char *s, size_t len)
{
    int dots = 0, digits = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.')
            dots++;
        else if (s[i] >= '0' && s[i] <= '9')
            digits++;
        else
            return 0;
    }
    return digits > 0 && dots <= 1 && len < 32 && strtod(s, NULL) <= 1000000;
}

int sbx__config_price(const char *list, const char *provider, char *out, size_t outlen)
{
    size_t plen = strlen(provider);
    const char *p = list;

    if (!*list)
        return 0;
    if (!strchr(list, '=')) {
        snprintf(out, outlen, "%s", list);
        return 1;
    }
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n > plen + 1 && strncmp(p, provider, plen) == 0 && p[plen] == '=') {
            snprintf(out, outlen, "%.*s", (int)(n - plen - 1), p + plen + 1);
            return 1;
        }
        p += n + (p[n] == ',');
    }
    return 0;
}

int sbx__config_runs(const sbx_config *cfg, sbx_provider_kind kind)
{
    for (int i = 0; i < cfg->nproviders; i++)
        if (cfg->provider_kinds[i] == kind)
            return 1;
    return 0;
}

/* SBX_PRICE_PER_HOUR and SBX_PRICE_PAUSED_PER_HOUR: one price, or
 * name=price for providers this worker runs, comma-separated. */
static int check_prices(const sbx_config *cfg, const char *name, const char *list,
                        const char *example, FILE *err)
{
    const char *p = list;
    if (!strchr(list, '=')) {
        if (price_ok(list, strlen(list)))
            return 0;
        fprintf(err, "sbx-worker: %s=%s is not a price: give a decimal such as %s (0 or more, at "
                     "most 1000000), or name=price for each provider\n", name, list, example);
        return 1;
    }
    while (*p) {
        size_t n = strcspn(p, ","), k = strcspn(p, "=");
        sbx_provider_kind kind;
        char prov[16];
        int known;
        snprintf(prov, sizeof(prov), "%.*s", (int)(k < sizeof(prov) ? k : sizeof(prov) - 1), p);
        known = k < n && sbx__provider_parse(prov, &kind) == 0 && sbx__config_runs(cfg, kind);
        if (k >= n || !known || !price_ok(p + k + 1, n - k - 1)) {
            fprintf(err, "sbx-worker: %s: \"%.*s\" is not name=price for a provider of "
                         "SBX_PROVIDER=%s: give such as %s=%s\n", name, (int)n, p, cfg->provider,
                    prov[0] && k < n && known ? prov : "local", example);
            return 1;
        }
        p += n + (p[n] == ',');
    }
    return 0;
}

/* SBX_PROVIDER: names, comma-separated, each once. */
static int check_providers(sbx_config *cfg, FILE *err)
{
    const char *p = cfg->provider;
    cfg->nproviders = 0;
    while (1) {
        size_t n = strcspn(p, ",");
        char name[16];
        sbx_provider_kind kind;
        snprintf(name, sizeof(name), "%.*s", (int)(n < sizeof(name) ? n : sizeof(name) - 1), p);
        if (n >= sizeof(name) || sbx__provider_parse(name, &kind) != 0) {
            fprintf(err, "sbx-worker: SBX_PROVIDER=%s: \"%.*s\" is not known: use local, "
                         "vmpool, docker or fly, or several comma-separated (fly,vmpool,docker)\n",
                    cfg->provider, (int)n, p);
            return 1;
        }
        for (int i = 0; i < cfg->nproviders; i++)
            if (cfg->provider_kinds[i] == kind) {
                fprintf(err, "sbx-worker: SBX_PROVIDER=%s names %s twice: name each provider "
                             "once\n", cfg->provider, name);
                return 1;
            }
        cfg->provider_kinds[cfg->nproviders++] = kind;
        if (!p[n])
            return 0;
        p += n + 1;
    }
}

/* A port as text: digits only, within [min, 65535]. */
static int port_ok(const char *s, size_t len, long min)
{
    long v = 0;
    if (len == 0 || len > 5)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v >= min && v <= 65535;
}

/* SBX_DATABASE_URL: libpq parses it without connecting. libpq's reason
 * quotes the text around the fault, so the value and the reason are shown
 * only when the setting cannot hold a password (no userinfo, no password
 * keyword). */
static int check_database_url(const char *url, FILE *err)
{
    char *why = NULL;
    PQconninfoOption *o = PQconninfoParse(url, &why);
    int bad = 0;

    if (!o) {
        /* A value that failed to parse may be cut anywhere, so the redaction
         * cannot be trusted to find its password: such a value is not shown. */
        int secret = strchr(url, '@') || strcasestr(url, "password");
        if (secret)
            fprintf(err, "sbx-worker: SBX_DATABASE_URL (not shown: it may hold a password) is not a "
                         "PostgreSQL URL or conninfo: use postgresql://USER:PASSWORD@HOST:PORT/DB "
                         "or 'host=H port=P dbname=D user=U'\n");
        else
            fprintf(err, "sbx-worker: SBX_DATABASE_URL=%s is not a PostgreSQL URL or conninfo "
                         "(%.*s): use postgresql://USER:PASSWORD@HOST:PORT/DB or 'host=H port=P "
                         "dbname=D user=U'\n", url, why ? (int)strcspn(why, "\n") : 0,
                    why ? why : "");
        PQfreemem(why);
        return 1;
    }
    for (PQconninfoOption *k = o; k->keyword; k++) {
        const char *v = k->val;
        if (strcmp(k->keyword, "port") != 0 || !v || !*v)
            continue;
        /* One port per host, comma-separated; an empty one is the default. */
        for (const char *p = v;; p += strcspn(p, ",") + 1) {
            if (strcspn(p, ",") > 0 && !port_ok(p, strcspn(p, ","), 1)) {
                fprintf(err, "sbx-worker: SBX_DATABASE_URL has port %.20s: use a number from 1 to "
                             "65535 per host\n", v);
                bad = 1;
                break;
            }
            if (!p[strcspn(p, ",")])
                break;
        }
    }
    PQconninfoFree(o);
    return bad;
}

/* SBX_BROKERS: [proto://]host:port, separated by commas or spaces as
 * librdkafka reads them; a host is a name, an IPv4 address or [IPv6].
 * librdkafka itself would take almost anything and retry it forever. */
static int check_brokers(const char *list, FILE *err)
{
    const char *e = list;
    int entries = 0;

    for (;;) {
        size_t len, hlen;
        const char *h, *end, *colon, *scheme;

        e += strspn(e, ", ");
        if (!*e)
            break;
        len = strcspn(e, ", ");
        h = e;
        end = e + len;
        scheme = strstr(e, "://");
        if (scheme && scheme < end)
            h = scheme + 3;
        if (*h == '[') {
            const char *rb = memchr(h, ']', (size_t)(end - h));
            colon = rb && rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
            hlen = rb ? (size_t)(rb - h) - 1 : 0;
        } else {
            colon = memchr(h, ':', (size_t)(end - h));
            hlen = colon ? (size_t)(colon - h) : 0;
            if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1)))
                colon = NULL;   /* an IPv6 address needs its brackets */
        }
        if (!colon || hlen == 0 || !port_ok(colon + 1, (size_t)(end - colon - 1), 1)) {
            fprintf(err, "sbx-worker: SBX_BROKERS entry \"%.*s\" is not host:port with a port from "
                         "1 to 65535: use host:port[,host:port]\n",
                    (int)(len < BROKER_SHOWN_MAX ? len : BROKER_SHOWN_MAX), e);
            return 1;
        }
        entries++;
        e = end;
    }
    if (entries == 0) {
        fprintf(err, "sbx-worker: SBX_BROKERS names no broker: use host:port[,host:port]\n");
        return 1;
    }
    return 0;
}

/* SBX_ADMIN_LISTEN: "" (off) or IPv4:port; port 0 lets the kernel pick one
 * (admin.c logs which). */
static int check_admin_listen(const char *addr, FILE *err)
{
    const char *colon = strrchr(addr, ':');
    char host[64];
    struct in_addr a;

    if (!*addr)
        return 0;
    if (colon && (size_t)(colon - addr) < sizeof(host)) {
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        if (inet_pton(AF_INET, host, &a) == 1 && port_ok(colon + 1, strlen(colon + 1), 0))
            return 0;
    }
    fprintf(err, "sbx-worker: SBX_ADMIN_LISTEN=%s is not ip:port (an IPv4 address, a port from 0 "
                 "to 65535): use e.g. 127.0.0.1:9464, or leave it empty for no admin endpoint\n",
            addr);
    return 1;
}

/* SBX_REDIS_URL: common/redis.c's own parser, so start-up refuses exactly
 * what the connection would, with its reasons (each says the fix, never the
 * password). The parsed copy holds the password: wiped. */
static int check_redis_url(const char *url, FILE *err)
{
    sbx_redis_url u;
    char why[256], shown[600];
    int rc = sbx_redis_parse_url(url, &u, why, sizeof(why));

    explicit_bzero(&u, sizeof(u));
    if (rc == 0)
        return 0;
    sbx_log_redact(url, shown, sizeof(shown));
    fprintf(err, "sbx-worker: SBX_REDIS_URL=%s: %s\n", shown, why);
    return 1;
}

/* The SBX_KAFKA_* security variables as libsbx reads them. */
static void kafka_security(const sbx_config *cfg, sbx_kafka_security *s)
{
    s->protocol = cfg->kafka_security_protocol;
    s->sasl_mechanism = cfg->kafka_sasl_mechanism;
    s->sasl_username = cfg->kafka_sasl_username;
    s->sasl_password = cfg->kafka_sasl_password;
    s->sasl_password_file = cfg->kafka_sasl_password_file;
    s->ssl_ca = cfg->kafka_ssl_ca;
    s->ssl_cert = cfg->kafka_ssl_cert;
    s->ssl_key = cfg->kafka_ssl_key;
}

int sbx__config_kafka_settings(const sbx_config *cfg, sbx_kafka_settings *ks, char *err,
                               size_t errlen)
{
    sbx_kafka_security sec;
    int n = 0;

    memset(ks, 0, sizeof(*ks));
    kafka_security(cfg, &sec);
    if (sbx_kafka_security_settings(&sec, ks->security, ks->kv, err, errlen) != SBX_OK)
        return -1;
    while (ks->kv[n])
        n++;
    snprintf(ks->conf, sizeof(ks->conf), "%s", cfg->kafka_conf);
    for (char *save = NULL, *e = strtok_r(ks->conf, ",", &save); e;
         e = strtok_r(NULL, ",", &save)) {
        if (n == SBX_KAFKA_SETTINGS_MAX) {
            snprintf(err, errlen, "SBX_KAFKA_CONF has more than %d entries",
                     SBX_KAFKA_SETTINGS_MAX - SBX_KAFKA_SECURITY_MAX);
            sbx__config_kafka_settings_wipe(ks);
            return -1;
        }
        ks->kv[n++] = e;
    }
    ks->kv[n] = NULL;
    return 0;
}

void sbx__config_kafka_settings_wipe(sbx_kafka_settings *ks)
{
    explicit_bzero(ks, sizeof(*ks));
}

void sbx_config_print(const sbx_config *cfg, FILE *out) { sbx_opts_print(opts, NOPTS, cfg, out); }

int sbx_config_load(sbx_config *cfg, int argc, char **argv, FILE *err)
{
    int bad;

    memset(cfg, 0, sizeof(*cfg));
    bad = sbx_opts_load("sbx-worker", opts, NOPTS, cfg, argc, argv, err);
    if (bad == 2)
        return 2;
    if (sbx_opts_log_level("sbx-worker", cfg->log_level, err))
        bad = 1;
    if (sbx_opts_log_format("sbx-worker", cfg->log_format, err))
        bad = 1;
    if (check_providers(cfg, err))
        bad = 1;
    if (sscanf(cfg->preview_ports, "%d-%d", &cfg->preview_port_min, &cfg->preview_port_max) != 2 ||
        cfg->preview_port_min < 1 || cfg->preview_port_max > 65535 ||
        cfg->preview_port_min > cfg->preview_port_max) {
        fprintf(err, "sbx-worker: SBX_PREVIEW_PORTS=%s is not a port range: give first-last, "
                     "such as 20000-20999\n", cfg->preview_ports);
        bad = 1;
    }
    if (!bad && *cfg->price_per_hour &&
        check_prices(cfg, "SBX_PRICE_PER_HOUR", cfg->price_per_hour, "0.12", err))
        bad = 1;
    if (!bad && check_prices(cfg, "SBX_PRICE_PAUSED_PER_HOUR", cfg->price_paused_per_hour, "0.01",
                             err))
        bad = 1;
    if (strcmp(cfg->project_policy, "queue") == 0) {
        cfg->policy = SBX_POLICY_QUEUE;
    } else if (strcmp(cfg->project_policy, "reject") == 0) {
        cfg->policy = SBX_POLICY_REJECT;
    } else if (strcmp(cfg->project_policy, "supersede") == 0) {
        cfg->policy = SBX_POLICY_SUPERSEDE;
    } else {
        fprintf(err, "sbx-worker: SBX_PROJECT_POLICY=%s is not known: use queue, reject or "
                     "supersede\n", cfg->project_policy);
        bad = 1;
    }
    {
        char e[256];
        if (sbx_egress_check("SBX_EGRESS_ALLOW", cfg->egress_allow, e, sizeof(e)) ||
            sbx_egress_check("SBX_EGRESS_DENY", cfg->egress_deny, e, sizeof(e))) {
            fprintf(err, "sbx-worker: %s\n", e);
            bad = 1;
        }
    }
    /* The settings that can be checked without the network; the connections
     * themselves are tried (and retried) once running. */
    if (check_retention("SBX_RETENTION", cfg->retention, &cfg->retention_s, err))
        bad = 1;
    if (check_retention("SBX_DLQ_RETENTION", cfg->dlq_retention, &cfg->dlq_retention_s, err))
        bad = 1;
    if (*cfg->database_url && check_database_url(cfg->database_url, err))
        bad = 1;
    if (*cfg->brokers && check_brokers(cfg->brokers, err))
        bad = 1;
    if (check_admin_listen(cfg->admin_listen, err))
        bad = 1;
    if (check_redis_url(cfg->redis_url, err))
        bad = 1;
    {
        /* Built once here to check the SBX_KAFKA_* variables (files
         * readable, SASL complete) before anything connects. */
        sbx_kafka_settings ks;
        char e[512];
        if (sbx__config_kafka_settings(cfg, &ks, e, sizeof(e)) != 0) {
            fprintf(err, "sbx-worker: %s\n", e);
            bad = 1;
        }
        sbx__config_kafka_settings_wipe(&ks);
    }
    if (sbx__config_runs(cfg, SBX_PROVIDER_DOCKER) && !*cfg->docker_hosts) {
        fprintf(err, "sbx-worker: SBX_DOCKER_HOSTS is not set: the docker provider needs "
                     "name=unix:///path/docker.sock@capacity[,...]\n");
        bad = 1;
    } else if (sbx__config_runs(cfg, SBX_PROVIDER_DOCKER)) {
        char e[1024];
        if (sbx__docker_check(cfg, e, sizeof(e)) != 0) {
            fprintf(err, "sbx-worker: %s\n", e);
            bad = 1;
        }
    }
    if (strpbrk(cfg->node, ", \t")) {
        /* A local pool is local/<node>, and pools are listed with commas. */
        fprintf(err, "sbx-worker: SBX_NODE=%s has a comma or a space: give a host name\n",
                cfg->node);
        bad = 1;
    }
    if (!*cfg->node) {
        if (gethostname(cfg->node, sizeof(cfg->node)) != 0)
            snprintf(cfg->node, sizeof(cfg->node), "node");
        cfg->node[sizeof(cfg->node) - 1] = '\0';
    }
    if (!*cfg->worker_id)
        snprintf(cfg->worker_id, sizeof(cfg->worker_id), "%.100s-%d", cfg->node, (int)getpid());
    return bad ? 1 : 0;
}
