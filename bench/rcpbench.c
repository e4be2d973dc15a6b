/*
 * rcpbench - an RCP load generator, and a null server to measure it by.
 *
 * Works against any RCP server (stmfs serve, stmfs mount, rstmdb):
 *
 *   rcpbench --addr 127.0.0.1:7401 --connections 16 --pipeline 1 \
 *            --mix 1:1:0 --duration 10 --warmup 2
 *
 * First it defines a small machine (PUT_MACHINE; an identical existing
 * version is fine): created -PAY-> paid -SHIP-> shipped -RESET-> created,
 * the last edge so that any number of applies per instance stays valid.
 * Then every connection runs the op mix CREATE:APPLY:GET as a cycle: with
 * 1:1:0 it creates an instance and applies PAY to it, with 1:2:0 PAY then
 * SHIP, with 0:0:1 it only reads. Applies and gets go to the connection's
 * newest instance, so a connection touches nothing another one does and
 * every request is valid, pipelined or not. Instance ids carry a random
 * run prefix, so runs can repeat against one data directory.
 *
 * Each connection keeps --pipeline requests in flight. Latency is taken
 * per request from the moment it is written to the socket to the moment
 * its response is decoded; responses come back in request order (RCP
 * guarantees it), which is how they are matched. Only responses that
 * arrive after the warmup and before its end are counted. It prints one
 * line of key=value pairs:
 *
 *   rcpbench addr=127.0.0.1:7401 connections=16 pipeline=1 mix=1:1:0
 *     duration=10.0 ops=452311 ops_per_sec=45231 p50_ms=0.301 p99_ms=1.20
 *     p999_ms=2.10 errors=0
 *
 * Error responses are counted (and the first few codes printed); a server
 * that closes a connection ends the run with exit status 1, and so does one
 * that leaves a setup request (HELLO, AUTH, PUT_MACHINE, the first CREATE)
 * unanswered for 10 s.
 *
 * Null server: `rcpbench --null-server 127.0.0.1:7499` answers every
 * request frame at once with {"type":"response","id":<its id>,"status":
 * "ok","result":{}} and does nothing else. The client against it measures
 * the ceiling that this client, the loopback and the machine allow.
 *
 * Design: non-blocking sockets on epoll, one thread per core (--threads),
 * each owning a share of the connections; no locks on the hot path, one
 * latency histogram per thread merged at the end.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "base/crc32c.h"

#define HDR 18
#define MAX_FRAME (16u * 1024 * 1024)
#define FLAG_CRC 0x0001
#define SETUP_TIMEOUT_S 10

/* ---- small things ---------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("rcpbench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

/* A byte queue: data[rpos, len) is unread. */
typedef struct {
    char *data;
    size_t rpos, len, cap;
} bytes;

static void bytes_room(bytes *b, size_t extra)
{
    if (b->rpos && b->rpos == b->len) b->rpos = b->len = 0;
    if (b->len + extra <= b->cap) return;
    if (b->rpos) {
        /* Slide the unread part down before growing: buffers stay the size
         * of the in-flight window instead of the whole run. */
        memmove(b->data, b->data + b->rpos, b->len - b->rpos);
        b->len -= b->rpos;
        b->rpos = 0;
        if (b->len + extra <= b->cap) return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) die("out of memory");
    b->cap = cap;
}

static void put_be16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Appends one binary frame (version 1, CRC flag, no header extension). */
static void frame_add(bytes *out, const char *payload, size_t n)
{
    bytes_room(out, HDR + n);
    unsigned char *h = (unsigned char *)out->data + out->len;
    memcpy(h, "RCPX", 4);
    put_be16(h + 4, 1);
    put_be16(h + 6, FLAG_CRC);
    put_be16(h + 8, 0);
    put_be32(h + 10, (uint32_t)n);
    put_be32(h + 14, crc32c(0, payload, n));
    memcpy(h + HDR, payload, n);
    out->len += HDR + n;
}

/* Takes the next whole frame from in: 1 and its payload, 0 when more bytes
 * are needed, -1 on a frame this client must not accept. */
