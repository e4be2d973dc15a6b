/*
 * engine.h - the database: machines, instances, events, history,
 * subscriptions, snapshots, replay. The one API that rcp/ and fs/ call;
 * neither adds semantics of its own.
 *
 * CALLS
 *   eng_call runs one operation of the RCP protocol (everything but the
 *   session ops HELLO, AUTH, PING, BYE, INFO, WATCH_*, UNWATCH) from its
 *   params object, with exactly the param rules, results and errors of
 *   reference rcp-protocol.md §8 and the fixes listed there. The result is a
 *   new cJSON object in the RCP result shape (the caller owns it and writes
 *   it with json_write(sort_keys = true)); stored contexts appear in it as
 *   cJSON_Raw nodes holding canonical text. The mount builds the same params
 *   objects from what users write, so both faces share every rule.
 *
 * DURABLE BEFORE VISIBLE
 *   Every call reports in *seq the WAL sequence its answer depends on: for a
 *   write, its own record; for a read, the newest record of what it read.
 *   Nobody may be shown the answer before eng_acked_seq() >= *seq: rcp/ holds
 *   the response in the connection's queue and sends it when the watermark
 *   passes (listeners are told); fs/ calls eng_wait. Writers never wait for
 *   each other's fsync inside the engine, so many share one fdatasync, and an
 *   event decided against a not-yet-durable state is appended after it (the
 *   WAL order is the apply order). If the WAL fails, later writes, and
 *   eng_wait for a record that was not acknowledged, return WAL_IO_ERROR
 *   and the engine stays read-only until restart; the changes of the
 *   records never acknowledged are undone in memory, so reads go on and
 *   show the acknowledged state, as a restart will.
 *
 * THREADS
 *   Every function is safe from any thread. One engine lock serialises
 *   changes; it is never held across a disk wait.
 */
#ifndef STM_ENGINE_H
#define STM_ENGINE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "wal/wal.h"

#define ENG_MAX_ID_LEN 1024          /* instance ids, machine names, event names */
#define ENG_MAX_BATCH_OPS 100

/* What one request may bring, checked where requests enter (eng_call, the
 * mount's writes go through it too), never at recovery: data accepted under
 * looser limits still loads. A limit that is hit is BAD_REQUEST naming the
 * config key (limits.<key>) and the value. 0 = no limit of the deployment;
 * the ceilings (ENG_MAX_ID_LEN, DEF_MAX_*, GUARD_MAX_*, the 16 MiB WAL
 * record) hold regardless. */
typedef struct {
    uint32_t max_id_bytes;           /* every string param: ids, names, keys; 1024 */
    uint32_t max_states;             /* per definition; 10000 */
    uint32_t max_transitions;        /* per definition, after 'from' fan-out; 100000 */
    uint32_t max_guard_bytes;        /* 4096 */
    uint32_t max_guard_depth;        /* '!' and parentheses; 64 */
    uint64_t max_definition_bytes;   /* normalised compact JSON; 8 MiB */
    uint64_t max_ctx_bytes;          /* an instance's context after a merge; 4 MiB */
    uint64_t max_payload_bytes;      /* an event's payload; 4 MiB */
} eng_limits;

typedef struct {
    const char *data_dir;            /* wal/ and snapshots/ live under it */
    uint64_t segment_size;           /* bytes; default 64 MiB */
    wal_sync_policy sync;            /* default every_write */
    uint32_t max_machine_versions;   /* 0 = unlimited */
    bool repair;                     /* let WAL recovery cut mid-log corruption */
    bool read_only;                  /* every write fails (audit mounts, tools) */
    uint64_t idempotency_max_keys;   /* retention bound: oldest keys forgotten first; 0 = unbounded */
    bool compact_enabled;
    uint64_t compact_events_threshold;   /* 0 disables the trigger */
    uint64_t compact_size_threshold_mb;  /* 0 disables the trigger */
    uint64_t compact_min_interval_secs;
    const struct wal_io *io;         /* NULL = POSIX; tests inject faults */
    eng_limits limits;
} eng_opts;

void eng_opts_defaults(eng_opts *o);

typedef struct eng eng;

/* Recovers (newest valid snapshot + WAL after it) and opens. rep, if not
 * NULL, receives what WAL recovery found (torn tail cut etc.). */
stm_code eng_open(const eng_opts *o, eng **out, wal_recovery *rep, stm_err *err);
/* Syncs and closes. */
void eng_close(eng *e);

/* ---- operations --------------------------------------------------------- */

