/*
 * compact.c - database snapshots and compaction that never lose data.
 *
 * A database snapshot is one file, snapshots/db-<offset as 16 hex>.snap,
 * holding everything the WAL up to that record produced, as JSON lines:
 *   {"format":"stmfs-db-snapshot","version":1,"offset":X,"seq":S,"created_at":ms,
 *    "instances":N,"keys":K}                     at most N instances, K keys follow
 *   {"m":name,"v":version,"def":{submitted},"ts":..,"off":..,"seq":..}   a machine version
 *   {"i":id,"machine":..,"version":..,"state":..,"ctx":{..},...}         an instance, then
 *   <its history lines, verbatim as the history file shows them>
 *   {"k":key,"scope":..,"type":..,"fp":"..","off":..,"seq":..,"result":{..}}  idempotency keys
 *   {"end":true,"bytes":N,"crc":"xxxxxxxx"}      CRC-32C of the N bytes before it
 * It is written to a temp file, fsynced, renamed into place and the
 * directory fsynced; only then are WAL segments deleted, and only segments
 * wholly before the segment holding the snapshot's last record. So at every
 * moment either the old log or the new snapshot holds every machine,
 * instance, context, history line and idempotency key.
 *
 * Startup loads the newest snapshot whose CRC holds (snapload.c; falling
 * back to older ones) and replays only the records after it. History lines
 * whose records were compacted away are read from the snapshot file.
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

void snap_path(eng *e, uint64_t offset, char *out, size_t n)
{
    snprintf(out, n, "%s/snapshots/db-%016llx.snap", e->data_dir, (unsigned long long)offset);
}

/* Once the copy is done: captures of instances an undo removed meanwhile
 * were never taken (e->lock held), and at close. */
static void caps_free(eng *e)
{
    for (size_t i = 0; i < e->n_caps; i++) free(e->caps[i]);
    free(e->caps);
    e->caps = NULL;
    e->n_caps = e->cap_caps = 0;
}

void snap_close(eng *e)
{
    if (e->snap_fd >= 0) close(e->snap_fd);
    if (e->snap_next_fd >= 0) close(e->snap_next_fd);
    e->snap_fd = e->snap_next_fd = -1;
    free(e->cap_cursor);
    e->cap_cursor = NULL;
    caps_free(e);
}

stm_code snap_read_line(eng *e, uint64_t pos, uint32_t len, buf *out, stm_err *err)
{
    int fd = (pos & SNAP_POS_GEN) == e->snap_gen ? e->snap_fd : e->snap_next_fd;
    if (fd < 0)
        return stm_fail(err, STM_INTERNAL_ERROR,
                        "a history line points into a snapshot that is not open");
    buf_reserve(out, len);
    ssize_t n = pread(fd, out->data + out->len, len, (off_t)(pos & ~SNAP_POS_GEN));
    if (n != (ssize_t)len)
        return stm_fail(err, STM_WAL_IO_ERROR, "cannot read a history line from the snapshot: %s",
                        n < 0 ? strerror(errno) : "short read");
    out->len += len;
    out->data[out->len] = 0;
    return STM_OK;
}

/* ---- writing ------------------------------------------------------------ */

static void write_machine_lines(eng *e, buf *out)
{
    for (size_t b = 0; b < e->mtab_size; b++)
        for (machine *m = e->mtab[b]; m; m = m->hnext)
            for (size_t v = 0; v < m->n_versions; v++) {
                mversion *mv = m->versions[v];
                if (!mv->d) continue;
                buf_puts(out, "{\"m\":");
                json_write_str(out, m->name);
                buf_printf(out, ",\"v\":%u,\"def\":%s,\"ts\":%lld,\"off\":%llu,\"seq\":%llu}\n",
                           mv->version, mv->submitted, (long long)mv->created_at,
                           (unsigned long long)mv->offset, (unsigned long long)mv->seq);
            }
}

