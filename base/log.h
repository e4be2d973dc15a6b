/*
 * log.h - one line per message, to stderr or a file, with a timestamp.
 * Used only at the edges (main, listeners, the mount); library code returns
 * errors instead of printing.
 */
#ifndef STM_LOG_H
#define STM_LOG_H

#include <stdio.h>

enum { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Where to write (NULL = stderr) and the most verbose level kept. */
void log_setup(FILE *out, int level);
/* Parses "error", "warn", "info", "debug"; -1 when unknown. */
int log_level_parse(const char *s);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
