/* utf8.c — the one UTF-8 validator; see sbx_utf8.h for why it is here. */
#include "sbx_utf8.h"

size_t sbx__utf8_char(const unsigned char *s, size_t n)
{
    unsigned c = s[0], lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
    size_t len;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c == 0xE0)
        len = 3, lo = 0xA0;                    /* no overlong 3-byte forms */
    else if (c == 0xED)
        len = 3, hi = 0x9F;                    /* no UTF-16 surrogates */
    else if (c >= 0xE1 && c <= 0xEF)
        len = 3;
    else if (c == 0xF0)
        len = 4, lo = 0x90;                    /* no overlong 4-byte forms */
    else if (c >= 0xF1 && c <= 0xF3)
        len = 4;
    else if (c == 0xF4)
        len = 4, hi = 0x8F;                    /* nothing past U+10FFFF */
    else
        return 0;                              /* C0, C1, F5..FF, or a continuation */
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < len; k++)
        if ((s[k] & 0xC0) != 0x80)
            return 0;
    return len;
}

size_t sbx__utf8_prefix(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;

    while (i < n) {
        size_t l = u[i] < 0x80 ? 1 : sbx__utf8_char(u + i, n - i);
        if (l == 0)
            break;
        i += l;
    }
    return i;
}

int sbx__utf8_valid(const char *s, size_t n) { return sbx__utf8_prefix(s, n) == n; }
