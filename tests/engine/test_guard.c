/*
 * test_guard.c - the guard language: rstmdb's results on everything it
 * accepts (reference engine-semantics.md §10), the deliberate differences,
 * error texts and positions, limits.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "engine/guard.h"

static cJSON *js(const char *text)
{
    if (!text) return NULL;
    cJSON *v = cJSON_Parse(text);
    ck_assert_msg(v != NULL, "bad test JSON: %s", text);
    return v;
}

/* Compiles src (must succeed) and evaluates it. */
static bool ev2(const char *src, const char *ctx, const char *payload)
{
    stm_err err = {0};
    guard *g = guard_compile(src, strlen(src), &err);
    ck_assert_msg(g != NULL, "'%s' did not compile: %s", src, err.msg);
    ck_assert_str_eq(guard_source(g), src);
    cJSON *c = js(ctx), *p = js(payload);
    bool r = guard_eval(g, c, p);
    /* the stored-text path must agree wherever it answers */
    buf text = {0};
    json_write(&text, c, true);
    int rt = guard_eval_text(g, text.data, text.len, p);
    ck_assert_msg(rt == -1 || rt == (int)r, "'%s' on %s: text path says %d, tree %d", src,
                  text.data, rt, r);
    buf_free(&text);
    cJSON_Delete(c);
    cJSON_Delete(p);
    guard_free(g);
    return r;
}

static bool ev(const char *src, const char *ctx)
{
    return ev2(src, ctx, NULL);
}

#define T(src, ctx) ck_assert_msg(ev(src, ctx), "%s on %s should be true", src, ctx)
#define F(src, ctx) ck_assert_msg(!ev(src, ctx), "%s on %s should be false", src, ctx)

static void bad_n(const char *src, size_t len, const char *msg)
{
    stm_err err = {0};
    guard *g = guard_compile(src, len, &err);
    ck_assert_msg(g == NULL, "'%s' should not compile", src);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    ck_assert_str_eq(err.msg, msg);
}

static void bad(const char *src, const char *msg)
{
    bad_n(src, strlen(src), msg);
}

#define E "invalid guard expression: "

START_TEST(quick_table)
{
    F("ctx.x", "{}");
    T("ctx.x == null", "{}");
    F("ctx.x != null", "{}");
    T("ctx.x != \"a\"", "{}");
    F("ctx.x > 0", "{\"x\":\"5\"}");
    T("ctx.n == 1", "{\"n\":1.0}");
    F("ctx.a.b", "{\"a\":[{\"b\":1}]}");
    F("ctx.l", "{\"l\":[]}");
    T("ctx.a && ctx.b || ctx.c", "{\"c\":true}");
    /* rstmdb ignored the garbage in these two; it is an error now. */
    bad("ctx.a = 5", E "unexpected '=' at byte 6");
    bad("ctx.first-name", E "unexpected '-' at byte 9");
}
END_TEST

START_TEST(truthiness)
{
    F("ctx.x", "{\"x\":null}");
    T("ctx.x", "{\"x\":true}");
    F("ctx.x", "{\"x\":false}");
    T("ctx.x", "{\"x\":-0.5}");
    F("ctx.x", "{\"x\":0}");
    F("ctx.x", "{\"x\":0.0}");
    T("ctx.x", "{\"x\":\"a\"}");
    F("ctx.x", "{\"x\":\"\"}");
    T("ctx.x", "{\"x\":[0]}");
    T("ctx.x", "{\"x\":{\"a\":null}}");
    F("ctx.x", "{\"x\":{}}");
    T("!ctx.x", "{}");
    F("!!ctx.x", "{}");
    T("!!ctx.x", "{\"x\":1}");
    T("ctx.a.b.c", "{\"a\":{\"b\":{\"c\":1}}}");
    F("ctx.a.b.c", "{\"a\":{\"b\":5}}");
    F("ctx.items.0", "{\"items\":[1]}");
    F("ctx.items.length", "{\"items\":[1]}");
    /* Empty segments look up the key "". */
    T("ctx.a..b", "{\"a\":{\"\":{\"b\":1}}}");
    T("ctx.a.", "{\"a\":{\"\":1}}");
    T("ctx..a", "{\"\":{\"a\":1}}");
    /* Keys are case-sensitive. */
    F("ctx.A", "{\"a\":1}");
    /* A non-object ctx, or none at all, only has nulls. */
    F("ctx.a", "[1]");
    ck_assert(!ev("ctx.a", NULL));
    ck_assert(ev("ctx.a == null", NULL));
    T("ctx.a == null", "5");
}
END_TEST

