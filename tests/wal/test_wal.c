/*
 * test_wal.c - unit tests of wal/: format, rotation, recovery, hash chain,
 * group commit, fsync policies, iteration, faults, and the rstmdb fixtures.
 *
 * Each test works in its own directory under $TMPDIR. The fixtures are
 * copied before use (STMFS_TESTDATA points at ../shared/testdata).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "wal/internal.h" /* wal_make_header */
#include "wal/io.h"
#include "wal/wal.h"

/* ---- helpers -------------------------------------------------------------- */

static char tmp[256];

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void setup(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/stmwal-XXXXXX", t && *t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
}

static void teardown(void)
{
    nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *path_in(const char *name)
{
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmp, name);
    return p[k];
}

static char *seg_path(const char *dir, uint64_t id)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%016llx.wal", dir, (unsigned long long)id);
    return p;
}

static wal *open_wal(const char *dir, uint64_t segsize, const char *policy)
{
    wal_opts o = {.dir = dir, .segment_size = segsize};
    stm_err err = {0};
    ck_assert_int_eq(wal_sync_policy_parse(policy, &o.sync, &err), STM_OK);
    wal *w = NULL;
    stm_code rc = wal_open(&o, &w, NULL, &err);
    ck_assert_msg(rc == STM_OK, "open %s: %s", dir, err.msg);
    return w;
}

static void close_wal(wal *w)
{
    stm_err err = {0};
    ck_assert_msg(wal_close(w, &err) == STM_OK, "close: %s", err.msg);
}

static void payload_for(uint64_t i, char *out, size_t *len)
{
    /* Lengths cycle through 0..700 so records cross index points. */
    size_t n = (i * 37) % 700;
    int h = snprintf(out, 64, "{\"n\":%llu,\"p\":\"", (unsigned long long)i);
    for (size_t k = 0; k < n; k++)
        out[h + k] = (char)('a' + (i + k) % 26);
    memcpy(out + h + n, "\"}", 2);
    *len = h + n + 2;
}

static wal_record append_ok(wal *w, uint8_t type, const char *p, size_t len)
{
    wal_record r;
    stm_err err = {0};
    ck_assert_msg(wal_append(w, type, p, (uint32_t)len, &r, &err) == STM_OK, "append: %s", err.msg);
    return r;
}

static void wait_ok(wal *w, uint64_t seq)
{
    stm_err err = {0};
    ck_assert_msg(wal_wait(w, seq, &err) == STM_OK, "wait: %s", err.msg);
}

static off_t file_size(const char *p)
{
    struct stat st;
    if (stat(p, &st) != 0) return -1;
    return st.st_size;
}

static void truncate_to(const char *p, off_t n)
{
    ck_assert_int_eq(truncate(p, n), 0);
}

static void poke(const char *p, off_t at, unsigned char xor_with)
{
    int fd = open(p, O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char c;
    ck_assert_int_eq(pread(fd, &c, 1, at), 1);
    c ^= xor_with;
    ck_assert_int_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

static void copy_dir(const char *from, const char *to)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && chmod -R u+w '%s'", from, to, to);
    ck_assert_int_eq(system(cmd), 0);
}

static const char *testdata(void)
{
    const char *t = getenv("STMFS_TESTDATA");
    return t && *t ? t : "../shared/testdata";
}

typedef struct {
    uint64_t offset, seq;
    uint8_t type;
    uint32_t len;
    uint32_t crc;
    uint8_t chain[32];
} kept;

/* Reads the whole log; returns the number of records, fills up to max. */
static size_t read_all(wal *w, kept *out, size_t max, bool chain)
{
    wal_iter *it;
    stm_err err = {0};
    ck_assert_int_eq(wal_iter_open(w, 0, chain, &it, &err), STM_OK);
    wal_record r;
    size_t n = 0;
    int k;
    while ((k = wal_iter_next(it, &r, &err)) == 1) {
        if (n < max) {
            out[n] = (kept){r.offset, r.seq, r.type, r.len, crc32c(0, r.payload, r.len), {0}};
            memcpy(out[n].chain, r.chain, 32);
        }
        n++;
    }
    ck_assert_msg(k == 0, "iteration: %s", err.msg);
    wal_iter_close(it);
    return n;
}

/* ---- format --------------------------------------------------------------- */

START_TEST(test_policy_parse)
{
    wal_sync_policy p;
    stm_err err;
    char out[40];
    ck_assert_int_eq(wal_sync_policy_parse("EVERY_WRITE", &p, &err), STM_OK);
    ck_assert_int_eq(p.mode, WAL_SYNC_EVERY_WRITE);
    ck_assert_int_eq(wal_sync_policy_parse("every_n:100", &p, &err), STM_OK);
    ck_assert_int_eq(p.mode, WAL_SYNC_EVERY_N);
    ck_assert_uint_eq(p.arg, 100);
    wal_sync_policy_format(&p, out, sizeof out);
    ck_assert_str_eq(out, "every_n:100");
    ck_assert_int_eq(wal_sync_policy_parse("every_ms: 5", &p, &err), STM_OK);
    ck_assert_int_eq(p.mode, WAL_SYNC_EVERY_MS);
    ck_assert_uint_eq(p.arg, 5);
    ck_assert_int_eq(wal_sync_policy_parse("never", &p, &err), STM_OK);
    ck_assert_int_eq(p.mode, WAL_SYNC_NEVER);
    ck_assert_int_eq(wal_sync_policy_parse("sometimes", &p, &err), STM_BAD_REQUEST);
    ck_assert_ptr_nonnull(strstr(err.msg, "sometimes"));
    ck_assert_int_eq(wal_sync_policy_parse("every_n:-1", &p, &err), STM_BAD_REQUEST);
    ck_assert_int_eq(wal_sync_policy_parse("every_n:", &p, &err), STM_BAD_REQUEST);
}
END_TEST

START_TEST(test_hex)
{
    uint8_t h[32], g[32];
    char s[65];
    for (int i = 0; i < 32; i++)
        h[i] = (uint8_t)(i * 7 + 3);
    wal_hex(h, s);
    ck_assert_uint_eq(strlen(s), 64);
    ck_assert(wal_unhex(s, g));
    ck_assert_mem_eq(h, g, 32);
    s[10] = 'x';
    ck_assert(!wal_unhex(s, g));
}
END_TEST

START_TEST(test_header_bytes)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 64u << 20, "every_write");
    const char *p = "{\"type\":\"delete_instance\",\"instance_id\":\"order-1\"}";
    wal_record r = append_ok(w, WAL_T_DELETE_INSTANCE, p, strlen(p));
    ck_assert_uint_eq(r.offset, 1ull << 40);
    ck_assert_uint_eq(r.seq, 1);
    wait_ok(w, r.seq);
    close_wal(w);

    unsigned char b[24 + 64];
    int fd = open(seg_path(dir, 1), O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, b, sizeof b, 0), (ssize_t)sizeof b);
    close(fd);
    const unsigned char want[16] = {'W', 'L', 'O', 'G', 4, 0,
                                    0,   0,   0,   0,   0, (unsigned char)strlen(p)};
    ck_assert_mem_eq(b, want, 12);
    uint32_t crc = crc32c(0, p, strlen(p));
    unsigned char c[4] = {crc >> 24, crc >> 16, crc >> 8, crc};
    ck_assert_mem_eq(b + 12, c, 4);
    const unsigned char seq[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    ck_assert_mem_eq(b + 16, seq, 8);
    ck_assert_mem_eq(b + 24, p, strlen(p));
}
END_TEST

/* One writer per log: a second writable open (another daemon on the same
 * data directory) is refused while the first is open, readers are not, and
 * the lock goes with the first one's close. */
START_TEST(test_one_writer)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 1 << 20, "every_write");
    wal_record r = append_ok(w, 3, "{}", 2);
    wait_ok(w, r.seq);
    wal_opts o = {.dir = dir, .segment_size = 1 << 20};
    stm_err err = {0};
    wal_sync_policy_parse("every_write", &o.sync, &err);
    wal *second = NULL;
    ck_assert_int_eq(wal_open(&o, &second, NULL, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_null(second);
    ck_assert_ptr_nonnull(strstr(err.msg, "is in use by another process"));
    o.repair = true;
    ck_assert_int_eq(wal_open(&o, &second, NULL, &err), STM_WAL_IO_ERROR);
    o.repair = false;
    o.read_only = true;
    ck_assert_int_eq(wal_open(&o, &second, NULL, &err), STM_OK);
    close_wal(second);
    close_wal(w);
    o.read_only = false;
    ck_assert_int_eq(wal_open(&o, &second, NULL, &err), STM_OK);
    close_wal(second);
}
END_TEST

START_TEST(test_roundtrip)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 64u << 20, "never");
    enum { N = 3000 };
    static kept want[N + 8];
    char pl[1024];
    size_t len;
    for (uint64_t i = 0; i < N; i++) {
        payload_for(i, pl, &len);
        wal_record r = append_ok(w, (uint8_t)(1 + i % 4), pl, len);
        want[i] = (kept){r.offset, r.seq, r.type, r.len, crc32c(0, pl, len), {0}};
        memcpy(want[i].chain, r.chain, 32);
        ck_assert(r.has_chain);
    }
    /* An empty payload and the largest one. */
    char *big = malloc(WAL_MAX_PAYLOAD + 1);
    memset(big, 'x', WAL_MAX_PAYLOAD + 1);
    stm_err err;
    wal_record r;
    ck_assert_int_eq(wal_append(w, 3, big, WAL_MAX_PAYLOAD + 1, &r, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "too large"));
    ck_assert_int_eq(wal_append(w, WAL_T_CHECKPOINT, "{}", 2, &r, &err), STM_BAD_REQUEST);
    ck_assert_int_eq(wal_append(w, 77, "{}", 2, &r, &err), STM_BAD_REQUEST);
    free(big);
    ck_assert_int_eq(wal_sync(w, &err), STM_OK);

    /* Read back while open, then after a reopen. */
    for (int pass = 0; pass < 2; pass++) {
        static kept got[N + 8];
        size_t n = read_all(w, got, N + 8, true);
        ck_assert_uint_ge(n, N);
        size_t j = 0;
        for (size_t i = 0; i < n; i++) {
            if (got[i].type == WAL_T_CHECKPOINT) continue;
            ck_assert_uint_eq(got[i].offset, want[j].offset);
            ck_assert_uint_eq(got[i].seq, want[j].seq);
            ck_assert_uint_eq(got[i].type, want[j].type);
            ck_assert_uint_eq(got[i].len, want[j].len);
            ck_assert_uint_eq(got[i].crc, want[j].crc);
            ck_assert_mem_eq(got[i].chain, want[j].chain, 32);
            j++;
        }
        ck_assert_uint_eq(j, N);
        buf b = {0};
        for (size_t i = 0; i < N; i += 97) {
            wal_record rr;
            ck_assert_int_eq(wal_read_at(w, want[i].offset, &b, &rr, &err), STM_OK);
            ck_assert_uint_eq(rr.seq, want[i].seq);
            ck_assert_uint_eq(crc32c(0, b.data, b.len), want[i].crc);
        }
        ck_assert_int_eq(wal_read_at(w, want[5].offset + 1, &b, &r, &err), STM_BAD_REQUEST);
        ck_assert_int_eq(wal_read_at(w, 99ull << 40, &b, &r, &err), STM_BAD_REQUEST);
        buf_free(&b);
        close_wal(w);
        w = open_wal(dir, 64u << 20, "never");
    }
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_ge(st.entry_count, N);
    ck_assert_uint_eq(st.segment_count, 1);
    ck_assert_uint_eq(st.first_offset, 1ull << 40);
    ck_assert_uint_eq(st.latest_offset, (1ull << 40) + (uint64_t)file_size(seg_path(dir, 1)));
    close_wal(w);
}
END_TEST

