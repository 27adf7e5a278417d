/* serve.c — `sbx serve`: the web console. An HTTP server (libmicrohttpd)
 * that serves the page (producers/console/, embedded at build time), a
 * read-only JSON API over what workers record (console_data.c), a live feed
 * (console_feed.c), and two actions: replay a dead letter, cancel a run.
 *
 * Why it is shaped so:
 *  - Thread per connection. A console has a handful of viewers, and each
 *    live feed waits on its own PostgreSQL LISTEN; blocking handlers with
 *    their own connections are simpler than a loop and cannot starve each
 *    other. The feeds are capped (SBX_CONSOLE_FEEDS_MAX), so are connections.
 *  - Read-only unless an operator token is configured (SBX_CONSOLE_TOKEN).
 *    Actions are POSTs that carry it in the X-Sbx-Token header, which the
 *    page's script sends after the operator typed it (kept in the tab's
 *    sessionStorage). No cookie ever authorises anything, and a header like
 *    that cannot be sent cross-site without a CORS preflight this server
 *    never answers, so another site cannot make a browser act (CSRF). The
 *    token is compared as SHA-256 digests in constant time.
 *  - Bound to 127.0.0.1 by default (SBX_CONSOLE_LISTEN / --listen); on a
 *    loopback address the Host header must name it, so a page elsewhere
 *    cannot read the API through DNS rebinding. Put TLS and a login in front
 *    (a reverse proxy) before binding anything else.
 *  - Actions run the CLI's own code (sbx__dlq_replay, sbx__run_cancel), on a
 *    connection of SBX_CONSOLE_ACTION_DATABASE_URL when set: the reads need
 *    only sbx_reader, a replay needs sbx_writer (the original holds env
 *    values) and a cancel sbx_submitter.
 *  - Every page response forbids inline script and framing (CSP), and the
 *    script writes data into the page only as text, so a job id or a log
 *    line holding markup shows as text.
 */
#include "console.h"

#include <arpa/inet.h>
#include <errno.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sbx.h"
#include "sbx_sha256.h"

#define DEFAULT_LISTEN "127.0.0.1:8070"
/* Shorter tokens are guessable over the network; 16 is what `openssl rand
 * -hex 8` gives, the least we take. */
#define TOKEN_MIN 16
/* Connections at once: the feeds, their pages' requests, and headroom. */
#define CONNECTIONS_MAX (SBX_CONSOLE_FEEDS_MAX * 2 + 32)
/* An idle keep-alive connection is closed after this; feeds send a comment
 * line more often (console_feed.c). */
#define IDLE_TIMEOUT_S 60
/* A numeric address as --listen names it; "[" "]:port" come on top. */
#define HOST_MAX 80

static const char security_headers[][2][160] = {
    { "Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                 "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                                 "form-action 'none'; frame-ancestors 'none'" },
    { "X-Content-Type-Options", "nosniff" },
    { "Referrer-Policy", "no-referrer" },
    { "X-Frame-Options", "DENY" },
    { "Cache-Control", "no-store" },
};

/* Host header values a loopback listener accepts; none set = any. */
static char hosts_ok[2][HOST_MAX + 16];

void sbx__answer_error(struct sbx__answer *a, unsigned status, const char *msg)
{
    json_object *o = json_object_new_object();
    const char *s;

    json_object_object_add(o, "error", json_object_new_string(msg));
    s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    free(a->body);
    a->status = status;
    a->body = strdup(s);
    a->len = a->body ? strlen(a->body) : 0;
    a->type = "application/json";
    json_object_put(o);
}

static bool token_ok(const struct sbx__console *con, const char *given)
{
    char hex[65];
    unsigned char diff = 0;

    if (!given)
        return false;
    sbx__sha256_hex(given, strlen(given), hex);
    for (size_t i = 0; i < 64; i++)
        diff |= (unsigned char)(hex[i] ^ con->token_sha256[i]);
    return diff == 0;
}

