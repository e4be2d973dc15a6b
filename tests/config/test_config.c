/*
 * test_config.c - src/config.c: defaults, every YAML key, the fsync_policy
 * forms, the environment and its order (file < RSTMDB_ < STMFS_), the
 * secrets file, and every refusal with its exact message.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "src/config.h"

static const char *const env_suffixes[] = {
    "CONFIG",
    "BIND",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "DATA",
    "WAL_SEGMENT_SIZE_MB",
    "FSYNC_POLICY",
    "MAX_MACHINE_VERSIONS",
    "IDEMPOTENCY_MAX_KEYS",
    "COMPACT_ENABLED",
    "COMPACT_EVENTS",
    "COMPACT_SIZE_MB",
    "COMPACT_INTERVAL",
    "AUTH_REQUIRED",
    "AUTH_TOKEN_HASH",
    "AUTH_SECRETS_FILE",
    "TLS_ENABLED",
    "TLS_CERT",
    "TLS_KEY",
    "TLS_REQUIRE_CLIENT_CERT",
    "TLS_CLIENT_CA",
    "METRICS_ENABLED",
    "METRICS_BIND",
    "FUSE_ATTR_TIMEOUT",
    "FUSE_ENTRY_TIMEOUT",
    "FUSE_MAX_THREADS",
    "FUSE_ALLOW_OTHER",
    "FUSE_DEFAULT_PERMISSIONS",
    "FUSE_READ_ONLY",
    "LOG_FILE",
    "LOG_LEVEL",
    "MAX_ID_BYTES",
    "MAX_STATES",
    "MAX_TRANSITIONS",
    "MAX_GUARD_BYTES",
    "MAX_GUARD_DEPTH",
    "MAX_DEFINITION_BYTES",
    "MAX_CTX_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_LINE_BYTES",
};

#define H1 "ea5add57437cbf20af59034d7ed17968dcc56767b41965fcc5b376d45db8b4a3"
#define H2 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define H1_UPPER "EA5ADD57437CBF20AF59034D7ED17968DCC56767B41965FCC5B376D45DB8B4A3"

static void clear_env(void)
{
    char var[64];
    for (size_t i = 0; i < sizeof env_suffixes / sizeof env_suffixes[0]; i++) {
        snprintf(var, sizeof var, "RSTMDB_%s", env_suffixes[i]);
        unsetenv(var);
        snprintf(var, sizeof var, "STMFS_%s", env_suffixes[i]);
        unsetenv(var);
    }
    unsetenv("RUST_LOG");
}

static char tmpdir[64];

static void setup(void)
{
    clear_env();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/stmfs-cfg-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
    clear_env();
}

/* Writes text to tmpdir/name; returns the path (static buffer per call site
 * is not needed: callers copy or use at once). */
