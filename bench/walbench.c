/*
 * walbench.c - throughput of the write-ahead log, and its recovery speed.
 *
 *   build/bench/walbench [--dir DIR] [--runs N] [--secs S] [--recovery-mib M]
 *                        [--only POLICY:SIZE:THREADS]   (one cell, e.g. every_write:128:16)
 *
 * DIR (default $TMPDIR or /var/tmp) must be on the disk you want measured,
 * not tmpfs. Prints, as a table with the median of N runs (default 5) of S
 * seconds each (default 1):
 *
 *   - the machine's own limit: one writer doing write(128 B) + fdatasync in
 *     a loop on a plain file, for S/2 seconds right before every run (the
 *     "x plain" column is the median of run / neighbouring plain loop);
 *   - records/s and MB/s of payload for 128 B and 1 KiB records with 1, 4
 *     and 16 appender threads, each doing wal_append + wal_wait in a loop,
 *     under every_write and never; with records per fdatasync;
 *   - recovery: wal_open of an M MiB log (default 1024) that is in the page
 *     cache, in GB/s (CRC of every record, chain from the last checkpoint).
 *
 * The goals (bench/README.md): 16 appenders under every_write at least 10x
 * the plain one-writer fdatasync rate; recovery at least 1 GB/s.
 */
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/util.h"
#include "wal/wal.h"

