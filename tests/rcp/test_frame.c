/*
 * test_frame.c - the RCP codec byte by byte: the worked examples of
 * reference rcp-protocol.md §2.6, frames split and batched, every broken
 * input of §2.4, envelopes (§5.1), JSON lines, and the frames we write.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "rcp/frame.h"

static size_t unhex(const char *hex, unsigned char *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (unsigned char)v;
    }
    return n;
}

static const char *EX_A =
    "5243505800010001000000000033c32009c47b2274797065223a2272657175657374222c226964223a2231222c"
    "226f70223a2250494e47222c22706172616d73223a7b7d7d";
static const char *EX_B =
    "524350580001000100000000002715f193b17b2274797065223a2272657175657374222c226964223a2231222c"
    "226f70223a2250494e47227d";
static const char *PING_A = "{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\",\"params\":{}}";
static const char *PING_B = "{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\"}";
static const char *PONG =
    "{\"type\":\"response\",\"id\":\"1\",\"status\":\"ok\",\"result\":{\"pong\":true}}";

/* Builds a frame with arbitrary header fields. */
static size_t mk(unsigned char *out, const char *magic, unsigned version, unsigned flags,
                 unsigned hlen, const char *payload, size_t plen, uint32_t crc, bool auto_crc)
{
    memcpy(out, magic, 4);
    out[4] = (unsigned char)(version >> 8), out[5] = (unsigned char)version;
    out[6] = (unsigned char)(flags >> 8), out[7] = (unsigned char)flags;
    out[8] = (unsigned char)(hlen >> 8), out[9] = (unsigned char)hlen;
    out[10] = (unsigned char)(plen >> 24), out[11] = (unsigned char)(plen >> 16);
    out[12] = (unsigned char)(plen >> 8), out[13] = (unsigned char)plen;
    if (auto_crc) crc = crc32c(0, payload, plen);
    out[14] = (unsigned char)(crc >> 24), out[15] = (unsigned char)(crc >> 16);
    out[16] = (unsigned char)(crc >> 8), out[17] = (unsigned char)crc;
    memset(out + 18, 'x', hlen);
    memcpy(out + 18 + hlen, payload, plen);
    return 18 + hlen + plen;
}

static rcp_dec_rc dec1(const void *p, size_t n, const char **pl, size_t *len, size_t *used)
{
    rcp_decoder d;
    rcp_decoder_init(&d, false);
    stm_err err;
    return rcp_decode(&d, p, n, pl, len, used, &err);
}

START_TEST(example_a_and_b_decode)
{
    unsigned char f[128];
    const char *pl;
    size_t len, used, n = unhex(EX_A, f);
    ck_assert_uint_eq(n, 69);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_FRAME);
    ck_assert_uint_eq(used, 69);
    ck_assert_uint_eq(len, 51);
    ck_assert(memcmp(pl, PING_A, 51) == 0);
    n = unhex(EX_B, f);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_FRAME);
    ck_assert_uint_eq(len, 39);
    ck_assert(memcmp(pl, PING_B, 39) == 0);
}
END_TEST

START_TEST(example_c_encode)
{
    /* The server's reply to PING, byte for byte. */
    buf out = {0};
    cJSON *r = cJSON_CreateObject();
    cJSON_AddTrueToObject(r, "pong");
    ck_assert(rcp_write_ok(&out, RCP_WIRE_BINARY, "1", r));
    unsigned char hdr[18];
    unhex("52435058000100010000000000414b7b432f", hdr);
    ck_assert_uint_eq(out.len, 18 + 65);
    ck_assert(memcmp(out.data, hdr, 18) == 0);
    ck_assert(memcmp(out.data + 18, PONG, 65) == 0);
    /* Extra vector: payload A with id "7". */
    unsigned char h7[18];
    const char *p7 = "{\"type\":\"request\",\"id\":\"7\",\"op\":\"PING\",\"params\":{}}";
    rcp_frame_header(h7, p7, strlen(p7));
    ck_assert_uint_eq(crc32c(0, p7, strlen(p7)), 0x024B10F5u);
    ck_assert_uint_eq(h7[14], 0x02);
    /* Example A regenerated from its payload. */
    unsigned char fa[69], ha[18];
    unhex(EX_A, fa);
    rcp_frame_header(ha, PING_A, 51);
    ck_assert(memcmp(ha, fa, 18) == 0);
    /* The HELLO of rstmdb-py. */
    const char *hello =
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"HELLO\",\"params\":{\"protocol_version\":1,"
        "\"client_name\":\"rstmdb-py\",\"wire_modes\":[\"binary_json\"],\"features\":"
        "[\"idempotency\",\"batch\"]}}";
    ck_assert_uint_eq(strlen(hello), 162);
    ck_assert_uint_eq(crc32c(0, hello, 162), 0x22A3D727u);
    cJSON_Delete(r);
    buf_free(&out);
}
END_TEST

