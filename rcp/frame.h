/*
 * frame.h - the RCP codec: binary RCPX frames and JSON lines in, request
 * envelopes out; responses and stream events written straight into a
 * connection's output buffer. Knows nothing of sockets or of the engine.
 *
 * BINARY FRAME (reference rcp-protocol.md §2), all integers big-endian:
 *
 *   0  4  magic "RCPX"
 *   4  2  version, must be 1
 *   6  2  flags: 0x1 CRC present, 0x2 compressed, 0x4 stream, 0x8 end of
 *         stream (the last three accepted and ignored); any other bit is an
 *         error
 *   8  2  header_len: extension bytes after the header, skipped
 *  10  4  payload_len, at most 16 MiB (RCP_MAX_PAYLOAD)
 *  14  4  CRC-32C of the payload, checked only when flag 0x1 is set
 *  18     header extension, then the payload (UTF-8 JSON)
 *
 * The checks run in the order of §2.4: magic, version, flags and length as
 * soon as the 18 header bytes are there (a bad length is refused before
 * anything is buffered for it), the CRC once the frame is complete.
 *
 * JSONL: one JSON text per line ending in '\n' ("\r\n" tolerated), at most
 * 16 MiB; blank lines are skipped. Unlike rstmdb, input switches to lines
 * too once HELLO selects jsonl, and a connection whose first byte is '{'
 * speaks jsonl from the start.
 *
 * Every frame the server writes has version 1, flags 0x0001, header_len 0
 * and the payload's CRC, which is what both real clients check.
 */
#ifndef STM_RCP_FRAME_H
#define STM_RCP_FRAME_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/json.h"

#define RCP_HDR_LEN 18
#define RCP_MAX_PAYLOAD (16u * 1024 * 1024)
#define RCP_FLAG_CRC 0x0001u
#define RCP_FLAGS_KNOWN 0x000Fu

enum rcp_wire { RCP_WIRE_BINARY = 0, RCP_WIRE_JSONL = 1 };

/* Incremental decoder state of one connection. */
typedef struct {
    enum rcp_wire mode;
    bool auto_detect; /* the first byte still decides the mode */
    size_t scanned;   /* jsonl: bytes already searched for '\n' */
    uint32_t max_payload; /* incoming only, <= RCP_MAX_PAYLOAD; init sets the maximum */
} rcp_decoder;

void rcp_decoder_init(rcp_decoder *d, bool auto_detect);

typedef enum {
    RCP_DEC_FRAME, /* *payload, *len hold one message; *consumed bytes used */
    RCP_DEC_NEED,  /* not enough bytes yet (*consumed may skip blank lines) */
    RCP_DEC_ERROR  /* the stream is broken; err says how; close */
} rcp_dec_rc;

/* Looks at the bytes [p, p+n) of the connection's input. The payload points
 * into p. */
rcp_dec_rc rcp_decode(rcp_decoder *d, const char *p, size_t n, const char **payload, size_t *len,
                      size_t *consumed, stm_err *err);

/* ---- operations ---------------------------------------------------------- */

enum rcp_op {
    RCP_OP_HELLO,
    RCP_OP_AUTH,
    RCP_OP_PING,
    RCP_OP_BYE,
    RCP_OP_INFO,
    RCP_OP_PUT_MACHINE,
    RCP_OP_GET_MACHINE,
    RCP_OP_LIST_MACHINES,
    RCP_OP_CREATE_INSTANCE,
    RCP_OP_GET_INSTANCE,
    RCP_OP_LIST_INSTANCES,
    RCP_OP_DELETE_INSTANCE,
    RCP_OP_APPLY_EVENT,
    RCP_OP_BATCH,
    RCP_OP_SNAPSHOT_INSTANCE,
    RCP_OP_WAL_READ,
    RCP_OP_WAL_STATS,
    RCP_OP_COMPACT,
    RCP_OP_WATCH_INSTANCE,
    RCP_OP_WATCH_ALL,
    RCP_OP_UNWATCH,
    RCP_OP_COUNT
};

/* -1 when name is not one of the 21 exact upper-case names. */
int rcp_op_lookup(const char *name);
const char *rcp_op_name(int op);

/* ---- request envelope ---------------------------------------------------- */

typedef struct {
    cJSON *root;         /* owned; free with rcp_request_free */
    json_arena *arena;   /* where root lives; NULL: root is malloc's */
    const char *id;      /* points into root */
    int op;              /* enum rcp_op */
    const cJSON *params; /* NULL when absent or null (= {}) */
} rcp_request;

typedef enum {
    RCP_ENV_OK,
    RCP_ENV_BAD,  /* invalid, but r->id was recovered: answer BAD_REQUEST */
    RCP_ENV_FATAL /* no id to answer to: close the connection */
} rcp_env_rc;

/* Parses one payload (§5.1). On RCP_ENV_BAD r->id is valid and err holds
 * the message; the caller frees r either way. */
rcp_env_rc rcp_request_parse(const char *p, size_t n, rcp_request *r, stm_err *err);
void rcp_request_free(rcp_request *r);

/* ---- output -------------------------------------------------------------- */

/* Starts a message at the end of out (reserving the binary header) and
 * returns its start; rcp_msg_end fills the header and CRC, or appends the
 * newline. rcp_msg_end returns false, and cuts out back to start, when the
 * payload is over RCP_MAX_PAYLOAD. */
size_t rcp_msg_begin(buf *out, enum rcp_wire mode);
bool rcp_msg_end(buf *out, size_t start, enum rcp_wire mode);

/* Whole messages. rcp_write_ok writes result with sorted keys; NULL = {}.
 * Both return false when nothing could be written (over the limit). */
bool rcp_write_ok(buf *out, enum rcp_wire mode, const char *id, const cJSON *result);
bool rcp_write_error(buf *out, enum rcp_wire mode, const char *id, stm_code code,
                     const char *message);
/* An ok response whose result is too big becomes this error instead. */
bool rcp_write_result_or_error(buf *out, enum rcp_wire mode, const char *id, const cJSON *result);

/* Fills an 18-byte header for a payload (flags CRC present). */
void rcp_frame_header(unsigned char hdr[RCP_HDR_LEN], const void *payload, size_t len);

#endif
