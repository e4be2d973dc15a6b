/*
 * fuzz_frame.c - the RCP codec and request dispatch, from the bytes a
 * client sends.
 *
 * The input is a connection's byte stream, as is (binary RCPX frames, or
 * JSON lines when it starts with '{'; seeds are real client sessions).
 *   1. Codec: rcp_decode over the whole input at once, and again with the
 *      input arriving in small pieces (1 to 7 bytes, from the input's
 *      length) the way a socket delivers it; both must give the same
 *      messages and end the same way (needing more, or broken). Each
 *      message goes through rcp_request_parse; every request with an id
 *      is answered with rcp_write_ok / rcp_write_error (params echoed as
 *      the result), and that output must decode back to one whole message
 *      of the same payload.
 *   2. Dispatch: when at least one request parsed, the same pieces are fed
 *      to a connection of a server with no socket (the shape the unit tests
 *      of rcp/ use) over a real engine in a fresh data dir, and
 *      rcp_session_process_input runs every request: HELLO mode switches,
 *      BATCH, PUT_MACHINE, APPLY_EVENT, WATCH_*, BYE... Its watches are
 *      drained, then everything is freed and the dir emptied, so an input
 *      never sees the state of the one before.
 *
 * Build: meson setup with CC=clang -Dfuzz=true (see tests/fuzz/meson.build).
 * Run:   build-fuzz/tests/fuzz/fuzz_frame tests/fuzz/corpus/frame -runs=0   (replay)
 *        build-fuzz/tests/fuzz/fuzz_frame -max_len=65536 WORKDIR tests/fuzz/corpus/frame
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/json.h"
#include "base/log.h"
#include "fuzz_tmp.h"
#include "rcp/frame.h"
#include "rcp/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSGS 4096

typedef struct {
    size_t n;
    buf all;              /* payloads back to back */
    size_t len[MAX_MSGS];
    rcp_dec_rc end;
} msgs;

static void add(msgs *m, const char *p, size_t n)
{
    if (m->n < MAX_MSGS) m->len[m->n] = n;
    m->n++;
    buf_add(&m->all, p, n);
}

/* Decodes p[0..n) arriving `piece` bytes at a time (0 = all at once). */
static void decode_all(const char *p, size_t n, size_t piece, msgs *m)
{
    rcp_decoder d;
    rcp_decoder_init(&d, true);
    buf in = {0};
    size_t off = 0, fed = 0;
    m->end = RCP_DEC_NEED;
    for (;;) {
        if (fed < n) {
            size_t k = piece ? piece : n;
            if (k > n - fed) k = n - fed;
            buf_add(&in, p + fed, k);
            fed += k;
        }
        for (;;) {
            const char *pl;
            size_t len, used;
            stm_err err;
            rcp_dec_rc rc = rcp_decode(&d, buf_cstr(&in) + off, in.len - off, &pl, &len, &used,
                                       &err);
            if (used > in.len - off) abort();
            off += used;
            if (rc == RCP_DEC_FRAME) {
                if (!used) abort();
                add(m, pl, len);
                continue;
            }
            if (rc == RCP_DEC_ERROR) {
                if (err.code != STM_BAD_REQUEST) abort();
                m->end = RCP_DEC_ERROR;
                buf_free(&in);
                return;
            }
            break;
        }
        if (fed == n) break;
    }
    buf_free(&in);
}

/* Writes a response for r and checks that it decodes back to itself. */
static void echo(const rcp_request *r, enum rcp_wire mode)
{
    buf out = {0};
    bool ok = r->params ? rcp_write_ok(&out, mode, r->id, r->params)
                        : rcp_write_error(&out, mode, r->id, STM_BAD_REQUEST, "fuzz");
    if (!ok) {
        buf_free(&out);
        return;
    }
    rcp_decoder d;
    rcp_decoder_init(&d, false);
    d.mode = mode;
    const char *pl;
    size_t len, used;
    stm_err err;
    if (rcp_decode(&d, out.data, out.len, &pl, &len, &used, &err) != RCP_DEC_FRAME ||
        used != out.len)
        abort();
    cJSON *v = json_parse(pl, len, NULL);
    if (!v || !cJSON_IsString(json_get(v, "id")) ||
        strcmp(json_get(v, "id")->valuestring, r->id) != 0)
        abort();
    cJSON_Delete(v);
    buf_free(&out);
}

