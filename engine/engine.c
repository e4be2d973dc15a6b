/*
 * engine.c - opening, recovery, the in-memory model, durability.
 *
 * Live writes and recovery share one path: an operation builds a WAL entry,
 * appends it, then hands the same entry to eng_apply_record, exactly as
 * replay does with the entries it reads back. So a replayed database cannot
 * differ from the live one. Everything an entry needs for replay is inside
 * it: the wall-clock time ("ts", taken once when written), generated ids,
 * the context after a transition, idempotency keys.
 *
 * Atomic batches: every record of one carries "txn":k, counting down to 1 on
 * the last. Replay applies such records only when the one with txn 1 is
 * seen; a batch torn by a crash is therefore dropped as a whole.
 */
#include "engine/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/log.h"
#include "base/util.h"

void eng_opts_defaults(eng_opts *o)
{
    memset(o, 0, sizeof *o);
    o->data_dir = "./data";
    o->segment_size = 64ull << 20;
    o->sync.mode = WAL_SYNC_EVERY_WRITE;
    o->idempotency_max_keys = 1000000;
    o->compact_enabled = true;
    o->compact_events_threshold = 10000;
    o->compact_size_threshold_mb = 100;
    o->compact_min_interval_secs = 60;
    /* The defaults keep every accepted request inside one WAL record
     * (16 MiB): an event's record holds the payload and the merged context. */
    o->limits = (eng_limits){.max_id_bytes = ENG_MAX_ID_LEN,
                             .max_states = DEF_MAX_STATES,
                             .max_transitions = DEF_MAX_TRANSITIONS,
                             .max_guard_bytes = GUARD_MAX_LEN,
                             .max_guard_depth = GUARD_MAX_DEPTH,
                             .max_definition_bytes = 8u << 20,
                             .max_ctx_bytes = 4u << 20,
                             .max_payload_bytes = 4u << 20};
}

/* ---- hashing and tables ------------------------------------------------- */

static uint64_t hash_bytes(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t hash_str(const char *s)
{
    return hash_bytes(0xcbf29ce484222325ull, s);
}

uint64_t fingerprint(const char *a, const char *b, const char *c, const char *d)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const char *parts[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++) {
        h = hash_bytes(h, parts[i] ? parts[i] : "\x01");
        h ^= 0xff;
        h *= 0x100000001b3ull;
    }
    return h;
}

machine *machine_find(eng *e, const char *name)
{
    if (!e->mtab_size) return NULL;
    for (machine *m = e->mtab[hash_str(name) & (e->mtab_size - 1)]; m; m = m->hnext)
        if (strcmp(m->name, name) == 0) return m;
    return NULL;
}

static void machine_count_state(machine *m, const char *state, int delta)
{
    for (size_t i = 0; i < m->n_by_state; i++)
        if (m->by_state[i].state == state) {
            m->by_state[i].n += (uint64_t)(int64_t)delta;
            return;
        }
    if (m->n_by_state == m->cap_by_state) {
        m->cap_by_state = m->cap_by_state ? 2 * m->cap_by_state : 8;
        m->by_state = xrealloc(m->by_state, m->cap_by_state * sizeof *m->by_state);
    }
    m->by_state[m->n_by_state++] = (state_count){state, (uint64_t)(int64_t)delta};
}

void inst_count(eng *e, instance *in, int delta)
{
    if (in->deleted) {
        e->n_deleted += (size_t)(ptrdiff_t)delta;
        return;
    }
    e->n_instances += (size_t)(ptrdiff_t)delta;
    in->m->n_instances += (uint64_t)(int64_t)delta;
    machine_count_state(in->m, in->state, delta);
}

uint64_t machine_state_total(const machine *m, const char *state)
{
    for (size_t i = 0; i < m->n_by_state; i++)
        if (strcmp(m->by_state[i].state, state) == 0) return m->by_state[i].n;
    return 0;
}

static machine *machine_add(eng *e, const char *name)
{
    if (e->n_machines + 1 > e->mtab_size) {
        size_t size = e->mtab_size ? e->mtab_size * 2 : 64;
        machine **tab = xcalloc(size, sizeof *tab);
        for (size_t i = 0; i < e->mtab_size; i++)
            for (machine *m = e->mtab[i], *next; m; m = next) {
                next = m->hnext;
                size_t b = hash_str(m->name) & (size - 1);
                m->hnext = tab[b];
                tab[b] = m;
            }
        free(e->mtab);
        e->mtab = tab;
        e->mtab_size = size;
    }
    machine *m = xcalloc(1, sizeof *m);
    m->name = xstrdup(name);
    size_t b = hash_str(name) & (e->mtab_size - 1);
    m->hnext = e->mtab[b];
    e->mtab[b] = m;
    e->n_machines++;
    return m;
}

mversion *mversion_find(machine *m, uint32_t version)
{
    if (!m) return NULL;
    size_t lo = 0, hi = m->n_versions;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->versions[mid]->version < version) lo = mid + 1;
        else hi = mid;
    }
    return lo < m->n_versions && m->versions[lo]->version == version ? m->versions[lo] : NULL;
}

void mversion_insert(machine *m, mversion *mv)
{
    if (m->n_versions == m->cap_versions) {
        m->cap_versions = m->cap_versions ? m->cap_versions * 2 : 4;
        m->versions = xrealloc(m->versions, m->cap_versions * sizeof *m->versions);
    }
    size_t i = m->n_versions;
    while (i > 0 && m->versions[i - 1]->version > mv->version) {
        m->versions[i] = m->versions[i - 1];
        i--;
    }
    m->versions[i] = mv;
    m->n_versions++;
}

mversion *mversion_or_placeholder(machine *m, uint32_t version)
{
    mversion *mv = mversion_find(m, version);
    if (mv) return mv;
    mv = xcalloc(1, sizeof *mv);
    mv->version = version;
    mversion_insert(m, mv);
    return mv;
}

static uint64_t inst_hash(const void *in)
{
    return hash_str(((const instance *)in)->id);
}

instance *inst_find(eng *e, const char *id)
{
    void **chains[2];
    size_t n = htab_chains(&e->itab, hash_str(id), chains);
    for (size_t c = 0; c < n; c++)
        for (instance *in = *chains[c]; in; in = in->hnext)
            if (strcmp(in->id, id) == 0) return in;
    return NULL;
}

