/*
 * ops.c - the engine operations of the RCP protocol, from params object to
 * result object, with the param rules, check order, results and errors of
 * reference rcp-protocol.md §8 and the fixes it recommends:
 *   - absent or null params are {}; a defaulted list/bool given as null is absent;
 *   - absent or null initial_ctx is {}; a non-object initial_ctx or payload
 *     is BAD_REQUEST (rstmdb's own Python client cannot read them back);
 *   - invalid definitions are BAD_REQUEST;
 *   - idempotency keys cover CREATE, APPLY and DELETE, survive restarts (they
 *     are in the WAL records), answer a retry with the original result and
 *     applied:false, and refuse the same key for a different request (CONFLICT);
 *   - a soft-deleted instance is gone for reads and events (INSTANCE_NOT_FOUND)
 *     while its id stays taken and its history stays in the log;
 *   - LIST_INSTANCES is sorted by id; WAL_READ answers stay under the frame limit.
 */
#include "engine/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

#define MAX_RESPONSE_BYTES (15u * 1024 * 1024) /* leaves room under the 16 MiB frame */

/* ---- params ------------------------------------------------------------- */

static stm_code missing(stm_err *err, const char *field)
{
    return stm_fail(err, STM_BAD_REQUEST, "invalid request: missing field `%s`", field);
}

static const char *json_type_name(const cJSON *v)
{
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    return "an object";
}

/* Finds the members names[0..n) of params in one walk (the first of each,
 * as json_get; requests come deduplicated), for ops on the hot path that
 * read many params. */
static void pick(const cJSON *params, const char *const *names, const cJSON **out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = NULL;
    if (!cJSON_IsObject(params)) return;
    for (const cJSON *c = params->child; c; c = c->next)
        for (size_t i = 0; i < n; i++)
            if (!out[i] && c->string && strcmp(c->string, names[i]) == 0) {
                out[i] = c;
                break;
            }
}

/* A string param, given its member (NULL = absent): required or optional
 * (null = absent). */
static stm_code p_str_of(const cJSON *v, const char *field, bool required, const char **out,
                         stm_err *err)
{
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return required ? missing(err, field) : STM_OK;
    if (!cJSON_IsString(v))
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: field `%s` must be a string, not %s", field,
                        json_type_name(v));
    if (strlen(v->valuestring) > ENG_MAX_ID_LEN)
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: field `%s` is longer than %d bytes", field,
                        ENG_MAX_ID_LEN);
    *out = v->valuestring;
    return STM_OK;
}

static stm_code p_str(const cJSON *params, const char *field, bool required, const char **out,
                      stm_err *err)
{
    return p_str_of(json_get(params, field), field, required, out, err);
}

/* A name the request would store (machine name, instance id, event id,
 * idempotency key). Lookups only meet the ceiling: data stored under looser
 * limits stays reachable. */
static stm_code p_new_name(const eng *e, const char *field, const char *v, stm_err *err)
{
    uint32_t max = e->opts.limits.max_id_bytes;
    size_t n = v ? strlen(v) : 0;
    if (max && n > max)
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: field `%s` is %zu bytes, over limits.max_id_bytes (%u)",
                        field, n, max);
    return STM_OK;
}

static stm_code p_uint_of(const cJSON *v, const char *field, bool required, uint64_t max,
                          bool *present, uint64_t *out, stm_err *err)
{
    *present = false;
    if (!v || cJSON_IsNull(v)) return required ? missing(err, field) : STM_OK;
    if (!json_get_uint(v, max, out))
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: field `%s` must be a whole number from 0 to %llu",
                        field, (unsigned long long)max);
    *present = true;
    return STM_OK;
}

static stm_code p_uint(const cJSON *params, const char *field, bool required, uint64_t max,
                       bool *present, uint64_t *out, stm_err *err)
{
    return p_uint_of(json_get(params, field), field, required, max, present, out, err);
}

#define TRY(x)                                                                                   \
    do {                                                                                         \
        stm_code rc_ = (x);                                                                      \
        if (rc_ != STM_OK) return rc_;                                                           \
    } while (0)

static cJSON *raw(const char *text)
{
    return cJSON_CreateRaw(text);
}

static void add_u64(cJSON *o, const char *k, uint64_t v)
{
    cJSON_AddItemToObject(o, k, cJSON_CreateNumber((double)v));
}

/* Appends what every entry carries besides its own fields: its time and,
 * inside an atomic batch, the countdown that marks the batch's records.
 * Both keys sort just before "type" ("ts" < "txn" < "type"). */
static int64_t stamp(eng *e, buf *text)
{
    int64_t ts = util_now_ms();
    buf_puts(text, ",\"ts\":");
    json_write_num(text, (double)ts);
    if (e->txn_total) {
        buf_puts(text, ",\"txn\":");
        json_write_num(text, (double)(e->txn_total - e->txn_written++));
    }
    return ts;
}

/* Appends an entry's canonical text and applies it. known, when the caller
 * built the text from fields it still holds, spares reading them back;
 * otherwise they are read from the bytes written, as replay reads them. */
static stm_code commit_text(eng *e, uint8_t type, buf *text, const entry_fields *known,
                            wal_record *rec, stm_err *err)
{
    stm_code rc = eng_write(e, type, text, rec, err);
    if (rc == STM_OK) {
        rec->payload = text->data; /* what was written, for the entries line */
        rec->len = (uint32_t)text->len;
        entry_fields f;
        if (!known) entry_scan(text->data, text->len, &e->scan_store, &f);
        rc = eng_apply_record(e, rec, known ? known : &f, err);
    }
    return rc;
}