static void queue(struct MHD_Connection *c, struct MHD_Response *r, unsigned status,
                  const char *type)
{
    for (size_t i = 0; i < sizeof security_headers / sizeof *security_headers; i++)
        MHD_add_response_header(r, security_headers[i][0], security_headers[i][1]);
    if (type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
}

static enum MHD_Result send_answer(struct MHD_Connection *c, struct sbx__answer *a)
{
    struct MHD_Response *r;

    if (!a->body)
        sbx__answer_error(a, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    if (!a->body)
        return MHD_NO;
    r = MHD_create_response_from_buffer(a->len, a->body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(a->body);
        return MHD_NO;
    }
    a->body = NULL;
    queue(c, r, a->status, a->type);
    return MHD_YES;
}

static bool serve_asset(const char *url, struct sbx__answer *a)
{
    static const struct { const char *ext, *type; } types[] = {
        { ".html", "text/html; charset=utf-8" },
        { ".js", "text/javascript; charset=utf-8" },
        { ".css", "text/css; charset=utf-8" },
    };
    const char *name = strcmp(url, "/") == 0 ? "index.html" : url + 1;

    for (unsigned long i = 0; i < sbx__console_assets_count; i++) {
        const struct sbx__embedded *e = &sbx__console_assets[i];
        if (strcmp(e->name, name) != 0)
            continue;
        a->status = MHD_HTTP_OK;
        a->type = "application/octet-stream";
        for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
            size_t n = strlen(name), m = strlen(types[t].ext);
            if (n > m && strcmp(name + n - m, types[t].ext) == 0)
                a->type = types[t].type;
        }
        a->body = malloc(e->len ? e->len : 1);
        a->len = e->len;
        if (a->body)
            memcpy(a->body, e->text, e->len);
        return true;
    }
    return false;
}

/* Splits "/api/<a>/<id>/<b>" style paths: *id gets the segment after
 * prefix (bounded by '/' or the end), *rest what follows it ("" or "/x"). */
static bool path_id(const char *url, const char *prefix, char *id, size_t idlen, const char **rest)
{
    size_t pl = strlen(prefix), n;

    if (strncmp(url, prefix, pl) != 0)
        return false;
    n = strcspn(url + pl, "/");
    if (n == 0 || n >= idlen)
        return false;
    memcpy(id, url + pl, n);
    id[n] = '\0';
    *rest = url + pl + n;
    return true;
}

/* Runs an action with the CLI's code; out and err become the answer. */
static void action(struct sbx__console *con, struct MHD_Connection *c, bool replay, const char *id,
                   struct sbx__answer *a)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char peer[INET6_ADDRSTRLEN] = "?", *outs = NULL, *errs = NULL;
    size_t outn = 0, errn = 0;
    FILE *out = NULL, *err = NULL;
    PGconn *conn = NULL;
    json_object *o = NULL;
    int rc;

    if (ci && ci->client_addr)
        getnameinfo(ci->client_addr, ci->client_addr->sa_family == AF_INET6
                        ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in),
                    peer, sizeof peer, NULL, 0, NI_NUMERICHOST);
    if (!con->token_sha256[0]) {
        sbx__answer_error(a, MHD_HTTP_FORBIDDEN, "this console is read-only: start sbx serve "
                                                 "with SBX_CONSOLE_TOKEN to allow actions");
        return;
    }
    if (!token_ok(con, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Sbx-Token"))) {
        fprintf(stderr, "sbx serve: %s %s refused from %s: no or wrong operator token\n",
                replay ? "replay of dead letter" : "cancel of", id, peer);
        sbx__answer_error(a, MHD_HTTP_UNAUTHORIZED, "refused: the operator token is missing or "
                                                    "wrong");
        return;
    }
    if (!(conn = sbx__console_pg(con->action_url, a)))
        return;
    if (!(out = open_memstream(&outs, &outn)) || !(err = open_memstream(&errs, &errn))) {
        sbx__answer_error(a, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        goto out;
    }
    rc = replay ? sbx__dlq_replay(conn, con->cfg, id, false, "sbx serve", out, err)
                : sbx__run_cancel(conn, id, out, err);
    fclose(out);
    fclose(err);
    out = err = NULL;
    fprintf(stderr, "sbx serve: %s %s from %s: %s%s",
            replay ? "replay of dead letter" : "cancel of", id, peer,
            rc == SBX_EXIT_OK ? outs : "refused or failed: ", rc == SBX_EXIT_OK ? "" : errs);
    o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(rc == SBX_EXIT_OK));
    json_object_object_add(o, "message", json_object_new_string(rc == SBX_EXIT_OK ? outs : errs));
    a->status = rc == SBX_EXIT_OK ? MHD_HTTP_OK
                : rc == SBX_EXIT_USAGE ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_CONFLICT;
    a->body = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    a->len = a->body ? strlen(a->body) : 0;
    a->type = "application/json";
out:
    if (out)
        fclose(out);
    if (err)
        fclose(err);
    json_object_put(o);
    free(outs);
    free(errs);
    PQfinish(conn);
}

