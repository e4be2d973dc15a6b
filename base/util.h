/*
 * util.h - small things several layers need: time, ids, hashing, a wait gate.
 */
#ifndef STM_UTIL_H
#define STM_UTIL_H

#include <stdbool.h>
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

/* A gate many threads wait at until a condition of their own holds (a
 * watermark reaching their record, say), opened by whoever changes it. A
 * futex word, not a condition variable: everyone woken returns at once
 * instead of re-taking a mutex one by one, which costs more than the
 * fdatasync they waited for on a small busy machine. Zero-initialised. */
typedef struct {
    uint32_t gen, sleepers;
} util_gate;
/* Wakes every waiter; call after making their condition true. */
void util_gate_open(util_gate *g);
/* Returns test(arg) once it holds, or false at deadline_ns (util_mono_ns
 * time; 0 = none). The generation is read before each test, so an open
 * between the test and the sleep is never lost. */
bool util_gate_wait(util_gate *g, bool (*test)(void *arg), void *arg, uint64_t deadline_ns);
/* The common test: until *mark >= target or *stop (both read with atomic
 * loads). Returns whether the mark was reached. */
bool util_gate_wait_mark(util_gate *g, const uint64_t *mark, uint64_t target, const bool *stop,
                         uint64_t deadline_ns);

/* Names the calling thread (at most 15 characters), so that top -H, ps -L
 * and gdb show which of the daemon's threads is busy or stuck. */
void util_name_thread(const char *name);
/* Points stdin, stdout and stderr at /dev/null (a daemon, a helper process). */
void util_stdio_to_null(void);
/* Raises the soft limit of open descriptors to the hard one and returns
 * it: the log keeps each segment open and every client is a socket, and a
 * shell's usual 1,024 would stop a long log or a big pool with EMFILE. */
unsigned long long util_raise_fd_limit(void);
/* Sets glibc's malloc for a long-lived server whose threads hand big
 * buffers to each other (an answer built on a job thread, sent and freed
 * by the RCP loop): blocks of 1 MiB and more come straight from mmap, and
 * an arena keeps up to 32 MiB free before it returns memory. */
void util_tune_malloc(void);

#endif