void inst_unhash(eng *e, instance *in)
{
    htab_remove(&e->itab, in, hash_str(in->id));
}

static int random_level(eng *e)
{
    /* xorshift64: levels only shape the skip list, never what is listed */
    int level = 1;
    for (;;) {
        e->rng ^= e->rng << 13;
        e->rng ^= e->rng >> 7;
        e->rng ^= e->rng << 17;
        if ((e->rng & 3) != 0 || level >= SKIP_MAX_LEVEL) break;
        level++;
    }
    return level;
}

instance *inst_add(eng *e, const char *id)
{
    int level = random_level(e);
    /* The id lives in the same block, right after the forward pointers: a
     * skip list step reads a node and its id, one cache line apart instead
     * of two allocations apart. */
    size_t idlen = strlen(id);
    instance *in = xcalloc(1, sizeof *in + (size_t)level * sizeof(instance *) + idlen + 1);
    in->id = (char *)&in->next[level];
    memcpy(in->id, id, idlen + 1);
    in->level = level;
    htab_add(&e->itab, in, hash_str(id));

    if (e->n_unlinked == e->cap_unlinked) {
        e->cap_unlinked = e->cap_unlinked ? e->cap_unlinked * 2 : 1024;
        e->unlinked = xrealloc(e->unlinked, e->cap_unlinked * sizeof *e->unlinked);
    }
    e->unlinked[e->n_unlinked] = in;
    inst_unlinked_set(e, e->n_unlinked + 1);
    return in; /* counted by the caller once it is whole (inst_count) */
}

static int cmp_inst_id(const void *a, const void *b)
{
    return strcmp((*(instance *const *)a)->id, (*(instance *const *)b)->id);
}

/* Links v[0..n), sorted by id, into the skip list. In ascending order each
 * descent starts where the previous one ended (a finger): update[i] is the
 * last node before the previous id at level i, so before this one too. */
static void link_sorted(eng *e, instance **v, size_t n)
{
    instance *update[SKIP_MAX_LEVEL];
    for (int i = 0; i < SKIP_MAX_LEVEL; i++) update[i] = e->head;
    for (size_t k = 0; k < n; k++) {
        instance *in = v[k];
        if (in->level > e->skip_level) e->skip_level = in->level;
        for (int i = e->skip_level - 1; i >= 0; i--) {
            instance *x = update[i];
            if (i + 1 < e->skip_level) {
                /* the node found one level up may be further along */
                instance *up = update[i + 1];
                if (up != e->head && (x == e->head || strcmp(up->id, x->id) > 0)) x = up;
            }
            while (x->next[i] && strcmp(x->next[i]->id, in->id) < 0) x = x->next[i];
            update[i] = x;
        }
        for (int i = 0; i < in->level; i++) {
            in->next[i] = update[i]->next[i];
            update[i]->next[i] = in;
            update[i] = in;
        }
        in->linked = true;
    }
}

void inst_link_all(eng *e)
{
    if (!e->n_unlinked) return;
    qsort(e->unlinked, e->n_unlinked, sizeof *e->unlinked, cmp_inst_id);
    link_sorted(e, e->unlinked, e->n_unlinked);
    inst_unlinked_set(e, 0);
}

/* How long a walk holds the lock at most, checked every WALK_CHECK steps:
 * by time, not by count, since a walk that only skips instances (142 ns
 * each, a LIST matching none of 100,000) is many times faster than one
 * that builds a page (about 3 us each, a LIST of 87,382 with its answer)
 * or a snapshot line, and a pause on the RCP loop's thread holds up that
 * loop's other clients. */
#define WALK_HOLD_NS 1000000u
enum { WALK_CHECK = 256 };

/* Lets the lock go between two chunks of a long step and takes it back. */
static void lock_yield(eng *e)
{
    pthread_mutex_unlock(&e->lock);
    lock_pause();
    pthread_mutex_lock(&e->lock);
    eng_take_failure_locked(e);
}

void inst_link_paced(eng *e)
{
    /* Chunks come off the end of the backlog, so nothing in it moves; each
     * is sorted and linked with a finger on its own. A chunk of 512 held
     * the lock about 1 ms (a GET beside the first LIST after 100,000
     * creates waited 2.0-3.8 ms at most), one of 4,096 up to 13 ms. It
     * costs more than one sorted pass (that LIST: 196-202 ms against 96,
     * mostly descents of the skip list), but nobody else waits for it. */
    enum { CHUNK = 512 };
    uint64_t since = util_mono_ns();
    while (e->n_unlinked > CHUNK) {
        size_t n = e->n_unlinked;
        instance **v = e->unlinked + (n - CHUNK);
        qsort(v, CHUNK, sizeof *v, cmp_inst_id);
        link_sorted(e, v, CHUNK);
        inst_unlinked_set(e, n - CHUNK);
        if (util_mono_ns() - since >= WALK_HOLD_NS) {
            lock_yield(e);
            since = util_mono_ns();
        }
    }
    inst_link_all(e);
}

size_t eng_index_backlog(eng *e)
{
    return __atomic_load_n(&e->n_unlinked, __ATOMIC_RELAXED);
}

void lock_pause(void)
{
    struct timespec pause = {0, 50 * 1000};
    nanosleep(&pause, NULL);
}

instance *inst_walk_next(eng *e, inst_walk *w, instance *in)
{
    if (!in->next[0] || ++w->steps % WALK_CHECK || util_mono_ns() - w->since < WALK_HOLD_NS)
        return in->next[0];
    free(*w->cursor);
    *w->cursor = xstrdup(in->id);
    lock_yield(e);
    w->since = util_mono_ns();
    return inst_after(e, *w->cursor);
}

/* First instance with id > after (after NULL: the first). */
instance *inst_after(eng *e, const char *after)
{
    inst_link_all(e);
    if (!after) return e->head->next[0];
    instance *x = e->head;
    for (int i = e->skip_level - 1; i >= 0; i--)
        while (x->next[i] && strcmp(x->next[i]->id, after) <= 0) x = x->next[i];
    return x->next[0];
}

