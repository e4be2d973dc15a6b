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
    do
        fd = open(path, flags, mode);
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
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    unsigned long calls;
    unsigned long fail_at, fail_count; /* calls [fail_at, fail_at+count) fail; count 0 = forever */
    int err;
} rule;

/* What a power cut would leave of a file: bytes up to synced are on the
 * platter, bytes up to size only in the page cache; a file created since its
 * directory was last fsynced may vanish altogether. */
typedef struct {
    char *path;
    off_t size, synced;
    bool new_entry;
} tfile;

#define MAX_FD 4096

static pthread_mutex_t fmu = PTHREAD_MUTEX_INITIALIZER;
/* Real calls run under the read side, so a power cut (write side) falls
 * between calls, never inside one. */
static pthread_rwlock_t live = PTHREAD_RWLOCK_INITIALIZER;
static rule rules[WAL_FAULT_NOPS];
static unsigned long tear_at;
static size_t tear_keep;
static bool dead, tracking;
static tfile *files;
static size_t nfiles;
static int fd_file[MAX_FD]; /* index + 1 into files, 0 = not tracked */

static void forget_files(void)
{
    for (size_t i = 0; i < nfiles; i++)
        free(files[i].path);
    free(files);
    files = NULL;
    nfiles = 0;
    memset(fd_file, 0, sizeof fd_file);
}