/* Op names as in the protocol: "PUT_MACHINE", "GET_MACHINE", "LIST_MACHINES",
 * "CREATE_INSTANCE", "GET_INSTANCE", "LIST_INSTANCES", "DELETE_INSTANCE",
 * "APPLY_EVENT", "SNAPSHOT_INSTANCE", "WAL_READ", "WAL_STATS", "COMPACT".
 * params may be NULL (= {}). Returns STM_OK and *result, or a code with err.
 * Unknown op: BAD_REQUEST. */
stm_code eng_call(eng *e, const char *op, const cJSON *params, cJSON **result, uint64_t *seq,
                  stm_err *err);
bool eng_is_engine_op(const char *op);

/* BATCH in atomic mode: all of ops (engine ops only) take effect, or none
 * does (nothing written, nothing visible). results[i] receive each op's
 * result on success. On failure *failed_index names the op and err its
 * error. */
stm_code eng_call_atomic(eng *e, size_t n, const char *const *ops, const cJSON *const *params,
                         cJSON **results, uint64_t *seq, size_t *failed_index, stm_err *err);

/* ---- durability ---------------------------------------------------------- */

uint64_t eng_acked_seq(eng *e);
/* Whether the WAL has failed (and what it had not acknowledged is undone):
 * no write will be acknowledged again. Takes no lock. */
bool eng_failed(eng *e);
/* Writes and fdatasyncs everything appended so far, whatever the fsync
 * policy (fsync(2) on the mount, a clean shutdown). */
stm_code eng_sync(eng *e, stm_err *err);
/* Both may write pending records in the calling thread (wal_write_now)
 * and so run the engine's listeners there: call them holding no engine
 * lock and nothing a listener takes. */
stm_code eng_wait(eng *e, uint64_t seq, stm_err *err);
/* The caller will wait for seq by other means (a listener): have it written
 * now rather than batched (see wal_write_now). eng_wait does so by itself. */
void eng_kick(eng *e, uint64_t seq);
/* As eng_kick, but under every_write the caller writes and fdatasyncs the
 * group itself when the log is idle (wal_commit_now), blocking for the
 * disk: for an event loop whose clients all wait for seq, which then pays
 * no hand-off to the flusher and back. Same listener rule as eng_wait. */
void eng_commit_now(eng *e, uint64_t seq);
/* Under every_write: the caller will commit what its next ops append
 * (eng_commit_now) or let go (eng_release), so those appends need not wake
 * the WAL's flusher (wal_hold). No-op under other policies. */
void eng_hold(eng *e);
void eng_release(eng *e);
/* Whether the fsync policy syncs every group before acknowledging it
 * (every_write, every_n:0), and how long a caller of eng_commit_now may
 * then wait for more records to join its group (half an fdatasync). */
bool eng_syncs_each_group(eng *e);
uint64_t eng_commit_linger_ns(eng *e);
/* fn runs on the WAL flusher thread (no engine lock held) whenever the acked
 * watermark advances; keep it short (write an eventfd, signal a condvar).
 * Returns an id for eng_remove_listener. */
int eng_add_listener(eng *e, void (*fn)(void *arg, uint64_t acked_seq), void *arg);
void eng_remove_listener(eng *e, int id);

/* ---- typed reads for the mount (no JSON round trip) ---------------------- */

typedef struct {
    char *id, *machine, *state;
    uint32_t version;
    char *ctx_json;              /* canonical compact text */
    char *last_event_id;         /* NULL when none */
    uint64_t last_wal_offset;
    int64_t created_at, updated_at; /* unix ms, from the WAL records */
    bool deleted;
    uint64_t history_lines;      /* records of this instance (create, events, delete) */
    uint64_t history_bytes;      /* exact size of the rendered history */
    uint64_t seq;                /* newest record this view depends on */
} eng_instance_view;

/* Fills v with copies (free with eng_instance_view_free). Deleted instances:
 * INSTANCE_NOT_FOUND unless include_deleted. */
stm_code eng_get_instance_view(eng *e, const char *id, bool include_deleted,
                               eng_instance_view *v, stm_err *err);
void eng_instance_view_free(eng_instance_view *v);

/* Instance ids in byte order, after `after` (NULL = from the start), at most
 * max, optionally only those of machine (NULL = all). Calls fn for each; fn
 * returns false to stop. Returns how many were visited. Deleted excluded. */
size_t eng_list_instance_ids(eng *e, const char *machine, const char *after, size_t max,
                             bool (*fn)(void *arg, const char *id), void *arg);
uint64_t eng_instance_count(eng *e);
/* Instances created since the sorted index was last brought up to date,
 * read without the lock: a listing links them first, one to two
 * microseconds each, so a caller that must not wait (the RCP loop) hands a
 * listing with a long backlog to a thread of its own. */
size_t eng_index_backlog(eng *e);

