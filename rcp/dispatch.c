/*
 * dispatch.c - one operation to its handler: the auth gate, engine ops
 * through eng_call, BATCH (best effort one by one, atomic through
 * eng_call_atomic: all or nothing), and the watches (WATCH_INSTANCE,
 * WATCH_ALL, UNWATCH) with the delivery of their stream events.
 *
 * WATCHES. A watch is an engine subscription (apply_event records only) and
 * the filter it was made with. Events are taken only when the WAL has made
 * them durable, and appended behind the responses already queued, so an
 * event caused by a request on the same connection follows its response.
 * WATCH_INSTANCE subscribes first and reads the instance after, then drops
 * events at or below the offset it reported: no gap, no duplicate. With
 * from_offset the engine first replays the WAL from there, then goes live.
 * If a subscriber falls so far behind that the engine's ring drops events
 * (a client that stops reading), the watch resubscribes from the offset the
 * engine names and catches up from the WAL: the client still gets every
 * event, in order, just later.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "rcp/internal.h"

#define MAX_BATCH_DEPTH 8

static stm_code bad(stm_err *err, const char *what, const char *field)
{
    return stm_fail(err, STM_BAD_REQUEST, "invalid request: %s `%s`", what, field);
}

static stm_code need_object(const cJSON *params, stm_err *err)
{
    if (params && !cJSON_IsObject(params))
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: params must be an object");
    return STM_OK;
}

static stm_code req_string(const cJSON *params, const char *key, const char **out, stm_err *err)
{
    const cJSON *v = json_get(params, key);
    if (!v || cJSON_IsNull(v)) return bad(err, "missing field", key);
    if (!cJSON_IsString(v)) return bad(err, "invalid type for field", key);
    *out = v->valuestring;
    return STM_OK;
}

static stm_code opt_bool(const cJSON *params, const char *key, bool def, bool *out, stm_err *err)
{
    const cJSON *v = json_get(params, key);
    *out = def;
    if (!v || cJSON_IsNull(v)) return STM_OK;
    if (!cJSON_IsBool(v)) return bad(err, "invalid type for field", key);
    *out = cJSON_IsTrue(v);
    return STM_OK;
}

static stm_code opt_u64(const cJSON *params, const char *key, bool *has, uint64_t *out,
                        stm_err *err)
{
    const cJSON *v = json_get(params, key);
    *has = false;
    if (!v || cJSON_IsNull(v)) return STM_OK;
    if (!json_get_uint(v, UINT64_MAX, out)) return bad(err, "invalid type for field", key);
    *has = true;
    return STM_OK;
}

/* ---- watches ------------------------------------------------------------- */

static void watch_wake(void *arg);

static void watch_free(rcp_watch *w)
{
    if (!w) return;
    eng_unsubscribe(w->sub);
    free(w->instance_id);
    for (int k = 0; k < 4; k++) {
        for (size_t i = 0; i < w->n_lists[k]; i++)
            free(w->lists[k][i]);
        free(w->lists[k]);
    }
    free(w);
}

