/*
 * wal.c - opening and closing the log, appending, the flusher thread.
 *
 * The on-disk format, the hash chain and the durability rules are in wal.h.
 * How the pieces fit:
 *
 *   appenders ──(mu)──> pending group buffer + chunk list (one chunk per
 *                       segment touched), seq/chain/offset assigned here
 *   flusher   ──swap──> writes each chunk with one pwrite; creating a new
 *                       segment first fdatasyncs the previous one, then
 *                       creates the file and fsyncs the directory; then one
 *                       fdatasync per group as the policy says
 *   watermarks          written_seq <= synced_seq ... acked_seq follows the
 *                       policy; waiters and the listener see it move
 *
 * One group is written at a time (write_group_locked, the writing flag), so
 * no file lock is needed between appenders. The flusher writes groups; under
 * never a waiter writes its own (wal_write_now): one pwrite in the waiting
 * thread costs less than waking the flusher and being woken by it, 2
 * context switches a record for a lone writer. Recovery (recover.c) runs
 * before the flusher starts.
 */
/* SHA256_* are deprecated in OpenSSL 3.0 but kept; see wal_chain_step */
#define OPENSSL_API_COMPAT 0x10101000L
#include <errno.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/util.h"
#include "wal/internal.h"

/* ---- small shared helpers ---------------------------------------------- */

void wal_make_header(unsigned char h[WAL_HEADER_SIZE], uint8_t type, uint32_t len, uint32_t crc,
                     uint64_t seq)
{
    memcpy(h, "WLOG", 4);
    h[4] = type;
    h[5] = 0;
    h[6] = h[7] = 0;
    wal_put32(h + 8, len);
    wal_put32(h + 12, crc);
    wal_put64(h + 16, seq);
}

bool wal_type_valid(uint8_t type)
{
    return (type >= WAL_T_PUT_MACHINE && type <= WAL_T_CHECKPOINT) || type == WAL_T_NOOP;
}

/* OpenSSL's SHA256_* rather than EVP: on OpenSSL 3.0 every EVP_DigestInit
 * allocates and frees a provider context, and the chain step runs once per
 * record on the appender's and the replay's path. Both use the same block
 * function (SHA extensions where the CPU has them); the EVP overhead was
 * 50-70 ns of a 330 ns step for a 330-byte record. */
void wal_chain_step(const uint8_t prev[32], const unsigned char *hdr, const void *payload,
                    uint32_t len, uint8_t out[32])
{
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, prev, 32);
    SHA256_Update(&c, hdr, WAL_HEADER_SIZE);
    if (len) SHA256_Update(&c, payload, len);
    SHA256_Final(out, &c);
}

void wal_hex(const uint8_t h[32], char out[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[64] = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool wal_unhex(const char *hex, uint8_t h[32])
{
    for (int i = 0; i < 32; i++) {
        int a = hexval(hex[2 * i]);
        if (a < 0) return false;
        int b = hexval(hex[2 * i + 1]);
        if (b < 0) return false;
        h[i] = (uint8_t)(a << 4 | b);
    }
    return hex[64] == 0;
}

/* The checkpoint payload is fixed text, so wal needs no JSON library: the
 * key order and spelling below are the format. */
int wal_ckpt_format(char *out, size_t n, int64_t ts, const uint8_t chain[32], uint64_t seq)
{
    char hex[65];
    wal_hex(chain, hex);
    return snprintf(out, n,
                    "{\"type\":\"checkpoint\",\"timestamp\":%lld,\"chain\":\"%s\","
                    "\"chain_seq\":%llu}",
                    (long long)ts, hex, (unsigned long long)seq);
}

static bool eat(const char **p, const char *end, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0) return false;
    *p += n;
    return true;
}

static bool eat_uint(const char **p, const char *end, uint64_t *v)
{
    const char *s = *p;
    if (s < end && *s == '-') s++;
    if (s >= end || *s < '0' || *s > '9') return false;
    uint64_t x = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        if (x > (UINT64_MAX - 9) / 10) return false;
        x = x * 10 + (uint64_t)(*s++ - '0');
    }
    *v = x;
    *p = s;
    return true;
}

bool wal_ckpt_parse(const char *p, uint32_t len, uint8_t chain[32], uint64_t *seq)
{
    const char *end = p + len;
    uint64_t ts;
    char hex[65];
    if (!eat(&p, end, "{\"type\":\"checkpoint\",\"timestamp\":") || !eat_uint(&p, end, &ts) ||
        !eat(&p, end, ",\"chain\":\"") || end - p < 64)
        return false;
    memcpy(hex, p, 64);
    hex[64] = 0;
    p += 64;
    if (!wal_unhex(hex, chain) || !eat(&p, end, "\",\"chain_seq\":") || !eat_uint(&p, end, seq) ||
        !eat(&p, end, "}"))
        return false;
    return p == end;
}

stm_code wal_sync_policy_parse(const char *text, wal_sync_policy *out, stm_err *err)
{
    const char *t = text ? text : "";
    while (*t == ' ')
        t++;
    if (strcasecmp(t, "every_write") == 0) {
        *out = (wal_sync_policy){WAL_SYNC_EVERY_WRITE, 0};
        return STM_OK;
    }
    if (strcasecmp(t, "never") == 0) {
        *out = (wal_sync_policy){WAL_SYNC_NEVER, 0};
        return STM_OK;
    }
    wal_sync_mode mode;
    if (strncasecmp(t, "every_n:", 8) == 0)
        mode = WAL_SYNC_EVERY_N;
    else if (strncasecmp(t, "every_ms:", 9) == 0)
        mode = WAL_SYNC_EVERY_MS;
    else
        goto bad;
    {
        const char *n = strchr(t, ':') + 1;
        while (*n == ' ')
            n++;
        uint64_t v;
        const char *p = n, *end = n + strlen(n);
        if (*n == '-' || !eat_uint(&p, end, &v) || v > UINT32_MAX) goto bad;
        while (*p == ' ')
            p++;
        if (*p) goto bad;
        *out = (wal_sync_policy){mode, (uint32_t)v};
        return STM_OK;
    }
bad:
    return stm_fail(err, STM_BAD_REQUEST,
                    "unknown fsync policy '%s': use every_write, every_n:N, every_ms:M or never",
                    text ? text : "");
}

