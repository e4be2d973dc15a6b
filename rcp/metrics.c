/*
 * metrics.c - Prometheus text exposition on metrics.bind_addr, with
 * rstmdb's metric names (reference engine-semantics.md §17), served by the
 * same event loop: GET /metrics, /health and /healthz ("OK"), / (a link).
 *
 * The RCP counters are only touched by the loop thread, so they need no
 * locks; the engine's figures are read with eng_get_stats at scrape time
 * (always current, unlike rstmdb's refresh-on-write gauges). Unlike rstmdb,
 * subscriptions_active also goes down when a connection closes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/resource.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "rcp/internal.h"

#define HTTP_MAX_REQUEST 8192

static const double bucket_le[RCP_HIST_BUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05,
                                                   0.1,   0.25,  0.5,  1.0};

struct rcp_http {
    rcp_http *next;
    rcp_server *srv;
    int fd;
    char in[HTTP_MAX_REQUEST];
    size_t in_len;
    buf out;
    size_t off;
    uint64_t since_ms;
};

void rcp_metrics_observe(rcp_server *s, int op, uint64_t ns)
{
    if (op < 0 || op >= RCP_OP_COUNT) return;
    double secs = (double)ns / 1e9;
    int b = 0;
    while (b < RCP_HIST_BUCKETS && secs > bucket_le[b])
        b++;
    s->m.hist[op][b]++;
    s->m.hist_sum[op] += secs;
}

static void metric_head(buf *o, const char *name, const char *type, const char *help)
{
    buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(buf *o, const char *name, const char *type, const char *help, double v)
{
    metric_head(o, name, type, help);
    buf_printf(o, "%s %.17g\n", name, v);
}

static void process_metrics(buf *o, const rcp_server *s)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        one(o, "process_cpu_seconds_total", "counter",
            "Total user and system CPU time spent in seconds.",
            (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6);
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long vsz = 0, rss = 0;
        if (fscanf(f, "%lu %lu", &vsz, &rss) == 2) {
            long page = sysconf(_SC_PAGESIZE);
            one(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
                (double)vsz * (double)page);
            one(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                (double)rss * (double)page);
        }
        fclose(f);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        one(o, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
            (double)rl.rlim_cur);
    one(o, "process_start_time_seconds", "gauge",
        "Start time of the process since unix epoch in seconds.", (double)s->start_ms / 1000.0);
}

static void render(buf *o, rcp_server *s)
{
    const rcp_counters *m = &s->m;
    one(o, "rstmdb_connections_total", "counter", "Total connections accepted",
        (double)m->connections_total);
    one(o, "rstmdb_connections_active", "gauge", "Currently open connections", (double)s->n_conns);
    metric_head(o, "rstmdb_requests_total", "counter", "Total requests by operation");
    for (int i = 0; i < RCP_OP_COUNT; i++)
        if (m->requests[i])
            buf_printf(o, "rstmdb_requests_total{operation=\"%s\"} %llu\n", rcp_op_name(i),
                       (unsigned long long)m->requests[i]);
    metric_head(o, "rstmdb_errors_total", "counter", "Total error responses by code");
    for (int i = 1; i < STM_CODE_COUNT; i++)
        if (m->errors[i])
            buf_printf(o, "rstmdb_errors_total{code=\"%s\"} %llu\n", stm_code_name(i),
                       (unsigned long long)m->errors[i]);
    metric_head(o, "rstmdb_request_duration_seconds", "histogram",
                "Request duration until the response was released (durable) in seconds");
    for (int i = 0; i < RCP_OP_COUNT; i++) {
        uint64_t cum = 0, total = 0;
        for (int b = 0; b <= RCP_HIST_BUCKETS; b++)
            total += m->hist[i][b];
        if (!total) continue;
        for (int b = 0; b < RCP_HIST_BUCKETS; b++) {
            cum += m->hist[i][b];
            buf_printf(o,
                       "rstmdb_request_duration_seconds_bucket{operation=\"%s\",le=\"%g\"} %llu\n",
                       rcp_op_name(i), bucket_le[b], (unsigned long long)cum);
        }
        buf_printf(o, "rstmdb_request_duration_seconds_bucket{operation=\"%s\",le=\"+Inf\"} %llu\n",
                   rcp_op_name(i), (unsigned long long)total);
        buf_printf(o, "rstmdb_request_duration_seconds_sum{operation=\"%s\"} %.9g\n",
                   rcp_op_name(i), m->hist_sum[i]);
        buf_printf(o, "rstmdb_request_duration_seconds_count{operation=\"%s\"} %llu\n",
                   rcp_op_name(i), (unsigned long long)total);
    }
    metric_head(o, "rstmdb_subscriptions_active", "gauge", "Active watch subscriptions by type");
    buf_printf(o, "rstmdb_subscriptions_active{type=\"instance\"} %lld\n",
               (long long)m->subscriptions[0]);
    buf_printf(o, "rstmdb_subscriptions_active{type=\"all\"} %lld\n",
               (long long)m->subscriptions[1]);
    metric_head(o, "rstmdb_events_forwarded_total", "counter", "Stream events sent by type");
    buf_printf(o, "rstmdb_events_forwarded_total{type=\"instance\"} %llu\n",
               (unsigned long long)m->events_forwarded[0]);
    buf_printf(o, "rstmdb_events_forwarded_total{type=\"all\"} %llu\n",
               (unsigned long long)m->events_forwarded[1]);

    eng_stats st;
    memset(&st, 0, sizeof st);
    eng_get_stats(s->e, &st);
    one(o, "rstmdb_instances_total", "gauge", "Instances that are not deleted",
        (double)st.instances);
    one(o, "rstmdb_machines_total", "gauge", "Machine versions defined",
        (double)st.machine_versions);
    one(o, "rstmdb_wal_entries", "gauge", "Highest WAL sequence written",
        (double)st.wal.entry_count);
    one(o, "rstmdb_wal_segments", "gauge", "WAL segment files", (double)st.wal.segment_count);
    one(o, "rstmdb_wal_size_bytes", "gauge", "Size of the WAL segments in bytes",
        (double)st.wal.total_size_bytes);
    one(o, "rstmdb_wal_bytes_written_total", "counter", "Bytes written to the WAL",
        (double)st.wal.bytes_written);
    one(o, "rstmdb_wal_bytes_read_total", "counter", "Bytes read from the WAL",
        (double)st.wal.bytes_read);
    one(o, "rstmdb_wal_writes_total", "counter", "WAL write calls", (double)st.wal.writes);
    one(o, "rstmdb_wal_reads_total", "counter", "WAL read calls", (double)st.wal.reads);
    one(o, "rstmdb_wal_fsyncs_total", "counter", "WAL fsync calls", (double)st.wal.fsyncs);
    one(o, "stmfs_rcp_connections_rejected_total", "counter",
        "Connections refused at max_connections or during shutdown",
        (double)m->connections_rejected);
    one(o, "stmfs_rcp_bytes_received_total", "counter", "RCP bytes received", (double)m->bytes_in);
    one(o, "stmfs_rcp_bytes_sent_total", "counter", "RCP bytes sent", (double)m->bytes_out);
    process_metrics(o, s);
}

static void http_close(rcp_http *h)
{
    rcp_server *s = h->srv;
    for (rcp_http **p = &s->https; *p; p = &(*p)->next)
        if (*p == h) {
            *p = h->next;
            break;
        }
    rcp_loop_del(s->loop, h->fd);
    close(h->fd);
    buf_free(&h->out);
    free(h);
}

static void respond(rcp_http *h, int status, const char *ctype, const char *body, size_t len)
{
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                                         : "Bad Request";
    buf_printf(&h->out,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Connection: close\r\n\r\n",
               status, reason, ctype, len);
    buf_add(&h->out, body, len);
}

static void http_build(rcp_http *h)
{
    char method[16] = "", path[256] = "";
    if (sscanf(h->in, "%15s %255s", method, path) != 2) {
        respond(h, 400, "text/plain; charset=utf-8", "Bad Request", 11);
        return;
    }
    char *q = strchr(path, '?');
    if (q) *q = 0;
    bool head = strcmp(method, "HEAD") == 0;
    if (strcmp(method, "GET") != 0 && !head) {
        respond(h, 405, "text/plain; charset=utf-8", "Method Not Allowed", 18);
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        buf body = {0};
        render(&body, h->srv);
        respond(h, 200, "text/plain; version=0.0.4; charset=utf-8", body.data ? body.data : "",
                head ? 0 : body.len);
        buf_free(&body);
    } else if (strcmp(path, "/health") == 0 || strcmp(path, "/healthz") == 0) {
        respond(h, 200, "text/plain; charset=utf-8", "OK", head ? 0 : 2);
    } else if (strcmp(path, "/") == 0) {
        static const char page[] = "<html><head><title>stmfs metrics</title></head><body>"
                                   "<h1>stmfs</h1><p><a href=\"/metrics\">Metrics</a></p>"
                                   "</body></html>";
        respond(h, 200, "text/html; charset=utf-8", page, head ? 0 : sizeof page - 1);
    } else {
        respond(h, 404, "text/plain; charset=utf-8", "Not Found", head ? 0 : 9);
    }
}

static void http_event(rcp_loop *l, int fd, void *arg, unsigned ev)
{
    rcp_http *h = arg;
    if (!h->out.len && (ev & RCP_EV_READ)) {
        ssize_t n = recv(fd, h->in + h->in_len, sizeof h->in - 1 - h->in_len, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            http_close(h);
            return;
        }
        if (n > 0) h->in_len += (size_t)n;
        h->in[h->in_len] = 0;
        if (!strstr(h->in, "\r\n\r\n") && !strstr(h->in, "\n\n")) {
            if (h->in_len >= sizeof h->in - 1) {
                respond(h, 400, "text/plain; charset=utf-8", "Bad Request", 11);
            } else {
                return;
            }
        } else {
            http_build(h);
        }
        rcp_loop_set(l, fd, RCP_EV_WRITE);
    }
    while (h->off < h->out.len) {
        ssize_t n = send(fd, h->out.data + h->off, h->out.len - h->off, MSG_NOSIGNAL);
        if (n > 0) {
            h->off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        break;
    }
    if (h->out.len) http_close(h);
}

static void http_accept(rcp_loop *l, int fd, void *arg, unsigned ev)
{
    (void)ev;
    rcp_server *s = arg;
    for (int k = 0; k < 16; k++) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) return;
        rcp_http *h = xcalloc(1, sizeof *h);
        h->srv = s;
        h->fd = cfd;
        h->since_ms = rcp_now_ms();
        if (rcp_loop_add(l, cfd, RCP_EV_READ, http_event, h) != 0) {
            close(cfd);
            free(h);
            continue;
        }
        h->next = s->https;
        s->https = h;
    }
}

stm_code rcp_metrics_start(rcp_server *s, stm_err *err)
{
    const char *addr = s->cfg->metrics_bind_addr ? s->cfg->metrics_bind_addr : "127.0.0.1:9090";
    stm_err why = {0};
    s->metrics_fd = rcp_listen_addr(addr, s->metrics_bound, sizeof s->metrics_bound, &why);
    if (s->metrics_fd < 0)
        return stm_fail(err, why.code ? why.code : STM_INTERNAL_ERROR,
                        "cannot start the metrics listener on %s (metrics.bind_addr): %s", addr,
                        why.msg);
    rcp_loop_add(s->loop, s->metrics_fd, RCP_EV_READ, http_accept, s);
    log_info("metrics on http://%s/metrics", s->metrics_bound);
    return STM_OK;
}

void rcp_metrics_stop(rcp_server *s)
{
    while (s->https)
        http_close(s->https);
    if (s->metrics_fd >= 0) {
        rcp_loop_del(s->loop, s->metrics_fd);
        close(s->metrics_fd);
        s->metrics_fd = -1;
    }
}

/* Scrapes that never finish their request are dropped after 10 s. */
void rcp_metrics_tick(rcp_server *s)
{
    uint64_t now = rcp_now_ms();
    for (rcp_http *h = s->https, *next; h; h = next) {
        next = h->next;
        if (now - h->since_ms > 10000) http_close(h);
    }
}
