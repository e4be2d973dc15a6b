/*
 * test_session.c - sessions and dispatch over the real engine, without
 * sockets: bytes go into a connection's input buffer, and what the server
 * queued for the client is read back from its output buffer.
 *
 * Covers pipelining and order, envelope errors answered or closed, param
 * type errors, the auth gate (including WATCH_*), wire modes (jsonl both
 * ways), BATCH in both modes, BYE, and watches: event shape and key order,
 * include_ctx, filters, from_offset catch-up, UNWATCH of one's own id only.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/json.h"
#include "base/util.h"
#include "rcp/internal.h"

static char dir[64];
static eng *E;
static rcp_server S;
static rcp_conn C;
static size_t rd; /* read cursor in C.out */

static void conn_init(rcp_conn *c)
{
    memset(c, 0, sizeof *c);
    c->srv = &S;
    c->fd = -1;
    snprintf(c->peer, sizeof c->peer, "test");
    rcp_decoder_init(&c->dec, true);
    c->wire_out = RCP_WIRE_BINARY;
    c->authenticated = !S.auth_required;
}

static void conn_fini(rcp_conn *c)
{
    rcp_watches_free(c);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c->marks);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/stmfs-rcp-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.sync = (wal_sync_policy){WAL_SYNC_NEVER, 0};
    stm_err err;
    ck_assert_int_eq(eng_open(&o, &E, NULL, &err), STM_OK);
    memset(&S, 0, sizeof S);
    S.e = E;
    S.wake_fd = -1;
    conn_init(&C);
    rd = 0;
}

