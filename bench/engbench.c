/*
 * engbench.c - the engine alone, in-process, with fsync never: what the
 * database costs before any disk, network or FUSE is involved.
 *
 *   build/bench/engbench [--events N] [--instances N] [--ctx-bytes B] [--runs R] [--dir DIR]
 *
 * Prints, as medians over R runs:
 *   events/s   APPLY_EVENT on one thread, instances round-robin, small context
 *   replay     entries/s when reopening the log those events wrote
 *   memory     resident MB after creating --instances instances with a
 *              --ctx-bytes context each (default 1,000,000 x 200 B)
 * Goals (issue 3): >= 500k events/s, replay >= 1M entries/s, <= 600 MB for
 * 1M instances with 200-byte contexts.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/json.h"
#include "base/util.h"
#include "engine/engine.h"

static void die(const char *what, const stm_err *err)
{
    fprintf(stderr, "engbench: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

static eng *open_at(const char *dir)
{
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.sync.mode = WAL_SYNC_NEVER;
    o.compact_enabled = false;
    stm_err err;
    eng *e;
    if (eng_open(&o, &e, NULL, &err) != STM_OK) die("open", &err);
    return e;
}

static void call(eng *e, const char *op, cJSON *p)
{
    cJSON *r;
    uint64_t seq;
    stm_err err;
    if (eng_call(e, op, p, &r, &seq, &err) != STM_OK) die(op, &err);
    cJSON_Delete(r);
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
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

static const char *MACHINE =
    "{\"machine\":\"bench\",\"version\":1,\"definition\":{\"states\":[\"open\",\"done\"],"
    "\"initial\":\"open\",\"transitions\":[{\"from\":\"open\",\"event\":\"TICK\",\"to\":\"open\","
    "\"guard\":\"ctx.n >= 0\"},{\"from\":\"open\",\"event\":\"DONE\",\"to\":\"done\"}]}}";

int main(int argc, char **argv)
{
    long events = 500000, instances = 1000000, ctx_bytes = 200;
    int runs = 3;
    const char *base = "/tmp";
    static const struct option opts[] = {
        {"events", required_argument, NULL, 'e'}, {"instances", required_argument, NULL, 'i'},
        {"ctx-bytes", required_argument, NULL, 'c'}, {"runs", required_argument, NULL, 'r'},
        {"dir", required_argument, NULL, 'd'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'e': events = atol(optarg); break;
        case 'i': instances = atol(optarg); break;
        case 'c': ctx_bytes = atol(optarg); break;
        case 'r': runs = atoi(optarg); break;
        case 'd': base = optarg; break;
        default:
            fprintf(stderr, "usage: engbench [--events N] [--instances N] [--ctx-bytes B] "
                            "[--runs R] [--dir DIR]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    double ev_rate[16], replay_rate[16];
    if (runs > 16) runs = 16;
    for (int run = 0; run < runs; run++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/engbench-XXXXXX", base);
        if (!mkdtemp(dir)) die("mkdtemp", NULL);
        eng *e = open_at(dir);
        cJSON *p = cJSON_Parse(MACHINE);
        call(e, "PUT_MACHINE", p);
        cJSON_Delete(p);
        enum { N_INST = 1000 };
        char id[32];
        for (int i = 0; i < N_INST; i++) {
            snprintf(id, sizeof id, "i-%06d", i);
            p = cJSON_CreateObject();
            cJSON_AddStringToObject(p, "machine", "bench");
            cJSON_AddNumberToObject(p, "version", 1);
            cJSON_AddStringToObject(p, "instance_id", id);
            cJSON *ctx = cJSON_AddObjectToObject(p, "initial_ctx");
            cJSON_AddNumberToObject(ctx, "n", i);
            cJSON_AddStringToObject(ctx, "customer", "alice");
            call(e, "CREATE_INSTANCE", p);
            cJSON_Delete(p);
        }
        /* params prebuilt: a server parses them from the wire anyway */
        cJSON **params = malloc(N_INST * sizeof *params);
        for (int i = 0; i < N_INST; i++) {
            snprintf(id, sizeof id, "i-%06d", i);
            params[i] = cJSON_CreateObject();
            cJSON_AddStringToObject(params[i], "instance_id", id);
            cJSON_AddStringToObject(params[i], "event", "TICK");
            cJSON *pl = cJSON_AddObjectToObject(params[i], "payload");
            cJSON_AddNumberToObject(pl, "seen", 1);
        }
        uint64_t t0 = util_mono_ns();
        for (long k = 0; k < events; k++) call(e, "APPLY_EVENT", params[k % N_INST]);
        uint64_t t1 = util_mono_ns();
        ev_rate[run] = (double)events / ((double)(t1 - t0) / 1e9);
        for (int i = 0; i < N_INST; i++) cJSON_Delete(params[i]);
        free(params);
        eng_stats st;
        eng_get_stats(e, &st);
        uint64_t entries = st.wal.entry_count;
        eng_close(e);
        t0 = util_mono_ns();
        e = open_at(dir);
        t1 = util_mono_ns();
        replay_rate[run] = (double)entries / ((double)(t1 - t0) / 1e9);
        eng_close(e);
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) die("rm", NULL);
        fprintf(stderr, "run %d: %.0f events/s, replay %.0f entries/s (%llu entries)\n", run + 1,
                ev_rate[run], replay_rate[run], (unsigned long long)entries);
    }
    printf("events/s (1 thread, fsync never): %.0f\n", median(ev_rate, runs));
    printf("replay entries/s:                 %.0f\n", median(replay_rate, runs));

    /* memory: one run, it is not noisy */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/engbench-XXXXXX", base);
    if (!mkdtemp(dir)) die("mkdtemp", NULL);
    long rss0 = rss_kb();
    eng *e = open_at(dir);
    cJSON *p = cJSON_Parse(MACHINE);
    call(e, "PUT_MACHINE", p);
    cJSON_Delete(p);
    char *filler = malloc((size_t)ctx_bytes + 1);
    memset(filler, 'x', (size_t)ctx_bytes);
    /* {"customer":"<filler>"} is ctx_bytes long in total */
    long pad = ctx_bytes - (long)strlen("{\"customer\":\"\"}");
    filler[pad > 0 ? pad : 0] = 0;
    for (long i = 0; i < instances; i++) {
        char id[32];
        snprintf(id, sizeof id, "m-%09ld", i);
        p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "machine", "bench");
        cJSON_AddNumberToObject(p, "version", 1);
        cJSON_AddStringToObject(p, "instance_id", id);
        cJSON *ctx = cJSON_AddObjectToObject(p, "initial_ctx");
        cJSON_AddStringToObject(ctx, "customer", filler);
        call(e, "CREATE_INSTANCE", p);
        cJSON_Delete(p);
    }
    long rss1 = rss_kb();
    printf("memory for %ld instances x %ld B ctx: %.0f MB resident\n", instances, ctx_bytes,
           (double)(rss1 - rss0) / 1024.0);
    free(filler);
    eng_close(e);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}
