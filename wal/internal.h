/*
 * internal.h - what the files of wal/ share; not part of the API.
 *
 * wal.c     open/close, append, the flusher thread, stats, delete
 * recover.c segment listing, the record reader, recovery, iteration, verify
 * io.c      the POSIX I/O table and the fault-injecting one
 * ahead.c   the read-ahead iterator (a producer thread over wal_iter)
 */
#ifndef STM_WAL_INTERNAL_H
#define STM_WAL_INTERNAL_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>

#include "base/util.h"
#include "wal/io.h"
#include "wal/wal.h"

/* A sparse index point every this many bytes lets an iterator start
 * mid-segment without rescanning the segment from byte 0. */
#define WAL_INDEX_EVERY (64u * 1024)
/* Appenders wait while this much is pending and not yet written. */
#define WAL_PENDING_MAX (64u * 1024 * 1024)
/* The flusher keeps the live segment zero-filled this far ahead of its
 * last write. Overwriting blocks that are already allocated and written
 * lets fdatasync flush the data alone; an append must also commit the new
 * size and block map through the file system journal. Measured on ext4
 * here: 1.4-1.8x the group commits per second. Never fallocate: unwritten
 * extents are converted at the first write, a journal commit again. */
#define WAL_PREALLOC (1u * 1024 * 1024)
/* Under a policy that acknowledges written records (never, every_n:N), a
 * record nobody waits for is written out when this much is pending or when
 * the oldest pending record is WAL_LAZY_NS old; a waiter (wal_wait,
 * wal_kick) has it written at once. Waking the flusher for every append cost
 * a futex wake and lock hand-off per record: a fifth of a single writer's
 * time in the engine benchmark. */
#define WAL_LAZY_BYTES (256u * 1024)
#define WAL_LAZY_NS (1000u * 1000)
/* Largest checkpoint payload: the fixed text with 20-digit numbers. */
#define WAL_CKPT_MAX 192

/* A segment file. Shared by reference so an iterator can keep reading one
 * that compaction has just deleted. */
typedef struct wal_seg {
    uint64_t id;
    int fd;           /* -1 until the flusher has created the file */
    int refs;         /* guarded by wal.mu */
    uint64_t size;    /* logical size: appended bytes, written or pending */
    uint64_t written; /* bytes in the file (readable) */
    uint64_t zeroed;  /* the file holds zeros up to here (flusher only) */
    uint64_t *idx;    /* record starts, at least WAL_INDEX_EVERY apart */
    size_t nidx, idxcap;
    const wal_io *io;
    char path[];
} wal_seg;

/* A known chain value: chain(before) is the value before the record at offset. */
typedef struct {
    uint64_t offset;
    uint8_t before[32];
} wal_anchor;

/* A contiguous run of pending bytes destined for one segment. */
typedef struct {
    wal_seg *seg;    /* holds a reference */
    uint64_t pos;    /* file position of the first byte */
    size_t off, len; /* in the group buffer */
    uint64_t last_seq;
    uint32_t records;
    bool creates; /* the flusher must create this segment's file first */
} wal_chunk;

struct wal {
    char *dir;
    const wal_io *io;
    uint64_t segment_size;
    wal_sync_policy sync;
    bool read_only;
    int lock_fd; /* the log's directory, flock()ed by the one writer; -1 for readers */

    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* flusher: work arrived */
    util_gate waiters; /* wal_wait and wal_sync: a watermark moved or the log failed */
    pthread_cond_t space_cv; /* appenders: pending group drained */

    wal_seg **segs;
    size_t nsegs, segcap;
    wal_anchor *anchors;
    size_t nanchors, anchorcap;

    uint64_t next_seq;
    uint64_t head_seq; /* sequence of the last record in file order */
    uint64_t open_seq; /* head_seq when opened: close checkpoints only new work */
    uint8_t chain[32];
    uint64_t since_ckpt; /* record bytes since the last checkpoint */
    bool cur_has_data;   /* current segment holds a non-checkpoint record */

