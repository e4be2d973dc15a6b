/*
 * json_parse.c - JSON text into cJSON trees, strictly and in one pass.
 *
 * Every request, event line and definition a user sends is parsed here, so
 * this is on the path of every write. cJSON's own parser was a fifth of
 * the RCP server's instructions: it scans each string twice, copies every
 * number into a buffer for strtod, and is lenient where serde_json (what
 * rstmdb and its clients speak) is not: "+1", "01", ".5", raw control
 * characters in strings and any byte below 0x21 as whitespace all pass it.
 * This parser follows RFC 8259 as serde_json does, validates UTF-8 only
 * inside strings (the one place a byte above 0x7F is legal), and reads an
 * integer of up to 15 digits without strtod (such an integer is exactly a
 * double, so the value is the one strtod would give).
 *
 * The trees are cJSON's, built the way cJSON_Parse builds them, so every
 * cJSON function works on them: nodes and strings come from malloc (which
 * cJSON_Delete frees: stmfs never installs other cJSON hooks), a
 * container's first child's prev points at its last child (cJSON appends
 * through it), and a number's valueint is its value saturated to int.
 */
#include "base/json.h"
#include "base/buf.h"

#include <limits.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Blocks of an arena: the first is kept for the next use of the arena,
 * the rest (a tree bigger than one block) are freed on reset. */
typedef struct ablock {
    struct ablock *next;
    size_t used, size;
    _Alignas(16) char data[];
} ablock;

struct json_arena {
    ablock *head; /* the block being filled; its next ones are full */
};

#if defined(__SANITIZE_ADDRESS__)
#define ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_ASAN 1
#endif
#endif

#define ABLOCK_SIZE (16u * 1024 - sizeof(ablock))

static ablock *ablock_new(size_t size)
{
    ablock *b = malloc(sizeof *b + size);
    if (!b) abort();
    b->next = NULL;
    b->used = 0;
    b->size = size;
    return b;
}

/* One arena per thread is kept for the next json_arena_new: a server
 * thread parses one request at a time, so in steady state no parse calls
 * malloc at all. (Not under ASan, which should see every block freed.) */
static _Thread_local json_arena *spare;

json_arena *json_arena_new(void)
{
    json_arena *a = spare;
    if (a) {
        spare = NULL;
        return a;
    }
    a = malloc(sizeof *a);
    if (!a) abort();
    a->head = NULL;
    return a;
}

void json_arena_reset(json_arena *a)
{
    if (!a) return;
    ablock *keep = NULL;
    for (ablock *b = a->head, *next; b; b = next) {
        next = b->next;
#ifndef ARENA_ASAN
        /* Under ASan every block goes back to malloc, so that a pointer
         * kept into a dropped tree is reported, not silently reused. */
        if (!next && b->size == ABLOCK_SIZE) {
            keep = b;
            keep->used = 0;
            break;
        }
#endif
        free(b);
    }
    a->head = keep;
}

void json_arena_free(json_arena *a)
{
    if (!a) return;
    json_arena_reset(a);
#ifndef ARENA_ASAN
    if (!spare) {
        spare = a;
        return;
    }
#endif
    free(a->head);
    free(a);
}

