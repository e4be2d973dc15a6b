/*
 * config.c - defaults, then rstmdb's YAML file, then the environment.
 *
 * YAML is read with libyaml's document API: the files are small, and a
 * tree lets a value be looked at whole (fsync_policy comes as a plain
 * scalar, a tagged scalar `!every_n 100` or a one-key map `every_n: 100`).
 * Unknown sections and keys are ignored as rstmdb ignores them, so a
 * config written for rstmdb works unchanged; a known key with a bad value
 * stops startup, naming the key and the value, because running with a
 * setting the user did not ask for is worse than not starting.
 *
 * Environment: for each variable of rstmdb (RSTMDB_BIND, ...) the STMFS_
 * variable of the same suffix is read after it and so wins. Unlike rstmdb,
 * a value that does not parse is an error naming the variable instead of
 * being silently replaced by a default. An empty variable counts as unset
 * (`VAR= stmfs ...` is the usual way to switch one off for a command).
 *
 * Every table below is one description per key, used by both the YAML and
 * the environment path so the two can never parse a key differently.
 */
#include "src/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "base/buf.h"
#include "base/log.h"
#include "engine/def.h"
#include "engine/guard.h"
#include "rcp/frame.h"

/* WAL offsets keep 40 bits for the position inside a segment (wal.h), so a
 * segment must stay below 1 TiB = 2^20 MiB. */
#define MAX_SEGMENT_MB ((1ull << 20) - 1)
#define MAX_FUSE_THREADS 100000u
/* A definition, a context or a payload must leave room in its WAL record
 * (16 MiB) for the rest of the entry; an event's record carries both the
 * payload and the merged context. */
#define MAX_RECORD_PART (8u << 20)
/* A line of a mount's events or new file (the mount's FS_MAX_LINE). */
#define FS_LINE_CEILING (16u << 20)

typedef enum {
    K_U64, /* whole number in [min, max] */
    K_BOOL,
    K_STR,    /* non-empty string */
    K_PATH,   /* optional string: null/empty leaves it unset */
    K_ADDR,   /* literal IP:PORT */
    K_BIND,   /* K_ADDR or "none" */
    K_FSYNC,  /* wal_sync_policy */
    K_HASHES, /* list of SHA-256 hex strings */
    K_SECS,   /* non-negative seconds, fractional allowed (double) */
    K_LEVEL,  /* log level name */
} kind;

typedef struct {
    const char *section, *key; /* YAML section.key */
    const char *env;           /* suffix after RSTMDB_/STMFS_; NULL = none */
    bool stmfs_only;           /* rstmdb has no such variable */
    kind kind;
    size_t off;   /* offset in stm_config */
    size_t width; /* sizeof the field, for K_U64 */
    uint64_t min, max;
} key_desc;

#define F(field) offsetof(stm_config, field), sizeof(((stm_config *)0)->field)

