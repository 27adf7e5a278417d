/* enqueue.c — `sbx enqueue`: build or read job messages, check them, publish
 * them and report what the brokers acknowledged.
 *
 * Every message is checked with sbx_job_parse() before anything is sent, so
 * a batch is all-or-nothing at the validation step: one refused line and no
 * line goes out (exit 2). After that, delivery is per message; ids are
 * printed in input order for the messages the brokers acknowledged, and a
 * failure of any makes the exit status 1. --raw skips the check on purpose:
 * it exists to put poison into the topic for dead-letter tests.
 *
 * With a database URL (SBX_DATABASE_URL, --database-url) each job is first
 * recorded as `submitted` in sbx.runs, then published (libsbx does both:
 * sbx_producer_set_database), so `sbx status` and `sbx cancel` work as soon
 * as the id is printed, and before. --no-database publishes without it;
 * --raw never records (its bytes need not be a job).
 */
#include "cli.h"
#include "sbx.h"

#include <json-c/json.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Input of --json: a bulk file of this many bytes holds hundreds of
 * thousands of jobs; past it, split the input. */
#define INPUT_MAX (256u * 1024 * 1024)
#define DEFAULT_DELIVERY_TIMEOUT_S 30

struct enqueue_opts {
    const char *project, *job_id, *timeout, *provider, *image, *script, *json;
    const char *session, *pause_after, *idle_timeout, *max_lifetime, *preview_port; /* "session" */
    bool network, raw, no_database;
    const char **env, **files, **kafka;   /* argv strings, as given */
    size_t nenv, nfiles, nkafka;
    int delivery_timeout_s;
    char **cmd;                           /* after "--" */
    int ncmd;
};

/* One message of the input: its bytes (owned) and where it came from. */
struct message {
    char *buf;
    size_t len;
    size_t line;                          /* 1-based line of the input; 0 = whole input */
    char job_id[SBX_ID_MAX + 1];
    bool done;                            /* delivery report arrived */
    sbx_err err;
    char errstr[160];
};

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "sbx enqueue: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "; run `sbx enqueue --help`\n");
    return SBX_EXIT_USAGE;
}

