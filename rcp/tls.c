/*
 * tls.c - the connection's byte stream: plain non-blocking sockets, or
 * OpenSSL over them (TLS, and mTLS when tls.require_client_cert is set).
 *
 * The TLS handshake runs inside the event loop like everything else: each
 * readiness event advances it, and SSL's WANT_READ / WANT_WRITE say which
 * readiness to wait for next. No RCP byte is read before it completes.
 */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "rcp/internal.h"

static const char *ssl_errstr(void)
{
    static __thread char msg[256];
    unsigned long e = ERR_get_error();
    if (!e) return "unknown TLS error";
    ERR_error_string_n(e, msg, sizeof msg);
    ERR_clear_error();
    return msg;
}

SSL_CTX *rcp_tls_ctx_new(const stm_config *cfg, stm_err *err)
{
    if (!cfg->tls_cert_path || !cfg->tls_key_path) {
        stm_fail(err, STM_BAD_REQUEST, "tls.enabled needs tls.cert_path and tls.key_path");
        return NULL;
    }
    if (cfg->tls_require_client_cert && !cfg->tls_client_ca_path) {
        stm_fail(err, STM_BAD_REQUEST, "tls.require_client_cert needs tls.client_ca_path");
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        stm_fail(err, STM_INTERNAL_ERROR, "TLS: %s", ssl_errstr());
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Writes may be partial and may resume from a moved buffer: the output
     * buffer is compacted between attempts. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_path) != 1) {
        stm_fail(err, STM_BAD_REQUEST, "tls.cert_path %s: %s", cfg->tls_cert_path, ssl_errstr());
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_path, SSL_FILETYPE_PEM) != 1) {
        stm_fail(err, STM_BAD_REQUEST, "tls.key_path %s: %s", cfg->tls_key_path, ssl_errstr());
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        stm_fail(err, STM_BAD_REQUEST, "tls.key_path %s does not match tls.cert_path %s",
                 cfg->tls_key_path, cfg->tls_cert_path);
        goto fail;
    }
    if (cfg->tls_require_client_cert) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->tls_client_ca_path, NULL) != 1) {
            stm_fail(err, STM_BAD_REQUEST, "tls.client_ca_path %s: %s", cfg->tls_client_ca_path,
                     ssl_errstr());
            goto fail;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_client_ca_path);
        if (names) SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void rcp_tls_ctx_free(SSL_CTX *ctx)
{
    if (ctx) SSL_CTX_free(ctx);
}

/* Maps an SSL result to the plain-socket convention of internal.h. */
static ssize_t ssl_result(rcp_conn *c, int r)
{
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        c->tls_want_write = false;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        c->tls_want_write = true;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        if (errno == 0) return 0; /* EOF without close_notify */
        return -1;
    default:
        log_debug("rcp %s: TLS: %s", c->peer, ssl_errstr());
        errno = EPROTO;
        return -1;
    }
}

ssize_t rcp_io_read(rcp_conn *c, void *p, size_t n)
{
    if (!c->ssl) return recv(c->fd, p, n, 0);
    if (n > INT32_MAX) n = INT32_MAX;
    errno = 0;
    ERR_clear_error();
    int r = SSL_read(c->ssl, p, (int)n);
    if (r > 0) return r;
    return ssl_result(c, r);
}

ssize_t rcp_io_write(rcp_conn *c, const void *p, size_t n)
{
    if (!c->ssl) return send(c->fd, p, n, MSG_NOSIGNAL);
    if (n > INT32_MAX) n = INT32_MAX;
    errno = 0;
    ERR_clear_error();
    int r = SSL_write(c->ssl, p, (int)n);
    if (r > 0) return r;
    ssize_t x = ssl_result(c, r);
    if (x == 0) {
        errno = EPIPE;
        return -1;
    }
    return x;
}

int rcp_tls_handshake(rcp_conn *c)
{
    errno = 0;
    ERR_clear_error();
    int r = SSL_accept(c->ssl);
    if (r == 1) {
        c->tls_want_write = false;
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        c->tls_want_write = false;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        c->tls_want_write = true;
        return 0;
    }
    log_info("rcp %s: TLS handshake failed: %s", c->peer,
             e == SSL_ERROR_SSL ? ssl_errstr() : "connection closed");
    ERR_clear_error();
    return -1;
}