static const char *write_file(const char *name, const char *text)
{
    static char path[4][128];
    static int which;
    char *p = path[which++ % 4];
    snprintf(p, 128, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static stm_code parse(stm_config *c, const char *yaml, stm_err *err)
{
    config_defaults(c);
    memset(err, 0, sizeof *err);
    return config_parse_yaml(c, yaml, strlen(yaml), err);
}

/* Parses yaml on defaults; expects failure with exactly msg. */
static void expect_yaml_error(const char *yaml, const char *msg)
{
    stm_config c;
    stm_err err;
    stm_code rc = parse(&c, yaml, &err);
    ck_assert_msg(rc == STM_BAD_REQUEST, "accepted: %s", yaml);
    ck_assert_str_eq(err.msg, msg);
    config_free(&c);
}

static void expect_load_error(const char *path, const char *msg)
{
    stm_config c;
    stm_err err = {0};
    stm_code rc = config_load(&c, path, &err);
    ck_assert_int_eq(rc, STM_BAD_REQUEST);
    ck_assert_str_eq(err.msg, msg);
    config_free(&c);
}

/* ---- defaults ------------------------------------------------------------ */

START_TEST(defaults)
{
    stm_config c;
    config_defaults(&c);
    ck_assert_str_eq(c.bind_addr, "127.0.0.1:7401");
    ck_assert_uint_eq(c.idle_timeout_secs, 300);
    ck_assert_uint_eq(c.max_connections, 1000);
    ck_assert_str_eq(c.data_dir, "./data");
    ck_assert_uint_eq(c.wal_segment_size_mb, 64);
    ck_assert_int_eq(c.fsync_policy.mode, WAL_SYNC_EVERY_WRITE);
    ck_assert_uint_eq(c.max_machine_versions, 0);
    ck_assert_uint_eq(c.idempotency_max_keys, 1000000);
    ck_assert(c.compact_enabled);
    ck_assert_uint_eq(c.compact_events_threshold, 10000);
    ck_assert_uint_eq(c.compact_size_threshold_mb, 100);
    ck_assert_uint_eq(c.compact_min_interval_secs, 60);
    ck_assert(!c.auth_required);
    ck_assert_uint_eq(c.n_token_hashes, 0);
    ck_assert_ptr_null(c.secrets_file);
    ck_assert(!c.tls_enabled && !c.tls_require_client_cert);
    ck_assert_ptr_null(c.tls_cert_path);
    ck_assert(!c.metrics_enabled);
    ck_assert_str_eq(c.metrics_bind_addr, "127.0.0.1:9090");
    ck_assert(c.fuse_attr_timeout == 3600 && c.fuse_entry_timeout == 3600);
    ck_assert_uint_eq(c.fuse_max_threads, 64);
    ck_assert(!c.fuse_allow_other && !c.fuse_default_permissions && !c.fuse_read_only);
    ck_assert_ptr_null(c.log_file);
    ck_assert_int_eq(c.log_level, LOG_INFO);
    config_free(&c);

    /* config_load with nothing set gives the same. */
    stm_err err = {0};
    ck_assert_int_eq(config_load(&c, NULL, &err), STM_OK);
    ck_assert_str_eq(c.bind_addr, "127.0.0.1:7401");
    ck_assert_str_eq(c.data_dir, "./data");
    config_free(&c);
}
END_TEST

/* ---- every YAML key ------------------------------------------------------ */

START_TEST(every_key)
{
    const char *yaml = "network:\n"
                       "  bind_addr: \"[::1]:7500\"\n"
                       "  idle_timeout_secs: 42\n"
                       "  max_connections: 7\n"
                       "storage:\n"
                       "  data_dir: /srv/stm\n"
                       "  wal_segment_size_mb: 3\n"
                       "  fsync_policy: never\n"
                       "  max_machine_versions: 4294967295\n"
                       "  idempotency_max_keys: 0\n"
                       "compaction:\n"
                       "  enabled: false\n"
                       "  events_threshold: 1\n"
                       "  size_threshold_mb: 2\n"
                       "  min_interval_secs: 3\n"
                       "auth:\n"
                       "  required: true\n"
                       "  token_hashes:\n"
                       "    - " H1_UPPER "\n"
                       "    - \"" H2 "\"\n"
                       "  secrets_file: /etc/secrets\n"
                       "tls:\n"
                       "  enabled: true\n"
                       "  cert_path: /c.pem\n"
                       "  key_path: /k.pem\n"
                       "  require_client_cert: True\n"
                       "  client_ca_path: /ca.pem\n"
                       "metrics:\n"
                       "  enabled: true\n"
                       "  bind_addr: 0.0.0.0:9191\n"
                       "fuse:\n"
                       "  attr_timeout: 0.5\n"
                       "  entry_timeout: 0\n"
                       "  max_threads: 8\n"
                       "  allow_other: true\n"
                       "  default_permissions: true\n"
                       "  read_only: true\n"
                       "logging:\n"
                       "  file: /var/log/stmfs.log\n"
                       "  level: debug\n";
    stm_config c;
    stm_err err;
    ck_assert_int_eq(parse(&c, yaml, &err), STM_OK);
    ck_assert_str_eq(c.bind_addr, "[::1]:7500");
    ck_assert_uint_eq(c.idle_timeout_secs, 42);
    ck_assert_uint_eq(c.max_connections, 7);
    ck_assert_str_eq(c.data_dir, "/srv/stm");
    ck_assert_uint_eq(c.wal_segment_size_mb, 3);
    ck_assert_int_eq(c.fsync_policy.mode, WAL_SYNC_NEVER);
    ck_assert_uint_eq(c.max_machine_versions, 4294967295u);
    ck_assert_uint_eq(c.idempotency_max_keys, 0);
    ck_assert(!c.compact_enabled);
    ck_assert_uint_eq(c.compact_events_threshold, 1);
    ck_assert_uint_eq(c.compact_size_threshold_mb, 2);
    ck_assert_uint_eq(c.compact_min_interval_secs, 3);
    ck_assert(c.auth_required);
    ck_assert_uint_eq(c.n_token_hashes, 2);
    ck_assert_str_eq(c.token_hashes[0], H1); /* lower-cased on load */
    ck_assert_str_eq(c.token_hashes[1], H2);
    ck_assert_str_eq(c.secrets_file, "/etc/secrets");
    ck_assert(c.tls_enabled && c.tls_require_client_cert);
    ck_assert_str_eq(c.tls_cert_path, "/c.pem");
    ck_assert_str_eq(c.tls_key_path, "/k.pem");
    ck_assert_str_eq(c.tls_client_ca_path, "/ca.pem");
    ck_assert(c.metrics_enabled);
    ck_assert_str_eq(c.metrics_bind_addr, "0.0.0.0:9191");
    ck_assert(c.fuse_attr_timeout == 0.5 && c.fuse_entry_timeout == 0);
    ck_assert_uint_eq(c.fuse_max_threads, 8);
    ck_assert(c.fuse_allow_other && c.fuse_default_permissions && c.fuse_read_only);
    ck_assert_str_eq(c.log_file, "/var/log/stmfs.log");
    ck_assert_int_eq(c.log_level, LOG_DEBUG);
    config_free(&c);
}
END_TEST

START_TEST(unknown_ignored)
{
    stm_config c;
    stm_err err;
    ck_assert_int_eq(parse(&c,
                           "replication:\n  role: standalone\n  sync_timeout_ms: 5000\n"
                           "weird: [1, 2]\n"
                           "storage:\n  allow_instance_recreate: true\n  allow_flush_all: nope\n"
                           "  data_dir: d\n"
                           "logging:\n  format: json\n",
                           &err),
                     STM_OK);
    ck_assert_str_eq(c.data_dir, "d");
    /* ignored, but listed, so the commands can warn about a typo */
    ck_assert_str_eq(c.ignored, "replication, weird, storage.allow_instance_recreate, "
                                "storage.allow_flush_all, logging.format");
    config_free(&c);

    /* Empty files, comments only, and empty sections change nothing. */
    ck_assert_int_eq(parse(&c, "", &err), STM_OK);
    ck_assert_ptr_null(c.ignored);
    config_free(&c);
    ck_assert_int_eq(parse(&c, "# nothing\n", &err), STM_OK);
    config_free(&c);
    ck_assert_int_eq(parse(&c, "network:\nstorage: ~\n", &err), STM_OK);
    ck_assert_str_eq(c.bind_addr, "127.0.0.1:7401");
    ck_assert_ptr_null(c.ignored);
    config_free(&c);
}
END_TEST

/* A misspelt key changes nothing (the default stays) and is named; a file
 * of nothing but unknown keys keeps the list to a line's length. */
START_TEST(unknown_keys_named)
{
    stm_config c;
    stm_err err;
    ck_assert_int_eq(parse(&c, "storage:\n  fsync_polcy: never\n  wal_segment_size_mb: 8\n", &err),
                     STM_OK);
    ck_assert_int_eq(c.fsync_policy.mode, WAL_SYNC_EVERY_WRITE);
    ck_assert_uint_eq(c.wal_segment_size_mb, 8);
    ck_assert_str_eq(c.ignored, "storage.fsync_polcy");
    config_free(&c);

    buf y = {0};
    buf_puts(&y, "storage:\n");
    for (int i = 0; i < 500; i++) buf_printf(&y, "  unknown_key_%03d: 1\n", i);
    ck_assert_int_eq(parse(&c, buf_cstr(&y), &err), STM_OK);
    ck_assert_ptr_nonnull(c.ignored);
    ck_assert_uint_lt(strlen(c.ignored), 512);
    ck_assert_ptr_nonnull(strstr(c.ignored, "storage.unknown_key_000"));
    config_free(&c);
    buf_free(&y);
}
END_TEST

START_TEST(bind_none_and_null_paths)
{
    stm_config c;
    stm_err err;
    ck_assert_int_eq(parse(&c, "network:\n  bind_addr: none\ntls:\n  cert_path: ~\n", &err),
                     STM_OK);
    ck_assert_str_eq(c.bind_addr, "none");
    ck_assert_ptr_null(c.tls_cert_path);
    config_free(&c);
    /* An empty list clears hashes; a later YAML list replaces, not appends. */
    config_defaults(&c);
    const char *a = "auth:\n  token_hashes: [" H1 "]\n";
    const char *b = "auth:\n  token_hashes: [" H2 "]\n";
    ck_assert_int_eq(config_parse_yaml(&c, a, strlen(a), &err), STM_OK);
    ck_assert_int_eq(config_parse_yaml(&c, b, strlen(b), &err), STM_OK);
    ck_assert_uint_eq(c.n_token_hashes, 1);
    ck_assert_str_eq(c.token_hashes[0], H2);
    const char *e = "auth:\n  token_hashes: []\n";
    ck_assert_int_eq(config_parse_yaml(&c, e, strlen(e), &err), STM_OK);
    ck_assert_uint_eq(c.n_token_hashes, 0);
    config_free(&c);
}
END_TEST

/* ---- fsync_policy forms --------------------------------------------------- */

static void expect_fsync(const char *yaml, wal_sync_mode mode, uint32_t arg)
{
    stm_config c;
    stm_err err;
    stm_code rc = parse(&c, yaml, &err);
    ck_assert_msg(rc == STM_OK, "%s: %s", yaml, err.msg);
    ck_assert_msg(c.fsync_policy.mode == mode, "%s: mode %d", yaml, c.fsync_policy.mode);
    ck_assert_msg(c.fsync_policy.arg == arg, "%s: arg %u", yaml, c.fsync_policy.arg);
    config_free(&c);
}

START_TEST(fsync_forms)
{
    expect_fsync("storage:\n  fsync_policy: every_write\n", WAL_SYNC_EVERY_WRITE, 0);
    expect_fsync("storage:\n  fsync_policy: never\n", WAL_SYNC_NEVER, 0);
    expect_fsync("storage:\n  fsync_policy: \"never\"\n", WAL_SYNC_NEVER, 0);
    /* rstmdb's tagged forms */
    expect_fsync("storage:\n  fsync_policy: !every_n 100\n", WAL_SYNC_EVERY_N, 100);
    expect_fsync("storage:\n  fsync_policy: !every_ms 250\n", WAL_SYNC_EVERY_MS, 250);
    /* the map forms of its docs and production sample */
    expect_fsync("storage:\n  fsync_policy: {every_n: 100}\n", WAL_SYNC_EVERY_N, 100);
    expect_fsync("storage:\n  fsync_policy:\n    every_n: 7\n", WAL_SYNC_EVERY_N, 7);
    expect_fsync("storage:\n  fsync_policy:\n    every_ms: 100\n", WAL_SYNC_EVERY_MS, 100);
    expect_fsync("storage:\n  fsync_policy: {every_ms: 5}\n", WAL_SYNC_EVERY_MS, 5);
    /* the environment's text form works in the file too */
    expect_fsync("storage:\n  fsync_policy: every_n:3\n", WAL_SYNC_EVERY_N, 3);
    expect_fsync("storage:\n  fsync_policy: EVERY_WRITE\n", WAL_SYNC_EVERY_WRITE, 0);
    /* every_n 0 behaves as every_write in the WAL; accepted as rstmdb does */
    expect_fsync("storage:\n  fsync_policy: {every_n: 0}\n", WAL_SYNC_EVERY_N, 0);
}
END_TEST

START_TEST(fsync_errors)
{
    expect_yaml_error("storage:\n  fsync_policy: sometimes\n",
                      "config storage.fsync_policy: 'sometimes' is not a fsync policy "
                      "(every_write, never, every_n: N or every_ms: M)");
    expect_yaml_error("storage:\n  fsync_policy: every_n\n",
                      "config storage.fsync_policy: 'every_n' needs a whole number of writes "
                      "(every_n: 100)");
    expect_yaml_error("storage:\n  fsync_policy: {every_n: many}\n",
                      "config storage.fsync_policy: 'every_n: many' needs a whole number of "
                      "writes (every_n: 100)");
    expect_yaml_error("storage:\n  fsync_policy: !every_ms x\n",
                      "config storage.fsync_policy: '!every_ms x' needs a whole number of "
                      "milliseconds (every_ms: 100)");
    expect_yaml_error("storage:\n  fsync_policy: {every_ms: 0}\n",
                      "config storage.fsync_policy: 'every_ms: 0' needs at least 1 millisecond "
                      "(use every_write to sync every write)");
    expect_yaml_error("storage:\n  fsync_policy: {every_n: 99999999999}\n",
                      "config storage.fsync_policy: 'every_n: 99999999999' needs a whole number "
                      "of writes (every_n: 100)");
    expect_yaml_error("storage:\n  fsync_policy: {every_n: 1, every_ms: 2}\n",
                      "config storage.fsync_policy: a mapping here must have one key, every_n or "
                      "every_ms, with a number (every_n: 100)");
    expect_yaml_error("storage:\n  fsync_policy: {sometimes: 2}\n",
                      "config storage.fsync_policy: 'sometimes: 2' is not a fsync policy "
                      "(every_write, never, every_n: N or every_ms: M)");
    expect_yaml_error("storage:\n  fsync_policy: [never]\n",
                      "config storage.fsync_policy: expected a fsync policy, found a list");
    expect_yaml_error("storage:\n  fsync_policy: never:5\n",
                      "config storage.fsync_policy: 'never:5' takes no number (every_write or "
                      "never)");
}
END_TEST

/* ---- invalid values: one message per kind --------------------------------- */

START_TEST(value_errors)
{
    expect_yaml_error("storage:\n  wal_segment_size_mb: abc\n",
                      "config storage.wal_segment_size_mb: 'abc' is not a whole number");
    expect_yaml_error("storage:\n  wal_segment_size_mb: -1\n",
                      "config storage.wal_segment_size_mb: '-1' is not a whole number");
    expect_yaml_error("storage:\n  wal_segment_size_mb: 1.5\n",
                      "config storage.wal_segment_size_mb: '1.5' is not a whole number");
    expect_yaml_error("storage:\n  wal_segment_size_mb: 1048576\n",
                      "config storage.wal_segment_size_mb: '1048576' is too large (at most "
                      "1048575)");
    expect_yaml_error("storage:\n  max_machine_versions: 4294967296\n",
                      "config storage.max_machine_versions: '4294967296' is too large (at most "
                      "4294967295)");
    expect_yaml_error("storage:\n  idempotency_max_keys: 99999999999999999999\n",
                      "config storage.idempotency_max_keys: '99999999999999999999' is too large "
                      "(at most 18446744073709551615)");
    expect_yaml_error("network:\n  max_connections: 0\n",
                      "config network.max_connections: '0' is too small (at least 1)");
    expect_yaml_error("storage:\n  wal_segment_size_mb: 0\n",
                      "config storage.wal_segment_size_mb: '0' is too small (at least 1)");
    expect_yaml_error("network:\n  idle_timeout_secs: soon\n",
                      "config network.idle_timeout_secs: 'soon' is not a whole number");
    expect_yaml_error("network:\n  bind_addr: localhost:7401\n",
                      "config network.bind_addr: 'localhost:7401' is not IP:PORT (e.g. "
                      "127.0.0.1:7401 or [::1]:7401) or none");
    expect_yaml_error("network:\n  bind_addr: 127.0.0.1:70000\n",
                      "config network.bind_addr: '127.0.0.1:70000' is not IP:PORT (e.g. "
                      "127.0.0.1:7401 or [::1]:7401) or none");
    expect_yaml_error("network:\n  bind_addr: ~\n", "config network.bind_addr: has no value");
    expect_yaml_error("metrics:\n  bind_addr: none\n",
                      "config metrics.bind_addr: 'none' is not IP:PORT (e.g. 127.0.0.1:9090 or "
                      "[::1]:9090)");
    expect_yaml_error("storage:\n  data_dir: \"\"\n", "config storage.data_dir: must not be empty");
    expect_yaml_error("compaction:\n  enabled: yes\n",
                      "config compaction.enabled: 'yes' is not a boolean (use true or false)");
    expect_yaml_error("auth:\n  required: 1\n",
                      "config auth.required: '1' is not a boolean (use true or false)");
    expect_yaml_error("auth:\n  token_hashes: abc\n",
                      "config auth.token_hashes: expected a list of hashes, found a value");
    expect_yaml_error("auth:\n  token_hashes: [" H1 ", nothex]\n",
                      "config auth.token_hashes[1]: 'nothex' is not a SHA-256 hash (64 hex "
                      "digits)");
    expect_yaml_error("auth:\n  token_hashes: [[a]]\n",
                      "config auth.token_hashes[0]: expected a hash, found a list");
    expect_yaml_error("tls:\n  cert_path: [a, b]\n",
                      "config tls.cert_path: expected a single value, found a list");
    expect_yaml_error("fuse:\n  attr_timeout: -1\n",
                      "config fuse.attr_timeout: '-1' is not a number of seconds (e.g. 1 or 0.5)");
    expect_yaml_error("fuse:\n  entry_timeout: forever\n",
                      "config fuse.entry_timeout: 'forever' is not a number of seconds (e.g. 1 "
                      "or 0.5)");
    expect_yaml_error("fuse:\n  max_threads: 0\n",
                      "config fuse.max_threads: '0' is too small (at least 1)");
    expect_yaml_error("fuse:\n  read_only: maybe\n",
                      "config fuse.read_only: 'maybe' is not a boolean (use true or false)");
    expect_yaml_error("logging:\n  level: loud\n",
                      "config logging.level: 'loud' is not a log level (error, warn, info, "
                      "debug)");
    expect_yaml_error("storage: 5\n", "config storage: expected a mapping of keys, found a value");
    expect_yaml_error("- a\n- b\n",
                      "config: expected a mapping of sections (network:, storage:, ...), found a "
                      "list");
    expect_yaml_error("storage:\n  data_dir: [unclosed\n",
                      "config: invalid YAML at line 3 column 1: did not find expected ',' or ']'");
    /* control bytes are shown escaped and long values cut */
    expect_yaml_error("storage:\n  wal_segment_size_mb: \"a\\tb\"\n",
                      "config storage.wal_segment_size_mb: 'a\\x09b' is not a whole number");
}
END_TEST

START_TEST(log_level_names)
{
    stm_config c;
    stm_err err;
    ck_assert_int_eq(parse(&c, "logging:\n  level: WARNING\n", &err), STM_OK);
    ck_assert_int_eq(c.log_level, LOG_WARN);
    config_free(&c);
    ck_assert_int_eq(parse(&c, "logging:\n  level: trace\n", &err), STM_OK);
    ck_assert_int_eq(c.log_level, LOG_DEBUG);
    config_free(&c);
}
END_TEST

/* ---- a real sample in the style of rstmdb's config.production.yaml ------- */

START_TEST(production_sample)
{
    const char *secrets = write_file("tokens.secret", "# production tokens\n\n  " H1 "  \n");
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "# production\n"
             "network:\n"
             "  bind_addr: \"0.0.0.0:7401\"\n"
             "  idle_timeout_secs: 600\n"
             "  max_connections: 10000\n"
             "\n"
             "auth:\n"
             "  required: true\n"
             "  # hashes come from a file\n"
             "  secrets_file: \"%s\"\n"
             "\n"
             "storage:\n"
             "  data_dir: \"/var/lib/rstmdb\"\n"
             "  wal_segment_size_mb: 128\n"
             "  fsync_policy:\n"
             "    every_ms: 100\n"
             "  max_machine_versions: 0\n"
             "  allow_instance_recreate: true\n"
             "\n"
             "compaction:\n"
             "  enabled: true\n"
             "  events_threshold: 50000\n"
             "  size_threshold_mb: 500\n"
             "  min_interval_secs: 300\n"
             "\n"
             "tls:\n"
             "  enabled: true\n"
             "  cert_path: \"/etc/rstmdb/certs/server.crt\"\n"
             "  key_path: \"/etc/rstmdb/certs/server.key\"\n"
             "  require_client_cert: false\n"
             "  # client_ca_path: \"/etc/rstmdb/certs/ca.crt\"\n"
             "\n"
             "replication:\n"
             "  role: standalone\n"
             "\n"
             "metrics:\n"
             "  enabled: true\n"
             "  bind_addr: \"0.0.0.0:9090\"\n",
             secrets);
    const char *path = write_file("config.production.yaml", yaml);
    stm_config c;
    stm_err err = {0};
    ck_assert_msg(config_load(&c, path, &err) == STM_OK, "%s", err.msg);
    ck_assert_str_eq(c.bind_addr, "0.0.0.0:7401");
    ck_assert_uint_eq(c.idle_timeout_secs, 600);
    ck_assert_uint_eq(c.max_connections, 10000);
    ck_assert(c.auth_required);
    ck_assert_uint_eq(c.n_token_hashes, 1);
    ck_assert_str_eq(c.token_hashes[0], H1);
    ck_assert_str_eq(c.data_dir, "/var/lib/rstmdb");
    ck_assert_uint_eq(c.wal_segment_size_mb, 128);
    ck_assert_int_eq(c.fsync_policy.mode, WAL_SYNC_EVERY_MS);
    ck_assert_uint_eq(c.fsync_policy.arg, 100);
    ck_assert_uint_eq(c.compact_events_threshold, 50000);
    ck_assert_uint_eq(c.compact_size_threshold_mb, 500);
    ck_assert_uint_eq(c.compact_min_interval_secs, 300);
    ck_assert(c.tls_enabled && !c.tls_require_client_cert);
    ck_assert_str_eq(c.tls_key_path, "/etc/rstmdb/certs/server.key");
    ck_assert(c.metrics_enabled);
    ck_assert_str_eq(c.metrics_bind_addr, "0.0.0.0:9090");
    config_free(&c);
}
END_TEST

/* ---- environment ----------------------------------------------------------- */

START_TEST(env_order)
{
    const char *path = write_file("c.yaml", "network:\n  bind_addr: 10.0.0.1:1\n"
                                            "storage:\n  data_dir: /from-file\n"
                                            "  wal_segment_size_mb: 8\n"
                                            "  fsync_policy: never\n");
    stm_config c;
    stm_err err = {0};

    /* file alone */
    ck_assert_int_eq(config_load(&c, path, &err), STM_OK);
    ck_assert_str_eq(c.bind_addr, "10.0.0.1:1");
    ck_assert_str_eq(c.data_dir, "/from-file");
    config_free(&c);

    /* RSTMDB_ over the file */
    setenv("RSTMDB_BIND", "10.0.0.2:2", 1);
    setenv("RSTMDB_DATA", "/from-rstmdb", 1);
    setenv("RSTMDB_FSYNC_POLICY", "EVERY_N:50", 1);
    ck_assert_int_eq(config_load(&c, path, &err), STM_OK);
    ck_assert_str_eq(c.bind_addr, "10.0.0.2:2");
    ck_assert_str_eq(c.data_dir, "/from-rstmdb");
    ck_assert_int_eq(c.fsync_policy.mode, WAL_SYNC_EVERY_N);
    ck_assert_uint_eq(c.fsync_policy.arg, 50);
    ck_assert_uint_eq(c.wal_segment_size_mb, 8); /* untouched key keeps the file's value */
    config_free(&c);

    /* STMFS_ over RSTMDB_ */
    setenv("STMFS_BIND", "10.0.0.3:3", 1);
    setenv("STMFS_DATA", "/from-stmfs", 1);
    setenv("STMFS_FSYNC_POLICY", "every_ms:20", 1);
    ck_assert_int_eq(config_load(&c, path, &err), STM_OK);
    ck_assert_str_eq(c.bind_addr, "10.0.0.3:3");
    ck_assert_str_eq(c.data_dir, "/from-stmfs");
    ck_assert_int_eq(c.fsync_policy.mode, WAL_SYNC_EVERY_MS);
    ck_assert_uint_eq(c.fsync_policy.arg, 20);
    config_free(&c);

    /* an empty variable counts as unset */
    setenv("STMFS_DATA", "", 1);
    ck_assert_int_eq(config_load(&c, path, &err), STM_OK);
    ck_assert_str_eq(c.data_dir, "/from-rstmdb");
    config_free(&c);
}
END_TEST

START_TEST(env_every_variable)
{
    static const struct {
        const char *var, *val;
    } vars[] = {
        {"RSTMDB_IDLE_TIMEOUT", "11"},
        {"RSTMDB_MAX_CONNECTIONS", "12"},
        {"RSTMDB_WAL_SEGMENT_SIZE_MB", "13"},
        {"RSTMDB_FSYNC_POLICY", "everywrite"},
        {"RSTMDB_MAX_MACHINE_VERSIONS", "14"},
        {"STMFS_IDEMPOTENCY_MAX_KEYS", "15"},
        {"RSTMDB_COMPACT_ENABLED", "FALSE"},
        {"RSTMDB_COMPACT_EVENTS", "16"},
        {"RSTMDB_COMPACT_SIZE_MB", "17"},
        {"RSTMDB_COMPACT_INTERVAL", "18"},
        {"RSTMDB_AUTH_REQUIRED", "1"},
        {"RSTMDB_AUTH_TOKEN_HASH", H1_UPPER},
        {"STMFS_AUTH_TOKEN_HASH", H2},
        {"RSTMDB_TLS_ENABLED", "True"},
        {"RSTMDB_TLS_CERT", "/c"},
        {"RSTMDB_TLS_KEY", "/k"},
        {"RSTMDB_TLS_REQUIRE_CLIENT_CERT", "true"},
        {"RSTMDB_TLS_CLIENT_CA", "/ca"},
        {"RSTMDB_METRICS_ENABLED", "1"},
        {"RSTMDB_METRICS_BIND", "[::]:9999"},
        {"STMFS_FUSE_ATTR_TIMEOUT", "1.5"},
        {"STMFS_FUSE_ENTRY_TIMEOUT", "2"},
        {"STMFS_FUSE_MAX_THREADS", "3"},
        {"STMFS_FUSE_ALLOW_OTHER", "1"},
        {"STMFS_FUSE_DEFAULT_PERMISSIONS", "true"},
        {"STMFS_FUSE_READ_ONLY", "1"},
        {"STMFS_LOG_FILE", "/l"},
        {"STMFS_LOG_LEVEL", "error"},
    };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        setenv(vars[i].var, vars[i].val, 1);
    stm_config c;
    stm_err err = {0};
    ck_assert_msg(config_load(&c, NULL, &err) == STM_OK, "%s", err.msg);
    ck_assert_uint_eq(c.idle_timeout_secs, 11);
    ck_assert_uint_eq(c.max_connections, 12);
    ck_assert_uint_eq(c.wal_segment_size_mb, 13);
    ck_assert_int_eq(c.fsync_policy.mode, WAL_SYNC_EVERY_WRITE);
    ck_assert_uint_eq(c.max_machine_versions, 14);
    ck_assert_uint_eq(c.idempotency_max_keys, 15);
    ck_assert(!c.compact_enabled);
    ck_assert_uint_eq(c.compact_events_threshold, 16);
    ck_assert_uint_eq(c.compact_size_threshold_mb, 17);
    ck_assert_uint_eq(c.compact_min_interval_secs, 18);
    ck_assert(c.auth_required);
    ck_assert_uint_eq(c.n_token_hashes, 2); /* both append */
    ck_assert_str_eq(c.token_hashes[0], H1);
    ck_assert_str_eq(c.token_hashes[1], H2);
    ck_assert(c.tls_enabled && c.tls_require_client_cert);
    ck_assert_str_eq(c.tls_cert_path, "/c");
    ck_assert_str_eq(c.tls_key_path, "/k");
    ck_assert_str_eq(c.tls_client_ca_path, "/ca");
    ck_assert(c.metrics_enabled);
    ck_assert_str_eq(c.metrics_bind_addr, "[::]:9999");
    ck_assert(c.fuse_attr_timeout == 1.5 && c.fuse_entry_timeout == 2);
    ck_assert_uint_eq(c.fuse_max_threads, 3);
    ck_assert(c.fuse_allow_other && c.fuse_default_permissions && c.fuse_read_only);
    ck_assert_str_eq(c.log_file, "/l");
    ck_assert_int_eq(c.log_level, LOG_ERROR);
    config_free(&c);
}
END_TEST

/* limits: each key, its ceiling, its variable, and the engine options. */
START_TEST(limits_section)
{
    stm_config c;
    stm_err err = {0};
    config_defaults(&c);
    eng_opts dflt;
    eng_opts_defaults(&dflt);
    ck_assert_mem_eq(&c.limits, &dflt.limits, sizeof c.limits);
    ck_assert_uint_eq(c.max_frame_bytes, 16u << 20);
    ck_assert_uint_eq(c.max_line_bytes, 16u << 20);
    config_free(&c);

    const char *yaml = "limits:\n"
                       "  max_id_bytes: 64\n"
                       "  max_states: 50\n"
                       "  max_transitions: 200\n"
                       "  max_guard_bytes: 256\n"
                       "  max_guard_depth: 8\n"
                       "  max_definition_bytes: 65536\n"
                       "  max_ctx_bytes: 4096\n"
                       "  max_payload_bytes: 1024\n"
                       "  max_frame_bytes: 1048576\n"
                       "  max_line_bytes: 2048\n";
    ck_assert_msg(parse(&c, yaml, &err) == STM_OK, "%s", err.msg);
    eng_opts o;
    config_to_eng_opts(&c, &o);
    ck_assert_uint_eq(o.limits.max_id_bytes, 64);
    ck_assert_uint_eq(o.limits.max_states, 50);
    ck_assert_uint_eq(o.limits.max_transitions, 200);
    ck_assert_uint_eq(o.limits.max_guard_bytes, 256);
    ck_assert_uint_eq(o.limits.max_guard_depth, 8);
    ck_assert_uint_eq(o.limits.max_definition_bytes, 65536);
    ck_assert_uint_eq(o.limits.max_ctx_bytes, 4096);
    ck_assert_uint_eq(o.limits.max_payload_bytes, 1024);
    ck_assert_uint_eq(c.max_frame_bytes, 1048576);
    ck_assert_uint_eq(c.max_line_bytes, 2048);
    config_free(&c);

    /* past a ceiling the format sets: refused, naming key and value */
    ck_assert_int_eq(parse(&c, "limits:\n  max_guard_depth: 65\n", &err), STM_BAD_REQUEST);
    ck_assert_msg(strstr(err.msg, "limits.max_guard_depth") && strstr(err.msg, "65") &&
                      strstr(err.msg, "at most 64"),
                  "%s", err.msg);
    config_free(&c);
    ck_assert_int_eq(parse(&c, "limits:\n  max_frame_bytes: 16777217\n", &err), STM_BAD_REQUEST);
    ck_assert_ptr_nonnull(strstr(err.msg, "limits.max_frame_bytes"));
    config_free(&c);
    ck_assert_int_eq(parse(&c, "limits:\n  max_states: 0\n", &err), STM_BAD_REQUEST);
    ck_assert_ptr_nonnull(strstr(err.msg, "at least 1"));
    config_free(&c);

    setenv("STMFS_MAX_STATES", "7", 1);
    setenv("STMFS_MAX_FRAME_BYTES", "4096", 1);
    ck_assert_msg(config_load(&c, NULL, &err) == STM_OK, "%s", err.msg);
    ck_assert_uint_eq(c.limits.max_states, 7);
    ck_assert_uint_eq(c.max_frame_bytes, 4096);
    config_free(&c);
}
END_TEST

START_TEST(env_config_path)
{
    const char *a = write_file("a.yaml", "storage:\n  data_dir: /a\n");
    const char *b = write_file("b.yaml", "storage:\n  data_dir: /b\n");
    stm_config c;
    stm_err err = {0};
    setenv("RSTMDB_CONFIG", a, 1);
    ck_assert_int_eq(config_load(&c, NULL, &err), STM_OK);
    ck_assert_str_eq(c.data_dir, "/a");
    config_free(&c);
    setenv("STMFS_CONFIG", b, 1);
    ck_assert_int_eq(config_load(&c, NULL, &err), STM_OK);
    ck_assert_str_eq(c.data_dir, "/b");
    config_free(&c);
    /* an explicit path beats both */
    ck_assert_int_eq(config_load(&c, a, &err), STM_OK);
    ck_assert_str_eq(c.data_dir, "/a");
    config_free(&c);
}
END_TEST

START_TEST(env_errors)
{
    setenv("RSTMDB_WAL_SEGMENT_SIZE_MB", "abc", 1);
    expect_load_error(NULL, "environment RSTMDB_WAL_SEGMENT_SIZE_MB: 'abc' is not a whole number");
    unsetenv("RSTMDB_WAL_SEGMENT_SIZE_MB");

    setenv("STMFS_BIND", "nowhere", 1);
    expect_load_error(NULL, "environment STMFS_BIND: 'nowhere' is not IP:PORT (e.g. "
                            "127.0.0.1:7401 or [::1]:7401) or none");
    unsetenv("STMFS_BIND");

    setenv("RSTMDB_FSYNC_POLICY", "every_n:lots", 1);
    expect_load_error(NULL, "environment RSTMDB_FSYNC_POLICY: 'every_n:lots' needs a whole "
                            "number of writes (every_n: 100)");
    setenv("RSTMDB_FSYNC_POLICY", "fast", 1);
    expect_load_error(NULL, "environment RSTMDB_FSYNC_POLICY: 'fast' is not a fsync policy "
                            "(every_write, never, every_n: N or every_ms: M)");
    unsetenv("RSTMDB_FSYNC_POLICY");

    setenv("RSTMDB_TLS_ENABLED", "yes", 1);
    expect_load_error(NULL, "environment RSTMDB_TLS_ENABLED: 'yes' is not a boolean (use 1, "
                            "true, 0 or false)");
    unsetenv("RSTMDB_TLS_ENABLED");

    setenv("RSTMDB_AUTH_TOKEN_HASH", "secret", 1);
    expect_load_error(NULL, "environment RSTMDB_AUTH_TOKEN_HASH: 'secret' is not a SHA-256 hash "
                            "(64 hex digits)");
    unsetenv("RSTMDB_AUTH_TOKEN_HASH");

    setenv("STMFS_METRICS_BIND", "9090", 1);
    expect_load_error(NULL, "environment STMFS_METRICS_BIND: '9090' is not IP:PORT (e.g. "
                            "127.0.0.1:9090 or [::1]:9090)");
    unsetenv("STMFS_METRICS_BIND");

    /* the file's error comes first: it is read before the environment */
    const char *bad = write_file("bad.yaml", "storage:\n  wal_segment_size_mb: abc\n");
    expect_load_error(bad, "config storage.wal_segment_size_mb: 'abc' is not a whole number");
}
END_TEST

START_TEST(rust_log)
{
    stm_config c;
    stm_err err = {0};
    setenv("RUST_LOG", "warn", 1);
    ck_assert_int_eq(config_load(&c, NULL, &err), STM_OK);
    ck_assert_int_eq(c.log_level, LOG_WARN);
    config_free(&c);
    /* a directive list: the bare level is taken, the rest left alone */
    setenv("RUST_LOG", "debug,hyper=info", 1);
    ck_assert_int_eq(config_load(&c, NULL, &err), STM_OK);
    ck_assert_int_eq(c.log_level, LOG_DEBUG);
    config_free(&c);
    /* something only other programs understand is not our error */
    setenv("RUST_LOG", "hyper=info", 1);
    ck_assert_int_eq(config_load(&c, NULL, &err), STM_OK);
    ck_assert_int_eq(c.log_level, LOG_INFO);
    config_free(&c);
    /* STMFS_LOG_LEVEL wins */
    setenv("RUST_LOG", "debug", 1);
    setenv("STMFS_LOG_LEVEL", "error", 1);
    ck_assert_int_eq(config_load(&c, NULL, &err), STM_OK);
    ck_assert_int_eq(c.log_level, LOG_ERROR);
    config_free(&c);
}
END_TEST

/* ---- secrets file ---------------------------------------------------------- */

START_TEST(secrets_file)
{
    const char *secrets = write_file("s", "# tokens\n\n   \n" H1_UPPER "\r\n\t" H2 "  \n# end\n");
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "auth:\n  required: true\n  token_hashes: [" H2 "]\n  secrets_file: %s\n", secrets);
    const char *path = write_file("c.yaml", yaml);
    stm_config c;
    stm_err err = {0};
    ck_assert_msg(config_load(&c, path, &err) == STM_OK, "%s", err.msg);
    /* appended after the listed hashes, lower-cased */
    ck_assert_uint_eq(c.n_token_hashes, 3);
    ck_assert_str_eq(c.token_hashes[0], H2);
    ck_assert_str_eq(c.token_hashes[1], H1);
    ck_assert_str_eq(c.token_hashes[2], H2);
    config_free(&c);

    /* named by the environment */
    setenv("STMFS_AUTH_SECRETS_FILE", secrets, 1);
    setenv("STMFS_AUTH_REQUIRED", "true", 1);
    ck_assert_int_eq(config_load(&c, NULL, &err), STM_OK);
    ck_assert_uint_eq(c.n_token_hashes, 2);
    config_free(&c);
    unsetenv("STMFS_AUTH_REQUIRED");

    /* unreadable */
    setenv("STMFS_AUTH_SECRETS_FILE", "/nonexistent/tokens", 1);
    expect_load_error(NULL, "config auth.secrets_file: cannot read '/nonexistent/tokens': No such "
                            "file or directory");

    /* a line that is not a hash: named by file and line */
    const char *bad = write_file("bad", "# ok\n" H1 "\nmy-secret-token\n");
    setenv("STMFS_AUTH_SECRETS_FILE", bad, 1);
    char msg[512];
    snprintf(msg, sizeof msg,
             "config auth.secrets_file %s line 3: 'my-secret-token' is not a SHA-256 hash (64 hex "
             "digits)",
             bad);
    expect_load_error(NULL, msg);
}
END_TEST

