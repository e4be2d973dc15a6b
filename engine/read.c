/*
 * read.c - typed reads for the mount: views, listings, definitions, history
 * and the entries file, without a JSON round trip.
 *
 * History and entries are rendered from the WAL records on demand; memory
 * keeps only each line's length (history) or a sparse byte index (entries),
 * so the files' sizes are exact and any byte range is found quickly. Lines
 * are only rendered once their records are durable.
 */
#include "engine/internal.h"

#include <stdlib.h>
#include <string.h>

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

/* Deleted instances are not listed or found. After a WAL failure the model
 * holds only acknowledged records (the others are undone when the log
 * fails, atomic.c), so what is here is what a reader may see once its
 * record is durable. */
static bool gone(const instance *in)
{
    return in->deleted;
}

stm_code eng_get_instance_view(eng *e, const char *id, bool include_deleted,
                               eng_instance_view *v, stm_err *err)
{
    memset(v, 0, sizeof *v);
    pthread_mutex_lock(&e->lock);
    eng_take_failure_locked(e); /* never show what a failed log will not keep */
    instance *in = inst_find(e, id);
    if (!in || (gone(in) && !include_deleted)) {
        pthread_mutex_unlock(&e->lock);
        return stm_fail(err, STM_INSTANCE_NOT_FOUND, "instance not found: %s", id);
    }
    v->id = xstrdup(in->id);
    v->machine = xstrdup(in->m->name);
    v->state = xstrdup(in->state);
    v->version = in->mv->version;
    v->ctx_json = xstrdup(in->ctx);
    v->last_event_id = dup_or_null(in->last_event_id);
    v->last_wal_offset = in->last_offset;
    v->created_at = in->created_at;
    v->updated_at = in->updated_at;
    v->deleted = in->deleted;
    v->history_lines = in->n_hist;
    v->history_bytes = in->hist_bytes;
    v->seq = in->last_seq;
    pthread_mutex_unlock(&e->lock);
    return STM_OK;
}

void eng_instance_view_free(eng_instance_view *v)
{
    free(v->id);
    free(v->machine);
    free(v->state);
    free(v->ctx_json);
    free(v->last_event_id);
    memset(v, 0, sizeof *v);
}

size_t eng_list_instance_ids(eng *e, const char *machine, const char *after, size_t max,
                             bool (*fn)(void *, const char *), void *arg)
{
    /* Ids are copied out in chunks so fn never runs under the engine lock,
     * and a chunk looks at no more than SCAN instances with it held: the
     * few instances of one machine among 200,000 of another were found in
     * one 50 ms walk that every writer waited for. */
    enum { CHUNK = 256, SCAN = 4096 };
    char *ids[CHUNK];
    size_t visited = 0;
    char *cursor = after ? xstrdup(after) : NULL;
    for (;;) {
        size_t n = 0, scanned = 0;
        pthread_mutex_lock(&e->lock);
        inst_link_paced(e);
        const struct machine *m = machine ? machine_find(e, machine) : NULL;
        /* a machine with no live instance has nothing to find (a count of
         * those found so far could end early: deletes during the walk) */
        bool end = machine && (!m || m->n_instances == 0);
        instance *in = end ? NULL : inst_after(e, cursor), *last = NULL;
        for (; in && n < CHUNK && visited + n < max && scanned < SCAN; in = in->next[0]) {
            scanned++;
            last = in;
            if (gone(in)) continue;
            if (machine && strcmp(in->m->name, machine) != 0) continue;
            ids[n++] = xstrdup(in->id);
        }
        end = end || in == NULL;
        free(cursor);
        cursor = last ? xstrdup(last->id) : NULL;
        pthread_mutex_unlock(&e->lock);
        bool stop = false;
        for (size_t i = 0; i < n; i++)
            if (!stop) {
                visited++;
                stop = !fn(arg, ids[i]);
            }
        for (size_t i = 0; i < n; i++) free(ids[i]);
        if (stop || end || !last || visited >= max) break;
        lock_pause();
    }
    free(cursor);
    return visited;
}