static void watch_unlink(rcp_conn *c, rcp_watch *w)
{
    for (rcp_watch **p = &c->watches; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    c->srv->m.subscriptions[w->all]--;
    rcp_conn_track(c);
}

void rcp_watches_free(rcp_conn *c)
{
    while (c->watches) {
        rcp_watch *w = c->watches;
        watch_unlink(c, w);
        watch_free(w);
    }
}

static void watch_wake(void *arg)
{
    rcp_server_wake(arg);
}

static stm_code watch_subscribe(rcp_conn *c, rcp_watch *w, stm_err *err)
{
    return eng_subscribe(c->srv->e, &w->f, watch_wake, c->srv, &w->sub, err);
}

/* Keeps a list of strings (absent or null = empty) in w and its filter. */
static stm_code watch_list(rcp_watch *w, int k, const cJSON *params, const char *key, stm_err *err)
{
    const cJSON *v = json_get(params, key);
    if (!v || cJSON_IsNull(v)) return STM_OK;
    if (!cJSON_IsArray(v)) return bad(err, "invalid type for field", key);
    size_t n = (size_t)cJSON_GetArraySize(v);
    for (const cJSON *x = v->child; x; x = x->next)
        if (!cJSON_IsString(x)) return bad(err, "invalid type for an element of", key);
    w->lists[k] = xcalloc(n ? n : 1, sizeof(char *));
    for (const cJSON *x = v->child; x; x = x->next)
        w->lists[k][w->n_lists[k]++] = xstrdup(x->valuestring);
    return STM_OK;
}

static stm_code watch_common(const cJSON *params, rcp_watch *w, stm_err *err)
{
    bool has;
    uint64_t from = 0;
    stm_code rc;
    if ((rc = opt_bool(params, "include_ctx", true, &w->include_ctx, err)) != STM_OK) return rc;
    if ((rc = opt_u64(params, "from_offset", &has, &from, err)) != STM_OK) return rc;
    w->f.apply_only = true;
    /* The engine reads 0 as "live only"; a client's 0 means "from the
     * start", and no record lives at offset 0 or 1 (segment ids start at 1). */
    w->f.from_offset = has ? (from ? from : 1) : 0;
    return STM_OK;
}

static void new_sub_id(char id[41])
{
    char u[37];
    util_uuid4(u);
    snprintf(id, 41, "sub-%s", u);
}

static stm_code watch_instance(rcp_conn *c, const cJSON *params, cJSON **result, uint64_t *seq,
                               stm_err *err)
{
    stm_code rc;
    const char *id;
    if ((rc = need_object(params, err)) != STM_OK) return rc;
    if ((rc = req_string(params, "instance_id", &id, err)) != STM_OK) return rc;
    rcp_watch *w = xcalloc(1, sizeof *w);
    w->conn = c;
    if ((rc = watch_common(params, w, err)) != STM_OK) goto fail;
    w->instance_id = xstrdup(id);
    w->f.instance_id = w->instance_id;
    if ((rc = watch_subscribe(c, w, err)) != STM_OK) goto fail;

    cJSON *gp = cJSON_CreateObject();
    cJSON_AddStringToObject(gp, "instance_id", id);
    cJSON *inst = NULL;
    rc = eng_call(c->srv->e, "GET_INSTANCE", gp, &inst, seq, err);
    cJSON_Delete(gp);
    if (rc != STM_OK) goto fail;
    const cJSON *st = json_get(inst, "state"), *off = json_get(inst, "last_wal_offset");
    uint64_t last = 0;
    json_get_uint(off, UINT64_MAX, &last);
    if (!w->f.from_offset) w->skip_upto = last;

    new_sub_id(w->id);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "current_state", cJSON_IsString(st) ? st->valuestring : "");
    cJSON_AddItemToObject(r, "current_wal_offset",
                          off ? cJSON_Duplicate(off, true) : cJSON_CreateNumber(0));
    cJSON_AddStringToObject(r, "instance_id", id);
    cJSON_AddStringToObject(r, "subscription_id", w->id);
    cJSON_Delete(inst);
    w->next = c->watches;
    c->watches = w;
    c->srv->m.subscriptions[0]++;
    rcp_conn_track(c);
    *result = r;
    return STM_OK;
fail:
    watch_free(w);
    return rc;
}

static stm_code watch_all(rcp_conn *c, const cJSON *params, cJSON **result, stm_err *err)
{
    static const char *const keys[4] = {"machines", "from_states", "to_states", "events"};
    stm_code rc;
    if ((rc = need_object(params, err)) != STM_OK) return rc;
    rcp_watch *w = xcalloc(1, sizeof *w);
    w->conn = c;
    w->all = true;
    for (int k = 0; k < 4; k++)
        if ((rc = watch_list(w, k, params, keys[k], err)) != STM_OK) goto fail;
    if ((rc = watch_common(params, w, err)) != STM_OK) goto fail;
    w->f.machines = (const char *const *)w->lists[0], w->f.n_machines = w->n_lists[0];
    w->f.from_states = (const char *const *)w->lists[1], w->f.n_from_states = w->n_lists[1];
    w->f.to_states = (const char *const *)w->lists[2], w->f.n_to_states = w->n_lists[2];
    w->f.events = (const char *const *)w->lists[3], w->f.n_events = w->n_lists[3];
    /* The next write position before subscribing: every event below it
     * predates this watch, so a resubscription after an overflow never
     * replays them (only with from_offset does the client ask for those). */
    eng_stats st;
    eng_get_stats(c->srv->e, &st);
    if (!w->f.from_offset && st.wal.latest_offset) w->skip_upto = st.wal.latest_offset - 1;
    if ((rc = watch_subscribe(c, w, err)) != STM_OK) goto fail;
    new_sub_id(w->id);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "subscription_id", w->id);
    cJSON_AddNumberToObject(r, "wal_offset", (double)st.wal.latest_offset);
    w->next = c->watches;
    c->watches = w;
    c->srv->m.subscriptions[1]++;
    rcp_conn_track(c);
    *result = r;
    return STM_OK;