static int frame_next(bytes *in, const char **payload, size_t *n, const char **why)
{
    size_t avail = in->len - in->rpos;
    if (avail < HDR) return 0;
    const unsigned char *h = (const unsigned char *)in->data + in->rpos;
    if (memcmp(h, "RCPX", 4)) return *why = "bad magic", -1;
    if (h[4] != 0 || h[5] != 1) return *why = "bad version", -1;
    uint16_t flags = (uint16_t)(h[6] << 8 | h[7]);
    size_t hlen = (size_t)(h[8] << 8 | h[9]);
    uint32_t plen = get_be32(h + 10);
    if (plen > MAX_FRAME) return *why = "payload over 16 MiB", -1;
    if (avail < HDR + hlen + plen) return 0;
    const char *p = (const char *)h + HDR + hlen;
    if ((flags & FLAG_CRC) && crc32c(0, p, plen) != get_be32(h + 14)) return *why = "bad CRC", -1;
    *payload = p;
    *n = plen;
    in->rpos += HDR + hlen + plen;
    return 1;
}

static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || !colon[1]) return -1;
    memset(ss, 0, sizeof *ss);
    size_t hl = strlen(host);
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = 0;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1) return -1;
        *len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (!strcmp(host, "localhost")) strcpy(host, "127.0.0.1");
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) return -1;
        *len = sizeof *a;
    }
    return 0;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl: %s", strerror(errno));
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---- latency histogram ------------------------------------------------------ */

/* Log-linear buckets: 32 per power of two (about 3% resolution) up to
 * 2^40 ns, plenty for request latencies and cheap enough to keep per thread. */
#define SUB_BITS 5
#define SUB (1u << SUB_BITS)
#define NBUCKETS (41u * SUB)

typedef struct {
    uint64_t count[NBUCKETS];
} histo;

static unsigned bucket_of(uint64_t v)
{
    if (v < SUB) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - SUB_BITS;
    unsigned b = (shift + 1) * SUB + (unsigned)((v >> shift) & (SUB - 1));
    return b < NBUCKETS ? b : NBUCKETS - 1;
}

/* The middle of a bucket's range, in ns. */
static double bucket_value(unsigned b)
{
    if (b < SUB) return b;
    unsigned shift = b / SUB - 1;
    uint64_t lo = ((uint64_t)SUB + b % SUB) << shift;
    return (double)lo + (double)(1ull << shift) / 2;
}

static double percentile(const histo *h, uint64_t total, double q)
{
    if (!total) return 0;
    uint64_t want = (uint64_t)(q * (double)total);
    if (want >= total) want = total - 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        seen += h->count[b];
        if (seen > want) return bucket_value(b);
    }
    return bucket_value(NBUCKETS - 1);
}

/* ---- client ----------------------------------------------------------------- */

enum { OP_CREATE, OP_APPLY, OP_GET };

typedef struct {
    const char *addr;
    struct sockaddr_storage sa;
    socklen_t salen;
    unsigned connections, pipeline, threads;
    unsigned mix[3];
    double duration, warmup;
    const char *machine;
    unsigned version;
    const char *token;
    char run_id[16];
} options;

static options opt = {
    .addr = "127.0.0.1:7401",
    .connections = 16,
    .pipeline = 1,
    .mix = {1, 1, 0},
    .duration = 10,
    .warmup = 2,
    .machine = "rcpbench-order",
    .version = 1,
};

typedef struct conn {
    int fd;
    unsigned index; /* global connection number */
    bytes in, out;
    uint64_t *sent_at;       /* ring of send times, one per request in flight */
    unsigned head, inflight; /* ring head = oldest in flight */
    uint64_t next_id;
    unsigned cycle_pos; /* position in the mix cycle */
    uint64_t created;   /* instances created so far */
    unsigned state;     /* predicted state of the newest instance: 0 created, 1 paid, 2 shipped */
    bool dead;
    bool want_out; /* EPOLLOUT registered: only changed when needed, a
                    * syscall per request would show in the figures */
} conn;

