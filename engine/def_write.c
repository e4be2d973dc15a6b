/*
 * def_write.c - a definition as YAML (definition.yaml) and as a Graphviz
 * digraph (graph.dot). Both are built from the public def API only.
 *
 * YAML: block style in the order a person writes it (states, initial,
 * transitions with from/event/to/guard, meta). Strings are plain only when
 * no YAML reader (1.1 or 1.2) could take them for anything else, in block
 * or flow context (no spaces, no ,[]{}:#); otherwise
 * double-quoted with escapes for every character a YAML reader would fold,
 * drop or refuse. meta is written in flow style, which is JSON with spaces.
 *
 * DOT: nodes are named s0, s1... by first appearance, so state names only
 * ever occur inside quoted labels, where escaping '"' and '\' is enough.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/json.h"
#include "engine/def.h"

/* ---- YAML ---- */

static bool plain_ok(const char *s)
{
    static const char *const words[] = {"null", "true", "false", "yes", "no",
                                        "on",   "off",  "y",     "n"};
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_')) return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcasecmp(s, words[i]) == 0) return false;
    return true;
}

static unsigned utf8_decode(const unsigned char *s, size_t *len)
{
    unsigned c = s[0];
    if (c < 0x80) return *len = 1, c;
    if (c < 0xE0) return *len = 2, ((c & 0x1F) << 6) | (s[1] & 0x3F);
    if (c < 0xF0) return *len = 3, ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return *len = 4,
           ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

/* Double-quoted YAML: JSON's escapes, plus \u escapes for DEL, the C1
 * controls, the BOM and U+FFFE/U+FFFF (not printable for YAML), and NEL,
 * LS, PS (line breaks YAML would fold). Input is valid UTF-8. */
static void yaml_quoted(buf *out, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str), i = 0, run = 0;
    buf_putc(out, '"');
    while (i < n) {
        size_t l;
        unsigned cp = utf8_decode(s + i, &l);
        bool esc = cp < 0x20 || cp == '"' || cp == '\\' || (cp >= 0x7F && cp <= 0x9F) ||
                   cp == 0x2028 || cp == 0x2029 || cp == 0xFEFF || cp == 0xFFFE || cp == 0xFFFF;
        if (!esc) {
            i += l;
            continue;
        }
        buf_add(out, s + run, i - run);
        switch (cp) {
        case '"':
            buf_puts(out, "\\\"");
            break;
        case '\\':
            buf_puts(out, "\\\\");
            break;
        case '\n':
            buf_puts(out, "\\n");
            break;
        case '\t':
            buf_puts(out, "\\t");
            break;
        case '\r':
            buf_puts(out, "\\r");
            break;
        default:
            buf_printf(out, "\\u%04x", cp);
            break;
        }
        i += l;
        run = i;
    }
    buf_add(out, s + run, n - run);
    buf_putc(out, '"');
}

static void yaml_str(buf *out, const char *s)
{
    if (plain_ok(s))
        buf_puts(out, s);
    else
        yaml_quoted(out, s);
}

static void yaml_flow(buf *out, const cJSON *v)
{
    if (cJSON_IsString(v)) {
        yaml_quoted(out, v->valuestring ? v->valuestring : "");
    } else if (cJSON_IsArray(v)) {
        buf_putc(out, '[');
        for (const cJSON *c = v->child; c; c = c->next) {
            yaml_flow(out, c);
            if (c->next) buf_puts(out, ", ");
        }
        buf_putc(out, ']');
    } else if (cJSON_IsObject(v)) {
        buf_putc(out, '{');
        for (const cJSON *c = v->child; c; c = c->next) {
            /* A YAML reader takes an implicit key of at most 1024
             * characters; a longer one needs the explicit "? " form. */
            size_t at = out->len;
            yaml_quoted(out, c->string);
            if (out->len - at > 1000) {
                buf_reserve(out, 2);
                memmove(out->data + at + 2, out->data + at, out->len - at + 1);
                memcpy(out->data + at, "? ", 2);
                out->len += 2;
            }
            buf_puts(out, ": ");
            yaml_flow(out, c);
            if (c->next) buf_puts(out, ", ");
        }
        buf_putc(out, '}');
    } else {
        /* null, booleans and numbers print the same in JSON and YAML. */
        json_write(out, v, true);
    }
}

