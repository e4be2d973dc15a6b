/*
 * notify.c - from the engine's change feed to what the kernel and file
 * watchers see.
 *
 * The notifier thread holds one subscription to every record (create,
 * apply, delete, put_machine) and, for each, tells the kernel exactly which
 * inodes and names went stale (fuse_lowlevel_notify_inval_*). It runs apart
 * from the request handlers because a notification sent from inside a
 * request can deadlock against the kernel's locks; writers that must see
 * their own change wait for it (fs_notify_wait_seq) after the engine has
 * acknowledged, never while the kernel holds a lock they would need.
 *
 * No notify call makes inotify fire (measured), so the helper thread then
 * performs real operations on the mount: an open-write-close of those of
 * state, ctx.json and history whose content changed (MODIFY, CLOSE_WRITE),
 * a mkdir or rmdir in instances/ (CREATE, DELETE). The handlers recognise
 * the helper by its thread id and leave content alone. Bursts coalesce:
 * the queue holds each (op, id) once, covering every file any of them
 * changed.
 *
 * Watch files: every open watch handle has its own subscription, live from
 * open time; the notifier moves its lines into the handle and answers the
 * parked read or wakes poll. Wakeups come through an eventfd, so the
 * engine's wake callback takes no lock of ours.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "fs/internal.h"
#include "wal/wal.h"

struct fs_inval {
    uint64_t ino, parent;
    char *name;
    uint64_t ticket;
    struct fs_inval *next;
};

struct fs_selfop {
    int kind;
    unsigned files;             /* SELF_TOUCH: TOUCH_* of the files that changed */
    char *name;                 /* encoded instance name */
    struct fs_selfop *next;
};

/* What a watch handle holds for its reader at most. A reader that stops
 * (a suspended `cat`, a full pipe) must not grow the daemon: beyond this
 * the handle stops taking lines, its subscription falls behind the ring,
 * and it catches up from the WAL once the reader reads again. */
#define WATCH_PENDING_MAX (1u << 20)

struct fs_watchfh {
    fs *f;
    eng_sub *sub;
    bool all;
    char *id;                   /* the instance watched; NULL for wal/watch */
    atomic_bool woke;
    pthread_mutex_t lock;
    buf pending;
    bool capped;                /* stopped taking lines at WATCH_PENDING_MAX */
    bool ended;                 /* fell behind what the WAL still holds */
    bool finished;              /* its instance was deleted: end of file after its lines */
    fuse_req_t parked;
    size_t parked_size;
    struct fuse_pollhandle *ph;
    fs_watchfh *next;
};

static int efd = -1; /* one mount per process */

static void kick(void)
{
    uint64_t one = 1;
    if (efd >= 0 && write(efd, &one, sizeof one) < 0) {
        /* the counter is saturated: a wakeup is pending anyway */
    }
}

static void sub_wake(void *arg)
{
    (void)arg;
    kick();
}

/* ---- the helper's own operations ----------------------------------------- */

int fs_self_op(fs *f, fuse_req_t req, const char **name)
{
    const struct fuse_ctx *c = fuse_req_ctx(req);
    int tid = atomic_load(&f->helper_tid);
    if (!tid || c->pid != tid) return SELF_NONE;
    pthread_mutex_lock(&f->slock);
    int k = f->self_kind;
    *name = f->self_name;
    pthread_mutex_unlock(&f->slock);
    return k;
}

/* ids the mount itself removed with rmdir: their DELETE was seen already */
static char **skips;
static size_t n_skips;

void fs_notify_skip(fs *f, const char *id)
{
    pthread_mutex_lock(&f->nlock);
    skips = xrealloc(skips, (n_skips + 1) * sizeof *skips);
    skips[n_skips++] = xstrdup(id);
    pthread_mutex_unlock(&f->nlock);
}

static bool take_skip(const char *id);

void fs_notify_unskip(fs *f, const char *id)
{
    pthread_mutex_lock(&f->nlock);
    take_skip(id);
    pthread_mutex_unlock(&f->nlock);
}

static bool take_skip(const char *id)
{
    for (size_t i = 0; i < n_skips; i++)
        if (strcmp(skips[i], id) == 0) {
            free(skips[i]);
            skips[i] = skips[--n_skips];
            return true;
        }
    return false;
}

/* The pending self-ops: a FIFO with a hash set beside it, so that a burst
 * of changes to one instance costs one operation and a burst over many
 * instances stays linear. Beyond SELF_QUEUE_MAX pending ops new ones are
 * dropped, as inotify itself drops events when its queue overflows. */
#define SELF_QUEUE_MAX 20000
#define SELF_COALESCE_NS 5000000u /* 5 ms */
#define SELF_WINDOW_MAX_NS 50000000u /* 50 ms */
#define SELF_BUCKETS 4096
static size_t n_self;
static struct fs_selfop *self_tail;
static struct selfkey {
    int kind;
    char *name;
    struct fs_selfop *op; /* queued while the key is in the set */
    struct selfkey *next;
} *self_set[SELF_BUCKETS];

/* The files of an instance a touch covers: only those whose content
 * changed, so that a watcher of state hears nothing of an event that left
 * the state as it was. */
enum { TOUCH_STATE = 1, TOUCH_CTX = 2, TOUCH_HISTORY = 4 };

static size_t self_hash(int kind, const char *name)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)kind;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 32)) & (SELF_BUCKETS - 1);
}

