#include "base/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void json_write_strn(buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(out, n + 2);
    buf_putc(out, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        buf_add(out, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': buf_add(out, "\\\"", 2); break;
        case '\\': buf_add(out, "\\\\", 2); break;
        case '\n': buf_add(out, "\\n", 2); break;
        case '\r': buf_add(out, "\\r", 2); break;
        case '\t': buf_add(out, "\\t", 2); break;
        case '\b': buf_add(out, "\\b", 2); break;
        case '\f': buf_add(out, "\\f", 2); break;
        default: {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_add(out, e, 6);
        }
        }
    }
    buf_add(out, s + run, n - run);
    buf_putc(out, '"');
}

/* Bytes json_write_strn writes for c: itself, a two-character escape, or
 * \u00XX. The one place both length functions take the rule from. */
static inline size_t escaped_len(unsigned char c)
{
    if (c >= 0x20 && c != '"' && c != '\\') return 1;
    switch (c) {
    case '"': case '\\': case '\n': case '\r': case '\t': case '\b': case '\f': return 2;
    default: return 6;
    }
}

size_t json_strn_len(const char *s, size_t n)
{
    size_t len = 2;
    for (size_t i = 0; i < n; i++) len += escaped_len((unsigned char)s[i]);
    return len;
}

size_t json_str_len(const char *s)
{
    size_t len = 2;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) len += escaped_len(*p);
    return len;
}

size_t json_num_len(double d)
{
    if (isfinite(d) && d == floor(d) && fabs(d) < 9.2e18) {
        long long v = (long long)d;
        unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
        /* compares, not divisions: history lines measure three numbers each */
        size_t n = v < 0 ? 2 : 1;
        for (unsigned long long p = 10; u >= p; p *= 10) {
            n++;
            if (p > UINT64_MAX / 10) break;
        }
        return n;
    }
    buf b = {0};
    json_write_num(&b, d);
    size_t n = b.len;
    buf_free(&b);
    return n;
}

void json_write_str(buf *out, const char *s)
{
    json_write_strn(out, s, strlen(s));
}

void json_write_num(buf *out, double d)
{
    char tmp[40];
    if (!isfinite(d)) {
        buf_puts(out, "null");
        return;
    }
    if (d == floor(d) && fabs(d) < 9.2e18) {
        /* integers are most numbers in practice: no printf on this path */
        buf_put_i64(out, (int64_t)d);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d) break;
    }
    /* %g writes "1e+100" and "1.5e-07"; serde_json writes "1e100", "1.5e-7". */
    char *e = strchr(tmp, 'e');
    if (e) {
        char *p = e + 1, *w = e + 1;
        if (*p == '+') p++;
        else if (*p == '-') *w++ = *p++;
        while (*p == '0' && p[1]) p++;
        memmove(w, p, strlen(p) + 1);
    }
    buf_puts(out, tmp);
}

/* ---- canonical text without a tree ------------------------------------- */

/* Length of the canonical string token at p (quote to quote), 0 if it is not
 * one. *plain says whether it has no escape at all (a key compared by bytes
 * must have none). */
static size_t canon_string(const char *p, const char *end, bool *plain)
{
    const char *q = p + 1;
    *plain = true;
    while (q < end) {
        unsigned char c = (unsigned char)*q;
        if (c == '"') return (size_t)(q + 1 - p);
        if (c < 0x20) return 0;
        if (c != '\\') {
            q++;
            continue;
        }
        *plain = false;
        if (q + 1 >= end) return 0;
        switch (q[1]) {
        case '"': case '\\': case 'n': case 'r': case 't': case 'b': case 'f': q += 2; continue;
        case 'u': break;
        default: return 0;
        }
        /* \u00xx, lowercase, only for the control characters that have no
         * short form, and never NUL (cJSON would cut the string there) */
        if (end - q < 6 || q[2] != '0' || q[3] != '0' || (q[4] != '0' && q[4] != '1')) return 0;
        char h = q[5];
        int v = (q[4] - '0') * 16 + (h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -100);
        if (v <= 0 || v == '\n' || v == '\r' || v == '\t' || v == '\b' || v == '\f') return 0;
        q += 6;
    }
    return 0;
}

/* Integers up to 15 digits survive the trip through a double unchanged;
 * anything else is left to the slow path. */
static size_t canon_number(const char *p, const char *end)
{
    const char *q = p;
    if (*q == '-') q++;
    if (q >= end || *q < '0' || *q > '9') return 0;
    if (*q == '0') {
        if (q != p) return 0; /* "-0" is written "0" */
        q++;
    } else {
        const char *d = q;
        while (q < end && *q >= '0' && *q <= '9') q++;
        if (q - d > 15) return 0;
    }
    if (q < end && (*q == '.' || *q == 'e' || *q == 'E' || (*q >= '0' && *q <= '9'))) return 0;
    return (size_t)(q - p);
}

