/*
 * fsbench.c - the timing loops of the mount benchmark (bench/fs.sh runs
 * them against a mount and against tmpfs, and prints the table of
 * bench/README.md). Each mode prints one line of key=value pairs.
 *
 *   fsbench write NPROC COUNT PATH_FMT [LINE] [--append]
 *       Forks NPROC writers. Writer i (1..NPROC) opens PATH_FMT with its
 *       "%d" replaced by i (O_WRONLY; with --append also O_CREAT|O_APPEND,
 *       for plain files), keeps that fd, and writes COUNT lines "LINE\n"
 *       (default "TICK"), one write(2) per line, as a shell writer holding
 *       events open would. All writers start together after opening; the
 *       clock runs from their start to the last one's exit.
 *       Prints: mode=write nproc=N ops=TOTAL secs=S ops_per_s=R
 *
 *   fsbench read COUNT PATH
 *       COUNT times: open, read to end, close.
 *       Prints: mode=read ops=COUNT bytes_per_op=B secs=S ops_per_s=R us_per_op=U
 *
 * Exit status 0, or 1 with a message on stderr when any call fails (a
 * write a mount rejects is a failed benchmark, not a slower one).
 *
 * Example (a mount at /tmp/m with instances w-1..w-16 of a machine whose
 * event TICK loops on its state):
 *   fsbench write 16 2000 /tmp/m/instances/w-%d/events
 *   fsbench write 16 2000 /dev/shm/x/ev-%d TICK --append
 *   fsbench read 20000 /tmp/m/instances/w-1/state
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* O_CLOEXEC, clock_gettime, usleep when built outside meson */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(void)
{
    fprintf(stderr, "usage: fsbench write NPROC COUNT PATH_FMT [LINE] [--append]\n"
                    "       fsbench read COUNT PATH\n");
    return 2;
}

static long parse_count(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v <= 0)
        return -1;
    return v;
}

/* Replaces the first "%d" of fmt by i; the format is the user's, so it is
 * not handed to printf. */
static int expand(char *out, size_t cap, const char *fmt, long i)
{
    const char *p = strstr(fmt, "%d");
    int n;
    if (!p)
        n = snprintf(out, cap, "%s", fmt);
    else
        n = snprintf(out, cap, "%.*s%ld%s", (int)(p - fmt), fmt, i, p + 2);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* One writer: open, wait for the start signal, write count lines. */
static int writer(long i, long count, const char *fmt, const char *line, int append, int go)
{
    char path[4096], buf[1024];
    if (expand(path, sizeof path, fmt, i) != 0) {
        fprintf(stderr, "fsbench: path too long\n");
        return 1;
    }
    int flags = O_WRONLY | O_CLOEXEC | (append ? O_CREAT | O_APPEND : 0);
    int fd = open(path, flags, 0644);
    if (fd < 0) {
        fprintf(stderr, "fsbench: open %s: %s\n", path, strerror(errno));
        return 1;
    }
    int len = snprintf(buf, sizeof buf, "%s\n", line);
    if (len < 0 || (size_t)len >= sizeof buf)
        return 1;
    char c;
    if (read(go, &c, 1) < 0) /* blocks until the parent closes its end */
        return 1;
    for (long k = 0; k < count; k++) {
        ssize_t w = write(fd, buf, (size_t)len);
        if (w != len) {
            fprintf(stderr, "fsbench: write %s (line %ld): %s\n", path, k + 1,
                    w < 0 ? strerror(errno) : "short write");
            close(fd);
            return 1;
        }
    }
    if (close(fd) != 0) {
        fprintf(stderr, "fsbench: close %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static int cmd_write(int argc, char **argv)
{
    if (argc < 5)
        return usage();
    long nproc = parse_count(argv[2]), count = parse_count(argv[3]);
    const char *fmt = argv[4], *line = "TICK";
    int append = 0;
    for (int a = 5; a < argc; a++) {
        if (strcmp(argv[a], "--append") == 0)
            append = 1;
        else
            line = argv[a];
    }
    if (nproc < 0 || count < 0 || nproc > 1024)
        return usage();

    int go[2];
    if (pipe(go) != 0) {
        perror("fsbench: pipe");
        return 1;
    }
    pid_t *pids = calloc((size_t)nproc, sizeof *pids);
    if (!pids)
        return 1;
    for (long i = 0; i < nproc; i++) {
        pid_t p = fork();
        if (p < 0) {
            perror("fsbench: fork");
            return 1;
        }
        if (p == 0) {
            close(go[1]);
            _exit(writer(i + 1, count, fmt, line, append, go[0]));
        }
        pids[i] = p;
    }
    close(go[0]);
    /* Give the writers their open(2) before the clock starts: the benchmark
     * is about lines through an open fd, not about opening. */
    usleep(200000);
    double t0 = now();
    close(go[1]);
    int failed = 0;
    for (long i = 0; i < nproc; i++) {
        int st;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed = 1;
    }
    double secs = now() - t0;
    free(pids);
    if (failed) {
        fprintf(stderr, "fsbench: a writer failed\n");
        return 1;
    }
    double ops = (double)nproc * (double)count;
    printf("mode=write nproc=%ld ops=%.0f secs=%.4f ops_per_s=%.0f\n", nproc, ops, secs,
           ops / secs);
    return 0;
}

static int cmd_read(int argc, char **argv)
{
    if (argc != 4)
        return usage();
    long count = parse_count(argv[2]);
    const char *path = argv[3];
    if (count < 0)
        return usage();
    static char buf[1 << 16];
    long long bytes = 0;
    double t0 = now();
    for (long k = 0; k < count; k++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "fsbench: open %s: %s\n", path, strerror(errno));
            return 1;
        }
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0)
            bytes += r;
        if (r < 0) {
            fprintf(stderr, "fsbench: read %s: %s\n", path, strerror(errno));
            close(fd);
            return 1;
        }
        close(fd);
    }
    double secs = now() - t0;
    if (bytes == 0) {
        fprintf(stderr, "fsbench: %s read empty\n", path);
        return 1;
    }
    printf("mode=read ops=%ld bytes_per_op=%lld secs=%.4f ops_per_s=%.0f us_per_op=%.2f\n", count,
           bytes / count, secs, (double)count / secs, secs * 1e6 / (double)count);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "write") == 0)
        return cmd_write(argc, argv);
    if (strcmp(argv[1], "read") == 0)
        return cmd_read(argc, argv);
    return usage();
}
