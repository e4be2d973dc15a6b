/*
 * frame.c - the RCP codec (format and rules in frame.h).
 */
#include "rcp/frame.h"

#include <stdio.h>
#include <string.h>

#include "base/crc32c.h"
#include "base/json.h"

/* Names with their lengths: a request's op is found by its length first. */
#define OP(n) {n, sizeof n - 1}
static const struct {
    const char *name;
    size_t len;
} ops[RCP_OP_COUNT] = {
    OP("HELLO"),
    OP("AUTH"),
    OP("PING"),
    OP("BYE"),
    OP("INFO"),
    OP("PUT_MACHINE"),
    OP("GET_MACHINE"),
    OP("LIST_MACHINES"),
    OP("CREATE_INSTANCE"),
    OP("GET_INSTANCE"),
    OP("LIST_INSTANCES"),
    OP("DELETE_INSTANCE"),
    OP("APPLY_EVENT"),
    OP("BATCH"),
    OP("SNAPSHOT_INSTANCE"),
    OP("WAL_READ"),
    OP("WAL_STATS"),
    OP("COMPACT"),
    OP("WATCH_INSTANCE"),
    OP("WATCH_ALL"),
    OP("UNWATCH"),
};
#undef OP

int rcp_op_lookup(const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < RCP_OP_COUNT; i++)
        if (ops[i].len == n && memcmp(ops[i].name, name, n) == 0) return i;
    return -1;
}

const char *rcp_op_name(int op)
{
    return op >= 0 && op < RCP_OP_COUNT ? ops[op].name : "UNKNOWN";
}

void rcp_decoder_init(rcp_decoder *d, bool auto_detect)
{
    d->mode = RCP_WIRE_BINARY;
    d->auto_detect = auto_detect;
    d->scanned = 0;
    d->max_payload = RCP_MAX_PAYLOAD;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t be16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static rcp_dec_rc decode_binary(const rcp_decoder *d, const char *p, size_t n, const char **payload,
                                size_t *len, size_t *consumed, stm_err *err)
{
    const unsigned char *h = (const unsigned char *)p;
    if (n < RCP_HDR_LEN) return RCP_DEC_NEED;
    if (memcmp(h, "RCPX", 4) != 0) {
        stm_fail(err, STM_BAD_REQUEST, "frame error: invalid magic");
        return RCP_DEC_ERROR;
    }
    uint16_t version = be16(h + 4), flags = be16(h + 6), hlen = be16(h + 8);
    uint32_t plen = be32(h + 10), crc = be32(h + 14);
    if (version != 1) {
        stm_fail(err, STM_BAD_REQUEST, "frame error: unsupported version %u", version);
        return RCP_DEC_ERROR;
    }
    if (flags & ~RCP_FLAGS_KNOWN) {
        stm_fail(err, STM_BAD_REQUEST, "frame error: reserved flag bits 0x%04x", flags);
        return RCP_DEC_ERROR;
    }
    if (plen > d->max_payload) {
        stm_fail(err, STM_BAD_REQUEST,
                 "frame error: payload of %u bytes over the limit of %u (limits.max_frame_bytes)",
                 plen, d->max_payload);
        return RCP_DEC_ERROR;
    }
    size_t total = RCP_HDR_LEN + (size_t)hlen + plen;
    if (n < total) return RCP_DEC_NEED;
    const char *pl = p + RCP_HDR_LEN + hlen;
    if ((flags & RCP_FLAG_CRC) && crc32c(0, pl, plen) != crc) {
        stm_fail(err, STM_BAD_REQUEST, "frame error: CRC mismatch");
        return RCP_DEC_ERROR;
    }
    *payload = pl;
    *len = plen;
    *consumed = total;
    return RCP_DEC_FRAME;
}

static bool blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r') return false;
    return true;
}