static void teardown(void)
{
    /* as the server's stop does: a job's thread may still be exiting */
    rcp_jobs_reap(&S, true);
    conn_fini(&C);
    free(S.hashes);
    eng_close(E);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Appends one request frame (binary) or line (jsonl) to c's input. */
static void put(rcp_conn *c, const char *json)
{
    size_t n = strlen(json);
    if (c->dec.mode == RCP_WIRE_JSONL && !c->dec.auto_detect) {
        buf_add(&c->in, json, n);
        buf_putc(&c->in, '\n');
        return;
    }
    unsigned char h[RCP_HDR_LEN];
    rcp_frame_header(h, json, n);
    buf_add(&c->in, h, sizeof h);
    buf_add(&c->in, json, n);
}

/* Runs the input and waits until everything queued is durable. */
static void run(rcp_conn *c)
{
    rcp_session_process_input(c);
    while (c->job) {
        /* a request on a thread of its own (COMPACT): the loop would queue
         * its answer when woken, then take the requests behind it */
        while (!rcp_job_finish(c))
            usleep(1000);
        c->read_paused = false;
        rcp_session_process_input(c);
    }
    for (size_t i = 0; i < c->mark_n; i++) {
        stm_err err;
        eng_wait(E, c->marks[(c->mark_head + i) % c->mark_cap].seq, &err);
    }
}

/* The next message the client would read, parsed; NULL when none. */
static cJSON *next_msg(rcp_conn *c, size_t *cursor)
{
    if (*cursor >= c->out.len) return NULL;
    const char *p = c->out.data + *cursor;
    size_t left = c->out.len - *cursor, len;
    if (c->out.data[*cursor] == 'R') {
        ck_assert_uint_ge(left, RCP_HDR_LEN);
        len = (size_t)(unsigned char)p[10] << 24 | (size_t)(unsigned char)p[11] << 16 |
              (size_t)(unsigned char)p[12] << 8 | (unsigned char)p[13];
        *cursor += RCP_HDR_LEN + len;
        p += RCP_HDR_LEN;
    } else {
        const char *nl = memchr(p, '\n', left);
        ck_assert_ptr_nonnull(nl);
        len = (size_t)(nl - p);
        *cursor += len + 1;
    }
    cJSON *v = json_parse(p, len, NULL);
    ck_assert_ptr_nonnull(v);
    return v;
}

static cJSON *call(const char *json)
{
    put(&C, json);
    run(&C);
    cJSON *v = next_msg(&C, &rd);
    ck_assert_ptr_nonnull(v);
    return v;
}

static const char *str(const cJSON *v, const char *path)
{
    char key[64];
    const cJSON *cur = v;
    while (*path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        snprintf(key, sizeof key, "%.*s", (int)n, path);
        cur = json_get(cur, key);
        path += n + (dot ? 1 : 0);
    }
    return cJSON_IsString(cur)  ? cur->valuestring
           : cJSON_IsTrue(cur)  ? "true"
           : cJSON_IsFalse(cur) ? "false"
                                : NULL;
}

static void expect_ok(const char *json)
{
    cJSON *v = call(json);
    if (strcmp(str(v, "status"), "ok") != 0) {
        char *t = cJSON_PrintUnformatted(v);
        ck_abort_msg("not ok: %s -> %s", json, t);
    }
    cJSON_Delete(v);
}

static void expect_err(const char *json, const char *code)
{
    cJSON *v = call(json);
    ck_assert_str_eq(str(v, "status"), "error");
    ck_assert_str_eq(str(v, "error.code"), code);
    ck_assert_ptr_nonnull(json_get(json_get(v, "error"), "retryable"));
    cJSON_Delete(v);
}

#define DEF                                                                                        \
    "{\"states\":[\"created\",\"paid\",\"shipped\"],\"initial\":\"created\",\"transitions\":["     \
    "{\"from\":\"created\",\"event\":\"PAY\",\"to\":\"paid\"},"                                    \
    "{\"from\":\"paid\",\"event\":\"SHIP\",\"to\":\"shipped\"}]}"

static void define(void)
{
    expect_ok("{\"type\":\"request\",\"id\":\"m\",\"op\":\"PUT_MACHINE\",\"params\":{\"machine\":"
              "\"order\",\"version\":1,\"definition\":" DEF "}}");
}

START_TEST(pipelined_in_order)
{
    define();
    buf_reset(&C.in);
    put(&C, "{\"type\":\"request\",\"id\":\"a\",\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":"
            "\"order\",\"version\":1,\"instance_id\":\"o1\"}}");
    put(&C, "{\"type\":\"request\",\"id\":\"b\",\"op\":\"APPLY_EVENT\",\"params\":{\"instance_id\":"
            "\"o1\",\"event\":\"PAY\",\"payload\":{\"n\":1}}}");
    /* COMPACT runs on a thread of its own; what follows it waits for it */
    put(&C, "{\"type\":\"request\",\"id\":\"k\",\"op\":\"COMPACT\"}");
    put(&C,
        "{\"type\":\"request\",\"id\":\"c\",\"op\":\"GET_INSTANCE\",\"params\":{\"instance_id\":"
        "\"o1\"}}");
    put(&C, "{\"type\":\"request\",\"id\":\"d\",\"op\":\"PING\"}");
    run(&C);
    const char *ids[] = {"a", "b", "k", "c", "d"};
    for (int i = 0; i < 5; i++) {
        cJSON *v = next_msg(&C, &rd);
        ck_assert_ptr_nonnull(v);
        ck_assert_str_eq(str(v, "id"), ids[i]);
        ck_assert_str_eq(str(v, "status"), "ok");
        if (i == 2) ck_assert_int_eq(json_get(json_get(v, "result"), "snapshots_created")->valueint, 1);
        if (i == 3) {
            ck_assert_str_eq(str(v, "result.state"), "paid");
            /* ctx defaults to {} and is never null */
            ck_assert(cJSON_IsObject(json_get(json_get(v, "result"), "ctx")));
        }
        cJSON_Delete(v);
    }
    ck_assert_ptr_null(next_msg(&C, &rd));
    ck_assert(!C.closing);
}
END_TEST

START_TEST(envelope_errors)
{
    /* answerable: BAD_REQUEST with the id, connection kept */
    expect_err("{\"type\":\"request\",\"id\":\"7\",\"op\":\"FLY\"}", "BAD_REQUEST");
    expect_err("{\"id\":\"8\",\"op\":\"PING\"}", "BAD_REQUEST");
    ck_assert(!C.closing);
    expect_ok("{\"type\":\"request\",\"id\":\"9\",\"op\":\"PING\"}");
    /* a request before the broken one is still answered, then close */
    put(&C, "{\"type\":\"request\",\"id\":\"10\",\"op\":\"PING\"}");
    put(&C, "{\"type\":\"request\",\"id\":10,\"op\":\"PING\"}");
    put(&C, "{\"type\":\"request\",\"id\":\"11\",\"op\":\"PING\"}");
    run(&C);
    cJSON *v = next_msg(&C, &rd);
    ck_assert_str_eq(str(v, "id"), "10");
    cJSON_Delete(v);
    ck_assert_ptr_null(next_msg(&C, &rd));
    ck_assert(C.closing);
}
END_TEST

START_TEST(bad_frame_closes)
{
    put(&C, "{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\"}");
    buf_add(&C.in, "RCPX\0\2\0\1\0\0\0\0\0\2\0\0\0\0{}", 20);
    run(&C);
    cJSON *v = next_msg(&C, &rd);
    ck_assert_str_eq(str(v, "id"), "1");
    cJSON_Delete(v);
    ck_assert(C.closing);
}
END_TEST

START_TEST(param_types)
{
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"HELLO\",\"params\":{\"protocol_"
               "version\":\"1\"}}",
               "BAD_REQUEST");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"HELLO\",\"params\":{\"protocol_version\":2}}",
        "BAD_REQUEST");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"HELLO\"}", "BAD_REQUEST");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"HELLO\",\"params\":{\"protocol_version\":1,"
        "\"wire_modes\":\"jsonl\"}}",
        "BAD_REQUEST");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"AUTH\",\"params\":{\"method\":\"bearer\"}}",
        "BAD_REQUEST");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_INSTANCE\",\"params\":{}}",
               "BAD_REQUEST");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_ALL\",\"params\":{\"machines\":\"x\"}}",
        "BAD_REQUEST");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_ALL\",\"params\":{\"include_ctx\":1}}",
        "BAD_REQUEST");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_ALL\",\"params\":{\"from_offset\":-1}}",
        "BAD_REQUEST");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"UNWATCH\",\"params\":{\"subscription_id\":5}}",
        "BAD_REQUEST");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"WAL_READ\",\"params\":{\"from_offset\":"
               "\"0\"}}",
               "BAD_REQUEST");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"BATCH\",\"params\":{\"ops\":{}}}",
               "BAD_REQUEST");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"GET_INSTANCE\",\"params\":{\"instance_"
               "id\":7}}",
               "BAD_REQUEST");
    /* absent or null params mean {} */
    expect_ok("{\"type\":\"request\",\"id\":\"1\",\"op\":\"LIST_INSTANCES\"}");
    expect_ok("{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_ALL\",\"params\":null}");
    expect_ok(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_ALL\",\"params\":{\"machines\":null}}");
    ck_assert(!C.closing);
}
END_TEST