static int parse_opts(int argc, char **argv, struct sbx__cli_config *cfg, struct enqueue_opts *o)
{
    enum { O_PROJECT = 1, O_JOB_ID, O_TIMEOUT, O_ENV, O_FILE, O_NETWORK, O_PROVIDER, O_IMAGE,
           O_SCRIPT, O_JSON, O_RAW, O_DELIVERY, O_NO_DATABASE, O_SESSION, O_PAUSE_AFTER,
           O_IDLE_TIMEOUT, O_MAX_LIFETIME, O_PREVIEW_PORT };
    static const struct option opts[] = {
        { "project", required_argument, NULL, O_PROJECT },
        { "job-id", required_argument, NULL, O_JOB_ID },
        { "timeout", required_argument, NULL, O_TIMEOUT },
        { "env", required_argument, NULL, O_ENV },
        { "file", required_argument, NULL, O_FILE },
        { "network", no_argument, NULL, O_NETWORK },
        { "provider", required_argument, NULL, O_PROVIDER },
        { "image", required_argument, NULL, O_IMAGE },
        { "script", required_argument, NULL, O_SCRIPT },
        { "json", required_argument, NULL, O_JSON },
        { "raw", no_argument, NULL, O_RAW },
        { "no-database", no_argument, NULL, O_NO_DATABASE },
        { "session", required_argument, NULL, O_SESSION },
        { "pause-after", required_argument, NULL, O_PAUSE_AFTER },
        { "idle-timeout", required_argument, NULL, O_IDLE_TIMEOUT },
        { "max-lifetime", required_argument, NULL, O_MAX_LIFETIME },
        { "preview-port", required_argument, NULL, O_PREVIEW_PORT },
        { "delivery-timeout", required_argument, NULL, O_DELIVERY },
        { "kafka", required_argument, NULL, 'X' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    int c;

    o->env = calloc((size_t)argc, sizeof *o->env);
    o->files = calloc((size_t)argc, sizeof *o->files);
    o->kafka = calloc((size_t)argc + 1, sizeof *o->kafka);
    if (!o->env || !o->files || !o->kafka) {
        fprintf(stderr, "sbx enqueue: out of memory\n");
        return SBX_EXIT_FAIL;
    }
    o->delivery_timeout_s = DEFAULT_DELIVERY_TIMEOUT_S;
    while ((c = getopt_long(argc, argv, "hX:", opts, NULL)) != -1) {
        switch (c) {
        case O_PROJECT:  o->project = optarg; break;
        case O_JOB_ID:   o->job_id = optarg; break;
        case O_TIMEOUT:  o->timeout = optarg; break;
        case O_ENV:      o->env[o->nenv++] = optarg; break;
        case O_FILE:     o->files[o->nfiles++] = optarg; break;
        case O_NETWORK:  o->network = true; break;
        case O_PROVIDER: o->provider = optarg; break;
        case O_IMAGE:    o->image = optarg; break;
        case O_SCRIPT:   o->script = optarg; break;
        case O_JSON:     o->json = optarg; break;
        case O_RAW:      o->raw = true; break;
        case O_NO_DATABASE: o->no_database = true; break;
        case O_SESSION:  o->session = optarg; break;
        case O_PAUSE_AFTER:  o->pause_after = optarg; break;
        case O_IDLE_TIMEOUT: o->idle_timeout = optarg; break;
        case O_MAX_LIFETIME: o->max_lifetime = optarg; break;
        case O_PREVIEW_PORT: o->preview_port = optarg; break;
        case 'X':        o->kafka[o->nkafka++] = optarg; break;
        case O_DELIVERY: {
            char *end;
            long s = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end || s < 1 || s > 3600)
                return usage_error("--delivery-timeout: expected seconds 1..3600, got \"%s\"", optarg);
            o->delivery_timeout_s = (int)s;
            break;
        }
        case OPT_HELP:
        case 'h':
            sbx__cli_usage("enqueue", false);
            return -1;
        default:
            if (sbx__cli_common_option(cfg, c, optarg))
                break;
            sbx__cli_usage("enqueue", true);
            return SBX_EXIT_USAGE;
        }
    }
    o->cmd = argv + optind;
    o->ncmd = argc - optind;
    if (o->ncmd > 0 && strcmp(argv[optind - 1], "--") != 0)
        return usage_error("unexpected argument \"%s\" (put the command after --)", argv[optind]);

    int sources = (o->ncmd > 0) + (o->script != NULL) + (o->json != NULL);
    if (sources != 1)
        return usage_error("%s", sources ? "give only one of -- ARGV..., --script and --json"
                                         : "nothing to run: give -- ARGV..., --script TEXT or --json FILE");
    if (o->raw && !o->json)
        return usage_error("%s", "--raw needs --json");
    if (o->json) {
        const char *builder = o->job_id ? "--job-id" : o->timeout ? "--timeout" : o->nenv ? "--env"
                            : o->nfiles ? "--file" : o->network ? "--network" : o->provider ? "--provider"
                            : o->image ? "--image" : o->session ? "--session"
                            : (o->project && !o->raw) ? "--project" : NULL;
        if (builder)
            return usage_error("%s builds a message; a --json message must say it itself", builder);
    } else if (!o->project) {
        return usage_error("%s", "--project is required");
    }
    if (!o->session && (o->pause_after || o->idle_timeout || o->max_lifetime || o->preview_port))
        return usage_error("%s", o->pause_after    ? "--pause-after needs --session"
                                 : o->idle_timeout ? "--idle-timeout needs --session"
                                 : o->max_lifetime ? "--max-lifetime needs --session"
                                                   : "--preview-port needs --session");
    return SBX_EXIT_OK;
}

/* ---- building a message from flags ---- */

static int add_string(json_object *obj, const char *key, const char *value)
{
    json_object *s = json_object_new_string(value);
    return s ? json_object_object_add(obj, key, s) : -1;
}

static int add_map(json_object *obj, const char *key, const char **items, size_t n,
                   bool from_environ)
{
    json_object *map;
    if (n == 0)
        return 0;
    if (!(map = json_object_new_object()) || json_object_object_add(obj, key, map))
        return -1;
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(items[i], '=');
        char name[4096];
        const char *value = eq ? eq + 1 : NULL;
        size_t nlen = eq ? (size_t)(eq - items[i]) : strlen(items[i]);
        if (nlen >= sizeof name) {
            fprintf(stderr, "sbx enqueue: --%s: name too long\n", from_environ ? "env" : "file");
            return -2;
        }
        memcpy(name, items[i], nlen);
        name[nlen] = '\0';
        if (!eq && from_environ)
            value = getenv(name);
        if (!value) {
            fprintf(stderr, "sbx enqueue: --%s %s: expected %s\n", from_environ ? "env" : "file", items[i],
                    from_environ ? "NAME=VALUE, or NAME set in this environment" : "PATH=CONTENT");
            return -2;
        }
        if (add_string(map, name, value))
            return -1;
    }
    return 0;
}