START_TEST(test_iter_from_middle)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 1u << 20, "never");
    enum { N = 4000 };
    static kept want[N];
    char pl[1024];
    size_t len;
    for (uint64_t i = 0; i < N; i++) {
        payload_for(i, pl, &len);
        wal_record r = append_ok(w, 3, pl, len);
        want[i] = (kept){r.offset, r.seq, r.type, r.len, 0, {0}};
        memcpy(want[i].chain, r.chain, 32);
    }
    stm_err err;
    ck_assert_int_eq(wal_sync(w, &err), STM_OK);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < N; i += 333) {
            for (int chain = 0; chain < 2; chain++) {
                /* From the record's own offset and from one byte before it. */
                for (int before = 0; before < 2; before++) {
                    uint64_t from = want[i].offset - (uint64_t)(before && i ? 1 : 0);
                    wal_iter *it;
                    ck_assert_int_eq(wal_iter_open(w, from, chain, &it, &err), STM_OK);
                    wal_record r;
                    int k;
                    do
                        k = wal_iter_next(it, &r, &err);
                    while (k == 1 && r.type == WAL_T_CHECKPOINT);
                    ck_assert_int_eq(k, 1);
                    ck_assert_uint_eq(r.offset, want[i].offset);
                    ck_assert_uint_eq(r.seq, want[i].seq);
                    if (chain) ck_assert_mem_eq(r.chain, want[i].chain, 32);
                    wal_iter_close(it);
                }
            }
        }
        close_wal(w);
        w = open_wal(dir, 1u << 20, "never");
    }
    close_wal(w);
}
END_TEST

/* The read-ahead iterator gives what the plain one gives, record for record:
 * across its chunks (512 records or 256 KiB), segment ends and a record
 * bigger than a chunk; it can be closed mid-way; a bad record in the middle
 * reaches the caller as an error after every good record before it. */
START_TEST(test_read_ahead)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 1u << 20, "never");
    enum { N = 3000 };
    char pl[1024];
    size_t len;
    static char big[300 * 1024];
    memset(big, 'b', sizeof big);
    for (uint64_t i = 0; i < N; i++) {
        payload_for(i, pl, &len);
        append_ok(w, 3, pl, len);
        if (i == 1234) append_ok(w, 3, big, sizeof big);
    }
    stm_err err = {0};
    ck_assert_int_eq(wal_sync(w, &err), STM_OK);
    wal_iter *it;
    wal_ahead *a;
    ck_assert_int_eq(wal_iter_open(w, 0, true, &it, &err), STM_OK);
    ck_assert_int_eq(wal_ahead_open(w, 0, &a, &err), STM_OK);
    wal_record x, y;
    size_t n = 0;
    int kx, ky;
    while ((kx = wal_iter_next(it, &x, &err)) == 1) {
        ky = wal_ahead_next(a, &y, &err);
        ck_assert_int_eq(ky, 1);
        ck_assert_uint_eq(y.offset, x.offset);
        ck_assert_uint_eq(y.seq, x.seq);
        ck_assert_uint_eq(y.type, x.type);
        ck_assert_uint_eq(y.len, x.len);
        ck_assert(y.has_chain);
        ck_assert_mem_eq(y.chain, x.chain, 32);
        ck_assert_msg(memcmp(y.payload, x.payload, x.len) == 0, "payload of record %zu", n);
        n++;
    }
    ck_assert_int_eq(kx, 0);
    ck_assert_int_eq(wal_ahead_next(a, &y, &err), 0);
    ck_assert_int_eq(wal_ahead_next(a, &y, &err), 0); /* and stays at the end */
    ck_assert_uint_gt(n, N);
    wal_iter_close(it);
    wal_ahead_close(a);

    /* closed after a few records, while the producer is blocked on a full ring */
    ck_assert_int_eq(wal_ahead_open(w, 0, &a, &err), STM_OK);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(wal_ahead_next(a, &y, &err), 1);
    usleep(20000);
    wal_ahead_close(a);
    /* closed before reading anything */
    ck_assert_int_eq(wal_ahead_open(w, 0, &a, &err), STM_OK);
    wal_ahead_close(a);

    /* a byte flipped in a record's payload in the first segment, under the
     * open log: the iterator checks every CRC it reads */
    uint64_t bad_off = 0;
    ck_assert_int_eq(wal_iter_open(w, 0, false, &it, &err), STM_OK);
    for (size_t i = 0; i < 700 && wal_iter_next(it, &x, &err) == 1; i++) bad_off = x.offset;
    wal_iter_close(it);
    ck_assert_uint_eq(WAL_OFF_SEG(bad_off), 1);
    poke(seg_path(dir, 1), (off_t)WAL_OFF_POS(bad_off) + WAL_HEADER_SIZE + 2, 0x01);
    ck_assert_int_eq(wal_ahead_open(w, 0, &a, &err), STM_OK);
    size_t good = 0;
    int k;
    while ((k = wal_ahead_next(a, &y, &err)) == 1) {
        ck_assert_uint_lt(y.offset, bad_off);
        good++;
    }
    ck_assert_int_eq(k, -1);
    ck_assert_int_eq(err.code, STM_WAL_IO_ERROR);
    ck_assert_msg(strstr(err.msg, "bad WAL record") != NULL, "%s", err.msg);
    ck_assert_uint_eq(good, 699);
    ck_assert_int_eq(wal_ahead_next(a, &y, &err), -1);
    wal_ahead_close(a);
    poke(seg_path(dir, 1), (off_t)WAL_OFF_POS(bad_off) + WAL_HEADER_SIZE + 2, 0x01);
    close_wal(w);
}
END_TEST

/* ---- rotation ----------------------------------------------------------- */

/* wal_salvage reads a log that opening refuses: the records before a
 * damaged one, the damage where recovery finds it, the records after it
 * from the next valid one; then a torn tail ends it. The files stay as
 * they were. */
START_TEST(test_salvage)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 4096, "every_write");
    char pl[300];
    memset(pl, 's', sizeof pl);
    wal_record recs[40];
    for (int i = 0; i < 40; i++)
        recs[i] = append_ok(w, 3, pl, sizeof pl);
    wait_ok(w, recs[39].seq);
    close_wal(w);
    /* one byte of record 10's payload, and a torn copy of a header at the end */
    int fd = open(seg_path(dir, WAL_OFF_SEG(recs[10].offset)), O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, "X", 1, (off_t)WAL_OFF_POS(recs[10].offset) + 30), 1);
    close(fd);
    uint64_t last = WAL_OFF_SEG(recs[39].offset);
    fd = open(seg_path(dir, last), O_WRONLY | O_APPEND);
    ck_assert_int_eq(write(fd, "WLOG\3\0\0\0", 8), 8);
    close(fd);
    off_t before = file_size(seg_path(dir, last));

    wal_opts o = {.dir = dir, .segment_size = 4096, .read_only = true};
    stm_err err = {0};
    wal *ro = NULL;
    ck_assert_int_eq(wal_open(&o, &ro, NULL, &err), STM_WAL_IO_ERROR);

    wal_salvage *sv;
    ck_assert_int_eq(wal_salvage_open(dir, &sv, &err), STM_OK);
    wal_record r;
    wal_damage d;
    int k, got = 0, damaged = 0, tails = 0;
    uint64_t seen[64];
    while ((k = wal_salvage_next(sv, &r, &d, &err)) != 0) {
        ck_assert_int_ne(k, -2);
        if (k == -1 && d.tail) {
            tails++;
            ck_assert(!d.zeros);
            ck_assert_uint_eq(d.rest, 8);
            continue;
        }
        if (k == -1) {
            damaged++;
            ck_assert_uint_eq(d.offset, recs[10].offset);
            ck_assert_ptr_nonnull(strstr(d.why, "CRC mismatch"));
            ck_assert_uint_eq(d.next_offset, recs[11].offset);
            ck_assert_uint_eq(d.skipped, 24 + sizeof pl);
            continue;
        }
        if (r.type == WAL_T_CHECKPOINT) continue;
        ck_assert_int_lt(got, 64);
        seen[got++] = r.offset;
    }
    wal_salvage_close(sv);
    ck_assert_int_eq(damaged, 1);
    ck_assert_int_eq(tails, 1);
    ck_assert_int_eq(got, 39);
    for (int i = 0, j = 0; i < 40; i++) {
        if (i == 10) continue;
        ck_assert_uint_eq(seen[j++], recs[i].offset);
    }
    ck_assert_int_eq(file_size(seg_path(dir, last)), before);
}
END_TEST