fail:
    watch_free(w);
    return rc;
}

static stm_code unwatch(rcp_conn *c, const cJSON *params, cJSON **result, stm_err *err)
{
    stm_code rc;
    const char *id;
    if ((rc = need_object(params, err)) != STM_OK) return rc;
    if ((rc = req_string(params, "subscription_id", &id, err)) != STM_OK) return rc;
    bool removed = false;
    /* Only this connection's own watches: another connection's id is
     * reported as not removed and left alone. */
    for (rcp_watch *w = c->watches; w; w = w->next)
        if (strcmp(w->id, id) == 0) {
            watch_unlink(c, w);
            watch_free(w);
            removed = true;
            break;
        }
    cJSON *r = cJSON_CreateObject();
    cJSON_AddBoolToObject(r, "removed", removed);
    cJSON_AddStringToObject(r, "subscription_id", id);
    *result = r;
    return STM_OK;
}

static bool write_event(buf *out, enum rcp_wire mode, const rcp_watch *w, const eng_event *ev,
                        bool with_ctx)
{
    size_t start = rcp_msg_begin(out, mode);
    buf_puts(out, "{\"type\":\"event\",\"subscription_id\":");
    json_write_str(out, w->id);
    buf_puts(out, ",\"instance_id\":");
    json_write_str(out, ev->instance_id ? ev->instance_id : "");
    buf_puts(out, ",\"machine\":");
    json_write_str(out, ev->machine ? ev->machine : "");
    buf_printf(out, ",\"version\":%u,\"wal_offset\":%llu,\"from_state\":", ev->version,
               (unsigned long long)ev->offset);
    json_write_str(out, ev->from_state ? ev->from_state : "");
    buf_puts(out, ",\"to_state\":");
    json_write_str(out, ev->to_state ? ev->to_state : "");
    buf_puts(out, ",\"event\":");
    json_write_str(out, ev->event ? ev->event : "");
    buf_puts(out, ",\"payload\":");
    buf_puts(out, ev->payload_json ? ev->payload_json : "null");
    if (with_ctx) {
        buf_puts(out, ",\"ctx\":");
        buf_puts(out, ev->ctx_json ? ev->ctx_json : "{}");
    }
    buf_putc(out, '}');
    return rcp_msg_end(out, start, mode);
}

bool rcp_watches_drain(rcp_conn *c)
{
    rcp_server *s = c->srv;
    bool full = false;
    for (rcp_watch *w = c->watches; w; w = w->next) {
        if (!w->sub) continue;
        int k;
        for (k = 0; k < RCP_EVENTS_PER_ROUND; k++) {
            /* A client that does not read stops being fed; the engine keeps
             * the events (or the WAL does, see the overflow case). */
            if (c->out.len - c->out_off >= RCP_OUT_SOFT_LIMIT) {
                full = true;
                break;
            }
            eng_event ev;
            uint64_t resume = 0;
            int r = eng_sub_next(w->sub, &ev, &resume);
            if (r == 0) break;
            if (r < 0) {
                eng_unsubscribe(w->sub);
                w->sub = NULL;
                w->f.from_offset = resume ? resume : 1;
                if (w->f.from_offset <= w->skip_upto) w->f.from_offset = w->skip_upto + 1;
                stm_err err;
                if (watch_subscribe(c, w, &err) != STM_OK) {
                    /* RCP has no frame to end one stream with an error, and
                     * a watch that just stops looks like a quiet system. So
                     * the connection closes after what it has been sent:
                     * the client sees it, reconnects and reads the state. */
                    log_warn("rcp %s: closing the connection: watch %s fell behind and cannot "
                             "resume: %s",
                             c->peer, w->id, err.msg);
                    w->sub = NULL;
                    c->closing = true;
                    break;
                }
                log_info("rcp %s: watch %s fell behind; catching up from offset %llu", c->peer,
                         w->id, (unsigned long long)w->f.from_offset);
                continue;
            }
            if (ev.offset <= w->skip_upto) continue;
            if (!write_event(&c->out, c->wire_out, w, &ev, w->include_ctx) &&
                !write_event(&c->out, c->wire_out, w, &ev, false)) {
                log_warn("rcp %s: event at %llu too large to send", c->peer,
                         (unsigned long long)ev.offset);
                continue;
            }
            rcp_queue_mark(c, 0, -1, 0);
            s->m.events_forwarded[w->all]++;
        }
        if (k == RCP_EVENTS_PER_ROUND) s->need_pass = true;
    }
    return full;
}