/* A number flag as the message's member: anything but a plain integer goes
 * in as text, for the schema to refuse clearly. */
static int add_number(json_object *obj, const char *key, const char *text)
{
    char *end;
    errno = 0;
    long long n = strtoll(text, &end, 10);
    json_object *v = (*text && !*end && !errno) ? json_object_new_int64(n)
                                                : json_object_new_string(text);
    return v ? json_object_object_add(obj, key, v) : -1;
}

/* "session": {"id", and the timeouts given}; the worker's defaults
 * (SBX_SESSION_*) apply to the others. */
static int add_session(json_object *obj, const struct enqueue_opts *o)
{
    json_object *s = json_object_new_object();
    if (!s || json_object_object_add(obj, "session", s))
        return -1;
    return add_string(s, "id", o->session) ||
           (o->pause_after && add_number(s, "pause_after_s", o->pause_after)) ||
           (o->idle_timeout && add_number(s, "idle_timeout_s", o->idle_timeout)) ||
           (o->max_lifetime && add_number(s, "max_lifetime_s", o->max_lifetime)) ||
           (o->preview_port && add_number(s, "preview_port", o->preview_port)) ? -1 : 0;
}

static void now_rfc3339(char out[40])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* Returns 0, or an exit code. */
static int build_message(const struct enqueue_opts *o, struct message *m)
{
    json_object *obj = json_object_new_object(), *argv = NULL;
    char id[SBX_ID_MAX + 1], when[40];
    int rc = SBX_EXIT_FAIL, r;

    if (!obj)
        goto oom;
    if (!o->job_id)
        sbx_new_job_id(id);
    now_rfc3339(when);
    if (json_object_object_add(obj, "v", json_object_new_int(1)) ||
        add_string(obj, "job_id", o->job_id ? o->job_id : id) ||
        add_string(obj, "project_id", o->project))
        goto oom;
    if (o->ncmd > 0) {
        if (!(argv = json_object_new_array()) || json_object_object_add(obj, "command", argv))
            goto oom;
        for (int i = 0; i < o->ncmd; i++) {
            json_object *s = json_object_new_string(o->cmd[i]);
            if (!s || json_object_array_add(argv, s))
                goto oom;
        }
    } else if (add_string(obj, "script", o->script)) {
        goto oom;
    }
    if ((r = add_map(obj, "env", o->env, o->nenv, true)) ||
        (r = add_map(obj, "files", o->files, o->nfiles, false))) {
        if (r == -2) {
            rc = SBX_EXIT_USAGE;
            goto out;
        }
        goto oom;
    }
    if (o->timeout && add_number(obj, "timeout_s", o->timeout))
        goto oom;
    if (o->network && json_object_object_add(obj, "network", json_object_new_boolean(1)))
        goto oom;
    if ((o->provider && add_string(obj, "provider", o->provider)) ||
        (o->image && add_string(obj, "image", o->image)) ||
        (o->session && add_session(obj, o)) ||
        add_string(obj, "submitted_at", when))
        goto oom;

    size_t len;
    const char *text = json_object_to_json_string_length(
        obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
    if (!text || !(m->buf = malloc(len + 1)))
        goto oom;
    memcpy(m->buf, text, len + 1);
    m->len = len;
    rc = 0;
    goto out;
oom:
    fprintf(stderr, "sbx enqueue: out of memory\n");
out:
    json_object_put(obj);
    return rc;
}

/* ---- reading messages ---- */

static int read_input(const char *path, char **out, size_t *outlen)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = SBX_EXIT_USAGE;

    if (!f) {
        fprintf(stderr, "sbx enqueue: %s: %s\n", path, strerror(errno));
        return rc;
    }
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 64 * 1024;
            char *nb;
            if (ncap > INPUT_MAX + 1)
                ncap = INPUT_MAX + 1;
            if (ncap == cap) {
                fprintf(stderr, "sbx enqueue: %s: more than %u bytes; split the input\n", path, INPUT_MAX);
                goto out;
            }
            if (!(nb = realloc(buf, ncap + 1))) {
                fprintf(stderr, "sbx enqueue: out of memory\n");
                rc = SBX_EXIT_FAIL;
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                fprintf(stderr, "sbx enqueue: %s: read error\n", path);
                goto out;
            }
            break;
        }
    }
    buf = buf ? buf : malloc(1);
    if (!buf) {
        rc = SBX_EXIT_FAIL;
        goto out;
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    if (f != stdin)
        fclose(f);
    return rc;
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

/* One JSON document spread over lines (pretty-printed) or one per line? The
 * input is one document when it all parses as one value. */
static bool single_document(const char *buf, size_t len)
{
    size_t lines = 0;
    for (const char *p = buf, *end = buf + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        lines += !blank(p, n);
        p += n + 1;
    }
    if (lines <= 1)
        return true;
    if (len > INT32_MAX)
        return false;
    struct json_tokener *tok = json_tokener_new();
    if (!tok)
        return false;
    json_object *v = json_tokener_parse_ex(tok, buf, (int)len);
    bool one = v && blank(buf + json_tokener_get_parse_end(tok), len - json_tokener_get_parse_end(tok));
    json_object_put(v);
    json_tokener_free(tok);
    return one;
}

static int add_message(struct message **msgs, size_t *n, size_t *cap, const char *p, size_t len, size_t line)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct message *nm = realloc(*msgs, ncap * sizeof *nm);
        if (!nm)
            return -1;
        *msgs = nm;
        *cap = ncap;
    }
    struct message *m = &(*msgs)[*n];
    memset(m, 0, sizeof *m);
    if (!(m->buf = malloc(len + 1)))
        return -1;
    memcpy(m->buf, p, len);
    m->buf[len] = '\0';
    m->len = len;
    m->line = line;
    (*n)++;
    return 0;
}

