/*
 * def.c - machine definitions: validation, the normalised form and its
 * checksum, and the transition lookup of every APPLY_EVENT.
 *
 * A parsed def keeps the normalised cJSON (key order states, initial,
 * transitions{from,event,to,guard}, meta) and points into it: every state,
 * event and target string handed out is owned by that tree, and a state is
 * always the pointer of its first occurrence in "states", so callers may
 * keep it as long as the def lives.
 *
 * Lookup structures, built once:
 *   states  open-addressed hash of the distinct state names
 *   pairs   one entry per distinct (from, event), in order of first
 *           appearance, hashed; each holds the chain of its transitions in
 *           definition order (tr_next), and the pairs of one state are
 *           linked so def_events_from needs no scan.
 * def_find hashes two strings and walks a chain: no allocation.
 *
 * Transition numbers in messages are 1-based ("transition 2" is the second
 * object of "transitions"); def_transition.index is 0-based.
 */
#include "engine/def.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/crc32c.h"
#include "base/json.h"

#define NIL UINT32_MAX

typedef struct {
    const char *name;
    uint32_t hash;
    uint32_t first_pair, last_pair;
} dstate;

typedef struct {
    const char *from, *event;
    uint32_t hash;
    uint32_t head, tail;    /* transitions of this pair, through tr_next */
    uint32_t next_of_state; /* next pair with the same from */
} dpair;

struct def {
    cJSON *norm;
    char checksum[9];
    const char *initial;
    const char **states; /* as submitted, duplicates included */
    size_t nstates;
    dstate *dst;
    size_t ndst;
    uint32_t *st_tab;
    size_t st_mask;
    def_transition *tr;
    uint32_t *tr_next;
    size_t ntr;
    guard **guards; /* one per transition object that has a guard */
    size_t nguards;
    dpair *pairs;
    size_t npairs;
    uint32_t *pr_tab;
    size_t pr_mask;
};