/* Removes (kind, name) from the set; the caller holds nlock. */
static void self_unmark(int kind, const char *name)
{
    for (struct selfkey **pp = &self_set[self_hash(kind, name)]; *pp; pp = &(*pp)->next)
        if ((*pp)->kind == kind && strcmp((*pp)->name, name) == 0) {
            struct selfkey *k = *pp;
            *pp = k->next;
            free(k);
            return;
        }
}

/* Whether (kind, encoded name) is waiting in the queue (caller holds nlock). */
static bool self_key_queued(int kind, const char *name)
{
    for (struct selfkey *k = self_set[self_hash(kind, name)]; k; k = k->next)
        if (k->kind == kind && strcmp(k->name, name) == 0) return true;
    return false;
}

/* Whether the instance of an encoded name is deleted (or unknown). */
static bool instance_gone(fs *f, const char *name)
{
    buf raw = {0};
    bool gone = true;
    if (fs_name_decode(name, &raw)) {
        eng_instance_view v;
        stm_err err;
        if (eng_get_instance_view(f->e, buf_cstr(&raw), false, &v, &err) == STM_OK) {
            gone = false;
            eng_instance_view_free(&v);
        }
    }
    buf_free(&raw);
    return gone;
}

/* Queues a self-op unless the same one is already waiting, which then also
 * covers files (caller holds nlock). */
static void self_push(fs *f, int kind, const char *id, unsigned files)
{
    buf nm = {0};
    fs_name_encode(id, &nm);
    size_t h = self_hash(kind, buf_cstr(&nm));
    for (struct selfkey *k = self_set[h]; k; k = k->next)
        if (k->kind == kind && strcmp(k->name, buf_cstr(&nm)) == 0) {
            k->op->files |= files;
            buf_free(&nm);
            return;
        }
    if (n_self >= SELF_QUEUE_MAX) {
        buf_free(&nm);
        return;
    }
    struct fs_selfop *s = xcalloc(1, sizeof *s);
    s->kind = kind;
    s->files = files;
    s->name = buf_detach(&nm, NULL);
    struct selfkey *k = xcalloc(1, sizeof *k);
    k->kind = kind;
    k->op = s;
    k->name = s->name; /* borrowed: unmarked before s is freed */
    k->next = self_set[h];
    self_set[h] = k;
    /* append, so creates come before the touches and deletes that follow */
    if (f->self_q)
        self_tail->next = s;
    else
        f->self_q = s;
    self_tail = s;
    n_self++;
}

static void set_self(fs *f, int kind, const char *name)
{
    pthread_mutex_lock(&f->slock);
    f->self_kind = kind;
    f->self_name = (char *)name;
    pthread_mutex_unlock(&f->slock);
}

/* ---- the helper process ---------------------------------------------------
 *
 * The operations on the mount are made by a child process, not by a thread
 * of the daemon: a thread blocked in a request to its own mount can never
 * be reaped if the daemon is killed (kill -9 leaves the process a zombie
 * holding /dev/fuse, and the mount hangs for good). The child holds no
 * descriptor but its socket, so when the daemon dies the connection is
 * aborted, the child's request fails, and the child dies of PDEATHSIG.
 * It is forked before the mount exists and, since the daemon has threads
 * by then, runs only async-signal-safe calls. One message = one kind of
 * operation (a mkdir, an rmdir, or the touches of several instances, for
 * which the handlers need no name); the child answers each with one byte,
 * so the daemon knows which operation its handlers are seeing. A batch of
 * touches costs one exchange with the child instead of one per instance. */
#define SELF_MSG_MAX (4 * PATH_MAX)
struct selfmsg {
    int kind;
    /* SELF_CREATE, SELF_DELETE: one path; SELF_TOUCH: entries of one byte
     * of TOUCH_* then an instance dir's path, each ending in 0 */
    char path[SELF_MSG_MAX];
};

static void child_touch(const char *path)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        /* no write permission (default_permissions, not root): a touch
         * still makes ATTRIB fire, which entr and inotifywait take */
        struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
        utimensat(AT_FDCWD, path, now, 0);
        return;
    }
    /* one byte, which our write handler takes and drops: MODIFY needs a
     * write that returns more than 0; CLOSE_WRITE follows on close */
    if (write(fd, "\n", 1) < 0) {
        /* the instance went away meanwhile */
    }
    close(fd);
}

/* Touches those of state, ctx.json and history (TOUCH_* in which) in the
 * instance dir of len bytes at dir. */
static void child_touch_files(const char *dir, size_t len, unsigned which)
{
    static const char *const files[] = {"/state", "/ctx.json", "/history"};
    static char path[PATH_MAX];
    for (size_t i = 0; i < 3; i++) {
        if (!(which & (1u << i))) continue; /* TOUCH_STATE, _CTX, _HISTORY */
        size_t fl = strlen(files[i]);
        if (len + fl + 1 > sizeof path) break;
        memcpy(path, dir, len);
        memcpy(path + len, files[i], fl + 1);
        child_touch(path);
    }
}

static void child_main(int sock, pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    /* nothing of the daemon's: above all not /dev/fuse or the WAL */
    sock = fs_child_fds(sock);
    static struct selfmsg m; /* static: no stack of 4 KiB surprises */
    for (;;) {
        ssize_t n = recv(sock, &m, sizeof m, 0);
        if (n <= 0) _exit(0);
        if ((size_t)n < offsetof(struct selfmsg, path) + 1) continue;
        ((char *)&m)[n < (ssize_t)sizeof m ? n : (ssize_t)sizeof m - 1] = 0;
        if (m.kind == SELF_CREATE) {
            mkdir(m.path, 0755);
        } else if (m.kind == SELF_DELETE) {
            rmdir(m.path);
        } else {
            const char *end = (const char *)&m + n;
            for (const char *e = m.path; e + 1 < end;) {
                unsigned which = (unsigned char)*e++;
                size_t len = strnlen(e, (size_t)(end - e));
                if (e + len >= end) break;
                child_touch_files(e, len, which);
                e += len + 1;
            }
        }
        char ack = 0;
        if (send(sock, &ack, 1, MSG_NOSIGNAL) != 1) _exit(0);
    }
}

