/*
 * cmd_mount.c - `stmfs mount DATA_DIR MOUNTPOINT`: recover, mount, serve RCP
 * beside the mount, detach once the mount answers.
 *
 * Detaching: the process forks before any thread exists (the engine's,
 * WAL's and listener's threads would not survive a fork). The child does
 * everything - recovery, listener, mount - and reports through a pipe: one
 * byte 'K' once a stat of the mountpoint has been answered, or 'E' and a
 * message. The parent waits for that, prints the message, and exits 0 or 1,
 * so a script can use the mount as soon as the command returns. With -f
 * the one process stays in front and logs to stderr.
 *
 * Stopping: umount, fusermount3 -u, SIGTERM, SIGINT or SIGHUP end the FUSE
 * loop; then the listener stops after its queued answers, the engine syncs
 * and closes, and the process exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/util.h"
#include "engine/engine.h"
#include "fs/fs.h"
#include "rcp/rcp.h"
#include "src/cmds.h"
#include "src/config.h"
#include "src/fault_ctl.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: stmfs mount DATA_DIR MOUNTPOINT [-f] [-c config.yaml] [--bind ADDR|none]\n"
            "                   [-o fuse-opts]\n"
            "\n"
            "Recovers the database in DATA_DIR, mounts it on MOUNTPOINT (machines/,\n"
            "instances/, wal/), serves RCP beside the mount, and detaches once the mount\n"
            "answers. Stop it with umount, fusermount3 -u MOUNTPOINT, or SIGTERM.\n"
            "\n"
            "  -f, --foreground    stay in front; log to stderr\n"
            "  -c, --config FILE   YAML configuration (rstmdb's keys plus fuse:);\n"
            "                      RSTMDB_* and STMFS_* environment variables override it\n"
            "  --bind ADDR         RCP listen address IP:PORT (default 127.0.0.1:7401),\n"
            "                      or none for no listener; overrides the config\n"
            "  -o OPTS             mount options, comma separated, may repeat:\n"
            "                        ro                   read-only (every write fails\n"
            "                                             with EROFS; the WAL is not touched)\n"
            "                        allow_other          let other users in\n"
            "                        default_permissions  let the kernel check modes\n"
            "                      other options pass to FUSE as they are\n"
            "  -h, --help          this text\n"
            "\n"
            "Config keys of the mount (fuse: section; defaults): attr_timeout 3600,\n"
            "entry_timeout 3600 (seconds the kernel may cache; every change is\n"
            "invalidated exactly), max_threads 64, allow_other false,\n"
            "default_permissions false, read_only false.\n"
            "Logs go to logging.file, else DATA_DIR/stmfs.log when detached.\n");
}

/* ---- the report from the child to the waiting parent ---------------------- */

static int report_fd = -1;
static bool logging; /* log_setup done: messages go to the log as well */

static void report(char kind, const char *msg)
{
    if (report_fd < 0) return;
    buf b = {0};
    buf_putc(&b, kind);
    if (msg) buf_puts(&b, msg);
    ssize_t w = write(report_fd, b.data, b.len);
    (void)w;
    buf_free(&b);
    close(report_fd);
    report_fd = -1;
}

static void on_ready(void *arg)
{
    (void)arg;
    report('K', NULL);
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    if (logging) log_error("%s", buf_cstr(&b));
    if (report_fd >= 0)
        report('E', buf_cstr(&b));
    else
        fprintf(stderr, "stmfs mount: %s\n", buf_cstr(&b));
    buf_free(&b);
    return 1;
}

/* Waits for the child's report; the parent's exit status. */
static int wait_child(int fd, const char *mnt)
{
    buf b = {0};
    char tmp[512];
    ssize_t n;
    while ((n = read(fd, tmp, sizeof tmp)) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        buf_add(&b, tmp, (size_t)n);
    }
    close(fd);
    int rc;
    if (b.len && b.data[0] == 'K') {
        rc = 0;
    } else if (b.len && b.data[0] == 'E') {
        fprintf(stderr, "stmfs mount: %s\n", b.data + 1);
        rc = 1;
    } else {
        fprintf(stderr, "stmfs mount: the daemon exited before %s was ready (see its log)\n",
                mnt);
        rc = 1;
    }
    buf_free(&b);
    return rc;
}

/* ---- checks before anything starts --------------------------------------- */

static bool mounted_at(const char *path)
{
    FILE *m = fopen("/proc/self/mounts", "r");
    if (!m) return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, m)) {
        char *sp = strchr(line, ' ');
        if (!sp) continue;
        char *mp = sp + 1, *end = strchr(mp, ' ');
        if (!end) continue;
        *end = 0;
        found = strcmp(mp, path) == 0;
    }
    fclose(m);
    return found;
}

