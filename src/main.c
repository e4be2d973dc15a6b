/*
 * main.c - `stmfs <command> ...`: picks the subcommand.
 */
#include <stdio.h>
#include <string.h>

#include "base/util.h"
#include "src/cmds.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} commands[] = {
    {"mount", cmd_mount, "mount DATA_DIR MOUNTPOINT   recover, mount, serve RCP beside it"},
    {"serve", cmd_serve, "serve DATA_DIR              RCP only, no FUSE"},
    {"wal", cmd_wal, "wal verify|dump DATA_DIR    check or print the write-ahead log"},
    {"replay", cmd_replay, "replay DATA_DIR [--at OFF]  state at any point of the log"},
    {"call", cmd_call, "call [--addr A] OP [JSON]   send one RCP request, print the result"},
    {"watch", cmd_watch, "watch [--addr A] [filters]  stream events over RCP"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: stmfs <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %s\n", commands[i].summary);
    fprintf(out, "\n`stmfs <command> --help` lists the options of each command;\n"
                 "`stmfs --version` prints the version.\n");
}

int main(int argc, char **argv)
{
    /* Every command that opens the log holds a descriptor per segment
     * (wal_open), so the soft limit goes up to the hard one for all. */
    util_raise_fd_limit();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("stmfs %s\n", STMFS_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "stmfs: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
