/* sbx_sha256.h — SHA-256 (FIPS 180-4) of text held whole. Internal (sbx__
 * names), in libsbx because every program links it: the worker's dead-letter
 * envelope and the job fingerprint that both the producer and the worker
 * compute (sbx_redact.h). Neither links a crypto library for this one digest.
 */
#ifndef SBX_SHA256_H
#define SBX_SHA256_H

#include <stddef.h>

/* hex: 64 lowercase hex digits and a NUL. */
void sbx__sha256_hex(const char *msg, size_t len, char hex[65]);

#endif
