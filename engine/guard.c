/*
 * guard.c - the guard language: a byte-oriented recursive-descent parser
 * into a flat node array, and an evaluator that walks it without
 * allocating.
 *
 * Nodes live in one array and refer to each other by index. && and || are
 * n-ary (a node with a list of children linked by `next`), so a long chain
 * `a && b && c ...` is one level of evaluation, not one per operand; only
 * parentheses and '!' add depth, and GUARD_MAX_DEPTH bounds both the
 * parser's and the evaluator's recursion.
 *
 * Path segments are stored NUL-terminated, one after the other, in a pool,
 * so a lookup is cJSON_GetObjectItemCaseSensitive on each in turn.
 *
 * Positions in error messages are 0-based byte offsets into the source as
 * given (before trimming), like the JSON parser's.
 */
#include "engine/guard.h"

#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/json.h"

enum { N_OR, N_AND, N_NOT, N_TRUTHY, N_CMP };
enum { OP_EQ, OP_NE, OP_GT, OP_GE, OP_LT, OP_LE };
enum { R_NULL, R_TRUE, R_FALSE, R_NUM, R_STR, R_PATH };
enum { ROOT_CTX, ROOT_PAYLOAD };

typedef struct {
    uint8_t root;
    uint32_t nseg;
    uint32_t off; /* first segment in the pool */
} gpath;

typedef struct {
    uint8_t kind, op, rkind;
    uint32_t kid;  /* first child (N_OR, N_AND, N_NOT) */
    uint32_t next; /* next sibling under an N_OR / N_AND, NONE at the end */
    gpath left;    /* N_TRUTHY, N_CMP */
    union {
        double num;
        struct {
            uint32_t off, len; /* string literal bytes in the pool */
        } str;
        gpath path;
    } right;
} gnode;

#define NONE UINT32_MAX

struct guard {
    char *src;
    gnode *nodes;
    uint32_t root;
    char *pool;
    unsigned depth; /* deepest nesting of '!' and parentheses */
};

/* ---- parser ---- */

typedef struct {
    const char *s;
    size_t len; /* end of the trimmed text */
    size_t pos;
    gnode *nodes;
    size_t n, cap;
    buf pool;
    stm_err *err;
    bool failed;
    int deepest;
} parser;

__attribute__((format(printf, 3, 4))) static bool fail_at(parser *p, size_t pos, const char *fmt,
                                                          ...)
{
    if (p->failed) return false;
    p->failed = true;
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    stm_fail(p->err, STM_BAD_REQUEST, "invalid guard expression: %s at byte %zu", reason, pos);
    return false;
}

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_fchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.';
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len && is_ws((unsigned char)p->s[p->pos]))
        p->pos++;
}

static bool at(parser *p, const char *lit)
{
    size_t n = strlen(lit);
    return p->len - p->pos >= n && memcmp(p->s + p->pos, lit, n) == 0;
}

static uint32_t new_node(parser *p, uint8_t kind)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 8;
        p->nodes = xrealloc(p->nodes, p->cap * sizeof *p->nodes);
    }
    gnode *nd = &p->nodes[p->n];
    memset(nd, 0, sizeof *nd);
    nd->kind = kind;
    nd->kid = NONE;
    nd->next = NONE;
    return (uint32_t)p->n++;
}

/* Copies the token at pos (up to whitespace or an operator character) for
 * an error message, bounded so a huge token cannot swamp the message. */
static const char *token_at(parser *p, size_t pos, char *out, size_t outsz)
{
    size_t e = pos;
    while (e < p->len && !is_ws((unsigned char)p->s[e]) && !strchr("()&|!=<>", p->s[e]))
        e++;
    if (e == pos && e < p->len) e++;
    size_t n = e - pos;
    if (n > outsz - 4) {
        n = outsz - 4;
        while (n > 0 && ((unsigned char)p->s[pos + n] & 0xC0) == 0x80)
            n--;
        memcpy(out, p->s + pos, n);
        memcpy(out + n, "...", 4);
    } else {
        memcpy(out, p->s + pos, n);
        out[n] = '\0';
    }
    return out;
}