static int helper_sock = -1;
static pid_t helper_pid;

int fs_notify_prefork(fs *f, stm_err *err)
{
    if (f->ro) return 0; /* a read-only mount cannot be touched */
    pid_t pid = fs_fork_child(child_main, "inotify helper", &helper_sock, err);
    if (pid < 0) return -1;
    helper_pid = pid;
    atomic_store(&f->helper_tid, (int)pid);
    return fs_reaper_start(f->mnt, err);
}

void fs_notify_reap(fs *f)
{
    (void)f;
    if (helper_sock >= 0) close(helper_sock);
    helper_sock = -1;
    if (helper_pid > 0) {
        kill(helper_pid, SIGKILL);
        waitpid(helper_pid, NULL, 0);
    }
    helper_pid = 0;
    /* before this thread ends, or the reaper would take it for a death */
    fs_reaper_stop();
}

/* Has the child perform one message's operations (len bytes of
 * selfmsg.path at data); false when it is gone. */
static bool child_send(int kind, const char *data, size_t len)
{
    static struct selfmsg m;
    if (len > sizeof m.path) return true; /* a path no call could take */
    m.kind = kind;
    memcpy(m.path, data, len);
    if (send(helper_sock, &m, offsetof(struct selfmsg, path) + len, MSG_NOSIGNAL) < 0)
        return false;
    char ack;
    return recv(helper_sock, &ack, 1, 0) == 1;
}

/* Whether s's touch entry still fits in the message being built in msg; a
 * first entry that never could is let through, for child_send to drop. */
static bool touch_fits(fs *f, const buf *msg, const struct fs_selfop *s)
{
    size_t need = 1 + strlen(f->mnt) + strlen("/instances/") + strlen(s->name) + 1;
    return msg->len == 0 || msg->len + need <= SELF_MSG_MAX;
}

/* The queue ran empty: the next batch gathers for a new window, at least
 * as long as this batch took, so under a storm of changes the helper uses
 * at most about half of one loop thread (a duty cycle). */
static void end_batch(bool *coalesced, uint64_t *window, uint64_t batch_start)
{
    *coalesced = false;
    uint64_t took = util_mono_ns() - batch_start;
    *window = SELF_COALESCE_NS + took;
    if (*window > SELF_WINDOW_MAX_NS) *window = SELF_WINDOW_MAX_NS;
}

/* Takes the touches at the head of the queue (caller holds nlock) into
 * one message for the child, in path, as many as fit. */
static void take_touches(fs *f, buf *path)
{
    struct fs_selfop *s;
    buf_reset(path);
    while ((s = f->self_q) && s->kind == SELF_TOUCH && touch_fits(f, path, s)) {
        f->self_q = s->next;
        n_self--;
        self_unmark(s->kind, s->name);
        buf_putc(path, (char)s->files);
        buf_printf(path, "%s/instances/%s", f->mnt, s->name);
        buf_putc(path, 0);
        free(s->name);
        free(s);
    }
}

/* Has the child mkdir or rmdir s's instance dir (path is scratch); false
 * when the child is gone. */
static bool make_or_remove(fs *f, const struct fs_selfop *s, buf *path)
{
    buf_reset(path);
    buf_printf(path, "%s/instances/%s", f->mnt, s->name);
    set_self(f, s->kind, s->name);
    if (s->kind == SELF_CREATE) {
        /* drop any cached dentry so the mkdir reaches us */
        pthread_mutex_lock(&f->lock);
        fs_node *in = fs_node_find(f, K_INSTANCES, NULL, NULL, 0);
        uint64_t iino = in ? in->ino : 0;
        pthread_mutex_unlock(&f->lock);
        if (iino) fuse_lowlevel_notify_inval_entry(f->se, iino, s->name, strlen(s->name));
    }
    bool alive = child_send(s->kind, path->data, path->len + 1);
    set_self(f, SELF_NONE, NULL);
    if (alive && s->kind == SELF_CREATE && instance_gone(f, s->name)) {
        /* Deleted before its CREATE was shown (an rmdir waits for nothing
         * of ours, so its DELETE may come first): end with a DELETE, unless
         * one is queued already; a delete record still to come is told it
         * was shown (the skip). */
        pthread_mutex_lock(&f->nlock);
        bool queued = self_key_queued(SELF_DELETE, s->name);
        pthread_mutex_unlock(&f->nlock);
        if (!queued) {
            buf raw = {0};
            if (fs_name_decode(s->name, &raw)) fs_notify_skip(f, buf_cstr(&raw));
            buf_free(&raw);
            set_self(f, SELF_DELETE, s->name);
            alive = child_send(SELF_DELETE, path->data, path->len + 1);
            set_self(f, SELF_NONE, NULL);
        }
    }
    return alive;
}

