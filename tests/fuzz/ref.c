/* ref.c — the reference models of ref.h.
 *
 * The JSON parser is recursive descent into a tree, the textbook shape, so
 * it shares no structure with libsbx's state-machine scanner or json-c. It
 * stops at REF_DEPTH_CAP levels to keep its recursion off the end of the
 * stack (libFuzzer inputs here are at most tens of KiB, but a run of '['
 * still nests as deep as it is long).
 */
#include "ref.h"

#include <string.h>

/* ---- UTF-8 ---- */

size_t ref_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t v, min;

    if (n == 0)
        return 0;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if ((s[0] & 0xE0) == 0xC0)
        len = 2, v = s[0] & 0x1F, min = 0x80;
    else if ((s[0] & 0xF0) == 0xE0)
        len = 3, v = s[0] & 0x0F, min = 0x800;
    else if ((s[0] & 0xF8) == 0xF0)
        len = 4, v = s[0] & 0x07, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    /* Overlong forms, UTF-16 surrogates and anything past U+10FFFF are not
     * characters (RFC 3629 section 3). */
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

bool ref_utf8_valid(const void *s, size_t n)
{
    const unsigned char *p = s;
    uint32_t cp;
    for (size_t i = 0; i < n;) {
        size_t l = ref_utf8_decode(p + i, n - i, &cp);
        if (l == 0)
            return false;
        i += l;
    }
    return true;
}

size_t ref_utf8_count(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t count = 0;
    uint32_t cp;
    for (size_t i = 0; i < n; count++) {
        size_t l = ref_utf8_decode(p + i, n - i, &cp);
        i += l ? l : 1;
    }
    return count;
}

/* ---- JSON ---- */

struct parser {
    const unsigned char *s;
    size_t len, pos;
    ref_text text;
    size_t maxdepth;
    bool duplicate;
};

static void ws(struct parser *p)
{
    while (p->pos < p->len && strchr(" \t\n\r", p->s[p->pos]) && p->s[p->pos])
        p->pos++;
}

static ref_val *fail(struct parser *p, ref_val *partial, ref_text why)
{
    ref_doc d = { .root = partial };
    ref_json_free(&d);
    if (p->text == REF_TEXT_OK)
        p->text = why;
    return NULL;
}

static ref_val *new_val(ref_type t)
{
    ref_val *v = calloc(1, sizeof *v);
    if (!v)
        abort();
    v->type = t;
    return v;
}