static bool unexpected(parser *p)
{
    unsigned char c = (unsigned char)p->s[p->pos];
    if (c >= 0x20 && c < 0x7F) return fail_at(p, p->pos, "unexpected '%c'", c);
    return fail_at(p, p->pos, "unexpected byte 0x%02x", c);
}

/* field := ("ctx." | "payload.") fchar+ */
static bool parse_path(parser *p, gpath *out)
{
    size_t start = p->pos;
    if (at(p, "ctx.")) {
        out->root = ROOT_CTX;
        p->pos += 4;
    } else if (at(p, "payload.")) {
        out->root = ROOT_PAYLOAD;
        p->pos += 8;
    } else {
        return fail_at(p, start, "field must start with 'ctx.' or 'payload.'");
    }
    size_t fs = p->pos;
    while (p->pos < p->len && is_fchar((unsigned char)p->s[p->pos]))
        p->pos++;
    if (p->pos == fs) return fail_at(p, fs, "empty field name");
    out->off = (uint32_t)p->pool.len;
    out->nseg = 1;
    for (size_t i = fs; i < p->pos; i++) {
        if (p->s[i] == '.') {
            buf_putc(&p->pool, '\0');
            out->nseg++;
        } else {
            buf_putc(&p->pool, p->s[i]);
        }
    }
    buf_putc(&p->pool, '\0');
    return true;
}

static bool parse_number(parser *p, double *out)
{
    size_t start = p->pos, e = p->pos;
    if (e < p->len && p->s[e] == '-') e++;
    size_t digits = 0;
    while (e < p->len && p->s[e] >= '0' && p->s[e] <= '9')
        e++, digits++;
    if (e < p->len && p->s[e] == '.') {
        e++;
        while (e < p->len && p->s[e] >= '0' && p->s[e] <= '9')
            e++, digits++;
    }
    char tok[72];
    /* "1e5", "1.2.3", "5x": the number would end mid-word, which rstmdb
     * silently cut short; here the whole word is the bad number. */
    if (digits == 0 || (e < p->len && is_fchar((unsigned char)p->s[e])))
        return fail_at(p, start, "invalid number: '%s'", token_at(p, start, tok, sizeof tok));
    char small[64];
    size_t n = e - start;
    char *text = n < sizeof small ? small : xmalloc(n + 1);
    memcpy(text, p->s + start, n);
    text[n] = '\0';
    double d = strtod(text, NULL);
    if (text != small) free(text);
    if (!isfinite(d))
        return fail_at(p, start, "invalid number: '%s' (out of range)",
                       token_at(p, start, tok, sizeof tok));
    p->pos = e;
    *out = d;
    return true;
}

static bool parse_string(parser *p, gnode *nd)
{
    size_t start = p->pos++;
    size_t b = p->pos;
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == '"') {
            nd->rkind = R_STR;
            nd->right.str.off = (uint32_t)p->pool.len;
            nd->right.str.len = (uint32_t)(p->pos - b);
            buf_add(&p->pool, p->s + b, p->pos - b);
            buf_putc(&p->pool, '\0');
            p->pos++;
            return true;
        }
        /* A backslash only keeps the next byte from ending the string
         * (rstmdb does not decode escapes); at the very end it cannot. */
        p->pos += c == '\\' ? 2 : 1;
    }
    return fail_at(p, start, "unterminated string");
}

static bool word_is(parser *p, const char *w)
{
    size_t n = strlen(w);
    return at(p, w) && (p->pos + n >= p->len || !is_fchar((unsigned char)p->s[p->pos + n]));
}

/* The right side of a comparison: a literal or a path; ordering accepts
 * only a number or a path. */