static const key_desc keys[] = {
    {"network", "bind_addr", "BIND", false, K_BIND, F(bind_addr), 0, 0},
    {"network", "idle_timeout_secs", "IDLE_TIMEOUT", false, K_U64, F(idle_timeout_secs), 0,
     UINT64_MAX / 1000}, /* kept in ms somewhere: must not overflow */
    {"network", "max_connections", "MAX_CONNECTIONS", false, K_U64, F(max_connections), 1, 1000000},
    {"storage", "data_dir", "DATA", false, K_STR, F(data_dir), 0, 0},
    /* 0 would put every record in a segment of its own (a file, an fsync
     * and a directory fsync each) */
    {"storage", "wal_segment_size_mb", "WAL_SEGMENT_SIZE_MB", false, K_U64, F(wal_segment_size_mb),
     1, MAX_SEGMENT_MB},
    {"storage", "fsync_policy", "FSYNC_POLICY", false, K_FSYNC, F(fsync_policy), 0, 0},
    {"storage", "max_machine_versions", "MAX_MACHINE_VERSIONS", false, K_U64,
     F(max_machine_versions), 0, UINT32_MAX},
    {"storage", "idempotency_max_keys", "IDEMPOTENCY_MAX_KEYS", true, K_U64,
     F(idempotency_max_keys), 0, UINT64_MAX},
    {"compaction", "enabled", "COMPACT_ENABLED", false, K_BOOL, F(compact_enabled), 0, 0},
    {"compaction", "events_threshold", "COMPACT_EVENTS", false, K_U64, F(compact_events_threshold),
     0, UINT64_MAX},
    {"compaction", "size_threshold_mb", "COMPACT_SIZE_MB", false, K_U64,
     F(compact_size_threshold_mb), 0, UINT64_MAX >> 20},
    {"compaction", "min_interval_secs", "COMPACT_INTERVAL", false, K_U64,
     F(compact_min_interval_secs), 0, UINT64_MAX / 1000},
    {"auth", "required", "AUTH_REQUIRED", false, K_BOOL, F(auth_required), 0, 0},
    {"auth", "token_hashes", "AUTH_TOKEN_HASH", false, K_HASHES, F(token_hashes), 0, 0},
    {"auth", "secrets_file", "AUTH_SECRETS_FILE", false, K_PATH, F(secrets_file), 0, 0},
    {"tls", "enabled", "TLS_ENABLED", false, K_BOOL, F(tls_enabled), 0, 0},
    {"tls", "cert_path", "TLS_CERT", false, K_PATH, F(tls_cert_path), 0, 0},
    {"tls", "key_path", "TLS_KEY", false, K_PATH, F(tls_key_path), 0, 0},
    {"tls", "require_client_cert", "TLS_REQUIRE_CLIENT_CERT", false, K_BOOL,
     F(tls_require_client_cert), 0, 0},
    {"tls", "client_ca_path", "TLS_CLIENT_CA", false, K_PATH, F(tls_client_ca_path), 0, 0},
    {"metrics", "enabled", "METRICS_ENABLED", false, K_BOOL, F(metrics_enabled), 0, 0},
    {"metrics", "bind_addr", "METRICS_BIND", false, K_ADDR, F(metrics_bind_addr), 0, 0},
    {"fuse", "attr_timeout", "FUSE_ATTR_TIMEOUT", true, K_SECS, F(fuse_attr_timeout), 0, 0},
    {"fuse", "entry_timeout", "FUSE_ENTRY_TIMEOUT", true, K_SECS, F(fuse_entry_timeout), 0, 0},
    {"fuse", "max_threads", "FUSE_MAX_THREADS", true, K_U64, F(fuse_max_threads), 1,
     MAX_FUSE_THREADS},
    {"fuse", "allow_other", "FUSE_ALLOW_OTHER", true, K_BOOL, F(fuse_allow_other), 0, 0},
    {"fuse", "default_permissions", "FUSE_DEFAULT_PERMISSIONS", true, K_BOOL,
     F(fuse_default_permissions), 0, 0},
    {"fuse", "read_only", "FUSE_READ_ONLY", true, K_BOOL, F(fuse_read_only), 0, 0},
    {"limits", "max_id_bytes", "MAX_ID_BYTES", true, K_U64, F(limits.max_id_bytes), 1,
     ENG_MAX_ID_LEN},
    {"limits", "max_states", "MAX_STATES", true, K_U64, F(limits.max_states), 1, DEF_MAX_STATES},
    {"limits", "max_transitions", "MAX_TRANSITIONS", true, K_U64, F(limits.max_transitions), 1,
     DEF_MAX_TRANSITIONS},
    {"limits", "max_guard_bytes", "MAX_GUARD_BYTES", true, K_U64, F(limits.max_guard_bytes), 1,
     GUARD_MAX_LEN},
    {"limits", "max_guard_depth", "MAX_GUARD_DEPTH", true, K_U64, F(limits.max_guard_depth), 1,
     GUARD_MAX_DEPTH},
    {"limits", "max_definition_bytes", "MAX_DEFINITION_BYTES", true, K_U64,
     F(limits.max_definition_bytes), 2, MAX_RECORD_PART},
    {"limits", "max_ctx_bytes", "MAX_CTX_BYTES", true, K_U64, F(limits.max_ctx_bytes), 2,
     MAX_RECORD_PART},
    {"limits", "max_payload_bytes", "MAX_PAYLOAD_BYTES", true, K_U64, F(limits.max_payload_bytes),
     2, MAX_RECORD_PART},
    {"limits", "max_frame_bytes", "MAX_FRAME_BYTES", true, K_U64, F(max_frame_bytes), 1024,
     RCP_MAX_PAYLOAD},
    {"limits", "max_line_bytes", "MAX_LINE_BYTES", true, K_U64, F(max_line_bytes), 64,
     FS_LINE_CEILING},
    {"logging", "file", "LOG_FILE", true, K_PATH, F(log_file), 0, 0},
    {"logging", "level", "LOG_LEVEL", true, K_LEVEL, F(log_level), 0, 0},
};

