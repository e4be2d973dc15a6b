/*
 * internal.h - what the files of engine/ share. Not part of the API: only
 * the engine's own .c files include it. engine.h is the module's one public header.
 *
 * The model in memory:
 *   machines   name -> versions (sorted) -> def + submitted text + checksum
 *   instances  hash by id for lookups, skip list by id for sorted listing
 *   history    per instance: one entry per WAL record of it (offset, chain,
 *              rendered line length), so the history file's size is exact
 *              and any byte range is found without scanning the WAL
 *   idempotency  (scope, key) -> record offset + request fingerprint, in a
 *              hash with FIFO eviction at the configured bound
 * One mutex (e->lock) guards all of it. Records are appended to the WAL
 * while holding it, so the WAL order is the apply order; nobody waits for
 * the disk while holding it.
 */
#ifndef STM_ENGINE_INTERNAL_H
#define STM_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "base/buf.h"
#include "base/htab.h"
#include "base/json.h"
#include "base/util.h"
#include "engine/def.h"
#include "engine/engine.h"
#include "wal/io.h"
#include "wal/wal.h"

#define SKIP_MAX_LEVEL 24

typedef struct mversion {
    uint32_t version;
    def *d;
    char *submitted;            /* canonical text of the definition as submitted */
    int64_t created_at;         /* ms, from the WAL record */
    uint64_t offset, seq;
} mversion;

/* Where a page of LIST_INSTANCES ended (ops.c): the next page by offset
 * starts there instead of walking from the first instance again. Valid
 * while gen == e->list_gen, which every change to the instances moves. */
typedef struct list_hint {
    uint64_t gen;
    char *machine, *state; /* the filters, NULL when absent */
    uint64_t offset;       /* the offset the next page asks for */
    struct instance *at;   /* where its walk starts (NULL: the end) */
} list_hint;

/* How many live instances of a machine are in one state (state interned). */
typedef struct state_count {
    const char *state;
    uint64_t n;
} state_count;

typedef struct machine {
    char *name;
    mversion **versions;        /* ascending by version */
    size_t n_versions, cap_versions;
    struct machine *hnext;      /* hash chain */
    uint64_t n_instances;       /* of them not deleted: LIST_INSTANCES's total */
    state_count *by_state;      /* the same by state (a handful: a linear list) */
    size_t n_by_state, cap_by_state;
} machine;

typedef struct hist_entry {
    uint64_t offset;
    uint64_t seq;
    uint64_t snap_pos;          /* where the line stands in a database snapshot
                                   (0 = not in one), with SNAP_POS_GEN telling
                                   which of the two a compaction may have open
                                   (snap_read_line): read from there once
                                   compaction has removed its WAL record */
    uint32_t line_len;
    uint8_t chain[32];
} hist_entry;

typedef struct instance {
    char *id;                   /* in the instance's own block (inst_add) */
    machine *m;
    mversion *mv;
    const char *state;          /* interned (intern()): never freed alone */
    char *ctx;                  /* canonical text */
    char *last_event_id;
    uint64_t last_offset, last_seq;
    int64_t created_at, updated_at;
    bool deleted;
    bool linked;                /* in the skip list (else in e->unlinked) */
    hist_entry *hist;
    uint32_t n_hist, cap_hist;
    uint64_t hist_bytes;
    struct instance *hnext;     /* hash chain */
    int level;
    /* as it was when a running compaction began, taken at its first change
     * since: e->caps[cap - 1], 0 if none (compact.c); in the padding before
     * next[], so the hot part of an instance stays 128 bytes */
    uint32_t cap;
    struct instance *next[];    /* skip list forward pointers, level entries */
} instance;

typedef struct idem_entry {
    char *scope;                /* instance id, or "" for creates without an id */
    char *key;
    uint8_t type;               /* WAL_T_* of the request */
    uint64_t fingerprint;       /* hash of what the request asked for */
    uint64_t offset;            /* its WAL record */
    uint64_t seq;
    char *result;               /* the original result, kept once compaction
                                   removed the record (NULL otherwise) */
    struct idem_entry *hnext;
    struct idem_entry *fifo_next;
} idem_entry;

