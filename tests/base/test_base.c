/*
 * test_base.c - unit tests of base/: CRC-32C (both implementations),
 * the growable buffer, and canonical JSON.
 */
#include <check.h>
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/crc32c.h"
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
    tcase_add_test(t, test_json_canonical_len);
    tcase_add_test(t, test_json_num_len);
    tcase_add_test(t, test_json_str_len);
    tcase_add_test(t, test_json_merge_canonical);
    tcase_add_test(t, test_gate);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