START_TEST(test_rotation)
{
    char *dir = path_in("wal");
    const uint64_t seg = 4096;
    wal *w = open_wal(dir, seg, "every_write");
    char pl[300];
    memset(pl, 'r', sizeof pl);
    uint64_t last_seg = 1;
    for (int i = 0; i < 100; i++) {
        wal_record r = append_ok(w, 3, pl, sizeof pl);
        ck_assert_uint_ge(WAL_OFF_SEG(r.offset), last_seg);
        last_seg = WAL_OFF_SEG(r.offset);
        ck_assert_uint_le(WAL_OFF_POS(r.offset) + 24 + sizeof pl, seg);
    }
    /* A record larger than a segment goes alone into a fresh one. */
    char *big = malloc(10000);
    memset(big, 'B', 10000);
    wal_record rb = append_ok(w, 3, big, 10000);
    ck_assert_uint_eq(WAL_OFF_SEG(rb.offset), last_seg + 1);
    wal_record ra = append_ok(w, 3, pl, sizeof pl);
    ck_assert_uint_eq(WAL_OFF_SEG(ra.offset), last_seg + 2);
    wait_ok(w, ra.seq);
    free(big);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.segment_count, last_seg + 2);
    close_wal(w);

    for (uint64_t s = 1; s < last_seg; s++) {
        off_t sz = file_size(seg_path(dir, s));
        ck_assert_int_gt(sz, 0);
        ck_assert_int_le(sz, (off_t)seg);
    }
    /* Every segment after the first starts with a checkpoint carrying the
     * chain of the record before it. */
    w = open_wal(dir, seg, "every_write");
    static kept got[400];
    size_t n = read_all(w, got, 400, true);
    for (size_t i = 1; i < n; i++) {
        if (WAL_OFF_POS(got[i].offset) == 0) {
            ck_assert_uint_eq(got[i].type, WAL_T_CHECKPOINT);
            buf b = {0};
            wal_record r;
            stm_err err;
            ck_assert_int_eq(wal_read_at(w, got[i].offset, &b, &r, &err), STM_OK);
            char hex[65], want[120];
            wal_hex(got[i - 1].chain, hex);
            snprintf(want, sizeof want, "\"chain\":\"%s\",\"chain_seq\":%llu}", hex,
                     (unsigned long long)got[i - 1].seq);
            ck_assert_msg(strstr(b.data, want), "checkpoint %s lacks %s", b.data, want);
            ck_assert(strncmp(b.data, "{\"type\":\"checkpoint\",\"timestamp\":", 33) == 0);
            buf_free(&b);
        }
        ck_assert_uint_eq(got[i].seq, got[i - 1].seq + 1);
    }
    close_wal(w);
}
END_TEST

START_TEST(test_periodic_checkpoint)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 64u << 20, "never");
    char pl[1000];
    memset(pl, 'c', sizeof pl);
    for (int i = 0; i < 3000; i++)
        append_ok(w, 3, pl, sizeof pl);
    close_wal(w);
    w = open_wal(dir, 64u << 20, "never");
    static kept got[3100];
    size_t n = read_all(w, got, 3100, false);
    size_t ck = 0;
    for (size_t i = 0; i < n; i++)
        ck += got[i].type == WAL_T_CHECKPOINT;
    /* ~3 MB of records: one every MiB, plus the closing one. */
    ck_assert_uint_ge(ck, 3);
    ck_assert_uint_le(ck, 4);
    ck_assert_uint_eq(got[n - 1].type, WAL_T_CHECKPOINT);
    close_wal(w);
}
END_TEST

/* wal_append tells its caller about a checkpoint it wrote before the record
 * (a rotation's, or a periodic one), since the caller never sees it go in
 * otherwise: the engine's wal/entries counts every record of the log. Each
 * reported checkpoint is the log's record seq - 1, right before the
 * record; every other checkpoint is the closing one. */
START_TEST(test_append_reports_checkpoints)
{
    char *dir = path_in("wal");
    const uint64_t segsize = 2u << 20;
    wal *w = open_wal(dir, segsize, "never");
    enum { N = 5000 };
    static wal_record recs[N];
    char pl[1000];
    memset(pl, 'k', sizeof pl);
    for (int i = 0; i < N; i++) recs[i] = append_ok(w, 3, pl, sizeof pl);
    close_wal(w);
    w = open_wal(dir, segsize, "never");
    static kept got[N + 16];
    size_t n = read_all(w, got, N + 16, false);
    close_wal(w);
    size_t k = 0, reported = 0, rotations = 0;
    for (int i = 0; i < N; i++) {
        while (k < n && got[k].seq < recs[i].seq) k++;
        ck_assert_uint_lt(k, n);
        ck_assert_uint_eq(got[k].offset, recs[i].offset);
        bool before = k > 0 && got[k - 1].type == WAL_T_CHECKPOINT &&
                      (i == 0 || got[k - 1].seq > recs[i - 1].seq);
        if (!before) {
            ck_assert_uint_eq(recs[i].ckpt_len, 0);
            continue;
        }
        reported++;
        rotations += WAL_OFF_POS(got[k - 1].offset) == 0;
        ck_assert_uint_eq(recs[i].ckpt_offset, got[k - 1].offset);
        ck_assert_uint_eq(recs[i].ckpt_len, got[k - 1].len);
        ck_assert_uint_eq(got[k - 1].seq, recs[i].seq - 1);
        ck_assert_uint_eq(recs[i].ckpt_offset + 24 + recs[i].ckpt_len, recs[i].offset);
    }
    size_t all = 0;
    for (size_t j = 0; j < n; j++) all += got[j].type == WAL_T_CHECKPOINT;
    ck_assert_uint_eq(reported + 1, all); /* and the closing one */
    ck_assert_uint_ge(rotations, 2);            /* ~5 MB in 2 MiB segments */
    ck_assert_uint_ge(reported - rotations, 2); /* 1 MiB into a segment */
}
END_TEST

/* ---- recovery ----------------------------------------------------------- */

/* Writes n records and closes; returns the offsets of the last user record
 * start and end in segment 1 (the closing checkpoint is removed). */
static void make_log(const char *dir, int n, uint64_t *last_start, uint64_t *last_end)
{
    wal *w = open_wal(dir, 64u << 20, "never");
    char pl[1024];
    size_t len;
    wal_record r = {0};
    for (int i = 0; i < n; i++) {
        payload_for((uint64_t)i + 3, pl, &len);
        r = append_ok(w, 3, pl, len);
    }
    close_wal(w);
    *last_start = WAL_OFF_POS(r.offset);
    *last_end = *last_start + 24 + r.len;
    truncate_to(seg_path(dir, 1), (off_t)*last_end);
}

START_TEST(test_torn_every_byte)
{
    char *dir = path_in("wal");
    uint64_t s, e;
    make_log(dir, 12, &s, &e);
    char *seg = xstrdup(seg_path(dir, 1));
    int fd = open(seg, O_RDONLY);
    char *img = malloc(e);
    ck_assert_int_eq(pread(fd, img, e, 0), (ssize_t)e);
    close(fd);

    for (uint64_t cut = s; cut <= e; cut++) {
        fd = open(seg, O_WRONLY | O_TRUNC);
        ck_assert_int_eq(write(fd, img, cut), (ssize_t)cut);
        close(fd);
        wal_opts o = {.dir = dir, .segment_size = 64u << 20};
        wal *w;
        wal_recovery rep;
        stm_err err;
        ck_assert_msg(wal_open(&o, &w, &rep, &err) == STM_OK, "cut %llu: %s",
                      (unsigned long long)cut, err.msg);
        uint64_t keep = cut == e ? e : s;
        ck_assert_uint_eq(rep.records, cut == e ? 12 : 11);
        ck_assert_uint_eq(rep.cut_bytes, cut - keep);
        if (cut != e && cut != s) {
            ck_assert_uint_eq(rep.cut_offset, (1ull << 40) + s);
            ck_assert_ptr_nonnull(strstr(rep.message, "0000000000000001.wal"));
        } else {
            ck_assert_str_eq(rep.message, "");
        }
        ck_assert_int_eq(file_size(seg), (off_t)keep);
        wal_stats st;
        wal_get_stats(w, &st);
        ck_assert_uint_eq(st.latest_offset, (1ull << 40) + keep);
        ck_assert_uint_eq(st.entry_count, cut == e ? 12 : 11);
        /* The next record goes where the good log ends. */
        wal_record r;
        ck_assert_int_eq(wal_append(w, 3, "{}", 2, &r, &err), STM_OK);
        ck_assert_uint_eq(r.offset, (1ull << 40) + keep);
        ck_assert_uint_eq(r.seq, cut == e ? 13 : 12);
        wal_close(w, &err);
    }
    free(img);
    free(seg);
}
END_TEST

START_TEST(test_zero_tail)
{
    char *dir = path_in("wal");
    uint64_t s, e;
    make_log(dir, 10, &s, &e);
    const char *seg = seg_path(dir, 1);
    /* Half a header, then the file system's zero fill. */
    truncate_to(seg, (off_t)(s + 10));
    truncate_to(seg, (off_t)(s + 8192));
    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    wal *w;
    wal_recovery rep;
    stm_err err;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.records, 9);
    ck_assert_uint_eq(rep.cut_bytes, 8192);
    ck_assert_int_eq(file_size(seg), (off_t)s);
    close_wal(w);

    /* A full log followed by zeros. */
    make_log(path_in("wal2"), 10, &s, &e);
    seg = seg_path(path_in("wal2"), 1);
    truncate_to(seg, (off_t)(e + 100));
    o.dir = path_in("wal2");
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.records, 10);
    ck_assert_uint_eq(rep.cut_bytes, 100);
    ck_assert_ptr_nonnull(strstr(rep.message, "zero"));
    close_wal(w);
}
END_TEST

