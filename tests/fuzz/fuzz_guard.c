/*
 * fuzz_guard.c - guard_compile and guard_eval on arbitrary text and context.
 *
 * Input: GUARD [ NUL CTX-JSON [ NUL PAYLOAD-JSON ] ]. The guard text is
 * compiled; when it compiles, it is evaluated against the ctx and payload
 * parsed from the rest (or fixed ones when those are absent or not JSON,
 * so plain guard text as a seed still meets fields it can read). Checked
 * beyond "no crash, no sanitizer report":
 *   - a refusal says "invalid guard expression: ..." (BAD_REQUEST);
 *   - guard_source gives the text back;
 *   - evaluation is pure: the same answer twice;
 *   - the stored-text path (guard_eval_text) agrees or hands back -1;
 *   - "!(G)" evaluates to the negation of G, and "(G) && (G)" to G, when
 *     they compile (they may not: one more level may pass the limits).
 *
 * Build: meson setup with CC=clang -Dfuzz=true (see tests/fuzz/meson.build).
 * Run:   build-fuzz/tests/fuzz/fuzz_guard tests/fuzz/corpus/guard -runs=0   (replay)
 *        build-fuzz/tests/fuzz/fuzz_guard -max_len=4096 WORKDIR tests/fuzz/corpus/guard
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/json.h"
#include "engine/guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *part(const char *p, size_t n, size_t *len)
{
    const char *z = memchr(p, 0, n);
    *len = z ? (size_t)(z - p) : n;
    return p;
}

static cJSON *parse_or(const char *p, size_t n, const char *fallback)
{
    cJSON *v = n ? json_parse(p, n, NULL) : NULL;
    return v ? v : cJSON_Parse(fallback);
}

/* Compiles text made from G and checks its value against want. */
static void check_wrapped(const char *pre, const char *g, size_t n, const char *mid,
                          const char *post, const cJSON *ctx, const cJSON *payload, bool want)
{
    buf b = {0};
    buf_puts(&b, pre);
    buf_add(&b, g, n);
    if (mid) {
        buf_puts(&b, mid);
        buf_add(&b, g, n);
    }
    buf_puts(&b, post);
    stm_err err;
    guard *w = guard_compile(b.data, b.len, &err);
    if (w) {
        if (guard_eval(w, ctx, payload) != want) abort();
        guard_free(w);
    }
    buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    size_t glen, clen = 0, plen = 0;
    const char *g = part(p, size, &glen), *c = NULL, *pl = NULL;
    if (glen < size) {
        c = part(p + glen + 1, size - glen - 1, &clen);
        if (glen + 1 + clen < size) pl = p + glen + 1 + clen + 1, plen = size - glen - clen - 2;
    }

    stm_err err = {0};
    guard *gd = guard_compile(g, glen, &err);
    if (!gd) {
        if (err.code != STM_BAD_REQUEST ||
            strncmp(err.msg, "invalid guard expression: ", 26) != 0)
            abort();
        return 0;
    }
    const char *src = guard_source(gd);
    if (strlen(src) != glen || memcmp(src, g, glen) != 0) abort();

    cJSON *ctx = parse_or(c, clen,
                          "{\"a\":1,\"b\":{\"c\":\"x\",\"d\":[1]},\"s\":\"Jos\\u00e9\",\"t\":true,"
                          "\"f\":false,\"n\":null,\"z\":0,\"e\":\"\",\"o\":{},\"l\":[],"
                          "\"amount\":99.99,\"x\":-1e300}");
    cJSON *payload = parse_or(pl, plen, "{\"amount\":2.5,\"b\":{\"c\":\"x\"},\"ok\":true}");

    bool v = guard_eval(gd, ctx, payload);
    if (guard_eval(gd, ctx, payload) != v) abort();
    /* the context as stored text: same answer, or -1 (parse it instead) */
    buf text = {0};
    json_write(&text, ctx, true);
    int vt = guard_eval_text(gd, text.data, text.len, payload);
    if (vt != -1 && vt != (int)v) abort();
    buf_free(&text);
    guard_eval(gd, NULL, NULL);
    guard_eval(gd, payload, ctx);

    if (glen + 8 <= GUARD_MAX_LEN) check_wrapped("!(", g, glen, NULL, ")", ctx, payload, !v);
    if (2 * glen + 10 <= GUARD_MAX_LEN)
        check_wrapped("(", g, glen, ") && (", ")", ctx, payload, v);

    guard_free(gd);
    cJSON_Delete(ctx);
    cJSON_Delete(payload);
    return 0;
}