START_TEST(no_crc_flag_accepted)
{
    unsigned char f[128];
    const char *pl;
    size_t len, used;
    size_t n = mk(f, "RCPX", 1, 0, 0, PING_A, 51, 0, false);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_FRAME);
    /* ... whatever the CRC field holds */
    n = mk(f, "RCPX", 1, 0, 0, PING_A, 51, 0xdeadbeef, false);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_FRAME);
    /* compressed/stream/end-of-stream flags are accepted and ignored */
    n = mk(f, "RCPX", 1, 0x000F, 0, PING_A, 51, 0, true);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_FRAME);
}
END_TEST

START_TEST(header_extension_skipped)
{
    unsigned char f[512];
    const char *pl;
    size_t len, used;
    size_t n = mk(f, "RCPX", 1, 1, 300, PING_A, 51, 0, true);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_FRAME);
    ck_assert_uint_eq(used, 18 + 300 + 51);
    ck_assert(memcmp(pl, PING_A, 51) == 0);
}
END_TEST

START_TEST(split_byte_by_byte)
{
    unsigned char f[128];
    size_t n = unhex(EX_A, f);
    for (size_t k = 0; k < n; k++) {
        const char *pl;
        size_t len, used;
        ck_assert_int_eq(dec1(f, k, &pl, &len, &used), RCP_DEC_NEED);
        ck_assert_uint_eq(used, 0);
    }
}
END_TEST

START_TEST(many_frames_one_buffer)
{
    unsigned char f[69 * 10 + 40];
    size_t n = 0;
    for (int i = 0; i < 10; i++)
        n += unhex(EX_A, f + n);
    memcpy(f + n, f, 30); /* and a partial eleventh */
    n += 30;
    rcp_decoder d;
    rcp_decoder_init(&d, true);
    size_t off = 0;
    int frames = 0;
    for (;;) {
        const char *pl;
        size_t len, used;
        stm_err err;
        rcp_dec_rc rc = rcp_decode(&d, (char *)f + off, n - off, &pl, &len, &used, &err);
        if (rc != RCP_DEC_FRAME) {
            ck_assert_int_eq(rc, RCP_DEC_NEED);
            break;
        }
        frames++;
        off += used;
    }
    ck_assert_int_eq(frames, 10);
    ck_assert_uint_eq(n - off, 30);
    ck_assert_int_eq(d.mode, RCP_WIRE_BINARY);
}
END_TEST

START_TEST(bad_frames)
{
    unsigned char f[256];
    const char *pl;
    size_t len, used;
    size_t n;
    n = mk(f, "RCP1", 1, 1, 0, PING_A, 51, 0, true);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_ERROR);
    n = mk(f, "RCPX", 2, 1, 0, PING_A, 51, 0, true);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_ERROR);
    n = mk(f, "RCPX", 0, 1, 0, PING_A, 51, 0, true);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_ERROR);
    for (unsigned bit = 4; bit < 16; bit++) {
        n = mk(f, "RCPX", 1, 1u | (1u << bit), 0, PING_A, 51, 0, true);
        ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_ERROR);
    }
    n = mk(f, "RCPX", 1, 1, 0, PING_A, 51, 0x12345678, false);
    ck_assert_int_eq(dec1(f, n, &pl, &len, &used), RCP_DEC_ERROR);
    /* Bad magic is seen on the header alone, before any payload. */
    n = mk(f, "XXXX", 1, 1, 0, PING_A, 51, 0, true);
    ck_assert_int_eq(dec1(f, 18, &pl, &len, &used), RCP_DEC_ERROR);
}
END_TEST