/* A message that is a JSON object without "job_id" gets a new one, written
 * in front of its other members so the rest of the bytes stay as given. */
static int ensure_job_id(struct message *m)
{
    json_object *v = m->len <= SBX_MSG_MAX_BYTES ? json_tokener_parse(m->buf) : NULL;
    int rc = 0;
    if (!v || !json_object_is_type(v, json_type_object) || json_object_object_get_ex(v, "job_id", NULL))
        goto out;
    char id[SBX_ID_MAX + 1], head[SBX_ID_MAX + 16];
    sbx_new_job_id(id);
    const char *brace = memchr(m->buf, '{', m->len);
    if (!brace)
        goto out;
    int hn = snprintf(head, sizeof head, "\"job_id\":\"%s\"%s", id,
                      json_object_object_length(v) ? "," : "");
    size_t at = (size_t)(brace - m->buf) + 1;
    char *nb = malloc(m->len + (size_t)hn + 1);
    if (!nb) {
        rc = -1;
        goto out;
    }
    memcpy(nb, m->buf, at);
    memcpy(nb + at, head, (size_t)hn);
    memcpy(nb + at + hn, m->buf + at, m->len - at + 1);
    free(m->buf);
    m->buf = nb;
    m->len += (size_t)hn;
out:
    json_object_put(v);
    return rc;
}

