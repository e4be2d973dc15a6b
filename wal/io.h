/*
 * io.h - the narrow file I/O interface under wal/ and the snapshot writer.
 *
 * Every byte stmfs persists goes through one of these calls, so a test build
 * can swap in a table that fails a chosen call with ENOSPC or EIO, tears a
 * write, or simulates power loss by dropping everything not yet covered by a
 * completed fdatasync (as SQLite's crash-test VFS does). Calls return what
 * the POSIX call returns and set errno the same way.
 */
#ifndef STM_WAL_IO_H
#define STM_WAL_IO_H

#include <sys/types.h>

typedef struct wal_io {
    int (*open)(const char *path, int flags, mode_t mode);
    int (*close)(int fd);
    ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
    ssize_t (*pwrite)(int fd, const void *buf, size_t n, off_t off);
    int (*fdatasync)(int fd);
    int (*ftruncate)(int fd, off_t len);
    int (*rename)(const char *from, const char *to);
    int (*unlink)(const char *path);
    int (*fsync_dir)(const char *dir); /* open the directory, fsync it, close */
} wal_io;

/* The real thing. */
extern const wal_io wal_posix_io;

#endif