START_TEST(equality)
{
    T("ctx.b == true", "{\"b\":true}");
    F("ctx.b == true", "{\"b\":1}");
    F("ctx.b == false", "{\"b\":null}");
    T("ctx.b == false", "{\"b\":false}");
    T("ctx.b != true", "{\"b\":1}");
    F("ctx.s == \"1\"", "{\"s\":1}");
    F("ctx.n == 1", "{\"n\":\"1\"}");
    T("ctx.n == 1", "{\"n\":1}");
    T("ctx.n == -2.5", "{\"n\":-2.5}");
    T("ctx.n == 0.3", "{\"n\":0.30000000000000004}");
    F("ctx.n == 0.3", "{\"n\":0.3000000000000003}");
    T("ctx.n == 5.", "{\"n\":5}");
    T("ctx.n == .5", "{\"n\":0.5}");
    T("ctx.n == -.5", "{\"n\":-0.5}");
    /* f64 comparison: huge integers that round alike are equal. */
    T("ctx.n == 9007199254740993", "{\"n\":9007199254740992}");
    T("ctx.s == \"active\"", "{\"s\":\"active\"}");
    F("ctx.s == \"active\"", "{\"s\":\"Active\"}");
    F("ctx.s == \"\"", "{}");
    T("ctx.s == \"\"", "{\"s\":\"\"}");
    F("ctx.o == null", "{\"o\":{}}");
    F("ctx.o != null", "{\"o\":null}");
    T("ctx.o != 1", "{\"o\":[1]}");
    /* Escapes are not decoded: the literal is the raw text between quotes. */
    T("ctx.s == \"a\\\"b\"", "{\"s\":\"a\\\\\\\"b\"}");
    F("ctx.s == \"a\\\"b\"", "{\"s\":\"a\\\"b\"}");
    T("ctx.s == \"a\\\\\"", "{\"s\":\"a\\\\\\\\\"}");
    T("ctx.s == \"x\\n\"", "{\"s\":\"x\\\\n\"}");
}
END_TEST

START_TEST(ordering)
{
    T("ctx.a > 100", "{\"a\":150}");
    F("ctx.a > 100", "{\"a\":100}");
    T("ctx.a >= 100", "{\"a\":100}");
    T("ctx.a < 10", "{\"a\":5}");
    F("ctx.a < 10", "{\"a\":10}");
    T("ctx.a <= 10", "{\"a\":10}");
    T("ctx.a > -1.5", "{\"a\":-1}");
    F("ctx.a > 0", "{}");
    F("ctx.a > 0", "{\"a\":null}");
    F("ctx.a > 0", "{\"a\":true}");
    F("ctx.a < 0", "{\"a\":\"-5\"}");
    T("!(ctx.x > 0)", "{}");
    T("ctx.a>1", "{\"a\":2}");
    T("ctx.a>=1&&ctx.b<=2", "{\"a\":1,\"b\":2}");
    /* rstmdb accepted a 309-digit number after an ordering operator as
     * infinity; that is an error now, but a long finite one is fine. */
    char big[400] = "ctx.a < 1";
    for (int i = 0; i < 300; i++)
        strcat(big, "0");
    T(big, "{\"a\":1e299}");
}
END_TEST