static uint32_t fnv(uint32_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static uint32_t hash_str(const char *s)
{
    return fnv(2166136261u, s);
}

static uint32_t hash_pair(const char *state, const char *event)
{
    /* 0xff never occurs in UTF-8, so ("ab","c") and ("a","bc") differ. */
    uint32_t h = fnv(2166136261u, state);
    h = (h ^ 0xffu) * 16777619u;
    return fnv(h, event);
}

static size_t table_size(size_t n)
{
    size_t sz = 8;
    while (sz < n * 2)
        sz <<= 1;
    return sz;
}

static const dstate *find_state(const def *d, const char *name)
{
    uint32_t h = hash_str(name);
    for (size_t i = h & d->st_mask;; i = (i + 1) & d->st_mask) {
        uint32_t k = d->st_tab[i];
        if (!k) return NULL;
        const dstate *s = &d->dst[k - 1];
        if (s->hash == h && strcmp(s->name, name) == 0) return s;
    }
}

static dpair *find_pair(const def *d, const char *state, const char *event)
{
    uint32_t h = hash_pair(state, event);
    for (size_t i = h & d->pr_mask;; i = (i + 1) & d->pr_mask) {
        uint32_t k = d->pr_tab[i];
        if (!k) return NULL;
        dpair *p = &d->pairs[k - 1];
        if (p->hash == h && strcmp(p->from, state) == 0 && strcmp(p->event, event) == 0) return p;
    }
}

/* ---- messages ---- */

/* A name inside a message: bounded, cut on a UTF-8 boundary so the message
 * stays valid UTF-8 for the wire. */
static const char *clip(const char *s, char *out, size_t outsz)
{
    size_t n = strlen(s);
    if (n < outsz) return s;
    n = outsz - 4;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    memcpy(out, s, n);
    memcpy(out + n, "...", 4);
    return out;
}

__attribute__((format(printf, 2, 3))) static stm_code bad(stm_err *err, const char *fmt, ...)
{
    char reason[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return stm_fail(err, STM_BAD_REQUEST, "invalid machine definition: %s", reason);
}

/* "transition 2 (event 'SHIP')", or "transition 2" when event is unusable. */
static const char *tlabel(size_t i, const cJSON *t, char *out, size_t outsz)
{
    const cJSON *ev = json_get(t, "event");
    if (cJSON_IsString(ev) && ev->valuestring) {
        char c[72];
        snprintf(out, outsz, "transition %zu (event '%s')", i + 1,
                 clip(ev->valuestring, c, sizeof c));
    } else {
        snprintf(out, outsz, "transition %zu", i + 1);
    }
    return out;
}

/* ---- validation ---- */

static bool is_string_array(const cJSON *a)
{
    if (!cJSON_IsArray(a)) return false;
    for (const cJSON *c = a->child; c; c = c->next)
        if (!cJSON_IsString(c) || !c->valuestring) return false;
    return true;
}

/* The JSON shape of everything, before any cross-reference check. */
static stm_code check_shape(const cJSON *dj, stm_err *err)
{
    if (!cJSON_IsObject(dj)) return bad(err, "definition must be a JSON object");
    /* a fixed structure: a field given twice is a mistake, not an update
     * (rstmdb's typed parser refuses it too; YAML's is refused in def_yaml) */
    const char *dup = json_duplicate_key(dj);
    char c1[72];
    if (dup) return bad(err, "duplicate field '%s'", clip(dup, c1, sizeof c1));
    const cJSON *states = json_get(dj, "states");
    if (!states) return bad(err, "missing field 'states'");
    if (!is_string_array(states)) return bad(err, "'states' must be an array of strings");
    const cJSON *initial = json_get(dj, "initial");
    if (!initial) return bad(err, "missing field 'initial'");
    if (!cJSON_IsString(initial) || !initial->valuestring)
        return bad(err, "'initial' must be a string");
    const cJSON *trs = json_get(dj, "transitions");
    if (!trs) return bad(err, "missing field 'transitions'");
    if (!cJSON_IsArray(trs)) return bad(err, "'transitions' must be an array");
    size_t i = 0;
    char lb[128];
    for (const cJSON *t = trs->child; t; t = t->next, i++) {
        if (!cJSON_IsObject(t)) return bad(err, "transition %zu must be an object", i + 1);
        tlabel(i, t, lb, sizeof lb);
        if ((dup = json_duplicate_key(t)))
            return bad(err, "%s: duplicate field '%s'", lb, clip(dup, c1, sizeof c1));
        const cJSON *from = json_get(t, "from"), *ev = json_get(t, "event"),
                    *to = json_get(t, "to"), *g = json_get(t, "guard");
        if (!from) return bad(err, "%s: missing field 'from'", lb);
        if (!(cJSON_IsString(from) && from->valuestring) && !is_string_array(from))
            return bad(err, "%s: 'from' must be a string or an array of strings", lb);
        if (!ev) return bad(err, "%s: missing field 'event'", lb);
        if (!cJSON_IsString(ev) || !ev->valuestring)
            return bad(err, "%s: 'event' must be a string", lb);
        if (!to) return bad(err, "%s: missing field 'to'", lb);
        if (!cJSON_IsString(to) || !to->valuestring)
            return bad(err, "%s: 'to' must be a string", lb);
        if (g && !cJSON_IsNull(g) && !(cJSON_IsString(g) && g->valuestring))
            return bad(err, "%s: 'guard' must be a string or null", lb);
    }
    return STM_OK;
}

static void add_state(def *d, const char *name)
{
    uint32_t h = hash_str(name);
    size_t i = h & d->st_mask;
    for (;; i = (i + 1) & d->st_mask) {
        uint32_t k = d->st_tab[i];
        if (!k) break;
        if (d->dst[k - 1].hash == h && strcmp(d->dst[k - 1].name, name) == 0) return;
    }
    dstate *s = &d->dst[d->ndst++];
    s->name = name;
    s->hash = h;
    s->first_pair = s->last_pair = NIL;
    d->st_tab[i] = (uint32_t)d->ndst;
}

/* Adds transition entry ti under its (from, event) pair, refusing one that
 * could never fire: after an unguarded transition of the same pair, or with
 * the same guard text as an earlier one. */
static stm_code add_to_pair(def *d, uint32_t ti, const char *lb, stm_err *err)
{
    def_transition *t = &d->tr[ti];
    dpair *p = find_pair(d, t->from, t->event);
    char c1[72], c2[72];
    if (p) {
        const def_transition *last = &d->tr[p->tail];
        if (!last->guard)
            return bad(err,
                       "%s: duplicate transition from '%s' on event '%s' (transition %u has no "
                       "guard, so this one could never fire)",
                       lb, clip(t->from, c1, sizeof c1), clip(t->event, c2, sizeof c2),
                       last->index + 1);
        if (t->guard) {
            for (uint32_t k = p->head; k != NIL; k = d->tr_next[k]) {
                if (strcmp(guard_source(d->tr[k].guard), guard_source(t->guard)) == 0)
                    return bad(err,
                               "%s: duplicate transition from '%s' on event '%s' (same guard as "
                               "transition %u, so this one could never fire)",
                               lb, clip(t->from, c1, sizeof c1), clip(t->event, c2, sizeof c2),
                               d->tr[k].index + 1);
            }
        }
        d->tr_next[p->tail] = ti;
        p->tail = ti;
        return STM_OK;
    }
    uint32_t pi = (uint32_t)d->npairs++;
    p = &d->pairs[pi];
    p->from = t->from;
    p->event = t->event;
    p->hash = hash_pair(t->from, t->event);
    p->head = p->tail = ti;
    p->next_of_state = NIL;
    size_t i = p->hash & d->pr_mask;
    while (d->pr_tab[i])
        i = (i + 1) & d->pr_mask;
    d->pr_tab[i] = pi + 1;
    dstate *s = (dstate *)find_state(d, t->from);
    if (s->last_pair == NIL)
        s->first_pair = pi;
    else
        d->pairs[s->last_pair].next_of_state = pi;
    s->last_pair = pi;
    return STM_OK;
}

static size_t count(const cJSON *a)
{
    size_t n = 0;
    for (const cJSON *c = a ? a->child : NULL; c; c = c->next)
        n++;
    return n;
}

static void compute_checksum(def *d)
{
    buf b = {0};
    buf_puts(&b, "{\"states\":");
    json_write(&b, json_get(d->norm, "states"), false);
    buf_puts(&b, ",\"initial\":");
    json_write(&b, json_get(d->norm, "initial"), false);
    buf_puts(&b, ",\"transitions\":");
    json_write(&b, json_get(d->norm, "transitions"), false);
    const cJSON *meta = json_get(d->norm, "meta");
    if (meta) {
        buf_puts(&b, ",\"meta\":");
        json_write(&b, meta, true);
    }
    buf_putc(&b, '}');
    snprintf(d->checksum, sizeof d->checksum, "%08x", crc32c(0, b.data, b.len));
    buf_free(&b);
}

static int cmp_key(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

/* Sorts object members by key at every level, so that everything derived
 * from meta (YAML, def_normalised) is the same for the same checksum. */
static void sort_keys(cJSON *v)
{
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return;
    size_t n = 0;
    for (cJSON *c = v->child; c; c = c->next) {
        sort_keys(c);
        n++;
    }
    if (!cJSON_IsObject(v) || n < 2) return;
    cJSON **kids = xmalloc(n * sizeof *kids);
    size_t i = 0;
    for (cJSON *c = v->child; c; c = c->next)
        kids[i++] = c;
    qsort(kids, n, sizeof *kids, cmp_key);
    for (i = 0; i < n; i++) {
        kids[i]->prev = i ? kids[i - 1] : kids[n - 1]; /* cJSON: head->prev is the tail */
        kids[i]->next = i + 1 < n ? kids[i + 1] : NULL;
    }
    v->child = kids[0];
    free(kids);
}

/* Builds the normalised tree; strings handed out later point into it. */
static cJSON *normalise(const cJSON *dj)
{
    cJSON *n = cJSON_CreateObject();
    cJSON_AddItemToObject(n, "states", cJSON_Duplicate(json_get(dj, "states"), true));
    cJSON_AddStringToObject(n, "initial", json_get(dj, "initial")->valuestring);
    cJSON *trs = cJSON_AddArrayToObject(n, "transitions");
    for (const cJSON *t = json_get(dj, "transitions")->child; t; t = t->next) {
        cJSON *o = cJSON_CreateObject();
        const cJSON *from = json_get(t, "from");
        cJSON *fa = cJSON_AddArrayToObject(o, "from");
        if (cJSON_IsString(from))
            cJSON_AddItemToArray(fa, cJSON_CreateString(from->valuestring));
        else
            for (const cJSON *f = from->child; f; f = f->next)
                cJSON_AddItemToArray(fa, cJSON_CreateString(f->valuestring));
        cJSON_AddStringToObject(o, "event", json_get(t, "event")->valuestring);
        cJSON_AddStringToObject(o, "to", json_get(t, "to")->valuestring);
        const cJSON *g = json_get(t, "guard");
        if (cJSON_IsString(g)) cJSON_AddStringToObject(o, "guard", g->valuestring);
        cJSON_AddItemToArray(trs, o);
    }
    const cJSON *meta = json_get(dj, "meta");
    if (meta && !cJSON_IsNull(meta)) {
        cJSON *m = cJSON_Duplicate(meta, true);
        sort_keys(m);
        cJSON_AddItemToObject(n, "meta", m);
    }
    return n;
}

stm_code def_check_limits(const def *d, const def_limits *lim, stm_err *err)
{
    if (lim->max_states && d->nstates > lim->max_states)
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid machine definition: %zu states, over limits.max_states (%u)",
                        d->nstates, lim->max_states);
    if (lim->max_transitions && d->ntr > lim->max_transitions)
        return stm_fail(err, STM_BAD_REQUEST,
                        "invalid machine definition: %zu transitions (each state of a 'from' "
                        "list counts), over limits.max_transitions (%u)",
                        d->ntr, lim->max_transitions);
    for (size_t i = 0; i < d->nguards; i++) {
        const char *src = guard_source(d->guards[i]);
        if (lim->max_guard_bytes && strlen(src) > lim->max_guard_bytes)
            return stm_fail(err, STM_BAD_REQUEST,
                            "invalid machine definition: guard '%.60s%s' is %zu bytes, over "
                            "limits.max_guard_bytes (%u)",
                            src, strlen(src) > 60 ? "..." : "", strlen(src), lim->max_guard_bytes);
        if (lim->max_guard_depth && guard_depth(d->guards[i]) > lim->max_guard_depth)
            return stm_fail(err, STM_BAD_REQUEST,
                            "invalid machine definition: guard '%.60s%s' nests %u levels deep, "
                            "over limits.max_guard_depth (%u)",
                            src, strlen(src) > 60 ? "..." : "", guard_depth(d->guards[i]),
                            lim->max_guard_depth);
    }
    if (lim->max_definition_bytes) {
        buf b = {0};
        def_write_json(d, &b, false);
        size_t n = b.len;
        buf_free(&b);
        if (n > lim->max_definition_bytes)
            return stm_fail(err, STM_BAD_REQUEST,
                            "invalid machine definition: %zu bytes as compact JSON, over "
                            "limits.max_definition_bytes (%llu)",
                            n, (unsigned long long)lim->max_definition_bytes);
    }
    return STM_OK;
}

stm_code def_parse(const cJSON *dj, def **out, stm_err *err)
{
    *out = NULL;
    stm_code rc = check_shape(dj, err);
    if (rc) return rc;
    const cJSON *trs_in = json_get(dj, "transitions");
    size_t nstates = count(json_get(dj, "states")), ntobj = count(trs_in), nentries = 0;
    if (nstates > DEF_MAX_STATES)
        return bad(err, "%zu states, over limits.max_states (%d, the most it can be set to)",
                   nstates, DEF_MAX_STATES);
    if (ntobj > DEF_MAX_TRANSITIONS)
        return bad(err,
                   "%zu transitions, over limits.max_transitions (%d, the most it can be set to)",
                   ntobj, DEF_MAX_TRANSITIONS);
    for (const cJSON *t = trs_in->child; t; t = t->next) {
        const cJSON *from = json_get(t, "from");
        nentries += cJSON_IsString(from) ? 1 : count(from);
    }
    if (nentries > DEF_MAX_TRANSITIONS)
        return bad(err,
                   "%zu transitions after expanding 'from' lists, over "
                   "limits.max_transitions (%d, the most it can be set to)",
                   nentries, DEF_MAX_TRANSITIONS);

    def *d = xcalloc(1, sizeof *d);
    d->norm = normalise(dj);
    const cJSON *states = json_get(d->norm, "states");
    d->nstates = nstates;
    d->states = xcalloc(nstates ? nstates : 1, sizeof *d->states);
    d->dst = xcalloc(nstates ? nstates : 1, sizeof *d->dst);
    size_t sz = table_size(nstates);
    d->st_tab = xcalloc(sz, sizeof *d->st_tab);
    d->st_mask = sz - 1;
    size_t i = 0;
    for (const cJSON *s = states->child; s; s = s->next) {
        d->states[i++] = s->valuestring;
        add_state(d, s->valuestring);
    }
    d->tr = xcalloc(nentries ? nentries : 1, sizeof *d->tr);
    d->tr_next = xcalloc(nentries ? nentries : 1, sizeof *d->tr_next);
    d->guards = xcalloc(ntobj ? ntobj : 1, sizeof *d->guards);
    d->pairs = xcalloc(nentries ? nentries : 1, sizeof *d->pairs);
    sz = table_size(nentries);
    d->pr_tab = xcalloc(sz, sizeof *d->pr_tab);
    d->pr_mask = sz - 1;

    char c1[72], lb[128];
    const char *initial = json_get(d->norm, "initial")->valuestring;
    const dstate *is = find_state(d, initial);
    if (!is) {
        rc = bad(err, "initial state '%s' not in states list", clip(initial, c1, sizeof c1));
        goto fail;
    }
    d->initial = is->name;

    i = 0;
    for (const cJSON *t = json_get(d->norm, "transitions")->child; t; t = t->next, i++) {
        tlabel(i, t, lb, sizeof lb);
        const char *to = json_get(t, "to")->valuestring;
        const dstate *ts = find_state(d, to);
        if (!ts) {
            rc = bad(err, "%s: target '%s' not in states list", lb, clip(to, c1, sizeof c1));
            goto fail;
        }
        const cJSON *gj = json_get(t, "guard");
        guard *g = NULL;
        if (gj) {
            g = guard_compile(gj->valuestring, strlen(gj->valuestring), err);
            if (!g) {
                if (err) {
                    size_t n = strlen(err->msg);
                    snprintf(err->msg + n, sizeof err->msg - n, " in %s", lb);
                }
                rc = STM_BAD_REQUEST;
                goto fail;
            }
            d->guards[d->nguards++] = g;
        }
        const char *event = json_get(t, "event")->valuestring;
        for (const cJSON *f = json_get(t, "from")->child; f; f = f->next) {
            const dstate *fs = find_state(d, f->valuestring);
            if (!fs) {
                rc = bad(err, "%s: source '%s' not in states list", lb,
                         clip(f->valuestring, c1, sizeof c1));
                goto fail;
            }
            uint32_t ti = (uint32_t)d->ntr++;
            d->tr[ti] = (def_transition){
                .from = fs->name, .event = event, .to = ts->name, .guard = g, .index = (uint32_t)i};
            d->tr_next[ti] = NIL;
            if ((rc = add_to_pair(d, ti, lb, err))) goto fail;
        }
    }
    compute_checksum(d);
    *out = d;
    return STM_OK;
fail:
    def_free(d);
    return rc;
}

void def_free(def *d)
{
    if (!d) return;
    for (size_t i = 0; i < d->nguards; i++)
        guard_free(d->guards[i]);
    free(d->guards);
    free(d->states);
    free(d->dst);
    free(d->st_tab);
    free(d->tr);
    free(d->tr_next);
    free(d->pairs);
    free(d->pr_tab);
    cJSON_Delete(d->norm);
    free(d);
}

/* ---- accessors ---- */

const char *def_checksum(const def *d)
{
    return d->checksum;
}

const char *def_initial(const def *d)
{
    return d->initial;
}

size_t def_state_count(const def *d)
{
    return d->nstates;
}

const char *def_state(const def *d, size_t i)
{
    return i < d->nstates ? d->states[i] : NULL;
}

bool def_has_state(const def *d, const char *state)
{
    return state && find_state(d, state) != NULL;
}

size_t def_transition_count(const def *d)
{
    return d->ntr;
}

const def_transition *def_transition_at(const def *d, size_t i)
{
    return i < d->ntr ? &d->tr[i] : NULL;
}

cJSON *def_normalised(const def *d)
{
    return cJSON_Duplicate(d->norm, true);
}

/* The first transition of (state, event) whose guard passes, reading the
 * context from the tree ctx or, when ctx_text is set, from its stored text
 * (then a guard that needs the tree stops the search with *need_tree). */
static const def_transition *find(const def *d, const char *state, const char *event,
                                  const cJSON *ctx, const char *ctx_text, size_t ctx_len,
                                  const cJSON *payload, stm_code *why,
                                  const def_transition **failed, bool *need_tree)
{
    const dpair *p = state && event ? find_pair(d, state, event) : NULL;
    if (failed) *failed = NULL;
    if (!p) {
        if (why) *why = STM_INVALID_TRANSITION;
        return NULL;
    }
    const def_transition *last = NULL;
    for (uint32_t k = p->head; k != NIL; k = d->tr_next[k]) {
        const def_transition *t = &d->tr[k];
        int r = !t->guard  ? 1
                : ctx_text ? guard_eval_text(t->guard, ctx_text, ctx_len, payload)
                           : guard_eval(t->guard, ctx, payload);
        if (r < 0) {
            *need_tree = true;
            return NULL;
        }
        if (r) return t;
        last = t;
    }
    if (why) *why = STM_GUARD_FAILED;
    if (failed) *failed = last;
    return NULL;
}

const def_transition *def_find_text(const def *d, const char *state, const char *event,
                                    const char *ctx_text, size_t ctx_len, const cJSON *payload,
                                    stm_code *why, const def_transition **failed, bool *need_tree)
{
    *need_tree = false;
    return find(d, state, event, NULL, ctx_text ? ctx_text : "null", ctx_text ? ctx_len : 4,
                payload, why, failed, need_tree);
}

const def_transition *def_find(const def *d, const char *state, const char *event, const cJSON *ctx,
                               const cJSON *payload, stm_code *why, const def_transition **failed)
{
    bool unused = false;
    return find(d, state, event, ctx, NULL, 0, payload, why, failed, &unused);
}

size_t def_events_from(const def *d, const char *state, const char **out, size_t max)
{
    const dstate *s = state ? find_state(d, state) : NULL;
    if (!s) return 0;
    size_t n = 0;
    for (uint32_t pi = s->first_pair; pi != NIL; pi = d->pairs[pi].next_of_state) {
        if (n < max) out[n] = d->pairs[pi].event;
        n++;
    }
    return n;
}

/* ---- canonical JSON text ---- */

static void indent(buf *out, int n)
{
    buf_putc(out, '\n');
    for (int i = 0; i < n; i++)
        buf_putc(out, ' ');
}

/* 2-space indented, keys sorted at every level; scalars exactly as the
 * compact canonical writer prints them. */
static void write_pretty(buf *out, const cJSON *v, int level)
{
    if (cJSON_IsArray(v) && v->child) {
        buf_putc(out, '[');
        for (const cJSON *c = v->child; c; c = c->next) {
            indent(out, (level + 1) * 2);
            write_pretty(out, c, level + 1);
            if (c->next) buf_putc(out, ',');
        }
        indent(out, level * 2);
        buf_putc(out, ']');
        return;
    }
    if (cJSON_IsObject(v) && v->child) {
        size_t n = count(v), i = 0;
        const cJSON **kids = xmalloc(n * sizeof *kids);
        for (const cJSON *c = v->child; c; c = c->next)
            kids[i++] = c;
        qsort(kids, n, sizeof *kids, cmp_key);
        buf_putc(out, '{');
        for (i = 0; i < n; i++) {
            indent(out, (level + 1) * 2);
            json_write_str(out, kids[i]->string);
            buf_puts(out, ": ");
            write_pretty(out, kids[i], level + 1);
            if (i + 1 < n) buf_putc(out, ',');
        }
        free(kids);
        indent(out, level * 2);
        buf_putc(out, '}');
        return;
    }
    json_write(out, v, true);
}

void def_write_json(const def *d, buf *out, bool pretty)
{
    if (!pretty) {
        json_write(out, d->norm, true);
        return;
    }
    write_pretty(out, d->norm, 0);
    buf_putc(out, '\n');
}
