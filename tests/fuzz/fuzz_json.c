/*
 * fuzz_json.c - json_parse, the parser of everything users send.
 *
 * Checked beyond "no crash, no sanitizer report":
 *   - it is never more lenient than cJSON: what json_parse accepts, cJSON
 *     accepts too, and (where cJSON's tree has no duplicate keys, which
 *     json_parse removes) both trees write the same canonical text;
 *   - a refusal is BAD_REQUEST with a message;
 *   - json_parse_arena gives the same answer and the same tree;
 *   - an accepted value rewritten canonically parses again to the same
 *     text (the canonical form is a fixed point).
 *
 * Run: build-fuzz/tests/fuzz/fuzz_json tests/fuzz/corpus/json -runs=0   (replay)
 *      build-fuzz/tests/fuzz/fuzz_json -max_len=4096 WORKDIR tests/fuzz/corpus/json
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int has_dup_keys(const cJSON *v)
{
    for (const cJSON *c = v->child; c; c = c->next) {
        if (has_dup_keys(c)) return 1;
        if (cJSON_IsObject(v))
            for (const cJSON *d = c->next; d; d = d->next)
                if (strcmp(c->string, d->string) == 0) return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    stm_err err = {0}, aerr = {0};
    cJSON *ours = json_parse(text, size, &err);
    /* the arena build of the same text: the same answer, the same tree */
    json_arena *arena = json_arena_new();
    cJSON *in_arena = json_parse_arena(arena, text, size, &aerr);
    if (!ours != !in_arena || strcmp(err.msg, aerr.msg) != 0) abort();
    if (in_arena) {
        buf x = {0}, y = {0};
        json_write(&x, ours, false);
        json_write(&y, in_arena, false);
        if (strcmp(buf_cstr(&x), buf_cstr(&y)) != 0) abort();
        buf_free(&x);
        buf_free(&y);
    }
    json_arena_free(arena);
    if (!ours) {
        if (err.code != STM_BAD_REQUEST || !err.msg[0]) abort();
        return 0;
    }
    cJSON *theirs = cJSON_ParseWithLength(text, size);
    if (!theirs) abort();
    buf a = {0}, b = {0};
    json_write(&a, ours, true);
    if (!has_dup_keys(theirs)) {
        json_write(&b, theirs, true);
        if (strcmp(buf_cstr(&a), buf_cstr(&b)) != 0) abort();
    }
    cJSON *again = json_parse(a.data, a.len, &err);
    if (!again) abort();
    buf c = {0};
    json_write(&c, again, true);
    if (strcmp(buf_cstr(&a), buf_cstr(&c)) != 0) abort();
    buf_free(&a);
    buf_free(&b);
    buf_free(&c);
    cJSON_Delete(again);
    cJSON_Delete(ours);
    cJSON_Delete(theirs);
    return 0;
}