START_TEST(precedence)
{
    /* && binds tighter than ||. */
    T("ctx.a || ctx.b && ctx.c", "{\"a\":true}");
    F("(ctx.a || ctx.b) && ctx.c", "{\"a\":true}");
    T("ctx.a && ctx.b || ctx.c", "{\"c\":1}");
    F("ctx.a && (ctx.b || ctx.c)", "{\"c\":1}");
    /* ! binds tighter than && and applies to a whole comparison. */
    T("!ctx.a == 1", "{\"a\":2}");
    F("!ctx.a == 1", "{\"a\":1}");
    F("!ctx.a && ctx.b", "{\"a\":false}");
    T("!ctx.a && ctx.b", "{\"b\":1}");
    T("!(ctx.a && ctx.b)", "{\"a\":1}");
    T("!!!ctx.a", "{}");
    T("! ! ctx.a", "{\"a\":1}");
    T("((((ctx.a))))", "{\"a\":1}");
    T("( ctx.a == 1 )", "{\"a\":1}");
    T("ctx.a || ctx.b || ctx.c || ctx.d", "{\"d\":1}");
    F("ctx.a && ctx.b && ctx.c && ctx.d", "{\"a\":1,\"b\":1,\"c\":1}");
    T("ctx.a && ctx.b && ctx.c && ctx.d", "{\"a\":1,\"b\":1,\"c\":1,\"d\":1}");
    T("ctx.enabled && ctx.amount > 0 || ctx.override",
      "{\"enabled\":true,\"amount\":10,\"override\":false}");
    F("ctx.enabled && ctx.amount > 0 || ctx.override",
      "{\"enabled\":false,\"amount\":0,\"override\":false}");
    T("(ctx.a || ctx.b) && !(ctx.c || ctx.d) || ctx.e", "{\"b\":1}");
    F("(ctx.a || ctx.b) && !(ctx.c || ctx.d) || ctx.e", "{\"b\":1,\"d\":1}");
    /* Whitespace anywhere between tokens, trimmed at both ends. */
    T("  \t\nctx.a\n==\t1  \n", "{\"a\":1}");
}
END_TEST

START_TEST(literal_words)
{
    /* Whole words only: rstmdb read "trueish" as true. */
    bad("ctx.a == trueish", E "invalid number: 'trueish' at byte 9");
    bad("ctx.a == nullx", E "invalid number: 'nullx' at byte 9");
    bad("ctx.a == false_", E "invalid number: 'false_' at byte 9");
    bad("ctx.a == True", E "invalid number: 'True' at byte 9");
    T("ctx.a == true&&ctx.b", "{\"a\":true,\"b\":1}");
    T("(ctx.a == null)", "{}");
}
END_TEST

