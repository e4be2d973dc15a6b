/*
 * test_engine.c - the engine through its public API, on real data
 * directories: operations and their errors, durability ordering,
 * idempotency across restarts, atomic batches, history, subscriptions,
 * time travel, and rstmdb's own data directories (clean and torn).
 */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "engine/engine.h"
#include "wal/io.h"

static const char *testdata; /* ../shared/testdata, from the environment */

static char *tmpdir(void)
{
    char *t = strdup("/tmp/stmfs-engine-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(t));
    return t;
}

static void rmrf(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static eng *open_dir(const char *dir, const char *sync)
{
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    stm_err err;
    ck_assert_int_eq(wal_sync_policy_parse(sync ? sync : "every_write", &o.sync, &err), STM_OK);
    eng *e = NULL;
    stm_code rc = eng_open(&o, &e, NULL, &err);
    ck_assert_msg(rc == STM_OK, "eng_open: %s", err.msg);
    return e;
}

/* Runs op with params given as JSON text; returns the code, result text in *out. */
static stm_code call(eng *e, const char *op, const char *params, char **out, stm_err *err)
{
    cJSON *p = params ? cJSON_Parse(params) : NULL;
    if (params) ck_assert_msg(p != NULL, "bad test JSON: %s", params);
    cJSON *r = NULL;
    uint64_t seq = 0;
    stm_code rc = eng_call(e, op, p, &r, &seq, err);
    cJSON_Delete(p);
    if (rc == STM_OK) {
        ck_assert_int_eq(eng_wait(e, seq, err), STM_OK);
        buf b = {0};
        json_write(&b, r, true);
        cJSON_Delete(r);
        if (out) *out = buf_detach(&b, NULL);
        else buf_free(&b);
    } else if (out) {
        *out = NULL;
    }
    return rc;
}

static cJSON *ok(eng *e, const char *op, const char *params)
{
    stm_err err;
    char *out;
    stm_code rc = call(e, op, params, &out, &err);
    ck_assert_msg(rc == STM_OK, "%s %s: %s %s", op, params ? params : "", stm_code_name(rc),
                  err.msg);
    cJSON *r = cJSON_Parse(out);
    free(out);
    return r;
}

static void fails(eng *e, const char *op, const char *params, stm_code want, const char *msg_part)
{
    stm_err err = {0};
    stm_code rc = call(e, op, params, NULL, &err);
    ck_assert_msg(rc == want, "%s %s: wanted %s, got %s (%s)", op, params, stm_code_name(want),
                  stm_code_name(rc), err.msg);
    if (msg_part)
        ck_assert_msg(strstr(err.msg, msg_part), "message '%s' lacks '%s'", err.msg, msg_part);
}

static const char *ORDER =
    "{\"machine\":\"order\",\"version\":1,\"definition\":{\"states\":[\"created\",\"paid\","
    "\"shipped\"],\"initial\":\"created\",\"transitions\":[{\"from\":\"created\",\"event\":"
    "\"PAY\",\"to\":\"paid\"},{\"from\":\"paid\",\"event\":\"SHIP\",\"to\":\"shipped\","
    "\"guard\":\"ctx.amount > 0\"}]}}";

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = json_get(o, k);
    ck_assert_msg(cJSON_IsString(v), "no string %s", k);
    return v->valuestring;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = json_get(o, k);
    ck_assert_msg(cJSON_IsNumber(v), "no number %s", k);
    return v->valuedouble;
}

/* GET_INSTANCE of id answers with state want. */
static void check_state(eng *e, const char *id, const char *want)
{
    char p[256];
    snprintf(p, sizeof p, "{\"instance_id\":\"%s\"}", id);
    cJSON *r = ok(e, "GET_INSTANCE", p);
    ck_assert_str_eq(str(r, "state"), want);
    cJSON_Delete(r);
}

/* eng_wait for a number no record has returns an error at once (a damaged
 * snapshot naming one made a history read hang). */
START_TEST(wait_for_unwritten_seq_fails)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never");
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    uint64_t last = eng_acked_seq(e);
    stm_err err;
    ck_assert_int_eq(eng_wait(e, last, &err), STM_OK);
    ck_assert_int_eq(eng_wait(e, last + 1000, &err), STM_INTERNAL_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "not in the write-ahead log"));
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(put_get_create_apply)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, NULL);
    cJSON *r = ok(e, "PUT_MACHINE", ORDER);
    ck_assert(cJSON_IsTrue(json_get(r, "created")));
    ck_assert_str_eq(str(r, "stored_checksum"), "404b5006");
    cJSON_Delete(r);
    r = ok(e, "PUT_MACHINE", ORDER); /* identical: no-op */
    ck_assert(cJSON_IsFalse(json_get(r, "created")));
    cJSON_Delete(r);
    fails(e, "PUT_MACHINE",
          "{\"machine\":\"order\",\"version\":1,\"definition\":{\"states\":[\"a\"],\"initial\":\"a\","
          "\"transitions\":[]}}",
          STM_MACHINE_VERSION_EXISTS, "order v1");
    fails(e, "PUT_MACHINE",
          "{\"machine\":\"bad\",\"version\":1,\"definition\":{\"states\":[\"a\"],\"initial\":\"b\","
          "\"transitions\":[]}}",
          STM_BAD_REQUEST, NULL);

    r = ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"o-1\"}");
    ck_assert_str_eq(str(r, "state"), "created");
    uint64_t create_off = (uint64_t)num(r, "wal_offset");
    ck_assert_uint_eq(create_off >> 40, 1);
    cJSON_Delete(r);
    fails(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"o-1\"}",
          STM_INSTANCE_EXISTS, "o-1");
    fails(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":2}", STM_MACHINE_NOT_FOUND,
          "order v2");
    fails(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"initial_ctx\":[1]}",
          STM_BAD_REQUEST, "initial_ctx");

    r = ok(e, "GET_INSTANCE", "{\"instance_id\":\"o-1\"}");
    ck_assert(cJSON_IsObject(json_get(r, "ctx"))); /* {} not null: rstmdb-py needs an object */
    cJSON_Delete(r);

    fails(e, "APPLY_EVENT", "{\"instance_id\":\"o-1\",\"event\":\"SHIP\"}", STM_INVALID_TRANSITION,
          "cannot apply 'SHIP' in state 'created'");
    r = ok(e, "APPLY_EVENT", "{\"instance_id\":\"o-1\",\"event\":\"PAY\",\"payload\":{\"amount\":0}}");
    ck_assert_str_eq(str(r, "from_state"), "created");
    ck_assert_str_eq(str(r, "to_state"), "paid");
    ck_assert(cJSON_IsTrue(json_get(r, "applied")));
    ck_assert_int_eq((int)num(json_get(r, "ctx"), "amount"), 0);
    cJSON_Delete(r);
    fails(e, "APPLY_EVENT", "{\"instance_id\":\"o-1\",\"event\":\"SHIP\"}", STM_GUARD_FAILED,
          "ctx.amount > 0");
    fails(e, "APPLY_EVENT",
          "{\"instance_id\":\"o-1\",\"event\":\"SHIP\",\"expected_state\":\"created\"}",
          STM_CONFLICT, "expected 'created', actual 'paid'");
    /* the guard sees the context before this event's payload is merged */
    fails(e, "APPLY_EVENT",
          "{\"instance_id\":\"o-1\",\"event\":\"SHIP\",\"payload\":{\"amount\":5}}",
          STM_GUARD_FAILED, NULL);
    cJSON_Delete(ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"o-2\"}"));
    cJSON_Delete(ok(e, "APPLY_EVENT", "{\"instance_id\":\"o-2\",\"event\":\"PAY\",\"payload\":{\"amount\":5}}"));
    r = ok(e, "APPLY_EVENT", "{\"instance_id\":\"o-2\",\"event\":\"SHIP\"}");
    ck_assert_str_eq(str(r, "to_state"), "shipped");
    cJSON_Delete(r);
    fails(e, "APPLY_EVENT", "{\"instance_id\":\"o-2\",\"event\":\"SHIP\"}", STM_INVALID_TRANSITION, NULL);
    cJSON_Delete(ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"o-2\"}"));

    r = ok(e, "LIST_INSTANCES", NULL);
    ck_assert_int_eq((int)num(r, "total"), 1);
    cJSON_Delete(r);

    /* delete: gone for reads and events, id stays taken, history stays */
    r = ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"o-1\"}");
    uint64_t del_off = (uint64_t)num(r, "wal_offset");
    cJSON_Delete(r);
    r = ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"o-1\"}");
    ck_assert_uint_eq((uint64_t)num(r, "wal_offset"), del_off);
    cJSON_Delete(r);
    fails(e, "GET_INSTANCE", "{\"instance_id\":\"o-1\"}", STM_INSTANCE_NOT_FOUND, NULL);
    fails(e, "APPLY_EVENT", "{\"instance_id\":\"o-1\",\"event\":\"PAY\"}", STM_INSTANCE_NOT_FOUND,
          NULL);
    fails(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"o-1\"}",
          STM_INSTANCE_EXISTS, NULL);
    r = ok(e, "LIST_INSTANCES", "{}");
    ck_assert_int_eq((int)num(r, "total"), 0);
    cJSON_Delete(r);
    buf h = {0};
    uint64_t total = 0;
    stm_err err;
    ck_assert_int_eq(eng_history_read(e, "o-1", 0, 1 << 20, &h, &total, &err), STM_OK);
    ck_assert_uint_eq(h.len, total);
    int lines = 0;
    for (size_t i = 0; i < h.len; i++) lines += h.data[i] == '\n';
    ck_assert_int_eq(lines, 3); /* create, PAY, delete */
    ck_assert_ptr_nonnull(strstr(h.data, "\"event\":\"PAY\""));
    buf_free(&h);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* Everything acknowledged is there after a restart, byte for byte. */
START_TEST(restart_keeps_everything)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, NULL);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    char p[256];
    for (int i = 0; i < 50; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"i-%02d\","
                              "\"initial_ctx\":{\"n\":%d,\"s\":\"Jos\\u00e9 \\\"q\\\"\"}}", i, i);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
        if (i % 2) {
            snprintf(p, sizeof p, "{\"instance_id\":\"i-%02d\",\"event\":\"PAY\",\"event_id\":\"e%d\","
                                  "\"payload\":{\"amount\":%d.5}}", i, i, i);
            cJSON_Delete(ok(e, "APPLY_EVENT", p));
        }
    }
    cJSON_Delete(ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"i-07\"}"));
    char *before[50];
    for (int i = 0; i < 50; i++) {
        snprintf(p, sizeof p, "{\"instance_id\":\"i-%02d\"}", i);
        stm_err err;
        stm_code rc = call(e, "GET_INSTANCE", p, &before[i], &err);
        ck_assert_int_eq(rc, i == 7 ? STM_INSTANCE_NOT_FOUND : STM_OK);
    }
    buf h1 = {0};
    uint64_t t1;
    stm_err err;
    ck_assert_int_eq(eng_history_read(e, "i-03", 0, 1 << 20, &h1, &t1, &err), STM_OK);
    eng_close(e);

    e = open_dir(dir, NULL);
    for (int i = 0; i < 50; i++) {
        snprintf(p, sizeof p, "{\"instance_id\":\"i-%02d\"}", i);
        char *after;
        stm_code rc = call(e, "GET_INSTANCE", p, &after, &err);
        ck_assert_int_eq(rc, i == 7 ? STM_INSTANCE_NOT_FOUND : STM_OK);
        if (rc == STM_OK) ck_assert_str_eq(after, before[i]);
        free(after);
        free(before[i]);
    }
    buf h2 = {0};
    uint64_t t2;
    ck_assert_int_eq(eng_history_read(e, "i-03", 0, 1 << 20, &h2, &t2, &err), STM_OK);
    ck_assert_uint_eq(t1, t2);
    ck_assert_str_eq(buf_cstr(&h1), buf_cstr(&h2));
    buf_free(&h1);
    buf_free(&h2);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(idempotency_survives_restart)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, NULL);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    cJSON *a = ok(e, "CREATE_INSTANCE",
                  "{\"machine\":\"order\",\"version\":1,\"idempotency_key\":\"k1\"}");
    const char *id = str(a, "instance_id");
    ck_assert_int_eq((int)strlen(id), 36);
    char p[256];
    snprintf(p, sizeof p, "{\"instance_id\":\"%s\",\"event\":\"PAY\",\"idempotency_key\":\"pay-1\","
                          "\"payload\":{\"amount\":3}}", id);
    cJSON *r1 = ok(e, "APPLY_EVENT", p);
    eng_close(e);

    e = open_dir(dir, NULL);
    /* a retried create without an id finds the same instance */
    cJSON *b = ok(e, "CREATE_INSTANCE",
                  "{\"machine\":\"order\",\"version\":1,\"idempotency_key\":\"k1\"}");
    ck_assert_str_eq(str(b, "instance_id"), id);
    ck_assert(cJSON_IsFalse(json_get(b, "applied")));
    cJSON *r2 = ok(e, "APPLY_EVENT", p);
    ck_assert(cJSON_IsFalse(json_get(r2, "applied")));
    ck_assert_uint_eq((uint64_t)num(r1, "wal_offset"), (uint64_t)num(r2, "wal_offset"));
    ck_assert_str_eq(str(r2, "to_state"), "paid");
    /* the same key for something else is a conflict */
    snprintf(p, sizeof p, "{\"instance_id\":\"%s\",\"event\":\"SHIP\",\"idempotency_key\":\"pay-1\"}",
             id);
    fails(e, "APPLY_EVENT", p, STM_CONFLICT, "pay-1");
    cJSON *l = ok(e, "LIST_INSTANCES", NULL);
    ck_assert_int_eq((int)num(l, "total"), 1);
    cJSON_Delete(l);
    cJSON_Delete(a);
    cJSON_Delete(b);
    cJSON_Delete(r1);
    cJSON_Delete(r2);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(atomic_batch_all_or_nothing)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, NULL);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    wal_stats st0;
    eng_stats es;
    eng_get_stats(e, &es);
    st0 = es.wal;
    const char *ops[3] = {"CREATE_INSTANCE", "APPLY_EVENT", "APPLY_EVENT"};
    cJSON *params[3] = {
        cJSON_Parse("{\"machine\":\"order\",\"version\":1,\"instance_id\":\"b-1\"}"),
        cJSON_Parse("{\"instance_id\":\"b-1\",\"event\":\"PAY\",\"payload\":{\"amount\":0}}"),
        cJSON_Parse("{\"instance_id\":\"b-1\",\"event\":\"SHIP\"}"), /* guard fails */
    };
    cJSON *results[3];
    uint64_t seq;
    size_t failed = 99;
    stm_err err;
    stm_code rc = eng_call_atomic(e, 3, ops, (const cJSON *const *)params, results, &seq, &failed,
                                  &err);
    ck_assert_int_eq(rc, STM_GUARD_FAILED);
    ck_assert_uint_eq(failed, 2);
    fails(e, "GET_INSTANCE", "{\"instance_id\":\"b-1\"}", STM_INSTANCE_NOT_FOUND, NULL);
    eng_get_stats(e, &es);
    ck_assert_uint_eq(es.wal.entry_count, st0.entry_count); /* nothing written */

    cJSON_Delete(params[1]);
    params[1] = cJSON_Parse("{\"instance_id\":\"b-1\",\"event\":\"PAY\",\"payload\":{\"amount\":1}}");
    rc = eng_call_atomic(e, 3, ops, (const cJSON *const *)params, results, &seq, &failed, &err);
    ck_assert_msg(rc == STM_OK, "%s", err.msg);
    ck_assert_int_eq(eng_wait(e, seq, &err), STM_OK);
    for (int i = 0; i < 3; i++) {
        cJSON_Delete(results[i]);
        cJSON_Delete(params[i]);
    }
    eng_close(e);
    e = open_dir(dir, NULL);
    check_state(e, "b-1", "shipped");
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* Runs an atomic batch of n ops given as JSON text and waits for it to be
 * durable. Returns the code; on success the results as JSON in res[]
 * (caller deletes), else *failed. */