static bool parse_rhs(parser *p, uint32_t ni, bool ordering)
{
    skip_ws(p);
    char tok[72];
    if (at(p, "ctx.") || at(p, "payload.")) {
        gpath path;
        if (!parse_path(p, &path)) return false;
        p->nodes[ni].rkind = R_PATH;
        p->nodes[ni].right.path = path;
        return true;
    }
    if (!ordering) {
        static const struct {
            const char *w;
            uint8_t k;
        } words[] = {{"true", R_TRUE}, {"false", R_FALSE}, {"null", R_NULL}};
        for (size_t i = 0; i < 3; i++) {
            if (word_is(p, words[i].w)) {
                p->pos += strlen(words[i].w);
                p->nodes[ni].rkind = words[i].k;
                return true;
            }
        }
        if (p->pos < p->len && p->s[p->pos] == '"') {
            gnode tmp = p->nodes[ni];
            if (!parse_string(p, &tmp)) return false;
            p->nodes[ni] = tmp;
            return true;
        }
    }
    size_t c = p->pos;
    if (c < p->len && (p->s[c] == '-' || p->s[c] == '.' || (p->s[c] >= '0' && p->s[c] <= '9'))) {
        double d = 0;
        if (!parse_number(p, &d)) return false;
        p->nodes[ni].rkind = R_NUM;
        p->nodes[ni].right.num = d;
        return true;
    }
    return fail_at(p, c, "invalid number: '%s'", token_at(p, c, tok, sizeof tok));
}

static bool parse_or(parser *p, uint32_t *out, int depth);

/* comparison := field [ op rhs ] */
static bool parse_comparison(parser *p, uint32_t *out)
{
    gpath left;
    if (!parse_path(p, &left)) return false;
    skip_ws(p);
    static const struct {
        const char *t;
        uint8_t op;
    } ops[] = {{"==", OP_EQ}, {"!=", OP_NE}, {">=", OP_GE},
               {"<=", OP_LE}, {">", OP_GT},  {"<", OP_LT}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        if (!at(p, ops[i].t)) continue;
        p->pos += strlen(ops[i].t);
        uint32_t ni = new_node(p, N_CMP);
        p->nodes[ni].op = ops[i].op;
        p->nodes[ni].left = left;
        if (!parse_rhs(p, ni, ops[i].op != OP_EQ && ops[i].op != OP_NE)) return false;
        *out = ni;
        return true;
    }
    uint32_t ni = new_node(p, N_TRUTHY);
    p->nodes[ni].left = left;
    *out = ni;
    return true;
}

static bool too_deep(parser *p, int depth)
{
    if (depth > p->deepest) p->deepest = depth;
    if (depth <= GUARD_MAX_DEPTH) return false;
    return !fail_at(p, p->pos,
                    "nested deeper than %d levels (limits.max_guard_depth, the most it can be "
                    "set to)",
                    GUARD_MAX_DEPTH);
}

/* unary := "!" unary | "(" or_expr ")" | comparison */
static bool parse_unary(parser *p, uint32_t *out, int depth)
{
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '!') {
        if (too_deep(p, depth + 1)) return false;
        p->pos++;
        uint32_t kid;
        if (!parse_unary(p, &kid, depth + 1)) return false;
        uint32_t ni = new_node(p, N_NOT);
        p->nodes[ni].kid = kid;
        *out = ni;
        return true;
    }
    if (p->pos < p->len && p->s[p->pos] == '(') {
        if (too_deep(p, depth + 1)) return false;
        p->pos++;
        if (!parse_or(p, out, depth + 1)) return false;
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ')') return fail_at(p, p->pos, "expected ')'");
        p->pos++;
        return true;
    }
    return parse_comparison(p, out);
}