static void write_instance_line(instance *in, buf *out)
{
    buf_puts(out, "{\"i\":");
    json_write_str(out, in->id);
    buf_puts(out, ",\"machine\":");
    json_write_str(out, in->m->name);
    buf_puts(out, ",\"version\":");
    buf_put_u64(out, in->mv->version);
    buf_puts(out, ",\"state\":");
    json_write_str(out, in->state);
    buf_puts(out, ",\"ctx\":");
    buf_puts(out, in->ctx);
    if (in->last_event_id) {
        buf_puts(out, ",\"event_id\":");
        json_write_str(out, in->last_event_id);
    }
    buf_puts(out, ",\"last_off\":");
    buf_put_u64(out, in->last_offset);
    buf_puts(out, ",\"last_seq\":");
    buf_put_u64(out, in->last_seq);
    buf_puts(out, ",\"created_at\":");
    buf_put_i64(out, in->created_at);
    buf_puts(out, ",\"updated_at\":");
    buf_put_i64(out, in->updated_at);
    buf_puts(out, in->deleted ? ",\"deleted\":true,\"hist\":" : ",\"deleted\":false,\"hist\":");
    buf_put_u64(out, in->n_hist);
    buf_puts(out, "}\n");
}

/* The history line of h, from the snapshot or the WAL; payload and store
 * are the caller's scratch, kept from line to line (a compaction renders
 * every history line of the database). */
static stm_code render_line(eng *e, const hist_entry *h, uint64_t wal_first, buf *out,
                            buf *payload, buf *store, stm_err *err)
{
    if (h->snap_pos && e->snap_fd >= 0 && h->offset < wal_first)
        return snap_read_line(e, h->snap_pos, h->line_len, out, err);
    wal_record rec;
    entry_fields f;
    buf_reset(payload);
    buf_reset(store);
    stm_code rc = wal_read_at(e->w, h->offset, payload, &rec, err);
    if (rc == STM_OK && !entry_scan(payload->data, payload->len, store, &f))
        rc = stm_fail(err, STM_WAL_IO_ERROR, "the WAL record at offset %llu is not JSON",
                      (unsigned long long)h->offset);
    if (rc == STM_OK) eng_render_history(out, rec.type, &f, rec.offset, rec.seq, h->chain);
    return rc;
}

/* The original result of an idempotent request, rebuilt from its record. */
static stm_code key_result(eng *e, const idem_entry *k, buf *out, stm_err *err)
{
    if (k->result) {
        buf_puts(out, k->result);
        return STM_OK;
    }
    buf payload = {0};
    wal_record rec;
    stm_code rc = wal_read_at(e->w, k->offset, &payload, &rec, err);
    cJSON *entry = rc == STM_OK ? json_parse(payload.data, payload.len, err) : NULL;
    buf_free(&payload);
    if (!entry) return STM_WAL_IO_ERROR;
    cJSON *r = cJSON_CreateObject();
    const cJSON *id = json_get(entry, "instance_id");
    if (k->type == WAL_T_CREATE_INSTANCE) {
        cJSON_AddItemToObject(r, "instance_id", cJSON_Duplicate(id, true));
        cJSON_AddItemToObject(r, "state", cJSON_Duplicate(json_get(entry, "initial_state"), true));
    } else if (k->type == WAL_T_APPLY_EVENT) {
        cJSON_AddItemToObject(r, "ctx", cJSON_Duplicate(json_get(entry, "ctx"), true));
        if (json_get(entry, "event_id"))
            cJSON_AddItemToObject(r, "event_id", cJSON_Duplicate(json_get(entry, "event_id"), true));
        cJSON_AddItemToObject(r, "from_state", cJSON_Duplicate(json_get(entry, "from_state"), true));
        cJSON_AddItemToObject(r, "to_state", cJSON_Duplicate(json_get(entry, "to_state"), true));
    } else {
        cJSON_AddBoolToObject(r, "deleted", true);
        cJSON_AddItemToObject(r, "instance_id", cJSON_Duplicate(id, true));
    }
    cJSON_AddNumberToObject(r, "wal_offset", (double)k->offset);
    json_write(out, r, true);
    cJSON_Delete(r);
    cJSON_Delete(entry);
    return STM_OK;
}

/* Deletes db snapshots older than keep. */
static void remove_older(eng *e, uint64_t keep)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/snapshots", e->data_dir);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        unsigned long long off;
        char tail[8];
        if (sscanf(de->d_name, "db-%16llx.%5s", &off, tail) == 2 && strcmp(tail, "snap") == 0 &&
            off < keep) {
            char path[4600];
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            eng_io(e)->unlink(path);
        }
    }
    closedir(d);
}