START_TEST(paths_payload)
{
    ck_assert(!ev2("payload.x", "{\"x\":1}", NULL));
    ck_assert(ev2("payload.x", "{}", "{\"x\":1}"));
    ck_assert(ev2("payload.x.y == \"z\"", NULL, "{\"x\":{\"y\":\"z\"}}"));
    ck_assert(ev2("payload.amount <= ctx.limit", "{\"limit\":100}", "{\"amount\":100}"));
    ck_assert(!ev2("payload.amount <= ctx.limit", "{\"limit\":100}", "{\"amount\":100.5}"));
    ck_assert(!ev2("payload.amount <= ctx.limit", "{}", "{\"amount\":1}"));
    ck_assert(!ev2("payload.amount <= ctx.limit", "{\"limit\":\"100\"}", "{\"amount\":1}"));
    ck_assert(!ev2("payload.amount > ctx.limit", "{\"limit\":1}", "{}"));
    ck_assert(ev2("ctx.a < payload.b", "{\"a\":1}", "{\"b\":2}"));
    ck_assert(ev2("ctx.a >= ctx.b", "{\"a\":2,\"b\":2}", NULL));
    /* Path equality follows the literal table. */
    ck_assert(ev2("ctx.owner == payload.user", "{\"owner\":\"ann\"}", "{\"user\":\"ann\"}"));
    ck_assert(!ev2("ctx.owner == payload.user", "{\"owner\":\"ann\"}", "{\"user\":\"bob\"}"));
    ck_assert(ev2("ctx.owner != payload.user", "{\"owner\":\"ann\"}", "{\"user\":\"bob\"}"));
    ck_assert(ev2("ctx.a == payload.b", "{}", "{}"));
    ck_assert(ev2("ctx.a == payload.b", "{\"a\":null}", NULL));
    ck_assert(ev2("ctx.a == payload.b", "{\"a\":1.0}", "{\"b\":1}"));
    ck_assert(!ev2("ctx.a == payload.b", "{\"a\":1}", "{\"b\":\"1\"}"));
    ck_assert(!ev2("ctx.a == payload.b", "{\"a\":true}", "{\"b\":1}"));
    ck_assert(ev2("ctx.a == payload.b", "{\"a\":false}", "{\"b\":false}"));
    ck_assert(!ev2("ctx.a == payload.b", "{\"a\":[1]}", "{\"b\":[1]}"));
    ck_assert(!ev2("ctx.a == payload.b", "{\"a\":{}}", "{\"b\":{}}"));
    ck_assert(ev2("ctx.a != payload.b", "{\"a\":{}}", "{\"b\":{}}"));
    ck_assert(ev2("ctx.a == ctx.a", "{\"a\":\"x\"}", NULL));
    /* The payload is any JSON; a non-object one has no members. */
    ck_assert(!ev2("payload.x", NULL, "[1,2]"));
    ck_assert(ev2("payload.x == null", NULL, "\"s\""));
    /* "payload" and "ctx" alone are not paths. */
    bad("payload", E "field must start with 'ctx.' or 'payload.' at byte 0");
    bad("ctx.a == payload", E "invalid number: 'payload' at byte 9");
    bad("ctx.a > payload.", E "empty field name at byte 16");
}
END_TEST

