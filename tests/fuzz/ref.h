/* ref.h — reference models the fuzz targets compare project code against.
 *
 * Written from the specifications (RFC 3629 for UTF-8, RFC 8259 for JSON,
 * RFC 4648 for base64), not from the project's code, and deliberately in a
 * different shape (decode a code point and then judge it; recursive descent
 * into a tree), so that a shared misreading of a rule is less likely than in
 * a second copy of the same loop. Speed matters little: inputs are small.
 */
#ifndef SBX_FUZZ_REF_H
#define SBX_FUZZ_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A failed property: print why, then abort so libFuzzer saves the input. */
#define FUZZ_CHECK(cond, ...)                                                  \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "\nFUZZ CHECK FAILED at %s:%d: %s\n  ", __FILE__,  \
                    __LINE__, #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* ---- UTF-8 (RFC 3629) ---- */

/* Decodes the character at s: returns its length (1..4) and sets *cp, or 0
 * when no well-formed character starts at s. */
size_t ref_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
bool ref_utf8_valid(const void *s, size_t n);
/* Code points in valid UTF-8 (JSON Schema's string length). */
size_t ref_utf8_count(const char *s, size_t n);

/* ---- JSON (RFC 8259) ---- */

typedef enum ref_type { REF_NULL, REF_BOOL, REF_NUM, REF_STR, REF_ARR, REF_OBJ } ref_type;

typedef struct ref_val ref_val;
typedef struct ref_member {
    char *name;
    size_t name_len;
    bool name_escaped;     /* the name's text had a backslash */
    ref_val *val;
} ref_member;

struct ref_val {
    ref_type type;
    bool b;
    double num;            /* strtod of the number's text: what JavaScript reads */
    char *str;             /* decoded UTF-8, NUL-terminated */
    size_t len;
    bool escaped;          /* the string's text had a backslash */
    ref_val **items;
    ref_member *members;
    size_t n;              /* items or members */
};

typedef enum ref_text {
    REF_TEXT_OK,
    REF_TEXT_INVALID,      /* not RFC 8259, "\u0000", or an unpaired surrogate escape */
    REF_TEXT_TOO_DEEP,     /* nested past REF_DEPTH_CAP: validity not decided */
} ref_text;

/* The reference parser recurses; past this depth it gives up rather than
 * risk the stack. Far above the 32 levels a job may nest. */
#define REF_DEPTH_CAP 200

typedef struct ref_doc {
    ref_text text;
    ref_val *root;         /* REF_TEXT_OK only */
    size_t maxdepth;       /* containers nested, 0 for a scalar */
    bool duplicate;        /* some object repeats a member name */
} ref_doc;

/* Parses buf (which must already be valid UTF-8). */
void ref_json_parse(const char *buf, size_t len, ref_doc *doc);
void ref_json_free(ref_doc *doc);
const ref_member *ref_obj_member(const ref_val *obj, const char *name);
const ref_val *ref_obj_get(const ref_val *obj, const char *name);

/* ---- base64 (RFC 4648 section 4, with padding) ---- */

/* Strict decoding: alphabet, length a multiple of 4, '=' only at the end,
 * unused bits zero. Returns a malloc'd buffer and its length in *out_len,
 * or NULL when s is not canonical base64. */
unsigned char *ref_base64_decode(const char *s, size_t n, size_t *out_len);

#endif