/* Machine names in byte order; versions of one machine ascending. */
size_t eng_list_machines(eng *e, bool (*fn)(void *arg, const char *name), void *arg);
size_t eng_machine_versions(eng *e, const char *name, uint32_t *out, size_t max);
/* Newest version number; MACHINE_NOT_FOUND when the machine has none. */
stm_code eng_machine_latest(eng *e, const char *name, uint32_t *version, stm_err *err);
enum eng_def_format { ENG_DEF_JSON, ENG_DEF_YAML, ENG_DEF_DOT };
/* Appends the normalised definition of (name, version) in the format
 * (JSON pretty-printed with a final newline). */
stm_code eng_machine_text(eng *e, const char *name, uint32_t version, enum eng_def_format fmt,
                          buf *out, int64_t *mtime_ms, stm_err *err);

/* The events allowed from the instance's current state, one per line. */
stm_code eng_allowed_events(eng *e, const char *id, buf *out, uint64_t *seq, stm_err *err);

/* History of one instance as JSONL, one line per record of it:
 *   {"offset":..,"seq":..,"ts":..,"type":"create_instance"|"apply_event"|
 *    "delete_instance","event":..,"from":..,"to":..,"payload":..,
 *    "event_id":..?,"chain":"<hex>"}
 * Appends the bytes [from, from+max) of that text to out (the text only
 * ever grows, so a reader can follow it by position). */
stm_code eng_history_read(eng *e, const char *id, uint64_t from, size_t max, buf *out,
                          uint64_t *total_bytes, stm_err *err);

/* All retained WAL entries as JSONL ({"offset","sequence","entry"}, the
 * WAL_READ record shape) - bytes [from, from+max), total size in *total. */
stm_code eng_entries_read(eng *e, uint64_t from, size_t max, buf *out, uint64_t *total_bytes,
                          stm_err *err);

/* ---- subscriptions ------------------------------------------------------- */

typedef struct {
    uint64_t offset, seq;
    int64_t ts;
    uint8_t type;                /* WAL_T_* of the record */
    const char *instance_id;     /* NULL for put_machine */
    const char *machine;
    uint32_t version;
    const char *event, *from_state, *to_state; /* apply_event only */
    const char *payload_json;    /* canonical text, "null" when none */
    const char *ctx_json;        /* context after the record (create/apply) */
    const char *event_id;        /* NULL when none */
    const char *history_line;    /* the line eng_history_read shows for it, with '\n';
                                    NULL when replayed from the WAL for a subscription */
    const char *entry_line;      /* the line eng_entries_read shows for it, with '\n' */
} eng_event;

typedef struct {
    const char *instance_id;     /* WATCH_INSTANCE; NULL = all */
    const char *const *machines; size_t n_machines;    /* empty = any */
    const char *const *from_states; size_t n_from_states;
    const char *const *to_states; size_t n_to_states;
    const char *const *events; size_t n_events;
    bool apply_only;             /* RCP watches: apply_event records only */
    uint64_t from_offset;        /* 0 = live only; else catch up from the WAL first */
} eng_filter;

typedef struct eng_sub eng_sub;

/* Subscribes. wake(arg) is called (flusher thread or caller thread, no engine
 * lock held) when new events may be ready; then drain with eng_sub_next. */
stm_code eng_subscribe(eng *e, const eng_filter *f, void (*wake)(void *arg), void *arg,
                       eng_sub **out, stm_err *err);
/* Takes the next durable matching event: returns 1 and fills ev (valid until
 * the next call on sub), 0 when none is ready, or -1 when the subscriber fell
 * so far behind that events were dropped: *resume_offset then says where to
 * resubscribe with from_offset to get them back from the WAL. */
int eng_sub_next(eng_sub *s, eng_event *ev, uint64_t *resume_offset);
void eng_unsubscribe(eng_sub *s);

/* ---- point in time and verification -------------------------------------- */

/* Materialises the state as of WAL offset at (every record with offset <=
 * at; UINT64_MAX = the end) from the data dir without a running engine, as
 * JSON: {"at":..,"machines":[..],"instances":[..]} or, with instance_id, that
 * instance alone. Appends pretty JSON to out. */
stm_code eng_replay(const char *data_dir, uint64_t at, const char *instance_id, buf *out,
                    stm_err *err);
/* Rebuilds everything from the WAL alone and from the normal recovery path
 * (snapshot + tail) and compares them byte for byte; *report says what
 * differed. */
stm_code eng_replay_verify(const char *data_dir, buf *report, stm_err *err);

/* Counters for metrics and stats.json. */
typedef struct {
    uint64_t machines, machine_versions, instances, deleted_instances;
    uint64_t idempotency_keys, subscriptions;
    wal_stats wal;
} eng_stats;
void eng_get_stats(eng *e, eng_stats *st);

#endif
