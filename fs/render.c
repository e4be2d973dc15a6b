/*
 * render.c - what each file of the mount contains, and its attributes.
 *
 * Files are rendered whole from the engine's typed reads, so st_size is
 * always the exact length of what read returns. A node keeps its last
 * rendering with the key it was made from (the instance's newest record,
 * the machine's newest version, the error generation) and reuses it while
 * the key holds. history and wal/entries are not rendered whole: they only
 * grow and the engine knows their size and serves any byte range.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/json.h"
#include "base/util.h"
#include "fs/internal.h"

void fs_fmt_time(int64_t ms, char out[32])
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

/* Pretty JSON with two-space indents; leaves are written canonically. */
static void pretty(buf *out, const cJSON *v, int depth)
{
    bool obj = cJSON_IsObject(v);
    if (!obj && !cJSON_IsArray(v)) {
        json_write(out, v, true);
        return;
    }
    if (!v->child) {
        buf_puts(out, obj ? "{}" : "[]");
        return;
    }
    buf_putc(out, obj ? '{' : '[');
    for (const cJSON *c = v->child; c; c = c->next) {
        buf_putc(out, '\n');
        for (int i = 0; i <= depth; i++) buf_puts(out, "  ");
        if (obj) {
            json_write_str(out, c->string);
            buf_puts(out, ": ");
        }
        pretty(out, c, depth + 1);
        if (c->next) buf_putc(out, ',');
    }
    buf_putc(out, '\n');
    for (int i = 0; i < depth; i++) buf_puts(out, "  ");
    buf_putc(out, obj ? '}' : ']');
}

static void pretty_text(buf *out, const char *json_text)
{
    stm_err err;
    cJSON *v = json_parse(json_text, strlen(json_text), &err);
    if (v) {
        pretty(out, v, 0);
        cJSON_Delete(v);
    } else {
        buf_puts(out, json_text);
    }
    buf_putc(out, '\n');
}

static fs_errtext *find_error(fs *f, bool machine, const char *name)
{
    for (fs_errtext *e = f->errors; e; e = e->next)
        if (e->machine == machine && strcmp(e->name, name) == 0) return e;
    return NULL;
}

/* How much of a rejected line the error file repeats: enough to recognise
 * it; a 2 MB line of junk must not become a 2 MB error file. */
#define ERROR_EXCERPT 256

void fs_set_error(fs *f, bool machine, const char *name, const stm_err *err,
                  const char *what_key, const char *what, size_t what_len)
{
    int64_t now = util_now_ms();
    char t[32];
    fs_fmt_time(now, t);
    buf b = {0};
    /* acme style: one "key value" per line, plain words a person reads */
    buf_printf(&b, "code %s\nmessage ", stm_code_name(err->code));
    /* the engine's message may quote the user's own bytes back */
    buf_add_shown(&b, err->msg, strlen(err->msg), sizeof err->msg);
    buf_putc(&b, '\n');
    if (what_key && what) {
        buf_printf(&b, "%s ", what_key);
        buf_add_shown(&b, what, what_len, ERROR_EXCERPT);
        buf_putc(&b, '\n');
    }
    buf_printf(&b, "time %s\n", t);
    pthread_mutex_lock(&f->lock);
    fs_errtext *e = find_error(f, machine, name);
    if (!e) {
        e = xcalloc(1, sizeof *e);
        e->machine = machine;
        e->name = xstrdup(name);
        e->next = f->errors;
        f->errors = e;
    }
    free(e->text);
    e->text = buf_detach(&b, NULL);
    e->at_ms = now;
    e->gen = ++f->error_gen;
    pthread_mutex_unlock(&f->lock);
}

static fs_temp *find_temp(fs *f, const char *machine, const char *name)
{
    for (fs_temp *t = f->temps; t; t = t->next)
        if (strcmp(t->machine, machine) == 0 && strcmp(t->name, name) == 0) return t;
    return NULL;
}

bool fs_is_dir_kind(enum fs_kind k)
{
    switch (k) {
    case K_ROOT: case K_MACHINES: case K_INSTANCES: case K_WAL: case K_MACHINE:
    case K_VERSIONS: case K_MINSTS: case K_INST:
        return true;
    default:
        return false;
    }
}

static enum fs_kind kind_of(const fs_node *n)
{
    return n->alias ? n->alias : n->kind;
}