static bool host_allowed(struct MHD_Connection *c)
{
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);

    if (!hosts_ok[0][0])
        return true;
    for (size_t i = 0; i < sizeof hosts_ok / sizeof *hosts_ok; i++)
        if (host && hosts_ok[i][0] && strcasecmp(host, hosts_ok[i]) == 0)
            return true;
    return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **state)
{
    static int started;
    struct sbx__console *con = cls;
    struct sbx__answer a = { .status = MHD_HTTP_OK, .type = "application/json" };
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool post = strcmp(method, "POST") == 0;
    char id[160];
    const char *rest;
    struct sbx__query q = { 0 };
    (void)version;
    (void)upload;

    /* The first call only announces the request; a POST body (none is
     * needed) is read and dropped before the answer. */
    if (!*state) {
        *state = &started;
        return MHD_YES;
    }
    if (*upload_size) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (!host_allowed(c)) {
        sbx__answer_error(&a, MHD_HTTP_MISDIRECTED_REQUEST, "this console answers only to the "
                                                            "address it listens on");
        return send_answer(c, &a);
    }
#define ARG(k) MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, k)
    q = (struct sbx__query){ ARG("project"), ARG("status"), ARG("since"), ARG("attempt"),
                             ARG("after"), ARG("limit"), ARG("job") };
#undef ARG
    if (post) {
        if (path_id(url, "/api/dead-letters/", id, sizeof id, &rest) &&
            strcmp(rest, "/replay") == 0 && sbx__dlq_id_ok(id))
            action(con, c, true, id, &a);
        else if (path_id(url, "/api/runs/", id, sizeof id, &rest) &&
                 strcmp(rest, "/cancel") == 0 && sbx_id_valid(id))
            action(con, c, false, id, &a);
        else
            sbx__answer_error(&a, MHD_HTTP_NOT_FOUND, "no such action");
        return send_answer(c, &a);
    }
    if (!get) {
        sbx__answer_error(&a, MHD_HTTP_METHOD_NOT_ALLOWED, "GET or POST only");
        return send_answer(c, &a);
    }
    if (strcmp(url, "/api/runs") == 0) {
        sbx__console_runs(con, &q, &a);
    } else if (path_id(url, "/api/runs/", id, sizeof id, &rest) && (!*rest ||
               strcmp(rest, "/logs") == 0)) {
        if (!sbx_id_valid(id))
            sbx__answer_error(&a, MHD_HTTP_BAD_REQUEST, "not a job id");
        else if (*rest)
            sbx__console_logs(con, id, &q, &a);
        else
            sbx__console_run(con, id, &a);
    } else if (strcmp(url, "/api/dead-letters") == 0) {
        sbx__console_dead_letters(con, &q, &a);
    } else if (strcmp(url, "/api/slots") == 0) {
        sbx__console_slots(con, &a);
    } else if (strcmp(url, "/api/lag") == 0) {
        sbx__console_lag(con, &a);
    } else if (strcmp(url, "/api/config") == 0) {
        char line[256], *body;
        sbx_version_line("sbx serve", line, sizeof line);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "actions", json_object_new_boolean(con->token_sha256[0] != 0));
        json_object_object_add(o, "version", json_object_new_string(line));
        body = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        a.body = body;
        a.len = body ? strlen(body) : 0;
    } else if (strcmp(url, "/api/feed") == 0) {
        struct MHD_Response *r = sbx__console_feed(
            con, &q, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID"), &a);
        if (!r)
            return send_answer(c, &a);
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        queue(c, r, MHD_HTTP_OK, "text/event-stream");
        return MHD_YES;
    } else if (strncmp(url, "/api/", 5) == 0 || !serve_asset(url, &a)) {
        sbx__answer_error(&a, MHD_HTTP_NOT_FOUND, "not found");
    }
    return send_answer(c, &a);
}