static int check_mountpoint(const char *mnt, char *real)
{
    struct stat st;
    struct statfs sf;
    /* statfs always asks the file system; stat may answer from cache */
    if (statfs(mnt, &sf) != 0 && errno == ENOTCONN)
        return fail("%s is a stale mount left by a daemon that died (%s); "
                    "release it with: fusermount3 -u %s",
                    mnt, strerror(errno), mnt);
    if (stat(mnt, &st) != 0) {
        if (errno == ENOTCONN)
            return fail("%s is a stale mount left by a daemon that died (%s); "
                        "release it with: fusermount3 -u %s",
                        mnt, strerror(errno), mnt);
        return fail("mountpoint %s: %s", mnt, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) return fail("mountpoint %s is not a directory", mnt);
    if (!realpath(mnt, real)) return fail("mountpoint %s: %s", mnt, strerror(errno));
    if (mounted_at(real))
        return fail("%s is mounted already; unmount it first (fusermount3 -u %s)", mnt, mnt);
    return 0;
}

/* Absolute path of a directory that may not exist yet. */
static char *absolute(const char *p)
{
    char real[PATH_MAX];
    if (realpath(p, real)) return xstrdup(real);
    if (p[0] == '/') return xstrdup(p);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return xstrdup(p);
    buf b = {0};
    buf_printf(&b, "%s/%s", cwd, p);
    return buf_detach(&b, NULL);
}

/* Splits -o text: ro, allow_other and default_permissions go to the config,
 * the rest is passed to FUSE. */
static void take_opts(stm_config *c, const char *opts, buf *rest)
{
    char *copy = xstrdup(opts), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (strcmp(t, "ro") == 0)
            c->fuse_read_only = true;
        else if (strcmp(t, "rw") == 0)
            c->fuse_read_only = false;
        else if (strcmp(t, "allow_other") == 0)
            c->fuse_allow_other = true;
        else if (strcmp(t, "default_permissions") == 0)
            c->fuse_default_permissions = true;
        else {
            if (rest->len) buf_putc(rest, ',');
            buf_puts(rest, t);
        }
    }
    free(copy);
}