static void *helper_main(void *arg)
{
    fs *f = arg;
    util_name_thread("fs-helper");
    buf path = {0};
    bool coalesced = false;
    uint64_t window = SELF_COALESCE_NS, batch_start = 0;
    pthread_mutex_lock(&f->nlock);
    for (;;) {
        while (!f->nstop && !f->self_q) pthread_cond_wait(&f->hcond, &f->nlock);
        if (f->nstop) break;
        if (!coalesced) {
            /* let a burst gather first: one touch then covers many changes */
            coalesced = true;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += (time_t)(window / 1000000000u);
            ts.tv_nsec += (long)(window % 1000000000u);
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            while (!f->nstop && pthread_cond_timedwait(&f->hcond, &f->nlock, &ts) != ETIMEDOUT) {
            }
            batch_start = util_mono_ns();
            continue;
        }
        bool alive;
        if (f->self_q->kind == SELF_TOUCH) {
            take_touches(f, &path);
            if (!f->self_q) end_batch(&coalesced, &window, batch_start);
            pthread_mutex_unlock(&f->nlock);
            set_self(f, SELF_TOUCH, NULL);
            alive = child_send(SELF_TOUCH, path.data, path.len);
            set_self(f, SELF_NONE, NULL);
        } else {
            struct fs_selfop *s = f->self_q;
            f->self_q = s->next;
            if (!f->self_q) end_batch(&coalesced, &window, batch_start);
            n_self--;
            /* from here a new change to this instance queues a new op */
            self_unmark(s->kind, s->name);
            pthread_mutex_unlock(&f->nlock);
            alive = make_or_remove(f, s, &path);
            free(s->name);
            free(s);
        }
        pthread_mutex_lock(&f->nlock);
        if (!alive) {
            log_warn("mount: the inotify helper is gone; file watchers see only changes "
                     "made through the mount from now on");
            break;
        }
    }
    pthread_mutex_unlock(&f->nlock);
    buf_free(&path);
    return NULL;
}

/* ---- invalidation -------------------------------------------------------- */

typedef struct {
    uint64_t *inos;
    size_t n, cap;
} inoset;

static void ino_add(inoset *s, uint64_t ino)
{
    if (!ino) return;
    for (size_t i = s->n > 16 ? s->n - 16 : 0; i < s->n; i++)
        if (s->inos[i] == ino) return;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 32;
        s->inos = xrealloc(s->inos, s->cap * sizeof *s->inos);
    }
    s->inos[s->n++] = ino;
}

static uint64_t ino_of(fs *f, enum fs_kind k, const char *a, const char *b, uint32_t ver)
{
    fs_node *n = fs_node_find(f, k, a, b, ver);
    return n ? n->ino : 0;
}

/* Queues what the kernel may hold of n (fs_node.cached_*; caller holds
 * f->lock): its pages and attributes (data), or its attributes only. What
 * it cannot hold costs no notification (16 writers that never read: 7.8
 * writev calls of the daemon a line before, 2.2 after). */
static void want_data(fs *f, inoset *data, inoset *attrs, enum fs_kind k, const char *a,
                      const char *b, uint32_t ver)
{
    fs_node *n = fs_node_find(f, k, a, b, ver);
    if (!n) return;
    if (n->cached_data)
        ino_add(data, n->ino);
    else if (n->cached_attr)
        ino_add(attrs, n->ino);
    n->cached_data = n->cached_attr = false;
}

/* Returns the node's inode (0 if it has none), for the entry
 * notifications the caller sends afterwards. */
static uint64_t want_attr(fs *f, inoset *attrs, enum fs_kind k, const char *a)
{
    fs_node *n = fs_node_find(f, k, a, NULL, 0);
    if (!n) return 0;
    /* every answer that hands the kernel attributes sets cached_attr, a
     * keep_cache open included, so it alone says they may be held */
    if (n->cached_attr) ino_add(attrs, n->ino); /* pages stay */
    n->cached_attr = false;
    return n->ino;
}

static void inval_name(fs *f, uint64_t parent, const char *raw, uint64_t child)
{
    buf nm = {0};
    fs_name_encode(raw, &nm);
    int r = -ENOENT;
    if (child)
        r = fuse_lowlevel_notify_delete(f->se, parent, child, nm.data, nm.len);
    if (r)
        fuse_lowlevel_notify_inval_entry(f->se, parent, nm.data, nm.len);
    buf_free(&nm);
}

/* What one record makes stale. Inode numbers are looked up under f->lock;
 * the kernel is told after it is released. */