typedef struct hub hub;

struct eng {
    eng_opts opts;
    char *data_dir;
    wal *w;
    pthread_mutex_t lock;
    bool failed;                /* WAL failed: read-only until restart */
    bool replaying;

    /* machines */
    machine **mtab;
    size_t mtab_size, n_machines, n_versions;

    /* instances */
    size_t n_instances, n_deleted;
    instance *head;             /* skip list sentinel */
    int skip_level;
    /* Instances added since the list was last walked: linked in, sorted, by
     * inst_link_all or inst_link_paced before any walk (and by the
     * background compactor past a few thousand). A create's path stays off the list
     * (one cache miss per node of an O(log n) descent, 5.6% of the RCP
     * loop's user cycles under a create-heavy load), and a sorted batch is
     * linked with a finger. */
    instance **unlinked;
    size_t n_unlinked, cap_unlinked;
    uint64_t rng;

    /* interned strings (state names) */
    char **interned;
    size_t intern_size, n_interned;

    /* idempotency */
    size_t n_keys;
    idem_entry *fifo_head, *fifo_tail;

    /* entries file: total bytes and a sparse index (every ENTRY_INDEX_STEP
     * records: byte position -> WAL offset), counted record by record as
     * records enter the log (engine.c, entries_add), checkpoints included;
     * entries_seq is the sequence of the last record counted */
    uint64_t entries_bytes, entries_count, entries_seq;
    uint64_t *eidx_pos, *eidx_off;
    size_t n_eidx, cap_eidx;

    /* durability */
    uint64_t acked;             /* atomic loads and stores only */
    util_gate ack_gate; /* eng_wait: acked moved or the WAL failed */
    pthread_mutex_t wait_lock; /* failed, and the compactor's stop_cond */
    pthread_mutex_t listen_lock;
    struct listener { int id; void (*fn)(void *, uint64_t); void *arg; } *listeners;
    size_t n_listeners;
    int next_listener_id;

    hub *hub;
    buf scan_store;             /* entry_scan's store for live writes (under lock) */
    buf line_buf;               /* eng_apply_record's history line (under lock) */
    /* the write operations' payload, context and entry text (APPLY_EVENT,
     * CREATE_INSTANCE), kept between calls so they allocate none of them
     * (under lock) */
    buf op_payload, op_ctx, op_entry;

    /* atomic batches (atomic.c): a dry run records how to undo each change;
     * the real run marks its records with a countdown */
    bool dry_run;
    struct undo *undo;
    size_t n_undo, cap_undo;
    uint64_t txn_total, txn_written;
    /* how to undo the live records not yet acknowledged, oldest first in
     * [live_head, n_live), should the WAL fail (atomic.c); live_seq is the
     * record being applied */
    struct undo *live;
    size_t live_head, n_live, cap_live;
    uint64_t live_seq;

    /* compaction (compact.c): the newest database snapshot */
    int snap_fd;                /* open on it for history lines, -1 if none */
    char *snap_damaged;         /* the newest snapshot file found damaged at open, or NULL */
    uint64_t snap_offset, snap_seq; /* the last record it covers */
    uint64_t applied_offset, applied_seq; /* the last record applied */
    pthread_mutex_t compact_lock; /* one compaction at a time */

    uint64_t events_since_compact;
    uint64_t list_gen;          /* moved by every applied or undone record */
    list_hint list_hints[4];    /* a few clients paging at once */
    unsigned list_hint_next;
    int64_t last_compact_ms;
    pthread_t compactor;
    bool compactor_running, stopping;
    pthread_cond_t stop_cond;

    /* Rarely touched, so at the end: the fields above are laid out as they
     * were measured. compact.c: */
    int snap_next_fd;           /* the one a compaction is moving entries to */
    uint64_t snap_gen;          /* SNAP_POS_GEN of entries that point into snap_fd */
    /* While a compaction copies the instances a chunk at a time, the
     * instances it has not reached keep what they were at its start
     * (cap_seq) through snap_capture_before_change. */
    bool cap_active;
    uint64_t cap_seq;
    char *cap_cursor;           /* the last instance id copied; NULL: none yet */
    struct snap_capture **caps; /* taken so far (instance.cap) */
    size_t n_caps, cap_caps;
    /* atomic.c: */
    bool atomic_batch;          /* one runs: its ops keep the lock throughout */
    /* by id, and idempotency keys by (scope, key): tables that grow a few
     * buckets at a time (base/htab.h) */
    htab itab, ktab;
};