/* ---- refusals ---------------------------------------------------------------- */

START_TEST(refusals)
{
    expect_load_error(write_file("r1.yaml", "auth:\n  required: true\n"),
                      "config auth.required is true but no token hash is configured (set "
                      "auth.token_hashes, auth.secrets_file or STMFS_AUTH_TOKEN_HASH)");
    /* a secrets file with only comments still leaves zero hashes */
    char yaml[256];
    snprintf(yaml, sizeof yaml, "auth:\n  required: true\n  secrets_file: %s\n",
             write_file("empty.secret", "# none yet\n"));
    expect_load_error(write_file("r1b.yaml", yaml),
                      "config auth.required is true but no token hash is configured (set "
                      "auth.token_hashes, auth.secrets_file or STMFS_AUTH_TOKEN_HASH)");
    expect_load_error(write_file("r2.yaml", "tls:\n  enabled: true\n  key_path: /k\n"),
                      "config tls.enabled is true but tls.cert_path is not set");
    expect_load_error(write_file("r3.yaml", "tls:\n  enabled: true\n  cert_path: /c\n"),
                      "config tls.enabled is true but tls.key_path is not set");
    expect_load_error(write_file("r4.yaml", "tls:\n  enabled: true\n  cert_path: /c\n"
                                            "  key_path: /k\n  require_client_cert: true\n"),
                      "config tls.require_client_cert is true but tls.client_ca_path is not set");
    expect_load_error("/nonexistent/stmfs.yaml",
                      "config /nonexistent/stmfs.yaml: cannot read: No such file or directory");
}
END_TEST