static void on_event(fs *f, const eng_event *ev, inoset *data, inoset *attrs)
{
    const char *id = ev->instance_id;
    static const enum fs_kind inst_kinds[] = {K_STATE, K_CTX, K_INFO, K_EVENTS, K_HISTORY};
    uint64_t instances_ino = 0, minsts_ino = 0, inst_ino = 0, link_ino = 0, machines_ino = 0,
             versions_ino = 0;
    pthread_mutex_lock(&f->lock);
    want_data(f, data, attrs, K_WAL_ENTRIES, NULL, NULL, 0);
    want_data(f, data, attrs, K_WAL_STATS, NULL, NULL, 0);
    want_attr(f, attrs, K_WAL, NULL);
    __atomic_store_n(&f->wal_mtime, ev->ts, __ATOMIC_RELAXED);
    switch (ev->type) {
    case WAL_T_CREATE_INSTANCE:
    case WAL_T_DELETE_INSTANCE:
        instances_ino = want_attr(f, attrs, K_INSTANCES, NULL);
        minsts_ino = ev->machine ? want_attr(f, attrs, K_MINSTS, ev->machine) : 0;
        link_ino = ev->machine ? ino_of(f, K_MLINK, ev->machine, id, 0) : 0;
        __atomic_store_n(&f->instances_mtime, ev->ts, __ATOMIC_RELAXED);
        /* fall through: the instance's own files changed as well */
        /* FALLTHROUGH */
    case WAL_T_APPLY_EVENT:
        for (size_t i = 0; i < sizeof inst_kinds / sizeof inst_kinds[0]; i++)
            want_data(f, data, attrs, inst_kinds[i], id, NULL, 0);
        inst_ino = want_attr(f, attrs, K_INST, id);
        want_attr(f, attrs, K_WATCH, id);
        want_attr(f, attrs, K_IERROR, id);
        break;
    case WAL_T_PUT_MACHINE: {
        machines_ino = want_attr(f, attrs, K_MACHINES, NULL);
        versions_ino = want_attr(f, attrs, K_VERSIONS, ev->machine);
        want_attr(f, attrs, K_MACHINE, ev->machine);
        static const enum fs_kind mk[] = {K_DEF_JSON, K_DEF_YAML, K_GRAPH, K_NEW, K_MERROR};
        for (size_t i = 0; i < sizeof mk / sizeof mk[0]; i++)
            want_data(f, data, attrs, mk[i], ev->machine, NULL, 0);
        want_data(f, data, attrs, K_VERSION, ev->machine, NULL, ev->version);
        /* temps renamed over the definition read as it (rare: all of them) */
        for (size_t i = 0; i < f->nbuckets; i++)
            for (fs_node *n = f->by_key[i]; n; n = n->next_key)
                if (n->alias && n->a && strcmp(n->a, ev->machine) == 0) ino_add(data, n->ino);
        __atomic_store_n(&f->machines_mtime, ev->ts, __ATOMIC_RELAXED);
        break;
    }
    default: break;
    }
    pthread_mutex_unlock(&f->lock);

    if (ev->type == WAL_T_CREATE_INSTANCE) {
        if (instances_ino) inval_name(f, instances_ino, id, 0);
        if (minsts_ino) inval_name(f, minsts_ino, id, 0);
    } else if (ev->type == WAL_T_DELETE_INSTANCE) {
        if (instances_ino) inval_name(f, instances_ino, id, inst_ino);
        if (minsts_ino) inval_name(f, minsts_ino, id, link_ino);
    } else if (ev->type == WAL_T_PUT_MACHINE) {
        if (machines_ino) inval_name(f, machines_ino, ev->machine, 0);
        if (versions_ino) {
            char nm[32];
            snprintf(nm, sizeof nm, "%u.json", ev->version);
            fuse_lowlevel_notify_inval_entry(f->se, versions_ino, nm, strlen(nm));
        }
    }

    pthread_mutex_lock(&f->nlock);
    if (ev->type == WAL_T_CREATE_INSTANCE) {
        self_push(f, SELF_CREATE, id, 0);
    } else if (ev->type == WAL_T_APPLY_EVENT) {
        unsigned files = TOUCH_HISTORY;
        if (!ev->from_state || !ev->to_state || strcmp(ev->from_state, ev->to_state) != 0)
            files |= TOUCH_STATE;
        /* an empty or absent payload merges nothing into the context */
        if (ev->payload_json && strcmp(ev->payload_json, "null") != 0 &&
            strcmp(ev->payload_json, "{}") != 0)
            files |= TOUCH_CTX;
        self_push(f, SELF_TOUCH, id, files);
    } else if (ev->type == WAL_T_DELETE_INSTANCE) {
        if (!take_skip(id)) self_push(f, SELF_DELETE, id, 0);
    }
    pthread_mutex_unlock(&f->nlock);
}

/* Every inode the kernel holds: after the feed dropped events. */
static void inval_all(fs *f, inoset *data)
{
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->nbuckets; i++)
        for (fs_node *n = f->by_key[i]; n; n = n->next_key) ino_add(data, n->ino);
    pthread_mutex_unlock(&f->lock);
}

/* ---- watch files --------------------------------------------------------- */

static void watch_wake(void *arg);

static void watch_service(fs_watchfh *w)
{
    eng_event ev;
    uint64_t resume = 0;
    int r = 0;
    buf add = {0};
    pthread_mutex_lock(&w->lock);
    size_t have = w->pending.len;
    bool ended = w->ended, finished = w->finished;
    pthread_mutex_unlock(&w->lock);
    bool capped = false;
    while (!ended && !finished) {
        if (have + add.len >= WATCH_PENDING_MAX) {
            capped = true;
            break;
        }
        if ((r = eng_sub_next(w->sub, &ev, &resume)) != 1) break;
        const char *line = w->all ? ev.entry_line : ev.history_line;
        if (line) buf_puts(&add, line);
        /* A deleted instance never changes again (its id is never reused):
         * its stream ends, after the delete line, like a file's. */
        if (w->id && ev.type == WAL_T_DELETE_INSTANCE) finished = true;
    }
    if (r < 0) {
        /* Behind the ring: take up the same stream from the WAL, where the
         * ring's tail left it, so the reader misses nothing. */
        eng_filter flt;
        memset(&flt, 0, sizeof flt);
        flt.instance_id = w->id;
        flt.from_offset = resume;
        eng_sub *ns = NULL;
        stm_err err;
        eng_stats st;
        eng_get_stats(w->f->e, &st);
        /* compaction may have taken that part of the log: a gap must not
         * pass as a stream */
        bool kept = !st.wal.first_offset || resume >= st.wal.first_offset;
        if (!kept)
            stm_fail(&err, STM_WAL_IO_ERROR, "the oldest record kept is at %llu",
                     (unsigned long long)st.wal.first_offset);
        if (kept && eng_subscribe(w->f->e, &flt, watch_wake, w, &ns, &err) == STM_OK) {
            eng_unsubscribe(w->sub);
            w->sub = ns;
            atomic_store(&w->woke, true);
            kick();
        } else {
            log_warn("mount: a %s reader fell behind and the log no longer holds offset %llu "
                     "(%s); its stream ends there (read wal/entries or history instead)",
                     w->all ? "wal/watch" : "watch", (unsigned long long)resume, err.msg);
            ended = true;
        }
    }
    pthread_mutex_lock(&w->lock);
    if (add.len) buf_add(&w->pending, add.data, add.len);
    w->capped = capped;
    if (ended) w->ended = true;
    if (finished) w->finished = true;
    fuse_req_t req = NULL;
    int req_err = 0;
    buf out = {0};
    if (w->parked && w->pending.len) {
        req = w->parked;
        w->parked = NULL;
        size_t n = w->pending.len < w->parked_size ? w->pending.len : w->parked_size;
        buf_add(&out, w->pending.data, n);
        memmove(w->pending.data, w->pending.data + n, w->pending.len - n);
        w->pending.len -= n;
    } else if (w->parked && w->ended) {
        req = w->parked;
        w->parked = NULL;
        req_err = ENOBUFS;
    } else if (w->parked && w->finished) {
        req = w->parked; /* end of file: an empty answer */
        w->parked = NULL;
    }
    struct fuse_pollhandle *ph = NULL;
    if (w->ph && (w->pending.len || w->ended || w->finished)) {
        ph = w->ph;
        w->ph = NULL;
    }
    pthread_mutex_unlock(&w->lock);
    if (req && req_err)
        fuse_reply_err(req, req_err);
    else if (req)
        fuse_reply_buf(req, out.data, out.len);
    if (ph) {
        fuse_lowlevel_notify_poll(ph);
        fuse_pollhandle_destroy(ph);
    }
    buf_free(&out);
    buf_free(&add);
}