#undef F

/* ---- small helpers ------------------------------------------------------- */

/* The value goes into the message escaped (one line, no terminal junk)
 * and cut when long. */
static stm_code bad_value(stm_err *err, const char *name, const char *text, const char *why)
{
    buf v = {0};
    buf_add_shown(&v, text, strlen(text), 80);
    stm_code rc = stm_fail(err, STM_BAD_REQUEST, "%s: '%s' %s", name, buf_cstr(&v), why);
    buf_free(&v);
    return rc;
}

static bool parse_whole(const char *s, uint64_t *out, bool *overflow)
{
    *overflow = false;
    if (!*s) return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            *overflow = true;
        else
            v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* IP:PORT with a literal address, as rstmdb's SocketAddr parse demands:
 * a.b.c.d:port or [v6]:port. Hostnames are refused there, so here too. */
bool config_valid_addr(const char *s)
{
    const char *colon;
    char host[64];
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return false;
        size_t n = (size_t)(close - s - 1);
        if (n == 0 || n >= sizeof host) return false;
        memcpy(host, s + 1, n);
        host[n] = 0;
        unsigned char a[16];
        if (inet_pton(AF_INET6, host, a) != 1) return false;
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return false;
        size_t n = (size_t)(colon - s);
        if (n == 0 || n >= sizeof host) return false;
        memcpy(host, s, n);
        host[n] = 0;
        unsigned char a[4];
        if (inet_pton(AF_INET, host, a) != 1) return false;
    }
    uint64_t port;
    bool over;
    if (strlen(colon + 1) > 5 || !parse_whole(colon + 1, &port, &over) || port > 65535)
        return false;
    return true;
}

static bool valid_hash(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!isxdigit((unsigned char)s[n])) return false;
    return n == 64;
}