typedef struct {
    pthread_t tid;
    unsigned id;
    conn *conns;
    unsigned nconns;
    histo h;
    uint64_t ops, errors, pre_window, closed;
    char first_errors[4][160];
    unsigned n_first_errors;
} worker;

static uint64_t t_start, t_window, t_end;
/* Workers meet at ready_barrier once every connection is greeted; the
 * main thread then sets the clock and releases them at go_barrier, so
 * setup time never eats into the warmup. */
static pthread_barrier_t ready_barrier, go_barrier;
static atomic_int setup_failed;

static const char *const events[] = {"PAY", "SHIP", "RESET"};

static void instance_id(const conn *c, uint64_t n, char *out, size_t cap)
{
    snprintf(out, cap, "%s-%u-%" PRIu64, opt.run_id, c->index, n);
}

/* Encodes the next request of this connection's cycle into out. */
static void next_request(conn *c)
{
    unsigned cycle = opt.mix[0] + opt.mix[1] + opt.mix[2];
    unsigned pos = c->cycle_pos++ % cycle;
    int op = pos < opt.mix[0] ? OP_CREATE : pos < opt.mix[0] + opt.mix[1] ? OP_APPLY : OP_GET;
    char id[96], payload[512];
    int n;
    uint64_t rid = c->next_id++;
    switch (op) {
    case OP_CREATE:
        instance_id(c, ++c->created, id, sizeof id);
        c->state = 0;
        n = snprintf(payload, sizeof payload,
                     "{\"type\":\"request\",\"id\":\"%" PRIu64 "\",\"op\":\"CREATE_INSTANCE\","
                     "\"params\":{\"machine\":\"%s\",\"version\":%u,\"instance_id\":\"%s\","
                     "\"initial_ctx\":{\"amount\":1}}}",
                     rid, opt.machine, opt.version, id);
        break;
    case OP_APPLY:
        instance_id(c, c->created, id, sizeof id);
        n = snprintf(payload, sizeof payload,
                     "{\"type\":\"request\",\"id\":\"%" PRIu64 "\",\"op\":\"APPLY_EVENT\","
                     "\"params\":{\"instance_id\":\"%s\",\"event\":\"%s\"}}",
                     rid, id, events[c->state]);
        c->state = (c->state + 1) % 3;
        break;
    default:
        instance_id(c, c->created, id, sizeof id);
        n = snprintf(payload, sizeof payload,
                     "{\"type\":\"request\",\"id\":\"%" PRIu64 "\",\"op\":\"GET_INSTANCE\","
                     "\"params\":{\"instance_id\":\"%s\"}}",
                     rid, id);
        break;
    }
    frame_add(&c->out, payload, (size_t)n);
}

/* Checks a response payload: 1 ok, 0 error (code copied), -1 not a response. */
static int response_status(const char *p, size_t n, char *code, size_t cap)
{
    /* Responses are small and written type,id,status first by every known
     * server, so a scan of the text is enough; a full JSON parse per
     * response would measure the client's parser instead of the server. */
    const char *end = p + n;
    const char *t = memmem(p, n, "\"type\":\"", 8);
    if (!t) return -1;
    t += 8;
    if (end - t < 8 || memcmp(t, "response", 8)) return -1;
    const char *s = memmem(p, n, "\"status\":\"", 10);
    if (!s) return -1;
    s += 10;
    if (end - s >= 2 && !memcmp(s, "ok", 2)) return 1;
    const char *k = memmem(p, n, "\"code\":\"", 8);
    size_t i = 0;
    if (k)
        for (k += 8; k < end && *k != '"' && i + 1 < cap; k++)
            code[i++] = *k;
    code[i] = 0;
    return 0;
}

static bool is_event(const char *p, size_t n)
{
    return memmem(p, n < 40 ? n : 40, "\"type\":\"event\"", 14) != NULL;
}

/* Blocking exchange used only during setup: sends one request, waits for
 * its response. Returns 1 ok, 0 error response (msg filled). */