static stm_code batch(eng *e, size_t n, const char *const *ops, const char *const *params,
                      cJSON **res, size_t *failed, stm_err *err)
{
    cJSON *p[8];
    ck_assert_uint_le(n, 8);
    for (size_t i = 0; i < n; i++) {
        p[i] = cJSON_Parse(params[i]);
        ck_assert_msg(p[i] != NULL, "bad test JSON: %s", params[i]);
    }
    uint64_t seq = 0;
    stm_code rc = eng_call_atomic(e, n, ops, (const cJSON *const *)p, res, &seq, failed, err);
    if (rc == STM_OK && (rc = eng_wait(e, seq, err)) != STM_OK)
        for (size_t i = 0; i < n; i++) {
            cJSON_Delete(res[i]);
            res[i] = NULL;
        }
    for (size_t i = 0; i < n; i++)
        cJSON_Delete(p[i]);
    return rc;
}

static void free_all(cJSON **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cJSON_Delete(v[i]);
}

static char *text_of(const cJSON *v)
{
    buf b = {0};
    json_write(&b, v, true);
    return buf_detach(&b, NULL);
}

/* Two ops of one atomic batch with the same idempotency key: the second is a
 * replay of the first, staged one (its result, applied false), as in a
 * best-effort batch, and after a restart the key answers the same. The same
 * key for a different request is CONFLICT, as in best effort, and fails the
 * batch. (The replay read the staged op's record back from the log at
 * offset 0: "no record at offset 0".) */
START_TEST(atomic_batch_repeated_key)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, NULL);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    cJSON_Delete(
        ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"bk1\"}"));
    cJSON_Delete(
        ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"bk2\"}"));
    eng_stats es;
    eng_get_stats(e, &es);
    uint64_t records = es.wal.entry_count;
    stm_err err = {0};
    size_t failed = 99;
    cJSON *r[8] = {0};

    static const char *const apply2[] = {"APPLY_EVENT", "APPLY_EVENT"};
    const char *pay[] = {"{\"instance_id\":\"bk1\",\"event\":\"PAY\",\"payload\":{\"amount\":5},"
                         "\"idempotency_key\":\"pay-bk1\"}",
                         "{\"instance_id\":\"bk1\",\"event\":\"PAY\",\"payload\":{\"amount\":5},"
                         "\"idempotency_key\":\"pay-bk1\"}"};
    stm_code rc = batch(e, 2, apply2, pay, r, &failed, &err);
    ck_assert_msg(rc == STM_OK, "%s at op %zu: %s", stm_code_name(rc), failed, err.msg);
    ck_assert(cJSON_IsTrue(json_get(r[0], "applied")));
    ck_assert(cJSON_IsFalse(json_get(r[1], "applied")));
    cJSON_DeleteItemFromObject(r[0], "applied");
    cJSON_DeleteItemFromObject(r[1], "applied");
    char *first = text_of(r[0]), *second = text_of(r[1]);
    ck_assert_str_eq(second, first); /* the same ctx, states, offset */
    free(second);
    uint64_t pay_off = (uint64_t)num(r[0], "wal_offset");
    free_all(r, 2);
    eng_get_stats(e, &es);
    ck_assert_uint_eq(es.wal.entry_count, records + 1); /* one record */
    records = es.wal.entry_count;

    /* the replay answers what the staged op did, even once a later op of
     * the batch moved the instance on */
    static const char *const apply3[] = {"APPLY_EVENT", "APPLY_EVENT", "APPLY_EVENT"};
    const char *moved[] = {"{\"instance_id\":\"bk2\",\"event\":\"PAY\",\"payload\":{\"amount\":2},"
                           "\"idempotency_key\":\"pay-bk2\"}",
                           "{\"instance_id\":\"bk2\",\"event\":\"SHIP\"}",
                           "{\"instance_id\":\"bk2\",\"event\":\"PAY\",\"payload\":{\"amount\":2},"
                           "\"idempotency_key\":\"pay-bk2\"}"};
    rc = batch(e, 3, apply3, moved, r, &failed, &err);
    ck_assert_msg(rc == STM_OK, "%s at op %zu: %s", stm_code_name(rc), failed, err.msg);
    ck_assert(cJSON_IsFalse(json_get(r[2], "applied")));
    ck_assert_str_eq(str(r[2], "to_state"), "paid");
    ck_assert_uint_eq((uint64_t)num(r[2], "wal_offset"), (uint64_t)num(r[0], "wal_offset"));
    free_all(r, 3);

    /* creates, with and without an instance id */
    static const char *const create2[] = {"CREATE_INSTANCE", "CREATE_INSTANCE"};
    const char *named[] = {
        "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"c-1\",\"idempotency_key\":\"ck1\"}",
        "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"c-1\",\"idempotency_key\":"
        "\"ck1\"}"};
    rc = batch(e, 2, create2, named, r, &failed, &err);
    ck_assert_msg(rc == STM_OK, "%s at op %zu: %s", stm_code_name(rc), failed, err.msg);
    ck_assert(cJSON_IsFalse(json_get(r[1], "applied")));
    ck_assert_str_eq(str(r[1], "instance_id"), "c-1");
    ck_assert_str_eq(str(r[1], "state"), "created");
    ck_assert_uint_eq((uint64_t)num(r[1], "wal_offset"), (uint64_t)num(r[0], "wal_offset"));
    free_all(r, 2);
    const char *anon[] = {"{\"machine\":\"order\",\"version\":1,\"idempotency_key\":\"ck2\"}",
                          "{\"machine\":\"order\",\"version\":1,\"idempotency_key\":\"ck2\"}"};
    rc = batch(e, 2, create2, anon, r, &failed, &err);
    ck_assert_msg(rc == STM_OK, "%s at op %zu: %s", stm_code_name(rc), failed, err.msg);
    ck_assert(cJSON_IsFalse(json_get(r[1], "applied")));
    char *anon_id = strdup(str(r[0], "instance_id"));
    ck_assert_str_eq(str(r[1], "instance_id"), anon_id);
    free_all(r, 2);
    cJSON *l = ok(e, "LIST_INSTANCES", NULL);
    ck_assert_int_eq((int)num(l, "total"), 4); /* bk1, bk2, c-1 and one more */
    cJSON_Delete(l);
    eng_get_stats(e, &es);
    records = es.wal.entry_count;

    /* the same key for a different request: CONFLICT, as best effort
     * answers that op; the batch fails and nothing is applied */
    cJSON_Delete(
        ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"bk3\"}"));
    eng_get_stats(e, &es);
    records = es.wal.entry_count;
    const char *differ[] = {"{\"instance_id\":\"bk3\",\"event\":\"PAY\",\"payload\":{\"amount\":5},"
                            "\"idempotency_key\":\"pay-bk3\"}",
                            "{\"instance_id\":\"bk3\",\"event\":\"PAY\",\"payload\":{\"amount\":6},"
                            "\"idempotency_key\":\"pay-bk3\"}"};
    rc = batch(e, 2, apply2, differ, r, &failed, &err);
    ck_assert_msg(rc == STM_CONFLICT, "%s: %s", stm_code_name(rc), err.msg);
    ck_assert_uint_eq(failed, 1);
    ck_assert_ptr_nonnull(strstr(err.msg, "pay-bk3"));
    const char *cdiffer[] = {"{\"machine\":\"order\",\"version\":1,\"idempotency_key\":\"ck3\"}",
                             "{\"machine\":\"order\",\"version\":1,\"idempotency_key\":\"ck3\","
                             "\"initial_ctx\":{\"a\":1}}"};
    rc = batch(e, 2, create2, cdiffer, r, &failed, &err);
    ck_assert_msg(rc == STM_CONFLICT, "%s: %s", stm_code_name(rc), err.msg);
    ck_assert_uint_eq(failed, 1);
    eng_get_stats(e, &es);
    ck_assert_uint_eq(es.wal.entry_count, records); /* nothing written */
    check_state(e, "bk3", "created");
    /* best effort, op by op: the second is the conflict */
    cJSON_Delete(ok(e, "APPLY_EVENT", differ[0]));
    fails(e, "APPLY_EVENT", differ[1], STM_CONFLICT, "pay-bk3");

    /* the keys answer the same later, and after a restart */
    for (int round = 0; round < 2; round++) {
        cJSON *a = ok(e, "APPLY_EVENT", pay[0]);
        ck_assert(cJSON_IsFalse(json_get(a, "applied")));
        cJSON_DeleteItemFromObject(a, "applied");
        char *t = text_of(a);
        ck_assert_str_eq(t, first);
        free(t);
        ck_assert_uint_eq((uint64_t)num(a, "wal_offset"), pay_off);
        cJSON_Delete(a);
        cJSON *c = ok(e, "CREATE_INSTANCE", anon[0]);
        ck_assert(cJSON_IsFalse(json_get(c, "applied")));
        ck_assert_str_eq(str(c, "instance_id"), anon_id);
        cJSON_Delete(c);
        c = ok(e, "CREATE_INSTANCE", named[0]);
        ck_assert(cJSON_IsFalse(json_get(c, "applied")));
        cJSON_Delete(c);
        eng_close(e);
        e = open_dir(dir, NULL);
    }
    free(first);
    free(anon_id);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

static void wake_noop(void *arg)
{
    (void)arg;
}

/* Nothing more is ready for s; then everything is closed and removed. */
static void end_with_nothing_pending(eng *e, eng_sub *s, char *dir)
{
    eng_event ev;
    ck_assert_int_eq(eng_sub_next(s, &ev, NULL), 0);
    eng_unsubscribe(s);
    eng_close(e);
    rmrf(dir);
    free(dir);
}

/* Catch-up from an offset, then live, with no gap and no duplicate. */
START_TEST(subscription_catch_up_then_live)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never");
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    cJSON *c = ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"w\"}");
    uint64_t from = (uint64_t)num(c, "wal_offset");
    cJSON_Delete(c);
    cJSON_Delete(ok(e, "APPLY_EVENT", "{\"instance_id\":\"w\",\"event\":\"PAY\",\"payload\":{\"amount\":2}}"));
    eng_close(e);
    e = open_dir(dir, "never"); /* the ring is empty now: catch-up must read the WAL */
    eng_filter f = {.instance_id = "w", .from_offset = from};
    eng_sub *s;
    stm_err err;
    ck_assert_int_eq(eng_subscribe(e, &f, wake_noop, NULL, &s, &err), STM_OK);
    cJSON_Delete(ok(e, "APPLY_EVENT", "{\"instance_id\":\"w\",\"event\":\"SHIP\"}"));
    const char *want[] = {"create_instance", "PAY", "SHIP"};
    for (int i = 0; i < 3; i++) {
        eng_event ev;
        uint64_t resume;
        int r = eng_sub_next(s, &ev, &resume);
        ck_assert_int_eq(r, 1);
        if (i == 0) ck_assert_int_eq(ev.type, WAL_T_CREATE_INSTANCE);
        else ck_assert_str_eq(ev.event, want[i]);
    }
    end_with_nothing_pending(e, s, dir);
}
END_TEST

/* Takes events from s, each the next of the sequence {"n":*got} at a
 * higher offset than the last; until none is ready, or, with want > 0,
 * until *got reaches want (waiting up to 3 s for the flusher). */
static void drain_in_order(eng_sub *s, int *got, uint64_t *last, int want)
{
    for (int idle = 0; idle < 3000 && (want == 0 || *got < want);) {
        eng_event ev;
        int r = eng_sub_next(s, &ev, NULL);
        ck_assert_int_ge(r, 0);
        if (r == 0) {
            if (want == 0) return;
            usleep(1000);
            idle++;
            continue;
        }
        ck_assert_uint_gt(ev.offset, *last);
        *last = ev.offset;
        char text[32];
        snprintf(text, sizeof text, "{\"n\":%d}", (*got)++);
        ck_assert_str_eq(ev.payload_json, text);
    }
}

/* Events applied while nobody listens are not kept in the hub, and the
 * flusher may not have written them yet: a subscription from an offset
 * among them must still get every one, once, in order, then the live ones. */
START_TEST(subscription_after_unwatched_burst)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never");
    cJSON_Delete(ok(e, "PUT_MACHINE",
                    "{\"machine\":\"loop\",\"version\":1,\"definition\":{\"states\":[\"on\"],"
                    "\"initial\":\"on\",\"transitions\":[{\"from\":\"on\",\"event\":\"TICK\","
                    "\"to\":\"on\"}]}}"));
    cJSON_Delete(ok(e, "CREATE_INSTANCE", "{\"machine\":\"loop\",\"version\":1,\"instance_id\":\"t\"}"));
    cJSON *p = cJSON_Parse("{\"instance_id\":\"t\",\"event\":\"TICK\",\"payload\":{\"n\":0}}");
    enum { BURST = 5000, LIVE = 10, BACK = 100 };
    static uint64_t offsets[BURST];
    stm_err err;
    eng_sub *s = NULL;
    int got = 0;
    uint64_t last = 0;
    for (int i = 0; i < BURST + LIVE; i++) {
        if (i == BURST) {
            /* subscribe in the middle of the stream, from a recent event:
             * catching up reaches the end of the file at once, while the
             * newest events may still be on their way to it */
            eng_filter f = {.instance_id = "t", .from_offset = offsets[BURST - BACK],
                            .apply_only = true};
            got = BURST - BACK;
            ck_assert_int_eq(eng_subscribe(e, &f, wake_noop, NULL, &s, &err), STM_OK);
        }
        if (s) drain_in_order(s, &got, &last, 0); /* what is ready, racing the flusher */
        cJSON_SetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(p, "payload"), "n"), i);
        cJSON *r = NULL;
        uint64_t seq;
        ck_assert_int_eq(eng_call(e, "APPLY_EVENT", p, &r, &seq, &err), STM_OK); /* no wait */
        if (i < BURST) offsets[i] = (uint64_t)cJSON_GetObjectItem(r, "wal_offset")->valuedouble;
        cJSON_Delete(r);
    }
    cJSON_Delete(p);
    drain_in_order(s, &got, &last, BURST + LIVE);
    ck_assert_int_eq(got, BURST + LIVE);
    end_with_nothing_pending(e, s, dir);
}
END_TEST