void wal_sync_policy_format(const wal_sync_policy *p, char *out, size_t n)
{
    switch (p->mode) {
    case WAL_SYNC_EVERY_WRITE:
        snprintf(out, n, "every_write");
        break;
    case WAL_SYNC_EVERY_N:
        snprintf(out, n, "every_n:%u", p->arg);
        break;
    case WAL_SYNC_EVERY_MS:
        snprintf(out, n, "every_ms:%u", p->arg);
        break;
    case WAL_SYNC_NEVER:
        snprintf(out, n, "never");
        break;
    }
}

/* ---- segments and anchors ---------------------------------------------- */

wal_seg *wal_seg_new(const wal_io *io, const char *dir, uint64_t id)
{
    size_t n = strlen(dir) + 32;
    wal_seg *s = xcalloc(1, sizeof *s + n);
    s->id = id;
    s->fd = -1;
    s->refs = 1;
    s->io = io;
    snprintf(s->path, n, "%s/%016llx.wal", dir, (unsigned long long)id);
    return s;
}

void wal_seg_ref(wal_seg *s)
{
    s->refs++;
}

void wal_seg_unref(wal *w, wal_seg *s)
{
    (void)w;
    if (--s->refs > 0) return;
    if (s->fd >= 0) s->io->close(s->fd);
    free(s->idx);
    free(s);
}

void wal_seg_index(wal_seg *s, uint64_t pos)
{
    if (s->nidx && pos - s->idx[s->nidx - 1] < WAL_INDEX_EVERY) return;
    if (s->nidx == s->idxcap) {
        s->idxcap = s->idxcap ? 2 * s->idxcap : 16;
        s->idx = xrealloc(s->idx, s->idxcap * sizeof *s->idx);
    }
    s->idx[s->nidx++] = pos;
}

void wal_add_anchor(wal *w, uint64_t offset, const uint8_t before[32])
{
    if (w->nanchors == w->anchorcap) {
        w->anchorcap = w->anchorcap ? 2 * w->anchorcap : 16;
        w->anchors = xrealloc(w->anchors, w->anchorcap * sizeof *w->anchors);
    }
    w->anchors[w->nanchors].offset = offset;
    memcpy(w->anchors[w->nanchors].before, before, 32);
    w->nanchors++;
}

void wal_push_seg(wal *w, wal_seg *s)
{
    if (w->nsegs == w->segcap) {
        w->segcap = w->segcap ? 2 * w->segcap : 8;
        w->segs = xrealloc(w->segs, w->segcap * sizeof *w->segs);
    }
    w->segs[w->nsegs++] = s;
}

/* ---- appending (caller holds mu) --------------------------------------- */

static void put_record(wal *w, wal_seg *seg, uint8_t type, const void *p, uint32_t len,
                       uint32_t crc, wal_record *rec)
{
    unsigned char h[WAL_HEADER_SIZE];
    uint64_t seq = __atomic_fetch_add(&w->next_seq, 1, __ATOMIC_RELAXED);
    uint64_t pos = seg->size;
    wal_make_header(h, type, len, crc, seq);

    wal_chunk *c = w->nchunks ? &w->chunks[w->nchunks - 1] : NULL;
    if (!c || c->seg != seg) {
        if (w->nchunks == w->chunkcap) {
            w->chunkcap = w->chunkcap ? 2 * w->chunkcap : 8;
            w->chunks = xrealloc(w->chunks, w->chunkcap * sizeof *w->chunks);
        }
        c = &w->chunks[w->nchunks++];
        *c = (wal_chunk){.seg = seg, .pos = pos, .off = w->pend.len};
        wal_seg_ref(seg);
    }
    buf_add(&w->pend, h, sizeof h);
    if (len) buf_add(&w->pend, p, len);
    c->len += sizeof h + len;
    c->last_seq = seq;
    c->records++;
    w->pend_records++;

    uint64_t off = WAL_OFFSET(seg->id, pos);
    if (type == WAL_T_CHECKPOINT) wal_add_anchor(w, off, w->chain);
    wal_chain_step(w->chain, h, p, len, w->chain);
    wal_seg_index(seg, pos);
    seg->size += sizeof h + len;
    w->head_seq = seq;
    if (type == WAL_T_CHECKPOINT) {
        w->since_ckpt = 0;
    } else {
        w->since_ckpt += sizeof h + len;
        w->cur_has_data = true;
    }
    if (rec) {
        rec->offset = off;
        rec->seq = seq;
        rec->type = type;
        rec->len = len;
        rec->payload = NULL;
        memcpy(rec->chain, w->chain, 32);
        rec->has_chain = true;
        rec->ckpt_offset = 0;
        rec->ckpt_len = 0;
    }
}

/* rec (may be NULL) receives where the checkpoint went. */
static void put_checkpoint(wal *w, wal_seg *seg, wal_record *rec)
{
    char p[WAL_CKPT_MAX];
    int n = wal_ckpt_format(p, sizeof p, util_now_ms(), w->chain, w->head_seq);
    put_record(w, seg, WAL_T_CHECKPOINT, p, (uint32_t)n, crc32c(0, p, (size_t)n), rec);
}

