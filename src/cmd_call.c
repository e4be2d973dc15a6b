/* Placeholder until the call command lands; replaced by its module's owner. */
#include <stdio.h>

#include "src/cmds.h"

int cmd_call(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "stmfs %s: not available in this build yet\n", argv[0]);
    return 1;
}

int cmd_watch(int argc, char **argv)
{
    return cmd_call(argc, argv);
}
