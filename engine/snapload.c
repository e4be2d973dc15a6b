/*
 * snapload.c - loading the newest database snapshot at startup, before
 * the WAL's replay (the format is in compact.c, which writes it), and
 * removing the temp files a crash left behind. API in internal.h.
 */
#include "engine/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/log.h"
#include "base/util.h"
#include "wal/io.h"

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    buf b = {0};
    char chunk[1 << 16];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&b, chunk, n);
    fclose(f);
    return buf_detach(&b, len);
}

static int cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Checks the trailer; returns the byte count it covers, or 0 if damaged. */
static size_t verify_trailer(const char *data, size_t len)
{
    if (len < 2 || data[len - 1] != '\n') return 0;
    size_t start = len - 1;
    while (start > 0 && data[start - 1] != '\n') start--;
    cJSON *t = json_parse(data + start, len - start, NULL);
    uint64_t bytes = 0;
    const cJSON *crc = json_get(t, "crc");
    bool ok = t && json_get_uint(json_get(t, "bytes"), UINT64_MAX, &bytes) && bytes == start &&
              cJSON_IsString(crc);
    if (ok) {
        char want[9];
        snprintf(want, sizeof want, "%08x", crc32c(0, data, start));
        ok = strcmp(want, crc->valuestring) == 0;
    }
    cJSON_Delete(t);
    return ok ? start : 0;
}

static const char *str_or_null(const cJSON *o, const char *key)
{
    const cJSON *v = json_get(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static stm_code load_one(eng *e, const char *path, const char *data, size_t len, stm_err *err)
{
    size_t pos = 0;
    instance *cur = NULL;
    bool header = true;
    while (pos < len) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t line_len = end - pos + 1;
        const char *line = data + pos;
        if (cur && line[0] == '{' && strncmp(line, "{\"offset\":", 10) == 0) {
            /* a history line of the current instance */
            cJSON *h = json_parse(line, end - pos, err);
            if (!h) return stm_fail(err, STM_INTERNAL_ERROR, "%s: bad history line at byte %zu", path, pos);
            if (cur->n_hist == cur->cap_hist) {
                cur->cap_hist = cur->cap_hist ? cur->cap_hist * 2 : 4;
                cur->hist = xrealloc(cur->hist, cur->cap_hist * sizeof *cur->hist);
            }
            hist_entry *he = &cur->hist[cur->n_hist++];
            memset(he, 0, sizeof *he);
            json_get_uint(json_get(h, "offset"), UINT64_MAX, &he->offset);
            json_get_uint(json_get(h, "seq"), UINT64_MAX, &he->seq);
            const cJSON *c = json_get(h, "chain");
            if (cJSON_IsString(c)) wal_unhex(c->valuestring, he->chain);
            he->line_len = (uint32_t)line_len;
            he->snap_pos = pos;
            cur->hist_bytes += line_len;
            cJSON_Delete(h);
            pos = end + 1;
            continue;
        }
        cJSON *o = json_parse(line, end - pos, err);
        if (!o) return stm_fail(err, STM_INTERNAL_ERROR, "%s: bad line at byte %zu", path, pos);
        if (header) {
            header = false;
            const cJSON *fmt = json_get(o, "format");
            if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "stmfs-db-snapshot") != 0) {
                cJSON_Delete(o);
                return stm_fail(err, STM_INTERNAL_ERROR, "%s: not a database snapshot", path);
            }
            json_get_uint(json_get(o, "offset"), UINT64_MAX, &e->snap_offset);
            json_get_uint(json_get(o, "seq"), UINT64_MAX, &e->snap_seq);
        } else if (json_get(o, "m")) {
            const char *name = str_or_null(o, "m");
            const cJSON *defj = json_get(o, "def");
            uint64_t v = 0, off = 0, seq = 0, ts = 0;
            if (!name || !cJSON_IsObject(defj) || !json_get_uint(json_get(o, "v"), UINT32_MAX, &v)) {
                cJSON_Delete(o);
                return stm_fail(err, STM_INTERNAL_ERROR, "%s: bad machine line at byte %zu", path, pos);
            }
            json_get_uint(json_get(o, "off"), UINT64_MAX, &off);
            json_get_uint(json_get(o, "seq"), UINT64_MAX, &seq);
            json_get_uint(json_get(o, "ts"), UINT64_MAX, &ts);
            /* Reuse the record path so a snapshot machine is built as replay builds it. */
            cJSON *entry = cJSON_CreateObject();
            cJSON_AddStringToObject(entry, "type", "put_machine");
            cJSON_AddStringToObject(entry, "machine", name);
            cJSON_AddNumberToObject(entry, "version", (double)v);
            cJSON_AddItemToObject(entry, "definition", cJSON_Duplicate(defj, true));
            cJSON_AddNumberToObject(entry, "ts", (double)ts);
            wal_record rec = {.offset = off, .seq = seq, .type = WAL_T_PUT_MACHINE};
            buf text = {0}, store = {0};
            entry_fields f;
            json_write(&text, entry, true);
            cJSON_Delete(entry);
            entry_scan(text.data, text.len, &store, &f);
            bool saved = e->replaying;
            e->replaying = true;
            e->dry_run = true; /* no entries accounting, no history: not a live record */
            eng_apply_record(e, &rec, &f, err);
            e->dry_run = false;
            e->replaying = saved;
            e->n_undo = 0;
            buf_free(&text);
            buf_free(&store);
        } else if (json_get(o, "i")) {
            const char *id = str_or_null(o, "i");
            const char *mname = str_or_null(o, "machine");
            const char *state = str_or_null(o, "state");
            uint64_t v = 0;
            if (!id || !mname || !state || !json_get(o, "ctx") ||
                !json_get_uint(json_get(o, "version"), UINT32_MAX, &v) || inst_find(e, id) ||
                !machine_find(e, mname)) {
                cJSON_Delete(o);
                return stm_fail(err, STM_INTERNAL_ERROR,
                                "%s: bad instance line at byte %zu (a field is missing, the id "
                                "repeats or the machine is unknown)",
                                path, pos);
            }
            cur = inst_add(e, id);
            cur->m = machine_find(e, mname);
            cur->mv = mversion_or_placeholder(cur->m, (uint32_t)v);
            cur->state = intern(e, state);
            cur->ctx = json_canonical(json_get(o, "ctx"), NULL);
            const char *eid = str_or_null(o, "event_id");
            cur->last_event_id = eid ? xstrdup(eid) : NULL;
            json_get_uint(json_get(o, "last_off"), UINT64_MAX, &cur->last_offset);
            json_get_uint(json_get(o, "last_seq"), UINT64_MAX, &cur->last_seq);
            const cJSON *ca = json_get(o, "created_at"), *ua = json_get(o, "updated_at");
            cur->created_at = json_int64(ca);
            cur->updated_at = json_int64(ua);
            cur->deleted = cJSON_IsTrue(json_get(o, "deleted"));
            inst_count(e, cur, +1);
        } else if (json_get(o, "k")) {
            uint64_t type = 0, off = 0, seq = 0, fp = 0;
            const char *key = str_or_null(o, "k"), *scope = str_or_null(o, "scope");
            if (!key || !scope || !json_get(o, "result")) {
                cJSON_Delete(o);
                return stm_fail(err, STM_INTERNAL_ERROR, "%s: bad key line at byte %zu", path, pos);
            }
            json_get_uint(json_get(o, "type"), 255, &type);
            json_get_uint(json_get(o, "off"), UINT64_MAX, &off);
            json_get_uint(json_get(o, "seq"), UINT64_MAX, &seq);
            const char *fpv = str_or_null(o, "fp");
            if (fpv) fp = strtoull(fpv, NULL, 16);
            idem_put(e, scope, key, (uint8_t)type, fp, off, seq);
            idem_entry *k = idem_find(e, scope, key);
            if (k && !k->result) k->result = json_canonical(json_get(o, "result"), NULL);
        } else if (json_get(o, "end")) {
            cJSON_Delete(o);
            break;
        }
        cJSON_Delete(o);
        pos = end + 1;
    }
    e->applied_offset = e->snap_offset;
    e->applied_seq = e->snap_seq;
    return STM_OK;
}