/* The entry's canonical text, appended and applied. */
static stm_code commit(eng *e, uint8_t type, cJSON *entry, wal_record *rec, stm_err *err)
{
    cJSON_AddItemToObject(entry, "ts", cJSON_CreateNumber((double)util_now_ms()));
    if (e->txn_total)
        cJSON_AddItemToObject(entry, "txn",
                              cJSON_CreateNumber((double)(e->txn_total - e->txn_written++)));
    buf text = {0};
    json_write(&text, entry, true);
    stm_code rc = commit_text(e, type, &text, NULL, rec, err);
    buf_free(&text);
    return rc;
}

/* Reads back the WAL entry of an earlier request (idempotent retries). The
 * record may still be in flight: wait for it without holding the lock. */
static cJSON *read_entry(eng *e, uint64_t offset, uint64_t seq, stm_err *err)
{
    (void)0;
    /* Inside an atomic batch the lock must stay held: a retry of a request
     * that is not durable yet is then refused as retryable instead. */
    bool in_batch = e->dry_run || e->txn_total;
    if (in_batch && seq > eng_acked_seq(e)) {
        stm_fail(err, STM_WAL_IO_ERROR, "the original request is not durable yet; retry");
        return NULL;
    }
    if (!in_batch) pthread_mutex_unlock(&e->lock);
    stm_code rc = eng_wait(e, seq, err);
    buf payload = {0};
    wal_record rec;
    if (rc == STM_OK) rc = wal_read_at(e->w, offset, &payload, &rec, err);
    if (!in_batch) pthread_mutex_lock(&e->lock);
    cJSON *entry = rc == STM_OK ? json_parse(payload.data, payload.len, err) : NULL;
    buf_free(&payload);
    return entry;
}

/* An atomic batch may carry one idempotency key on two ops. The second is
 * a replay of the first, which is only staged: in the rehearsal its record
 * was never written, and in the real run it is not durable before the
 * batch ends. So its result is kept with the key (as compaction keeps the
 * results of keys whose records it removes) for the replay to answer
 * from, instead of reading the record back from the log. */
static void keep_batch_result(eng *e, const char *scope, const char *key, const cJSON *r)
{
    if (!key || !(e->dry_run || e->txn_total)) return;
    idem_entry *k = idem_find(e, scope, key);
    if (!k || k->result) return;
    cJSON *c = cJSON_Duplicate(r, true);
    cJSON_DeleteItemFromObjectCaseSensitive(c, "applied");
    buf b = {0};
    json_write(&b, c, true);
    cJSON_Delete(c);
    k->result = buf_detach(&b, NULL);
}

/* ---- machines ----------------------------------------------------------- */

static stm_code op_put_machine(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    const char *name;
    uint64_t version;
    bool has;
    TRY(p_str(p, "machine", true, &name, err));
    TRY(p_uint(p, "version", true, UINT32_MAX, &has, &version, err));
    const cJSON *defj = json_get(p, "definition");
    if (!defj || cJSON_IsNull(defj)) return missing(err, "definition");
    if (!cJSON_IsObject(defj))
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid machine definition: definition must be an object, not %s",
                        json_type_name(defj));
    machine *m = machine_find(e, name);
    if (!m) TRY(p_new_name(e, "machine", name, err));
    mversion *mv = mversion_find(m, (uint32_t)version);
    if (mv && !mv->d) mv = NULL;
    if (!mv && e->opts.max_machine_versions && m) {
        size_t have = 0;
        for (size_t i = 0; i < m->n_versions; i++) have += m->versions[i]->d != NULL;
        if (have >= e->opts.max_machine_versions)
            return stm_fail(err, STM_MACHINE_VERSION_LIMIT_EXCEEDED,
                            "machine version limit exceeded: machine '%s' already has %zu "
                            "versions (limit: %u)",
                            name, have, e->opts.max_machine_versions);
    }
    def *d;
    TRY(def_parse(defj, &d, err));
    if (!mv || strcmp(def_checksum(d), def_checksum(mv->d)) != 0) {
        /* only what would be stored: an identical re-put stays a no-op */
        const eng_limits *l = &e->opts.limits;
        def_limits dl = {l->max_states, l->max_transitions, l->max_guard_bytes,
                         l->max_guard_depth, l->max_definition_bytes};
        stm_code lrc = def_check_limits(d, &dl, err);
        if (lrc != STM_OK) {
            def_free(d);
            return lrc;
        }
    }
    cJSON *r = cJSON_CreateObject();
    if (mv) {
        bool same = strcmp(def_checksum(d), def_checksum(mv->d)) == 0;
        def_free(d);
        cJSON_Delete(r);
        if (!same)
            return stm_fail(err, STM_MACHINE_VERSION_EXISTS,
                            "machine version already exists: %s v%llu (with a different "
                            "definition; use a new version number)",
                            name, (unsigned long long)version);
        r = cJSON_CreateObject();
        cJSON_AddBoolToObject(r, "created", false);
        cJSON_AddStringToObject(r, "machine", name);
        cJSON_AddStringToObject(r, "stored_checksum", def_checksum(mv->d));
        add_u64(r, "version", version);
        *seq = mv->seq;
        *res = r;
        return STM_OK;
    }
    cJSON *entry = cJSON_CreateObject();
    cJSON_AddStringToObject(entry, "type", "put_machine");
    cJSON_AddStringToObject(entry, "machine", name);
    add_u64(entry, "version", version);
    cJSON_AddStringToObject(entry, "definition_hash", def_checksum(d));
    cJSON_AddItemToObject(entry, "definition", cJSON_Duplicate(defj, true));
    cJSON_AddBoolToObject(r, "created", true);
    cJSON_AddStringToObject(r, "machine", name);
    cJSON_AddStringToObject(r, "stored_checksum", def_checksum(d));
    add_u64(r, "version", version);
    def_free(d);
    wal_record rec;
    stm_code rc = commit(e, WAL_T_PUT_MACHINE, entry, &rec, err);
    cJSON_Delete(entry);
    if (rc != STM_OK) {
        cJSON_Delete(r);
        return rc;
    }
    *seq = rec.seq;
    *res = r;
    return STM_OK;
}

