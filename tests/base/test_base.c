/*
 * test_base.c - unit tests of base/: CRC-32C (both implementations),
 * the growable buffer, and canonical JSON.
 */
#include <check.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "base/htab.h"
#include "base/json.h"
#include "base/util.h"

/* The bit-at-a-time definition, as rcp-protocol.md gives it. */
static uint32_t crc_ref(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0);
    }
    return c ^ 0xFFFFFFFFu;
}

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

static void check_vectors(crc_fn f)
{
    ck_assert_uint_eq(f(0, "123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(f(0, "", 0), 0);
    const char *ping = "{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\",\"params\":{}}";
    ck_assert_uint_eq(f(0, ping, strlen(ping)), 0xC32009C4u);
    /* 32 zero bytes and 32 0xFF bytes (RFC 3720 B.4). */
    unsigned char z[32] = {0}, o[32];
    memset(o, 0xff, sizeof o);
    ck_assert_uint_eq(f(0, z, 32), 0x8A9136AAu);
    ck_assert_uint_eq(f(0, o, 32), 0x62A8AB43u);
    /* Every length and alignment against the definition, and continuation. */
    unsigned char *b = malloc(1100);
    for (int i = 0; i < 1100; i++)
        b[i] = (unsigned char)(i * 131 + 7);
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n < 1000; n += (n < 80 ? 1 : 37)) {
            uint32_t want = crc_ref(b + off, n);
            ck_assert_uint_eq(f(0, b + off, n), want);
            size_t cut = n / 3;
            ck_assert_uint_eq(f(f(0, b + off, cut), b + off + cut, n - cut), want);
        }
    free(b);
}

START_TEST(test_crc_sw)
{
    check_vectors(crc32c_sw);
}
END_TEST

START_TEST(test_crc_hw)
{
    if (!crc32c_hw_available()) return; /* nothing to test on this CPU */
    check_vectors(crc32c_hw);
}
END_TEST

START_TEST(test_crc_dispatch)
{
    check_vectors(crc32c);
}
END_TEST

START_TEST(test_buf)
{
    buf b = {0};
    ck_assert_str_eq(buf_cstr(&b), "");
    buf_puts(&b, "hello");
    buf_putc(&b, ' ');
    buf_printf(&b, "%d-%s", 42, "x");
    ck_assert_str_eq(buf_cstr(&b), "hello 42-x");
    ck_assert_uint_eq(b.len, 10);
    for (int i = 0; i < 10000; i++)
        buf_add(&b, "ab", 2);
    ck_assert_uint_eq(b.len, 20010);
    ck_assert_int_eq(b.data[b.len], 0);
    buf_reset(&b);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_str_eq(buf_cstr(&b), "");
    buf_add(&b, "a\0b", 3);
    size_t n;
    char *d = buf_detach(&b, &n);
    ck_assert_uint_eq(n, 3);
    ck_assert_mem_eq(d, "a\0b", 3);
    free(d);
    ck_assert_uint_eq(b.len, 0);
    buf_free(&b);
}
END_TEST

static char *canon(const char *in, bool sort)
{
    stm_err err;
    cJSON *v = json_parse(in, strlen(in), &err);
    ck_assert_msg(v != NULL, "parse %s: %s", in, err.msg);
    buf b = {0};
    json_write(&b, v, sort);
    cJSON_Delete(v);
    return buf_detach(&b, NULL);
}

START_TEST(test_json_canonical)
{
    char *s = canon("{ \"b\" : 1, \"a\" : {\"z\":[1, 2, {\"y\":null,\"x\":true}], \"c\":\"d/e\"} }",
                    true);
    ck_assert_str_eq(s, "{\"a\":{\"c\":\"d/e\",\"z\":[1,2,{\"x\":true,\"y\":null}]},\"b\":1}");
    free(s);
    s = canon("{\"b\":1,\"a\":2}", false);
    ck_assert_str_eq(s, "{\"b\":1,\"a\":2}");
    free(s);
    s = canon("[99.99, 1e100, 12345678901234, -3, 1000.0, 0.1]", true);
    ck_assert_str_eq(s, "[99.99,1e100,12345678901234,-3,1000,0.1]");
    free(s);
    s = canon("\"\\u00e9\\n\\t\\u0001\\\"\\\\\"", true);
    ck_assert_str_eq(s, "\"\xc3\xa9\\n\\t\\u0001\\\"\\\\\"");
    free(s);
}
END_TEST

/* json_canonical_len may say "not canonical" too often (the slow path then
 * rewrites the text), but never "canonical" for text that the parse-and-write
 * path would change: stored bytes would then differ between the two paths. */
static bool rewrites_to_itself(const char *t, size_t n)
{
    cJSON *v = json_parse_trusted(t, n);
    if (!v) return false;
    buf b = {0};
    json_write(&b, v, true);
    bool same = b.len == n && memcmp(b.data, t, n) == 0;
    buf_free(&b);
    cJSON_Delete(v);
    return same;
}

/* json_num_len is the length json_write_num writes, at every power of ten
 * (where a digit count goes wrong first) and at the ends of the integer path. */
START_TEST(test_json_num_len)
{
    double vals[64];
    int n = 0;
    double p = 1;
    for (int i = 0; i <= 18; i++, p *= 10) {
        vals[n++] = p - 1;
        vals[n++] = p;
        vals[n++] = -p;
    }
    vals[n++] = 9.1e18;
    vals[n++] = -9.1e18;
    vals[n++] = 9007199254740993.0;
    vals[n++] = 0.5;
    vals[n++] = -1.25e-7;
    vals[n++] = 1e300;
    for (int i = 0; i < n; i++) {
        buf b = {0};
        json_write_num(&b, vals[i]);
        ck_assert_msg(json_num_len(vals[i]) == b.len, "%.17g: len %zu, written \"%s\"", vals[i],
                      json_num_len(vals[i]), b.data);
        buf_free(&b);
    }
}
END_TEST

/* json_str_len is json_strn_len over the whole C string, escapes included. */
START_TEST(test_json_str_len)
{
    const char *cases[] = {"", "a", "plain text", "q\"uote", "back\\slash", "nl\n cr\r tab\t",
                           "\b\f", "\x01\x1f\x7f", "caf\xc3\xa9 \xe6\x97\xa5", "\"\"\\\\"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf b = {0};
        json_write_str(&b, cases[i]);
        ck_assert_uint_eq(json_str_len(cases[i]), json_strn_len(cases[i], strlen(cases[i])));
        ck_assert_uint_eq(json_str_len(cases[i]), b.len);
        buf_free(&b);
    }
    /* Against a reference escaper written from RFC 8259, every byte value
     * at each of the first eight positions and random strings up to 40
     * bytes: the same text, and json_strn_len says its length. */
    srand(11);
    for (int round = 0; round < 20000; round++) {
        char s[41];
        size_t n = (size_t)(rand() % 41);
        for (size_t i = 0; i < n; i++)
            s[i] = (char)(rand() % 4 ? 'a' + rand() % 26 : rand() % 256);
        if (n && round < 256 * 8) s[(size_t)(round / 256) % n] = (char)(round % 256);
        buf want = {0};
        buf_putc(&want, '"');
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            char e[8];
            if (c == '"') buf_add(&want, "\\\"", 2);
            else if (c == '\\') buf_add(&want, "\\\\", 2);
            else if (c == '\n') buf_add(&want, "\\n", 2);
            else if (c == '\r') buf_add(&want, "\\r", 2);
            else if (c == '\t') buf_add(&want, "\\t", 2);
            else if (c == '\b') buf_add(&want, "\\b", 2);
            else if (c == '\f') buf_add(&want, "\\f", 2);
            else if (c < 0x20) {
                snprintf(e, sizeof e, "\\u%04x", c);
                buf_add(&want, e, 6);
            } else buf_putc(&want, (char)c);
        }
        buf_putc(&want, '"');
        buf got = {0};
        json_write_strn(&got, s, n);
        ck_assert_uint_eq(got.len, want.len);
        ck_assert_int_eq(memcmp(got.data, want.data, got.len), 0);
        ck_assert_uint_eq(json_strn_len(s, n), want.len);
        buf_free(&got);
        buf_free(&want);
    }
}
END_TEST

