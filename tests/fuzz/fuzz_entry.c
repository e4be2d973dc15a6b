/*
 * fuzz_entry.c - entry_scan, the reader of every WAL entry (live writes and
 * replay), against its definition: the same text read through a cJSON parse
 * (entry_scan_tree). Input: the entry's text, any bytes.
 *
 * Checked beyond "no crash, no sanitizer report": both accept or both
 * refuse, and when they accept, every field is the same, byte for byte
 * (strings, the canonical text of ctx, payload, initial_ctx and definition,
 * ts, version, txn, generated_id). A difference means replay would rebuild
 * a state other than the one the text holds.
 *
 * Build: meson setup with CC=clang -Dfuzz=true (see tests/fuzz/meson.build).
 * Run:   build-fuzz/tests/fuzz/fuzz_entry tests/fuzz/corpus/entry -runs=0   (replay)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_str(const char *a, const char *b)
{
    if (!a != !b || (a && strcmp(a, b) != 0)) abort();
}

static void same_text(const char *a, size_t an, const char *b, size_t bn)
{
    if (!a != !b || an != bn || (a && memcmp(a, b, an) != 0)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    buf s1 = {0}, s2 = {0};
    entry_fields a, b;
    bool ok_a = entry_scan(text, size, &s1, &a);
    bool ok_b = entry_scan_tree(text, size, &s2, &b);
    if (ok_a != ok_b) abort();
    if (ok_a) {
        same_str(a.instance_id, b.instance_id);
        same_str(a.machine, b.machine);
        same_str(a.event, b.event);
        same_str(a.from_state, b.from_state);
        same_str(a.to_state, b.to_state);
        same_str(a.initial_state, b.initial_state);
        same_str(a.event_id, b.event_id);
        same_str(a.idempotency_key, b.idempotency_key);
        same_text(a.payload, a.payload_len, b.payload, b.payload_len);
        same_text(a.ctx, a.ctx_len, b.ctx, b.ctx_len);
        same_text(a.initial_ctx, a.initial_ctx_len, b.initial_ctx, b.initial_ctx_len);
        same_text(a.definition, a.definition_len, b.definition, b.definition_len);
        if (a.ts != b.ts || a.has_version != b.has_version || a.version != b.version ||
            a.has_txn != b.has_txn || a.txn != b.txn || a.generated_id != b.generated_id)
            abort();
    }
    buf_free(&s1);
    buf_free(&s2);
    return 0;
}