/* Builds an n-ary node of `kind` over operands separated by `sep`. */
static bool parse_chain(parser *p, uint32_t *out, int depth, uint8_t kind, const char *sep)
{
    uint32_t first;
    bool ok =
        kind == N_AND ? parse_unary(p, &first, depth) : parse_chain(p, &first, depth, N_AND, "&&");
    if (!ok) return false;
    skip_ws(p);
    if (!at(p, sep)) {
        *out = first;
        return true;
    }
    uint32_t ni = new_node(p, kind);
    p->nodes[ni].kid = first;
    uint32_t last = first;
    while (at(p, sep)) {
        p->pos += 2;
        skip_ws(p);
        uint32_t k;
        ok = kind == N_AND ? parse_unary(p, &k, depth) : parse_chain(p, &k, depth, N_AND, "&&");
        if (!ok) return false;
        p->nodes[last].next = k;
        last = k;
        skip_ws(p);
    }
    *out = ni;
    return true;
}

static bool parse_or(parser *p, uint32_t *out, int depth)
{
    return parse_chain(p, out, depth, N_OR, "||");
}

/* Non-ASCII is allowed only inside string literals, and there it must be
 * valid UTF-8. Scanning the literals the way the parser will find them
 * lets the parser itself assume ASCII everywhere else. */
static bool check_bytes(parser *p)
{
    size_t i = 0;
    while (i < p->len) {
        unsigned char c = (unsigned char)p->s[i];
        if (c == '"') {
            size_t b = ++i;
            while (i < p->len && p->s[i] != '"')
                i += p->s[i] == '\\' ? 2 : 1;
            size_t e = i < p->len ? i : p->len;
            if (!json_utf8_valid(p->s + b, e - b)) {
                size_t k = b;
                while (k < e) {
                    unsigned char l = (unsigned char)p->s[k];
                    size_t n = l < 0xC0 ? 1 : l < 0xE0 ? 2 : l < 0xF0 ? 3 : 4;
                    if (k + n > e || !json_utf8_valid(p->s + k, n)) break;
                    k += n;
                }
                return fail_at(p, k, "invalid UTF-8 in string literal");
            }
            i++;
            continue;
        }
        if (c >= 0x80) return fail_at(p, i, "non-ASCII character outside a string literal");
        i++;
    }
    return true;
}

guard *guard_compile(const char *src, size_t len, stm_err *err)
{
    parser p = {.s = src, .len = len, .err = err};
    if (len > GUARD_MAX_LEN) {
        fail_at(&p, GUARD_MAX_LEN, "longer than %d bytes", GUARD_MAX_LEN);
        return NULL;
    }
    size_t b = 0;
    while (b < len && is_ws((unsigned char)src[b]))
        b++;
    while (p.len > b && is_ws((unsigned char)src[p.len - 1]))
        p.len--;
    if (b == p.len) {
        fail_at(&p, b, "empty guard expression");
        return NULL;
    }
    p.pos = b;
    uint32_t root = NONE;
    if (check_bytes(&p) && parse_or(&p, &root, 0)) {
        skip_ws(&p);
        if (p.pos < p.len) unexpected(&p);
    }
    if (p.failed) {
        free(p.nodes);
        buf_free(&p.pool);
        return NULL;
    }
    guard *g = xmalloc(sizeof *g);
    g->src = xstrndup(src, len);
    g->nodes = xrealloc(p.nodes, p.n * sizeof *p.nodes);
    g->root = root;
    g->pool = buf_detach(&p.pool, NULL);
    g->depth = (unsigned)p.deepest;
    return g;
}

unsigned guard_depth(const guard *g)
{
    return g->depth;
}

void guard_free(guard *g)
{
    if (!g) return;
    free(g->src);
    free(g->nodes);
    free(g->pool);
    free(g);
}

const char *guard_source(const guard *g)
{
    return g->src;
}

/* ---- evaluation ---- */

/* What one evaluation reads. The context comes as a tree or as its stored
 * canonical text; from text, a looked-up value is materialised into one of
 * two stack nodes (a comparison needs both sides at once). A value the text
 * path does not decode (an escape in a key or string on the path, a long
 * string) sets need_tree: the caller parses the context and evaluates again. */