/* A history's size is computed without rendering it when nobody watches,
 * and from the rendered lines when someone does; after a restart, by
 * replay. All three must be the size of the text that is then read. */
typedef struct {
    char **ids;
    size_t n, cap;
} id_list;

static bool collect_id(void *arg, const char *id)
{
    id_list *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->ids = realloc(l->ids, l->cap * sizeof *l->ids);
    }
    l->ids[l->n++] = strdup(id);
    return true;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The engine's listing, whole and page by page (the cursor a client or
 * readdir passes), equals the sorted set of ids created so far. */
static void check_listing(eng *e, char **want, size_t n)
{
    char **sorted = malloc((n + 1) * sizeof *sorted);
    memcpy(sorted, want, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_cstr);
    id_list all = {0};
    eng_list_instance_ids(e, NULL, NULL, SIZE_MAX, collect_id, &all);
    ck_assert_uint_eq(all.n, n);
    for (size_t i = 0; i < n; i++) ck_assert_str_eq(all.ids[i], sorted[i]);
    /* pages of 7 from a cursor, as LIST_INSTANCES and readdir ask */
    size_t at = 0;
    const char *cursor = NULL;
    char *cur = NULL;
    for (;;) {
        id_list page = {0};
        eng_list_instance_ids(e, NULL, cursor, 7, collect_id, &page);
        for (size_t i = 0; i < page.n; i++) ck_assert_str_eq(page.ids[i], sorted[at + i]);
        at += page.n;
        free(cur);
        cur = page.n ? strdup(page.ids[page.n - 1]) : NULL;
        cursor = cur;
        for (size_t i = 0; i < page.n; i++) free(page.ids[i]);
        free(page.ids);
        if (page.n < 7) break;
    }
    free(cur);
    ck_assert_uint_eq(at, n);
    for (size_t i = 0; i < all.n; i++) free(all.ids[i]);
    free(all.ids);
    free(sorted);
}

/* Creates are linked into the sorted index only when something walks it
 * (inst_link_all): listings in between, creates in random order with ids
 * of every length and shared prefixes, a failed atomic batch that undoes
 * a create nobody listed yet, and a restart must all keep the order exact. */
START_TEST(listing_order_with_deferred_index)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never");
    cJSON *r = ok(e, "PUT_MACHINE", ORDER);
    cJSON_Delete(r);
    enum { N = 3000 };
    char **ids = calloc(N, sizeof *ids);
    srand(7);
    size_t n = 0;
    char params[256];
    for (int i = 0; i < N; i++) {
        char id[64];
        int shape = rand() % 3;
        if (shape == 0) snprintf(id, sizeof id, "o-%d", rand() % 100000);
        else if (shape == 1) snprintf(id, sizeof id, "order-%06d-x", rand() % 1000000);
        else snprintf(id, sizeof id, "%c%d", 'a' + rand() % 26, rand());
        bool dup = false;
        for (size_t k = 0; k < n && !dup; k++) dup = strcmp(ids[k], id) == 0;
        if (dup) continue;
        snprintf(params, sizeof params,
                 "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"%s\"}", id);
        r = ok(e, "CREATE_INSTANCE", params);
        cJSON_Delete(r);
        ids[n++] = strdup(id);
        if (rand() % 500 == 0) check_listing(e, ids, n);
        if (i == N / 2) {
            /* an atomic batch whose second op fails undoes its first, a
             * create the index has not taken in yet */
            snprintf(params, sizeof params,
                     "{\"mode\":\"atomic\",\"ops\":[{\"op\":\"CREATE_INSTANCE\",\"params\":"
                     "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"zz-undone\"}},"
                     "{\"op\":\"APPLY_EVENT\",\"params\":{\"instance_id\":\"no-such\","
                     "\"event\":\"PAY\"}}]}");
            stm_err err;
            char *out = NULL;
            call(e, "BATCH", params, &out, &err);
            free(out);
            fails(e, "GET_INSTANCE", "{\"instance_id\":\"zz-undone\"}", STM_INSTANCE_NOT_FOUND,
                  NULL);
            check_listing(e, ids, n);
        }
    }
    check_listing(e, ids, n);
    eng_close(e);
    e = open_dir(dir, "never");
    check_listing(e, ids, n);
    eng_close(e);
    for (size_t k = 0; k < n; k++) free(ids[k]);
    free(ids);
    rmrf(dir);
    free(dir);
}
END_TEST

static void check_history_size(eng *e, const char *id)
{
    buf text = {0};
    uint64_t total = 0;
    stm_err err;
    stm_code rc = eng_history_read(e, id, 0, 1u << 30, &text, &total, &err);
    ck_assert_msg(rc == STM_OK, "%s", err.msg);
    ck_assert_uint_eq(total, text.len);
    ck_assert_uint_gt(text.len, 0);
    buf_free(&text);
}

START_TEST(history_sizes_are_exact)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never");
    cJSON_Delete(ok(e, "PUT_MACHINE",
                    "{\"machine\":\"odd\",\"version\":1,\"definition\":{\"states\":[\"a \\\"q\\\"\","
                    "\"b\\\\\\n\\u0001\"],\"initial\":\"a \\\"q\\\"\",\"transitions\":[{\"from\":"
                    "\"a \\\"q\\\"\",\"event\":\"GO\\t\\u001f\",\"to\":\"b\\\\\\n\\u0001\"},"
                    "{\"from\":\"b\\\\\\n\\u0001\",\"event\":\"BACK\",\"to\":\"a \\\"q\\\"\"}]}}"));
    const char *ids[] = {"x\\\"1", "y"}; /* as JSON text */
    const char *plain[] = {"x\"1", "y"};
    eng_sub *s = NULL;
    for (int round = 0; round < 2; round++) {
        char p[512];
        /* round 0 unwatched, round 1 with a subscriber */
        if (round == 1) {
            eng_filter f = {0};
            stm_err err;
            ck_assert_int_eq(eng_subscribe(e, &f, wake_noop, NULL, &s, &err), STM_OK);
        }
        snprintf(p, sizeof p,
                 "{\"machine\":\"odd\",\"version\":1,\"instance_id\":\"%s\",\"initial_ctx\":"
                 "{\"n\\u00e9\":1.5e300,\"t\":\"\\u0002\\\\\"},\"idempotency_key\":\"k\\n%d\"}",
                 ids[round], round);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
        snprintf(p, sizeof p,
                 "{\"instance_id\":\"%s\",\"event\":\"GO\\t\\u001f\",\"event_id\":\"e\\\"%d\","
                 "\"idempotency_key\":\"i\\u0003\",\"payload\":{\"z\":[-0.25,\"\\u00ff\"],\"a\":null}}",
                 ids[round], round);
        cJSON_Delete(ok(e, "APPLY_EVENT", p));
        snprintf(p, sizeof p, "{\"instance_id\":\"%s\",\"event\":\"BACK\"}", ids[round]);
        cJSON_Delete(ok(e, "APPLY_EVENT", p));
        check_history_size(e, plain[round]);
    }
    eng_unsubscribe(s);
    eng_close(e);
    e = open_dir(dir, "never");
    check_history_size(e, plain[0]);
    check_history_size(e, plain[1]);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(replay_at_offset)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, NULL);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    cJSON_Delete(ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"t\"}"));
    cJSON *r = ok(e, "APPLY_EVENT", "{\"instance_id\":\"t\",\"event\":\"PAY\",\"payload\":{\"amount\":1}}");
    uint64_t pay = (uint64_t)num(r, "wal_offset");
    cJSON_Delete(r);
    cJSON_Delete(ok(e, "APPLY_EVENT", "{\"instance_id\":\"t\",\"event\":\"SHIP\"}"));
    eng_close(e);
    buf out = {0};
    stm_err err;
    ck_assert_int_eq(eng_replay(dir, pay - 1, "t", &out, &err), STM_OK);
    ck_assert_ptr_nonnull(strstr(buf_cstr(&out), "\"state\": \"created\""));
    buf_reset(&out);
    ck_assert_int_eq(eng_replay(dir, pay, "t", &out, &err), STM_OK);
    ck_assert_ptr_nonnull(strstr(buf_cstr(&out), "\"state\": \"paid\""));
    buf_reset(&out);
    ck_assert_int_eq(eng_replay_verify(dir, &out, &err), STM_OK);
    /* a snapshot does not hide earlier points while the log holds them */
    e = open_dir(dir, NULL);
    cJSON *c = ok(e, "COMPACT", NULL);
    ck_assert_int_eq((int)num(c, "snapshots_created"), 1);
    cJSON_Delete(c);
    eng_close(e);
    buf_reset(&out);
    ck_assert_int_eq(eng_replay(dir, pay - 1, "t", &out, &err), STM_OK);
    ck_assert_ptr_nonnull(strstr(buf_cstr(&out), "\"state\": \"created\""));
    buf_reset(&out);
    ck_assert_int_eq(eng_replay_verify(dir, &out, &err), STM_OK);
    ck_assert_ptr_nonnull(strstr(buf_cstr(&out), "identical"));
    buf_free(&out);
    rmrf(dir);
    free(dir);
}
END_TEST

/* rstmdb's own data directory opens to the state it had (expected.json). */
static void check_fixture(const char *name, bool torn)
{
    if (!testdata) return;
    char *dir = tmpdir();
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "cp -r '%s/%s/wal' '%s/%s/snapshots' '%s/'", testdata, name,
             testdata, name, dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/rstmdb-data/expected.json", testdata);
    FILE *f = fopen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&b, chunk, n);
    fclose(f);
    cJSON *exp = cJSON_Parse(b.data);
    buf_free(&b);
    ck_assert_ptr_nonnull(exp);

    eng *e = open_dir(dir, NULL);
    const cJSON *insts = json_get(exp, "instances");
    const cJSON *it;
    cJSON_ArrayForEach(it, insts) {
        const char *id = str(it, "instance_id");
        const cJSON *want = json_get(it, "get_instance");
        if (torn && strcmp(id, "o2-01") == 0) {
            cJSON *r = ok(e, "GET_INSTANCE", "{\"instance_id\":\"o2-01\"}");
            ck_assert_str_eq(str(r, "state"), "shipped");
            ck_assert_uint_eq((uint64_t)num(r, "last_wal_offset"), 2199023270551ull);
            cJSON_Delete(r);
            continue;
        }
        char p[256];
        snprintf(p, sizeof p, "{\"instance_id\":\"%s\"}", id);
        if (cJSON_IsTrue(json_get(it, "deleted"))) {
            fails(e, "GET_INSTANCE", p, STM_INSTANCE_NOT_FOUND, NULL);
            continue;
        }
        cJSON *r = ok(e, "GET_INSTANCE", p);
        ck_assert_str_eq(str(r, "state"), str(want, "state"));
        ck_assert_str_eq(str(r, "machine"), str(want, "machine"));
        ck_assert_uint_eq((uint64_t)num(r, "last_wal_offset"), (uint64_t)num(want, "last_wal_offset"));
        ck_assert_msg(cJSON_Compare(json_get(r, "ctx"), json_get(want, "ctx"), true),
                      "ctx of %s differs", id);
        const cJSON *le = json_get(want, "last_event_id");
        if (le) ck_assert_str_eq(str(r, "last_event_id"), le->valuestring);
        else ck_assert_ptr_null(json_get(r, "last_event_id"));
        cJSON_Delete(r);
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, json_get(exp, "machines")) {
        const cJSON *gm = json_get(m, "get_machine");
        const cJSON *sub = json_get(m, "submitted_definition");
        (void)sub;
        const cJSON *rec = json_get(m, "put_machine_record");
        (void)rec;
        cJSON *lm = ok(e, "LIST_MACHINES", NULL);
        ck_assert_int_eq(cJSON_GetArraySize(json_get(lm, "items")), 2);
        cJSON_Delete(lm);
        ck_assert(cJSON_IsString(json_get(gm, "checksum")));
    }
    cJSON *li = ok(e, "LIST_INSTANCES", "{\"limit\":1000}");
    ck_assert_int_eq((int)num(li, "total"), 19);
    const cJSON *ids = json_get(json_get(exp, "list_instances"), "ids_sorted");
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, json_get(li, "instances")) {
        ck_assert_str_eq(str(x, "id"), cJSON_GetArrayItem(ids, i)->valuestring);
        i++;
    }
    cJSON_Delete(li);
    cJSON *ws = ok(e, "WAL_STATS", NULL);
    if (!torn) ck_assert_uint_eq((uint64_t)num(ws, "latest_offset"), 2199023271077ull);
    else ck_assert_uint_eq((uint64_t)num(ws, "latest_offset"), 2199023270802ull);
    cJSON_Delete(ws);
    /* and it keeps working: a new record goes right after the last good one */
    cJSON *r = ok(e, "APPLY_EVENT", "{\"instance_id\":\"o2-03\",\"event\":\"CANCEL\"}");
    ck_assert_uint_eq((uint64_t)num(r, "wal_offset"), torn ? 2199023270802ull : 2199023271077ull);
    cJSON_Delete(r);
    eng_close(e);
    e = open_dir(dir, NULL);
    r = ok(e, "GET_INSTANCE", "{\"instance_id\":\"o2-03\"}");
    ck_assert_str_eq(str(r, "state"), "cancelled");
    cJSON_Delete(r);
    eng_close(e);
    cJSON_Delete(exp);
    rmrf(dir);
    free(dir);
}

START_TEST(rstmdb_fixture)
{
    check_fixture("rstmdb-data", false);
}
END_TEST

START_TEST(rstmdb_fixture_torn)
{
    check_fixture("rstmdb-data-torn", true);
}
END_TEST


/* Compaction never loses data: machines, instances, contexts, history and
 * idempotency keys are all there after compact + restart (rstmdb loses them). */
static eng *open_limited(const char *dir, const eng_limits *lim)
{
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    if (lim) o.limits = *lim;
    stm_err err;
    eng *e = NULL;
    ck_assert_msg(eng_open(&o, &e, NULL, &err) == STM_OK, "eng_open: %s", err.msg);
    return e;
}

/* Each limit refuses what breaks it with BAD_REQUEST naming its config key,
 * writes nothing, and never applies to what the log already holds. */
