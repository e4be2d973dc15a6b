/*
 * cmd_call.c - `stmfs call` and `stmfs watch`: a small RCP client.
 *
 *   stmfs call [--addr HOST:PORT] [--token T] [--tls] [--ca FILE] [--cert FILE --key FILE]
 *              OP [PARAMS-JSON]
 *   stmfs watch [--addr ...] [--instance ID | filters] [--no-ctx] [--from-offset N]
 *
 * call sends HELLO (and AUTH when a token is given), then one request, and
 * prints its result as indented JSON on stdout; an error response prints
 * `error: CODE: message` on stderr and exits 1. watch subscribes
 * (WATCH_INSTANCE with --instance, WATCH_ALL otherwise) and prints every
 * event as one JSON line, exactly as the server sent it, until SIGINT or
 * SIGTERM, when it sends UNWATCH and exits 0.
 *
 * It works against any RCP server (stmfs or rstmdb): binary frames with
 * CRC-32C, requests shaped as rstmdb's own clients shape them. The frame
 * code is local to this file on purpose: a client written apart from the
 * server's codec is a second opinion on the wire format, not a copy of it.
 * TLS goes through OpenSSL when --tls, --ca or --cert is given; --cert and
 * --key present a client certificate (mutual TLS).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "base/json.h"
#include "src/cmds.h"

#define DEFAULT_ADDR "127.0.0.1:7401"
#define FRAME_HDR 18
#define FRAME_MAX (16u * 1024 * 1024)
#define CONNECT_TIMEOUT_MS 10000
#define REQUEST_TIMEOUT_MS 30000 /* what rstmdb's clients wait */
#define UNWATCH_TIMEOUT_MS 2000

static const char *const op_names[] = {
    "HELLO",
    "AUTH",
    "PING",
    "BYE",
    "INFO",
    "PUT_MACHINE",
    "GET_MACHINE",
    "LIST_MACHINES",
    "CREATE_INSTANCE",
    "GET_INSTANCE",
    "LIST_INSTANCES",
    "DELETE_INSTANCE",
    "APPLY_EVENT",
    "BATCH",
    "SNAPSHOT_INSTANCE",
    "WAL_READ",
    "WAL_STATS",
    "COMPACT",
    "WATCH_INSTANCE",
    "WATCH_ALL",
    "UNWATCH",
};

/* ---- connection: a socket, optionally wrapped in TLS ---------------------- */

typedef struct {
    const char *cmd; /* "call" or "watch", for messages */
    const char *addr, *token, *ca;
    const char *cert, *key; /* the client certificate and its key (mTLS) */
    bool tls;
} conn_opts;

typedef struct {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    buf in; /* received bytes; [rpos, len) unread */
    size_t rpos;
    int wake_fd; /* readable when a signal asks to stop; -1 = none */
    const char *addr;
    char why[256]; /* the last read failure, for FILL_IO */
    /* Why a TLS connection may have been refused: the server asked for a
     * client certificate; the alert it sent (an SSL_R_ reason, 0 = none). */
    bool cert_requested;
    int alert;
    const char *cert; /* the client certificate presented, or NULL */
    bool answered;    /* a frame came: the TLS handshake was accepted */
} link_t;

/* What link_fill reports besides bytes. */
enum {
    FILL_OK = 0,
    FILL_CLOSED = -1,  /* the server closed the connection */
    FILL_TIMEOUT = -2, /* nothing within the time given */
    FILL_WOKEN = -3,   /* a stop signal came */
    FILL_ERROR = -4,   /* a protocol error, already reported */
    FILL_IO = -5,      /* a read failed: l->why says how */
};

static void say(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "stmfs %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Splits HOST:PORT ([v6]:PORT too). false when it has no port. */
static bool split_addr(const char *addr, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || !colon[1] || strlen(colon + 1) >= pcap) return false;
    for (const char *p = colon + 1; *p; p++)
        if (!isdigit((unsigned char)*p)) return false;
    const char *h = addr;
    size_t n = (size_t)(colon - addr);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') h++, n -= 2;
    if (n == 0 || n >= hcap) return false;
    memcpy(host, h, n);
    host[n] = 0;
    strcpy(port, colon + 1);
    return atoi(port) <= 65535;
}

static int connect_timeout(int fd, const struct sockaddr *sa, socklen_t len)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int rc = connect(fd, sa, len);
    if (rc < 0 && errno == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        rc = poll(&p, 1, CONNECT_TIMEOUT_MS);
        if (rc == 0) {
            errno = ETIMEDOUT;
            rc = -1;
        } else if (rc > 0) {
            int e = 0;
            socklen_t el = sizeof e;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el);
            errno = e;
            rc = e ? -1 : 0;
        }
    }
    fcntl(fd, F_SETFL, fl);
    return rc;
}

static void tls_error(const char *cmd, const char *what)
{
    unsigned long e = ERR_get_error();
    char detail[256] = "";
    if (e) ERR_error_string_n(e, detail, sizeof detail);
    say(cmd, "%s%s%s", what, e ? ": " : "", detail);
}

/* Called by OpenSSL when the server sends a CertificateRequest. */
static int on_cert_request(SSL *ssl, void *arg)
{
    (void)ssl;
    ((link_t *)arg)->cert_requested = true;
    return 1;
}

/* Keeps an alert the server sent (the reason of an SSL error), for
 * tls_refusal. */
static void note_alert(link_t *l, unsigned long e)
{
    int r = ERR_GET_REASON(e);
    if (ERR_GET_LIB(e) == ERR_LIB_SSL && r >= SSL_AD_REASON_OFFSET &&
        r < SSL_AD_REASON_OFFSET + 256)
        l->alert = r;
}

