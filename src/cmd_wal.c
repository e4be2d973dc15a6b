/*
 * cmd_wal.c - `stmfs wal verify|dump|repair DATA_DIR`
 *
 *   verify  checks every record's CRC and the hash chain through every
 *           checkpoint; prints the head as SEQ:HEX, which a user can write
 *           down and later pass to --expect to prove that nothing up to that
 *           record has changed since. Exit 0 intact, 1 damaged (the message
 *           names the segment file and byte), 2 bad usage.
 *   dump    prints every record as one JSON line,
 *           {"entry":{...keys sorted...},"offset":N,"sequence":N}
 *           On a log with damage inside it (which opening refuses) it reads
 *           the segment files itself: every record up to the damage, then a
 *           report on stderr and exit 1; --skip-damage goes on from the next
 *           valid record, as recovery finds it, reporting each gap.
 *
 *   repair  the one command that changes the log: cuts it at a corrupt
 *           record that has valid records after it (which every other open
 *           refuses), keeping the cut bytes in a side file beside the segment.
 *           Run it with nothing else using DATA_DIR.
 *
 * verify and dump only read: the log is opened read-only, a torn tail is
 * reported and left as it is. The log lives in DATA_DIR/wal.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "base/json.h"
#include "src/cmds.h"
/* For the record rules recovery applies (wal_type_valid, wal_ckpt_parse),
 * so that dump stops exactly where opening refuses and repair cuts. */
#include "wal/internal.h"
#include "wal/wal.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: stmfs wal verify DATA_DIR [--expect SEQ:HEX]\n"
                 "       stmfs wal dump DATA_DIR [--from OFFSET] [--skip-damage]\n"
                 "       stmfs wal repair DATA_DIR\n"
                 "\n"
                 "verify  checks every CRC and the SHA-256 hash chain of the write-ahead log\n"
                 "        in DATA_DIR/wal and prints its head as SEQ:HEX. Keep that line: a\n"
                 "        later `verify --expect SEQ:HEX` proves records 1..SEQ unchanged.\n"
                 "        Exit 0 when intact, 1 on damage (segment file and byte named).\n"
                 "dump    prints each record as a JSON line:\n"
                 "        {\"entry\":{...},\"offset\":N,\"sequence\":N}\n"
                 "        On damage inside the log it prints every record before it, then\n"
                 "        names the segment file, byte and bytes that follow on stderr and\n"
                 "        exits 1.\n"
                 "repair  cuts the log at a corrupt record inside it (which opening refuses),\n"
                 "        keeping the cut bytes in a side file; stop stmfs first.\n"
                 "\n"
                 "  --expect SEQ:HEX  (verify) the chain value the log must have at SEQ\n"
                 "  --from OFFSET     (dump) start at this WAL offset (default: the oldest)\n"
                 "  --skip-damage     (dump) go on past damage from the next valid record\n"
                 "                    (what repair would cut), reporting each gap; exit 1\n"
                 "  -h, --help        this text\n"
                 "\n"
                 "verify and dump only read; a torn tail is reported, not cut.\n"
                 "Exit status: 0 intact, 1 damaged or failed, 2 bad usage, 3 --expect names a\n"
                 "record the log no longer holds (compacted) or does not hold yet.\n");
}

static char *wal_dir_of(const char *data_dir)
{
    size_t n = strlen(data_dir) + 5;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/wal", data_dir);
    return p;
}

