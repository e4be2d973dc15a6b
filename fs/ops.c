/*
 * ops.c - the FUSE low-level handlers: the layout of DESIGN.md "The mount"
 * mapped onto engine calls.
 *
 * Reading: read-only files are rendered whole at open and served from that
 * snapshot with keep_cache; the notifier (notify.c) invalidates the kernel's
 * pages and attributes when what they show changes. history and wal/entries
 * are read by byte range straight from the engine. Writable opens use
 * direct_io, so every write reaches us and its errno reaches the shell
 * (never writeback_cache: that loses write errors).
 *
 * Writing: a write to events/new applies each complete line in order and
 * is answered only once the records are durable and the notifier has
 * invalidated what they changed, so the writer's next read sees them; the
 * notifier answers it (fs_notify_answer_at), and the handler's thread goes
 * back to the next request instead of sleeping through the fsync. A
 * definition is collected in the handle and put at flush (close(2)), so it
 * may come in any chunks; a rejected one fails close. The kernel sends a
 * FLUSH at every close(2) of any descriptor of the open file, also when a
 * child that inherited one exits: only a FLUSH from the process that opened
 * the file ends its input (a trailing partial line, a definition); the last
 * close (RELEASE) ends whatever is left, with its error in the error file
 * and the log, since RELEASE has nobody to return it to. Handlers never call
 * the kernel's notify functions themselves (a notification inside a request
 * can deadlock): they queue it for the notifier thread.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "engine/def.h"
#include "fs/internal.h"


typedef struct fh {
    enum fs_kind kind;
    uint64_t ino;
    char *a, *b;
    uint32_t ver;
    bool self;                  /* the helper's own no-op open */
    bool writing;
    bool dirty;                 /* definitions: something was written */
    bool pending_version;       /* versions/N.json being created */
    int failed;                 /* events/new: the errno of a rejected line;
                                   the lines after it were meant to follow it,
                                   so every later write on this handle fails
                                   the same way */
    pid_t opener;               /* writing: the thread that opened it (the
                                   FUSE request's pid is a thread id) */
    fs_blob *blob;              /* read snapshot */
    buf w;                      /* events/new: partial line; definitions: content */
    fs_watchfh *watch;
    pthread_mutex_t lock;       /* one write at a time per handle */
    fs *f;
    uint64_t id;                /* what the kernel holds (fi->fh) */
    int refs;                   /* the table's, plus one per request using it */
    struct fh *tnext;
} fh;

typedef struct {
    char *name;                 /* encoded */
    enum fs_kind kind;
    char *a, *b;
    uint32_t ver;
} dent;

typedef struct {
    dent *v;
    size_t n, cap;
} dirlist;

static fs *F(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static fs_node *node_of(fs *f, fuse_ino_t ino)
{
    pthread_mutex_lock(&f->lock);
    fs_node *n = fs_node_by_ino(f, ino);
    pthread_mutex_unlock(&f->lock);
    return n;
}

static enum fs_kind kind_of(const fs_node *n)
{
    return n->alias ? n->alias : n->kind;
}

static bool machine_known(fs *f, const char *m)
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

static bool instance_known(fs *f, const char *id, const char *machine)
{
    eng_instance_view v;
    stm_err err;
    if (eng_get_instance_view(f->e, id, false, &v, &err) != STM_OK) return false;
    bool ok = !machine || strcmp(v.machine, machine) == 0;
    eng_instance_view_free(&v);
    return ok;
}

static fs_temp *temp_find(fs *f, const char *m, const char *name)
{
    for (fs_temp *t = f->temps; t; t = t->next)
        if (strcmp(t->machine, m) == 0 && strcmp(t->name, name) == 0) return t;
    return NULL;
}

static fs_temp *temp_add(fs *f, const char *m, const char *name)
{
    fs_temp *t = xcalloc(1, sizeof *t);
    t->machine = xstrdup(m);
    t->name = xstrdup(name);
    t->mtime_ms = util_now_ms();
    t->next = f->temps;
    f->temps = t;
    return t;
}

static void temp_remove(fs *f, fs_temp *t)
{
    for (fs_temp **pp = &f->temps; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    free(t->machine);
    free(t->name);
    buf_free(&t->data);
    free(t);
}

static void version_temp_name(uint32_t v, char out[32])
{
    snprintf(out, 32, "versions/%u.json", v);
}

/* ---- entries ------------------------------------------------------------- */

/* The kernel is about to hold n's attributes (and with data, its pages):
 * called before they are computed, see fs_node.cached_attr. */
static void mark_cached(fs *f, fs_node *n, bool data)
{
    pthread_mutex_lock(&f->lock);
    n->cached_attr = true;
    if (data) n->cached_data = true;
    pthread_mutex_unlock(&f->lock);
}

/* Looks up the node of a child, stats it, counts the lookup, replies. */
static void reply_node(fuse_req_t req, enum fs_kind kind, const char *a, const char *b,
                       uint32_t ver)
{
    fs *f = F(req);
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    pthread_mutex_lock(&f->lock);
    fs_node *n = fs_node_get(f, kind, a, b, ver);
    n->nlookup++;
    n->cached_attr = true;
    pthread_mutex_unlock(&f->lock);
    int r = fs_stat_node(f, n, &e.attr);
    if (r < 0) {
        pthread_mutex_lock(&f->lock);
        fs_node_forget(f, n, 1);
        pthread_mutex_unlock(&f->lock);
        fuse_reply_err(req, -r);
        return;
    }
    e.ino = e.attr.st_ino;
    e.attr_timeout = f->attr_timeout;
    e.entry_timeout = f->entry_timeout;
    if (fuse_reply_entry(req, &e) != 0) {
        pthread_mutex_lock(&f->lock);
        fs_node_forget(f, n, 1);
        pthread_mutex_unlock(&f->lock);
    }
}

/* The helper deleting an instance that is already gone: the entry it needs
 * to get as far as RMDIR, with attributes that are never cached. */
static void reply_gone_dir(fuse_req_t req, const char *id)
{
    fs *f = F(req);
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    pthread_mutex_lock(&f->lock);
    fs_node *n = fs_node_get(f, K_INST, id, NULL, 0);
    n->nlookup++;
    e.ino = n->ino;
    pthread_mutex_unlock(&f->lock);
    e.attr.st_ino = e.ino;
    e.attr.st_mode = S_IFDIR | 0755;
    e.attr.st_nlink = 2;
    e.attr.st_uid = f->uid;
    e.attr.st_gid = f->gid;
    fuse_reply_entry(req, &e);
}

static const struct {
    const char *name;
    enum fs_kind kind;
} inst_files[] = {
    {"ctx.json", K_CTX}, {"error", K_IERROR}, {"events", K_EVENTS}, {"history", K_HISTORY},
    {"info.json", K_INFO}, {"state", K_STATE}, {"watch", K_WATCH},
}, machine_files[] = {
    {"definition.json", K_DEF_JSON}, {"definition.yaml", K_DEF_YAML}, {"error", K_MERROR},
    {"graph.dot", K_GRAPH}, {"instances", K_MINSTS}, {"new", K_NEW}, {"versions", K_VERSIONS},
}, root_files[] = {
    {"instances", K_INSTANCES}, {"machines", K_MACHINES}, {"wal", K_WAL},
}, wal_files[] = {
    {"entries", K_WAL_ENTRIES}, {"stats.json", K_WAL_STATS}, {"watch", K_WAL_WATCH},
};
#define NELEM(x) (sizeof(x) / sizeof((x)[0]))

static enum fs_kind fixed_child(enum fs_kind parent, const char *name)
{
#define FIND(tab)                                                                                  \
    for (size_t i = 0; i < NELEM(tab); i++)                                                        \
        if (strcmp(tab[i].name, name) == 0) return tab[i].kind;                                    \
    return K_NONE;
    switch (parent) {
    case K_ROOT: FIND(root_files)
    case K_WAL: FIND(wal_files)
    case K_MACHINE: FIND(machine_files)
    case K_INST: FIND(inst_files)
    default: return K_NONE;
    }
#undef FIND
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fs *f = F(req);
    fs_node *p = node_of(f, parent);
    if (!p) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    enum fs_kind pk = kind_of(p);
    enum fs_kind k = fixed_child(pk, name);
    if (k != K_NONE) {
        reply_node(req, k, p->a, NULL, 0);
        return;
    }
    buf raw = {0};
    switch (pk) {
    case K_MACHINES:
        if (fs_name_decode(name, &raw) && machine_known(f, buf_cstr(&raw))) {
            reply_node(req, K_MACHINE, buf_cstr(&raw), NULL, 0);
            break;
        }
        fuse_reply_err(req, ENOENT);
        break;
    case K_INSTANCES: {
        const char *sname;
        int self = fs_self_op(f, req, &sname);
        if (!fs_name_decode(name, &raw)) {
            fuse_reply_err(req, ENOENT);
        } else if (self == SELF_CREATE) {
            fuse_reply_err(req, ENOENT); /* so the helper's mkdir reaches us */
        } else if (self == SELF_DELETE) {
            reply_gone_dir(req, buf_cstr(&raw));
        } else if (instance_known(f, buf_cstr(&raw), NULL)) {
            reply_node(req, K_INST, buf_cstr(&raw), NULL, 0);
        } else {
            fuse_reply_err(req, ENOENT);
        }
        break;
    }
    case K_MINSTS:
        if (fs_name_decode(name, &raw) && instance_known(f, buf_cstr(&raw), p->a))
            reply_node(req, K_MLINK, p->a, buf_cstr(&raw), 0);
        else
            fuse_reply_err(req, ENOENT);
        break;
    case K_VERSIONS: {
        uint32_t v;
        if (!fs_version_name(name, &v)) {
            fuse_reply_err(req, ENOENT);
            break;
        }
        reply_node(req, K_VERSION, p->a, NULL, v); /* stat says ENOENT when absent */
        break;
    }
    case K_MACHINE: {
        pthread_mutex_lock(&f->lock);
        bool t = temp_find(f, p->a, name) != NULL;
        pthread_mutex_unlock(&f->lock);
        if (t)
            reply_node(req, K_TEMP, p->a, name, 0);
        else
            fuse_reply_err(req, ENOENT);
        break;
    }
    default:
        fuse_reply_err(req, ENOENT);
    }
    buf_free(&raw);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    fs *f = F(req);
    pthread_mutex_lock(&f->lock);
    fs_node *n = fs_node_by_ino(f, ino);
    if (n) fs_node_forget(f, n, nlookup);
    pthread_mutex_unlock(&f->lock);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    fs *f = F(req);
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < count; i++) {
        fs_node *n = fs_node_by_ino(f, forgets[i].ino);
        if (n) fs_node_forget(f, n, forgets[i].nlookup);
    }
    pthread_mutex_unlock(&f->lock);
    fuse_reply_none(req);
}

static fh *FH(struct fuse_file_info *fi);
static fh *fh_of_ino(fuse_ino_t ino);
static void fh_put(fh *h);

/* The attributes of an open file whose instance was deleted meanwhile: it
 * stays readable, as an unlinked file does (the kernel asks for them
 * before it reads, and fstat(2) comes without the handle), with what it
 * held at open, or the history the log keeps; st_nlink 0 says it is gone.
 * false when no such file is open. */
static bool open_file_stat(fs *f, fuse_ino_t ino, struct fuse_file_info *fi, struct stat *st)
{
    fh *h = fi ? FH(fi) : fh_of_ino(ino);
    if (!h) return false;
    bool ok = true;
    memset(st, 0, sizeof *st);
    if (h->blob) {
        st->st_size = (off_t)h->blob->len;
    } else if (h->kind == K_HISTORY) {
        buf none = {0};
        uint64_t total = 0;
        stm_err err;
        ok = eng_history_read(f->e, h->a, 0, 0, &none, &total, &err) == STM_OK;
        buf_free(&none);
        st->st_size = (off_t)total;
    } else {
        ok = false;
    }
    fh_put(h);
    st->st_ino = ino;
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 0;
    st->st_uid = f->uid;
    st->st_gid = f->gid;
    return ok;
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fs *f = F(req);
    fs_node *n = node_of(f, ino);
    struct stat st;
    if (n) mark_cached(f, n, false);
    int r = n ? fs_stat_node(f, n, &st) : -ENOENT;
    if (r == -ENOENT && open_file_stat(f, ino, fi, &st)) {
        fuse_reply_attr(req, &st, 0);
        return;
    }
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_attr(req, &st, f->attr_timeout);
}

/* The layout has no place for links or special files. Without these the
 * kernel would answer ENOSYS, "Function not implemented", which reads like
 * a broken mount; EPERM says the operation is not allowed here. A
 * read-only mount says EROFS, as for every other write. */
static void refuse_new_node(fuse_req_t req)
{
    fuse_reply_err(req, F(req)->ro ? EROFS : EPERM);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    (void)link;
    (void)parent;
    (void)name;
    refuse_new_node(req);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    (void)ino;
    (void)newparent;
    (void)newname;
    refuse_new_node(req);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    (void)parent;
    (void)name;
    (void)mode;
    (void)rdev;
    refuse_new_node(req);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    fs *f = F(req);
    fs_node *n = node_of(f, ino);
    if (!n || n->kind != K_MLINK) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    buf t = {0};
    buf_puts(&t, "../../../instances/");
    fs_name_encode(n->b, &t);
    fuse_reply_readlink(req, buf_cstr(&t));
    buf_free(&t);
}

/* ---- directories ---------------------------------------------------------- */

static void dl_add(dirlist *d, const char *name, enum fs_kind kind, const char *a, const char *b,
                   uint32_t ver)
{
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 16;
        d->v = xrealloc(d->v, d->cap * sizeof *d->v);
    }
    dent *e = &d->v[d->n++];
    e->name = xstrdup(name);
    e->kind = kind;
    e->a = a ? xstrdup(a) : NULL;
    e->b = b ? xstrdup(b) : NULL;
    e->ver = ver;
}

