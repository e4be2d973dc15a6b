/*
 * def_yaml.c - YAML text to the equivalent JSON value, for definitions
 * written as YAML (definition.yaml, PUT of a YAML body).
 *
 * Built on libyaml's event API with an explicit stack, so nesting depth is
 * bounded by JSON_MAX_DEPTH like JSON input, not by the C stack. Plain
 * scalars are typed by the YAML 1.2 core schema (not 1.1: "yes", "on",
 * "0777" stay what they look like in 1.2); quoted and block scalars are
 * strings; "!!str" forces a string. What JSON cannot hold is refused:
 * aliases (a definition is a tree), non-scalar mapping keys, duplicate keys
 * (silently keeping one would lose part of a hand-written file), .inf/.nan,
 * more than one document.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "base/buf.h"
#include "base/json.h"
#include "engine/def.h"

typedef struct {
    cJSON *node;
    char *key; /* pending key when node is an object */
} frame;

static bool all(const char *s, size_t n, const char *set)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr(set, s[i])) return false;
    return true;
}

static bool is_null(const char *s, size_t n)
{
    return n == 0 || (n == 1 && s[0] == '~') ||
           (n == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)));
}

static int is_bool(const char *s, size_t n)
{
    if (n == 4 && (!memcmp(s, "true", 4) || !memcmp(s, "True", 4) || !memcmp(s, "TRUE", 4)))
        return 1;
    if (n == 5 && (!memcmp(s, "false", 5) || !memcmp(s, "False", 5) || !memcmp(s, "FALSE", 5)))
        return 0;
    return -1;
}

/* [-+]? ( \.[0-9]+ | [0-9]+ ( \.[0-9]* )? ) ( [eE] [-+]? [0-9]+ )? */
static bool is_float(const char *s, size_t n)
{
    size_t i = 0, d = 0;
    if (i < n && (s[i] == '-' || s[i] == '+')) i++;
    while (i < n && isdigit((unsigned char)s[i]))
        i++, d++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && isdigit((unsigned char)s[i]))
            i++, d++;
    }
    if (d == 0) return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+')) i++;
        size_t e = 0;
        while (i < n && isdigit((unsigned char)s[i]))
            i++, e++;
        if (e == 0) return false;
    }
    return i == n;
}

static bool is_special_float(const char *s, size_t n)
{
    if (n && (s[0] == '-' || s[0] == '+')) s++, n--;
    static const char *const w[] = {".inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN"};
    for (size_t i = 0; i < 6; i++)
        if (n == 4 && !memcmp(s, w[i], 4)) return true;
    return false;
}

/* Returns NULL (with err set) for a value JSON cannot hold. */
static cJSON *scalar(const yaml_event_t *ev, stm_err *err)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    if (memchr(s, 0, n)) {
        stm_fail(err, STM_BAD_REQUEST, "invalid YAML at line %zu column %zu: NUL in a scalar",
                 ev->start_mark.line + 1, ev->start_mark.column + 1);
        return NULL;
    }
    bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    if (!plain || (tag && !strcmp(tag, YAML_STR_TAG))) return cJSON_CreateString(s);
    if (is_null(s, n)) return cJSON_CreateNull();
    int b = is_bool(s, n);
    if (b >= 0) return cJSON_CreateBool(b);
    if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o') &&
        all(s + 2, n - 2, s[1] == 'x' ? "0123456789abcdefABCDEF" : "01234567")) {
        errno = 0;
        unsigned long long v = strtoull(s + 2, NULL, s[1] == 'x' ? 16 : 8);
        if (errno == 0) return cJSON_CreateNumber((double)v);
    }
    if (is_float(s, n)) {
        double d = strtod(s, NULL);
        if (isfinite(d)) return cJSON_CreateNumber(d);
    }
    if (is_special_float(s, n) || is_float(s, n)) {
        stm_fail(err, STM_BAD_REQUEST,
                 "invalid YAML at line %zu column %zu: '%s' cannot be represented in JSON",
                 ev->start_mark.line + 1, ev->start_mark.column + 1, n < 40 ? s : "number");
        return NULL;
    }
    return cJSON_CreateString(s);
}