static int read_messages(const char *path, bool raw, struct message **msgs, size_t *n)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = read_input(path, &buf, &len);
    if (rc)
        return rc;
    rc = SBX_EXIT_FAIL;
    if (raw || single_document(buf, len)) {
        if (add_message(msgs, n, &cap, buf, len, 0))
            goto oom;
    } else {
        size_t line = 0;
        for (const char *p = buf, *end = buf + len; p < end;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
            line++;
            if (!blank(p, l) && add_message(msgs, n, &cap, p, l, line))
                goto oom;
            p += l + 1;
        }
    }
    if (*n == 0) {
        fprintf(stderr, "sbx enqueue: %s: no message in it\n", path);
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    for (size_t i = 0; !raw && i < *n; i++)
        if (ensure_job_id(&(*msgs)[i]))
            goto oom;
    rc = 0;
    goto out;
oom:
    fprintf(stderr, "sbx enqueue: out of memory\n");
out:
    free(buf);
    return rc;
}

/* ---- sending ---- */

static void on_delivered(void *arg, const char *job_id, sbx_err err, const char *errstr)
{
    struct message *m = arg;
    (void)job_id;
    m->done = true;
    m->err = err;
    snprintf(m->errstr, sizeof m->errstr, "%s", errstr ? errstr : "");
}

static void where(const struct message *m, char *out, size_t outlen)
{
    if (m->line)
        snprintf(out, outlen, "line %zu", m->line);
    else
        snprintf(out, outlen, "message");
}

static int send_all(const struct sbx__cli_config *cfg, const struct enqueue_opts *o,
                    struct message *msgs, size_t n)
{
    char err[512], timeout_setting[48], at[32];
    sbx_producer *p = NULL;
    int rc = SBX_EXIT_FAIL;
    const char **extra = calloc(o->nkafka + 2, sizeof *extra);
    struct sbx__cli_kafka *settings = NULL;
    int wait_ms = o->delivery_timeout_s * 1000;

