/*
 * cmd_wal.c - `stmfs wal verify|dump|repair DATA_DIR`
 *
 *   verify  checks every record's CRC and the hash chain through every
 *           checkpoint; prints the head as SEQ:HEX, which a user can write
 *           down and later pass to --expect to prove that nothing up to that
 *           record has changed since. Exit 0 intact, 1 damaged (the message
 *           names the segment file and byte), 2 bad usage.
 *   dump    prints every record as one JSON line,
 *           {"entry":{...keys sorted...},"offset":N,"sequence":N}
 *           On a log with damage inside it (which opening refuses) it reads
 *           the segment files itself: every record up to the damage, then a
 *           report on stderr and exit 1; --skip-damage goes on from the next
 *           valid record, as recovery finds it, reporting each gap.
 *
 *   repair  the one command that changes the log: cuts it at a corrupt
 *           record that has valid records after it (which every other open
 *           refuses), keeping the cut bytes in a side file beside the segment.
 *           Run it with nothing else using DATA_DIR.
 *
 * verify and dump only read: the log is opened read-only, a torn tail is
 * reported and left as it is. The log lives in DATA_DIR/wal.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "base/json.h"
#include "src/cmds.h"
/* For the record rules recovery applies (wal_type_valid, wal_ckpt_parse),
 * so that dump stops exactly where opening refuses and repair cuts. */
#include "wal/internal.h"
#include "wal/wal.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: stmfs wal verify DATA_DIR [--expect SEQ:HEX]\n"
                 "       stmfs wal dump DATA_DIR [--from OFFSET] [--skip-damage]\n"
                 "       stmfs wal repair DATA_DIR\n"
                 "\n"
                 "verify  checks every CRC and the SHA-256 hash chain of the write-ahead log\n"
                 "        in DATA_DIR/wal and prints its head as SEQ:HEX. Keep that line: a\n"
                 "        later `verify --expect SEQ:HEX` proves records 1..SEQ unchanged.\n"
                 "        Exit 0 when intact, 1 on damage (segment file and byte named).\n"
                 "dump    prints each record as a JSON line:\n"
                 "        {\"entry\":{...},\"offset\":N,\"sequence\":N}\n"
                 "        On damage inside the log it prints every record before it, then\n"
                 "        names the segment file, byte and bytes that follow on stderr and\n"
                 "        exits 1.\n"
                 "repair  cuts the log at a corrupt record inside it (which opening refuses),\n"
                 "        keeping the cut bytes in a side file; stop stmfs first.\n"
                 "\n"
                 "  --expect SEQ:HEX  (verify) the chain value the log must have at SEQ\n"
                 "  --from OFFSET     (dump) start at this WAL offset (default: the oldest)\n"
                 "  --skip-damage     (dump) go on past damage from the next valid record\n"
                 "                    (what repair would cut), reporting each gap; exit 1\n"
                 "  -h, --help        this text\n"
                 "\n"
                 "verify and dump only read; a torn tail is reported, not cut.\n"
                 "Exit status: 0 intact, 1 damaged or failed, 2 bad usage, 3 --expect names a\n"
                 "record the log no longer holds (compacted) or does not hold yet.\n");
}

static char *wal_dir_of(const char *data_dir)
{
    size_t n = strlen(data_dir) + 5;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/wal", data_dir);
    return p;
}

