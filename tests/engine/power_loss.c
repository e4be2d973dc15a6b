/*
 * power_loss.c - the whole engine (WAL, snapshots, compaction) through the
 * fault I/O table, with the power cut at random moments.
 *
 *   power_loss [ROUNDS] [SEED]        (built with -Dfault_injection=true)
 *
 * kill -9 cannot tell every_write from never: the kernel keeps what the
 * process wrote. Here every file the engine touches goes through
 * wal_fault_io, and wal_fault_power_cut leaves of each file only what a
 * completed fdatasync covered (plus a random part of the rest), drops files
 * whose directory entry was never synced, and fails every later call.
 *
 * Each round opens the engine under every_write on the same directory, with
 * small segments and compaction after every few dozen events, so the cut
 * falls as often inside a snapshot or a compaction as inside an append. Two
 * writer threads drive instances of their own (creates, events merging a
 * counter into the context) and note, per instance, the state and context
 * eng_wait acknowledged, and the one operation in flight. A third asks for
 * COMPACT now and then. After the cut the engine is closed (errors are
 * expected, crashes and hangs are not), then reopened with the real I/O:
 * it must open without a repair, and every instance must show exactly its
 * acknowledged state, or the outcome of the one operation in flight.
 * Exit status 0 when every round holds.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/json.h"
#include "base/util.h"
#include "engine/engine.h"
#include "wal/io.h"

#define N_THREADS 2
#define N_IDS 40 /* per thread */

typedef struct {
    char state[16];
    long n; /* the counter merged into the context; -1: never acknowledged */
} fact;

typedef struct {
    eng *e;
    int t;
    uint64_t rng;
    fact acked[N_IDS], flight[N_IDS];
    int in_flight; /* id index of the operation in flight, or -1 */
    long ops;
} writer;

static atomic_bool cut;
static atomic_long compactions; /* COMPACT calls that completed */

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static const char *DEF =
    "{\"machine\":\"p\",\"version\":1,\"definition\":{\"states\":[\"a\",\"b\",\"c\"],"
    "\"initial\":\"a\",\"transitions\":[{\"from\":\"a\",\"event\":\"NEXT\",\"to\":\"b\"},"
    "{\"from\":\"b\",\"event\":\"NEXT\",\"to\":\"c\"},{\"from\":\"c\",\"event\":\"NEXT\","
    "\"to\":\"a\"}]}}";

static const char *next_state(const char *s)
{
    return s[0] == 'a' ? "b" : s[0] == 'b' ? "c" : "a";
}

static stm_code call(eng *e, const char *op, const char *params, stm_err *err)
{
    cJSON *p = cJSON_Parse(params);
    cJSON *r = NULL;
    uint64_t seq = 0;
    stm_code rc = eng_call(e, op, p, &r, &seq, err);
    cJSON_Delete(p);
    cJSON_Delete(r);
    if (rc == STM_OK && seq) rc = eng_wait(e, seq, err);
    return rc;
}

static void *writer_main(void *arg)
{
    writer *w = arg;
    char params[256];
    while (!atomic_load(&cut)) {
        int i = (int)(rnd(&w->rng) % N_IDS);
        fact *a = &w->acked[i], *f = &w->flight[i];
        long n = ++w->ops; /* per thread, and each instance has one thread */
        const char *op;
        if (a->n < 0) {
            op = "CREATE_INSTANCE";
            snprintf(params, sizeof params,
                     "{\"machine\":\"p\",\"version\":1,\"instance_id\":\"w%d-%02d\","
                     "\"initial_ctx\":{\"n\":%ld}}",
                     w->t, i, n);
            *f = (fact){"a", n};
        } else {
            op = "APPLY_EVENT";
            snprintf(params, sizeof params,
                     "{\"instance_id\":\"w%d-%02d\",\"event\":\"NEXT\",\"payload\":{\"n\":%ld}}",
                     w->t, i, n);
            *f = (fact){"", n};
            snprintf(f->state, sizeof f->state, "%s", next_state(a->state));
        }
        w->in_flight = i;
        stm_err err;
        stm_code rc = call(w->e, op, params, &err);
        if (rc == STM_INSTANCE_EXISTS) {
            /* created in flight before the last cut, never acknowledged */
            w->in_flight = -1;
            continue;
        }
        if (rc != STM_OK) break; /* the power is gone */
        *a = *f;
        w->in_flight = -1;
    }
    return NULL;
}

static void *compactor_main(void *arg)
{
    writer *w = arg;
    while (!atomic_load(&cut)) {
        usleep((useconds_t)(200 + rnd(&w->rng) % 1500));
        stm_err err;
        if (call(w->e, "COMPACT", "{}", &err) == STM_OK) atomic_fetch_add(&compactions, 1);
        else if (atomic_load(&cut)) break;
    }
    return NULL;
}