START_TEST(test_json_canonical_len)
{
    static const char *yes[] = {
        "{}", "[]", "0", "-1", "123456789012345", "true", "false", "null", "\"\"",
        "\"a\\\"b\\\\c\\n\\u001f\\u0001\"", "{\"a\":1,\"b\":[1,{\"c\":null}],\"ba\":\"x\"}",
        "{\"\":0,\"a\":{},\"ab\":[]}", "\"caf\xc3\xa9 /\"", "[[[[]]]]",
    };
    static const char *no[] = {
        "{\"b\":1,\"a\":2}", "{\"a\":1,\"a\":2}", "{ }", "[1, 2]", "1.5", "1e5", "-0", "01",
        "1234567890123456", "\"\\/\"", "\"\\u0000\"", "\"\\u001F\"", "\"\\u000a\"",
        "\"\\u0041\"", "{\"a\\n\":1}", "\"\x01\"", "{\"a\":1", "[1,]", "{\"a\"1}", "tru", "",
        "nul", "[1}", "{\"a\":1]",
    };
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        size_t n = strlen(yes[i]);
        ck_assert_msg(json_canonical_len(yes[i], n) == n, "%s", yes[i]);
        ck_assert_msg(rewrites_to_itself(yes[i], n), "%s", yes[i]);
        /* the length of the value alone, with text after it */
        char *t = malloc(n + 3);
        memcpy(t, yes[i], n);
        memcpy(t + n, ",x", 3);
        ck_assert_uint_eq(json_canonical_len(t, n + 2), n);
        free(t);
    }
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        ck_assert_msg(json_canonical_len(no[i], strlen(no[i])) != strlen(no[i]) ||
                          !strlen(no[i]),
                      "%s", no[i]);
    /* deep nesting stops at JSON_MAX_DEPTH instead of overflowing */
    char deep[2 * (JSON_MAX_DEPTH + 8) + 1];
    for (int i = 0; i < JSON_MAX_DEPTH + 8; i++) {
        deep[i] = '[';
        deep[2 * (JSON_MAX_DEPTH + 8) - 1 - i] = ']';
    }
    ck_assert_uint_eq(json_canonical_len(deep, 2 * (JSON_MAX_DEPTH + 8)), 0);
    /* random mutations of canonical text: whatever is accepted rewrites to itself */
    const char *seed = "{\"a\":[1,-2,{\"b\":\"x\\ty\"}],\"c\":{\"d\":true,\"e\":null},\"f\":\"\\u0002\"}";
    size_t sn = strlen(seed);
    static const char alphabet[] = "{}[]\":,-0159.eEtrufalsn\\/ bacdu\x01\xc3";
    unsigned r = 12345;
    int accepted = 0;
    for (int round = 0; round < 200000; round++) {
        char t[128];
        memcpy(t, seed, sn);
        size_t n = sn;
        int edits = 1 + (int)((r = r * 1103515245u + 12345u) >> 16) % 3;
        for (int k = 0; k < edits; k++) {
            r = r * 1103515245u + 12345u;
            size_t at = (r >> 16) % n;
            r = r * 1103515245u + 12345u;
            char c = alphabet[(r >> 16) % (sizeof alphabet - 1)];
            r = r * 1103515245u + 12345u;
            switch ((r >> 16) % 3) {
            case 0: t[at] = c; break;
            case 1: if (n > 1) { memmove(t + at, t + at + 1, n - at - 1); n--; } break;
            default: if (n < sizeof t - 1) { memmove(t + at + 1, t + at, n - at); t[at] = c; n++; } break;
            }
        }
        size_t len = json_canonical_len(t, n);
        if (len) {
            accepted++;
            ck_assert_msg(rewrites_to_itself(t, len), "accepted non-canonical %.*s", (int)len, t);
        }
    }
    ck_assert_int_gt(accepted, 1000);
}
END_TEST