static void *arena_alloc(json_arena *a, size_t n, bool zero)
{
    n = (n + 15) & ~(size_t)15;
    ablock *b = a->head;
    if (!b || b->size - b->used < n) {
        ablock *nb = ablock_new(n > ABLOCK_SIZE ? n : ABLOCK_SIZE);
        if (b && n > ABLOCK_SIZE) {
            /* an outsize block goes behind the current one, which still has room */
            nb->next = b->next;
            b->next = nb;
            nb->used = n;
            if (zero) memset(nb->data, 0, n);
            return nb->data;
        }
        nb->next = b;
        a->head = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    if (zero) memset(p, 0, n);
    return p;
}

typedef struct {
    json_arena *arena; /* NULL: nodes and strings from malloc */
    const char *start, *p, *end;
    int max_depth;
    const char *fail_at; /* where the first error is */
    const char *why;     /* what was wrong there; NULL = ran out of input */
    bool keys_unique;    /* the writer never repeats a key: no dedupe pass */
} parser;

static bool fail(parser *ps, const char *at, const char *why)
{
    ps->fail_at = at;
    ps->why = at < ps->end ? why : NULL;
    return false;
}

static void skip_ws(parser *ps)
{
    const char *p = ps->p, *end = ps->end;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    ps->p = p;
}

static cJSON *new_node(parser *ps, int type)
{
    cJSON *n = ps->arena ? arena_alloc(ps->arena, sizeof *n, true) : calloc(1, sizeof *n);
    if (!n) abort();
    n->type = type;
    return n;
}

static char *new_string(parser *ps, size_t n)
{
    char *s = ps->arena ? arena_alloc(ps->arena, n, false) : malloc(n);
    if (!s) abort();
    return s;
}

/* A tree that failed half way: an arena's goes with the arena. */
static void drop(parser *ps, cJSON *v)
{
    if (!ps->arena) cJSON_Delete(v);
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = (unsigned char)p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    return v;
}

static char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | cp >> 6);
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | cp >> 12);
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | cp >> 18);
        *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* Decodes the escapes of a string body already known to end at `end` (its
 * closing quote) into o, which has room: no escape decodes longer than it
 * is written. Returns the end of the output, or NULL with the error set. */
static char *unescape(parser *ps, const char *p, const char *end, char *o)
{
    while (p < end) {
        const char *run = p;
        while (p < end && *p != '\\')
            p++;
        memcpy(o, run, (size_t)(p - run));
        o += p - run;
        if (p == end) break;
        const char *esc = p;
        char c = p[1];
        p += 2;
        switch (c) {
        case '"':
            *o++ = '"';
            continue;
        case '\\':
            *o++ = '\\';
            continue;
        case '/':
            *o++ = '/';
            continue;
        case 'b':
            *o++ = '\b';
            continue;
        case 'f':
            *o++ = '\f';
            continue;
        case 'n':
            *o++ = '\n';
            continue;
        case 'r':
            *o++ = '\r';
            continue;
        case 't':
            *o++ = '\t';
            continue;
        case 'u':
            break;
        default:
            fail(ps, esc, "unknown escape in a string");
            return NULL;
        }
        int cp = end - p >= 4 ? hex4(p) : -1;
        if (cp < 0) {
            fail(ps, esc, "\\u needs four hex digits");
            return NULL;
        }
        p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail(ps, esc, "a \\u escape of a lone low surrogate");
            return NULL;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            int lo = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF) {
                fail(ps, esc, "a \\u escape of a high surrogate without its low half");
                return NULL;
            }
            p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp == 0) {
            /* The trees hold C strings: the NUL would cut the string short,
             * silently, which is worse than refusing it. */
            fail(ps, esc, "\\u0000 in a string (strings cannot hold NUL here)");
            return NULL;
        }
        o = put_utf8(o, (unsigned)cp);
    }
    return o;
}

/* 1 for the bytes a string body holds as they are: 0x20-0x7F but for '"'
 * and '\\'. */
static const unsigned char plain_byte[256] = {
    [0x20 ... 0x21] = 1, /* '"' is 0x22 */
    [0x23 ... 0x5B] = 1, /* '\\' is 0x5C */
    [0x5D ... 0x7F] = 1,
};

/* The length of the longest well-formed UTF-8 prefix of [s, s+n): no
 * overlong forms, no surrogates, nothing past U+10FFFF. */
static size_t utf8_prefix(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned min;
        if (c >= 0xC2 && c <= 0xDF)
            len = 2, min = 0x80;
        else if (c >= 0xE0 && c <= 0xEF)
            len = 3, min = 0x800;
        else if (c >= 0xF0 && c <= 0xF4)
            len = 4, min = 0x10000;
        else
            return i;
        if (i + len > n) return i;
        unsigned cp = c & (0xFF >> (len + 1));
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return n;
}