/* When a TLS connection ended before the server answered: what the server
 * refused, as one clause for "TLS handshake with ADDR failed: ...", or
 * NULL when nothing says the handshake was refused. */
static const char *tls_refusal(const link_t *l, char *out, size_t n)
{
    if (!l->ssl) return NULL;
    const char *alert =
        l->alert ? ERR_reason_error_string(ERR_PACK(ERR_LIB_SSL, 0, l->alert)) : NULL;
    bool cert_alert = false;
    switch (l->alert) {
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
        cert_alert = true;
        break;
    default:
        break;
    }
    if (!l->cert && (l->alert == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
                     (l->cert_requested && (cert_alert || !l->alert)))) {
        snprintf(out, n,
                 "the server requires a client certificate%s%s%s: add --cert FILE and "
                 "--key FILE",
                 alert ? " (" : "", alert ? alert : "", alert ? ")" : "");
        return out;
    }
    if (l->cert && cert_alert && l->alert != SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE) {
        snprintf(out, n,
                 "the server refused the client certificate %s (%s): is it signed by a "
                 "CA the server trusts (its tls.client_ca_path), and still valid?",
                 l->cert, alert ? alert : "alert");
        return out;
    }
    if (alert) {
        snprintf(out, n, "the server sent the alert '%s'", alert);
        return out;
    }
    return NULL;
}

/* Reads the client certificate and key into ctx. 0, or 2 after printing
 * why (the files are the user's input, as a bad @FILE is). */
static int load_client_cert(SSL_CTX *ctx, const conn_opts *o)
{
    const char *files[2] = {o->cert, o->key}, *flags[2] = {"--cert", "--key"};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(files[i], "r");
        if (!f) {
            say(o->cmd, "%s: cannot read '%s': %s", flags[i], files[i], strerror(errno));
            return 2;
        }
        fclose(f);
    }
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1) {
        char what[600];
        snprintf(what, sizeof what, "--cert: '%s' holds no usable certificate (PEM)", o->cert);
        tls_error(o->cmd, what);
        return 2;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, o->key, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            say(o->cmd, "--key: '%s' is not the private key of the certificate in '%s'", o->key,
                o->cert);
            return 2;
        }
        char what[600];
        snprintf(what, sizeof what, "--key: '%s' holds no usable private key (PEM, unencrypted)",
                 o->key);
        tls_error(o->cmd, what);
        return 2;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        say(o->cmd, "--key: '%s' is not the private key of the certificate in '%s'", o->key,
            o->cert);
        return 2;
    }
    return 0;
}

/* The TLS context: CA certificates to check the server with, and the
 * client certificate when given. 0, or the exit status after printing why. */
static int tls_setup(link_t *l, const conn_opts *o)
{
    l->ctx = SSL_CTX_new(TLS_client_method());
    if (!l->ctx) return tls_error(o->cmd, "TLS setup failed"), 1;
    SSL_CTX_set_verify(l->ctx, SSL_VERIFY_PEER, NULL);
    if (o->ca ? SSL_CTX_load_verify_locations(l->ctx, o->ca, NULL) != 1
              : SSL_CTX_set_default_verify_paths(l->ctx) != 1) {
        char what[600];
        snprintf(what, sizeof what, "cannot load CA certificates from %s",
                 o->ca ? o->ca : "the system store");
        tls_error(o->cmd, what);
        return 1;
    }
    if (o->cert) {
        int rc = load_client_cert(l->ctx, o);
        if (rc) return rc;
        l->cert = o->cert;
    }
    return 0;
}

/* Returns 0, or 1 after printing why (connection problems exit 1; 2 for
 * bad usage or unreadable certificate files). */
static int link_open(link_t *l, const conn_opts *o)
{
    memset(l, 0, sizeof *l);
    l->fd = -1;
    l->wake_fd = -1;
    l->addr = o->addr;
    char host[256], port[8];
    if (!split_addr(o->addr, host, sizeof host, port, sizeof port)) {
        say(o->cmd, "--addr: '%s' is not HOST:PORT (e.g. 127.0.0.1:7401)", o->addr);
        return 2;
    }
    /* Before connecting: a bad certificate file is the user's to fix,
     * whether or not the server is up. */
    if (o->tls) {
        int rc = tls_setup(l, o);
        if (rc) return rc;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai) {
        say(o->cmd, "cannot resolve '%s': %s", host, gai_strerror(gai));
        return 1;
    }
    int err = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect_timeout(fd, a->ai_addr, a->ai_addrlen) == 0) {
            l->fd = fd;
            break;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    if (l->fd < 0) {
        say(o->cmd, "cannot connect to %s: %s", o->addr, strerror(err));
        return 1;
    }
    int one = 1;
    setsockopt(l->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (!o->tls) return 0;

    l->ssl = SSL_new(l->ctx);
    SSL_set_fd(l->ssl, l->fd);
    SSL_set_cert_cb(l->ssl, on_cert_request, l);
    /* The certificate must name what we dialled: an IP address is checked
     * against the certificate's IP entries, a name against its DNS names
     * (and sent as SNI). */
    unsigned char ipbuf[16];
    bool is_ip = inet_pton(AF_INET, host, ipbuf) == 1 || inet_pton(AF_INET6, host, ipbuf) == 1;
    X509_VERIFY_PARAM *vp = SSL_get0_param(l->ssl);
    if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(vp, host);
    } else {
        SSL_set_tlsext_host_name(l->ssl, host);
        SSL_set1_host(l->ssl, host);
    }
    if (SSL_connect(l->ssl) != 1) {
        long v = SSL_get_verify_result(l->ssl);
        if (v != X509_V_OK) {
            say(o->cmd, "TLS handshake with %s failed: certificate not trusted: %s", o->addr,
                X509_verify_cert_error_string(v));
            return 1;
        }
        unsigned long e = ERR_peek_error();
        note_alert(l, e);
        char why[400];
        if (tls_refusal(l, why, sizeof why)) {
            ERR_clear_error();
            say(o->cmd, "TLS handshake with %s failed: %s", o->addr, why);
            return 1;
        }
        char what[300];
        snprintf(what, sizeof what, "TLS handshake with %s failed (is it a TLS server?)", o->addr);
        tls_error(o->cmd, what);
        return 1;
    }
    return 0;
}