#define ENTRY_INDEX_STEP 256

/* The fields of a WAL entry (entry.c). Strings are decoded and
 * NUL-terminated; payload, ctx, initial_ctx and definition are canonical
 * JSON text (json_write with sorted keys), NULL when absent. Everything
 * points into the store buf given to entry_scan. */
typedef struct {
    const char *instance_id, *machine, *event, *from_state, *to_state, *initial_state;
    const char *event_id, *idempotency_key;
    const char *payload, *ctx, *initial_ctx, *definition;
    size_t payload_len, ctx_len, initial_ctx_len, definition_len;
    int64_t ts;
    uint64_t version, txn;      /* valid when has_version / has_txn */
    bool has_version, has_txn;  /* a whole number >= 0 was there */
    bool generated_id;
    struct instance *inst;      /* the instance an APPLY_EVENT names, when the
                                   live operation already found it (else NULL) */
} entry_fields;
/* Reads an entry's fields from its JSON text. false when the text is not
 * JSON at all; a JSON value that is not an object gives no fields. */
bool entry_scan(const char *text, size_t len, buf *store, entry_fields *f);
/* The same through a cJSON parse only: what entry_scan must give (tests). */
bool entry_scan_tree(const char *text, size_t len, buf *store, entry_fields *f);

/* engine.c */
/* Opens applying only records at offsets <= stop_at. */
stm_code eng_open_at(const eng_opts *o, uint64_t stop_at, eng **out, wal_recovery *rep,
                    stm_err *err);
instance *inst_find(eng *e, const char *id);
/* Takes in out of the table by id (not out of the sorted list). */
void inst_unhash(eng *e, instance *in);
/* The one stored copy of s (lives until eng_close). */
const char *intern(eng *e, const char *s);
/* Adds a new instance to both indexes (id must be new). */
instance *inst_add(eng *e, const char *id);
/* First instance with id > after (NULL: the first), deleted ones included. */
instance *inst_after(eng *e, const char *after);
/* Links the instances added since the last walk into the sorted list (under
 * e->lock): call it before walking e->head->next[0] (inst_after does). */
void inst_link_all(eng *e);
/* The same for a caller that may let the lock go meanwhile (not inside an
 * atomic batch): it links a chunk at a time and pauses (lock_pause) once it
 * has held the lock WALK_HOLD_NS. Linking 100,000 creates at once held it
 * 75-110 ms, which a GET beside the first LIST or COMPACT after them
 * waited. */
void inst_link_paced(eng *e);
/* e->n_unlinked is written atomically (under e->lock as well) so that
 * eng_index_backlog can read it without the lock. */
static inline void inst_unlinked_set(eng *e, size_t n)
{
    __atomic_store_n(&e->n_unlinked, n, __ATOMIC_RELAXED);
}
machine *machine_find(eng *e, const char *name);
/* Counts in (delta +1) or out (-1) of the instance counts as it stands:
 * e->n_deleted if deleted, else e->n_instances and its machine's counts,
 * whole and by state, which LIST_INSTANCES's total reads. Every change of
 * an instance's existence, deletion or state goes between an out and an in. */
void inst_count(eng *e, instance *in, int delta);
/* Live instances of m in the state named state. */
uint64_t machine_state_total(const machine *m, const char *state);
mversion *mversion_find(machine *m, uint32_t version);
/* Adds mv to m's versions, keeping them ascending. */
void mversion_insert(machine *m, mversion *mv);
/* m's version, or a placeholder with no definition that keeps the number:
 * rstmdb data can hold instances of a version the log never defined. */
mversion *mversion_or_placeholder(machine *m, uint32_t version);
/* Applies one decoded WAL record to memory (live writes and replay share it).
 * The entries file is not its business: see eng_write and replay. */
