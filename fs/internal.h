/*
 * internal.h - what the files of fs/ share. Not part of the API: fs.h is
 * the module's one public header.
 *
 *   name.c    escaping of ids into path components, parsing of written lines
 *   errno.c   engine code -> errno
 *   inode.c   the inode table: one node per path the kernel knows
 *   render.c  the content of every file
 *   ops.c     the fuse_lowlevel_ops handlers
 *   notify.c  the change feed: kernel invalidation, inotify self-operations,
 *             parked reads of watch files
 *   reaper.c  processes beside the daemon: their fork, and the reaper
 *   mount.c   fs_run: session, loop, lifecycle
 *
 * Locking: one mutex (fs->lock) guards the inode table, the in-memory parts
 * of the tree (empty machine dirs, temp files, error texts). It is never
 * held across an engine call or a kernel notification.
 */
#ifndef STM_FS_INTERNAL_H
#define STM_FS_INTERNAL_H

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/util.h"
#include "engine/engine.h"
#include "fs/fs.h"

/* ---- names (name.c) ------------------------------------------------------ */

/* Escaping of ids and machine names into one path component:
 *   '/' -> %2F, '%' -> %25, the names "." and ".." -> %2E and %2E%2E,
 *   the empty name -> %00 (a NUL can never be part of a name).
 * Everything else is kept byte for byte. fs_name_decode is the inverse and
 * refuses anything fs_name_encode could not have produced (returns false). */
void fs_name_encode(const char *raw, buf *out);
bool fs_name_decode(const char *name, buf *out);
/* The same; when it refuses, *why says what is wrong with the name, in
 * words for a log line (a static string). */
bool fs_name_decode_why(const char *name, buf *out, const char **why);
bool fs_name_needs_escape(const char *raw);

/* One line written to events: "EVENT [PAYLOAD-JSON]" or an APPLY_EVENT params
 * object. Builds the params object (instance_id from the path). Returns NULL
 * for an empty line (*err code STM_OK) or on a malformed one (err set). A
 * params object may name the path's instance_id, never another one
 * (BAD_REQUEST). */
cJSON *fs_event_line(const char *id, const char *line, size_t len, stm_err *err);
/* One line written to new: "ID [CTX-JSON]" or a CREATE_INSTANCE params
 * object; machine and version (newest) from the path. A params object may
 * name the path's machine, never another one (BAD_REQUEST). */
cJSON *fs_new_line(const char *machine, uint32_t version, const char *line, size_t len,
                   stm_err *err);
/* "7.json" -> 7; false for anything else. */
bool fs_version_name(const char *name, uint32_t *v);

/* ---- the tree ------------------------------------------------------------ */

enum fs_kind {
    K_NONE = 0,
    K_ROOT, K_MACHINES, K_INSTANCES, K_WAL,
    K_WAL_ENTRIES, K_WAL_WATCH, K_WAL_STATS,
    K_MACHINE, K_DEF_JSON, K_DEF_YAML, K_GRAPH, K_NEW, K_MERROR, K_VERSIONS, K_VERSION,
    K_MINSTS, K_MLINK, K_TEMP, K_VNEW,
    K_INST, K_STATE, K_CTX, K_INFO, K_EVENTS, K_HISTORY, K_WATCH, K_IERROR,
    K_KIND_COUNT
};

/* Refcounted immutable content, shared by a node's cache and open handles. */
/* The longest line events or new can ever take: a WAL record holds at most
 * 16 MiB. limits.max_line_bytes sets the mount's own bound below it. */
#define FS_MAX_LINE (16u << 20)

typedef struct fs_blob {
    atomic_int ref;
    size_t len;
    char data[];
} fs_blob;
fs_blob *fs_blob_new(const char *data, size_t len);
fs_blob *fs_blob_ref(fs_blob *b);
void fs_blob_unref(fs_blob *b);

typedef struct fs_node {
    uint64_t ino;
    enum fs_kind kind;
    char *a;                    /* machine name or instance id (raw) */
    char *b;                    /* temp file name, link target id */
    uint32_t ver;               /* K_VERSION, K_VNEW */
    enum fs_kind alias;         /* a temp renamed over definition.json/.yaml
                                   reads as that file from then on */
    uint64_t nlookup;
    bool pinned;                /* fixed nodes (root...) never forgotten */
    /* What the kernel may hold of this node (under fs->lock): its
     * attributes since we last answered with them, its pages since a
     * keep_cache open. Set before the answer is computed, cleared by the
     * notifier when it invalidates, so only what may be cached is. */
    bool cached_attr, cached_data;
    uint64_t hash;
    struct fs_node *next_key, *next_ino;
    /* rendered content cache (under fs->lock) */
    fs_blob *blob;
    uint64_t blob_key;
    int64_t blob_mtime;
} fs_node;