static void dl_free(dirlist *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].name);
        free(d->v[i].a);
        free(d->v[i].b);
    }
    free(d->v);
    free(d);
}

static int dent_cmp(const void *x, const void *y)
{
    return strcmp(((const dent *)x)->name, ((const dent *)y)->name);
}

static int dent_cmp_ver(const void *x, const void *y)
{
    uint32_t a = ((const dent *)x)->ver, b = ((const dent *)y)->ver;
    return a < b ? -1 : a > b;
}

typedef struct {
    dirlist *d;
    enum fs_kind kind;
    const char *machine;
    bool escaped;
    buf nm;
} list_ctx;

static bool list_id(void *arg, const char *id)
{
    list_ctx *c = arg;
    buf_reset(&c->nm);
    fs_name_encode(id, &c->nm);
    if (fs_name_needs_escape(id)) c->escaped = true;
    if (c->kind == K_MLINK)
        dl_add(c->d, buf_cstr(&c->nm), K_MLINK, c->machine, id, 0);
    else
        dl_add(c->d, buf_cstr(&c->nm), c->kind, id, NULL, 0);
    return true;
}

static bool list_machine(void *arg, const char *name)
{
    return list_id(arg, name);
}

/* A listing is taken whole at opendir, in sorted order, so that paging by
 * offset is stable while the directory changes underneath. */