static int setup_call(int fd, bytes *in, const char *payload, char *msg, size_t cap)
{
    bytes out = {0};
    frame_add(&out, payload, strlen(payload));
    for (size_t off = 0; off < out.len;) {
        ssize_t w = send(fd, out.data + off, out.len - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            snprintf(msg, cap, "send: %s", strerror(errno));
            free(out.data);
            return 0;
        }
        off += (size_t)w;
    }
    free(out.data);
    for (;;) {
        const char *p, *why;
        size_t n;
        int r = frame_next(in, &p, &n, &why);
        if (r < 0) {
            snprintf(msg, cap, "server sent a bad frame: %s", why);
            return 0;
        }
        if (r > 0) {
            if (is_event(p, n)) continue;
            char code[64];
            int st = response_status(p, n, code, sizeof code);
            if (st == 1) return 1;
            snprintf(msg, cap, "%.*s", (int)(n < 400 ? n : 400), p);
            return 0;
        }
        bytes_room(in, 65536);
        ssize_t got = recv(fd, in->data + in->len, in->cap - in->len, 0);
        if (got == 0) {
            snprintf(msg, cap, "server closed the connection");
            return 0;
        }
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                snprintf(msg, cap, "no answer within %d s", SETUP_TIMEOUT_S);
            else
                snprintf(msg, cap, "recv: %s", strerror(errno));
            return 0;
        }
        in->len += (size_t)got;
    }
}

static int dial(char *msg, size_t cap)
{
    int fd = socket(opt.sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(msg, cap, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&opt.sa, opt.salen) < 0) {
        snprintf(msg, cap, "cannot connect to %s: %s", opt.addr, strerror(errno));
        close(fd);
        return -1;
    }
    set_nodelay(fd);
    /* Setup is blocking; a server that stops answering must end the run
     * with a message, not hang it. */
    struct timeval tv = {.tv_sec = SETUP_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* HELLO, AUTH when a token is given, then the connection's first instance
 * (so applies and gets have a target whatever the mix). */
static int greet(int fd, bytes *in, char *msg, size_t cap)
{
    char req[1024];
    snprintf(req, sizeof req,
             "{\"type\":\"request\",\"id\":\"h\",\"op\":\"HELLO\",\"params\":{\"protocol_version\""
             ":1,\"client_name\":\"rcpbench\",\"wire_modes\":[\"binary_json\"],\"features\":[]}}");
    if (!setup_call(fd, in, req, msg, cap)) return -1;
    if (opt.token) {
        snprintf(req, sizeof req,
                 "{\"type\":\"request\",\"id\":\"a\",\"op\":\"AUTH\",\"params\":{\"method\":"
                 "\"bearer\",\"token\":\"%s\"}}",
                 opt.token);
        if (!setup_call(fd, in, req, msg, cap)) return -1;
    }
    return 0;
}

static void record_error(worker *w, const char *code)
{
    w->errors++;
    if (w->n_first_errors < 4) snprintf(w->first_errors[w->n_first_errors++], 160, "%s", code);
}

static void conn_flush(worker *w, conn *c, int ep)
{
    while (c->out.rpos < c->out.len) {
        ssize_t wr = send(c->fd, c->out.data + c->out.rpos, c->out.len - c->out.rpos, MSG_NOSIGNAL);
        if (wr < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                if (!c->want_out) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    c->want_out = true;
                }
                return;
            }
            fprintf(stderr, "rcpbench: connection %u: send: %s\n", c->index, strerror(errno));
            c->dead = true;
            w->closed++;
            return;
        }
        c->out.rpos += (size_t)wr;
    }
    if (c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = false;
    }
}

/* Queues requests up to the pipeline depth, stamping each with the time
 * just before conn_flush hands them to the kernel. */
static void conn_top_up(conn *c)
{
    uint64_t t = now_ns();
    while (c->inflight < opt.pipeline) {
        next_request(c);
        c->sent_at[(c->head + c->inflight) % opt.pipeline] = t;
        c->inflight++;
    }
}