bool json_utf8_valid(const char *s, size_t n)
{
    return utf8_prefix(s, n) == n;
}

/* ps->p is at the opening quote. Returns the malloc'd body. */
static char *parse_string(parser *ps)
{
    const char *body = ps->p + 1, *p = body, *end = ps->end;
    bool escapes = false, high = false;
    for (;; p++) {
        /* the common bytes in one test: printable ASCII but '"' and '\\' */
        while (p < end && plain_byte[(unsigned char)*p])
            p++;
        if (p >= end) {
            fail(ps, end, NULL);
            return NULL;
        }
        unsigned char c = (unsigned char)*p;
        if (c == '"') break;
        if (c == '\\') {
            escapes = true;
            if (++p >= end) {
                fail(ps, end, NULL);
                return NULL;
            }
        } else if (c < 0x20) {
            fail(ps, p,
                 c ? "a control character in a string (write it as an escape)" : "a NUL byte");
            return NULL;
        } else if (c >= 0x80) {
            high = true;
        }
    }
    size_t n = (size_t)(p - body);
    size_t good;
    if (high && (good = utf8_prefix(body, n)) < n) {
        fail(ps, body + good, "text is not valid UTF-8");
        return NULL;
    }
    char *s = new_string(ps, n + 1);
    if (!escapes) {
        memcpy(s, body, n);
        s[n] = 0;
    } else {
        char *o = unescape(ps, body, p, s);
        if (!o) {
            if (!ps->arena) free(s);
            return NULL;
        }
        *o = 0;
    }
    ps->p = p + 1;
    return s;
}

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static void c_locale_init(void)
{
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

static bool parse_number(parser *ps, cJSON *v)
{
    const char *p = ps->p, *end = ps->end, *start = p;
    bool neg = false, plain = true;
    if (*p == '-') {
        neg = true;
        if (++p >= end) return fail(ps, end, NULL);
    }
    uint64_t mant = 0;
    int digits = 0;
    if (*p == '0') {
        p++;
        digits = 1;
        if (p < end && *p >= '0' && *p <= '9') return fail(ps, p, "a number with a leading zero");
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits < 19) mant = mant * 10 + (uint64_t)(*p - '0');
            digits++;
            p++;
        }
    } else {
        return fail(ps, p, "a '-' not followed by a digit");
    }
    if (p < end && *p == '.') {
        plain = false;
        if (++p >= end) return fail(ps, end, NULL);
        if (*p < '0' || *p > '9') return fail(ps, p, "a '.' not followed by a digit");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        plain = false;
        if (++p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end) return fail(ps, end, NULL);
        if (*p < '0' || *p > '9') return fail(ps, p, "an exponent without digits");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    double d;
    if (plain && digits <= 15) {
        d = (double)mant; /* exact: below 2^53 */
        if (neg) d = -d;
    } else {
        char tmp[64], *copy = tmp;
        size_t n = (size_t)(p - start);
        if (n >= sizeof tmp && !(copy = malloc(n + 1))) abort();
        memcpy(copy, start, n);
        copy[n] = 0;
        pthread_once(&c_locale_once, c_locale_init);
        d = c_locale ? strtod_l(copy, NULL, c_locale) : strtod(copy, NULL);
        if (copy != tmp) free(copy);
        if (isinf(d)) return fail(ps, start, "a number out of range");
    }
    v->type = cJSON_Number;
    v->valuedouble = d;
    v->valueint = d >= INT_MAX ? INT_MAX : d <= (double)INT_MIN ? INT_MIN : (int)d;
    ps->p = p;
    return true;
}

static bool literal(parser *ps, const char *word, size_t n)
{
    if ((size_t)(ps->end - ps->p) < n) {
        /* a prefix of the word that the input cuts short is an early end */
        if (memcmp(ps->p, word, (size_t)(ps->end - ps->p)) == 0) return fail(ps, ps->end, NULL);
        return fail(ps, ps->p, "not a JSON value");
    }
    if (memcmp(ps->p, word, n) != 0) return fail(ps, ps->p, "not a JSON value");
    ps->p += n;
    return true;
}