/* The text merge must give what the tree merge it replaces gives. */
START_TEST(test_json_merge_canonical)
{
    static const char *objs[] = {
        "{}", "{\"a\":1}", "{\"b\":[1,2],\"c\":{\"x\":null}}", "{\"a\":\"z\",\"aa\":true}",
        "{\"\":0,\"zz\":-5}", "{\"a\":{\"a\":1},\"c\":2,\"d\":3}", "{\"ab\":1,\"b\":2}",
    };
    size_t n = sizeof objs / sizeof *objs;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            cJSON *a = cJSON_Parse(objs[i]), *b = cJSON_Parse(objs[j]);
            for (const cJSON *c = b->child; c; c = c->next) {
                cJSON *dup = cJSON_Duplicate(c, true);
                if (json_get(a, c->string)) cJSON_ReplaceItemInObjectCaseSensitive(a, c->string, dup);
                else cJSON_AddItemToObject(a, c->string, dup);
            }
            buf want = {0}, got = {0};
            json_write(&want, a, true);
            buf_puts(&got, "x");
            ck_assert(json_merge_canonical(&got, objs[i], strlen(objs[i]), objs[j], strlen(objs[j])));
            ck_assert_str_eq(got.data + 1, want.data);
            buf_free(&want);
            buf_free(&got);
            cJSON_Delete(a);
            cJSON_Delete(b);
        }
    /* anything it cannot vouch for is left to the caller, out untouched */
    static const char *refused[] = {"[]", "null", "{\"b\":1,\"a\":2}", "{\"a\\n\":1}",
                                    "{\"a\":\"\\t\"}", "{ }", "{\"a\":1.5}"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        buf out = {0};
        buf_puts(&out, "keep");
        ck_assert(!json_merge_canonical(&out, refused[i], strlen(refused[i]), "{}", 2));
        ck_assert(!json_merge_canonical(&out, "{}", 2, refused[i], strlen(refused[i])));
        ck_assert_str_eq(out.data, "keep");
        buf_free(&out);
    }
}
END_TEST

/* Objects past the pairwise size take the hashed duplicate pass: against a
 * model of serde_json's rule (the last occurrence wins, in the position of
 * that last occurrence) on random objects of 1 to 300 members drawn from
 * few keys, in both the malloc'd and the arena parser. */
