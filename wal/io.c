/*
 * io.c - the real I/O table, and (in -Dfault_injection builds) one that
 * breaks on purpose.
 *
 * The fault table passes every call to the real one, except that a test can
 * make the Nth call of an operation fail with a chosen errno (ENOSPC, EIO),
 * or tear the Nth pwrite (write a prefix, then fail). Call counters let a
 * test find the N it wants by running a scenario once without faults.
 */
#include "wal/io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static int posix_open(const char *path, int flags, mode_t mode)
{
    int fd;
    do fd = open(path, flags, mode);
    while (fd < 0 && errno == EINTR);
    return fd;
}

static int posix_fdatasync(int fd)
{
    return fdatasync(fd);
}

static int posix_fsync_dir(const char *dir)
{
    int fd = posix_open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

const wal_io wal_posix_io = {
    .open = posix_open,
    .close = close,
    .pread = pread,
    .pwrite = pwrite,
    .fdatasync = posix_fdatasync,
    .ftruncate = ftruncate,
    .rename = rename,
    .unlink = unlink,
    .fsync_dir = posix_fsync_dir,
};

#ifdef STM_FAULT_INJECTION
#include <pthread.h>
#include <string.h>

typedef struct {
    unsigned long calls;
    unsigned long fail_at, fail_count; /* calls [fail_at, fail_at+count) fail; count 0 = forever */
    int err;
} rule;

static pthread_mutex_t fmu = PTHREAD_MUTEX_INITIALIZER;
static rule rules[WAL_FAULT_NOPS];
static unsigned long tear_at;
static size_t tear_keep;

void wal_fault_reset(void)
{
    pthread_mutex_lock(&fmu);
    memset(rules, 0, sizeof rules);
    tear_at = 0;
    tear_keep = 0;
    pthread_mutex_unlock(&fmu);
}

void wal_fault_fail(wal_fault_op op, unsigned long nth, unsigned long count, int err)
{
    pthread_mutex_lock(&fmu);
    rules[op].fail_at = nth ? rules[op].calls + nth : 0;
    rules[op].fail_count = count;
    rules[op].err = err;
    pthread_mutex_unlock(&fmu);
}

void wal_fault_tear(unsigned long nth, size_t keep)
{
    pthread_mutex_lock(&fmu);
    tear_at = nth ? rules[WAL_FAULT_PWRITE].calls + nth : 0;
    tear_keep = keep;
    pthread_mutex_unlock(&fmu);
}

unsigned long wal_fault_calls(wal_fault_op op)
{
    pthread_mutex_lock(&fmu);
    unsigned long n = rules[op].calls;
    pthread_mutex_unlock(&fmu);
    return n;
}

/* Counts the call; returns the errno it must fail with, or 0. */
static int hit(wal_fault_op op, unsigned long *callno)
{
    pthread_mutex_lock(&fmu);
    rule *r = &rules[op];
    unsigned long n = ++r->calls;
    if (callno) *callno = n;
    int e = 0;
    if (r->fail_at && n >= r->fail_at && (r->fail_count == 0 || n < r->fail_at + r->fail_count))
        e = r->err ? r->err : EIO;
    pthread_mutex_unlock(&fmu);
    return e;
}

#define FAULT_OR(op, call)                                                                     \
    do {                                                                                       \
        int e_ = hit(op, NULL);                                                                \
        if (e_) {                                                                              \
            errno = e_;                                                                        \
            return -1;                                                                         \
        }                                                                                      \
        return call;                                                                           \
    } while (0)

static int f_open(const char *path, int flags, mode_t mode)
{
    FAULT_OR(WAL_FAULT_OPEN, posix_open(path, flags, mode));
}

static int f_close(int fd)
{
    return close(fd);
}

static ssize_t f_pread(int fd, void *b, size_t n, off_t off)
{
    FAULT_OR(WAL_FAULT_PREAD, pread(fd, b, n, off));
}

static ssize_t f_pwrite(int fd, const void *b, size_t n, off_t off)
{
    unsigned long callno;
    int e = hit(WAL_FAULT_PWRITE, &callno);
    if (e) {
        errno = e;
        return -1;
    }
    pthread_mutex_lock(&fmu);
    bool tear = tear_at && callno == tear_at;
    size_t keep = tear_keep;
    pthread_mutex_unlock(&fmu);
    if (tear) {
        /* A torn write: part of the data reaches the file, the call fails. */
        if (keep > n) keep = n;
        if (keep && pwrite(fd, b, keep, off) < 0) return -1;
        errno = EIO;
        return -1;
    }
    return pwrite(fd, b, n, off);
}

static int f_fdatasync(int fd)
{
    FAULT_OR(WAL_FAULT_FDATASYNC, fdatasync(fd));
}

static int f_ftruncate(int fd, off_t len)
{
    FAULT_OR(WAL_FAULT_FTRUNCATE, ftruncate(fd, len));
}

static int f_rename(const char *a, const char *b)
{
    FAULT_OR(WAL_FAULT_RENAME, rename(a, b));
}

static int f_unlink(const char *p)
{
    FAULT_OR(WAL_FAULT_UNLINK, unlink(p));
}

static int f_fsync_dir(const char *d)
{
    FAULT_OR(WAL_FAULT_FSYNC_DIR, posix_fsync_dir(d));
}

const wal_io wal_fault_io = {
    .open = f_open,
    .close = f_close,
    .pread = f_pread,
    .pwrite = f_pwrite,
    .fdatasync = f_fdatasync,
    .ftruncate = f_ftruncate,
    .rename = f_rename,
    .unlink = f_unlink,
    .fsync_dir = f_fsync_dir,
};
#endif