START_TEST(hello_result)
{
    cJSON *v = call(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"HELLO\",\"params\":{\"protocol_version\":1,"
        "\"client_name\":null,\"wire_modes\":[\"jsonl\",\"binary_json\"],\"features\":"
        "[\"wal_read\",\"batch\",\"watch\",\"idempotency\"]}}");
    char *t = json_canonical(json_get(v, "result"), NULL);
    ck_assert_str_eq(
        t, "{\"features\":[\"idempotency\",\"batch\",\"wal_read\"],\"protocol_version\":1,"
           "\"server_name\":\"stmfs\",\"server_version\":\"" STMFS_VERSION "\","
           "\"wire_mode\":\"binary_json\"}");
    free(t);
    cJSON_Delete(v);
    v = call("{\"type\":\"request\",\"id\":\"2\",\"op\":\"INFO\"}");
    t = json_canonical(json_get(v, "result"), NULL);
    ck_assert_str_eq(
        t, "{\"features\":[\"idempotency\",\"batch\",\"wal_read\"],\"max_batch_ops\":100,"
           "\"max_frame_bytes\":16777216,\"protocol_version\":1,\"server_name\":\"stmfs\","
           "\"server_version\":\"" STMFS_VERSION "\"}");
    free(t);
    cJSON_Delete(v);
}
END_TEST

START_TEST(jsonl_symmetric)
{
    put(&C,
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"HELLO\",\"params\":{\"protocol_version\":1,"
        "\"wire_modes\":[\"jsonl\"]}}");
    /* pipelined right behind the HELLO, already as a line */
    buf_puts(&C.in, "{\"type\":\"request\",\"id\":\"2\",\"op\":\"PING\"}\n");
    run(&C);
    ck_assert_int_eq(C.out.data[0], '{'); /* the HELLO answer is already a line */
    cJSON *v = next_msg(&C, &rd);
    ck_assert_str_eq(str(v, "result.wire_mode"), "jsonl");
    cJSON_Delete(v);
    v = next_msg(&C, &rd);
    ck_assert_str_eq(str(v, "id"), "2");
    ck_assert_str_eq(str(v, "result.pong"), "true");
    cJSON_Delete(v);
    ck_assert(!C.closing);
}
END_TEST