static void *grow(void *ptr, size_t n, size_t size)
{
    /* Doubling capacities are implied by n being a power of two. */
    if (n & (n - 1))
        return ptr;
    void *np = realloc(ptr, (n ? n * 2 : 1) * size);
    if (!np)
        abort();
    return np;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static long u_escape(struct parser *p)
{
    /* p->pos at the 'u' */
    long v = 0;
    if (p->len - p->pos < 5)
        return -1;
    for (int i = 1; i <= 4; i++) {
        int h = hexval(p->s[p->pos + i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    p->pos += 5;
    return v;
}

static size_t put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A string at p->pos (the opening quote), decoded. Escapes never make the
 * text longer than it was, so the raw length bounds the buffer. */
static ref_val *string(struct parser *p)
{
    ref_val *v = new_val(REF_STR);
    size_t start = ++p->pos;
    size_t end = start;
    while (end < p->len && p->s[end] != '"')
        end += p->s[end] == '\\' ? 2 : 1;
    v->str = malloc(end - start + 1);
    if (!v->str)
        abort();
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c == '"') {
            p->pos++;
            v->str[v->len] = '\0';
            return v;
        }
        if (c < 0x20)
            return fail(p, v, REF_TEXT_INVALID);
        if (c != '\\') {
            v->str[v->len++] = (char)c;
            p->pos++;
            continue;
        }
        v->escaped = true;
        if (++p->pos >= p->len)
            break;
        c = p->s[p->pos];
        const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
        const char *hit = c ? strchr(from, c) : NULL;
        if (hit) {
            v->str[v->len++] = to[hit - from];
            p->pos++;
            continue;
        }
        if (c != 'u')
            return fail(p, v, REF_TEXT_INVALID);
        long cp = u_escape(p);
        if (cp < 0)
            return fail(p, v, REF_TEXT_INVALID);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            /* A high surrogate must be followed by an escaped low one. */
            if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                return fail(p, v, REF_TEXT_INVALID);
            p->pos++;
            long lo = u_escape(p);
            if (lo < 0xDC00 || lo > 0xDFFF)
                return fail(p, v, REF_TEXT_INVALID);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return fail(p, v, REF_TEXT_INVALID);
        }
        if (cp == 0)
            return fail(p, v, REF_TEXT_INVALID);
        v->len += put_utf8(v->str + v->len, (uint32_t)cp);
    }
    return fail(p, v, REF_TEXT_INVALID);
}

static size_t digits(struct parser *p)
{
    size_t n = 0;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
        p->pos++, n++;
    return n;
}

static ref_val *number(struct parser *p)
{
    size_t start = p->pos;
    if (p->s[p->pos] == '-')
        p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '0')
        p->pos++;
    else if (digits(p) == 0)
        return fail(p, NULL, REF_TEXT_INVALID);
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (digits(p) == 0)
            return fail(p, NULL, REF_TEXT_INVALID);
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (digits(p) == 0)
            return fail(p, NULL, REF_TEXT_INVALID);
    }
    char *text = strndup((const char *)p->s + start, p->pos - start);
    if (!text)
        abort();
    ref_val *v = new_val(REF_NUM);
    v->num = strtod(text, NULL);
    free(text);
    return v;
}

static ref_val *value(struct parser *p, size_t depth);

static ref_val *array(struct parser *p, size_t depth)
{
    ref_val *v = new_val(REF_ARR);
    p->pos++;
    ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return v;
    }
    for (;;) {
        ref_val *item = value(p, depth);
        if (!item)
            return fail(p, v, REF_TEXT_INVALID);
        v->items = grow(v->items, v->n, sizeof *v->items);
        v->items[v->n++] = item;
        ws(p);
        if (p->pos >= p->len)
            return fail(p, v, REF_TEXT_INVALID);
        if (p->s[p->pos++] == ']')
            return v;
        if (p->s[p->pos - 1] != ',')
            return fail(p, v, REF_TEXT_INVALID);
    }
}

static int cmp_member(const void *a, const void *b)
{
    const ref_member *x = *(ref_member *const *)a, *y = *(ref_member *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static void find_duplicates(struct parser *p, const ref_val *obj)
{
    if (obj->n < 2)
        return;
    const ref_member **sorted = malloc(obj->n * sizeof *sorted);
    if (!sorted)
        abort();
    for (size_t i = 0; i < obj->n; i++)
        sorted[i] = &obj->members[i];
    qsort(sorted, obj->n, sizeof *sorted, cmp_member);
    for (size_t i = 1; i < obj->n; i++)
        if (cmp_member(&sorted[i - 1], &sorted[i]) == 0)
            p->duplicate = true;
    free(sorted);
}

static ref_val *object(struct parser *p, size_t depth)
{
    ref_val *v = new_val(REF_OBJ);
    p->pos++;
    ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        return v;
    }
    for (;;) {
        ws(p);
        if (p->pos >= p->len || p->s[p->pos] != '"')
            return fail(p, v, REF_TEXT_INVALID);
        ref_val *name = string(p);
        if (!name)
            return fail(p, v, REF_TEXT_INVALID);
        v->members = grow(v->members, v->n, sizeof *v->members);
        v->members[v->n++] = (ref_member){ name->str, name->len, name->escaped, NULL };
        free(name);
        ws(p);
        if (p->pos >= p->len || p->s[p->pos++] != ':')
            return fail(p, v, REF_TEXT_INVALID);
        if (!(v->members[v->n - 1].val = value(p, depth)))
            return fail(p, v, REF_TEXT_INVALID);
        ws(p);
        if (p->pos >= p->len)
            return fail(p, v, REF_TEXT_INVALID);
        if (p->s[p->pos++] == '}')
            break;
        if (p->s[p->pos - 1] != ',')
            return fail(p, v, REF_TEXT_INVALID);
    }
    find_duplicates(p, v);
    return v;
}

static ref_val *value(struct parser *p, size_t depth)
{
    ws(p);
    if (p->pos >= p->len)
        return fail(p, NULL, REF_TEXT_INVALID);
    unsigned char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if (depth + 1 > REF_DEPTH_CAP)
            return fail(p, NULL, REF_TEXT_TOO_DEEP);
        if (depth + 1 > p->maxdepth)
            p->maxdepth = depth + 1;
        return c == '{' ? object(p, depth + 1) : array(p, depth + 1);
    }
    if (c == '"')
        return string(p);
    if (c == '-' || (c >= '0' && c <= '9'))
        return number(p);
    static const struct { const char *word; ref_type t; bool b; } lits[] = {
        { "true", REF_BOOL, true }, { "false", REF_BOOL, false }, { "null", REF_NULL, false },
    };
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(lits[i].word);
        if (p->len - p->pos >= n && memcmp(p->s + p->pos, lits[i].word, n) == 0) {
            p->pos += n;
            ref_val *v = new_val(lits[i].t);
            v->b = lits[i].b;
            return v;
        }
    }
    return fail(p, NULL, REF_TEXT_INVALID);
}

