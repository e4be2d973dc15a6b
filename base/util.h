/*
 * util.h - small things several layers need: time, ids, hashing.
 */
#ifndef STM_UTIL_H
#define STM_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Wall clock in unix milliseconds, and a monotonic clock in nanoseconds. */
int64_t util_now_ms(void);
uint64_t util_mono_ns(void);
/* A random UUID v4, lower-case and hyphenated, into out[37]. */
void util_uuid4(char out[37]);
/* SHA-256 of data as 64 lower-case hex digits into out[65]. */
void util_sha256_hex(const void *data, size_t len, char out[65]);
/* Constant-time comparison of n bytes; 0 when equal. */
int util_ct_memcmp(const void *a, const void *b, size_t n);

#endif
