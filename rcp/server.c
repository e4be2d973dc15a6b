/*
 * server.c - the RCP listener: one event-loop thread that accepts
 * connections, reads requests, and sends responses once the WAL has made
 * what they say durable (see internal.h for the output buffer).
 *
 * The engine's ack listener and the watch wake-ups run on other threads;
 * they only write an eventfd (at most once until the loop has read it). The
 * loop then releases every connection's ready responses and events, so many
 * connections, and a connection's pipelined writes, share one fsync.
 *
 * Under every_write the loop gathers its clients' group itself, as Redis's
 * loop does before it sleeps: it holds the log while it reads requests (so
 * their appends do not wake the WAL's flusher), and once every connection
 * waits for the log (or as many as in the last group: idle connections of
 * a pool never send) it writes and fdatasyncs the group on this thread and
 * answers at once: no client can send anything before then, so nothing is
 * lost by blocking, and the two thread hand-offs per group are gone (16
 * clients at depth 1: +7-14% ops/s in alternating runs, p99 from 0.7-1.8
 * to 0.6-1.0 ms). While some connection may still send, it waits for it at
 * most half an fdatasync (as the flusher would), then hands the group to
 * the flusher.
 *
 * Connection lifecycle: accepted (refused at once past max_connections),
 * optionally a TLS handshake, then requests. BYE, a broken frame, or EOF
 * from the client set `closing`: nothing more is read, what was queued is
 * still sent once durable, then the socket closes. Idle connections are
 * closed after network.idle_timeout_secs, except those with a watch (rstmdb
 * closes them too, so a quiet stream died after 5 minutes). rcp_stop closes every connection
 * the same way (with a 5 s limit) and joins the thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "rcp/internal.h"

#define STOP_GRACE_MS 5000

uint64_t rcp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The server whose loop runs on this thread, if any: the ack listener runs
 * here when the loop commits a group itself (eng_commit_now), and then a
 * flag does what an eventfd round trip would. */
static __thread rcp_server *loop_server;

void rcp_server_wake(rcp_server *s)
{
    if (loop_server == s) {
        s->self_woken = true;
        return;
    }
    /* Sequentially consistent on both sides: the loop clears the flag and
     * then reads the watermark; a waker that still sees the flag set must
     * have published its watermark before the loop's read. */
    if (__atomic_exchange_n(&s->wake_pending, 1, __ATOMIC_SEQ_CST) == 0) {
        uint64_t one = 1;
        ssize_t r = write(s->wake_fd, &one, sizeof one);
        (void)r; /* a full counter still wakes the loop */
    }
}

/* Only a connection with marks or watches has anything to settle when the
 * log moves; with none, the wake would cost the loop a context switch per
 * group for nothing (every group of the mount's writers, say). Dekker on
 * both sides: the watermark is published before this load, and the loop
 * sets its interest before it reads the watermark (note_ack_interest). */
static void on_acked(void *arg, uint64_t acked)
{
    rcp_server *s = arg;
    (void)acked;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (loop_server != s && !__atomic_load_n(&s->ack_interest, __ATOMIC_RELAXED)) return;
    rcp_server_wake(s);
}

/* ---- output queue -------------------------------------------------------- */

/* The busy list holds every connection with marks or watches, so that what
 * runs per WAL acknowledgement or per group (settle_all, group_complete)
 * costs the connections that take part, not every open one. */
void rcp_conn_track(rcp_conn *c)
{
    rcp_server *s = c->srv;
    bool waiting = c->mark_n > 0, busy = waiting || c->watches || c->job;
    if (waiting != c->waiting) {
        c->waiting = waiting;
        if (waiting)
            s->n_waiting++;
        else
            s->n_waiting--;
    }
    if (busy == c->busy) return;
    c->busy = busy;
    if (busy) {
        c->busy_prev = NULL;
        c->busy_next = s->busy;
        if (s->busy) s->busy->busy_prev = c;
        s->busy = c;
        s->n_busy++;
        return;
    }
    if (c->busy_prev)
        c->busy_prev->busy_next = c->busy_next;
    else
        s->busy = c->busy_next;
    if (c->busy_next) c->busy_next->busy_prev = c->busy_prev;
    c->busy_prev = c->busy_next = NULL;
    s->n_busy--;
}