/* A file kept in memory in a machine dir (editor temp files). */
typedef struct fs_temp {
    char *machine, *name;
    buf data;
    int64_t mtime_ms;
    struct fs_temp *next;
} fs_temp;

/* The last rejected write on an instance or machine. */
typedef struct fs_errtext {
    bool machine;
    char *name;
    char *text;
    int64_t at_ms;
    uint64_t gen;
    struct fs_errtext *next;
} fs_errtext;

typedef struct fs_watchfh fs_watchfh;

typedef struct fs {
    eng *e;
    const stm_config *c;
    struct fuse_session *se;
    char *mnt;                  /* absolute mountpoint */
    bool ro;
    /* Read-only mounts only: the kernel opens files without asking us (FUSE
     * no_open, switched on by answering the first OPEN with ENOSYS), so an
     * open+read+close of cached content is no round trip at all. Nothing
     * in a read-only database changes, so no file needs a handle's
     * snapshot, and reads are served by inode. */
    bool no_open;
    double attr_timeout, entry_timeout;
    size_t max_line;            /* longest line events or new take (limits.max_line_bytes) */
    int64_t start_ms;
    uid_t uid;
    gid_t gid;

    pthread_mutex_t lock;
    /* inode table */
    fs_node **by_key, **by_ino;
    size_t nbuckets, nnodes;
    uint64_t next_ino;
    /* in-memory tree parts */
    char **empty_machines;
    size_t n_empty_machines;
    fs_temp *temps;
    fs_errtext *errors;
    uint64_t error_gen;
    /* set by the notifier, read by any handler: atomic loads and stores */
    int64_t machines_mtime, instances_mtime, wal_mtime;

    /* notifier (notify.c) */
    pthread_t notifier, helper;
    bool notifier_started, helper_started;
    pthread_mutex_t nlock;
    bool nstop;
    eng_sub *sub;
    /* Set under nlock, read by waiters with atomic loads (notify.c,
     * wait_until): */
    uint64_t done_seq;          /* engine records fully invalidated */
    uint64_t tickets, done_ticket;
    util_gate done_gate;        /* opened when they move, or at stop */
    struct fs_inval *inval_q;   /* extra invalidations asked for by handlers */
    struct fs_selfop *self_q;   /* pending inotify self-operations */
    pthread_cond_t hcond;
    atomic_int helper_tid;       /* pid of the helper process */
    /* the helper's current op, so handlers recognise it */
    pthread_mutex_t slock;
    int self_kind;
    char *self_name;
    /* watch files */
    fs_watchfh *watches;
    struct fs_ack *acks;        /* writes the notifier answers (under nlock) */
} fs;

/* ---- inode.c ------------------------------------------------------------- */

void fs_inodes_init(fs *f);
void fs_inodes_free(fs *f);
/* Finds or makes the node of a path (caller holds f->lock). */
fs_node *fs_node_get(fs *f, enum fs_kind kind, const char *a, const char *b, uint32_t ver);
/* Looks up without making (caller holds f->lock). */
fs_node *fs_node_find(fs *f, enum fs_kind kind, const char *a, const char *b, uint32_t ver);
fs_node *fs_node_by_ino(fs *f, uint64_t ino);
/* Drops n lookups; frees the node at zero (caller holds f->lock). */
void fs_node_forget(fs *f, fs_node *n, uint64_t nlookup);

/* ---- render.c ------------------------------------------------------------ */

/* Attributes of a node; fills st. Returns 0 or -errno (the name is gone). */
int fs_stat_node(fs *f, fs_node *n, struct stat *st);
/* Content of a file that is rendered whole (everything but history, entries,
 * watch): a new reference, or NULL with *errp. */
fs_blob *fs_content(fs *f, fs_node *n, int *errp);
/* Exists? Used by lookup for names that need the engine. */
bool fs_is_dir_kind(enum fs_kind k);
void fs_set_error(fs *f, bool machine, const char *name, const stm_err *err,
                  const char *what_key, const char *what, size_t what_len);