static int do_verify(const char *data_dir, const char *expect)
{
    uint64_t seq = 0;
    uint8_t chain[32] = {0};
    if (expect) {
        const char *colon = strchr(expect, ':');
        char *end;
        errno = 0;
        unsigned long long v = colon ? strtoull(expect, &end, 10) : 0;
        if (!colon || errno || end != colon || v == 0 || expect[0] == '-' ||
            !wal_unhex(colon + 1, chain)) {
            fprintf(stderr,
                    "stmfs wal verify: --expect wants SEQ:HEX as printed by an earlier verify "
                    "(a sequence number, a colon, 64 hex digits), not '%s'\n",
                    expect);
            return 2;
        }
        seq = v;
    }
    char *dir = wal_dir_of(data_dir);
    if (access(dir, R_OK | X_OK) != 0) {
        fprintf(stderr, "stmfs wal verify: no write-ahead log at %s: %s (is DATA_DIR right?)\n",
                dir, strerror(errno));
        free(dir);
        return 1;
    }
    wal_verify_report rep;
    stm_err err = {0};
    /* First the log on its own: damage is damage whatever --expect says. */
    stm_code rc = wal_verify(dir, 0, NULL, &rep, &err);
    if (rc != STM_OK) {
        fprintf(stderr, "stmfs wal verify: DAMAGED: %s\n", err.msg);
        free(dir);
        return 1;
    }
    if (seq && (seq < rep.first_seq || seq > rep.head_seq)) {
        if (seq < rep.first_seq)
            fprintf(stderr,
                    "stmfs wal verify: cannot check seq %llu: the log now starts at seq %llu "
                    "(older records were compacted into a snapshot); the log itself is intact "
                    "from there\n",
                    (unsigned long long)seq, (unsigned long long)rep.first_seq);
        else
            fprintf(stderr,
                    "stmfs wal verify: cannot check seq %llu: the log ends at seq %llu (was it "
                    "cut back, or is this another data directory?)\n",
                    (unsigned long long)seq, (unsigned long long)rep.head_seq);
        free(dir);
        return 3;
    }
    if (seq) rc = wal_verify(dir, seq, chain, &rep, &err);
    if (rc != STM_OK) {
        fprintf(stderr, "stmfs wal verify: DAMAGED: %s\n", err.msg);
        free(dir);
        return 1;
    }
    char hex[65];
    wal_hex(rep.head_chain, hex);
    printf("ok: %llu records (%llu checkpoints) in %llu segments, %llu bytes\n",
           (unsigned long long)rep.records, (unsigned long long)rep.checkpoints,
           (unsigned long long)rep.segments, (unsigned long long)rep.bytes);
    if (rep.records)
        printf("head: %llu:%s (offset %llu)\n", (unsigned long long)rep.head_seq, hex,
               (unsigned long long)rep.head_offset);
    else
        printf("head: the log is empty\n");
    if (seq) printf("expected chain at seq %llu: matches\n", (unsigned long long)seq);
    if (rep.torn_bytes)
        printf("torn tail: %llu bytes after the last record (an interrupted write; the next "
               "open cuts them)\n",
               (unsigned long long)rep.torn_bytes);
    free(dir);
    return 0;
}

/* One record as a dump line: {"entry":...,"offset":N,"sequence":N}. */
static bool dump_line(buf *line, uint64_t offset, uint64_t seq, const char *payload, uint32_t len)
{
    buf_reset(line);
    buf_puts(line, "{\"entry\":");
    stm_err perr;
    cJSON *v = json_parse(payload, len, &perr);
    if (v) {
        json_write(line, v, true);
        cJSON_Delete(v);
    } else {
        /* Not JSON: keep the bytes, as a string, rather than drop them. */
        json_write_strn(line, payload, len);
    }
    buf_printf(line, ",\"offset\":%llu,\"sequence\":%llu}\n", (unsigned long long)offset,
               (unsigned long long)seq);
    return fwrite(line->data, 1, line->len, stdout) == line->len;
}

/* ---- reading a damaged log ------------------------------------------------
 * Opening refuses a log with damage inside it, so dump then reads the
 * segment files itself, read-only, with the rules recovery applies: the
 * same record checks, the same sequence rule, the same resynchronisation
 * on the "WLOG" magic to tell damage from a torn tail. */

typedef struct {
    uint64_t id;
    char *path;
    int fd;
    uint64_t size;
} dseg;

typedef struct {
    dseg *seg;
    unsigned char *buf;
    size_t cap;
    uint64_t boff; /* buf holds the segment's bytes [boff, boff + blen) */
    size_t blen;
} dreader;