static void conn_read(worker *w, conn *c)
{
    for (;;) {
        bytes_room(&c->in, 65536);
        ssize_t got = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (got == 0) {
            fprintf(stderr, "rcpbench: connection %u: server closed the connection\n", c->index);
            c->dead = true;
            w->closed++;
            return;
        }
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            fprintf(stderr, "rcpbench: connection %u: recv: %s\n", c->index, strerror(errno));
            c->dead = true;
            w->closed++;
            return;
        }
        size_t room = c->in.cap - c->in.len;
        c->in.len += (size_t)got;
        if ((size_t)got < room) break; /* the socket is drained */
    }
    uint64_t t = now_ns();
    const char *p, *why;
    size_t n;
    int r;
    while ((r = frame_next(&c->in, &p, &n, &why)) > 0) {
        if (is_event(p, n)) continue;
        if (!c->inflight) {
            fprintf(stderr, "rcpbench: connection %u: response to no request\n", c->index);
            continue;
        }
        uint64_t sent = c->sent_at[c->head];
        c->head = (c->head + 1) % opt.pipeline;
        c->inflight--;
        char code[64];
        int st = response_status(p, n, code, sizeof code);
        if (t < t_window) {
            w->pre_window++;
        } else if (t < t_end) {
            w->ops++;
            w->h.count[bucket_of(t - sent)]++;
            if (st != 1) record_error(w, st < 0 ? "not a response" : code);
        }
    }
    if (r < 0) {
        fprintf(stderr, "rcpbench: connection %u: %s\n", c->index, why);
        c->dead = true;
        w->closed++;
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    char msg[512];
    /* Setup: connect and greet every connection of this thread, blocking. */
    for (unsigned i = 0; i < w->nconns; i++) {
        conn *c = &w->conns[i];
        c->fd = dial(msg, sizeof msg);
        if (c->fd < 0 || greet(c->fd, &c->in, msg, sizeof msg) < 0) {
            fprintf(stderr, "rcpbench: connection %u: %s\n", c->index, msg);
            atomic_store(&setup_failed, 1);
            break;
        }
        char id[96], req[512];
        instance_id(c, ++c->created, id, sizeof id);
        snprintf(req, sizeof req,
                 "{\"type\":\"request\",\"id\":\"s\",\"op\":\"CREATE_INSTANCE\",\"params\":{"
                 "\"machine\":\"%s\",\"version\":%u,\"instance_id\":\"%s\",\"initial_ctx\":{"
                 "\"amount\":1}}}",
                 opt.machine, opt.version, id);
        if (!setup_call(c->fd, &c->in, req, msg, sizeof msg)) {
            fprintf(stderr, "rcpbench: connection %u: creating its first instance: %s\n", c->index,
                    msg);
            atomic_store(&setup_failed, 1);
            break;
        }
        c->state = 0;
        set_nonblock(c->fd);
    }
    pthread_barrier_wait(&ready_barrier);
    pthread_barrier_wait(&go_barrier);
    if (atomic_load(&setup_failed)) return NULL;

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    for (unsigned i = 0; i < w->nconns; i++) {
        conn *c = &w->conns[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
        conn_top_up(c);
        conn_flush(w, c, ep);
    }
    struct epoll_event evs[64];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= t_end) break;
        int timeout = (int)((t_end - t) / 1000000) + 1;
        int n = epoll_wait(ep, evs, 64, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->dead) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_read(w, c);
            if (c->dead) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            conn_top_up(c);
            conn_flush(w, c, ep);
        }
    }
    close(ep);
    for (unsigned i = 0; i < w->nconns; i++)
        close(w->conns[i].fd);
    return NULL;
}

static void put_machine(void)
{
    char msg[512];
    int fd = dial(msg, sizeof msg);
    if (fd < 0) die("%s", msg);
    bytes in = {0};
    if (greet(fd, &in, msg, sizeof msg) < 0) die("greeting %s: %s", opt.addr, msg);
    char req[1024];
    snprintf(req, sizeof req,
             "{\"type\":\"request\",\"id\":\"m\",\"op\":\"PUT_MACHINE\",\"params\":{\"machine\":"
             "\"%s\",\"version\":%u,\"definition\":{\"states\":[\"created\",\"paid\",\"shipped\"],"
             "\"initial\":\"created\",\"transitions\":[{\"from\":\"created\",\"event\":\"PAY\","
             "\"to\":\"paid\"},{\"from\":\"paid\",\"event\":\"SHIP\",\"to\":\"shipped\"},{\"from\":"
             "\"shipped\",\"event\":\"RESET\",\"to\":\"created\"}]}}}",
             opt.machine, opt.version);
    if (!setup_call(fd, &in, req, msg, sizeof msg))
        die("defining machine %s v%u: %s (a different definition under that name? try "
            "--machine OTHER)",
            opt.machine, opt.version, msg);
    free(in.data);
    close(fd);
}