    buf pend;
    uint64_t pend_records;
    uint64_t flusher_want; /* pending records the lingering flusher waits for */
    bool lazy;             /* policy acknowledges at write: batch unwaited records */
    uint64_t pend_since;   /* mono ns of the oldest pending append (lazy only) */
    uint64_t want_seq;     /* a waiter needs everything up to here written */
    wal_chunk *chunks;
    size_t nchunks, chunkcap;

    /* The group being written (write_group_locked): one writer at a time,
     * the flusher or, under never, a waiter writing for itself. */
    bool writing;
    bool flusher_turn;      /* the flusher waits for that writer to finish */
    bool flusher_timed;     /* the flusher sleeps on its batch timer (lazy) */
    buf gbuf;
    wal_chunk *gchunks;
    size_t gchunkcap;
    wal_seg *dirty;         /* segment with written, unsynced bytes (holds a ref) */
    uint64_t ms_deadline;   /* every_ms: when the oldest unsynced write must be synced */
    bool held;              /* wal_hold: appends leave the flusher asleep */
    uint64_t linger_ns;     /* every_write: how long to wait for a group (half an fdatasync) */
    uint64_t last_listened; /* the last watermark the listener was told (listen_mu) */
    pthread_mutex_t listen_mu; /* one listener call at a time, in watermark order */

    /* Written under mu; synced_seq, acked_seq and failed also read with
     * atomic loads by waiters, who hold no lock. */
    uint64_t written_seq, synced_seq, acked_seq, sync_target;
    uint64_t unsynced_records;
    bool stop, failed;
    char fail_msg[400];

    uint64_t bytes_written, writes, fsyncs, bytes_read, reads;

    void (*listener)(void *, uint64_t, bool);
    void *listener_arg;

    pthread_t flusher;
    bool flusher_running;

};

/* Big-endian helpers. */
static inline uint32_t wal_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t wal_be64(const unsigned char *p)
{
    return (uint64_t)wal_be32(p) << 32 | wal_be32(p + 4);
}
static inline void wal_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
static inline void wal_put64(unsigned char *p, uint64_t v)
{
    wal_put32(p, (uint32_t)(v >> 32));
    wal_put32(p + 4, (uint32_t)v);
}

/* Fills the 24-byte header. */
void wal_make_header(unsigned char h[WAL_HEADER_SIZE], uint8_t type, uint32_t len, uint32_t crc,
                     uint64_t seq);
bool wal_type_valid(uint8_t type);
/* chain(next) = SHA-256(prev || header || payload). */
void wal_chain_step(const uint8_t prev[32], const unsigned char *hdr, const void *payload,
                    uint32_t len, uint8_t out[32]);
/* The checkpoint payload text (returns its length) and its parser. */
int wal_ckpt_format(char *out, size_t n, int64_t ts, const uint8_t chain[32], uint64_t seq);
bool wal_ckpt_parse(const char *p, uint32_t len, uint8_t chain[32], uint64_t *seq);

/* Segment references (caller holds w->mu). */
void wal_seg_ref(wal_seg *s);
void wal_seg_unref(wal *w, wal_seg *s);
wal_seg *wal_seg_new(const wal_io *io, const char *dir, uint64_t id);
void wal_seg_index(wal_seg *s, uint64_t pos);
void wal_add_anchor(wal *w, uint64_t offset, const uint8_t before[32]);
void wal_push_seg(wal *w, wal_seg *s);
/* wal_iter_open without counting a read in the stats. */
stm_code wal_iter_open_internal(wal *w, uint64_t from, bool with_chain, wal_iter **out,
                                stm_err *err);

/* Recovery (recover.c): lists, scans, cuts and fills w's segments, anchors,
 * next_seq and chain. Called by wal_open before the flusher starts. */
stm_code wal_recover(wal *w, bool repair, wal_recovery *rep, stm_err *err);

/* What to do about an errno that a user can fix outside stmfs, for the end
 * of an error message ("" for the others). */
static inline const char *wal_errno_hint(int e)
{
    if (e == EMFILE)
        return " (the log keeps a descriptor per segment: raise ulimit -n or LimitNOFILE=, or "
               "compact the log)";
    return "";
}

#endif
