/*
 * dfile.c - a file that appears whole or not at all (API in internal.h).
 *
 * What is appended goes to a temp file a few MiB at a time, with a running
 * CRC-32C of what was written; the commit fdatasyncs it, renames it into
 * place and fsyncs the directory, so after a crash the path holds either
 * the old file or the whole new one. Any failure removes the temp file.
 * Database snapshots stream through it (built whole in memory first, one
 * cost as much memory as the database's history); instance snapshots and
 * their index are written in one piece.
 */
#include "engine/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "base/crc32c.h"

#define DFILE_FLUSH_BYTES (4u << 20)

stm_code dfile_open(dfile *f, const wal_io *io, const char *dir, const char *path,
                    const char *tmp, stm_err *err)
{
    memset(f, 0, sizeof *f);
    f->io = io;
    snprintf(f->dir, sizeof f->dir, "%s", dir);
    snprintf(f->path, sizeof f->path, "%s", path);
    snprintf(f->tmp, sizeof f->tmp, "%s", tmp);
    f->fd = io->open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0)
        return stm_fail(err, STM_INTERNAL_ERROR, "snapshot: cannot create %s: %s", f->tmp,
                        strerror(errno));
    return STM_OK;
}

uint64_t dfile_pos(const dfile *f)
{
    return f->written + f->pend.len;
}

void dfile_flush(dfile *f)
{
    size_t done = 0;
    while (!f->error && done < f->pend.len) {
        ssize_t n = f->io->pwrite(f->fd, f->pend.data + done, f->pend.len - done,
                                  (off_t)(f->written + done));
        if (n <= 0) f->error = n < 0 ? errno : EIO;
        else done += (size_t)n;
    }
    f->crc = crc32c(f->crc, f->pend.data, done);
    f->written += done;
    buf_reset(&f->pend);
}

void dfile_maybe_flush(dfile *f)
{
    if (f->pend.len >= DFILE_FLUSH_BYTES) dfile_flush(f);
}

void dfile_abort(dfile *f)
{
    if (f->fd >= 0) {
        f->io->close(f->fd);
        f->io->unlink(f->tmp);
    }
    f->fd = -1;
    buf_free(&f->pend);
}

stm_code dfile_commit(dfile *f, stm_err *err)
{
    dfile_flush(f);
    int saved = f->error;
    if (!saved && f->io->fdatasync(f->fd) != 0) saved = errno;
    f->io->close(f->fd);
    f->fd = -1;
    if (!saved && f->io->rename(f->tmp, f->path) != 0) saved = errno;
    if (!saved && f->io->fsync_dir(f->dir) != 0) saved = errno;
    buf_free(&f->pend);
    if (saved) {
        f->io->unlink(f->tmp);
        return stm_fail(err, STM_INTERNAL_ERROR, "snapshot: writing %s failed: %s", f->path,
                        strerror(saved));
    }
    return STM_OK;
}