START_TEST(test_json_duplicates_model)
{
    unsigned seed = 7;
    json_arena *ar = json_arena_new();
    for (int round = 0; round < 400; round++) {
        int n = 1 + (int)(rand_r(&seed) % 300);
        int nkeys = 1 + (int)(rand_r(&seed) % (n + 1));
        int *key = malloc(sizeof(int) * (size_t)n);
        buf text = {0};
        buf_add(&text, "{", 1);
        for (int i = 0; i < n; i++) {
            key[i] = (int)(rand_r(&seed) % (unsigned)nkeys);
            char m[48];
            int ml = snprintf(m, sizeof m, "%s\"key%d\":%d", i ? "," : "", key[i], i);
            buf_add(&text, m, (size_t)ml);
        }
        buf_add(&text, "}", 1);
        /* model: member i stays unless its key comes again later */
        int first_dup = -1, kept = 0;
        for (int i = 0; i < n; i++) {
            bool later = false;
            for (int j = i + 1; j < n && !later; j++)
                later = key[j] == key[i];
            if (later && first_dup < 0) first_dup = key[i];
            if (!later) kept++;
        }
        stm_err err;
        for (int arena = 0; arena < 2; arena++) {
            cJSON *v = arena ? json_parse_arena(ar, text.data, text.len, &err)
                             : json_parse(text.data, text.len, &err);
            ck_assert_ptr_nonnull(v);
            ck_assert_int_eq(cJSON_GetArraySize(v), kept);
            const cJSON *c = v->child;
            for (int i = 0; i < n; i++) {
                bool later = false;
                for (int j = i + 1; j < n && !later; j++)
                    later = key[j] == key[i];
                if (later) continue;
                char k[24];
                snprintf(k, sizeof k, "key%d", key[i]);
                ck_assert_ptr_nonnull(c);
                ck_assert_str_eq(c->string, k);
                ck_assert_int_eq(c->valueint, i);
                c = c->next;
            }
            ck_assert_ptr_null(c);
            if (first_dup < 0) {
                ck_assert_ptr_null(json_duplicate_key(v));
            } else {
                char k[24];
                snprintf(k, sizeof k, "key%d", first_dup);
                ck_assert_str_eq(json_duplicate_key(v), k);
            }
            if (arena) {
                json_arena_reset(ar);
                continue;
            }
            /* what remains is a well-formed list cJSON can still edit */
            if (kept > 1) {
                cJSON_DeleteItemFromObjectCaseSensitive(v, v->child->next->string);
                ck_assert_int_eq(cJSON_GetArraySize(v), kept - 1);
                ck_assert_ptr_eq(v->child->prev->next, NULL);
            }
            cJSON_Delete(v);
        }
        buf_free(&text);
        free(key);
    }
    json_arena_free(ar);
}
END_TEST

START_TEST(test_json_rejects)
{
    stm_err err;
    ck_assert_ptr_null(json_parse("{\"a\":1} x", 9, &err));
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    ck_assert_ptr_null(json_parse("{\"a\":", 5, &err));
    ck_assert_ptr_null(json_parse("\"\xff\"", 3, &err));
    char deep[300];
    memset(deep, '[', 200);
    ck_assert_ptr_null(json_parse(deep, 200, &err));
    /* The last duplicate key wins. */
    cJSON *v = json_parse("{\"a\":1,\"a\":2}", 13, &err);
    ck_assert_ptr_nonnull(v);
    uint64_t n;
    ck_assert(json_get_uint(json_get(v, "a"), 10, &n));
    ck_assert_uint_eq(n, 2);
    ck_assert_ptr_null(json_get(v, "A"));
    /* ...and the object says which key it was, for structures that refuse it */
    ck_assert_str_eq(json_duplicate_key(v), "a");
    cJSON_Delete(v);
    v = json_parse("{\"o\":{\"x\":1,\"y\":2,\"x\":3,\"y\":4},\"p\":{\"z\":1}}", 43, &err);
    ck_assert_ptr_nonnull(v);
    ck_assert_ptr_null(json_duplicate_key(v));
    ck_assert_str_eq(json_duplicate_key(json_get(v, "o")), "x");
    ck_assert_ptr_null(json_duplicate_key(json_get(v, "p")));
    ck_assert_ptr_null(json_duplicate_key(json_get(json_get(v, "o"), "x")));
    cJSON *copy = cJSON_Duplicate(v, true);
    ck_assert_str_eq(json_duplicate_key(json_get(copy, "o")), "x");
    cJSON_Delete(copy);
    json_arena *ar = json_arena_new();
    cJSON *av = json_parse_arena(ar, "{\"k\":1,\"k\":2}", 13, &err);
    ck_assert_str_eq(json_duplicate_key(av), "k");
    json_arena_free(ar);
    cJSON_Delete(v);
    /* Numbers at 2^64 (all that round to it, UINT64_MAX among them) are
     * out of range, not undefined; the largest double below it fits. */
    static const char *const big[] = {"18446744073709551615", "18446744073709551598",
                                      "1e20", "-1", "1.5"};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        cJSON *b = json_parse(big[i], strlen(big[i]), &err);
        ck_assert_ptr_nonnull(b);
        ck_assert_msg(!json_get_uint(b, UINT64_MAX, &n), "%s taken", big[i]);
        cJSON_Delete(b);
    }
    cJSON *top = json_parse("18446744073709549568", 20, &err);
    ck_assert(json_get_uint(top, UINT64_MAX, &n));
    ck_assert_uint_eq(n, 18446744073709549568u);
    ck_assert(!json_get_uint(top, 18446744073709549567u, &n));
    cJSON_Delete(top);
    ck_assert(json_utf8_valid("h\xc3\xa9", 3));
    ck_assert(!json_utf8_valid("\xc0\xaf", 2));
    ck_assert(!json_utf8_valid("\xed\xa0\x80", 3));
}
END_TEST

