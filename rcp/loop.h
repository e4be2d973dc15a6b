/*
 * loop.h - a small epoll event loop, in the manner of Redis' ae: file
 * descriptors with a read/write interest and one callback each, a periodic
 * tick, and a hook that runs before every sleep. It knows nothing of RCP.
 *
 * Level-triggered: a callback that leaves bytes unread is called again. All
 * functions but rcp_loop_wake must be called from the loop's own thread.
 */
#ifndef STM_RCP_LOOP_H
#define STM_RCP_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"

#define RCP_EV_READ 1u
#define RCP_EV_WRITE 2u

typedef struct rcp_loop rcp_loop;
/* events: RCP_EV_READ and/or RCP_EV_WRITE (errors and hang-ups are reported
 * as both, so the owner reads or writes and learns the error from that). */
typedef void (*rcp_loop_fn)(rcp_loop *l, int fd, void *arg, unsigned events);

rcp_loop *rcp_loop_new(stm_err *err);
void rcp_loop_free(rcp_loop *l);

/* Registers fd with an interest mask (0 = registered but quiet). */
int rcp_loop_add(rcp_loop *l, int fd, unsigned mask, rcp_loop_fn fn, void *arg);
/* Changes the interest; cheap when it does not change. */
int rcp_loop_set(rcp_loop *l, int fd, unsigned mask);
/* Forgets fd (call before closing it). */
void rcp_loop_del(rcp_loop *l, int fd);

/* fn runs about every ms milliseconds. */
void rcp_loop_set_tick(rcp_loop *l, int ms, void (*fn)(rcp_loop *l, void *arg), void *arg);
/* fn runs before each sleep; returning true means "more work is pending",
 * and the loop polls without sleeping. */
void rcp_loop_set_before_sleep(rcp_loop *l, bool (*fn)(rcp_loop *l, void *arg), void *arg);

/* The next wait ends no later than mono_ns (util_mono_ns clock); once. */
void rcp_loop_wake_at(rcp_loop *l, uint64_t mono_ns);

/* CLOCK_MONOTONIC in ms when the current pass's wait returned: for
 * activity stamps, which need no finer clock than one read per pass. */
long long rcp_loop_pass_ms(const rcp_loop *l);

/* Runs until rcp_loop_stop. */
void rcp_loop_run(rcp_loop *l);
void rcp_loop_stop(rcp_loop *l);

#endif