START_TEST(parse_errors)
{
    bad("", E "empty guard expression at byte 0");
    bad("   \t\n ", E "empty guard expression at byte 6");
    bad("x", E "field must start with 'ctx.' or 'payload.' at byte 0");
    bad("true", E "field must start with 'ctx.' or 'payload.' at byte 0");
    bad("ctx", E "field must start with 'ctx.' or 'payload.' at byte 0");
    bad("Ctx.a", E "field must start with 'ctx.' or 'payload.' at byte 0");
    bad("ctx.a &&", E "field must start with 'ctx.' or 'payload.' at byte 8");
    bad("ctx.a || ", E "field must start with 'ctx.' or 'payload.' at byte 8");
    bad("&& ctx.a", E "field must start with 'ctx.' or 'payload.' at byte 0");
    bad("ctx.a && && ctx.b", E "field must start with 'ctx.' or 'payload.' at byte 9");
    bad("!", E "field must start with 'ctx.' or 'payload.' at byte 1");
    bad("ctx.", E "empty field name at byte 4");
    bad("ctx. a", E "empty field name at byte 4");
    bad("ctx.-a", E "empty field name at byte 4");
    bad("(ctx.a", E "expected ')' at byte 6");
    bad("((ctx.a) && ctx.b", E "expected ')' at byte 17");
    bad("(ctx.a ctx.b)", E "expected ')' at byte 7");
    bad("()", E "field must start with 'ctx.' or 'payload.' at byte 1");
    bad("ctx.a)", E "unexpected ')' at byte 5");
    bad("ctx.s == \"abc", E "unterminated string at byte 9");
    bad("ctx.s == \"abc\\\"", E "unterminated string at byte 9");
    /* A lone backslash at the very end (rstmdb panicked). */
    bad("ctx.s == \"abc\\", E "unterminated string at byte 9");
    bad("ctx.s == \"\\", E "unterminated string at byte 9");
    bad("ctx.a == ", E "invalid number: '' at byte 8");
    bad("ctx.a ==", E "invalid number: '' at byte 8");
    bad("ctx.a > ", E "invalid number: '' at byte 7");
    bad("ctx.a > \"x\"", E "invalid number: '\"x\"' at byte 8");
    bad("ctx.a > true", E "invalid number: 'true' at byte 8");
    bad("ctx.a > null", E "invalid number: 'null' at byte 8");
    bad("ctx.a == 'x'", E "invalid number: ''x'' at byte 9");
    bad("ctx.a == -", E "invalid number: '-' at byte 9");
    bad("ctx.a == .", E "invalid number: '.' at byte 9");
    bad("ctx.a == -.", E "invalid number: '-.' at byte 9");
    bad("ctx.a == +1", E "invalid number: '+1' at byte 9");
    bad("ctx.a == 1e5", E "invalid number: '1e5' at byte 9");
    bad("ctx.a == 1.2.3", E "invalid number: '1.2.3' at byte 9");
    bad("ctx.a == 12abc", E "invalid number: '12abc' at byte 9");
    bad("ctx.a == )", E "invalid number: ')' at byte 9");
    bad("ctx.a == ctx", E "invalid number: 'ctx' at byte 9");
    bad("ctx.a == ctx.", E "empty field name at byte 13");
    bad("ctx.a & ctx.b", E "unexpected '&' at byte 6");
    bad("ctx.a | ctx.b", E "unexpected '|' at byte 6");
    bad("ctx.a and ctx.b", E "unexpected 'a' at byte 6");
    bad("ctx.a == 1 ctx.b", E "unexpected 'c' at byte 11");
    bad("ctx.a == \"x\"y", E "unexpected 'y' at byte 12");
    bad("ctx.a =< 1", E "unexpected '=' at byte 6");
    bad("ctx.a\x01", E "unexpected byte 0x01 at byte 5");
    bad_n("ctx.a\0 || ctx.b", 15, E "unexpected byte 0x00 at byte 5");
}
END_TEST

START_TEST(huge_numbers)
{
    char g[512] = "ctx.a == 1";
    for (int i = 0; i < 320; i++)
        strcat(g, "0");
    char want[512];
    snprintf(want, sizeof want, E "invalid number: '%.68s...' (out of range) at byte 9", g + 9);
    bad(g, want);
    memcpy(g + 6, "> ", 2);
    memmove(g + 8, g + 9, strlen(g + 9) + 1);
    snprintf(want, sizeof want, E "invalid number: '%.68s...' (out of range) at byte 8", g + 8);
    bad(g, want);
    /* Long but in range, and many digits after the point. */
    char s[600] = "ctx.a == 0.";
    for (int i = 0; i < 400; i++)
        strcat(s, "0");
    strcat(s, "1");
    T(s, "{\"a\":0}");
}
END_TEST

START_TEST(non_ascii)
{
    T("ctx.name == \"José\"", "{\"name\":\"José\"}");
    F("ctx.name == \"José\"", "{\"name\":\"Jose\"}");
    T("ctx.c != \"日本\"", "{\"c\":\"中国\"}");
    T("ctx.e == \"😀\"", "{\"e\":\"😀\"}");
    /* A backslash before a multi-byte character keeps it whole. */
    T("ctx.s == \"\\é\"", "{\"s\":\"\\\\é\"}");
    bad("ctx.naïve", E "non-ASCII character outside a string literal at byte 6");
    bad("ctx.a == José", E "non-ASCII character outside a string literal at byte 12");
    bad("ctx.a\xc2\xa0== 1", E "non-ASCII character outside a string literal at byte 5");
    bad("\xe2\x80\x83"
        "ctx.a",
        E "non-ASCII character outside a string literal at byte 0");
    bad("ctx.a == \"\xff\"", E "invalid UTF-8 in string literal at byte 10");
    bad("ctx.a == \"ab\xc3\"", E "invalid UTF-8 in string literal at byte 12");
    bad("ctx.a == \"é\xed\xa0\x80\"", E "invalid UTF-8 in string literal at byte 12");
    bad("ctx.a == \"abc\xc3", E "invalid UTF-8 in string literal at byte 13");
}
END_TEST

