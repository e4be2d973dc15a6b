/*
 * fs.h - the mount: machines and instances as files, over the engine.
 * (Owned by the fs module; this is the surface `stmfs mount` uses.)
 */
#ifndef STM_FS_H
#define STM_FS_H

#include "base/err.h"
#include "engine/engine.h"
#include "src/config.h"

/* Mounts e at mountpoint with the fuse settings of c plus extra -o options
 * (may be NULL), runs the multithreaded loop until unmount or SIGTERM/INT,
 * and returns 0 after a clean unmount. ready(arg) is called once the mount
 * answers (the daemon detaches then). The caller should block SIGTERM, SIGINT
 * and SIGHUP before starting its own threads: fs_run unblocks them in the
 * loop's thread, the one that must receive them. It forks one helper
 * process (inotify self-operations) before mounting; the helper only makes
 * system calls and exits with the mount. */
int fs_run(eng *e, const stm_config *c, const char *mountpoint, const char *fuse_opts,
           void (*ready)(void *arg), void *arg, stm_err *err);

/* The errno a shell user sees for each engine code (documented in the README). */
int fs_errno_of(stm_code code);
/* The same for a whole error: a WAL_IO_ERROR caused by a full disk or an
 * exceeded quota is ENOSPC or EDQUOT rather than EIO. */
int fs_errno_of_err(const stm_err *err);

#endif