#define DUMP_CHUNK (4u * 1024 * 1024)

/* [pos, pos+n) of r's segment, or NULL: *e = errno, or 0 past the end. */
static const unsigned char *dr_get(dreader *r, uint64_t pos, size_t n, int *e)
{
    *e = 0;
    if (pos + n > r->seg->size) return NULL;
    if (pos >= r->boff && pos + n <= r->boff + r->blen) return r->buf + (pos - r->boff);
    size_t want = n > DUMP_CHUNK ? n : DUMP_CHUNK;
    if (pos + want > r->seg->size) want = (size_t)(r->seg->size - pos);
    if (want > r->cap) {
        free(r->buf);
        r->cap = want;
        r->buf = xmalloc(r->cap);
    }
    size_t got = 0;
    r->blen = 0;
    while (got < want) {
        ssize_t k = pread(r->seg->fd, r->buf + got, want - got, (off_t)(pos + got));
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

static void dr_set(dreader *r, dseg *s)
{
    r->seg = s;
    r->blen = 0;
}

typedef struct {
    uint8_t type;
    uint32_t len;
    uint64_t seq;
    const char *payload;
} drec;

/* 1: a valid record at pos, 0: the segment ends there, -1: a bad record
 * (why says what), -2: a read error (*e). The checks of recovery's reader. */
static int dr_record(dreader *r, uint64_t pos, drec *v, char *why, size_t whyn, int *e)
{
    if (pos >= r->seg->size) return 0;
    const unsigned char *h = dr_get(r, pos, WAL_HEADER_SIZE, e);
    if (!h) {
        if (*e) return -2;
        snprintf(why, whyn, "partial record header (%llu of %d bytes)",
                 (unsigned long long)(r->seg->size - pos), WAL_HEADER_SIZE);
        return -1;
    }
    static const unsigned char zero[WAL_HEADER_SIZE];
    if (memcmp(h, "WLOG", 4) != 0) {
        snprintf(why, whyn, "%s", memcmp(h, zero, sizeof zero) ? "bad magic" : "zero-filled bytes");
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
    h = dr_get(r, pos, WAL_HEADER_SIZE + (size_t)len, e);
    if (!h) {
        if (*e) return -2;
        snprintf(why, whyn, "partial payload (%llu of %u bytes)",
                 (unsigned long long)(r->seg->size - pos - WAL_HEADER_SIZE), len);
        return -1;
    }
    uint64_t seq = wal_be64(h + 16);
    if (seq == 0 || seq > WAL_MAX_SEQ) {
        snprintf(why, whyn, "sequence number %llu %s", (unsigned long long)seq,
                 seq ? "out of range" : "(never valid)");
        return -1;
    }
    uint32_t crc = wal_be32(h + 12), got = crc32c(0, h + WAL_HEADER_SIZE, len);
    if (got != crc) {
        snprintf(why, whyn, "CRC mismatch (stored %08x, computed %08x)", crc, got);
        return -1;
    }
    v->type = type;
    v->len = len;
    v->seq = seq;
    v->payload = (const char *)h + WAL_HEADER_SIZE;
    return 1;
}

/* The first valid record at or after pos in r's segment: its position, or
 * UINT64_MAX (also on a read error, which the caller meets again). */
static uint64_t dr_find_good(dreader *r, uint64_t pos)
{
    char why[160];
    int e;
    drec v;
    while (pos + WAL_HEADER_SIZE <= r->seg->size) {
        uint64_t left = r->seg->size - pos;
        size_t n = left < DUMP_CHUNK ? (size_t)left : DUMP_CHUNK;
        const unsigned char *p = dr_get(r, pos, n, &e);
        if (!p) return UINT64_MAX;
        const unsigned char *m = memmem(p, n, "WLOG", 4);
        if (!m) {
            pos += n > 3 ? n - 3 : 1;
            continue;
        }
        uint64_t cand = pos + (uint64_t)(m - p);
        if (dr_record(r, cand, &v, why, sizeof why, &e) == 1) return cand;
        pos = cand + 1;
    }
    return UINT64_MAX;
}

static bool dr_zeros(dreader *r, uint64_t pos)
{
    int e;
    while (pos < r->seg->size) {
        uint64_t left = r->seg->size - pos;
        size_t n = left < DUMP_CHUNK ? (size_t)left : DUMP_CHUNK;
        const unsigned char *p = dr_get(r, pos, n, &e);
        if (!p) return false;
        for (size_t i = 0; i < n; i++)
            if (p[i]) return false;
        pos += n;
    }
    return true;
}

static int cmp_dseg(const void *a, const void *b)
{
    uint64_t x = ((const dseg *)a)->id, y = ((const dseg *)b)->id;
    return x < y ? -1 : x > y;
}

/* The segment files of dir, opened read-only, in log order. false after
 * printing why. */
static bool list_dsegs(const char *dir, dseg **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "stmfs wal dump: cannot read %s: %s\n", dir, strerror(errno));
        return false;
    }
    dseg *segs = NULL;
    size_t cap = 0;
    struct dirent *de;
    bool ok = true;
    while (ok && (de = readdir(d))) {
        const char *nm = de->d_name;
        if (strlen(nm) != 20 || strcmp(nm + 16, ".wal") != 0) continue;
        uint64_t id = 0;
        bool hex = true;
        for (int i = 0; i < 16 && hex; i++) {
            char c = nm[i];
            int v = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            hex = v >= 0;
            id = id << 4 | (uint64_t)(v & 15);
        }
        if (!hex || id == 0 || id >= (1ull << 24)) continue; /* as recovery lists them */
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            segs = xrealloc(segs, cap * sizeof *segs);
        }
        dseg *s = &segs[(*n)++];
        size_t pl = strlen(dir) + 22;
        s->id = id;
        s->path = xmalloc(pl);
        snprintf(s->path, pl, "%s/%s", dir, nm);
        s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (s->fd < 0 || fstat(s->fd, &st) != 0) {
            fprintf(stderr, "stmfs wal dump: cannot read %s: %s\n", s->path, strerror(errno));
            ok = false;
        } else {
            s->size = (uint64_t)st.st_size;
        }
    }
    closedir(d);
    if (*n) qsort(segs, *n, sizeof *segs, cmp_dseg);
    if (!ok) {
        for (size_t i = 0; i < *n; i++) {
            if (segs[i].fd >= 0) close(segs[i].fd);
            free(segs[i].path);
        }
        free(segs);
        *n = 0;
        return false;
    }
    *out = segs;
    return true;
}