static void link_close(link_t *l)
{
    if (l->ssl) {
        SSL_shutdown(l->ssl);
        SSL_free(l->ssl);
    }
    if (l->ctx) SSL_CTX_free(l->ctx);
    if (l->fd >= 0) close(l->fd);
    buf_free(&l->in);
    l->fd = -1;
    l->ssl = NULL;
    l->ctx = NULL;
}

static bool link_write(link_t *l, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w;
        if (l->ssl) {
            int r = SSL_write(l->ssl, s, (int)(n > 1 << 30 ? 1 << 30 : n));
            w = r > 0 ? r : -1;
        } else {
            w = send(l->fd, s, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
        }
        if (w <= 0) return false;
        s += w;
        n -= (size_t)w;
    }
    return true;
}

/* Reads more bytes into l->in, waiting at most timeout_ms (-1: forever),
 * and returning early with FILL_WOKEN when the wake fd becomes readable. */
static int link_fill(link_t *l, int timeout_ms)
{
    if (!(l->ssl && SSL_pending(l->ssl) > 0)) {
        struct pollfd p[2] = {{.fd = l->fd, .events = POLLIN},
                              {.fd = l->wake_fd, .events = POLLIN}};
        int n;
        do
            n = poll(p, l->wake_fd >= 0 ? 2 : 1, timeout_ms);
        while (n < 0 && errno == EINTR && !(l->wake_fd >= 0));
        if (n < 0 && errno == EINTR) return FILL_WOKEN;
        if (n < 0) {
            snprintf(l->why, sizeof l->why, "poll: %s", strerror(errno));
            return FILL_IO;
        }
        if (n == 0) return FILL_TIMEOUT;
        if (l->wake_fd >= 0 && (p[1].revents & POLLIN)) return FILL_WOKEN;
    }
    if (l->rpos && l->rpos == l->in.len) {
        buf_reset(&l->in);
        l->rpos = 0;
    }
    buf_reserve(&l->in, 65536);
    ssize_t got;
    if (l->ssl) {
        int r = SSL_read(l->ssl, l->in.data + l->in.len, 65536);
        if (r <= 0) {
            int e = SSL_get_error(l->ssl, r);
            if (e == SSL_ERROR_ZERO_RETURN) return FILL_CLOSED;
            unsigned long q = ERR_get_error();
            note_alert(l, q);
            if (q)
                ERR_error_string_n(q, l->why, sizeof l->why);
            else if (e == SSL_ERROR_SYSCALL && errno)
                snprintf(l->why, sizeof l->why, "%s", strerror(errno));
            else if (e == SSL_ERROR_SYSCALL)
                return FILL_CLOSED; /* EOF without close_notify */
            else
                snprintf(l->why, sizeof l->why, "TLS error %d", e);
            return FILL_IO;
        }
        got = r;
    } else {
        got = recv(l->fd, l->in.data + l->in.len, 65536, 0);
        if (got == 0) return FILL_CLOSED;
        if (got < 0 && errno == EINTR) return FILL_WOKEN;
        if (got < 0) {
            snprintf(l->why, sizeof l->why, "%s", strerror(errno));
            return FILL_IO;
        }
    }
    l->in.len += (size_t)got;
    l->in.data[l->in.len] = 0;
    return FILL_OK;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Waits for the next frame; on success payload and n point into l->in (valid
 * until the next call). Returns FILL_OK or a FILL_ code; a frame that
 * breaks the protocol is reported and gives FILL_ERROR. */
static int link_frame(link_t *l, const char *cmd, int timeout_ms, const char **payload, size_t *n)
{
    for (;;) {
        size_t avail = l->in.len - l->rpos;
        if (avail >= FRAME_HDR) {
            const unsigned char *h = (const unsigned char *)l->in.data + l->rpos;
            if (memcmp(h, "RCPX", 4) || h[4] != 0 || h[5] != 1) {
                say(cmd, "%s does not speak RCP (bad frame header)", l->addr);
                return FILL_ERROR;
            }
            size_t hlen = (size_t)(h[8] << 8 | h[9]);
            uint32_t plen = be32(h + 10);
            if (plen > FRAME_MAX) {
                say(cmd, "%s sent a frame over 16 MiB", l->addr);
                return FILL_ERROR;
            }
            if (avail >= FRAME_HDR + hlen + plen) {
                const char *p = (const char *)h + FRAME_HDR + hlen;
                if ((h[7] & 1) && crc32c(0, p, plen) != be32(h + 14)) {
                    say(cmd, "%s sent a frame with a bad CRC", l->addr);
                    return FILL_ERROR;
                }
                *payload = p;
                *n = plen;
                l->rpos += FRAME_HDR + hlen + plen;
                return FILL_OK;
            }
        }
        int r = link_fill(l, timeout_ms);
        if (r != FILL_OK) return r;
    }
}

static bool send_request(link_t *l, const char *id, const char *op, const cJSON *params)
{
    /* Envelope as rstmdb's clients write it: type, id, op, params. */
    buf b = {0};
    buf_reserve(&b, FRAME_HDR + 256);
    b.len = FRAME_HDR;
    buf_puts(&b, "{\"type\":\"request\",\"id\":");
    json_write_str(&b, id);
    buf_puts(&b, ",\"op\":");
    json_write_str(&b, op);
    buf_puts(&b, ",\"params\":");
    if (params)
        json_write(&b, params, false);
    else
        buf_puts(&b, "{}");
    buf_putc(&b, '}');
    size_t plen = b.len - FRAME_HDR;
    unsigned char *h = (unsigned char *)b.data;
    uint32_t crc = crc32c(0, b.data + FRAME_HDR, plen);
    memcpy(h, "RCPX", 4);
    h[4] = 0, h[5] = 1; /* version 1 */
    h[6] = 0, h[7] = 1; /* flags: CRC present */
    h[8] = 0, h[9] = 0; /* no header extension */
    for (int i = 0; i < 4; i++) {
        h[10 + i] = (unsigned char)(plen >> (24 - 8 * i));
        h[14 + i] = (unsigned char)(crc >> (24 - 8 * i));
    }
    bool ok = link_write(l, b.data, b.len);
    buf_free(&b);
    return ok;
}

static const char *fill_reason(const link_t *l, int r)
{
    switch (r) {
    case FILL_CLOSED:
        return "the server closed the connection";
    case FILL_TIMEOUT:
        return "no answer within 30 s";
    case FILL_WOKEN:
        return "interrupted";
    case FILL_IO:
        return l->why;
    default:
        return "the connection failed";
    }
}

/* Waits for the response to request id, skipping stream events. Returns the
 * parsed response (caller frees) or NULL after printing why. */
static cJSON *wait_response(link_t *l, const char *cmd, const char *id, int timeout_ms,
                            int *fill_rc)
{
    for (;;) {
        const char *p;
        size_t n;
        int r = link_frame(l, cmd, timeout_ms, &p, &n);
        *fill_rc = r;
        char why[400];
        if ((r == FILL_IO || r == FILL_CLOSED) && !l->answered && tls_refusal(l, why, sizeof why)) {
            /* TLS 1.3 settles the client certificate after the handshake:
             * a refusal shows on the first read. */
            say(cmd, "TLS handshake with %s failed: %s", l->addr, why);
            *fill_rc = FILL_ERROR;
            return NULL;
        }
        if (r != FILL_OK) {
            if (r != FILL_ERROR && r != FILL_WOKEN) say(cmd, "%s: %s", l->addr, fill_reason(l, r));
            return NULL;
        }
        l->answered = true;
        stm_err err = {0};
        cJSON *v = json_parse(p, n, &err);
        if (!v) {
            say(cmd, "%s sent a payload that is not JSON: %s", l->addr, err.msg);
            *fill_rc = FILL_ERROR;
            return NULL;
        }
        cJSON *type = json_get(v, "type"), *rid = json_get(v, "id");
        if (cJSON_IsString(type) && !strcmp(type->valuestring, "response") && cJSON_IsString(rid) &&
            !strcmp(rid->valuestring, id))
            return v;
        cJSON_Delete(v); /* an event, or an answer to something else */
    }
}

/* For an error response: prints `error: CODE: message` and returns true. */
static bool print_if_error(const cJSON *resp)
{
    const cJSON *status = json_get(resp, "status");
    if (cJSON_IsString(status) && !strcmp(status->valuestring, "ok")) return false;
    const cJSON *e = json_get(resp, "error");
    const cJSON *code = json_get(e, "code"), *msg = json_get(e, "message");
    fprintf(stderr, "error: %s: %s\n", cJSON_IsString(code) ? code->valuestring : "UNKNOWN",
            cJSON_IsString(msg) ? msg->valuestring : "(no message)");
    return true;
}

/* HELLO, then AUTH when a token is set. 0 ready, 1 failed (printed). */
static int handshake(link_t *l, const conn_opts *o)
{
    cJSON *hello = cJSON_CreateObject();
    cJSON_AddNumberToObject(hello, "protocol_version", 1);
    cJSON_AddStringToObject(hello, "client_name", "stmfs-cli");
    cJSON *modes = cJSON_AddArrayToObject(hello, "wire_modes");
    cJSON_AddItemToArray(modes, cJSON_CreateString("binary_json"));
    cJSON *feats = cJSON_AddArrayToObject(hello, "features");
    cJSON_AddItemToArray(feats, cJSON_CreateString("idempotency"));
    cJSON_AddItemToArray(feats, cJSON_CreateString("batch"));
    bool sent = send_request(l, "1", "HELLO", hello);
    cJSON_Delete(hello);
    if (!sent) {
        char why[400];
        int e = errno;
        if (l->ssl) {
            /* A server that refused the handshake may have reset the
             * connection under the write; its alert can still be read. */
            note_alert(l, ERR_peek_error());
            ERR_clear_error();
            if (!l->alert) link_fill(l, 1000);
        }
        errno = e;
        if (tls_refusal(l, why, sizeof why))
            say(o->cmd, "TLS handshake with %s failed: %s", o->addr, why);
        else
            say(o->cmd, "cannot send to %s: %s", o->addr, strerror(errno));
        return 1;
    }
    int rc;
    cJSON *r = wait_response(l, o->cmd, "1", REQUEST_TIMEOUT_MS, &rc);
    if (!r) {
        /* A TLS server resets a plain hello, and a server at its
         * max_connections closes at once: say what probably happened. */
        if (!o->tls && (rc == FILL_IO || rc == FILL_CLOSED))
            say(o->cmd, "%s closed the connection before answering: it may be at its "
                        "max_connections (its log says so), or it uses TLS (then add --tls, "
                        "or --ca FILE)", o->addr);
        else if (rc == FILL_IO || rc == FILL_CLOSED)
            say(o->cmd, "%s closed the connection before answering: it may be at its "
                        "max_connections (its log says so)", o->addr);
        return 1;
    }
    bool failed = print_if_error(r);
    cJSON_Delete(r);
    if (failed) return 1;
    if (!o->token) return 0;
    cJSON *auth = cJSON_CreateObject();
    cJSON_AddStringToObject(auth, "method", "bearer");
    cJSON_AddStringToObject(auth, "token", o->token);
    sent = send_request(l, "2", "AUTH", auth);
    cJSON_Delete(auth);
    if (!sent) {
        say(o->cmd, "cannot send to %s: %s", o->addr, strerror(errno));
        return 1;
    }
    r = wait_response(l, o->cmd, "2", REQUEST_TIMEOUT_MS, &rc);
    if (!r) return 1;
    failed = print_if_error(r);
    cJSON_Delete(r);
    return failed ? 1 : 0;
}

/* ---- output ----------------------------------------------------------------- */

static void indent(buf *b, int n)
{
    buf_putc(b, '\n');
    for (int i = 0; i < n; i++)
        buf_putc(b, ' ');
}

/* Two-space indented JSON; scalars in the canonical form json_write gives. */
static void pretty(buf *b, const cJSON *v, int depth)
{
    bool obj = cJSON_IsObject(v);
    if (!obj && !cJSON_IsArray(v)) {
        json_write(b, v, false);
        return;
    }
    if (!v->child) {
        buf_puts(b, obj ? "{}" : "[]");
        return;
    }
    buf_putc(b, obj ? '{' : '[');
    for (const cJSON *c = v->child; c; c = c->next) {
        indent(b, 2 * (depth + 1));
        if (obj) {
            json_write_str(b, c->string);
            buf_puts(b, ": ");
        }
        pretty(b, c, depth + 1);
        if (c->next) buf_putc(b, ',');
    }
    indent(b, 2 * depth);
    buf_putc(b, obj ? '}' : ']');
}

/* ---- shared option handling ---------------------------------------------------- */

enum {
    OPT_ADDR = 256,
    OPT_TOKEN,
    OPT_TLS,
    OPT_CA,
    OPT_CERT,
    OPT_KEY,
    OPT_INSTANCE,
    OPT_MACHINES,
    OPT_FROM_STATES,
    OPT_TO_STATES,
    OPT_EVENTS,
    OPT_NO_CTX,
    OPT_FROM_OFFSET,
    OPT_HELP
};

static void conn_defaults(conn_opts *o, const char *cmd)
{
    memset(o, 0, sizeof *o);
    o->cmd = cmd;
    o->addr = DEFAULT_ADDR;
    /* rstmdb-cli reads its token from RSTMDB_TOKEN; STMFS_TOKEN wins. */
    const char *t = getenv("STMFS_TOKEN");
    if (!t || !*t) t = getenv("RSTMDB_TOKEN");
    if (t && *t) o->token = t;
    /* The client certificate, read like the token, so a script's
     * environment can carry it. */
    const char *c = getenv("STMFS_CLIENT_CERT"), *k = getenv("STMFS_CLIENT_KEY");
    if (c && *c) o->cert = c;
    if (k && *k) o->key = k;
}

/* After the flags: --cert and --key go together, and imply TLS. 0, or 2
 * after printing why. */
static int conn_check(conn_opts *o)
{
    if (!o->cert != !o->key) {
        say(o->cmd,
            "%s without %s: a client certificate needs both the certificate and its "
            "private key (--cert FILE --key FILE, or $STMFS_CLIENT_CERT and "
            "$STMFS_CLIENT_KEY)",
            o->cert ? "--cert" : "--key", o->cert ? "--key" : "--cert");
        return 2;
    }
    if (o->cert) o->tls = true;
    return 0;
}

/* Handles the connection flags; false when opt is not one of them. */
static bool conn_flag(conn_opts *o, int opt)
{
    switch (opt) {
    case OPT_ADDR:
        o->addr = optarg;
        return true;
    case OPT_TOKEN:
        o->token = optarg;
        return true;
    case OPT_TLS:
        o->tls = true;
        return true;
    case OPT_CA:
        o->ca = optarg, o->tls = true;
        return true;
    case OPT_CERT:
        o->cert = optarg;
        return true;
    case OPT_KEY:
        o->key = optarg;
        return true;
    default:
        return false;
    }
}

/* After getopt_long returned ':' (missing value) or '?' (unknown). */
static int bad_flag(const char *cmd, char **argv, int ch)
{
    const char *word = optind > 0 && optind <= 1 << 20 ? argv[optind - 1] : "?";
    if (ch == ':')
        say(cmd, "option '%s' needs a value (see stmfs %s --help)", word, cmd);
    else if (optopt > 0 && optopt < 256)
        say(cmd, "unknown option '-%c' (see stmfs %s --help)", optopt, cmd);
    else
        say(cmd, "unknown option '%s' (see stmfs %s --help)", word, cmd);
    return 2;
}

#define CONN_OPTIONS                                                                               \
    {"addr", required_argument, 0, OPT_ADDR}, {"token", required_argument, 0, OPT_TOKEN},          \
        {"tls", no_argument, 0, OPT_TLS}, {"ca", required_argument, 0, OPT_CA},                    \
        {"cert", required_argument, 0, OPT_CERT}, {"key", required_argument, 0, OPT_KEY},          \
    {                                                                                              \
        "help", no_argument, 0, OPT_HELP                                                           \
    }

#define CONN_HELP                                                                                  \
    "  --addr HOST:PORT    server address (default " DEFAULT_ADDR ")\n"                            \
    "  --token TOKEN       authenticate with this bearer token after HELLO\n"                      \
    "                      (default: $STMFS_TOKEN, else $RSTMDB_TOKEN, else none)\n"               \
    "  --tls               connect with TLS, checking the server's certificate against\n"          \
    "                      the system CA store (default: plain TCP)\n"                             \
    "  --ca FILE           trust the CA certificates in FILE (PEM); implies --tls\n"               \
    "  --cert FILE         present this client certificate (PEM), for a server that\n"             \
    "                      requires one (mutual TLS); implies --tls; needs --key\n"                \
    "                      (default: $STMFS_CLIENT_CERT, else none)\n"                             \
    "  --key FILE          the private key of --cert (PEM, unencrypted)\n"                         \
    "                      (default: $STMFS_CLIENT_KEY, else none)\n"                              \
    "  --help              this text\n"

/* ---- call ----------------------------------------------------------------------- */

static void call_usage(FILE *f)
{
    fprintf(f, "usage: stmfs call [options] OP [PARAMS-JSON]\n"
               "\n"
               "Sends one RCP request (after HELLO, and AUTH when a token is set) and prints\n"
               "its result as indented JSON. An error answer is printed on stderr as\n"
               "`error: CODE: message` and the exit status is 1; bad usage exits 2.\n"
               "\n"
               "  OP                  an operation, any case, '-' or '_' (get-instance,\n"
               "                      GET_INSTANCE): HELLO AUTH PING BYE INFO PUT_MACHINE\n"
               "                      GET_MACHINE LIST_MACHINES CREATE_INSTANCE GET_INSTANCE\n"
               "                      LIST_INSTANCES DELETE_INSTANCE APPLY_EVENT BATCH\n"
               "                      SNAPSHOT_INSTANCE WAL_READ WAL_STATS COMPACT\n"
               "                      WATCH_INSTANCE WATCH_ALL UNWATCH\n"
               "  PARAMS-JSON         the params object (default {}); @FILE reads it from\n"
               "                      FILE, - from standard input\n" CONN_HELP "\n"
               "examples:\n"
               "  stmfs call ping\n"
               "  stmfs call get-instance '{\"instance_id\":\"order-1\"}'\n"
               "  stmfs call --addr 10.0.0.5:7401 --token s3cret apply_event \\\n"
               "      '{\"instance_id\":\"order-1\",\"event\":\"PAY\"}'\n");
}

/* "get-instance" -> "GET_INSTANCE"; NULL when it names no operation. */
static const char *op_lookup(const char *s)
{
    char up[32];
    size_t n = strlen(s);
    if (n >= sizeof up) return NULL;
    for (size_t i = 0; i <= n; i++)
        up[i] = s[i] == '-' ? '_' : (char)toupper((unsigned char)s[i]);
    for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++)
        if (!strcmp(up, op_names[i])) return op_names[i];
    return NULL;
}

