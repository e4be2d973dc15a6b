/*
 * def.h - machine definitions: parse (JSON or YAML), validate, normalise,
 * checksum, look up transitions, draw.
 *
 * Follows reference engine-semantics.md §2. The normalised form has "from"
 * always an array, unknown keys dropped, guard/meta omitted when absent; its
 * checksum is "%08x" of CRC-32C over the compact JSON with the fixed key
 * order states, initial, transitions (from, event, to, guard), meta (meta's
 * own keys sorted). Beyond rstmdb: several transitions may share (from,
 * event) when they differ by guard; they are tried in definition order and
 * the first whose guard passes wins (an unguarded one must come last, else
 * the later ones could never fire and the definition is refused).
 * Validation errors are BAD_REQUEST "invalid machine definition: <reason>",
 * naming the offending state, transition (by index and event) or guard.
 */
#ifndef STM_DEF_H
#define STM_DEF_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "engine/guard.h"

#define DEF_MAX_STATES 10000
#define DEF_MAX_TRANSITIONS 100000

typedef struct {
    const char *from;       /* one source state (an array "from" fans out) */
    const char *event;
    const char *to;
    const guard *guard;     /* NULL = always passes */
    uint32_t index;         /* position of the transition in the definition */
} def_transition;

typedef struct def def;

/* Parses and validates a definition object. On success *out owns everything
 * it needs (definition is not kept). */
stm_code def_parse(const cJSON *definition, def **out, stm_err *err);
/* Limits a deployment sets on new definitions (0 = no limit beyond the
 * ceilings above). Checked after def_parse, only where a definition is
 * submitted: one accepted under looser limits still loads at recovery. */
typedef struct {
    uint32_t max_states, max_transitions; /* transitions after 'from' fan-out */
    uint32_t max_guard_bytes, max_guard_depth;
    uint64_t max_definition_bytes;        /* its normalised compact JSON */
} def_limits;
/* BAD_REQUEST naming the limit (limits.<key>) and the value that broke it. */
stm_code def_check_limits(const def *d, const def_limits *lim, stm_err *err);
/* Reads YAML text into the equivalent JSON value (mappings -> objects,
 * sequences -> arrays, plain scalars typed as YAML 1.2 core: null, true/
 * false, integers, floats; quoted scalars stay strings). Caller owns it. */
cJSON *def_yaml_to_json(const char *text, size_t len, stm_err *err);
void def_free(def *d);

const char *def_checksum(const def *d);          /* 8 lower-case hex digits */
const char *def_initial(const def *d);
size_t def_state_count(const def *d);
const char *def_state(const def *d, size_t i);   /* in definition order */
bool def_has_state(const def *d, const char *state);
size_t def_transition_count(const def *d);       /* after fan-out */
const def_transition *def_transition_at(const def *d, size_t i);

/* The normalised definition as a new cJSON object (caller owns). */
cJSON *def_normalised(const def *d);
/* Appends the normalised definition as canonical JSON (keys sorted), the
 * form GET_MACHINE returns and definition.json shows (pretty when indent). */
void def_write_json(const def *d, buf *out, bool pretty);
/* Appends the normalised definition as YAML that def_yaml_to_json reads back
 * to the same definition. */
void def_write_yaml(const def *d, buf *out);
/* Appends a Graphviz digraph: states, transitions labelled event [guard],
 * the initial state marked. */
void def_write_dot(const def *d, const char *name, uint32_t version, buf *out);

/* Finds the transition for (state, event) whose guard passes on ctx/payload.
 * Returns it, or NULL with *why = STM_INVALID_TRANSITION (no transition for
 * the pair) or STM_GUARD_FAILED (there are, but every guard failed; *failed
 * then points at the last one tried, for the message). */
/* def_find with the context as its stored canonical text (no parse). Sets
 * *need_tree and returns NULL when a guard needs the parsed context
 * (guard_eval_text): then call def_find with it. */
const def_transition *def_find_text(const def *d, const char *state, const char *event,
                                    const char *ctx_text, size_t ctx_len, const cJSON *payload,
                                    stm_code *why, const def_transition **failed, bool *need_tree);
const def_transition *def_find(const def *d, const char *state, const char *event,
                               const cJSON *ctx, const cJSON *payload, stm_code *why,
                               const def_transition **failed);

/* The distinct events that have a transition from state, in definition order.
 * Fills up to max pointers (owned by d); returns how many there are. */
size_t def_events_from(const def *d, const char *state, const char **out, size_t max);

#endif
