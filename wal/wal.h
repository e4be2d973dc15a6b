/*
 * wal.h - the write-ahead log: bytes on disk, nothing else.
 *
 * ON DISK (compatible with rstmdb's data directories)
 *   <dir>/<16 lower-case hex digits>.wal   segments, ids from 1, no header
 *   record = 24-byte big-endian header + payload, back to back, no padding:
 *     0  4  magic "WLOG"
 *     4  1  type (WAL_T_*)
 *     5  1  flags (0)      6  2  reserved (0)
 *     8  4  payload length (<= WAL_MAX_PAYLOAD)
 *     12 4  CRC-32C of the payload
 *     16 8  sequence number (1, 2, ... in file order, never reused)
 *   A record's global offset is (segment_id << 40) | byte position.
 *   A record goes into the current segment only if it fits whole
 *   (size + record <= segment_size); otherwise a new segment starts.
 *
 * HASH CHAIN
 *   chain(0) = 32 zero bytes; chain(r) = SHA-256(chain(prev) || header(r) ||
 *   payload(r)) over every record in log order, checkpoints included. Knowing
 *   chain(seq N) proves every byte of records 1..N. Checkpoint records (type
 *   6, which rstmdb's replay skips) carry the chain value *before* them:
 *     {"type":"checkpoint","timestamp":<unix ms>,"chain":"<64 hex>","chain_seq":<seq>}
 *   where chain_seq is the sequence of the record that value ends with (0 =
 *   empty log). One is written first in every segment after the first (so a
 *   compacted log stays verifiable from its oldest segment), after every
 *   WAL_CHECKPOINT_EVERY bytes of records appended since the open, and at a
 *   clean close that follows appends (opening and closing an untouched log
 *   writes nothing, so an rstmdb directory's next record lands exactly where
 *   rstmdb left off). Recovery therefore hashes only the records after the
 *   last checkpoint. Segments written by rstmdb have no checkpoints; their
 *   chain starts at zero at the first record of the oldest segment.
 *   Checkpoints take sequence numbers like any record (rstmdb's replay skips
 *   type 6, and entry_count counts them). The ones a running log writes
 *   come in through wal_append, right before the caller's record, and are
 *   reported with it (wal_record.ckpt_offset, ckpt_len).
 *
 * WRITING AND DURABILITY
 *   wal_append never waits for the disk: it copies the record into the
 *   pending group and returns its offset and sequence. One flusher thread
 *   writes each group with one write and, per policy, one fdatasync that
 *   covers every record appended before it (group commit); under never a
 *   waiter may write the group itself (wal_write_now), one group at a
 *   time either way. The "acked"
 *   watermark says which records a caller may acknowledge:
 *     every_write  acked = synced: written and covered by a completed fdatasync
 *     every_n:N    acked = written (in the kernel); fdatasync after every N records
 *     every_ms:M   acked = written; fdatasync at most M ms after a record is written
 *     never        acked = written; fdatasync only at rotation and close
 *   every_n counts every record written, checkpoints included. Under
 *   every_write the flusher waits up to half an fdatasync for as many
 *   records as its last group held, so a crowd of appenders woken by one
 *   sync shares the next one instead of splitting into alternating halves.
 *   An event loop that answers many clients may instead hold the log
 *   (wal_hold) while it appends their records and commit the group itself
 *   (wal_commit_now): the flusher then leaves a held group alone unless a
 *   waiter asks for it, so neither thread wakes the other for it.
 *   Rotation always fdatasyncs the old segment before the new one's file is
 *   created (and its directory fsynced), whatever the policy.
 *   Except under never, the flusher keeps the live segment zero-filled up
 *   to WAL_PREALLOC (1 MiB) past its last record, so that an fdatasync
 *   flushes data without a journal commit for the file's size. Rotation and
 *   a clean close cut the zeros, so only the live segment of a log whose
 *   writer crashed ends in zeros; recovery removes them as zero fill
 *   (wal_recovery.zero_tail), not as a torn tail.
 *   Any failed write or fdatasync marks the log failed: waiters and later
 *   appends get WAL_IO_ERROR until the log is reopened (a failed fsync is
 *   never retried and pretended good). The records of the group that failed
 *   are cut from the files again (best effort), so a reopen does not bring
 *   back what their writers were told had failed.
 *
 * RECOVERY (wal_open)
 *   Every segment is scanned and every CRC checked. A torn tail of the last
 *   segment (partial header or payload, bad CRC on the very last record,
 *   with or without zeros after it) is cut back to the last good record and
 *   reported; a tail of nothing but zeros is the writer's preallocation (or
 *   a file system's zero fill), removed and reported as zero fill
 *   (zero_tail), not as damage. A bad record
 *   with good records after it is corruption: wal_open refuses, naming the
 *   segment file and byte position, unless opts.repair, which cuts there and
 *   keeps the cut bytes in "<segment>.cut-<unix time>" beside it (later
 *   segments are renamed the same way). A record is bad when its magic,
 *   type, length, CRC or sequence (0 is never valid) is wrong; "good records
 *   after it" means any valid record found by resynchronising on the magic.
 *   Read-only opens report a torn tail and leave it in place. Whatever
 *   recovery keeps is fdatasynced before the log takes new appends.
 *
 * THREADS
 *   All functions may be called from any thread; wal serialises internally.
 */
