/*
 * crash_writer.c - the victim of the crash test (crash_test.c).
 *
 *   crash_writer DIR THREADS
 *
 * Opens the log in DIR under every_write with small segments and lets
 * THREADS threads append records as fast as group commit allows. After
 * wal_wait returns for a record, it prints one line
 *
 *   OFFSET SEQ LEN CRC32C-OF-PAYLOAD
 *
 * to stdout with a single write(2), so whatever the driver has read when it
 * SIGKILLs this process is exactly a set of acknowledged records. Runs until
 * killed; exits 3 on any WAL error.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "wal/wal.h"

static wal *w;

static void *run(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    unsigned seed = id * 2654435761u ^ (unsigned)getpid();
    char pl[2048], line[128];
    for (unsigned long i = 0;; i++) {
        int h = snprintf(pl, sizeof pl, "{\"t\":%u,\"i\":%lu,\"p\":\"", id, i);
        size_t pad = (size_t)(rand_r(&seed) % 1200);
        for (size_t k = 0; k < pad; k++)
            pl[h + k] = (char)('a' + rand_r(&seed) % 26);
        memcpy(pl + h + pad, "\"}", 2);
        uint32_t len = (uint32_t)(h + pad + 2);
        wal_record r;
        stm_err err;
        if (wal_append(w, 3, pl, len, &r, &err) != STM_OK || wal_wait(w, r.seq, &err) != STM_OK) {
            fprintf(stderr, "crash_writer: %s\n", err.msg);
            exit(3);
        }
        int n = snprintf(line, sizeof line, "%llu %llu %u %08x\n", (unsigned long long)r.offset,
                         (unsigned long long)r.seq, len, crc32c(0, pl, len));
        if (write(1, line, (size_t)n) != n) exit(3);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: crash_writer DIR THREADS\n");
        return 2;
    }
    wal_opts o = {.dir = argv[1], .segment_size = 256 * 1024};
    stm_err err;
    wal_sync_policy_parse("every_write", &o.sync, &err);
    if (wal_open(&o, &w, NULL, &err) != STM_OK) {
        fprintf(stderr, "crash_writer: %s\n", err.msg);
        return 3;
    }
    int n = atoi(argv[2]);
    pthread_t th[64];
    if (n < 1 || n > 64) n = 4;
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, run, (void *)(uintptr_t)i);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    return 0;
}