/* ---- taking the snapshot's content --------------------------------------
 *
 * The snapshot describes the database at S, the last record applied when
 * the compaction begins, but copying 100,000 instances took the engine's
 * lock for 115-150 ms, during which every request of every client and
 * every read of the mount waited. So the copy goes a chunk of instances at
 * a time, in id order, and the instances it has not reached yet are kept
 * as they were at S: the first change to one of them after S saves its
 * line and its count of history entries first (snap_capture_before_change,
 * called with the lock held by the engine's only two paths that change an
 * instance that exists, an event and a delete). Instances created after S
 * are left out (their first history entry is after S); history entries
 * only grow, so those of S are the first n_hist of them. The idempotency
 * keys go the same way: in the FIFO they sit in the order of their
 * records, and eviction only takes its head. */

/* keys, and entries moved to the new file, a chunk at a time */
enum { CAPTURE_CHUNK = 1024 };

struct snap_capture {
    uint32_t n_hist;
    size_t len;
    char line[]; /* the instance's snapshot line at S */
};

static bool born_after(const instance *in, uint64_t S)
{
    return in->n_hist && in->hist[0].seq > S;
}

void snap_capture_before_change(eng *e, instance *in)
{
    if (in->cap || born_after(in, e->cap_seq)) return;
    if (e->cap_cursor && strcmp(in->id, e->cap_cursor) <= 0) return; /* copied already */
    buf line = {0};
    write_instance_line(in, &line);
    struct snap_capture *c = xmalloc(sizeof *c + line.len + 1);
    c->n_hist = in->n_hist;
    c->len = line.len;
    memcpy(c->line, line.data, line.len);
    c->line[line.len] = 0;
    buf_free(&line);
    if (e->n_caps == e->cap_caps) {
        e->cap_caps = e->cap_caps ? 2 * e->cap_caps : 64;
        e->caps = xrealloc(e->caps, e->cap_caps * sizeof *e->caps);
    }
    e->caps[e->n_caps++] = c;
    in->cap = (uint32_t)e->n_caps;
}


/* What compaction takes of the instances. The ids, history entries and
 * snapshot lines of all instances sit in shared buffers: taken one
 * allocation each, 100,000 instances held the lock 30-50 ms longer. */
typedef struct {
    size_t id;       /* in the ids buffer */
    size_t hist;     /* first entry in the hist array */
    uint32_t n_hist;
} plan_inst;

typedef struct {
    plan_inst *inst;
    size_t *iline_at; /* where each instance's line starts in ilines; one more at the end */
    size_t n, cap;
    buf ids, ilines;
    hist_entry *hist;
    size_t n_hist, cap_hist;
} snap_plan;

static void plan_take(eng *e, snap_plan *p, instance *in)
{
    if (p->n + 2 > p->cap) {
        p->cap = p->cap ? 2 * p->cap : 1024;
        p->inst = xrealloc(p->inst, p->cap * sizeof *p->inst);
        p->iline_at = xrealloc(p->iline_at, p->cap * sizeof *p->iline_at);
    }
    plan_inst *pi = &p->inst[p->n];
    p->iline_at[p->n++] = p->ilines.len;
    uint32_t nh = in->n_hist;
    if (in->cap) {
        struct snap_capture *c = e->caps[in->cap - 1];
        buf_add(&p->ilines, c->line, c->len);
        nh = c->n_hist;
        free(c);
        e->caps[in->cap - 1] = NULL;
        in->cap = 0;
    } else {
        write_instance_line(in, &p->ilines);
    }
    pi->id = p->ids.len;
    buf_add(&p->ids, in->id, strlen(in->id) + 1);
    if (p->n_hist + nh > p->cap_hist) {
        p->cap_hist = 2 * (p->n_hist + nh);
        p->hist = xrealloc(p->hist, p->cap_hist * sizeof *p->hist);
    }
    pi->hist = p->n_hist;
    pi->n_hist = nh;
    if (nh) memcpy(p->hist + p->n_hist, in->hist, nh * sizeof *p->hist);
    p->n_hist += nh;
}