static const char *base_dir;
static int runs = 5;
static double secs = 1.0;
static unsigned recovery_mib = 1024;
static const char *only; /* "POLICY:SIZE:THREADS": that cell alone, no recovery */

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void rm_rf(const char *p)
{
    nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *fresh_dir(const char *name)
{
    static char p[600];
    snprintf(p, sizeof p, "%s/%s", base_dir, name);
    rm_rf(p);
    return p;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static double now_s(void)
{
    return (double)util_mono_ns() / 1e9;
}

/* ---- the machine's own limit ---------------------------------------------- */

static double plain_fdatasync_rate(void)
{
    double span = secs / 2;
    char *dir = fresh_dir("plain");
    mkdir(dir, 0755);
    char path[700];
    snprintf(path, sizeof path, "%s/file", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(path);
        exit(1);
    }
    char b[128];
    memset(b, 'p', sizeof b);
    long n = 0;
    double t0 = now_s(), t;
    do {
        if (write(fd, b, sizeof b) != (ssize_t)sizeof b || fdatasync(fd) != 0) {
            perror("write/fdatasync");
            exit(1);
        }
        n++;
        t = now_s();
    } while (t - t0 < span);
    close(fd);
    rm_rf(dir);
    return (double)n / (t - t0);
}

/* ---- appenders -------------------------------------------------------------- */

typedef struct {
    wal *w;
    size_t size;
    double until;
    long count;
} job;

static void *appender(void *p)
{
    job *j = p;
    char *pl = malloc(j->size);
    memset(pl, 'a', j->size);
    long n = 0;
    while (now_s() < j->until) {
        wal_record r;
        stm_err err;
        if (wal_append(j->w, WAL_T_APPLY_EVENT, pl, (uint32_t)j->size, &r, &err) != STM_OK ||
            wal_wait(j->w, r.seq, &err) != STM_OK) {
            fprintf(stderr, "walbench: %s\n", err.msg);
            exit(1);
        }
        n++;
    }
    j->count = n;
    free(pl);
    return NULL;
}

static void run_appenders(const char *policy, size_t size, int threads, double *rate,
                          double *per_sync)
{
    char *dir = fresh_dir("wal");
    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    stm_err err;
    wal_sync_policy_parse(policy, &o.sync, &err);
    wal *w;
    if (wal_open(&o, &w, NULL, &err) != STM_OK) {
        fprintf(stderr, "walbench: %s\n", err.msg);
        exit(1);
    }
    job jobs[16];
    pthread_t th[16];
    double t0 = now_s();
    for (int i = 0; i < threads; i++) {
        jobs[i] = (job){w, size, t0 + secs, 0};
        pthread_create(&th[i], NULL, appender, &jobs[i]);
    }
    long total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        total += jobs[i].count;
    }
    double t = now_s() - t0;
    wal_stats st;
    wal_get_stats(w, &st);
    *rate = (double)total / t;
    *per_sync = st.fsyncs ? (double)st.writes / (double)st.fsyncs : 0;
    wal_close(w, NULL);
    rm_rf(dir);
}

/* ---- recovery ------------------------------------------------------------------ */

static double recovery_gbs(void)
{
    char *dir = fresh_dir("recovery");
    wal_opts o = {.dir = dir, .segment_size = 64u << 20};
    stm_err err;
    wal_sync_policy_parse("never", &o.sync, &err);
    wal *w;
    if (wal_open(&o, &w, NULL, &err) != STM_OK) {
        fprintf(stderr, "walbench: %s\n", err.msg);
        exit(1);
    }
    char pl[1000];
    memset(pl, 'r', sizeof pl);
    uint64_t target = (uint64_t)recovery_mib << 20;
    wal_stats st;
    do {
        for (int i = 0; i < 10000; i++) {
            wal_record r;
            if (wal_append(w, WAL_T_APPLY_EVENT, pl, sizeof pl, &r, &err) != STM_OK) {
                fprintf(stderr, "walbench: %s\n", err.msg);
                exit(1);
            }
        }
        wal_get_stats(w, &st);
    } while (st.total_size_bytes < target);
    wal_close(w, NULL);

    double v[64];
    uint64_t bytes = 0, segments = 0;
    for (int r = 0; r < runs; r++) {
        wal_recovery rep;
        double t0 = now_s();
        if (wal_open(&o, &w, &rep, &err) != STM_OK) {
            fprintf(stderr, "walbench: %s\n", err.msg);
            exit(1);
        }
        double t = now_s() - t0;
        bytes = rep.bytes;
        segments = rep.segments;
        wal_close(w, NULL);
        v[r] = (double)bytes / t / 1e9;
    }
    printf("recovery: %.0f MiB in %llu segments of up to 64 MiB, in the page cache\n",
           (double)bytes / 1048576.0, (unsigned long long)segments);
    rm_rf(dir);
    return median(v, runs);
}

int main(int argc, char **argv)
{
    const char *t = getenv("TMPDIR");
    base_dir = t && *t ? t : "/var/tmp";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            base_dir = argv[++i];
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--secs") && i + 1 < argc)
            secs = atof(argv[++i]);
        else if (!strcmp(argv[i], "--recovery-mib") && i + 1 < argc)
            recovery_mib = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: walbench [--dir DIR] [--runs N] [--secs S] "
                            "[--recovery-mib M] [--only POLICY:SIZE:THREADS]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 64) runs = 5;
    char bd[700];
    snprintf(bd, sizeof bd, "%s/walbench-%d", base_dir, (int)getpid());
    mkdir(bd, 0755);
    base_dir = bd;
    printf("walbench: median of %d runs of %.1f s in %s\n\n", runs, secs, base_dir);

    double v[64], pv[64], xv[64], all_plain[64 * 12];
    int nplain = 0;
    /* Other work on the machine moves the disk's fdatasync rate from one
     * second to the next, so the plain loop runs right before every run
     * and each ratio compares neighbours. */
    printf("%-12s %6s %8s %12s %9s %10s %12s %9s\n", "policy", "size", "threads", "records/s",
           "MB/s", "rec/fsync", "plain ops/s", "x plain");
    static const char *policies[] = {"every_write", "never"};
    static const size_t sizes[] = {128, 1024};
    static const int threads[] = {1, 4, 16};
    for (int p = 0; p < 2; p++)
        for (int s = 0; s < 2; s++)
            for (int th = 0; th < 3; th++) {
                char cell[64];
                snprintf(cell, sizeof cell, "%s:%zu:%d", policies[p], sizes[s], threads[th]);
                if (only && strcmp(only, cell) != 0) continue;
                double ps[64];
                for (int r = 0; r < runs; r++) {
                    pv[r] = plain_fdatasync_rate();
                    all_plain[nplain++] = pv[r];
                    run_appenders(policies[p], sizes[s], threads[th], &v[r], &ps[r]);
                    xv[r] = v[r] / pv[r];
                }
                double rate = median(v, runs), per = median(ps, runs);
                char pers[32] = "-"; /* never: no fdatasync in most runs */
                if (per > 0 && per < 1e4) snprintf(pers, sizeof pers, "%.1f", per);
                printf("%-12s %5zuB %8d %12.0f %9.1f %10s %12.0f %8.1fx\n", policies[p], sizes[s],
                       threads[th], rate, rate * (double)sizes[s] / 1e6, pers, median(pv, runs),
                       median(xv, runs));
                fflush(stdout);
            }
    printf("\nplain write(128 B)+fdatasync, 1 writer, over all runs: median %.0f ops/s\n\n",
           median(all_plain, nplain));
    if (only) {
        rm_rf(bd);
        return nplain ? 0 : 2;
    }
    double g = recovery_gbs();
    printf("recovery scan: %.2f GB/s\n", g);
    rm_rf(bd);
    return 0;
}