static dirlist *make_listing(fs *f, fs_node *p)
{
    dirlist *d = xcalloc(1, sizeof *d);
    list_ctx c = {.d = d};
    switch (kind_of(p)) {
    case K_ROOT:
        for (size_t i = 0; i < NELEM(root_files); i++)
            dl_add(d, root_files[i].name, root_files[i].kind, NULL, NULL, 0);
        break;
    case K_WAL:
        for (size_t i = 0; i < NELEM(wal_files); i++)
            dl_add(d, wal_files[i].name, wal_files[i].kind, NULL, NULL, 0);
        break;
    case K_INST:
        for (size_t i = 0; i < NELEM(inst_files); i++)
            dl_add(d, inst_files[i].name, inst_files[i].kind, p->a, NULL, 0);
        break;
    case K_MACHINE:
        for (size_t i = 0; i < NELEM(machine_files); i++)
            dl_add(d, machine_files[i].name, machine_files[i].kind, p->a, NULL, 0);
        pthread_mutex_lock(&f->lock);
        for (fs_temp *t = f->temps; t; t = t->next)
            if (strcmp(t->machine, p->a) == 0 && !strchr(t->name, '/'))
                dl_add(d, t->name, K_TEMP, p->a, t->name, 0);
        pthread_mutex_unlock(&f->lock);
        if (d->n > 1) qsort(d->v, d->n, sizeof *d->v, dent_cmp);
        break;
    case K_MACHINES: {
        c.kind = K_MACHINE;
        eng_list_machines(f->e, list_machine, &c);
        pthread_mutex_lock(&f->lock);
        size_t n0 = d->n;
        for (size_t i = 0; i < f->n_empty_machines; i++) {
            bool dup = false;
            for (size_t j = 0; j < n0 && !dup; j++) dup = strcmp(d->v[j].a, f->empty_machines[i]) == 0;
            if (!dup) {
                buf_reset(&c.nm);
                fs_name_encode(f->empty_machines[i], &c.nm);
                dl_add(d, buf_cstr(&c.nm), K_MACHINE, f->empty_machines[i], NULL, 0);
            }
        }
        pthread_mutex_unlock(&f->lock);
        if (d->n > 1) qsort(d->v, d->n, sizeof *d->v, dent_cmp);
        break;
    }
    case K_INSTANCES:
    case K_MINSTS: {
        c.kind = kind_of(p) == K_INSTANCES ? K_INST : K_MLINK;
        c.machine = kind_of(p) == K_MINSTS ? p->a : NULL;
        /* page through the engine's sorted index */
        char *after = NULL;
        for (;;) {
            size_t before = d->n;
            eng_list_instance_ids(f->e, c.machine, after, 4096, list_id, &c);
            if (d->n == before) break;
            after = d->v[d->n - 1].kind == K_MLINK ? d->v[d->n - 1].b : d->v[d->n - 1].a;
            if (d->n - before < 4096) break;
        }
        /* escaping can change the byte order of a few names */
        if (c.escaped && d->n > 1) qsort(d->v, d->n, sizeof *d->v, dent_cmp);
        break;
    }
    case K_VERSIONS: {
        uint32_t vs[4096];
        size_t n = eng_machine_versions(f->e, p->a, vs, NELEM(vs));
        if (n > NELEM(vs)) n = NELEM(vs);
        char name[32];
        for (size_t i = 0; i < n; i++) {
            snprintf(name, sizeof name, "%u.json", vs[i]);
            dl_add(d, name, K_VERSION, p->a, NULL, vs[i]);
        }
        pthread_mutex_lock(&f->lock);
        for (fs_temp *t = f->temps; t; t = t->next) {
            uint32_t v;
            if (strcmp(t->machine, p->a) == 0 && strncmp(t->name, "versions/", 9) == 0 &&
                fs_version_name(t->name + 9, &v)) {
                bool dup = false;
                for (size_t i = 0; i < n && !dup; i++) dup = vs[i] == v;
                if (!dup) dl_add(d, t->name + 9, K_VERSION, p->a, NULL, v);
            }
        }
        pthread_mutex_unlock(&f->lock);
        /* numeric order: 2.json before 10.json */
        if (d->n > 1) qsort(d->v, d->n, sizeof *d->v, dent_cmp_ver);
        break;
    }
    default: break;
    }
    buf_free(&c.nm);
    return d;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fs *f = F(req);
    fs_node *n = node_of(f, ino);
    if (!n || !fs_is_dir_kind(kind_of(n))) {
        fuse_reply_err(req, n ? ENOTDIR : ENOENT);
        return;
    }
    fi->fh = (uint64_t)(uintptr_t)make_listing(f, n);
    fuse_reply_open(req, fi);
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi, bool plus)
{
    fs *f = F(req);
    dirlist *d = (dirlist *)(uintptr_t)fi->fh;
    char *out = xmalloc(size);
    size_t used = 0;
    /* offsets: 0 = ".", 1 = "..", 2+i = entry i */
    for (off_t i = off; i < (off_t)d->n + 2; i++) {
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        size_t len;
        if (i < 2) {
            e.attr.st_ino = i == 0 ? ino : FUSE_ROOT_ID;
            e.attr.st_mode = S_IFDIR;
            const char *nm = i == 0 ? "." : "..";
            len = plus ? fuse_add_direntry_plus(req, out + used, size - used, nm, &e, i + 1)
                       : fuse_add_direntry(req, out + used, size - used, nm, &e.attr, i + 1);
            if (len > size - used) break;
            used += len;
            continue;
        }
        dent *de = &d->v[i - 2];
        if (!plus) {
            pthread_mutex_lock(&f->lock);
            fs_node *n = fs_node_find(f, de->kind, de->a, de->b, de->ver);
            e.attr.st_ino = n ? n->ino : 0xffffffffu;
            pthread_mutex_unlock(&f->lock);
            e.attr.st_mode = fs_is_dir_kind(de->kind) ? S_IFDIR : de->kind == K_MLINK ? S_IFLNK
                                                                                      : S_IFREG;
            len = fuse_add_direntry(req, out + used, size - used, de->name, &e.attr, i + 1);
            if (len > size - used) break;
            used += len;
            continue;
        }
        pthread_mutex_lock(&f->lock);
        fs_node *n = fs_node_get(f, de->kind, de->a, de->b, de->ver);
        n->nlookup++;
        n->cached_attr = true;
        pthread_mutex_unlock(&f->lock);
        if (fs_stat_node(f, n, &e.attr) < 0) {
            /* gone since opendir: skip it */
            pthread_mutex_lock(&f->lock);
            fs_node_forget(f, n, 1);
            pthread_mutex_unlock(&f->lock);
            continue;
        }
        e.ino = n->ino;
        e.attr_timeout = f->attr_timeout;
        e.entry_timeout = f->entry_timeout;
        len = fuse_add_direntry_plus(req, out + used, size - used, de->name, &e, i + 1);
        if (len > size - used) {
            pthread_mutex_lock(&f->lock);
            fs_node_forget(f, n, 1);
            pthread_mutex_unlock(&f->lock);
            break;
        }
        used += len;
    }
    fuse_reply_buf(req, out, used);
    free(out);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, off, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    dl_free((dirlist *)(uintptr_t)fi->fh);
    fuse_reply_err(req, 0);
}

/* ---- open, read ----------------------------------------------------------- */

static bool writable_kind(enum fs_kind k)
{
    return k == K_EVENTS || k == K_NEW || k == K_DEF_JSON || k == K_DEF_YAML || k == K_TEMP ||
           k == K_VERSION;
}

/* Open handles are found by number, not by pointer: requests on one handle
 * run on several loop threads, and one may still be reading when another
 * releases it. A handle is freed when its last user is done. */
#define FH_BUCKETS 4096
static pthread_mutex_t fh_lock = PTHREAD_MUTEX_INITIALIZER;
static fh *fh_tab[FH_BUCKETS];
static uint64_t fh_next_id;

static fh *fh_new(fs *f, fs_node *n)
{
    fh *h = xcalloc(1, sizeof *h);
    h->f = f;
    h->kind = kind_of(n);
    h->ino = n->ino;
    h->a = n->a ? xstrdup(n->a) : NULL;
    h->b = n->b ? xstrdup(n->b) : NULL;
    h->ver = n->ver;
    pthread_mutex_init(&h->lock, NULL);
    pthread_mutex_lock(&fh_lock);
    h->id = ++fh_next_id;
    h->refs = 1;
    h->tnext = fh_tab[h->id % FH_BUCKETS];
    fh_tab[h->id % FH_BUCKETS] = h;
    pthread_mutex_unlock(&fh_lock);
    return h;
}

/* Any open handle of inode ino, referenced; NULL when none. A scan of
 * every handle: only asked for a file whose instance is gone. */
static fh *fh_of_ino(fuse_ino_t ino)
{
    fh *found = NULL;
    pthread_mutex_lock(&fh_lock);
    for (size_t b = 0; b < FH_BUCKETS && !found; b++)
        for (fh *h = fh_tab[b]; h && !found; h = h->tnext)
            if (h->ino == ino && h->refs > 0) {
                h->refs++;
                found = h;
            }
    pthread_mutex_unlock(&fh_lock);
    return found;
}