void rcp_queue_mark(rcp_conn *c, uint64_t seq, int op, uint64_t t0_ns)
{
    if (c->mark_n == 0 && (seq == 0 || seq <= eng_acked_seq(c->srv->e))) {
        c->ready_end = c->out.len;
        if (op >= 0) rcp_metrics_observe(c->srv, op, util_mono_ns() - t0_ns);
        return;
    }
    /* One kick per pass of the loop, not per response (before_sleep) */
    if (seq > c->srv->kick_seq) c->srv->kick_seq = seq;
    if (c->mark_n == c->mark_cap) {
        size_t ncap = c->mark_cap ? c->mark_cap * 2 : 16;
        rcp_mark *m = xmalloc(ncap * sizeof *m);
        for (size_t i = 0; i < c->mark_n; i++)
            m[i] = c->marks[(c->mark_head + i) % c->mark_cap];
        free(c->marks);
        c->marks = m;
        c->mark_cap = ncap;
        c->mark_head = 0;
    }
    c->marks[(c->mark_head + c->mark_n) % c->mark_cap] =
        (rcp_mark){.end = c->out.len, .seq = seq, .t0_ns = t0_ns, .op = op};
    if (c->mark_n++ == 0) rcp_conn_track(c);
}

/* The WAL failed before what the message at the head of the queue says
 * became durable, so it must never be sent: it is replaced by a
 * WAL_IO_ERROR answer to the same request (its id read back from the queued
 * bytes), and the marks after it move by the difference in length. */
static void fail_head(rcp_conn *c, rcp_mark *m)
{
    size_t start = c->ready_end, n = m->end - start;
    const char *p = c->out.data + start;
    enum rcp_wire mode = RCP_WIRE_JSONL;
    if (n >= RCP_HDR_LEN && memcmp(p, "RCPX", 4) == 0) {
        mode = RCP_WIRE_BINARY; /* the server's frames have no header extension */
        p += RCP_HDR_LEN;
        n -= RCP_HDR_LEN;
    }
    cJSON *msg = json_parse_trusted(p, n);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    stm_err err = {0};
    eng_wait(c->srv->e, m->seq, &err); /* returns at once: the log has failed */
    buf e = {0};
    rcp_write_error(&e, mode, cJSON_IsString(id) ? id->valuestring : "", STM_WAL_IO_ERROR,
                    err.msg);
    cJSON_Delete(msg);
    if (m->op >= 0 && m->op < RCP_OP_COUNT) c->srv->m.errors[STM_WAL_IO_ERROR]++;
    /* splice: out = out[..start) + e + out[m->end..) */
    size_t old_len = m->end - start, tail = c->out.len - m->end;
    if (e.len > old_len) buf_reserve(&c->out, e.len - old_len);
    memmove(c->out.data + start + e.len, c->out.data + m->end, tail);
    memcpy(c->out.data + start, e.data, e.len);
    c->out.len = start + e.len + tail;
    c->out.data[c->out.len] = 0;
    for (size_t i = 0; i < c->mark_n; i++)
        c->marks[(c->mark_head + i) % c->mark_cap].end += e.len - old_len; /* wraps as size_t */
    buf_free(&e);
}

/* Moves ready_end over every queued message whose WAL sequence is durable;
 * after a WAL failure, over the ones that will never be, as errors. */
static void release(rcp_conn *c)
{
    if (!c->mark_n) return;
    uint64_t acked = eng_acked_seq(c->srv->e);
    uint64_t now = 0;
    while (c->mark_n) {
        rcp_mark *m = &c->marks[c->mark_head];
        if (m->seq > acked && !c->srv->wal_failed) break;
        if (m->seq > acked) fail_head(c, m);
        c->ready_end = m->end;
        if (m->op >= 0) {
            if (!now) now = util_mono_ns();
            rcp_metrics_observe(c->srv, m->op, now - m->t0_ns);
        }
        c->mark_head = (c->mark_head + 1) % c->mark_cap;
        c->mark_n--;
    }
    if (!c->mark_n) rcp_conn_track(c);
}

