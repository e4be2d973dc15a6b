/*
 * fuzz_snapshot.c - loading a database snapshot at startup, from arbitrary
 * bytes, end to end through eng_open.
 *
 * Input: FLAGS BODY. The file snapshots/db-0000010000000000.snap is written
 * into a fresh data dir beside an empty wal/ and the engine is opened on it.
 * FLAGS bit 0 clear: BODY gets a newline if it lacks one and then a valid
 * trailer line {"end":true,"bytes":N,"crc":"..."} (CRC-32C of BODY), so the
 * fuzzer explores the loader instead of the checksum (a random file almost
 * never passes it, and startup would just skip it). Bit 0 set: BODY is the
 * whole file as is (the checksum and trailer checks themselves). Bit 1:
 * open read-only.
 * When the engine opens, every machine, version and instance it loaded is
 * read back through the typed reads (definition texts, instance views,
 * history from the snapshot file, allowed events, the entries file) and
 * through LIST_* calls; unless read-only a COMPACT rewrites the snapshot
 * from the loaded state, and the dir is opened once more. A refusal of a
 * bad snapshot must be an error code with a message, never a crash.
 * Seeds are snapshots stmfs wrote, with their trailer line removed.
 *
 * Build: meson setup with CC=clang -Dfuzz=true (see tests/fuzz/meson.build).
 * Run:   build-fuzz/tests/fuzz/fuzz_snapshot tests/fuzz/corpus/snapshot -runs=0   (replay)
 *        build-fuzz/tests/fuzz/fuzz_snapshot -max_len=65536 WORKDIR tests/fuzz/corpus/snapshot
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "engine/engine.h"
#include "fuzz_tmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    eng *e;
    int n;
} walk_ctx;

static bool each_instance(void *arg, const char *id)
{
    walk_ctx *w = arg;
    stm_err err;
    eng_instance_view v;
    if (eng_get_instance_view(w->e, id, true, &v, &err) == STM_OK) eng_instance_view_free(&v);
    buf b = {0};
    uint64_t total = 0, seq;
    eng_history_read(w->e, id, 0, 1u << 20, &b, &total, &err);
    buf_reset(&b);
    eng_allowed_events(w->e, id, &b, &seq, &err);
    buf_free(&b);
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "instance_id", id);
    cJSON *r = NULL;
    if (eng_call(w->e, "GET_INSTANCE", p, &r, &seq, &err) == STM_OK) cJSON_Delete(r);
    cJSON_Delete(p);
    return ++w->n < 256;
}

static bool each_machine(void *arg, const char *name)
{
    walk_ctx *w = arg;
    uint32_t vs[16];
    size_t n = eng_machine_versions(w->e, name, vs, 16);
    for (size_t i = 0; i < n && i < 16; i++)
        for (int f = ENG_DEF_JSON; f <= ENG_DEF_DOT; f++) {
            buf b = {0};
            int64_t mt;
            stm_err err;
            eng_machine_text(w->e, name, vs[i], (enum eng_def_format)f, &b, &mt, &err);
            buf_free(&b);
        }
    eng_list_instance_ids(w->e, name, NULL, 64, each_instance, w);
    return ++w->n < 256;
}

static void call(eng *e, const char *op, const char *params)
{
    cJSON *p = params ? cJSON_Parse(params) : NULL, *r = NULL;
    uint64_t seq;
    stm_err err;
    if (eng_call(e, op, p, &r, &seq, &err) == STM_OK) cJSON_Delete(r);
    cJSON_Delete(p);
}

static void exercise(eng *e)
{
    walk_ctx w = {e, 0};
    eng_list_machines(e, each_machine, &w);
    eng_list_instance_ids(e, NULL, NULL, 256, each_instance, &w);
    buf b = {0};
    uint64_t total;
    stm_err err;
    eng_entries_read(e, 0, 1u << 20, &b, &total, &err);
    buf_free(&b);
    eng_stats st;
    eng_get_stats(e, &st);
    call(e, "LIST_MACHINES", NULL);
    call(e, "LIST_INSTANCES", "{\"limit\":1000}");
    call(e, "WAL_STATS", NULL);
}

static stm_code open_dir(const char *dir, bool ro, eng **e, stm_err *err)
{
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.segment_size = 1u << 20;
    o.sync = (wal_sync_policy){WAL_SYNC_NEVER, 0};
    o.compact_enabled = false; /* no background thread: COMPACT is called here */
    o.read_only = ro;
    return eng_open(&o, e, NULL, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t flags = data[0];
    data++, size--;

    fuzz_tmp_clear();
    char dir[512], sdir[600];
    snprintf(dir, sizeof dir, "%s/data", fuzz_tmp_dir());
    snprintf(sdir, sizeof sdir, "%s/snapshots", dir);
    mkdir(dir, 0700);
    char wdir[600];
    snprintf(wdir, sizeof wdir, "%s/wal", dir);
    mkdir(wdir, 0700);

    buf f = {0};
    buf_add(&f, data, size);
    if (!(flags & 1)) {
        if (f.len && f.data[f.len - 1] != '\n') buf_putc(&f, '\n');
        size_t body = f.len;
        buf_printf(&f, "{\"end\":true,\"bytes\":%zu,\"crc\":\"%08x\"}\n", body,
                   crc32c(0, f.data ? f.data : "", body));
    }
    fuzz_tmp_write(sdir, "db-0000010000000000.snap", f.data ? f.data : "", f.len);
    buf_free(&f);

    bool ro = flags & 2;
    eng *e;
    stm_err err = {0};
    stm_code rc = open_dir(dir, ro, &e, &err);
    if (rc != STM_OK) {
        if (rc >= STM_CODE_COUNT || !err.msg[0]) abort();
        return 0;
    }
    exercise(e);
    if (!ro) call(e, "COMPACT", NULL);
    eng_close(e);
    if (!ro && open_dir(dir, false, &e, &err) == STM_OK) {
        exercise(e);
        eng_close(e);
    }
    return 0;
}