static wal_seg *rotate(wal *w, wal_record *ckpt)
{
    wal_seg *cur = w->segs[w->nsegs - 1];
    wal_seg *s = wal_seg_new(w->io, w->dir, cur->id + 1);
    wal_push_seg(w, s);
    w->cur_has_data = false;
    /* Carrying the chain into the segment's first record keeps the log
     * verifiable from its oldest segment once older ones are compacted. */
    put_checkpoint(w, s, ckpt);
    return s;
}

stm_code wal_append(wal *w, uint8_t type, const void *payload, uint32_t len, wal_record *rec,
                    stm_err *err)
{
    if (len > WAL_MAX_PAYLOAD)
        return stm_fail(err, STM_WAL_IO_ERROR,
                        "record too large: %u bytes of payload, the limit is %u", len,
                        WAL_MAX_PAYLOAD);
    if (!wal_type_valid(type) || type == WAL_T_CHECKPOINT)
        return stm_fail(err, STM_BAD_REQUEST, "record type %u cannot be appended", type);
    uint32_t crc = crc32c(0, payload, len);
    uint64_t need = WAL_HEADER_SIZE + (uint64_t)len;

    pthread_mutex_lock(&w->mu);
    if (w->read_only) {
        pthread_mutex_unlock(&w->mu);
        return stm_fail(err, STM_WAL_IO_ERROR, "the write-ahead log in %s is open read-only",
                        w->dir);
    }
    while (!w->failed && !w->stop && w->pend.len > 0 &&
           w->pend.len + need + 2 * (WAL_HEADER_SIZE + WAL_CKPT_MAX) > WAL_PENDING_MAX)
        pthread_cond_wait(&w->space_cv, &w->mu);
    if (w->failed || w->stop) {
        stm_code rc = stm_fail(err, STM_WAL_IO_ERROR, "%s",
                               w->failed ? w->fail_msg : "the write-ahead log is closing");
        pthread_mutex_unlock(&w->mu);
        return rc;
    }
    /* Never write what recovery would refuse: past WAL_MAX_SEQ a number is
     * damage, and the record, a checkpoint before it and the closing one
     * must all stay within it. Only a log whose last header was damaged
     * into a huge (unchecksummed) number gets here. */
    if (w->next_seq + 2 > WAL_MAX_SEQ) {
        stm_code rc = stm_fail(err, STM_WAL_IO_ERROR,
                               "the write-ahead log in %s is at sequence %llu, the end of what "
                               "it may number (its last record's header is probably damaged); "
                               "it takes no more writes: check it with `stmfs wal verify`",
                               w->dir, (unsigned long long)(w->next_seq - 1));
        pthread_mutex_unlock(&w->mu);
        return rc;
    }
    wal_seg *cur = w->segs[w->nsegs - 1];
    /* An empty segment after the first (left by a crash right after a
     * rotation) still gets its leading checkpoint. */
    bool ckpt = w->since_ckpt >= WAL_CHECKPOINT_EVERY || (cur->size == 0 && cur->id > 1);
    uint64_t total = need + (ckpt ? WAL_HEADER_SIZE + WAL_CKPT_MAX : 0);
    /* At most one checkpoint goes in before the record: a rotation's
     * replaces the periodic one (it resets since_ckpt). */
    wal_record ck = {0};
    if (w->cur_has_data && cur->size + total > w->segment_size) {
        cur = rotate(w, &ck);
        ckpt = false;
    }
    bool was_empty = w->pend.len == 0;
    if (ckpt) put_checkpoint(w, cur, &ck);
    put_record(w, cur, type, payload, len, crc, rec);
    if (rec && ck.seq) {
        /* The caller never saw this record go in: tell it with its own, so
         * that whoever counts every record of the log (the engine's
         * wal/entries) counts this one too, in log order. */
        rec->ckpt_offset = ck.offset;
        rec->ckpt_len = ck.len;
    }
    if (w->lazy && was_empty) w->pend_since = util_mono_ns();
    if (w->flusher_want) {
        /* A lingering flusher is woken only once its group is complete:
         * waking it for every arrival costs a context switch per record. */
        if (w->pend_records >= w->flusher_want) pthread_cond_signal(&w->work_cv);
    } else if (w->lazy) {
        /* Nobody waits for this record yet: the flusher takes it with the
         * next waiter, the next timeout or a full batch. The first pending
         * record wakes it once so that it arms the timeout. */
        if ((was_empty && !w->flusher_timed) || w->pend.len >= WAL_LAZY_BYTES)
            pthread_cond_signal(&w->work_cv);
    } else if (!w->held) {
        pthread_cond_signal(&w->work_cv);
    }
    pthread_mutex_unlock(&w->mu);
    return STM_OK;
}

/* ---- the flusher --------------------------------------------------------- */

static void wake_waiters(wal *w)
{
    util_gate_open(&w->waiters);
}

/* Sleeps until *mark >= target or the log fails. */
static void wait_until(wal *w, const uint64_t *mark, uint64_t target)
{
    util_gate_wait_mark(&w->waiters, mark, target, &w->failed, 0);
}

bool wal_syncs_each_group(wal *w)
{
    return w->sync.mode == WAL_SYNC_EVERY_WRITE ||
           (w->sync.mode == WAL_SYNC_EVERY_N && w->sync.arg == 0);
}

static void set_acked(wal *w)
{
    uint64_t a = wal_syncs_each_group(w) ? w->synced_seq : w->written_seq;
    if (a > w->acked_seq) __atomic_store_n(&w->acked_seq, a, __ATOMIC_RELEASE);
}