/* Takes the cached blob if its key still holds (f->lock not held). */
static fs_blob *cached(fs *f, fs_node *n, uint64_t key, int64_t *mtime)
{
    fs_blob *b = NULL;
    pthread_mutex_lock(&f->lock);
    if (n->blob && n->blob_key == key) {
        b = fs_blob_ref(n->blob);
        *mtime = n->blob_mtime;
    }
    pthread_mutex_unlock(&f->lock);
    return b;
}

static fs_blob *keep(fs *f, fs_node *n, uint64_t key, int64_t mtime, buf *text)
{
    fs_blob *b = fs_blob_new(text->data ? text->data : "", text->len);
    buf_free(text);
    pthread_mutex_lock(&f->lock);
    if (n->blob) fs_blob_unref(n->blob);
    n->blob = fs_blob_ref(b);
    n->blob_key = key;
    n->blob_mtime = mtime;
    pthread_mutex_unlock(&f->lock);
    return b;
}

static void render_info(buf *out, const eng_instance_view *v)
{
    cJSON *o = cJSON_CreateObject();
    char t[32];
    cJSON_AddStringToObject(o, "id", v->id);
    cJSON_AddStringToObject(o, "machine", v->machine);
    cJSON_AddNumberToObject(o, "version", v->version);
    cJSON_AddStringToObject(o, "state", v->state);
    fs_fmt_time(v->created_at, t);
    cJSON_AddStringToObject(o, "created_at", t);
    fs_fmt_time(v->updated_at, t);
    cJSON_AddStringToObject(o, "updated_at", t);
    cJSON_AddNumberToObject(o, "created_at_ms", (double)v->created_at);
    cJSON_AddNumberToObject(o, "updated_at_ms", (double)v->updated_at);
    cJSON_AddNumberToObject(o, "last_wal_offset", (double)v->last_wal_offset);
    if (v->last_event_id) cJSON_AddStringToObject(o, "last_event_id", v->last_event_id);
    cJSON_AddNumberToObject(o, "history_lines", (double)v->history_lines);
    cJSON_AddBoolToObject(o, "deleted", v->deleted);
    /* sorted keys, like every JSON the mount shows */
    char *c = json_canonical(o, NULL);
    cJSON_Delete(o);
    pretty_text(out, c);
    free(c);
}

static fs_blob *instance_file(fs *f, fs_node *n, enum fs_kind k, int *errp)
{
    eng_instance_view v;
    stm_err err;
    if (eng_get_instance_view(f->e, n->a, false, &v, &err) != STM_OK) {
        *errp = ENOENT;
        return NULL;
    }
    /* Durable before visible: a state whose record is still on its way to
     * the disk is shown once it is there, and never if the WAL fails first. */
    if (eng_wait(f->e, v.seq, &err) != STM_OK) {
        eng_instance_view_free(&v);
        *errp = fs_errno_of(err.code);
        return NULL;
    }
    int64_t mt;
    fs_blob *b = cached(f, n, v.seq, &mt);
    if (b) {
        eng_instance_view_free(&v);
        return b;
    }
    buf out = {0};
    switch (k) {
    case K_STATE: buf_printf(&out, "%s\n", v.state); break;
    case K_CTX: pretty_text(&out, v.ctx_json ? v.ctx_json : "null"); break;
    case K_INFO: render_info(&out, &v); break;
    case K_EVENTS: {
        uint64_t seq;
        if (eng_allowed_events(f->e, n->a, &out, &seq, &err) != STM_OK ||
            eng_wait(f->e, seq, &err) != STM_OK) {
            buf_free(&out);
            eng_instance_view_free(&v);
            *errp = fs_errno_of(err.code);
            return NULL;
        }
        break;
    }
    default: break;
    }
    b = keep(f, n, v.seq, v.updated_at, &out);
    eng_instance_view_free(&v);
    return b;
}

static fs_blob *machine_file(fs *f, fs_node *n, enum fs_kind k, int *errp)
{
    uint32_t ver = n->ver;
    stm_err err;
    int64_t mt = f->start_ms;
    buf out = {0};
    if (k != K_VERSION) {
        if (eng_machine_latest(f->e, n->a, &ver, &err) != STM_OK) {
            /* a machine made by mkdir shows empty files until defined */
            return keep(f, n, 0, f->start_ms, &out);
        }
    }
    fs_blob *b = cached(f, n, ver, &mt);
    if (b) return b;
    enum eng_def_format fmt = k == K_DEF_YAML ? ENG_DEF_YAML : k == K_GRAPH ? ENG_DEF_DOT
                                                                             : ENG_DEF_JSON;
    if (eng_machine_text(f->e, n->a, ver, fmt, &out, &mt, &err) != STM_OK) {
        buf_free(&out);
        if (k == K_VERSION) {
            /* being created: versions/N.json shows what was written so far */
            pthread_mutex_lock(&f->lock);
            char name[32];
            snprintf(name, sizeof name, "versions/%u.json", n->ver);
            fs_temp *t = find_temp(f, n->a, name);
            if (t) {
                b = fs_blob_new(t->data.data ? t->data.data : "", t->data.len);
                pthread_mutex_unlock(&f->lock);
                return b;
            }
            pthread_mutex_unlock(&f->lock);
        }
        *errp = fs_errno_of(err.code);
        return NULL;
    }
    return keep(f, n, ver, mt, &out);
}

