/*
 * recover.c - reading the log: the record reader, recovery at open,
 * iteration, single-record reads and the offline verifier.
 *
 * The reader pulls large windows of a segment with pread (4 MiB during
 * recovery) and checks records in place, so a scan costs one copy from the
 * page cache plus the CRC. The hash chain is not recomputed during the
 * scan: checkpoint records carry it, so recovery hashes only what follows
 * the last checkpoint (a second, short pass).
 *
 * Torn tail versus corruption: the first bad record ends the scan. If any
 * valid record can be found after it (resynchronising on the "WLOG" magic,
 * in the same segment or a later one) the damage is in the middle of the
 * log and recovery refuses; otherwise it is the tail a crash tore, and it
 * is cut.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "wal/internal.h"

#define SCAN_CHUNK (4u * 1024 * 1024)
#define ITER_CHUNK (256u * 1024)

typedef struct {
    const wal_io *io;
    int fd;
    uint64_t limit; /* bytes of the file that may be read */
    unsigned char *buf;
    size_t cap, chunk;
    uint64_t boff; /* buf holds file bytes [boff, boff + blen) */
    size_t blen;
} reader;

typedef struct {
    uint64_t pos;
    uint8_t type;
    uint32_t len;
    uint64_t seq;
    const unsigned char *hdr;
    const char *payload;
} rview;

static void rd_init(reader *r, const wal_io *io, int fd, uint64_t limit, size_t chunk)
{
    r->io = io;
    r->fd = fd;
    r->limit = limit;
    r->chunk = chunk;
    r->boff = 0;
    r->blen = 0;
}

static void rd_retarget(reader *r, int fd, uint64_t limit)
{
    if (fd != r->fd) r->blen = 0;
    r->fd = fd;
    r->limit = limit;
}

/* [pos, pos+n) in memory, or NULL: *e = errno on a read error, 0 when the
 * bytes are not there (beyond the limit or the file's end). */
static const unsigned char *rd_get(reader *r, uint64_t pos, size_t n, int *e)
{
    *e = 0;
    if (pos + n > r->limit) return NULL;
    if (pos >= r->boff && pos + n <= r->boff + r->blen) return r->buf + (pos - r->boff);
    size_t want = n > r->chunk ? n : r->chunk;
    if (pos + want > r->limit) want = (size_t)(r->limit - pos);
    if (want > r->cap) {
        free(r->buf);
        r->cap = want;
        r->buf = xmalloc(r->cap);
    }
    size_t got = 0;
    r->blen = 0;
    while (got < want) {
        ssize_t k = r->io->pread(r->fd, r->buf + got, want - got, (off_t)(pos + got));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            *e = errno;
            return NULL;
        }
        if (k == 0) break;
        got += (size_t)k;
    }
    r->boff = pos;
    r->blen = got;
    return got >= n ? r->buf : NULL;
}

static void rd_free(reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->cap = 0;
    r->blen = 0;
}

/* 1: a valid record at pos. 0: pos is the limit. -1: a bad record (why
 * says what). -2: read error (*e). */
static int rd_record(reader *r, uint64_t pos, rview *v, char *why, size_t whyn, int *e)
{
    if (pos >= r->limit) return 0;
    const unsigned char *h = rd_get(r, pos, WAL_HEADER_SIZE, e);
    if (!h) {
        if (*e) return -2;
        snprintf(why, whyn, "partial record header (%llu of %d bytes)",
                 (unsigned long long)(r->limit - pos), WAL_HEADER_SIZE);
        return -1;
    }
    if (memcmp(h, "WLOG", 4) != 0) {
        static const unsigned char z[WAL_HEADER_SIZE];
        snprintf(why, whyn, "%s", memcmp(h, z, sizeof z) == 0 ? "zero-filled bytes" : "bad magic");
        return -1;
    }
    uint8_t type = h[4];
    uint32_t len = wal_be32(h + 8);
    if (!wal_type_valid(type)) {
        snprintf(why, whyn, "unknown record type %u", type);
        return -1;
    }
    if (len > WAL_MAX_PAYLOAD) {
        snprintf(why, whyn, "payload length %u over the limit", len);
        return -1;
    }
    h = rd_get(r, pos, WAL_HEADER_SIZE + (size_t)len, e);
    if (!h) {
        if (*e) return -2;
        snprintf(why, whyn, "partial payload (%llu of %u bytes)",
                 (unsigned long long)(r->limit - pos - WAL_HEADER_SIZE), len);
        return -1;
    }
    /* Sequences start at 1: a zero here is a header whose tail was lost to
     * zero fill (with length 0 its CRC would even match). */
    if (wal_be64(h + 16) == 0) {
        snprintf(why, whyn, "sequence number 0");
        return -1;
    }
    /* The header sits outside the CRC. A number no log can reach (2^62
     * appends) is damage, and trusting it would wrap the next append's. */
    if (wal_be64(h + 16) > WAL_MAX_SEQ) {
        snprintf(why, whyn, "sequence number %llu out of range",
                 (unsigned long long)wal_be64(h + 16));
        return -1;
    }
    uint32_t crc = wal_be32(h + 12);
    uint32_t got = crc32c(0, h + WAL_HEADER_SIZE, len);
    if (got != crc) {
        snprintf(why, whyn, "CRC mismatch (stored %08x, computed %08x)", crc, got);
        return -1;
    }
    v->pos = pos;
    v->type = type;
    v->len = len;
    v->seq = wal_be64(h + 16);
    v->hdr = h;
    v->payload = (const char *)h + WAL_HEADER_SIZE;
    return 1;
}

