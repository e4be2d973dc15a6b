#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const code_names[STM_CODE_COUNT] = {
    [STM_OK] = "OK",
    [STM_UNSUPPORTED_PROTOCOL] = "UNSUPPORTED_PROTOCOL",
    [STM_BAD_REQUEST] = "BAD_REQUEST",
    [STM_UNAUTHORIZED] = "UNAUTHORIZED",
    [STM_AUTH_FAILED] = "AUTH_FAILED",
    [STM_NOT_FOUND] = "NOT_FOUND",
    [STM_MACHINE_NOT_FOUND] = "MACHINE_NOT_FOUND",
    [STM_MACHINE_VERSION_EXISTS] = "MACHINE_VERSION_EXISTS",
    [STM_MACHINE_VERSION_LIMIT_EXCEEDED] = "MACHINE_VERSION_LIMIT_EXCEEDED",
    [STM_INSTANCE_NOT_FOUND] = "INSTANCE_NOT_FOUND",
    [STM_INSTANCE_EXISTS] = "INSTANCE_EXISTS",
    [STM_INVALID_TRANSITION] = "INVALID_TRANSITION",
    [STM_GUARD_FAILED] = "GUARD_FAILED",
    [STM_CONFLICT] = "CONFLICT",
    [STM_WAL_IO_ERROR] = "WAL_IO_ERROR",
    [STM_INTERNAL_ERROR] = "INTERNAL_ERROR",
    [STM_RATE_LIMITED] = "RATE_LIMITED",
};

const char *stm_code_name(stm_code code)
{
    if ((unsigned)code >= STM_CODE_COUNT) return "INTERNAL_ERROR";
    return code_names[code];
}

stm_code stm_code_parse(const char *name)
{
    for (int i = 1; i < STM_CODE_COUNT; i++)
        if (strcmp(code_names[i], name) == 0) return (stm_code)i;
    return STM_OK;
}

bool stm_code_retryable(stm_code code)
{
    return code == STM_WAL_IO_ERROR || code == STM_INTERNAL_ERROR || code == STM_RATE_LIMITED;
}

stm_code stm_fail(stm_err *err, stm_code code, const char *fmt, ...)
{
    if (err) {
        /* Formatted aside first: callers may pass err->msg itself as an
         * argument to wrap an inner error's message. */
        char msg[sizeof err->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        err->code = code;
        memcpy(err->msg, msg, sizeof msg);
    }
    return code;
}