static void out_compact(rcp_conn *c)
{
    if (c->out_off == c->out.len) {
        c->out.len = c->out_off = c->ready_end = 0;
        if (c->out.cap > (1u << 20)) buf_free(&c->out);
        return;
    }
    if (c->out_off < (256u << 10) || c->out_off < c->out.len / 2) return;
    size_t d = c->out_off;
    memmove(c->out.data, c->out.data + d, c->out.len - d);
    c->out.len -= d;
    c->out.data[c->out.len] = 0;
    c->out_off = 0;
    c->ready_end -= d;
    for (size_t i = 0; i < c->mark_n; i++)
        c->marks[(c->mark_head + i) % c->mark_cap].end -= d;
}

/* ---- connections --------------------------------------------------------- */

static void conn_close(rcp_conn *c)
{
    rcp_server *s = c->srv;
    rcp_loop_del(s->loop, c->fd);
    rcp_watches_free(c);
    rcp_job_orphan(c);
    c->mark_n = 0; /* whatever was still queued goes with the connection */
    rcp_conn_track(c);
    if (c->ssl) {
        if (!c->handshaking) SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n_conns--;
    buf_free(&c->in);
    buf_free(&c->out);
    free(c->marks);
    free(c);
}

void rcp_conn_want(rcp_conn *c)
{
    unsigned mask = 0;
    if (c->handshaking) {
        mask = c->tls_want_write ? RCP_EV_WRITE : RCP_EV_READ;
    } else {
        if (!c->closing && !c->read_paused && !c->eof) mask |= RCP_EV_READ;
        if (c->ready_end > c->out_off || c->tls_want_write) mask |= RCP_EV_WRITE;
    }
    rcp_loop_set(c->srv->loop, c->fd, mask);
}

/* Sends what is ready. Returns false when the connection died. */
static bool conn_flush(rcp_conn *c)
{
    while (c->ready_end > c->out_off) {
        ssize_t n = rcp_io_write(c, c->out.data + c->out_off, c->ready_end - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            c->srv->m.bytes_out += (uint64_t)n;
            c->last_active_ms = (uint64_t)rcp_loop_pass_ms(c->srv->loop);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        log_debug("rcp %s: write failed: %s", c->peer, n < 0 ? strerror(errno) : "closed");
        conn_close(c);
        return false;
    }
    out_compact(c);
    return true;
}

static void conn_read(rcp_conn *c);

/* After anything happened on c: release, feed watches, send, maybe close.
 * Returns false when c is gone. */
static bool conn_settle(rcp_conn *c)
{
    rcp_job_finish(c);
    release(c);
    bool full = false;
    if (!c->closing && c->watches) {
        full = rcp_watches_drain(c);
        release(c);
    }
    if (!conn_flush(c)) return false;
    /* A drain that stopped at the output limit is not woken again by the
     * engine (those events were published already): once the send made
     * room, it must go on here, or a watcher that fell behind and caught
     * up finds its stream stalled with nothing left to send. */
    for (int round = 0; full && round < 8 && !c->closing && c->watches &&
                        c->out.len - c->out_off < RCP_OUT_SOFT_LIMIT;
         round++) {
        full = rcp_watches_drain(c);
        release(c);
        if (!conn_flush(c)) return false;
    }
    if (full && !c->closing && c->out.len - c->out_off < RCP_OUT_SOFT_LIMIT)
        c->srv->need_pass = true;
    if (c->closing && c->mark_n == 0 && c->out_off == c->out.len && !c->job) {
        conn_close(c);
        return false;
    }
    if (c->read_paused && !c->job && c->out.len - c->out_off < RCP_OUT_SOFT_LIMIT / 2) {
        /* The client caught up: take its buffered requests again. */
        c->read_paused = false;
        rcp_session_process_input(c);
        if (!c->read_paused && !c->closing && !c->eof) {
            conn_read(c); /* settles c itself (or closes it) */
            return false;
        }
        return conn_settle(c);
    }
    rcp_conn_want(c);
    return true;
}

static void conn_read(rcp_conn *c)
{
    for (;;) {
        if (c->closing || c->read_paused) break;
        /* At least 64 KiB of room; a frame announced bigger grows it. */
        buf_reserve(&c->in, 64u << 10);
        size_t room = c->in.cap - c->in.len - 1;
        ssize_t n = rcp_io_read(c, c->in.data + c->in.len, room);
        if (n > 0) {
            c->in.len += (size_t)n;
            c->in.data[c->in.len] = 0;
            c->srv->m.bytes_in += (uint64_t)n;
            c->last_active_ms = (uint64_t)rcp_loop_pass_ms(c->srv->loop);
            if (c->srv->own_groups && !c->srv->holding) {
                eng_hold(c->srv->e); /* this loop commits what the requests append */
                c->srv->holding = true;
            }
            rcp_session_process_input(c);
            /* A short plain read means the socket is drained; TLS may hold
             * more decrypted bytes, so keep going until it says EAGAIN. */
            if (!c->ssl && (size_t)n < room) break;
            continue;
        }
        if (n == 0) {
            c->eof = true;
            c->closing = true;
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR) continue;
        log_debug("rcp %s: read failed: %s", c->peer, strerror(errno));
        conn_close(c);
        return;
    }
    conn_settle(c);
}

static void conn_event(rcp_loop *l, int fd, void *arg, unsigned ev)
{
    (void)l;
    (void)fd;
    rcp_conn *c = arg;
    if (c->handshaking) {
        int r = rcp_tls_handshake(c);
        if (r < 0) {
            conn_close(c);
            return;
        }
        if (r == 0) {
            rcp_conn_want(c);
            return;
        }
        c->handshaking = false;
        ev |= RCP_EV_READ; /* the client may have sent its first request already */
    }
    if (ev & RCP_EV_WRITE) {
        bool was_want = c->tls_want_write;
        c->tls_want_write = false;
        if (!conn_flush(c)) return;
        if (was_want) ev |= RCP_EV_READ;
    }
    if (ev & RCP_EV_READ) {
        conn_read(c);
        return;
    }
    conn_settle(c);
}

static void format_peer(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(out, n, "%s:%u", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(out, n, "[%s]:%u", host, port);
    } else {
        snprintf(out, n, "?");
    }
}

static void on_accept(rcp_loop *l, int fd, void *arg, unsigned ev)
{
    (void)ev;
    rcp_server *s = arg;
    for (int k = 0; k < 64; k++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int cfd = accept4(fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop polling the listener (it would
                 * spin) and try again on the next tick. */
                log_warn("rcp: cannot accept: %s", strerror(errno));
                rcp_loop_set(l, fd, 0);
                s->accept_paused = true;
            }
            return;
        }
        if (s->stopping || s->n_conns >= s->max_conns) {
            /* As rstmdb: accepted and closed at once, nothing written;
             * but said in the log (at most every 10 s), or a client sees
             * only a closed connection and nobody knows why. */
            s->m.connections_rejected++;
            uint64_t now = rcp_now_ms();
            if (!s->stopping && now - s->last_reject_log_ms >= 10000) {
                s->last_reject_log_ms = now;
                char peer[64];
                format_peer(&ss, peer, sizeof peer);
                log_warn("rcp: refusing a connection from %s: max_connections (%llu) reached "
                         "(%llu refused since start)",
                         peer, (unsigned long long)s->max_conns,
                         (unsigned long long)s->m.connections_rejected);
            }
            close(cfd);
            continue;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* A watcher is exempt from the idle timeout (it waits for events,
         * which may not come for hours), so a peer that vanished without
         * a FIN is found by keepalive probes instead: after 60 s of silence,
         * 6 probes 10 s apart. */
        int idle_s = 60, intvl_s = 10, probes = 6;
        setsockopt(cfd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        setsockopt(cfd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s);
        setsockopt(cfd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl_s, sizeof intvl_s);
        setsockopt(cfd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
        rcp_conn *c = xcalloc(1, sizeof *c);
        c->srv = s;
        c->fd = cfd;
        format_peer(&ss, c->peer, sizeof c->peer);
        rcp_decoder_init(&c->dec, true);
        if (s->cfg->max_frame_bytes && s->cfg->max_frame_bytes < RCP_MAX_PAYLOAD)
            c->dec.max_payload = (uint32_t)s->cfg->max_frame_bytes;
        c->wire_out = RCP_WIRE_BINARY;
        c->authenticated = !s->auth_required;
        c->last_active_ms = rcp_now_ms();
        if (s->tls) {
            c->ssl = SSL_new(s->tls);
            if (!c->ssl || !SSL_set_fd(c->ssl, cfd)) {
                if (c->ssl) SSL_free(c->ssl);
                close(cfd);
                free(c);
                continue;
            }
            SSL_set_accept_state(c->ssl);
            c->handshaking = true;
        }
        if (rcp_loop_add(l, cfd, RCP_EV_READ, conn_event, c) != 0) {
            if (c->ssl) SSL_free(c->ssl);
            close(cfd);
            free(c);
            continue;
        }
        c->next = s->conns;
        if (s->conns) s->conns->prev = c;
        s->conns = c;
        s->n_conns++;
        s->m.connections_total++;
    }
}

/* ---- the loop's own hooks ------------------------------------------------ */

static void begin_stop(rcp_server *s)
{
    if (s->stopping) return;
    s->stopping = true;
    s->stop_deadline_ms = rcp_now_ms() + STOP_GRACE_MS;
    if (s->listen_fd >= 0) {
        rcp_loop_del(s->loop, s->listen_fd);
        close(s->listen_fd);
        s->listen_fd = -1;
    }
    rcp_metrics_stop(s);
    for (rcp_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        c->closing = true;
        conn_settle(c);
    }
}

/* Looks at every connection that holds responses or watches: the WAL may
 * have acknowledged (or failed), a watch may have news. */
static void settle_all(rcp_server *s)
{
    if (!s->wal_failed) {
        /* The engine tells its listeners once more when the WAL fails, so
         * this runs after every failure (and it never clears). Without the
         * engine's lock: a long LIST or compaction step held every wake of
         * the loop here. */
        s->wal_failed = eng_failed(s->e);
    }
    if (__atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE)) begin_stop(s);
    if (s->jobs) rcp_jobs_reap(s, false);
    /* conn_settle may unlink c (or close it) but no other connection;
     * one it puts back goes to the head, behind this walk */
    for (rcp_conn *c = s->busy, *next; c; c = next) {
        next = c->busy_next;
        conn_settle(c);
    }
}

static void on_wake(rcp_loop *l, int fd, void *arg, unsigned ev)
{
    (void)l;
    (void)ev;
    rcp_server *s = arg;
    uint64_t v;
    /* Drain first, then clear: a waker that sets the flag after the clear
     * writes again, so the eventfd is readable again; clearing first could
     * swallow that write and leave the flag set with nobody to clear it. */
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
    __atomic_exchange_n(&s->wake_pending, 0, __ATOMIC_SEQ_CST);
    settle_all(s);
}

/* Whether the group is as complete as it will get: every connection waits
 * for the log (no request can come before the group is durable), or as
 * many wait as in the last group. The second rule is the flusher's own
 * (wal.h): a pool's idle connections never send, and waiting for them
 * would cost every group the whole linger. */
static bool group_complete(rcp_server *s, size_t *waiting)
{
    size_t idle = (size_t)s->n_conns - s->n_busy;
    *waiting = s->n_waiting;
    return idle == 0 || (s->last_group_waiters && s->n_waiting >= s->last_group_waiters);
}

/* Has the responses held for kick_seq written. Under every_write the loop
 * gathers the group itself: once it is complete (group_complete), it writes
 * and syncs it on this thread (no hand-off to the flusher and back); until
 * then it waits at most as long as the flusher would (half an fdatasync)
 * for the others, then hands the group to the flusher. */
static void commit_held(rcp_server *s)
{
    size_t waiting = 0;
    if (!s->own_groups) {
        eng_kick(s->e, s->kick_seq);
    } else if (group_complete(s, &waiting)) {
        eng_commit_now(s->e, s->kick_seq);
        s->holding = false;
        s->last_group_waiters = waiting;
    } else {
        uint64_t now = util_mono_ns();
        if (!s->group_since_ns) s->group_since_ns = now;
        uint64_t until = s->group_since_ns + eng_commit_linger_ns(s->e);
        if (now < until && s->kick_seq > eng_acked_seq(s->e)) {
            rcp_loop_wake_at(s->loop, until);
            return;
        }
        eng_kick(s->e, s->kick_seq);
        if (s->holding) eng_release(s->e);
        s->holding = false;
        s->last_group_waiters = waiting;
    }
    s->kick_seq = 0;
    s->group_since_ns = 0;
}

/* Keeps ack_interest true while a connection is busy. A connection that
 * became busy while it was false may wait for a record acknowledged
 * unheard, so the loop settles once more before sleeping. */
static void note_ack_interest(rcp_server *s)
{
    int want = s->n_busy > 0;
    if (want == __atomic_load_n(&s->ack_interest, __ATOMIC_RELAXED)) return;
    __atomic_store_n(&s->ack_interest, want, __ATOMIC_RELAXED);
    if (!want) return;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    s->self_woken = true;
}

static bool before_sleep(rcp_loop *l, void *arg)
{
    rcp_server *s = arg;
    if (s->need_pass) {
        s->need_pass = false;
        for (rcp_conn *c = s->busy, *next; c; c = next) {
            next = c->busy_next;
            if (c->watches) conn_settle(c);
        }
    }
    if (s->kick_seq) {
        commit_held(s);
    } else if (s->holding) {
        eng_release(s->e); /* nothing this pass needs the log */
        s->holding = false;
    }
    if (s->self_woken) {
        s->self_woken = false;
        settle_all(s);
    }
    if (s->stopping && s->n_conns == 0) rcp_loop_stop(l);
    note_ack_interest(s);
    /* settling may have read new requests: look again before sleeping */
    return s->need_pass || s->self_woken || (s->kick_seq && !s->group_since_ns);
}

static void on_tick(rcp_loop *l, void *arg)
{
    rcp_server *s = arg;
    uint64_t now = rcp_now_ms();
    if (s->accept_paused && s->listen_fd >= 0) {
        s->accept_paused = false;
        rcp_loop_set(l, s->listen_fd, RCP_EV_READ);
    }
    for (rcp_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        bool idle = s->idle_ms && now - c->last_active_ms > s->idle_ms && c->mark_n == 0 &&
                    !c->watches && !c->job;
        if (idle || (s->stopping && now > s->stop_deadline_ms)) {
            if (idle) log_debug("rcp %s: idle timeout", c->peer);
            conn_close(c);
        }
    }
    rcp_metrics_tick(s);
    if (s->stopping && s->n_conns == 0) rcp_loop_stop(l);
}

static void *loop_main(void *arg)
{
    rcp_server *s = arg;
    util_name_thread("rcp-loop");
    loop_server = s;
    rcp_loop_run(s->loop);
    /* Whatever is left after the grace period goes now. */
    while (s->conns)
        conn_close(s->conns);
    return NULL;
}

/* ---- start and stop ------------------------------------------------------ */

int rcp_listen_addr(const char *addr, char *bound, size_t bound_len, stm_err *err)
{
    char host[256];
    const char *port;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':' || (size_t)(end - addr - 1) >= sizeof host) goto bad;
        memcpy(host, addr + 1, (size_t)(end - addr - 1));
        host[end - addr - 1] = 0;
        port = end + 2;
    } else {
        const char *colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof host) goto bad;
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = 0;
        port = colon + 1;
    }
    if (!*port || !*host) goto bad;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai) goto bad;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        stm_fail(err, STM_INTERNAL_ERROR, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        /* Only why: the caller names which listener and which address. */
        stm_fail(err, STM_INTERNAL_ERROR, "%s", strerror(errno));
        freeaddrinfo(ai);
        close(fd);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    format_peer(&ss, bound, bound_len);
    return fd;
bad:
    stm_fail(err, STM_BAD_REQUEST, "invalid listen address '%s' (want IP:PORT or [IPv6]:PORT)",
             addr);
    return -1;
}