START_TEST(jsonl_auto_detected)
{
    buf_puts(&C.in, "{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\"}\n");
    rcp_session_process_input(&C);
    /* the input was lines; the output stays binary until HELLO says so */
    cJSON *v = next_msg(&C, &rd);
    ck_assert_str_eq(str(v, "id"), "1");
    cJSON_Delete(v);
}
END_TEST

START_TEST(auth_gate)
{
    char h[65];
    util_sha256_hex("tok", 3, h);
    S.auth_required = true;
    S.hashes = xcalloc(1, sizeof *S.hashes);
    memcpy(S.hashes[0], h, 65);
    S.n_hashes = 1;
    C.authenticated = false;
    expect_ok("{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\"}");
    expect_ok(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"HELLO\",\"params\":{\"protocol_version\":1}}");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"INFO\"}", "UNAUTHORIZED");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_ALL\",\"params\":{}}",
               "UNAUTHORIZED");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_INSTANCE\",\"params\":{\"instance_id\":"
        "\"x\"}}",
        "UNAUTHORIZED");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"LIST_MACHINES\"}", "UNAUTHORIZED");
    /* BATCH too (and inside it each op is checked again) */
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"BATCH\",\"params\":{\"ops\":["
               "{\"op\":\"PING\"},{\"op\":\"LIST_MACHINES\"}]}}",
               "UNAUTHORIZED");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"AUTH\",\"params\":{\"method\":\"bearer\","
        "\"token\":\"nope\"}}",
        "AUTH_FAILED");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"AUTH\",\"params\":{\"method\":\"basic\","
        "\"token\":\"tok\"}}",
        "AUTH_FAILED");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"AUTH\",\"params\":{\"method\":\"bearer\","
        "\"token\":\"\"}}",
        "AUTH_FAILED");
    expect_ok(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"AUTH\",\"params\":{\"method\":\"bearer\","
        "\"token\":\"tok\"}}");
    expect_ok("{\"type\":\"request\",\"id\":\"1\",\"op\":\"INFO\"}");
    /* a failed AUTH does not undo a successful one */
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"AUTH\",\"params\":{\"method\":\"bearer\","
        "\"token\":\"nope\"}}",
        "AUTH_FAILED");
    expect_ok("{\"type\":\"request\",\"id\":\"1\",\"op\":\"INFO\"}");
}
END_TEST

START_TEST(auth_off_any_token)
{
    expect_ok(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"AUTH\",\"params\":{\"method\":\"bearer\","
        "\"token\":\"anything\"}}");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"AUTH\",\"params\":{\"method\":\"bearer\","
        "\"token\":\"\"}}",
        "AUTH_FAILED");
}
END_TEST

