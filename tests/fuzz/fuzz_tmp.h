/*
 * fuzz_tmp.h - the one scratch directory of a fuzz process.
 *
 * Targets that need files (WAL segments, snapshots, a data dir) get one
 * directory per process, made on first use under /dev/shm when it exists
 * (fsync there is free, which keeps the exec rate up) or else $TMPDIR or
 * /tmp. fuzz_tmp_clear empties it between inputs, so no input sees files of
 * the one before and a crash reproduces from its input alone; it is removed
 * at exit. A process that crashes or times out exits without cleaning up;
 * its directory is named after its pid, so the next fuzz process to start
 * removes the directories of pids that no longer run (with fork mode and
 * -ignore_crashes there can be hundreds).
 */
#ifndef STM_FUZZ_TMP_H
#define STM_FUZZ_TMP_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char fuzz_tmp_root[256];

static inline int fuzz_tmp_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    if (ftw->level == 0) return 0; /* keep the root itself */
    return remove(path);
}

/* Empties the scratch directory (keeps the directory). */
static inline void fuzz_tmp_clear(void)
{
    if (fuzz_tmp_root[0]) nftw(fuzz_tmp_root, fuzz_tmp_rm, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void fuzz_tmp_remove(void)
{
    fuzz_tmp_clear();
    if (fuzz_tmp_root[0]) rmdir(fuzz_tmp_root);
}

/* Removes base/stmfs-fuzz-<pid>-* of processes that are gone. */
static inline void fuzz_tmp_sweep(const char *base)
{
    DIR *d = opendir(base);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        long pid;
        char tail[16];
        if (sscanf(de->d_name, "stmfs-fuzz-%ld-%15s", &pid, tail) != 2 || pid <= 0) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        snprintf(fuzz_tmp_root, sizeof fuzz_tmp_root, "%s/%s", base, de->d_name);
        fuzz_tmp_remove();
    }
    closedir(d);
    fuzz_tmp_root[0] = 0;
}

/* The scratch directory, created on the first call. Aborts if it cannot be
 * made: a fuzz run without it would test nothing. */
static inline const char *fuzz_tmp_dir(void)
{
    if (fuzz_tmp_root[0]) return fuzz_tmp_root;
    const char *base = "/dev/shm";
    if (access(base, W_OK) != 0) {
        base = getenv("TMPDIR");
        if (!base || !*base) base = "/tmp";
    }
    fuzz_tmp_sweep(base);
    snprintf(fuzz_tmp_root, sizeof fuzz_tmp_root, "%s/stmfs-fuzz-%ld-XXXXXX", base, (long)getpid());
    if (!mkdtemp(fuzz_tmp_root)) {
        perror("stmfs fuzz: mkdtemp");
        abort();
    }
    atexit(fuzz_tmp_remove);
    return fuzz_tmp_root;
}

/* Writes data to dir/name (creating dir). Aborts on failure. */
static inline void fuzz_tmp_write(const char *dir, const char *name, const void *data, size_t len)
{
    char path[512];
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror("stmfs fuzz: open");
        abort();
    }
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n <= 0) {
            perror("stmfs fuzz: write");
            abort();
        }
        p += n;
        len -= (size_t)n;
    }
    close(fd);
}

#endif