size_t json_canonical_len(const char *p, size_t n)
{
    const char *start = p, *end = p + n;
    /* per open container: 1 = object, 2 = array; and the object's last key */
    unsigned char kind[JSON_MAX_DEPTH + 1];
    const char *last_key[JSON_MAX_DEPTH + 1];
    size_t last_len[JSON_MAX_DEPTH + 1];
    int depth = 0;
    for (;;) {
        /* a value at p */
        if (p >= end) return 0;
        size_t len = 0;
        bool plain;
        switch (*p) {
        case '{':
        case '[':
            if (depth == JSON_MAX_DEPTH) return 0;
            kind[++depth] = *p == '{' ? 1 : 2;
            last_key[depth] = NULL;
            p++;
            if (p < end && *p == (kind[depth] == 1 ? '}' : ']')) {
                p++;
                depth--;
                goto after_value;
            }
            if (kind[depth] == 1) goto key;
            continue;
        case '"': len = canon_string(p, end, &plain); break;
        case 't': len = end - p >= 4 && !memcmp(p, "true", 4) ? 4 : 0; break;
        case 'f': len = end - p >= 5 && !memcmp(p, "false", 5) ? 5 : 0; break;
        case 'n': len = end - p >= 4 && !memcmp(p, "null", 4) ? 4 : 0; break;
        default: len = canon_number(p, end); break;
        }
        if (!len) return 0;
        p += len;
    after_value:
        if (depth == 0) return (size_t)(p - start);
        if (p >= end) return 0;
        if (*p == ',') {
            p++;
            if (kind[depth] == 2) continue;
            goto key;
        }
        if (*p != (kind[depth] == 1 ? '}' : ']')) return 0;
        p++;
        depth--;
        goto after_value;
    key:
        if (p >= end || *p != '"') return 0;
        len = canon_string(p, end, &plain);
        if (!len || !plain) return 0;
        {
            /* strictly ascending by bytes: sorted, and no duplicates */
            const char *k = p + 1;
            size_t kl = len - 2;
            if (last_key[depth]) {
                size_t m = kl < last_len[depth] ? kl : last_len[depth];
                int c = memcmp(last_key[depth], k, m);
                if (c > 0 || (c == 0 && last_len[depth] >= kl)) return 0;
            }
            last_key[depth] = k;
            last_len[depth] = kl;
        }
        p += len;
        if (p >= end || *p != ':') return 0;
        p++;
    }
}

size_t json_value_len(const char *p, size_t n)
{
    const char *q = p, *end = p + n;
    int depth = 0;
    do {
        if (q >= end) return 0;
        switch (*q) {
        case '"':
            for (q++; q < end && *q != '"'; q++)
                if (*q == '\\') q++;
            if (q >= end) return 0;
            q++;
            break;
        case '{': case '[': depth++; q++; break;
        case '}': case ']':
            if (--depth < 0) return 0;
            q++;
            break;
        case ',': case ':':
            if (!depth) return 0;
            q++;
            break;
        default: {
            const char *t = q;
            while (q < end && *q != ',' && *q != ':' && *q != '}' && *q != ']' && *q != '"' &&
                   *q != '{' && *q != '[')
                q++;
            if (q == t) return 0;
        }
        }
    } while (depth > 0);
    return (size_t)(q - p);
}

typedef struct {
    const char *p, *end;
    const char *k, *v; /* current member: key without quotes, value */
    size_t kn, vn;
    bool done;
} member_iter;

/* Moves to the next member of a canonical object; false on malformed text. */
static bool member_next(member_iter *it)
{
    const char *p = it->p;
    if (p >= it->end) return false;
    if (*p == '}') {
        it->done = true;
        return p + 1 == it->end;
    }
    if (*p == ',') p++;
    if (p >= it->end || *p != '"') return false;
    it->k = ++p;
    const char *q = memchr(p, '"', (size_t)(it->end - p));
    if (!q || q + 1 >= it->end || q[1] != ':') return false;
    it->kn = (size_t)(q - p);
    it->v = q + 2;
    it->vn = json_canonical_len(it->v, (size_t)(it->end - it->v));
    if (!it->vn) return false;
    it->p = it->v + it->vn;
    return it->p < it->end && (*it->p == ',' || *it->p == '}');
}

/* member_next, and the new key must sort after the one before it: canonical
 * objects have strictly ascending keys. */
static bool member_advance(member_iter *it)
{
    const char *k = it->k;
    size_t kn = it->kn;
    if (!member_next(it)) return false;
    if (it->done) return true;
    size_t m = kn < it->kn ? kn : it->kn;
    int c = memcmp(k, it->k, m);
    return c < 0 || (c == 0 && kn < it->kn);
}

