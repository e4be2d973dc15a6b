/*
 * loop.c - the epoll event loop (API in loop.h).
 *
 * Handlers live in an array indexed by fd, grown on demand, so dispatching
 * an event is one array access. A handler may delete or add descriptors,
 * including its own: every event of a batch is checked against the current
 * table before its callback runs.
 */
#include "rcp/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/util.h"

#define MAX_EVENTS 256

typedef struct {
    unsigned mask;
    bool used;
    rcp_loop_fn fn;
    void *arg;
} handler;

struct rcp_loop {
    int epfd;
    handler *h;
    int cap;
    bool stop;
    int tick_ms;
    void (*tick)(rcp_loop *, void *);
    void *tick_arg;
    bool (*before_sleep)(rcp_loop *, void *);
    void *bs_arg;
    long long next_tick;
    uint64_t wake_at_ns; /* one-shot deadline for the next wait (0: none) */
    bool no_pwait2;      /* the kernel has no epoll_pwait2 */
    long long pass_ms;   /* the clock when the last wait returned */
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

rcp_loop *rcp_loop_new(stm_err *err)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) {
        stm_fail(err, STM_INTERNAL_ERROR, "epoll_create1: %s", strerror(errno));
        return NULL;
    }
    rcp_loop *l = xcalloc(1, sizeof *l);
    l->epfd = fd;
    return l;
}

void rcp_loop_free(rcp_loop *l)
{
    if (!l) return;
    close(l->epfd);
    free(l->h);
    free(l);
}

static uint32_t ep_mask(unsigned mask)
{
    return (mask & RCP_EV_READ ? EPOLLIN : 0) | (mask & RCP_EV_WRITE ? EPOLLOUT : 0);
}

int rcp_loop_add(rcp_loop *l, int fd, unsigned mask, rcp_loop_fn fn, void *arg)
{
    if (fd < 0) return -1;
    if (fd >= l->cap) {
        int ncap = l->cap ? l->cap : 64;
        while (ncap <= fd)
            ncap *= 2;
        l->h = xrealloc(l->h, (size_t)ncap * sizeof *l->h);
        memset(l->h + l->cap, 0, (size_t)(ncap - l->cap) * sizeof *l->h);
        l->cap = ncap;
    }
    struct epoll_event ev = {.events = ep_mask(mask), .data.fd = fd};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) return -1;
    l->h[fd] = (handler){mask, true, fn, arg};
    return 0;
}

int rcp_loop_set(rcp_loop *l, int fd, unsigned mask)
{
    if (fd < 0 || fd >= l->cap || !l->h[fd].used) return -1;
    if (l->h[fd].mask == mask) return 0;
    struct epoll_event ev = {.events = ep_mask(mask), .data.fd = fd};
    if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) != 0) return -1;
    l->h[fd].mask = mask;
    return 0;
}

void rcp_loop_del(rcp_loop *l, int fd)
{
    if (fd < 0 || fd >= l->cap || !l->h[fd].used) return;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    memset(&l->h[fd], 0, sizeof l->h[fd]);
}

void rcp_loop_set_tick(rcp_loop *l, int ms, void (*fn)(rcp_loop *, void *), void *arg)
{
    l->tick_ms = ms;
    l->tick = fn;
    l->tick_arg = arg;
    l->next_tick = now_ms() + ms;
}

void rcp_loop_set_before_sleep(rcp_loop *l, bool (*fn)(rcp_loop *, void *), void *arg)
{
    l->before_sleep = fn;
    l->bs_arg = arg;
}

void rcp_loop_wake_at(rcp_loop *l, uint64_t mono_ns)
{
    if (!l->wake_at_ns || mono_ns < l->wake_at_ns) l->wake_at_ns = mono_ns;
}

long long rcp_loop_pass_ms(const rcp_loop *l)
{
    return l->pass_ms;
}

void rcp_loop_stop(rcp_loop *l)
{
    l->stop = true;
}

void rcp_loop_run(rcp_loop *l)
{
    struct epoll_event evs[MAX_EVENTS];
    l->stop = false;
    while (!l->stop) {
        bool busy = l->before_sleep ? l->before_sleep(l, l->bs_arg) : false;
        if (l->stop) break;
        /* in nanoseconds: a group commit waits for tens of microseconds */
        long long timeout_ns = -1;
        if (busy) {
            timeout_ns = 0;
        } else if (l->tick) {
            long long d = l->next_tick - now_ms();
            timeout_ns = d < 0 ? 0 : d * 1000000;
        }
        if (l->wake_at_ns) {
            uint64_t now = util_mono_ns();
            long long d = l->wake_at_ns > now ? (long long)(l->wake_at_ns - now) : 0;
            if (timeout_ns < 0 || d < timeout_ns) timeout_ns = d;
            l->wake_at_ns = 0;
        }
        int n;
        if (!l->no_pwait2) {
            struct timespec ts = {(time_t)(timeout_ns / 1000000000),
                                  (long)(timeout_ns % 1000000000)};
            n = epoll_pwait2(l->epfd, evs, MAX_EVENTS, timeout_ns < 0 ? NULL : &ts, NULL);
            if (n < 0 && errno == ENOSYS) {
                l->no_pwait2 = true; /* a kernel before 5.11: milliseconds, rounded up */
                continue;
            }
        } else {
            n = epoll_wait(l->epfd, evs, MAX_EVENTS,
                           timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000));
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            break; /* the epoll fd itself is broken: nothing sensible is left */
        }
        l->pass_ms = now_ms();
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd < 0 || fd >= l->cap || !l->h[fd].used) continue;
            handler h = l->h[fd];
            unsigned got = 0;
            uint32_t e = evs[i].events;
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) got |= RCP_EV_READ;
            if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) got |= RCP_EV_WRITE;
            if (e & (EPOLLERR | EPOLLHUP)) got |= h.mask & (RCP_EV_READ | RCP_EV_WRITE);
            got &= h.mask | ((e & (EPOLLERR | EPOLLHUP)) ? RCP_EV_READ : 0);
            if (got) h.fn(l, fd, h.arg, got);
        }
        if (l->tick && now_ms() >= l->next_tick) {
            l->next_tick = now_ms() + l->tick_ms;
            l->tick(l, l->tick_arg);
        }
    }
}