static rcp_dec_rc decode_line(rcp_decoder *d, const char *p, size_t n, const char **payload,
                              size_t *len, size_t *consumed, stm_err *err)
{
    size_t skip = 0;
    for (;;) {
        /* Resume the search where the last call stopped: a long line that
         * arrives in many reads is scanned once, not once per read. */
        size_t from = skip + d->scanned;
        const char *nl = from < n ? memchr(p + from, '\n', n - from) : NULL;
        if (!nl) {
            d->scanned = n - skip;
            *consumed = skip;
            if (n - skip > (size_t)d->max_payload + 2) {
                stm_fail(err, STM_BAD_REQUEST,
                         "frame error: line over the limit of %u bytes (limits.max_frame_bytes)",
                         d->max_payload);
                return RCP_DEC_ERROR;
            }
            return RCP_DEC_NEED;
        }
        d->scanned = 0;
        size_t line = (size_t)(nl - (p + skip));
        size_t l = line;
        if (l && p[skip + l - 1] == '\r') l--;
        if (blank(p + skip, l)) {
            skip += line + 1;
            continue;
        }
        if (l > d->max_payload) {
            stm_fail(err, STM_BAD_REQUEST,
                     "frame error: line over the limit of %u bytes (limits.max_frame_bytes)",
                     d->max_payload);
            return RCP_DEC_ERROR;
        }
        *payload = p + skip;
        *len = l;
        *consumed = skip + line + 1;
        return RCP_DEC_FRAME;
    }
}

rcp_dec_rc rcp_decode(rcp_decoder *d, const char *p, size_t n, const char **payload, size_t *len,
                      size_t *consumed, stm_err *err)
{
    *consumed = 0;
    if (d->auto_detect && n > 0) {
        /* A binary frame starts with 'R'; a JSON line with '{' (or blanks). */
        if (p[0] == '{' || p[0] == ' ' || p[0] == '\n' || p[0] == '\r' || p[0] == '\t')
            d->mode = RCP_WIRE_JSONL;
        d->auto_detect = false;
    }
    if (d->mode == RCP_WIRE_JSONL) return decode_line(d, p, n, payload, len, consumed, err);
    return decode_binary(d, p, n, payload, len, consumed, err);
}

/* ---- envelope ------------------------------------------------------------ */

void rcp_request_free(rcp_request *r)
{
    if (r->arena)
        json_arena_free(r->arena);
    else
        cJSON_Delete(r->root);
    r->arena = NULL;
    r->root = NULL;
}