static bool member_start(member_iter *it, const char *t, size_t n)
{
    *it = (member_iter){.p = t + 1, .end = t + n};
    if (n < 2 || t[0] != '{' || memchr(t, '\\', n)) return false;
    return member_next(it);
}

static void member_put(buf *out, const member_iter *it, bool *first)
{
    if (!*first) buf_putc(out, ',');
    *first = false;
    buf_putc(out, '"');
    buf_add(out, it->k, it->kn);
    buf_add(out, "\":", 2);
    buf_add(out, it->v, it->vn);
}

bool json_merge_canonical(buf *out, const char *a, size_t an, const char *b, size_t bn)
{
    /* member_next checks each value; keys are checked ascending below, so
     * each object is checked whole once, while it is merged */
    member_iter x, y;
    if (!member_start(&x, a, an) || !member_start(&y, b, bn)) return false;
    size_t mark = out->len;
    bool first = true;
    buf_reserve(out, an + bn);
    buf_putc(out, '{');
    while (!x.done || !y.done) {
        int c;
        if (x.done) c = 1;
        else if (y.done) c = -1;
        else {
            size_t m = x.kn < y.kn ? x.kn : y.kn;
            c = memcmp(x.k, y.k, m);
            if (c == 0) c = x.kn < y.kn ? -1 : x.kn > y.kn;
        }
        if (c < 0) {
            member_put(out, &x, &first);
        } else {
            member_put(out, &y, &first);
            if (!member_advance(&y)) goto bad;
        }
        if (c <= 0 && !member_advance(&x)) goto bad;
    }
    buf_putc(out, '}');
    return true;
bad:
    out->len = mark;
    out->data[mark] = 0;
    return false;
}

static int cmp_keys(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

void json_write(buf *out, const cJSON *v, bool sort_keys)
{
    if (!v) {
        buf_puts(out, "null");
        return;
    }
    switch (v->type & 0xFF) {
    case cJSON_NULL: buf_puts(out, "null"); return;
    case cJSON_True: buf_puts(out, "true"); return;
    case cJSON_False: buf_puts(out, "false"); return;
    case cJSON_Number: json_write_num(out, v->valuedouble); return;
    case cJSON_String: json_write_str(out, v->valuestring ? v->valuestring : ""); return;
    case cJSON_Raw: buf_puts(out, v->valuestring ? v->valuestring : "null"); return;
    case cJSON_Array:
        buf_putc(out, '[');
        for (const cJSON *c = v->child; c; c = c->next) {
            if (c != v->child) buf_putc(out, ',');
            json_write(out, c, sort_keys);
        }
        buf_putc(out, ']');
        return;
    case cJSON_Object: {
        buf_putc(out, '{');
        size_t n = 0;
        for (const cJSON *c = v->child; c; c = c->next) n++;
        const cJSON *small[16];
        const cJSON **kids = n <= 16 ? small : xmalloc(n * sizeof *kids);
        size_t i = 0;
        for (const cJSON *c = v->child; c; c = c->next) kids[i++] = c;
        if (sort_keys && n > 1) {
            if (n <= 16) {
                /* insertion sort: objects are small and usually sorted already */
                for (size_t a = 1; a < n; a++) {
                    const cJSON *k = kids[a];
                    size_t b = a;
                    while (b > 0 && strcmp(kids[b - 1]->string, k->string) > 0) {
                        kids[b] = kids[b - 1];
                        b--;
                    }
                    kids[b] = k;
                }
            } else {
                qsort(kids, n, sizeof *kids, cmp_keys);
            }
        }
        for (i = 0; i < n; i++) {
            if (i) buf_putc(out, ',');
            json_write_str(out, kids[i]->string ? kids[i]->string : "");
            buf_putc(out, ':');
            json_write(out, kids[i], sort_keys);
        }
        if (kids != small) free(kids);
        buf_putc(out, '}');
        return;
    }
    default: buf_puts(out, "null"); return;
    }
}

char *json_canonical(const cJSON *v, size_t *len)
{
    buf b = {0};
    json_write(&b, v, true);
    return buf_detach(&b, len);
}

cJSON *json_get(const cJSON *obj, const char *key)
{
    if (!cJSON_IsObject(obj)) return NULL;
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

int64_t json_int64(const cJSON *v)
{
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= -9.2e18 && d <= 9.2e18)) return 0;
    return (int64_t)d;
}

bool json_get_uint(const cJSON *v, uint64_t max, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    /* (double)UINT64_MAX rounds up to 2^64, which no uint64_t holds: the
     * cast of such a d would be undefined, so it is refused first */
    if (!(d >= 0) || d != floor(d) || d >= 0x1p64) return false;
    uint64_t u = (uint64_t)d;
    if (u > max) return false;
    *out = u;
    return true;
}
