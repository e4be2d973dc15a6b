/*
 * atomic.c - undoing changes to the model in memory: the rehearsal of an
 * atomic BATCH, and the records a failed WAL never made durable.
 *
 * BATCH in atomic mode: all of it or none of it. The batch is first
 * rehearsed under the engine lock with nothing written (eng_write skips the
 * WAL while dry_run is set) while eng_apply_record notes how to undo each
 * change. The rehearsal is then undone, whatever happened. If every op
 * succeeded, the batch runs for real, still under the same lock, so it
 * meets exactly the state it was rehearsed on; its records carry a
 * countdown ("txn") so that recovery drops a batch torn by a crash.
 *
 * A failed WAL. A record is applied to memory as soon as it is appended
 * (the WAL order is the apply order) and becomes durable later; readers are
 * held back until it is (eng_wait). When a write or fdatasync fails, the
 * WAL cuts the records that were not acknowledged and takes no more: they
 * never happened. So memory must forget them too, or every read of what
 * they touched (an instance, LIST_INSTANCES) waits for a record that will
 * never be durable and fails. Each live record therefore leaves the same
 * undo notes as a rehearsal, in a log ordered like the WAL, kept until the
 * record is acknowledged; on the failure, eng_apply_record's changes of
 * every record past the acknowledged mark are undone, newest first, under
 * the engine lock (undo_unacked), and the model is exactly what a restart
 * would rebuild from the log. Undoing beats the alternative of reads
 * falling back to an older version: that would need the same old versions
 * kept, plus a second code path in every read, and the model would stay
 * wrong for writes and compaction. The notes cost little: an event's note
 * takes the old context's buffer over instead of copying it, and a note is
 * freed once its record is acknowledged (at the next write).
 *
 * The records of an atomic batch are undone together: recovery drops a
 * batch whose last record is missing, so its notes are kept until that
 * last record is acknowledged.
 */
#include "engine/internal.h"

#include <stdlib.h>
#include <string.h>

enum undo_kind {
    U_RECORD, /* a live record: the figures eng_write changes */
    U_NEW_INSTANCE,
    U_SAVE_INSTANCE,
    U_NEW_VERSION,
    U_NEW_KEY,
    U_EVICTED_KEY /* a key idem_put forgot to make room (live only) */
};

struct undo {
    enum undo_kind kind;
    uint64_t seq;  /* live: the record's sequence */
    uint64_t upto; /* live: the sequence that must be acknowledged before
                      the note can go (the last record of its batch) */
    instance *in;
    machine *m;
    mversion *mv;
    bool machine_is_new, filled_placeholder;
    idem_entry *k, *prev_tail;
    /* saved instance fields; ctx and last_event_id only with has_ctx */
    bool has_ctx;
    const char *state;
    char *ctx, *last_event_id;
    uint64_t last_offset, last_seq, hist_bytes;
    int64_t updated_at;
    uint32_t n_hist;
    bool deleted;
    /* U_RECORD: what it added to the entries file's figures (compaction may
     * move them meanwhile: they are taken back, not set), the sequence
     * those figures ended with and the applied mark before it */
    uint64_t entries_bytes, entries_count, entries_seq, applied_offset, applied_seq;
    size_t n_eidx;
};

static struct undo *push(eng *e, enum undo_kind kind)
{
    struct undo *u;
    if (e->dry_run) {
        if (e->n_undo == e->cap_undo) {
            e->cap_undo = e->cap_undo ? e->cap_undo * 2 : 16;
            e->undo = xrealloc(e->undo, e->cap_undo * sizeof *e->undo);
        }
        u = &e->undo[e->n_undo++];
        memset(u, 0, sizeof *u);
    } else {
        if (e->n_live == e->cap_live) {
            if (e->live_head > e->n_live / 2) {
                /* most of it was freed: slide the rest down */
                memmove(e->live, e->live + e->live_head,
                        (e->n_live - e->live_head) * sizeof *e->live);
                e->n_live -= e->live_head;
                e->live_head = 0;
            } else {
                e->cap_live = e->cap_live ? e->cap_live * 2 : 64;
                e->live = xrealloc(e->live, e->cap_live * sizeof *e->live);
            }
        }
        u = &e->live[e->n_live++];
        memset(u, 0, sizeof *u);
        u->seq = e->live_seq;
        u->upto = e->txn_total ? UINT64_MAX : e->live_seq;
    }
    u->kind = kind;
    return u;
}

/* The note's own memory, once it will not be undone. */
static void release(struct undo *u)
{
    if (u->kind == U_SAVE_INSTANCE && u->has_ctx) {
        free(u->ctx);
        free(u->last_event_id);
    } else if (u->kind == U_EVICTED_KEY) {
        free(u->k->result);
        free(u->k->scope);
        free(u->k->key);
        free(u->k);
    }
}