/* Under every_write the live segment is zero-filled ahead of its last
 * record; sealed segments and a cleanly closed log end at their last
 * record; a copy taken while the log was live (what a crash leaves)
 * recovers every record and reports zero fill, not a torn tail. */
START_TEST(test_preallocated_tail)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 256u << 10, "every_write");
    char pl[1024];
    size_t len;
    wal_record r = {0};
    uint64_t n = 0;
    while (WAL_OFF_SEG(r.offset) < 3) {
        payload_for(n++, pl, &len);
        r = append_ok(w, 3, pl, len);
        wait_ok(w, r.seq);
    }
    /* Segments 1 and 2 are sealed: no zeros after their last record. */
    wal_iter *it;
    stm_err err = {0};
    uint64_t end[3] = {0};
    ck_assert_int_eq(wal_iter_open(w, 0, false, &it, &err), STM_OK);
    wal_record x;
    while (wal_iter_next(it, &x, &err) == 1)
        end[WAL_OFF_SEG(x.offset) - 1] = WAL_OFF_POS(x.offset) + WAL_HEADER_SIZE + x.len;
    wal_iter_close(it);
    ck_assert_int_eq(file_size(seg_path(dir, 1)), (off_t)end[0]);
    ck_assert_int_eq(file_size(seg_path(dir, 2)), (off_t)end[1]);
    /* The live one is filled to its segment size. */
    ck_assert_uint_eq(end[2], WAL_OFF_POS(r.offset) + WAL_HEADER_SIZE + r.len);
    ck_assert_int_eq(file_size(seg_path(dir, 3)), (off_t)(256u << 10));

    copy_dir(dir, path_in("crashed"));

    wal_verify_report vr;
    ck_assert_msg(wal_verify(path_in("crashed"), 0, NULL, &vr, &err) == STM_OK, "%s", err.msg);
    ck_assert_uint_eq(vr.torn_bytes, 0);
    ck_assert_uint_eq(vr.records, n + 2); /* two leading checkpoints */

    /* A clean close: the log ends at its closing checkpoint. */
    close_wal(w);
    wal_opts o = {.dir = dir, .segment_size = 256u << 10};
    wal_recovery rep;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.cut_bytes, 0);
    ck_assert_str_eq(rep.message, "");
    uint64_t last_end = 0;
    ck_assert_int_eq(wal_iter_open(w, 0, false, &it, &err), STM_OK);
    while (wal_iter_next(it, &x, &err) == 1)
        last_end = WAL_OFF_POS(x.offset) + WAL_HEADER_SIZE + x.len;
    wal_iter_close(it);
    ck_assert_uint_gt(last_end, end[2]);
    ck_assert_int_eq(file_size(seg_path(dir, 3)), (off_t)last_end);
    close_wal(w);

    o.dir = path_in("crashed");
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert(rep.zero_tail);
    ck_assert_uint_eq(rep.cut_bytes, (256u << 10) - end[2]);
    ck_assert_ptr_nonnull(strstr(rep.message, "zero fill"));
    ck_assert_int_eq(file_size(seg_path(path_in("crashed"), 3)), (off_t)end[2]);
    kept k[1];
    ck_assert_uint_eq(read_all(w, k, 0, false), n + 2);
    close_wal(w);

    /* A valid record inside the zero fill is damage, not zero fill. */
    char *other = path_in("wal-never");
    w = open_wal(other, 64u << 20, "never");
    payload_for(1, pl, &len);
    r = append_ok(w, 3, pl, len);
    close_wal(w);
    uint64_t rec_len = WAL_HEADER_SIZE + r.len;
    int fd = open(seg_path(other, 1), O_RDONLY);
    ck_assert_int_ge(fd, 0);
    char *rec = malloc(rec_len);
    ck_assert_int_eq(pread(fd, rec, rec_len, (off_t)WAL_OFF_POS(r.offset)), (ssize_t)rec_len);
    close(fd);
    char *seg3 = seg_path(path_in("crashed"), 3);
    truncate_to(seg3, (off_t)end[2] + 8192);
    fd = open(seg3, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, rec, rec_len, (off_t)end[2] + 4096), (ssize_t)rec_len);
    close(fd);
    free(rec);
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a torn tail"));
}
END_TEST

/* Under never there is no zero fill: nothing waits for an fdatasync. */
START_TEST(test_no_prealloc_under_never)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 64u << 20, "never");
    char pl[1024];
    size_t len;
    wal_record r = {0};
    for (uint64_t i = 0; i < 50; i++) {
        payload_for(i, pl, &len);
        r = append_ok(w, 3, pl, len);
        wait_ok(w, r.seq);
    }
    ck_assert_int_eq(file_size(seg_path(dir, 1)),
                     (off_t)(WAL_OFF_POS(r.offset) + WAL_HEADER_SIZE + r.len));
    close_wal(w);
}
END_TEST

START_TEST(test_bad_crc_last)
{
    char *dir = path_in("wal");
    uint64_t s, e;
    make_log(dir, 10, &s, &e);
    poke(seg_path(dir, 1), (off_t)(e - 1), 0x40);
    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    wal *w;
    wal_recovery rep;
    stm_err err;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.records, 9);
    ck_assert_uint_eq(rep.cut_bytes, e - s);
    ck_assert_ptr_nonnull(strstr(rep.message, "CRC"));
    close_wal(w);
}
END_TEST

START_TEST(test_corrupt_middle)
{
    char *dir = path_in("wal");
    uint64_t s, e;
    make_log(dir, 10, &s, &e);
    const char *seg = seg_path(dir, 1);
    /* Record 4's payload: find it by iterating. */
    wal *w = open_wal(dir, 64u << 20, "never");
    kept got[16];
    ck_assert_uint_eq(read_all(w, got, 16, false), 10);
    close_wal(w);
    truncate_to(seg, (off_t)e); /* drop the closing checkpoint again */
    uint64_t bad = WAL_OFF_POS(got[3].offset);
    poke(seg, (off_t)(bad + 30), 0x01);

    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    wal_recovery rep;
    stm_err err;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_WAL_IO_ERROR);
    char want[80];
    snprintf(want, sizeof want, "at byte %llu", (unsigned long long)bad);
    ck_assert_msg(strstr(err.msg, "0000000000000001.wal") && strstr(err.msg, want), "%s", err.msg);
    ck_assert_int_eq(file_size(seg), (off_t)e); /* refused: nothing touched */

    /* Read-only refuses too; verify names the place. */
    wal_verify_report vr;
    ck_assert_int_eq(wal_verify(dir, 0, NULL, &vr, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, want));

    o.repair = true;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.records, 3);
    ck_assert_uint_eq(rep.cut_bytes, e - bad);
    ck_assert_uint_eq(rep.cut_offset, (1ull << 40) + bad);
    ck_assert_ptr_nonnull(strstr(rep.message, "repaired"));
    wal_record r;
    ck_assert_int_eq(wal_append(w, 3, "{}", 2, &r, &err), STM_OK);
    ck_assert_uint_eq(r.offset, (1ull << 40) + bad);
    ck_assert_uint_eq(r.seq, 4);
    close_wal(w);
    /* The cut bytes are kept beside the segment. */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "test \"$(cat %s/0000000000000001.wal.cut-* | wc -c)\" = %llu", dir,
             (unsigned long long)(e - bad));
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* The header's sequence number is outside the CRC. After a checkpoint (only
 * stmfs writes them) a number that breaks the run of +1 is damage; a number
 * no log can reach is damage anywhere, or it would wrap the next append's. */
START_TEST(test_sequence_damage)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 64u << 20, "never");
    char pl[1024];
    size_t len;
    for (int i = 0; i < 10; i++) {
        payload_for((uint64_t)i, pl, &len);
        append_ok(w, 3, pl, len);
    }
    close_wal(w); /* ends with a checkpoint */
    w = open_wal(dir, 64u << 20, "never");
    wal_record last = {0};
    for (int i = 10; i < 13; i++) {
        payload_for((uint64_t)i, pl, &len);
        last = append_ok(w, 3, pl, len);
    }
    wait_ok(w, last.seq);
    kept got[16];
    ck_assert_uint_eq(read_all(w, got, 16, false), 14); /* with the checkpoint */
    close_wal(w);
    const char *seg = seg_path(dir, 1);
    off_t size = file_size(seg);

    /* The record with seq 13 (the checkpoint took 11) says 77. */
    ck_assert_uint_eq(got[12].seq, 13);
    uint64_t at = WAL_OFF_POS(got[12].offset);
    poke(seg, (off_t)(at + 23), 13 ^ 77);
    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    wal_recovery rep;
    stm_err err;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_WAL_IO_ERROR);
    ck_assert_msg(strstr(err.msg, "sequence break (77 after 12)"), "%s", err.msg);
    ck_assert_int_eq(file_size(seg), size);
    poke(seg, (off_t)(at + 23), 13 ^ 77);

    /* Record 2 (before any checkpoint) says 2^64-1: refused, then cut by repair. */
    at = WAL_OFF_POS(got[1].offset);
    for (int b = 16; b < 24; b++)
        poke(seg, (off_t)(at + (uint64_t)b), b == 23 ? 0xff ^ 2 : 0xff);
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_WAL_IO_ERROR);
    ck_assert_msg(strstr(err.msg, "sequence number 18446744073709551615 out of range"), "%s",
                  err.msg);
    o.repair = true;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.records, 1);
    wal_record r;
    ck_assert_int_eq(wal_append(w, 3, "{}", 2, &r, &err), STM_OK);
    ck_assert_uint_eq(r.seq, 2);
    close_wal(w);
}
END_TEST

START_TEST(test_corrupt_earlier_segment)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 4096, "never");
    char pl[500];
    memset(pl, 'q', sizeof pl);
    for (int i = 0; i < 40; i++)
        append_ok(w, 3, pl, sizeof pl);
    close_wal(w);
    ck_assert_int_gt(file_size(seg_path(dir, 4)), 0);
    /* Corrupt the last record of segment 2: good records follow in 3.. */
    off_t sz = file_size(seg_path(dir, 2));
    poke(seg_path(dir, 2), sz - 5, 0xff);
    wal_opts o = {.dir = dir, .segment_size = 4096};
    wal_recovery rep;
    stm_err err;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "0000000000000002.wal"));
    o.repair = true;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.segment_count, 2);
    close_wal(w);
    ck_assert_int_lt(file_size(seg_path(dir, 3)), 0);
}
END_TEST