/* Dumps a log that opening refused (refusal = its message). Returns the
 * exit status: 1 whenever damage was found. */
static int dump_damaged(const char *dir, uint64_t from, bool skip, const char *refusal)
{
    size_t n;
    dseg *segs;
    if (!list_dsegs(dir, &segs, &n)) return 1;
    dreader r = {0};
    buf line = {0};
    char why[160];
    int status = 0, e;
    bool damage = false, out_ok = true;
    /* The sequence rule of recovery: once a checkpoint is seen (only stmfs
     * writes them), each record is the highest number so far + 1. After a
     * skipped gap the next record starts the count again. */
    bool ours = false, fresh = true;
    uint64_t max_seq = 0;
    size_t i = 0;
    uint64_t pos = 0;
    while (i < n && out_ok) {
        dr_set(&r, &segs[i]);
        drec v;
        int k = dr_record(&r, pos, &v, why, sizeof why, &e);
        if (k == 0) {
            i++, pos = 0;
            continue;
        }
        if (k == -2) {
            fprintf(stderr, "stmfs wal dump: reading %s failed: %s\n", segs[i].path, strerror(e));
            status = 1;
            break;
        }
        bool is_ckpt = false;
        if (k == 1) {
            uint8_t ch[32];
            uint64_t cseq;
            is_ckpt = v.type == WAL_T_CHECKPOINT && wal_ckpt_parse(v.payload, v.len, ch, &cseq);
            if ((ours || is_ckpt) && !fresh && v.seq != max_seq + 1) {
                snprintf(why, sizeof why, "sequence break (%llu after %llu)",
                         (unsigned long long)v.seq, (unsigned long long)max_seq);
                k = -1;
            }
        }
        if (k == 1) {
            uint64_t off = WAL_OFFSET(segs[i].id, pos);
            if (off >= from && !dump_line(&line, off, v.seq, v.payload, v.len)) out_ok = false;
            ours |= is_ckpt;
            max_seq = fresh || v.seq > max_seq ? v.seq : max_seq;
            fresh = false;
            pos += WAL_HEADER_SIZE + (uint64_t)v.len;
            continue;
        }
        /* A bad record: damage if a valid one follows, else the tail. */
        uint64_t rest = segs[i].size - pos;
        bool zeros = dr_zeros(&r, pos);
        for (size_t j = i + 1; j < n; j++) {
            rest += segs[j].size;
            zeros &= segs[j].size == 0;
        }
        size_t gseg = i;
        uint64_t good = zeros ? UINT64_MAX : dr_find_good(&r, pos + 1);
        for (size_t j = i + 1; j < n && !zeros && good == UINT64_MAX; j++) {
            dr_set(&r, &segs[j]);
            good = dr_find_good(&r, 0);
            gseg = j;
        }
        uint64_t off = WAL_OFFSET(segs[i].id, pos);
        if (good == UINT64_MAX) {
            if (!zeros)
                fprintf(stderr,
                        "stmfs wal dump: note: found a torn tail in %s at byte %llu (offset "
                        "%llu): %s; %llu bytes ignored (read-only)\n",
                        segs[i].path, (unsigned long long)pos, (unsigned long long)off, why,
                        (unsigned long long)rest);
            break;
        }
        damage = true;
        status = 1;
        uint64_t skipped = segs[i].size - pos;
        for (size_t j = i + 1; j < gseg; j++)
            skipped += segs[j].size;
        skipped = gseg == i ? good - pos : skipped + good;
        fprintf(stderr,
                "stmfs wal dump: DAMAGED: bad record in %s at byte %llu (offset %llu): %s; "
                "%llu bytes follow to the end of the log; the next valid record is %llu bytes "
                "on (%s byte %llu, offset %llu)\n",
                segs[i].path, (unsigned long long)pos, (unsigned long long)off, why,
                (unsigned long long)rest, (unsigned long long)skipped, segs[gseg].path,
                (unsigned long long)good, (unsigned long long)WAL_OFFSET(segs[gseg].id, good));
        if (!skip) {
            fprintf(stderr, "stmfs wal dump: stopped there; --skip-damage also prints the "
                            "records after it, which `stmfs wal repair` would cut\n");
            break;
        }
        fprintf(stderr, "stmfs wal dump: --skip-damage: going on from that record; `stmfs wal "
                        "repair` would cut it and every record after it\n");
        i = gseg;
        pos = good;
        fresh = true;
    }
    if (!damage && status == 0) {
        /* Nothing found here that opening would refuse: say what it said. */
        fprintf(stderr, "stmfs wal dump: %s\n", refusal);
        status = 1;
    }
    if (!out_ok || fflush(stdout) != 0) status = 1;
    buf_free(&line);
    free(r.buf);
    for (size_t j = 0; j < n; j++) {
        close(segs[j].fd);
        free(segs[j].path);
    }
    free(segs);
    return status;
}