/* What serde_json (rstmdb's parser) refuses is refused, with where and why;
 * cJSON alone let all of these through. */
START_TEST(test_json_strict)
{
    static const struct { const char *in; const char *msg; } bad[] = {
        {"+1", "invalid JSON at byte 0: not a JSON value"},
        {"01", "invalid JSON at byte 1: a number with a leading zero"},
        {"[.5]", "invalid JSON at byte 1: not a JSON value"},
        {"1.", "invalid JSON: unexpected end of input"},
        {"[1.]", "invalid JSON at byte 3: a '.' not followed by a digit"},
        {"[1e]", "invalid JSON at byte 3: an exponent without digits"},
        {"-", "invalid JSON: unexpected end of input"},
        {"[-x]", "invalid JSON at byte 2: a '-' not followed by a digit"},
        {"1e999", "invalid JSON at byte 0: a number out of range"},
        {"\"a\tb\"", "invalid JSON at byte 2: a control character in a string (write it as an escape)"},
        {"\x01{}", "invalid JSON at byte 0: not a JSON value"},
        {"{}\x0b", "invalid JSON: trailing characters at byte 2"},
        {"{\"a\" 1}", "invalid JSON at byte 5: expected ':' after a key"},
        {"{\"a\":1 \"b\":2}", "invalid JSON at byte 7: expected ',' or '}'"},
        {"[1 2]", "invalid JSON at byte 3: expected ',' or ']'"},
        {"{a:1}", "invalid JSON at byte 1: expected a quoted key"},
        {"[1,]", "invalid JSON at byte 3: not a JSON value"},
        {"{\"a\":1,}", "invalid JSON at byte 7: expected a quoted key"},
        {"tru", "invalid JSON: unexpected end of input"},
        {"nul!", "invalid JSON at byte 0: not a JSON value"},
        {"\"\\x\"", "invalid JSON at byte 1: unknown escape in a string"},
        {"\"\\u12G4\"", "invalid JSON at byte 1: \\u needs four hex digits"},
        {"\"\\udc00\"", "invalid JSON at byte 1: a \\u escape of a lone low surrogate"},
        {"\"\\ud800x\"", "invalid JSON at byte 1: a \\u escape of a high surrogate without its low half"},
        {"\"\\ud800\\u0041\"", "invalid JSON at byte 1: a \\u escape of a high surrogate without its low half"},
        {"\"ab\\u0000\"", "invalid JSON at byte 3: \\u0000 in a string (strings cannot hold NUL here)"},
        {"\"h\xc3\xa9\xc3\"", "invalid JSON at byte 4: text is not valid UTF-8"},
        {"\"\xed\xa0\x80\"", "invalid JSON at byte 1: text is not valid UTF-8"},
        {"[\xc3\xa9]", "invalid JSON at byte 1: not a JSON value"},
        {"", "invalid JSON: unexpected end of input"},
        {"  ", "invalid JSON: unexpected end of input"},
        {"\"abc", "invalid JSON: unexpected end of input"},
        {"\"abc\\", "invalid JSON: unexpected end of input"},
        {"{\"a\":[1,{\"b\":", "invalid JSON: unexpected end of input"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        stm_err err = {0};
        cJSON *v = json_parse(bad[i].in, strlen(bad[i].in), &err);
        ck_assert_msg(v == NULL, "accepted: %s", bad[i].in);
        ck_assert_int_eq(err.code, STM_BAD_REQUEST);
        ck_assert_str_eq(err.msg, bad[i].msg);
    }
    stm_err err;
    ck_assert_ptr_null(json_parse("[1,\0]", 5, &err));
    ck_assert_str_eq(err.msg, "invalid JSON at byte 3: a NUL byte");
    ck_assert_ptr_null(json_parse("\"a\0\"", 4, &err));
    ck_assert_str_eq(err.msg, "invalid JSON at byte 2: a NUL byte");
    /* depth: 128 levels are fine, a value at level 129 is not */
    char deep[600];
    size_t n = 0;
    for (int i = 0; i < 127; i++) deep[n++] = '[';
    deep[n++] = '1';
    for (int i = 0; i < 127; i++) deep[n++] = ']';
    cJSON *v = json_parse(deep, n, &err);
    ck_assert_ptr_nonnull(v);
    cJSON_Delete(v);
    memmove(deep + 1, deep, n);
    deep[0] = '[';
    deep[++n] = ']';
    ck_assert_ptr_null(json_parse(deep, n + 1, &err));
    ck_assert_str_eq(err.msg, "invalid JSON: nested deeper than 128 levels");
}
END_TEST

/* What is accepted comes back as cJSON would have built it. */
START_TEST(test_json_values)
{
    static const struct { const char *in, *out; } good[] = {
        {" \t\r\n{ \"b\" : [ 1 , -0 , 0.5 , 1E+2 , -1e-2 , 123456789012345 ] , \"a\" : true } \n",
         "{\"a\":true,\"b\":[1,0,0.5,100,-0.01,123456789012345]}"},
        {"[1234567890123456789,9007199254740993,18446744073709549568]",
         "[1234567890123456768,9007199254740992,1.844674407370955e19]"},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u20AC\\ud83d\\ude00\"",
         "\"\\\"\\\\/\\b\\f\\n\\r\\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\""},
        {"\"h\xc3\xa9 \xf0\x9f\x98\x80\x7f\"", "\"h\xc3\xa9 \xf0\x9f\x98\x80\x7f\""},
        {"[[],{},[{}],null,false,\"\"]", "[[],{},[{}],null,false,\"\"]"},
        {"{\"k\":1,\"k\":{\"x\":1,\"x\":2},\"j\":0}", "{\"j\":0,\"k\":{\"x\":2}}"},
        {"-12.5e1", "-125"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char *c = canon(good[i].in, true);
        ck_assert_str_eq(c, good[i].out);
        free(c);
    }
    stm_err err;
    const char *nums = "{\"a\":2147483648,\"b\":-3000000000,\"c\":7.9}";
    cJSON *v = json_parse(nums, strlen(nums), &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    ck_assert_int_eq(json_get(v, "a")->valueint, INT_MAX);
    ck_assert_int_eq(json_get(v, "b")->valueint, INT_MIN);
    ck_assert_int_eq(json_get(v, "c")->valueint, 7);
    /* the tree takes cJSON's own edits: append, detach, duplicate */
    cJSON_AddNumberToObject(v, "d", 4);
    cJSON_Delete(cJSON_DetachItemFromObjectCaseSensitive(v, "a"));
    cJSON_AddStringToObject(v, "e", "x");
    cJSON *dup = cJSON_Duplicate(v, true);
    cJSON_Delete(v);
    buf b = {0};
    json_write(&b, dup, false);
    ck_assert_str_eq(buf_cstr(&b), "{\"b\":-3000000000,\"c\":7.9,\"d\":4,\"e\":\"x\"}");
    buf_free(&b);
    cJSON_Delete(dup);
}
END_TEST

/* Trees built in an arena are the trees json_parse builds; several live in
 * one arena at once, one may outgrow a block, a failed parse leaves the
 * arena usable, and reset drops them all (ASan checks the blocks go). */
START_TEST(test_json_arena)
{
    json_arena *a = json_arena_new();
    buf big = {0};
    buf_putc(&big, '[');
    for (int i = 0; i < 5000; i++)
        buf_printf(&big, "%s{\"k%d\":\"v\\u00e9%d\",\"k\":%d,\"k\":[true,null]}", i ? "," : "", i, i, i);
    buf_putc(&big, ']');
    const char *texts[] = {"{\"type\":\"request\",\"id\":\"7\",\"params\":{\"a\":1.5,\"a\":2}}",
                           buf_cstr(&big), "\"just a string\"", "[]"};
    for (int round = 0; round < 3; round++) {
        cJSON *trees[4];
        stm_err err;
        for (int i = 0; i < 4; i++) {
            trees[i] = json_parse_arena(a, texts[i], strlen(texts[i]), &err);
            ck_assert_msg(trees[i] != NULL, "%s", err.msg);
            ck_assert_ptr_null(json_parse_arena(a, "{\"x\":[1,2,", 10, &err));
        }
        for (int i = 0; i < 4; i++) {
            cJSON *ref = json_parse(texts[i], strlen(texts[i]), &err);
            buf x = {0}, y = {0};
            json_write(&x, trees[i], false);
            json_write(&y, ref, false);
            ck_assert_str_eq(buf_cstr(&x), buf_cstr(&y));
            buf_free(&x);
            buf_free(&y);
            cJSON *copy = cJSON_Duplicate(trees[i], true); /* a malloc'd copy outlives it */
            cJSON_Delete(ref);
            cJSON_Delete(copy);
        }
        json_arena_reset(a);
    }
    json_arena_free(a);
    buf_free(&big);
}
END_TEST

static bool has_dup_keys(const cJSON *v)
{
    for (const cJSON *c = v->child; c; c = c->next) {
        if (has_dup_keys(c)) return true;
        if (cJSON_IsObject(v))
            for (const cJSON *d = c->next; d; d = d->next)
                if (strcmp(c->string, d->string) == 0) return true;
    }
    return false;
}

/* Random mutations of valid text: whatever this parser accepts, cJSON
 * accepts too and builds the same tree (it is only ever stricter). */
START_TEST(test_json_matches_cjson)
{
    static const char *const seeds[] = {
        ("{\"type\":\"request\",\"id\":\"17\",\"op\":\"APPLY_EVENT\",\"params\":{\"instance_id\":"
         "\"o-1\",\"event\":\"PAY\",\"payload\":{\"amount\":12.5,\"tags\":[\"a\",\"b\"],\"ok\":true}}}"),
        "[0,-1,1e5,2.25E-3,\"\\u00e9\\n\",null,{\"x\":{\"y\":[false]}}]",
        "{\"s\":\"\xe2\x82\xac \\ud83d\\ude00\",\"n\":-0.0,\"big\":123456789012345678}",
    };
    uint64_t seed = 0x9e3779b97f4a7c15u;
    static const char alphabet[] = "{}[]:,\"\\0123456789.eE+-tfnul \t\r\nxu\x01\x80\xc3\xa9";
    int accepted = 0;
    for (int round = 0; round < 60000; round++) {
        const char *base = seeds[round % 3];
        char t[256];
        size_t len = strlen(base);
        memcpy(t, base, len);
        int edits = 1 + round % 3;
        for (int k = 0; k < edits; k++) {
            seed = seed * 6364136223846793005u + 1442695040888963407u;
            size_t at = (seed >> 33) % len;
            char c = alphabet[(seed >> 20) % (sizeof alphabet - 1)];
            switch ((seed >> 10) % 3) {
            case 0: t[at] = c; break;
            case 1: memmove(t + at, t + at + 1, len - at - 1); len--; break;
            default:
                if (len + 1 < sizeof t) {
                    memmove(t + at + 1, t + at, len - at);
                    t[at] = c;
                    len++;
                }
            }
        }
        stm_err err;
        cJSON *ours = json_parse(t, len, &err);
        if (!ours) continue;
        cJSON *theirs = cJSON_ParseWithLength(t, len);
        ck_assert_msg(theirs != NULL, "only ours accepted %.*s", (int)len, t);
        if (!has_dup_keys(theirs)) {
            buf a = {0}, b = {0};
            json_write(&a, ours, false);
            json_write(&b, theirs, false);
            ck_assert_msg(strcmp(buf_cstr(&a), buf_cstr(&b)) == 0, "%.*s: %s vs %s", (int)len, t,
                          buf_cstr(&a), buf_cstr(&b));
            buf_free(&a);
            buf_free(&b);
            accepted++;
        }
        cJSON_Delete(ours);
        cJSON_Delete(theirs);
    }
    ck_assert_int_gt(accepted, 3000);
}
END_TEST

/* ---- util_gate ------------------------------------------------------------ */

static util_gate gate;
static uint64_t gate_mark;

static bool mark_at_least(void *arg)
{
    return __atomic_load_n(&gate_mark, __ATOMIC_ACQUIRE) >= *(uint64_t *)arg;
}

static void *gate_waiter(void *arg)
{
    uint64_t want = (uint64_t)(uintptr_t)arg;
    return util_gate_wait(&gate, mark_at_least, &want, 0) ? arg : NULL;
}

START_TEST(test_gate)
{
    memset(&gate, 0, sizeof gate);
    gate_mark = 0;
    /* eight waiters for marks 1..8; the mark moves one step per open */
    pthread_t th[8];
    for (uintptr_t i = 0; i < 8; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, gate_waiter, (void *)(i + 1)), 0);
    for (int step = 1; step <= 8; step++) {
        struct timespec ms = {0, 2000000};
        nanosleep(&ms, NULL);
        __atomic_store_n(&gate_mark, (uint64_t)step, __ATOMIC_RELEASE);
        util_gate_open(&gate);
    }
    for (uintptr_t i = 0; i < 8; i++) {
        void *rv;
        pthread_join(th[i], &rv);
        ck_assert_ptr_eq(rv, (void *)(i + 1));
    }
    /* a deadline ends a wait that nothing opens, with false */
    uint64_t want = 100, t0 = util_mono_ns();
    ck_assert(!util_gate_wait(&gate, mark_at_least, &want, t0 + 20000000u));
    ck_assert_uint_ge(util_mono_ns() - t0, 20000000u);
    /* and a condition that already holds returns at once */
    want = 8;
    ck_assert(util_gate_wait(&gate, mark_at_least, &want, 0));
    /* the mark form: reached, or stopped (false), or timed out (false) */
    bool stop = false;
    ck_assert(util_gate_wait_mark(&gate, &gate_mark, 8, &stop, 0));
    t0 = util_mono_ns();
    ck_assert(!util_gate_wait_mark(&gate, &gate_mark, 9, &stop, t0 + 10000000u));
    stop = true;
    ck_assert(!util_gate_wait_mark(&gate, &gate_mark, 9, &stop, 0));
}
END_TEST

/* The table doubles a few buckets at a time: the add that crosses the line
 * moves no more than a handful of old buckets (it used to rehash them
 * all), every entry stays findable while both arrays are in use, removals
 * work on either array, and the move ends well before the next doubling. */
typedef struct hnode {
    unsigned key;
    struct hnode *hnext;
} hnode;

static uint64_t hnode_hash(const void *p)
{
    /* a poor hash on purpose: many share a chain */
    return ((const hnode *)p)->key * 2654435761u;
}

static hnode *hfind(const htab *t, unsigned key)
{
    hnode probe = {.key = key};
    void **chains[2];
    size_t n = htab_chains(t, hnode_hash(&probe), chains);
    ck_assert_uint_le(n, 2);
    for (size_t c = 0; c < n; c++)
        for (hnode *x = *chains[c]; x; x = x->hnext)
            if (x->key == key) return x;
    return NULL;
}

START_TEST(test_htab_grows_in_steps)
{
    enum { N = 16384 + 100 }; /* ends just after a doubling */
    static hnode nodes[N];
    htab t;
    htab_init(&t, 16, offsetof(hnode, hnext), hnode_hash);
    ck_assert_ptr_null(hfind(&t, 1));
    size_t growths = 0, max_moved = 0;
    for (unsigned i = 0; i < N; i++) {
        nodes[i].key = i;
        size_t size = t.size, moved = t.old ? t.old_next : 0;
        htab_add(&t, &nodes[i], hnode_hash(&nodes[i]));
        if (t.size != size && size) {
            growths++;
            ck_assert_ptr_nonnull(t.old); /* the old array is emptied later */
            ck_assert_uint_eq(t.old_size, size);
        }
        if (t.old && t.old_next > moved && t.old_next - moved > max_moved)
            max_moved = t.old_next - moved;
        ck_assert_uint_eq(t.n, i + 1);
        if (i % 97 == 0 || t.old)
            ck_assert_ptr_eq(hfind(&t, i / 2), &nodes[i / 2]);
    }
    ck_assert_uint_ge(growths, 9); /* 16 -> 32768 */
    ck_assert_uint_le(max_moved, 8);
    /* remove every third, while the last move is under way */
    ck_assert_ptr_nonnull(t.old);
    for (unsigned i = 0; i < N; i += 3) {
        ck_assert(htab_remove(&t, &nodes[i], hnode_hash(&nodes[i])));
        ck_assert(!htab_remove(&t, &nodes[i], hnode_hash(&nodes[i])));
    }
    for (unsigned i = 0; i < N; i++)
        ck_assert_ptr_eq(hfind(&t, i), i % 3 ? &nodes[i] : NULL);
    ck_assert_uint_eq(t.n, N - (N + 2) / 3);
    htab_free(&t);
    ck_assert_ptr_null(hfind(&t, 5));
    /* sized beforehand, filling it moves nothing */
    htab_init(&t, 16, offsetof(hnode, hnext), hnode_hash);
    htab_reserve(&t, 5000);
    size_t size = t.size;
    ck_assert_uint_ge(size, 5000);
    for (unsigned i = 0; i < 5000; i++) {
        htab_add(&t, &nodes[i], hnode_hash(&nodes[i]));
        ck_assert_ptr_null(t.old);
    }
    ck_assert_uint_eq(t.size, size);
    ck_assert_ptr_eq(hfind(&t, 4321), &nodes[4321]);
    htab_free(&t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("base");
    TCase *t = tcase_create("core");
    tcase_add_test(t, test_crc_sw);
    tcase_add_test(t, test_crc_hw);
    tcase_add_test(t, test_crc_dispatch);
    tcase_add_test(t, test_buf);
    tcase_add_test(t, test_json_canonical);
    tcase_add_test(t, test_json_rejects);
    tcase_add_test(t, test_json_duplicates_model);
    tcase_add_test(t, test_json_strict);
    tcase_add_test(t, test_json_values);
    tcase_add_test(t, test_json_matches_cjson);
    tcase_add_test(t, test_json_arena);
    tcase_add_test(t, test_json_canonical_len);
    tcase_add_test(t, test_json_num_len);
    tcase_add_test(t, test_json_str_len);
    tcase_add_test(t, test_json_merge_canonical);
    tcase_add_test(t, test_gate);
    tcase_add_test(t, test_htab_grows_in_steps);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