#ifndef STM_WAL_H
#define STM_WAL_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"

#define WAL_HEADER_SIZE 24
#define WAL_MAX_PAYLOAD (16u * 1024 * 1024)
/* Above this a sequence number is damage: 2^62 appends would take millennia.
 * Appends that would need a number past it are refused (WAL_IO_ERROR), so
 * the log never holds what its next recovery would cut. */
#define WAL_MAX_SEQ (UINT64_C(1) << 62)
#define WAL_CHECKPOINT_EVERY (1u * 1024 * 1024)
#define WAL_POS_BITS 40
#define WAL_OFFSET(seg, pos) (((uint64_t)(seg) << WAL_POS_BITS) | (uint64_t)(pos))
#define WAL_OFF_SEG(off) ((uint64_t)(off) >> WAL_POS_BITS)
#define WAL_OFF_POS(off) ((uint64_t)(off) & ((1ull << WAL_POS_BITS) - 1))

enum {
    WAL_T_PUT_MACHINE = 1,
    WAL_T_CREATE_INSTANCE = 2,
    WAL_T_APPLY_EVENT = 3,
    WAL_T_DELETE_INSTANCE = 4,
    WAL_T_SNAPSHOT = 5,
    WAL_T_CHECKPOINT = 6,
    WAL_T_NOOP = 255,
};

typedef enum { WAL_SYNC_EVERY_WRITE, WAL_SYNC_EVERY_N, WAL_SYNC_EVERY_MS, WAL_SYNC_NEVER } wal_sync_mode;

typedef struct {
    wal_sync_mode mode;
    uint32_t arg; /* N for every_n (0 behaves as every_write), M for every_ms */
} wal_sync_policy;

/* Parses "every_write", "never", "every_n:N", "every_ms:M" (case-insensitive).
 * Returns STM_BAD_REQUEST with a message naming the text otherwise. */
stm_code wal_sync_policy_parse(const char *text, wal_sync_policy *out, stm_err *err);
/* Writes the policy back as text ("every_n:100"). */
void wal_sync_policy_format(const wal_sync_policy *p, char *out, size_t n);

struct wal_io; /* wal/io.h: the file I/O table tests swap to inject faults */

typedef struct {
    const char *dir;            /* the wal directory; created when missing */
    uint64_t segment_size;      /* bytes (rstmdb default 64 MiB) */
    wal_sync_policy sync;
    bool repair;                /* cut at mid-log corruption instead of refusing */
    bool read_only;             /* never modify files: no tail cut, appends fail */
    const struct wal_io *io;    /* NULL: real POSIX calls */
} wal_opts;

typedef struct {
    uint64_t segments;          /* segment files found */
    uint64_t records;           /* valid records kept */
    uint64_t bytes;             /* bytes of valid records */
    uint64_t cut_bytes;         /* bytes removed from the tail or by repair (0 = clean) */
    uint64_t cut_offset;        /* global offset where the cut was made */
    bool zero_tail;             /* what was cut held only zeros: preallocation, not damage */
    char message[600];          /* what was cut and why, for the log; "" when clean */
} wal_recovery;

/* One record as read or appended. payload points into storage owned by the
 * call that produced it (an iterator, or the caller's buf for wal_read_at). */
typedef struct {
    uint64_t offset;
    uint64_t seq;
    uint8_t type;
    uint32_t len;
    const char *payload;
    uint8_t chain[32];          /* chain value ending with this record */
    bool has_chain;             /* false when the iterator was opened without chain */
    /* Set by wal_append alone: the checkpoint the log wrote on its own just
     * before this record (the first record of a new segment, or one every
     * WAL_CHECKPOINT_EVERY bytes), ckpt_len = 0 when none. It has sequence
     * seq - 1 and sits at ckpt_offset, right before this record in the same
     * segment; wal_append writes at most one per call. An appender that
     * keeps a figure per record of the log (the engine's wal/entries size)
     * learns of it only here. Iterators and wal_read_at return checkpoints
     * as records of their own and do not set these. */
    uint64_t ckpt_offset;
    uint32_t ckpt_len;
} wal_record;

