/*
 * entry.c - the fields of a WAL entry, read straight from its text.
 *
 * Every live write and every replayed record goes through here, so this is
 * the hot path of both. Entries that stmfs writes are canonical JSON: the
 * fields are found in one pass over the bytes, strings copied out, and the
 * embedded values (ctx, payload, definition) taken verbatim once
 * json_canonical_len vouches that they are exactly what a parse and rewrite
 * would give. Anything else (rstmdb's float contexts, escapes in ids,
 * whitespace) takes the slow path: a cJSON parse and canonical rewrite.
 * Both give the same fields, byte for byte; the slow path is the
 * definition of what the fast one must produce.
 */
#include "engine/internal.h"

#include <stdlib.h>
#include <string.h>

enum {
    F_INSTANCE_ID, F_MACHINE, F_EVENT, F_FROM, F_TO, F_INITIAL_STATE, F_EVENT_ID, F_KEY,
    F_PAYLOAD, F_CTX, F_INITIAL_CTX, F_DEFINITION, F_COUNT
};

/* Which field a key names, -1 for the numbers and flags handled apart, -2 for
 * keys the engine ignores. */
static int field_of(const char *k, size_t n)
{
#define IS(lit) (n == sizeof lit - 1 && !memcmp(k, lit, n))
    switch (n ? k[0] : 0) {
    case 'c': return IS("ctx") ? F_CTX : -2;
    case 'd': return IS("definition") ? F_DEFINITION : -2;
    case 'e': return IS("event") ? F_EVENT : IS("event_id") ? F_EVENT_ID : -2;
    case 'f': return IS("from_state") ? F_FROM : -2;
    case 'g': return IS("generated_id") ? -1 : -2;
    case 'i':
        return IS("instance_id")       ? F_INSTANCE_ID
               : IS("idempotency_key") ? F_KEY
               : IS("initial_state")   ? F_INITIAL_STATE
               : IS("initial_ctx")     ? F_INITIAL_CTX
                                       : -2;
    case 'm': return IS("machine") ? F_MACHINE : -2;
    case 'p': return IS("payload") ? F_PAYLOAD : -2;
    case 't': return IS("to_state") || IS("ts") || IS("txn") ? (IS("to_state") ? F_TO : -1) : -2;
    case 'v': return IS("version") ? -1 : -2;
    default: return -2;
    }
#undef IS
}

static bool is_string_field(int f)
{
    return f >= 0 && f < F_PAYLOAD;
}

/* Where each field's text sits in store while it may still move. */
typedef struct {
    size_t off[F_COUNT], len[F_COUNT];
    bool has[F_COUNT];
} spans;

static void put(spans *sp, buf *store, int f, const char *p, size_t n)
{
    sp->off[f] = store->len;
    sp->len[f] = n;
    sp->has[f] = true;
    buf_add(store, p, n);
    buf_putc(store, 0);
}

static void resolve(const spans *sp, const buf *store, entry_fields *f)
{
    const char **str[F_PAYLOAD] = {&f->instance_id, &f->machine, &f->event, &f->from_state,
                                   &f->to_state, &f->initial_state, &f->event_id,
                                   &f->idempotency_key};
    for (int i = 0; i < F_PAYLOAD; i++) *str[i] = sp->has[i] ? store->data + sp->off[i] : NULL;
    const char **raw[] = {&f->payload, &f->ctx, &f->initial_ctx, &f->definition};
    size_t *raw_len[] = {&f->payload_len, &f->ctx_len, &f->initial_ctx_len, &f->definition_len};
    for (int i = F_PAYLOAD; i < F_COUNT; i++) {
        *raw[i - F_PAYLOAD] = sp->has[i] ? store->data + sp->off[i] : NULL;
        *raw_len[i - F_PAYLOAD] = sp->has[i] ? sp->len[i] : 0;
    }
}

/* The value of an integer token that json_canonical_len accepted (at most
 * 15 digits, so no overflow). */
static int64_t int_token(const char *p, size_t n)
{
    int64_t x = 0;
    for (size_t i = p[0] == '-'; i < n; i++) x = x * 10 + (p[i] - '0');
    return p[0] == '-' ? -x : x;
}

