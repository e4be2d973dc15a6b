/*
 * json.h - strict parsing and canonical writing of JSON, over cJSON.
 *
 * Canonical text is what rstmdb emits: compact, raw UTF-8, only '"', '\\'
 * and control characters escaped (\n \r \t \b \f, others \u00xx), '/' not
 * escaped, integers exact, other numbers in their shortest round-trip form
 * ("99.99", "1e100"). With sort_keys, object keys are sorted by bytes at
 * every level; that is how user data (ctx, payload, definitions) is stored
 * and hashed, so equal values always give equal bytes.
 *
 * cJSON's GetObjectItem is case-INsensitive: always use
 * cJSON_GetObjectItemCaseSensitive (or json_get below).
 */
#ifndef STM_JSON_H
#define STM_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"

#define JSON_MAX_DEPTH 128

/* Parses exactly len bytes as one JSON value (RFC 8259, as strict as
 * serde_json: no leading zeros or '+', no raw control characters in
 * strings, only space, tab, CR and LF as whitespace), with valid UTF-8 in
 * strings, no \u0000, no number beyond a double's range, and nesting <=
 * JSON_MAX_DEPTH. Duplicate object keys: the last one wins (earlier ones
 * are removed; json_duplicate_key names the first such key of an object).
 * On failure returns NULL and sets err (BAD_REQUEST) with the byte position
 * and what was wrong there. Caller owns the result. */
cJSON *json_parse(const char *text, size_t len, stm_err *err);

/* For an object that json_parse built: a key that appeared more than once
 * in it, or NULL. Where free-form JSON keeps the last one (contexts, as
 * serde_json does), a fixed structure refuses it (a machine definition, as
 * rstmdb's typed one does). Kept in the object's valuestring, which cJSON
 * leaves unused for objects (cJSON_Delete frees it, cJSON_Duplicate copies
 * it). */
const char *json_duplicate_key(const cJSON *obj);

/* A region that parse trees can be built in and dropped from all at once,
 * for trees that live as long as one request: building and freeing one
 * node at a time was a fifth of an RCP request's instructions. */
typedef struct json_arena json_arena;
json_arena *json_arena_new(void);
/* json_parse, with every node and string from a. Such a tree must never
 * reach cJSON_Delete, nor a cJSON call that frees or replaces a node or
 * string of it (cJSON_Duplicate of a subtree is fine: the copy is malloc's).
 * It lives until json_arena_reset(a), which drops every tree of a. */
cJSON *json_parse_arena(json_arena *a, const char *text, size_t len, stm_err *err);
/* json_parse_arena for lines stmfs wrote itself and has checked (a
 * snapshot, under its CRC): no key repeats there, so no duplicate pass (an
 * eighth of loading a snapshot). */
cJSON *json_parse_arena_own(json_arena *a, const char *text, size_t len, stm_err *err);
void json_arena_reset(json_arena *a);
void json_arena_free(json_arena *a);

/* Parses text that stmfs itself wrote canonical (stored contexts): no UTF-8
 * or duplicate-key pass. NULL only if it is not JSON at all. */
cJSON *json_parse_trusted(const char *text, size_t len);

/* Appends the canonical text of v. cJSON_Raw nodes are copied verbatim (they
 * must already be canonical: that is how stored ctx text is embedded). */
void json_write(buf *out, const cJSON *v, bool sort_keys);
/* Appends s as a quoted, escaped JSON string (n bytes, may contain NUL). */
void json_write_strn(buf *out, const char *s, size_t n);
void json_write_str(buf *out, const char *s);
/* Appends a number in canonical form. */
void json_write_num(buf *out, double d);
/* What json_write_strn / json_write_num would append, in bytes, without
 * writing it (exact: sizes of rendered files are computed with them). */
size_t json_strn_len(const char *s, size_t n);
size_t json_str_len(const char *s); /* json_strn_len(s, strlen(s)) in one pass */
size_t json_num_len(double d);
/* malloc'd canonical text of v (sorted keys); caller frees. */
char *json_canonical(const cJSON *v, size_t *len);

/* If the JSON value at the start of [p, p+n) is written exactly as
 * json_write(sort_keys) would write it back, returns its length; otherwise
 * (not canonical, not JSON, or merely unusual: fractions, exponents,
 * integers past 15 digits, escapes in keys, \u0000) returns 0 and the
 * caller takes the parse-and-rewrite path. Lets text that stmfs wrote be
 * used as stored without a parse tree; never allocates. */
size_t json_canonical_len(const char *p, size_t n);

/* The length of the JSON value at the start of [p, p+n) in compact text
 * (what stmfs stores), checking only its structure; 0 if malformed. For
 * stepping over values that are not read. */
size_t json_value_len(const char *p, size_t n);

/* The shallow merge of two canonical objects, as canonical text: b's members
 * replace or join a's. Appends to out and returns true; returns false (out
 * unchanged) when either is not a canonical object or holds a backslash
 * anywhere (escaped keys sort differently as text), for the caller's
 * tree path. */
bool json_merge_canonical(buf *out, const char *a, size_t an, const char *b, size_t bn);

/* True when [s, s+n) is well-formed UTF-8 (no overlongs, no surrogates). */
bool json_utf8_valid(const char *s, size_t n);

/* Case-sensitive member lookup; NULL when obj is not an object or lacks key. */
cJSON *json_get(const cJSON *obj, const char *key);
/* The number v as an int64, 0 when v is not a number or out of range (no
 * undefined conversion on hostile input). */
int64_t json_int64(const cJSON *v);
/* True when v is a number holding an integer in [0, max]; stores it in *out. */
bool json_get_uint(const cJSON *v, uint64_t max, uint64_t *out);

#endif