static void fail_locked(wal *w, const char *what, const char *path, int e)
{
    if (!w->failed) {
        snprintf(w->fail_msg, sizeof w->fail_msg,
                 "%s failed on %s: %s%s; the write-ahead log takes no more writes until stmfs "
                 "is restarted",
                 what, path, strerror(e), wal_errno_hint(e));
        __atomic_store_n(&w->failed, true, __ATOMIC_RELEASE);
    }
    for (size_t i = 0; i < w->nchunks; i++)
        wal_seg_unref(w, w->chunks[i].seg);
    w->nchunks = 0;
    w->pend_records = 0;
    buf_reset(&w->pend);
    wake_waiters(w);
    pthread_cond_broadcast(&w->space_cv);
}

/* After a failed write or fdatasync, none of the group's records will be
 * acknowledged (their waiters get WAL_IO_ERROR), yet whatever of them reached
 * the files would come back at the next open. So each segment the group
 * touched is cut back to where the group began in it. Best effort: if the
 * disk refuses this too, the next open finds what a crash would have left.
 * Caller holds w->mu; the group's chunks still hold their segments. */
static void cut_group(wal *w, const wal_chunk *gc, size_t ncs)
{
    for (size_t i = 0; i < ncs; i++) {
        wal_seg *s = gc[i].seg;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = gc[j].seg == s;
        if (seen || s->fd < 0) continue;
        if (w->io->ftruncate(s->fd, (off_t)gc[i].pos) == 0) {
            w->io->fdatasync(s->fd);
            s->size = gc[i].pos;
            if (s->written > gc[i].pos) s->written = gc[i].pos;
            s->zeroed = s->written;
        }
    }
}

static bool write_all(const wal_io *io, int fd, const char *p, size_t n, uint64_t pos, int *e)
{
    while (n) {
        ssize_t k = io->pwrite(fd, p, n, (off_t)pos);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            *e = k < 0 ? errno : EIO;
            return false;
        }
        p += k;
        n -= (size_t)k;
        pos += (uint64_t)k;
    }
    return true;
}

/* Zero-fills the live segment ahead of the group just written, up to the
 * segment size (a segment that ends past it by its last record needs
 * nothing more). The zeros are covered by the group's own fdatasync. */
static bool preallocate(wal *w, wal_seg *s, uint64_t end, int *e)
{
    static const char zeros[64 * 1024];
    /* Under never nothing waits for an fdatasync: the zeros would only
     * double what the kernel writes back. */
    if (w->sync.mode == WAL_SYNC_NEVER) return true;
    if (end + WAL_PREALLOC / 4 <= s->zeroed || end >= w->segment_size) return true;
    uint64_t from = end > s->zeroed ? end : s->zeroed;
    uint64_t to = end + WAL_PREALLOC < w->segment_size ? end + WAL_PREALLOC : w->segment_size;
    for (uint64_t p = from; p < to; p += sizeof zeros) {
        size_t n = to - p < sizeof zeros ? (size_t)(to - p) : sizeof zeros;
        if (!write_all(w->io, s->fd, zeros, n, p, e)) {
            /* A disk too full for the zeros may still take the records:
             * go on appending. Marking the range zeroed (whatever part of
             * it landed) stops retries and keeps the trim at rotation and
             * close. */
            if (*e != ENOSPC && *e != EDQUOT) return false;
            *e = 0;
            break;
        }
    }
    s->zeroed = to;
    return true;
}

/* A segment that stops being the live one loses its zero fill, so every
 * sealed segment ends at its last record. The caller's fdatasync makes the
 * new size durable. */
static bool trim_zeros(wal *w, wal_seg *s, int *e)
{
    if (s->zeroed <= s->written) return true;
    if (w->io->ftruncate(s->fd, (off_t)s->written) != 0) {
        *e = errno;
        return false;
    }
    s->zeroed = s->written;
    return true;
}

static uint64_t mono_ns(void)
{
    return util_mono_ns();
}

/* Tells the listener the newest watermark, unless it was told already.
 * Two threads may write groups one after the other and get here at once;
 * reading the mark under listen_mu keeps what the listener hears in order. */
static void tell_listener(wal *w)
{
    pthread_mutex_lock(&w->listen_mu);
    void (*fn)(void *, uint64_t, bool) = w->listener;
    uint64_t acked = __atomic_load_n(&w->acked_seq, __ATOMIC_ACQUIRE);
    bool failed = __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE);
    if (fn && (acked > w->last_listened || (failed && w->last_listened != UINT64_MAX))) {
        w->last_listened = failed ? UINT64_MAX : acked;
        fn(w->listener_arg, acked, failed);
    }
    pthread_mutex_unlock(&w->listen_mu);
}

/* Takes the pending group, writes it, syncs it when the policy (or
 * wal_sync) says so, and acknowledges what may be. Called with mu held and
 * nobody else writing; returns with mu held. The flusher calls it, and
 * under never so does a waiter (wal_write_now): a lone writer's record then
 * needs no hand-off to another thread and back. */
