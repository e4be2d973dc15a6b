/*
 * fault_ctl.h - disk faults injected into a running daemon, for tests.
 *
 * Only in builds configured with -Dfault_injection=true (STM_FAULT_INJECTION);
 * elsewhere these are no-ops and STMFS_FAULT_CTL is ignored.
 *
 * When the environment variable STMFS_FAULT_CTL names a file (an absolute
 * path), `stmfs mount` and `stmfs serve` do every WAL, snapshot and
 * compaction I/O through wal_fault_io (wal/io.h), wrapped so that calls can
 * also be held up, and a thread polls that file every 20 ms. Once it holds
 * complete lines, the thread runs them in order and deletes the file: a
 * test knows its commands are in force as soon as the file is gone. Write
 * the file whole (one echo, or a temporary file renamed over it), and the
 * next commands only once it is gone. Commands:
 *
 *   fail OP ERRNO [COUNT]   the next COUNT calls of OP fail with ERRNO; without
 *                           COUNT, every call from the next one on, until clear
 *   tear KEEP               the next pwrite writes only KEEP bytes, then fails
 *                           with EIO
 *   stall OP                every call of OP from now on waits until clear
 *                           (even at shutdown), after logging "fault
 *                           control: OP call stalled"; a test kills the
 *                           daemon in the middle of a snapshot or a
 *                           compaction this way
 *   clear                   every call works again, stalled ones go on
 *   # ...                   a comment; blank lines are skipped too
 *
 *   OP     open pread pwrite fdatasync ftruncate rename unlink fsync_dir
 *   ERRNO  EIO ENOSPC EDQUOT EROFS EFBIG
 *
 * Each command is logged; an unknown one is logged as a warning and
 * skipped.
 */
#ifndef STM_FAULT_CTL_H
#define STM_FAULT_CTL_H

struct wal_io;

#ifdef STM_FAULT_INJECTION
/* Starts the watcher when STMFS_FAULT_CTL is set and returns the I/O table
 * the engine must use (eng_opts.io); NULL otherwise (the real calls). Call
 * it after any fork and after logging is set up. */
const struct wal_io *fault_ctl_start(void);
/* Stops the watcher, if one runs. */
void fault_ctl_stop(void);
#else
static inline const struct wal_io *fault_ctl_start(void) { return 0; }
static inline void fault_ctl_stop(void) {}
#endif

#endif