static void set_number(entry_fields *f, const char *k, size_t kn, bool is_num, int64_t v)
{
    if (kn == 2) { /* ts */
        f->ts = is_num ? v : 0;
    } else if (kn == 3) { /* txn */
        f->has_txn = is_num && v >= 0;
        f->txn = f->has_txn ? (uint64_t)v : 0;
    } else if (k[0] == 'v') {
        f->has_version = is_num && v >= 0;
        f->version = f->has_version ? (uint64_t)v : 0;
    }
}

/* One pass over canonical-looking text; false sends the caller to the slow
 * path (and leaves nothing it relies on). */
static bool scan_fast(const char *p, size_t n, buf *store, spans *sp, entry_fields *f)
{
    const char *end = p + n;
    if (n < 2 || p[0] != '{') return false;
    p++;
    if (*p == '}') return p + 1 == end;
    for (;;) {
        if (p >= end || *p != '"') return false;
        const char *k = ++p;
        while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) p++;
        if (p >= end || *p != '"') return false;
        size_t kn = (size_t)(p - k);
        p++;
        if (p >= end || *p != ':') return false;
        p++;
        size_t vn = json_canonical_len(p, (size_t)(end - p));
        if (!vn) return false;
        int fld = field_of(k, kn);
        if (is_string_field(fld)) {
            if (*p == '"') {
                if (memchr(p + 1, '\\', vn - 2)) return false; /* escapes: slow path */
                put(sp, store, fld, p + 1, vn - 2);
            } else {
                sp->has[fld] = false; /* not a string: as good as absent */
            }
        } else if (fld >= F_PAYLOAD) {
            put(sp, store, fld, p, vn);
        } else if (fld == -1) {
            if (k[0] == 'g') {
                f->generated_id = vn == 4 && !memcmp(p, "true", 4);
            } else {
                bool num = *p == '-' || (*p >= '0' && *p <= '9');
                set_number(f, k, kn, num, num ? int_token(p, vn) : 0);
            }
        }
        p += vn;
        if (p >= end) return false;
        if (*p == '}') return p + 1 == end;
        if (*p != ',') return false;
        p++;
    }
}

static bool scan_slow(const char *text, size_t n, buf *store, spans *sp, entry_fields *f)
{
    cJSON *entry = json_parse_trusted(text, n);
    if (!entry) return false;
    if (cJSON_IsObject(entry)) {
        for (const cJSON *c = entry->child; c; c = c->next) {
            const char *k = c->string;
            size_t kn = strlen(k);
            int fld = field_of(k, kn);
            if (is_string_field(fld)) {
                if (cJSON_IsString(c)) put(sp, store, fld, c->valuestring, strlen(c->valuestring));
                else sp->has[fld] = false;
            } else if (fld >= F_PAYLOAD) {
                sp->off[fld] = store->len;
                json_write(store, c, true);
                sp->len[fld] = store->len - sp->off[fld];
                sp->has[fld] = true;
                buf_putc(store, 0);
            } else if (fld == -1) {
                if (k[0] == 'g') {
                    f->generated_id = cJSON_IsTrue(c);
                } else if (kn == 2) {
                    f->ts = json_int64(c);
                } else {
                    uint64_t v = 0;
                    bool ok = json_get_uint(c, UINT64_MAX, &v) && v <= (uint64_t)INT64_MAX;
                    set_number(f, k, kn, ok, (int64_t)v);
                }
            }
        }
    }
    cJSON_Delete(entry);
    return true;
}

static bool scan(const char *text, size_t len, buf *store, entry_fields *f, bool fast)
{
    spans sp;
    memset(&sp, 0, sizeof sp);
    memset(f, 0, sizeof *f);
    buf_reset(store);
    buf_reserve(store, len + F_COUNT + 1);
    if (!fast || !scan_fast(text, len, store, &sp, f)) {
        memset(&sp, 0, sizeof sp);
        memset(f, 0, sizeof *f);
        buf_reset(store);
        if (!scan_slow(text, len, store, &sp, f)) return false;
    }
    resolve(&sp, store, f);
    return true;
}

bool entry_scan(const char *text, size_t len, buf *store, entry_fields *f)
{
    return scan(text, len, store, f, true);
}

bool entry_scan_tree(const char *text, size_t len, buf *store, entry_fields *f)
{
    return scan(text, len, store, f, false);
}
