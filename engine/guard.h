/*
 * guard.h - the guard language of transitions, compiled once, evaluated
 * without allocating.
 *
 * Accepts everything rstmdb accepts with the same results (reference
 * engine-semantics.md §10): ctx.a.b paths, == != against true/false/null/
 * "string"/number, > >= < <= against numbers, bare paths as truthiness, !,
 * &&, ||, parentheses. Differences, all deliberate:
 *   - trailing garbage, non-ASCII outside string literals, a lone '\' at the
 *     end, over-long number literals are parse errors (rstmdb ignores or
 *     panics);
 *   - payload.x paths read the event's payload (null when absent);
 *   - a path may stand on the right of a comparison: payload.amount <= ctx.limit
 *     (ordering needs two numbers, equality follows the same table as literals);
 *   - at most GUARD_MAX_LEN bytes and GUARD_MAX_DEPTH nesting.
 * String literals keep rstmdb's rule: a backslash only protects the next
 * character from ending the string; escapes are not decoded.
 */
#ifndef STM_GUARD_H
#define STM_GUARD_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"

#define GUARD_MAX_LEN 4096
#define GUARD_MAX_DEPTH 64

typedef struct guard guard;

/* Compiles src[0..len). On error returns NULL and sets err to BAD_REQUEST
 * with "invalid guard expression: <reason> at byte <n>" (rstmdb's reason
 * texts where rstmdb has one). */
guard *guard_compile(const char *src, size_t len, stm_err *err);
/* Evaluates against ctx and payload (either may be NULL = null). Pure. */
bool guard_eval(const guard *g, const cJSON *ctx, const cJSON *payload);
/* The same, with the context given as its stored canonical text (compact
 * JSON, as stmfs keeps it): 1 or 0, or -1 when the text holds something on
 * a looked-up path that this does not decode (escapes, very long strings),
 * and the caller must parse the context and use guard_eval. */
int guard_eval_text(const guard *g, const char *ctx_text, size_t len, const cJSON *payload);
/* The source text as given. */
const char *guard_source(const guard *g);
/* How deeply '!' and parentheses nest in it (0 for `ctx.a == 1`). */
unsigned guard_depth(const guard *g);
void guard_free(guard *g);

#endif