START_TEST(test_empty_segment_gets_checkpoint)
{
    /* A crash right after a rotation can leave the new segment empty. */
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 64u << 20, "every_write");
    wal_record r = append_ok(w, 3, "{}", 2);
    close_wal(w);
    int fd = open(seg_path(dir, 2), O_CREAT | O_WRONLY, 0644);
    close(fd);
    w = open_wal(dir, 64u << 20, "every_write");
    r = append_ok(w, 3, "{}", 2);
    ck_assert_uint_eq(WAL_OFF_SEG(r.offset), 2);
    ck_assert_uint_gt(WAL_OFF_POS(r.offset), 0);
    ck_assert_uint_eq(r.ckpt_offset, WAL_OFFSET(2, 0)); /* reported to the appender */
    ck_assert_uint_eq(r.ckpt_offset + 24 + r.ckpt_len, r.offset);
    wait_ok(w, r.seq);
    buf b = {0};
    stm_err err;
    ck_assert_int_eq(wal_read_at(w, WAL_OFFSET(2, 0), &b, &r, &err), STM_OK);
    ck_assert_uint_eq(r.type, WAL_T_CHECKPOINT);
    buf_free(&b);
    close_wal(w);
}
END_TEST

START_TEST(test_empty_and_read_only)
{
    char *dir = path_in("wal");
    wal_opts o = {.dir = dir, .segment_size = 1024, .read_only = true};
    wal *w;
    stm_err err;
    ck_assert_int_eq(wal_open(&o, &w, NULL, &err), STM_WAL_IO_ERROR);
    o.read_only = false;
    ck_assert_int_eq(wal_open(&o, &w, NULL, &err), STM_OK);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.entry_count, 0);
    ck_assert_uint_eq(st.latest_offset, 1ull << 40);
    ck_assert_uint_eq(st.first_offset, 0);
    kept got[1];
    ck_assert_uint_eq(read_all(w, got, 1, true), 0);
    wal_record r = append_ok(w, 1, "{}", 2);
    wait_ok(w, r.seq);
    close_wal(w);
    o.read_only = true;
    ck_assert_int_eq(wal_open(&o, &w, NULL, &err), STM_OK);
    ck_assert_int_eq(wal_append(w, 1, "{}", 2, &r, &err), STM_WAL_IO_ERROR);
    ck_assert_uint_eq(read_all(w, got, 1, true), 2); /* and the closing checkpoint */
    wal_close(w, &err);
}
END_TEST

/* ---- hash chain --------------------------------------------------------- */

START_TEST(test_chain_verify)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 8192, "never");
    char pl[1024];
    size_t len;
    wal_record mid = {0}, last = {0};
    for (int i = 0; i < 200; i++) {
        payload_for((uint64_t)i, pl, &len);
        last = append_ok(w, 2, pl, len);
        if (i == 100) mid = last;
    }
    close_wal(w);

    wal_verify_report vr;
    stm_err err;
    ck_assert_msg(wal_verify(dir, mid.seq, mid.chain, &vr, &err) == STM_OK, "%s", err.msg);
    ck_assert_uint_ge(vr.records, 200);
    ck_assert_uint_ge(vr.checkpoints, 2);
    ck_assert_uint_eq(vr.torn_bytes, 0);
    ck_assert_msg(wal_verify(dir, last.seq, last.chain, &vr, &err) == STM_OK, "%s", err.msg);
    uint8_t wrong[32];
    memcpy(wrong, mid.chain, 32);
    wrong[0] ^= 1;
    ck_assert_int_eq(wal_verify(dir, mid.seq, wrong, &vr, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "mismatch"));
    ck_assert_int_eq(wal_verify(dir, 100000, mid.chain, &vr, &err), STM_WAL_IO_ERROR);

    /* Reopening recomputes the same head. */
    w = open_wal(dir, 8192, "never");
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_mem_eq(st.head_chain, vr.head_chain, 32);
    close_wal(w);

    /* An edit that keeps the CRC right is caught by the chain: rewrite a
     * payload byte of an early record and fix its CRC. */
    const char *seg = seg_path(dir, 1);
    int fd = open(seg, O_RDWR);
    unsigned char h[24];
    ck_assert_int_eq(pread(fd, h, 24, 0), 24);
    uint32_t n = (uint32_t)h[8] << 24 | h[9] << 16 | h[10] << 8 | h[11];
    char *p = malloc(n);
    ck_assert_int_eq(pread(fd, p, n, 24), (ssize_t)n);
    p[2] = p[2] == 'n' ? 'm' : 'n';
    uint32_t c = crc32c(0, p, n);
    unsigned char cb[4] = {c >> 24, c >> 16, c >> 8, c};
    ck_assert_int_eq(pwrite(fd, p, n, 24), (ssize_t)n);
    ck_assert_int_eq(pwrite(fd, cb, 4, 12), 4);
    close(fd);
    free(p);
    ck_assert_int_eq(wal_verify(dir, 0, NULL, &vr, &err), STM_WAL_IO_ERROR);
    ck_assert_msg(strstr(err.msg, "chain"), "%s", err.msg);

    /* A flipped byte without the CRC fixed is named by segment and byte. */
    fd = open(seg, O_RDWR);
    ck_assert_int_eq(pwrite(fd, h, 24, 0), 24); /* restore the old CRC: now it mismatches */
    close(fd);
    ck_assert_int_eq(wal_verify(dir, 0, NULL, &vr, &err), STM_WAL_IO_ERROR);
    ck_assert_msg(strstr(err.msg, "0000000000000001.wal") && strstr(err.msg, "byte 0"), "%s",
                  err.msg);
}
END_TEST

START_TEST(test_delete_before)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 4096, "never");
    char pl[500];
    memset(pl, 'd', sizeof pl);
    wal_record r = {0};
    for (int i = 0; i < 60; i++)
        r = append_ok(w, 3, pl, sizeof pl);
    wait_ok(w, r.seq);
    uint64_t segs, bytes;
    stm_err err;
    ck_assert_int_eq(wal_delete_before(w, WAL_OFFSET(4, 100), &segs, &bytes, &err), STM_OK);
    ck_assert_uint_eq(segs, 3);
    ck_assert_uint_gt(bytes, 3 * 3000);
    ck_assert_int_lt(file_size(seg_path(dir, 1)), 0);
    kept got[100];
    size_t n = read_all(w, got, 100, true);
    ck_assert_uint_eq(WAL_OFF_SEG(got[0].offset), 4);
    ck_assert_mem_eq(got[n - 1].chain, r.chain, 32);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.first_offset, WAL_OFFSET(4, 0));
    /* Never the current segment. */
    ck_assert_int_eq(wal_delete_before(w, UINT64_MAX, &segs, &bytes, &err), STM_OK);
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.segment_count, 1);
    close_wal(w);
    /* The compacted log still verifies from its oldest checkpoint. */
    wal_verify_report vr;
    ck_assert_msg(wal_verify(dir, r.seq, r.chain, &vr, &err) == STM_OK, "%s", err.msg);
}
END_TEST

/* ---- group commit and policies ----------------------------------------- */

typedef struct {
    wal *w;
    int id, n;
    uint64_t *seqs;
    bool strict; /* every_write: acknowledged means synced */
} writer_arg;

static pthread_mutex_t lmu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t l_last, l_calls;
static bool l_bad, l_failed;

static void listener(void *arg, uint64_t acked, bool failed)
{
    (void)arg;
    pthread_mutex_lock(&lmu);
    if (acked < l_last) l_bad = true;
    l_last = acked;
    l_calls++;
    if (failed) l_failed = true;
    pthread_mutex_unlock(&lmu);
}

static void *writer(void *p)
{
    writer_arg *a = p;
    char pl[200];
    for (int i = 0; i < a->n; i++) {
        int n = snprintf(pl, sizeof pl, "{\"w\":%d,\"i\":%d}", a->id, i);
        wal_record r;
        stm_err err;
        if (wal_append(a->w, 3, pl, (uint32_t)n, &r, &err) != STM_OK) return NULL;
        if (wal_wait(a->w, r.seq, &err) != STM_OK) return NULL;
        /* Acknowledged means covered by an fdatasync under every_write,
         * written under never. */
        wal_stats st;
        wal_get_stats(a->w, &st);
        if ((a->strict && st.synced_seq < r.seq) || st.acked_seq < r.seq ||
            st.written_seq < r.seq)
            return NULL;
        a->seqs[i] = r.seq;
    }
    return a;
}

/* Under never the waiters write groups themselves (wal_write_now) while
 * the flusher writes others: every record still lands once, in sequence,
 * and the listener still hears the watermark in order. */
static const char *const group_policies[] = {"every_write", "never"};

