/*
 * fuzz_def.c - libFuzzer entry for the guard language and definitions.
 *
 * The first input byte picks the target, the rest is the text:
 *   even: guard_compile, then guard_eval on a fixed ctx and payload
 *   odd:  def_yaml_to_json (JSON is YAML too), def_parse, every writer,
 *         and the written YAML read back to the same checksum
 * Any crash, sanitizer report or checksum mismatch is a finding.
 *
 * Build and run (from the top of the repository):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *     -I/usr/include/cjson tests/engine/fuzz_def.c engine/guard.c engine/def.c \
 *     engine/def_yaml.c engine/def_write.c base/json.c base/buf.c base/err.c \
 *     base/crc32c.c -lcjson -lyaml -lm -o fuzz_def
 *   ./fuzz_def -max_len=4096 -max_total_time=60
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "engine/def.h"

static void fuzz_guard(const char *s, size_t n)
{
    static cJSON *ctx, *payload;
    if (!ctx) {
        ctx = cJSON_Parse("{\"a\":1,\"b\":{\"c\":\"x\"},\"s\":\"José\",\"l\":[1],\"n\":null}");
        payload = cJSON_Parse("{\"amount\":2.5,\"b\":{\"c\":\"x\"}}");
    }
    stm_err err;
    guard *g = guard_compile(s, n, &err);
    if (!g) {
        if (strncmp(err.msg, "invalid guard expression: ", 26) != 0) abort();
        return;
    }
    guard_eval(g, ctx, payload);
    guard_eval(g, NULL, NULL);
    guard_free(g);
}

static void fuzz_def(const char *s, size_t n)
{
    stm_err err;
    cJSON *j = def_yaml_to_json(s, n, &err);
    if (!j) return;
    def *d = NULL;
    if (def_parse(j, &d, &err) == STM_OK) {
        buf b = {0};
        def_write_json(d, &b, true);
        def_write_dot(d, "m", 1, &b);
        buf_reset(&b);
        def_write_yaml(d, &b);
        cJSON *back = def_yaml_to_json(b.data, b.len, &err);
        def *d2 = NULL;
        if (!back || def_parse(back, &d2, &err) != STM_OK ||
            strcmp(def_checksum(d2), def_checksum(d)) != 0)
            abort();
        const char *ev[4];
        for (size_t i = 0; i < def_state_count(d); i++)
            def_events_from(d, def_state(d, i), ev, 4);
        for (size_t i = 0; i < def_transition_count(d); i++) {
            const def_transition *t = def_transition_at(d, i);
            stm_code why;
            const def_transition *failed;
            def_find(d, t->from, t->event, NULL, NULL, &why, &failed);
        }
        def_free(d2);
        cJSON_Delete(back);
        buf_free(&b);
        def_free(d);
    }
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (data[0] & 1)
        fuzz_def((const char *)data + 1, size - 1);
    else
        fuzz_guard((const char *)data + 1, size - 1);
    return 0;
}