/* libmicrohttpd's own errors, on stderr as ours are; a browser that left
 * a page (its feed's socket gone) is not one. */
static void http_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof line, fmt, ap);
    if (strstr(line, "no longer available") || strstr(line, "Connection reset"))
        return;
    line[strcspn(line, "\n")] = '\0';
    fprintf(stderr, "sbx serve: http: %s\n", line);
}

/* Binds "host:port" or "[v6]:port"; fills hosts_ok when it is loopback. */
static int listen_on(const char *spec, char *bound, size_t boundlen)
{
    char host[HOST_MAX], port[8], *colon;
    struct addrinfo hints = { .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
                              .ai_socktype = SOCK_STREAM }, *ai = NULL;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = -1, one = 1, rc;
    bool loopback;

    if (strlen(spec) >= sizeof host || !(colon = strrchr(spec, ':')) || strlen(colon + 1) >=
        sizeof port || !colon[1]) {
        fprintf(stderr, "sbx serve: --listen %s: expected HOST:PORT (127.0.0.1:8070, "
                        "[::1]:8070; port 0 = any free one)\n", spec);
        return -1;
    }
    snprintf(port, sizeof port, "%s", colon + 1);
    snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    if ((rc = getaddrinfo(host, port, &hints, &ai)) != 0) {
        fprintf(stderr, "sbx serve: --listen %s: %s (give a numeric address)\n", spec,
                gai_strerror(rc));
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        fprintf(stderr, "sbx serve: --listen %s: %s\n", spec, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    int p = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                           : ((struct sockaddr_in *)&ss)->sin_port);
    loopback = ss.ss_family == AF_INET6
                   ? IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr)
                   : (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    snprintf(bound, boundlen, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, p);
    if (loopback) {
        snprintf(hosts_ok[0], sizeof hosts_ok[0], "%s", bound);
        snprintf(hosts_ok[1], sizeof hosts_ok[1], "localhost:%d", p);
    }
    return fd;
}

/* The Kafka handle /api/lag asks: a consumer of SBX_GROUP that never
 * subscribes, so it reads the group's committed offsets without joining. */
static rd_kafka_t *lag_client(const struct sbx__console *con)
{
    char group[320], servers[1024], errstr[512];
    const char *own[] = { group, servers, "enable.auto.commit=false", NULL };
    struct sbx__cli_kafka *k;
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk = NULL;

    snprintf(group, sizeof group, "group.id=%s", con->group);
    snprintf(servers, sizeof servers, "bootstrap.servers=%s", con->cfg->brokers);
    if (!(k = sbx__cli_kafka_settings("serve", own)))
        return NULL;
    conf = rd_kafka_conf_new();
    for (size_t i = 0; k->kv[i]; i++) {
        char key[256];
        const char *eq = strchr(k->kv[i], '=');
        if (!eq || (size_t)(eq - k->kv[i]) >= sizeof key) {
            fprintf(stderr, "sbx serve: Kafka setting \"%s\" is not KEY=VALUE\n", k->kv[i]);
            goto out;
        }
        snprintf(key, sizeof key, "%.*s", (int)(eq - k->kv[i]), k->kv[i]);
        if (rd_kafka_conf_set(conf, key, eq + 1, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "sbx serve: Kafka setting %s: %s\n", key, errstr);
            goto out;
        }
    }
    if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr)))
        fprintf(stderr, "sbx serve: Kafka: %s\n", errstr);
    conf = NULL;   /* rd_kafka_new owns it, even on failure */