START_TEST(test_group_commit)
{
    const char *policy = group_policies[_i];
    bool strict = _i == 0;
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 256 * 1024, policy);
    l_last = l_calls = 0;
    l_bad = l_failed = false;
    wal_set_listener(w, listener, NULL);
    enum { T = 8, N = 400 };
    pthread_t th[T];
    writer_arg a[T];
    for (int t = 0; t < T; t++) {
        a[t] = (writer_arg){w, t, N, calloc(N, sizeof(uint64_t)), strict};
        pthread_create(&th[t], NULL, writer, &a[t]);
    }
    for (int t = 0; t < T; t++) {
        void *rv;
        pthread_join(th[t], &rv);
        ck_assert_ptr_nonnull(rv);
        for (int i = 1; i < N; i++)
            ck_assert_uint_gt(a[t].seqs[i], a[t].seqs[i - 1]);
        free(a[t].seqs);
    }
    wal_stats st;
    wal_get_stats(w, &st);
    /* The listener is told after the waiters are woken, so the last
     * writer can be back before the last watermark reaches it. */
    uint64_t heard = 0;
    for (int k = 0; k < 5000 && heard != st.acked_seq; k++) {
        pthread_mutex_lock(&lmu);
        heard = l_last;
        pthread_mutex_unlock(&lmu);
        if (heard != st.acked_seq) usleep(1000);
    }
    ck_assert(!l_bad);
    ck_assert_uint_eq(heard, st.acked_seq);
    ck_assert_uint_ge(st.writes, T * N);
    /* One fdatasync covers many records (under never only rotations sync). */
    ck_assert_uint_lt(st.fsyncs, st.writes);
    close_wal(w);

    w = open_wal(dir, 256 * 1024, policy);
    static kept got[T * N + 100];
    size_t n = read_all(w, got, T * N + 100, false);
    static int seen[T][N];
    memset(seen, 0, sizeof seen);
    size_t user = 0;
    for (size_t i = 0; i < n; i++) {
        if (i) ck_assert_uint_eq(got[i].seq, got[i - 1].seq + 1);
        if (got[i].type == WAL_T_CHECKPOINT) continue;
        user++;
    }
    ck_assert_uint_eq(user, T * N);
    /* And each payload exactly once. */
    wal_iter *it;
    stm_err err;
    wal_iter_open(w, 0, false, &it, &err);
    wal_record r;
    while (wal_iter_next(it, &r, &err) == 1) {
        int ww, ii;
        if (r.type == WAL_T_CHECKPOINT) continue;
        ck_assert_int_eq(sscanf(r.payload, "{\"w\":%d,\"i\":%d}", &ww, &ii), 2);
        seen[ww][ii]++;
    }
    wal_iter_close(it);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++)
            ck_assert_int_eq(seen[t][i], 1);
    close_wal(w);
}
END_TEST

START_TEST(test_policy_every_write)
{
    wal *w = open_wal(path_in("wal"), 64u << 20, "every_write");
    for (int i = 0; i < 20; i++) {
        wal_record r = append_ok(w, 3, "{}", 2);
        wait_ok(w, r.seq);
        wal_stats st;
        wal_get_stats(w, &st);
        ck_assert_uint_ge(st.synced_seq, r.seq);
        ck_assert_uint_eq(st.acked_seq, st.synced_seq);
    }
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.fsyncs, 20);
    ck_assert_uint_eq(st.writes, 20);
    close_wal(w);
}
END_TEST

START_TEST(test_policy_never)
{
    wal *w = open_wal(path_in("wal"), 64u << 20, "never");
    wal_record r = {0};
    for (int i = 0; i < 20; i++) {
        r = append_ok(w, 3, "{}", 2);
        wait_ok(w, r.seq);
    }
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.fsyncs, 0);
    ck_assert_uint_eq(st.written_seq, 20);
    ck_assert_uint_eq(st.acked_seq, 20);
    ck_assert_uint_eq(st.synced_seq, 0);
    stm_err err;
    ck_assert_int_eq(wal_sync(w, &err), STM_OK);
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.fsyncs, 1);
    ck_assert_uint_eq(st.synced_seq, 20);
    ck_assert_int_eq(wal_sync(w, &err), STM_OK);
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.fsyncs, 1); /* nothing new to sync */
    close_wal(w);
}
END_TEST

/* Under never nobody has to wait for a record to reach the file: the
 * flusher batches unwaited records, but never holds them back for long. */
static bool acked_within(wal *w, uint64_t seq, int ms)
{
    for (int i = 0; i < ms && wal_acked_seq(w) < seq; i++)
        usleep(1000);
    return wal_acked_seq(w) >= seq;
}

START_TEST(test_never_unwaited_records_reach_the_file)
{
    wal *w = open_wal(path_in("wal"), 64u << 20, "never");
    wal_record r = {0};
    for (int i = 0; i < 1000; i++)
        r = append_ok(w, 3, "{\"k\":1}", 7);
    ck_assert(acked_within(w, r.seq, 2000));
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.written_seq, 1000);
    /* what was written is readable at once, before any close */
    stm_err err;
    buf p = {0};
    wal_record got;
    ck_assert_int_eq(wal_read_at(w, r.offset, &p, &got, &err), STM_OK);
    ck_assert_uint_eq(got.seq, r.seq);
    buf_free(&p);
    /* a kick has one record written without a waiter */
    r = append_ok(w, 3, "{}", 2);
    wal_kick(w, r.seq);
    ck_assert(acked_within(w, r.seq, 2000));
    close_wal(w);
}
END_TEST

static pthread_t l_thread;
static void thread_listener(void *arg, uint64_t acked, bool failed)
{
    (void)arg;
    (void)failed;
    pthread_mutex_lock(&lmu);
    l_thread = pthread_self();
    l_last = acked;
    pthread_mutex_unlock(&lmu);
}

START_TEST(test_never_waiter_writes_itself)
{
    wal *w = open_wal(path_in("wal"), 64u << 20, "never");
    wal_set_listener(w, thread_listener, NULL);
    int own = 0;
    for (int i = 0; i < 50; i++) {
        wal_record r = append_ok(w, 3, "{\"k\":1}", 7);
        /* written and acknowledged by the time it returns, nothing waited
         * for the flusher... */
        wal_write_now(w, r.seq);
        ck_assert_uint_ge(wal_acked_seq(w), r.seq);
        wal_stats st;
        wal_get_stats(w, &st);
        ck_assert_uint_ge(st.written_seq, r.seq);
        pthread_mutex_lock(&lmu);
        ck_assert_uint_eq(l_last, r.seq);
        own += pthread_equal(l_thread, pthread_self()) != 0;
        pthread_mutex_unlock(&lmu);
    }
    /* ...because this thread wrote it and told the listener (the flusher
     * takes a record first only if this thread stalls for its 1 ms batch
     * window between the append and the call) */
    ck_assert_int_ge(own, 25);
    close_wal(w);
}
END_TEST

/* Under every_write an event loop that holds the log commits its own group:
 * wal_commit_now writes and fdatasyncs it on the calling thread (one sync
 * for the whole group), and tells the listener from there. */
START_TEST(test_every_write_holder_commits_itself)
{
    wal *w = open_wal(path_in("wal"), 64u << 20, "every_write");
    wal_set_listener(w, thread_listener, NULL);
    ck_assert(wal_syncs_each_group(w));
    int own = 0;
    for (int i = 0; i < 20; i++) {
        wal_hold(w);
        wal_record r = {0};
        for (int k = 0; k < 8; k++)
            r = append_ok(w, 3, "{\"k\":1}", 7);
        wal_commit_now(w, r.seq);
        ck_assert_uint_ge(wal_acked_seq(w), r.seq);
        wal_stats st;
        wal_get_stats(w, &st);
        ck_assert_uint_ge(st.synced_seq, r.seq); /* acknowledged = synced */
        pthread_mutex_lock(&lmu);
        ck_assert_uint_eq(l_last, r.seq);
        own += pthread_equal(l_thread, pthread_self()) != 0;
        pthread_mutex_unlock(&lmu);
    }
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.writes, 160);
    /* the held appends never woke the flusher, so every group was ours */
    ck_assert_int_eq(own, 20);
    ck_assert_uint_eq(st.fsyncs, 20);
    close_wal(w);
}
END_TEST

typedef struct {
    wal *w;
    uint64_t seq;
    stm_code rc;
} held_waiter;

static void *append_and_wait(void *arg)
{
    held_waiter *hw = arg;
    wal_record r = append_ok(hw->w, 3, "{}", 2);
    hw->seq = r.seq;
    stm_err err;
    hw->rc = wal_wait(hw->w, r.seq, &err);
    return NULL;
}

/* While an event loop holds the log, another writer's append does not wake
 * the flusher, but its wait does: it never hangs on the holder. What is
 * appended while held, with nobody waiting, is written once the holder
 * lets go. */
START_TEST(test_every_write_hold_does_not_starve_others)
{
    wal *w = open_wal(path_in("wal"), 64u << 20, "every_write");
    wal_hold(w);
    held_waiter hw = {w, 0, STM_INTERNAL_ERROR};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, append_and_wait, &hw), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_int_eq(hw.rc, STM_OK);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_ge(st.synced_seq, hw.seq);

    wal_record r = append_ok(w, 3, "{}", 2); /* still held, nobody waits */
    wal_release(w);
    for (int i = 0; i < 5000; i++) {
        wal_get_stats(w, &st);
        if (st.synced_seq >= r.seq) break;
        usleep(1000);
    }
    ck_assert_uint_ge(st.synced_seq, r.seq);
    close_wal(w);
}
END_TEST

/* A log whose last header says a number near WAL_MAX_SEQ (the header is
 * outside the CRC, so damage can say anything up to it) opens, but takes
 * no append: the record, or the closing checkpoint after it, would be past
 * the limit, and the next open would cut them as damage. */
START_TEST(test_sequence_space_end)
{
    char *dir = path_in("wal");
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    const char *p = "{\"k\":1}";
    unsigned char h[WAL_HEADER_SIZE];
    wal_make_header(h, WAL_T_APPLY_EVENT, 7, crc32c(0, p, 7), WAL_MAX_SEQ - 1);
    char *seg = seg_path(dir, 1);
    FILE *f = fopen(seg, "wb");
    ck_assert_ptr_nonnull(f);
    fwrite(h, 1, sizeof h, f);
    fwrite(p, 1, 7, f);
    fclose(f);

    wal *w = open_wal(dir, 64u << 20, "every_write");
    wal_record r;
    stm_err err;
    ck_assert_int_eq(wal_append(w, WAL_T_APPLY_EVENT, p, 7, &r, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "no more writes"));
    close_wal(w);
    ck_assert_int_eq(file_size(seg), WAL_HEADER_SIZE + 7);

    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    wal_sync_policy_parse("every_write", &o.sync, &err);
    wal_recovery rep;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.cut_bytes, 0);
    ck_assert_uint_eq(rep.records, 1);
    wal_close(w, NULL);
}
END_TEST

