/*
 * cmd_serve.c - `stmfs serve DATA_DIR [-c config.yaml] [--bind ADDR]`: the
 * database over RCP only, no mount. Runs in the foreground until SIGTERM or
 * SIGINT, then stops accepting, sends every queued answer, syncs and exits 0.
 *
 * Prints "listening on ADDR" on stdout once the listener is bound (with
 * --bind 127.0.0.1:0 that is how a caller learns the port); logs go to
 * stderr, or to logging.file when the config names one.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/util.h"
#include "engine/engine.h"
#include "rcp/rcp.h"
#include "src/cmds.h"
#include "src/config.h"
#include "src/fault_ctl.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: stmfs serve DATA_DIR [-c config.yaml] [--bind ADDR]\n"
                 "\n"
                 "Recovers the database in DATA_DIR and serves it over RCP, the protocol of\n"
                 "rstmdb (its CLI and clients work unchanged), until SIGTERM or SIGINT.\n"
                 "\n"
                 "  -c, --config FILE   YAML configuration (rstmdb's keys); RSTMDB_* and\n"
                 "                      STMFS_* environment variables override it\n"
                 "  --bind ADDR         listen address IP:PORT (default 127.0.0.1:7401;\n"
                 "                      port 0 picks a free port); overrides the config\n"
                 "  -h, --help          this text\n"
                 "\n"
                 "Prints \"listening on ADDR\" on stdout when ready.\n");
}

int cmd_serve(int argc, char **argv)
{
    const char *data_dir = NULL, *config_path = NULL, *bind = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (++i >= argc) goto bad;
            config_path = argv[i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            config_path = a + 9;
        } else if (strcmp(a, "--bind") == 0) {
            if (++i >= argc) goto bad;
            bind = argv[i];
        } else if (strncmp(a, "--bind=", 7) == 0) {
            bind = a + 7;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "stmfs serve: unknown option '%s'\n", a);
            goto bad;
        } else if (!data_dir) {
            data_dir = a;
        } else {
            fprintf(stderr, "stmfs serve: unexpected argument '%s'\n", a);
            goto bad;
        }
    }
    if (!data_dir) goto bad;

    stm_config cfg;
    stm_err err = {0};
    if (config_load(&cfg, config_path, &err) != STM_OK) {
        fprintf(stderr, "stmfs serve: %s\n", err.msg);
        return 1;
    }
    /* Flags override the file and the environment. */
    free(cfg.data_dir);
    cfg.data_dir = xstrdup(data_dir);
    if (bind && !config_valid_addr(bind)) {
        fprintf(stderr, "stmfs serve: --bind wants IP:PORT with a literal address "
                        "(127.0.0.1:7401, [::1]:7401), not '%s'\n", bind);
        config_free(&cfg);
        return 2;
    }
    if (bind) {
        free(cfg.bind_addr);
        cfg.bind_addr = xstrdup(bind);
    }
    FILE *logf = NULL;
    if (cfg.log_file) {
        logf = fopen(cfg.log_file, "a");
        if (!logf) {
            fprintf(stderr, "stmfs serve: cannot open log file %s: %s\n", cfg.log_file,
                    strerror(errno));
            config_free(&cfg);
            return 1;
        }
    }
    log_setup(logf, cfg.log_level);
    if (cfg.ignored)
        log_warn("config: ignoring %s: no such setting (a typo? unknown keys are ignored, as "
                 "rstmdb ignores them)", cfg.ignored);

    /* Block the stop signals before any thread starts, so every thread
     * inherits the mask and sigwait below is the only receiver. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    log_debug("open descriptors: up to %llu", util_raise_fd_limit());
    util_tune_malloc();
    eng_opts o;
    config_to_eng_opts(&cfg, &o);
    o.data_dir = cfg.data_dir;
    o.io = fault_ctl_start(); /* NULL unless a fault-injection build and STMFS_FAULT_CTL */
    eng *e = NULL;
    wal_recovery rep;
    memset(&rep, 0, sizeof rep);
    if (eng_open(&o, &e, &rep, &err) != STM_OK) {
        log_error("cannot open %s: %s", cfg.data_dir, err.msg);
        fprintf(stderr, "stmfs serve: cannot open %s: %s\n", cfg.data_dir, err.msg);
        fault_ctl_stop();
        config_free(&cfg);
        if (logf) fclose(logf);
        return 1;
    }
    log_info("recovered %s: %llu records in %llu segments (%llu bytes)", cfg.data_dir,
             (unsigned long long)rep.records, (unsigned long long)rep.segments,
             (unsigned long long)rep.bytes);
    if (rep.zero_tail) log_info("WAL recovery: %s", rep.message);
    else if (rep.message[0]) log_warn("WAL recovery: %s", rep.message);

    rcp_server *srv = NULL;
    if (rcp_start(e, &cfg, &srv, &err) != STM_OK) {
        log_error("%s", err.msg);
        fprintf(stderr, "stmfs serve: %s\n", err.msg);
        eng_close(e);
        fault_ctl_stop();
        config_free(&cfg);
        if (logf) fclose(logf);
        return 1;
    }
    log_info("RCP listening on %s%s%s", rcp_bound_addr(srv), cfg.tls_enabled ? " (TLS)" : "",
             cfg.auth_required ? " (auth required)" : "");
    printf("listening on %s\n", rcp_bound_addr(srv));
    fflush(stdout);

    int sig = 0;
    while (sigwait(&stop, &sig) != 0) {
    }
    log_info("%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    rcp_stop(srv);
    eng_close(e);
    fault_ctl_stop();
    log_info("stopped");
    config_free(&cfg);
    if (logf) {
        log_setup(NULL, LOG_ERROR);
        fclose(logf);
    }
    return 0;
bad:
    usage(stderr);
    return 2;
}