/* A snapshot is written to NAME.snap.tmp and renamed into place; a crash
 * (kill -9, power loss) before the rename leaves the temp file behind, as
 * big as a snapshot, and nothing else would ever remove it. Only the
 * process that holds the log's lock writes snapshots, and it has written
 * none yet when it opens, so every such file is stale. Database snapshots
 * (db-*.snap.tmp) and SNAPSHOT_INSTANCE's (.snap-*.snap.tmp) alike. */
void snap_remove_stale_tmp(eng *e)
{
    if (e->opts.read_only) return;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/snapshots", e->data_dir);
    DIR *d = opendir(dir);
    if (!d) return;
    static const char suffix[] = ".snap.tmp";
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n <= sizeof suffix - 1 || strcmp(de->d_name + n - (sizeof suffix - 1), suffix) != 0)
            continue;
        char path[4600];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        long long size = stat(path, &st) == 0 ? (long long)st.st_size : -1;
        if (eng_io(e)->unlink(path) == 0)
            log_warn("removed %s (%lld bytes): a snapshot that a crash interrupted before it "
                     "was complete",
                     path, size);
        else
            log_warn("cannot remove the unfinished snapshot %s: %s", path, strerror(errno));
    }
    closedir(d);
}

stm_code snap_load(eng *e, stm_err *err)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/snapshots", e->data_dir);
    DIR *d = opendir(dir);
    if (!d) return STM_OK;
    uint64_t offs[256];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256) {
        unsigned long long off;
        char tail[8];
        if (sscanf(de->d_name, "db-%16llx.%5s", &off, tail) == 2 && strcmp(tail, "snap") == 0)
            offs[n++] = off;
    }
    closedir(d);
    qsort(offs, n, sizeof *offs, cmp_desc);
    for (size_t i = 0; i < n; i++) {
        char path[4200];
        snap_path(e, offs[i], path, sizeof path);
        size_t len;
        char *data = read_all(path, &len);
        size_t body = data ? verify_trailer(data, len) : 0;
        if (!body) {
            log_warn("snapshot %s is damaged (its checksum does not hold); trying an older one",
                     path);
            if (!e->snap_damaged) e->snap_damaged = xstrdup(path);
            free(data);
            continue;
        }
        stm_code rc = load_one(e, path, data, body, err);
        free(data);
        if (rc != STM_OK) return rc;
        e->snap_fd = open(path, O_RDONLY | O_CLOEXEC);
        return STM_OK;
    }
    return STM_OK;
}