static int do_dump(const char *data_dir, uint64_t from, bool skip)
{
    char *dir = wal_dir_of(data_dir);
    wal_opts o = {.dir = dir, .segment_size = 64u << 20, .read_only = true};
    wal *w;
    wal_recovery rep;
    stm_err err = {0};
    if (wal_open(&o, &w, &rep, &err) != STM_OK) {
        /* Damage inside the log: read what is there without the log. */
        int st = err.code == STM_WAL_IO_ERROR && access(dir, R_OK | X_OK) == 0
                     ? dump_damaged(dir, from, skip, err.msg)
                     : (fprintf(stderr, "stmfs wal dump: %s\n", err.msg), 1);
        free(dir);
        return st;
    }
    wal_iter *it;
    if (wal_iter_open(w, from, false, &it, &err) != STM_OK) {
        fprintf(stderr, "stmfs wal dump: %s\n", err.msg);
        wal_close(w, NULL);
        free(dir);
        return 1;
    }
    buf line = {0};
    wal_record r;
    int k, status = 0;
    while ((k = wal_iter_next(it, &r, &err)) == 1) {
        if (!dump_line(&line, r.offset, r.seq, r.payload, r.len)) {
            status = 1;
            break;
        }
    }
    if (k < 0) {
        fprintf(stderr, "stmfs wal dump: %s\n", err.msg);
        status = 1;
    }
    if (rep.cut_bytes && !rep.zero_tail) fprintf(stderr, "stmfs wal dump: note: %s\n", rep.message);
    if (fflush(stdout) != 0) status = 1;
    buf_free(&line);
    wal_iter_close(it);
    wal_close(w, NULL);
    free(dir);
    return status;
}