static stm_code find_version(eng *e, const char *name, uint64_t version, mversion **out,
                             stm_err *err)
{
    mversion *mv = mversion_find(machine_find(e, name), (uint32_t)version);
    if (!mv || !mv->d)
        return stm_fail(err, STM_MACHINE_NOT_FOUND, "machine version not found: %s v%llu", name,
                        (unsigned long long)version);
    *out = mv;
    return STM_OK;
}

static stm_code op_get_machine(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    const char *name;
    uint64_t version;
    bool has;
    mversion *mv = NULL;
    TRY(p_str(p, "machine", true, &name, err));
    TRY(p_uint(p, "version", true, UINT32_MAX, &has, &version, err));
    TRY(find_version(e, name, version, &mv, err));
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "checksum", def_checksum(mv->d));
    cJSON_AddItemToObject(r, "definition", def_normalised(mv->d));
    *seq = mv->seq;
    *res = r;
    return STM_OK;
}

static int cmp_machine(const void *a, const void *b)
{
    return strcmp((*(machine *const *)a)->name, (*(machine *const *)b)->name);
}

/* All machines with at least one defined version, sorted by name. Caller frees. */
static machine **sorted_machines(eng *e, size_t *n)
{
    machine **v = xmalloc((e->n_machines + 1) * sizeof *v);
    size_t k = 0;
    for (size_t i = 0; i < e->mtab_size; i++)
        for (machine *m = e->mtab[i]; m; m = m->hnext)
            for (size_t j = 0; j < m->n_versions; j++)
                if (m->versions[j]->d) {
                    v[k++] = m;
                    break;
                }
    qsort(v, k, sizeof *v, cmp_machine);
    *n = k;
    return v;
}

static stm_code op_list_machines(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    (void)p;
    (void)err;
    size_t n;
    machine **ms = sorted_machines(e, &n);
    cJSON *items = cJSON_CreateArray();
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON *it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "machine", ms[i]->name);
        cJSON *vs = cJSON_CreateArray();
        for (size_t j = 0; j < ms[i]->n_versions; j++) {
            mversion *mv = ms[i]->versions[j];
            if (!mv->d) continue;
            cJSON_AddItemToArray(vs, cJSON_CreateNumber(mv->version));
            if (mv->seq > s) s = mv->seq;
        }
        cJSON_AddItemToObject(it, "versions", vs);
        cJSON_AddItemToArray(items, it);
    }
    free(ms);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddItemToObject(r, "items", items);
    *seq = s;
    *res = r;
    return STM_OK;
}

/* ---- instances ---------------------------------------------------------- */

static stm_code find_live(eng *e, const char *id, instance **out, stm_err *err)
{
    instance *in = inst_find(e, id);
    if (!in || in->deleted)
        return stm_fail(err, STM_INSTANCE_NOT_FOUND, "instance not found: %s%s", id,
                        in ? " (it was deleted)" : "");
    *out = in;
    return STM_OK;
}

/* An engine-owned buffer for one operation under the lock, emptied; one
 * that grew past a large context is given back afterwards. */
static buf *scratch(buf *b)
{
    buf_reset(b);
    return b;
}

static void scratch_done(buf *b)
{
    if (b->cap > 256 * 1024) buf_free(b);
}

static cJSON *create_result(const char *id, const char *state, uint64_t offset)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddItemToObjectCS(r, "instance_id", cJSON_CreateString(id));
    cJSON_AddItemToObjectCS(r, "state", cJSON_CreateString(state));
    cJSON_AddItemToObjectCS(r, "wal_offset", cJSON_CreateNumber((double)offset));
    return r;
}