stm_code eng_apply_record(eng *e, const wal_record *rec, const entry_fields *f, stm_err *err);
/* Appends an entry (JSON text) to the WAL and counts it in the entries file,
 * with any checkpoint the WAL wrote before it; rec receives where. Under
 * dry_run nothing is written or counted. The caller then applies it. */
stm_code eng_write(eng *e, uint8_t type, buf *entry, wal_record *rec, stm_err *err);
/* Renders the history line of one record of an instance. */
void eng_render_history(buf *out, uint8_t type, const entry_fields *f, uint64_t offset,
                        uint64_t seq, const uint8_t chain[32]);
/* Renders the wal/entries line of a record: its payload verbatim (records
 * stmfs writes are canonical JSON; rstmdb's put "type" first) between the
 * offset and sequence. Verbatim keeps it exact and costs no parse. */
void eng_render_entry(buf *out, const char *payload, size_t len, uint64_t offset, uint64_t seq);
/* Its length, without rendering. */
size_t eng_entry_len(size_t payload_len, uint64_t offset, uint64_t seq);

/* idem.c-ish helpers in engine.c */
idem_entry *idem_find(eng *e, const char *scope, const char *key);
/* Notes a key (a key already noted stays as it was); returns its entry, or
 * NULL if the limit of keys left no room even for it. */
idem_entry *idem_put(eng *e, const char *scope, const char *key, uint8_t type, uint64_t fp,
                     uint64_t offset, uint64_t seq);
uint64_t fingerprint(const char *a, const char *b, const char *c, const char *d);
void idem_unlink(eng *e, idem_entry *k);
/* Puts an entry idem_unlink took out back into the hash (not the FIFO). */
void idem_link(eng *e, idem_entry *k);
void free_instance(instance *in);

/* atomic.c: called by eng_apply_record before it changes anything, in a
 * rehearsal (e->dry_run) and for live records (not while replaying). */
void undo_new_instance(eng *e, instance *in);
/* With ctx, the instance's context and last event id are taken over (left
 * NULL) for the caller to replace. */
void undo_save_instance(eng *e, instance *in, bool ctx);
void undo_new_version(eng *e, machine *m, mversion *mv, bool machine_is_new);
/* k was linked at the FIFO's tail, after prev_tail. */
void undo_new_key(eng *e, idem_entry *k, idem_entry *prev_tail);
/* idem_put took k out to make room (live records only): k is the note's
 * now, freed with it. */
void undo_evicted_key(eng *e, idem_entry *k);
/* The version a U_NEW_VERSION entry made, once it exists. */
void undo_set_version(eng *e, mversion *mv);
/* eng_write appended a live record, which added bytes, count lines and
 * eidx index points to the entries file's figures (that ended with
 * entries_seq before): notes for it follow; notes of records acknowledged
 * meanwhile are freed. */
void undo_record(eng *e, const wal_record *rec, uint64_t bytes, uint64_t count, size_t eidx,
                 uint64_t entries_seq);
/* Under e->lock: once the WAL has failed, sets failed and undoes what it
 * never acknowledged, once. The WAL's listener does it on the flusher's
 * thread, a moment after the failure; an op that finds the log failed
 * first does it itself, so that a caller who already got the failure
 * never reads unacknowledged state (nor waits for it). */
void eng_take_failure_locked(eng *e);

/* The WAL failed: undoes every live record after acked (and any atomic
 * batch not acknowledged whole), newest first. Returns how many records. */
size_t undo_unacked(eng *e, uint64_t acked);
void undo_free_all(eng *e);
/* atomic.c: ops functions by name, for the batch runner */
typedef stm_code (*op_fn)(eng *, const cJSON *, cJSON **, uint64_t *, stm_err *);
op_fn ops_lookup(const char *op, bool *locked);

/* For a loop that takes e->lock a chunk at a time, between two chunks. A
 * thread that asked for the lock during a chunk was woken by the unlock,
 * but a mutex goes to whoever asks first, and the loop asks again at once:
 * a GET beside a compaction of 100,000 instances waited 86 ms across the
 * whole copy, though no chunk held the lock 2 ms. A pause about as long as
 * a wake-up lets it in. */
