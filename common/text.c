/* text.c — making bytes fit for JSON and PostgreSQL text and for log
 * lines, and base64; see text.h. Which bytes are UTF-8 is decided in one
 * place for all of sbx, libsbx's sbx__utf8_char() (sbx_utf8.h): both
 * sanitizers keep what it accepts, one character at a time. */
#include "text.h"

#include <stdint.h>
#include <stdlib.h>

size_t sbx__utf8_sanitize(const char *in, size_t n, char *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;

    if (cap == 0)
        return 0;
    while (n > 0) {
        size_t l = sbx__utf8_char(p, n);
        if (l == 0 || (l == 1 && p[0] == 0)) {
            if (o + 1 >= cap)
                break;
            out[o++] = '?';
            p++;
            n--;
            continue;
        }
        if (o + l >= cap)
            break;
        for (size_t i = 0; i < l; i++)
            out[o++] = (char)p[i];
        p += l;
        n -= l;
    }
    out[o] = '\0';
    return o;
}

/* Whether the well-formed character c (l bytes) is kept as it is in a log
 * field: printable ASCII but the backslash, and every longer character but
 * the C1 controls (C2 80..C2 9F) and U+2028/U+2029 (E2 80 A8/A9). */
static int log_keeps(const unsigned char *c, size_t l)
{
    if (l == 1)
        return c[0] >= 0x20 && c[0] < 0x7f && c[0] != '\\';
    if (l == 2)
        return !(c[0] == 0xc2 && c[1] < 0xa0);
    if (l == 3)
        return !(c[0] == 0xe2 && c[1] == 0x80 && (c[2] == 0xa8 || c[2] == 0xa9));
    return 1;
}

size_t sbx__log_field(const char *in, size_t n, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;

    if (cap == 0)
        return 0;
    while (n > 0) {
        size_t l = sbx__utf8_char(p, n);
        if (l > 0 && log_keeps(p, l)) {
            if (o + l >= cap)
                break;
            for (size_t i = 0; i < l; i++)
                out[o++] = (char)p[i];
            p += l;
            n -= l;
            continue;
        }
        /* One escape per byte of the refused character (or stray byte). */
        if (l == 0)
            l = 1;
        if (o + 4 * l >= cap)
            break;
        for (size_t i = 0; i < l; i++) {
            if (p[i] == '\\') {
                out[o++] = '\\';
                out[o++] = '\\';
                continue;
            }
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[p[i] >> 4];
            out[o++] = hex[p[i] & 15];
        }
        p += l;
        n -= l;
    }
    out[o] = '\0';
    return o;
}

char *sbx__base64(const unsigned char *in, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    size_t i;

    if (!out)
        return NULL;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = tbl[(v >> 6) & 63];
        *o++ = tbl[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}