static stm_code op_create_instance(eng *e, const cJSON *p, cJSON **res, uint64_t *seq,
                                   stm_err *err)
{
    const char *name, *id, *key;
    uint64_t version;
    bool has;
    TRY(p_str(p, "machine", true, &name, err));
    TRY(p_uint(p, "version", true, UINT32_MAX, &has, &version, err));
    TRY(p_str(p, "instance_id", false, &id, err));
    TRY(p_str(p, "idempotency_key", false, &key, err));
    TRY(p_new_name(e, "instance_id", id, err));
    TRY(p_new_name(e, "idempotency_key", key, err));
    const cJSON *ctx = json_get(p, "initial_ctx");
    if (ctx && !cJSON_IsNull(ctx) && !cJSON_IsObject(ctx))
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: initial_ctx must be a JSON object, not %s",
                        json_type_name(ctx));
    buf *ctxt = scratch(&e->op_ctx);
    if (ctx && !cJSON_IsNull(ctx)) json_write(ctxt, ctx, true);
    else buf_puts(ctxt, "{}");
    if (e->opts.limits.max_ctx_bytes && ctxt->len > e->opts.limits.max_ctx_bytes) {
        size_t n = ctxt->len;
        scratch_done(ctxt);
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: initial_ctx is %zu bytes as compact JSON, over "
                        "limits.max_ctx_bytes (%llu)",
                        n, (unsigned long long)e->opts.limits.max_ctx_bytes);
    }
    char vbuf[16];
    snprintf(vbuf, sizeof vbuf, "%llu", (unsigned long long)version);
    const char *scope = id ? id : "";

    if (key) {
        idem_entry *k = idem_find(e, scope, key);
        if (k) {
            uint64_t fp = fingerprint(name, vbuf, buf_cstr(ctxt), id);
            scratch_done(ctxt);
            if (k->type != WAL_T_CREATE_INSTANCE || k->fingerprint != fp)
                return stm_fail(err, STM_CONFLICT,
                                "idempotency key '%s' was already used for a different request",
                                key);
            uint64_t kseq = k->seq, koff = k->offset;
            if (k->result) {
                cJSON *r = cJSON_Parse(k->result);
                cJSON_AddBoolToObject(r, "applied", false);
                *seq = kseq;
                *res = r;
                return STM_OK;
            }
            cJSON *entry = read_entry(e, koff, kseq, err);
            if (!entry) return err ? err->code : STM_WAL_IO_ERROR;
            const cJSON *eid = json_get(entry, "instance_id");
            const cJSON *est = json_get(entry, "initial_state");
            cJSON *r = create_result(cJSON_IsString(eid) ? eid->valuestring : "",
                                     cJSON_IsString(est) ? est->valuestring : "", koff);
            cJSON_AddBoolToObject(r, "applied", false);
            cJSON_Delete(entry);
            *seq = kseq;
            *res = r;
            return STM_OK;
        }
    }
    char uuid[37];
    if (id && inst_find(e, id)) {
        scratch_done(ctxt);
        return stm_fail(err, STM_INSTANCE_EXISTS, "instance already exists: %s%s", id,
                        inst_find(e, id)->deleted ? " (deleted; ids are never reused)" : "");
    }
    mversion *mv = NULL;
    stm_code rc = find_version(e, name, version, &mv, err);
    if (rc != STM_OK) {
        scratch_done(ctxt);
        return rc;
    }
    if (!id) {
        do util_uuid4(uuid);
        while (inst_find(e, uuid));
    }
    /* The entry in canonical key order, as json_write would sort it. */
    buf *text = scratch(&e->op_entry);
    buf_reserve(text, ctxt->len + 256);
    buf_putc(text, '{');
    if (!id) buf_puts(text, "\"generated_id\":true,");
    if (key) {
        buf_puts(text, "\"idempotency_key\":");
        json_write_str(text, key);
        buf_putc(text, ',');
    }
    buf_puts(text, "\"initial_ctx\":");
    buf_add(text, ctxt->data, ctxt->len);
    buf_puts(text, ",\"initial_state\":");
    json_write_str(text, def_initial(mv->d));
    buf_puts(text, ",\"instance_id\":");
    json_write_str(text, id ? id : uuid);
    buf_puts(text, ",\"machine\":");
    json_write_str(text, name);
    int64_t ts = stamp(e, text);
    buf_puts(text, ",\"type\":\"create_instance\",\"version\":");
    json_write_num(text, (double)version);
    buf_putc(text, '}');
    /* what replay would read back from the text, as the text was made */
    entry_fields f = {.instance_id = id ? id : uuid, .machine = name,
                      .initial_state = def_initial(mv->d), .idempotency_key = key,
                      .initial_ctx = ctxt->data, .initial_ctx_len = ctxt->len, .ts = ts,
                      .version = version, .has_version = true, .generated_id = !id};
    wal_record rec;
    rc = commit_text(e, WAL_T_CREATE_INSTANCE, text, &f, &rec, err);
    scratch_done(ctxt);
    scratch_done(text);
    if (rc != STM_OK) return rc;
    *res = create_result(id ? id : uuid, def_initial(mv->d), rec.offset);
    *seq = rec.seq;
    keep_batch_result(e, scope, key, *res);
    return STM_OK;
}

static stm_code op_get_instance(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    const char *id;
    instance *in = NULL;
    TRY(p_str(p, "instance_id", true, &id, err));
    TRY(find_live(e, id, &in, err));
    cJSON *r = cJSON_CreateObject();
    cJSON_AddItemToObject(r, "ctx", raw(in->ctx));
    if (in->last_event_id) cJSON_AddStringToObject(r, "last_event_id", in->last_event_id);
    add_u64(r, "last_wal_offset", in->last_offset);
    cJSON_AddStringToObject(r, "machine", in->m->name);
    cJSON_AddStringToObject(r, "state", in->state);
    add_u64(r, "version", in->mv->version);
    cJSON_AddNumberToObject(r, "created_at", (double)in->created_at);
    cJSON_AddNumberToObject(r, "updated_at", (double)in->updated_at);
    *seq = in->last_seq;
    *res = r;
    return STM_OK;
}

static uint64_t head_seq(eng *e)
{
    wal_stats st;
    wal_get_stats(e->w, &st);
    return st.entry_count;
}

static bool same_filter(const char *a, const char *b)
{
    return a ? b && strcmp(a, b) == 0 : !b;
}