static int run_client(void)
{
    put_machine();
    unsigned nt = opt.threads ? opt.threads : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (nt > opt.connections) nt = opt.connections;
    if (nt < 1) nt = 1;
    worker *ws = xalloc(nt * sizeof *ws);
    for (unsigned t = 0; t < nt; t++) {
        ws[t].id = t;
        ws[t].conns = xalloc((opt.connections / nt + 1) * sizeof(conn));
    }
    for (unsigned i = 0; i < opt.connections; i++) {
        worker *w = &ws[i % nt];
        conn *c = &w->conns[w->nconns++];
        c->index = i;
        c->fd = -1;
        c->sent_at = xalloc(opt.pipeline * sizeof(uint64_t));
    }
    pthread_barrier_init(&ready_barrier, NULL, nt + 1);
    pthread_barrier_init(&go_barrier, NULL, nt + 1);
    for (unsigned t = 0; t < nt; t++) {
        ws[t].h = (histo){0};
        if (pthread_create(&ws[t].tid, NULL, worker_main, &ws[t])) die("pthread_create failed");
    }
    pthread_barrier_wait(&ready_barrier);
    t_start = now_ns();
    t_window = t_start + (uint64_t)(opt.warmup * 1e9);
    t_end = t_window + (uint64_t)(opt.duration * 1e9);
    pthread_barrier_wait(&go_barrier);
    for (unsigned t = 0; t < nt; t++)
        pthread_join(ws[t].tid, NULL);
    if (atomic_load(&setup_failed)) return 1;

    histo *all = xalloc(sizeof *all);
    uint64_t ops = 0, errors = 0, closed = 0;
    for (unsigned t = 0; t < nt; t++) {
        for (unsigned b = 0; b < NBUCKETS; b++)
            all->count[b] += ws[t].h.count[b];
        ops += ws[t].ops;
        errors += ws[t].errors;
        closed += ws[t].closed;
    }
    printf("rcpbench addr=%s connections=%u pipeline=%u mix=%u:%u:%u threads=%u duration=%.1f "
           "ops=%" PRIu64 " ops_per_sec=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%" PRIu64
           " closed=%" PRIu64 "\n",
           opt.addr, opt.connections, opt.pipeline, opt.mix[0], opt.mix[1], opt.mix[2], nt,
           opt.duration, ops, (double)ops / opt.duration, percentile(all, ops, 0.50) / 1e6,
           percentile(all, ops, 0.99) / 1e6, percentile(all, ops, 0.999) / 1e6, errors, closed);
    if (errors) {
        fprintf(stderr, "rcpbench: %" PRIu64 " error responses; first:", errors);
        for (unsigned t = 0; t < nt; t++)
            for (unsigned i = 0; i < ws[t].n_first_errors; i++)
                fprintf(stderr, " %s", ws[t].first_errors[i]);
        fputc('\n', stderr);
    }
    for (unsigned t = 0; t < nt; t++) {
        for (unsigned i = 0; i < ws[t].nconns; i++) {
            free(ws[t].conns[i].in.data);
            free(ws[t].conns[i].out.data);
            free(ws[t].conns[i].sent_at);
        }
        free(ws[t].conns);
    }
    free(ws);
    free(all);
    return closed ? 1 : 0;
}

/* ---- null server ------------------------------------------------------------- */

typedef struct {
    int fd;
    bytes in, out;
    bool want_out;
} nconn;

typedef struct {
    pthread_t tid;
    int ep;
} nworker;

static nworker *nws;
static unsigned n_nws;
static int listen_fd;

static void null_close(nworker *w, nconn *c)
{
    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in.data);
    free(c->out.data);
    free(c);
}

