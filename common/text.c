/* text.c — making bytes fit for JSON and PostgreSQL text, and base64; see
 * text.h. Which bytes are UTF-8 is decided in one place for all of sbx,
 * libsbx's sbx__utf8_char() (sbx_utf8.h): the sanitizer keeps what it
 * accepts, one character at a time. */
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