/* A hint for this page (offset and filters), or NULL. */
static list_hint *list_hint_find(eng *e, const char *mname, const char *state, uint64_t offset)
{
    for (size_t i = 0; i < sizeof e->list_hints / sizeof e->list_hints[0]; i++) {
        list_hint *h = &e->list_hints[i];
        if (h->gen == e->list_gen && h->offset == offset && offset &&
            same_filter(h->machine, mname) && same_filter(h->state, state))
            return h;
    }
    return NULL;
}

static void list_hint_keep(eng *e, const char *mname, const char *state, uint64_t offset,
                           instance *at)
{
    list_hint *h = list_hint_find(e, mname, state, offset);
    if (!h) {
        h = &e->list_hints[e->list_hint_next++ % (sizeof e->list_hints / sizeof e->list_hints[0])];
        free(h->machine);
        free(h->state);
        h->machine = mname ? xstrdup(mname) : NULL;
        h->state = state ? xstrdup(state) : NULL;
    }
    h->gen = e->list_gen;
    h->offset = offset;
    h->at = at;
}

static stm_code op_list_instances(eng *e, const cJSON *p, cJSON **res, uint64_t *seq,
                                  stm_err *err)
{
    const char *mname, *state, *after;
    uint64_t limit = 100, offset = 0;
    bool has;
    TRY(p_str(p, "machine", false, &mname, err));
    TRY(p_str(p, "state", false, &state, err));
    TRY(p_str(p, "after", false, &after, err));
    TRY(p_uint(p, "limit", false, UINT32_MAX, &has, &limit, err));
    if (!has) limit = 100;
    TRY(p_uint(p, "offset", false, UINT32_MAX, &has, &offset, err));
    /* first, while nothing is counted yet: the pauses may let others in */
    bool may_pause = !e->atomic_batch;
    if (may_pause) inst_link_paced(e);
    cJSON *items = cJSON_CreateArray();
    uint64_t total = 0, returned = 0;
    size_t bytes = 0;
    /* Without a cursor the total is counted as instances come and go
     * (per machine and state), so the walk stops once the page is full:
     * counting it here walked every instance, 51 ms a page at 200,000 of
     * them with the engine locked. */
    bool counted = !after;
    uint64_t known = 0;
    if (counted && mname) {
        const machine *m = machine_find(e, mname);
        known = !m ? 0 : state ? machine_state_total(m, state) : m->n_instances;
    } else if (counted && state) {
        for (size_t b = 0; b < e->mtab_size; b++)
            for (const machine *m = e->mtab[b]; m; m = m->hnext)
                known += machine_state_total(m, state);
    } else if (counted) {
        known = e->n_instances;
    }
    bool full = counted && known <= offset;
    instance *start = full ? NULL : inst_after(e, after), *last = NULL;
    /* Paging by offset through the whole list walked every page from the
     * first instance: 26 ms a page deep in 200,000. Where the last page
     * ended is kept while nothing changes. */
    list_hint *hint = counted && !full ? list_hint_find(e, mname, state, offset) : NULL;
    if (hint) {
        start = hint->at;
        total = offset;
    }
    /* A long walk lets others take the lock now and then (inst_walk_next;
     * not inside an atomic batch, which holds it throughout): a GET beside
     * a LIST of 100,000 waited 219 ms. The page is then made of chunks,
     * each as it stood when it was read, and where it ended is kept only if
     * nothing changed meanwhile. */
    uint64_t gen0 = e->list_gen;
    char *cursor = NULL;
    inst_walk walk = {util_mono_ns(), 0, &cursor};
    for (instance *in = start; in; in = may_pause ? inst_walk_next(e, &walk, in) : in->next[0]) {
        bool match = !in->deleted && (!mname || strcmp(in->m->name, mname) == 0) &&
                     (!state || strcmp(in->state, state) == 0);
        if (match && ++total > offset) {
            if (returned >= limit || bytes > MAX_RESPONSE_BYTES) {
                if (counted) break;
            } else {
                cJSON *it = cJSON_CreateObject();
                cJSON_AddNumberToObject(it, "created_at", (double)in->created_at);
                cJSON_AddStringToObject(it, "id", in->id);
                add_u64(it, "last_wal_offset", in->last_offset);
                cJSON_AddStringToObject(it, "machine", in->m->name);
                cJSON_AddStringToObject(it, "state", in->state);
                cJSON_AddNumberToObject(it, "updated_at", (double)in->updated_at);
                add_u64(it, "version", in->mv->version);
                cJSON_AddItemToArray(items, it);
                bytes += 160 + strlen(in->id) + strlen(in->m->name) + strlen(in->state);
                returned++;
                last = in;
            }
        }
    }
    free(cursor);
    if (counted && e->list_gen == gen0 && last && offset + returned < known)
        list_hint_keep(e, mname, state, offset + returned, last->next[0]);
    if (counted) total = known;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddBoolToObject(r, "has_more", offset + returned < total);
    cJSON_AddItemToObject(r, "instances", items);
    add_u64(r, "total", total);
    /* The list depends on every record. Once the log has failed, no record
     * past the acknowledged ones will ever be durable, and memory holds
     * none of them (they were undone): the list depends on those alone. */
    *seq = e->failed ? eng_acked_seq(e) : head_seq(e);
    *res = r;
    return STM_OK;
}