/* State names repeat across millions of instances: keep one copy of each. */
const char *intern(eng *e, const char *s)
{
    if (e->n_interned * 2 >= e->intern_size) {
        size_t size = e->intern_size ? e->intern_size * 2 : 64;
        char **tab = xcalloc(size, sizeof *tab);
        for (size_t i = 0; i < e->intern_size; i++) {
            char *x = e->interned[i];
            if (!x) continue;
            size_t b = hash_str(x) & (size - 1);
            while (tab[b]) b = (b + 1) & (size - 1);
            tab[b] = x;
        }
        free(e->interned);
        e->interned = tab;
        e->intern_size = size;
    }
    size_t b = hash_str(s) & (e->intern_size - 1);
    while (e->interned[b]) {
        if (strcmp(e->interned[b], s) == 0) return e->interned[b];
        b = (b + 1) & (e->intern_size - 1);
    }
    e->interned[b] = xstrdup(s);
    e->n_interned++;
    return e->interned[b];
}

/* ---- idempotency -------------------------------------------------------- */

static uint64_t idem_hash(const char *scope, const char *key)
{
    return hash_bytes(hash_bytes(0xcbf29ce484222325ull, scope) ^ 0x5c, key);
}

static uint64_t idem_entry_hash(const void *k)
{
    return idem_hash(((const idem_entry *)k)->scope, ((const idem_entry *)k)->key);
}

idem_entry *idem_find(eng *e, const char *scope, const char *key)
{
    void **chains[2];
    size_t n = htab_chains(&e->ktab, idem_hash(scope, key), chains);
    for (size_t c = 0; c < n; c++)
        for (idem_entry *k = *chains[c]; k; k = k->hnext)
            if (strcmp(k->key, key) == 0 && strcmp(k->scope, scope) == 0) return k;
    return NULL;
}

void idem_unlink(eng *e, idem_entry *k)
{
    if (htab_remove(&e->ktab, k, idem_entry_hash(k))) e->n_keys--;
}

void idem_link(eng *e, idem_entry *k)
{
    htab_add(&e->ktab, k, idem_entry_hash(k));
    e->n_keys++;
}

idem_entry *idem_put(eng *e, const char *scope, const char *key, uint8_t type, uint64_t fp,
                     uint64_t offset, uint64_t seq)
{
    idem_entry *had = idem_find(e, scope, key);
    if (had) return had;
    idem_entry *k = xcalloc(1, sizeof *k);
    k->scope = xstrdup(scope);
    k->key = xstrdup(key);
    k->type = type;
    k->fingerprint = fp;
    k->offset = offset;
    k->seq = seq;
    idem_link(e, k);
    idem_entry *prev_tail = e->fifo_tail;
    if (e->fifo_tail) e->fifo_tail->fifo_next = k;
    else e->fifo_head = k;
    e->fifo_tail = k;
    bool live = !e->dry_run && !e->replaying;
    if (e->dry_run || live) undo_new_key(e, k, prev_tail);
    if (e->dry_run) return k; /* the real run evicts */
    /* Oldest keys go first: retries come soon after the original request. */
    while (e->opts.idempotency_max_keys && e->n_keys > e->opts.idempotency_max_keys) {
        idem_entry *old = e->fifo_head;
        if (old == k) k = NULL; /* the newest goes last: only with no room at all */
        e->fifo_head = old->fifo_next;
        if (!e->fifo_head) e->fifo_tail = NULL;
        idem_unlink(e, old);
        old->fifo_next = NULL;
        if (live) {
            undo_evicted_key(e, old); /* freed once the record is durable */
            continue;
        }
        free(old->result);
        free(old->scope);
        free(old->key);
        free(old);
    }
    return k;
}

/* ---- rendering ---------------------------------------------------------- */

static const char *type_name(uint8_t type)
{
    switch (type) {
    case WAL_T_PUT_MACHINE: return "put_machine";
    case WAL_T_CREATE_INSTANCE: return "create_instance";
    case WAL_T_APPLY_EVENT: return "apply_event";
    case WAL_T_DELETE_INSTANCE: return "delete_instance";
    case WAL_T_SNAPSHOT: return "snapshot";
    case WAL_T_CHECKPOINT: return "checkpoint";
    default: return "noop";
    }
}

static void render_history(buf *out, uint8_t type, const entry_fields *f, uint64_t offset,
                           uint64_t seq, const uint8_t chain[32])
{
    char hex[65];
    wal_hex(chain, hex);
    /* hot path (every event): no printf */
    buf_puts(out, "{\"offset\":");
    json_write_num(out, (double)offset);
    buf_puts(out, ",\"seq\":");
    json_write_num(out, (double)seq);
    buf_puts(out, ",\"ts\":");
    json_write_num(out, (double)f->ts);
    buf_puts(out, ",\"type\":");
    json_write_str(out, type_name(type));
    if (type == WAL_T_APPLY_EVENT) {
        buf_puts(out, ",\"event\":");
        json_write_str(out, f->event ? f->event : "");
        buf_puts(out, ",\"from\":");
        json_write_str(out, f->from_state ? f->from_state : "");
        buf_puts(out, ",\"to\":");
        json_write_str(out, f->to_state ? f->to_state : "");
        buf_puts(out, ",\"payload\":");
        if (f->payload) buf_add(out, f->payload, f->payload_len);
        else buf_puts(out, "null");
        if (f->event_id) {
            buf_puts(out, ",\"event_id\":");
            json_write_str(out, f->event_id);
        }
    } else if (type == WAL_T_CREATE_INSTANCE) {
        buf_puts(out, ",\"to\":");
        json_write_str(out, f->initial_state ? f->initial_state : "");
        buf_puts(out, ",\"ctx\":");
        if (f->initial_ctx) buf_add(out, f->initial_ctx, f->initial_ctx_len);
        else buf_puts(out, "null");
    }
    if (f->idempotency_key) {
        buf_puts(out, ",\"idempotency_key\":");
        json_write_str(out, f->idempotency_key);
    }
    buf_puts(out, ",\"chain\":\"");
    buf_add(out, hex, 64);
    buf_puts(out, "\"}\n");
}

static size_t str_len(const char *s)
{
    return json_str_len(s);
}