static bool read_all(FILE *f, buf *out)
{
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_add(out, chunk, n);
    return !ferror(f);
}

/* Parses PARAMS-JSON (inline, @FILE or -). Returns 0 with *out set, or the
 * exit status after printing why. */
static int load_params(const char *arg, cJSON **out)
{
    buf text = {0};
    const char *src = "PARAMS-JSON";
    if (!strcmp(arg, "-")) {
        src = "standard input";
        if (!read_all(stdin, &text)) {
            say("call", "cannot read standard input: %s", strerror(errno));
            return 2;
        }
    } else if (arg[0] == '@') {
        src = arg + 1;
        FILE *f = fopen(arg + 1, "r");
        if (!f || !read_all(f, &text)) {
            say("call", "cannot read '%s': %s", arg + 1, strerror(errno));
            if (f) fclose(f);
            buf_free(&text);
            return 2;
        }
        fclose(f);
    } else {
        buf_puts(&text, arg);
    }
    stm_err err = {0};
    cJSON *v = json_parse(text.data ? text.data : "", text.len, &err);
    buf_free(&text);
    if (!v) {
        say("call", "%s is not valid JSON: %s", src, err.msg);
        return 2;
    }
    if (!cJSON_IsObject(v)) {
        say("call", "%s must be a JSON object ({...})", src);
        cJSON_Delete(v);
        return 2;
    }
    *out = v;
    return 0;
}