START_TEST(batch_modes)
{
    define();
    /* atomic: all or nothing */
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"BATCH\",\"params\":{\"mode\":"
               "\"atomic\",\"ops\":["
               "{\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":\"order\",\"version\":1,"
               "\"instance_id\":"
               "\"b1\"}},{\"op\":\"APPLY_EVENT\",\"params\":{\"instance_id\":\"b1\",\"event\":"
               "\"SHIP\"}}]}}",
               "BAD_REQUEST");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"GET_INSTANCE\",\"params\":{\"instance_"
               "id\":\"b1\"}}",
               "INSTANCE_NOT_FOUND");
    cJSON *v =
        call("{\"type\":\"request\",\"id\":\"1\",\"op\":\"BATCH\",\"params\":{\"mode\":\"atomic\","
             "\"ops\":[{\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":\"order\",\"version\":1,"
             "\"instance_id\":\"b1\"}},{\"op\":\"APPLY_EVENT\",\"params\":{\"instance_id\":\"b1\","
             "\"event\":\"PAY\"}}]}}");
    ck_assert_str_eq(str(v, "status"), "ok");
    cJSON *res = json_get(json_get(v, "result"), "results");
    ck_assert_int_eq(cJSON_GetArraySize(res), 2);
    ck_assert(cJSON_IsNull(json_get(cJSON_GetArrayItem(res, 1), "error")));
    ck_assert_str_eq(str(cJSON_GetArrayItem(res, 1), "result.to_state"), "paid");
    cJSON_Delete(v);
    /* session ops cannot be part of an atomic batch */
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"BATCH\",\"params\":{\"mode\":"
               "\"atomic\",\"ops\":["
               "{\"op\":\"PING\"}]}}",
               "BAD_REQUEST");
    /* best effort: every op runs */
    v = call("{\"type\":\"request\",\"id\":\"1\",\"op\":\"BATCH\",\"params\":{\"mode\":\"best_"
             "effort\",\"ops\":["
             "{\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":\"order\",\"version\":1,"
             "\"instance_id\":\"b2\"}},"
             "{\"op\":\"GET_INSTANCE\",\"params\":{\"instance_id\":\"nope\"}},"
             "{\"op\":\"APPLY_EVENT\",\"params\":{\"instance_id\":\"b2\",\"event\":\"PAY\"}}]}}");
    res = json_get(json_get(v, "result"), "results");
    ck_assert_str_eq(str(cJSON_GetArrayItem(res, 0), "status"), "ok");
    ck_assert_str_eq(str(cJSON_GetArrayItem(res, 1), "status"), "error");
    ck_assert(cJSON_IsNull(json_get(cJSON_GetArrayItem(res, 1), "result")));
    ck_assert_str_eq(str(cJSON_GetArrayItem(res, 1), "error.code"), "INSTANCE_NOT_FOUND");
    ck_assert_str_eq(str(cJSON_GetArrayItem(res, 2), "result.to_state"), "paid");
    cJSON_Delete(v);
    /* a malformed element stops the batch there; earlier ops stay */
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"BATCH\",\"params\":{\"ops\":["
               "{\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":\"order\",\"version\":1,"
               "\"instance_id\":\"b3\"}},"
               "{\"op\":\"NOPE\"},{\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":\"order\","
               "\"version\":1,"
               "\"instance_id\":\"b4\"}}]}}",
               "BAD_REQUEST");
    expect_ok("{\"type\":\"request\",\"id\":\"1\",\"op\":\"GET_INSTANCE\",\"params\":{\"instance_"
              "id\":\"b3\"}}");
    expect_err("{\"type\":\"request\",\"id\":\"1\",\"op\":\"GET_INSTANCE\",\"params\":{\"instance_"
               "id\":\"b4\"}}",
               "INSTANCE_NOT_FOUND");
    /* more than max_batch_ops */
    buf b = {0};
    buf_puts(&b, "{\"type\":\"request\",\"id\":\"1\",\"op\":\"BATCH\",\"params\":{\"ops\":[");
    for (int i = 0; i < 101; i++)
        buf_puts(&b, i ? ",{\"op\":\"PING\"}" : "{\"op\":\"PING\"}");
    buf_puts(&b, "]}}");
    expect_err(b.data, "BAD_REQUEST");
    buf_free(&b);
}
END_TEST

START_TEST(bye_discards_rest)
{
    put(&C, "{\"type\":\"request\",\"id\":\"1\",\"op\":\"BYE\"}");
    put(&C, "{\"type\":\"request\",\"id\":\"2\",\"op\":\"PING\"}");
    run(&C);
    cJSON *v = next_msg(&C, &rd);
    ck_assert_str_eq(str(v, "result.goodbye"), "true");
    cJSON_Delete(v);
    ck_assert_ptr_null(next_msg(&C, &rd));
    ck_assert(C.closing);
}
END_TEST

/* Drains C's watches after waiting for the WAL. */
static cJSON *next_event(void)
{
    stm_err err;
    eng_stats st;
    eng_get_stats(E, &st);
    eng_wait(E, st.wal.entry_count, &err);
    rcp_watches_drain(&C);
    return next_msg(&C, &rd);
}