static void write_group_locked(wal *w)
{
    w->writing = true;
    w->pend_records = 0;

    /* Take the whole pending group; appenders refill the other buffer. */
    buf tb = w->pend;
    w->pend = w->gbuf;
    w->gbuf = tb;
    wal_chunk *gc = w->chunks;
    size_t ncs = w->nchunks, gcap = w->chunkcap;
    w->chunks = w->gchunks;
    w->chunkcap = w->gchunkcap;
    w->nchunks = 0;
    w->gchunks = gc;
    w->gchunkcap = gcap;
    const buf gb = w->gbuf;
    pthread_cond_broadcast(&w->space_cv);
    pthread_mutex_unlock(&w->mu);

    const char *what = NULL, *path = NULL;
    int e = 0;
    for (size_t i = 0; i < ncs && !what; i++) {
        wal_chunk *c = &gc[i];
        if (w->dirty && w->dirty != c->seg) {
            /* Rotation: the old segment must be durable before any
             * record of the new one can count as durable. */
            if (!trim_zeros(w, w->dirty, &e)) {
                what = "truncating", path = w->dirty->path;
                break;
            }
            if (w->io->fdatasync(w->dirty->fd) != 0) {
                what = "fdatasync", path = w->dirty->path, e = errno;
                break;
            }
            pthread_mutex_lock(&w->mu);
            w->fsyncs++;
            __atomic_store_n(&w->synced_seq, w->written_seq, __ATOMIC_RELEASE);
            w->unsynced_records = 0;
            wal_seg_unref(w, w->dirty);
            w->dirty = NULL;
            pthread_mutex_unlock(&w->mu);
        }
        if (c->seg->fd < 0) {
            int fd = w->io->open(c->seg->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (fd < 0) {
                what = "creating the segment", path = c->seg->path, e = errno;
                break;
            }
            pthread_mutex_lock(&w->mu);
            c->seg->fd = fd;
            pthread_mutex_unlock(&w->mu);
            if (w->io->fsync_dir(w->dir) != 0) {
                what = "fsync of the directory", path = w->dir, e = errno;
                break;
            }
        }
        if (!write_all(w->io, c->seg->fd, gb.data + c->off, c->len, c->pos, &e) ||
            !preallocate(w, c->seg, c->pos + c->len, &e)) {
            what = "write", path = c->seg->path;
            break;
        }
        pthread_mutex_lock(&w->mu);
        c->seg->written = c->pos + c->len;
        w->written_seq = c->last_seq;
        w->bytes_written += c->len;
        w->writes += c->records;
        w->unsynced_records += c->records;
        if (!w->dirty) {
            w->dirty = c->seg;
            wal_seg_ref(w->dirty);
        }
        pthread_mutex_unlock(&w->mu);
    }

    pthread_mutex_lock(&w->mu);
    if (what) {
        cut_group(w, gc, ncs);
        fail_locked(w, what, path, e);
    } else {
        bool sync = false;
        bool pendingsync = w->written_seq > w->synced_seq;
        switch (w->sync.mode) {
        case WAL_SYNC_EVERY_WRITE:
            sync = true;
            break;
        case WAL_SYNC_EVERY_N:
            sync = w->sync.arg == 0 || w->unsynced_records >= w->sync.arg;
            break;
        case WAL_SYNC_EVERY_MS:
            if (pendingsync && !w->ms_deadline)
                w->ms_deadline = mono_ns() + (uint64_t)w->sync.arg * 1000000u;
            sync = w->ms_deadline && mono_ns() >= w->ms_deadline;
            break;
        case WAL_SYNC_NEVER:
            break;
        }
        if (w->sync_target > w->synced_seq) sync = true;
        if (sync && pendingsync && w->dirty) {
            uint64_t upto = w->written_seq;
            wal_seg *d = w->dirty;
            pthread_mutex_unlock(&w->mu);
            uint64_t t0 = mono_ns();
            int rc = w->io->fdatasync(d->fd);
            int se = errno;
            uint64_t took = mono_ns() - t0;
            pthread_mutex_lock(&w->mu);
            __atomic_store_n(&w->linger_ns, took / 2 < 1000000 ? took / 2 : 1000000,
                             __ATOMIC_RELAXED);
            if (rc != 0) {
                cut_group(w, gc, ncs);
                fail_locked(w, "fdatasync", d->path, se);
            } else {
                w->fsyncs++;
                __atomic_store_n(&w->synced_seq, upto, __ATOMIC_RELEASE);
                w->unsynced_records = 0;
            }
        } else if (sync) {
            __atomic_store_n(&w->synced_seq, w->written_seq, __ATOMIC_RELEASE);
        }
        if (w->synced_seq >= w->written_seq) w->ms_deadline = 0;
    }
    for (size_t i = 0; i < ncs; i++)
        wal_seg_unref(w, gc[i].seg);
    buf_reset(&w->gbuf);
    if (!w->failed) set_acked(w);
    w->writing = false;
    /* Only a flusher waiting for its turn is woken: one sleeping on its
     * batch timer stays asleep, or every self-written group would cost
     * the hand-off it was written to save. */
    if (w->flusher_turn) pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    wake_waiters(w);
    tell_listener(w);
    pthread_mutex_lock(&w->mu);
}

static void *flusher_main(void *arg)
{
    wal *w = arg;
    uint64_t last_group = 0;
    util_name_thread("wal-flusher");
    const bool strict = wal_syncs_each_group(w);

    pthread_mutex_lock(&w->mu);
    for (;;) {
        for (;;) {
            uint64_t wake_at = 0;
            uint64_t deadline = w->ms_deadline;
            if (w->failed) {
                if (w->stop && !w->writing) goto out;
            } else if (w->writing) {
                /* a waiter is writing a group itself (never): after it */
                w->flusher_turn = true;
            } else {
                if (w->sync_target > w->synced_seq) break;
                if (w->pend.len) {
                    bool asked = w->stop || w->pend.len >= WAL_LAZY_BYTES ||
                                 w->want_seq > w->written_seq;
                    /* a held group is its holder's to commit (wal_hold) */
                    if (asked || (!w->lazy && !w->held)) break;
                    if (w->lazy) {
                        uint64_t due = w->pend_since + WAL_LAZY_NS;
                        if (mono_ns() >= due) break;
                        if (!deadline || due < deadline) wake_at = due;
                    }
                }
                if (deadline && mono_ns() >= deadline) break;
                if (w->stop) goto out;
            }
            if (deadline && (!wake_at || deadline < wake_at)) wake_at = deadline;
            if (wake_at && !w->failed) {
                struct timespec ts = {(time_t)(wake_at / 1000000000u),
                                      (long)(wake_at % 1000000000u)};
                /* the timer is due no later than any record appended
                 * meanwhile, so those need not wake it (flusher_timed) */
                w->flusher_timed = wake_at <= w->pend_since + WAL_LAZY_NS;
                pthread_cond_timedwait(&w->work_cv, &w->mu, &ts);
            } else {
                pthread_cond_wait(&w->work_cv, &w->mu);
            }
            w->flusher_turn = w->flusher_timed = false;
        }

        /* Under every_write the appenders woken by the last fdatasync come
         * back within microseconds; taking the group at the first arrival
         * would split them into two alternating half-size groups. So wait
         * briefly (a fraction of an fdatasync) for as many records as the
         * last group had. */
        if (strict && !w->failed && !w->stop && w->pend_records < last_group) {
            uint64_t until = mono_ns() + w->linger_ns;
            struct timespec ts = {(time_t)(until / 1000000000u), (long)(until % 1000000000u)};
            w->flusher_want = last_group;
            while (!w->failed && !w->stop && w->pend_records < last_group &&
                   pthread_cond_timedwait(&w->work_cv, &w->mu, &ts) == 0)
                ;
            w->flusher_want = 0;
        }
        /* an event loop may be writing the group it took while we lingered
         * (wal_commit_now): ours comes after it */
        if (w->writing) continue;
        last_group = w->pend_records;
        write_group_locked(w);
    }
out:
    /* A clean close leaves no zero fill behind: the log ends at its last
     * record, as a reader of rstmdb's format expects. */
    if (!w->failed && w->nsegs) {
        wal_seg *live = w->segs[w->nsegs - 1];
        int e = 0;
        if (live->fd >= 0 && live->zeroed > live->written) {
            if (!trim_zeros(w, live, &e))
                fail_locked(w, "truncating", live->path, e);
            else if (w->io->fdatasync(live->fd) != 0)
                fail_locked(w, "fdatasync", live->path, errno);
        }
    }
    if (w->dirty) wal_seg_unref(w, w->dirty);
    w->dirty = NULL;
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ---- open / close ------------------------------------------------------ */

static int mkdir_p(const char *dir)
{
    char *p = xstrdup(dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            free(p);
            return -1;
        }
        *s = '/';
    }
    int rc = mkdir(p, 0755);
    free(p);
    return rc == 0 || errno == EEXIST ? 0 : -1;
}

static void wal_free(wal *w)
{
    for (size_t i = 0; i < w->nchunks; i++)
        wal_seg_unref(w, w->chunks[i].seg);
    for (size_t i = 0; i < w->nsegs; i++)
        wal_seg_unref(w, w->segs[i]);
    free(w->segs);
    free(w->chunks);
    free(w->gchunks);
    free(w->anchors);
    buf_free(&w->pend);
    buf_free(&w->gbuf);
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->listen_mu);
    pthread_cond_destroy(&w->work_cv);
    pthread_cond_destroy(&w->space_cv);
    free(w->dir);
    if (w->lock_fd >= 0) close(w->lock_fd);
    free(w);
}

