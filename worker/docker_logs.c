/* docker_logs.c — reads a container's multiplexed, timestamped log and
 * delivers each byte of its text once across reads; see docker_logs.h.
 */
#include "docker_logs.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t sbx__docker_log_ts(const char *s)
{
    struct tm tm = {0};
    int64_t ns = 0, off = 0;
    int n = 0, digits = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6 || n != 19)
        return -1;
    s += n;
    if (*s == '.')
        for (s++; *s >= '0' && *s <= '9'; s++)
            if (digits++ < 9)
                ns = ns * 10 + (*s - '0');
    for (; digits < 9; digits++)
        ns *= 10;
    if (*s == '+' || *s == '-') {
        int hh, mm;
        if (sscanf(s + 1, "%2d:%2d", &hh, &mm) != 2 || strlen(s) != 6)
            return -1;
        off = (int64_t)(hh * 3600 + mm * 60) * (*s == '-' ? -1 : 1);
        s += 6;
    } else if (*s == 'Z') {
        s++;
    } else {
        return -1;
    }
    if (*s)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return ((int64_t)timegm(&tm) - off) * 1000000000 + ns;
}

void sbx__docker_logs_init(sbx_docker_logs *l, sbx_docker_deliver_fn deliver, void *arg)
{
    memset(l, 0, sizeof(*l));
    l->deliver = deliver;
    l->arg = arg;
    sbx__docker_logs_read(l);
}

void sbx__docker_logs_plain(sbx_docker_logs *l) { l->plain = 1; }

void sbx__docker_logs_read_done(sbx_docker_logs *l)
{
    if (l->read_max_ts > l->done_ts)
        l->done_ts = l->read_max_ts;
}

void sbx__docker_logs_read(sbx_docker_logs *l)
{
    l->hdr_have = 0;
    l->frame_left = 0;
    l->ts_have = 0;
    l->in_ts = 0;
    l->deliver_mode = 0;
    l->skip = 0;
    l->raw = 0;
    l->read_max_ts = 0;
    for (int i = 0; i < 3; i++) {
        l->seen_ts[i] = -1;
        l->seen_n[i] = 0;
    }
}

static void out(sbx_docker_logs *l, int stream, const char *p, size_t n)
{
    if (n > 0)
        l->deliver(l->arg, (sbx_stream)stream, p, n);
}

/* A message's timestamp is read: whether it (and how much of it) goes
 * out, against the stream's cursor. */
static void message_begins(sbx_docker_logs *l)
{
    int s = l->stream;
    int64_t ts = sbx__docker_log_ts(l->ts);
    unsigned k;

    l->skip = 0;
    l->deliver_mode = 1;
    if (ts < 0) {
        /* Not stamped: deliver what came, nothing to de-duplicate against. */
        out(l, s, l->ts, l->ts_have);
        out(l, s, " ", 1);
        l->deliver_mode = 2;
        return;
    }
    if (ts > l->read_max_ts)
        l->read_max_ts = ts;
    if (ts != l->seen_ts[s]) {
        l->seen_ts[s] = ts;
        l->seen_n[s] = 0;
    }
    k = l->seen_n[s]++;
    if (ts < l->cur[s].ts_ns || (ts == l->cur[s].ts_ns && k < l->cur[s].n)) {
        l->deliver_mode = 0;
        return;
    }
    if (ts > l->cur[s].ts_ns) {
        l->cur[s].ts_ns = ts;
        l->cur[s].n = 0;
        l->cur[s].partial = 0;
    }
    l->skip = l->cur[s].partial;
}

static void message_text(sbx_docker_logs *l, const char *p, size_t n)
{
    if (!l->deliver_mode)
        return;
    if (l->skip) {
        size_t k = l->skip < n ? l->skip : n;
        l->skip -= k;
        p += k;
        n -= k;
    }
    out(l, l->stream, p, n);
    if (l->deliver_mode == 1)
        l->cur[l->stream].partial += n;
}

