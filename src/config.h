/*
 * config.h - stmfs configuration: defaults, then the YAML file (rstmdb's
 * keys plus a fuse: section), then environment variables (RSTMDB_* as
 * rstmdb reads them, STMFS_* of the same names overriding those), then
 * command-line flags (applied by the caller on the struct). An invalid value
 * stops startup with a message naming the key and the value.
 */
#ifndef STM_CONFIG_H
#define STM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/engine.h"

typedef struct {
    /* network */
    char *bind_addr;                 /* "127.0.0.1:7401"; NULL or "none" = no listener */
    uint64_t idle_timeout_secs;      /* 300 */
    uint64_t max_connections;        /* 1000 */
    /* storage */
    char *data_dir;                  /* "./data" */
    uint64_t wal_segment_size_mb;    /* 64 */
    wal_sync_policy fsync_policy;    /* every_write */
    uint32_t max_machine_versions;   /* 0 */
    uint64_t idempotency_max_keys;   /* 1000000 */
    /* compaction */
    bool compact_enabled;            /* true */
    uint64_t compact_events_threshold, compact_size_threshold_mb, compact_min_interval_secs;
    /* auth */
    bool auth_required;
    char **token_hashes;             /* lower-cased hex SHA-256 */
    size_t n_token_hashes;
    char *secrets_file;
    /* tls */
    bool tls_enabled, tls_require_client_cert;
    char *tls_cert_path, *tls_key_path, *tls_client_ca_path;
    /* metrics */
    bool metrics_enabled;
    char *metrics_bind_addr;         /* "127.0.0.1:9090" (loopback by default) */
    /* fuse */
    double fuse_attr_timeout, fuse_entry_timeout; /* seconds */
    unsigned fuse_max_threads;
    bool fuse_allow_other, fuse_default_permissions, fuse_read_only;
    /* limits (engine/engine.h eng_limits; frames and mount lines here) */
    eng_limits limits;
    uint64_t max_frame_bytes;        /* RCP frame payload or JSONL line; 16 MiB */
    uint64_t max_line_bytes;         /* one line written to a mount's events or new; 16 MiB */
    /* logging */
    char *log_file;                  /* NULL = stderr when in front, DATA/stmfs.log when detached */
    int log_level;
    /* The YAML's sections and keys that no setting reads ("storag",
     * "storage.fsync_polcy", ...), comma separated; NULL when none. They are
     * ignored, as rstmdb ignores them, but a typo must not pass unseen:
     * the commands warn with this list. */
    char *ignored;
} stm_config;

/* Fills defaults, then reads path (NULL: none) and the environment. On
 * failure c holds nothing to free (config_free on it is harmless). */
stm_code config_load(stm_config *c, const char *path, stm_err *err);
/* Parses one YAML text (for tests and fuzzing) on top of what c holds. */
stm_code config_parse_yaml(stm_config *c, const char *text, size_t len, stm_err *err);
void config_defaults(stm_config *c);
/* True for IP:PORT with a literal IPv4 or [IPv6] address and a port. */
bool config_valid_addr(const char *s);
void config_free(stm_config *c);
/* The engine options the config implies. Pointers borrow from c. */
void config_to_eng_opts(const stm_config *c, eng_opts *o);

#endif