static eng *open_engine(const char *dir, bool faulty, stm_err *err)
{
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.segment_size = 32 * 1024;
    o.compact_enabled = true;
    o.compact_events_threshold = 40;
    o.compact_size_threshold_mb = 0;
    o.compact_min_interval_secs = 0;
    if (faulty) o.io = &wal_fault_io;
    eng *e = NULL;
    return eng_open(&o, &e, NULL, err) == STM_OK ? e : NULL;
}

/* Does the recovered instance match what the writer was told, or the
 * operation in flight? */
static bool check_instance(eng *e, const writer *w, int i, int round)
{
    char id[32];
    snprintf(id, sizeof id, "w%d-%02d", w->t, i);
    const fact *a = &w->acked[i];
    const fact *f = w->in_flight == i ? &w->flight[i] : NULL;
    eng_instance_view v;
    stm_err err;
    bool exists = eng_get_instance_view(e, id, false, &v, &err) == STM_OK;
    long n = -1;
    if (exists) {
        cJSON *ctx = json_parse(v.ctx_json, strlen(v.ctx_json), NULL);
        const cJSON *nj = json_get(ctx, "n");
        n = cJSON_IsNumber(nj) ? (long)nj->valuedouble : -2;
        cJSON_Delete(ctx);
    }
    bool ok;
    if (!exists) {
        ok = a->n < 0; /* never acknowledged (a create in flight may be lost) */
    } else {
        bool is_acked = a->n >= 0 && n == a->n && !strcmp(v.state, a->state);
        bool is_flight = f && n == f->n && !strcmp(v.state, f->state);
        ok = is_acked || is_flight;
    }
    if (!ok)
        fprintf(stderr,
                "power_loss: round %d: %s is %s n=%ld; acknowledged %s n=%ld, in flight %s "
                "n=%ld\n",
                round, id, exists ? v.state : "(missing)", n, a->n < 0 ? "-" : a->state, a->n,
                f ? f->state : "-", f ? f->n : -1L);
    if (exists) {
        /* take on what survived, so the next round builds on it */
        writer *mw = (writer *)w;
        snprintf(mw->acked[i].state, sizeof mw->acked[i].state, "%s", v.state);
        mw->acked[i].n = n;
        eng_instance_view_free(&v);
    }
    return ok;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : (uint64_t)time(NULL);
    char dir[] = "/tmp/stmfs-powerloss-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    printf("power_loss: %d rounds, seed %llu, in %s\n", rounds, (unsigned long long)seed, dir);
    setvbuf(stdout, NULL, _IOLBF, 0);

    writer ws[N_THREADS], comp;
    for (int t = 0; t < N_THREADS; t++) {
        memset(&ws[t], 0, sizeof ws[t]);
        ws[t].t = t;
        for (int i = 0; i < N_IDS; i++) ws[t].acked[i].n = -1;
    }
    uint64_t rng = seed * 2654435761u + 1;
    int failures = 0;
    long total_ops = 0;
    for (int round = 0; round < rounds && !failures; round++) {
        stm_err err;
        wal_fault_reset();
        wal_fault_track();
        eng *e = open_engine(dir, true, &err);
        if (!e) {
            fprintf(stderr, "power_loss: round %d: open: %s\n", round, err.msg);
            return 1;
        }
        call(e, "PUT_MACHINE", DEF, &err);
        atomic_store(&cut, false);
        pthread_t th[N_THREADS + 1];
        long before = 0;
        for (int t = 0; t < N_THREADS; t++) {
            ws[t].e = e;
            ws[t].rng = rnd(&rng) | 1;
            ws[t].in_flight = -1;
            before += ws[t].ops;
            pthread_create(&th[t], NULL, writer_main, &ws[t]);
        }
        comp = (writer){.e = e, .rng = rnd(&rng) | 1};
        pthread_create(&th[N_THREADS], NULL, compactor_main, &comp);

        usleep((useconds_t)(2000 + rnd(&rng) % 30000));
        wal_fault_power_cut((unsigned)rnd(&rng));
        atomic_store(&cut, true);
        for (int t = 0; t <= N_THREADS; t++) pthread_join(th[t], NULL);
        eng_close(e);
        wal_fault_reset();
        long after = 0;
        for (int t = 0; t < N_THREADS; t++) after += ws[t].ops;

        e = open_engine(dir, false, &err);
        if (!e) {
            fprintf(stderr, "power_loss: round %d: the database does not reopen: %s\n", round,
                    err.msg);
            return 1;
        }
        for (int t = 0; t < N_THREADS; t++)
            for (int i = 0; i < N_IDS; i++)
                if (!check_instance(e, &ws[t], i, round)) failures++;
        eng_close(e);
        total_ops += after - before;
    }
    printf("power_loss: %d rounds, %ld operations issued, %ld compactions completed, %d "
           "mismatches\n",
           rounds, total_ops, atomic_load(&compactions), failures);
    if (!failures) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "power_loss: could not remove %s\n", dir);
    } else {
        fprintf(stderr, "power_loss: kept %s\n", dir);
    }
    return failures ? 1 : 0;
}