static int do_verify(const char *data_dir, const char *expect)
{
    uint64_t seq = 0;
    uint8_t chain[32] = {0};
    if (expect) {
        const char *colon = strchr(expect, ':');
        char *end;
        errno = 0;
        unsigned long long v = colon ? strtoull(expect, &end, 10) : 0;
        if (!colon || errno || end != colon || v == 0 || expect[0] == '-' ||
            !wal_unhex(colon + 1, chain)) {
            fprintf(stderr,
                    "stmfs wal verify: --expect wants SEQ:HEX as printed by an earlier verify "
                    "(a sequence number, a colon, 64 hex digits), not '%s'\n",
                    expect);
            return 2;
        }
        seq = v;
    }
    char *dir = wal_dir_of(data_dir);
    if (access(dir, R_OK | X_OK) != 0) {
        fprintf(stderr, "stmfs wal verify: no write-ahead log at %s: %s (is DATA_DIR right?)\n",
                dir, strerror(errno));
        free(dir);
        return 1;
    }
    wal_verify_report rep;
    stm_err err = {0};
    /* First the log on its own: damage is damage whatever --expect says. */
    stm_code rc = wal_verify(dir, 0, NULL, &rep, &err);
    if (rc != STM_OK) {
        fprintf(stderr, "stmfs wal verify: DAMAGED: %s\n", err.msg);
        free(dir);
        return 1;
    }
    if (seq && (seq < rep.first_seq || seq > rep.head_seq)) {
        if (seq < rep.first_seq)
            fprintf(stderr,
                    "stmfs wal verify: cannot check seq %llu: the log now starts at seq %llu "
                    "(older records were compacted into a snapshot); the log itself is intact "
                    "from there\n",
                    (unsigned long long)seq, (unsigned long long)rep.first_seq);
        else
            fprintf(stderr,
                    "stmfs wal verify: cannot check seq %llu: the log ends at seq %llu (was it "
                    "cut back, or is this another data directory?)\n",
                    (unsigned long long)seq, (unsigned long long)rep.head_seq);
        free(dir);
        return 3;
    }
    if (seq) rc = wal_verify(dir, seq, chain, &rep, &err);
    if (rc != STM_OK) {
        fprintf(stderr, "stmfs wal verify: DAMAGED: %s\n", err.msg);
        free(dir);
        return 1;
    }
    char hex[65];
    wal_hex(rep.head_chain, hex);
    printf("ok: %llu records (%llu checkpoints) in %llu segments, %llu bytes\n",
           (unsigned long long)rep.records, (unsigned long long)rep.checkpoints,
           (unsigned long long)rep.segments, (unsigned long long)rep.bytes);
    if (rep.records)
        printf("head: %llu:%s (offset %llu)\n", (unsigned long long)rep.head_seq, hex,
               (unsigned long long)rep.head_offset);
    else
        printf("head: the log is empty\n");
    if (seq) printf("expected chain at seq %llu: matches\n", (unsigned long long)seq);
    if (rep.torn_bytes)
        printf("torn tail: %llu bytes after the last record (an interrupted write; the next "
               "open cuts them)\n",
               (unsigned long long)rep.torn_bytes);
    free(dir);
    return 0;
}

/* One record as a dump line: {"entry":...,"offset":N,"sequence":N}. */
static bool dump_line(buf *line, uint64_t offset, uint64_t seq, const char *payload, uint32_t len)
{
    buf_reset(line);
    buf_puts(line, "{\"entry\":");
    stm_err perr;
    cJSON *v = json_parse(payload, len, &perr);
    if (v) {
        json_write(line, v, true);
        cJSON_Delete(v);
    } else {
        /* Not JSON: keep the bytes, as a string, rather than drop them. */
        json_write_strn(line, payload, len);
    }
    buf_printf(line, ",\"offset\":%llu,\"sequence\":%llu}\n", (unsigned long long)offset,
               (unsigned long long)seq);
    return fwrite(line->data, 1, line->len, stdout) == line->len;
}

/* Dumps a log that opening refused (refusal = its message), through the
 * log's own salvage reader. Returns the exit status: 1 whenever damage was
 * found. */
static int dump_damaged(const char *dir, uint64_t from, bool skip, const char *refusal)
{
    wal_salvage *sv;
    stm_err err = {0};
    if (wal_salvage_open(dir, &sv, &err) != STM_OK) {
        fprintf(stderr, "stmfs wal dump: %s\n", err.msg);
        return 1;
    }
    buf line = {0};
    wal_record r;
    wal_damage d;
    int k, status = 0;
    bool damage = false;
    while ((k = wal_salvage_next(sv, &r, &d, &err)) != 0) {
        if (k == 1) {
            if (r.offset >= from && !dump_line(&line, r.offset, r.seq, r.payload, r.len)) {
                status = 1;
                break;
            }
            continue;
        }
        if (k == -2) {
            fprintf(stderr, "stmfs wal dump: %s\n", err.msg);
            status = 1;
            break;
        }
        if (d.tail) {
            if (!d.zeros)
                fprintf(stderr,
                        "stmfs wal dump: note: found a torn tail in %s at byte %llu (offset "
                        "%llu): %s; %llu bytes ignored (read-only)\n",
                        d.path, (unsigned long long)d.pos, (unsigned long long)d.offset, d.why,
                        (unsigned long long)d.rest);
            break;
        }
        damage = true;
        status = 1;
        fprintf(stderr,
                "stmfs wal dump: DAMAGED: bad record in %s at byte %llu (offset %llu): %s; "
                "%llu bytes follow to the end of the log; the next valid record is %llu bytes "
                "on (%s byte %llu, offset %llu)\n",
                d.path, (unsigned long long)d.pos, (unsigned long long)d.offset, d.why,
                (unsigned long long)d.rest, (unsigned long long)d.skipped, d.next_path,
                (unsigned long long)d.next_pos, (unsigned long long)d.next_offset);
        if (!skip) {
            fprintf(stderr, "stmfs wal dump: stopped there; --skip-damage also prints the "
                            "records after it, which `stmfs wal repair` would cut\n");
            break;
        }
        fprintf(stderr, "stmfs wal dump: --skip-damage: going on from that record; `stmfs wal "
                        "repair` would cut it and every record after it\n");
    }
    if (!damage && status == 0) {
        /* Nothing found here that opening would refuse: say what it said. */
        fprintf(stderr, "stmfs wal dump: %s\n", refusal);
        status = 1;
    }
    if (fflush(stdout) != 0) status = 1;
    buf_free(&line);
    wal_salvage_close(sv);
    return status;
}

