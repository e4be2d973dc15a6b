/*
 * fault_ctl.c - the STMFS_FAULT_CTL watcher of fault-injection builds: reads
 * commands from the file that variable names and turns them into
 * wal_fault_* calls, or holds calls up (stall). See fault_ctl.h for the
 * commands; compiled only with -Dfault_injection=true.
 */
#include "src/fault_ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/log.h"
#include "wal/io.h"

#define POLL_MS 20
#define MAX_FILE (64 * 1024)

static const char *const op_names[WAL_FAULT_NOPS] = {
    [WAL_FAULT_OPEN] = "open",           [WAL_FAULT_PREAD] = "pread",
    [WAL_FAULT_PWRITE] = "pwrite",       [WAL_FAULT_FDATASYNC] = "fdatasync",
    [WAL_FAULT_FTRUNCATE] = "ftruncate", [WAL_FAULT_RENAME] = "rename",
    [WAL_FAULT_UNLINK] = "unlink",       [WAL_FAULT_FSYNC_DIR] = "fsync_dir",
};

static const struct {
    const char *name;
    int value;
} errnos[] = {
    {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS}, {"EFBIG", EFBIG},
};

static char *ctl_path;
static pthread_t thread;
static atomic_bool stopping;

/* ---- stalls: the fault table, with calls that can be held up ------------- */

static pthread_mutex_t stall_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stall_cv = PTHREAD_COND_INITIALIZER;
static bool stalled[WAL_FAULT_NOPS];

static void stall_point(wal_fault_op op)
{
    pthread_mutex_lock(&stall_mu);
    if (stalled[op]) {
        log_info("fault control: %s call stalled until clear", op_names[op]);
        while (stalled[op]) pthread_cond_wait(&stall_cv, &stall_mu);
    }
    pthread_mutex_unlock(&stall_mu);
}

static void set_stall(int op, bool on)
{
    pthread_mutex_lock(&stall_mu);
    for (int i = 0; i < WAL_FAULT_NOPS; i++)
        if (op < 0 || i == op) stalled[i] = on;
    pthread_cond_broadcast(&stall_cv);
    pthread_mutex_unlock(&stall_mu);
}

static int c_open(const char *path, int flags, mode_t mode)
{
    stall_point(WAL_FAULT_OPEN);
    return wal_fault_io.open(path, flags, mode);
}
static int c_close(int fd) { return wal_fault_io.close(fd); }
static ssize_t c_pread(int fd, void *b, size_t n, off_t off)
{
    stall_point(WAL_FAULT_PREAD);
    return wal_fault_io.pread(fd, b, n, off);
}
static ssize_t c_pwrite(int fd, const void *b, size_t n, off_t off)
{
    stall_point(WAL_FAULT_PWRITE);
    return wal_fault_io.pwrite(fd, b, n, off);
}
static int c_fdatasync(int fd)
{
    stall_point(WAL_FAULT_FDATASYNC);
    return wal_fault_io.fdatasync(fd);
}
static int c_ftruncate(int fd, off_t len)
{
    stall_point(WAL_FAULT_FTRUNCATE);
    return wal_fault_io.ftruncate(fd, len);
}
static int c_rename(const char *a, const char *b)
{
    stall_point(WAL_FAULT_RENAME);
    return wal_fault_io.rename(a, b);
}
static int c_unlink(const char *p)
{
    stall_point(WAL_FAULT_UNLINK);
    return wal_fault_io.unlink(p);
}
static int c_fsync_dir(const char *d)
{
    stall_point(WAL_FAULT_FSYNC_DIR);
    return wal_fault_io.fsync_dir(d);
}

static const wal_io ctl_io = {
    .open = c_open,
    .close = c_close,
    .pread = c_pread,
    .pwrite = c_pwrite,
    .fdatasync = c_fdatasync,
    .ftruncate = c_ftruncate,
    .rename = c_rename,
    .unlink = c_unlink,
    .fsync_dir = c_fsync_dir,
};

/* ---- commands ------------------------------------------------------------- */

static int op_of(const char *s)
{
    for (int i = 0; i < WAL_FAULT_NOPS; i++)
        if (strcmp(s, op_names[i]) == 0) return i;
    return -1;
}

static int errno_of(const char *s)
{
    for (size_t i = 0; i < sizeof errnos / sizeof errnos[0]; i++)
        if (strcmp(s, errnos[i].name) == 0) return errnos[i].value;
    return 0;
}