void undo_record(eng *e, const wal_record *rec, uint64_t bytes, uint64_t count, size_t eidx,
                 uint64_t entries_seq)
{
    /* the notes of acknowledged records first: they will not be needed */
    uint64_t acked = eng_acked_seq(e);
    while (e->live_head < e->n_live && e->live[e->live_head].upto <= acked)
        release(&e->live[e->live_head++]);
    if (e->live_head == e->n_live) e->live_head = e->n_live = 0;
    e->live_seq = rec->seq;
    struct undo *u = push(e, U_RECORD);
    u->entries_bytes = bytes;
    u->entries_count = count;
    u->entries_seq = entries_seq;
    u->n_eidx = eidx;
    u->applied_offset = e->applied_offset;
    u->applied_seq = e->applied_seq;
}

void undo_new_instance(eng *e, instance *in)
{
    push(e, U_NEW_INSTANCE)->in = in;
}

void undo_save_instance(eng *e, instance *in, bool ctx)
{
    struct undo *u = push(e, U_SAVE_INSTANCE);
    u->in = in;
    u->state = in->state;
    if (ctx) {
        /* taken over, not copied: the caller gives the instance new ones */
        u->has_ctx = true;
        u->ctx = in->ctx;
        u->last_event_id = in->last_event_id;
        in->ctx = NULL;
        in->last_event_id = NULL;
    }
    u->last_offset = in->last_offset;
    u->last_seq = in->last_seq;
    u->updated_at = in->updated_at;
    u->n_hist = in->n_hist;
    u->hist_bytes = in->hist_bytes;
    u->deleted = in->deleted;
}

void undo_new_version(eng *e, machine *m, mversion *have, bool machine_is_new)
{
    struct undo *u = push(e, U_NEW_VERSION);
    u->m = m;
    u->mv = have;
    u->filled_placeholder = have != NULL;
    u->machine_is_new = machine_is_new;
}

void undo_set_version(eng *e, mversion *mv)
{
    if (e->dry_run)
        e->undo[e->n_undo - 1].mv = mv;
    else
        e->live[e->n_live - 1].mv = mv;
}

void undo_new_key(eng *e, idem_entry *k, idem_entry *prev_tail)
{
    struct undo *u = push(e, U_NEW_KEY);
    u->k = k;
    u->prev_tail = prev_tail;
}

void undo_evicted_key(eng *e, idem_entry *k)
{
    push(e, U_EVICTED_KEY)->k = k;
}

static void remove_instance(eng *e, instance *in)
{
    inst_unhash(e, in);
    if (!in->linked) {
        /* added since the last walk: still in the list of those, near its end */
        for (size_t k = e->n_unlinked; k-- > 0;)
            if (e->unlinked[k] == in) {
                memmove(&e->unlinked[k], &e->unlinked[k + 1],
                        (e->n_unlinked - k - 1) * sizeof *e->unlinked);
                inst_unlinked_set(e, e->n_unlinked - 1);
                break;
            }
    } else {
        instance *x = e->head;
        for (int i = e->skip_level - 1; i >= 0; i--) {
            while (x->next[i] && x->next[i] != in && strcmp(x->next[i]->id, in->id) < 0)
                x = x->next[i];
            if (x->next[i] == in) x->next[i] = in->next[i];
        }
    }
    inst_count(e, in, -1);
    free_instance(in);
}

static void remove_machine(eng *e, machine *m)
{
    for (size_t b = 0; b < e->mtab_size; b++)
        for (machine **p = &e->mtab[b]; *p; p = &(*p)->hnext)
            if (*p == m) {
                *p = m->hnext;
                free(m->versions);
                free(m->by_state);
                free(m->name);
                free(m);
                e->n_machines--;
                return;
            }
}

