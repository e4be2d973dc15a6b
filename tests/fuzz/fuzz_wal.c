/*
 * fuzz_wal.c - WAL recovery, iteration and verification on arbitrary
 * segment bytes.
 *
 * Input: FLAGS [SPLIT_HI SPLIT_LO] BYTES. FLAGS bit 0 = open with repair,
 * bit 1 = cut BYTES into two segments (0000000000000001.wal and ...02.wal)
 * at the 16-bit position that follows (modulo the length), bit 2 = open
 * read-only, bit 3 = 4 KiB segments (so the append below rotates). Without
 * bit 1 all of BYTES is segment 1. Then, in the process's scratch dir:
 *   1. wal_verify on the files as they are (offline check, never writes);
 *   2. wal_open; a refusal must be WAL_IO_ERROR or BAD_REQUEST with a
 *      message. When it opens, every record is iterated with its chain
 *      value, read again with wal_read_at (same seq, type, bytes), and the
 *      count must match what recovery reported;
 *   3. unless read-only: one record is appended and synced and the log
 *      closed; it must then reopen clean (nothing cut, no repair needed)
 *      with that record last - recovery never leaves a log that the next
 *      start refuses, and a synced record survives it.
 * Seeds are truncated pieces of real rstmdb segments and of segments stmfs
 * writes (with checkpoints), each with a FLAGS byte in front.
 *
 * Build: meson setup with CC=clang -Dfuzz=true (see tests/fuzz/meson.build).
 * Run:   build-fuzz/tests/fuzz/fuzz_wal tests/fuzz/corpus/wal -runs=0   (replay)
 *        build-fuzz/tests/fuzz/fuzz_wal -max_len=65536 WORKDIR tests/fuzz/corpus/wal
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "fuzz_tmp.h"
#include "wal/wal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char marker[] = "{\"type\":\"noop\",\"fuzz\":true}";

static void refused(stm_code rc, const stm_err *err)
{
    if ((rc != STM_WAL_IO_ERROR && rc != STM_BAD_REQUEST) || !err->msg[0]) abort();
}

/* Walks every record; returns how many, and the last one's seq and type. */
static uint64_t walk(wal *w, uint64_t *last_seq, uint8_t *last_type, buf *last_payload)
{
    wal_iter *it;
    stm_err err;
    if (wal_iter_open(w, 0, true, &it, &err) != STM_OK) abort();
    uint64_t n = 0;
    wal_record rec;
    buf again = {0};
    int r;
    while ((r = wal_iter_next(it, &rec, &err)) == 1) {
        n++;
        if (!rec.has_chain) abort();
        *last_seq = rec.seq;
        *last_type = rec.type;
        buf_reset(last_payload);
        buf_add(last_payload, rec.payload, rec.len);
        wal_record rr;
        buf_reset(&again);
        if (wal_read_at(w, rec.offset, &again, &rr, &err) != STM_OK) abort();
        if (rr.seq != rec.seq || rr.type != rec.type || rr.len != rec.len ||
            again.len != rec.len || (rec.len && memcmp(again.data, rec.payload, rec.len) != 0))
            abort();
    }
    if (r != 0) abort(); /* an opened log iterates to its end */
    wal_iter_close(it);
    buf_free(&again);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t flags = data[0];
    data++, size--;
    size_t split = size;
    if (flags & 2) {
        if (size < 2) return 0;
        unsigned at = (unsigned)data[0] << 8 | data[1];
        data += 2, size -= 2;
        split = size ? at % (size + 1) : 0;
    }

    fuzz_tmp_clear();
    char dir[512];
    snprintf(dir, sizeof dir, "%s/wal", fuzz_tmp_dir());
    fuzz_tmp_write(dir, "0000000000000001.wal", data, split);
    if (flags & 2) fuzz_tmp_write(dir, "0000000000000002.wal", data + split, size - split);

    stm_err err = {0};
    wal_verify_report vr;
    stm_code rc = wal_verify(dir, 0, NULL, &vr, &err);
    if (rc != STM_OK) refused(rc, &err);

    wal_opts o = {
        .dir = dir,
        .segment_size = (flags & 8) ? 4096 : 1u << 20,
        .sync = {WAL_SYNC_NEVER, 0},
        .repair = flags & 1,
        .read_only = (flags & 4) != 0,
    };
    wal *w;
    wal_recovery rep;
    rc = wal_open(&o, &w, &rep, &err);
    if (rc != STM_OK) {
        refused(rc, &err);
        return 0;
    }
    uint64_t seq = 0;
    uint8_t type = 0;
    buf last = {0};
    uint64_t n = walk(w, &seq, &type, &last);
    if (n != rep.records) abort();
    wal_stats st;
    wal_get_stats(w, &st);

    if (o.read_only) {
        wal_close(w, &err);
        buf_free(&last);
        return 0;
    }
    wal_record rec;
    if (wal_append(w, WAL_T_NOOP, marker, sizeof marker - 1, &rec, &err) != STM_OK) {
        /* refused only at the end of the sequence space (a damaged last
         * header), and then the log must still reopen as it was */
        if (err.code != STM_WAL_IO_ERROR || st.entry_count + 2 <= WAL_MAX_SEQ) abort();
        if (wal_close(w, &err) != STM_OK) abort();
        buf_free(&last);
        o.repair = false;
        if (wal_open(&o, &w, &rep, &err) != STM_OK || rep.cut_bytes != 0) abort();
        wal_close(w, &err);
        return 0;
    }
    if (rec.seq <= seq) abort();
    if (wal_sync(w, &err) != STM_OK || wal_close(w, &err) != STM_OK) abort();

    o.repair = false;
    rc = wal_open(&o, &w, &rep, &err);
    if (rc != STM_OK || rep.cut_bytes != 0) {
        fprintf(stderr, "reopen after recovery and one append: %s / %s\n", err.msg, rep.message);
        abort();
    }
    /* The closing checkpoint may follow the record; look for it by seq. */
    wal_iter *it;
    if (wal_iter_open(w, rec.offset, false, &it, &err) != STM_OK) abort();
    wal_record got;
    if (wal_iter_next(it, &got, &err) != 1 || got.seq != rec.seq || got.type != WAL_T_NOOP ||
        got.len != sizeof marker - 1 || memcmp(got.payload, marker, got.len) != 0)
        abort();
    wal_iter_close(it);
    wal_close(w, &err);
    buf_free(&last);
    return 0;
}