START_TEST(test_policy_every_n)
{
    wal *w = open_wal(path_in("wal"), 64u << 20, "every_n:10");
    for (int i = 1; i <= 100; i++) {
        wal_record r = append_ok(w, 3, "{}", 2);
        wait_ok(w, r.seq);
        wal_stats st;
        wal_get_stats(w, &st);
        ck_assert_uint_ge(st.acked_seq, r.seq);
        ck_assert_uint_eq(st.synced_seq, (uint64_t)(i / 10 * 10));
    }
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.fsyncs, 10);
    close_wal(w);
    /* every_n:0 is every_write. */
    w = open_wal(path_in("wal0"), 64u << 20, "every_n:0");
    wal_record r = append_ok(w, 3, "{}", 2);
    wait_ok(w, r.seq);
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.synced_seq, 1);
    close_wal(w);
}
END_TEST

START_TEST(test_policy_every_ms)
{
    wal *w = open_wal(path_in("wal"), 64u << 20, "every_ms:200");
    wal_record r = append_ok(w, 3, "{}", 2);
    wait_ok(w, r.seq);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.acked_seq, 1);
    ck_assert_uint_eq(st.synced_seq, 0);
    usleep(50 * 1000);
    r = append_ok(w, 3, "{}", 2);
    wait_ok(w, r.seq);
    usleep(400 * 1000);
    wal_get_stats(w, &st);
    /* One sync at most 200 ms after the first write covered both. */
    ck_assert_uint_eq(st.synced_seq, 2);
    ck_assert_uint_eq(st.fsyncs, 1);
    usleep(300 * 1000);
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.fsyncs, 1); /* and nothing while idle */
    close_wal(w);
}
END_TEST

START_TEST(test_backpressure_big_records)
{
    wal *w = open_wal(path_in("wal"), 8u << 20, "never");
    char *big = malloc(WAL_MAX_PAYLOAD);
    memset(big, 'z', WAL_MAX_PAYLOAD);
    wal_record r = {0};
    for (int i = 0; i < 10; i++)
        r = append_ok(w, 3, big, WAL_MAX_PAYLOAD);
    wait_ok(w, r.seq);
    free(big);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_ge(st.segment_count, 10);
    close_wal(w);
}
END_TEST

/* ---- the rstmdb fixtures ------------------------------------------------ */

START_TEST(test_fixture_clean)
{
    char src[600];
    snprintf(src, sizeof src, "%s/rstmdb-data", testdata());
    char *d = path_in("data");
    copy_dir(src, d);
    char *dir = path_in("data/wal");
    wal_opts o = {.dir = dir, .segment_size = 1u << 20};
    wal *w;
    wal_recovery rep;
    stm_err err;
    ck_assert_msg(wal_open(&o, &w, &rep, &err) == STM_OK, "%s", err.msg);
    ck_assert_uint_eq(rep.records, 72);
    ck_assert_uint_eq(rep.segments, 2);
    ck_assert_uint_eq(rep.cut_bytes, 0);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.entry_count, 72);
    ck_assert_uint_eq(st.latest_offset, 2199023271077ull);
    ck_assert_uint_eq(st.total_size_bytes, 1060739);
    kept got[80];
    ck_assert_uint_eq(read_all(w, got, 80, true), 72);
    ck_assert_uint_eq(got[0].offset, 1099511627776ull);
    ck_assert_uint_eq(got[56].offset, 1099512660717ull);
    ck_assert_uint_eq(got[57].offset, 2199023255552ull);
    ck_assert_uint_eq(got[71].offset, 2199023270802ull);
    ck_assert_uint_eq(got[71].seq, 72);
    ck_assert_mem_eq(got[71].chain, st.head_chain, 32);
    buf b = {0};
    wal_record r;
    ck_assert_int_eq(wal_read_at(w, got[1].offset, &b, &r, &err), STM_OK);
    ck_assert_uint_eq(r.seq, 2);
    ck_assert(strncmp(b.data, "{\"type\":\"", 9) == 0);
    buf_free(&b);
    /* Appending continues the log where rstmdb left it. */
    r = append_ok(w, 4, "{\"type\":\"delete_instance\",\"instance_id\":\"x\"}", 44);
    ck_assert_uint_eq(r.offset, 2199023271077ull);
    ck_assert_uint_eq(r.seq, 73);
    close_wal(w);
    wal_verify_report vr;
    ck_assert_msg(wal_verify(dir, 72, got[71].chain, &vr, &err) == STM_OK, "%s", err.msg);
}
END_TEST

START_TEST(test_fixture_torn)
{
    char src[600];
    snprintf(src, sizeof src, "%s/rstmdb-data-torn", testdata());
    char *d = path_in("data");
    copy_dir(src, d);
    char *dir = path_in("data/wal");
    /* Read-only reports the tear but changes nothing. */
    wal_verify_report vr;
    stm_err err;
    ck_assert_msg(wal_verify(dir, 0, NULL, &vr, &err) == STM_OK, "%s", err.msg);
    ck_assert_uint_eq(vr.records, 71);
    ck_assert_uint_eq(vr.torn_bytes, 149);
    ck_assert_int_eq(file_size(seg_path(dir, 2)), 15399);

    wal_opts o = {.dir = dir, .segment_size = 1u << 20};
    wal *w;
    wal_recovery rep;
    ck_assert_msg(wal_open(&o, &w, &rep, &err) == STM_OK, "%s", err.msg);
    ck_assert_uint_eq(rep.records, 71);
    ck_assert_uint_eq(rep.cut_bytes, 149);
    ck_assert_uint_eq(rep.cut_offset, 2199023270802ull);
    ck_assert_int_eq(file_size(seg_path(dir, 2)), 15250);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.entry_count, 71);
    ck_assert_uint_eq(st.latest_offset, 2199023270802ull);
    kept got[80];
    ck_assert_uint_eq(read_all(w, got, 80, false), 71);
    ck_assert_uint_eq(got[70].offset, 2199023270551ull);
    wal_record r = append_ok(w, 4, "{\"type\":\"delete_instance\",\"instance_id\":\"x\"}", 44);
    ck_assert_uint_eq(r.offset, 2199023270802ull);
    ck_assert_uint_eq(r.seq, 72);
    close_wal(w);
}
END_TEST

/* ---- faults --------------------------------------------------------------- */

#ifdef STM_FAULT_INJECTION
static wal *open_faulty(const char *dir, const char *policy, uint64_t segsize)
{
    wal_opts o = {.dir = dir, .segment_size = segsize, .io = &wal_fault_io};
    stm_err err;
    wal_sync_policy_parse(policy, &o.sync, &err);
    wal *w;
    ck_assert_msg(wal_open(&o, &w, NULL, &err) == STM_OK, "%s", err.msg);
    return w;
}

static void check_fails_then_recovers(wal_fault_op op, int e, const char *policy, uint64_t segsize,
                                      const char *want)
{
    char *dir = path_in("wal");
    wal_fault_reset();
    wal *w = open_faulty(dir, policy, segsize);
    l_last = l_calls = 0;
    l_bad = l_failed = false;
    wal_set_listener(w, listener, NULL);
    char pl[600];
    memset(pl, 'f', sizeof pl);
    wal_record good[5];
    for (int i = 0; i < 5; i++) {
        good[i] = append_ok(w, 3, pl, sizeof pl);
        wait_ok(w, good[i].seq);
    }
    wal_fault_fail(op, 1, 0, e);
    stm_err err;
    wal_record r;
    stm_code rc = STM_OK;
    uint64_t last_acked = good[4].seq;
    for (int i = 0; i < 20 && rc == STM_OK; i++) {
        rc = wal_append(w, 3, pl, sizeof pl, &r, &err);
        if (rc == STM_OK) rc = wal_wait(w, r.seq, &err);
        if (rc == STM_OK) last_acked = r.seq;
    }
    ck_assert_int_eq(rc, STM_WAL_IO_ERROR);
    ck_assert_msg(strstr(err.msg, want), "'%s' lacks '%s'", err.msg, want);
    /* Failed stays failed: no retry of the fsync, no more writes. */
    ck_assert_int_eq(wal_append(w, 3, "{}", 2, &r, &err), STM_WAL_IO_ERROR);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert(st.failed);
    ck_assert_int_eq(wal_sync(w, &err), STM_WAL_IO_ERROR);
    ck_assert_int_eq(wal_close(w, &err), STM_WAL_IO_ERROR);
    ck_assert(l_failed); /* the flusher told the listener before it stopped */
    wal_fault_reset();

    /* Reopened with working I/O, the acknowledged records are there. */
    w = open_wal(dir, segsize, policy);
    buf b = {0};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(wal_read_at(w, good[i].offset, &b, &r, &err), STM_OK);
        ck_assert_uint_eq(r.seq, good[i].seq);
    }
    buf_free(&b);
    /* ... and nothing after them: the records that failed were cut, so
     * what their writers were told was an error never comes back. */
    wal_get_stats(w, &st);
    ck_assert_uint_eq(st.entry_count, last_acked);
    r = append_ok(w, 3, "{}", 2);
    wait_ok(w, r.seq);
    close_wal(w);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

START_TEST(test_fault_fsync_eio)
{
    check_fails_then_recovers(WAL_FAULT_FDATASYNC, EIO, "every_write", 64u << 20,
                              "Input/output error");
}
END_TEST

START_TEST(test_fault_write_enospc)
{
    check_fails_then_recovers(WAL_FAULT_PWRITE, ENOSPC, "every_write", 64u << 20, "No space left");
    check_fails_then_recovers(WAL_FAULT_PWRITE, ENOSPC, "never", 64u << 20, "No space left");
}
END_TEST

START_TEST(test_fault_rotation)
{
    /* Creating the next segment fails. */
    check_fails_then_recovers(WAL_FAULT_OPEN, ENOSPC, "every_write", 4096, "creating");
    check_fails_then_recovers(WAL_FAULT_FSYNC_DIR, EIO, "every_write", 4096, "directory");
}
END_TEST