stm_code wal_open(const wal_opts *opts, wal **out, wal_recovery *rep, stm_err *err)
{
    wal_recovery dummy;
    if (!rep) rep = &dummy;
    memset(rep, 0, sizeof *rep);
    *out = NULL;
    if (!opts || !opts->dir || !*opts->dir)
        return stm_fail(err, STM_BAD_REQUEST, "no write-ahead log directory given");
    if (opts->read_only && opts->repair)
        return stm_fail(err, STM_BAD_REQUEST, "a read-only open cannot repair the log");

    wal *w = xcalloc(1, sizeof *w);
    w->lock_fd = -1;
    w->dir = xstrdup(opts->dir);
    size_t dl = strlen(w->dir);
    while (dl > 1 && w->dir[dl - 1] == '/')
        w->dir[--dl] = 0;
    w->io = opts->io ? opts->io : &wal_posix_io;
    w->segment_size = opts->segment_size;
    w->sync = opts->sync;
    w->lazy = opts->sync.mode == WAL_SYNC_NEVER ||
              (opts->sync.mode == WAL_SYNC_EVERY_N && opts->sync.arg > 0);
    w->read_only = opts->read_only;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->listen_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->work_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&w->space_cv, NULL);
    w->next_seq = 1;

    if (!w->read_only && mkdir_p(w->dir) != 0) {
        stm_code rc = stm_fail(err, STM_WAL_IO_ERROR, "cannot create the directory %s: %s", w->dir,
                               strerror(errno));
        wal_free(w);
        return rc;
    }
    /* One writer per log: a second process appending at the same offsets
     * (a second `stmfs mount` or `serve` on the same data directory, or a
     * repair under a running one) would overwrite acknowledged records, and
     * its recovery would cut the first one's zero fill. The lock goes with
     * the descriptor, so a crash releases it. Readers take none. */
    if (!w->read_only) {
        w->lock_fd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (w->lock_fd < 0 || flock(w->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            stm_code rc =
                e == EWOULDBLOCK
                    ? stm_fail(err, STM_WAL_IO_ERROR,
                               "the write-ahead log in %s is in use by another process (a "
                               "running `stmfs mount` or `stmfs serve` on the same data "
                               "directory?); stop it first (a read-only mount, -o ro, may run "
                               "beside it)",
                               w->dir)
                    : stm_fail(err, STM_WAL_IO_ERROR, "cannot lock the directory %s: %s", w->dir,
                               strerror(e));
            wal_free(w);
            return rc;
        }
    }
    stm_code rc = wal_recover(w, opts->repair, rep, err);
    if (rc != STM_OK) {
        wal_free(w);
        return rc;
    }
    w->written_seq = w->synced_seq = w->acked_seq = w->next_seq - 1;

    if (!w->read_only) {
        /* What recovery found may sit only in the page cache (the previous
         * process died, the kernel did not): make it as durable as what we
         * are about to acknowledge on top of it. */
        wal_seg *cur = w->segs[w->nsegs - 1];
        if (cur->written && w->io->fdatasync(cur->fd) != 0) {
            rc = stm_fail(err, STM_WAL_IO_ERROR, "fdatasync of %s failed: %s", cur->path,
                          strerror(errno));
            wal_free(w);
            return rc;
        }
        w->last_listened = w->acked_seq;
        if (pthread_create(&w->flusher, NULL, flusher_main, w) != 0) {
            wal_free(w);
            return stm_fail(err, STM_INTERNAL_ERROR, "cannot start the WAL flusher thread");
        }
        w->flusher_running = true;
    }
    *out = w;
    return STM_OK;
}