START_TEST(limits_refuse_and_name_the_key)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, NULL);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER)); /* 3 states, 2 transitions, a 14-byte guard */
    cJSON_Delete(ok(e, "CREATE_INSTANCE",
                    "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"a-long-id-0123456789\","
                    "\"initial_ctx\":{\"note\":\"0123456789012345678901234567890123456789\"}}"));
    eng_close(e);

    eng_limits lim = {.max_id_bytes = 16, .max_states = 2, .max_transitions = 1,
                      .max_guard_bytes = 10, .max_guard_depth = 1, .max_definition_bytes = 200,
                      .max_ctx_bytes = 40, .max_payload_bytes = 30};
    e = open_limited(dir, &lim);
    /* what the log holds loads and reads as before, under tighter limits */
    check_state(e, "a-long-id-0123456789", "created");
    /* an identical re-put is still a no-op, not a refusal */
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    cJSON_Delete(ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":"
                                          "\"c\",\"initial_ctx\":{\"m\":\"0123456789\",\"n\":1}}"));
    uint64_t before = eng_acked_seq(e);

    fails(e, "CREATE_INSTANCE",
          "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"x-17-bytes-long-x\"}",
          STM_BAD_REQUEST, "field `instance_id` is 17 bytes, over limits.max_id_bytes (16)");
    fails(e, "PUT_MACHINE",
          "{\"machine\":\"a-machine-name-17\",\"version\":1,\"definition\":{\"states\":[\"a\"],"
          "\"initial\":\"a\",\"transitions\":[]}}",
          STM_BAD_REQUEST, "field `machine` is 17 bytes");
    fails(e, "APPLY_EVENT",
          "{\"instance_id\":\"c\",\"event\":\"PAY\",\"idempotency_key\":\"k-0123456789abcdef\"}",
          STM_BAD_REQUEST, "field `idempotency_key` is 18 bytes");
    fails(e, "PUT_MACHINE",
          "{\"machine\":\"m\",\"version\":1,\"definition\":{\"states\":[\"a\",\"b\",\"c\"],"
          "\"initial\":\"a\",\"transitions\":[]}}",
          STM_BAD_REQUEST, "3 states, over limits.max_states (2)");
    fails(e, "PUT_MACHINE",
          "{\"machine\":\"m\",\"version\":1,\"definition\":{\"states\":[\"a\",\"b\"],"
          "\"initial\":\"a\",\"transitions\":[{\"from\":[\"a\",\"b\"],\"event\":\"E\",\"to\":\"a\"}]}}",
          STM_BAD_REQUEST, "2 transitions (each state of a 'from' list counts), over limits.max_transitions (1)");
    fails(e, "PUT_MACHINE",
          "{\"machine\":\"m\",\"version\":1,\"definition\":{\"states\":[\"a\"],\"initial\":\"a\","
          "\"transitions\":[{\"from\":\"a\",\"event\":\"E\",\"to\":\"a\",\"guard\":\"ctx.abc > 1\"}]}}",
          STM_BAD_REQUEST, "is 11 bytes, over limits.max_guard_bytes (10)");
    fails(e, "PUT_MACHINE",
          "{\"machine\":\"m\",\"version\":1,\"definition\":{\"states\":[\"a\"],\"initial\":\"a\","
          "\"transitions\":[{\"from\":\"a\",\"event\":\"E\",\"to\":\"a\",\"guard\":\"!(ctx.a)\"}]}}",
          STM_BAD_REQUEST, "nests 2 levels deep, over limits.max_guard_depth (1)");
    fails(e, "PUT_MACHINE",
          "{\"machine\":\"m\",\"version\":1,\"definition\":{\"states\":[\"a\"],\"initial\":\"a\","
          "\"transitions\":[],\"meta\":{\"d\":\"0123456789012345678901234567890123456789012345678901234567890123456789"
          "0123456789012345678901234567890123456789012345678901234567890123456789\"}}}",
          STM_BAD_REQUEST, "over limits.max_definition_bytes (200)");
    fails(e, "CREATE_INSTANCE",
          "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"b\","
          "\"initial_ctx\":{\"note\":\"0123456789012345678901234567890123456789\"}}",
          STM_BAD_REQUEST, "initial_ctx is 51 bytes as compact JSON, over limits.max_ctx_bytes (40)");
    fails(e, "APPLY_EVENT",
          "{\"instance_id\":\"c\",\"event\":\"PAY\",\"payload\":{\"p\":\"0123456789012345678901234\"}}",
          STM_BAD_REQUEST, "the payload would be 33 bytes as compact JSON, over limits.max_payload_bytes (30)");
    fails(e, "APPLY_EVENT",
          "{\"instance_id\":\"c\",\"event\":\"PAY\",\"payload\":{\"p\":\"0123456789012345678\"}}",
          STM_BAD_REQUEST, "the merged context would be 50 bytes as compact JSON, over limits.max_ctx_bytes (40)");
    /* nothing of the refused requests reached the log or the state */
    ck_assert_uint_eq(eng_acked_seq(e), before);
    check_state(e, "c", "created");
    /* within the limits, the same machine works */
    cJSON_Delete(ok(e, "APPLY_EVENT",
                    "{\"instance_id\":\"c\",\"event\":\"PAY\",\"payload\":{\"p\":\"0\"}}"));
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* An engine on 4 KiB segments, so that compaction has segments to delete,
 * with the order machine defined; o stays valid for reopening. */
static eng *open_small_order(char *dir, eng_opts *o)
{
    eng_opts_defaults(o);
    o->data_dir = dir;
    o->segment_size = 4096;
    stm_err err;
    eng *e;
    ck_assert_int_eq(eng_open(o, &e, NULL, &err), STM_OK);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    return e;
}

/* A second machine, "other", with ORDER's definition. */
static void put_other_machine(eng *e)
{
    char *other = strdup(ORDER);
    memcpy(strstr(other, "\"order\""), "\"other\"", 7);
    cJSON_Delete(ok(e, "PUT_MACHINE", other));
    free(other);
}

START_TEST(compaction_keeps_everything)
{
    char *dir = tmpdir();
    eng_opts o;
    stm_err err;
    eng *e = open_small_order(dir, &o);
    char p[256];
    for (int i = 0; i < 40; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"c-%02d\","
                              "\"initial_ctx\":{\"n\":%d}}", i, i);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
        snprintf(p, sizeof p, "{\"instance_id\":\"c-%02d\",\"event\":\"PAY\",\"idempotency_key\":\"k%d\","
                              "\"payload\":{\"amount\":%d}}", i, i, i);
        cJSON_Delete(ok(e, "APPLY_EVENT", p));
    }
    cJSON_Delete(ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"c-05\"}"));
    buf before = {0};
    uint64_t tb;
    ck_assert_int_eq(eng_history_read(e, "c-01", 0, 1 << 20, &before, &tb, &err), STM_OK);
    buf snap_before = {0};
    cJSON *c = ok(e, "COMPACT", "{\"force_snapshot\":true}");
    ck_assert_int_eq((int)num(c, "snapshots_created"), 1);
    ck_assert_int_gt((int)num(c, "segments_deleted"), 0);
    ck_assert_int_gt((int)num(c, "bytes_reclaimed"), 0);
    cJSON_Delete(c);
    /* history of a compacted record is still readable, live */
    buf mid = {0};
    ck_assert_int_eq(eng_history_read(e, "c-01", 0, 1 << 20, &mid, &tb, &err), STM_OK);
    ck_assert_str_eq(buf_cstr(&mid), buf_cstr(&before));
    cJSON_Delete(ok(e, "APPLY_EVENT", "{\"instance_id\":\"c-39\",\"event\":\"SHIP\",\"payload\":{\"amount\":9}}"));
    eng_close(e);

    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    cJSON *m = ok(e, "GET_MACHINE", "{\"machine\":\"order\",\"version\":1}");
    ck_assert_str_eq(str(m, "checksum"), "404b5006");
    cJSON_Delete(m);
    for (int i = 0; i < 40; i++) {
        snprintf(p, sizeof p, "{\"instance_id\":\"c-%02d\"}", i);
        if (i == 5) {
            fails(e, "GET_INSTANCE", p, STM_INSTANCE_NOT_FOUND, NULL);
            continue;
        }
        cJSON *r = ok(e, "GET_INSTANCE", p);
        ck_assert_str_eq(str(r, "state"), i == 39 ? "shipped" : "paid");
        ck_assert_int_eq((int)num(json_get(r, "ctx"), "n"), i);
        cJSON_Delete(r);
    }
    buf after = {0};
    ck_assert_int_eq(eng_history_read(e, "c-01", 0, 1 << 20, &after, &tb, &err), STM_OK);
    ck_assert_str_eq(buf_cstr(&after), buf_cstr(&before));
    /* idempotency keys survived too */
    cJSON *r = ok(e, "APPLY_EVENT", "{\"instance_id\":\"c-02\",\"event\":\"PAY\",\"idempotency_key\":\"k2\",\"payload\":{\"amount\":2}}");
    ck_assert(cJSON_IsFalse(json_get(r, "applied")));
    ck_assert_str_eq(str(r, "to_state"), "paid");
    cJSON_Delete(r);
    buf_free(&before);
    buf_free(&mid);
    buf_free(&after);
    buf_free(&snap_before);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* A snapshot's header says how many instances and keys follow, so that the
 * loader sizes its tables once. Snapshots written before those counts load
 * the same, and a count past what the file could hold is not believed. */
static uint64_t list_total(eng *e, const char *params);

static void rewrite_snapshot_header(const char *dir, const char *counts)
{
    char path[4200];
    DIR *d;
    struct dirent *de;
    snprintf(path, sizeof path, "%s/snapshots", dir);
    ck_assert_ptr_nonnull(d = opendir(path));
    char name[300] = "";
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".snap") && !strstr(de->d_name, ".tmp"))
            snprintf(name, sizeof name, "%s", de->d_name);
    closedir(d);
    snprintf(path, sizeof path, "%s/snapshots/%s", dir, name);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    buf old = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&old, chunk, n);
    fclose(f);
    /* the header's counts, replaced by counts (or none); the trailer redone */
    char *close = strchr(old.data, '\n') - 1; /* the header's '}' */
    ck_assert_int_eq(*close, '}');
    char *at = strstr(old.data, ",\"instances\":");
    if (!at || at > close) at = close;
    char *trailer = strstr(old.data, "\n{\"end\":true");
    ck_assert_ptr_nonnull(trailer);
    buf body = {0};
    buf_add(&body, old.data, (size_t)(at - old.data));
    buf_puts(&body, counts);
    buf_add(&body, close, (size_t)(trailer + 1 - close));
    buf_printf(&body, "{\"end\":true,\"bytes\":%zu,\"crc\":\"%08x\"}\n", body.len,
               crc32c(0, body.data, body.len));
    f = fopen(path, "wb");
    ck_assert_uint_eq(fwrite(body.data, 1, body.len, f), body.len);
    fclose(f);
    buf_free(&old);
    buf_free(&body);
}

START_TEST(snapshot_header_counts_optional)
{
    char *dir = tmpdir();
    eng_opts o;
    stm_err err;
    eng *e = open_small_order(dir, &o);
    char p[300];
    for (int i = 0; i < 30; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"h-%02d\","
                              "\"idempotency_key\":\"ck%d\",\"initial_ctx\":{\"n\":%d,"
                              "\"t\":\"\\u00e9\\\"x\",\"z\":[1,2.5,{\"b\":null,\"a\":true}]}}",
                 i, i, i);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
    }
    cJSON_Delete(ok(e, "COMPACT", "{\"force_snapshot\":true}"));
    cJSON *want = ok(e, "GET_INSTANCE", "{\"instance_id\":\"h-07\"}");
    eng_close(e);
    static const char *const counts[] = {"", ",\"instances\":4000000000000,\"keys\":7"};
    for (int round = 0; round < 2; round++) {
        rewrite_snapshot_header(dir, counts[round]);
        ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
        ck_assert_int_eq((int)list_total(e, "{}"), 30);
        cJSON *got = ok(e, "GET_INSTANCE", "{\"instance_id\":\"h-07\"}");
        ck_assert_msg(cJSON_Compare(got, want, true), "h-07 differs after the load");
        cJSON_Delete(got);
        /* its key too: the same create again is answered, not applied */
        cJSON *r = ok(e, "CREATE_INSTANCE",
                      "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"h-29\","
                      "\"idempotency_key\":\"ck29\",\"initial_ctx\":{\"n\":29,"
                      "\"t\":\"\\u00e9\\\"x\",\"z\":[1,2.5,{\"b\":null,\"a\":true}]}}");
        cJSON_Delete(r);
        ck_assert_int_eq((int)list_total(e, "{}"), 30);
        eng_close(e);
    }
    cJSON_Delete(want);
    rmrf(dir);
    free(dir);
}
END_TEST

/* LIST_INSTANCES without a cursor takes its total from counts kept per
 * machine and state as instances come and go; with one (after) it still
 * counts by walking. The two must agree through creates, deletes, atomic batches undone, replay
 * and a snapshot load. */
static uint64_t list_total(eng *e, const char *params)
{
    cJSON *r = ok(e, "LIST_INSTANCES", params);
    uint64_t t = (uint64_t)num(r, "total");
    cJSON_Delete(r);
    return t;
}

static void check_totals(eng *e, uint64_t want_order, uint64_t want_other)
{
    static const char *const machines[2] = {"order", "other"};
    static const char *const states[3] = {"created", "paid", "shipped"};
    uint64_t want[2] = {want_order, want_other}, all = 0;
    char p[160];
    for (int m = 0; m < 2; m++) {
        snprintf(p, sizeof p, "{\"machine\":\"%s\",\"limit\":0}", machines[m]);
        uint64_t fast = list_total(e, p), walked = 0;
        for (int s = 0; s < 3; s++) {
            /* a cursor (after "") still counts by walking */
            snprintf(p, sizeof p, "{\"machine\":\"%s\",\"state\":\"%s\",\"after\":\"\",\"limit\":0}",
                     machines[m], states[s]);
            uint64_t w = list_total(e, p);
            snprintf(p, sizeof p, "{\"machine\":\"%s\",\"state\":\"%s\",\"limit\":0}", machines[m],
                     states[s]);
            ck_assert_uint_eq(list_total(e, p), w);
            walked += w;
        }
        ck_assert_uint_eq(fast, walked);
        ck_assert_uint_eq(fast, want[m]);
        /* a page past the end: nothing, and the same total */
        snprintf(p, sizeof p, "{\"machine\":\"%s\",\"limit\":5,\"offset\":%llu}", machines[m],
                 (unsigned long long)fast);
        cJSON *r = ok(e, "LIST_INSTANCES", p);
        ck_assert_int_eq(cJSON_GetArraySize(json_get(r, "instances")), 0);
        ck_assert_uint_eq((uint64_t)num(r, "total"), fast);
        ck_assert(cJSON_IsFalse(json_get(r, "has_more")));
        cJSON_Delete(r);
        all += fast;
    }
    ck_assert_uint_eq(list_total(e, "{\"limit\":3}"), all);
    for (int st = 0; st < 3; st++) {
        snprintf(p, sizeof p, "{\"state\":\"%s\",\"limit\":1}", states[st]);
        uint64_t fast = list_total(e, p);
        snprintf(p, sizeof p, "{\"state\":\"%s\",\"after\":\"\",\"limit\":1}", states[st]);
        ck_assert_uint_eq(fast, list_total(e, p));
    }
    ck_assert_uint_eq(list_total(e, "{\"machine\":\"none\"}"), 0);
}

