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

/* The members of one snapshot line, found in one pass over its object:
 * a lookup per field walked the members again each time (a line has up to
 * eleven). Lines of each kind use some of them (compact.c writes them). */
typedef struct {
    const cJSON *chain, *created_at, *ctx, *def, *deleted, *end, *event_id, *format, *fp, *i,
        *instances, *k, *keys, *last_off, *last_seq, *m, *machine, *off, *offset, *result, *scope,
        *seq, *state, *ts, *type, *updated_at, *v, *version;
} members;

static void scan_members(const cJSON *o, members *f)
{
    memset(f, 0, sizeof *f);
    for (const cJSON *c = o->child; c; c = c->next) {
        const char *k = c->string;
        const cJSON **slot = NULL;
#define NAME(name)                                                                                \
    if (!slot && strcmp(k, #name) == 0) slot = &f->name;
        switch (k[0]) {
        case 'c': NAME(ctx) NAME(chain) NAME(created_at) break;
        case 'd': NAME(def) NAME(deleted) break;
        case 'e': NAME(end) NAME(event_id) break;
        case 'f': NAME(fp) NAME(format) break;
        case 'i': NAME(i) NAME(instances) break;
        case 'k': NAME(k) NAME(keys) break;
        case 'l': NAME(last_off) NAME(last_seq) break;
        case 'm': NAME(m) NAME(machine) break;
        case 'o': NAME(off) NAME(offset) break;
        case 'r': NAME(result) break;
        case 's': NAME(seq) NAME(state) NAME(scope) break;
        case 't': NAME(ts) NAME(type) break;
        case 'u': NAME(updated_at) break;
        case 'v': NAME(v) NAME(version) break;
        default: break;
        }
#undef NAME
        if (slot) *slot = c;
    }
}

static const char *str_of(const cJSON *v)
{
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The text of a context or a key's result. The snapshot holds it canonical
 * already (keys sorted), and the parse keeps the members' order, so writing
 * the tree back as it stands gives the same bytes without sorting them
 * again (the sort was a tenth of a load). */
static char *own_text(const cJSON *v)
{
    buf b = {0};
    json_write(&b, v, false);
    return buf_detach(&b, NULL);
}

/* Every line is parsed into one arena, dropped before the next: building
 * and freeing a tree node by node was a third of a load's instructions
 * (callgrind, 30,000 instances with keys: 1,464 million, 982 with the
 * arena). Nothing of a line's tree outlives it. */
static stm_code load_lines(eng *e, const char *path, const char *data, size_t len,
                           json_arena *a, stm_err *err);

static stm_code load_one(eng *e, const char *path, const char *data, size_t len, stm_err *err)
{
    json_arena *a = json_arena_new();
    stm_code rc = load_lines(e, path, data, len, a, err);
    json_arena_free(a);
    return rc;
}

static stm_code load_lines(eng *e, const char *path, const char *data, size_t len,
                           json_arena *a, stm_err *err)
{
    size_t pos = 0;
    instance *cur = NULL;
    bool header = true;
    members f;
    while (pos < len) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t line_len = end - pos + 1;
        const char *line = data + pos;
        json_arena_reset(a);
        cJSON *o = json_parse_arena_own(a, line, end - pos, err);
        if (!cJSON_IsObject(o))
            return stm_fail(err, STM_INTERNAL_ERROR, "%s: bad line at byte %zu", path, pos);
        scan_members(o, &f);
        if (cur && f.offset && !header) {
            /* a history line of the current instance */
            if (cur->n_hist == cur->cap_hist) {
                cur->cap_hist = cur->cap_hist ? cur->cap_hist * 2 : 4;
                cur->hist = xrealloc(cur->hist, cur->cap_hist * sizeof *cur->hist);
            }
            hist_entry *he = &cur->hist[cur->n_hist++];
            memset(he, 0, sizeof *he);
            json_get_uint(f.offset, UINT64_MAX, &he->offset);
            json_get_uint(f.seq, UINT64_MAX, &he->seq);
            if (str_of(f.chain)) wal_unhex(f.chain->valuestring, he->chain);
            he->line_len = (uint32_t)line_len;
            he->snap_pos = pos;
            cur->hist_bytes += line_len;
        } else if (header) {
            header = false;
            const char *fmt = str_of(f.format);
            if (!fmt || strcmp(fmt, "stmfs-db-snapshot") != 0)
                return stm_fail(err, STM_INTERNAL_ERROR, "%s: not a database snapshot", path);
            json_get_uint(f.offset, UINT64_MAX, &e->snap_offset);
            json_get_uint(f.seq, UINT64_MAX, &e->snap_seq);
            /* sizes for the tables (snapshots before these counts have
             * none); no more than the file has room for: a line of either
             * kind takes more than 32 bytes */
            uint64_t n = 0;
            if (json_get_uint(f.instances, len / 32, &n)) htab_reserve(&e->itab, n);
            if (json_get_uint(f.keys, len / 32, &n)) htab_reserve(&e->ktab, n);
        } else if (f.m) {
            const char *name = str_of(f.m);
            uint64_t v = 0, off = 0, seq = 0, ts = 0;
            if (!name || !cJSON_IsObject(f.def) || !json_get_uint(f.v, UINT32_MAX, &v))
                return stm_fail(err, STM_INTERNAL_ERROR, "%s: bad machine line at byte %zu", path, pos);
            json_get_uint(f.off, UINT64_MAX, &off);
            json_get_uint(f.seq, UINT64_MAX, &seq);
            json_get_uint(f.ts, UINT64_MAX, &ts);
            /* Reuse the record path so a snapshot machine is built as replay builds it. */
            cJSON *entry = cJSON_CreateObject();
            cJSON_AddStringToObject(entry, "type", "put_machine");
            cJSON_AddStringToObject(entry, "machine", name);
            cJSON_AddNumberToObject(entry, "version", (double)v);
            cJSON_AddItemToObject(entry, "definition", cJSON_Duplicate(f.def, true));
            cJSON_AddNumberToObject(entry, "ts", (double)ts);
            wal_record rec = {.offset = off, .seq = seq, .type = WAL_T_PUT_MACHINE};
            buf text = {0}, store = {0};
            entry_fields ef;
            json_write(&text, entry, true);
            cJSON_Delete(entry);
            entry_scan(text.data, text.len, &store, &ef);
            bool saved = e->replaying;
            e->replaying = true;
            e->dry_run = true; /* no entries accounting, no history: not a live record */
            eng_apply_record(e, &rec, &ef, err);
            e->dry_run = false;
            e->replaying = saved;
            e->n_undo = 0;
            buf_free(&text);
            buf_free(&store);
        } else if (f.i) {
            const char *id = str_of(f.i), *mname = str_of(f.machine), *state = str_of(f.state);
            uint64_t v = 0;
            if (!id || !mname || !state || !f.ctx || !json_get_uint(f.version, UINT32_MAX, &v) ||
                inst_find(e, id) || !machine_find(e, mname))
                return stm_fail(err, STM_INTERNAL_ERROR,
                                "%s: bad instance line at byte %zu (a field is missing, the id "
                                "repeats or the machine is unknown)",
                                path, pos);
            cur = inst_add(e, id);
            cur->m = machine_find(e, mname);
            cur->mv = mversion_or_placeholder(cur->m, (uint32_t)v);
            cur->state = intern(e, state);
            cur->ctx = own_text(f.ctx);
            const char *eid = str_of(f.event_id);
            cur->last_event_id = eid ? xstrdup(eid) : NULL;
            json_get_uint(f.last_off, UINT64_MAX, &cur->last_offset);
            json_get_uint(f.last_seq, UINT64_MAX, &cur->last_seq);
            cur->created_at = json_int64(f.created_at);
            cur->updated_at = json_int64(f.updated_at);
            cur->deleted = cJSON_IsTrue(f.deleted);
            inst_count(e, cur, +1);
        } else if (f.k) {
            uint64_t type = 0, off = 0, seq = 0, fp = 0;
            const char *key = str_of(f.k), *scope = str_of(f.scope);
            if (!key || !scope || !f.result)
                return stm_fail(err, STM_INTERNAL_ERROR, "%s: bad key line at byte %zu", path, pos);
            json_get_uint(f.type, 255, &type);
            json_get_uint(f.off, UINT64_MAX, &off);
            json_get_uint(f.seq, UINT64_MAX, &seq);
            const char *fpv = str_of(f.fp);
            if (fpv) fp = strtoull(fpv, NULL, 16);
            idem_entry *k = idem_put(e, scope, key, (uint8_t)type, fp, off, seq);
            if (k && !k->result) k->result = own_text(f.result);
        } else if (f.end) {
            break;
        }
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