stm_code wal_close(wal *w, stm_err *err)
{
    if (!w) return STM_OK;
    stm_code rc = STM_OK;
    if (w->flusher_running) {
        pthread_mutex_lock(&w->mu);
        if (!w->failed && w->head_seq > w->open_seq && w->since_ckpt > 0)
            put_checkpoint(w, w->segs[w->nsegs - 1], NULL);
        w->sync_target = w->next_seq - 1;
        w->stop = true;
        pthread_cond_broadcast(&w->work_cv);
        pthread_cond_broadcast(&w->space_cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->flusher, NULL);
        if (w->failed) rc = stm_fail(err, STM_WAL_IO_ERROR, "%s", w->fail_msg);
    }
    wal_free(w);
    return rc;
}

/* ---- waiting ----------------------------------------------------------- */

uint64_t wal_acked_seq(wal *w)
{
    return __atomic_load_n(&w->acked_seq, __ATOMIC_ACQUIRE);
}

bool wal_appended(wal *w, uint64_t seq)
{
    return seq < __atomic_load_n(&w->next_seq, __ATOMIC_ACQUIRE);
}

stm_code wal_wait(wal *w, uint64_t seq, stm_err *err)
{
    uint64_t next = __atomic_load_n(&w->next_seq, __ATOMIC_RELAXED);
    if (seq >= next)
        return stm_fail(err, STM_BAD_REQUEST, "sequence %llu has not been appended (next is %llu)",
                        (unsigned long long)seq, (unsigned long long)next);
    if (__atomic_load_n(&w->acked_seq, __ATOMIC_ACQUIRE) >= seq) return STM_OK;
    wal_write_now(w, seq);
    wait_until(w, &w->acked_seq, seq);
    if (__atomic_load_n(&w->acked_seq, __ATOMIC_ACQUIRE) >= seq) return STM_OK;
    /* failed is set after fail_msg is final, and never cleared. */
    return stm_fail(err, STM_WAL_IO_ERROR, "%s", w->fail_msg);
}

void wal_kick(wal *w, uint64_t seq)
{
    if (__atomic_load_n(&w->acked_seq, __ATOMIC_ACQUIRE) >= seq) return;
    /* Outside the lazy policies an append wakes the flusher by itself,
     * unless an event loop holds the log (wal_hold): then its waiters do. */
    if (!w->lazy && !__atomic_load_n(&w->held, __ATOMIC_RELAXED)) return;
    pthread_mutex_lock(&w->mu);
    if (seq > w->want_seq) {
        w->want_seq = seq;
        /* a lingering flusher takes the group when it ends anyway */
        if (w->written_seq < seq && !w->flusher_want) pthread_cond_signal(&w->work_cv);
    }
    pthread_mutex_unlock(&w->mu);
}

/* wal_write_now and wal_commit_now: the calling thread writes the pending
 * group (and syncs it, per policy) when nobody else is writing; otherwise
 * the writer takes the rest right after. Ends a hold either way. */
static void write_here(wal *w, uint64_t seq)
{
    pthread_mutex_lock(&w->mu);
    __atomic_store_n(&w->held, false, __ATOMIC_RELAXED);
    if (__atomic_load_n(&w->acked_seq, __ATOMIC_ACQUIRE) >= seq) {
        /* someone else's records may wait behind a hold that just ended */
        if (w->pend.len && !w->writing) pthread_cond_signal(&w->work_cv);
    } else if (!w->writing && !w->failed && !w->stop && w->written_seq < seq && w->pend.len) {
        write_group_locked(w);
    } else if (seq > w->want_seq) {
        w->want_seq = seq;
        if (w->written_seq < seq) pthread_cond_signal(&w->work_cv);
    }
    pthread_mutex_unlock(&w->mu);
}

void wal_write_now(wal *w, uint64_t seq)
{
    if (w->sync.mode != WAL_SYNC_NEVER) {
        wal_kick(w, seq);
        return;
    }
    if (__atomic_load_n(&w->acked_seq, __ATOMIC_ACQUIRE) >= seq) return;
    write_here(w, seq);
}

uint64_t wal_linger_ns(wal *w)
{
    return __atomic_load_n(&w->linger_ns, __ATOMIC_RELAXED);
}