void lock_pause(void);
/* A walk of the instances in id order, with e->lock held, that must not
 * hold it long (a LIST, compaction's copy): called after each instance, it
 * returns the next one; once the walk has held the lock WALK_HOLD_NS, it
 * first puts in's id in *cursor (owned by the caller: what a writer that
 * runs meanwhile may look at), lets the lock go (lock_pause) and returns
 * the instance after it as things then stand. Start with since =
 * util_mono_ns(). */
typedef struct {
    uint64_t since;
    unsigned steps;
    char **cursor;
} inst_walk;
instance *inst_walk_next(eng *e, inst_walk *w, instance *in);

/* dfile.c: a file that appears whole or not at all. Append to f->pend
 * (dfile_pos says where the next byte lands in the file, dfile_maybe_flush
 * writes it out past a few MiB); dfile_commit makes it durable and puts it
 * at path, dfile_abort drops it; either way no temp file stays. written and
 * crc cover what has reached the file. */
typedef struct {
    const wal_io *io;
    char dir[4200], path[4300], tmp[4400];
    int fd;
    uint64_t written;
    uint32_t crc;
    buf pend;
    int error; /* errno of the first failed write: dfile_commit reports it */
} dfile;
stm_code dfile_open(dfile *f, const wal_io *io, const char *dir, const char *path,
                    const char *tmp, stm_err *err);
uint64_t dfile_pos(const dfile *f);
void dfile_flush(dfile *f);
void dfile_maybe_flush(dfile *f);
stm_code dfile_commit(dfile *f, stm_err *err);
void dfile_abort(dfile *f);
/* The engine's file calls (fault injection in tests), else POSIX. */
static inline const wal_io *eng_io(const eng *e)
{
    return e->opts.io ? e->opts.io : &wal_posix_io;
}

/* compact.c */
/* The path of the database snapshot that ends at offset. */
void snap_path(eng *e, uint64_t offset, char *out, size_t n);
/* snapload.c: removes snapshot temp files a crash left behind (at open,
 * writers only). */
void snap_remove_stale_tmp(eng *e);
/* Loads the newest valid database snapshot, if any (before WAL replay). */
stm_code snap_load(eng *e, stm_err *err);
/* Takes a database snapshot and deletes the WAL segments it covers. */
stm_code snap_compact_now(eng *e, bool *created, uint64_t *segments, uint64_t *bytes,
                          stm_err *err);
/* The bit of hist_entry.snap_pos that says which snapshot file it points
 * into: the entries move to a new file a chunk at a time, while lines are
 * still read from both. */
#define SNAP_POS_GEN (1ull << 63)
/* Reads one history line kept in a snapshot (e->lock held); pos is a
 * hist_entry's current snap_pos. */
stm_code snap_read_line(eng *e, uint64_t pos, uint32_t len, buf *out, stm_err *err);
/* Call with e->lock held before changing an instance that existed before
 * the compaction in progress began: keeps its line as of then. */
void snap_capture_before_change(eng *e, instance *in);
void snap_close(eng *e);
/* The background compactor of compaction.* settings. */
void compactor_start(eng *e);
void compactor_stop(eng *e);

/* hub.c */
hub *hub_new(eng *e);
void hub_free(hub *h);
/* Publishes a record (under e->lock, in WAL order). */
void hub_publish(hub *h, const wal_record *rec, const entry_fields *f, const instance *in,
                 const char *history_line, size_t history_len);
/* Whether anyone is subscribed (hub_publish then needs the history line). */
bool hub_active(hub *h);
/* The acked watermark advanced: wake subscribers. */
void hub_wake(hub *h);
/* After a call that applied records up to last, without the engine lock:
 * the flusher may have acknowledged them between their append and their
 * publication to the hub, and the wake of that acknowledgement came
 * before they were there to be taken; without another, a subscriber
 * would hear of them only at the next acknowledgement. Wakes the hub's
 * subscribers again if last is acknowledged already. */
void eng_feed_catch_up(eng *e, uint64_t last);
size_t hub_count(hub *h);

/* ops.c */
stm_code ops_call(eng *e, const char *op, const cJSON *params, cJSON **result, uint64_t *seq,
                  stm_err *err);

#endif