static void fh_put(fh *h)
{
    pthread_mutex_lock(&fh_lock);
    bool last = --h->refs == 0;
    pthread_mutex_unlock(&fh_lock);
    if (!last) return;
    if (h->watch) fs_watch_release(h->f, h->watch);
    if (h->blob) fs_blob_unref(h->blob);
    buf_free(&h->w);
    free(h->a);
    free(h->b);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

static void fh_hold(fh *h)
{
    pthread_mutex_lock(&fh_lock);
    h->refs++;
    pthread_mutex_unlock(&fh_lock);
}

/* Takes the handle out of the table and drops the table's reference. */
static void fh_free(fh *h)
{
    pthread_mutex_lock(&fh_lock);
    for (fh **pp = &fh_tab[h->id % FH_BUCKETS]; *pp; pp = &(*pp)->tnext)
        if (*pp == h) {
            *pp = h->tnext;
            break;
        }
    pthread_mutex_unlock(&fh_lock);
    fh_put(h);
}

/* The handle of a request, with a reference the caller drops (fh_put);
 * NULL once released. */
static fh *FH(struct fuse_file_info *fi)
{
    pthread_mutex_lock(&fh_lock);
    fh *h = fh_tab[fi->fh % FH_BUCKETS];
    while (h && h->id != fi->fh) h = h->tnext;
    if (h) h->refs++;
    pthread_mutex_unlock(&fh_lock);
    return h;
}

static void open_node(fuse_req_t req, fs_node *n, struct fuse_file_info *fi, bool created)
{
    fs *f = F(req);
    enum fs_kind k = kind_of(n);
    int acc = fi->flags & O_ACCMODE;
    bool wr = acc != O_RDONLY;
    const char *sname;
    if (fs_self_op(f, req, &sname) == SELF_TOUCH) {
        /* the helper's open-write-close that makes inotify fire: content
         * untouched, straight to us (no page cache) */
        fh *h = fh_new(f, n);
        h->self = true;
        fi->direct_io = 1;
        fi->noflush = 1;
        fi->fh = h->id;
        fuse_reply_open(req, fi);
        return;
    }
    if (wr && f->ro) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (wr && !writable_kind(k)) {
        fuse_reply_err(req, EACCES);
        return;
    }
    fh *h = fh_new(f, n);
    h->writing = wr;
    if (wr) h->opener = fuse_req_ctx(req)->pid;
    if (k == K_VERSION && wr) {
        char tn[32];
        version_temp_name(n->ver, tn);
        pthread_mutex_lock(&f->lock);
        bool pending = temp_find(f, n->a, tn) != NULL;
        pthread_mutex_unlock(&f->lock);
        if (!pending) {
            /* an existing version is history: it cannot be rewritten */
            fh_free(h);
            fuse_reply_err(req, EACCES);
            return;
        }
        h->pending_version = true;
    }
    if (k == K_WATCH || k == K_WAL_WATCH) {
        stm_err err;
        h->watch = fs_watch_open(f, k == K_WATCH ? n->a : NULL, &err);
        if (!h->watch) {
            fh_free(h);
            fuse_reply_err(req, fs_errno_of(err.code));
            return;
        }
        fi->direct_io = 1;
        fi->nonseekable = 1;
    } else if (wr) {
        fi->direct_io = 1;
        if (k == K_DEF_JSON || k == K_DEF_YAML) {
            if (fi->flags & O_TRUNC) {
                h->dirty = true;
            } else {
                int e = 0;
                fs_blob *b = fs_content(f, n, &e);
                if (b) {
                    buf_add(&h->w, b->data, b->len);
                    fs_blob_unref(b);
                }
            }
        } else if ((k == K_TEMP || k == K_VERSION) && (fi->flags & O_TRUNC)) {
            char tn[32];
            version_temp_name(n->ver, tn);
            pthread_mutex_lock(&f->lock);
            fs_temp *t = temp_find(f, n->a, k == K_TEMP ? n->b : tn);
            if (t) {
                buf_reset(&t->data);
                t->mtime_ms = util_now_ms();
            }
            pthread_mutex_unlock(&f->lock);
        }
    } else if (k == K_TEMP) {
        fi->direct_io = 1;
    } else if (k != K_HISTORY && k != K_WAL_ENTRIES) {
        int e = 0;
        mark_cached(f, n, true);
        h->blob = fs_content(f, n, &e);
        if (!h->blob) {
            fh_free(h);
            fuse_reply_err(req, e ? e : EIO);
            return;
        }
        if (k == K_WAL_STATS)
            /* its figures also move without a record (an fsync(2), a
             * compaction), which no invalidation follows: read it fresh */
            fi->direct_io = 1;
        else
            fi->keep_cache = 1;
        fi->noflush = 1; /* nothing to report at close: spare the round trip */
    } else {
        mark_cached(f, n, true);
        fi->keep_cache = 1;
        fi->noflush = 1;
    }
    fi->fh = h->id;
    if (created) {
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        mark_cached(f, n, false);
        int r = fs_stat_node(f, n, &e.attr);
        if (r < 0) {
            pthread_mutex_lock(&f->lock);
            fs_node_forget(f, n, 1);
            pthread_mutex_unlock(&f->lock);
            fh_free(h);
            fuse_reply_err(req, -r);
            return;
        }
        e.ino = n->ino;
        e.attr_timeout = f->attr_timeout;
        e.entry_timeout = f->entry_timeout;
        if (fuse_reply_create(req, &e, fi) != 0) {
            pthread_mutex_lock(&f->lock);
            fs_node_forget(f, n, 1);
            pthread_mutex_unlock(&f->lock);
            fh_free(h);
        }
    } else if (fuse_reply_open(req, fi) != 0) {
        fh_free(h);
    }
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fs *f = F(req);
    fs_node *n = node_of(f, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (fs_is_dir_kind(kind_of(n))) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (f->no_open && (fi->flags & O_ACCMODE) == O_RDONLY) {
        /* the kernel takes this as "open without asking" from now on,
         * for every file of the mount, and opens this one itself */
        static atomic_bool told;
        if (!atomic_exchange(&told, true))
            log_info("mount: read-only, so files open without a round trip to stmfs "
                     "(FUSE no_open); watch files end at once");
        fuse_reply_err(req, ENOSYS);
        return;
    }
    open_node(req, n, fi, false);
}

static void reply_slice(fuse_req_t req, const char *data, size_t len, size_t size, off_t off)
{
    if ((size_t)off >= len)
        fuse_reply_buf(req, NULL, 0);
    else
        fuse_reply_buf(req, data + off, len - (size_t)off < size ? len - (size_t)off : size);
}

static void do_read(fuse_req_t req, fh *h, size_t size, off_t off)
{
    fs *f = F(req);
    if (h->self) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (h->watch) {
        fs_watch_read(f, h->watch, req, size);
        return;
    }
    stm_err err;
    if (h->kind == K_HISTORY || h->kind == K_WAL_ENTRIES) {
        buf out = {0};
        uint64_t total;
        stm_code c = h->kind == K_HISTORY
                         ? eng_history_read(f->e, h->a, (uint64_t)off, size, &out, &total, &err)
                         : eng_entries_read(f->e, (uint64_t)off, size, &out, &total, &err);
        if (c != STM_OK)
            fuse_reply_err(req, fs_errno_of(c));
        else
            fuse_reply_buf(req, out.data, out.len);
        buf_free(&out);
        return;
    }
    if (h->blob) {
        reply_slice(req, h->blob->data, h->blob->len, size, off);
        return;
    }
    if (h->writing && (h->kind == K_DEF_JSON || h->kind == K_DEF_YAML)) {
        pthread_mutex_lock(&h->lock);
        reply_slice(req, h->w.data, h->w.len, size, off);
        pthread_mutex_unlock(&h->lock);
        return;
    }
    /* temps, pending versions, and files opened for writing: current content */
    fs_node *n = node_of(f, h->ino);
    int e = 0;
    fs_blob *b = n ? fs_content(f, n, &e) : NULL;
    if (!b) {
        fuse_reply_err(req, e ? e : ENOENT);
        return;
    }
    reply_slice(req, b->data, b->len, size, off);
    fs_blob_unref(b);
}

/* ---- events and new ------------------------------------------------------- */

/* Applies one line; on failure records the error for the error file. */
static stm_code apply_line(fs *f, fh *h, const char *line, size_t len, uint64_t *seq,
                           stm_err *err)
{
    cJSON *p;
    const char *op;
    if (len > f->max_line) {
        stm_fail(err, STM_BAD_REQUEST, "a line longer than %zu bytes (limits.max_line_bytes)",
                 f->max_line);
        p = NULL;
        op = NULL;
    } else if (h->kind == K_EVENTS) {
        op = "APPLY_EVENT";
        p = fs_event_line(h->a, line, len, err);
    } else {
        op = "CREATE_INSTANCE";
        uint32_t ver = 0;
        stm_err e2;
        if (eng_machine_latest(f->e, h->a, &ver, &e2) != STM_OK) {
            stm_fail(err, STM_MACHINE_NOT_FOUND,
                     "machine '%s' has no version yet: write its definition.json first", h->a);
            p = NULL;
        } else {
            p = fs_new_line(h->a, ver, line, len, err);
        }
    }
    if (!p && err->code == STM_OK) return STM_OK; /* empty line */
    stm_code c = err->code;
    if (p) {
        cJSON *res = NULL;
        uint64_t s = 0;
        c = eng_call(f->e, op, p, &res, &s, err);
        if (c == STM_OK && s > *seq) *seq = s;
        cJSON_Delete(res);
        cJSON_Delete(p);
    }
    if (c != STM_OK) {
        size_t l = len;
        while (l && (line[l - 1] == '\r' || line[l - 1] == ' ')) l--;
        if (h->kind == K_EVENTS) {
            /* the event name (an indented line's too), or the whole line
             * for a params object */
            size_t ws = 0;
            while (ws < l && (line[ws] == ' ' || line[ws] == '\t')) ws++;
            size_t we = ws;
            while (we < l && line[we] != ' ' && line[we] != '\t') we++;
            bool params = ws < l && line[ws] == '{';
            fs_set_error(f, false, h->a, err, params ? "line" : "event",
                         params ? line : line + ws, params ? l : we - ws);
        } else {
            fs_set_error(f, true, h->a, err, "line", line, l);
        }
    }
    return c;
}

/* The inode of the error file a handle's rejections go to; 0 while the
 * kernel has not looked it up (nothing cached to invalidate). */
static uint64_t error_ino(fs *f, const fh *h)
{
    pthread_mutex_lock(&f->lock);
    fs_node *en = fs_node_find(f, h->kind == K_EVENTS ? K_IERROR : K_MERROR, h->a, NULL, 0);
    uint64_t ino = en ? en->ino : 0;
    pthread_mutex_unlock(&f->lock);
    return ino;
}

/* Makes the records up to seq durable and visible; queues the error file's
 * invalidation if one was written. ferr is the error of the failed line; if
 * the log fails instead, it becomes that error. */
static int settle(fs *f, fh *h, uint64_t seq, stm_code failed, stm_err *ferr)
{
    stm_err err;
    int r = 0;
    if (seq) {
        if (eng_wait(f->e, seq, &err) == STM_OK) {
            fs_notify_wait_seq(f, seq);
        } else {
            /* The WAL failed before the lines were durable: they never
             * happened (no notification will come), and error says why. */
            r = fs_errno_of_err(&err);
            fs_set_error(f, h->kind != K_EVENTS, h->a, &err, NULL, NULL, 0);
            failed = err.code;
            *ferr = err;
        }
    }
    if (failed != STM_OK) {
        uint64_t ino = error_ino(f, h);
        if (ino) fs_notify_inval(f, ino, 0, NULL, true);
        if (!r) r = fs_errno_of_err(ferr);
    }
    return r;
}

/* Applies every complete line in h->w; keeps a trailing partial line unless
 * all is set. prev is how many bytes of h->w came before the current write.
 * Returns 0 or an errno. When a line fails after lines of the current write
 * were applied, the write is cut short there (*consumed = the bytes of the
 * current write that were applied), like a pipe that takes part of a
 * buffer: the caller sends the rest again and then gets the errno, so
 * nothing after a failing line is ever applied. why (may be NULL) gets the
 * error when the result is one. When every line was taken and later is
 * not NULL, the wait for them is left to the caller: *later is the seq
 * to answer at (0: nothing to wait for). */
static int apply_lines(fs *f, fh *h, bool all, size_t prev, size_t *consumed, stm_err *why,
                       uint64_t *later)
{
    uint64_t seq = 0;
    stm_code failed = STM_OK;
    stm_err err;
    size_t start = 0;
    *consumed = h->w.len - prev;
    while (start < h->w.len) {
        char *nl = memchr(h->w.data + start, '\n', h->w.len - start);
        if (!nl && !all) break;
        size_t end = nl ? (size_t)(nl - h->w.data) : h->w.len;
        failed = apply_line(f, h, h->w.data + start, end - start, &seq, &err);
        if (failed != STM_OK) {
            if (start > prev) {
                /* a short write: what came before the failing line */
                *consumed = start - prev;
                failed = STM_OK;
            }
            start = h->w.len; /* the rest is the caller's again, or dropped */
            break;
        }
        start = nl ? end + 1 : end;
    }
    memmove(h->w.data, h->w.data + start, h->w.len - start);
    h->w.len -= start;
    if (h->w.data) h->w.data[h->w.len] = 0;
    if (later && failed == STM_OK) {
        *later = seq;
        return 0;
    }
    int r = settle(f, h, seq, failed, &err);
    if (r && why) *why = err;
    return r;
}

/* ---- definitions ---------------------------------------------------------- */

/* Puts text as a definition of machine m: exactly version `ver` when
 * explicit, else the newest version if identical (nothing new) or the next
 * one. yaml says how to read the text. *no_number is set when the newest
 * is the highest number there is, so there is no next one. */
static stm_code put_definition(fs *f, const char *m, const char *text, size_t len, bool yaml,
                               uint32_t ver, bool explicit_ver, uint64_t *seq, bool *no_number,
                               stm_err *err)
{
    cJSON *def = yaml ? def_yaml_to_json(text, len, err) : json_parse(text, len, err);
    if (!def) return err->code ? err->code : STM_BAD_REQUEST;
    uint32_t latest = 0;
    stm_err e2;
    bool has = eng_machine_latest(f->e, m, &latest, &e2) == STM_OK;
    uint32_t try_ver = explicit_ver ? ver : has ? latest : 1;
    stm_code c;
    for (int attempt = 0;; attempt++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "machine", m);
        cJSON_AddNumberToObject(p, "version", try_ver);
        cJSON_AddItemReferenceToObject(p, "definition", def);
        cJSON *res = NULL;
        c = eng_call(f->e, "PUT_MACHINE", p, &res, seq, err);
        cJSON_Delete(p);
        cJSON_Delete(res);
        /* different from the newest: it becomes the next version */
        if (c == STM_MACHINE_VERSION_EXISTS && !explicit_ver && attempt == 0 && has) {
            if (latest == UINT32_MAX) {
                /* latest + 1 would wrap to 0 */
                *no_number = true;
                c = stm_fail(err, STM_MACHINE_VERSION_LIMIT_EXCEEDED,
                             "machine '%s' already has version %u, the highest there can be, "
                             "so no version number is left for a new definition",
                             m, UINT32_MAX);
                break;
            }
            try_ver = latest + 1;
            continue;
        }
        break;
    }
    cJSON_Delete(def);
    return c;
}

static void forget_empty_machine(fs *f, const char *m)
{
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n_empty_machines; i++)
        if (strcmp(f->empty_machines[i], m) == 0) {
            free(f->empty_machines[i]);
            f->empty_machines[i] = f->empty_machines[--f->n_empty_machines];
            break;
        }
    pthread_mutex_unlock(&f->lock);
}