rcp_env_rc rcp_request_parse(const char *p, size_t n, rcp_request *r, stm_err *err)
{
    memset(r, 0, sizeof *r);
    r->op = -1;
    stm_err perr;
    r->arena = json_arena_new();
    r->root = json_parse_arena(r->arena, p, n, &perr);
    if (!r->root) {
        json_arena_free(r->arena);
        r->arena = NULL;
        stm_fail(err, STM_BAD_REQUEST, "%s", perr.msg);
        /* Text that is JSON to a lenient reading (a \u0000, a number past
         * a double, nesting past our limit; or '+1' and the like) still
         * names its id: answer that id instead of dropping the connection
         * and every request in flight on it. Garbage, and text that is
         * not UTF-8 (the id would be echoed), still closes. */
        const char *end = NULL;
        cJSON *loose = json_utf8_valid(p, n) ? cJSON_ParseWithLengthOpts(p, n, &end, false) : NULL;
        while (loose && end < p + n &&
               (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
            end++;
        const cJSON *id = loose && end == p + n ? json_get(loose, "id") : NULL;
        if (cJSON_IsString(id)) {
            r->root = loose;
            r->id = id->valuestring;
            return RCP_ENV_BAD;
        }
        cJSON_Delete(loose);
        return RCP_ENV_FATAL;
    }
    if (!cJSON_IsObject(r->root)) {
        stm_fail(err, STM_BAD_REQUEST, "invalid request: the message is not a JSON object");
        return RCP_ENV_FATAL;
    }
    /* one pass over the envelope (its keys are unique: json_parse) */
    const cJSON *id = NULL, *type = NULL, *op = NULL, *params = NULL;
    for (const cJSON *k = r->root->child; k; k = k->next) {
        if (strcmp(k->string, "id") == 0) id = k;
        else if (strcmp(k->string, "type") == 0) type = k;
        else if (strcmp(k->string, "op") == 0) op = k;
        else if (strcmp(k->string, "params") == 0) params = k;
    }
    if (!cJSON_IsString(id)) {
        stm_fail(err, STM_BAD_REQUEST, "invalid request: %s `id`",
                 id ? "invalid type for field" : "missing field");
        return RCP_ENV_FATAL;
    }
    r->id = id->valuestring;
    /* From here on the request can be answered: an error is a response. */
    if (!cJSON_IsString(type)) {
        stm_fail(err, STM_BAD_REQUEST, "invalid request: %s `type`",
                 type ? "invalid type for field" : "missing field");
        return RCP_ENV_BAD;
    }
    if (!cJSON_IsString(op)) {
        stm_fail(err, STM_BAD_REQUEST, "invalid request: %s `op`",
                 op ? "invalid type for field" : "missing field");
        return RCP_ENV_BAD;
    }
    r->op = rcp_op_lookup(op->valuestring);
    if (r->op < 0) {
        char shown[64];
        size_t l = strlen(op->valuestring);
        snprintf(shown, sizeof shown, "%.48s%s", op->valuestring, l > 48 ? "..." : "");
        stm_fail(err, STM_BAD_REQUEST, "invalid request: unknown operation `%s`", shown);
        return RCP_ENV_BAD;
    }
    r->params = cJSON_IsNull(params) ? NULL : params;
    return RCP_ENV_OK;
}

/* ---- output -------------------------------------------------------------- */

void rcp_frame_header(unsigned char h[RCP_HDR_LEN], const void *payload, size_t len)
{
    uint32_t crc = crc32c(0, payload, len);
    memcpy(h, "RCPX", 4);
    h[4] = 0, h[5] = 1; /* version 1 */
    h[6] = 0, h[7] = 1; /* CRC present */
    h[8] = 0, h[9] = 0; /* no header extension */
    h[10] = (unsigned char)(len >> 24), h[11] = (unsigned char)(len >> 16);
    h[12] = (unsigned char)(len >> 8), h[13] = (unsigned char)len;
    h[14] = (unsigned char)(crc >> 24), h[15] = (unsigned char)(crc >> 16);
    h[16] = (unsigned char)(crc >> 8), h[17] = (unsigned char)crc;
}

size_t rcp_msg_begin(buf *out, enum rcp_wire mode)
{
    size_t start = out->len;
    if (mode == RCP_WIRE_BINARY) {
        buf_reserve(out, RCP_HDR_LEN + 256);
        memset(out->data + out->len, 0, RCP_HDR_LEN);
        out->len += RCP_HDR_LEN;
        out->data[out->len] = 0;
    }
    return start;
}

bool rcp_msg_end(buf *out, size_t start, enum rcp_wire mode)
{
    size_t hdr = mode == RCP_WIRE_BINARY ? RCP_HDR_LEN : 0;
    size_t plen = out->len - start - hdr;
    if (plen > RCP_MAX_PAYLOAD) {
        out->len = start;
        out->data[start] = 0;
        return false;
    }
    if (mode == RCP_WIRE_BINARY)
        rcp_frame_header((unsigned char *)out->data + start, out->data + start + hdr, plen);
    else
        buf_putc(out, '\n');
    return true;
}

static void begin_response(buf *out, const char *id)
{
    buf_puts(out, "{\"type\":\"response\",\"id\":");
    json_write_str(out, id);
}

bool rcp_write_ok(buf *out, enum rcp_wire mode, const char *id, const cJSON *result)
{
    size_t start = rcp_msg_begin(out, mode);
    begin_response(out, id);
    buf_puts(out, ",\"status\":\"ok\",\"result\":");
    if (result)
        json_write(out, result, true);
    else
        buf_puts(out, "{}");
    buf_putc(out, '}');
    return rcp_msg_end(out, start, mode);
}

bool rcp_write_error(buf *out, enum rcp_wire mode, const char *id, stm_code code,
                     const char *message)
{
    if (code <= STM_OK || code >= STM_CODE_COUNT) code = STM_INTERNAL_ERROR;
    size_t start = rcp_msg_begin(out, mode);
    begin_response(out, id);
    buf_puts(out, ",\"status\":\"error\",\"error\":{\"code\":\"");
    buf_puts(out, stm_code_name(code));
    buf_puts(out, "\",\"message\":");
    json_write_str(out, message ? message : "");
    buf_puts(out, stm_code_retryable(code) ? ",\"retryable\":true}}" : ",\"retryable\":false}}");
    return rcp_msg_end(out, start, mode);
}

bool rcp_write_result_or_error(buf *out, enum rcp_wire mode, const char *id, const cJSON *result)
{
    if (rcp_write_ok(out, mode, id, result)) return true;
    return rcp_write_error(out, mode, id, STM_BAD_REQUEST,
                           "invalid request: the response would exceed the 16 MiB frame limit; "
                           "ask for less (limit, offset, from_offset)");
}