static void plan_free(snap_plan *p)
{
    free(p->inst);
    free(p->iline_at);
    buf_free(&p->ids);
    buf_free(&p->ilines);
    free(p->hist);
}

/* Copies every instance of S into p, letting the lock go now and then
 * (inst_walk_next); e->cap_active is set by the caller in the same hold
 * that read S. */
static void capture_instances(eng *e, uint64_t S, snap_plan *p)
{
    pthread_mutex_lock(&e->lock);
    /* e->cap_cursor is the last instance copied whenever the lock is free */
    inst_link_paced(e);
    inst_walk walk = {util_mono_ns(), 0, &e->cap_cursor};
    for (instance *in = inst_after(e, NULL); in; in = inst_walk_next(e, &walk, in))
        if (!born_after(in, S)) plan_take(e, p, in);
    e->cap_active = false;
    free(e->cap_cursor);
    e->cap_cursor = NULL;
    caps_free(e);
    pthread_mutex_unlock(&e->lock);
    if (!p->iline_at) p->iline_at = xmalloc(sizeof *p->iline_at);
    p->iline_at[p->n] = p->ilines.len;
}

typedef struct {
    idem_entry *k; /* copies; their strings in text, pointed at once it stops moving */
    size_t (*at)[3];
    size_t n, cap;
    buf text;
} key_plan;

/* Copies the idempotency keys of records up to S, a chunk at a time. A key
 * that the last chunk stopped at may be evicted meanwhile: then every key
 * before the FIFO's new head went too, and the copy goes on from there. */
static void capture_keys(eng *e, uint64_t S, key_plan *kp)
{
    idem_entry *next = NULL;
    uint64_t next_seq = 0;
    for (bool first = true; first || next; first = false) {
        pthread_mutex_lock(&e->lock);
        idem_entry *k = next;
        if (first || !e->fifo_head || e->fifo_head->seq > next_seq) k = e->fifo_head;
        for (size_t taken = 0; k && k->seq <= S && taken < CAPTURE_CHUNK; k = k->fifo_next) {
            if (kp->n == kp->cap) {
                kp->cap = kp->cap ? 2 * kp->cap : 256;
                kp->k = xrealloc(kp->k, kp->cap * sizeof *kp->k);
                kp->at = xrealloc(kp->at, kp->cap * sizeof *kp->at);
            }
            kp->k[kp->n] = *k;
            kp->at[kp->n][0] = kp->text.len;
            buf_add(&kp->text, k->scope, strlen(k->scope) + 1);
            kp->at[kp->n][1] = kp->text.len;
            buf_add(&kp->text, k->key, strlen(k->key) + 1);
            kp->at[kp->n][2] = SIZE_MAX;
            if (k->result) {
                kp->at[kp->n][2] = kp->text.len;
                buf_add(&kp->text, k->result, strlen(k->result) + 1);
            }
            kp->n++;
            taken++;
        }
        next = k && k->seq <= S ? k : NULL;
        next_seq = next ? next->seq : 0;
        pthread_mutex_unlock(&e->lock);
        if (next) lock_pause();
    }
    for (size_t j = 0; j < kp->n; j++) {
        idem_entry *kc = &kp->k[j];
        kc->scope = kp->text.data + kp->at[j][0];
        kc->key = kp->text.data + kp->at[j][1];
        kc->result = kp->at[j][2] == SIZE_MAX ? NULL : kp->text.data + kp->at[j][2];
        kc->hnext = kc->fifo_next = NULL;
    }
}

/* Points the history entries of the plan at their lines in the new
 * snapshot (open on fd), a chunk of instances at a time. Until the last
 * chunk is done, lines are read from both files, told apart by the entry's
 * SNAP_POS_GEN bit; then the old file closes. */