static void add_hash(stm_config *c, const char *h)
{
    char *copy = xstrdup(h);
    /* rstmdb compares strings exactly, so an upper-case hash in a config
     * would never match; lower-casing on load is what the user meant. */
    for (char *p = copy; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    c->token_hashes = xrealloc(c->token_hashes, (c->n_token_hashes + 1) * sizeof(char *));
    c->token_hashes[c->n_token_hashes++] = copy;
}

static void clear_hashes(stm_config *c)
{
    for (size_t i = 0; i < c->n_token_hashes; i++)
        free(c->token_hashes[i]);
    free(c->token_hashes);
    c->token_hashes = NULL;
    c->n_token_hashes = 0;
}

static void set_str(char **slot, const char *v)
{
    free(*slot);
    *slot = v ? xstrdup(v) : NULL;
}

/* "every_write" | "everywrite" | "never" | "every_n:N" | "every_ms:M", any
 * case: the text forms (environment, and a plain YAML scalar). */
static bool parse_fsync_name(const char *name, const char *arg, wal_sync_policy *p,
                             const char **why)
{
    *why = "is not a fsync policy (every_write, never, every_n: N or every_ms: M)";
    bool needs_arg;
    if (!strcasecmp(name, "every_write") || !strcasecmp(name, "everywrite")) {
        p->mode = WAL_SYNC_EVERY_WRITE;
        needs_arg = false;
    } else if (!strcasecmp(name, "never")) {
        p->mode = WAL_SYNC_NEVER;
        needs_arg = false;
    } else if (!strcasecmp(name, "every_n")) {
        p->mode = WAL_SYNC_EVERY_N;
        needs_arg = true;
    } else if (!strcasecmp(name, "every_ms")) {
        p->mode = WAL_SYNC_EVERY_MS;
        needs_arg = true;
    } else {
        return false;
    }
    p->arg = 0;
    if (!needs_arg) {
        if (arg) *why = "takes no number (every_write or never)";
        return arg == NULL;
    }
    uint64_t v;
    bool over;
    if (!arg || !parse_whole(arg, &v, &over) || over || v > UINT32_MAX) {
        *why = p->mode == WAL_SYNC_EVERY_N ? "needs a whole number of writes (every_n: 100)"
                                           : "needs a whole number of milliseconds (every_ms: 100)";
        return false;
    }
    if (p->mode == WAL_SYNC_EVERY_MS && v == 0) {
        /* A timer of 0 ms is not a policy; every_write is what that means. */
        *why = "needs at least 1 millisecond (use every_write to sync every write)";
        return false;
    }
    p->arg = (uint32_t)v;
    return true;
}

static bool parse_fsync_text(const char *text, wal_sync_policy *p, const char **why)
{
    const char *colon = strchr(text, ':');
    if (!colon) return parse_fsync_name(text, NULL, p, why);
    char name[32];
    size_t n = (size_t)(colon - text);
    if (n >= sizeof name) {
        *why = "is not a fsync policy (every_write, never, every_n: N or every_ms: M)";
        return false;
    }
    memcpy(name, text, n);
    name[n] = 0;
    const char *arg = colon + 1;
    while (*arg == ' ')
        arg++;
    return parse_fsync_name(name, arg, p, why);
}

static int parse_level(const char *s)
{
    /* Names people bring from other loggers map to the nearest level. */
    if (!strcasecmp(s, "warning")) return LOG_WARN;
    if (!strcasecmp(s, "trace")) return LOG_DEBUG;
    return log_level_parse(s);
}

/* Sets one scalar-valued key from text. name is what the message calls it
 * ("config storage.data_dir" or "environment STMFS_DATA"). from_env selects
 * the environment's bool rule and makes K_HASHES append one hash. */
static stm_code set_scalar(stm_config *c, const key_desc *k, const char *text, const char *name,
                           bool from_env, stm_err *err)
{
    char *base = (char *)c + k->off;
    switch (k->kind) {
    case K_U64: {
        uint64_t v;
        bool over;
        if (!parse_whole(text, &v, &over))
            return bad_value(err, name, text, "is not a whole number");
        if (over || v > k->max) {
            char why[64];
            snprintf(why, sizeof why, "is too large (at most %llu)", (unsigned long long)k->max);
            return bad_value(err, name, text, why);
        }
        if (v < k->min) {
            char why[64];
            snprintf(why, sizeof why, "is too small (at least %llu)", (unsigned long long)k->min);
            return bad_value(err, name, text, why);
        }
        if (k->width == 8)
            *(uint64_t *)base = v;
        else
            *(uint32_t *)base = (uint32_t)v; /* u32 and unsigned fields; max keeps it in range */
        return STM_OK;
    }
    case K_BOOL:
        /* rstmdb's environment rule is "1 or true, anything else false";
         * we keep the true forms but refuse anything that is not clearly
         * false, since "yes" meaning false is a trap. */
        if (!strcasecmp(text, "true") || (from_env && !strcmp(text, "1"))) {
            *(bool *)base = true;
            return STM_OK;
        }
        if (!strcasecmp(text, "false") || (from_env && !strcmp(text, "0"))) {
            *(bool *)base = false;
            return STM_OK;
        }
        return bad_value(err, name, text,
                         from_env ? "is not a boolean (use 1, true, 0 or false)"
                                  : "is not a boolean (use true or false)");
    case K_STR:
        if (!*text) return stm_fail(err, STM_BAD_REQUEST, "%s: must not be empty", name);
        set_str((char **)base, text);
        return STM_OK;
    case K_PATH:
        set_str((char **)base, *text ? text : NULL);
        return STM_OK;
    case K_ADDR:
    case K_BIND:
        if (k->kind == K_BIND && !strcmp(text, "none")) {
            set_str((char **)base, "none");
            return STM_OK;
        }
        if (!config_valid_addr(text))
            return bad_value(err, name, text,
                             k->kind == K_BIND
                                 ? "is not IP:PORT (e.g. 127.0.0.1:7401 or [::1]:7401) or none"
                                 : "is not IP:PORT (e.g. 127.0.0.1:9090 or [::1]:9090)");
        set_str((char **)base, text);
        return STM_OK;
    case K_FSYNC: {
        wal_sync_policy p;
        const char *why;
        if (!parse_fsync_text(text, &p, &why)) return bad_value(err, name, text, why);
        *(wal_sync_policy *)base = p;
        return STM_OK;
    }
    case K_HASHES:
        if (!valid_hash(text))
            return bad_value(err, name, text, "is not a SHA-256 hash (64 hex digits)");
        if (!from_env) clear_hashes(c);
        add_hash(c, text);
        return STM_OK;
    case K_SECS: {
        char *end;
        errno = 0;
        double d = strtod(text, &end);
        if (!*text || *end || errno || !isfinite(d) || d < 0 || isspace((unsigned char)*text))
            return bad_value(err, name, text, "is not a number of seconds (e.g. 1 or 0.5)");
        *(double *)base = d;
        return STM_OK;
    }
    case K_LEVEL: {
        int lv = parse_level(text);
        if (lv < 0)
            return bad_value(err, name, text, "is not a log level (error, warn, info, debug)");
        *(int *)base = lv;
        return STM_OK;
    }
    }
    return stm_fail(err, STM_INTERNAL_ERROR, "%s: unhandled key kind", name);
}

/* ---- YAML ---------------------------------------------------------------- */

static const char *node_text(yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* The YAML null forms: an empty value, ~ or null (plain, untagged). */
static bool is_null(yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = node_text(n);
    return !*s || !strcmp(s, "~") || !strcasecmp(s, "null");
}

static const char *node_kind(yaml_node_t *n)
{
    return n->type == YAML_SEQUENCE_NODE  ? "a list"
           : n->type == YAML_MAPPING_NODE ? "a mapping"
                                          : "a value";
}

static stm_code yaml_fsync(stm_config *c, yaml_document_t *doc, yaml_node_t *v, const char *name,
                           stm_err *err)
{
    wal_sync_policy p;
    const char *why;
    const char *tag = (const char *)v->tag;
    if (v->type == YAML_SCALAR_NODE) {
        /* `!every_n 100`: libyaml keeps the local tag as written. */
        if (tag && tag[0] == '!' && tag[1] != '!' && strncmp(tag, "tag:", 4)) {
            if (!parse_fsync_name(tag + 1, node_text(v), &p, &why)) {
                char shownv[160];
                snprintf(shownv, sizeof shownv, "%s %s", tag, node_text(v));
                return bad_value(err, name, shownv, why);
            }
        } else if (!parse_fsync_text(node_text(v), &p, &why)) {
            return bad_value(err, name, node_text(v), why);
        }
        c->fsync_policy = p;
        return STM_OK;
    }
    if (v->type == YAML_MAPPING_NODE) {
        /* `{every_n: 100}`, the form rstmdb's own docs and production
         * sample use (and its YAML library refuses). */
        yaml_node_pair_t *b = v->data.mapping.pairs.start, *e = v->data.mapping.pairs.top;
        yaml_node_t *key = b < e ? yaml_document_get_node(doc, b->key) : NULL;
        yaml_node_t *val = b < e ? yaml_document_get_node(doc, b->value) : NULL;
        if (e - b != 1 || key->type != YAML_SCALAR_NODE || val->type != YAML_SCALAR_NODE)
            return stm_fail(err, STM_BAD_REQUEST,
                            "%s: a mapping here must have one key, every_n or every_ms, with a "
                            "number (every_n: 100)",
                            name);
        if (!parse_fsync_name(node_text(key), is_null(val) ? NULL : node_text(val), &p, &why)) {
            char shownv[160];
            snprintf(shownv, sizeof shownv, "%s: %s", node_text(key), node_text(val));
            return bad_value(err, name, shownv, why);
        }
        c->fsync_policy = p;
        return STM_OK;
    }
    return stm_fail(err, STM_BAD_REQUEST, "%s: expected a fsync policy, found a list", name);
}

static stm_code yaml_key(stm_config *c, yaml_document_t *doc, const key_desc *k, yaml_node_t *v,
                         stm_err *err)
{
    char name[96];
    snprintf(name, sizeof name, "config %s.%s", k->section, k->key);

    if (k->kind == K_FSYNC) return yaml_fsync(c, doc, v, name, err);
    if (k->kind == K_HASHES) {
        if (is_null(v)) {
            clear_hashes(c);
            return STM_OK;
        }
        if (v->type != YAML_SEQUENCE_NODE)
            return stm_fail(err, STM_BAD_REQUEST, "%s: expected a list of hashes, found %s", name,
                            node_kind(v));
        clear_hashes(c);
        int i = 0;
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
             it++, i++) {
            yaml_node_t *h = yaml_document_get_node(doc, *it);
            char iname[112];
            snprintf(iname, sizeof iname, "%s[%d]", name, i);
            if (h->type != YAML_SCALAR_NODE)
                return stm_fail(err, STM_BAD_REQUEST, "%s: expected a hash, found %s", iname,
                                node_kind(h));
            if (!valid_hash(node_text(h)))
                return bad_value(err, iname, node_text(h), "is not a SHA-256 hash (64 hex digits)");
            add_hash(c, node_text(h));
        }
        return STM_OK;
    }
    if (v->type != YAML_SCALAR_NODE)
        return stm_fail(err, STM_BAD_REQUEST, "%s: expected a single value, found %s", name,
                        node_kind(v));
    if (is_null(v)) {
        /* Optional paths may be cleared; everything else needs a value. */
        if (k->kind == K_PATH) {
            set_str((char **)((char *)c + k->off), NULL);
            return STM_OK;
        }
        return stm_fail(err, STM_BAD_REQUEST, "%s: has no value", name);
    }
    return set_scalar(c, k, node_text(v), name, false, err);
}

/* Adds what to the list of YAML names nothing reads; the list stops
 * growing at a length a warning line can show. */
static void note_ignored(stm_config *c, const char *section, const char *key)
{
    size_t have = c->ignored ? strlen(c->ignored) : 0;
    if (have > 400) return;
    size_t add = strlen(section) + (key ? 1 + strlen(key) : 0) + 2;
    char *n = xrealloc(c->ignored, have + add + 1);
    snprintf(n + have, add + 1, "%s%s%s%s", have ? ", " : "", section, key ? "." : "",
             key ? key : "");
    c->ignored = n;
}

static stm_code yaml_section(stm_config *c, yaml_document_t *doc, const char *section,
                             yaml_node_t *m, stm_err *err)
{
    bool known = false;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0] && !known; i++)
        known = !strcmp(keys[i].section, section);
    if (!known) {
        note_ignored(c, section, NULL);
        return STM_OK;
    }
    if (is_null(m)) return STM_OK; /* `network:` with nothing under it */
    if (m->type != YAML_MAPPING_NODE)
        return stm_fail(err, STM_BAD_REQUEST, "config %s: expected a mapping of keys, found %s",
                        section, node_kind(m));
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key);
        if (kn->type != YAML_SCALAR_NODE) continue;
        bool read = false;
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            if (strcmp(keys[i].section, section) || strcmp(keys[i].key, node_text(kn))) continue;
            read = true;
            stm_code rc = yaml_key(c, doc, &keys[i], yaml_document_get_node(doc, p->value), err);
            if (rc) return rc;
        }
        if (!read) note_ignored(c, section, node_text(kn));
    }
    return STM_OK;
}