static void watch_wake(void *arg)
{
    fs_watchfh *w = arg;
    atomic_store(&w->woke, true);
    kick();
}

fs_watchfh *fs_watch_open(fs *f, const char *id, stm_err *err)
{
    fs_watchfh *w = xcalloc(1, sizeof *w);
    w->f = f;
    w->all = id == NULL;
    w->id = id ? xstrdup(id) : NULL;
    pthread_mutex_init(&w->lock, NULL);
    eng_filter flt;
    memset(&flt, 0, sizeof flt);
    flt.instance_id = id;
    flt.apply_only = false;
    if (eng_subscribe(f->e, &flt, watch_wake, w, &w->sub, err) != STM_OK) {
        pthread_mutex_destroy(&w->lock);
        free(w->id);
        free(w);
        return NULL;
    }
    pthread_mutex_lock(&f->nlock);
    w->next = f->watches;
    f->watches = w;
    pthread_mutex_unlock(&f->nlock);
    return w;
}

static void watch_interrupted(fuse_req_t req, void *arg)
{
    fs_watchfh *w = arg;
    pthread_mutex_lock(&w->lock);
    bool mine = w->parked == req;
    if (mine) w->parked = NULL;
    pthread_mutex_unlock(&w->lock);
    if (mine) fuse_reply_err(req, EINTR);
}