/* Whether every byte from 'from' to the reader's limit is zero. */
static bool zeros_to_end(reader *r, uint64_t from)
{
    int e;
    for (uint64_t q = from; q < r->limit;) {
        size_t n = r->limit - q < r->chunk ? (size_t)(r->limit - q) : r->chunk;
        const unsigned char *p = rd_get(r, q, n, &e);
        if (!p) return false;
        for (size_t i = 0; i < n; i++)
            if (p[i]) return false;
        q += n;
    }
    return true;
}

/* Position of the first valid record at or after from, or UINT64_MAX. */
static uint64_t find_good(reader *r, uint64_t from)
{
    char why[160];
    int e;
    uint64_t q = from;
    while (q + WAL_HEADER_SIZE <= r->limit) {
        size_t n = r->limit - q < r->chunk ? (size_t)(r->limit - q) : r->chunk;
        const unsigned char *p = rd_get(r, q, n, &e);
        if (!p) return UINT64_MAX;
        const unsigned char *m = memmem(p, n, "WLOG", 4);
        if (!m) {
            q += n > 3 ? n - 3 : 1;
            continue;
        }
        uint64_t cand = q + (uint64_t)(m - p);
        rview v;
        if (rd_record(r, cand, &v, why, sizeof why, &e) == 1) return cand;
        q = cand + 1;
    }
    return UINT64_MAX;
}

/* ---- listing ------------------------------------------------------------- */

typedef struct {
    uint64_t id;
    char name[32];
} segname;

static int cmp_segname(const void *a, const void *b)
{
    uint64_t x = ((const segname *)a)->id, y = ((const segname *)b)->id;
    return x < y ? -1 : x > y;
}

static bool parse_segname(const char *n, uint64_t *id)
{
    if (strlen(n) != 20 || strcmp(n + 16, ".wal") != 0) return false;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = n[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return false;
        v = v << 4 | (uint64_t)d;
    }
    *id = v;
    return true;
}

static stm_code list_segments(const char *dir, segname **out, size_t *n, stm_err *err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return stm_fail(err, STM_WAL_IO_ERROR, "cannot read the WAL directory %s: %s", dir,
                        strerror(errno));
    size_t cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t id;
        if (!parse_segname(de->d_name, &id) || id == 0 || id >= (1ull << 24)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            *out = xrealloc(*out, cap * sizeof **out);
        }
        (*out)[*n].id = id;
        memcpy((*out)[*n].name, de->d_name, 21); /* 20 characters, checked above */
        (*n)++;
    }
    closedir(d);
    if (*n) qsort(*out, *n, sizeof **out, cmp_segname);
    return STM_OK;
}

/* ---- recovery ------------------------------------------------------------ */

static bool save_cut(wal *w, wal_seg *s, uint64_t from, uint64_t to, const char *side, int *e)
{
    int fd = w->io->open(side, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        *e = errno;
        return false;
    }
    reader r = {0};
    rd_init(&r, w->io, s->fd, to, SCAN_CHUNK);
    bool ok = true;
    for (uint64_t p = from; p < to && ok;) {
        size_t n = to - p < SCAN_CHUNK ? (size_t)(to - p) : SCAN_CHUNK;
        const unsigned char *b = rd_get(&r, p, n, e);
        if (!b) {
            if (!*e) *e = EIO;
            ok = false;
            break;
        }
        for (size_t done = 0; done < n;) {
            ssize_t k = w->io->pwrite(fd, b + done, n - done, (off_t)(p - from + done));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                *e = k < 0 ? errno : EIO;
                ok = false;
                break;
            }
            done += (size_t)k;
        }
        p += n;
    }
    rd_free(&r);
    if (ok && w->io->fdatasync(fd) != 0) {
        *e = errno;
        ok = false;
    }
    w->io->close(fd);
    return ok;
}

static stm_code io_fail(stm_err *err, const char *what, const char *path, int e)
{
    return stm_fail(err, STM_WAL_IO_ERROR, "%s %s failed: %s%s", what, path, strerror(e),
                    wal_errno_hint(e));
}