static void repoint_entries(eng *e, const snap_plan *p, const uint64_t *new_pos, int fd,
                            uint64_t X, uint64_t S)
{
    pthread_mutex_lock(&e->lock);
    uint64_t gen = e->snap_gen ^ SNAP_POS_GEN;
    e->snap_next_fd = fd;
    pthread_mutex_unlock(&e->lock);
    for (size_t j0 = 0; j0 < p->n; j0 += CAPTURE_CHUNK) {
        pthread_mutex_lock(&e->lock);
        for (size_t j = j0; j < p->n && j < j0 + CAPTURE_CHUNK; j++) {
            instance *in = inst_find(e, p->ids.data + p->inst[j].id);
            if (!in) continue;
            for (uint32_t h = 0; h < p->inst[j].n_hist && h < in->n_hist; h++)
                in->hist[h].snap_pos = new_pos[p->inst[j].hist + h] | gen;
        }
        pthread_mutex_unlock(&e->lock);
        lock_pause();
    }
    pthread_mutex_lock(&e->lock);
    if (e->snap_fd >= 0) close(e->snap_fd);
    e->snap_fd = fd;
    e->snap_next_fd = -1;
    e->snap_gen = gen;
    e->snap_offset = X;
    e->snap_seq = S;
    __atomic_store_n(&e->events_since_compact, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&e->lock);
}

