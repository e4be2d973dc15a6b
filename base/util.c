#include "base/util.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <limits.h>
#include <fcntl.h>
#include <malloc.h>
#include <linux/futex.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <unistd.h>

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t util_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void util_uuid4(char out[37])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) RAND_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

void util_sha256_hex(const void *data, size_t len, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = 0;
}

int util_ct_memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++) d |= x[i] ^ y[i];
    return d;
}

void util_gate_open(util_gate *g)
{
    __atomic_add_fetch(&g->gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&g->sleepers, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, &g->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

bool util_gate_wait(util_gate *g, bool (*test)(void *arg), void *arg, uint64_t deadline_ns)
{
    for (;;) {
        uint32_t gen = __atomic_load_n(&g->gen, __ATOMIC_SEQ_CST);
        if (test(arg)) return true;
        struct timespec rel, *timeout = NULL;
        if (deadline_ns) {
            uint64_t now = util_mono_ns();
            if (now >= deadline_ns) return false;
            rel.tv_sec = (time_t)((deadline_ns - now) / 1000000000u);
            rel.tv_nsec = (long)((deadline_ns - now) % 1000000000u);
            timeout = &rel;
        }
        /* sleepers before the second look at gen, gen before sleepers in
         * util_gate_open: one of the two sees the other */
        __atomic_add_fetch(&g->sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&g->gen, __ATOMIC_SEQ_CST) == gen)
            syscall(SYS_futex, &g->gen, FUTEX_WAIT_PRIVATE, gen, timeout, NULL, 0);
        __atomic_sub_fetch(&g->sleepers, 1, __ATOMIC_SEQ_CST);
    }
}

typedef struct {
    const uint64_t *mark;
    uint64_t target;
    const bool *stop;
} mark_test;

static bool mark_or_stop(void *arg)
{
    const mark_test *m = arg;
    return __atomic_load_n(m->mark, __ATOMIC_ACQUIRE) >= m->target ||
           __atomic_load_n(m->stop, __ATOMIC_ACQUIRE);
}

bool util_gate_wait_mark(util_gate *g, const uint64_t *mark, uint64_t target, const bool *stop,
                         uint64_t deadline_ns)
{
    mark_test m = {mark, target, stop};
    util_gate_wait(g, mark_or_stop, &m, deadline_ns);
    return __atomic_load_n(mark, __ATOMIC_ACQUIRE) >= target;
}

void util_name_thread(const char *name)
{
    /* prctl names the calling thread only; a failure leaves the inherited
     * name, which is harmless */
    (void)prctl(PR_SET_NAME, name, 0, 0, 0);
}

unsigned long long util_raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0) rl = want;
    }
    return (unsigned long long)rl.rlim_cur;
}

void util_tune_malloc(void)
{
    /* By default glibc raises its mmap threshold to the size of each
     * mmapped block freed, up to 32 MiB, so after the first big answer the
     * next ones came from the job thread's arena. Freeing one there from
     * the loop first merged every small block that thread had freed (the
     * answer's tree: 700,000 for a LIST of 100,000), then trimmed the
     * arena: 40-57 ms during which no client of the loop was answered. A
     * fixed threshold keeps big blocks out of arenas (a free is one
     * munmap); the trim threshold is the one glibc would have reached. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
}

void util_stdio_to_null(void)
{
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul < 0) return;
    dup2(nul, 0); /* dup2 leaves close-on-exec off the copies */
    dup2(nul, 1);
    dup2(nul, 2);
    if (nul > 2) close(nul);
}