/* Answers every whole frame in c->in; returns false when the connection
 * must go (bad frame). */
static bool null_answer(nconn *c)
{
    const char *p, *why;
    size_t n;
    int r;
    while ((r = frame_next(&c->in, &p, &n, &why)) > 0) {
        /* Echo the id so real clients can match the answer; nothing else
         * of the request is looked at. */
        const char *id = memmem(p, n, "\"id\":\"", 6);
        size_t idlen = 0;
        if (id) {
            id += 6;
            const char *q = memchr(id, '"', (size_t)(p + n - id));
            idlen = q ? (size_t)(q - id) : 0;
        }
        if (idlen > 200) idlen = 0;
        char resp[300];
        int m = snprintf(resp, sizeof resp,
                         "{\"type\":\"response\",\"id\":\"%.*s\",\"status\":\"ok\",\"result\":{}}",
                         (int)idlen, id ? id : "");
        frame_add(&c->out, resp, (size_t)m);
    }
    return r == 0;
}

static bool null_flush(nworker *w, nconn *c)
{
    while (c->out.rpos < c->out.len) {
        ssize_t wr = send(c->fd, c->out.data + c->out.rpos, c->out.len - c->out.rpos, MSG_NOSIGNAL);
        if (wr < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                if (!c->want_out) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                    epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
                    c->want_out = true;
                }
                return true;
            }
            return false;
        }
        c->out.rpos += (size_t)wr;
    }
    if (c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = false;
    }
    return true;
}

static void *null_worker(void *arg)
{
    nworker *w = arg;
    unsigned next = 0;
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(w->ep, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                /* The listener lives in worker 0; new connections are dealt
                 * round-robin so every core gets its share. */
                int fd;
                while ((fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    set_nodelay(fd);
                    nconn *c = xalloc(sizeof *c);
                    c->fd = fd;
                    nworker *to = &nws[next++ % n_nws];
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(to->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
                        close(fd);
                        free(c);
                    }
                }
                continue;
            }
            nconn *c = evs[i].data.ptr;
            bool ok = true;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                for (;;) {
                    bytes_room(&c->in, 65536);
                    size_t room = c->in.cap - c->in.len;
                    ssize_t got = recv(c->fd, c->in.data + c->in.len, room, 0);
                    if (got > 0) {
                        c->in.len += (size_t)got;
                        if ((size_t)got < room) break; /* drained: spare a recv */
                        continue;
                    }
                    if (got < 0 && errno == EINTR) continue;
                    if (got == 0 || errno != EAGAIN) ok = false;
                    break;
                }
                if (!null_answer(c)) ok = false;
            }
            if (ok) ok = null_flush(w, c);
            if (!ok) null_close(w, c);
        }
    }
    return NULL;
}

static int run_null_server(const char *addr)
{
    struct sockaddr_storage sa;
    socklen_t salen;
    if (parse_addr(addr, &sa, &salen)) die("--null-server: '%s' is not HOST:PORT", addr);
    listen_fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listen_fd, (struct sockaddr *)&sa, salen) < 0)
        die("bind %s: %s", addr, strerror(errno));
    if (listen(listen_fd, 1024) < 0) die("listen: %s", strerror(errno));
    n_nws = opt.threads ? opt.threads : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_nws < 1) n_nws = 1;
    nws = xalloc(n_nws * sizeof *nws);
    for (unsigned t = 0; t < n_nws; t++) {
        nws[t].ep = epoll_create1(EPOLL_CLOEXEC);
        if (nws[t].ep < 0) die("epoll_create1: %s", strerror(errno));
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(nws[0].ep, EPOLL_CTL_ADD, listen_fd, &ev);
    fprintf(stderr, "rcpbench: null server on %s, %u threads\n", addr, n_nws);
    for (unsigned t = 1; t < n_nws; t++)
        if (pthread_create(&nws[t].tid, NULL, null_worker, &nws[t])) die("pthread_create failed");
    null_worker(&nws[0]);
    return 0;
}