START_TEST(limits)
{
    /* Depth: GUARD_MAX_DEPTH parentheses are fine, one more is not. */
    char g[GUARD_MAX_DEPTH * 2 + 32];
    size_t n = 0;
    for (int i = 0; i < GUARD_MAX_DEPTH; i++)
        g[n++] = '(';
    memcpy(g + n, "ctx.a", 5), n += 5;
    for (int i = 0; i < GUARD_MAX_DEPTH; i++)
        g[n++] = ')';
    g[n] = '\0';
    T(g, "{\"a\":1}");
    n = 0;
    for (int i = 0; i <= GUARD_MAX_DEPTH; i++)
        g[n++] = '(';
    memcpy(g + n, "ctx.a", 5), n += 5;
    for (int i = 0; i <= GUARD_MAX_DEPTH; i++)
        g[n++] = ')';
    g[n] = '\0';
    char want[128];
    snprintf(want, sizeof want, E "nested deeper than %d levels (limits.max_guard_depth, the most it can be set to) at byte %d", GUARD_MAX_DEPTH,
             GUARD_MAX_DEPTH);
    bad(g, want);
    /* The same for '!'. */
    n = 0;
    for (int i = 0; i <= GUARD_MAX_DEPTH; i++)
        g[n++] = '!';
    memcpy(g + n, "ctx.a", 6);
    bad(g, want);
    n = 0;
    for (int i = 0; i < GUARD_MAX_DEPTH; i++)
        g[n++] = '!';
    memcpy(g + n, "ctx.a", 6);
    T(g, "{\"a\":1}");
    /* 100k of '(' is refused at the limit, without recursing that deep. */
    size_t big = 100000;
    char *deep = malloc(big + 1);
    memset(deep, '(', big);
    deep[big] = '\0';
    stm_err err = {0};
    ck_assert_ptr_null(guard_compile(deep, big, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "longer than"));
    free(deep);

    /* Length: exactly GUARD_MAX_LEN compiles, one more byte does not. */
    char *lng = malloc(GUARD_MAX_LEN + 2);
    size_t k = 0;
    while (k + 14 <= GUARD_MAX_LEN) {
        memcpy(lng + k, k ? " || ctx.a" : "ctx.a", k ? 9 : 5);
        k += k ? 9 : 5;
    }
    while (k < GUARD_MAX_LEN)
        lng[k++] = ' ';
    lng[k] = '\0';
    ck_assert_uint_eq(strlen(lng), GUARD_MAX_LEN);
    T(lng, "{\"a\":1}");
    F(lng, "{}");
    lng[k] = ' ';
    lng[k + 1] = '\0';
    snprintf(want, sizeof want, E "longer than %d bytes at byte %d", GUARD_MAX_LEN, GUARD_MAX_LEN);
    bad(lng, want);
    free(lng);

    /* A long && chain is flat, not deep. */
    char *chain = malloc(GUARD_MAX_LEN + 1);
    k = 0;
    while (k + 10 <= GUARD_MAX_LEN) {
        memcpy(chain + k, k ? "&&ctx.a" : "ctx.a", k ? 7 : 5);
        k += k ? 7 : 5;
    }
    chain[k] = '\0';
    T(chain, "{\"a\":1}");
    free(chain);
}
END_TEST

/* Contexts the text path must read exactly as the tree does, and the ones
 * it hands back (-1) rather than misread. */