START_TEST(list_totals_kept_as_counts)
{
    char *dir = tmpdir();
    eng_opts o;
    stm_err err;
    eng *e = open_small_order(dir, &o);
    char p[200];
    put_other_machine(e);
    for (int i = 0; i < 30; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"%s\",\"version\":1,\"instance_id\":\"n-%02d\"}",
                 i % 3 ? "order" : "other", i);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
        if (i % 4 == 0) {
            snprintf(p, sizeof p, "{\"instance_id\":\"n-%02d\",\"event\":\"PAY\"}", i);
            cJSON_Delete(ok(e, "APPLY_EVENT", p));
        }
    }
    check_totals(e, 20, 10);
    cJSON_Delete(ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"n-01\"}"));
    cJSON_Delete(ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"n-03\"}"));
    cJSON_Delete(ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"n-03\"}")); /* again: no-op */
    check_totals(e, 19, 9);
    /* undone: a create, a delete, a transition, then a bad event */
    const char *ops[4] = {"CREATE_INSTANCE", "DELETE_INSTANCE", "APPLY_EVENT", "APPLY_EVENT"};
    cJSON *params[4] = {
        cJSON_Parse("{\"machine\":\"other\",\"version\":1,\"instance_id\":\"n-99\"}"),
        cJSON_Parse("{\"instance_id\":\"n-02\"}"),
        cJSON_Parse("{\"instance_id\":\"n-05\",\"event\":\"PAY\"}"),
        cJSON_Parse("{\"instance_id\":\"n-99\",\"event\":\"SHIP\"}"),
    };
    cJSON *results[4];
    uint64_t seq;
    size_t failed;
    ck_assert_int_ne(eng_call_atomic(e, 4, ops, (const cJSON *const *)params, results, &seq,
                                     &failed, &err),
                     STM_OK);
    ck_assert_uint_eq(failed, 3);
    for (int i = 0; i < 4; i++)
        cJSON_Delete(params[i]);
    check_totals(e, 19, 9);
    eng_close(e);
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK); /* replay */
    check_totals(e, 19, 9);
    cJSON_Delete(ok(e, "COMPACT", "{\"force_snapshot\":true}"));
    eng_close(e);
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK); /* from the snapshot */
    check_totals(e, 19, 9);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* Paging by offset continues from where the last page ended while nothing
 * changes (list hints): every page must still be exactly the slice of the
 * whole list, with two clients paging at once and records in between. */
static char *ids_of(eng *e, const char *filter, uint64_t offset, uint64_t limit)
{
    char p[200];
    snprintf(p, sizeof p, "{%s%s\"offset\":%llu,\"limit\":%llu}", filter, *filter ? "," : "",
             (unsigned long long)offset, (unsigned long long)limit);
    cJSON *r = ok(e, "LIST_INSTANCES", p);
    buf b = {0};
    for (const cJSON *it = json_get(r, "instances")->child; it; it = it->next) {
        buf_puts(&b, str(it, "id"));
        buf_putc(&b, ' ');
    }
    cJSON_Delete(r);
    return buf_detach(&b, NULL);
}

/* The ids of pages of limit n from offset 0 to the end, joined. */
static char *paged(eng *e, const char *filter, uint64_t n, uint64_t count)
{
    buf all = {0};
    for (uint64_t off = 0; off < count; off += n) {
        char *page = ids_of(e, filter, off, n);
        buf_puts(&all, page);
        free(page);
    }
    return buf_detach(&all, NULL);
}

START_TEST(list_pages_by_offset)
{
    char *dir = tmpdir();
    eng_opts o;
    eng *e = open_small_order(dir, &o);
    char p[200];
    for (int i = 10; i < 70; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"p-%02d\"}", i);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
        if (i % 3 == 0) {
            snprintf(p, sizeof p, "{\"instance_id\":\"p-%02d\",\"event\":\"PAY\"}", i);
            cJSON_Delete(ok(e, "APPLY_EVENT", p));
        }
    }
    static const char *const filters[] = {"", "\"machine\":\"order\"",
                                          "\"machine\":\"order\",\"state\":\"created\"",
                                          "\"state\":\"paid\""};
    static const uint64_t counts[] = {60, 60, 40, 20};
    for (int f = 0; f < 4; f++) {
        char *whole = ids_of(e, filters[f], 0, 1000);
        for (uint64_t n = 1; n <= 7; n += 3) {
            char *pages = paged(e, filters[f], n, counts[f]);
            ck_assert_str_eq(pages, whole);
            free(pages);
        }
        free(whole);
    }
    /* two clients paging at once, and changes between their pages */
    char *a1 = ids_of(e, filters[2], 0, 5), *b1 = ids_of(e, filters[3], 0, 5);
    char *a2 = ids_of(e, filters[2], 5, 5), *b2 = ids_of(e, filters[3], 5, 5);
    char *wa = ids_of(e, filters[2], 5, 5), *wb = ids_of(e, filters[3], 5, 5);
    ck_assert_str_eq(a2, wa);
    ck_assert_str_eq(b2, wb);
    free(a1), free(b1), free(a2), free(b2), free(wa), free(wb);
    a1 = ids_of(e, filters[1], 0, 5);
    cJSON_Delete(ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"p-00\"}"));
    cJSON_Delete(ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"p-40\"}"));
    a2 = ids_of(e, filters[1], 5, 5);
    char *whole = ids_of(e, filters[1], 0, 1000);
    char *w = whole;
    for (int skip = 0; skip < 5; skip++)
        w = strchr(w, ' ') + 1;
    char *end = w;
    for (int take = 0; take < 5; take++)
        end = strchr(end, ' ') + 1;
    *end = 0;
    ck_assert_str_eq(a2, w);
    free(a1), free(a2), free(whole);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* One machine's ids among many of another's: the walk looks at a bounded
 * stretch of instances per hold of the lock and stops once it has found as
 * many as the machine has; what it returns is still every id, in order. */
START_TEST(listing_one_machine_among_many)
{
    char *dir = tmpdir();
    eng_opts o;
    eng *e = open_small_order(dir, &o);
    put_other_machine(e);
    char p[160];
    size_t n_other = 0;
    for (int i = 0; i < 10000; i++) {
        bool mine = i % 401 == 7;
        snprintf(p, sizeof p, "{\"machine\":\"%s\",\"version\":1,\"instance_id\":\"x-%05d\"}",
                 mine ? "other" : "order", i);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
        n_other += mine;
    }
    cJSON_Delete(ok(e, "DELETE_INSTANCE", "{\"instance_id\":\"x-00408\"}")); /* an "other" */
    n_other--;
    id_list got = {0};
    ck_assert_uint_eq(eng_list_instance_ids(e, "other", NULL, SIZE_MAX, collect_id, &got), n_other);
    ck_assert_uint_eq(got.n, n_other);
    size_t k = 0;
    for (int i = 0; i < 10000; i++) {
        if (i % 401 != 7 || i == 408) continue;
        snprintf(p, sizeof p, "x-%05d", i);
        ck_assert_str_eq(got.ids[k++], p);
    }
    /* from a cursor, and at most 3 */
    id_list some = {0};
    ck_assert_uint_eq(eng_list_instance_ids(e, "other", "x-05000", 3, collect_id, &some), 3);
    ck_assert_str_eq(some.ids[0], "x-05220");
    ck_assert_str_eq(some.ids[2], "x-06022");
    id_list none = {0};
    ck_assert_uint_eq(eng_list_instance_ids(e, "nothing", NULL, SIZE_MAX, collect_id, &none), 0);
    ck_assert_uint_eq(eng_list_instance_ids(e, "order", NULL, SIZE_MAX, collect_id, &none),
                      10000 - n_other - 1);
    for (size_t i = 0; i < got.n; i++) free(got.ids[i]);
    for (size_t i = 0; i < some.n; i++) free(some.ids[i]);
    for (size_t i = 0; i < none.n; i++) free(none.ids[i]);
    free(got.ids), free(some.ids), free(none.ids);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* Compaction reads the idempotency keys in two passes with the lock
 * released between them, while requests go on adding keys and evicting the
 * oldest. Creates with keys race repeated compactions, 64 keys kept: after
 * a restart (segments deleted, so the results come from the snapshot) each
 * of the newest keys still answers its retry with its original result. */
typedef struct {
    eng *e;
    atomic_int done;
    int compactions, failures;
} compactor;

static void *compact_loop(void *arg)
{
    compactor *k = arg;
    while (!k->done) {
        cJSON *params = cJSON_Parse("{\"force_snapshot\":true}");
        cJSON *r = NULL;
        uint64_t seq;
        stm_err err;
        if (eng_call(k->e, "COMPACT", params, &r, &seq, &err) == STM_OK)
            k->compactions++;
        else
            k->failures++;
        cJSON_Delete(r);
        cJSON_Delete(params);
    }
    return NULL;
}

START_TEST(compaction_races_key_eviction)
{
    char *dir = tmpdir();
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.segment_size = 4096;
    o.idempotency_max_keys = 64;
    stm_err err;
    eng *e;
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    compactor k = {.e = e};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, compact_loop, &k), 0);
    enum { N = 1500 };
    char p[256];
    for (int i = 0; i < N; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"r-%04d\","
                              "\"idempotency_key\":\"key-%d\",\"initial_ctx\":{\"n\":%d}}", i, i, i);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
    }
    k.done = 1;
    pthread_join(t, NULL);
    ck_assert_int_gt(k.compactions, 1);
    ck_assert_int_eq(k.failures, 0);
    cJSON_Delete(ok(e, "COMPACT", "{\"force_snapshot\":true}"));
    eng_close(e);

    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    for (int i = N - 64; i < N; i++) {
        /* the same request again: the key answers with the first result */
        snprintf(p, sizeof p, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"r-%04d\","
                              "\"idempotency_key\":\"key-%d\",\"initial_ctx\":{\"n\":%d}}", i, i, i);
        cJSON *r = ok(e, "CREATE_INSTANCE", p);
        char id[16];
        snprintf(id, sizeof id, "r-%04d", i);
        ck_assert_str_eq(str(r, "instance_id"), id);
        cJSON_Delete(r);
    }
    cJSON *l = ok(e, "LIST_INSTANCES", "{\"machine\":\"order\",\"limit\":10}");
    ck_assert_int_eq((int)num(l, "total"), N);
    cJSON_Delete(l);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* Compaction copies the instances a chunk at a time with the lock let go
 * in between, while an event or a delete first saves what an instance not
 * copied yet was at the snapshot's record. Writers flip 3,000 instances,
 * delete some and create more, and a reader reads histories (some from the
 * snapshot, as 4 KiB segments get deleted), all during repeated
 * compactions. Every snapshot must hold the database at exactly its record
 * (no instance line or history line after it: replaying the log after it
 * would apply those twice), and a restart must show what was there before
 * it, history line for history line. */
static const char *TICK =
    "{\"machine\":\"tick\",\"version\":1,\"definition\":{\"states\":[\"on\",\"off\"],\"initial\":"
    "\"on\",\"transitions\":[{\"from\":\"on\",\"event\":\"FLIP\",\"to\":\"off\"},{\"from\":\"off\","
    "\"event\":\"FLIP\",\"to\":\"on\"}]}}";

enum { FLIPPED = 3000 };

typedef struct {
    eng *e;
    atomic_int stop, done, ops, reads;
} churn;

static void run_op(eng *e, const char *op, const char *params)
{
    cJSON *p = cJSON_Parse(params), *r = NULL;
    uint64_t seq;
    stm_err err;
    ck_assert_msg(eng_call(e, op, p, &r, &seq, &err) == STM_OK, "%s %s: %s", op, params, err.msg);
    cJSON_Delete(p);
    cJSON_Delete(r);
}

static void *flip_loop(void *arg)
{
    churn *c = arg;
    char p[256];
    int created = 0;
    /* Until the test has its compactions. Past a bound on the log's growth
     * the writes only slow down: a machine so loaded that the compactions
     * lag must still see writes go on during them. */
    for (int pass = 0; !c->stop; pass++)
        for (int i = FLIPPED - 1; i >= 0 && !c->stop; i--) {
            if (c->ops >= 40 * FLIPPED) usleep(20000);
            if (i % 13 == 0 && pass > 0) {
                if (pass == 1) {
                    snprintf(p, sizeof p, "{\"instance_id\":\"c-%05d\"}", i);
                    run_op(c->e, "DELETE_INSTANCE", p);
                }
                continue;
            }
            snprintf(p, sizeof p,
                     "{\"instance_id\":\"c-%05d\",\"event\":\"FLIP\",\"payload\":{\"pass\":%d}}", i,
                     pass);
            run_op(c->e, "APPLY_EVENT", p);
            /* slower than the engine goes, so that compactions of a small
             * log overlap the writes several times */
            if (c->ops % 20 == 0) usleep(500);
            if (++c->ops % 40 == 0) {
                snprintf(p, sizeof p, "{\"machine\":\"tick\",\"version\":1,\"instance_id\":"
                                      "\"n-%05d\",\"idempotency_key\":\"nk-%d\"}", created, created);
                created++;
                run_op(c->e, "CREATE_INSTANCE", p);
            }
        }
    c->done = 1;
    return NULL;
}

static void *history_loop(void *arg)
{
    churn *c = arg;
    unsigned seed = 7;
    while (!c->stop) {
        char id[16];
        snprintf(id, sizeof id, "c-%05d", (int)(rand_r(&seed) % FLIPPED));
        buf text = {0};
        uint64_t total = 0;
        stm_err err;
        stm_code rc = eng_history_read(c->e, id, 0, 1u << 30, &text, &total, &err);
        ck_assert_msg(rc == STM_OK, "history of %s: %s", id, err.msg);
        ck_assert_uint_eq(text.len, total);
        /* every line whole: a line read from the wrong snapshot is not */
        for (char *l = text.data, *nl; l && l < text.data + text.len; l = nl + 1) {
            nl = memchr(l, '\n', (size_t)(text.data + text.len - l));
            ck_assert_ptr_nonnull(nl);
            cJSON *h = cJSON_ParseWithLength(l, (size_t)(nl - l));
            ck_assert_msg(h && json_get(h, "seq"), "history of %s: bad line %.*s", id,
                          (int)(nl - l), l);
            cJSON_Delete(h);
        }
        buf_free(&text);
        c->reads++;
    }
    return NULL;
}

static bool add_id(void *arg, const char *id)
{
    buf *ids = arg;
    buf_add(ids, id, strlen(id) + 1);
    return true;
}

