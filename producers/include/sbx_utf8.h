/* sbx_utf8.h — the one UTF-8 validator of sbx. Internal: not part of the
 * producer API in sbx.h (names sbx__), but shared by every program.
 *
 * Where it lives and why: libsbx (producers/lib/utf8.c) is the one library
 * every program links — sbx-worker, sbx-agent, the `sbx` CLI and
 * sbx-validate — while common/ is linked by the two daemons only, and
 * libsbx must not depend on common/ (it stands alone for producers). The
 * include rule lets every folder see producers/include, so the validator
 * sits at the bottom, in libsbx, behind this header: the message parser's
 * not_utf8 gate (message.c) and common/text.c (sbx__utf8_sanitize, and
 * through text.h the worker's dead-letter envelope) all call it.
 *
 * Strict RFC 3629 (table 3-7): no overlong forms, no UTF-16 surrogates,
 * nothing past U+10FFFF, no truncated sequence. NUL is valid UTF-8; callers
 * that need C strings refuse it themselves.
 */
#ifndef SBX_UTF8_H
#define SBX_UTF8_H

#include <stddef.h>

/* Length (1..4) of the well-formed character at s[0..n), or 0 if the bytes
 * there start none. n must be at least 1. */
size_t sbx__utf8_char(const unsigned char *s, size_t n);
/* Length of the longest well-formed prefix of s[0..n). */
size_t sbx__utf8_prefix(const char *s, size_t n);
/* Whether all of s[0..n) is well-formed: 1 or 0. */
int sbx__utf8_valid(const char *s, size_t n);

#endif