static fs_blob *stats_file(fs *f, int *errp)
{
    cJSON *r = NULL;
    uint64_t seq;
    stm_err err;
    if (eng_call(f->e, "WAL_STATS", NULL, &r, &seq, &err) != STM_OK) {
        *errp = fs_errno_of(err.code);
        return NULL;
    }
    eng_stats st;
    eng_get_stats(f->e, &st);
    cJSON_AddNumberToObject(r, "machines", (double)st.machines);
    cJSON_AddNumberToObject(r, "machine_versions", (double)st.machine_versions);
    cJSON_AddNumberToObject(r, "instances", (double)st.instances);
    cJSON_AddNumberToObject(r, "deleted_instances", (double)st.deleted_instances);
    cJSON_AddNumberToObject(r, "subscriptions", (double)st.subscriptions);
    cJSON_AddNumberToObject(r, "acked_seq", (double)st.wal.acked_seq);
    char *c = json_canonical(r, NULL);
    cJSON_Delete(r);
    buf out = {0};
    pretty_text(&out, c);
    free(c);
    fs_blob *b = fs_blob_new(out.data, out.len);
    buf_free(&out);
    return b;
}

fs_blob *fs_content(fs *f, fs_node *n, int *errp)
{
    enum fs_kind k = kind_of(n);
    *errp = 0;
    switch (k) {
    case K_STATE: case K_CTX: case K_INFO: case K_EVENTS:
        return instance_file(f, n, k, errp);
    case K_DEF_JSON: case K_DEF_YAML: case K_GRAPH: case K_VERSION:
        return machine_file(f, n, k, errp);
    case K_WAL_STATS:
        return stats_file(f, errp);
    case K_IERROR: case K_MERROR: {
        pthread_mutex_lock(&f->lock);
        fs_errtext *e = find_error(f, k == K_MERROR, n->a);
        fs_blob *b = e ? fs_blob_new(e->text, strlen(e->text)) : fs_blob_new("", 0);
        pthread_mutex_unlock(&f->lock);
        return b;
    }
    case K_TEMP: {
        pthread_mutex_lock(&f->lock);
        fs_temp *t = find_temp(f, n->a, n->b);
        fs_blob *b = t ? fs_blob_new(t->data.data ? t->data.data : "", t->data.len) : NULL;
        pthread_mutex_unlock(&f->lock);
        if (!b) *errp = ENOENT;
        return b;
    }
    case K_NEW: case K_WATCH: case K_WAL_WATCH:
        return fs_blob_new("", 0);
    default:
        *errp = EISDIR;
        return NULL;
    }
}

static void set_time(struct stat *st, int64_t ms)
{
    st->st_mtim.tv_sec = ms / 1000;
    st->st_mtim.tv_nsec = (ms % 1000) * 1000000;
    st->st_ctim = st->st_mtim;
    st->st_atim = st->st_mtim;
}

static bool machine_exists(fs *f, const char *m)
{
    uint32_t v;
    stm_err err;
    if (eng_machine_latest(f->e, m, &v, &err) == STM_OK) return true;
    bool found = false;
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n_empty_machines && !found; i++)
        found = strcmp(f->empty_machines[i], m) == 0;
    pthread_mutex_unlock(&f->lock);
    return found;
}