void fs_watch_read(fs *f, fs_watchfh *w, fuse_req_t req, size_t size)
{
    (void)f;
    pthread_mutex_lock(&w->lock);
    if (w->pending.len) {
        size_t n = w->pending.len < size ? w->pending.len : size;
        fuse_reply_buf(req, w->pending.data, n);
        memmove(w->pending.data, w->pending.data + n, w->pending.len - n);
        w->pending.len -= n;
        /* room again: have the notifier take the lines it left waiting */
        bool refill = w->capped && w->pending.len < WATCH_PENDING_MAX / 2;
        if (refill) w->capped = false;
        pthread_mutex_unlock(&w->lock);
        if (refill) {
            atomic_store(&w->woke, true);
            kick();
        }
        return;
    }
    if (w->ended) {
        /* everything before the gap was read: say why there is no more */
        pthread_mutex_unlock(&w->lock);
        fuse_reply_err(req, ENOBUFS);
        return;
    }
    if (w->finished) {
        pthread_mutex_unlock(&w->lock);
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    pthread_mutex_unlock(&w->lock);
    /* registered before the request is published, so that an interrupt
     * can never find it half-parked; checked again after */
    fuse_req_interrupt_func(req, watch_interrupted, w);
    pthread_mutex_lock(&w->lock);
    if (w->parked) {
        /* one read at a time per handle (cat reads in sequence) */
        pthread_mutex_unlock(&w->lock);
        fuse_reply_err(req, EBUSY);
        return;
    }
    /* Checked before parking: once parked, the notifier may answer req (and
     * libfuse free it) at any moment, so req must not be touched after the
     * unlock. An interrupt that comes later finds it parked. */
    if (fuse_req_interrupted(req)) {
        pthread_mutex_unlock(&w->lock);
        fuse_reply_err(req, EINTR);
        return;
    }
    w->parked = req;
    w->parked_size = size;
    pthread_mutex_unlock(&w->lock);
    atomic_store(&w->woke, true);
    kick(); /* lines may have arrived between the check and parking */
}

void fs_watch_poll(fs *f, fs_watchfh *w, fuse_req_t req, struct fuse_pollhandle *ph)
{
    (void)f;
    pthread_mutex_lock(&w->lock);
    if (ph) {
        if (w->ph) fuse_pollhandle_destroy(w->ph);
        w->ph = ph;
    }
    unsigned rev = w->pending.len || w->ended || w->finished ? POLLIN : 0;
    pthread_mutex_unlock(&w->lock);
    fuse_reply_poll(req, rev);
    atomic_store(&w->woke, true);
    kick();
}

void fs_watch_release(fs *f, fs_watchfh *w)
{
    pthread_mutex_lock(&f->nlock);
    for (fs_watchfh **pp = &f->watches; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    pthread_mutex_unlock(&f->nlock);
    eng_unsubscribe(w->sub);
    fuse_req_t req = w->parked;
    w->parked = NULL;
    if (req) fuse_reply_err(req, EINTR);
    if (w->ph) fuse_pollhandle_destroy(w->ph);
    buf_free(&w->pending);
    pthread_mutex_destroy(&w->lock);
    free(w->id);
    free(w);
}

/* ---- writes the notifier answers ------------------------------------------ */

/* Answers a write whose records may not be durable yet, waiting for them in
 * this thread. direct: the caller may tell the kernel itself and must not
 * wait for the notifier (the notifier, or the stop once it is gone). */
static void ack_settle(fs *f, fs_ack *a, bool direct)
{
    stm_err err;
    if (eng_wait(f->e, a->seq, &err) == STM_OK) {
        if (!direct) fs_notify_wait_seq(f, a->seq);
        fuse_reply_write(a->req, a->size);
    } else {
        uint64_t ino = 0;
        int r = a->failed(f, a, &err, &ino);
        if (ino && direct) fuse_lowlevel_notify_inval_inode(f->se, ino, 0, 0);
        else if (ino) fs_notify_inval(f, ino, 0, NULL, true);
        fuse_reply_err(a->req, r);
    }
    a->done(a);
}

void fs_notify_answer_at(fs *f, fs_ack *a)
{
    a->since_ns = util_mono_ns();
    uint64_t seq = a->seq;
    pthread_mutex_lock(&f->nlock);
    bool now = f->nstop || f->done_seq >= a->seq;
    if (!now) {
        a->next = f->acks;
        f->acks = a;
    }
    pthread_mutex_unlock(&f->nlock);
    if (now) {
        ack_settle(f, a, false);
        return;
    }
    /* from here the notifier may answer a and free it */
    eng_kick(f->e, seq);
    /* A failure seen by a round that ran before a was queued brings no
     * other round soon. (A record acknowledged before it reached the feed
     * is the engine's to announce again: eng_feed_catch_up.) */
    if (eng_failed(f->e)) kick();
}

void fs_notify_drain(fs *f, unsigned max_ms)
{
    uint64_t deadline = util_mono_ns() + (uint64_t)max_ms * 1000000u;
    for (;;) {
        pthread_mutex_lock(&f->nlock);
        bool empty = !f->acks;
        pthread_mutex_unlock(&f->nlock);
        if (empty || util_mono_ns() >= deadline) return;
        kick();
        usleep(1000); /* once, at a stop */
    }
}

/* Takes out of f->acks (caller holds nlock) those the notifier can answer:
 * passed (done_seq reached them), or never to be durable (the log failed
 * first), or acknowledged but still not shown by the feed 2 s after they
 * were queued (fs_notify_wait_seq gives up waiting after 2 s too). The
 * answers are given without the lock (answer_acks). */
static fs_ack *take_acks(fs *f)
{
    if (!f->acks) return NULL;
    bool failed = eng_failed(f->e);
    uint64_t acked = eng_acked_seq(f->e);
    uint64_t now = util_mono_ns();
    fs_ack *ready = NULL;
    for (fs_ack **pp = &f->acks; *pp;) {
        fs_ack *a = *pp;
        bool passed = a->seq <= f->done_seq;
        bool lost = failed && a->seq > acked;
        bool late = a->seq <= acked && now - a->since_ns > 2000000000u;
        if (passed || lost || late) {
            *pp = a->next;
            a->next = ready;
            ready = a;
        } else {
            pp = &a->next;
        }
    }
    return ready;
}

static void answer_acks(fs *f, fs_ack *ready)
{
    while (ready) {
        fs_ack *a = ready;
        ready = a->next;
        if (a->seq <= __atomic_load_n(&f->done_seq, __ATOMIC_ACQUIRE)) {
            fuse_reply_write(a->req, a->size);
            a->done(a);
        } else {
            ack_settle(f, a, true);
        }
    }
}

/* ---- the notifier -------------------------------------------------------- */

static void *notifier_main(void *arg)
{
    fs *f = arg;
    util_name_thread("fs-notifier");
    inoset data = {0}, attrs = {0};
    for (;;) {
        struct pollfd pfd = {.fd = efd, .events = POLLIN};
        poll(&pfd, 1, 1000);
        uint64_t cnt;
        if (read(efd, &cnt, sizeof cnt) < 0) {
            /* nothing pending: a timeout */
        }
        pthread_mutex_lock(&f->nlock);
        bool stop = f->nstop;
        struct fs_inval *q = f->inval_q;
        f->inval_q = NULL;
        pthread_mutex_unlock(&f->nlock);
        if (stop) break;

        /* the feed */
        eng_event ev;
        uint64_t resume, maxseq = 0;
        int r;
        data.n = attrs.n = 0;
        while ((r = eng_sub_next(f->sub, &ev, &resume)) == 1) {
            on_event(f, &ev, &data, &attrs);
            if (ev.seq > maxseq) maxseq = ev.seq;
        }
        if (r < 0) {
            log_warn("mount: change feed fell behind; invalidating everything");
            eng_unsubscribe(f->sub);
            eng_filter flt;
            memset(&flt, 0, sizeof flt);
            stm_err err;
            if (eng_subscribe(f->e, &flt, sub_wake, f, &f->sub, &err) != STM_OK)
                log_error("mount: resubscribe: %s", err.msg);
            inval_all(f, &data);
        }
        for (size_t i = 0; i < data.n; i++)
            fuse_lowlevel_notify_inval_inode(f->se, data.inos[i], 0, 0);
        for (size_t i = 0; i < attrs.n; i++)
            fuse_lowlevel_notify_inval_inode(f->se, attrs.inos[i], -1, 0);

        /* what handlers asked for */
        uint64_t ticket = 0;
        while (q) {
            struct fs_inval *n = q->next;
            if (q->name)
                fuse_lowlevel_notify_inval_entry(f->se, q->parent, q->name, strlen(q->name));
            if (q->ino) fuse_lowlevel_notify_inval_inode(f->se, q->ino, 0, 0);
            if (q->ticket > ticket) ticket = q->ticket;
            free(q->name);
            free(q);
            q = n;
        }

        /* watch files */
        pthread_mutex_lock(&f->nlock);
        for (fs_watchfh *w = f->watches; w; w = w->next)
            if (atomic_exchange(&w->woke, false)) watch_service(w);
        if (maxseq > f->done_seq) __atomic_store_n(&f->done_seq, maxseq, __ATOMIC_RELEASE);
        if (ticket > f->done_ticket) __atomic_store_n(&f->done_ticket, ticket, __ATOMIC_RELEASE);
        if (f->self_q) pthread_cond_signal(&f->hcond);
        fs_ack *ready = take_acks(f);
        pthread_mutex_unlock(&f->nlock);
        util_gate_open(&f->done_gate);
        answer_acks(f, ready);
    }
    free(data.inos);
    free(attrs.inos);
    return NULL;
}

/* Writers wait at the notifier's gate (util_gate: no queue on nlock after
 * each round); a stuck kernel must not hang a writer forever, so 2 s at most. */
static void wait_until(fs *f, const uint64_t *field, uint64_t v)
{
    util_gate_wait_mark(&f->done_gate, field, v, &f->nstop, util_mono_ns() + 2000000000u);
}

void fs_notify_wait_seq(fs *f, uint64_t seq)
{
    if (__atomic_load_n(&f->done_seq, __ATOMIC_ACQUIRE) >= seq) return;
    /* the subscription's wake normally brings the notifier round, but the
     * record is durable now (the caller waited for it): do not depend on
     * the order in which the engine tells its listeners */
    kick();
    wait_until(f, &f->done_seq, seq);
}

void fs_notify_inval(fs *f, uint64_t ino, uint64_t parent, const char *name, bool wait)
{
    struct fs_inval *q = xcalloc(1, sizeof *q);
    q->ino = ino;
    q->parent = parent;
    q->name = name ? xstrdup(name) : NULL;
    pthread_mutex_lock(&f->nlock);
    q->ticket = ++f->tickets;
    q->next = f->inval_q;
    f->inval_q = q;
    uint64_t t = q->ticket;
    pthread_mutex_unlock(&f->nlock);
    kick();
    if (wait) wait_until(f, &f->done_ticket, t);
}

int fs_notify_start(fs *f, stm_err *err)
{
    pthread_mutex_init(&f->nlock, NULL);
    pthread_mutex_init(&f->slock, NULL);
    pthread_cond_init(&f->hcond, NULL);
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) {
        stm_fail(err, STM_INTERNAL_ERROR, "eventfd: %s", strerror(errno));
        return -1;
    }
    f->done_seq = eng_acked_seq(f->e);
    eng_filter flt;
    memset(&flt, 0, sizeof flt);
    if (eng_subscribe(f->e, &flt, sub_wake, f, &f->sub, err) != STM_OK) return -1;
    if (pthread_create(&f->notifier, NULL, notifier_main, f) != 0) {
        stm_fail(err, STM_INTERNAL_ERROR, "cannot start the notifier thread");
        return -1;
    }
    f->notifier_started = true;
    if (!f->ro && helper_sock >= 0) {
        if (pthread_create(&f->helper, NULL, helper_main, f) != 0) {
            stm_fail(err, STM_INTERNAL_ERROR, "cannot start the inotify helper thread");
            return -1;
        }
        f->helper_started = true;
    }
    return 0;
}

void fs_notify_stop(fs *f)
{
    pthread_mutex_lock(&f->nlock);
    __atomic_store_n(&f->nstop, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&f->hcond);
    pthread_mutex_unlock(&f->nlock);
    util_gate_open(&f->done_gate);
    kick();
    /* a helper thread waiting for the child's answer returns at once */
    if (helper_sock >= 0) shutdown(helper_sock, SHUT_RDWR);
    if (f->notifier_started) pthread_join(f->notifier, NULL);
    if (f->helper_started) pthread_join(f->helper, NULL);
    f->notifier_started = f->helper_started = false;
    /* nobody queues any more (nstop): what is left waits here */
    while (f->acks) {
        fs_ack *a = f->acks;
        f->acks = a->next;
        ack_settle(f, a, true);
    }
    if (f->sub) eng_unsubscribe(f->sub);
    f->sub = NULL;
    while (f->self_q) {
        struct fs_selfop *s = f->self_q;
        f->self_q = s->next;
        self_unmark(s->kind, s->name);
        free(s->name);
        free(s);
    }
    self_tail = NULL;
    while (f->inval_q) {
        struct fs_inval *q = f->inval_q;
        f->inval_q = q->next;
        free(q->name);
        free(q);
    }
    for (size_t i = 0; i < n_skips; i++) free(skips[i]);
    free(skips);
    skips = NULL;
    n_skips = 0;
    n_self = 0;
    if (efd >= 0) close(efd);
    efd = -1;
}