/* Defines from text and waits until it is durable and visible. why (may
 * be NULL) gets the error when the result is one. */
static int define(fs *f, const char *m, const char *text, size_t len, bool yaml, uint32_t ver,
                  bool explicit_ver, stm_err *why)
{
    stm_err err = {0};
    uint64_t seq = 0;
    bool no_number = false;
    stm_code c = put_definition(f, m, text, len, yaml, ver, explicit_ver, &seq, &no_number, &err);
    if (c != STM_OK) {
        fs_set_error(f, true, m, &err, NULL, NULL, 0);
        pthread_mutex_lock(&f->lock);
        fs_node *en = fs_node_find(f, K_MERROR, m, NULL, 0);
        uint64_t ino = en ? en->ino : 0;
        pthread_mutex_unlock(&f->lock);
        if (ino) fs_notify_inval(f, ino, 0, NULL, false);
        if (why) *why = err;
        if (no_number) return EOVERFLOW;
        return c == STM_WAL_IO_ERROR ? fs_errno_of_err(&err) : fs_errno_of(c);
    }
    if (eng_wait(f->e, seq, &err) != STM_OK) {
        fs_set_error(f, true, m, &err, NULL, NULL, 0);
        if (why) *why = err;
        return fs_errno_of_err(&err);
    }
    forget_empty_machine(f, m);
    fs_notify_wait_seq(f, seq);
    return 0;
}

static void write_at(buf *b, const char *data, size_t size, off_t off)
{
    size_t end = (size_t)off + size;
    if (end > b->len) {
        buf_reserve(b, end - b->len);
        memset(b->data + b->len, 0, end - b->len);
        b->len = end;
        b->data[end] = 0;
    }
    memcpy(b->data + off, data, size);
}

/* A write's lines were applied and the log failed before they were
 * durable (notify.c answers): as settle does for a write that waited. */
static int ack_failed(fs *f, fs_ack *a, const stm_err *err, uint64_t *ino)
{
    fh *h = a->arg;
    int r = fs_errno_of_err(err);
    pthread_mutex_lock(&h->lock);
    fs_set_error(f, h->kind != K_EVENTS, h->a, err, NULL, NULL, 0);
    h->failed = r;
    pthread_mutex_unlock(&h->lock);
    *ino = error_ino(f, h);
    return r;
}