START_TEST(length_limit)
{
    unsigned char f[18];
    const char *pl;
    size_t len, used;
    /* Exactly 16 MiB is allowed: we wait for it. One more byte is refused
     * from the header alone. */
    mk(f, "RCPX", 1, 1, 0, "", 0, 0, false);
    uint32_t plen = RCP_MAX_PAYLOAD;
    f[10] = (unsigned char)(plen >> 24), f[11] = (unsigned char)(plen >> 16);
    f[12] = (unsigned char)(plen >> 8), f[13] = (unsigned char)plen;
    ck_assert_int_eq(dec1(f, 18, &pl, &len, &used), RCP_DEC_NEED);
    plen++;
    f[10] = (unsigned char)(plen >> 24), f[11] = (unsigned char)(plen >> 16);
    f[12] = (unsigned char)(plen >> 8), f[13] = (unsigned char)plen;
    ck_assert_int_eq(dec1(f, 18, &pl, &len, &used), RCP_DEC_ERROR);
    f[10] = f[11] = f[12] = f[13] = 0xFF;
    ck_assert_int_eq(dec1(f, 18, &pl, &len, &used), RCP_DEC_ERROR);

    /* A configured limit (limits.max_frame_bytes) lowers it, for binary
     * frames and JSONL lines alike, and the message names the key. */
    rcp_decoder d;
    rcp_decoder_init(&d, false);
    d.max_payload = 1000;
    plen = 1001;
    f[10] = 0, f[11] = 0, f[12] = (unsigned char)(plen >> 8), f[13] = (unsigned char)plen;
    stm_err err;
    ck_assert_int_eq(rcp_decode(&d, (char *)f, 18, &pl, &len, &used, &err), RCP_DEC_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "limits.max_frame_bytes"));
    plen = 1000;
    f[12] = (unsigned char)(plen >> 8), f[13] = (unsigned char)plen;
    ck_assert_int_eq(rcp_decode(&d, (char *)f, 18, &pl, &len, &used, &err), RCP_DEC_NEED);
    char line[1200];
    memset(line, ' ', sizeof line);
    line[0] = '{';
    line[1001] = '}';
    line[1002] = '\n';
    rcp_decoder_init(&d, true);
    d.max_payload = 1000;
    ck_assert_int_eq(rcp_decode(&d, line, 1003, &pl, &len, &used, &err), RCP_DEC_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "line over the limit of 1000 bytes"));
    line[999] = '}';
    line[1000] = '\n';
    rcp_decoder_init(&d, true);
    d.max_payload = 1000;
    ck_assert_int_eq(rcp_decode(&d, line, 1001, &pl, &len, &used, &err), RCP_DEC_FRAME);
    ck_assert_uint_eq(len, 1000);
}
END_TEST

static rcp_env_rc env(const char *s, rcp_request *r, stm_err *err)
{
    return rcp_request_parse(s, strlen(s), r, err);
}

START_TEST(envelopes)
{
    rcp_request r;
    stm_err err;
    ck_assert_int_eq(env(PING_A, &r, &err), RCP_ENV_OK);
    ck_assert_str_eq(r.id, "1");
    ck_assert_int_eq(r.op, RCP_OP_PING);
    ck_assert_ptr_nonnull(r.params);
    rcp_request_free(&r);
    /* params absent or null: NULL, which every op reads as {} */
    ck_assert_int_eq(env(PING_B, &r, &err), RCP_ENV_OK);
    ck_assert_ptr_null(r.params);
    rcp_request_free(&r);
    ck_assert_int_eq(env("{\"type\":\"x\",\"id\":\"\",\"op\":\"INFO\",\"params\":null}", &r, &err),
                     RCP_ENV_OK);
    ck_assert_ptr_null(r.params);
    ck_assert_str_eq(r.id, "");
    rcp_request_free(&r);
    /* no id to answer to: fatal */
    const char *fatal[] = {"",
                           "   ",
                           "{",
                           "[1]",
                           "\"x\"",
                           "{\"type\":\"request\",\"op\":\"PING\"}",
                           "{\"type\":\"request\",\"id\":1,\"op\":\"PING\"}",
                           "{\"type\":\"request\",\"id\":null,\"op\":\"PING\"}",
                           "{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\"} x"};
    for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++) {
        ck_assert_int_eq(env(fatal[i], &r, &err), RCP_ENV_FATAL);
        rcp_request_free(&r);
    }
    /* invalid UTF-8 */
    const char bad_utf8[] = "{\"type\":\"request\",\"id\":\"\xff\",\"op\":\"PING\"}";
    ck_assert_int_eq(rcp_request_parse(bad_utf8, sizeof bad_utf8 - 1, &r, &err), RCP_ENV_FATAL);
    rcp_request_free(&r);
    /* id recovered: answerable */
    const char *badreq[] = {"{\"id\":\"5\",\"op\":\"PING\"}",
                            "{\"type\":7,\"id\":\"5\",\"op\":\"PING\"}",
                            "{\"type\":\"request\",\"id\":\"5\"}",
                            "{\"type\":\"request\",\"id\":\"5\",\"op\":\"ping\"}",
                            "{\"type\":\"request\",\"id\":\"5\",\"op\":\"NOPE\"}",
                            "{\"type\":\"request\",\"id\":\"5\",\"op\":[\"PING\"]}"};
    for (size_t i = 0; i < sizeof badreq / sizeof badreq[0]; i++) {
        ck_assert_int_eq(env(badreq[i], &r, &err), RCP_ENV_BAD);
        ck_assert_str_eq(r.id, "5");
        ck_assert_int_eq(err.code, STM_BAD_REQUEST);
        rcp_request_free(&r);
    }
    /* all 21 names */
    ck_assert_int_eq(rcp_op_lookup("UNWATCH"), RCP_OP_UNWATCH);
    for (int i = 0; i < RCP_OP_COUNT; i++)
        ck_assert_int_eq(rcp_op_lookup(rcp_op_name(i)), i);
}
END_TEST