static stm_code op_delete_instance(eng *e, const cJSON *p, cJSON **res, uint64_t *seq,
                                   stm_err *err)
{
    const char *id, *key;
    TRY(p_str(p, "instance_id", true, &id, err));
    TRY(p_str(p, "idempotency_key", false, &key, err));
    TRY(p_new_name(e, "idempotency_key", key, err));
    instance *in = inst_find(e, id);
    if (!in) return stm_fail(err, STM_INSTANCE_NOT_FOUND, "instance not found: %s", id);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddBoolToObject(r, "deleted", true);
    cJSON_AddStringToObject(r, "instance_id", id);
    if (in->deleted) {
        /* Deleting is naturally idempotent: the same answer, nothing written. */
        add_u64(r, "wal_offset", in->last_offset);
        *seq = in->last_seq;
        *res = r;
        return STM_OK;
    }
    cJSON *entry = cJSON_CreateObject();
    cJSON_AddStringToObject(entry, "type", "delete_instance");
    cJSON_AddStringToObject(entry, "instance_id", id);
    if (key) cJSON_AddStringToObject(entry, "idempotency_key", key);
    wal_record rec;
    stm_code rc = commit(e, WAL_T_DELETE_INSTANCE, entry, &rec, err);
    cJSON_Delete(entry);
    if (rc != STM_OK) {
        cJSON_Delete(r);
        return rc;
    }
    add_u64(r, "wal_offset", rec.offset);
    *seq = rec.seq;
    *res = r;
    return STM_OK;
}

/* Keys are literals added with cJSON's constant-key calls: every answer to
 * APPLY_EVENT is built here, and copying six keys was six allocations. */
static cJSON *apply_result(bool applied, const char *ctx_text, const cJSON *ctx_json,
                           const char *event_id, const char *from, const char *to,
                           uint64_t offset)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddItemToObjectCS(r, "applied", cJSON_CreateBool(applied));
    cJSON_AddItemToObjectCS(r, "ctx", ctx_text ? raw(ctx_text)
                                      : ctx_json ? cJSON_Duplicate(ctx_json, true)
                                                 : cJSON_CreateNull());
    if (event_id) cJSON_AddItemToObjectCS(r, "event_id", cJSON_CreateString(event_id));
    cJSON_AddItemToObjectCS(r, "from_state", cJSON_CreateString(from));
    cJSON_AddItemToObjectCS(r, "to_state", cJSON_CreateString(to));
    cJSON_AddItemToObjectCS(r, "wal_offset", cJSON_CreateNumber((double)offset));
    return r;
}