void wal_hold(wal *w)
{
    if (!wal_syncs_each_group(w)) return;
    pthread_mutex_lock(&w->mu);
    __atomic_store_n(&w->held, true, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&w->mu);
}

void wal_release(wal *w)
{
    pthread_mutex_lock(&w->mu);
    __atomic_store_n(&w->held, false, __ATOMIC_RELAXED);
    /* what others appended meanwhile did not wake the flusher */
    if (w->pend.len && !w->writing) pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
}

void wal_commit_now(wal *w, uint64_t seq)
{
    if (wal_syncs_each_group(w)) write_here(w, seq);
    else wal_write_now(w, seq);
}

void wal_set_listener(wal *w, void (*fn)(void *arg, uint64_t acked_seq, bool failed), void *arg)
{
    pthread_mutex_lock(&w->listen_mu);
    w->listener = fn;
    w->listener_arg = arg;
    pthread_mutex_unlock(&w->listen_mu);
}

const char *wal_failure(wal *w)
{
    /* failed is set after fail_msg is final, and never cleared. */
    return __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE) ? w->fail_msg : NULL;
}

stm_code wal_sync(wal *w, stm_err *err)
{
    pthread_mutex_lock(&w->mu);
    if (w->read_only) {
        pthread_mutex_unlock(&w->mu);
        return STM_OK;
    }
    uint64_t target = w->next_seq - 1;
    if (target > w->sync_target) w->sync_target = target;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    wait_until(w, &w->synced_seq, target);
    if (__atomic_load_n(&w->synced_seq, __ATOMIC_ACQUIRE) >= target) return STM_OK;
    return stm_fail(err, STM_WAL_IO_ERROR, "%s", w->fail_msg);
}

/* ---- stats and compaction ---------------------------------------------- */

void wal_get_stats(wal *w, wal_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&w->mu);
    st->entry_count = w->next_seq - 1;
    st->segment_count = w->nsegs;
    for (size_t i = 0; i < w->nsegs; i++) {
        st->total_size_bytes += w->segs[i]->size;
        if (!st->first_offset && w->segs[i]->size) st->first_offset = WAL_OFFSET(w->segs[i]->id, 0);
    }
    st->latest_offset = w->nsegs
                            ? WAL_OFFSET(w->segs[w->nsegs - 1]->id, w->segs[w->nsegs - 1]->size)
                            : WAL_OFFSET(1, 0);
    st->bytes_written = w->bytes_written;
    st->writes = w->writes;
    st->fsyncs = w->fsyncs;
    st->bytes_read = __atomic_load_n(&w->bytes_read, __ATOMIC_RELAXED);
    st->reads = __atomic_load_n(&w->reads, __ATOMIC_RELAXED);
    st->acked_seq = w->acked_seq;
    st->written_seq = w->written_seq;
    st->synced_seq = w->synced_seq;
    memcpy(st->head_chain, w->chain, 32);
    st->failed = w->failed;
    pthread_mutex_unlock(&w->mu);
}

stm_code wal_delete_before(wal *w, uint64_t offset, uint64_t *segments, uint64_t *bytes,
                           stm_err *err)
{
    uint64_t nseg = 0, nbytes = 0;
    if (segments) *segments = 0;
    if (bytes) *bytes = 0;
    if (w->read_only)
        return stm_fail(err, STM_WAL_IO_ERROR, "the write-ahead log in %s is open read-only",
                        w->dir);
    /* New segments' directory entries are made durable before old ones go,
     * so a crash never leaves a directory missing both. */
    if (w->io->fsync_dir(w->dir) != 0)
        return stm_fail(err, STM_WAL_IO_ERROR, "fsync of the directory %s failed: %s", w->dir,
                        strerror(errno));
    pthread_mutex_lock(&w->mu);
    size_t n = 0;
    while (n + 1 < w->nsegs && WAL_OFFSET(w->segs[n]->id + 1, 0) <= offset &&
           w->segs[n]->written == w->segs[n]->size)
        n++;
    wal_seg **gone = xmalloc((n ? n : 1) * sizeof *gone);
    memcpy(gone, w->segs, n * sizeof *gone);
    memmove(w->segs, w->segs + n, (w->nsegs - n) * sizeof *w->segs);
    w->nsegs -= n;
    uint64_t keep = w->nsegs ? WAL_OFFSET(w->segs[0]->id, 0) : 0;
    size_t a = 0;
    while (a < w->nanchors && w->anchors[a].offset < keep)
        a++;
    memmove(w->anchors, w->anchors + a, (w->nanchors - a) * sizeof *w->anchors);
    w->nanchors -= a;
    pthread_mutex_unlock(&w->mu);

    stm_code rc = STM_OK;
    for (size_t i = 0; i < n; i++) {
        if (rc == STM_OK && w->io->unlink(gone[i]->path) != 0 && errno != ENOENT)
            rc = stm_fail(err, STM_WAL_IO_ERROR, "cannot delete %s: %s", gone[i]->path,
                          strerror(errno));
        if (rc == STM_OK) {
            nseg++;
            nbytes += gone[i]->size;
        }
    }
    if (rc == STM_OK && n && w->io->fsync_dir(w->dir) != 0)
        rc = stm_fail(err, STM_WAL_IO_ERROR, "fsync of the directory %s failed: %s", w->dir,
                      strerror(errno));
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < n; i++)
        wal_seg_unref(w, gone[i]);
    pthread_mutex_unlock(&w->mu);
    free(gone);
    if (segments) *segments = nseg;
    if (bytes) *bytes = nbytes;
    return rc;
}