static void yerr(stm_err *err, const yaml_event_t *ev, const char *what)
{
    stm_fail(err, STM_BAD_REQUEST, "invalid YAML at line %zu column %zu: %s",
             ev->start_mark.line + 1, ev->start_mark.column + 1, what);
}

/* Attaches value v to the container on top of the stack (or makes it the
 * root), consuming the pending key of a mapping. */
static void attach(frame *st, size_t depth, cJSON **root, cJSON *v)
{
    if (depth == 0) {
        *root = v;
        return;
    }
    frame *top = &st[depth - 1];
    if (cJSON_IsArray(top->node)) {
        cJSON_AddItemToArray(top->node, v);
        return;
    }
    cJSON_AddItemToObject(top->node, top->key, v);
    free(top->key);
    top->key = NULL;
}

static bool wants_key(const frame *st, size_t depth)
{
    return depth > 0 && cJSON_IsObject(st[depth - 1].node) && !st[depth - 1].key;
}

/* A scalar in key position: taken as written, never typed ("true:" is the
 * member "true"). */
static bool set_key(frame *top, const yaml_event_t *ev, stm_err *err)
{
    const char *k = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (memchr(k, 0, n)) {
        yerr(err, ev, "NUL in a key");
        return false;
    }
    if (json_get(top->node, k)) {
        char msg[160];
        snprintf(msg, sizeof msg, "duplicate key '%.*s'%s", n > 100 ? 100 : (int)n, k,
                 n > 100 ? "..." : "");
        yerr(err, ev, msg);
        return false;
    }
    top->key = xstrndup(k, n);
    return true;
}

cJSON *def_yaml_to_json(const char *text, size_t len, stm_err *err)
{
    yaml_parser_t ps;
    if (!yaml_parser_initialize(&ps)) {
        stm_fail(err, STM_INTERNAL_ERROR, "cannot initialise the YAML parser");
        return NULL;
    }
    if (!text) {
        /* libyaml asserts on a NULL input, even an empty one. */
        text = "";
        len = 0;
    }
    yaml_parser_set_input_string(&ps, (const unsigned char *)text, len);
    frame st[JSON_MAX_DEPTH + 1];
    size_t depth = 0;
    cJSON *root = NULL;
    int docs = 0;
    bool ok = true, done = false;
    while (ok && !done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&ps, &ev)) {
            size_t line = ps.problem_mark.line + 1, col = ps.problem_mark.column + 1;
            if (ps.error == YAML_READER_ERROR) {
                /* The reader reports a byte offset, not a mark. */
                line = col = 1;
                for (size_t i = 0; i < ps.problem_offset && i < len; i++) {
                    if (text[i] == '\n') {
                        line++;
                        col = 1;
                    } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
                        col++;
                    }
                }
            }
            stm_fail(err, STM_BAD_REQUEST, "invalid YAML at line %zu column %zu: %s", line, col,
                     ps.problem ? ps.problem : "syntax error");
            ok = false;
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                yerr(err, &ev, "more than one document");
                ok = false;
            }
            break;
        case YAML_ALIAS_EVENT:
            yerr(err, &ev, "aliases are not supported");
            ok = false;
            break;
        case YAML_SCALAR_EVENT: {
            if (wants_key(st, depth)) {
                ok = set_key(&st[depth - 1], &ev, err);
                break;
            }
            cJSON *v = scalar(&ev, err);
            if (v)
                attach(st, depth, &root, v);
            else
                ok = false;
            break;
        }
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            if (wants_key(st, depth)) {
                yerr(err, &ev, "mapping keys must be scalars");
                ok = false;
                break;
            }
            if (depth >= JSON_MAX_DEPTH) {
                char msg[64];
                snprintf(msg, sizeof msg, "nested deeper than %d levels", JSON_MAX_DEPTH);
                yerr(err, &ev, msg);
                ok = false;
                break;
            }
            cJSON *v =
                ev.type == YAML_SEQUENCE_START_EVENT ? cJSON_CreateArray() : cJSON_CreateObject();
            attach(st, depth, &root, v);
            st[depth].node = v;
            st[depth].key = NULL;
            depth++;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&ps);
    for (size_t i = 0; i < depth; i++)
        free(st[i].key);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root ? root : cJSON_CreateNull();
}
