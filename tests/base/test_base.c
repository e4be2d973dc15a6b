/*
 * test_base.c - unit tests of base/: CRC-32C (both implementations),
 * the growable buffer, and canonical JSON.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "base/json.h"

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
    ck_assert(json_utf8_valid("h\xc3\xa9", 3));
    ck_assert(!json_utf8_valid("\xc0\xaf", 2));
    ck_assert(!json_utf8_valid("\xed\xa0\x80", 3));
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
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
