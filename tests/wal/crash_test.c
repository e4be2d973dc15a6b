/*
 * crash_test.c - SIGKILL a writer at random moments; every record it
 * acknowledged must be intact after recovery.
 *
 *   crash_test PATH/TO/crash_writer [ROUNDS]
 *
 * Rounds default to 50 (500 with STMFS_SOAK=1). Each round starts
 * crash_writer on the same directory, reads the acknowledged records it
 * prints, kills it after 20-300 ms, then recovers the log and checks: it
 * opens (a torn tail is fine), sequence numbers run without gaps in file
 * order, wal_verify accepts the hash chain, and every record acknowledged
 * in any round so far is there with its sequence, length and CRC. Prints
 * one line per round and a summary; exits 1 on the first violation.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "base/util.h"
#include "wal/wal.h"

typedef struct {
    uint64_t offset, seq;
    uint32_t len, crc;
} ack;

static ack *acks;
static size_t nacks, capacks;

static void parse_lines(buf *in, size_t *consumed)
{
    size_t i = *consumed;
    for (;;) {
        char *nl = memchr(in->data + i, '\n', in->len - i);
        if (!nl) break;
        ack a;
        unsigned long long o, s;
        unsigned l, c;
        if (sscanf(in->data + i, "%llu %llu %u %x", &o, &s, &l, &c) == 4) {
            a = (ack){o, s, l, c};
            if (nacks == capacks) {
                capacks = capacks ? 2 * capacks : 1024;
                acks = xrealloc(acks, capacks * sizeof *acks);
            }
            acks[nacks++] = a;
        }
        i = (size_t)(nl - in->data) + 1;
    }
    *consumed = i;
}

static int cmp_ack(const void *a, const void *b)
{
    uint64_t x = ((const ack *)a)->offset, y = ((const ack *)b)->offset;
    return x < y ? -1 : x > y;
}

static int fail(const char *fmt, const char *msg)
{
    fprintf(stderr, fmt, msg);
    fputc('\n', stderr);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: crash_test CRASH_WRITER [ROUNDS]\n");
        return 2;
    }
    const char *soak = getenv("STMFS_SOAK");
    int rounds = argc > 2 ? atoi(argv[2]) : (soak && *soak && strcmp(soak, "0") ? 500 : 50);
    char dir[256];
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/stmwal-crash-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) return fail("mkdtemp: %s", strerror(errno));
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    uint64_t total_cut = 0;

    for (int round = 1; round <= rounds; round++) {
        int pfd[2];
        if (pipe(pfd) != 0) return fail("pipe: %s", strerror(errno));
        pid_t pid = fork();
        if (pid == 0) {
            dup2(pfd[1], 1);
            close(pfd[0]);
            close(pfd[1]);
            execl(argv[1], argv[1], dir, "4", (char *)NULL);
            _exit(127);
        }
        close(pfd[1]);
        size_t before = nacks;
        buf in = {0};
        size_t consumed = 0;
        uint64_t kill_at = util_mono_ns() + (uint64_t)(20 + rand() % 280) * 1000000u;
        bool killed = false;
        for (;;) {
            uint64_t now = util_mono_ns();
            if (!killed && now >= kill_at) {
                kill(pid, SIGKILL);
                killed = true;
            }
            struct pollfd p = {pfd[0], POLLIN, 0};
            int ms = killed ? 1000 : (int)((kill_at - now) / 1000000u) + 1;
            if (poll(&p, 1, ms) < 0 && errno != EINTR) return fail("poll: %s", strerror(errno));
            if (!(p.revents & (POLLIN | POLLHUP))) continue;
            buf_reserve(&in, 65536);
            ssize_t k = read(pfd[0], in.data + in.len, 65536);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            in.len += (size_t)k;
            parse_lines(&in, &consumed);
        }
        close(pfd[0]);
        int status;
        waitpid(pid, &status, 0);
        buf_free(&in);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            return fail("round ended without SIGKILL: %s", "the writer exited on its own");

        /* Recover and check. */
        wal_opts o = {.dir = dir, .segment_size = 256 * 1024};
        wal_sync_policy_parse("every_write", &o.sync, NULL);
        wal *w;
        wal_recovery rep;
        stm_err err;
        if (wal_open(&o, &w, &rep, &err) != STM_OK) return fail("recovery refused: %s", err.msg);
        total_cut += rep.cut_bytes;
        qsort(acks, nacks, sizeof *acks, cmp_ack);
        wal_iter *it;
        wal_iter_open(w, 0, false, &it, &err);
        wal_record r;
        int k;
        size_t ai = 0, nrec = 0;
        uint64_t prev_seq = 0;
        while ((k = wal_iter_next(it, &r, &err)) == 1) {
            if (nrec++ && r.seq != prev_seq + 1) {
                fprintf(stderr, "round %d: seq %llu follows %llu\n", round,
                        (unsigned long long)r.seq, (unsigned long long)prev_seq);
                return 1;
            }
            prev_seq = r.seq;
            while (ai < nacks && acks[ai].offset < r.offset) {
                fprintf(stderr, "round %d: acknowledged record at offset %llu seq %llu is lost\n",
                        round, (unsigned long long)acks[ai].offset,
                        (unsigned long long)acks[ai].seq);
                return 1;
            }
            if (ai < nacks && acks[ai].offset == r.offset) {
                if (acks[ai].seq != r.seq || acks[ai].len != r.len ||
                    acks[ai].crc != crc32c(0, r.payload, r.len)) {
                    fprintf(stderr, "round %d: record at offset %llu differs from its ack\n", round,
                            (unsigned long long)r.offset);
                    return 1;
                }
                ai++;
            }
        }
        wal_iter_close(it);
        if (k < 0) return fail("iteration: %s", err.msg);
        if (ai != nacks) {
            fprintf(stderr, "round %d: %zu acknowledged records missing after offset %llu\n", round,
                    nacks - ai, (unsigned long long)acks[ai].offset);
            return 1;
        }
        if (wal_close(w, &err) != STM_OK) return fail("close: %s", err.msg);
        wal_verify_report vr;
        if (wal_verify(dir, 0, NULL, &vr, &err) != STM_OK) return fail("verify: %s", err.msg);
        printf("round %d: %zu acknowledged, %zu records in the log, %llu torn bytes cut\n", round,
               nacks - before, nrec, (unsigned long long)rep.cut_bytes);
        fflush(stdout);
    }
    printf("ok: %d rounds, %zu acknowledged records all intact, %llu torn bytes cut in total\n",
           rounds, nacks, (unsigned long long)total_cut);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    free(acks);
    return 0;
}