/* ---- command line ---------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: rcpbench [options]              load an RCP server\n"
               "       rcpbench --null-server ADDR     answer every frame at once, do nothing\n"
               "\n"
               "  --addr HOST:PORT      server to load (default 127.0.0.1:7401)\n"
               "  --connections N       connections (default 16)\n"
               "  --pipeline D          requests in flight per connection (default 1)\n"
               "  --mix C:A:G           CREATE:APPLY:GET ratio per cycle (default 1:1:0)\n"
               "  --duration SECONDS    measured time (default 10)\n"
               "  --warmup SECONDS      unmeasured time before it (default 2)\n"
               "  --threads T           client (or null server) threads (default: one per core)\n"
               "  --machine NAME        machine to define and use (default rcpbench-order)\n"
               "  --token TOKEN         send AUTH with this bearer token after HELLO\n"
               "  --null-server ADDR    run the null server on ADDR instead\n"
               "  --help                this text\n");
}

static unsigned parse_uint(const char *flag, const char *v, unsigned min, unsigned max)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (errno || *end || !*v || v[0] == '-' || x < min || x > max) {
        fprintf(stderr, "rcpbench: %s: '%s' is not a whole number in [%u, %u]\n", flag, v, min,
                max);
        exit(2);
    }
    return (unsigned)x;
}

static double parse_secs(const char *flag, const char *v)
{
    char *end;
    double d = strtod(v, &end);
    if (*end || !*v || !(d >= 0) || d > 86400) {
        fprintf(stderr, "rcpbench: %s: '%s' is not a number of seconds\n", flag, v);
        exit(2);
    }
    return d;
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"addr", required_argument, 0, 'a'},     {"connections", required_argument, 0, 'c'},
        {"pipeline", required_argument, 0, 'p'}, {"mix", required_argument, 0, 'm'},
        {"duration", required_argument, 0, 'd'}, {"warmup", required_argument, 0, 'w'},
        {"threads", required_argument, 0, 't'},  {"machine", required_argument, 0, 'M'},
        {"token", required_argument, 0, 'T'},    {"null-server", required_argument, 0, 'N'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    const char *null_addr = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        switch (ch) {
        case 'a':
            opt.addr = optarg;
            break;
        case 'c':
            opt.connections = parse_uint("--connections", optarg, 1, 100000);
            break;
        case 'p':
            opt.pipeline = parse_uint("--pipeline", optarg, 1, 100000);
            break;
        case 'm': {
            unsigned a, b, g;
            char tail;
            if (sscanf(optarg, "%u:%u:%u%c", &a, &b, &g, &tail) != 3 || a + b + g == 0 ||
                a > 1000 || b > 1000 || g > 1000) {
                fprintf(stderr, "rcpbench: --mix: '%s' is not CREATE:APPLY:GET (e.g. 1:1:0)\n",
                        optarg);
                return 2;
            }
            opt.mix[0] = a, opt.mix[1] = b, opt.mix[2] = g;
            break;
        }
        case 'd':
            opt.duration = parse_secs("--duration", optarg);
            break;
        case 'w':
            opt.warmup = parse_secs("--warmup", optarg);
            break;
        case 't':
            opt.threads = parse_uint("--threads", optarg, 1, 1024);
            break;
        case 'M':
            for (const char *s = optarg; *s; s++)
                if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '_' || *s == '.')) {
                    fprintf(stderr, "rcpbench: --machine: use letters, digits, '-', '_', '.'\n");
                    return 2;
                }
            opt.machine = optarg;
            break;
        case 'T':
            opt.token = optarg;
            break;
        case 'N':
            null_addr = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "rcpbench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (opt.duration <= 0) {
        fprintf(stderr, "rcpbench: --duration must be above 0\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (null_addr) return run_null_server(null_addr);
    if (parse_addr(opt.addr, &opt.sa, &opt.salen)) {
        fprintf(stderr, "rcpbench: --addr: '%s' is not HOST:PORT (a literal IP)\n", opt.addr);
        return 2;
    }
    snprintf(opt.run_id, sizeof opt.run_id, "b%08x",
             (unsigned)(now_ns() ^ ((uint64_t)getpid() << 16)));
    return run_client();
}
