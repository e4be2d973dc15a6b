/*
 * internal.h - what the files of rcp/ share: the server, its connections,
 * and the functions one file offers the others. Not part of the public
 * surface (that is rcp.h).
 *
 * OUTPUT BUFFER AND DURABILITY. Each connection has one output buffer. The
 * bytes [out_off, ready_end) may be sent; [ready_end, out.len) are responses
 * waiting for the WAL. Each queued message has a mark (its end and the WAL
 * sequence it depends on) in a FIFO; when eng_acked_seq() reaches a mark's
 * seq, ready_end moves to its end. So responses leave in request order and
 * only once durable, with no copy, and stream events appended behind them
 * are released right after them.
 */
#ifndef STM_RCP_INTERNAL_H
#define STM_RCP_INTERNAL_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/buf.h"
#include "engine/engine.h"
#include "rcp/frame.h"
#include "rcp/loop.h"
#include "rcp/rcp.h"
#include "src/config.h"

/* Stop reading a client's requests while this much output waits for it;
 * one response may still add up to 16 MiB on top, so the buffer is bounded
 * by about RCP_OUT_SOFT_LIMIT + RCP_MAX_PAYLOAD + one round of events. */
#define RCP_OUT_SOFT_LIMIT (4u * 1024 * 1024)
/* Stream events taken from one subscription per round, so one busy watch
 * cannot starve the other connections. */
#define RCP_EVENTS_PER_ROUND 512

typedef struct rcp_conn rcp_conn;
typedef struct rcp_job rcp_job;
typedef struct rcp_server rcp_server;

typedef struct {
    size_t end;     /* end of the message in out.data */
    uint64_t seq;   /* WAL sequence it depends on (0 = none) */
    uint64_t t0_ns; /* when its request was decoded (0 = an event) */
    int op;         /* for the duration histogram; -1 = an event */
} rcp_mark;

typedef struct rcp_watch {
    struct rcp_watch *next;
    rcp_conn *conn;
    eng_sub *sub;
    char id[41]; /* "sub-" + UUID v4 */
    bool all;    /* WATCH_ALL (else WATCH_INSTANCE) */
    bool include_ctx;
    uint64_t skip_upto; /* drop events at or below this offset */
    /* the filter, owned, to resubscribe after an overflow */
    eng_filter f;
    char *instance_id;
    char **lists[4]; /* machines, from_states, to_states, events */
    size_t n_lists[4];
} rcp_watch;

struct rcp_conn {
    rcp_server *srv;
    rcp_conn *prev, *next;
    int fd;
    char peer[64];
    SSL *ssl;
    bool handshaking;    /* TLS handshake not finished */
    bool tls_want_write; /* the last SSL call wants the socket writable */
    rcp_decoder dec;
    enum rcp_wire wire_out;
    bool authenticated;
    bool closing; /* BYE or broken input: flush, then close */
    bool read_paused;
    bool eof;
    buf in;
    size_t in_off;
    buf out;
    size_t out_off, ready_end;
    rcp_mark *marks;
    size_t mark_head, mark_n, mark_cap;
    rcp_watch *watches;
    uint64_t last_active_ms;
    /* On the server's busy list while it holds responses for the log or has
     * watches: what the loop looks at after every WAL acknowledgement, so
     * a pool's idle connections cost nothing per group (rcp_conn_track). */
    rcp_conn *busy_prev, *busy_next;
    bool busy, waiting;
    rcp_job *job; /* a request running on a thread of its own (job.c) */
};

/* ---- metrics (metrics.c); touched only by the loop thread -------------- */

#define RCP_HIST_BUCKETS 9
typedef struct {
    uint64_t connections_total, connections_rejected;
    uint64_t requests[RCP_OP_COUNT];
    uint64_t errors[STM_CODE_COUNT];
    uint64_t hist[RCP_OP_COUNT][RCP_HIST_BUCKETS + 1];
    double hist_sum[RCP_OP_COUNT];
    uint64_t events_forwarded[2]; /* instance, all */
    int64_t subscriptions[2];
    uint64_t bytes_in, bytes_out;
} rcp_counters;

typedef struct rcp_http rcp_http;

