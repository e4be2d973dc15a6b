/* Placeholder until the wal command lands; replaced by its module's owner. */
#include <stdio.h>

#include "src/cmds.h"

int cmd_wal(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "stmfs %s: not available in this build yet\n", argv[0]);
    return 1;
}