START_TEST(syntax_error_names_file)
{
    const char *p = write_file("syn.yaml", "storage:\n  data_dir: \"open\n");
    stm_config c;
    stm_err err = {0};
    ck_assert_int_eq(config_load(&c, p, &err), STM_BAD_REQUEST);
    char prefix[256];
    snprintf(prefix, sizeof prefix, "config %s: invalid YAML at line ", p);
    ck_assert_msg(strncmp(err.msg, prefix, strlen(prefix)) == 0, "%s", err.msg);
    config_free(&c);
}
END_TEST

/* ---- engine options ------------------------------------------------------------ */

START_TEST(to_eng_opts)
{
    stm_config c;
    stm_err err;
    ck_assert_int_eq(parse(&c,
                           "storage:\n  data_dir: /x\n  wal_segment_size_mb: 3\n"
                           "  fsync_policy: {every_n: 9}\n  max_machine_versions: 5\n"
                           "  idempotency_max_keys: 6\n"
                           "compaction:\n  enabled: false\n  events_threshold: 7\n"
                           "  size_threshold_mb: 8\n  min_interval_secs: 9\n",
                           &err),
                     STM_OK);
    eng_opts o;
    memset(&o, 0xab, sizeof o);
    config_to_eng_opts(&c, &o);
    ck_assert_str_eq(o.data_dir, "/x");
    ck_assert_uint_eq(o.segment_size, 3u << 20);
    ck_assert_int_eq(o.sync.mode, WAL_SYNC_EVERY_N);
    ck_assert_uint_eq(o.sync.arg, 9);
    ck_assert_uint_eq(o.max_machine_versions, 5);
    ck_assert_uint_eq(o.idempotency_max_keys, 6);
    ck_assert(!o.compact_enabled);
    ck_assert_uint_eq(o.compact_events_threshold, 7);
    ck_assert_uint_eq(o.compact_size_threshold_mb, 8);
    ck_assert_uint_eq(o.compact_min_interval_secs, 9);
    /* what the config does not set comes from the engine's defaults */
    ck_assert(!o.repair && !o.read_only);
    ck_assert_ptr_null(o.io);
    config_free(&c);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("config");
    TCase *t = tcase_create("config");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, defaults);
    tcase_add_test(t, every_key);
    tcase_add_test(t, unknown_ignored);
    tcase_add_test(t, bind_none_and_null_paths);
    tcase_add_test(t, fsync_forms);
    tcase_add_test(t, fsync_errors);
    tcase_add_test(t, value_errors);
    tcase_add_test(t, log_level_names);
    tcase_add_test(t, production_sample);
    tcase_add_test(t, env_order);
    tcase_add_test(t, env_every_variable);
    tcase_add_test(t, env_config_path);
    tcase_add_test(t, limits_section);
    tcase_add_test(t, env_errors);
    tcase_add_test(t, rust_log);
    tcase_add_test(t, secrets_file);
    tcase_add_test(t, refusals);
    tcase_add_test(t, unknown_keys_named);
    tcase_add_test(t, syntax_error_names_file);
    tcase_add_test(t, to_eng_opts);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
