/*
 * cmd_replay.c - `stmfs replay DATA_DIR [--at OFFSET] [--instance ID] [--verify]`
 *
 * Prints the database (or one instance) as it stood after every record at
 * or before OFFSET, rebuilt from the log alone. --verify rebuilds everything
 * from the full log and through normal recovery and compares the two byte
 * for byte. Reads only: the data directory is never modified, so it is safe
 * on a copy of a live database or an archived one.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "src/cmds.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: stmfs replay DATA_DIR [--at OFFSET] [--instance ID] [--verify]\n"
            "\n"
            "Rebuilds the state from the write-ahead log and prints it as JSON.\n"
            "\n"
            "  --at OFFSET     only records at or before this WAL offset (default: all)\n"
            "  --instance ID   print only this instance\n"
            "  --verify        rebuild from the full log and through recovery, compare\n"
            "  -h, --help      this text\n");
}

int cmd_replay(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"at", required_argument, NULL, 'a'},
        {"instance", required_argument, NULL, 'i'},
        {"verify", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t at = UINT64_MAX;
    const char *instance = NULL;
    bool verify = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'a': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-') {
                fprintf(stderr, "stmfs replay: --at wants a WAL offset (a whole number), not '%s'\n",
                        optarg);
                return 2;
            }
            at = v;
            break;
        }
        case 'i': instance = optarg; break;
        case 'v': verify = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    const char *dir = argv[optind];
    buf out = {0};
    stm_err err;
    stm_code rc = verify ? eng_replay_verify(dir, &out, &err)
                         : eng_replay(dir, at, instance, &out, &err);
    fputs(buf_cstr(&out), stdout);
    buf_free(&out);
    if (rc != STM_OK) {
        fprintf(stderr, "stmfs replay: %s\n", err.msg);
        return 1;
    }
    return 0;
}