int cmd_call(int argc, char **argv)
{
    static const struct option longs[] = {CONN_OPTIONS, {0, 0, 0, 0}};
    conn_opts o;
    conn_defaults(&o, "call");
    optind = 0; /* full reset: main may have parsed before */
    opterr = 0;
    int ch;
    /* Options may follow OP too (GNU permutation); ':' first reports a
     * missing value apart from an unknown option. */
    while ((ch = getopt_long(argc, argv, ":", longs, NULL)) != -1) {
        if (conn_flag(&o, ch)) continue;
        if (ch == OPT_HELP) {
            call_usage(stdout);
            return 0;
        }
        return bad_flag("call", argv, ch);
    }
    if (conn_check(&o)) return 2;
    int nargs = argc - optind;
    if (nargs < 1 || nargs > 2) {
        say("call", nargs < 1 ? "missing OP (see stmfs call --help)"
                              : "too many arguments: give OP and at most one PARAMS-JSON");
        return 2;
    }
    const char *op = op_lookup(argv[optind]);
    if (!op) {
        say("call", "'%s' is not an RCP operation (see stmfs call --help)", argv[optind]);
        return 2;
    }
    cJSON *params = NULL;
    if (nargs == 2) {
        int rc = load_params(argv[optind + 1], &params);
        if (rc) return rc;
    }
    char host[256], port[8];
    if (!split_addr(o.addr, host, sizeof host, port, sizeof port)) {
        say("call", "--addr: '%s' is not HOST:PORT (e.g. 127.0.0.1:7401)", o.addr);
        cJSON_Delete(params);
        return 2;
    }

    link_t l;
    int rc = link_open(&l, &o);
    if (!rc) rc = handshake(&l, &o);
    if (!rc) {
        if (!send_request(&l, "3", op, params)) {
            say("call", "cannot send to %s: %s", o.addr, strerror(errno));
            rc = 1;
        }
    }
    cJSON *resp = NULL;
    if (!rc) {
        int frc;
        resp = wait_response(&l, "call", "3", REQUEST_TIMEOUT_MS, &frc);
        if (!resp) rc = 1;
    }
    if (resp) {
        if (print_if_error(resp)) {
            rc = 1;
        } else {
            const cJSON *result = json_get(resp, "result");
            buf out = {0};
            if (result)
                pretty(&out, result, 0);
            else
                buf_puts(&out, "{}");
            buf_putc(&out, '\n');
            fwrite(out.data, 1, out.len, stdout);
            buf_free(&out);
            if (fflush(stdout) != 0) rc = 1;
        }
        cJSON_Delete(resp);
    }
    cJSON_Delete(params);
    link_close(&l);
    return rc;
}