/* ---- BATCH --------------------------------------------------------------- */

static cJSON *batch_item(stm_code code, cJSON *result, const stm_err *err)
{
    cJSON *it = cJSON_CreateObject();
    if (code == STM_OK) {
        cJSON_AddNullToObject(it, "error");
        cJSON_AddItemToObject(it, "result", result ? result : cJSON_CreateObject());
        cJSON_AddStringToObject(it, "status", "ok");
    } else {
        cJSON *e = cJSON_AddObjectToObject(it, "error");
        cJSON_AddStringToObject(e, "code", stm_code_name(code));
        cJSON_AddStringToObject(e, "message", err->msg);
        cJSON_AddBoolToObject(e, "retryable", stm_code_retryable(code));
        cJSON_AddNullToObject(it, "result");
        cJSON_AddStringToObject(it, "status", "error");
    }
    return it;
}

/* Checks ops[i] is {"op": <one of the 21 names>, "params"?: ...}. */
static stm_code batch_elem(const cJSON *el, size_t i, int *op, const cJSON **params, stm_err *err)
{
    if (!cJSON_IsObject(el))
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: batch op %zu is not an object", i);
    const cJSON *o = json_get(el, "op");
    if (!cJSON_IsString(o))
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: batch op %zu: %s field `op`", i,
                        o ? "invalid type for" : "missing");
    *op = rcp_op_lookup(o->valuestring);
    if (*op < 0)
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: batch op %zu: unknown operation `%.48s`", i,
                        o->valuestring);
    const cJSON *p = json_get(el, "params");
    *params = cJSON_IsNull(p) ? NULL : p;
    return STM_OK;
}

static bool needs_auth(int op)
{
    return op != RCP_OP_HELLO && op != RCP_OP_AUTH && op != RCP_OP_PING && op != RCP_OP_BYE;
}

bool rcp_op_allowed(const rcp_conn *c, int op)
{
    return !needs_auth(op) || !c->srv->auth_required || c->authenticated;
}