static cJSON *parse_value(parser *ps, int depth);

/* Appends child to the container whose last child is *last. */
static void link_child(cJSON *parent, cJSON **last, cJSON *child)
{
    if (*last) {
        (*last)->next = child;
        child->prev = *last;
    } else {
        parent->child = child;
    }
    *last = child;
    parent->child->prev = child;
}

static cJSON *parse_container(parser *ps, int depth, bool object)
{
    cJSON *v = new_node(ps, object ? cJSON_Object : cJSON_Array), *last = NULL;
    char close = object ? '}' : ']';
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return v;
    }
    for (;;) {
        char *key = NULL;
        if (object) {
            if (ps->p >= ps->end) goto fail_end;
            if (*ps->p != '"') {
                fail(ps, ps->p, "expected a quoted key");
                goto fail;
            }
            if (!(key = parse_string(ps))) goto fail;
            skip_ws(ps);
            if (ps->p >= ps->end) {
                if (!ps->arena) free(key);
                goto fail_end;
            }
            if (*ps->p != ':') {
                if (!ps->arena) free(key);
                fail(ps, ps->p, "expected ':' after a key");
                goto fail;
            }
            ps->p++;
            skip_ws(ps);
        }
        cJSON *item = parse_value(ps, depth + 1);
        if (!item) {
            if (!ps->arena) free(key);
            goto fail;
        }
        item->string = key;
        link_child(v, &last, item);
        skip_ws(ps);
        if (ps->p >= ps->end) goto fail_end;
        if (*ps->p == close) {
            ps->p++;
            return v;
        }
        if (*ps->p != ',') {
            fail(ps, ps->p, object ? "expected ',' or '}'" : "expected ',' or ']'");
            goto fail;
        }
        ps->p++;
        skip_ws(ps);
    }
fail_end:
    fail(ps, ps->end, NULL);
fail:
    drop(ps, v);
    return NULL;
}

static cJSON *parse_value(parser *ps, int depth)
{
    if (depth > ps->max_depth) {
        fail(ps, ps->p, "nested too deep");
        return NULL;
    }
    if (ps->p >= ps->end) {
        fail(ps, ps->end, NULL);
        return NULL;
    }
    cJSON *v;
    switch (*ps->p) {
    case '{':
        return parse_container(ps, depth, true);
    case '[':
        return parse_container(ps, depth, false);
    case '"': {
        char *s = parse_string(ps);
        if (!s) return NULL;
        v = new_node(ps, cJSON_String);
        v->valuestring = s;
        return v;
    }
    case 't':
        if (!literal(ps, "true", 4)) return NULL;
        return new_node(ps, cJSON_True);
    case 'f':
        if (!literal(ps, "false", 5)) return NULL;
        return new_node(ps, cJSON_False);
    case 'n':
        if (!literal(ps, "null", 4)) return NULL;
        return new_node(ps, cJSON_NULL);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
            v = new_node(ps, cJSON_Number);
            if (!parse_number(ps, v)) {
                drop(ps, v);
                return NULL;
            }
            return v;
        }
        fail(ps, ps->p, *ps->p ? "not a JSON value" : "a NUL byte");
        return NULL;
    }
}

static void note_duplicate(parser *ps, cJSON *obj, const char *key)
{
    size_t n = strlen(key) + 1;
    obj->valuestring = memcpy(new_string(ps, n), key, n);
}

/* Objects up to this many members are checked pairwise; past it a hash set
 * keeps the pass linear: pairwise, one request of 50,000 keys (700 KB)
 * held the RCP loop for 7 s. */
#define DEDUPE_PAIRWISE_MAX 16

static uint64_t key_hash(const char *k)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 1099511628211u;
    return h;
}

/* Walks the members from the last one back: a key already in the set was
 * seen later, so this earlier occurrence goes, and the last one removed is
 * the first duplicate in document order, as the pairwise pass finds it. */
