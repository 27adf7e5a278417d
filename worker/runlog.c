/* runlog.c — a build's live output into sbx.run_logs (runlog.h says what
 * and why: the cleaning rule, when batches go, the cap and the memory).
 *
 * Shape: bytes go through a per-stream decoder (UTF-8 state and a pending
 * CR, so a character or a CR LF split between two writes is joined) that
 * emits clean characters with the raw bytes they stand for; characters go
 * into the open chunk of their stream; chunks wait on a list until a batch
 * takes them, which is when they get their seq. Nothing is cleaned twice and
 * nothing is copied but into the chunk and into db.c's statement.
 */
#include "runlog.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assert.h"
#include "log.h"

static const char REPLACEMENT[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* 0 is sbx's own voice (the truncation marker). */
static const char *const stream_names[] = {"sbx", "stdout", "stderr"};
#define NSTREAMS 3

typedef struct decoder {
    unsigned char part[4];  /* a character begun, not finished */
    int have, need;
    int cr;                 /* a CR waits for what follows */
} decoder;

typedef struct chunk {
    int stream;
    char *data;             /* RUNLOG_CHUNK_MAX + 1 (NUL) when open, else as sent */
    size_t len;
    size_t raw;             /* raw bytes behind data */
    size_t nl_len, nl_raw;  /* the same, up to and including its last '\n' */
} chunk;

struct sbx_runlog {
    sbx_loop *loop;
    sbx_db *db;
    char *job_id;
    int64_t token;
    int attempt;
    size_t max_bytes;
    sbx_runlog_send_fn send;
    void *send_arg;
    sbx_runlog **registry;
    sbx_runlog *next, **pprev;  /* on *registry */

    decoder dec[NSTREAMS];
    chunk *ch;              /* waiting, oldest first; the last may be open */
    int nch, capch;
    int open;               /* ch[nch-1] takes more of its stream */
    size_t waiting;         /* text bytes in ch */
    int next_seq;
    int inflight;           /* batches sent, not answered */
    int ended;
    int fenced;             /* append_logs said false: a newer owner holds the run */
    int truncated;
    int warned;             /* said once that a batch could not be queued */
    uint64_t raw_total, text_total, dropped;
    sbx_timer flush_t;
};

/* ---- chunks ---- */

static void chunk_free(chunk *c)
{
    free(c->data);
    c->data = NULL;
}

/* A new open chunk of stream at the end of the list. */
static chunk *chunk_open(sbx_runlog *l, int stream)
{
    chunk *c;
    if (l->nch == l->capch) {
        int cap = l->capch ? l->capch * 2 : 8;
        chunk *n = realloc(l->ch, (size_t)cap * sizeof(*n));
        if (!n)
            return NULL;
        l->ch = n;
        l->capch = cap;
    }
    c = &l->ch[l->nch];
    memset(c, 0, sizeof(*c));
    c->stream = stream;
    c->data = malloc(RUNLOG_CHUNK_MAX + 1);
    if (!c->data)
        return NULL;
    c->data[0] = '\0';
    l->nch++;
    l->open = 1;
    return c;
}

/* The open chunk gives what follows its last newline to a new open chunk:
 * chunks end at line ends when they can. Returns the new open chunk (the
 * list may have moved), NULL when out of memory. */
static chunk *chunk_split(sbx_runlog *l)
{
    chunk *old = &l->ch[l->nch - 1], *c;
    int stream = old->stream;
    if (old->nl_len == 0 || old->nl_len == old->len) {
        l->open = 0;
        return chunk_open(l, stream);
    }
    c = chunk_open(l, stream);
    if (!c)
        return NULL;
    old = &l->ch[l->nch - 2];
    c->len = old->len - old->nl_len;
    c->raw = old->raw - old->nl_raw;
    memcpy(c->data, old->data + old->nl_len, c->len);
    c->data[c->len] = '\0';
    old->len = old->nl_len;
    old->raw = old->nl_raw;
    old->data[old->len] = '\0';
    return c;
}

/* One clean character (or a line's end) of stream, standing for raw bytes
 * of output. Past the cap only the raw bytes are counted. */
static void put(sbx_runlog *l, int stream, const char *s, size_t n, size_t raw)
{
    chunk *c = l->open ? &l->ch[l->nch - 1] : NULL;
    if (l->truncated || l->text_total + n > l->max_bytes) {
        l->truncated = 1;
        l->dropped += raw;
        return;
    }
    if (c && c->stream != stream) {
        l->open = 0;
        c = NULL;
    }
    if (!c) {
        c = chunk_open(l, stream);
    } else if (c->len + n > RUNLOG_CHUNK_MAX) {
        c = chunk_split(l);
        /* What followed the last newline may itself nearly fill a chunk:
         * a line longer than a chunk is cut at a character. */
        if (c && c->len + n > RUNLOG_CHUNK_MAX) {
            l->open = 0;
            c = chunk_open(l, stream);
        }
    }
    if (!c) {
        /* Out of memory: this character is lost, counted as dropped. */
        l->open = 0;
        l->dropped += raw;
        return;
    }
    memcpy(c->data + c->len, s, n);
    c->len += n;
    c->data[c->len] = '\0';
    c->raw += raw;
    if (n == 1 && s[0] == '\n') {
        c->nl_len = c->len;
        c->nl_raw = c->raw;
    }
    l->waiting += n;
    l->text_total += n;
}

/* ---- cleaning (the rule is in runlog.h) ---- */

static void put_replacement(sbx_runlog *l, int stream, size_t raw)
{
    put(l, stream, REPLACEMENT, 3, raw);
}

static void decode(sbx_runlog *l, int stream, const unsigned char *p, size_t n)
{
    decoder *d = &l->dec[stream];
    for (size_t i = 0; i < n; i++) {
        unsigned c = p[i];
        unsigned lo = 0x80, hi = 0xBF;
    again:
        if (d->have == 0) {
            if (d->cr) {
                d->cr = 0;
                if (c == '\n') {
                    put(l, stream, "\n", 1, 2);
                    continue;
                }
                put(l, stream, "\n", 1, 1);
            }
            if (c < 0x80) {
                char ch = (char)c;
                if (c == '\r')
                    d->cr = 1;
                else if (c == '\n' || c == '\t' || (c >= 0x20 && c != 0x7F))
                    put(l, stream, &ch, 1, 1);
                else
                    put_replacement(l, stream, 1);
                continue;
            }
            d->need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                    : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
            if (!d->need) {
                put_replacement(l, stream, 1);
                continue;
            }
            d->part[0] = (unsigned char)c;
            d->have = 1;
            continue;
        }
        /* The second byte's range excludes overlongs, surrogates and
         * code points past U+10FFFF. */
        if (d->have == 1) {
            switch (d->part[0]) {
            case 0xE0: lo = 0xA0; break;
            case 0xED: hi = 0x9F; break;
            case 0xF0: lo = 0x90; break;
            case 0xF4: hi = 0x8F; break;
            default: break;
            }
        }
        if (c < lo || c > hi) {
            /* The maximal subpart so far is one U+FFFD; c starts afresh. */
            put_replacement(l, stream, (size_t)d->have);
            d->have = 0;
            lo = 0x80;
            hi = 0xBF;
            goto again;
        }
        d->part[d->have++] = (unsigned char)c;
        if (d->have == d->need) {
            /* C1 controls: U+0080..U+009F, C2 80..C2 9F. */
            if (d->need == 2 && d->part[0] == 0xC2 && d->part[1] < 0xA0)
                put_replacement(l, stream, 2);
            else
                put(l, stream, (const char *)d->part, (size_t)d->need, (size_t)d->need);
            d->have = 0;
        }
    }
}

/* The end of the output: a character begun and never finished, a CR. */
static void decode_end(sbx_runlog *l, int stream)
{
    decoder *d = &l->dec[stream];
    if (d->have)
        put_replacement(l, stream, (size_t)d->have);
    d->have = 0;
    if (d->cr)
        put(l, stream, "\n", 1, 1);
    d->cr = 0;
}

/* ---- batches ---- */

static int send_db(void *arg, sbx_runlog *l, const sbx_runlog_batch *b);

/* Whether a batch of whole lines could go: a closed chunk, or a newline in
 * the open one. */
static int lines_waiting(const sbx_runlog *l)
{
    if (l->nch == 0)
        return 0;
    if (l->nch > 1 || !l->open)
        return 1;
    return l->ch[0].nl_len > 0;
}

static void maybe_free(sbx_runlog *l);

/* Sends what waits: everything (whole), or up to the open chunk's last
 * newline. Returns 0 when nothing is left to send now. */
static int flush(sbx_runlog *l, int whole)
{
    int n = l->nch, rc = 0, i;
    int *seq = NULL;
    const char **stream = NULL, **data = NULL;
    size_t *len = NULL, *bytes = NULL;
    sbx_runlog_batch b;

    if (n == 0 || l->fenced)
        goto out;
    if (!whole && l->open) {
        chunk *last = &l->ch[n - 1];
        if (last->nl_len > 0 && last->nl_len < last->len) {
            if (!chunk_split(l)) {
                rc = -ENOMEM;
                goto out;
            }
        } else if (last->nl_len == 0) {
            n--; /* the open chunk is a line begun: it waits */
        }
        /* nl_len == len: the open chunk ends a line, it goes whole */
    }
    if (n == 0)
        goto out;
    seq = malloc((size_t)n * sizeof(*seq));
    stream = malloc((size_t)n * sizeof(*stream));
    data = malloc((size_t)n * sizeof(*data));
    len = malloc((size_t)n * sizeof(*len));
    bytes = malloc((size_t)n * sizeof(*bytes));
    if (!seq || !stream || !data || !len || !bytes) {
        rc = -ENOMEM;
        goto out;
    }
    for (i = 0; i < n; i++) {
        seq[i] = l->next_seq + i;
        stream[i] = stream_names[l->ch[i].stream];
        data[i] = l->ch[i].data;
        len[i] = l->ch[i].len;
        bytes[i] = l->ch[i].raw;
    }
    b.n = n;
    b.seq = seq;
    b.stream = stream;
    b.data = data;
    b.len = len;
    b.bytes = bytes;
    rc = l->send ? l->send(l->send_arg, l, &b) : send_db(NULL, l, &b);
    if (rc)
        goto out;
    l->inflight++;
    l->next_seq += n;
    for (i = 0; i < n; i++) {
        l->waiting -= l->ch[i].len;
        chunk_free(&l->ch[i]);
    }
    if (n == l->nch)
        l->open = 0;
    memmove(l->ch, l->ch + n, (size_t)(l->nch - n) * sizeof(*l->ch));
    l->nch -= n;
out:
    free(seq);
    free(stream);
    free(data);
    free(len);
    free(bytes);
    if (l->fenced) {
        for (i = 0; i < l->nch; i++)
            chunk_free(&l->ch[i]);
        l->nch = 0;
        l->open = 0;
        l->waiting = 0;
    }
    if (rc && !l->warned) {
        l->warned = 1;
        sbx_warn("runlog", "job=%s attempt=%d: %d chunks wait, tried again every %d ms: %s",
                 l->job_id, l->attempt, l->nch, RUNLOG_FLUSH_MS, strerror(-rc));
    }
    if (l->nch == 0)
        sbx_timer_stop(l->loop, &l->flush_t);
    else if (!sbx_timer_active(&l->flush_t))
        sbx_timer_start(l->loop, &l->flush_t, RUNLOG_FLUSH_MS);
    return l->nch > 0;
}

static void on_flush_timer(sbx_timer *t)
{
    sbx_runlog *l = t->data;
    flush(l, 1);
    maybe_free(l);
}

/* PostgreSQL array literal of texts: every element quoted, \ and " escaped. */
static char *text_array(const char *const *v, const size_t *len, int n)
{
    size_t cap = 3;
    char *out, *p;
    for (int i = 0; i < n; i++) {
        cap += 3;
        for (size_t k = 0; k < len[i]; k++)
            cap += v[i][k] == '\\' || v[i][k] == '"' ? 2 : 1;
    }
    out = malloc(cap);
    if (!out)
        return NULL;
    p = out;
    *p++ = '{';
    for (int i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        for (size_t k = 0; k < len[i]; k++) {
            if (v[i][k] == '\\' || v[i][k] == '"')
                *p++ = '\\';
            *p++ = v[i][k];
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

/* Integer array literal; each number fits 21 bytes with its comma. */
static char *int_array(const int *iv, const size_t *zv, int n)
{
    char *out = malloc((size_t)n * 22 + 3), *p = out;
    if (!out)
        return NULL;
    *p++ = '{';
    for (int i = 0; i < n; i++)
        p += sprintf(p, "%s%llu", i ? "," : "",
                     iv ? (unsigned long long)iv[i] : (unsigned long long)zv[i]);
    *p++ = '}';
    *p = '\0';
    return out;
}

static void on_appended(void *arg, PGresult *res, const char *err)
{
    sbx_runlog *l = arg;
    if (!res)
        sbx_warn("runlog", "job=%s attempt=%d: append_logs: %s", l->job_id, l->attempt,
                 err ? err : "failed");
    else if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "f") == 0) {
        if (!l->fenced)
            sbx_info("runlog", "job=%s attempt=%d: a newer owner holds the run; its output "
                     "is not stored", l->job_id, l->attempt);
        l->fenced = 1;
    }
    sbx__runlog_sent(l);
}

static int send_db(void *arg, sbx_runlog *l, const sbx_runlog_batch *b)
{
    char tok[24], att[16];
    char *seq = int_array(b->seq, NULL, b->n), *bytes = int_array(NULL, b->bytes, b->n);
    char *data = text_array(b->data, b->len, b->n), *streams = NULL;
    size_t *slen = malloc((size_t)b->n * sizeof(*slen));
    int rc = -ENOMEM;
    (void)arg;
    if (slen) {
        for (int i = 0; i < b->n; i++)
            slen[i] = strlen(b->stream[i]);
        streams = text_array(b->stream, slen, b->n);
    }
    if (seq && bytes && streams && data) {
        const char *p[7] = {l->job_id, tok, att, seq, streams, data, bytes};
        snprintf(tok, sizeof(tok), "%" PRId64, l->token);
        snprintf(att, sizeof(att), "%d", l->attempt);
        rc = sbx_db_query(l->db, "SELECT sbx.append_logs($1,$2,$3,$4,$5,$6,$7)", 7, p,
                          on_appended, l);
    }
    free(slen);
    free(seq);
    free(bytes);
    free(streams);
    free(data);
    return rc;
}

/* ---- the runlog ---- */

sbx_runlog *sbx__runlog_new(const sbx_runlog_cfg *cfg)
{
    sbx_runlog *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->job_id = strdup(cfg->job_id);
    if (!l->job_id) {
        free(l);
        return NULL;
    }
    l->loop = cfg->loop;
    l->db = cfg->db;
    l->token = cfg->token;
    l->attempt = cfg->attempt;
    l->max_bytes = cfg->max_bytes;
    l->send = cfg->send;
    l->send_arg = cfg->send_arg;
    sbx_timer_init(&l->flush_t, on_flush_timer, l);
    if (cfg->registry) {
        l->registry = cfg->registry;
        l->next = *cfg->registry;
        if (l->next)
            l->next->pprev = &l->next;
        l->pprev = cfg->registry;
        *cfg->registry = l;
    }
    return l;
}

static void runlog_free(sbx_runlog *l)
{
    if (l->pprev) {
        *l->pprev = l->next;
        if (l->next)
            l->next->pprev = l->pprev;
    }
    sbx_timer_stop(l->loop, &l->flush_t);
    for (int i = 0; i < l->nch; i++)
        chunk_free(&l->ch[i]);
    free(l->ch);
    free(l->job_id);
    free(l);
}

static void maybe_free(sbx_runlog *l)
{
    if (l->ended && l->inflight == 0 && l->nch == 0)
        runlog_free(l);
}

void sbx__runlog_output(void *arg, sbx_stream stream, const char *data, size_t len)
{
    sbx_runlog *l = arg;
    int s = stream == SBX_STREAM_STDERR ? 2 : 1;
    if (!SBX_ASSERT(!l->ended))
        return;
    l->raw_total += len;
    decode(l, s, (const unsigned char *)data, len);
    if (l->waiting >= RUNLOG_BATCH_MAX)
        flush(l, 1);
    else if (l->inflight == 0 && lines_waiting(l))
        flush(l, 0);
    else if (l->nch > 0 && !sbx_timer_active(&l->flush_t))
        sbx_timer_start(l->loop, &l->flush_t, RUNLOG_FLUSH_MS);
}

void sbx__runlog_end(sbx_runlog *l)
{
    if (!l)
        return;
    if (!SBX_ASSERT(!l->ended))
        return;
    decode_end(l, 1);
    decode_end(l, 2);
    if (l->truncated) {
        char note[200];
        int n = snprintf(note, sizeof(note),
                         "[sbx] output truncated: past SBX_LOG_MAX_BYTES (%zu bytes of text); "
                         "%" PRIu64 " bytes of output dropped\n", l->max_bytes, l->dropped);
        chunk *c;
        l->open = 0;
        c = chunk_open(l, 0);
        if (c) {
            memcpy(c->data, note, (size_t)n + 1);
            c->len = (size_t)n;
            l->waiting += (size_t)n;
        }
    }
    l->ended = 1;
    flush(l, 1);
    maybe_free(l);
}

void sbx__runlog_free_all(sbx_runlog **registry)
{
    while (*registry)
        runlog_free(*registry);
}

void sbx__runlog_sent(sbx_runlog *l)
{
    if (!SBX_ASSERT(l->inflight > 0))
        return;
    l->inflight--;
    if (l->ended) {
        if (l->nch > 0)
            flush(l, 1); /* a batch that could not be queued at the end */
    } else if (lines_waiting(l)) {
        flush(l, 0);
    }
    maybe_free(l);
}

void sbx__runlog_stats(const sbx_runlog *l, sbx_runlog_stats *st)
{
    st->raw_bytes = l->raw_total;
    st->text_bytes = l->text_total;
    st->dropped_bytes = l->dropped;
    st->next_seq = l->next_seq;
    st->inflight = l->inflight;
}
