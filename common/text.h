/* text.h — small text helpers for what leaves the worker: JSON strings and
 * PostgreSQL text must be valid UTF-8 without NUL, and build output is not. */
#ifndef SBX_TEXT_H
#define SBX_TEXT_H

#include <stddef.h>

/* sbx__utf8_valid() and the one validator behind everything here. */
#include "sbx_utf8.h"

/* Copies in into out (cap bytes incl. NUL), replacing each invalid byte and
 * NUL by '?'. Returns the length written. */
size_t sbx__utf8_sanitize(const char *in, size_t n, char *out, size_t cap);
/* Base64 (RFC 4648) of n bytes; returns a malloc'd NUL-terminated string. */
char *sbx__base64(const unsigned char *in, size_t n);

#endif