/* where names the source in syntax errors ("config" or "config FILE"). */
static stm_code parse_yaml(stm_config *c, const char *text, size_t len, const char *where,
                           stm_err *err)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return stm_fail(err, STM_INTERNAL_ERROR, "%s: cannot start the YAML parser", where);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        stm_code rc = stm_fail(err, STM_BAD_REQUEST, "%s: invalid YAML at line %zu column %zu: %s",
                               where, parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                               parser.problem ? parser.problem : "syntax error");
        yaml_parser_delete(&parser);
        return rc;
    }
    stm_code rc = STM_OK;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && !is_null(root)) {
        if (root->type != YAML_MAPPING_NODE) {
            rc = stm_fail(err, STM_BAD_REQUEST,
                          "%s: expected a mapping of sections (network:, storage:, ...), found %s",
                          where, node_kind(root));
        } else {
            for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
                 !rc && p < root->data.mapping.pairs.top; p++) {
                yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
                if (kn->type != YAML_SCALAR_NODE) continue;
                rc = yaml_section(c, &doc, node_text(kn), yaml_document_get_node(&doc, p->value),
                                  err);
            }
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

stm_code config_parse_yaml(stm_config *c, const char *text, size_t len, stm_err *err)
{
    return parse_yaml(c, text, len, "config", err);
}

/* ---- environment --------------------------------------------------------- */

/* RUST_LOG is shared with every Rust program of the user, so only a plain
 * level in it is taken (the last bare one of a directive list such as
 * "warn,hyper=info"); anything else is left alone rather than refused. */
static void apply_rust_log(stm_config *c)
{
    const char *v = getenv("RUST_LOG");
    if (!v || !*v) return;
    char *copy = xstrdup(v), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        int lv = parse_level(tok);
        if (lv >= 0) c->log_level = lv;
    }
    free(copy);
}