static void server_free(rcp_server *s)
{
    if (!s) return;
    if (s->listener_id) eng_remove_listener(s->e, s->listener_id);
    while (s->conns)
        conn_close(s->conns);
    rcp_jobs_reap(s, true); /* before the engine can close under them */
    rcp_metrics_stop(s);
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->wake_fd >= 0) close(s->wake_fd);
    rcp_loop_free(s->loop);
    rcp_tls_ctx_free(s->tls);
    free(s->hashes);
    free(s);
}

stm_code rcp_start(eng *e, const stm_config *c, rcp_server **out, stm_err *err)
{
    rcp_server *s = xcalloc(1, sizeof *s);
    s->e = e;
    s->cfg = c;
    s->listen_fd = s->wake_fd = s->metrics_fd = -1;
    s->max_conns = c->max_connections ? c->max_connections : 1000;
    s->idle_ms = c->idle_timeout_secs * 1000;
    s->start_ms = util_now_ms();
    stm_code rc;
    bool metrics_failed = false;

    s->auth_required = c->auth_required;
    if (c->n_token_hashes) {
        s->hashes = xcalloc(c->n_token_hashes, sizeof *s->hashes);
        for (size_t i = 0; i < c->n_token_hashes; i++) {
            const char *h = c->token_hashes[i];
            size_t l = strlen(h);
            if (l != 64) {
                rc = stm_fail(err, STM_BAD_REQUEST,
                              "auth.token_hashes: '%.80s' is not a 64-digit SHA-256 hex hash", h);
                goto fail;
            }
            for (size_t k = 0; k < 64; k++) {
                char ch = h[k];
                if (ch >= 'A' && ch <= 'F') ch = (char)(ch - 'A' + 'a');
                if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) {
                    rc = stm_fail(err, STM_BAD_REQUEST,
                                  "auth.token_hashes: '%.80s' is not a SHA-256 hex hash", h);
                    goto fail;
                }
                s->hashes[s->n_hashes][k] = ch;
            }
            s->hashes[s->n_hashes++][64] = 0;
        }
    }
    if (s->auth_required && !s->n_hashes) {
        rc = stm_fail(err, STM_BAD_REQUEST,
                      "auth.required is true but no token hashes are configured "
                      "(auth.token_hashes or auth.secrets_file)");
        goto fail;
    }
    if (c->tls_enabled && !(s->tls = rcp_tls_ctx_new(c, err))) {
        rc = err ? err->code : STM_INTERNAL_ERROR;
        goto fail;
    }
    if (!(s->loop = rcp_loop_new(err))) {
        rc = STM_INTERNAL_ERROR;
        goto fail;
    }
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->wake_fd < 0) {
        rc = stm_fail(err, STM_INTERNAL_ERROR, "eventfd: %s", strerror(errno));
        goto fail;
    }
    rcp_loop_add(s->loop, s->wake_fd, RCP_EV_READ, on_wake, s);
    if (c->bind_addr && *c->bind_addr && strcmp(c->bind_addr, "none") != 0) {
        s->listen_fd = rcp_listen_addr(c->bind_addr, s->bound, sizeof s->bound, err);
        if (s->listen_fd < 0) {
            rc = err ? err->code : STM_INTERNAL_ERROR;
            goto fail;
        }
        rcp_loop_add(s->loop, s->listen_fd, RCP_EV_READ, on_accept, s);
    } else {
        snprintf(s->bound, sizeof s->bound, "none");
    }
    if (c->metrics_enabled && (rc = rcp_metrics_start(s, err)) != STM_OK) {
        metrics_failed = true; /* its message names the metrics listener */
        goto fail;
    }
    rcp_loop_set_tick(s->loop, 1000, on_tick, s);
    rcp_loop_set_before_sleep(s->loop, before_sleep, s);

    /* A peer that resets while we write must not kill the process: plain
     * sockets use MSG_NOSIGNAL, but OpenSSL writes with write(2). */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);

    s->own_groups = eng_syncs_each_group(e);
    s->listener_id = eng_add_listener(e, on_acked, s);
    if (pthread_create(&s->thread, NULL, loop_main, s) != 0) {
        rc = stm_fail(err, STM_INTERNAL_ERROR, "cannot start the RCP thread");
        goto fail;
    }
    s->thread_started = true;
    *out = s;
    return STM_OK;
fail:
    if (err && !metrics_failed)
        stm_fail(err, rc, "cannot start the RCP listener on %s: %s",
                 c->bind_addr && *c->bind_addr ? c->bind_addr : "none", err->msg);
    server_free(s);
    *out = NULL;
    return rc;
}

const char *rcp_bound_addr(const rcp_server *s)
{
    return s ? s->bound : "none";
}

void rcp_stop(rcp_server *s)
{
    if (!s) return;
    if (s->thread_started) {
        __atomic_store_n(&s->stop_requested, 1, __ATOMIC_RELEASE);
        uint64_t one = 1;
        ssize_t r = write(s->wake_fd, &one, sizeof one);
        (void)r;
        pthread_join(s->thread, NULL);
    }
    server_free(s);
}