/* The length of render_history's line, without rendering it: replay and
 * unwatched writes only need the size. Mirrors render_history piece by
 * piece; test_engine's history_sizes_are_exact holds the two together. */
static size_t history_len(uint8_t type, const entry_fields *f, uint64_t offset, uint64_t seq)
{
#define LIT(s) (sizeof s - 1)
    size_t n = LIT("{\"offset\":") + json_num_len((double)offset) + LIT(",\"seq\":") +
               json_num_len((double)seq) + LIT(",\"ts\":") + json_num_len((double)f->ts) +
               LIT(",\"type\":") + str_len(type_name(type));
    if (type == WAL_T_APPLY_EVENT) {
        n += LIT(",\"event\":") + str_len(f->event ? f->event : "") + LIT(",\"from\":") +
             str_len(f->from_state ? f->from_state : "") + LIT(",\"to\":") +
             str_len(f->to_state ? f->to_state : "") + LIT(",\"payload\":") +
             (f->payload ? f->payload_len : 4);
        if (f->event_id) n += LIT(",\"event_id\":") + str_len(f->event_id);
    } else if (type == WAL_T_CREATE_INSTANCE) {
        n += LIT(",\"to\":") + str_len(f->initial_state ? f->initial_state : "") +
             LIT(",\"ctx\":") + (f->initial_ctx ? f->initial_ctx_len : 4);
    }
    if (f->idempotency_key) n += LIT(",\"idempotency_key\":") + str_len(f->idempotency_key);
    return n + LIT(",\"chain\":\"") + 64 + LIT("\"}\n");
#undef LIT
}

void eng_render_history(buf *out, uint8_t type, const entry_fields *f, uint64_t offset,
                        uint64_t seq, const uint8_t chain[32])
{
    render_history(out, type, f, offset, seq, chain);
}

void eng_render_entry(buf *out, const char *payload, size_t len, uint64_t offset, uint64_t seq)
{
    buf_puts(out, "{\"entry\":");
    buf_add(out, payload, len);
    buf_printf(out, ",\"offset\":%llu,\"sequence\":%llu}\n", (unsigned long long)offset,
               (unsigned long long)seq);
}