int fs_stat_node(fs *f, fs_node *n, struct stat *st)
{
    enum fs_kind k = kind_of(n);
    memset(st, 0, sizeof *st);
    st->st_ino = n->ino;
    st->st_uid = f->uid;
    st->st_gid = f->gid;
    st->st_blksize = 4096;
    int64_t mt = f->start_ms;
    if (fs_is_dir_kind(k)) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        switch (k) {
        case K_MACHINES: mt = __atomic_load_n(&f->machines_mtime, __ATOMIC_RELAXED); break;
        case K_INSTANCES: mt = __atomic_load_n(&f->instances_mtime, __ATOMIC_RELAXED); break;
        case K_WAL: mt = __atomic_load_n(&f->wal_mtime, __ATOMIC_RELAXED); break;
        case K_MACHINE: case K_VERSIONS: case K_MINSTS:
            if (!machine_exists(f, n->a)) return -ENOENT;
            mt = __atomic_load_n(&f->machines_mtime, __ATOMIC_RELAXED);
            break;
        case K_INST: {
            eng_instance_view v;
            stm_err err;
            if (eng_get_instance_view(f->e, n->a, false, &v, &err) != STM_OK) return -ENOENT;
            mt = v.updated_at;
            eng_instance_view_free(&v);
            break;
        }
        default: break;
        }
        set_time(st, mt);
        return 0;
    }
    if (k == K_MLINK) {
        st->st_mode = S_IFLNK | 0777;
        st->st_nlink = 1;
        buf t = {0};
        buf_puts(&t, "../../../instances/");
        fs_name_encode(n->b, &t);
        st->st_size = (off_t)t.len;
        buf_free(&t);
        set_time(st, __atomic_load_n(&f->instances_mtime, __ATOMIC_RELAXED));
        return 0;
    }
    st->st_nlink = 1;
    switch (k) {
    case K_DEF_JSON: case K_DEF_YAML: case K_NEW: case K_EVENTS: case K_TEMP:
        st->st_mode = S_IFREG | 0644;
        break;
    default:
        st->st_mode = S_IFREG | 0444;
        break;
    }
    if (f->ro) st->st_mode &= ~(mode_t)0222;
    if (k == K_HISTORY) {
        eng_instance_view v;
        stm_err err;
        if (eng_get_instance_view(f->e, n->a, false, &v, &err) != STM_OK) return -ENOENT;
        st->st_size = (off_t)v.history_bytes;
        set_time(st, v.updated_at);
        eng_instance_view_free(&v);
    } else if (k == K_WAL_ENTRIES) {
        buf out = {0};
        uint64_t total = 0;
        stm_err err;
        eng_entries_read(f->e, 0, 0, &out, &total, &err);
        buf_free(&out);
        st->st_size = (off_t)total;
        set_time(st, __atomic_load_n(&f->wal_mtime, __ATOMIC_RELAXED));
    } else if (k == K_WATCH || k == K_WAL_WATCH) {
        if (k == K_WATCH) {
            eng_instance_view v;
            stm_err err;
            if (eng_get_instance_view(f->e, n->a, false, &v, &err) != STM_OK) return -ENOENT;
            eng_instance_view_free(&v);
        }
        st->st_size = 0;
        set_time(st, f->start_ms);
    } else if (k == K_IERROR || k == K_MERROR) {
        pthread_mutex_lock(&f->lock);
        fs_errtext *e = find_error(f, k == K_MERROR, n->a);
        st->st_size = e ? (off_t)strlen(e->text) : 0;
        mt = e ? e->at_ms : f->start_ms;
        pthread_mutex_unlock(&f->lock);
        if (k == K_IERROR) {
            eng_instance_view v;
            stm_err err;
            if (eng_get_instance_view(f->e, n->a, false, &v, &err) != STM_OK) return -ENOENT;
            if (!e) mt = v.created_at;
            eng_instance_view_free(&v);
        } else if (!machine_exists(f, n->a)) {
            return -ENOENT;
        }
        set_time(st, mt);
    } else {
        int e = 0;
        if ((k == K_NEW || k == K_DEF_JSON || k == K_DEF_YAML || k == K_GRAPH) &&
            !machine_exists(f, n->a))
            return -ENOENT;
        fs_blob *b = fs_content(f, n, &e);
        if (!b) return -e;
        st->st_size = (off_t)b->len;
        if (k == K_TEMP) {
            pthread_mutex_lock(&f->lock);
            fs_temp *t = find_temp(f, n->a, n->b);
            if (t) mt = t->mtime_ms;
            pthread_mutex_unlock(&f->lock);
        } else if (k == K_WAL_STATS) {
            mt = __atomic_load_n(&f->wal_mtime, __ATOMIC_RELAXED);
        } else {
            pthread_mutex_lock(&f->lock);
            if (n->blob) mt = n->blob_mtime;
            pthread_mutex_unlock(&f->lock);
        }
        fs_blob_unref(b);
        set_time(st, mt);
    }
    st->st_blocks = (st->st_size + 511) / 512;
    return 0;
}