stm_code snap_compact_now(eng *e, bool *created, uint64_t *segments, uint64_t *bytes,
                          stm_err *err)
{
    *created = false;
    *segments = *bytes = 0;
    if (e->opts.read_only) return stm_fail(err, STM_BAD_REQUEST, "the database is open read-only");
    pthread_mutex_lock(&e->compact_lock);
    stm_code rc = STM_OK;
    pthread_mutex_lock(&e->lock);
    uint64_t X = e->applied_offset, S = e->applied_seq;
    bool fresh = S > e->snap_seq || e->snap_fd < 0;
    buf head = {0};
    snap_plan plan = {0};
    key_plan kp = {0};
    uint64_t *new_pos = NULL;
    char **key_results = NULL;
    if (fresh && S > 0) {
        /* instances and keys: at most this many follow (what the loader
         * sizes its tables for; readers before them ignore them) */
        buf_printf(&head,
                   "{\"format\":\"stmfs-db-snapshot\",\"version\":1,\"offset\":%llu,\"seq\":%llu,"
                   "\"created_at\":%lld,\"instances\":%zu,\"keys\":%zu}\n",
                   (unsigned long long)X, (unsigned long long)S, (long long)util_now_ms(),
                   e->n_instances + e->n_deleted, e->n_keys);
        write_machine_lines(e, &head);
        e->cap_active = true;
        e->cap_seq = S;
        free(e->cap_cursor);
        e->cap_cursor = NULL;
        pthread_mutex_unlock(&e->lock);
        capture_instances(e, S, &plan);
        capture_keys(e, S, &kp);
        new_pos = xcalloc(plan.n_hist + 1, sizeof *new_pos);
        key_results = xcalloc(kp.n + 1, sizeof *key_results);

        /* Everything in the snapshot must be on disk before it stands in for
         * the log, whatever the policy: a snapshot ahead of the log after a
         * power loss would describe records that no longer exist. */
        rc = eng_wait(e, S, err);
        if (rc == STM_OK) rc = eng_sync(e, err);
        /* the snapshot goes to its file as it is rendered (dfile.c) */
        dfile sw;
        bool writing = false;
        char path[4200], tmp[4300], dir[4200];
        snap_path(e, X, path, sizeof path);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        snprintf(dir, sizeof dir, "%s/snapshots", e->data_dir);
        if (rc == STM_OK) rc = dfile_open(&sw, eng_io(e), dir, path, tmp, err);
        if (rc == STM_OK) {
            writing = true;
            buf_add(&sw.pend, head.data, head.len);
        }
        wal_stats st;
        wal_get_stats(e->w, &st);
        buf payload = {0}, store = {0};
        for (size_t j = 0; j < plan.n && rc == STM_OK; j++) {
            buf_add(&sw.pend, plan.ilines.data + plan.iline_at[j],
                    plan.iline_at[j + 1] - plan.iline_at[j]);
            for (uint32_t h = 0; h < plan.inst[j].n_hist && rc == STM_OK; h++) {
                new_pos[plan.inst[j].hist + h] = dfile_pos(&sw);
                rc = render_line(e, &plan.hist[plan.inst[j].hist + h], st.first_offset, &sw.pend,
                                 &payload, &store, err);
            }
            dfile_maybe_flush(&sw);
            if (sw.error) break; /* dfile_commit reports it */
        }
        buf_free(&payload);
        buf_free(&store);
        /* Keys: their records may be compacted, so carry their results,
         * rendered from the copies, without the lock. Only those still
         * kept go in: eviction takes the oldest first, so those from the
         * FIFO's head on (a head newer than S: none). */
        pthread_mutex_lock(&e->lock);
        uint64_t head_seq = e->fifo_head ? e->fifo_head->seq : UINT64_MAX;
        pthread_mutex_unlock(&e->lock);
        size_t first_kept = 0;
        while (first_kept < kp.n && kp.k[first_kept].seq < head_seq) first_kept++;
        for (size_t j = first_kept; j < kp.n && rc == STM_OK; j++) {
            const idem_entry *k = &kp.k[j];
            buf r = {0};
            rc = key_result(e, k, &r, err);
            buf *l = &sw.pend;
            buf_puts(l, "{\"k\":");
            json_write_str(l, k->key);
            buf_puts(l, ",\"scope\":");
            json_write_str(l, k->scope);
            buf_printf(l, ",\"type\":%u,\"fp\":\"%016llx\",\"off\":%llu,\"seq\":%llu,\"result\":",
                       k->type, (unsigned long long)k->fingerprint, (unsigned long long)k->offset,
                       (unsigned long long)k->seq);
            buf_add(l, r.data, r.len);
            buf_puts(l, "}\n");
            dfile_maybe_flush(&sw);
            if (!k->result && k->offset <= X) key_results[j] = buf_detach(&r, NULL);
            buf_free(&r);
        }
        /* and a key whose record goes below keeps its result in memory */
        for (size_t j0 = first_kept; j0 < kp.n && rc == STM_OK; j0 += CAPTURE_CHUNK) {
            pthread_mutex_lock(&e->lock);
            for (size_t j = j0; j < kp.n && j < j0 + CAPTURE_CHUNK; j++) {
                const idem_entry *kc = &kp.k[j];
                if (!key_results[j]) continue;
                idem_entry *k = idem_find(e, kc->scope, kc->key);
                if (k && k->seq == kc->seq && !k->result) {
                    k->result = key_results[j];
                    key_results[j] = NULL;
                }
            }
            pthread_mutex_unlock(&e->lock);
            lock_pause();
        }
        if (rc == STM_OK) {
            /* the trailer: size and CRC-32C of everything before it */
            dfile_flush(&sw);
            buf_printf(&sw.pend, "{\"end\":true,\"bytes\":%llu,\"crc\":\"%08x\"}\n",
                       (unsigned long long)sw.written, sw.crc);
            rc = dfile_commit(&sw, err);
            int fd = rc == STM_OK ? open(path, O_RDONLY | O_CLOEXEC) : -1;
            if (rc == STM_OK && fd < 0)
                rc = stm_fail(err, STM_INTERNAL_ERROR, "snapshot: cannot reopen %s: %s", path,
                              strerror(errno));
            if (rc == STM_OK) {
                repoint_entries(e, &plan, new_pos, fd, X, S);
                *created = true;
                remove_older(e, X);
            }
        } else if (writing) {
            dfile_abort(&sw);
        }
    } else {
        pthread_mutex_unlock(&e->lock);
    }
    buf_free(&head);
    plan_free(&plan);
    free(new_pos);
    for (size_t j = 0; key_results && j < kp.n; j++) free(key_results[j]);
    free(kp.k);
    free(kp.at);
    buf_free(&kp.text);
    free(key_results);

    /* Delete segments wholly before the one holding the snapshot's last
     * record; first take their lines out of the entries file's accounting. */
    if (rc == STM_OK && e->snap_fd >= 0 && WAL_OFF_SEG(e->snap_offset) > 1) {
        uint64_t boundary = WAL_OFFSET(WAL_OFF_SEG(e->snap_offset), 0);
        wal_stats st;
        wal_get_stats(e->w, &st);
        if (st.first_offset && st.first_offset < boundary) {
            uint64_t dropped = 0;
            wal_iter *it;
            rc = wal_iter_open(e->w, 0, false, &it, err);
            wal_record rec;
            while (rc == STM_OK && wal_iter_next(it, &rec, err) == 1 && rec.offset < boundary) {
                dropped += eng_entry_len(rec.len, rec.offset, rec.seq);
            }
            if (rc == STM_OK) wal_iter_close(it);
            if (rc == STM_OK) rc = wal_delete_before(e->w, boundary, segments, bytes, err);
            if (rc == STM_OK) {
                pthread_mutex_lock(&e->lock);
                e->entries_bytes -= dropped;
                size_t w = 0;
                e->eidx_pos[w] = 0;
                e->eidx_off[w] = boundary;
                w++;
                for (size_t r = 0; r < e->n_eidx; r++)
                    if (e->eidx_off[r] >= boundary && e->eidx_pos[r] >= dropped) {
                        e->eidx_pos[w] = e->eidx_pos[r] - dropped;
                        e->eidx_off[w] = e->eidx_off[r];
                        w++;
                    }
                e->n_eidx = w;
                pthread_mutex_unlock(&e->lock);
            }
        }
    }
    __atomic_store_n(&e->last_compact_ms, util_now_ms(), __ATOMIC_RELAXED);
    pthread_mutex_unlock(&e->compact_lock);
    return rc;
}