static size_t digits(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

size_t eng_entry_len(size_t payload_len, uint64_t offset, uint64_t seq)
{
    return sizeof "{\"entry\":" - 1 + payload_len + sizeof ",\"offset\":" - 1 + digits(offset) +
           sizeof ",\"sequence\":" - 1 + digits(seq) + sizeof "}\n" - 1;
}

/* ---- applying records --------------------------------------------------- */

static void hist_push(instance *in, const wal_record *rec, size_t line_len)
{
    if (in->n_hist == in->cap_hist) {
        in->cap_hist = in->cap_hist ? in->cap_hist * 2 : 1; /* most instances have few records */
        in->hist = xrealloc(in->hist, in->cap_hist * sizeof *in->hist);
    }
    hist_entry *h = &in->hist[in->n_hist++];
    h->offset = rec->offset;
    h->seq = rec->seq;
    h->line_len = (uint32_t)line_len;
    h->snap_pos = 0;
    memcpy(h->chain, rec->chain, 32);
    in->hist_bytes += line_len;
}

static char *text_or_null(const char *text, size_t len)
{
    return text ? xstrndup(text, len) : xstrdup("null");
}

/* The entries file (eng_entries_read) has one line for every record of the
 * log, checkpoints included, and its size and sparse index must follow the
 * log record by record, in log order, or a read at an offset starts at the
 * wrong byte. So they are counted where records enter the log, not where
 * the model changes (eng_apply_record): replay counts every record it reads,
 * whatever becomes of it (applied, skipped, held for an atomic batch or
 * dropped with a torn one), and eng_write every record it appends, with the
 * checkpoint the WAL wrote on its own just before it. Caller holds e->lock
 * (or is the opening thread). */
static void entries_add(eng *e, uint64_t offset, uint32_t len, uint64_t seq)
{
    if (e->entries_count % ENTRY_INDEX_STEP == 0) {
        if (e->n_eidx == e->cap_eidx) {
            e->cap_eidx = e->cap_eidx ? e->cap_eidx * 2 : 64;
            e->eidx_pos = xrealloc(e->eidx_pos, e->cap_eidx * sizeof *e->eidx_pos);
            e->eidx_off = xrealloc(e->eidx_off, e->cap_eidx * sizeof *e->eidx_off);
        }
        e->eidx_pos[e->n_eidx] = e->entries_bytes;
        e->eidx_off[e->n_eidx] = offset;
        e->n_eidx++;
    }
    e->entries_bytes += eng_entry_len(len, offset, seq);
    e->entries_count++;
    e->entries_seq = seq;
}

stm_code eng_apply_record(eng *e, const wal_record *rec, const entry_fields *fp, stm_err *err)
{
    const entry_fields f = *fp;
    const char *key = f.idempotency_key;
    e->list_gen++; /* list hints point into the instances: forget them */
    /* a rehearsal, or a live record the WAL may yet fail to make durable */
    const bool undo = e->dry_run || !e->replaying;
    int64_t ts = f.ts;
    instance *in = NULL;
    switch (rec->type) {
    case WAL_T_PUT_MACHINE: {
        const char *name = f.machine;
        uint64_t version = f.version;
        if (!name || !f.has_version || version > UINT32_MAX || !f.definition ||
            f.definition[0] != '{')
            break;
        machine *m = machine_find(e, name);
        mversion *have = mversion_find(m, (uint32_t)version);
        if (have && have->d) break;
        def *d = NULL;
        stm_err derr;
        cJSON *defj = json_parse_trusted(f.definition, f.definition_len);
        stm_code drc = defj ? def_parse(defj, &d, &derr)
                            : stm_fail(&derr, STM_BAD_REQUEST, "the definition is not JSON");
        cJSON_Delete(defj);
        if (drc != STM_OK) {
            /* rstmdb skips such records too; a log we wrote never has one */
            log_warn("WAL record at %llu: machine %s v%llu skipped: %s",
                     (unsigned long long)rec->offset, name, (unsigned long long)version,
                     derr.msg);
            break;
        }
        bool machine_is_new = !m;
        if (!m) m = machine_add(e, name);
        if (undo) undo_new_version(e, m, have, machine_is_new);
        /* A placeholder made for instances whose definition was missing gets
         * its definition now. */
        mversion *mv = have ? have : xcalloc(1, sizeof *mv);
        mv->version = (uint32_t)version;
        mv->d = d;
        mv->submitted = xstrndup(f.definition, f.definition_len);
        mv->created_at = ts;
        mv->offset = rec->offset;
        mv->seq = rec->seq;
        if (!have) mversion_insert(m, mv);
        if (undo && !have) undo_set_version(e, mv);
        e->n_versions++;
        break;
    }
    case WAL_T_CREATE_INSTANCE: {
        const char *id = f.instance_id;
        const char *name = f.machine;
        const char *st = f.initial_state;
        uint64_t version = f.has_version && f.version <= UINT32_MAX ? f.version : 0;
        if (!id || !name || !st || inst_find(e, id)) break;
        in = inst_add(e, id);
        if (undo) undo_new_instance(e, in);
        in->m = machine_find(e, name);
        if (!in->m) in->m = machine_add(e, name); /* a create before its machine: keep it */
        in->mv = mversion_or_placeholder(in->m, (uint32_t)version);
        in->state = intern(e, st);
        inst_count(e, in, +1);
        in->ctx = text_or_null(f.initial_ctx, f.initial_ctx_len);
        in->created_at = in->updated_at = ts;
        in->last_offset = rec->offset;
        in->last_seq = rec->seq;
        if (key) {
            const char *scope = f.generated_id ? "" : id;
            char vbuf[16];
            snprintf(vbuf, sizeof vbuf, "%llu", (unsigned long long)version);
            idem_put(e, scope, key, WAL_T_CREATE_INSTANCE,
                     fingerprint(name, vbuf, f.initial_ctx ? f.initial_ctx : "null",
                                 scope[0] ? id : NULL),
                     rec->offset, rec->seq);
        }
        break;
    }
    case WAL_T_APPLY_EVENT: {
        const char *id = f.instance_id;
        const char *to = f.to_state;
        in = f.inst ? f.inst : id ? inst_find(e, id) : NULL;
        if (!in || !to) break;
        if (e->cap_active) snap_capture_before_change(e, in);
        if (undo) undo_save_instance(e, in, true); /* takes ctx: rewritten below */
        inst_count(e, in, -1);
        in->state = intern(e, to);
        inst_count(e, in, +1);
        /* in place: most events leave the context about as long as it was */
        const char *ctx = f.ctx ? f.ctx : "null";
        size_t ctx_len = f.ctx ? f.ctx_len : 4;
        in->ctx = xrealloc(in->ctx, ctx_len + 1);
        memcpy(in->ctx, ctx, ctx_len);
        in->ctx[ctx_len] = 0;
        const char *eid = f.event_id;
        if (!eid || !in->last_event_id || strcmp(eid, in->last_event_id) != 0) {
            free(in->last_event_id);
            in->last_event_id = eid ? xstrdup(eid) : NULL;
        }
        in->last_offset = rec->offset;
        in->last_seq = rec->seq;
        if (ts) in->updated_at = ts;
        if (key) {
            idem_put(e, id, key, WAL_T_APPLY_EVENT,
                     fingerprint(f.event, f.payload ? f.payload : "null", NULL, NULL),
                     rec->offset, rec->seq);
        }
        /* read by the compactor without the lock */
        __atomic_add_fetch(&e->events_since_compact, 1, __ATOMIC_RELAXED);
        break;
    }
    case WAL_T_DELETE_INSTANCE: {
        const char *id = f.instance_id;
        in = id ? inst_find(e, id) : NULL;
        if (!in || in->deleted) {
            in = NULL;
            break;
        }
        if (e->cap_active) snap_capture_before_change(e, in);
        if (undo) undo_save_instance(e, in, false);
        inst_count(e, in, -1);
        in->deleted = true;
        inst_count(e, in, +1);
        in->last_offset = rec->offset;
        in->last_seq = rec->seq;
        if (ts) in->updated_at = ts;
        if (key) idem_put(e, id, key, WAL_T_DELETE_INSTANCE, 0, rec->offset, rec->seq);
        break;
    }
    default: break;
    }
    if (e->dry_run) return STM_OK;
    e->applied_offset = rec->offset;
    e->applied_seq = rec->seq;
    if (!e->hub || !hub_active(e->hub)) {
        /* nobody watches (replay, or no subscriber): the size is enough */
        if (in) hist_push(in, rec, history_len(rec->type, &f, rec->offset, rec->seq));
        if (e->hub) hub_publish(e->hub, rec, &f, in, NULL, 0);
        return STM_OK;
    }
    buf *line = &e->line_buf;
    buf_reset(line);
    if (in) {
        render_history(line, rec->type, &f, rec->offset, rec->seq, rec->chain);
        hist_push(in, rec, line->len);
    }
    hub_publish(e->hub, rec, &f, in, in ? line->data : NULL, in ? line->len : 0);
    (void)err;
    return STM_OK;
}

stm_code eng_write(eng *e, uint8_t type, buf *entry_text, wal_record *rec, stm_err *err)
{
    if (e->failed)
        return stm_fail(err, STM_WAL_IO_ERROR, "WAL error: %s",
                        wal_failure(e->w) ? wal_failure(e->w)
                                          : "the log failed earlier; restart stmfs to recover");
    if (e->opts.read_only)
        return stm_fail(err, STM_BAD_REQUEST, "the database is open read-only");
    if (e->dry_run) {
        /* an atomic batch's rehearsal: nothing reaches the log, but what
         * the log would refuse fails here, before the real run starts */
        if (entry_text->len > WAL_MAX_PAYLOAD)
            return stm_fail(err, STM_WAL_IO_ERROR,
                            "record too large: %zu bytes of payload, the limit is %u",
                            entry_text->len, WAL_MAX_PAYLOAD);
        memset(rec, 0, sizeof *rec);
        rec->type = type;
        rec->len = (uint32_t)entry_text->len;
        e->txn_written++;
        return STM_OK;
    }
    stm_code rc = wal_append(e->w, type, entry_text->data, (uint32_t)entry_text->len, rec, err);
    if (rc != STM_OK) return rc;
    uint64_t bytes = e->entries_bytes, count = e->entries_count, eseq = e->entries_seq;
    size_t eidx = e->n_eidx;
    /* A checkpoint the WAL put before the record (at a rotation, or every
     * WAL_CHECKPOINT_EVERY bytes) is a line of the entries file too, and
     * only this call learns of it: left out, the file's size fell short of
     * what it renders by one line per checkpoint until a restart. */
    if (rec->ckpt_len) entries_add(e, rec->ckpt_offset, rec->ckpt_len, rec->seq - 1);
    entries_add(e, rec->offset, rec->len, rec->seq);
    undo_record(e, rec, e->entries_bytes - bytes, e->entries_count - count, e->n_eidx - eidx, eseq);
    return STM_OK;
}

/* ---- durability --------------------------------------------------------- */

/* When the WAL fails, the records it had not acknowledged are cut from it
 * and never happen; their changes are undone in memory at once (atomic.c),
 * under the engine lock, together with setting failed: whoever holds the
 * lock sees either the log working or only acknowledged state. Taking the
 * lock here is safe: nobody holds it while waiting for the WAL (appenders
 * waiting for room in the pending group are released by the failure). */
void eng_take_failure_locked(eng *e)
{
    if (__atomic_load_n(&e->failed, __ATOMIC_ACQUIRE) || !wal_failure(e->w)) return;
    uint64_t a = wal_acked_seq(e->w);
    pthread_mutex_lock(&e->wait_lock);
    if (a > __atomic_load_n(&e->acked, __ATOMIC_ACQUIRE))
        __atomic_store_n(&e->acked, a, __ATOMIC_RELEASE);
    __atomic_store_n(&e->failed, true, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&e->wait_lock);
    a = __atomic_load_n(&e->acked, __ATOMIC_ACQUIRE);
    size_t n = undo_unacked(e, a);
    log_error("the write-ahead log failed: %s; %zu record(s) after seq %llu were not "
              "acknowledged and are undone, reads show the acknowledged state",
              wal_failure(e->w), n, (unsigned long long)a);
    util_gate_open(&e->ack_gate);
}

static void on_acked(void *arg, uint64_t acked, bool failed)
{
    eng *e = arg;
    pthread_mutex_lock(&e->wait_lock);
    if (acked > __atomic_load_n(&e->acked, __ATOMIC_ACQUIRE))
        __atomic_store_n(&e->acked, acked, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&e->wait_lock);
    if (failed) {
        pthread_mutex_lock(&e->lock);
        eng_take_failure_locked(e);
        pthread_mutex_unlock(&e->lock);
    }
    util_gate_open(&e->ack_gate);
    pthread_mutex_lock(&e->listen_lock);
    for (size_t i = 0; i < e->n_listeners; i++) e->listeners[i].fn(e->listeners[i].arg, acked);
    pthread_mutex_unlock(&e->listen_lock);
    if (e->hub) hub_wake(e->hub);
}

void eng_feed_catch_up(eng *e, uint64_t last)
{
    if (e->hub && last <= __atomic_load_n(&e->acked, __ATOMIC_ACQUIRE)) hub_wake(e->hub);
}

stm_code eng_sync(eng *e, stm_err *err)
{
    if (e->opts.read_only) return STM_OK;
    return wal_sync(e->w, err);
}

bool eng_failed(eng *e)
{
    return __atomic_load_n(&e->failed, __ATOMIC_ACQUIRE);
}

uint64_t eng_acked_seq(eng *e)
{
    return __atomic_load_n(&e->acked, __ATOMIC_ACQUIRE);
}

stm_code eng_wait(eng *e, uint64_t seq, stm_err *err)
{
    if (seq <= __atomic_load_n(&e->acked, __ATOMIC_ACQUIRE)) return STM_OK;
    /* A number no record has (a damaged snapshot can name one): nothing
     * will ever acknowledge it, so say so instead of waiting forever. */
    if (!wal_appended(e->w, seq))
        return stm_fail(err, STM_INTERNAL_ERROR,
                        "record %llu is not in the write-ahead log (which ends at %llu): the "
                        "data directory is damaged; check it with `stmfs replay --verify`",
                        (unsigned long long)seq, (unsigned long long)wal_acked_seq(e->w));
    wal_write_now(e->w, seq);
    bool ok = util_gate_wait_mark(&e->ack_gate, &e->acked, seq, &e->failed, 0);
    /* The WAL's message names the call and the errno (the mount maps a
     * full disk to ENOSPC by it). */
    if (!ok)
        return stm_fail(err, STM_WAL_IO_ERROR, "WAL error: the write could not be made durable: %s",
                        wal_failure(e->w) ? wal_failure(e->w)
                                          : "disk error; restart stmfs to recover");
    return STM_OK;
}

void eng_kick(eng *e, uint64_t seq)
{
    if (seq > __atomic_load_n(&e->acked, __ATOMIC_ACQUIRE)) wal_write_now(e->w, seq);
}

void eng_commit_now(eng *e, uint64_t seq)
{
    if (seq > __atomic_load_n(&e->acked, __ATOMIC_ACQUIRE)) wal_commit_now(e->w, seq);
}

void eng_hold(eng *e)
{
    wal_hold(e->w);
}

void eng_release(eng *e)
{
    wal_release(e->w);
}

bool eng_syncs_each_group(eng *e)
{
    return wal_syncs_each_group(e->w);
}

uint64_t eng_commit_linger_ns(eng *e)
{
    return wal_linger_ns(e->w);
}

int eng_add_listener(eng *e, void (*fn)(void *, uint64_t), void *arg)
{
    pthread_mutex_lock(&e->listen_lock);
    e->listeners = xrealloc(e->listeners, (e->n_listeners + 1) * sizeof *e->listeners);
    int id = ++e->next_listener_id;
    e->listeners[e->n_listeners++] = (struct listener){id, fn, arg};
    pthread_mutex_unlock(&e->listen_lock);
    return id;
}

void eng_remove_listener(eng *e, int id)
{
    pthread_mutex_lock(&e->listen_lock);
    for (size_t i = 0; i < e->n_listeners; i++)
        if (e->listeners[i].id == id) {
            e->listeners[i] = e->listeners[--e->n_listeners];
            break;
        }
    pthread_mutex_unlock(&e->listen_lock);
}

/* ---- open / close ------------------------------------------------------- */

static stm_code make_dir(const char *path, stm_err *err)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return stm_fail(err, STM_WAL_IO_ERROR, "cannot create directory %s: %s", path,
                        strerror(errno));
    return STM_OK;
}