static void ack_done(fs_ack *a)
{
    fh_put(a->arg);
    free(a);
}

static void do_write(fuse_req_t req, fh *h, const char *data, size_t size, off_t off)
{
    fs *f = F(req);
    if (h->self) {
        fuse_reply_write(req, size);
        return;
    }
    if (!h->writing) {
        fuse_reply_err(req, EBADF);
        return;
    }
    pthread_mutex_lock(&h->lock);
    int r = 0;
    uint64_t later = 0;
    switch (h->kind) {
    case K_EVENTS:
    case K_NEW:
        /* a stream of lines: the offset does not matter */
    {
        if (h->failed) {
            r = h->failed;
            break;
        }
        size_t prev = h->w.len;
        buf_add(&h->w, data, size);
        r = apply_lines(f, h, false, prev, &size, NULL, &later);
        if (!r && h->w.len > f->max_line) {
            /* Refuse the partial line before it eats memory, but only once
             * the lines before it are durable: this write waits for them
             * here instead of in the notifier. */
            stm_err err;
            if (later) r = settle(f, h, later, STM_OK, &err);
            later = 0;
            if (r) {
                h->failed = r;
                break;
            }
            stm_fail(&err, STM_BAD_REQUEST,
                     "a line longer than %zu bytes (limits.max_line_bytes)", f->max_line);
            fs_set_error(f, h->kind == K_NEW, h->a, &err, "line", h->w.data, 64);
            buf_free(&h->w);
            r = settle(f, h, 0, STM_BAD_REQUEST, &err);
        }
        h->failed = r;
        break;
    }
    case K_DEF_JSON:
    case K_DEF_YAML:
        write_at(&h->w, data, size, off);
        h->dirty = true;
        break;
    case K_TEMP:
    case K_VERSION: {
        char tn[32];
        version_temp_name(h->ver, tn);
        pthread_mutex_lock(&f->lock);
        fs_temp *t = temp_find(f, h->a, h->kind == K_TEMP ? h->b : tn);
        if (t) {
            write_at(&t->data, data, size, off);
            t->mtime_ms = util_now_ms();
        }
        pthread_mutex_unlock(&f->lock);
        if (!t) r = ENOENT;
        h->dirty = true;
        break;
    }
    default: r = EACCES;
    }
    pthread_mutex_unlock(&h->lock);
    if (r) {
        fuse_reply_err(req, r);
    } else if (later) {
        fs_ack *a = xcalloc(1, sizeof *a);
        a->req = req;
        a->seq = later;
        a->size = size;
        a->failed = ack_failed;
        a->done = ack_done;
        a->arg = h;
        fh_hold(h);
        fs_notify_answer_at(f, a);
    } else {
        fuse_reply_write(req, size);
    }
}

/* Ends the input of a handle: applies the last partial line, or puts the
 * whole definition. Returns what close(2) reports; why (may be NULL) gets
 * the error. A rejected line fails the handle as a rejected write does:
 * nothing written after it is applied. */
static int finish(fs *f, fh *h, stm_err *why)
{
    int r = 0;
    pthread_mutex_lock(&h->lock);
    switch (h->kind) {
    case K_EVENTS:
    case K_NEW:
        if (h->w.len && !h->failed) {
            size_t consumed;
            r = apply_lines(f, h, true, 0, &consumed, why, NULL);
            if (r) h->failed = r;
        }
        break;
    case K_DEF_JSON:
    case K_DEF_YAML:
        if (h->dirty && h->w.len)
            r = define(f, h->a, h->w.data, h->w.len, h->kind == K_DEF_YAML, 0, false, why);
        h->dirty = false;
        break;
    case K_VERSION:
        if (h->pending_version && h->dirty) {
            char tn[32];
            version_temp_name(h->ver, tn);
            pthread_mutex_lock(&f->lock);
            fs_temp *t = temp_find(f, h->a, tn);
            char *text = t ? xstrndup(t->data.data ? t->data.data : "", t->data.len) : NULL;
            size_t len = t ? t->data.len : 0;
            pthread_mutex_unlock(&f->lock);
            if (text) {
                r = define(f, h->a, text, len, false, h->ver, true, why);
                free(text);
                /* defined or refused, the pending file goes: the versions
                 * dir shows what the engine holds */
                pthread_mutex_lock(&f->lock);
                t = temp_find(f, h->a, tn);
                if (t) temp_remove(f, t);
                pthread_mutex_unlock(&f->lock);
                h->pending_version = false;
            }
            h->dirty = false;
        }
        break;
    default: break;
    }
    pthread_mutex_unlock(&h->lock);
    return r;
}

/* A read of a file the kernel opened without asking (no_open): the content
 * of the node itself. A watch file streams only what happens after its
 * open, and nothing happens in a read-only database: it ends at once. */
static void read_unopened(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off)
{
    fs *f = F(req);
    fs_node *n = node_of(f, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    enum fs_kind k = kind_of(n);
    if (k == K_WATCH || k == K_WAL_WATCH) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    /* do_read wants a handle's view of the node; nothing outlives this
     * read, so a local one does (no allocation, no handle table) */
    fh h = {.kind = k, .ino = n->ino, .a = n->a, .b = n->b, .ver = n->ver, .f = f};
    do_read(req, &h, size, off);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    fh *h = FH(fi);
    if (!h) {
        if (fi->fh == 0 && F(req)->no_open)
            read_unopened(req, ino, size, off);
        else
            fuse_reply_err(req, EBADF);
        return;
    }
    do_read(req, h, size, off);
    fh_put(h);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)ino;
    fh *h = FH(fi);
    if (!h) {
        fuse_reply_err(req, EBADF);
        return;
    }
    do_write(req, h, data, size, off);
    fh_put(h);
}

/* The thread group (process) of a thread, from /proc; -1 if unknown. */
static pid_t tgid_of(pid_t tid)
{
    char path[64], b[512];
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, b, sizeof b - 1);
    close(fd);
    if (n <= 0) return -1;
    b[n] = 0;
    const char *t = strstr(b, "\nTgid:");
    return t ? (pid_t)strtol(t + 6, NULL, 10) : -1;
}

/* Is the thread that sent a FLUSH part of the process that opened the
 * file? Requests carry thread ids, and a multithreaded program (Go, Java,
 * Python with threads) may close on another thread than it opened on. When
 * the opening thread is gone and was not the main thread, the answer is
 * no, and the handle is finished at RELEASE. */
static bool same_process(pid_t opener, pid_t flusher)
{
    if (opener == flusher) return true;
    if (opener <= 0 || flusher <= 0) return false;
    pid_t t = tgid_of(flusher);
    if (t < 0) return false;
    if (t == opener) return true; /* opened on the main thread */
    return tgid_of(opener) == t;
}

/* Every close(2) of a descriptor of the file, in any process. */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    fs *f = F(req);
    fh *h = FH(fi);
    if (!h) {
        /* no_open: nothing to do at any close; ENOSYS tells the kernel to
         * stop sending FLUSH, a round trip per close otherwise */
        fuse_reply_err(req, f->no_open ? ENOSYS : 0);
        return;
    }
    int r = 0;
    /* A child exiting with an inherited stdout closes the file too, in the
     * middle of its parent's output: only the opener's close ends it. */
    if (h->writing && !h->self && same_process(h->opener, fuse_req_ctx(req)->pid))
        r = finish(f, h, NULL);
    fuse_reply_err(req, r);
    fh_put(h);
}

/* The path of a writable handle's file, for a log line. */
static void handle_path(const fh *h, buf *out)
{
    buf_puts(out, h->kind == K_EVENTS ? "instances/" : "machines/");
    fs_name_encode(h->a, out);
    switch (h->kind) {
    case K_EVENTS: buf_puts(out, "/events"); break;
    case K_NEW: buf_puts(out, "/new"); break;
    case K_DEF_JSON: buf_puts(out, "/definition.json"); break;
    case K_DEF_YAML: buf_puts(out, "/definition.yaml"); break;
    case K_VERSION: buf_printf(out, "/versions/%u.json", h->ver); break;
    default: break;
    }
}

/* The last close: the kernel waits for no answer, so an error of what is
 * finished here goes to the error file (finish wrote it) and the log. */