static stm_code op_apply_event(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    const char *id, *event, *expected_state, *event_id, *key;
    uint64_t expected_off;
    bool has_expected_off;
    instance *in = NULL;
    static const char *const names[] = {"instance_id", "event",    "expected_state",
                                        "expected_wal_offset", "event_id", "idempotency_key",
                                        "payload"};
    const cJSON *pv[7];
    pick(p, names, pv, 7);
    TRY(p_str_of(pv[0], "instance_id", true, &id, err));
    TRY(p_str_of(pv[1], "event", true, &event, err));
    TRY(p_str_of(pv[2], "expected_state", false, &expected_state, err));
    TRY(p_uint_of(pv[3], "expected_wal_offset", false, UINT64_MAX, &has_expected_off,
                  &expected_off, err));
    TRY(p_str_of(pv[4], "event_id", false, &event_id, err));
    TRY(p_str_of(pv[5], "idempotency_key", false, &key, err));
    TRY(p_new_name(e, "event_id", event_id, err));
    TRY(p_new_name(e, "idempotency_key", key, err));
    const cJSON *payload = pv[6];
    if (payload && !cJSON_IsNull(payload) && !cJSON_IsObject(payload))
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: payload must be a JSON object, not %s",
                        json_type_name(payload));
    if (payload && cJSON_IsNull(payload)) payload = NULL;
    TRY(find_live(e, id, &in, err));

    if (key) {
        idem_entry *k = idem_find(e, id, key);
        if (k) {
            buf pt = {0};
            json_write(&pt, payload, true);
            uint64_t fp = fingerprint(event, buf_cstr(&pt), NULL, NULL);
            buf_free(&pt);
            if (k->type != WAL_T_APPLY_EVENT || k->fingerprint != fp)
                return stm_fail(err, STM_CONFLICT,
                                "idempotency key '%s' was already used for a different request "
                                "on instance '%s'",
                                key, id);
            uint64_t kseq = k->seq, koff = k->offset;
            if (k->result) {
                cJSON *r = cJSON_Parse(k->result);
                cJSON_DeleteItemFromObjectCaseSensitive(r, "applied");
                cJSON_AddBoolToObject(r, "applied", false);
                *seq = kseq;
                *res = r;
                return STM_OK;
            }
            cJSON *entry = read_entry(e, koff, kseq, err);
            if (!entry) return err ? err->code : STM_WAL_IO_ERROR;
            const cJSON *f = json_get(entry, "from_state"), *t = json_get(entry, "to_state");
            const cJSON *eid = json_get(entry, "event_id");
            *res = apply_result(false, NULL, json_get(entry, "ctx"),
                                cJSON_IsString(eid) ? eid->valuestring : NULL,
                                cJSON_IsString(f) ? f->valuestring : "",
                                cJSON_IsString(t) ? t->valuestring : "", koff);
            cJSON_Delete(entry);
            *seq = kseq;
            return STM_OK;
        }
    }
    if (expected_state && strcmp(expected_state, in->state) != 0)
        return stm_fail(err, STM_CONFLICT, "state conflict: expected '%s', actual '%s'",
                        expected_state, in->state);
    if (has_expected_off && expected_off != in->last_offset)
        return stm_fail(err, STM_CONFLICT, "WAL offset conflict: expected %llu, actual %llu",
                        (unsigned long long)expected_off, (unsigned long long)in->last_offset);
    if (!in->mv->d)
        return stm_fail(err, STM_MACHINE_NOT_FOUND, "machine version not found: %s v%u",
                        in->m->name, in->mv->version);
    /* Guards read the stored context text; it is parsed only when a guard
     * needs what the text path does not decode. The merge and the entry are
     * written as text too. */
    size_t ctx_len = strlen(in->ctx);
    cJSON *ctx = NULL;
    stm_code why = STM_OK;
    const def_transition *failed = NULL;
    bool need_tree = false;
    const def_transition *t = def_find_text(in->mv->d, in->state, event, in->ctx, ctx_len,
                                            payload, &why, &failed, &need_tree);
    if (need_tree) {
        if (!(ctx = json_parse_trusted(in->ctx, ctx_len)))
            return stm_fail(err, STM_INTERNAL_ERROR, "stored context of %s is not JSON", id);
        t = def_find(in->mv->d, in->state, event, ctx, payload, &why, &failed);
    }
    if (!t) {
        cJSON_Delete(ctx);
        if (why == STM_GUARD_FAILED && failed)
            return stm_fail(err, STM_GUARD_FAILED,
                            "guard failed: guard failed for transition '%s' -> '%s' on event "
                            "'%s' (guard: %s)",
                            failed->from, failed->to, event,
                            failed->guard ? guard_source(failed->guard) : "");
        return stm_fail(err, STM_INVALID_TRANSITION,
                        "invalid transition: cannot apply '%s' in state '%s'", event, in->state);
    }
    buf *ptext = scratch(&e->op_payload), *ctext = scratch(&e->op_ctx);
    json_write(ptext, payload, true);
    /* Shallow merge: top-level payload keys replace or add (reference §6). */
    if (!payload || in->ctx[0] != '{') {
        buf_add(ctext, in->ctx, ctx_len);
    } else if (!json_merge_canonical(ctext, in->ctx, ctx_len, ptext->data, ptext->len)) {
        /* escaped keys: the tree does it */
        if (!ctx && !(ctx = json_parse_trusted(in->ctx, ctx_len)))
            return stm_fail(err, STM_INTERNAL_ERROR, "stored context of %s is not JSON", id);
        for (const cJSON *c = payload->child; c; c = c->next) {
            cJSON *dup = cJSON_Duplicate(c, true);
            if (json_get(ctx, c->string)) cJSON_ReplaceItemInObjectCaseSensitive(ctx, c->string, dup);
            else cJSON_AddItemToObject(ctx, c->string, dup);
        }
        json_write(ctext, ctx, true);
    }
    cJSON_Delete(ctx);
    const eng_limits *lim = &e->opts.limits;
    const char *over = NULL, *key_name = NULL;
    uint64_t max = 0;
    size_t n = 0;
    if (lim->max_payload_bytes && ptext->len > lim->max_payload_bytes)
        over = "the payload", key_name = "max_payload_bytes", max = lim->max_payload_bytes,
        n = ptext->len;
    else if (lim->max_ctx_bytes && ctext->len > lim->max_ctx_bytes)
        over = "the merged context", key_name = "max_ctx_bytes", max = lim->max_ctx_bytes,
        n = ctext->len;
    if (over) {
        /* the guard and merge ran on it already: cheap next to an fsync,
         * and the context's size is only known after the merge */
        scratch_done(ptext);
        scratch_done(ctext);
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: %s would be %zu bytes as compact JSON, over "
                        "limits.%s (%llu)",
                        over, n, key_name, (unsigned long long)max);
    }
    /* The entry in canonical key order, as json_write would sort it. */
    const char *from = t->from, *to = t->to;
    buf *text = scratch(&e->op_entry);
    buf_reserve(text, ctext->len + ptext->len + strlen(id) + 256);
    buf_puts(text, "{\"ctx\":");
    buf_add(text, ctext->data, ctext->len);
    buf_puts(text, ",\"event\":");
    json_write_str(text, event);
    if (event_id) {
        buf_puts(text, ",\"event_id\":");
        json_write_str(text, event_id);
    }
    buf_puts(text, ",\"from_state\":");
    json_write_str(text, from);
    if (key) {
        buf_puts(text, ",\"idempotency_key\":");
        json_write_str(text, key);
    }
    buf_puts(text, ",\"instance_id\":");
    json_write_str(text, id);
    buf_puts(text, ",\"payload\":");
    buf_add(text, ptext->data, ptext->len);
    buf_puts(text, ",\"to_state\":");
    json_write_str(text, to);
    int64_t ts = stamp(e, text);
    buf_puts(text, ",\"type\":\"apply_event\"}");
    /* what replay would read back from the text, as the text was made */
    entry_fields f = {.instance_id = id, .event = event, .from_state = from, .to_state = to,
                      .event_id = event_id, .idempotency_key = key, .payload = ptext->data,
                      .payload_len = ptext->len, .ctx = ctext->data, .ctx_len = ctext->len, .ts = ts,
                      .inst = in};
    wal_record rec;
    stm_code rc = commit_text(e, WAL_T_APPLY_EVENT, text, &f, &rec, err);
    scratch_done(text);
    scratch_done(ptext);
    scratch_done(ctext);
    if (rc == STM_OK) {
        /* from and to belong to the machine version's definition, which
         * lives as long as the engine */
        *res = apply_result(true, in->ctx, NULL, event_id, from, to, rec.offset);
        *seq = rec.seq;
        keep_batch_result(e, id, key, *res);
    }
    return rc;
}