static stm_code apply_env(stm_config *c, stm_err *err)
{
    apply_rust_log(c);
    static const char *const prefixes[] = {"RSTMDB_", "STMFS_"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const key_desc *k = &keys[i];
        if (!k->env) continue;
        for (int p = k->stmfs_only ? 1 : 0; p < 2; p++) {
            char var[64];
            snprintf(var, sizeof var, "%s%s", prefixes[p], k->env);
            const char *v = getenv(var);
            if (!v || !*v) continue;
            char name[80];
            snprintf(name, sizeof name, "environment %s", var);
            stm_code rc = set_scalar(c, k, v, name, true, err);
            if (rc) return rc;
        }
    }
    return STM_OK;
}

/* ---- the secrets file and the final checks ------------------------------- */

static stm_code read_secrets(stm_config *c, stm_err *err)
{
    FILE *f = fopen(c->secrets_file, "r");
    if (!f)
        return stm_fail(err, STM_BAD_REQUEST, "config auth.secrets_file: cannot read '%s': %s",
                        c->secrets_file, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned lineno = 0;
    stm_code rc = STM_OK;
    while (!rc && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        char *s = line, *e = line + n;
        while (s < e && isspace((unsigned char)*s))
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        *e = 0;
        if (!*s || *s == '#') continue;
        if (!valid_hash(s)) {
            char name[600];
            snprintf(name, sizeof name, "config auth.secrets_file %s line %u", c->secrets_file,
                     lineno);
            rc = bad_value(err, name, s, "is not a SHA-256 hash (64 hex digits)");
        } else {
            add_hash(c, s);
        }
    }
    if (!rc && ferror(f))
        rc = stm_fail(err, STM_BAD_REQUEST, "config auth.secrets_file: cannot read '%s': %s",
                      c->secrets_file, strerror(errno));
    free(line);
    fclose(f);
    return rc;
}

static stm_code check(const stm_config *c, stm_err *err)
{
    if (c->auth_required && c->n_token_hashes == 0)
        return stm_fail(err, STM_BAD_REQUEST,
                        "config auth.required is true but no token hash is configured (set "
                        "auth.token_hashes, auth.secrets_file or STMFS_AUTH_TOKEN_HASH)");
    if (c->tls_enabled && !c->tls_cert_path)
        return stm_fail(err, STM_BAD_REQUEST,
                        "config tls.enabled is true but tls.cert_path is not set");
    if (c->tls_enabled && !c->tls_key_path)
        return stm_fail(err, STM_BAD_REQUEST,
                        "config tls.enabled is true but tls.key_path is not set");
    if (c->tls_enabled && c->tls_require_client_cert && !c->tls_client_ca_path)
        return stm_fail(err, STM_BAD_REQUEST,
                        "config tls.require_client_cert is true but tls.client_ca_path is not set");
    return STM_OK;
}

/* ---- public -------------------------------------------------------------- */

void config_defaults(stm_config *c)
{
    memset(c, 0, sizeof *c);
    c->bind_addr = xstrdup("127.0.0.1:7401");
    c->idle_timeout_secs = 300;
    c->max_connections = 1000;
    c->data_dir = xstrdup("./data");
    c->wal_segment_size_mb = 64;
    c->fsync_policy.mode = WAL_SYNC_EVERY_WRITE;
    c->fsync_policy.arg = 0;
    c->max_machine_versions = 0;
    c->idempotency_max_keys = 1000000;
    c->compact_enabled = true;
    c->compact_events_threshold = 10000;
    c->compact_size_threshold_mb = 100;
    c->compact_min_interval_secs = 60;
    c->metrics_enabled = false;
    /* rstmdb listens on 0.0.0.0 here; an unauthenticated metrics port on
     * every interface is a surprise nobody should get by default. */
    c->metrics_bind_addr = xstrdup("127.0.0.1:9090");
    /* The mount tells the kernel exactly when something changes, so long
     * timeouts cost nothing and save a round trip per lookup. */
    c->fuse_attr_timeout = 3600;
    c->fuse_entry_timeout = 3600;
    c->fuse_max_threads = 64;
    c->log_level = LOG_INFO;
    eng_opts eo;
    eng_opts_defaults(&eo);
    c->limits = eo.limits;
    c->max_frame_bytes = RCP_MAX_PAYLOAD;
    c->max_line_bytes = FS_LINE_CEILING;
}

void config_free(stm_config *c)
{
    free(c->bind_addr);
    free(c->data_dir);
    clear_hashes(c);
    free(c->secrets_file);
    free(c->tls_cert_path);
    free(c->tls_key_path);
    free(c->tls_client_ca_path);
    free(c->metrics_bind_addr);
    free(c->log_file);
    free(c->ignored);
    memset(c, 0, sizeof *c);
}

static stm_code read_file(const char *path, buf *out, stm_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return stm_fail(err, STM_BAD_REQUEST, "config %s: cannot read: %s", path, strerror(errno));
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_add(out, chunk, n);
    bool bad = ferror(f);
    int e = errno;
    fclose(f);
    if (bad) return stm_fail(err, STM_BAD_REQUEST, "config %s: cannot read: %s", path, strerror(e));
    return STM_OK;
}

stm_code config_load(stm_config *c, const char *path, stm_err *err)
{
    config_defaults(c);
    /* No -c given: the file named by the environment, as rstmdb finds its
     * config (RSTMDB_CONFIG), STMFS_CONFIG winning. */
    if (!path) {
        const char *e = getenv("STMFS_CONFIG");
        if (!e || !*e) e = getenv("RSTMDB_CONFIG");
        if (e && *e) path = e;
    }
    stm_code rc = STM_OK;
    if (path) {
        buf text = {0};
        rc = read_file(path, &text, err);
        if (!rc) {
            char where[600];
            snprintf(where, sizeof where, "config %s", path);
            rc = parse_yaml(c, buf_cstr(&text), text.len, where, err);
        }
        buf_free(&text);
    }
    if (!rc) rc = apply_env(c, err);
    if (!rc && c->secrets_file) rc = read_secrets(c, err);
    if (!rc) rc = check(c, err);
    /* A refused config owns nothing: callers just report and exit. */
    if (rc) config_free(c);
    return rc;
}

void config_to_eng_opts(const stm_config *c, eng_opts *o)
{
    eng_opts_defaults(o);
    o->data_dir = c->data_dir;
    o->segment_size = c->wal_segment_size_mb << 20;
    o->sync = c->fsync_policy;
    o->max_machine_versions = c->max_machine_versions;
    o->idempotency_max_keys = c->idempotency_max_keys;
    o->compact_enabled = c->compact_enabled;
    o->compact_events_threshold = c->compact_events_threshold;
    o->compact_size_threshold_mb = c->compact_size_threshold_mb;
    o->compact_min_interval_secs = c->compact_min_interval_secs;
    o->limits = c->limits;
}