/* Replays every record after `from`; records of an atomic batch are held
 * until its last one arrives. stop_at: apply only records at offsets <= it. */
static stm_code replay(eng *e, uint64_t stop_at, stm_err *err)
{
    wal_ahead *it;
    stm_code rc = wal_ahead_open(e->w, 0, &it, err);
    if (rc != STM_OK) return rc;
    /* Fields point into their store; held records each keep their own. */
    struct held { wal_record rec; entry_fields f; buf store; char *payload; } *held = NULL;
    size_t n_held = 0, cap_held = 0;
    buf store = {0};
    wal_record rec;
    int r;
    e->replaying = true;
    while ((r = wal_ahead_next(it, &rec, err)) == 1) {
        if (rec.offset > stop_at) break;
        /* Every record is a line of the entries file, in log order, also one
         * held for a batch below or dropped with a torn one. */
        entries_add(e, rec.offset, rec.len, rec.seq);
        if (rec.type == WAL_T_CHECKPOINT || rec.type == WAL_T_NOOP || rec.type == WAL_T_SNAPSHOT ||
            (e->snap_seq && rec.seq <= e->snap_seq))
            continue; /* not a change, or already in the loaded snapshot */
        entry_fields f;
        if (!entry_scan(rec.payload, rec.len, &store, &f)) {
            /* CRC-checked bytes that are not JSON: only this failure pays for
             * the detailed message */
            stm_err perr = {0};
            cJSON_Delete(json_parse(rec.payload, rec.len, &perr));
            rc = stm_fail(err, STM_WAL_IO_ERROR,
                          "WAL record at offset %llu (seq %llu) is not a valid entry: %s",
                          (unsigned long long)rec.offset, (unsigned long long)rec.seq,
                          perr.msg[0] ? perr.msg : "not JSON");
            goto out;
        }
        if (f.has_txn && f.txn > 0 && f.txn <= UINT32_MAX) {
            uint64_t k = f.txn;
            /* a new batch while one is held: the held one was torn */
            if (n_held && k >= held[n_held - 1].f.txn) {
                for (size_t i = 0; i < n_held; i++) {
                    buf_free(&held[i].store);
                    free(held[i].payload);
                }
                n_held = 0;
            }
            if (n_held == cap_held) {
                cap_held = cap_held ? cap_held * 2 : 8;
                held = xrealloc(held, cap_held * sizeof *held);
            }
            struct held *h = &held[n_held++];
            h->rec = rec;
            h->payload = xstrndup(rec.payload, rec.len);
            h->rec.payload = h->payload;
            h->store = (buf){0};
            entry_scan(h->payload, rec.len, &h->store, &h->f);
            if (k == 1) {
                for (size_t i = 0; i < n_held; i++) {
                    eng_apply_record(e, &held[i].rec, &held[i].f, err);
                    buf_free(&held[i].store);
                    free(held[i].payload);
                }
                n_held = 0;
            }
            continue;
        }
        if (n_held) {
            log_warn("dropping a torn atomic batch of %zu record(s) before offset %llu", n_held,
                     (unsigned long long)rec.offset);
            for (size_t i = 0; i < n_held; i++) {
                buf_free(&held[i].store);
                free(held[i].payload);
            }
            n_held = 0;
        }
        eng_apply_record(e, &rec, &f, err);
    }
    if (r < 0) rc = err ? err->code : STM_WAL_IO_ERROR;
    if (n_held)
        log_warn("dropping a torn atomic batch of %zu record(s) at the end of the log", n_held);
out:
    for (size_t i = 0; i < n_held; i++) {
        buf_free(&held[i].store);
        free(held[i].payload);
    }
    free(held);
    buf_free(&store);
    wal_ahead_close(it);
    e->replaying = false;
    return rc;
}