/* ---- the background compactor ------------------------------------------- */

/* Unlinked instances the compactor leaves for the next listing to link. */
#define INDEX_BACKLOG_MAX 2048

static void *compactor_main(void *arg)
{
    eng *e = arg;
    util_name_thread("eng-compactor");
    pthread_mutex_lock(&e->wait_lock);
    while (!e->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 10;
        pthread_cond_timedwait(&e->stop_cond, &e->wait_lock, &ts);
        if (e->stopping) break;
        pthread_mutex_unlock(&e->wait_lock);
        int64_t now = util_now_ms();
        /* read without the lock: heuristics, but atomic (a COMPACT over RCP
         * sets them from another thread) */
        int64_t last = __atomic_load_n(&e->last_compact_ms, __ATOMIC_RELAXED);
        bool due = now - last >= (int64_t)e->opts.compact_min_interval_secs * 1000;
        bool events = e->opts.compact_events_threshold &&
                      __atomic_load_n(&e->events_since_compact, __ATOMIC_RELAXED) >=
                          e->opts.compact_events_threshold;
        wal_stats st;
        wal_get_stats(e->w, &st);
        bool size = e->opts.compact_size_threshold_mb &&
                    st.total_size_bytes >= e->opts.compact_size_threshold_mb * 1024 * 1024;
        if (due && (events || size) && !eng_failed(e)) {
            bool created;
            uint64_t segs, bytes;
            stm_err err;
            if (snap_compact_now(e, &created, &segs, &bytes, &err) != STM_OK)
                log_error("auto-compaction: %s", err.msg);
            else if (created || segs)
                log_info("auto-compaction: snapshot %s, %llu segment(s) deleted, %llu bytes",
                         created ? "written" : "unchanged", (unsigned long long)segs,
                         (unsigned long long)bytes);
        }
        /* Creates wait in the sorted index's backlog until something lists
         * them, and the first listing after a burst links them all first
         * (a LIST of 3 after 100,000 creates: 197 ms). Linked here, a chunk
         * at a time, that listing need not; compaction would link them
         * anyway once it is due. */
        if (eng_index_backlog(e) > INDEX_BACKLOG_MAX && !eng_failed(e)) {
            pthread_mutex_lock(&e->lock);
            inst_link_paced(e);
            pthread_mutex_unlock(&e->lock);
        }
        pthread_mutex_lock(&e->wait_lock);
    }
    pthread_mutex_unlock(&e->wait_lock);
    return NULL;
}

void compactor_start(eng *e)
{
    if (!e->opts.compact_enabled || e->opts.read_only) return;
    if (!e->opts.compact_events_threshold && !e->opts.compact_size_threshold_mb) return;
    if (pthread_create(&e->compactor, NULL, compactor_main, e) == 0) e->compactor_running = true;
}

void compactor_stop(eng *e)
{
    if (!e->compactor_running) return;
    pthread_mutex_lock(&e->wait_lock);
    e->stopping = true;
    pthread_cond_broadcast(&e->stop_cond);
    pthread_mutex_unlock(&e->wait_lock);
    pthread_join(e->compactor, NULL);
    e->compactor_running = false;
}