/* Every instance: its view and its whole history. */
static void whole_text(eng *e, buf *out)
{
    buf ids = {0};
    eng_list_instance_ids(e, NULL, NULL, SIZE_MAX, add_id, &ids);
    ck_assert_uint_gt(ids.len, 0);
    for (const char *id = ids.data; id < ids.data + ids.len; id += strlen(id) + 1) {
        eng_instance_view v;
        stm_err err;
        ck_assert_int_eq(eng_get_instance_view(e, id, false, &v, &err), STM_OK);
        buf_printf(out, "%s %s %s %d %llu\n", v.id, v.state, v.ctx_json, v.deleted,
                   (unsigned long long)v.history_lines);
        eng_instance_view_free(&v);
        uint64_t total;
        ck_assert_int_eq(eng_history_read(e, id, 0, 1u << 30, out, &total, &err), STM_OK);
    }
    buf_free(&ids);
}

/* The newest snapshot holds nothing after its own record. */
static void check_snapshot_exact(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/snapshots", dir);
    DIR *d = opendir(path);
    ck_assert_ptr_nonnull(d);
    char newest[256] = "";
    for (struct dirent *de; (de = readdir(d));)
        if (strstr(de->d_name, ".snap") && !strstr(de->d_name, ".tmp") &&
            strcmp(de->d_name, newest) > 0)
            snprintf(newest, sizeof newest, "%s", de->d_name);
    closedir(d);
    ck_assert_msg(newest[0], "no snapshot in %s", path);
    snprintf(path, sizeof path, "%s/snapshots/%s", dir, newest);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    double S = -1, hist_left = 0;
    int instances = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        cJSON *o = cJSON_Parse(line);
        ck_assert_msg(o != NULL, "%s: bad line %s", newest, line);
        if (json_get(o, "format")) {
            S = num(o, "seq");
        } else if (json_get(o, "i")) {
            ck_assert_msg(hist_left == 0, "%s: history lines missing before %s", newest, line);
            ck_assert_msg(num(o, "last_seq") <= S, "%s: instance after seq %.0f: %s", newest, S,
                          line);
            hist_left = num(o, "hist");
            instances++;
        } else if (json_get(o, "offset") && json_get(o, "seq") && !json_get(o, "k")) {
            ck_assert_msg(hist_left > 0, "%s: a history line too many: %s", newest, line);
            ck_assert_msg(num(o, "seq") <= S, "%s: history after seq %.0f: %s", newest, S, line);
            hist_left--;
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    ck_assert_msg(hist_left == 0, "%s: history lines missing at the end", newest);
    ck_assert_int_ge(instances, FLIPPED);
}

START_TEST(compaction_takes_one_record_while_writes_go_on)
{
    char *dir = tmpdir();
    eng_opts o;
    eng *e = open_small_order(dir, &o);
    cJSON_Delete(ok(e, "PUT_MACHINE", TICK));
    char p[256];
    for (int i = 0; i < FLIPPED; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"tick\",\"version\":1,\"instance_id\":\"c-%05d\","
                              "\"idempotency_key\":\"ck-%d\",\"initial_ctx\":{\"n\":%d}}", i, i, i);
        run_op(e, "CREATE_INSTANCE", p);
    }
    churn c = {.e = e};
    pthread_t w, r;
    ck_assert_int_eq(pthread_create(&w, NULL, flip_loop, &c), 0);
    ck_assert_int_eq(pthread_create(&r, NULL, history_loop, &c), 0);
    int compactions = 0;
    while (!c.done && compactions < 3) {
        int before = c.ops;
        cJSON_Delete(ok(e, "COMPACT", "{\"force_snapshot\":true}"));
        if (c.ops == before) continue;
        compactions++; /* writes went on during this one */
        check_snapshot_exact(dir);
    }
    ck_assert_int_ge(compactions, 2);
    c.stop = 1;
    pthread_join(w, NULL);
    pthread_join(r, NULL);
    ck_assert_int_gt(c.reads, 0);
    buf before = {0}, after = {0};
    whole_text(e, &before);
    eng_close(e);
    stm_err err;
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    whole_text(e, &after);
    ck_assert_uint_eq(before.len, after.len);
    ck_assert_msg(memcmp(before.data, after.data, before.len) == 0,
                  "the database after a restart differs from before it");
    buf_free(&before);
    buf_free(&after);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* A long LIST_INSTANCES lets the lock go after each millisecond it holds
 * it, so writers go on in the middle of a page. Each page must still be a
 * sorted list of distinct ids that exist (never an instance twice, never
 * a freed one), whatever was created or deleted during it. */
static void *create_delete_loop(void *arg)
{
    churn *c = arg;
    char p[256];
    for (int i = 0; i < FLIPPED && !c->stop; i++) {
        if (i % 20 == 0) usleep(2000); /* spread over many pages */
        snprintf(p, sizeof p, "{\"machine\":\"tick\",\"version\":1,\"instance_id\":\"d-%05d\"}",
                 i);
        run_op(c->e, "CREATE_INSTANCE", p);
        snprintf(p, sizeof p, "{\"instance_id\":\"c-%05d\"}", (i * 7919) % FLIPPED);
        cJSON *q = cJSON_Parse(p), *r = NULL;
        uint64_t seq;
        stm_err err;
        eng_call(c->e, "DELETE_INSTANCE", q, &r, &seq, &err); /* again once deleted: fine */
        cJSON_Delete(q);
        cJSON_Delete(r);
        c->ops++;
    }
    c->done = 1;
    return NULL;
}

START_TEST(list_walks_in_chunks_beside_writes)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never");
    cJSON_Delete(ok(e, "PUT_MACHINE", TICK));
    char p[256];
    for (int i = 0; i < FLIPPED; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"tick\",\"version\":1,\"instance_id\":\"c-%05d\"}", i);
        run_op(e, "CREATE_INSTANCE", p);
    }
    churn c = {.e = e};
    pthread_t w;
    ck_assert_int_eq(pthread_create(&w, NULL, create_delete_loop, &c), 0);
    int pages = 0, overlapped = 0;
    while (!c.done || pages < 10) {
        int before = c.ops;
        const char *params = pages % 2 ? "{\"limit\":100000}" : "{\"limit\":100000,\"offset\":5}";
        cJSON *l = ok(e, "LIST_INSTANCES", params);
        const cJSON *it;
        const char *prev = NULL;
        int n = 0;
        cJSON_ArrayForEach(it, json_get(l, "instances"))
        {
            const char *id = str(it, "id");
            ck_assert_msg(!prev || strcmp(prev, id) < 0, "page %d: %s after %s", pages, id, prev);
            ck_assert_msg(id[0] == 'c' || id[0] == 'd', "page %d: id %s", pages, id);
            prev = id;
            n++;
        }
        ck_assert_int_gt(n, 0);
        cJSON_Delete(l);
        pages++;
        overlapped += c.ops != before;
    }
    ck_assert_int_ge(overlapped, 3);
    pthread_join(w, NULL);
    /* at rest, a page is exact again */
    cJSON *l = ok(e, "LIST_INSTANCES", "{\"limit\":100000}");
    ck_assert_int_eq(cJSON_GetArraySize(json_get(l, "instances")), (int)num(l, "total"));
    cJSON_Delete(l);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* Creates join the sorted index only when something walks it, and the
 * first walk after a burst links them all. It links a chunk at a time and
 * lets the lock go in between (inst_link_paced): a reader keeps being
 * answered while the first LIST, and then the first id listing of the
 * mount, each link 60,000 instances created out of order (linked in one
 * hold, the reader got in at most the request or two it was already in).
 * Both listings stay exact. */
static void *get_loop(void *arg)
{
    churn *c = arg;
    while (!c->stop) {
        run_op(c->e, "GET_INSTANCE", "{\"instance_id\":\"r0-00007\"}");
        c->reads++;
    }
    return NULL;
}

START_TEST(first_listing_after_burst_lets_others_in)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never");
    cJSON_Delete(ok(e, "PUT_MACHINE", TICK));
    enum { BURST = 60000 };
    char p[256];
    for (int round = 0; round < 2; round++) {
        for (unsigned i = 0; i < BURST; i++) {
            /* 7919 is prime to BURST: every number once, out of order */
            snprintf(p, sizeof p,
                     "{\"machine\":\"tick\",\"version\":1,\"instance_id\":\"r%d-%05u\"}", round,
                     (i * 7919u) % BURST);
            run_op(e, "CREATE_INSTANCE", p);
        }
        churn c = {.e = e};
        pthread_t t;
        ck_assert_int_eq(pthread_create(&t, NULL, get_loop, &c), 0);
        while (c.reads == 0) sched_yield();
        int before = c.reads;
        if (round == 0) {
            cJSON *l = ok(e, "LIST_INSTANCES", "{\"limit\":3}");
            int during = c.reads - before;
            const cJSON *items = json_get(l, "instances");
            ck_assert_int_eq(cJSON_GetArraySize(items), 3);
            ck_assert_str_eq(str(cJSON_GetArrayItem(items, 0), "id"), "r0-00000");
            ck_assert_str_eq(str(cJSON_GetArrayItem(items, 2), "id"), "r0-00002");
            ck_assert_int_eq((int)num(l, "total"), BURST);
            cJSON_Delete(l);
            ck_assert_msg(during >= 10, "the first LIST let a reader in %d times", during);
        } else {
            id_list got = {0};
            ck_assert_uint_eq(eng_list_instance_ids(e, NULL, "r0-59990", 20, collect_id, &got),
                              20);
            int during = c.reads - before;
            for (size_t i = 0; i < got.n; i++) {
                snprintf(p, sizeof p, i < 9 ? "r0-%05zu" : "r1-%05zu", i < 9 ? 59991 + i : i - 9);
                ck_assert_str_eq(got.ids[i], p);
                free(got.ids[i]);
            }
            free(got.ids);
            ck_assert_msg(during >= 10, "the first id listing let a reader in %d times", during);
        }
        c.stop = 1;
        pthread_join(t, NULL);
    }
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* The background compactor also links a backlog of creates into the
 * sorted index, so that the first listing after a burst need not (it wakes
 * every 10 s): 5,000 creates that nothing lists are linked within 15 s,
 * and the listing after shows them in order. */
START_TEST(compactor_links_a_backlog)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never");
    cJSON_Delete(ok(e, "PUT_MACHINE", TICK));
    char p[256];
    for (unsigned i = 0; i < 5000; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"tick\",\"version\":1,\"instance_id\":\"q-%04u\"}",
                 (i * 7919u) % 5000);
        run_op(e, "CREATE_INSTANCE", p);
    }
    ck_assert_uint_eq(eng_index_backlog(e), 5000);
    uint64_t t0 = util_mono_ns();
    while (eng_index_backlog(e) && util_mono_ns() - t0 < 15000000000u) usleep(50000);
    ck_assert_uint_eq(eng_index_backlog(e), 0);
    cJSON *l = ok(e, "LIST_INSTANCES", "{\"limit\":2,\"offset\":4998}");
    ck_assert_str_eq(str(cJSON_GetArrayItem(json_get(l, "instances"), 1), "id"), "q-4999");
    cJSON_Delete(l);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* The snapshot is written as it is rendered, 4 MiB at a time. A disk that
 * fills up in the middle of it (the second chunk of a 6 MB snapshot fails
 * with ENOSPC, the log's own writes still pass) fails the COMPACT with the
 * reason, leaves neither the temp file nor a snapshot, deletes no segment,
 * and the database goes on: a write after it and a restart show everything. */
static int snap_writes;

static ssize_t full_on_snapshot(int fd, const void *b, size_t n, off_t off)
{
    char link[64], target[4200];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len > 0) {
        target[len] = 0;
        if (strstr(target, ".snap.tmp") && ++snap_writes >= 2) {
            errno = ENOSPC;
            return -1;
        }
    }
    return wal_posix_io.pwrite(fd, b, n, off);
}

static size_t count_entries(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    for (struct dirent *de; d && (de = readdir(d));) {
        size_t l = strlen(de->d_name), s = strlen(suffix);
        n += l > s && strcmp(de->d_name + l - s, suffix) == 0;
    }
    if (d) closedir(d);
    return n;
}