/* Undoes one note; notes are undone newest first. */
static void undo_one(eng *e, struct undo *u)
{
    e->list_gen++; /* may free an instance a list hint points at */
    switch (u->kind) {
    case U_RECORD:
        e->entries_bytes -= u->entries_bytes;
        e->entries_count -= u->entries_count;
        e->entries_seq = u->entries_seq;
        e->n_eidx -= u->n_eidx;
        e->applied_offset = u->applied_offset;
        e->applied_seq = u->applied_seq;
        break;
    case U_NEW_INSTANCE:
        remove_instance(e, u->in);
        break;
    case U_SAVE_INSTANCE: {
        instance *in = u->in;
        if (u->has_ctx) {
            free(in->ctx);
            free(in->last_event_id);
            in->ctx = u->ctx;
            in->last_event_id = u->last_event_id;
        }
        inst_count(e, in, -1);
        in->state = u->state;
        in->last_offset = u->last_offset;
        in->last_seq = u->last_seq;
        in->updated_at = u->updated_at;
        in->n_hist = u->n_hist;
        in->hist_bytes = u->hist_bytes;
        in->deleted = u->deleted;
        inst_count(e, in, +1);
        break;
    }
    case U_NEW_VERSION: {
        mversion *mv = u->mv;
        if (!mv) break;
        def_free(mv->d);
        free(mv->submitted);
        mv->d = NULL;
        mv->submitted = NULL;
        e->n_versions--;
        if (!u->filled_placeholder) {
            machine *m = u->m;
            for (size_t i = 0; i < m->n_versions; i++)
                if (m->versions[i] == mv) {
                    memmove(m->versions + i, m->versions + i + 1,
                            (m->n_versions - i - 1) * sizeof *m->versions);
                    m->n_versions--;
                    break;
                }
            free(mv);
            if (u->machine_is_new && m->n_versions == 0) remove_machine(e, m);
        }
        break;
    }
    case U_NEW_KEY: {
        /* newest first, so it is the FIFO's tail again, after prev_tail */
        idem_entry *k = u->k;
        idem_unlink(e, k);
        if (u->prev_tail)
            u->prev_tail->fifo_next = NULL;
        else
            e->fifo_head = NULL;
        e->fifo_tail = u->prev_tail;
        free(k->result);
        free(k->scope);
        free(k->key);
        free(k);
        break;
    }
    case U_EVICTED_KEY: {
        /* back at the FIFO's head, where it was taken from */
        idem_entry *k = u->k;
        k->fifo_next = e->fifo_head;
        e->fifo_head = k;
        if (!e->fifo_tail) e->fifo_tail = k;
        idem_link(e, k);
        break;
    }
    }
}

static void undo_all(eng *e)
{
    while (e->n_undo)
        undo_one(e, &e->undo[--e->n_undo]);
}

size_t undo_unacked(eng *e, uint64_t acked)
{
    size_t n = 0;
    while (e->n_live > e->live_head && e->live[e->n_live - 1].upto > acked) {
        struct undo *u = &e->live[--e->n_live];
        n += u->kind == U_RECORD;
        undo_one(e, u);
    }
    return n;
}

void undo_free_all(eng *e)
{
    for (size_t i = e->live_head; i < e->n_live; i++)
        release(&e->live[i]);
    free(e->live);
    e->live = NULL;
    e->live_head = e->n_live = e->cap_live = 0;
    free(e->undo);
    e->undo = NULL;
}

static void free_results(cJSON **results, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cJSON_Delete(results[i]);
        results[i] = NULL;
    }
}

stm_code eng_call_atomic(eng *e, size_t n, const char *const *ops, const cJSON *const *params,
                         cJSON **results, uint64_t *seq, size_t *failed_index, stm_err *err)
{
    *seq = 0;
    for (size_t i = 0; i < n; i++) {
        results[i] = NULL;
        bool locked;
        if (!ops_lookup(ops[i], &locked) || !locked) {
            if (failed_index) *failed_index = i;
            return stm_fail(err, STM_BAD_REQUEST,
                            "invalid request: op %zu (%s) cannot be part of an atomic batch", i,
                            ops[i]);
        }
    }
    static const cJSON empty = {.type = cJSON_Object};
    pthread_mutex_lock(&e->lock);
    uint64_t before = e->applied_seq;
    e->atomic_batch = true;
    e->dry_run = true;
    e->txn_written = 0;
    stm_code rc = STM_OK;
    uint64_t s;
    for (size_t i = 0; i < n && rc == STM_OK; i++) {
        const cJSON *p = params[i] && !cJSON_IsNull(params[i]) ? params[i] : &empty;
        if (!cJSON_IsObject(p)) rc = stm_fail(err, STM_BAD_REQUEST, "invalid request: params must be an object");
        else rc = ops_lookup(ops[i], NULL)(e, p, &results[i], &s, err);
        if (rc != STM_OK && failed_index) *failed_index = i;
    }
    uint64_t records = e->txn_written;
    undo_all(e);
    e->dry_run = false;
    free_results(results, n);
    if (rc == STM_OK) {
        e->txn_total = records;
        e->txn_written = 0;
        for (size_t i = 0; i < n && rc == STM_OK; i++) {
            const cJSON *p = params[i] && !cJSON_IsNull(params[i]) ? params[i] : &empty;
            rc = ops_lookup(ops[i], NULL)(e, p, &results[i], &s, err);
            if (rc == STM_OK && s > *seq) *seq = s;
            if (rc != STM_OK && failed_index) *failed_index = i;
        }
        e->txn_total = 0;
        /* The batch's notes go once its last record is acknowledged; if it
         * failed half way (only the log failing can do that after a good
         * rehearsal), they stay until the failure undoes them. */
        if (rc == STM_OK)
            for (size_t i = e->n_live; i-- > e->live_head && e->live[i].upto == UINT64_MAX;)
                e->live[i].upto = e->live_seq;
        if (rc != STM_OK) free_results(results, n);
    }
    e->atomic_batch = false;
    uint64_t after = e->applied_seq;
    pthread_mutex_unlock(&e->lock);
    if (after > before) eng_feed_catch_up(e, after);
    return rc;
}