/* ---- watch ----------------------------------------------------------------------- */

static void watch_usage(FILE *f)
{
    fprintf(f, "usage: stmfs watch [options]\n"
               "\n"
               "Subscribes to transitions and prints each event as one JSON line on stdout\n"
               "until interrupted (Ctrl-C or SIGTERM), when it unsubscribes and exits 0.\n"
               "Without --instance it watches every instance (WATCH_ALL), narrowed by the\n"
               "filters; each filter is a comma-separated list, and an event must match\n"
               "every filter given.\n"
               "\n"
               "  --instance ID       watch one instance (WATCH_INSTANCE) (default: all)\n"
               "  --machines A,B      only these machines (default: any)\n"
               "  --from-states A,B   only transitions leaving these states (default: any)\n"
               "  --to-states A,B     only transitions entering these states (default: any)\n"
               "  --events A,B        only these events (default: any)\n"
               "  --no-ctx            leave the context out of events (default: included)\n"
               "  --from-offset N     first replay events from WAL offset N, then go live\n"
               "                      (default: live events only)\n" CONN_HELP);
}

static volatile sig_atomic_t stop_signal;
static int wake_pipe[2] = {-1, -1};

static void on_stop(int sig)
{
    stop_signal = sig;
    int saved = errno;
    if (write(wake_pipe[1], "x", 1) < 0) { /* nothing to do: the flag is set */
    }
    errno = saved;
}