static int do_repair(const char *data_dir)
{
    char *dir = wal_dir_of(data_dir);
    if (access(dir, R_OK | W_OK | X_OK) != 0) {
        fprintf(stderr, "stmfs wal repair: no writable write-ahead log at %s: %s\n", dir,
                strerror(errno));
        free(dir);
        return 1;
    }
    /* The policy does not matter: nothing is appended, and close syncs. */
    wal_opts o = {.dir = dir, .segment_size = 64ull << 20, .repair = true};
    wal *w;
    wal_recovery rec = {0};
    stm_err err = {0};
    stm_code rc = wal_open(&o, &w, &rec, &err);
    if (rc == STM_OK) rc = wal_close(w, &err);
    free(dir);
    if (rc != STM_OK) {
        fprintf(stderr, "stmfs wal repair: %s\n", err.msg);
        return 1;
    }
    if (rec.cut_bytes)
        printf("%s\n", rec.message);
    else
        printf("nothing to repair: %llu records in %llu segments are intact\n",
               (unsigned long long)rec.records, (unsigned long long)rec.segments);
    return 0;
}

int cmd_wal(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"expect", required_argument, NULL, 'e'},
        {"from", required_argument, NULL, 'f'},
        {"skip-damage", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *expect = NULL;
    uint64_t from = 0;
    bool have_from = false, skip = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'e':
            expect = optarg;
            break;
        case 'f': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-') {
                fprintf(stderr,
                        "stmfs wal dump: --from wants a WAL offset (a whole number), "
                        "not '%s'\n",
                        optarg);
                return 2;
            }
            from = v;
            have_from = true;
            break;
        }
        case 's':
            skip = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    const char *sub = argv[optind], *data_dir = argv[optind + 1];
    if (strcmp(sub, "verify") == 0) {
        if (have_from || skip) {
            fprintf(stderr, "stmfs wal verify: --%s belongs to dump\n",
                    have_from ? "from" : "skip-damage");
            return 2;
        }
        return do_verify(data_dir, expect);
    }
    if (strcmp(sub, "dump") == 0) {
        if (expect) {
            fprintf(stderr, "stmfs wal dump: --expect belongs to verify\n");
            return 2;
        }
        return do_dump(data_dir, from, skip);
    }
    if (strcmp(sub, "repair") == 0) {
        if (expect || have_from || skip) {
            fprintf(stderr, "stmfs wal repair: takes no options\n");
            return 2;
        }
        return do_repair(data_dir);
    }
    fprintf(stderr, "stmfs wal: unknown subcommand '%s' (verify, dump or repair)\n", sub);
    usage(stderr);
    return 2;
}