/* Parses an unsigned decimal number; false unless the whole word is one. */
static bool number(const char *s, unsigned long *out)
{
    if (!s || *s < '0' || *s > '9') return false;
    char *end;
    errno = 0;
    *out = strtoul(s, &end, 10);
    return !*end && errno == 0;
}

/* Runs one command line (NUL-terminated, no newline). */
static void run(char *line)
{
    char *save = NULL, *w[5] = {0};
    int n = 0;
    for (char *t = strtok_r(line, " \t\r", &save); t && n < 5; t = strtok_r(NULL, " \t\r", &save))
        w[n++] = t;
    if (n == 0 || w[0][0] == '#') return;
    unsigned long count = 0;
    if (strcmp(w[0], "clear") == 0 && n == 1) {
        wal_fault_reset();
        set_stall(-1, false);
        log_info("fault control: clear (every call works again)");
    } else if (strcmp(w[0], "fail") == 0 && (n == 3 || (n == 4 && number(w[3], &count))) &&
               op_of(w[1]) >= 0 && errno_of(w[2]) && (n == 3 || count > 0)) {
        wal_fault_fail((wal_fault_op)op_of(w[1]), 1, count, errno_of(w[2]));
        if (count)
            log_info("fault control: the next %lu %s call(s) fail with %s", count, w[1], w[2]);
        else
            log_info("fault control: every %s call fails with %s until clear", w[1], w[2]);
    } else if (strcmp(w[0], "stall") == 0 && n == 2 && op_of(w[1]) >= 0) {
        set_stall(op_of(w[1]), true);
        log_info("fault control: every %s call stalls until clear", w[1]);
    } else if (strcmp(w[0], "tear") == 0 && n == 2 && number(w[1], &count)) {
        wal_fault_tear(1, count);
        log_info("fault control: the next pwrite writes %lu bytes, then fails with EIO", count);
    } else {
        /* strtok_r cut the line into words; show them joined again */
        buf b = {0};
        for (int i = 0; i < n; i++) buf_printf(&b, "%s%s", i ? " " : "", w[i]);
        log_warn("fault control: unknown command '%s' skipped (want: fail OP ERRNO [COUNT], "
                 "tear KEEP, stall OP, clear)",
                 buf_cstr(&b));
        buf_free(&b);
    }
}

/* Runs the file's commands and deletes it once it holds complete lines. */
static void poll_once(void)
{
    int fd = open(ctl_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    buf b = {0};
    char tmp[4096];
    ssize_t k;
    while (b.len <= MAX_FILE && (k = read(fd, tmp, sizeof tmp)) != 0) {
        if (k < 0) {
            if (errno == EINTR) continue;
            break;
        }
        buf_add(&b, tmp, (size_t)k);
    }
    close(fd);
    /* Empty or without its final newline: still being written. */
    if (b.len && b.data[b.len - 1] == '\n') {
        char *save = NULL;
        for (char *l = strtok_r(b.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) run(l);
        if (unlink(ctl_path) != 0)
            log_warn("fault control: cannot delete %s: %s", ctl_path, strerror(errno));
    }
    buf_free(&b);
}

static void *watch(void *arg)
{
    (void)arg;
    const struct timespec pause = {0, POLL_MS * 1000000L};
    while (!atomic_load(&stopping)) {
        poll_once();
        nanosleep(&pause, NULL);
    }
    return NULL;
}

const struct wal_io *fault_ctl_start(void)
{
    const char *p = getenv("STMFS_FAULT_CTL");
    if (!p || !*p) return NULL;
    if (p[0] != '/') {
        log_warn("STMFS_FAULT_CTL=%s is not an absolute path; fault control is off", p);
        return NULL;
    }
    ctl_path = xstrdup(p);
    atomic_store(&stopping, false);
    /* The watcher takes no signals: they belong to the thread that waits
     * for SIGTERM. It inherits the mask in force when it is created. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&thread, NULL, watch, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        log_error("fault control: cannot start its thread: %s", strerror(rc));
        free(ctl_path);
        ctl_path = NULL;
        return NULL;
    }
    log_warn("fault control: disk I/O goes through the fault table; commands are read from %s",
             ctl_path);
    return &ctl_io;
}

void fault_ctl_stop(void)
{
    if (!ctl_path) return;
    atomic_store(&stopping, true);
    pthread_join(thread, NULL);
    set_stall(-1, false);
    free(ctl_path);
    ctl_path = NULL;
}