START_TEST(test_fault_torn_write)
{
    char *dir = path_in("wal");
    wal_fault_reset();
    wal *w = open_faulty(dir, "every_write", 64u << 20);
    wal_record r = append_ok(w, 3, "{\"a\":1}", 7);
    wait_ok(w, r.seq);
    wal_fault_tear(1, 30);
    wal_record r2 = append_ok(w, 3, "{\"a\":2,\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxx\"}", 40);
    stm_err err;
    ck_assert_int_eq(wal_wait(w, r2.seq, &err), STM_WAL_IO_ERROR);
    wal_close(w, &err);
    /* The failure cut the torn bytes at once; the next open finds a clean
     * log with the one acknowledged record. */
    ck_assert_int_eq(file_size(seg_path(dir, 1)), WAL_HEADER_SIZE + 7);
    wal_fault_reset();
    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    wal_recovery rep;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.records, 1);
    ck_assert_uint_eq(rep.cut_bytes, 0);
    close_wal(w);
}
END_TEST

typedef struct {
    wal *w;
    int id;
    kept *acked;
    size_t n, cap;
} pl_arg;

static void *pl_writer(void *p)
{
    pl_arg *a = p;
    char pl[1024];
    for (unsigned i = 0;; i++) {
        size_t len = (size_t)snprintf(pl, 64, "{\"t\":%d,\"i\":%u,\"p\":\"", a->id, i);
        size_t pad = (i * 131 + (unsigned)a->id * 17) % 900;
        memset(pl + len, 'a' + a->id, pad);
        memcpy(pl + len + pad, "\"}", 2);
        len += pad + 2;
        wal_record r;
        stm_err err;
        if (wal_append(a->w, 3, pl, (uint32_t)len, &r, &err) != STM_OK) break;
        if (wal_wait(a->w, r.seq, &err) != STM_OK) break;
        if (a->n == a->cap) {
            a->cap = a->cap ? 2 * a->cap : 256;
            a->acked = realloc(a->acked, a->cap * sizeof *a->acked);
        }
        a->acked[a->n++] = (kept){r.offset, r.seq, 3, r.len, crc32c(0, pl, len), {0}};
    }
    return NULL;
}

static int cmp_kept(const void *x, const void *y)
{
    uint64_t a = ((const kept *)x)->offset, b = ((const kept *)y)->offset;
    return a < b ? -1 : a > b;
}

/* Appenders run until the simulated power cut; recovery must then find
 * every record acknowledged under every_write, in every round. */
static void power_loss_rounds(const char *policy, int rounds, bool acked_must_survive)
{
    char *dir = path_in("wal");
    kept *all = NULL;
    size_t nall = 0;
    unsigned seed = 12345;
    for (int round = 0; round < rounds; round++) {
        wal_fault_reset();
        wal_fault_track();
        wal *w = open_faulty(dir, policy, 64 * 1024);
        enum { T = 4 };
        pthread_t th[T];
        pl_arg a[T];
        for (int t = 0; t < T; t++) {
            a[t] = (pl_arg){w, t, NULL, 0, 0};
            pthread_create(&th[t], NULL, pl_writer, &a[t]);
        }
        usleep((useconds_t)(2000 + rand_r(&seed) % 30000));
        wal_fault_power_cut(seed + (unsigned)round);
        for (int t = 0; t < T; t++) {
            pthread_join(th[t], NULL);
            all = realloc(all, (nall + a[t].n + 1) * sizeof *all);
            if (a[t].n) memcpy(all + nall, a[t].acked, a[t].n * sizeof *all);
            nall += a[t].n;
            free(a[t].acked);
        }
        stm_err err;
        wal_close(w, &err);
        wal_fault_reset();

        wal_opts o = {.dir = dir, .segment_size = 64 * 1024};
        wal_recovery rep;
        ck_assert_msg(wal_open(&o, &w, &rep, &err) == STM_OK, "round %d: %s", round, err.msg);
        qsort(all, nall, sizeof *all, cmp_kept);
        wal_iter *it;
        ck_assert_int_eq(wal_iter_open(w, 0, false, &it, &err), STM_OK);
        wal_record r;
        size_t ai = 0, n = 0;
        uint64_t prev = 0;
        int k;
        while ((k = wal_iter_next(it, &r, &err)) == 1) {
            if (n++) ck_assert_uint_eq(r.seq, prev + 1);
            prev = r.seq;
            if (!acked_must_survive) continue;
            ck_assert_msg(ai >= nall || all[ai].offset >= r.offset,
                          "round %d: acknowledged record at %llu lost", round,
                          (unsigned long long)all[ai].offset);
            if (ai < nall && all[ai].offset == r.offset) {
                ck_assert_uint_eq(all[ai].seq, r.seq);
                ck_assert_uint_eq(all[ai].crc, crc32c(0, r.payload, r.len));
                ai++;
            }
        }
        ck_assert_int_eq(k, 0);
        wal_iter_close(it);
        if (acked_must_survive)
            ck_assert_msg(ai == nall, "round %d: %zu acknowledged records lost", round, nall - ai);
        else
            nall = 0; /* acknowledged is not durable under this policy */
        close_wal(w);
    }
    free(all);
}

START_TEST(test_power_loss_every_write)
{
    power_loss_rounds("every_write", 12, true);
}
END_TEST

START_TEST(test_power_loss_never)
{
    power_loss_rounds("never", 6, false);
    power_loss_rounds("every_ms:5", 6, false);
}
END_TEST

START_TEST(test_fault_repair_rename)
{
    char *dir = path_in("wal");
    wal *w = open_wal(dir, 4096, "never");
    char pl[500];
    memset(pl, 'q', sizeof pl);
    for (int i = 0; i < 30; i++)
        append_ok(w, 3, pl, sizeof pl);
    close_wal(w);
    poke(seg_path(dir, 1), 100, 0xff);
    wal_fault_reset();
    wal_fault_fail(WAL_FAULT_RENAME, 1, 0, EIO);
    wal_opts o = {.dir = dir, .segment_size = 4096, .repair = true, .io = &wal_fault_io};
    stm_err err;
    ck_assert_int_eq(wal_open(&o, &w, NULL, &err), STM_WAL_IO_ERROR);
    ck_assert_ptr_nonnull(strstr(err.msg, "renaming"));
    wal_fault_reset();
}
END_TEST
#endif

#ifdef STM_FAULT_INJECTION
/* A disk with room for the records but not for the zeros written ahead of
 * them: the records are acknowledged, the log keeps taking writes, and it
 * still closes to its exact size. */
START_TEST(test_fault_zero_fill_enospc)
{
    char *dir = path_in("wal");
    wal_fault_reset();
    wal *w = open_faulty(dir, "every_write", 64u << 20);
    /* pwrite 1 is the first group's records, 2 the first 64 KiB of zeros. */
    wal_fault_fail(WAL_FAULT_PWRITE, 2, 1, ENOSPC);
    char pl[600];
    memset(pl, 'z', sizeof pl);
    wal_record r[3];
    for (int i = 0; i < 3; i++) {
        r[i] = append_ok(w, 3, pl, sizeof pl);
        wait_ok(w, r[i].seq);
    }
    ck_assert_uint_ge(wal_fault_calls(WAL_FAULT_PWRITE), 2);
    wal_stats st;
    wal_get_stats(w, &st);
    ck_assert(!st.failed);
    close_wal(w);
    wal_fault_reset();
    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    wal_recovery rep;
    stm_err err;
    ck_assert_int_eq(wal_open(&o, &w, &rep, &err), STM_OK);
    ck_assert_uint_eq(rep.cut_bytes, 0);
    buf b = {0};
    wal_record x;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(wal_read_at(w, r[i].offset, &b, &x, &err), STM_OK);
        ck_assert_uint_eq(x.seq, r[i].seq);
    }
    buf_free(&b);
    close_wal(w);
}
END_TEST
#endif

static Suite *wal_suite(void)
{
    Suite *s = suite_create("wal");
    TCase *t = tcase_create("core");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_policy_parse);
    tcase_add_test(t, test_hex);
    tcase_add_test(t, test_header_bytes);
    tcase_add_test(t, test_one_writer);
    tcase_add_test(t, test_salvage);
    tcase_add_test(t, test_roundtrip);
    tcase_add_test(t, test_iter_from_middle);
    tcase_add_test(t, test_read_ahead);
    tcase_add_test(t, test_rotation);
    tcase_add_test(t, test_periodic_checkpoint);
    tcase_add_test(t, test_append_reports_checkpoints);
    tcase_add_test(t, test_torn_every_byte);
    tcase_add_test(t, test_zero_tail);
    tcase_add_test(t, test_preallocated_tail);
    tcase_add_test(t, test_no_prealloc_under_never);
    tcase_add_test(t, test_bad_crc_last);
    tcase_add_test(t, test_corrupt_middle);
    tcase_add_test(t, test_corrupt_earlier_segment);
    tcase_add_test(t, test_sequence_damage);
    tcase_add_test(t, test_empty_and_read_only);
    tcase_add_test(t, test_empty_segment_gets_checkpoint);
    tcase_add_test(t, test_chain_verify);
    tcase_add_test(t, test_delete_before);
    tcase_add_loop_test(t, test_group_commit, 0, 2);
    tcase_add_test(t, test_policy_every_write);
    tcase_add_test(t, test_policy_never);
    tcase_add_test(t, test_never_unwaited_records_reach_the_file);
    tcase_add_test(t, test_never_waiter_writes_itself);
    tcase_add_test(t, test_every_write_holder_commits_itself);
    tcase_add_test(t, test_every_write_hold_does_not_starve_others);
    tcase_add_test(t, test_sequence_space_end);
    tcase_add_test(t, test_policy_every_n);
    tcase_add_test(t, test_policy_every_ms);
    tcase_add_test(t, test_backpressure_big_records);
    tcase_add_test(t, test_fixture_clean);
    tcase_add_test(t, test_fixture_torn);
#ifdef STM_FAULT_INJECTION
    tcase_add_test(t, test_fault_fsync_eio);
    tcase_add_test(t, test_fault_write_enospc);
    tcase_add_test(t, test_fault_rotation);
    tcase_add_test(t, test_fault_zero_fill_enospc);
    tcase_add_test(t, test_fault_torn_write);
    tcase_add_test(t, test_fault_repair_rename);
    tcase_add_test(t, test_power_loss_every_write);
    tcase_add_test(t, test_power_loss_never);
#endif
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(wal_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
