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

#ifdef STM_FAULT_INJECTION
/* Built only with -Dfault_injection=true (the define reaches every target
 * that depends on wal). wal_fault_io forwards to the real calls, counting
 * them per operation, and fails or tears the ones a test picked. State is
 * process-wide; tests reset it between cases. */
#include <stdbool.h>
#include <stddef.h>

typedef enum {
    WAL_FAULT_OPEN,
    WAL_FAULT_PREAD,
    WAL_FAULT_PWRITE,
    WAL_FAULT_FDATASYNC,
    WAL_FAULT_FTRUNCATE,
    WAL_FAULT_RENAME,
    WAL_FAULT_UNLINK,
    WAL_FAULT_FSYNC_DIR,
    WAL_FAULT_NOPS
} wal_fault_op;

extern const wal_io wal_fault_io;
/* Clears every rule (call counters keep counting). */
void wal_fault_reset(void);
/* Calls nth..nth+count-1 of op, counted from now (nth 1 = the next call),
 * fail with errno err; count 0 = that call and every later one. nth 0
 * removes the rule. */
void wal_fault_fail(wal_fault_op op, unsigned long nth, unsigned long count, int err);
/* The nth pwrite from now writes only its first keep bytes, then fails
 * with EIO, as a write torn by a full disk or a dying device would. */
void wal_fault_tear(unsigned long nth, size_t keep);
/* Calls of op made so far through wal_fault_io. */
unsigned long wal_fault_calls(wal_fault_op op);
/* Power loss. After wal_fault_track, every file opened through the table is
 * followed: its size, the size its last completed fdatasync covered, and
 * whether it was created since its directory was last fsynced.
 * wal_fault_power_cut then waits for calls in flight, makes every later
 * call fail with EIO (the machine is off), and rewrites the files as a
 * power cut could leave them: new directory entries not yet synced are
 * removed, each file keeps its synced bytes plus a random (seeded) part of
 * the unsynced tail. Returns how many files it changed. wal_fault_reset
 * turns the power back on. Simplification: truncations and renames count
 * as durable at once (stmfs syncs after both anyway). */
void wal_fault_track(void);
unsigned wal_fault_power_cut(unsigned seed);
#endif

#endif
