/*
 * session.c - one connection's requests: decoding the buffered input into
 * envelopes, the auth gate's session ops (HELLO, AUTH, PING, BYE, INFO),
 * and the wire mode.
 */
#include <stdio.h>
#include <string.h>

#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "rcp/internal.h"

#ifndef STMFS_VERSION
#define STMFS_VERSION "0.1.0"
#endif

#define SERVER_NAME "stmfs"

/* The server's feature set, in the order HELLO and INFO list it. */
static const char *const features[] = {"idempotency", "batch", "wal_read"};

static stm_code bad(stm_err *err, const char *field, const char *what)
{
    return stm_fail(err, STM_BAD_REQUEST, "invalid request: %s `%s`", what, field);
}

/* An optional list of strings: absent or null = empty. */
static stm_code str_list(const cJSON *params, const char *key, const cJSON **out, stm_err *err)
{
    const cJSON *v = json_get(params, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return STM_OK;
    if (!cJSON_IsArray(v)) return bad(err, key, "invalid type for field");
    for (const cJSON *x = v->child; x; x = x->next)
        if (!cJSON_IsString(x)) return bad(err, key, "invalid type for an element of");
    *out = v;
    return STM_OK;
}

static bool list_has(const cJSON *list, const char *s)
{
    for (const cJSON *x = list ? list->child : NULL; x; x = x->next)
        if (strcmp(x->valuestring, s) == 0) return true;
    return false;
}

static stm_code hello(rcp_conn *c, const cJSON *params, cJSON **result, stm_err *err)
{
    if (params && !cJSON_IsObject(params))
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: params must be an object");
    const cJSON *pv = json_get(params, "protocol_version");
    if (!pv || cJSON_IsNull(pv)) return bad(err, "protocol_version", "missing field");
    uint64_t v;
    if (!json_get_uint(pv, 65535, &v))
        return bad(err, "protocol_version", "invalid type for field");
    if (v != 1)
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: unsupported protocol version: %llu",
                        (unsigned long long)v);
    const cJSON *name = json_get(params, "client_name");
    if (name && !cJSON_IsNull(name) && !cJSON_IsString(name))
        return bad(err, "client_name", "invalid type for field");
    const cJSON *modes, *feats;
    stm_code rc;
    if ((rc = str_list(params, "wire_modes", &modes, err)) != STM_OK) return rc;
    if ((rc = str_list(params, "features", &feats, err)) != STM_OK) return rc;

    /* binary_json wins whenever offered (the original's rule; both real
     * clients offer only it); jsonl only when asked for alone. */
    enum rcp_wire mode = RCP_WIRE_BINARY;
    if (!list_has(modes, "binary_json") && list_has(modes, "jsonl")) mode = RCP_WIRE_JSONL;

    cJSON *r = cJSON_CreateObject();
    cJSON *fa = cJSON_AddArrayToObject(r, "features");
    for (size_t i = 0; i < sizeof features / sizeof features[0]; i++)
        if (list_has(feats, features[i])) cJSON_AddItemToArray(fa, cJSON_CreateString(features[i]));
    cJSON_AddNumberToObject(r, "protocol_version", 1);
    cJSON_AddStringToObject(r, "server_name", SERVER_NAME);
    cJSON_AddStringToObject(r, "server_version", STMFS_VERSION);
    cJSON_AddStringToObject(r, "wire_mode", mode == RCP_WIRE_JSONL ? "jsonl" : "binary_json");
    /* The HELLO response itself already goes out in the new mode, and the
     * input that follows it is read in the same mode. */
    c->wire_out = mode;
    c->dec.mode = mode;
    c->dec.auto_detect = false;
    c->dec.scanned = 0;
    *result = r;
    return STM_OK;
}

bool rcp_auth_check_token(const rcp_server *s, const char *token)
{
    char h[65];
    util_sha256_hex(token, strlen(token), h);
    /* Compare against every hash, always all 64 bytes, so the time taken
     * says nothing about which hash or how many leading digits matched. */
    int found = 0;
    for (size_t i = 0; i < s->n_hashes; i++)
        found |= util_ct_memcmp(h, s->hashes[i], 64) == 0;
    return found;
}

static stm_code auth(rcp_conn *c, const cJSON *params, cJSON **result, stm_err *err)
{
    if (params && !cJSON_IsObject(params))
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: params must be an object");
    const cJSON *m = json_get(params, "method"), *t = json_get(params, "token");
    if (!m || cJSON_IsNull(m)) return bad(err, "method", "missing field");
    if (!cJSON_IsString(m)) return bad(err, "method", "invalid type for field");
    if (!t || cJSON_IsNull(t)) return bad(err, "token", "missing field");
    if (!cJSON_IsString(t)) return bad(err, "token", "invalid type for field");
    if (strcmp(m->valuestring, "bearer") != 0) {
        char shown[64];
        snprintf(shown, sizeof shown, "%.48s", m->valuestring);
        return stm_fail(err, STM_AUTH_FAILED, "authentication failed: unsupported auth method: %s",
                        shown);
    }
    if (!*t->valuestring)
        return stm_fail(err, STM_AUTH_FAILED, "authentication failed: empty token");
    if (c->srv->auth_required && !rcp_auth_check_token(c->srv, t->valuestring))
        return stm_fail(err, STM_AUTH_FAILED, "authentication failed: invalid token");
    c->authenticated = true;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddTrueToObject(r, "authenticated");
    *result = r;
    return STM_OK;
}