stm_code wal_recover(wal *w, bool repair, wal_recovery *rep, stm_err *err)
{
    segname *names;
    size_t nn;
    stm_code rc = list_segments(w->dir, &names, &nn, err);
    if (rc != STM_OK) return rc;
    rep->segments = nn;

    int oflags = (w->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    for (size_t i = 0; i < nn; i++) {
        wal_seg *s = wal_seg_new(w->io, w->dir, names[i].id);
        /* Keep the name as found: rstmdb accepts upper-case hex too. */
        memcpy(s->path + strlen(w->dir) + 1, names[i].name, 21);
        wal_push_seg(w, s);
        s->fd = w->io->open(s->path, oflags, 0);
        if (s->fd < 0) {
            free(names);
            return io_fail(err, "opening", s->path, errno);
        }
        struct stat st;
        if (fstat(s->fd, &st) != 0) {
            free(names);
            return io_fail(err, "fstat of", s->path, errno);
        }
        s->size = s->written = (uint64_t)st.st_size;
    }
    free(names);

    /* Pass 1: every record's CRC; index, checkpoints, sequence numbers. */
    reader r = {0};
    char why[160];
    int e = 0;
    bool first = true;
    /* rstmdb numbers records before taking its write lock, so its files may
     * hold 5, 7, 6; stmfs numbers under the lock and continues from the
     * highest. So a checkpoint (only stmfs writes them), and every record
     * after one, must be the highest number so far + 1. */
    bool ours = false;
    uint64_t max_seq = 0, head_seq = 0;
    size_t bad_seg = SIZE_MAX;
    uint64_t bad_pos = 0;
    for (size_t i = 0; i < w->nsegs && bad_seg == SIZE_MAX; i++) {
        wal_seg *s = w->segs[i];
        rd_init(&r, w->io, s->fd, s->size, SCAN_CHUNK);
        r.blen = 0;
        uint64_t pos = 0;
        for (;;) {
            rview v;
            int k = rd_record(&r, pos, &v, why, sizeof why, &e);
            if (k == 0) break;
            if (k == -2) {
                rd_free(&r);
                return io_fail(err, "reading", s->path, e);
            }
            uint8_t ch[32];
            uint64_t cseq;
            bool is_ckpt = k == 1 && v.type == WAL_T_CHECKPOINT &&
                           wal_ckpt_parse(v.payload, v.len, ch, &cseq);
            if (k == 1 && (ours || is_ckpt) && !first && v.seq != max_seq + 1) {
                snprintf(why, sizeof why, "sequence break (%llu after %llu)",
                         (unsigned long long)v.seq, (unsigned long long)max_seq);
                k = -1;
            }
            if (k < 0) {
                bad_seg = i;
                bad_pos = pos;
                break;
            }
            uint64_t off = WAL_OFFSET(s->id, pos);
            ours |= is_ckpt;
            if (first && !is_ckpt) {
                static const uint8_t zero[32];
                wal_add_anchor(w, off, zero);
            }
            first = false;
            if (is_ckpt) wal_add_anchor(w, off, ch);
            wal_seg_index(s, pos);
            if (v.seq > max_seq) max_seq = v.seq;
            head_seq = v.seq;
            rep->records++;
            rep->bytes += WAL_HEADER_SIZE + v.len;
            pos += WAL_HEADER_SIZE + (uint64_t)v.len;
        }
    }

    if (bad_seg != SIZE_MAX) {
        wal_seg *s = w->segs[bad_seg];
        /* Nothing but zeros to the end of the log is the writer's zero fill
         * (WAL_PREALLOC) or a file system's, after a crash: no record
         * started there, so nothing was torn. Zeros hold no magic, so a
         * segment that is all zeros from here needs no resync scan. */
        bool zero_tail = zeros_to_end(&r, bad_pos);
        for (size_t j = bad_seg + 1; j < w->nsegs; j++)
            zero_tail &= w->segs[j]->size == 0;
        uint64_t good = zero_tail ? UINT64_MAX : find_good(&r, bad_pos + 1);
        size_t good_seg = bad_seg;
        for (size_t j = bad_seg + 1; j < w->nsegs && good == UINT64_MAX; j++) {
            rd_init(&r, w->io, w->segs[j]->fd, w->segs[j]->size, SCAN_CHUNK);
            r.blen = 0;
            good = find_good(&r, 0);
            good_seg = j;
        }
        rd_free(&r);
        uint64_t cut = s->size - bad_pos;
        for (size_t j = bad_seg + 1; j < w->nsegs; j++)
            cut += w->segs[j]->size;
        uint64_t bad_off = WAL_OFFSET(s->id, bad_pos);
        if (good != UINT64_MAX && (!repair || w->read_only)) {
            return stm_fail(err, STM_WAL_IO_ERROR,
                            "corrupt WAL record in %s at byte %llu (offset %llu): %s; valid "
                            "records follow (%s byte %llu), so this is damage inside the log, "
                            "not a torn tail. Refusing to open: restore the file, or run "
                            "`stmfs wal repair DATA_DIR` (cuts the log there and keeps the %llu "
                            "cut bytes beside it)",
                            s->path, (unsigned long long)bad_pos, (unsigned long long)bad_off, why,
                            w->segs[good_seg]->path, (unsigned long long)good,
                            (unsigned long long)cut);
        }
        rep->cut_bytes = cut;
        rep->cut_offset = bad_off;
        char side[64] = "";
        if (good != UINT64_MAX) {
            long long now = (long long)time(NULL);
            snprintf(side, sizeof side, ".cut-%lld", now);
            size_t pl = strlen(s->path) + sizeof side;
            char *sp = xmalloc(pl);
            snprintf(sp, pl, "%s%s", s->path, side);
            bool ok = save_cut(w, s, bad_pos, s->size, sp, &e);
            if (!ok) {
                rc = io_fail(err, "saving the cut bytes to", sp, e);
                free(sp);
                return rc;
            }
            free(sp);
            for (size_t j = bad_seg + 1; j < w->nsegs; j++) {
                wal_seg *t = w->segs[j];
                pl = strlen(t->path) + sizeof side;
                sp = xmalloc(pl);
                snprintf(sp, pl, "%s%s", t->path, side);
                if (w->io->rename(t->path, sp) != 0) {
                    rc = io_fail(err, "renaming", t->path, errno);
                    free(sp);
                    return rc;
                }
                free(sp);
            }
            snprintf(rep->message, sizeof rep->message,
                     "repaired: corrupt record in %s at byte %llu (offset %llu): %s; cut %llu "
                     "bytes from there to the end of the log, kept in files ending in %s",
                     s->path, (unsigned long long)bad_pos, (unsigned long long)bad_off, why,
                     (unsigned long long)cut, side);
        } else if (zero_tail) {
            rep->zero_tail = true;
            snprintf(rep->message, sizeof rep->message,
                     "%s %llu bytes of zero fill after the last record in %s (byte %llu, offset "
                     "%llu): space preallocated for the log, no record was lost",
                     w->read_only ? "ignored" : "removed", (unsigned long long)cut, s->path,
                     (unsigned long long)bad_pos, (unsigned long long)bad_off);
        } else {
            snprintf(rep->message, sizeof rep->message,
                     "%s torn tail in %s at byte %llu (offset %llu): %s; %llu bytes %s",
                     w->read_only ? "found a" : "cut a", s->path, (unsigned long long)bad_pos,
                     (unsigned long long)bad_off, why, (unsigned long long)cut,
                     w->read_only ? "ignored (read-only)" : "removed");
        }
        if (!w->read_only) {
            if (w->io->ftruncate(s->fd, (off_t)bad_pos) != 0)
                return io_fail(err, "truncating", s->path, errno);
            if (w->io->fdatasync(s->fd) != 0) return io_fail(err, "fdatasync of", s->path, errno);
            for (size_t j = bad_seg + 1; j < w->nsegs && good == UINT64_MAX; j++)
                if (w->io->unlink(w->segs[j]->path) != 0 && errno != ENOENT)
                    return io_fail(err, "removing", w->segs[j]->path, errno);
            if (w->io->fsync_dir(w->dir) != 0)
                return io_fail(err, "fsync of the directory", w->dir, errno);
        }
        s->size = s->written = bad_pos;
        for (size_t j = bad_seg + 1; j < w->nsegs; j++)
            wal_seg_unref(w, w->segs[j]);
        w->nsegs = bad_seg + 1;
    }
    rd_free(&r);

    if (w->nsegs == 0 && !w->read_only) {
        wal_seg *s = wal_seg_new(w->io, w->dir, 1);
        wal_push_seg(w, s);
        s->fd = w->io->open(s->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (s->fd < 0) return io_fail(err, "creating", s->path, errno);
        if (w->io->fsync_dir(w->dir) != 0)
            return io_fail(err, "fsync of the directory", w->dir, errno);
    }

    if (w->nanchors == 0 && w->nsegs) {
        /* An empty log: its chain starts at zero where the first record goes. */
        static const uint8_t zero[32];
        wal_seg *cur = w->segs[w->nsegs - 1];
        wal_add_anchor(w, WAL_OFFSET(cur->id, cur->size), zero);
    }
    w->next_seq = max_seq + 1;
    w->head_seq = w->open_seq = head_seq;
    /* Counting from the open, not from the last checkpoint on disk: a log
     * written without checkpoints (rstmdb's) then gets its first one after
     * WAL_CHECKPOINT_EVERY new bytes or at close, so the next record lands
     * exactly where the recovered log ended. */
    w->since_ckpt = 0;
    w->cur_has_data = w->nsegs && w->segs[w->nsegs - 1]->size > 0;

    /* Pass 2: the chain from the last checkpoint (or the start) to the head. */
    memset(w->chain, 0, 32);
    if (w->nanchors) {
        wal_iter *it;
        rc = wal_iter_open_internal(w, w->anchors[w->nanchors - 1].offset, true, &it, err);
        if (rc != STM_OK) return rc;
        wal_record rec;
        int k;
        memcpy(w->chain, w->anchors[w->nanchors - 1].before, 32);
        while ((k = wal_iter_next(it, &rec, err)) == 1)
            memcpy(w->chain, rec.chain, 32);
        wal_iter_close(it);
        if (k < 0) return STM_WAL_IO_ERROR;
    }
    return STM_OK;
}

/* ---- iteration ----------------------------------------------------------- */

struct wal_iter {
    wal *w;
    wal_seg *seg; /* holds a reference; NULL at the end of an empty log */
    uint64_t pos, from, hash_from;
    bool with_chain, counted;
    uint8_t chain[32];
    reader rd;
    /* this segment was written at least up to here, through this fd: what
     * lies below needs no lock to read (written only grows) */
    uint64_t known_written;
    int known_fd;
};

/* First segment with id >= id (caller holds mu); NULL if none. */
static wal_seg *seg_at_or_after(wal *w, uint64_t id)
{
    size_t lo = 0, hi = w->nsegs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (w->segs[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < w->nsegs ? w->segs[lo] : NULL;
}

static uint64_t index_floor(const wal_seg *s, uint64_t pos)
{
    size_t lo = 0, hi = s->nidx;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->idx[mid] <= pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? s->idx[lo - 1] : 0;
}

stm_code wal_iter_open_internal(wal *w, uint64_t from, bool with_chain, wal_iter **out,
                                stm_err *err)
{
    (void)err;
    wal_iter *it = xcalloc(1, sizeof *it);
    it->w = w;
    it->from = from;
    it->with_chain = with_chain;
    uint64_t start = from;
    pthread_mutex_lock(&w->mu);
    if (with_chain && w->nanchors) {
        /* The last anchor at or before from; the first one if from is older. */
        size_t lo = 0, hi = w->nanchors;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (w->anchors[mid].offset <= from)
                lo = mid + 1;
            else
                hi = mid;
        }
        const wal_anchor *a = &w->anchors[lo ? lo - 1 : 0];
        /* Records older than the oldest anchor (a compacted log whose oldest
         * segment rstmdb wrote) are returned without a chain value. */
        it->hash_from = a->offset;
        if (a->offset <= from) start = a->offset;
        memcpy(it->chain, a->before, 32);
    } else {
        it->hash_from = with_chain ? start : UINT64_MAX;
    }
    wal_seg *s = seg_at_or_after(w, WAL_OFF_SEG(start));
    if (s) {
        it->pos = s->id == WAL_OFF_SEG(start) ? index_floor(s, WAL_OFF_POS(start)) : 0;
        wal_seg_ref(s);
        it->seg = s;
        rd_init(&it->rd, w->io, s->fd, 0, ITER_CHUNK);
    }
    pthread_mutex_unlock(&w->mu);
    *out = it;
    return STM_OK;
}

stm_code wal_iter_open(wal *w, uint64_t from, bool with_chain, wal_iter **out, stm_err *err)
{
    stm_code rc = wal_iter_open_internal(w, from, with_chain, out, err);
    if (rc == STM_OK) __atomic_add_fetch(&w->reads, 1, __ATOMIC_RELAXED);
    if (rc == STM_OK) (*out)->counted = true;
    return rc;
}

int wal_iter_next(wal_iter *it, wal_record *rec, stm_err *err)
{
    wal *w = it->w;
    char why[160];
    int e;
    for (;;) {
        if (!it->seg) return 0;
        if (it->pos < it->known_written) goto read;
        pthread_mutex_lock(&w->mu);
        uint64_t limit = it->seg->written;
        int fd = it->seg->fd;
        if (it->pos >= limit) {
            /* Move on only once this segment is complete and a later one exists. */
            wal_seg *next =
                it->seg->written == it->seg->size ? seg_at_or_after(w, it->seg->id + 1) : NULL;
            if (!next) {
                pthread_mutex_unlock(&w->mu);
                return 0;
            }
            wal_seg_ref(next);
            wal_seg_unref(w, it->seg);
            it->seg = next;
            it->pos = 0;
            it->rd.blen = 0;
            it->known_written = 0;
            pthread_mutex_unlock(&w->mu);
            continue;
        }
        pthread_mutex_unlock(&w->mu);
        it->known_written = limit;
        it->known_fd = fd;
    read:
        rd_retarget(&it->rd, it->known_fd, it->known_written);
        rview v;
        int k = rd_record(&it->rd, it->pos, &v, why, sizeof why, &e);
        if (k == -2) {
            io_fail(err, "reading", it->seg->path, e);
            return -1;
        }
        if (k < 0) {
            stm_fail(err, STM_WAL_IO_ERROR, "bad WAL record in %s at byte %llu (offset %llu): %s",
                     it->seg->path, (unsigned long long)it->pos,
                     (unsigned long long)WAL_OFFSET(it->seg->id, it->pos), why);
            return -1;
        }
        if (k == 0) continue;
        uint64_t off = WAL_OFFSET(it->seg->id, it->pos);
        it->pos += WAL_HEADER_SIZE + (uint64_t)v.len;
        if (it->with_chain && off >= it->hash_from)
            wal_chain_step(it->chain, v.hdr, v.payload, v.len, it->chain);
        if (off < it->from) continue;
        rec->offset = off;
        rec->seq = v.seq;
        rec->type = v.type;
        rec->len = v.len;
        rec->payload = v.payload;
        rec->has_chain = it->with_chain && off >= it->hash_from;
        if (rec->has_chain)
            memcpy(rec->chain, it->chain, 32);
        else
            memset(rec->chain, 0, 32);
        if (it->counted)
            __atomic_add_fetch(&w->bytes_read, WAL_HEADER_SIZE + (uint64_t)v.len, __ATOMIC_RELAXED);
        return 1;
    }
}

void wal_iter_close(wal_iter *it)
{
    if (!it) return;
    if (it->seg) {
        pthread_mutex_lock(&it->w->mu);
        wal_seg_unref(it->w, it->seg);
        pthread_mutex_unlock(&it->w->mu);
    }
    rd_free(&it->rd);
    free(it);
}

/* ---- single reads ---------------------------------------------------------- */

static bool pread_all(const wal_io *io, int fd, void *p, size_t n, uint64_t pos, int *e)
{
    char *b = p;
    while (n) {
        ssize_t k = io->pread(fd, b, n, (off_t)pos);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            *e = k < 0 ? errno : EIO;
            return false;
        }
        b += k;
        n -= (size_t)k;
        pos += (uint64_t)k;
    }
    return true;
}

stm_code wal_read_at(wal *w, uint64_t offset, buf *payload, wal_record *rec, stm_err *err)
{
    uint64_t pos = WAL_OFF_POS(offset);
    pthread_mutex_lock(&w->mu);
    wal_seg *s = seg_at_or_after(w, WAL_OFF_SEG(offset));
    if (!s || s->id != WAL_OFF_SEG(offset) || pos + WAL_HEADER_SIZE > s->written) {
        pthread_mutex_unlock(&w->mu);
        return stm_fail(err, STM_BAD_REQUEST, "no record at offset %llu",
                        (unsigned long long)offset);
    }
    uint64_t limit = s->written;
    int fd = s->fd;
    wal_seg_ref(s);
    pthread_mutex_unlock(&w->mu);

    stm_code rc = STM_OK;
    unsigned char h[WAL_HEADER_SIZE];
    int e = 0;
    uint32_t len = 0;
    if (!pread_all(w->io, fd, h, sizeof h, pos, &e)) {
        rc = io_fail(err, "reading", s->path, e);
        goto out;
    }
    len = wal_be32(h + 8);
    if (memcmp(h, "WLOG", 4) != 0 || !wal_type_valid(h[4]) || len > WAL_MAX_PAYLOAD ||
        pos + WAL_HEADER_SIZE + len > limit) {
        rc = stm_fail(err, STM_BAD_REQUEST, "no record at offset %llu", (unsigned long long)offset);
        goto out;
    }
    buf_reset(payload);
    buf_reserve(payload, len);
    if (!pread_all(w->io, fd, payload->data, len, pos + WAL_HEADER_SIZE, &e)) {
        rc = io_fail(err, "reading", s->path, e);
        goto out;
    }
    payload->len = len;
    payload->data[len] = 0;
    if (crc32c(0, payload->data, len) != wal_be32(h + 12)) {
        rc = stm_fail(err, STM_WAL_IO_ERROR,
                      "CRC mismatch in the record at offset %llu (%s byte %llu)",
                      (unsigned long long)offset, s->path, (unsigned long long)pos);
        goto out;
    }
    rec->offset = offset;
    rec->seq = wal_be64(h + 16);
    rec->type = h[4];
    rec->len = len;
    rec->payload = payload->data;
    rec->has_chain = false;
    memset(rec->chain, 0, 32);
    __atomic_add_fetch(&w->reads, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&w->bytes_read, WAL_HEADER_SIZE + (uint64_t)len, __ATOMIC_RELAXED);
out:
    pthread_mutex_lock(&w->mu);
    wal_seg_unref(w, s);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* ---- offline verification ------------------------------------------------ */

stm_code wal_verify(const char *dir, uint64_t expect_seq, const uint8_t expect_chain[32],
                    wal_verify_report *rep, stm_err *err)
{
    wal_verify_report dummy;
    if (!rep) rep = &dummy;
    memset(rep, 0, sizeof *rep);
    wal_opts o = {.dir = dir, .read_only = true, .segment_size = 64u << 20};
    wal *w;
    wal_recovery rec;
    stm_code rc = wal_open(&o, &w, &rec, err);
    if (rc != STM_OK) return rc;
    rep->segments = w->nsegs;
    rep->torn_bytes = rec.zero_tail ? 0 : rec.cut_bytes;

    wal_iter *it;
    rc = wal_iter_open_internal(w, 0, true, &it, err);
    if (rc != STM_OK) {
        wal_close(w, NULL);
        return rc;
    }
    uint8_t prev[32];
    memcpy(prev, it->chain, 32);
    bool have_prev = false, expect_seen = false;
    uint64_t prev_seq = 0;
    wal_record r;
    int k;
    while ((k = wal_iter_next(it, &r, err)) == 1) {
        if (!rep->first_seq) rep->first_seq = r.seq;
        if (!r.has_chain) {
            /* Before the oldest anchor of a compacted rstmdb log: CRC only. */
            rep->records++;
            rep->bytes += WAL_HEADER_SIZE + r.len;
            continue;
        }
        if (r.type == WAL_T_CHECKPOINT) {
            uint8_t claimed[32];
            uint64_t cseq;
            rep->checkpoints++;
            if (wal_ckpt_parse(r.payload, r.len, claimed, &cseq) &&
                (memcmp(claimed, prev, 32) != 0 || (have_prev && cseq != prev_seq))) {
                char a[65], b[65];
                wal_hex(claimed, a);
                wal_hex(prev, b);
                rc = stm_fail(err, STM_WAL_IO_ERROR,
                              "hash chain broken: the checkpoint at offset %llu (seq %llu, %s "
                              "byte %llu) records chain %s after seq %llu, but the records "
                              "before it hash to %s after seq %llu: the log was altered before "
                              "this point",
                              (unsigned long long)r.offset, (unsigned long long)r.seq,
                              it->seg->path, (unsigned long long)WAL_OFF_POS(r.offset), a,
                              (unsigned long long)cseq, b, (unsigned long long)prev_seq);
                break;
            }
        }
        if (expect_seq && r.seq == expect_seq) {
            expect_seen = true;
            if (memcmp(r.chain, expect_chain, 32) != 0) {
                char a[65], b[65];
                wal_hex(r.chain, a);
                wal_hex(expect_chain, b);
                rc = stm_fail(err, STM_WAL_IO_ERROR,
                              "hash chain mismatch at seq %llu (offset %llu, %s byte %llu): the "
                              "log hashes to %s, expected %s: records up to this one were "
                              "altered",
                              (unsigned long long)r.seq, (unsigned long long)r.offset,
                              it->seg->path, (unsigned long long)WAL_OFF_POS(r.offset), a, b);
                break;
            }
        }
        memcpy(prev, r.chain, 32);
        have_prev = true;
        prev_seq = r.seq;
        rep->records++;
        rep->bytes += WAL_HEADER_SIZE + r.len;
        rep->head_seq = r.seq;
        rep->head_offset = r.offset;
        memcpy(rep->head_chain, r.chain, 32);
    }
    if (k < 0) rc = STM_WAL_IO_ERROR;
    if (rc == STM_OK && expect_seq && !expect_seen)
        rc = stm_fail(err, STM_WAL_IO_ERROR,
                      "the log has no record with seq %llu (its last record is seq %llu): it was "
                      "truncated or compacted",
                      (unsigned long long)expect_seq, (unsigned long long)rep->head_seq);
    wal_iter_close(it);
    wal_close(w, NULL);
    return rc;
}

/* ---- salvage: a log that opening refuses ------------------------------------ */

struct wal_salvage {
    segname *names;
    size_t n, i;            /* segments; the one being read */
    char *dir;
    char path[4200];        /* of segment i */
    int fd;
    uint64_t size;          /* of segment i */
    uint64_t pos;           /* next record in segment i */
    reader r;
    bool ours, fresh;       /* recovery's sequence rule, restarted after a gap */
    uint64_t max_seq;
    bool ended;             /* a tail was reported: nothing more */
};

static bool salvage_seg(wal_salvage *s, size_t i, stm_err *err)
{
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
    s->i = i;
    s->pos = 0;
    if (i >= s->n) return true;
    snprintf(s->path, sizeof s->path, "%s/%s", s->dir, s->names[i].name);
    struct stat st;
    s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0 || fstat(s->fd, &st) != 0) {
        stm_fail(err, STM_WAL_IO_ERROR, "cannot read %s: %s", s->path, strerror(errno));
        return false;
    }
    s->size = (uint64_t)st.st_size;
    rd_init(&s->r, &wal_posix_io, s->fd, s->size, SCAN_CHUNK);
    return true;
}

stm_code wal_salvage_open(const char *dir, wal_salvage **out, stm_err *err)
{
    wal_salvage *s = xcalloc(1, sizeof *s);
    s->fd = -1;
    s->fresh = true;
    s->dir = xstrdup(dir);
    stm_code rc = list_segments(dir, &s->names, &s->n, err);
    if (rc == STM_OK && !salvage_seg(s, 0, err)) rc = STM_WAL_IO_ERROR;
    if (rc != STM_OK) {
        wal_salvage_close(s);
        return rc;
    }
    *out = s;
    return STM_OK;
}

/* Fills d for a bad record at s->pos and moves s to the next valid record
 * (or to the end, for a tail), as recovery decides between the two. */
static int salvage_damage(wal_salvage *s, const char *why, wal_damage *d, stm_err *err)
{
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "%s", s->path);
    snprintf(d->why, sizeof d->why, "%s", why);
    d->pos = s->pos;
    d->offset = WAL_OFFSET(s->names[s->i].id, s->pos);
    /* the sizes of the later segments, without opening them twice */
    d->rest = s->size - s->pos;
    bool zeros = zeros_to_end(&s->r, s->pos);
    for (size_t j = s->i + 1; j < s->n; j++) {
        char p[4200];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", s->dir, s->names[j].name);
        uint64_t sz = stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
        d->rest += sz;
        zeros &= sz == 0;
    }
    d->zeros = zeros;
    uint64_t good = zeros ? UINT64_MAX : find_good(&s->r, s->pos + 1), skipped = 0;
    if (good != UINT64_MAX) skipped = good - s->pos;
    else skipped = s->size - s->pos;
    while (!zeros && good == UINT64_MAX && s->i + 1 < s->n) {
        if (!salvage_seg(s, s->i + 1, err)) return -2;
        good = find_good(&s->r, 0);
        skipped += good != UINT64_MAX ? good : s->size;
    }
    if (good == UINT64_MAX) {
        d->tail = true;
        s->ended = true;
        return -1;
    }
    d->skipped = skipped;
    d->next_pos = good;
    d->next_offset = WAL_OFFSET(s->names[s->i].id, good);
    snprintf(d->next_path, sizeof d->next_path, "%s", s->path);
    s->pos = good;
    s->fresh = true; /* after a gap the count starts again */
    return -1;
}

int wal_salvage_next(wal_salvage *s, wal_record *rec, wal_damage *d, stm_err *err)
{
    char why[160];
    for (;;) {
        if (s->ended || s->i >= s->n) return 0;
        rview v;
        int e = 0;
        int k = rd_record(&s->r, s->pos, &v, why, sizeof why, &e);
        if (k == 0) {
            if (!salvage_seg(s, s->i + 1, err)) return -2;
            continue;
        }
        if (k == -2) {
            stm_fail(err, STM_WAL_IO_ERROR, "reading %s failed: %s", s->path, strerror(e));
            return -2;
        }
        uint8_t ch[32];
        uint64_t cseq;
        bool is_ckpt = k == 1 && v.type == WAL_T_CHECKPOINT &&
                       wal_ckpt_parse(v.payload, v.len, ch, &cseq);
        if (k == 1 && (s->ours || is_ckpt) && !s->fresh && v.seq != s->max_seq + 1) {
            snprintf(why, sizeof why, "sequence break (%llu after %llu)",
                     (unsigned long long)v.seq, (unsigned long long)s->max_seq);
            k = -1;
        }
        if (k < 0) return salvage_damage(s, why, d, err);
        memset(rec, 0, sizeof *rec);
        rec->offset = WAL_OFFSET(s->names[s->i].id, s->pos);
        rec->seq = v.seq;
        rec->type = v.type;
        rec->len = v.len;
        rec->payload = v.payload;
        s->ours |= is_ckpt;
        s->max_seq = s->fresh || v.seq > s->max_seq ? v.seq : s->max_seq;
        s->fresh = false;
        s->pos += WAL_HEADER_SIZE + (uint64_t)v.len;
        return 1;
    }
}

void wal_salvage_close(wal_salvage *s)
{
    if (!s) return;
    if (s->fd >= 0) close(s->fd);
    rd_free(&s->r);
    free(s->names);
    free(s->dir);
    free(s);
}
