/*
 * reaper.c - the processes beside the daemon: forking them safely, and the
 * reaper, which aborts the FUSE connection when the daemon is killed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs/internal.h"

int fs_child_fds(int fd)
{
    if (fd != 3) {
        dup2(fd, 3);
        fd = 3;
    }
    close_range(4, ~0U, 0);
    util_stdio_to_null();
    return fd;
}

/* ---- the reaper process -----------------------------------------------------
 *
 * One case the inotify helper (notify.c) does not cover: a notifier thread of
 * the daemon waits in fuse_lowlevel_notify_inval_entry for the lock of a
 * directory (instances/) that a pending request holds, the helper's mkdir
 * or a user's rmdir, when kill -9 comes. The daemon's other threads die, so
 * the request is never answered; the notifier's wait cannot be killed, so
 * the process never finishes dying and never releases /dev/fuse, and the
 * kernel never aborts the connection: every process that touches the
 * mount hangs for good (seen in t-mount-durability, about once in a few
 * dozen kill -9). The reaper is a second child that sleeps until the
 * thread that mounted dies (PDEATHSIG) and then aborts the connection
 * through fusectl, which fails the pending requests and lets the daemon's
 * last thread out. A clean stop kills it first. Like the helper it is
 * forked with threads running, so it only makes async-signal-safe calls. */
static pid_t reaper_pid;
static int reaper_fd = -1;
static char reaper_mnt[PATH_MAX];

/* The minor device number of the last FUSE mount on mnt in
 * /proc/self/mountinfo (its fusectl connection), or -1. Field 5 is the
 * mount point with space, tab, newline and backslash as \ooo; field 3 is
 * major:minor; the file system type follows " - ". */
static long mount_minor(const char *mnt)
{
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    static char line[16384], chunk[4096];
    size_t ll = 0;
    long found = -1;
    bool eof = false;
    while (!eof) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n <= 0) eof = true;
        for (ssize_t i = 0; i < (n > 0 ? n : 0) || (eof && ll); i++) {
            char ch = eof ? '\n' : chunk[i];
            if (ch != '\n') {
                if (ll < sizeof line - 1) line[ll++] = ch;
                continue;
            }
            line[ll] = 0;
            /* fields: id parent major:minor root mountpoint ... */
            char *f[5] = {0}, *p = line;
            int k = 0;
            for (; *p && k < 5; k++) {
                f[k] = p;
                while (*p && *p != ' ') p++;
                if (*p) *p++ = 0;
            }
            /* p: the rest of the line, where " - TYPE" is */
            const char *dash = k == 5 ? strstr(p, " - fuse") : NULL;
            if (dash) {
                /* unescape the mount point in place */
                char *o = f[4];
                for (const char *q = f[4]; *q;) {
                    if (q[0] == '\\' && q[1] >= '0' && q[1] <= '3' && q[2] >= '0' && q[2] <= '7' &&
                        q[3] >= '0' && q[3] <= '7') {
                        *o++ = (char)((q[1] - '0') * 64 + (q[2] - '0') * 8 + (q[3] - '0'));
                        q += 4;
                    } else {
                        *o++ = *q++;
                    }
                }
                *o = 0;
                const char *colon = strchr(f[2], ':');
                if (colon && strcmp(f[4], mnt) == 0) {
                    long v = 0;
                    for (const char *q = colon + 1; *q >= '0' && *q <= '9'; q++) v = v * 10 + (*q - '0');
                    found = v;
                }
            }
            ll = 0;
            if (eof) break;
        }
    }
    close(fd);
    return found;
}

static void abort_connection(const char *mnt)
{
    long minor = mount_minor(mnt);
    if (minor < 0) return;
    char path[64] = "/sys/fs/fuse/connections/", digits[24];
    size_t n = 0, pl = strlen(path);
    do {
        digits[n++] = (char)('0' + minor % 10);
        minor /= 10;
    } while (minor && n < sizeof digits);
    while (n) path[pl++] = digits[--n];
    memcpy(path + pl, "/abort", 7);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    if (write(fd, "1", 1) < 0) {
        /* nothing more to try */
    }
    close(fd);
}

static void reaper_main(int rfd, pid_t parent)
{
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    /* The death signal stays blocked and is taken with sigtimedwait, never
     * by a handler: a handler's flag can be set between the check and the
     * wait, and a runtime that defers handlers (ThreadSanitizer's does)
     * would never run it inside the wait at all. */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    prctl(PR_SET_PDEATHSIG, SIGUSR1);
    rfd = fs_child_fds(rfd);
    /* the signal as a readable fd, so the wait needs no timeout; without
     * one the loop looks for the signal once a second */
    int sfd = signalfd(-1, &usr1, SFD_CLOEXEC);
    const struct timespec now = {0, 0};
    bool gone = getppid() != parent;
    while (!gone) {
        struct pollfd pf[2] = {{rfd, POLLIN, 0}, {sfd, POLLIN, 0}};
        int r = poll(pf, sfd >= 0 ? 2 : 1, sfd >= 0 ? -1 : 1000);
        if (r > 0 && pf[0].revents) {
            char c;
            if (read(rfd, &c, 1) <= 0) _exit(0); /* the daemon closed it: a clean stop */
        }
        gone = sigtimedwait(&usr1, NULL, &now) == SIGUSR1;
    }
    abort_connection(reaper_mnt);
    _exit(0);
}

pid_t fs_fork_child(void (*child)(int, pid_t), const char *what, int *ours, stm_err *err)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        stm_fail(err, STM_INTERNAL_ERROR, "socketpair: %s", strerror(errno));
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        stm_fail(err, STM_INTERNAL_ERROR, "fork of the %s: %s", what, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        child(sv[1], parent);
        _exit(0);
    }
    close(sv[1]);
    *ours = sv[0];
    return pid;
}

int fs_reaper_start(const char *mnt, stm_err *err)
{
    size_t ml = strlen(mnt);
    if (ml >= sizeof reaper_mnt) return 0; /* cannot be named: no reaper */
    memcpy(reaper_mnt, mnt, ml + 1);
    pid_t pid = fs_fork_child(reaper_main, "reaper", &reaper_fd, err);
    if (pid < 0) return -1;
    reaper_pid = pid;
    return 0;
}

void fs_reaper_stop(void)
{
    if (reaper_pid > 0) {
        kill(reaper_pid, SIGKILL);
        waitpid(reaper_pid, NULL, 0);
    }
    reaper_pid = 0;
    if (reaper_fd >= 0) close(reaper_fd);
    reaper_fd = -1;
}