stm_code rcp_session_op(rcp_conn *c, int op, const cJSON *params, cJSON **result, stm_err *err)
{
    cJSON *r;
    switch (op) {
    case RCP_OP_HELLO:
        return hello(c, params, result, err);
    case RCP_OP_AUTH:
        return auth(c, params, result, err);
    case RCP_OP_PING:
        r = cJSON_CreateObject();
        cJSON_AddTrueToObject(r, "pong");
        *result = r;
        return STM_OK;
    case RCP_OP_BYE:
        /* Pipelined requests after BYE are discarded; the answer is sent,
         * then the connection closes. */
        c->closing = true;
        r = cJSON_CreateObject();
        cJSON_AddTrueToObject(r, "goodbye");
        *result = r;
        return STM_OK;
    case RCP_OP_INFO: {
        r = cJSON_CreateObject();
        cJSON *fa = cJSON_AddArrayToObject(r, "features");
        for (size_t i = 0; i < sizeof features / sizeof features[0]; i++)
            cJSON_AddItemToArray(fa, cJSON_CreateString(features[i]));
        cJSON_AddNumberToObject(r, "max_batch_ops", ENG_MAX_BATCH_OPS);
        cJSON_AddNumberToObject(r, "max_frame_bytes", c->dec.max_payload);
        cJSON_AddNumberToObject(r, "protocol_version", 1);
        cJSON_AddStringToObject(r, "server_name", SERVER_NAME);
        cJSON_AddStringToObject(r, "server_version", STMFS_VERSION);
        *result = r;
        return STM_OK;
    }
    default:
        return stm_fail(err, STM_INTERNAL_ERROR, "not a session operation");
    }
}

/* Decodes and answers one request; its response is queued with the WAL
 * sequence it waits for. */
static void handle_request(rcp_conn *c, const char *p, size_t n)
{
    rcp_server *s = c->srv;
    uint64_t t0 = util_mono_ns();
    rcp_request r;
    stm_err err = {0};
    rcp_env_rc rc = rcp_request_parse(p, n, &r, &err);
    if (rc == RCP_ENV_FATAL) {
        /* No id to answer to: like rstmdb, close (after what was decoded
         * before it has been answered). */
        log_info("rcp %s: closing the connection: a request with no id to answer: %s", c->peer,
                 err.msg);
        c->closing = true;
        rcp_request_free(&r);
        return;
    }
    bool written;
    int op = r.op;
    if (rc == RCP_ENV_BAD) {
        s->m.errors[STM_BAD_REQUEST]++;
        written = rcp_write_error(&c->out, c->wire_out, r.id, STM_BAD_REQUEST, err.msg);
        op = -1;
    } else {
        s->m.requests[op]++;
        if (rcp_job_wanted(s->e, op, r.params) && rcp_op_allowed(c, op) &&
            rcp_job_start(c, op, r.id, r.params, t0)) {
            rcp_request_free(&r);
            return;
        }
        cJSON *result = NULL;
        uint64_t seq = 0;
        stm_code code = rcp_dispatch(c, op, r.params, &result, &seq, &err, 0);
        if (code == STM_OK) {
            written = rcp_write_result_or_error(&c->out, c->wire_out, r.id, result);
        } else {
            if (code >= STM_CODE_COUNT || code < 0) code = STM_INTERNAL_ERROR;
            s->m.errors[code]++;
            written = rcp_write_error(&c->out, c->wire_out, r.id, code, err.msg);
        }
        cJSON_Delete(result);
        if (written) {
            rcp_queue_mark(c, seq, op, t0);
            rcp_request_free(&r);
            return;
        }
    }
    if (written)
        rcp_queue_mark(c, 0, op, t0);
    else
        c->closing = true; /* not even an error fits: the id alone is ~16 MiB */
    rcp_request_free(&r);
}

void rcp_session_process_input(rcp_conn *c)
{
    while (!c->closing && !c->job) {
        if (c->out.len - c->out_off >= RCP_OUT_SOFT_LIMIT) {
            /* The client is not reading its answers: stop taking requests
             * until it does (the output buffer stays bounded). */
            c->read_paused = true;
            break;
        }
        const char *payload;
        size_t len, used;
        stm_err err;
        rcp_dec_rc rc = rcp_decode(&c->dec, c->in.data + c->in_off, c->in.len - c->in_off, &payload,
                                   &len, &used, &err);
        if (rc == RCP_DEC_NEED) {
            c->in_off += used;
            break;
        }
        if (rc == RCP_DEC_ERROR) {
            log_info("rcp %s: closing the connection: a request with no id to answer: %s", c->peer,
                 err.msg);
            c->closing = true;
            break;
        }
        handle_request(c, payload, len);
        c->in_off += used;
    }
    if (c->in_off == c->in.len) {
        c->in_off = 0;
        c->in.len = 0;
        if (c->in.cap > (1u << 20)) buf_free(&c->in);
    } else if (c->in_off > 0 && (c->in_off >= c->in.len / 2 || c->in.cap - c->in.len < 4096)) {
        memmove(c->in.data, c->in.data + c->in_off, c->in.len - c->in_off);
        c->in.len -= c->in_off;
        c->in_off = 0;
    }
}