static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    fs *f = F(req);
    fh *h = FH(fi);
    if (!h) {
        fuse_reply_err(req, 0);
        return;
    }
    if (h->writing && !h->self) {
        stm_err why = {0};
        int r = finish(f, h, &why);
        if (r) {
            buf path = {0}, shown = {0};
            handle_path(h, &path);
            buf_add_shown(&shown, path.data ? path.data : "", path.len, 4096);
            buf_puts(&shown, ": rejected at the last close (");
            buf_puts(&shown, strerror(r));
            buf_puts(&shown, "): ");
            buf_puts(&shown, stm_code_name(why.code));
            buf_puts(&shown, ": ");
            buf_add_shown(&shown, why.msg, strlen(why.msg), sizeof why.msg);
            log_warn("mount: %s", buf_cstr(&shown));
            buf_free(&path);
            buf_free(&shown);
        }
    }
    fh_free(h);  /* the table's reference */
    fh_put(h);   /* ours; the last user frees it */
    fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino, (void)datasync, (void)fi;
    /* Under every_write each acknowledged write is durable already and this
     * costs nothing; under the other policies fsync(2) is how a script asks
     * for durability, so it gets a real fdatasync of the log. */
    stm_err err;
    int r = 0;
    if (eng_sync(F(req)->e, &err) != STM_OK) r = fs_errno_of_err(&err);
    fuse_reply_err(req, r);
}

static void op_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                    struct fuse_pollhandle *ph)
{
    (void)ino;
    fh *h = FH(fi);
    if (h && h->watch) {
        fs_watch_poll(F(req), h->watch, req, ph);
        fh_put(h);
        return;
    }
    if (h) fh_put(h);
    if (ph) fuse_pollhandle_destroy(ph);
    fuse_reply_poll(req, POLLIN | POLLOUT);
}

/* ---- names: create, mkdir, rmdir, unlink, rename ------------------------- */

