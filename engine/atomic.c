/*
 * atomic.c - BATCH in atomic mode: all of it or none of it.
 *
 * The batch is first rehearsed under the engine lock with nothing written
 * (eng_write skips the WAL while dry_run is set) while eng_apply_record
 * notes how to undo each change. The rehearsal is then undone, whatever
 * happened. If every op succeeded, the batch runs for real, still under the
 * same lock, so it meets exactly the state it was rehearsed on; its records
 * carry a countdown ("txn") so that recovery drops a batch torn by a crash.
 */
#include "engine/internal.h"

#include <stdlib.h>
#include <string.h>

enum undo_kind { U_NEW_INSTANCE, U_SAVE_INSTANCE, U_NEW_VERSION, U_NEW_KEY };

struct undo {
    enum undo_kind kind;
    instance *in;
    machine *m;
    mversion *mv;
    bool machine_is_new, filled_placeholder;
    idem_entry *k;
    /* saved instance fields */
    const char *state;
    char *ctx, *last_event_id;
    uint64_t last_offset, last_seq, hist_bytes;
    int64_t updated_at;
    uint32_t n_hist;
    bool deleted;
};

static struct undo *push(eng *e, enum undo_kind kind)
{
    if (e->n_undo == e->cap_undo) {
        e->cap_undo = e->cap_undo ? e->cap_undo * 2 : 16;
        e->undo = xrealloc(e->undo, e->cap_undo * sizeof *e->undo);
    }
    struct undo *u = &e->undo[e->n_undo++];
    memset(u, 0, sizeof *u);
    u->kind = kind;
    return u;
}

void undo_new_instance(eng *e, instance *in)
{
    push(e, U_NEW_INSTANCE)->in = in;
}

void undo_save_instance(eng *e, instance *in)
{
    struct undo *u = push(e, U_SAVE_INSTANCE);
    u->in = in;
    u->state = in->state;
    u->ctx = xstrdup(in->ctx);
    u->last_event_id = in->last_event_id ? xstrdup(in->last_event_id) : NULL;
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
    e->undo[e->n_undo - 1].mv = mv;
}

void undo_new_key(eng *e, idem_entry *k)
{
    push(e, U_NEW_KEY)->k = k;
}

static void remove_instance(eng *e, instance *in)
{
    instance **p = &e->itab[0];
    for (size_t b = 0; b < e->itab_size; b++)
        for (p = &e->itab[b]; *p; p = &(*p)->hnext)
            if (*p == in) {
                *p = in->hnext;
                goto unlinked;
            }
unlinked:;
    instance *x = e->head;
    for (int i = e->skip_level - 1; i >= 0; i--) {
        while (x->next[i] && x->next[i] != in && strcmp(x->next[i]->id, in->id) < 0)
            x = x->next[i];
        if (x->next[i] == in) x->next[i] = in->next[i];
    }
    if (in->deleted) e->n_deleted--;
    else e->n_instances--;
    free_instance(in);
}

static void remove_machine(eng *e, machine *m)
{
    for (size_t b = 0; b < e->mtab_size; b++)
        for (machine **p = &e->mtab[b]; *p; p = &(*p)->hnext)
            if (*p == m) {
                *p = m->hnext;
                free(m->versions);
                free(m->name);
                free(m);
                e->n_machines--;
                return;
            }
}

static void undo_all(eng *e)
{
    while (e->n_undo) {
        struct undo *u = &e->undo[--e->n_undo];
        switch (u->kind) {
        case U_NEW_INSTANCE: remove_instance(e, u->in); break;
        case U_SAVE_INSTANCE: {
            instance *in = u->in;
            free(in->ctx);
            free(in->last_event_id);
            in->state = u->state;
            in->ctx = u->ctx;
            in->last_event_id = u->last_event_id;
            in->last_offset = u->last_offset;
            in->last_seq = u->last_seq;
            in->updated_at = u->updated_at;
            in->n_hist = u->n_hist;
            in->hist_bytes = u->hist_bytes;
            if (in->deleted != u->deleted) {
                in->deleted = u->deleted;
                if (in->deleted) {
                    e->n_instances--;
                    e->n_deleted++;
                } else {
                    e->n_instances++;
                    e->n_deleted--;
                }
            }
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
            idem_entry *k = u->k;
            idem_unlink(e, k);
            /* it is the FIFO's tail: the rehearsal never evicts */
            idem_entry *prev = NULL;
            for (idem_entry *x = e->fifo_head; x && x != k; x = x->fifo_next) prev = x;
            if (prev) prev->fifo_next = NULL;
            else e->fifo_head = NULL;
            e->fifo_tail = prev;
            free(k->result);
            free(k->scope);
            free(k->key);
            free(k);
            break;
        }
        }
    }
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
        if (rc != STM_OK) free_results(results, n);
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}
