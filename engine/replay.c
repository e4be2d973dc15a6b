/*
 * replay.c - the state at any point of the log, and a byte-for-byte check
 * that recovery rebuilds what a full replay does.
 *
 * Both open the data directory read-only (nothing is written, a torn tail
 * is left alone) and replay records up to the requested offset through the
 * same eng_apply_record the live engine uses.
 */
#include "engine/internal.h"

#include <stdlib.h>
#include <string.h>

/* Every record, rebuilt from the log alone (no snapshot) while the log is
 * complete: any stop point other than UINT64_MAX means that. */
#define FROM_LOG_ALONE (UINT64_MAX - 1)

static void dump_instance(buf *out, instance *in)
{
    buf_puts(out, "{\"id\":");
    json_write_str(out, in->id);
    buf_puts(out, ",\"machine\":");
    json_write_str(out, in->m->name);
    buf_printf(out, ",\"version\":%u,\"state\":", in->mv->version);
    json_write_str(out, in->state);
    buf_printf(out, ",\"ctx\":%s,\"deleted\":%s", in->ctx, in->deleted ? "true" : "false");
    if (in->last_event_id) {
        buf_puts(out, ",\"last_event_id\":");
        json_write_str(out, in->last_event_id);
    }
    buf_printf(out, ",\"last_wal_offset\":%llu,\"created_at\":%lld,\"updated_at\":%lld,"
                    "\"history_lines\":%u}",
               (unsigned long long)in->last_offset, (long long)in->created_at,
               (long long)in->updated_at, in->n_hist);
}

static int cmp_mach(const void *a, const void *b)
{
    return strcmp((*(machine *const *)a)->name, (*(machine *const *)b)->name);
}

/* The whole state as compact JSON (deterministic: everything sorted). */
static void dump_all(eng *e, uint64_t at, buf *out)
{
    buf_printf(out, "{\"at\":%llu,\"machines\":[", (unsigned long long)(at >= FROM_LOG_ALONE ? e->applied_offset : at));
    machine **ms = xmalloc((e->n_machines + 1) * sizeof *ms);
    size_t n = 0;
    for (size_t i = 0; i < e->mtab_size; i++)
        for (machine *m = e->mtab[i]; m; m = m->hnext) ms[n++] = m;
    qsort(ms, n, sizeof *ms, cmp_mach);
    bool first = true;
    for (size_t i = 0; i < n; i++)
        for (size_t v = 0; v < ms[i]->n_versions; v++) {
            mversion *mv = ms[i]->versions[v];
            if (!mv->d) continue;
            if (!first) buf_putc(out, ',');
            first = false;
            buf_puts(out, "{\"machine\":");
            json_write_str(out, ms[i]->name);
            buf_printf(out, ",\"version\":%u,\"checksum\":\"%s\",\"definition\":", mv->version,
                       def_checksum(mv->d));
            def_write_json(mv->d, out, false);
            buf_putc(out, '}');
        }
    free(ms);
    buf_puts(out, "],\"instances\":[");
    first = true;
    inst_link_all(e);
    for (instance *in = e->head->next[0]; in; in = in->next[0]) {
        if (!first) buf_putc(out, ',');
        first = false;
        dump_instance(out, in);
    }
    wal_stats st;
    wal_get_stats(e->w, &st);
    buf_printf(out, "],\"idempotency_keys\":%zu}", e->n_keys);
}

/* Re-indents compact JSON for people. */
static void indent(buf *out, const char *s)
{
    int depth = 0;
    bool in_str = false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (in_str) {
            buf_putc(out, c);
            if (c == '\\' && p[1]) buf_putc(out, *++p);
            else if (c == '"') in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
            buf_putc(out, c);
        } else if (c == '{' || c == '[') {
            buf_putc(out, c);
            if (p[1] == '}' || p[1] == ']') {
                buf_putc(out, *++p);
                continue;
            }
            buf_putc(out, '\n');
            depth++;
            for (int i = 0; i < depth; i++) buf_puts(out, "  ");
        } else if (c == '}' || c == ']') {
            buf_putc(out, '\n');
            depth--;
            for (int i = 0; i < depth; i++) buf_puts(out, "  ");
            buf_putc(out, c);
        } else if (c == ',') {
            buf_puts(out, ",\n");
            for (int i = 0; i < depth; i++) buf_puts(out, "  ");
        } else if (c == ':') {
            buf_puts(out, ": ");
        } else {
            buf_putc(out, c);
        }
    }
    buf_putc(out, '\n');
}

static stm_code open_ro(const char *data_dir, uint64_t at, eng **out, stm_err *err)
{
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = data_dir;
    o.read_only = true;
    o.sync.mode = WAL_SYNC_NEVER;
    return eng_open_at(&o, at, out, NULL, err);
}

stm_code eng_replay(const char *data_dir, uint64_t at, const char *instance_id, buf *out,
                    stm_err *err)
{
    eng *e;
    stm_code rc = open_ro(data_dir, at == UINT64_MAX ? FROM_LOG_ALONE : at, &e, err);
    if (rc != STM_OK) return rc;
    buf compact = {0};
    if (instance_id) {
        instance *in = inst_find(e, instance_id);
        if (!in) {
            eng_close(e);
            return stm_fail(err, STM_INSTANCE_NOT_FOUND,
                            "instance not found at that point of the log: %s", instance_id);
        }
        dump_instance(&compact, in);
    } else {
        dump_all(e, at, &compact);
    }
    indent(out, buf_cstr(&compact));
    buf_free(&compact);
    eng_close(e);
    return STM_OK;
}

stm_code eng_replay_verify(const char *data_dir, buf *report, stm_err *err)
{
    eng *full, *normal;
    stm_code rc = open_ro(data_dir, FROM_LOG_ALONE, &full, err);
    if (rc != STM_OK) return rc;
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = data_dir;
    o.read_only = true;
    rc = eng_open(&o, &normal, NULL, err);
    if (rc != STM_OK) {
        eng_close(full);
        return rc;
    }
    buf a = {0}, b = {0};
    dump_all(full, UINT64_MAX, &a);
    dump_all(normal, UINT64_MAX, &b);
    if (a.len == b.len && memcmp(a.data, b.data, a.len) == 0) {
        buf_printf(report, "ok: %zu bytes of state, identical from the full log and from "
                           "recovery (%zu machines, %zu instances)\n",
                   a.len, full->n_machines, full->n_instances + full->n_deleted);
    } else {
        size_t i = 0;
        while (i < a.len && i < b.len && a.data[i] == b.data[i]) i++;
        size_t from = i > 60 ? i - 60 : 0;
        buf_printf(report, "MISMATCH at byte %zu of the state dump\n  full replay: %.120s\n"
                           "  recovery:    %.120s\n",
                   i, a.data + from, b.data + from);
        rc = stm_fail(err, STM_INTERNAL_ERROR,
                      "recovery and a full replay disagree at byte %zu of the state", i);
    }
    buf_free(&a);
    buf_free(&b);
    eng_close(full);
    eng_close(normal);
    return rc;
}