static stm_code batch(rcp_conn *c, const cJSON *params, cJSON **result, uint64_t *seq, stm_err *err,
                      int depth)
{
    rcp_server *s = c->srv;
    stm_code rc;
    if ((rc = need_object(params, err)) != STM_OK) return rc;
    if (depth >= MAX_BATCH_DEPTH)
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: batches nested too deep");
    const cJSON *ops = json_get(params, "ops");
    if (!ops || cJSON_IsNull(ops)) return bad(err, "missing field", "ops");
    if (!cJSON_IsArray(ops)) return bad(err, "invalid type for field", "ops");
    size_t n = (size_t)cJSON_GetArraySize(ops);
    if (n > ENG_MAX_BATCH_OPS)
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: batch of %zu ops exceeds max_batch_ops (%d)", n,
                        ENG_MAX_BATCH_OPS);
    const cJSON *mode = json_get(params, "mode");
    bool atomic = cJSON_IsString(mode) && strcmp(mode->valuestring, "atomic") == 0;
    *seq = 0;

    if (atomic) {
        /* Everything is checked before anything runs; then the engine
         * applies all of it or none of it. */
        const char *names[ENG_MAX_BATCH_OPS];
        const cJSON *ps[ENG_MAX_BATCH_OPS];
        cJSON *results[ENG_MAX_BATCH_OPS] = {0};
        size_t i = 0;
        for (const cJSON *el = ops->child; el; el = el->next, i++) {
            int op;
            if ((rc = batch_elem(el, i, &op, &ps[i], err)) != STM_OK) return rc;
            names[i] = rcp_op_name(op);
            s->m.requests[op]++;
            if (needs_auth(op) && s->auth_required && !c->authenticated)
                return stm_fail(err, STM_UNAUTHORIZED, "authentication required");
            if (!eng_is_engine_op(names[i]))
                return stm_fail(err, STM_BAD_REQUEST,
                                "invalid request: batch op %zu: %s cannot be part of an atomic "
                                "batch (engine operations only)",
                                i, names[i]);
        }
        size_t failed = 0;
        stm_err e2 = {0};
        rc = eng_call_atomic(s->e, n, names, ps, results, seq, &failed, &e2);
        if (rc != STM_OK) {
            for (i = 0; i < n; i++)
                cJSON_Delete(results[i]);
            if (rc < 0 || rc >= STM_CODE_COUNT) rc = STM_INTERNAL_ERROR;
            s->m.errors[rc]++;
            /* Retryable trouble (the disk) keeps its code; a refused op
             * makes the whole batch a bad request, as in rstmdb. */
            stm_code out = stm_code_retryable(rc) ? rc : STM_BAD_REQUEST;
            return stm_fail(err, out,
                            "invalid request: atomic batch failed at op %zu (%s): %s: %s; "
                            "nothing was applied",
                            failed, failed < n ? names[failed] : "?", stm_code_name(rc), e2.msg);
        }
        cJSON *r = cJSON_CreateObject();
        cJSON *arr = cJSON_AddArrayToObject(r, "results");
        for (i = 0; i < n; i++)
            cJSON_AddItemToArray(arr, batch_item(STM_OK, results[i], NULL));
        *result = r;
        return STM_OK;
    }

    cJSON *r = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(r, "results");
    size_t i = 0;
    for (const cJSON *el = ops->child; el; el = el->next, i++) {
        int op;
        const cJSON *p;
        /* A malformed element stops the batch there; what ran stays. */
        if ((rc = batch_elem(el, i, &op, &p, err)) != STM_OK) {
            cJSON_Delete(r);
            return rc;
        }
        s->m.requests[op]++;
        cJSON *one = NULL;
        uint64_t sq = 0;
        stm_err e2 = {0};
        stm_code code = rcp_dispatch(c, op, p, &one, &sq, &e2, depth + 1);
        if (code != STM_OK) {
            if (code < 0 || code >= STM_CODE_COUNT) code = STM_INTERNAL_ERROR;
            s->m.errors[code]++;
            cJSON_Delete(one);
            one = NULL;
        }
        if (sq > *seq) *seq = sq;
        cJSON_AddItemToArray(arr, batch_item(code, one, &e2));
    }
    *result = r;
    return STM_OK;
}

/* ---- the dispatcher ------------------------------------------------------ */

stm_code rcp_dispatch(rcp_conn *c, int op, const cJSON *params, cJSON **result, uint64_t *seq,
                      stm_err *err, int depth)
{
    rcp_server *s = c->srv;
    *result = NULL;
    *seq = 0;
    /* Unlike rstmdb, WATCH_* are behind the gate too. */
    if (needs_auth(op) && s->auth_required && !c->authenticated)
        return stm_fail(err, STM_UNAUTHORIZED, "authentication required");
    switch (op) {
    case RCP_OP_HELLO:
    case RCP_OP_AUTH:
    case RCP_OP_PING:
    case RCP_OP_BYE:
    case RCP_OP_INFO:
        return rcp_session_op(c, op, params, result, err);
    case RCP_OP_BATCH:
        return batch(c, params, result, seq, err, depth);
    case RCP_OP_WATCH_INSTANCE:
        return watch_instance(c, params, result, seq, err);
    case RCP_OP_WATCH_ALL:
        return watch_all(c, params, result, err);
    case RCP_OP_UNWATCH:
        return unwatch(c, params, result, err);
    default: {
        stm_code rc = eng_call(s->e, rcp_op_name(op), params, result, seq, err);
        if (rc != STM_OK && *result) {
            cJSON_Delete(*result);
            *result = NULL;
        }
        return rc;
    }
    }
}
