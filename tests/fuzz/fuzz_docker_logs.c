/* fuzz_docker_logs.c — libFuzzer target for the docker provider's log
 * reader (worker/docker_logs.c), which reads what an engine sends.
 *
 * The input is used twice:
 *  - as raw bytes, fed to a reader in pieces whose sizes the input picks,
 *    twice (two reads), then once to a reader of an exec's stream (no
 *    timestamps): no crash, no read past the input, each delivery
 *    non-empty and of stream 1 or 2;
 *  - as a program that builds a valid log: messages on stdout or stderr
 *    with text from the input, stamped as the engines stamp them
 *    (nanoseconds, or whole seconds like Podman; monotonic per stream,
 *    the two streams up to half a second apart). Reader A reads it once.
 *    Reader B reads a first part (the log as it was at some moment, read
 *    to its end; or the whole log, dropped after any byte), then a second
 *    read of what the engine would send for B's `since`. Per stream, A
 *    delivers every text exactly, and B delivers exactly what A did.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "docker_logs.h"

#define MAX_MSGS 256
#define OUT_MAX (1 << 16)

typedef struct sink {
    char s[3][OUT_MAX];
    size_t n[3];
} sink;

static void on_out(void *arg, sbx_stream stream, const char *p, size_t n)
{
    sink *k = arg;
    if ((stream != SBX_STREAM_STDOUT && stream != SBX_STREAM_STDERR) || n == 0)
        abort();
    if (k->n[stream] + n > OUT_MAX) /* past what any input here can make */
        abort();
    memcpy(k->s[stream] + k->n[stream], p, n);
    k->n[stream] += n;
}

static void feed(sbx_docker_logs *l, const uint8_t *p, size_t n, size_t piece)
{
    for (size_t i = 0; i < n; i += piece)
        sbx__docker_logs_feed(l, (const char *)p + i, n - i < piece ? n - i : piece);
}

typedef struct msg {
    int stream;
    int64_t ts;          /* ns */
    size_t off, len;     /* frame bytes in the log */
    const uint8_t *text;
    size_t text_len;
} msg;

static size_t put_frame(uint8_t *out, const msg *m, int whole_seconds)
{
    char ts[64];
    time_t sec = (time_t)(m->ts / 1000000000);
    struct tm tm;
    size_t n, plen;
    gmtime_r(&sec, &tm);
    n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    if (whole_seconds)
        n += (size_t)snprintf(ts + n, sizeof(ts) - n, "Z ");
    else
        n += (size_t)snprintf(ts + n, sizeof(ts) - n, ".%09lldZ ", (long long)(m->ts % 1000000000));
    plen = n + m->text_len;
    out[0] = (uint8_t)m->stream;
    out[1] = out[2] = out[3] = 0;
    out[4] = (uint8_t)(plen >> 24);
    out[5] = (uint8_t)(plen >> 16);
    out[6] = (uint8_t)(plen >> 8);
    out[7] = (uint8_t)plen;
    memcpy(out + 8, ts, n);
    memcpy(out + 8 + n, m->text, m->text_len);
    return 8 + plen;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sink a, b;
    static uint8_t log[MAX_MSGS * (8 + 40 + 16)];
    static msg msgs[MAX_MSGS];
    sbx_docker_logs la, lb;
    size_t piece, nm = 0, len = 0, pos, cut;
    int whole, complete;
    int64_t clock = 1764880000LL * 1000000000, last[3] = {0, 0, 0};

    if (size < 4)
        return 0;
    piece = (size_t)data[0] % 17 + 1;
    whole = data[1] & 1;
    complete = data[1] & 2;

    /* Raw bytes, twice: robustness only. */
    memset(&a, 0, sizeof(a));
    sbx__docker_logs_init(&la, on_out, &a);
    feed(&la, data, size, piece);
    sbx__docker_logs_read(&la);
    feed(&la, data, size, piece + 3);
    (void)sbx__docker_logs_since_s(&la);
    /* The same as an exec's stream (frames without timestamps). */
    memset(&a, 0, sizeof(a));
    sbx__docker_logs_init(&la, on_out, &a);
    sbx__docker_logs_plain(&la);
    feed(&la, data, size, piece);

    /* The program: per message 2 bytes (stream and time step; skew) and
     * up to 15 bytes of text. */
    pos = 4;
    while (pos + 3 <= size && nm < MAX_MSGS) {
        msg *m = &msgs[nm];
        uint8_t op = data[pos], sk = data[pos + 1];
        size_t tl = (size_t)(data[pos + 2] & 15);
        pos += 3;
        if (tl > size - pos)
            tl = size - pos;
        m->stream = op & 1 ? SBX_STREAM_STDERR : SBX_STREAM_STDOUT;
        clock += (int64_t)(op >> 1) * (op & 0x80 ? 1000000000 : 1000);
        m->ts = clock - (int64_t)sk * 1953125; /* skew up to 0.5 s */
        if (whole)
            m->ts -= m->ts % 1000000000;
        if (m->ts < last[m->stream])
            m->ts = last[m->stream];
        last[m->stream] = m->ts;
        m->text = data + pos;
        m->text_len = tl;
        pos += tl;
        m->off = len;
        m->len = put_frame(log + len, m, whole);
        len += m->len;
        nm++;
    }
    if (nm == 0)
        return 0;

    /* A: the whole log at once. */
    memset(&a, 0, sizeof(a));
    sbx__docker_logs_init(&la, on_out, &a);
    feed(&la, log, len, piece);
    for (int s = 1; s <= 2; s++) {
        size_t off = 0;
        for (size_t i = 0; i < nm; i++) {
            if (msgs[i].stream != s)
                continue;
            if (off + msgs[i].text_len > a.n[s] || memcmp(a.s[s] + off, msgs[i].text, msgs[i].text_len))
                abort(); /* one read lost or changed a message */
            off += msgs[i].text_len;
        }
        if (off != a.n[s])
            abort();
    }

    /* B: a first read, then what the engine sends for B's since. */
    memset(&b, 0, sizeof(b));
    sbx__docker_logs_init(&lb, on_out, &b);
    if (complete) {
        size_t m = (size_t)data[2] % (nm + 1);
        cut = m < nm ? msgs[m].off : len;
        feed(&lb, log, cut, piece);
        sbx__docker_logs_read_done(&lb);
    } else {
        cut = ((size_t)data[2] << 8 | data[3]) % (len + 1);
        feed(&lb, log, cut, piece);
    }
    {
        int64_t since = sbx__docker_logs_since_s(&lb) * 1000000000;
        sbx__docker_logs_read(&lb);
        for (size_t i = 0; i < nm; i++)
            if (msgs[i].ts >= since)
                feed(&lb, log + msgs[i].off, msgs[i].len, piece);
    }
    for (int s = 1; s <= 2; s++)
        if (b.n[s] != a.n[s] || memcmp(b.s[s], a.s[s], a.n[s]) != 0) {
            fprintf(stderr, "stream %d: two reads (cut at %zu of %zu, %s) differ from one\n", s, cut,
                    len, complete ? "read to its end" : "dropped");
            abort();
        }
    return 0;
}