/* ---- snapshots and the log ---------------------------------------------- */

static stm_code op_wal_read(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    uint64_t from, limit = UINT64_MAX;
    bool has;
    const cJSON *fv = json_get(p, "from_offset");
    if (!json_get_uint(fv, UINT64_MAX, &from))
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid request: missing from_offset (a whole number; 0 = the start)");
    TRY(p_uint(p, "limit", false, UINT64_MAX, &has, &limit, err));
    if (!has) limit = UINT64_MAX;
    uint64_t acked = eng_acked_seq(e);
    wal_iter *it;
    TRY(wal_iter_open(e->w, from, false, &it, err));
    cJSON *records = cJSON_CreateArray();
    uint64_t n = 0, last = 0;
    size_t bytes = 0;
    wal_record rec;
    int r = 0;
    buf text = {0};
    while (n < limit && bytes < MAX_RESPONSE_BYTES && (r = wal_iter_next(it, &rec, err)) == 1) {
        if (rec.seq > acked) break; /* not durable yet: not visible */
        cJSON *entry = json_parse(rec.payload, rec.len, NULL);
        buf_reset(&text);
        json_write(&text, entry, true);
        cJSON_Delete(entry);
        if (n > 0 && bytes + text.len + 64 > MAX_RESPONSE_BYTES) break;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "entry", raw(buf_cstr(&text)));
        add_u64(o, "offset", rec.offset);
        add_u64(o, "sequence", rec.seq);
        cJSON_AddItemToArray(records, o);
        bytes += text.len + 64;
        last = rec.offset;
        n++;
    }
    buf_free(&text);
    wal_iter_close(it);
    if (r < 0) {
        cJSON_Delete(records);
        return err->code;
    }
    cJSON *rs = cJSON_CreateObject();
    if (n) add_u64(rs, "next_offset", last + 1);
    else cJSON_AddNullToObject(rs, "next_offset");
    cJSON_AddItemToObject(rs, "records", records);
    *seq = 0;
    *res = rs;
    return STM_OK;
}

static stm_code op_wal_stats(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    (void)p;
    (void)err;
    wal_stats st;
    wal_get_stats(e->w, &st);
    cJSON *r = cJSON_CreateObject();
    add_u64(r, "entry_count", st.entry_count);
    cJSON *io = cJSON_CreateObject();
    add_u64(io, "bytes_read", st.bytes_read);
    add_u64(io, "bytes_written", st.bytes_written);
    add_u64(io, "fsyncs", st.fsyncs);
    add_u64(io, "reads", st.reads);
    add_u64(io, "writes", st.writes);
    cJSON_AddItemToObject(r, "io_stats", io);
    add_u64(r, "latest_offset", st.latest_offset);
    add_u64(r, "segment_count", st.segment_count);
    add_u64(r, "total_size_bytes", st.total_size_bytes);
    char hex[65];
    wal_hex(st.head_chain, hex);
    cJSON_AddStringToObject(r, "head_chain", hex);
    *seq = 0;
    *res = r;
    return STM_OK;
}

/* ---- dispatch ----------------------------------------------------------- */

stm_code snap_instance(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err);
stm_code snap_compact(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err);

static const struct {
    const char *name;
    op_fn fn;
    bool locked; /* needs the engine lock */
} ops[] = {
    {"PUT_MACHINE", op_put_machine, true},
    {"GET_MACHINE", op_get_machine, true},
    {"LIST_MACHINES", op_list_machines, true},
    {"CREATE_INSTANCE", op_create_instance, true},
    {"GET_INSTANCE", op_get_instance, true},
    {"LIST_INSTANCES", op_list_instances, true},
    {"DELETE_INSTANCE", op_delete_instance, true},
    {"APPLY_EVENT", op_apply_event, true},
    {"SNAPSHOT_INSTANCE", snap_instance, true},
    {"WAL_READ", op_wal_read, false},
    {"WAL_STATS", op_wal_stats, false},
    {"COMPACT", snap_compact, false},
};

op_fn ops_lookup(const char *op, bool *locked)
{
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(ops[i].name, op) == 0) {
            if (locked) *locked = ops[i].locked;
            return ops[i].fn;
        }
    return NULL;
}

bool eng_is_engine_op(const char *op)
{
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(ops[i].name, op) == 0) return true;
    return false;
}

stm_code ops_call(eng *e, const char *op, const cJSON *params, cJSON **result, uint64_t *seq,
                  stm_err *err)
{
    *result = NULL;
    *seq = 0;
    if (params && !cJSON_IsNull(params) && !cJSON_IsObject(params))
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: params must be an object");
    static const cJSON empty = {.type = cJSON_Object};
    if (!params || cJSON_IsNull(params)) params = &empty;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        if (strcmp(ops[i].name, op) != 0) continue;
        if (!ops[i].locked) return ops[i].fn(e, params, result, seq, err);
        pthread_mutex_lock(&e->lock);
        eng_take_failure_locked(e);
        uint64_t before = e->applied_seq;
        stm_code rc = ops[i].fn(e, params, result, seq, err);
        uint64_t after = e->applied_seq;
        pthread_mutex_unlock(&e->lock);
        if (after > before) eng_feed_catch_up(e, after);
        return rc;
    }
    return stm_fail(err, STM_BAD_REQUEST, "invalid request: unknown operation '%s'", op);
}

stm_code eng_call(eng *e, const char *op, const cJSON *params, cJSON **result, uint64_t *seq,
                  stm_err *err)
{
    return ops_call(e, op, params, result, seq, err);
}
