/* Placeholder until the mount command lands; replaced by its module's owner. */
#include <stdio.h>

#include "src/cmds.h"

int cmd_mount(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "stmfs %s: not available in this build yet\n", argv[0]);
    return 1;
}