typedef struct {
    const cJSON *ctx, *payload;
    const char *text;
    size_t text_len;
    cJSON slot[2];
    char str[2][256];
    bool need_tree;
} env;

/* A child for materialised non-empty containers: truthiness only asks
 * whether there is one. */
static cJSON some_child;

/* Counters and amounts in contexts are mostly small integers; up to 15
 * digits the integer is exact in a double, so this equals strtod's answer
 * without strtod's cost (a fifth of a guard's evaluation). */
static bool small_int(const char *p, size_t len, double *out)
{
    size_t i = p[0] == '-';
    if (len == i || len - i > 15) return false;
    int64_t v = 0;
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') return false;
        v = v * 10 + (p[i] - '0');
    }
    *out = p[0] == '-' ? -(double)v : (double)v;
    return true;
}

static const cJSON *lookup_text(env *v, const gpath *path, const char *seg, int slot)
{
    const char *p = v->text, *end = v->text + v->text_len;
    for (uint32_t i = 0; i < path->nseg; i++, seg += strlen(seg) + 1) {
        if (p >= end || *p != '{') return NULL;
        size_t sn = strlen(seg);
        bool found = false;
        for (p++; p < end && *p != '}';) {
            if (*p == ',') p++;
            const char *k = p + 1, *q = memchr(k, '"', (size_t)(end - k));
            if (*p != '"' || !q || q + 1 >= end || q[1] != ':' || memchr(k, '\\', (size_t)(q - k))) {
                v->need_tree = true;
                return NULL;
            }
            const char *val = q + 2;
            size_t vn = json_value_len(val, (size_t)(end - val));
            if (!vn) {
                v->need_tree = true;
                return NULL;
            }
            if ((size_t)(q - k) == sn && memcmp(k, seg, sn) == 0) {
                p = val;
                end = val + vn;
                found = true;
                break;
            }
            p = val + vn;
        }
        if (!found) return NULL;
    }
    cJSON *n = &v->slot[slot];
    memset(n, 0, sizeof *n);
    size_t len = (size_t)(end - p);
    switch (*p) {
    case 'n': return NULL;
    case 't': n->type = cJSON_True; return n;
    case 'f': n->type = cJSON_False; return n;
    case '{':
    case '[':
        n->type = *p == '{' ? cJSON_Object : cJSON_Array;
        n->child = len > 2 ? &some_child : NULL;
        return n;
    case '"':
        if (len - 2 >= sizeof v->str[slot] || memchr(p + 1, '\\', len - 2)) {
            v->need_tree = true;
            return NULL;
        }
        memcpy(v->str[slot], p + 1, len - 2);
        v->str[slot][len - 2] = 0;
        n->type = cJSON_String;
        n->valuestring = v->str[slot];
        return n;
    default: {
        n->type = cJSON_Number;
        if (small_int(p, len, &n->valuedouble)) return n;
        /* as cJSON reads a number: strtod over the token */
        char num[64];
        if (len >= sizeof num) {
            v->need_tree = true;
            return NULL;
        }
        memcpy(num, p, len);
        num[len] = 0;
        n->valuedouble = strtod(num, NULL);
        return n;
    }
    }
}

/* NULL stands for JSON null, whether absent or explicit. */
static const cJSON *lookup(const guard *g, const gpath *path, env *v, int slot)
{
    const char *seg = g->pool + path->off;
    if (path->root == ROOT_CTX && !v->ctx && v->text) return lookup_text(v, path, seg, slot);
    const cJSON *cur = path->root == ROOT_PAYLOAD ? v->payload : v->ctx;
    for (uint32_t i = 0; i < path->nseg; i++) {
        if (!cJSON_IsObject(cur)) return NULL;
        cur = cJSON_GetObjectItemCaseSensitive(cur, seg);
        seg += strlen(seg) + 1;
    }
    if (cur && (cJSON_IsNull(cur) || cJSON_IsInvalid(cur))) return NULL;
    return cur;
}

