/* libsbx.h — what the files of libsbx share among themselves: private to
 * producers/lib, part of no API (sbx.h is the public one).
 */
#ifndef SBX_LIBSBX_H
#define SBX_LIBSBX_H

#include <stddef.h>

/* Formats one error into err[errlen]; does nothing when err is NULL or
 * errlen is 0, so every caller may pass what its own caller gave. */
__attribute__((format(printf, 3, 4)))
void sbx__seterr(char *err, size_t errlen, const char *fmt, ...);

#endif