/* Nesting past 128 is refused; within what a lenient reading takes (cJSON
 * stops at 1000) the id is read and answered, past it the connection closes. */
START_TEST(deep_nesting_fatal)
{
    static const struct { int depth; rcp_env_rc want; } cases[] = {{200, RCP_ENV_BAD},
                                                                  {2000, RCP_ENV_FATAL}};
    for (int k = 0; k < 2; k++) {
        buf b = {0};
        buf_puts(&b, "{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\",\"params\":");
        for (int i = 0; i < cases[k].depth; i++)
            buf_putc(&b, '[');
        for (int i = 0; i < cases[k].depth; i++)
            buf_putc(&b, ']');
        buf_putc(&b, '}');
        rcp_request r;
        stm_err err;
        ck_assert_int_eq(rcp_request_parse(b.data, b.len, &r, &err), cases[k].want);
        ck_assert_str_eq(err.msg, "invalid JSON: nested deeper than 128 levels");
        if (cases[k].want == RCP_ENV_BAD) ck_assert_str_eq(r.id, "1");
        rcp_request_free(&r);
        buf_free(&b);
    }
}
END_TEST

START_TEST(huge_ids)
{
    /* A 1 MiB id is echoed; an id that cannot fit a 16 MiB response is
     * refused by the writer (the caller then closes). */
    size_t n = 1u << 20;
    char *id = malloc(n + 1);
    memset(id, 'a', n);
    id[n] = 0;
    buf out = {0};
    ck_assert(rcp_write_error(&out, RCP_WIRE_BINARY, id, STM_BAD_REQUEST, "x"));
    ck_assert_uint_gt(out.len, n);
    free(id);
    n = RCP_MAX_PAYLOAD;
    id = malloc(n + 1);
    memset(id, 'b', n);
    id[n] = 0;
    size_t before = out.len;
    ck_assert(!rcp_write_error(&out, RCP_WIRE_BINARY, id, STM_BAD_REQUEST, "x"));
    ck_assert_uint_eq(out.len, before);
    free(id);
    buf_free(&out);
}
END_TEST

START_TEST(too_big_result_becomes_error)
{
    cJSON *r = cJSON_CreateObject();
    char *big = malloc(RCP_MAX_PAYLOAD + 1);
    memset(big, 'z', RCP_MAX_PAYLOAD);
    big[RCP_MAX_PAYLOAD] = 0;
    cJSON_AddStringToObject(r, "blob", big);
    free(big);
    buf out = {0};
    ck_assert(rcp_write_result_or_error(&out, RCP_WIRE_BINARY, "9", r));
    ck_assert_uint_lt(out.len, 1000);
    ck_assert_ptr_nonnull(strstr(out.data + 18, "\"status\":\"error\""));
    ck_assert_ptr_nonnull(strstr(out.data + 18, "\"code\":\"BAD_REQUEST\""));
    cJSON_Delete(r);
    buf_free(&out);
}
END_TEST

START_TEST(error_shape)
{
    buf out = {0};
    ck_assert(rcp_write_error(&out, RCP_WIRE_JSONL, "3", STM_WAL_IO_ERROR, "disk \"full\""));
    ck_assert_str_eq(out.data, "{\"type\":\"response\",\"id\":\"3\",\"status\":\"error\",\"error\":"
                               "{\"code\":\"WAL_IO_ERROR\",\"message\":\"disk \\\"full\\\"\","
                               "\"retryable\":true}}\n");
    buf_reset(&out);
    ck_assert(rcp_write_error(&out, RCP_WIRE_JSONL, "3", STM_CONFLICT, "c"));
    ck_assert_ptr_nonnull(strstr(out.data, "\"retryable\":false}}"));
    /* results are written with sorted keys */
    buf_reset(&out);
    cJSON *r = cJSON_Parse("{\"b\":1,\"a\":{\"d\":2,\"c\":3}}");
    ck_assert(rcp_write_ok(&out, RCP_WIRE_JSONL, "x", r));
    ck_assert_str_eq(out.data, "{\"type\":\"response\",\"id\":\"x\",\"status\":\"ok\",\"result\":"
                               "{\"a\":{\"c\":3,\"d\":2},\"b\":1}}\n");
    cJSON_Delete(r);
    buf_free(&out);
}
END_TEST