/* Loads the newest database snapshot, unless a point in time before it is
 * asked for and the log still holds everything from its start. Refuses when
 * the log has a hole that no snapshot covers. */
static stm_code load_snapshot(eng *e, uint64_t stop_at, stm_err *err)
{
    wal_stats st;
    wal_get_stats(e->w, &st);
    bool log_complete = st.first_offset == 0 || WAL_OFF_SEG(st.first_offset) == 1;
    /* A point in time is rebuilt from the log alone while the log still
     * holds everything: the result cannot depend on when compaction ran. */
    if (stop_at != UINT64_MAX && log_complete) return STM_OK;
    stm_code rc = snap_load(e, err);
    if (rc != STM_OK) return rc;
    if (e->snap_fd >= 0 && stop_at < e->snap_offset)
        return stm_fail(err, STM_BAD_REQUEST,
                        "offset %llu is before the oldest point kept: the log up to offset %llu "
                        "was compacted into snapshot db-%016llx.snap; the earliest offset that "
                        "can be replayed is %llu",
                        (unsigned long long)stop_at, (unsigned long long)e->snap_offset,
                        (unsigned long long)e->snap_offset, (unsigned long long)e->snap_offset);
    if (e->snap_fd >= 0 && st.entry_count < e->snap_seq)
        return stm_fail(err, STM_WAL_IO_ERROR,
                        "snapshot db-%016llx.snap covers the log up to seq %llu but the log ends "
                        "at seq %llu: records the snapshot was made from are missing; restore "
                        "the wal/ directory from a backup",
                        (unsigned long long)e->snap_offset, (unsigned long long)e->snap_seq,
                        (unsigned long long)st.entry_count);
    if (e->snap_fd >= 0 && st.first_offset &&
        st.first_offset > WAL_OFFSET(WAL_OFF_SEG(e->snap_offset), 0))
        return stm_fail(err, STM_WAL_IO_ERROR,
                        "the log starts at offset %llu but the newest valid snapshot ends at "
                        "%llu: records between them are missing (a newer snapshot may be "
                        "damaged); restore the snapshots/ directory from a backup",
                        (unsigned long long)st.first_offset, (unsigned long long)e->snap_offset);
    /* A log that starts late with no snapshot at all is what rstmdb's
     * compaction leaves (a warning); with a damaged one, the records before
     * it were in that file, and starting without them would lose them for
     * good at the next compaction, which rewrites the snapshot. */
    if (e->snap_fd < 0 && !log_complete && e->snap_damaged)
        return stm_fail(err, STM_WAL_IO_ERROR,
                        "the log starts at segment %llu and the database snapshot that holds "
                        "what came before it, %s, is damaged (its checksum does not hold): "
                        "restore that file from a backup; or, to start with only what the log "
                        "holds (losing everything before segment %llu), move it out of "
                        "snapshots/",
                        (unsigned long long)WAL_OFF_SEG(st.first_offset), e->snap_damaged,
                        (unsigned long long)WAL_OFF_SEG(st.first_offset));
    if (e->snap_fd < 0 && !log_complete)
        log_warn("the log starts at segment %llu and no database snapshot covers the segments "
                 "before it: what they held is lost (rstmdb's compaction does this)",
                 (unsigned long long)WAL_OFF_SEG(st.first_offset));
    return STM_OK;
}