int cmd_mount(int argc, char **argv)
{
    const char *data_arg = NULL, *mnt_arg = NULL, *config_path = NULL, *bind = NULL;
    bool foreground = false;
    buf opts = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            buf_free(&opts);
            return 0;
        } else if (strcmp(a, "-f") == 0 || strcmp(a, "--foreground") == 0) {
            foreground = true;
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (++i >= argc) goto bad;
            config_path = argv[i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            config_path = a + 9;
        } else if (strcmp(a, "--bind") == 0) {
            if (++i >= argc) goto bad;
            bind = argv[i];
        } else if (strncmp(a, "--bind=", 7) == 0) {
            bind = a + 7;
        } else if (strcmp(a, "-o") == 0) {
            if (++i >= argc) goto bad;
            if (opts.len) buf_putc(&opts, ',');
            buf_puts(&opts, argv[i]);
        } else if (strncmp(a, "-o", 2) == 0 && a[2]) {
            if (opts.len) buf_putc(&opts, ',');
            buf_puts(&opts, a + 2);
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "stmfs mount: unknown option '%s'\n", a);
            goto bad;
        } else if (!data_arg) {
            data_arg = a;
        } else if (!mnt_arg) {
            mnt_arg = a;
        } else {
            fprintf(stderr, "stmfs mount: unexpected argument '%s'\n", a);
            goto bad;
        }
    }
    if (!data_arg || !mnt_arg) goto bad;

    stm_config cfg;
    stm_err err = {0};
    if (config_load(&cfg, config_path, &err) != STM_OK) {
        fprintf(stderr, "stmfs mount: %s\n", err.msg);
        buf_free(&opts);
        return 1;
    }
    free(cfg.data_dir);
    cfg.data_dir = absolute(data_arg);
    if (bind && strcmp(bind, "none") != 0 && !config_valid_addr(bind)) {
        fprintf(stderr, "stmfs mount: --bind wants IP:PORT with a literal address "
                        "(127.0.0.1:7401, [::1]:7401) or none, not '%s'\n", bind);
        config_free(&cfg);
        return 2;
    }
    if (bind) {
        free(cfg.bind_addr);
        cfg.bind_addr = xstrdup(bind);
    }
    buf fuse_rest = {0};
    take_opts(&cfg, buf_cstr(&opts), &fuse_rest);
    buf_free(&opts);

    char mnt[PATH_MAX];
    int rc = 1;
    FILE *logf = NULL;
    eng *e = NULL;
    rcp_server *srv = NULL;
    if (check_mountpoint(mnt_arg, mnt) != 0) goto out;

    if (!foreground) {
        int p[2];
        if (pipe(p) != 0) {
            fail("pipe: %s", strerror(errno));
            goto out;
        }
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            fail("fork: %s", strerror(errno));
            goto out;
        }
        if (pid > 0) {
            close(p[1]);
            rc = wait_child(p[0], mnt_arg);
            goto out;
        }
        close(p[0]);
        report_fd = p[1];
        fcntl(report_fd, F_SETFD, FD_CLOEXEC);
        setsid();
        if (chdir("/") != 0) {
            /* paths are absolute already */
        }
    }

    /* logs: the config's file, else the data dir when detached, else stderr */
    const char *log_path = cfg.log_file;
    buf deflog = {0};
    if (!log_path && !foreground) {
        /* A read-only mount changes nothing on disk: no data directory is
         * made for it, and on read-only media it runs without a log file. */
        if (cfg.fuse_read_only && access(cfg.data_dir, F_OK) != 0) {
            fail("cannot mount %s read-only: %s (a read-only mount shows an existing database)",
                 cfg.data_dir, strerror(errno));
            goto out;
        }
        if (!cfg.fuse_read_only) mkdir(cfg.data_dir, 0755);
        buf_printf(&deflog, "%s/stmfs.log", cfg.data_dir);
        log_path = buf_cstr(&deflog);
    }
    if (log_path) {
        logf = fopen(log_path, "a");
        if (!logf && cfg.fuse_read_only && !cfg.log_file && (errno == EROFS || errno == EACCES)) {
            /* the default log of a read-only mount on read-only media */
        } else if (!logf) {
            fail("cannot open log file %s: %s", log_path, strerror(errno));
            buf_free(&deflog);
            goto out;
        }
        if (logf) setvbuf(logf, NULL, _IOLBF, 0);
    }
    buf_free(&deflog);
    log_setup(logf, cfg.log_level);
    logging = logf != NULL || !foreground;
    if (cfg.ignored) {
        /* in the log, and on the terminal the daemon is about to leave */
        log_warn("config: ignoring %s: no such setting (a typo? unknown keys are ignored, as "
                 "rstmdb ignores them)", cfg.ignored);
        if (logf)
            fprintf(stderr, "stmfs mount: warning: config: ignoring %s: no such setting\n",
                    cfg.ignored);
    }
    if (!foreground) util_stdio_to_null();

    /* Every thread started from here inherits these blocked; fs_run
     * unblocks them in the loop's thread, which is then the one woken. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    log_debug("open descriptors: up to %llu", util_raise_fd_limit());
    util_tune_malloc();
    eng_opts o;
    config_to_eng_opts(&cfg, &o);
    o.data_dir = cfg.data_dir;
    o.read_only = cfg.fuse_read_only;
    o.io = fault_ctl_start(); /* NULL unless a fault-injection build and STMFS_FAULT_CTL */
    wal_recovery rep;
    memset(&rep, 0, sizeof rep);
    if (eng_open(&o, &e, &rep, &err) != STM_OK) {
        fail("cannot open %s: %s", cfg.data_dir, err.msg);
        goto out;
    }
    log_info("recovered %s: %llu records in %llu segments (%llu bytes)%s", cfg.data_dir,
             (unsigned long long)rep.records, (unsigned long long)rep.segments,
             (unsigned long long)rep.bytes, cfg.fuse_read_only ? ", read-only" : "");
    if (rep.zero_tail) log_info("WAL recovery: %s", rep.message);
    else if (rep.message[0])
        log_warn("WAL recovery cut %llu bytes at offset %llu: %s",
                 (unsigned long long)rep.cut_bytes, (unsigned long long)rep.cut_offset,
                 rep.message);

    if (cfg.bind_addr && strcmp(cfg.bind_addr, "none") != 0 && cfg.bind_addr[0]) {
        if (rcp_start(e, &cfg, &srv, &err) != STM_OK) {
            fail("%s", err.msg); /* names the listener that failed */
            goto out;
        }
        log_info("RCP listening on %s", rcp_bound_addr(srv));
    }

    if (fs_run(e, &cfg, mnt, fuse_rest.len ? buf_cstr(&fuse_rest) : NULL, on_ready, NULL,
               &err) != 0) {
        fail("%s", err.msg);
        goto out;
    }
    rc = 0;
out:
    if (srv) rcp_stop(srv);
    if (e) {
        eng_close(e);
        log_info("stopped");
    }
    fault_ctl_stop();
    if (report_fd >= 0) report('E', "stopped before the mount was ready");
    config_free(&cfg);
    buf_free(&fuse_rest);
    if (logf) {
        log_setup(NULL, LOG_ERROR);
        fclose(logf);
    }
    return rc;
bad:
    buf_free(&opts);
    usage(stderr);
    return 2;
}