struct rcp_server {
    eng *e;
    const stm_config *cfg;
    rcp_loop *loop;
    pthread_t thread;
    bool thread_started;
    int listen_fd;
    int wake_fd; /* eventfd: WAL acks, watch wakes, stop */
    int listener_id;
    char bound[80];
    rcp_conn *conns;
    uint64_t n_conns;
    rcp_conn *busy;   /* connections with marks or watches (rcp_conn_track) */
    size_t n_busy;
    size_t n_waiting; /* connections with responses waiting for the log */
    rcp_job *jobs;    /* requests on threads of their own, or waiting (job.c) */
    rcp_job *job_wait, *job_wait_tail; /* those waiting for a thread, oldest first */
    size_t n_jobs;    /* threads running */
    uint64_t max_conns;
    uint64_t last_reject_log_ms; /* when a refusal past max_conns was last logged */
    uint64_t idle_ms;
    bool stopping;
    uint64_t stop_deadline_ms;
    int stop_requested; /* set by rcp_stop's thread (atomic) */
    /* auth */
    bool auth_required;
    char (*hashes)[65];
    size_t n_hashes;
    /* tls */
    SSL_CTX *tls;
    /* metrics */
    int metrics_fd;
    char metrics_bound[80];
    rcp_http *https;
    rcp_counters m;
    int64_t start_ms;
    bool need_pass;     /* something left to do before sleeping */
    int wake_pending;   /* an eventfd write is on its way (atomic) */
    bool accept_paused; /* out of descriptors: retry on the next tick */
    uint64_t kick_seq;  /* newest WAL sequence a held response waits for */
    uint64_t group_since_ns; /* every_write: when the loop began gathering a group */
    bool self_woken;    /* the ack listener ran on the loop's own thread */
    bool own_groups;    /* every_write: the loop commits its clients' groups */
    bool holding;       /* eng_hold is in force for the group being gathered */
    size_t last_group_waiters; /* connections the last group answered */
    bool wal_failed;    /* responses waiting for the WAL become WAL_IO_ERROR */
    int ack_interest;   /* some connection needs to hear acks (atomic; on_acked) */
};

/* server.c */
void rcp_conn_want(rcp_conn *c); /* recompute epoll interest */
void rcp_queue_mark(rcp_conn *c, uint64_t seq, int op, uint64_t t0_ns);
/* Call after c's marks or watches change: keeps the busy list and the
 * counts the group rule reads in step with them. */
void rcp_conn_track(rcp_conn *c);
uint64_t rcp_now_ms(void);
/* Asks the loop to look at every connection soon; any thread may call it. */
void rcp_server_wake(rcp_server *s);

/* session.c: runs every complete request buffered on c. */
void rcp_session_process_input(rcp_conn *c);
bool rcp_auth_check_token(const rcp_server *s, const char *token);

/* dispatch.c */
/* Runs one op; on success *result (caller frees) and *seq. */
stm_code rcp_dispatch(rcp_conn *c, int op, const cJSON *params, cJSON **result, uint64_t *seq,
                      stm_err *err, int depth);
/* Moves ready stream events of c's watches into its output. Returns true
 * when it stopped at the output's limit with events possibly left: then
 * nothing will wake it for them, and the caller drains again once the
 * output has room. */
bool rcp_watches_drain(rcp_conn *c);
void rcp_watches_free(rcp_conn *c);
/* HELLO, AUTH, PING, BYE, INFO (session.c) */
stm_code rcp_session_op(rcp_conn *c, int op, const cJSON *params, cJSON **result, stm_err *err);

/* job.c: requests that would hold the loop too long (COMPACT, WAL_READ
 * without a limit, LIST_INSTANCES past 1,000 or with many new instances
 * to link first) run on a thread of their own; c takes no further request
 * until the answer is queued. */
bool rcp_job_wanted(eng *e, int op, const cJSON *params);
/* Starts op on a thread, or queues it while RCP_MAX_JOBS run; false (and
 * nothing done) only when its params cannot be copied. */
bool rcp_job_start(rcp_conn *c, int op, const char *id, const cJSON *params, uint64_t t0_ns);
/* Queues the answer of c's job if it is done; true when it did. */
bool rcp_job_finish(rcp_conn *c);
/* c is closing: its job finishes unowned. */
void rcp_job_orphan(rcp_conn *c);
/* Frees the finished jobs of closed connections; with wait, waits for and
 * frees every job (the server is stopping, every connection is closed). */
void rcp_jobs_reap(rcp_server *s, bool wait);
/* Whether c may run op now (the auth gate of dispatch.c). */
bool rcp_op_allowed(const rcp_conn *c, int op);

/* tls.c */
SSL_CTX *rcp_tls_ctx_new(const stm_config *cfg, stm_err *err);
void rcp_tls_ctx_free(SSL_CTX *ctx);
/* These return >0 bytes, 0 on EOF, -1 with errno EAGAIN when the socket
 * must become ready (c->tls_want_write says which way), -1 otherwise. */
ssize_t rcp_io_read(rcp_conn *c, void *p, size_t n);
ssize_t rcp_io_write(rcp_conn *c, const void *p, size_t n);
/* Advances the handshake: 1 done, 0 in progress, -1 failed. */
int rcp_tls_handshake(rcp_conn *c);

/* Binds a non-blocking listener on "ip:port" / "[v6]:port"; writes the
 * address actually bound. Returns the fd or -1 with err. (server.c) */
int rcp_listen_addr(const char *addr, char *bound, size_t bound_len, stm_err *err);

/* metrics.c */
void rcp_metrics_tick(rcp_server *s);
stm_code rcp_metrics_start(rcp_server *s, stm_err *err);
void rcp_metrics_stop(rcp_server *s);
void rcp_metrics_observe(rcp_server *s, int op, uint64_t ns);

#endif