/* Parses every message; returns how many were requests with an op. */
static size_t envelopes(const msgs *m, enum rcp_wire mode)
{
    size_t ok = 0, pos = 0;
    for (size_t i = 0; i < m->n && i < MAX_MSGS; i++) {
        rcp_request r;
        stm_err err = {0};
        rcp_env_rc rc = rcp_request_parse(m->all.data + pos, m->len[i], &r, &err);
        pos += m->len[i];
        if (rc == RCP_ENV_OK) {
            if (r.op < 0 || r.op >= RCP_OP_COUNT || rcp_op_lookup(rcp_op_name(r.op)) != r.op)
                abort();
            ok++;
        }
        if (rc != RCP_ENV_FATAL) {
            if (!r.id) abort();
            echo(&r, mode);
        }
        rcp_request_free(&r);
    }
    return ok;
}

static void session(const char *p, size_t n, size_t piece)
{
    fuzz_tmp_clear();
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data", fuzz_tmp_dir());
    eng_opts o;
    eng_opts_defaults(&o);
    o.data_dir = dir;
    o.segment_size = 1u << 20;
    o.sync = (wal_sync_policy){WAL_SYNC_NEVER, 0};
    o.compact_enabled = false;
    eng *e;
    stm_err err;
    if (eng_open(&o, &e, NULL, &err) != STM_OK) {
        fprintf(stderr, "fuzz_frame: cannot open an engine in %s: %s\n", dir, err.msg);
        abort();
    }
    rcp_server s;
    memset(&s, 0, sizeof s);
    s.e = e;
    s.wake_fd = -1;
    s.listen_fd = -1;
    s.metrics_fd = -1;
    rcp_conn c;
    memset(&c, 0, sizeof c);
    c.srv = &s;
    c.fd = -1;
    snprintf(c.peer, sizeof c.peer, "fuzz");
    rcp_decoder_init(&c.dec, true);
    c.wire_out = RCP_WIRE_BINARY;
    c.authenticated = true;

    for (size_t fed = 0; fed < n && !c.closing;) {
        size_t k = piece < n - fed ? piece : n - fed;
        buf_add(&c.in, p + fed, k);
        fed += k;
        rcp_session_process_input(&c);
        while (c.job) { /* COMPACT runs on a thread: wait for it as the loop would */
            while (!rcp_job_finish(&c))
                usleep(1000);
            c.read_paused = false;
            rcp_session_process_input(&c);
        }
        rcp_watches_drain(&c);
        /* The socket layer would send what is ready; here it is dropped. */
        if (c.read_paused) {
            c.out_off = c.ready_end;
            c.read_paused = false;
        }
    }
    rcp_watches_drain(&c);
    rcp_watches_free(&c);
    rcp_jobs_reap(&s, true);
    buf_free(&c.in);
    buf_free(&c.out);
    free(c.marks);
    eng_close(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool quiet;
    if (!quiet) {
        log_setup(NULL, LOG_ERROR); /* per-request debug lines would drown the fuzzer */
        quiet = true;
    }
    const char *p = (const char *)data;
    size_t piece = 1 + size % 7;
    msgs whole = {0}, pieces = {0};
    decode_all(p, size, 0, &whole);
    decode_all(p, size, piece, &pieces);
    if (whole.n != pieces.n || whole.end != pieces.end || whole.all.len != pieces.all.len ||
        (whole.all.len && memcmp(whole.all.data, pieces.all.data, whole.all.len) != 0))
        abort();
    for (size_t i = 0; i < whole.n && i < MAX_MSGS; i++)
        if (whole.len[i] != pieces.len[i]) abort();

    enum rcp_wire mode = size && (p[0] == '{' || p[0] == ' ' || p[0] == '\n' || p[0] == '\r' ||
                                  p[0] == '\t')
                             ? RCP_WIRE_JSONL
                             : RCP_WIRE_BINARY;
    size_t requests = envelopes(&whole, mode);
    buf_free(&whole.all);
    buf_free(&pieces.all);
    if (requests) session(p, size, piece);
    return 0;
}