out:
    if (conf)
        rd_kafka_conf_destroy(conf);
    sbx__cli_kafka_free(k);
    return rk;
}

static int serve_flag(int c, const char *arg, void *ctx)
{
    if (c != 'l')
        return -1;
    *(const char **)ctx = arg;
    return 0;
}

int sbx__cmd_serve(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "listen", required_argument, NULL, 'l' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    const char *listen_spec = getenv("SBX_CONSOLE_LISTEN"), *token = getenv("SBX_CONSOLE_TOKEN");
    struct sbx__console con = { .cfg = cfg };
    struct MHD_Daemon *d = NULL;
    char bound[HOST_MAX + 16];
    sigset_t sigs;
    int fd = -1, sig, rc;

    if (!listen_spec || !*listen_spec)
        listen_spec = DEFAULT_LISTEN;
    if ((rc = sbx__cli_options("serve", argc, argv, cfg, opts, serve_flag, &listen_spec)))
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (optind < argc) {
        fprintf(stderr, "sbx serve: unexpected argument \"%s\"\n", argv[optind]);
        return SBX_EXIT_USAGE;
    }
    con.reader_url = cfg->database_url;
    con.action_url = getenv("SBX_CONSOLE_ACTION_DATABASE_URL");
    if (!con.action_url || !*con.action_url)
        con.action_url = con.reader_url;
    con.redis_url = getenv("SBX_REDIS_URL");
    con.group = getenv("SBX_GROUP");
    if (!con.group || !*con.group)
        con.group = "sbx-workers";
    if (!con.reader_url || !*con.reader_url) {
        fprintf(stderr, "sbx serve: no database configured: set SBX_DATABASE_URL (an sbx_reader "
                        "login is enough to look) or pass --database-url\n");
        return SBX_EXIT_USAGE;
    }
    if (token && *token) {
        if (strlen(token) < TOKEN_MIN) {
            fprintf(stderr, "sbx serve: SBX_CONSOLE_TOKEN is shorter than %d characters; make "
                            "one with `openssl rand -hex 16`\n", TOKEN_MIN);
            return SBX_EXIT_USAGE;
        }
        sbx__sha256_hex(token, strlen(token), con.token_sha256);
    }
    if (cfg->brokers && *cfg->brokers && !(con.rk = lag_client(&con)))
        return SBX_EXIT_USAGE;

    /* Every thread libmicrohttpd starts inherits this mask: the signals
     * reach sigwait below and nothing else. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = SBX_EXIT_FAIL;
    if ((fd = listen_on(listen_spec, bound, sizeof bound)) < 0) {
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                             MHD_USE_ERROR_LOG,
                         0, NULL, NULL, on_request, &con,
                         MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONNECTIONS_MAX,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                         MHD_OPTION_EXTERNAL_LOGGER, http_log, NULL,
                         MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "sbx serve: the HTTP server did not start\n");
        goto out;
    }
    fd = -1;   /* the daemon's now */
    printf("sbx serve: listening on http://%s/ (%s)\n", bound,
           con.token_sha256[0] ? "actions allowed with the operator token" : "read-only");
    fflush(stdout);
    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "sbx serve: signal %d, stopping\n", sig);
    con.stopping = 1;
    rc = SBX_EXIT_OK;
out:
    if (d)
        MHD_stop_daemon(d);
    if (fd >= 0)
        close(fd);
    if (con.rk)
        rd_kafka_destroy(con.rk);
    return rc;
}
