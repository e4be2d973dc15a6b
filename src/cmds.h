/*
 * cmds.h - the subcommands of the stmfs program, one file each.
 * Each takes the arguments after its own name (argv[0] is the command name),
 * prints its own usage on --help, and returns the process exit status:
 * 0 success, 1 failure, 2 bad usage.
 */
#ifndef STM_CMDS_H
#define STM_CMDS_H

int cmd_mount(int argc, char **argv);   /* src/cmd_mount.c */
int cmd_serve(int argc, char **argv);   /* src/cmd_serve.c */
int cmd_wal(int argc, char **argv);     /* src/cmd_wal.c: verify | dump */
int cmd_replay(int argc, char **argv);  /* src/cmd_replay.c */
int cmd_call(int argc, char **argv);    /* src/cmd_call.c: call and watch */
int cmd_watch(int argc, char **argv);

#endif
