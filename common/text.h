/* text.h — small text helpers for what leaves the worker: JSON strings and
 * PostgreSQL text must be valid UTF-8 without NUL, and build output is not;
 * a log line must stay one line whatever a client sent. */
#ifndef SBX_TEXT_H
#define SBX_TEXT_H

#include <stddef.h>

/* sbx__utf8_valid() and the one validator behind everything here. */
#include "sbx_utf8.h"

/* Copies in into out (cap bytes incl. NUL), replacing each invalid byte and
 * NUL by '?'. Returns the length written. */
size_t sbx__utf8_sanitize(const char *in, size_t n, char *out, size_t cap);
/* Copies in (n bytes) into out (cap bytes incl. NUL) as one field of a log
 * line: every byte that could end the line, start another or move the
 * terminal's cursor (C0 controls, DEL, the C1 controls U+0080..U+009F and
 * U+2028/U+2029, which some log viewers break lines at), every byte that is
 * not UTF-8, and the backslash itself become \xNN (the backslash "\\"), so
 * an escape in the output always came from here. Cut at a character
 * boundary when out is short. Returns the length written. */
size_t sbx__log_field(const char *in, size_t n, char *out, size_t cap);
/* Base64 (RFC 4648) of n bytes; returns a malloc'd NUL-terminated string. */
char *sbx__base64(const unsigned char *in, size_t n);

#endif
