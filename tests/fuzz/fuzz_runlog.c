/* fuzz_runlog.c — libFuzzer target for worker/runlog.c, which cleans a
 * build's output (any bytes, any split) before it is stored and shown.
 *
 * The input: byte 0 picks the largest piece (1..64 bytes), byte 1 the
 * streams of the pieces (a bit each, repeating), byte 2 the cap (0: none);
 * the rest is the output, fed in pieces of sizes taken from the input;
 * the batches sent are answered after some pieces, not others.
 * Properties, whatever the bytes and the split:
 *  - every chunk is valid UTF-8 (RFC 3629, ref.h) with no control
 *    character but \n and \t, no DEL and no C1 control; seqs count from 0;
 *  - without a cap, each stream's text is the same as when that stream's
 *    bytes are fed in one piece (a split never changes the cleaning), and
 *    the chunks' bytes add up to the input;
 *  - with a cap, the text kept is at most the cap, and a last 'sbx' chunk
 *    is there exactly when something was dropped.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop.h"
#include "ref.h"
#include "runlog.h"

typedef struct sink {
    char *text[3];          /* sbx, stdout, stderr */
    size_t len[3];
    uint64_t bytes;
    int next_seq, chunks, marker, out;
} sink;

static int stream_index(const char *s)
{
    return strcmp(s, "stdout") == 0 ? 1 : strcmp(s, "stderr") == 0 ? 2 : 0;
}

static int collect(void *arg, sbx_runlog *l, const sbx_runlog_batch *b)
{
    sink *k = arg;
    (void)l;
    for (int i = 0; i < b->n; i++) {
        const unsigned char *d = (const unsigned char *)b->data[i];
        int s = stream_index(b->stream[i]);
        if (b->seq[i] != k->next_seq++ || k->marker)
            abort(); /* out of order, or something after the marker */
        if (!ref_utf8_valid(b->data[i], b->len[i]) || strlen(b->data[i]) != b->len[i])
            abort();
        for (size_t j = 0; j < b->len[i]; j++) {
            if ((d[j] < 0x20 && d[j] != '\n' && d[j] != '\t') || d[j] == 0x7f)
                abort();
            if (d[j] == 0xC2 && j + 1 < b->len[i] && d[j + 1] >= 0x80 && d[j + 1] < 0xA0)
                abort();
        }
        if (s == 0)
            k->marker = 1;
        k->text[s] = realloc(k->text[s], k->len[s] + b->len[i] + 1);
        memcpy(k->text[s] + k->len[s], b->data[i], b->len[i]);
        k->len[s] += b->len[i];
        k->bytes += b->bytes[i];
        k->chunks++;
    }
    k->out++;
    return 0;
}

static void drain(sbx_runlog *l, sink *k)
{
    while (k->out > 0) {
        k->out--;
        sbx__runlog_sent(l);
    }
}

static sbx_runlog *open_log(sbx_loop *loop, sink *k, size_t max)
{
    sbx_runlog_cfg c = {0};
    c.loop = loop;
    c.job_id = "fuzz";
    c.attempt = 1;
    c.max_bytes = max;
    c.send = collect;
    c.send_arg = k;
    return sbx__runlog_new(&c);
}

static void sink_free(sink *k)
{
    for (int i = 0; i < 3; i++)
        free(k->text[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sbx_loop *loop;
    sink split = {0}, whole[3] = {{0}};
    sbx_runlog *l;
    size_t maxpiece, cap, n, i, p = 0;
    unsigned streams;
    const uint8_t *out;
    uint8_t *per[3] = {NULL, NULL, NULL};
    size_t perlen[3] = {0, 0, 0};

    if (size < 3)
        return 0;
    if (!loop && sbx_loop_new(&loop) != 0)
        abort();
    maxpiece = 1 + data[0] % 64;
    streams = data[1];
    cap = data[2] ? (size_t)data[2] * 4 : (size_t)1 << 30;
    out = data + 3;
    n = size - 3;
    per[1] = malloc(n + 1);
    per[2] = malloc(n + 1);

    l = open_log(loop, &split, cap);
    for (i = 0; i < n; p++) {
        size_t piece = 1 + (out[i] + p) % maxpiece;
        int s = (streams >> (p % 8)) & 1 ? 2 : 1;
        if (piece > n - i)
            piece = n - i;
        memcpy(per[s] + perlen[s], out + i, piece);
        perlen[s] += piece;
        sbx__runlog_output(l, (sbx_stream)s, (const char *)out + i, piece);
        /* Batches are answered now and then: while one is out, output
         * piles up into bigger chunks (the runlog's other path). */
        if ((out[i] ^ p) % 4 == 0)
            drain(l, &split);
        i += piece;
    }
    sbx__runlog_end(l);
    drain(l, &split); /* frees l */

    if (!data[2]) {
        if (split.bytes != n || split.marker)
            abort();
        for (int s = 1; s <= 2; s++) {
            l = open_log(loop, &whole[s], cap);
            sbx__runlog_output(l, (sbx_stream)s, (const char *)per[s], perlen[s]);
            sbx__runlog_end(l);
            drain(l, &whole[s]);
            if (whole[s].len[s] != split.len[s] ||
                (split.len[s] && memcmp(whole[s].text[s], split.text[s], split.len[s]) != 0))
                abort();
        }
    } else {
        size_t kept = split.len[1] + split.len[2];
        if (kept > cap || (split.bytes < n) != (split.marker == 1))
            abort();
    }
    sink_free(&split);
    for (int s = 0; s < 3; s++)
        sink_free(&whole[s]);
    free(per[1]);
    free(per[2]);
    return 0;
}
