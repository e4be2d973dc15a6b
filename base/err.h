/*
 * err.h - the one error vocabulary of stmfs.
 *
 * Every layer returns an stm_code; 0 is success. The codes are exactly the
 * 16 error codes of the RCP protocol, so rcp/ sends them as they are and fs/
 * maps each to one errno (fs_errno_of). A message a user can act on travels
 * beside the code in an stm_err; functions fill it only when they fail.
 */
#ifndef STM_ERR_H
#define STM_ERR_H

#include <stdbool.h>

typedef enum {
    STM_OK = 0,
    STM_UNSUPPORTED_PROTOCOL,
    STM_BAD_REQUEST,
    STM_UNAUTHORIZED,
    STM_AUTH_FAILED,
    STM_NOT_FOUND,
    STM_MACHINE_NOT_FOUND,
    STM_MACHINE_VERSION_EXISTS,
    STM_MACHINE_VERSION_LIMIT_EXCEEDED,
    STM_INSTANCE_NOT_FOUND,
    STM_INSTANCE_EXISTS,
    STM_INVALID_TRANSITION,
    STM_GUARD_FAILED,
    STM_CONFLICT,
    STM_WAL_IO_ERROR,
    STM_INTERNAL_ERROR,
    STM_RATE_LIMITED,
    STM_CODE_COUNT
} stm_code;

typedef struct {
    stm_code code;
    char msg[512];
} stm_err;

/* "INSTANCE_NOT_FOUND" etc.; never NULL. */
const char *stm_code_name(stm_code code);
/* Parses a code name; returns STM_OK when the name is unknown. */
stm_code stm_code_parse(const char *name);
/* As the protocol defines it: WAL_IO_ERROR, INTERNAL_ERROR, RATE_LIMITED. */
bool stm_code_retryable(stm_code code);

/* Sets err (which may be NULL) and returns code, so callers can
 * `return stm_fail(err, STM_BAD_REQUEST, "...", ...)`. err->msg may itself
 * be an argument (wrapping an inner message). */
stm_code stm_fail(stm_err *err, stm_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