typedef struct {
    uint64_t entry_count;       /* highest sequence written (next seq - 1) */
    uint64_t segment_count;
    uint64_t first_offset;      /* offset of the oldest retained record (0 if none) */
    uint64_t latest_offset;     /* next write position: (seg << 40) | size */
    uint64_t total_size_bytes;  /* real current size of all segments */
    /* Since open: bytes and records written by the flusher (checkpoints
     * included); fdatasyncs of segments (policy, rotation, wal_sync, close);
     * reads = wal_iter_open + wal_read_at calls, bytes_read = the record
     * bytes they returned (header + payload), as rstmdb's io_stats count. */
    uint64_t bytes_written, writes, fsyncs, bytes_read, reads;
    uint64_t acked_seq, written_seq, synced_seq;
    uint8_t head_chain[32];     /* chain value of the last appended record */
    bool failed;                /* a write or fsync failed: read-only until reopened */
} wal_stats;

typedef struct wal wal;

/* Recovers and opens the log. rep (may be NULL) says what recovery found. */
stm_code wal_open(const wal_opts *opts, wal **out, wal_recovery *rep, stm_err *err);
/* Writes out and syncs everything pending (with a closing checkpoint unless
 * read-only or failed), stops the flusher, frees. Returns the sync's result. */
stm_code wal_close(wal *w, stm_err *err);

/* Appends one record. On success fills rec (offset, seq, type, len, chain,
 * and ckpt_offset/ckpt_len for a checkpoint written before it; payload =
 * NULL). Fails only when the payload is too large or the log has failed;
 * then nothing was appended, no checkpoint either. May block briefly when
 * the pending group is full (back-pressure), never on the disk otherwise. */
stm_code wal_append(wal *w, uint8_t type, const void *payload, uint32_t len, wal_record *rec,
                    stm_err *err);

/* Highest sequence that may be acknowledged under the policy (see above). */
uint64_t wal_acked_seq(wal *w);
/* Whether seq has been appended (or recovered): waiting for any other
 * would never end. */
bool wal_appended(wal *w, uint64_t seq);
/* Blocks until wal_acked_seq() >= seq. WAL_IO_ERROR if the log failed first. */
stm_code wal_wait(wal *w, uint64_t seq, stm_err *err);
/* Someone will wait for seq (without wal_wait: an event loop holding a
 * response): have it written now. Under every policy but every_ms a record
 * that nobody waits for is written (and under every_write synced) within a
 * millisecond or once 256 KiB are pending, so that a lone fast writer does
 * not wake the flusher for every record, nor an event loop that commits its
 * own groups (wal_commit_now); wal_wait kicks by itself. Cheap when there
 * is nothing to do. */
void wal_kick(wal *w, uint64_t seq);
/* As wal_kick, but under never the caller writes the pending group itself
 * when nobody else is writing (one pwrite, no fdatasync): no hand-off to
 * the flusher and back. Calls the listener from the calling thread, so
 * the caller must hold no lock the listener takes. wal_wait uses it. */
void wal_write_now(wal *w, uint64_t seq);
/* Under every_write (and every_n:0), when nobody else is writing, the
 * caller writes the pending group and fdatasyncs it itself, blocking for
 * the disk; otherwise as wal_kick. For an event loop that gathers a group
 * from its own clients and has nothing else to do until it is durable: the
 * flusher's hand-offs (a wake-up to take the group, another to report it
 * synced) cost as much as a third of an fdatasync on a 2-core machine.
 * Ends a wal_hold. Under the other policies, wal_write_now. Calls the listener from the
 * calling thread, as wal_write_now does. */
void wal_commit_now(wal *w, uint64_t seq);
/* Under every_write (and every_n:0): the caller is about to append records
 * it will commit itself (wal_commit_now) or hand over (wal_release), so
 * until then an append does not wake the flusher for them; waiters still
 * do (wal_wait kicks). No-op under other policies. */
void wal_hold(wal *w);
void wal_release(wal *w);
/* Whether every group is fdatasynced before it is acknowledged (every_write,
 * every_n:0), and how long the flusher waits for a group to fill (half the
 * last fdatasync, at most 1 ms): how long a wal_commit_now caller may wait
 * for more records before committing. */
bool wal_syncs_each_group(wal *w);
uint64_t wal_linger_ns(wal *w);
/* Called by the thread that wrote the group (the flusher, or under never a
 * waiter in wal_write_now), with no wal lock held, every time the acked
 * watermark advances (and once with the final value when the log fails).
 * Keep it short: it delays the next group. Set before the first append. */