static void dedupe_hashed(parser *ps, cJSON *v, size_t n)
{
    size_t cap = 2;
    while (cap < 2 * n)
        cap *= 2;
    const cJSON **set = xcalloc(cap, sizeof *set);
    cJSON *last = v->child;
    while (last->next)
        last = last->next;
    const char *first_dup = NULL;
    for (cJSON *c = last; c;) {
        /* cJSON keeps child->prev pointing at the last member: stop at the head */
        cJSON *prev = c == v->child ? NULL : c->prev;
        size_t i = (size_t)key_hash(c->string) & (cap - 1);
        while (set[i] && strcmp(set[i]->string, c->string) != 0)
            i = (i + 1) & (cap - 1);
        if (set[i]) {
            first_dup = set[i]->string; /* the later one stays */
            drop(ps, cJSON_DetachItemViaPointer(v, c));
        } else {
            set[i] = c;
        }
        c = prev;
    }
    if (first_dup && !v->valuestring) note_duplicate(ps, v, first_dup);
    free(set);
}

/* Removes earlier duplicates so that the last occurrence of a key wins, as
 * in serde_json, and notes the first such key (json_duplicate_key). */
static void dedupe(parser *ps, cJSON *v)
{
    size_t n = 0;
    for (cJSON *c = v->child; c; c = c->next) {
        if (cJSON_IsObject(c) || cJSON_IsArray(c)) dedupe(ps, c);
        n++;
    }
    if (!cJSON_IsObject(v) || n < 2) return;
    if (n > DEDUPE_PAIRWISE_MAX) {
        dedupe_hashed(ps, v, n);
        return;
    }
    for (cJSON *c = v->child; c;) {
        cJSON *next = c->next;
        for (cJSON *d = next; d; d = d->next)
            if (strcmp(c->string, d->string) == 0) {
                if (!v->valuestring) note_duplicate(ps, v, c->string);
                drop(ps, cJSON_DetachItemViaPointer(v, c));
                break;
            }
        c = next;
    }
}

const char *json_duplicate_key(const cJSON *obj)
{
    return cJSON_IsObject(obj) ? obj->valuestring : NULL;
}

static cJSON *parse_text(parser *ps, stm_err *err)
{
    const char *text = ps->start;
    skip_ws(ps);
    cJSON *v = parse_value(ps, 1);
    if (v) {
        skip_ws(ps);
        if (ps->p < ps->end) {
            drop(ps, v);
            stm_fail(err, STM_BAD_REQUEST, "invalid JSON: trailing characters at byte %zu",
                     (size_t)(ps->p - text));
            return NULL;
        }
        if (!ps->keys_unique) dedupe(ps, v);
        return v;
    }
    size_t pos = (size_t)(ps->fail_at - text);
    if (!ps->why)
        stm_fail(err, STM_BAD_REQUEST, "invalid JSON: unexpected end of input");
    else if (strcmp(ps->why, "nested too deep") == 0)
        stm_fail(err, STM_BAD_REQUEST, "invalid JSON: nested deeper than %d levels",
                 JSON_MAX_DEPTH);
    else
        stm_fail(err, STM_BAD_REQUEST, "invalid JSON at byte %zu: %s", pos, ps->why);
    return NULL;
}

cJSON *json_parse(const char *text, size_t len, stm_err *err)
{
    parser ps = {.start = text, .p = text, .end = text + len, .max_depth = JSON_MAX_DEPTH};
    return parse_text(&ps, err);
}

cJSON *json_parse_arena(json_arena *a, const char *text, size_t len, stm_err *err)
{
    parser ps = {.arena = a, .start = text, .p = text, .end = text + len,
                 .max_depth = JSON_MAX_DEPTH};
    return parse_text(&ps, err);
}

cJSON *json_parse_arena_own(json_arena *a, const char *text, size_t len, stm_err *err)
{
    parser ps = {.arena = a, .start = text, .p = text, .end = text + len,
                 .max_depth = JSON_MAX_DEPTH, .keys_unique = true};
    return parse_text(&ps, err);
}

cJSON *json_parse_trusted(const char *text, size_t len)
{
    return cJSON_ParseWithLength(text, len);
}