static rcp_dec_rc decj(rcp_decoder *d, const char *p, const char **pl, size_t *len, size_t *used)
{
    stm_err err;
    return rcp_decode(d, p, strlen(p), pl, len, used, &err);
}

START_TEST(jsonl_lines)
{
    rcp_decoder d;
    rcp_decoder_init(&d, true);
    const char *pl;
    size_t len, used;
    const char *in = "{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\"";
    ck_assert_int_eq(decj(&d, in, &pl, &len, &used), RCP_DEC_FRAME);
    ck_assert_int_eq(d.mode, RCP_WIRE_JSONL);
    ck_assert_uint_eq(len, 7);
    ck_assert(memcmp(pl, "{\"a\":1}", 7) == 0);
    in += used;
    ck_assert_int_eq(decj(&d, in, &pl, &len, &used), RCP_DEC_FRAME);
    ck_assert(memcmp(pl, "{\"b\":2}", 7) == 0);
    in += used;
    ck_assert_int_eq(decj(&d, in, &pl, &len, &used), RCP_DEC_NEED);
    ck_assert_uint_eq(used, 0);
    /* the line completes later: found without re-reading from the start */
    char more[64];
    snprintf(more, sizeof more, "%s:3}\n", in);
    ck_assert_int_eq(decj(&d, more, &pl, &len, &used), RCP_DEC_FRAME);
    ck_assert_uint_eq(len, 7);
}
END_TEST

START_TEST(jsonl_auto_detect_binary)
{
    rcp_decoder d;
    rcp_decoder_init(&d, true);
    unsigned char f[128];
    size_t n = unhex(EX_A, f);
    const char *pl;
    size_t len, used;
    stm_err err;
    ck_assert_int_eq(rcp_decode(&d, (char *)f, n, &pl, &len, &used, &err), RCP_DEC_FRAME);
    ck_assert_int_eq(d.mode, RCP_WIRE_BINARY);
    /* a binary client that later sends a line is broken: bad magic */
    ck_assert_int_eq(
        rcp_decode(&d, "{\"x\":1}\n{\"y\":2}\n{\"z\":3}\n", 24, &pl, &len, &used, &err),
        RCP_DEC_ERROR);
}
END_TEST

START_TEST(jsonl_line_limit)
{
    rcp_decoder d;
    rcp_decoder_init(&d, false);
    d.mode = RCP_WIRE_JSONL;
    size_t n = RCP_MAX_PAYLOAD + 10;
    char *p = malloc(n);
    memset(p, ' ', n);
    p[0] = '{';
    const char *pl;
    size_t len, used;
    stm_err err;
    ck_assert_int_eq(rcp_decode(&d, p, n, &pl, &len, &used, &err), RCP_DEC_ERROR);
    free(p);
}
END_TEST

START_TEST(jsonl_output)
{
    buf out = {0};
    cJSON *r = cJSON_CreateObject();
    cJSON_AddTrueToObject(r, "pong");
    ck_assert(rcp_write_ok(&out, RCP_WIRE_JSONL, "1", r));
    ck_assert_uint_eq(out.len, 66);
    ck_assert(memcmp(out.data, PONG, 65) == 0);
    ck_assert_int_eq(out.data[65], '\n');
    cJSON_Delete(r);
    buf_free(&out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rcp-frame");
    TCase *t = tcase_create("codec");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, example_a_and_b_decode);
    tcase_add_test(t, example_c_encode);
    tcase_add_test(t, no_crc_flag_accepted);
    tcase_add_test(t, header_extension_skipped);
    tcase_add_test(t, split_byte_by_byte);
    tcase_add_test(t, many_frames_one_buffer);
    tcase_add_test(t, bad_frames);
    tcase_add_test(t, length_limit);
    tcase_add_test(t, envelopes);
    tcase_add_test(t, deep_nesting_fatal);
    tcase_add_test(t, huge_ids);
    tcase_add_test(t, too_big_result_becomes_error);
    tcase_add_test(t, error_shape);
    tcase_add_test(t, jsonl_lines);
    tcase_add_test(t, jsonl_auto_detect_binary);
    tcase_add_test(t, jsonl_line_limit);
    tcase_add_test(t, jsonl_output);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