static int do_dump(const char *data_dir, uint64_t from, bool skip)
{
    char *dir = wal_dir_of(data_dir);
    wal_opts o = {.dir = dir, .segment_size = 64u << 20, .read_only = true};
    wal *w;
    wal_recovery rep;
    stm_err err = {0};
    if (wal_open(&o, &w, &rep, &err) != STM_OK) {
        /* Damage inside the log: read what is there without the log. */
        int st = err.code == STM_WAL_IO_ERROR && access(dir, R_OK | X_OK) == 0
                     ? dump_damaged(dir, from, skip, err.msg)
                     : (fprintf(stderr, "stmfs wal dump: %s\n", err.msg), 1);
        free(dir);
        return st;
    }
    wal_iter *it;
    if (wal_iter_open(w, from, false, &it, &err) != STM_OK) {
        fprintf(stderr, "stmfs wal dump: %s\n", err.msg);
        wal_close(w, NULL);
        free(dir);
        return 1;
    }
    buf line = {0};
    wal_record r;
    int k, status = 0;
    while ((k = wal_iter_next(it, &r, &err)) == 1) {
        if (!dump_line(&line, r.offset, r.seq, r.payload, r.len)) {
            status = 1;
            break;
        }
    }
    if (k < 0) {
        fprintf(stderr, "stmfs wal dump: %s\n", err.msg);
        status = 1;
    }
    if (rep.cut_bytes && !rep.zero_tail) fprintf(stderr, "stmfs wal dump: note: %s\n", rep.message);
    if (fflush(stdout) != 0) status = 1;
    buf_free(&line);
    wal_iter_close(it);
    wal_close(w, NULL);
    free(dir);
    return status;
}

static int do_repair(const char *data_dir)
{
    char *dir = wal_dir_of(data_dir);
    if (access(dir, R_OK | W_OK | X_OK) != 0) {
        fprintf(stderr, "stmfs wal repair: no writable write-ahead log at %s: %s\n", dir,
                strerror(errno));
        free(dir);
        return 1;
    }
    /* The policy does not matter: nothing is appended, and close syncs. */
    wal_opts o = {.dir = dir, .segment_size = 64ull << 20, .repair = true};
    wal *w;
    wal_recovery rec = {0};
    stm_err err = {0};
    stm_code rc = wal_open(&o, &w, &rec, &err);
    if (rc == STM_OK) rc = wal_close(w, &err);
    free(dir);
    if (rc != STM_OK) {
        fprintf(stderr, "stmfs wal repair: %s\n", err.msg);
        return 1;
    }
    if (rec.cut_bytes)
        printf("%s\n", rec.message);
    else
        printf("nothing to repair: %llu records in %llu segments are intact\n",
               (unsigned long long)rec.records, (unsigned long long)rec.segments);
    return 0;
}

int cmd_wal(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"expect", required_argument, NULL, 'e'},
        {"from", required_argument, NULL, 'f'},
        {"skip-damage", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *expect = NULL;
    uint64_t from = 0;
    bool have_from = false, skip = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'e':
            expect = optarg;
            break;
        case 'f': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-') {
                fprintf(stderr,
                        "stmfs wal dump: --from wants a WAL offset (a whole number), "
                        "not '%s'\n",
                        optarg);
                return 2;
            }
            from = v;
            have_from = true;
            break;
        }
        case 's':
            skip = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    const char *sub = argv[optind], *data_dir = argv[optind + 1];
    if (strcmp(sub, "verify") == 0) {
        if (have_from || skip) {
            fprintf(stderr, "stmfs wal verify: --%s belongs to dump\n",
                    have_from ? "from" : "skip-damage");
            return 2;
        }
        return do_verify(data_dir, expect);
    }
    if (strcmp(sub, "dump") == 0) {
        if (expect) {
            fprintf(stderr, "stmfs wal dump: --expect belongs to verify\n");
            return 2;
        }
        return do_dump(data_dir, from, skip);
    }
    if (strcmp(sub, "repair") == 0) {
        if (expect || have_from || skip) {
            fprintf(stderr, "stmfs wal repair: takes no options\n");
            return 2;
        }
        return do_repair(data_dir);
    }
    fprintf(stderr, "stmfs wal: unknown subcommand '%s' (verify, dump or repair)\n", sub);
    usage(stderr);
    return 2;
}