static bool reserved_in_machine(const char *name)
{
    return fixed_child(K_MACHINE, name) != K_NONE;
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    (void)mode;
    fs *f = F(req);
    fs_node *p = node_of(f, parent);
    if (f->ro) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (!p) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    enum fs_kind pk = kind_of(p);
    if (pk == K_MACHINE) {
        enum fs_kind k = fixed_child(K_MACHINE, name);
        if (k == K_DEF_JSON || k == K_DEF_YAML || k == K_NEW) {
            /* the name exists; O_CREAT just opens it */
            if (fi->flags & O_EXCL) {
                fuse_reply_err(req, EEXIST);
                return;
            }
            pthread_mutex_lock(&f->lock);
            fs_node *n = fs_node_get(f, k, p->a, NULL, 0);
            n->nlookup++;
            pthread_mutex_unlock(&f->lock);
            open_node(req, n, fi, true);
            return;
        }
        if (k != K_NONE) {
            fuse_reply_err(req, EEXIST);
            return;
        }
        pthread_mutex_lock(&f->lock);
        fs_temp *t = temp_find(f, p->a, name);
        if (t && (fi->flags & O_EXCL)) {
            pthread_mutex_unlock(&f->lock);
            fuse_reply_err(req, EEXIST);
            return;
        }
        if (!t) t = temp_add(f, p->a, name);
        fs_node *n = fs_node_get(f, K_TEMP, p->a, name, 0);
        n->alias = K_NONE;
        n->nlookup++;
        pthread_mutex_unlock(&f->lock);
        open_node(req, n, fi, true);
        return;
    }
    if (pk == K_VERSIONS) {
        uint32_t v;
        if (!fs_version_name(name, &v)) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        uint32_t vs[4096];
        size_t nv = eng_machine_versions(f->e, p->a, vs, 4096);
        for (size_t i = 0; i < nv && i < 4096; i++)
            if (vs[i] == v) {
                fuse_reply_err(req, EEXIST);
                return;
            }
        char tn[32];
        version_temp_name(v, tn);
        pthread_mutex_lock(&f->lock);
        if (!temp_find(f, p->a, tn)) temp_add(f, p->a, tn);
        fs_node *n = fs_node_get(f, K_VERSION, p->a, NULL, v);
        n->nlookup++;
        pthread_mutex_unlock(&f->lock);
        open_node(req, n, fi, true);
        return;
    }
    /* instances come from machines/<m>/new, files are fixed elsewhere */
    fuse_reply_err(req, pk == K_INSTANCES ? EPERM : EACCES);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    (void)mode;
    fs *f = F(req);
    fs_node *p = node_of(f, parent);
    if (!p) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    const char *sname;
    buf raw = {0};
    if (kind_of(p) == K_INSTANCES && fs_self_op(f, req, &sname) == SELF_CREATE &&
        fs_name_decode(name, &raw)) {
        /* the helper's mkdir: the instance exists already; this only makes
         * inotify report the CREATE. It may be deleted again by now (its
         * DELETE is queued to follow): the CREATE is still reported, with
         * an entry the kernel does not keep. */
        if (instance_known(f, buf_cstr(&raw), NULL))
            reply_node(req, K_INST, buf_cstr(&raw), NULL, 0);
        else
            reply_gone_dir(req, buf_cstr(&raw));
    } else if (f->ro) {
        fuse_reply_err(req, EROFS);
    } else if (kind_of(p) == K_MACHINES) {
        const char *why = NULL;
        if (!fs_name_decode_why(name, &raw, &why) || strlen(buf_cstr(&raw)) > ENG_MAX_ID_LEN) {
            /* nothing else can say why: there is no machine, so no error file */
            if (why) {
                buf lit = {0}, shown = {0}, shown_lit = {0};
                fs_name_encode(name, &lit);
                buf_add_shown(&shown, name, strlen(name), 4096);
                buf_add_shown(&shown_lit, buf_cstr(&lit), lit.len, 4096);
                log_warn("mount: mkdir machines/%s: Invalid argument: not a valid escaped name "
                         "(%s); in the mount %%25 stands for %% and %%2F for /, so a literal "
                         "%% is written %%25: machines/%s",
                         buf_cstr(&shown), why, buf_cstr(&shown_lit));
                buf_free(&lit);
                buf_free(&shown);
                buf_free(&shown_lit);
            }
            fuse_reply_err(req, EINVAL);
        } else if (machine_known(f, buf_cstr(&raw))) {
            fuse_reply_err(req, EEXIST);
        } else {
            pthread_mutex_lock(&f->lock);
            f->empty_machines = xrealloc(f->empty_machines,
                                         (f->n_empty_machines + 1) * sizeof *f->empty_machines);
            f->empty_machines[f->n_empty_machines++] = xstrdup(buf_cstr(&raw));
            __atomic_store_n(&f->machines_mtime, util_now_ms(), __ATOMIC_RELAXED);
            pthread_mutex_unlock(&f->lock);
            reply_node(req, K_MACHINE, buf_cstr(&raw), NULL, 0);
        }
    } else {
        fuse_reply_err(req, kind_of(p) == K_INSTANCES ? EPERM : EACCES);
    }
    buf_free(&raw);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fs *f = F(req);
    fs_node *p = node_of(f, parent);
    if (!p) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    const char *sname;
    buf raw = {0};
    if (kind_of(p) == K_INSTANCES && fs_self_op(f, req, &sname) == SELF_DELETE) {
        fuse_reply_err(req, 0); /* the helper's rmdir, for inotify only */
    } else if (f->ro) {
        fuse_reply_err(req, EROFS);
    } else if (kind_of(p) == K_INSTANCES) {
        if (!fs_name_decode(name, &raw)) {
            fuse_reply_err(req, ENOENT);
        } else {
            cJSON *params = cJSON_CreateObject();
            cJSON_AddStringToObject(params, "instance_id", buf_cstr(&raw));
            cJSON *res = NULL;
            uint64_t seq = 0;
            stm_err err;
            /* this rmdir fires inotify itself: the helper need not */
            fs_notify_skip(f, buf_cstr(&raw));
            stm_code c = eng_call(f->e, "DELETE_INSTANCE", params, &res, &seq, &err);
            cJSON_Delete(params);
            cJSON_Delete(res);
            if (c != STM_OK) fs_notify_unskip(f, buf_cstr(&raw));
            if (c == STM_OK && eng_wait(f->e, seq, &err) != STM_OK) c = err.code;
            /* no wait for the notifier here: the kernel holds instances/
             * locked until we reply, and invalidating a name in it needs
             * that lock */
            fuse_reply_err(req, c == STM_OK ? 0 : fs_errno_of_err(&err));
        }
    } else if (kind_of(p) == K_MACHINES) {
        if (!fs_name_decode(name, &raw)) {
            fuse_reply_err(req, ENOENT);
        } else {
            uint32_t v;
            stm_err err;
            if (eng_machine_latest(f->e, buf_cstr(&raw), &v, &err) == STM_OK) {
                fuse_reply_err(req, ENOTEMPTY); /* versions are forever */
            } else {
                bool found = false;
                pthread_mutex_lock(&f->lock);
                for (size_t i = 0; i < f->n_empty_machines; i++)
                    if (strcmp(f->empty_machines[i], buf_cstr(&raw)) == 0) {
                        free(f->empty_machines[i]);
                        f->empty_machines[i] = f->empty_machines[--f->n_empty_machines];
                        found = true;
                        break;
                    }
                pthread_mutex_unlock(&f->lock);
                fuse_reply_err(req, found ? 0 : ENOENT);
            }
        }
    } else {
        fuse_reply_err(req, EPERM);
    }
    buf_free(&raw);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fs *f = F(req);
    fs_node *p = node_of(f, parent);
    if (!p) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (f->ro) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (kind_of(p) == K_MACHINE) {
        pthread_mutex_lock(&f->lock);
        fs_temp *t = temp_find(f, p->a, name);
        if (t) temp_remove(f, t);
        pthread_mutex_unlock(&f->lock);
        fuse_reply_err(req, t ? 0 : reserved_in_machine(name) ? EPERM : ENOENT);
        return;
    }
    if (kind_of(p) == K_INST) {
        /* `rm -r` of an instance stops at its files with EPERM and never
         * reaches the rmdir that deletes it: the error file says so. */
        stm_err err;
        stm_fail(&err, STM_BAD_REQUEST,
                 "the files of an instance cannot be removed one by one: `rmdir` its "
                 "directory to delete the instance (rm -r stops at the files)");
        fs_set_error(f, false, p->a, &err, "unlink", name, strlen(name));
        pthread_mutex_lock(&f->lock);
        fs_node *en = fs_node_find(f, K_IERROR, p->a, NULL, 0);
        uint64_t ino = en ? en->ino : 0;
        pthread_mutex_unlock(&f->lock);
        if (ino) fs_notify_inval(f, ino, 0, NULL, false);
    }
    fuse_reply_err(req, EPERM);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    fs *f = F(req);
    fs_node *p = node_of(f, parent), *np = node_of(f, newparent);
    if (!p || !np) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (f->ro) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (kind_of(p) != K_MACHINE || p != np) {
        fuse_reply_err(req, kind_of(p) == K_MACHINE || kind_of(np) == K_MACHINE ? EXDEV : EPERM);
        return;
    }
    if (flags & RENAME_EXCHANGE) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    const char *m = p->a;
    enum fs_kind src = fixed_child(K_MACHINE, name), dst = fixed_child(K_MACHINE, newname);
    pthread_mutex_lock(&f->lock);
    fs_temp *st = temp_find(f, m, name), *dt = temp_find(f, m, newname);
    if ((flags & RENAME_NOREPLACE) && (dt || dst != K_NONE)) {
        pthread_mutex_unlock(&f->lock);
        fuse_reply_err(req, EEXIST);
        return;
    }
    if (st && (dst == K_DEF_JSON || dst == K_DEF_YAML)) {
        /* an editor's temp file saved over the definition */
        char *text = xstrndup(st->data.data ? st->data.data : "", st->data.len);
        size_t len = st->data.len;
        pthread_mutex_unlock(&f->lock);
        int r = define(f, m, text, len, dst == K_DEF_YAML, 0, false, NULL);
        free(text);
        if (r) {
            fuse_reply_err(req, r);
            return;
        }
        uint64_t ino = 0;
        pthread_mutex_lock(&f->lock);
        st = temp_find(f, m, name);
        if (st) temp_remove(f, st);
        /* the kernel now knows the temp's inode under the definition's
         * name: from here on it reads as the definition, and the name is
         * invalidated so the next lookup finds the real one */
        fs_node *tn = fs_node_find(f, K_TEMP, m, name, 0);
        if (tn) tn->alias = dst;
        ino = p->ino;
        pthread_mutex_unlock(&f->lock);
        fuse_reply_err(req, 0);
        fs_notify_inval(f, 0, ino, newname, false);
        return;
    }
    if (st && dst == K_NONE) {
        /* temp to temp */
        if (dt) temp_remove(f, dt);
        free(st->name);
        st->name = xstrdup(newname);
        pthread_mutex_unlock(&f->lock);
        fuse_reply_err(req, 0);
        return;
    }
    if ((src == K_DEF_JSON || src == K_DEF_YAML) && dst == K_NONE) {
        /* an editor moving the original aside as a backup: the backup is a
         * copy, the definition stays */
        pthread_mutex_unlock(&f->lock);
        pthread_mutex_lock(&f->lock);
        fs_node *sn = fs_node_get(f, src, m, NULL, 0);
        pthread_mutex_unlock(&f->lock);
        int e = 0;
        fs_blob *b = fs_content(f, sn, &e);
        pthread_mutex_lock(&f->lock);
        dt = temp_find(f, m, newname);
        if (!dt) dt = temp_add(f, m, newname);
        buf_reset(&dt->data);
        if (b) buf_add(&dt->data, b->data, b->len);
        pthread_mutex_unlock(&f->lock);
        if (b) fs_blob_unref(b);
        fuse_reply_err(req, 0);
        return;
    }
    pthread_mutex_unlock(&f->lock);
    fuse_reply_err(req, st ? EPERM : ENOENT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    fs *f = F(req);
    fs_node *n = node_of(f, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    const char *sname;
    bool self = fs_self_op(f, req, &sname) != SELF_NONE;
    enum fs_kind k = kind_of(n);
    if (!self && (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
        /* Modes and owners are fixed by the layout: a change is refused
         * (saying yes and changing nothing would lie). Asking for what the
         * file has already is no change, and succeeds: sed -i, install -m
         * 644 and Python's shutil.copy set the mode they copied. */
        if (f->ro) {
            fuse_reply_err(req, EROFS);
            return;
        }
        struct stat cur;
        int r = fs_stat_node(f, n, &cur);
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        if (((to_set & FUSE_SET_ATTR_MODE) && (attr->st_mode & 07777) != (cur.st_mode & 07777)) ||
            ((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != cur.st_uid) ||
            ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != cur.st_gid)) {
            fuse_reply_err(req, EPERM);
            return;
        }
    }
    if (!self && (to_set & FUSE_SET_ATTR_SIZE)) {
        if (f->ro) {
            fuse_reply_err(req, EROFS);
            return;
        }
        if (!writable_kind(k)) {
            fuse_reply_err(req, EACCES);
            return;
        }
        fh *h = fi ? FH(fi) : NULL;
        if ((k == K_DEF_JSON || k == K_DEF_YAML) && h && h->writing) {
            pthread_mutex_lock(&h->lock);
            if ((size_t)attr->st_size < h->w.len) h->w.len = (size_t)attr->st_size;
            else write_at(&h->w, "", 0, attr->st_size);
            if (h->w.data) h->w.data[h->w.len] = 0;
            h->dirty = true;
            pthread_mutex_unlock(&h->lock);
        } else if (k == K_TEMP || k == K_VERSION) {
            char tn[32];
            version_temp_name(n->ver, tn);
            pthread_mutex_lock(&f->lock);
            fs_temp *t = temp_find(f, n->a, k == K_TEMP ? n->b : tn);
            if (t) {
                if ((size_t)attr->st_size < t->data.len) t->data.len = (size_t)attr->st_size;
                if (t->data.data) t->data.data[t->data.len] = 0;
                t->mtime_ms = util_now_ms();
            }
            pthread_mutex_unlock(&f->lock);
        }
        if (h) fh_put(h);
        /* events and new are streams: truncating them means nothing */
    }
    /* times are fixed by the layout too; accepted so that touch, cp -p
     * and editors do not fail */
    struct stat st;
    if (!self) mark_cached(f, n, false);
    int r = fs_stat_node(f, n, &st);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_attr(req, &st, self ? 0 : f->attr_timeout);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    struct statvfs s;
    memset(&s, 0, sizeof s);
    s.f_bsize = 4096;
    s.f_frsize = 4096;
    s.f_blocks = s.f_bfree = s.f_bavail = 1u << 20;
    s.f_files = s.f_ffree = s.f_favail = 1u << 24;
    s.f_namemax = 255;
    fuse_reply_statfs(req, &s);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    fs *f = userdata;
    /* never writeback_cache: a rejected write would still look successful */
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    /* A machine's link to an instance names the same target for as long as
     * its inode lives (op_readlink), so the kernel may keep it: otherwise
     * every path through machines/M/instances/ pays a READLINK round trip. */
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    conn->max_write = 1u << 20;
    f->no_open = f->ro && (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT);
}

const struct fuse_lowlevel_ops fs_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .statfs = op_statfs,
    .create = op_create,
    .poll = op_poll,
};