void ref_json_parse(const char *buf, size_t len, ref_doc *doc)
{
    struct parser p = { .s = (const unsigned char *)buf, .len = len };
    ref_val *root = value(&p, 0);
    if (root) {
        ws(&p);
        if (p.pos != p.len) {
            ref_doc d = { .root = root };
            ref_json_free(&d);
            root = NULL;
            p.text = REF_TEXT_INVALID;
        }
    }
    *doc = (ref_doc){ .text = p.text, .root = root, .maxdepth = p.maxdepth,
                      .duplicate = p.duplicate };
}

static void free_val(ref_val *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++) {
        if (v->type == REF_ARR) {
            free_val(v->items[i]);
        } else {
            free(v->members[i].name);
            free_val(v->members[i].val);
        }
    }
    free(v->items);
    free(v->members);
    free(v->str);
    free(v);
}

void ref_json_free(ref_doc *doc)
{
    free_val(doc->root);
    doc->root = NULL;
}

const ref_member *ref_obj_member(const ref_val *obj, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; obj && obj->type == REF_OBJ && i < obj->n; i++)
        if (obj->members[i].name_len == n && memcmp(obj->members[i].name, name, n) == 0)
            return &obj->members[i];
    return NULL;
}

const ref_val *ref_obj_get(const ref_val *obj, const char *name)
{
    const ref_member *m = ref_obj_member(obj, name);
    return m ? m->val : NULL;
}

/* ---- base64 ---- */

static int b64val(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

unsigned char *ref_base64_decode(const char *s, size_t n, size_t *out_len)
{
    if (n % 4)
        return NULL;
    unsigned char *out = malloc(n / 4 * 3 + 1);
    size_t o = 0;
    if (!out)
        abort();
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int pad = (s[i + 3] == '=') + (s[i + 2] == '=');
        if (pad && !last)
            goto bad;
        if (s[i + 2] == '=' && s[i + 3] != '=')
            goto bad;
        uint32_t bits = 0;
        for (int k = 0; k < 4 - pad; k++) {
            int v = b64val(s[i + k]);
            if (v < 0)
                goto bad;
            bits |= (uint32_t)v << (18 - 6 * k);
        }
        /* The bits a short group does not use must be zero (canonical). */
        if ((pad == 1 && (bits & 0xFF)) || (pad == 2 && (bits & 0xFFFF)))
            goto bad;
        out[o++] = (unsigned char)(bits >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(bits >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)bits;
    }
    *out_len = o;
    return out;
bad:
    free(out);
    return NULL;
}