void def_write_yaml(const def *d, buf *out)
{
    cJSON *n = def_normalised(d);
    const cJSON *states = json_get(n, "states");
    buf_puts(out, "states:");
    if (!states->child) buf_puts(out, " []");
    for (const cJSON *s = states->child; s; s = s->next) {
        buf_puts(out, "\n  - ");
        yaml_str(out, s->valuestring);
    }
    buf_puts(out, "\ninitial: ");
    yaml_str(out, def_initial(d));
    const cJSON *trs = json_get(n, "transitions");
    buf_puts(out, "\ntransitions:");
    if (!trs->child) buf_puts(out, " []");
    for (const cJSON *t = trs->child; t; t = t->next) {
        buf_puts(out, "\n  - from: [");
        for (const cJSON *f = json_get(t, "from")->child; f; f = f->next) {
            yaml_str(out, f->valuestring);
            if (f->next) buf_puts(out, ", ");
        }
        buf_puts(out, "]\n    event: ");
        yaml_str(out, json_get(t, "event")->valuestring);
        buf_puts(out, "\n    to: ");
        yaml_str(out, json_get(t, "to")->valuestring);
        const cJSON *g = json_get(t, "guard");
        if (g) {
            buf_puts(out, "\n    guard: ");
            yaml_quoted(out, g->valuestring);
        }
    }
    const cJSON *meta = json_get(n, "meta");
    if (meta) {
        buf_puts(out, "\nmeta: ");
        yaml_flow(out, meta);
    }
    buf_putc(out, '\n');
    cJSON_Delete(n);
}

/* ---- DOT ---- */

/* Inside a DOT quoted string: '"' and '\' escaped (a lone '\' would start
 * a label escape such as \N), line breaks as \n, other controls dropped. */
static void dot_str(buf *out, const char *s)
{
    buf_putc(out, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf_putc(out, '\\');
            buf_putc(out, (char)c);
        } else if (c == '\n') {
            buf_puts(out, "\\n");
        } else if (c >= 0x20 && c != 0x7F) {
            buf_putc(out, (char)c);
        } else {
            buf_putc(out, ' ');
        }
    }
    buf_putc(out, '"');
}

typedef struct {
    const char *name;
    size_t node;
} named;

static int cmp_named(const void *a, const void *b)
{
    return strcmp(((const named *)a)->name, ((const named *)b)->name);
}

static size_t node_of(const named *idx, size_t n, const char *name)
{
    named key = {.name = name};
    const named *hit = bsearch(&key, idx, n, sizeof *idx, cmp_named);
    return hit ? hit->node : 0;
}

void def_write_dot(const def *d, const char *name, uint32_t version, buf *out)
{
    size_t ns = def_state_count(d), nd = 0;
    named *idx = xcalloc(ns ? ns : 1, sizeof *idx);
    /* Distinct states numbered by first appearance; sorted copy for lookup. */
    const char **order = xcalloc(ns ? ns : 1, sizeof *order);
    for (size_t i = 0; i < ns; i++) {
        idx[i].name = def_state(d, i);
        idx[i].node = i;
    }
    qsort(idx, ns, sizeof *idx, cmp_named);
    size_t w = 0;
    for (size_t i = 0; i < ns; i++) {
        /* Among equal names keep the one seen first (smallest index). */
        if (w && strcmp(idx[w - 1].name, idx[i].name) == 0) {
            if (idx[i].node < idx[w - 1].node) idx[w - 1].node = idx[i].node;
            continue;
        }
        idx[w++] = idx[i];
    }
    for (size_t i = 0; i < ns; i++) {
        size_t k = node_of(idx, w, def_state(d, i));
        if (k == i) order[nd++] = def_state(d, i);
    }
    /* Renumber densely in order of first appearance. */
    for (size_t i = 0; i < nd; i++) {
        named key = {.name = order[i]};
        named *hit = bsearch(&key, idx, w, sizeof *idx, cmp_named);
        hit->node = i;
    }

    buf b = {0};
    buf_printf(&b, "%s v%u", name ? name : "", version);
    buf_puts(out, "digraph ");
    dot_str(out, buf_cstr(&b));
    buf_free(&b);
    buf_puts(out, " {\n  rankdir=LR;\n  node [shape=ellipse];\n");
    buf_puts(out, "  start [shape=point, label=\"\"];\n");
    /* The usual notation: the arrow from the dot marks the initial state,
     * a double circle a final one (a state no transition leaves). */
    bool *leaves = xcalloc(nd ? nd : 1, sizeof *leaves);
    for (size_t i = 0; i < def_transition_count(d); i++)
        leaves[node_of(idx, w, def_transition_at(d, i)->from)] = true;
    for (size_t i = 0; i < nd; i++) {
        buf_printf(out, "  s%zu [label=", i);
        dot_str(out, order[i]);
        if (!leaves[i]) buf_puts(out, ", shape=doublecircle");
        buf_puts(out, "];\n");
    }
    free(leaves);
    buf_printf(out, "  start -> s%zu;\n", node_of(idx, w, def_initial(d)));
    buf lb = {0};
    for (size_t i = 0; i < def_transition_count(d); i++) {
        const def_transition *t = def_transition_at(d, i);
        buf_reset(&lb);
        buf_puts(&lb, t->event);
        if (t->guard) buf_printf(&lb, " [%s]", guard_source(t->guard));
        buf_printf(out, "  s%zu -> s%zu [label=", node_of(idx, w, t->from), node_of(idx, w, t->to));
        dot_str(out, buf_cstr(&lb));
        buf_puts(out, "];\n");
    }
    buf_free(&lb);
    buf_puts(out, "}\n");
    free(idx);
    free(order);
}