stm_code eng_open_at(const eng_opts *o, uint64_t stop_at, eng **out, wal_recovery *rep,
                    stm_err *err)
{
    eng *e = xcalloc(1, sizeof *e);
    e->opts = *o;
    e->data_dir = xstrdup(o->data_dir);
    e->opts.data_dir = e->data_dir;
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->wait_lock, NULL);
    pthread_mutex_init(&e->listen_lock, NULL);
    pthread_cond_init(&e->stop_cond, NULL);
    pthread_mutex_init(&e->compact_lock, NULL);
    e->snap_fd = -1;
    e->snap_next_fd = -1;
    e->head = xcalloc(1, sizeof *e->head + SKIP_MAX_LEVEL * sizeof(instance *));
    e->head->id = xstrdup("");
    e->skip_level = 1;
    e->rng = 0x9E3779B97F4A7C15ull;
    e->last_compact_ms = util_now_ms();
    htab_init(&e->itab, 1024, offsetof(instance, hnext), inst_hash);
    htab_init(&e->ktab, 256, offsetof(idem_entry, hnext), idem_entry_hash);

    char path[4096];
    stm_code rc = STM_OK;
    if (!o->read_only) {
        if ((rc = make_dir(o->data_dir, err)) != STM_OK) goto fail;
        snprintf(path, sizeof path, "%s/snapshots", o->data_dir);
        if ((rc = make_dir(path, err)) != STM_OK) goto fail;
    }
    snprintf(path, sizeof path, "%s/wal", o->data_dir);
    wal_opts wo = {
        .dir = path,
        .segment_size = o->segment_size,
        .sync = o->sync,
        .repair = o->repair,
        .read_only = o->read_only,
        .io = o->io,
    };
    if ((rc = wal_open(&wo, &e->w, rep, err)) != STM_OK) goto fail;
    snap_remove_stale_tmp(e); /* the log's lock is ours: no other writer */
    if ((rc = load_snapshot(e, stop_at, err)) != STM_OK) goto fail;
    if ((rc = replay(e, stop_at, err)) != STM_OK) goto fail;
    __atomic_store_n(&e->acked, wal_acked_seq(e->w), __ATOMIC_RELEASE);
    e->hub = hub_new(e);
    wal_set_listener(e->w, on_acked, e);
    if (stop_at == UINT64_MAX) compactor_start(e);
    *out = e;
    return STM_OK;
fail:
    eng_close(e);
    return rc;
}

stm_code eng_open(const eng_opts *o, eng **out, wal_recovery *rep, stm_err *err)
{
    return eng_open_at(o, UINT64_MAX, out, rep, err);
}

void free_instance(instance *in)
{
    free(in->ctx);
    free(in->last_event_id);
    free(in->hist);
    free(in);
}

void eng_close(eng *e)
{
    if (!e) return;
    for (size_t i = 0; i < sizeof e->list_hints / sizeof e->list_hints[0]; i++) {
        free(e->list_hints[i].machine);
        free(e->list_hints[i].state);
    }
    compactor_stop(e);
    snap_close(e);
    if (e->w) {
        stm_err err;
        if (wal_close(e->w, &err) != STM_OK) log_error("closing the WAL: %s", err.msg);
        e->w = NULL;
    }
    if (e->hub) hub_free(e->hub);
    buf_free(&e->scan_store);
    buf_free(&e->line_buf);
    buf_free(&e->op_payload);
    buf_free(&e->op_ctx);
    buf_free(&e->op_entry);
    inst_link_all(e);
    for (instance *in = e->head->next[0], *next; in; in = next) {
        next = in->next[0];
        free_instance(in);
    }
    free(e->unlinked);
    free(e->head->id);
    free(e->head);
    htab_free(&e->itab);
    for (size_t i = 0; i < e->mtab_size; i++)
        for (machine *m = e->mtab[i], *next; m; m = next) {
            next = m->hnext;
            for (size_t v = 0; v < m->n_versions; v++) {
                if (m->versions[v]->d) def_free(m->versions[v]->d);
                free(m->versions[v]->submitted);
                free(m->versions[v]);
            }
            free(m->versions);
            free(m->by_state);
            free(m->name);
            free(m);
        }
    free(e->mtab);
    for (idem_entry *k = e->fifo_head, *next; k; k = next) {
        next = k->fifo_next;
        free(k->result);
        free(k->scope);
        free(k->key);
        free(k);
    }
    htab_free(&e->ktab);
    free(e->eidx_pos);
    free(e->eidx_off);
    for (size_t i = 0; i < e->intern_size; i++) free(e->interned[i]);
    free(e->interned);
    free(e->listeners);
    undo_free_all(e);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->wait_lock);
    pthread_mutex_destroy(&e->listen_lock);
    pthread_cond_destroy(&e->stop_cond);
    pthread_mutex_destroy(&e->compact_lock);
    free(e->data_dir);
    free(e->snap_damaged);
    free(e);
}