void fs_fmt_time(int64_t ms, char out[32]);

/* ---- errno.c: fs_errno_of in fs.h ---------------------------------------- */

/* ---- reaper.c ------------------------------------------------------------ */

/* Forks a child, with threads running (so it makes only async-signal-safe
 * calls), that runs child(its end of a socket pair, our pid) and never
 * returns; *ours gets our end. Returns the child's pid, or -1 with err. */
pid_t fs_fork_child(void (*child)(int, pid_t), const char *what, int *ours, stm_err *err);
/* In a child: keeps fd (as descriptor 3, returned) and /dev/null as its
 * standard streams, and closes everything else of the daemon's, above all
 * /dev/fuse and the WAL. */
int fs_child_fds(int fd);
/* The reaper of the FUSE connection on mnt (reaper.c says why): started
 * before the mount exists, stopped before the thread that mounted ends,
 * or it takes that for a death. */
int fs_reaper_start(const char *mnt, stm_err *err);
void fs_reaper_stop(void);

/* ---- notify.c ------------------------------------------------------------ */

/* Forks the helper process that performs the inotify self-operations:
 * before the mount exists (it must not hold /dev/fuse). fs_notify_reap
 * ends it, after the session is gone. */
int fs_notify_prefork(fs *f, stm_err *err);
void fs_notify_reap(fs *f);
int fs_notify_start(fs *f, stm_err *err);
void fs_notify_stop(fs *f);
/* Waits (bounded) until the notifier has invalidated everything for records
 * up to seq: a writer calls it before replying, so its own change is visible
 * to the next read of any file. */
void fs_notify_wait_seq(fs *f, uint64_t seq);
/* A write answered by the notifier thread once its records are durable and
 * invalidated, so the handler's thread need not sleep twice (the engine's
 * wait, then the notifier's) for every line: with many writers those two
 * wake-ups cost more than the line. */
typedef struct fs_ack fs_ack;
struct fs_ack {
    fuse_req_t req;
    uint64_t seq;               /* the write's last record */
    size_t size;                /* what write(2) returns on success */
    /* The log failed before seq was durable: records why where the user will
     * look and returns the errno, and in *ino an inode to invalidate before
     * the answer (0: none). Runs on the notifier or the handler's thread. */
    int (*failed)(fs *f, fs_ack *a, const stm_err *err, uint64_t *ino);
    void (*done)(fs_ack *a);    /* after the answer: drops what arg holds */
    void *arg;
    uint64_t since_ns;
    fs_ack *next;
};
/* Takes a; answers a->req when the notifier has passed a->seq (at once if
 * it has), with a->size or, if the log fails first, a->failed's errno. */
void fs_notify_answer_at(fs *f, fs_ack *a);
/* Waits up to max_ms until the notifier has answered every write it holds:
 * at a clean stop, while the kernel's connection can still take answers,
 * so that a writer whose line became durable is not told otherwise. */
void fs_notify_drain(fs *f, unsigned max_ms);
/* Queues invalidation of an inode (data and attrs) or of a name in a dir,
 * and waits until it is done (never call with f->lock held). */
void fs_notify_inval(fs *f, uint64_t ino, uint64_t parent, const char *name, bool wait);
/* Is this request the helper's own self-operation? Returns the op kind. */
int fs_self_op(fs *f, fuse_req_t req, const char **name);
enum { SELF_NONE, SELF_TOUCH, SELF_CREATE, SELF_DELETE };
/* The mount made this name appear/disappear itself (mkdir/rmdir through the
 * mount fired inotify already); the helper skips its own op for it. */
void fs_notify_skip(fs *f, const char *id);
void fs_notify_unskip(fs *f, const char *id); /* the rmdir failed after all */

/* Watch files: one handle per open, with its own subscription. */
fs_watchfh *fs_watch_open(fs *f, const char *id, stm_err *err);
void fs_watch_read(fs *f, fs_watchfh *w, fuse_req_t req, size_t size);
void fs_watch_poll(fs *f, fs_watchfh *w, fuse_req_t req, struct fuse_pollhandle *ph);
void fs_watch_release(fs *f, fs_watchfh *w);

/* ---- ops.c --------------------------------------------------------------- */

extern const struct fuse_lowlevel_ops fs_ops;

#endif