/* "a,b,,c" -> ["a","b","c"]; NULL after printing why (empty list). */
static cJSON *csv_list(const char *flag, const char *v)
{
    cJSON *arr = cJSON_CreateArray();
    const char *s = v;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n) {
            char *item = xstrndup(s, n);
            cJSON_AddItemToArray(arr, cJSON_CreateString(item));
            free(item);
        }
        s += n + (e ? 1 : 0);
    }
    if (!arr->child) {
        say("watch", "%s: '%s' names nothing; give a comma-separated list", flag, v);
        cJSON_Delete(arr);
        return NULL;
    }
    return arr;
}

int cmd_watch(int argc, char **argv)
{
    static const struct option longs[] = {
        CONN_OPTIONS,
        {"instance", required_argument, 0, OPT_INSTANCE},
        {"machines", required_argument, 0, OPT_MACHINES},
        {"from-states", required_argument, 0, OPT_FROM_STATES},
        {"to-states", required_argument, 0, OPT_TO_STATES},
        {"events", required_argument, 0, OPT_EVENTS},
        {"no-ctx", no_argument, 0, OPT_NO_CTX},
        {"from-offset", required_argument, 0, OPT_FROM_OFFSET},
        {0, 0, 0, 0},
    };
    conn_opts o;
    conn_defaults(&o, "watch");
    const char *instance = NULL, *filter_flag = NULL;
    bool include_ctx = true, has_offset = false;
    unsigned long long from_offset = 0;
    cJSON *filters[4] = {0}; /* machines, from_states, to_states, events */
    static const char *const filter_keys[4] = {"machines", "from_states", "to_states", "events"};
    static const char *const filter_flags[4] = {"--machines", "--from-states", "--to-states",
                                                "--events"};
    int rc = 0;
    optind = 0;
    opterr = 0;
    int ch;
    while (!rc && (ch = getopt_long(argc, argv, ":", longs, NULL)) != -1) {
        if (conn_flag(&o, ch)) continue;
        switch (ch) {
        case OPT_HELP:
            watch_usage(stdout);
            for (int i = 0; i < 4; i++)
                cJSON_Delete(filters[i]);
            return 0;
        case OPT_INSTANCE:
            if (!*optarg) {
                say("watch", "--instance: give an instance id");
                rc = 2;
            }
            instance = optarg;
            break;
        case OPT_MACHINES:
        case OPT_FROM_STATES:
        case OPT_TO_STATES:
        case OPT_EVENTS: {
            int i = ch - OPT_MACHINES;
            filter_flag = filter_flags[i];
            cJSON_Delete(filters[i]);
            filters[i] = csv_list(filter_flags[i], optarg);
            if (!filters[i]) rc = 2;
            break;
        }
        case OPT_NO_CTX:
            include_ctx = false;
            break;
        case OPT_FROM_OFFSET: {
            char *end;
            errno = 0;
            from_offset = strtoull(optarg, &end, 10);
            if (!*optarg || *end || errno || optarg[0] == '-') {
                say("watch", "--from-offset: '%s' is not a WAL offset (a whole number)", optarg);
                rc = 2;
            }
            has_offset = true;
            break;
        }
        default:
            rc = bad_flag("watch", argv, ch);
        }
    }
    if (!rc && optind < argc) {
        say("watch", "unexpected argument '%s' (see stmfs watch --help)", argv[optind]);
        rc = 2;
    }
    if (!rc && conn_check(&o)) rc = 2;
    if (!rc && instance && filter_flag) {
        say("watch", "%s filters watching all instances; it cannot be combined with --instance",
            filter_flag);
        rc = 2;
    }
    char host[256], port[8];
    if (!rc && !split_addr(o.addr, host, sizeof host, port, sizeof port)) {
        say("watch", "--addr: '%s' is not HOST:PORT (e.g. 127.0.0.1:7401)", o.addr);
        rc = 2;
    }
    if (rc) {
        for (int i = 0; i < 4; i++)
            cJSON_Delete(filters[i]);
        return rc;
    }

    cJSON *params = cJSON_CreateObject();
    if (instance) cJSON_AddStringToObject(params, "instance_id", instance);
    cJSON_AddBoolToObject(params, "include_ctx", include_ctx);
    for (int i = 0; i < 4; i++)
        if (filters[i]) cJSON_AddItemToObject(params, filter_keys[i], filters[i]);
    if (has_offset) cJSON_AddNumberToObject(params, "from_offset", (double)from_offset);
    if (has_offset && from_offset > (1ull << 53)) {
        /* cJSON holds numbers as doubles: write the exact digits instead. */
        char digits[32];
        snprintf(digits, sizeof digits, "%llu", from_offset);
        cJSON_ReplaceItemInObjectCaseSensitive(params, "from_offset", cJSON_CreateRaw(digits));
    }

    /* Signals only set a flag and poke the pipe: the read loop notices and
     * unsubscribes in order, instead of work inside the handler. */
    if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        say("watch", "pipe: %s", strerror(errno));
        cJSON_Delete(params);
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    link_t l;
    rc = link_open(&l, &o);
    if (!rc) rc = handshake(&l, &o);
    l.wake_fd = wake_pipe[0];
    const char *op = instance ? "WATCH_INSTANCE" : "WATCH_ALL";
    if (!rc && !send_request(&l, "3", op, params)) {
        say("watch", "cannot send to %s: %s", o.addr, strerror(errno));
        rc = 1;
    }
    cJSON_Delete(params);
    char *sub_id = NULL;
    if (!rc && !stop_signal) {
        int frc;
        cJSON *resp = wait_response(&l, "watch", "3", REQUEST_TIMEOUT_MS, &frc);
        if (!resp) {
            rc = frc == FILL_WOKEN ? 0 : 1;
        } else {
            if (print_if_error(resp)) {
                rc = 1;
            } else {
                const cJSON *res = json_get(resp, "result");
                const cJSON *sid = json_get(res, "subscription_id");
                if (cJSON_IsString(sid)) sub_id = xstrdup(sid->valuestring);
                buf info = {0};
                json_write(&info, res, false);
                fprintf(stderr, "stmfs watch: subscribed %s\n", buf_cstr(&info));
                buf_free(&info);
            }
            cJSON_Delete(resp);
        }
    }
    /* Events: printed as the server wrote them, one per line, flushed at
     * once so a pipe reader sees each as it happens. */
    while (!rc && sub_id && !stop_signal) {
        const char *p;
        size_t n;
        int r = link_frame(&l, "watch", -1, &p, &n);
        if (r == FILL_WOKEN) break;
        if (r != FILL_OK) {
            if (r != FILL_ERROR) say("watch", "%s: %s", o.addr, fill_reason(&l, r));
            rc = 1;
            break;
        }
        /* Only events go to stdout; a stray response is not an event. */
        stm_err err = {0};
        cJSON *v = json_parse(p, n, &err);
        const cJSON *type = json_get(v, "type");
        bool is_event = cJSON_IsString(type) && !strcmp(type->valuestring, "event");
        cJSON_Delete(v);
        if (!is_event) continue;
        fwrite(p, 1, n, stdout);
        fputc('\n', stdout);
        if (fflush(stdout) != 0) {
            rc = 1; /* stdout went away: nothing left to watch for */
            break;
        }
    }
    if (sub_id && stop_signal && l.fd >= 0) {
        /* Unsubscribe politely; a server that does not answer in time is
         * left to notice the closed connection. */
        l.wake_fd = -1;
        cJSON *up = cJSON_CreateObject();
        cJSON_AddStringToObject(up, "subscription_id", sub_id);
        if (send_request(&l, "4", "UNWATCH", up)) {
            int frc;
            cJSON *resp = wait_response(&l, "watch", "4", UNWATCH_TIMEOUT_MS, &frc);
            cJSON_Delete(resp);
        }
        cJSON_Delete(up);
    }
    free(sub_id);
    link_close(&l);
    close(wake_pipe[0]);
    close(wake_pipe[1]);
    return rc;
}