static void message_ends(sbx_docker_logs *l)
{
    if (l->in_ts) /* a frame shorter than a timestamp: keep its bytes */
        out(l, l->stream, l->ts, l->ts_have);
    else if (l->deliver_mode == 1) {
        l->cur[l->stream].n++;
        l->cur[l->stream].partial = 0;
    }
    l->in_ts = 0;
}

void sbx__docker_logs_feed(sbx_docker_logs *l, const char *p, size_t n)
{
    while (n > 0) {
        size_t k;
        if (l->raw) {
            out(l, SBX_STREAM_STDOUT, p, n);
            return;
        }
        if (l->frame_left == 0) {
            k = 8 - l->hdr_have < n ? 8 - l->hdr_have : n;
            memcpy(l->hdr + l->hdr_have, p, k);
            l->hdr_have += k;
            p += k;
            n -= k;
            if (l->hdr_have < 8)
                return;
            l->hdr_have = 0;
            if (l->hdr[0] > 2 || l->hdr[1] || l->hdr[2] || l->hdr[3]) {
                /* Not a frame header: a TTY stream or a confused engine.
                 * Keep the bytes rather than guess at frames. */
                l->raw = 1;
                out(l, SBX_STREAM_STDOUT, (const char *)l->hdr, 8);
                continue;
            }
            l->stream = l->hdr[0] == 2 ? SBX_STREAM_STDERR : SBX_STREAM_STDOUT;
            l->frame_left = (uint32_t)l->hdr[4] << 24 | (uint32_t)l->hdr[5] << 16 |
                            (uint32_t)l->hdr[6] << 8 | (uint32_t)l->hdr[7];
            l->in_ts = l->frame_left > 0 && !l->plain;
            l->ts_have = 0;
            l->skip = 0;
            if (l->plain)
                l->deliver_mode = 2;
            continue;
        }
        k = l->frame_left < n ? l->frame_left : n;
        if (l->in_ts) {
            const char *sp = memchr(p, ' ', k);
            size_t take = sp ? (size_t)(sp - p) : k;
            if (l->ts_have + take > SBX_DOCKER_LOG_TS_MAX) {
                /* Too long for a timestamp: the text starts here. */
                l->in_ts = 0;
                l->deliver_mode = 2;
                out(l, l->stream, l->ts, l->ts_have);
                continue;
            }
            memcpy(l->ts + l->ts_have, p, take);
            l->ts_have += take;
            l->ts[l->ts_have] = '\0';
            if (sp) {
                take++; /* the space */
                l->in_ts = 0;
                message_begins(l);
            }
            k = take;
        } else {
            message_text(l, p, k);
        }
        l->frame_left -= (uint32_t)k;
        p += k;
        n -= k;
        if (l->frame_left == 0)
            message_ends(l);
    }
}

/* The second of margin covers the microseconds by which the two streams'
 * stamps and their order in the log can differ; engines take whole
 * seconds anyway. Without a read to the end yet: a stream that delivered
 * nothing counts as the latest one (its messages before that were
 * delivered: none). The first rule keeps a stream that printed once long
 * ago from making every read start there. */
int64_t sbx__docker_logs_since_s(const sbx_docker_logs *l)
{
    int64_t lo, hi = 0;
    if (l->done_ts > 0)
        return l->done_ts / 1000000000 - 1;
    for (int i = SBX_STREAM_STDOUT; i <= SBX_STREAM_STDERR; i++)
        if (l->cur[i].ts_ns > hi)
            hi = l->cur[i].ts_ns;
    if (hi == 0)
        return 0;
    lo = hi;
    for (int i = SBX_STREAM_STDOUT; i <= SBX_STREAM_STDERR; i++)
        if (l->cur[i].ts_ns && l->cur[i].ts_ns < lo)
            lo = l->cur[i].ts_ns;
    return lo / 1000000000 - 1 > 0 ? lo / 1000000000 - 1 : 0;
}
