/*
 * fuzz_def.c - machine definitions from arbitrary text, as JSON and as YAML.
 *
 * The input is read twice: json_parse -> def_parse (what PUT_MACHINE does
 * with a request's definition), and def_yaml_to_json -> def_parse (what a
 * YAML file written to the mount goes through). Every definition that
 * parses is then written back each way and must parse again to the same
 * checksum: def_normalised, def_write_json (compact and pretty) and
 * def_write_yaml. def_write_dot, def_events_from and def_find (against a
 * ctx with and without the fields guards like to read) run on it too.
 * Refusals must be BAD_REQUEST. (tests/engine/fuzz_def.c is a separate,
 * hand-built entry for the YAML round trip; this one is the CI target.)
 *
 * Build: meson setup with CC=clang -Dfuzz=true (see tests/fuzz/meson.build).
 * Run:   build-fuzz/tests/fuzz/fuzz_def tests/fuzz/corpus/def -runs=0   (replay)
 *        build-fuzz/tests/fuzz/fuzz_def -max_len=16384 WORKDIR tests/fuzz/corpus/def
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/json.h"
#include "engine/def.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parses j and requires the checksum want. Takes j. */
static void reparse(cJSON *j, const char *want)
{
    stm_err err;
    def *d = NULL;
    if (!j || def_parse(j, &d, &err) != STM_OK || strcmp(def_checksum(d), want) != 0) abort();
    def_free(d);
    cJSON_Delete(j);
}

static void exercise(const def *d)
{
    const char *want = def_checksum(d);
    if (strlen(want) != 8) abort();

    reparse(def_normalised(d), want);
    buf b = {0};
    def_write_json(d, &b, false);
    reparse(json_parse(b.data, b.len, NULL), want);
    buf_reset(&b);
    def_write_json(d, &b, true);
    reparse(json_parse(b.data, b.len, NULL), want);
    buf_reset(&b);
    def_write_yaml(d, &b);
    stm_err err;
    reparse(def_yaml_to_json(b.data, b.len, &err), want);
    buf_reset(&b);
    def_write_dot(d, "fuzz", 1, &b);
    buf_free(&b);

    static cJSON *ctx;
    if (!ctx) ctx = cJSON_Parse("{\"a\":1,\"amount\":5,\"ok\":true,\"s\":\"x\",\"b\":{\"c\":1}}");
    if (!def_has_state(d, def_initial(d))) abort();
    const char *ev[8];
    for (size_t i = 0; i < def_state_count(d) && i < 64; i++) {
        const char *s = def_state(d, i);
        if (!def_has_state(d, s)) abort();
        def_events_from(d, s, ev, 8);
    }
    for (size_t i = 0; i < def_transition_count(d) && i < 256; i++) {
        const def_transition *t = def_transition_at(d, i);
        if (!def_has_state(d, t->from) || !def_has_state(d, t->to)) abort();
        stm_code why;
        const def_transition *failed;
        const def_transition *hit = def_find(d, t->from, t->event, ctx, NULL, &why, &failed);
        if (!hit && why != STM_GUARD_FAILED) abort(); /* the pair exists */
        def_find(d, t->from, t->event, NULL, ctx, &why, &failed);
    }
}

static void one(cJSON *j)
{
    if (!j) return;
    stm_err err = {0};
    def *d = NULL;
    if (def_parse(j, &d, &err) == STM_OK) {
        exercise(d);
        def_free(d);
    } else if (err.code != STM_BAD_REQUEST) {
        abort();
    }
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    stm_err err;
    one(json_parse(p, size, &err));
    one(def_yaml_to_json(p, size, &err));
    return 0;
}