void wal_set_listener(wal *w, void (*fn)(void *arg, uint64_t acked_seq, bool failed), void *arg);
/* Writes and fdatasyncs everything appended so far, whatever the policy. */
stm_code wal_sync(wal *w, stm_err *err);
/* Why the log failed ("fdatasync failed on FILE: No space left on device;
 * ..."), or NULL while it works. Valid until wal_close. */
const char *wal_failure(wal *w);

/* Reads the record that starts exactly at offset into payload (replacing its
 * content). NOT_FOUND-like failures return STM_BAD_REQUEST ("no record at
 * offset N"); I/O and CRC failures WAL_IO_ERROR. rec->has_chain is false. */
stm_code wal_read_at(wal *w, uint64_t offset, buf *payload, wal_record *rec, stm_err *err);

/* Iterates records with offset >= from (0 = from the oldest), in log order,
 * up to the written position at the time of each call. With with_chain each
 * record carries its chain value (hashing from the nearest checkpoint before
 * from). wal_iter_next returns 1 with a record, 0 at the end, or -1 with err
 * set (WAL_IO_ERROR naming file and position on a bad record). */
typedef struct wal_iter wal_iter;
stm_code wal_iter_open(wal *w, uint64_t from, bool with_chain, wal_iter **out, stm_err *err);
int wal_iter_next(wal_iter *it, wal_record *rec, stm_err *err);
void wal_iter_close(wal_iter *it);

/* The same pass with the chain, for one read to the end (replay): a second
 * thread reads, checks and hashes records in chunks ahead of the caller, so
 * the SHA-256 step overlaps the caller's work on another core. Same returns
 * as wal_iter_next; a record's payload is valid until the next call. Nothing
 * may append while it is open (it stops at the end it finds). */
typedef struct wal_ahead wal_ahead;
stm_code wal_ahead_open(wal *w, uint64_t from, wal_ahead **out, stm_err *err);
int wal_ahead_next(wal_ahead *a, wal_record *rec, stm_err *err);
void wal_ahead_close(wal_ahead *a);

void wal_get_stats(wal *w, wal_stats *st);

/* Compaction: deletes whole segments all of whose records lie before offset
 * (never the current segment), after fsyncing the directory state. Reports
 * how many segments and bytes went. */
stm_code wal_delete_before(wal *w, uint64_t offset, uint64_t *segments, uint64_t *bytes,
                           stm_err *err);

/* Offline check of a wal directory (no writer may have it open): every CRC,
 * every checkpoint against the recomputed chain; with expect_seq > 0 also
 * that chain(expect_seq) equals expect_chain. Fills the report; returns
 * STM_OK only if everything holds, else WAL_IO_ERROR with the first problem
 * (segment file, byte position, what was wrong) in err. */
typedef struct {
    uint64_t segments, records, checkpoints, bytes;
    uint64_t first_seq;         /* oldest retained record (0 = empty log) */
    uint64_t head_seq;
    uint64_t head_offset;
    uint8_t head_chain[32];
    uint64_t torn_bytes;        /* a torn tail is reported, not an error; zero fill is neither */
} wal_verify_report;
stm_code wal_verify(const char *dir, uint64_t expect_seq, const uint8_t expect_chain[32],
                    wal_verify_report *rep, stm_err *err);

/* Reading a log that wal_open refuses (damage inside it), for tools that
 * show what is there (`stmfs wal dump`): every segment in order, read-only,
 * with recovery's record checks and sequence rule. wal_salvage_next returns
 * 1 with the next valid record in rec (its payload valid until the next
 * call), 0 at the end, -2 on a read error (err), or -1 for a bad record,
 * described in d as recovery sees it: with no valid record after it, a
 * tail (torn, or zero fill when d->zeros) that ends the log; otherwise
 * damage, and the next call goes on from the next valid record (d->next_*),
 * so a caller that wants to stop there stops calling. */
typedef struct {
    char path[4200];            /* the segment file, and where in it */
    uint64_t pos, offset;
    char why[160];
    uint64_t rest;              /* bytes from the bad record to the end of the log */
    bool tail, zeros;
    char next_path[4200];       /* damage only: the next valid record */
    uint64_t next_pos, next_offset;
    uint64_t skipped;           /* bytes from the bad record to it */
} wal_damage;
typedef struct wal_salvage wal_salvage;
stm_code wal_salvage_open(const char *dir, wal_salvage **out, stm_err *err);
int wal_salvage_next(wal_salvage *s, wal_record *rec, wal_damage *d, stm_err *err);
void wal_salvage_close(wal_salvage *s);

/* Hex helpers for chain values. out must hold 65 bytes. */
void wal_hex(const uint8_t h[32], char out[65]);
bool wal_unhex(const char *hex, uint8_t h[32]);

#endif
