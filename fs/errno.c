/*
 * errno.c - the errno a shell user sees for each engine code.
 *
 * The shell prints strerror of the errno ("write error: Operation not
 * permitted"), so each code gets the errno whose text reads closest to what
 * happened; `error` in the instance or machine dir holds the exact story.
 * The same table is in README.md, section "Errors".
 *
 *   code                             errno         the shell says
 *   UNSUPPORTED_PROTOCOL             EPROTO        Protocol error
 *   BAD_REQUEST                      EINVAL        Invalid argument
 *   UNAUTHORIZED                     EACCES        Permission denied
 *   AUTH_FAILED                      EACCES        Permission denied
 *   NOT_FOUND                        ENOENT        No such file or directory
 *   MACHINE_NOT_FOUND                ENOENT        No such file or directory
 *   MACHINE_VERSION_EXISTS           EEXIST        File exists
 *   MACHINE_VERSION_LIMIT_EXCEEDED   EDQUOT        Disk quota exceeded
 *   INSTANCE_NOT_FOUND               ENOENT        No such file or directory
 *   INSTANCE_EXISTS                  EEXIST        File exists
 *   INVALID_TRANSITION               EPERM         Operation not permitted
 *   GUARD_FAILED                     EACCES        Permission denied
 *   CONFLICT                         EBUSY         Device or resource busy
 *   WAL_IO_ERROR                     EIO           Input/output error
 *   INTERNAL_ERROR                   EIO           Input/output error
 *   RATE_LIMITED                     EAGAIN        Resource temporarily unavailable
 *
 * A WAL_IO_ERROR whose disk call failed with ENOSPC or EDQUOT is that errno
 * instead (fs_errno_of_err): "No space left on device" tells the user what
 * to do. The WAL's message carries strerror of the call's errno, made in
 * this same process, so it is found by that text.
 */
#include <errno.h>
#include <string.h>

#include "fs/fs.h"

int fs_errno_of(stm_code code)
{
    switch (code) {
    case STM_OK: return 0;
    case STM_UNSUPPORTED_PROTOCOL: return EPROTO;
    case STM_BAD_REQUEST: return EINVAL;
    case STM_UNAUTHORIZED: return EACCES;
    case STM_AUTH_FAILED: return EACCES;
    case STM_NOT_FOUND: return ENOENT;
    case STM_MACHINE_NOT_FOUND: return ENOENT;
    case STM_MACHINE_VERSION_EXISTS: return EEXIST;
    case STM_MACHINE_VERSION_LIMIT_EXCEEDED: return EDQUOT;
    case STM_INSTANCE_NOT_FOUND: return ENOENT;
    case STM_INSTANCE_EXISTS: return EEXIST;
    case STM_INVALID_TRANSITION: return EPERM;
    case STM_GUARD_FAILED: return EACCES;
    case STM_CONFLICT: return EBUSY;
    case STM_WAL_IO_ERROR: return EIO;
    case STM_INTERNAL_ERROR: return EIO;
    case STM_RATE_LIMITED: return EAGAIN;
    case STM_CODE_COUNT: break;
    }
    return EIO;
}

int fs_errno_of_err(const stm_err *err)
{
    static const int disk_full[] = {ENOSPC, EDQUOT};
    if (err->code == STM_WAL_IO_ERROR)
        for (size_t i = 0; i < sizeof disk_full / sizeof disk_full[0]; i++)
            if (strstr(err->msg, strerror(disk_full[i]))) return disk_full[i];
    return fs_errno_of(err->code);
}
