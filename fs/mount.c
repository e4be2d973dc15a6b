/*
 * mount.c - fs_run: the FUSE session around the engine.
 *
 * Order of life: session (options from the config plus -o), signal handlers
 * (SIGTERM/INT/HUP end the loop), mount, notifier and helper threads, a
 * readiness probe (a real stat of the mountpoint, answered by the loop)
 * that calls ready(), then the multithreaded loop with max_threads from the
 * config: writers of events and new hold no thread while their fsync runs
 * (the notifier answers them), but opens, definitions and mkdirs wait in
 * their handler. On the way out the writes still waiting for their fsync
 * are answered first (fs_notify_drain), then the mount goes (so the
 * helper's pending operations on it fail instead of hanging), then the
 * threads, then the session.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "fs/internal.h"
#include "src/config.h"

/* How long a clean stop waits for the writes still waiting for their
 * fdatasync (fs_notify_drain) before it unmounts. */
#define STOP_DRAIN_MS 10000

typedef struct {
    fs *f;
    void (*ready)(void *);
    void *arg;
} probe;

static void *probe_main(void *arg)
{
    probe *p = arg;
    util_name_thread("fs-probe");
    struct stat st;
    /* blocks until the loop has answered INIT and this GETATTR */
    if (stat(p->f->mnt, &st) == 0)
        log_info("mount: %s is ready", p->f->mnt);
    else
        log_warn("mount: probing %s: %s", p->f->mnt, strerror(errno));
    if (p->ready) p->ready(p->arg);
    return NULL;
}

static bool has_opt(const char *opts, const char *name)
{
    if (!opts) return false;
    size_t n = strlen(name);
    for (const char *p = opts; p && *p;) {
        const char *c = strchr(p, ',');
        size_t l = c ? (size_t)(c - p) : strlen(p);
        if (l == n && strncmp(p, name, n) == 0) return true;
        p = c ? c + 1 : NULL;
    }
    return false;
}

int fs_run(eng *e, const stm_config *c, const char *mountpoint, const char *fuse_opts,
           void (*ready)(void *arg), void *arg, stm_err *err)
{
    fs *f = xcalloc(1, sizeof *f);
    char real[PATH_MAX];
    if (!realpath(mountpoint, real)) {
        stm_fail(err, STM_BAD_REQUEST, "mountpoint %s: %s", mountpoint, strerror(errno));
        free(f);
        return -1;
    }
    f->e = e;
    f->c = c;
    f->mnt = xstrdup(real);
    f->ro = c->fuse_read_only || has_opt(fuse_opts, "ro");
    f->attr_timeout = c->fuse_attr_timeout > 0 ? c->fuse_attr_timeout : 0;
    f->max_line = c->max_line_bytes && c->max_line_bytes < FS_MAX_LINE ? c->max_line_bytes
                                                                       : FS_MAX_LINE;
    f->entry_timeout = c->fuse_entry_timeout > 0 ? c->fuse_entry_timeout : 0;
    f->start_ms = f->machines_mtime = f->instances_mtime = f->wal_mtime = util_now_ms();
    f->uid = getuid();
    f->gid = getgid();
    pthread_mutex_init(&f->lock, NULL);
    fs_inodes_init(f);

    buf o = {0};
    buf_puts(&o, "fsname=stmfs,subtype=stmfs");
    if (f->ro) buf_puts(&o, ",ro");
    if (c->fuse_allow_other) buf_puts(&o, ",allow_other");
    if (c->fuse_default_permissions) buf_puts(&o, ",default_permissions");
    if (fuse_opts && *fuse_opts) buf_printf(&o, ",%s", fuse_opts);
    char *argv[] = {"stmfs", "-o", (char *)buf_cstr(&o), NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);

    int rc = -1;
    f->se = fuse_session_new(&args, &fs_ops, sizeof fs_ops, f);
    if (!f->se) {
        stm_fail(err, STM_BAD_REQUEST, "cannot start a FUSE session with options %s",
                 buf_cstr(&o));
        goto out;
    }
    if (fs_notify_prefork(f, err) != 0) goto out_session;
    if (fuse_set_signal_handlers(f->se) != 0) {
        stm_fail(err, STM_INTERNAL_ERROR, "cannot install signal handlers");
        goto out_session;
    }
    if (fuse_session_mount(f->se, f->mnt) != 0) {
        stm_fail(err, STM_INTERNAL_ERROR, "cannot mount on %s (is /dev/fuse there, and the "
                 "directory empty and not mounted?)", f->mnt);
        goto out_signals;
    }
    if (fs_notify_start(f, err) != 0) goto out_unmount;

    probe pr = {f, ready, arg};
    pthread_t pt;
    bool probing = pthread_create(&pt, NULL, probe_main, &pr) == 0;
    if (!probing && ready) ready(arg);

    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    unsigned maxt = c->fuse_max_threads ? c->fuse_max_threads : 64;
    fuse_loop_cfg_set_max_threads(cfg, maxt);
    /* keep workers around: a burst of writers should not pay thread starts */
    fuse_loop_cfg_set_idle_threads(cfg, maxt / 2 ? maxt / 2 : 1);
    log_info("mount: serving %s with up to %u threads", f->mnt, maxt);
    /* the stop signals go to this thread: the loop waits here, and the
     * caller blocked them in every other thread it started */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGHUP);
    pthread_sigmask(SIG_UNBLOCK, &stop, NULL);
    int r = fuse_session_loop_mt(f->se, cfg);
    fuse_loop_cfg_destroy(cfg);
    if (r < 0) log_error("mount: loop ended with %s", strerror(-r));
    else if (r > 0) log_info("mount: signal %d, unmounting", r);
    else log_info("mount: unmounted");
    rc = r < 0 ? -1 : 0;
    if (rc) stm_fail(err, STM_INTERNAL_ERROR, "FUSE loop: %s", strerror(-r));

    fs_notify_drain(f, STOP_DRAIN_MS);
    fuse_session_unmount(f->se);
    if (probing) pthread_join(pt, NULL);
    fs_notify_stop(f);
    goto out_signals;

out_unmount:
    fuse_session_unmount(f->se);
    fs_notify_stop(f);
out_signals:
    fuse_remove_signal_handlers(f->se);
out_session:
    fuse_session_destroy(f->se);
    /* only now: the child may have waited on the connection until it closed */
    fs_notify_reap(f);
out:
    fuse_opt_free_args(&args);
    buf_free(&o);
    fs_inodes_free(f);
    for (size_t i = 0; i < f->n_empty_machines; i++) free(f->empty_machines[i]);
    free(f->empty_machines);
    while (f->temps) {
        fs_temp *t = f->temps;
        f->temps = t->next;
        free(t->machine);
        free(t->name);
        buf_free(&t->data);
        free(t);
    }
    while (f->errors) {
        fs_errtext *x = f->errors;
        f->errors = x->next;
        free(x->name);
        free(x->text);
        free(x);
    }
    pthread_mutex_destroy(&f->lock);
    free(f->mnt);
    free(f);
    return rc;
}
