/*
 * ahead.c - a read-ahead iterator: a second thread reads, CRC-checks and
 * hashes records into chunks while the caller applies the ones before.
 *
 * Replay is one pass to the end of the log, and the chain step (SHA-256 of
 * every record) is a third of it. On two cores that third overlaps the
 * caller's own work instead of adding to it. Chunks are handed over whole,
 * so the two threads meet once per AHEAD_RECORDS records, not per record.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "wal/internal.h"

#define AHEAD_CHUNKS 4
#define AHEAD_RECORDS 512
#define AHEAD_BYTES (256u * 1024)

typedef struct {
    buf bytes;           /* the payloads, back to back */
    wal_record *recs;    /* payload pointers are set when the chunk is read */
    size_t *at;          /* where each payload starts in bytes */
    size_t n, cap;
    int end;             /* 0: more follow; 1: the log ends after these; -1: err */
    stm_err err;
} chunk;

struct wal_ahead {
    wal_iter *it; /* the producer's alone */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    chunk ring[AHEAD_CHUNKS];
    size_t filled;   /* chunks handed to the consumer (under mu) */
    size_t released; /* chunks handed back (under mu) */
    bool stop;       /* close: the producer leaves (under mu) */
    chunk *cur;      /* the consumer's alone */
    size_t idx;
};

static void chunk_add(chunk *c, const wal_record *rec)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->recs = xrealloc(c->recs, c->cap * sizeof *c->recs);
        c->at = xrealloc(c->at, c->cap * sizeof *c->at);
    }
    c->recs[c->n] = *rec;
    c->at[c->n] = c->bytes.len;
    buf_add(&c->bytes, rec->payload, rec->len);
    c->n++;
}

static void *produce(void *arg)
{
    wal_ahead *a = arg;
    util_name_thread("wal-readahead");
    for (size_t k = 0;; k++) {
        pthread_mutex_lock(&a->mu);
        while (k - a->released >= AHEAD_CHUNKS && !a->stop) pthread_cond_wait(&a->cv, &a->mu);
        bool stop = a->stop;
        pthread_mutex_unlock(&a->mu);
        if (stop) return NULL;
        chunk *c = &a->ring[k % AHEAD_CHUNKS];
        buf_reset(&c->bytes);
        c->n = 0;
        while (c->n < AHEAD_RECORDS && c->bytes.len < AHEAD_BYTES) {
            wal_record rec;
            int r = wal_iter_next(a->it, &rec, &c->err);
            if (r != 1) {
                c->end = r == 0 ? 1 : -1;
                break;
            }
            chunk_add(c, &rec);
        }
        pthread_mutex_lock(&a->mu);
        a->filled = k + 1;
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
        if (c->end) return NULL;
    }
}

stm_code wal_ahead_open(wal *w, uint64_t from, wal_ahead **out, stm_err *err)
{
    wal_ahead *a = xcalloc(1, sizeof *a);
    stm_code rc = wal_iter_open(w, from, true, &a->it, err);
    if (rc != STM_OK) {
        free(a);
        return rc;
    }
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    int e = pthread_create(&a->thread, NULL, produce, a);
    if (e != 0) {
        wal_iter_close(a->it);
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
        free(a);
        return stm_fail(err, STM_INTERNAL_ERROR, "cannot start the WAL read-ahead thread: %s",
                        strerror(e));
    }
    *out = a;
    return STM_OK;
}

int wal_ahead_next(wal_ahead *a, wal_record *rec, stm_err *err)
{
    for (;;) {
        chunk *c = a->cur;
        if (c && a->idx < c->n) {
            *rec = c->recs[a->idx];
            rec->payload = c->bytes.data + c->at[a->idx];
            a->idx++;
            return 1;
        }
        if (c) {
            if (c->end == 1) return 0;
            if (c->end == -1) {
                if (err) *err = c->err;
                return -1;
            }
            pthread_mutex_lock(&a->mu);
            a->released++;
            pthread_cond_broadcast(&a->cv);
            pthread_mutex_unlock(&a->mu);
        }
        pthread_mutex_lock(&a->mu);
        while (a->filled == a->released) pthread_cond_wait(&a->cv, &a->mu);
        a->cur = &a->ring[a->released % AHEAD_CHUNKS];
        pthread_mutex_unlock(&a->mu);
        a->idx = 0;
    }
}

void wal_ahead_close(wal_ahead *a)
{
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    wal_iter_close(a->it);
    for (int i = 0; i < AHEAD_CHUNKS; i++) {
        buf_free(&a->ring[i].bytes);
        free(a->ring[i].recs);
        free(a->ring[i].at);
    }
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    free(a);
}