START_TEST(watches)
{
    define();
    expect_ok(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":"
        "\"order\",\"version\":1,\"instance_id\":\"w1\",\"initial_ctx\":{\"a\":1}}}");
    expect_err(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"WATCH_INSTANCE\",\"params\":{\"instance_id\":"
        "\"nope\"}}",
        "INSTANCE_NOT_FOUND");
    cJSON *v = call(
        "{\"type\":\"request\",\"id\":\"2\",\"op\":\"WATCH_INSTANCE\",\"params\":{\"instance_id\":"
        "\"w1\",\"include_ctx\":true}}");
    ck_assert_str_eq(str(v, "result.current_state"), "created");
    ck_assert_str_eq(str(v, "result.instance_id"), "w1");
    char sub1[64];
    snprintf(sub1, sizeof sub1, "%s", str(v, "result.subscription_id"));
    ck_assert(strncmp(sub1, "sub-", 4) == 0 && strlen(sub1) == 40);
    cJSON_Delete(v);
    v = call(
        "{\"type\":\"request\",\"id\":\"3\",\"op\":\"WATCH_ALL\",\"params\":{\"include_ctx\":false,"
        "\"machines\":[\"order\"],\"to_states\":[\"shipped\"]}}");
    char sub2[64];
    snprintf(sub2, sizeof sub2, "%s", str(v, "result.subscription_id"));
    ck_assert(cJSON_IsNumber(json_get(json_get(v, "result"), "wal_offset")));
    cJSON_Delete(v);

    v = call("{\"type\":\"request\",\"id\":\"4\",\"op\":\"APPLY_EVENT\",\"params\":{\"instance_"
             "id\":\"w1\","
             "\"event\":\"PAY\",\"payload\":{\"b\":2}}}");
    double off = json_get(json_get(v, "result"), "wal_offset")->valuedouble;
    cJSON_Delete(v);
    size_t at = rd;
    v = next_event();
    ck_assert_ptr_nonnull(v);
    /* key order on the wire */
    char expect[512];
    snprintf(expect, sizeof expect,
             "{\"type\":\"event\",\"subscription_id\":\"%s\",\"instance_id\":\"w1\",\"machine\":"
             "\"order\","
             "\"version\":1,\"wal_offset\":%.0f,\"from_state\":\"created\",\"to_state\":\"paid\","
             "\"event\":\"PAY\",\"payload\":{\"b\":2},\"ctx\":{\"a\":1,\"b\":2}}",
             sub1, off);
    ck_assert(memcmp(C.out.data + at + RCP_HDR_LEN, expect, strlen(expect)) == 0);
    cJSON_Delete(v);
    ck_assert_ptr_null(next_event()); /* the WATCH_ALL filter wants shipped */

    expect_ok("{\"type\":\"request\",\"id\":\"5\",\"op\":\"APPLY_EVENT\",\"params\":{\"instance_"
              "id\":\"w1\","
              "\"event\":\"SHIP\"}}");
    int n = 0, with_ctx = 0;
    while ((v = next_event())) {
        n++;
        if (json_get(v, "ctx")) with_ctx++;
        ck_assert(cJSON_IsNull(json_get(v, "payload")));
        cJSON_Delete(v);
    }
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(with_ctx, 1);

    /* UNWATCH: own id removed once; anything else is not removed */
    char req[256];
    snprintf(req, sizeof req,
             "{\"type\":\"request\",\"id\":\"6\",\"op\":\"UNWATCH\",\"params\":{\"subscription_"
             "id\":\"%s\"}}",
             sub1);
    v = call(req);
    ck_assert_str_eq(str(v, "result.removed"), "true");
    ck_assert_str_eq(str(v, "result.subscription_id"), sub1);
    cJSON_Delete(v);
    v = call(req);
    ck_assert_str_eq(str(v, "result.removed"), "false");
    cJSON_Delete(v);
    /* another connection cannot remove sub2 */
    rcp_conn other;
    conn_init(&other);
    snprintf(req, sizeof req,
             "{\"type\":\"request\",\"id\":\"7\",\"op\":\"UNWATCH\",\"params\":{\"subscription_"
             "id\":\"%s\"}}",
             sub2);
    put(&other, req);
    run(&other);
    size_t ord = 0;
    v = next_msg(&other, &ord);
    ck_assert_str_eq(str(v, "result.removed"), "false");
    cJSON_Delete(v);
    conn_fini(&other);
    ck_assert_ptr_nonnull(C.watches);
}
END_TEST