START_TEST(snapshot_write_fails_midway)
{
    char *dir = tmpdir();
    static wal_io io;
    io = wal_posix_io;
    io.pwrite = full_on_snapshot;
    snap_writes = 0;
    eng_opts o;
    eng *e = open_small_order(dir, &o);
    eng_close(e);
    o.io = &io;
    o.compact_enabled = false;
    stm_err err;
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    char *big = malloc(2200), *p = malloc(2400);
    memset(big, 'x', 2047);
    big[2047] = 0;
    for (int i = 0; i < 3000; i++) {
        snprintf(p, 2400, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"f-%04d\","
                          "\"initial_ctx\":{\"note\":\"%s\"}}", i, big);
        run_op(e, "CREATE_INSTANCE", p);
    }
    char wal[4200], snaps[4200];
    snprintf(wal, sizeof wal, "%s/wal", dir);
    snprintf(snaps, sizeof snaps, "%s/snapshots", dir);
    ck_assert_int_eq(eng_sync(e, &err), STM_OK);
    size_t segments = count_entries(wal, ".wal");
    ck_assert_uint_gt(segments, 1);
    stm_code rc = call(e, "COMPACT", "{\"force_snapshot\":true}", NULL, &err);
    ck_assert_int_ge(snap_writes, 2); /* it did fail in the middle */
    ck_assert_msg(rc != STM_OK, "COMPACT succeeded on a full disk");
    ck_assert_msg(strstr(err.msg, "No space left on device"), "message: %s", err.msg);
    ck_assert_uint_eq(count_entries(snaps, ".tmp"), 0);
    ck_assert_uint_eq(count_entries(snaps, ".snap"), 0);
    ck_assert_uint_eq(count_entries(wal, ".wal"), segments);
    cJSON_Delete(ok(e, "APPLY_EVENT", "{\"instance_id\":\"f-2999\",\"event\":\"PAY\"}"));
    eng_close(e);
    o.io = NULL;
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    cJSON *l = ok(e, "LIST_INSTANCES", "{\"machine\":\"order\",\"limit\":1}");
    ck_assert_int_eq((int)num(l, "total"), 3000);
    cJSON_Delete(l);
    check_state(e, "f-2999", "paid");
    free(big);
    free(p);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* A watch from an offset that compaction deleted is refused with the oldest
 * offset kept; starting there silently would hide a hole in the stream. The
 * start (offset 0 or 1) and the oldest kept offset still work. */
START_TEST(subscription_from_compacted_offset)
{
    char *dir = tmpdir();
    eng_opts o;
    stm_err err;
    eng *e = open_small_order(dir, &o);
    uint64_t early = 0;
    char p[256];
    for (int i = 0; i < 40; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"c-%02d\"}", i);
        cJSON *c = ok(e, "CREATE_INSTANCE", p);
        if (i == 1) early = (uint64_t)num(c, "wal_offset");
        cJSON_Delete(c);
        snprintf(p, sizeof p, "{\"instance_id\":\"c-%02d\",\"event\":\"PAY\"}", i);
        cJSON_Delete(ok(e, "APPLY_EVENT", p));
    }
    cJSON_Delete(ok(e, "COMPACT", "{\"force_snapshot\":true}"));
    eng_close(e);
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    eng_stats st;
    eng_get_stats(e, &st);
    ck_assert_uint_gt(st.wal.first_offset, early);

    eng_sub *s = NULL;
    eng_filter f = {.from_offset = early};
    ck_assert_int_eq(eng_subscribe(e, &f, wake_noop, NULL, &s, &err), STM_BAD_REQUEST);
    char want[256];
    snprintf(want, sizeof want, "from_offset %llu is no longer in the log: compaction removed the "
             "records before offset %llu", (unsigned long long)early,
             (unsigned long long)st.wal.first_offset);
    ck_assert_ptr_nonnull(strstr(err.msg, want));

    /* both start at the same first event, the oldest one kept (the
     * segment may begin with a record that is not an event: a checkpoint) */
    uint64_t froms[] = {1, st.wal.first_offset}, first_event = 0;
    for (int k = 0; k < 2; k++) {
        f.from_offset = froms[k];
        ck_assert_int_eq(eng_subscribe(e, &f, wake_noop, NULL, &s, &err), STM_OK);
        eng_event ev;
        int r = 0;
        for (int idle = 0; idle < 3000 && (r = eng_sub_next(s, &ev, NULL)) == 0; idle++) usleep(1000);
        ck_assert_int_eq(r, 1);
        ck_assert_uint_ge(ev.offset, st.wal.first_offset);
        ck_assert_uint_lt(ev.offset, st.wal.first_offset + 4096);
        if (k == 0) first_event = ev.offset;
        ck_assert_uint_eq(ev.offset, first_event);
        eng_unsubscribe(s);
    }
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* The whole entries file as one read, with its size. */
static void entries_text(eng *e, buf *out, uint64_t *total)
{
    stm_err err;
    buf_reset(out);
    stm_code rc = eng_entries_read(e, 0, SIZE_MAX / 2, out, total, &err);
    ck_assert_msg(rc == STM_OK, "eng_entries_read: %s", err.msg);
}

/* What wal/entries must hold: one line per record of the log, checkpoints
 * included, read by a separate read-only WAL iteration. Counts the
 * checkpoints at a segment's start (rotation) and the others (periodic). */
static void entries_from_wal(const char *dir, buf *out, int *rotation_ckpts, int *periodic_ckpts)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/wal", dir);
    wal_opts o = {.dir = path, .segment_size = 64u << 20, .read_only = true};
    wal *w;
    stm_err err;
    ck_assert_msg(wal_open(&o, &w, NULL, &err) == STM_OK, "%s", err.msg);
    wal_iter *it;
    ck_assert_int_eq(wal_iter_open(w, 0, false, &it, &err), STM_OK);
    wal_record r;
    int k;
    buf_reset(out);
    *rotation_ckpts = *periodic_ckpts = 0;
    while ((k = wal_iter_next(it, &r, &err)) == 1) {
        buf_puts(out, "{\"entry\":");
        buf_add(out, r.payload, r.len);
        buf_printf(out, ",\"offset\":%llu,\"sequence\":%llu}\n", (unsigned long long)r.offset,
                   (unsigned long long)r.seq);
        if (r.type == WAL_T_CHECKPOINT) {
            if (WAL_OFF_POS(r.offset) == 0) (*rotation_ckpts)++;
            else (*periodic_ckpts)++;
        }
    }
    ck_assert_msg(k == 0, "%s", err.msg);
    wal_iter_close(it);
    wal_close(w, NULL);
}

/* Reads the file in pieces of step bytes, as cat and tail do (each a read
 * at an offset, found through the sparse index); they must join into the
 * whole. */
static void check_piecewise(eng *e, const buf *whole, size_t step)
{
    buf got = {0}, piece = {0};
    uint64_t total = 0;
    stm_err err;
    for (uint64_t off = 0; off < whole->len; off += step) {
        buf_reset(&piece);
        ck_assert_int_eq(eng_entries_read(e, off, step, &piece, &total, &err), STM_OK);
        ck_assert_uint_eq(total, whole->len);
        ck_assert_uint_eq(piece.len, off + step < whole->len ? step : whole->len - off);
        buf_add(&got, piece.data, piece.len);
    }
    ck_assert_uint_eq(got.len, whole->len);
    ck_assert_msg(memcmp(got.data, whole->data, whole->len) == 0, "pieces of %zu differ", step);
    buf_free(&got);
    buf_free(&piece);
}

/* Appends the entries line of every event ready for s (ring or catch-up). */
static void drain_lines(eng_sub *s, buf *out)
{
    eng_event ev;
    int r;
    while ((r = eng_sub_next(s, &ev, NULL)) == 1) buf_puts(out, ev.entry_line);
    ck_assert_int_eq(r, 0);
}

/* wal/entries is every record of the log, checkpoints included. A running
 * log writes checkpoints on its own, first in every new segment and every
 * WAL_CHECKPOINT_EVERY bytes; each one used to be left out of the file's
 * size and index (only a restart counted it): the file ended mid-record
 * and reads at an offset started at the wrong byte. Live, after a reopen
 * and through a watch of every record, the lines must be the log's. */
START_TEST(entries_count_runtime_checkpoints)
{
    char *dir = tmpdir();
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.segment_size = 3u << 20; /* a rotation every few big events, 1 MiB checkpoints between */
    o.compact_enabled = false;
    stm_err err;
    ck_assert_int_eq(wal_sync_policy_parse("never", &o.sync, &err), STM_OK);
    eng *e;
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    eng_sub *s;
    eng_filter all = {0}; /* what wal/watch subscribes with */
    ck_assert_int_eq(eng_subscribe(e, &all, wake_noop, NULL, &s, &err), STM_OK);
    buf watched = {0}, changes = {0};
    cJSON_Delete(ok(e, "PUT_MACHINE",
                    "{\"machine\":\"loop\",\"version\":1,\"definition\":{\"states\":[\"on\"],"
                    "\"initial\":\"on\",\"transitions\":[{\"from\":\"on\",\"event\":\"TICK\","
                    "\"to\":\"on\"}]}}"));
    cJSON_Delete(ok(e, "CREATE_INSTANCE", "{\"machine\":\"loop\",\"version\":1,\"instance_id\":\"big\"}"));
    cJSON_Delete(ok(e, "CREATE_INSTANCE", "{\"machine\":\"loop\",\"version\":1,\"instance_id\":\"sm\"}"));
    /* 12 records of about 600 KB (the payload and the context it makes) */
    size_t pad = 300000;
    char *p = malloc(pad + 128);
    for (int i = 0; i < 12; i++) {
        int n = snprintf(p, 128, "{\"instance_id\":\"big\",\"event\":\"TICK\",\"payload\":{\"p\":\"%d", i);
        memset(p + n, 'x', pad);
        strcpy(p + n + pad, "\"}}");
        cJSON_Delete(ok(e, "APPLY_EVENT", p));
        drain_lines(s, &watched); /* as a reader of wal/watch keeps up */
    }
    free(p);
    /* then enough small ones for the sparse index (a point every 256 lines) */
    char q[128];
    for (int i = 0; i < 600; i++) {
        snprintf(q, sizeof q, "{\"instance_id\":\"sm\",\"event\":\"TICK\",\"payload\":{\"i\":%d}}", i);
        cJSON_Delete(ok(e, "APPLY_EVENT", q));
    }
    drain_lines(s, &watched);

    buf want = {0}, have = {0};
    int rot, per;
    entries_from_wal(dir, &want, &rot, &per);
    ck_assert_int_ge(rot, 2);
    ck_assert_int_ge(per, 2);
    uint64_t total;
    entries_text(e, &have, &total);
    ck_assert_uint_eq(total, want.len);
    ck_assert_uint_eq(have.len, want.len);
    ck_assert_msg(memcmp(have.data, want.data, want.len) == 0, "live entries differ from the log");
    check_piecewise(e, &want, 128u << 10);
    check_piecewise(e, &want, 4093);

    /* wal/watch: the entries line of every record that is a change, the
     * same bytes as in the file; checkpoints, the log's own bookkeeping,
     * are in the file only */
    for (const char *l = want.data, *end = want.data + want.len; l < end;) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        static const char ckpt[] = "{\"entry\":{\"type\":\"checkpoint\","; /* verbatim payload */
        if (strncmp(l, ckpt, sizeof ckpt - 1) != 0) buf_add(&changes, l, (size_t)(nl + 1 - l));
        l = nl + 1;
    }
    ck_assert_uint_eq(watched.len, changes.len);
    ck_assert_msg(memcmp(watched.data, changes.data, changes.len) == 0, "wal/watch lines differ");
    eng_unsubscribe(s);

    /* a reopen counts from the log: the same lines, and the checkpoint the
     * close wrote after them */
    eng_close(e);
    size_t live_len = want.len;
    entries_from_wal(dir, &want, &rot, &per);
    ck_assert_uint_gt(want.len, live_len);
    ck_assert_int_eq(memcmp(have.data, want.data, live_len), 0);
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    entries_text(e, &have, &total);
    ck_assert_uint_eq(total, want.len);
    ck_assert_uint_eq(have.len, want.len);
    ck_assert_msg(memcmp(have.data, want.data, want.len) == 0, "reopened entries differ");
    check_piecewise(e, &want, 128u << 10);
    eng_close(e);
    buf_free(&want);
    buf_free(&have);
    buf_free(&watched);
    buf_free(&changes);
    rmrf(dir);
    free(dir);
}
END_TEST

/* The entries file's size counts records as they are appended; the WAL
 * writes them to the file a little later. A read below that size must
 * still return every byte up to it (waiting for the records to be
 * durable), never end early: a short read is an end of file to the reader. */
START_TEST(entries_read_below_size_is_whole)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, "never"); /* unwaited records are written within 1 ms */
    cJSON_Delete(ok(e, "PUT_MACHINE",
                    "{\"machine\":\"loop\",\"version\":1,\"definition\":{\"states\":[\"on\"],"
                    "\"initial\":\"on\",\"transitions\":[{\"from\":\"on\",\"event\":\"TICK\","
                    "\"to\":\"on\"}]}}"));
    cJSON_Delete(ok(e, "CREATE_INSTANCE", "{\"machine\":\"loop\",\"version\":1,\"instance_id\":\"t\"}"));
    cJSON *p = cJSON_Parse("{\"instance_id\":\"t\",\"event\":\"TICK\",\"payload\":{\"n\":0}}");
    buf text = {0}, tail = {0};
    stm_err err;
    for (int i = 0; i < 20; i++) {
        cJSON_SetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(p, "payload"), "n"), i);
        cJSON *r = NULL;
        uint64_t seq;
        ck_assert_int_eq(eng_call(e, "APPLY_EVENT", p, &r, &seq, &err), STM_OK); /* no wait */
        cJSON_Delete(r);
        uint64_t total;
        entries_text(e, &text, &total);
        ck_assert_uint_eq(text.len, total);
        buf_reset(&tail);
        ck_assert_int_eq(eng_entries_read(e, total - 10, 10, &tail, &total, &err), STM_OK);
        ck_assert_uint_eq(tail.len, 10);
        ck_assert_int_eq(memcmp(tail.data, text.data + total - 10, 10), 0);
    }
    cJSON_Delete(p);
    buf_free(&text);
    buf_free(&tail);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* An atomic batch torn by a crash stays in the log (and in wal/entries,
 * which shows the log) though replay drops it: its lines count toward the
 * file's size like any other. */
START_TEST(entries_count_torn_batch)
{
    char *dir = tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/wal", dir);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    static const char *recs[] = {
        "{\"definition\":{\"initial\":\"on\",\"states\":[\"on\"],\"transitions\":[{\"event\":"
        "\"TICK\",\"from\":\"on\",\"to\":\"on\"}]},\"machine\":\"loop\",\"ts\":1,\"type\":"
        "\"put_machine\",\"version\":1}",
        /* the first record of a batch of two whose last never came */
        "{\"initial_ctx\":{},\"initial_state\":\"on\",\"instance_id\":\"a\",\"machine\":\"loop\","
        "\"ts\":2,\"txn\":2,\"type\":\"create_instance\",\"version\":1}",
        "{\"initial_ctx\":{},\"initial_state\":\"on\",\"instance_id\":\"b\",\"machine\":\"loop\","
        "\"ts\":3,\"type\":\"create_instance\",\"version\":1}",
    };
    wal_opts wo = {.dir = path, .segment_size = 64u << 20};
    wal *w;
    stm_err err;
    ck_assert_int_eq(wal_open(&wo, &w, NULL, &err), STM_OK);
    for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++) {
        wal_record r;
        ck_assert_int_eq(wal_append(w, i ? WAL_T_CREATE_INSTANCE : WAL_T_PUT_MACHINE, recs[i],
                                    (uint32_t)strlen(recs[i]), &r, &err), STM_OK);
    }
    ck_assert_int_eq(wal_close(w, &err), STM_OK);

    eng *e = open_dir(dir, "never");
    fails(e, "GET_INSTANCE", "{\"instance_id\":\"a\"}", STM_INSTANCE_NOT_FOUND, NULL);
    cJSON_Delete(ok(e, "GET_INSTANCE", "{\"instance_id\":\"b\"}"));
    eng_close(e); /* its closing checkpoint is in the log too */
    buf want = {0}, have = {0};
    int rot, per;
    entries_from_wal(dir, &want, &rot, &per);
    e = open_dir(dir, "never");
    uint64_t total;
    entries_text(e, &have, &total);
    ck_assert_uint_eq(total, want.len);
    ck_assert_uint_eq(have.len, want.len);
    ck_assert_int_eq(memcmp(have.data, want.data, want.len), 0);
    eng_close(e);
    buf_free(&want);
    buf_free(&have);
    rmrf(dir);
    free(dir);
}
END_TEST

/* The only snapshot, damaged, under a log that compaction has cut: opening
 * refuses (it used to start empty, and the next compaction overwrote the
 * snapshot); with the file moved away it opens, as on a log rstmdb cut. */
START_TEST(damaged_only_snapshot_refuses)
{
    char *dir = tmpdir();
    eng_opts o;
    stm_err err;
    eng *e = open_small_order(dir, &o);
    char p[256];
    for (int i = 0; i < 40; i++) {
        snprintf(p, sizeof p, "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"c-%02d\"}", i);
        cJSON_Delete(ok(e, "CREATE_INSTANCE", p));
    }
    cJSON *c = ok(e, "COMPACT", "{\"force_snapshot\":true}");
    ck_assert_int_gt((int)num(c, "segments_deleted"), 0);
    cJSON_Delete(c);
    eng_close(e);

    char snaps[600], path[1200] = "";
    snprintf(snaps, sizeof snaps, "%s/snapshots", dir);
    DIR *d = opendir(snaps);
    ck_assert_ptr_nonnull(d);
    for (struct dirent *de; (de = readdir(d));)
        if (strstr(de->d_name, ".snap") && !strstr(de->d_name, ".tmp"))
            snprintf(path, sizeof path, "%s/%s", snaps, de->d_name);
    closedir(d);
    ck_assert(path[0]);
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, "Z", 1, 100), 1);
    close(fd);

    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "is damaged (its checksum does not hold): restore"));
    ck_assert_ptr_nonnull(strstr(err.msg, path));

    char away[1300];
    snprintf(away, sizeof away, "%s/damaged.snap.bak", dir);
    ck_assert_int_eq(rename(path, away), 0);
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

