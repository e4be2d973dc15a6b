/*
 * snapshot.c - SNAPSHOT_INSTANCE, COMPACT, and materialising the state at
 * any point of the log (stmfs replay).
 *
 * SNAPSHOT_INSTANCE writes rstmdb's per-instance snapshot file (pretty JSON,
 * snapshots/snap-<uuid>.snap, indexed in snapshots/index.json), atomically:
 * temp file, fsync, rename, fsync of the directory.
 */
#include "engine/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/util.h"
#include "wal/io.h"

/* Writes dir/name whole or not at all (dfile.c). */
static stm_code write_atomic(eng *e, const char *dir, const char *name, const char *data,
                             size_t len, stm_err *err)
{
    char tmp[4400], path[4300];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    dfile f;
    stm_code rc = dfile_open(&f, eng_io(e), dir, path, tmp, err);
    if (rc != STM_OK) return rc;
    buf_add(&f.pend, data, len);
    return dfile_commit(&f, err);
}

/* Adds 2-space indentation to compact canonical JSON (strings respected). */
static void pretty(buf *out, const char *s)
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
        switch (c) {
        case '"': in_str = true; buf_putc(out, c); break;
        case '{':
        case '[':
            buf_putc(out, c);
            if (p[1] == '}' || p[1] == ']') {
                buf_putc(out, *++p);
                break;
            }
            depth++;
            buf_putc(out, '\n');
            for (int i = 0; i < depth; i++) buf_puts(out, "  ");
            break;
        case '}':
        case ']':
            depth--;
            buf_putc(out, '\n');
            for (int i = 0; i < depth; i++) buf_puts(out, "  ");
            buf_putc(out, c);
            break;
        case ',':
            buf_putc(out, c);
            buf_putc(out, '\n');
            for (int i = 0; i < depth; i++) buf_puts(out, "  ");
            break;
        case ':': buf_puts(out, ": "); break;
        default: buf_putc(out, c);
        }
    }
}

stm_code snap_instance(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    const cJSON *idv = json_get(p, "instance_id");
    if (!cJSON_IsString(idv))
        return stm_fail(err, STM_BAD_REQUEST, "invalid request: missing instance_id");
    instance *in = inst_find(e, idv->valuestring);
    if (!in || in->deleted)
        return stm_fail(err, STM_INSTANCE_NOT_FOUND, "instance not found: %s", idv->valuestring);
    if (e->opts.read_only)
        return stm_fail(err, STM_BAD_REQUEST, "the database is open read-only");
    char uuid[37], sid[48];
    util_uuid4(uuid);
    snprintf(sid, sizeof sid, "snap-%s", uuid);
    /* rstmdb's key order: snapshot_id, instance_id, machine, version, state,
     * ctx, wal_offset, created_at */
    buf c = {0};
    buf_puts(&c, "{\"snapshot_id\":");
    json_write_str(&c, sid);
    buf_puts(&c, ",\"instance_id\":");
    json_write_str(&c, in->id);
    buf_puts(&c, ",\"machine\":");
    json_write_str(&c, in->m->name);
    buf_printf(&c, ",\"version\":%u,\"state\":", in->mv->version);
    json_write_str(&c, in->state);
    buf_printf(&c, ",\"ctx\":%s,\"wal_offset\":%llu,\"created_at\":%lld}", in->ctx,
               (unsigned long long)in->last_offset, (long long)util_now_ms());
    buf text = {0};
    pretty(&text, buf_cstr(&c));
    buf_free(&c);
    char dir[4096], name[64];
    snprintf(dir, sizeof dir, "%s/snapshots", e->data_dir);
    snprintf(name, sizeof name, "%s.snap", sid);
    stm_code rc = write_atomic(e, dir, name, text.data, text.len, err);
    if (rc != STM_OK) {
        buf_free(&text);
        return rc;
    }
    char cs[9];
    snprintf(cs, sizeof cs, "%08x", crc32c(0, text.data, text.len));
    /* index.json: latest snapshot per instance */
    char ipath[4200];
    snprintf(ipath, sizeof ipath, "%s/index.json", dir);
    cJSON *index = NULL;
    FILE *f = fopen(ipath, "r");
    if (f) {
        buf ib = {0};
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&ib, chunk, n);
        fclose(f);
        index = json_parse(ib.data ? ib.data : "", ib.len, NULL);
        buf_free(&ib);
    }
    if (!cJSON_IsObject(index)) {
        cJSON_Delete(index);
        index = cJSON_CreateObject();
    }
    cJSON *ent = cJSON_CreateObject();
    cJSON_AddStringToObject(ent, "snapshot_id", sid);
    cJSON_AddStringToObject(ent, "instance_id", in->id);
    cJSON_AddNumberToObject(ent, "wal_offset", (double)in->last_offset);
    cJSON_AddNumberToObject(ent, "created_at", (double)util_now_ms());
    cJSON_AddNumberToObject(ent, "size_bytes", (double)text.len);
    cJSON_AddStringToObject(ent, "checksum", cs);
    cJSON_DeleteItemFromObjectCaseSensitive(index, in->id);
    cJSON_AddItemToObject(index, in->id, ent);
    buf ic = {0}, ip = {0};
    json_write(&ic, index, true);
    pretty(&ip, buf_cstr(&ic));
    cJSON_Delete(index);
    rc = write_atomic(e, dir, "index.json", ip.data, ip.len, err);
    buf_free(&ic);
    buf_free(&ip);
    if (rc != STM_OK) {
        buf_free(&text);
        return rc;
    }
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "checksum", cs);
    cJSON_AddStringToObject(r, "instance_id", in->id);
    cJSON_AddNumberToObject(r, "size_bytes", (double)text.len);
    cJSON_AddStringToObject(r, "snapshot_id", sid);
    cJSON_AddNumberToObject(r, "wal_offset", (double)in->last_offset);
    buf_free(&text);
    *seq = in->last_seq;
    *res = r;
    return STM_OK;
}

static size_t count_snapshots(eng *e)
{
    char ipath[4200];
    snprintf(ipath, sizeof ipath, "%s/snapshots/index.json", e->data_dir);
    FILE *f = fopen(ipath, "r");
    if (!f) return 0;
    buf ib = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&ib, chunk, n);
    fclose(f);
    cJSON *index = json_parse(ib.data ? ib.data : "", ib.len, NULL);
    buf_free(&ib);
    size_t count = (size_t)cJSON_GetArraySize(index);
    cJSON_Delete(index);
    return count;
}

/* COMPACT: a database snapshot, then the WAL segments it covers go. Unlike
 * rstmdb, nothing is lost: see compact.c. force_snapshot is accepted; a
 * snapshot is taken whenever anything changed since the last one. */
stm_code snap_compact(eng *e, const cJSON *p, cJSON **res, uint64_t *seq, stm_err *err)
{
    (void)p;
    bool created;
    uint64_t segs, bytes;
    stm_code rc = snap_compact_now(e, &created, &segs, &bytes, err);
    if (rc != STM_OK) return rc;
    wal_stats st;
    wal_get_stats(e->w, &st);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "bytes_reclaimed", (double)bytes);
    cJSON_AddNumberToObject(r, "segments_deleted", (double)segs);
    cJSON_AddNumberToObject(r, "snapshots_created", created ? 1 : 0);
    cJSON_AddNumberToObject(r, "total_snapshots",
                            (double)(count_snapshots(e) + (e->snap_fd >= 0 ? 1 : 0)));
    cJSON_AddNumberToObject(r, "wal_segments", (double)st.segment_count);
    *seq = 0;
    *res = r;
    return STM_OK;
}