void wal_fault_reset(void)
{
    pthread_mutex_lock(&fmu);
    memset(rules, 0, sizeof rules);
    tear_at = 0;
    tear_keep = 0;
    dead = false;
    tracking = false;
    forget_files();
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

void wal_fault_track(void)
{
    pthread_mutex_lock(&fmu);
    forget_files();
    tracking = true;
    pthread_mutex_unlock(&fmu);
}

unsigned wal_fault_power_cut(unsigned seed)
{
    pthread_rwlock_wrlock(&live);
    pthread_mutex_lock(&fmu);
    dead = true;
    unsigned changed = 0;
    for (size_t i = 0; i < nfiles; i++) {
        tfile *f = &files[i];
        if (!f->path) continue;
        if (f->new_entry) {
            changed += unlink(f->path) == 0;
        } else if (f->size > f->synced) {
            /* Some of the unsynced tail may have reached the disk anyway. */
            off_t keep = f->synced + (off_t)(rand_r(&seed) % (unsigned)(f->size - f->synced + 1));
            changed += truncate(f->path, keep) == 0;
        }
    }
    forget_files();
    tracking = false;
    pthread_mutex_unlock(&fmu);
    pthread_rwlock_unlock(&live);
    return changed;
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
    if (dead) e = EIO;
    pthread_mutex_unlock(&fmu);
    return e;
}

/* Counts the call and enters the live (read) side; a power cut cannot then
 * fall between the check and the real call, which would let a write land
 * after the cut. On failure the live side is left again. */
static int enter(wal_fault_op op, unsigned long *callno)
{
    pthread_rwlock_rdlock(&live);
    int e = hit(op, callno);
    if (e) pthread_rwlock_unlock(&live);
    return e;
}

static tfile *tracked(int fd)
{
    return fd >= 0 && fd < MAX_FD && fd_file[fd] ? &files[fd_file[fd] - 1] : NULL;
}

static tfile *file_named(const char *path)
{
    for (size_t i = 0; i < nfiles; i++)
        if (files[i].path && strcmp(files[i].path, path) == 0) return &files[i];
    return NULL;
}

static int f_open(const char *path, int flags, mode_t mode)
{
    int e = enter(WAL_FAULT_OPEN, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    bool existed = access(path, F_OK) == 0;
    int fd = posix_open(path, flags, mode);
    e = errno;
    pthread_mutex_lock(&fmu);
    if (fd >= 0 && fd < MAX_FD && tracking) {
        tfile *f = file_named(path);
        if (!f) {
            files = realloc(files, (nfiles + 1) * sizeof *files);
            if (!files) abort();
            f = &files[nfiles++];
            struct stat st;
            off_t sz = fstat(fd, &st) == 0 ? st.st_size : 0;
            *f = (tfile){strdup(path), sz, sz, !existed};
        }
        fd_file[fd] = (int)(f - files) + 1;
    }
    pthread_mutex_unlock(&fmu);
    pthread_rwlock_unlock(&live);
    errno = e;
    return fd;
}

static int f_close(int fd)
{
    pthread_mutex_lock(&fmu);
    if (fd >= 0 && fd < MAX_FD) fd_file[fd] = 0;
    pthread_mutex_unlock(&fmu);
    return close(fd);
}

static ssize_t f_pread(int fd, void *b, size_t n, off_t off)
{
    int e = hit(WAL_FAULT_PREAD, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    return pread(fd, b, n, off);
}

static void grew(int fd, off_t end)
{
    pthread_mutex_lock(&fmu);
    tfile *f = tracked(fd);
    if (f && end > f->size) f->size = end;
    pthread_mutex_unlock(&fmu);
}

static ssize_t f_pwrite(int fd, const void *b, size_t n, off_t off)
{
    unsigned long callno;
    int e = enter(WAL_FAULT_PWRITE, &callno);
    if (e) {
        errno = e;
        return -1;
    }
    pthread_mutex_lock(&fmu);
    bool tear = tear_at && callno == tear_at;
    size_t keep = tear_keep;
    pthread_mutex_unlock(&fmu);
    ssize_t k;
    if (tear) {
        /* A torn write: part of the data reaches the file, the call fails. */
        if (keep > n) keep = n;
        k = keep ? pwrite(fd, b, keep, off) : 0;
        if (k > 0) grew(fd, off + k);
        errno = EIO;
        k = -1;
    } else {
        k = pwrite(fd, b, n, off);
        e = errno;
        if (k > 0) grew(fd, off + k);
        errno = e;
    }
    pthread_rwlock_unlock(&live);
    return k;
}

static int f_fdatasync(int fd)
{
    int e = enter(WAL_FAULT_FDATASYNC, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    pthread_mutex_lock(&fmu);
    tfile *f = tracked(fd);
    off_t covered = f ? f->size : 0;
    pthread_mutex_unlock(&fmu);
    int rc = fdatasync(fd);
    e = errno;
    pthread_mutex_lock(&fmu);
    f = tracked(fd);
    if (rc == 0 && f && covered > f->synced) f->synced = covered;
    pthread_mutex_unlock(&fmu);
    pthread_rwlock_unlock(&live);
    errno = e;
    return rc;
}

static int f_ftruncate(int fd, off_t len)
{
    int e = enter(WAL_FAULT_FTRUNCATE, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    int rc = ftruncate(fd, len);
    e = errno;
    pthread_mutex_lock(&fmu);
    tfile *f = tracked(fd);
    if (rc == 0 && f) {
        f->size = len;
        if (f->synced > len) f->synced = len;
    }
    pthread_mutex_unlock(&fmu);
    pthread_rwlock_unlock(&live);
    errno = e;
    return rc;
}

static int f_rename(const char *a, const char *b)
{
    int e = enter(WAL_FAULT_RENAME, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    int rc = rename(a, b);
    e = errno;
    pthread_mutex_lock(&fmu);
    tfile *f = rc == 0 ? file_named(a) : NULL;
    if (f) {
        tfile *old = file_named(b);
        if (old) {
            free(old->path);
            old->path = NULL;
        }
        free(f->path);
        f->path = strdup(b);
    }
    pthread_mutex_unlock(&fmu);
    pthread_rwlock_unlock(&live);
    errno = e;
    return rc;
}

static int f_unlink(const char *p)
{
    int e = enter(WAL_FAULT_UNLINK, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    int rc = unlink(p);
    e = errno;
    pthread_mutex_lock(&fmu);
    tfile *f = rc == 0 ? file_named(p) : NULL;
    if (f) {
        free(f->path);
        f->path = NULL;
    }
    pthread_mutex_unlock(&fmu);
    pthread_rwlock_unlock(&live);
    errno = e;
    return rc;
}

static int f_fsync_dir(const char *d)
{
    int e = enter(WAL_FAULT_FSYNC_DIR, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    int rc = posix_fsync_dir(d);
    e = errno;
    size_t dl = strlen(d);
    pthread_mutex_lock(&fmu);
    for (size_t i = 0; rc == 0 && i < nfiles; i++) {
        const char *p = files[i].path;
        if (p && strncmp(p, d, dl) == 0 && p[dl] == '/' && !strchr(p + dl + 1, '/'))
            files[i].new_entry = false;
    }
    pthread_mutex_unlock(&fmu);
    pthread_rwlock_unlock(&live);
    errno = e;
    return rc;
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