static bool truthy(const cJSON *v)
{
    if (!v) return false;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    if (cJSON_IsNumber(v)) return v->valuedouble != 0.0;
    if (cJSON_IsString(v)) return v->valuestring && v->valuestring[0];
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) return v->child != NULL;
    return false;
}

static bool num_eq(double a, double b)
{
    return fabs(a - b) < DBL_EPSILON;
}

/* The equality table of rstmdb: same-kind scalars only; arrays and objects
 * never compare equal. */
static bool values_equal(const cJSON *a, const cJSON *b)
{
    if (!a || !b) return !a && !b;
    if (cJSON_IsBool(a) && cJSON_IsBool(b)) return cJSON_IsTrue(a) == cJSON_IsTrue(b);
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b)) return num_eq(a->valuedouble, b->valuedouble);
    if (cJSON_IsString(a) && cJSON_IsString(b))
        return strcmp(a->valuestring ? a->valuestring : "", b->valuestring ? b->valuestring : "") ==
               0;
    return false;
}

static bool eq_literal(const guard *g, const gnode *nd, const cJSON *v)
{
    switch (nd->rkind) {
    case R_NULL:
        return v == NULL;
    case R_TRUE:
        return cJSON_IsTrue(v);
    case R_FALSE:
        return cJSON_IsFalse(v);
    case R_NUM:
        return cJSON_IsNumber(v) && num_eq(v->valuedouble, nd->right.num);
    case R_STR: {
        if (!cJSON_IsString(v) || !v->valuestring) return false;
        size_t n = strlen(v->valuestring);
        return n == nd->right.str.len &&
               memcmp(v->valuestring, g->pool + nd->right.str.off, n) == 0;
    }
    }
    return false;
}

static bool eval_cmp(const guard *g, const gnode *nd, env *v)
{
    const cJSON *l = lookup(g, &nd->left, v, 0);
    const cJSON *r = nd->rkind == R_PATH ? lookup(g, &nd->right.path, v, 1) : NULL;
    if (nd->op == OP_EQ || nd->op == OP_NE) {
        bool eq = nd->rkind == R_PATH ? values_equal(l, r) : eq_literal(g, nd, l);
        return nd->op == OP_EQ ? eq : !eq;
    }
    if (!cJSON_IsNumber(l)) return false;
    double a = l->valuedouble, b;
    if (nd->rkind == R_PATH) {
        if (!cJSON_IsNumber(r)) return false;
        b = r->valuedouble;
    } else {
        b = nd->right.num;
    }
    switch (nd->op) {
    case OP_GT:
        return a > b;
    case OP_GE:
        return a >= b;
    case OP_LT:
        return a < b;
    case OP_LE:
        return a <= b;
    }
    return false;
}

static bool eval_node(const guard *g, uint32_t i, env *v)
{
    const gnode *nd = &g->nodes[i];
    switch (nd->kind) {
    case N_OR:
        for (uint32_t k = nd->kid; k != NONE; k = g->nodes[k].next)
            if (eval_node(g, k, v)) return true;
        return false;
    case N_AND:
        for (uint32_t k = nd->kid; k != NONE; k = g->nodes[k].next)
            if (!eval_node(g, k, v)) return false;
        return true;
    case N_NOT:
        return !eval_node(g, nd->kid, v);
    case N_TRUTHY:
        return truthy(lookup(g, &nd->left, v, 0));
    case N_CMP:
        return eval_cmp(g, nd, v);
    }
    return false;
}

bool guard_eval(const guard *g, const cJSON *ctx, const cJSON *payload)
{
    env v = {.ctx = ctx, .payload = payload};
    return eval_node(g, g->root, &v);
}

int guard_eval_text(const guard *g, const char *ctx_text, size_t len, const cJSON *payload)
{
    env v = {.payload = payload, .text = ctx_text, .text_len = len};
    bool r = eval_node(g, g->root, &v);
    return v.need_tree ? -1 : r;
}