/* A disk that fails on demand: fdatasync or pwrite of the log fail with
 * flaky_errno while it is set. */
static int flaky_errno;
static bool flaky_on_write;

static int flaky_fdatasync(int fd)
{
    if (flaky_errno && !flaky_on_write) {
        errno = flaky_errno;
        return -1;
    }
    return wal_posix_io.fdatasync(fd);
}

static ssize_t flaky_pwrite(int fd, const void *b, size_t n, off_t off)
{
    if (flaky_errno && flaky_on_write) {
        errno = flaky_errno;
        return -1;
    }
    return wal_posix_io.pwrite(fd, b, n, off);
}

static eng *open_flaky(const char *dir, uint64_t max_keys)
{
    static wal_io io;
    io = wal_posix_io;
    io.fdatasync = flaky_fdatasync;
    io.pwrite = flaky_pwrite;
    flaky_errno = 0;
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.io = &io;
    o.compact_enabled = false;
    o.idempotency_max_keys = max_keys;
    stm_err err;
    eng *e = NULL;
    ck_assert_msg(eng_open(&o, &e, NULL, &err) == STM_OK, "eng_open: %s", err.msg);
    return e;
}

/* A call and the wait for its answer to be durable: the code of whichever
 * failed. */
static stm_code call_durable(eng *e, const char *op, const char *params, cJSON **out, stm_err *err)
{
    cJSON *p = params ? cJSON_Parse(params) : NULL;
    uint64_t seq = 0;
    *out = NULL;
    stm_code rc = eng_call(e, op, p, out, &seq, err);
    cJSON_Delete(p);
    if (rc == STM_OK) rc = eng_wait(e, seq, err);
    if (rc != STM_OK) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return rc;
}

/* What a reader sees of the database, through every read: instance by
 * instance (GET_INSTANCE, the mount's view, its history), the list, the
 * machines and the entries file. */
static void view_text(eng *e, buf *out)
{
    stm_err err;
    cJSON *l;
    ck_assert_msg(call_durable(e, "LIST_INSTANCES", NULL, &l, &err) == STM_OK, "LIST: %s", err.msg);
    json_write(out, l, true);
    buf_putc(out, '\n');
    const cJSON *it;
    cJSON_ArrayForEach(it, json_get(l, "instances"))
    {
        const char *id = str(it, "id");
        char p[256];
        snprintf(p, sizeof p, "{\"instance_id\":\"%s\"}", id);
        cJSON *g;
        stm_code rc = call_durable(e, "GET_INSTANCE", p, &g, &err);
        ck_assert_msg(rc == STM_OK, "GET_INSTANCE %s: %s %s", id, stm_code_name(rc), err.msg);
        json_write(out, g, true);
        buf_putc(out, '\n');
        cJSON_Delete(g);
        eng_instance_view v;
        ck_assert_int_eq(eng_get_instance_view(e, id, false, &v, &err), STM_OK);
        rc = eng_wait(e, v.seq, &err);
        ck_assert_msg(rc == STM_OK, "view of %s: %s", id, err.msg);
        buf_printf(out, "%s %s %s %llu\n", v.id, v.state, v.ctx_json,
                   (unsigned long long)v.history_lines);
        uint64_t total;
        rc = eng_history_read(e, id, 0, 1 << 20, out, &total, &err);
        ck_assert_msg(rc == STM_OK, "history of %s: %s", id, err.msg);
        eng_instance_view_free(&v);
    }
    cJSON_Delete(l);
    ck_assert_int_eq(call_durable(e, "LIST_MACHINES", NULL, &l, &err), STM_OK);
    json_write(out, l, true);
    buf_putc(out, '\n');
    cJSON_Delete(l);
    uint64_t total;
    buf entries = {0};
    ck_assert_int_eq(eng_entries_read(e, 0, 1 << 20, &entries, &total, &err), STM_OK);
    ck_assert_uint_eq(entries.len, total);
    buf_free(&entries);
}

/* After the log fails (the disk is full, or fdatasync fails), everything a
 * reader sees is the acknowledged state: the failed records' changes are
 * gone from memory as they are from the log, nothing waits for them, and a
 * restart shows the same. Writes stay refused. (Reads of what the failed
 * records touched failed with WAL_IO_ERROR, LIST_INSTANCES as a whole.) */
START_TEST(wal_failure_shows_acked_state)
{
    char *dir = tmpdir();
    stm_err err;
    cJSON *r;
    for (int round = 0; round < 2; round++) {
        /* round 0: fdatasync fails (EIO) under an atomic batch that creates,
         * deletes, moves and defines; round 1: a full disk (ENOSPC) under
         * one event whose key made the engine forget the only other key */
        eng *e = open_flaky(dir, round ? 1 : 0);
        if (round == 0) {
            cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
            cJSON_Delete(ok(e, "CREATE_INSTANCE",
                            "{\"machine\":\"order\",\"version\":1,"
                            "\"instance_id\":\"a\",\"initial_ctx\":{\"amount\":1}}"));
            cJSON_Delete(ok(e, "CREATE_INSTANCE",
                            "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"b\",\"initial_"
                            "ctx\":{\"amount\":1}}"));
            cJSON_Delete(ok(e, "CREATE_INSTANCE",
                            "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"del\"}"));
            cJSON_Delete(ok(e, "APPLY_EVENT",
                            "{\"instance_id\":\"a\",\"event\":\"PAY\","
                            "\"payload\":{\"n\":1},\"idempotency_key\":\"pa\"}"));
        } else {
            cJSON_Delete(ok(e, "APPLY_EVENT",
                            "{\"instance_id\":\"b\",\"event\":\"PAY\","
                            "\"payload\":{\"n\":1},\"idempotency_key\":\"pb\"}"));
        }
        buf before = {0};
        view_text(e, &before);

        flaky_errno = round ? ENOSPC : EIO;
        flaky_on_write = round == 1;
        stm_code rc;
        if (round == 0) {
            const char *ops[] = {"CREATE_INSTANCE", "DELETE_INSTANCE", "APPLY_EVENT",
                                 "PUT_MACHINE"};
            char v2[2048];
            snprintf(v2, sizeof v2, "%.*s2%s", (int)(strstr(ORDER, "\"version\":1") - ORDER + 10),
                     ORDER, strstr(ORDER, "\"version\":1") + 11);
            const char *params[] = {
                "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"ghost\","
                "\"idempotency_key\":\"g\"}",
                "{\"instance_id\":\"del\"}",
                "{\"instance_id\":\"a\",\"event\":\"SHIP\",\"payload\":{\"n\":2},"
                "\"idempotency_key\":\"sa\"}",
                v2};
            cJSON *res[4];
            size_t failed;
            rc = batch(e, 4, ops, params, res, &failed, &err);
        } else {
            rc = call_durable(e, "APPLY_EVENT",
                              "{\"instance_id\":\"b\",\"event\":\"SHIP\",\"payload\":{\"n\":2},"
                              "\"idempotency_key\":\"sb\"}",
                              &r, &err);
        }
        ck_assert_int_eq(rc, STM_WAL_IO_ERROR);
        ck_assert_msg(strstr(err.msg, round ? "No space left on device" : "Input/output error"),
                      "%s", err.msg);

        /* every read shows the acknowledged state, and works */
        buf after = {0};
        view_text(e, &after);
        ck_assert_str_eq(buf_cstr(&after), buf_cstr(&before));
        fails(e, "GET_INSTANCE", "{\"instance_id\":\"ghost\"}", STM_INSTANCE_NOT_FOUND, NULL);
        if (round == 1) {
            /* the key the failed event pushed out is known again */
            rc = call_durable(e, "APPLY_EVENT",
                              "{\"instance_id\":\"b\",\"event\":\"PAY\",\"payload\":{\"n\":1},"
                              "\"idempotency_key\":\"pb\"}",
                              &r, &err);
            ck_assert_msg(rc == STM_OK, "%s", err.msg);
            ck_assert(cJSON_IsFalse(json_get(r, "applied")));
            cJSON_Delete(r);
        }
        /* writes stay refused, with the reason, also the failed one retried */
        flaky_errno = 0;
        rc = call_durable(e, "APPLY_EVENT",
                          "{\"instance_id\":\"a\",\"event\":\"SHIP\",\"payload\":{\"n\":2},"
                          "\"idempotency_key\":\"sa\"}",
                          &r, &err);
        ck_assert_int_eq(rc, STM_WAL_IO_ERROR);
        ck_assert_ptr_nonnull(strstr(err.msg, "takes no more writes"));
        eng_stats st;
        eng_get_stats(e, &st);
        ck_assert_uint_eq(st.instances, 3);
        ck_assert_uint_eq(st.idempotency_keys, 1);
        eng_close(e);

        /* a restart rebuilds exactly what the reads showed */
        e = open_dir(dir, NULL);
        buf again = {0};
        view_text(e, &again);
        ck_assert_str_eq(buf_cstr(&again), buf_cstr(&before));
        eng_close(e);
        buf_free(&before);
        buf_free(&after);
        buf_free(&again);
    }
    rmrf(dir);
    free(dir);
}
END_TEST

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* A kill -9 while a snapshot is written leaves NAME.snap.tmp behind, as big
 * as the snapshot: opening the database removes such files (a read-only
 * open leaves them alone) and says so in the log; finished snapshots stay.
 * (Nothing ever removed them: repeated crashes filled the disk.) */
START_TEST(stale_snapshot_tmp_removed)
{
    char *dir = tmpdir();
    eng *e = open_dir(dir, NULL);
    cJSON_Delete(ok(e, "PUT_MACHINE", ORDER));
    cJSON_Delete(
        ok(e, "CREATE_INSTANCE", "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"s-1\"}"));
    cJSON_Delete(ok(e, "COMPACT", NULL));
    eng_close(e);
    char snaps[4200], tmp1[4300], tmp2[4300], other[4300];
    snprintf(snaps, sizeof snaps, "%s/snapshots", dir);
    snprintf(tmp1, sizeof tmp1, "%s/db-0000010000000400.snap.tmp", snaps);
    snprintf(tmp2, sizeof tmp2, "%s/.snap-5b1e.snap.tmp", snaps);
    snprintf(other, sizeof other, "%s/notes.tmp", snaps);
    const char *made[] = {tmp1, tmp2, other};
    for (int i = 0; i < 3; i++) {
        FILE *f = fopen(made[i], "w");
        ck_assert_ptr_nonnull(f);
        for (int k = 0; k < 1000; k++)
            fputs("half a snapshot\n", f);
        fclose(f);
    }
    size_t snaps_before = 0;
    DIR *d = opendir(snaps);
    for (struct dirent *de; (de = readdir(d));)
        snaps_before += strstr(de->d_name, ".snap") && !strstr(de->d_name, ".tmp");
    closedir(d);
    ck_assert_uint_eq(snaps_before, 1);

    /* a read-only open is no writer: another process may be writing them */
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.read_only = true;
    stm_err err;
    ck_assert_int_eq(eng_open(&o, &e, NULL, &err), STM_OK);
    eng_close(e);
    ck_assert(exists(tmp1) && exists(tmp2));

    char logpath[4300];
    snprintf(logpath, sizeof logpath, "%s/test.log", dir);
    FILE *log = fopen(logpath, "w+");
    ck_assert_ptr_nonnull(log);
    log_setup(log, LOG_INFO);
    e = open_dir(dir, NULL);
    log_setup(NULL, LOG_WARN);
    ck_assert(!exists(tmp1));
    ck_assert(!exists(tmp2));
    ck_assert(exists(other)); /* not a snapshot's */
    size_t snaps_after = 0;
    d = opendir(snaps);
    for (struct dirent *de; (de = readdir(d));)
        snaps_after += strstr(de->d_name, ".snap") && !strstr(de->d_name, ".tmp");
    closedir(d);
    ck_assert_uint_eq(snaps_after, 1);
    char text[8192] = {0};
    rewind(log);
    ck_assert_uint_gt(fread(text, 1, sizeof text - 1, log), 0);
    fclose(log);
    ck_assert_msg(strstr(text, "db-0000010000000400.snap.tmp (16000 bytes)"), "log: %s", text);
    ck_assert_msg(strstr(text, ".snap-5b1e.snap.tmp"), "log: %s", text);
    check_state(e, "s-1", "created");
    eng_close(e);
    rmrf(dir);
    free(dir);
}
END_TEST

int main(void)
{
    testdata = getenv("STMFS_TESTDATA");
    if (testdata && access(testdata, R_OK) != 0) testdata = NULL;
    if (!testdata) fprintf(stderr, "note: STMFS_TESTDATA not found; fixture tests check nothing\n");
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, wait_for_unwritten_seq_fails);
    tcase_add_test(tc, put_get_create_apply);
    tcase_add_test(tc, restart_keeps_everything);
    tcase_add_test(tc, listing_order_with_deferred_index);
    tcase_add_test(tc, idempotency_survives_restart);
    tcase_add_test(tc, atomic_batch_all_or_nothing);
    tcase_add_test(tc, atomic_batch_repeated_key);
    tcase_add_test(tc, subscription_catch_up_then_live);
    tcase_add_test(tc, subscription_after_unwatched_burst);
    tcase_add_test(tc, history_sizes_are_exact);
    tcase_add_test(tc, replay_at_offset);
    tcase_add_test(tc, compaction_keeps_everything);
    tcase_add_test(tc, snapshot_header_counts_optional);
    tcase_add_test(tc, compaction_races_key_eviction);
    tcase_add_test(tc, compaction_takes_one_record_while_writes_go_on);
    tcase_add_test(tc, snapshot_write_fails_midway);
    tcase_add_test(tc, list_walks_in_chunks_beside_writes);
    tcase_add_test(tc, first_listing_after_burst_lets_others_in);
    tcase_add_test(tc, compactor_links_a_backlog);
    tcase_add_test(tc, list_totals_kept_as_counts);
    tcase_add_test(tc, list_pages_by_offset);
    tcase_add_test(tc, listing_one_machine_among_many);
    tcase_add_test(tc, subscription_from_compacted_offset);
    tcase_add_test(tc, damaged_only_snapshot_refuses);
    tcase_add_test(tc, stale_snapshot_tmp_removed);
    tcase_add_test(tc, wal_failure_shows_acked_state);
    tcase_add_test(tc, entries_count_runtime_checkpoints);
    tcase_add_test(tc, entries_read_below_size_is_whole);
    tcase_add_test(tc, entries_count_torn_batch);
    tcase_add_test(tc, limits_refuse_and_name_the_key);
    tcase_add_test(tc, rstmdb_fixture);
    tcase_add_test(tc, rstmdb_fixture_torn);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