    if (!extra) {
        fprintf(stderr, "sbx enqueue: out of memory\n");
        return SBX_EXIT_FAIL;
    }
    if (!cfg->brokers || !*cfg->brokers) {
        fprintf(stderr, "sbx enqueue: no Kafka brokers configured: set SBX_BROKERS "
                        "(e.g. 127.0.0.1:9092) or pass --brokers\n");
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    /* librdkafka gives up on a message when we stop waiting for it, so every
     * outcome is known when we exit; -X settings may still override. */
    snprintf(timeout_setting, sizeof timeout_setting, "message.timeout.ms=%d", wait_ms);
    extra[0] = timeout_setting;
    memcpy(extra + 1, o->kafka, o->nkafka * sizeof *extra);
    if (!(settings = sbx__cli_kafka_settings("enqueue", extra))) {
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    if (sbx_producer_new(cfg->brokers, cfg->topic, settings->kv, &p, err, sizeof err)) {
        fprintf(stderr, "sbx enqueue: %s\n", err);
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    /* librdkafka holds its own copy of the password now. */
    sbx__cli_kafka_free(settings);
    settings = NULL;
    if (!o->raw && !o->no_database && cfg->database_url && *cfg->database_url &&
        sbx_producer_set_database(p, cfg->database_url, err, sizeof err)) {
        fprintf(stderr, "sbx enqueue: %s; nothing sent (--no-database sends without "
                        "recording)\n", err);
        goto out;
    }

    if (o->raw) {
        char id[SBX_ID_MAX + 1];
        if (sbx_producer_send_raw(p, o->project, msgs[0].buf, msgs[0].len, wait_ms + 5000, err, sizeof err)) {
            fprintf(stderr, "sbx enqueue: %s\n", err);
            goto out;
        }
        sbx_job_peek_ids(msgs[0].buf, msgs[0].len, id, NULL);
        if (id[0])
            printf("%s\n", id);
        else
            fprintf(stderr, "sbx enqueue: sent %zu raw bytes (no job id in them)\n", msgs[0].len);
        rc = SBX_EXIT_OK;
        goto out;
    }
    if (n == 1) {
        if (sbx_producer_send(p, msgs[0].buf, msgs[0].len, wait_ms + 5000, msgs[0].job_id, err, sizeof err)) {
            fprintf(stderr, "sbx enqueue: %s\n", err);
            goto out;
        }
        printf("%s\n", msgs[0].job_id);
        rc = SBX_EXIT_OK;
        goto out;
    }

    size_t queued = 0, failed = 0;
    for (; queued < n; queued++) {
        struct message *m = &msgs[queued];
        if (sbx_producer_queue(p, m->buf, m->len, on_delivered, m, m->job_id, err, sizeof err)) {
            where(m, at, sizeof at);
            fprintf(stderr, "sbx enqueue: %s: %s; not sending it or the %zu after it\n", at, err,
                    n - queued - 1);
            failed += n - queued;
            break;
        }
    }
    if (sbx_producer_flush(p, wait_ms + 5000))
        fprintf(stderr, "sbx enqueue: some delivery reports did not come in time\n");
    for (size_t i = 0; i < queued; i++) {
        struct message *m = &msgs[i];
        if (m->done && m->err == SBX_OK) {
            printf("%s\n", m->job_id);
            continue;
        }
        where(m, at, sizeof at);
        fprintf(stderr, "sbx enqueue: %s (job %s): %s\n", at, m->job_id,
                m->done ? m->errstr : "delivery not confirmed");
        failed++;
    }
    rc = failed ? SBX_EXIT_FAIL : SBX_EXIT_OK;
out:
    sbx_producer_free(p);
    sbx__cli_kafka_free(settings);
    free(extra);
    return rc;
}

int sbx__cmd_enqueue(int argc, char **argv, struct sbx__cli_config *cfg)
{
    struct enqueue_opts o = { 0 };
    struct message *msgs = NULL;
    size_t n = 0;
    char err[512], at[32];
    int rc = parse_opts(argc, argv, cfg, &o);

    if (rc) {
        rc = rc < 0 ? SBX_EXIT_OK : rc;
        goto out;
    }
    if (o.json) {
        rc = read_messages(o.json, o.raw, &msgs, &n);
    } else {
        msgs = calloc(1, sizeof *msgs);
        rc = msgs ? build_message(&o, msgs) : SBX_EXIT_FAIL;
        n = msgs && rc == 0 ? 1 : 0;
    }
    if (rc)
        goto out;

    /* All or nothing: every message is checked before the first is sent. */
    size_t refused = 0;
    for (size_t i = 0; !o.raw && i < n; i++) {
        sbx_reject why;
        if (sbx_job_parse(msgs[i].buf, msgs[i].len, NULL, &why, err, sizeof err) == SBX_OK)
            continue;
        where(&msgs[i], at, sizeof at);
        fprintf(stderr, "sbx enqueue: %s refused (%s): %s\n", at, sbx_reject_name(why), err);
        refused++;
    }
    if (refused) {
        fprintf(stderr, "sbx enqueue: nothing sent (%zu of %zu message%s refused)\n", refused, n,
                n == 1 ? "" : "s");
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    rc = send_all(cfg, &o, msgs, n);
out:
    for (size_t i = 0; i < n; i++)
        free(msgs[i].buf);
    free(msgs);
    free(o.env);
    free(o.files);
    free(o.kafka);
    if (fflush(stdout) != 0 && rc == SBX_EXIT_OK)
        rc = SBX_EXIT_FAIL;
    return rc;
}