START_TEST(watch_from_offset)
{
    define();
    expect_ok(
        "{\"type\":\"request\",\"id\":\"1\",\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":"
        "\"order\",\"version\":1,\"instance_id\":\"h1\"}}");
    expect_ok("{\"type\":\"request\",\"id\":\"2\",\"op\":\"APPLY_EVENT\",\"params\":{\"instance_"
              "id\":\"h1\","
              "\"event\":\"PAY\"}}");
    /* history first (from the start), then live, no gap, no duplicate */
    cJSON *v = call(
        "{\"type\":\"request\",\"id\":\"3\",\"op\":\"WATCH_ALL\",\"params\":{\"from_offset\":0}}");
    ck_assert_str_eq(str(v, "status"), "ok");
    cJSON_Delete(v);
    v = call("{\"type\":\"request\",\"id\":\"4\",\"op\":\"WATCH_INSTANCE\",\"params\":{\"instance_"
             "id\":\"h1\","
             "\"from_offset\":0}}");
    ck_assert_str_eq(str(v, "result.current_state"), "paid");
    cJSON_Delete(v);
    expect_ok("{\"type\":\"request\",\"id\":\"5\",\"op\":\"APPLY_EVENT\",\"params\":{\"instance_"
              "id\":\"h1\","
              "\"event\":\"SHIP\"}}");
    int pay = 0, ship = 0;
    while ((v = next_event())) {
        const char *ev = str(v, "event");
        if (strcmp(ev, "PAY") == 0) pay++;
        if (strcmp(ev, "SHIP") == 0) ship++;
        cJSON_Delete(v);
    }
    ck_assert_int_eq(pay, 2);
    ck_assert_int_eq(ship, 2);
}
END_TEST

/* A watcher that does not drain while far more events happen than the
 * engine's ring holds still gets every one of them, in order: the watch
 * resubscribes from where it was and catches up from the WAL. */
START_TEST(watch_overflow_loses_nothing)
{
    expect_ok("{\"type\":\"request\",\"id\":\"m\",\"op\":\"PUT_MACHINE\",\"params\":{\"machine\":"
              "\"flip\",\"version\":1,\"definition\":{\"states\":[\"a\",\"b\"],\"initial\":\"a\","
              "\"transitions\":[{\"from\":\"a\",\"event\":\"GO\",\"to\":\"b\"},"
              "{\"from\":\"b\",\"event\":\"GO\",\"to\":\"a\"}]}}}");
    expect_ok(
        "{\"type\":\"request\",\"id\":\"c\",\"op\":\"CREATE_INSTANCE\",\"params\":{\"machine\":"
        "\"flip\",\"version\":1,\"instance_id\":\"f\"}}");
    cJSON *p = cJSON_Parse("{\"instance_id\":\"f\",\"event\":\"GO\"}");
    for (int i = 0; i < 10; i++) { /* before the watch: never delivered */
        cJSON *r = NULL;
        uint64_t seq;
        stm_err err;
        ck_assert_int_eq(eng_call(E, "APPLY_EVENT", p, &r, &seq, &err), STM_OK);
        cJSON_Delete(r);
    }
    expect_ok("{\"type\":\"request\",\"id\":\"w\",\"op\":\"WATCH_ALL\",\"params\":{\"include_ctx\":"
              "false}}");
    const int N = 70000;
    for (int i = 0; i < N; i++) {
        cJSON *r = NULL;
        uint64_t seq;
        stm_err err;
        ck_assert_int_eq(eng_call(E, "APPLY_EVENT", p, &r, &seq, &err), STM_OK);
        cJSON_Delete(r);
    }
    cJSON_Delete(p);
    int n = 0;
    double last = 0;
    cJSON *v;
    for (;;) {
        /* the output is bounded: drain, then let the client "read" it */
        stm_err err;
        eng_stats st;
        eng_get_stats(E, &st);
        eng_wait(E, st.wal.entry_count, &err);
        rcp_watches_drain(&C);
        if (rd >= C.out.len) break;
        while ((v = next_msg(&C, &rd))) {
            double off = json_get(v, "wal_offset")->valuedouble;
            ck_assert(off > last);
            last = off;
            n++;
            cJSON_Delete(v);
        }
        C.out.len = C.out_off = rd = 0;
    }
    ck_assert_int_eq(n, N);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rcp-session");
    TCase *t = tcase_create("session");
    tcase_set_timeout(t, 60);
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, pipelined_in_order);
    tcase_add_test(t, envelope_errors);
    tcase_add_test(t, bad_frame_closes);
    tcase_add_test(t, param_types);
    tcase_add_test(t, hello_result);
    tcase_add_test(t, jsonl_symmetric);
    tcase_add_test(t, jsonl_auto_detected);
    tcase_add_test(t, auth_gate);
    tcase_add_test(t, auth_off_any_token);
    tcase_add_test(t, batch_modes);
    tcase_add_test(t, bye_discards_rest);
    tcase_add_test(t, watches);
    tcase_add_test(t, watch_from_offset);
    tcase_add_test(t, watch_overflow_loses_nothing);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