START_TEST(text_path_agrees)
{
    static const char *ctxs[] = {
        "{}", "null", "[]", "{\"a\":1}", "{\"a\":-2.5e3,\"b\":\"x\",\"c\":true,\"d\":null}",
        "{\"a\":{\"b\":{\"c\":7}},\"aa\":0,\"s\":\"\"}", "{\"a\":[],\"b\":{},\"c\":[0],\"d\":{\"e\":0}}",
        "{\"a\":\"with \\\"quote\\\"\",\"b\":\"caf\u00e9\",\"n\":1e308}", "{\"a\\n\":1,\"b\":2}",
        "{\"amount\":99.99,\"limit\":100,\"name\":\"alice\",\"tags\":[\"x\",\"y\"]}",
        "{\"a\":0.1,\"b\":0.10000000000000001,\"z\":{\"y\":[1,{\"x\":\"]}\"}]}}",
    };
    static const char *guards[] = {
        "ctx.a", "!ctx.a", "ctx.a == 1", "ctx.a != null", "ctx.a == null", "ctx.b == \"x\"",
        "ctx.a.b.c > 6", "ctx.a.b", "ctx.c", "ctx.d", "ctx.d.e == 0", "ctx.s", "ctx.s == \"\"",
        "ctx.amount <= ctx.limit", "ctx.amount < 99.99", "ctx.amount == 99.99", "ctx.name == \"alice\"",
        "ctx.tags", "ctx.a == ctx.b", "ctx.n >= 1000000", "ctx.z.y", "ctx.b == \"caf\u00e9\"",
        "ctx.a && ctx.b || !ctx.c", "ctx.missing == null", "ctx.a >= -2500", "ctx.a == true",
    };
    int answered = 0;
    for (size_t i = 0; i < sizeof ctxs / sizeof *ctxs; i++) {
        cJSON *c = js(ctxs[i]);
        buf text = {0};
        json_write(&text, c, true);
        for (size_t j = 0; j < sizeof guards / sizeof *guards; j++) {
            stm_err err = {0};
            guard *g = guard_compile(guards[j], strlen(guards[j]), &err);
            ck_assert_msg(g != NULL, "%s: %s", guards[j], err.msg);
            int rt = guard_eval_text(g, text.data, text.len, NULL);
            bool r = guard_eval(g, c, NULL);
            ck_assert_msg(rt == -1 || rt == (int)r, "'%s' on %s: text %d, tree %d", guards[j],
                          text.data, rt, r);
            answered += rt != -1;
            guard_free(g);
        }
        buf_free(&text);
        cJSON_Delete(c);
    }
    /* only the escaped key and strings hand back */
    ck_assert_int_gt(answered, (int)(sizeof ctxs / sizeof *ctxs * sizeof guards / sizeof *guards) * 8 / 10);
}
END_TEST

START_TEST(null_err_ok)
{
    /* err may be NULL. */
    ck_assert_ptr_null(guard_compile("ctx.", 4, NULL));
    /* The source is kept as given, including surrounding whitespace. */
    stm_err err;
    guard *g = guard_compile(" ctx.a ", 7, &err);
    ck_assert_str_eq(guard_source(g), " ctx.a ");
    guard_free(g);
    guard_free(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("guard");
    TCase *tc = tcase_create("guard");
    tcase_add_test(tc, quick_table);
    tcase_add_test(tc, truthiness);
    tcase_add_test(tc, equality);
    tcase_add_test(tc, ordering);
    tcase_add_test(tc, precedence);
    tcase_add_test(tc, literal_words);
    tcase_add_test(tc, paths_payload);
    tcase_add_test(tc, parse_errors);
    tcase_add_test(tc, huge_numbers);
    tcase_add_test(tc, non_ascii);
    tcase_add_test(tc, limits);
    tcase_add_test(tc, null_err_ok);
    tcase_add_test(tc, text_path_agrees);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