uint64_t eng_instance_count(eng *e)
{
    pthread_mutex_lock(&e->lock);
    uint64_t n = e->n_instances;
    pthread_mutex_unlock(&e->lock);
    return n;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

size_t eng_list_machines(eng *e, bool (*fn)(void *, const char *), void *arg)
{
    pthread_mutex_lock(&e->lock);
    char **names = xmalloc((e->n_machines + 1) * sizeof *names);
    size_t n = 0;
    for (size_t i = 0; i < e->mtab_size; i++)
        for (machine *m = e->mtab[i]; m; m = m->hnext)
            for (size_t j = 0; j < m->n_versions; j++)
                if (m->versions[j]->d) {
                    names[n++] = xstrdup(m->name);
                    break;
                }
    pthread_mutex_unlock(&e->lock);
    qsort(names, n, sizeof *names, cmp_str);
    size_t visited = 0;
    bool go = true;
    for (size_t i = 0; i < n; i++) {
        if (go) {
            visited++;
            go = fn(arg, names[i]);
        }
        free(names[i]);
    }
    free(names);
    return visited;
}

size_t eng_machine_versions(eng *e, const char *name, uint32_t *out, size_t max)
{
    pthread_mutex_lock(&e->lock);
    machine *m = machine_find(e, name);
    size_t n = 0;
    if (m)
        for (size_t i = 0; i < m->n_versions; i++) {
            if (!m->versions[i]->d) continue;
            if (n < max) out[n] = m->versions[i]->version;
            n++;
        }
    pthread_mutex_unlock(&e->lock);
    return n;
}

stm_code eng_machine_latest(eng *e, const char *name, uint32_t *version, stm_err *err)
{
    pthread_mutex_lock(&e->lock);
    machine *m = machine_find(e, name);
    bool found = false;
    if (m)
        for (size_t i = m->n_versions; i-- > 0;)
            if (m->versions[i]->d) {
                *version = m->versions[i]->version;
                found = true;
                break;
            }
    pthread_mutex_unlock(&e->lock);
    if (!found) return stm_fail(err, STM_MACHINE_NOT_FOUND, "machine not found: %s", name);
    return STM_OK;
}

stm_code eng_machine_text(eng *e, const char *name, uint32_t version, enum eng_def_format fmt,
                          buf *out, int64_t *mtime_ms, stm_err *err)
{
    pthread_mutex_lock(&e->lock);
    mversion *mv = mversion_find(machine_find(e, name), version);
    if (!mv || !mv->d) {
        pthread_mutex_unlock(&e->lock);
        return stm_fail(err, STM_MACHINE_NOT_FOUND, "machine version not found: %s v%u", name,
                        version);
    }
    switch (fmt) {
    case ENG_DEF_JSON: def_write_json(mv->d, out, true); break;
    case ENG_DEF_YAML: def_write_yaml(mv->d, out); break;
    case ENG_DEF_DOT: def_write_dot(mv->d, name, version, out); break;
    }
    if (mtime_ms) *mtime_ms = mv->created_at;
    uint64_t seq = mv->seq;
    pthread_mutex_unlock(&e->lock);
    /* a version still on its way to the disk is not shown yet */
    return eng_wait(e, seq, err);
}

stm_code eng_allowed_events(eng *e, const char *id, buf *out, uint64_t *seq, stm_err *err)
{
    pthread_mutex_lock(&e->lock);
    instance *in = inst_find(e, id);
    if (!in || in->deleted) {
        pthread_mutex_unlock(&e->lock);
        return stm_fail(err, STM_INSTANCE_NOT_FOUND, "instance not found: %s", id);
    }
    if (in->mv->d) {
        const char *evs[256];
        size_t n = def_events_from(in->mv->d, in->state, evs, 256);
        for (size_t i = 0; i < n && i < 256; i++) {
            buf_puts(out, evs[i]);
            buf_putc(out, '\n');
        }
    }
    if (seq) *seq = in->last_seq;
    pthread_mutex_unlock(&e->lock);
    return STM_OK;
}

/* Reads one record and renders its line with fn; false when unreadable. */
static bool read_record(eng *e, uint64_t offset, buf *payload, wal_record *rec, buf *store,
                        entry_fields *f, stm_err *err)
{
    if (wal_read_at(e->w, offset, payload, rec, err) != STM_OK) return false;
    if (entry_scan(payload->data, payload->len, store, f)) return true;
    stm_fail(err, STM_WAL_IO_ERROR, "the WAL record at offset %llu is not JSON",
             (unsigned long long)offset);
    return false;
}

stm_code eng_history_read(eng *e, const char *id, uint64_t from, size_t max, buf *out,
                          uint64_t *total_bytes, stm_err *err)
{
    pthread_mutex_lock(&e->lock);
    eng_take_failure_locked(e);
    instance *in = inst_find(e, id);
    if (!in) {
        pthread_mutex_unlock(&e->lock);
        return stm_fail(err, STM_INSTANCE_NOT_FOUND, "instance not found: %s", id);
    }
    if (total_bytes) *total_bytes = in->hist_bytes;
    /* Copy the entries that overlap the range, then read without the lock. */
    uint64_t pos = 0;
    uint32_t i = 0;
    while (i < in->n_hist && pos + in->hist[i].line_len <= from) pos += in->hist[i++].line_len;
    uint32_t j = i;
    uint64_t end = pos;
    while (j < in->n_hist && end < from + max) end += in->hist[j++].line_len;
    size_t n = j - i;
    hist_entry *copy = n ? xmalloc(n * sizeof *copy) : NULL;
    if (n) memcpy(copy, in->hist + i, n * sizeof *copy);
    pthread_mutex_unlock(&e->lock);

    stm_code rc = STM_OK;
    if (n) rc = eng_wait(e, copy[n - 1].seq, err);
    wal_stats st;
    wal_get_stats(e->w, &st);
    buf payload = {0}, line = {0}, store = {0};
    for (size_t k = 0; k < n && rc == STM_OK; k++) {
        buf_reset(&line);
        wal_record rec;
        entry_fields f;
        bool read = false;
        if (copy[k].offset >= st.first_offset) {
            read = read_record(e, copy[k].offset, &payload, &rec, &store, &f, err);
            if (read) eng_render_history(&line, rec.type, &f, rec.offset, rec.seq, copy[k].chain);
        }
        if (!read) {
            /* Its record was compacted away, maybe since the copy: the
             * entry itself says where a snapshot keeps the line now (the
             * instance stays: its records are acknowledged). */
            pthread_mutex_lock(&e->lock);
            uint64_t at = i + k < in->n_hist ? in->hist[i + k].snap_pos : 0;
            if (at)
                rc = snap_read_line(e, at, copy[k].line_len, &line, err);
            else if (copy[k].offset < st.first_offset)
                rc = stm_fail(err, STM_WAL_IO_ERROR,
                              "history of %s: the record at offset %llu is in neither the "
                              "WAL nor a snapshot", id, (unsigned long long)copy[k].offset);
            else
                rc = err ? err->code : STM_WAL_IO_ERROR; /* the log's own error */
            pthread_mutex_unlock(&e->lock);
            if (rc != STM_OK) break;
        }
        /* the part of this line inside [from, from+max) */
        uint64_t lstart = pos, lend = pos + line.len;
        uint64_t a = from > lstart ? from : lstart;
        uint64_t b = from + max < lend ? from + max : lend;
        if (a < b) buf_add(out, line.data + (a - lstart), (size_t)(b - a));
        pos = lend;
    }
    buf_free(&payload);
    buf_free(&line);
    buf_free(&store);
    free(copy);
    return rc;
}

stm_code eng_entries_read(eng *e, uint64_t from, size_t max, buf *out, uint64_t *total_bytes,
                          stm_err *err)
{
    pthread_mutex_lock(&e->lock);
    eng_take_failure_locked(e);
    uint64_t total = e->entries_bytes;
    /* the last index point at or before from */
    size_t lo = 0, hi = e->n_eidx;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (e->eidx_pos[mid] <= from) lo = mid + 1;
        else hi = mid;
    }
    uint64_t pos = 0, start_off = 0, last_seq = e->entries_seq;
    if (lo > 0) {
        pos = e->eidx_pos[lo - 1];
        start_off = e->eidx_off[lo - 1];
    }
    pthread_mutex_unlock(&e->lock);
    if (total_bytes) *total_bytes = total;
    if (from >= total || max == 0) return STM_OK;

    wal_iter *it;
    stm_code rc = wal_iter_open(e->w, start_off, false, &it, err);
    if (rc != STM_OK) return rc;
    buf line = {0};
    wal_record rec;
    bool waited = false;
    while (pos < from + max && pos < total) {
        int r = wal_iter_next(it, &rec, err);
        if (r == 0 && !waited) {
            /* total counts records as they are appended, and the WAL writes
             * them to the file in groups: the iterator ends at what is
             * written. Every byte below total is readable once the last
             * record counted is durable, so wait for it and go on, rather
             * than return a short read (an early end of file) below the
             * size the file has. */
            waited = true;
            if ((rc = eng_wait(e, last_seq, err)) != STM_OK) break;
            continue;
        }
        if (r < 0) rc = err ? err->code : STM_WAL_IO_ERROR;
        if (r != 1) break;
        if (rec.seq > eng_acked_seq(e) && (rc = eng_wait(e, rec.seq, err)) != STM_OK) break;
        buf_reset(&line);
        eng_render_entry(&line, rec.payload, rec.len, rec.offset, rec.seq);
        uint64_t lend = pos + line.len;
        uint64_t a = from > pos ? from : pos;
        uint64_t b = from + max < lend ? from + max : lend;
        if (a < b) buf_add(out, line.data + (a - pos), (size_t)(b - a));
        pos = lend;
    }
    buf_free(&line);
    wal_iter_close(it);
    return rc;
}

void eng_get_stats(eng *e, eng_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&e->lock);
    st->machines = e->n_machines;
    st->machine_versions = e->n_versions;
    st->instances = e->n_instances;
    st->deleted_instances = e->n_deleted;
    st->idempotency_keys = e->n_keys;
    pthread_mutex_unlock(&e->lock);
    st->subscriptions = e->hub ? hub_count(e->hub) : 0;
    wal_get_stats(e->w, &st->wal);
}
