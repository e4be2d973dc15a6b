/*
 * fuzz_line.c - what users write into the mount: lines and names.
 *
 * The input is one line as written to instances/<id>/events
 * (fs_event_line: "EVENT [PAYLOAD-JSON]" or an APPLY_EVENT params object)
 * and to machines/<m>/new (fs_new_line: "ID [CTX-JSON]" or a
 * CREATE_INSTANCE params object), and, up to its first NUL, a path
 * component for fs_name_decode and an id for fs_name_encode, and a file
 * name for fs_version_name. Checked beyond "no crash, no sanitizer report":
 *   - a params object that comes back carries the id (or machine) of the
 *     path exactly once;
 *   - a line naming another id (machine), or one that is not a string, is
 *     refused with BAD_REQUEST: never redirected to the path's;
 *   - a line is refused with BAD_REQUEST, or is blank (NULL, STM_OK);
 *   - decode(encode(id)) == id, and encode(decode(name)) == name for every
 *     name decode accepts (one name per id, one id per name);
 *   - fs_version_name accepts only the canonical "<u32>.json".
 *
 * Build: meson setup with CC=clang -Dfuzz=true (see tests/fuzz/meson.build).
 * Run:   build-fuzz/tests/fuzz/fuzz_line tests/fuzz/corpus/line -runs=0   (replay)
 *        build-fuzz/tests/fuzz/fuzz_line -max_len=4096 WORKDIR tests/fuzz/corpus/line
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/json.h"
#include "fs/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* p must hold key exactly once, as the string want. */
static void has_once(const cJSON *p, const char *key, const char *want)
{
    if (!cJSON_IsObject(p)) abort();
    int n = 0;
    for (const cJSON *c = p->child; c; c = c->next)
        if (c->string && strcmp(c->string, key) == 0) {
            n++;
            if (!cJSON_IsString(c) || strcmp(c->valuestring, want) != 0) abort();
        }
    if (n != 1) abort();
}

static void check_refusal(const stm_err *err)
{
    if (err->code != STM_OK && err->code != STM_BAD_REQUEST) abort();
}

/* Does the line, read as JSON as the parser reads it (blanks and a CR
 * around it trimmed, the last of repeated keys wins), name key as anything
 * but want? Such a line must be refused. */
static bool names_other(const char *p, size_t n, const char *key, const char *want)
{
    while (n && (*p == ' ' || *p == '\t')) p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r')) n--;
    if (!n || *p != '{') return false;
    stm_err err;
    cJSON *j = json_parse(p, n, &err);
    if (!j) return false;
    bool other = false;
    for (const cJSON *c = j->child; c; c = c->next)
        if (c->string && strcmp(c->string, key) == 0 &&
            (!cJSON_IsString(c) || strcmp(c->valuestring, want) != 0))
            other = true;
    cJSON_Delete(j);
    return other;
}

static void lines(const char *p, size_t n)
{
    stm_err err;
    bool other_id = names_other(p, n, "instance_id", "order-1");
    bool other_machine = names_other(p, n, "machine", "orders");
    cJSON *ev = fs_event_line("order-1", p, n, &err);
    if (ev && other_id) abort();
    if (ev) {
        has_once(ev, "instance_id", "order-1");
        buf b = {0};
        json_write(&b, ev, true);
        buf_free(&b);
        cJSON_Delete(ev);
    } else {
        check_refusal(&err);
    }
    cJSON *nw = fs_new_line("orders", 3, p, n, &err);
    if (nw && other_machine) abort();
    if (nw) {
        has_once(nw, "machine", "orders");
        if (!json_get(nw, "version")) abort();
        cJSON_Delete(nw);
    } else {
        check_refusal(&err);
    }
}

static void names(const char *s)
{
    buf enc = {0}, dec = {0};
    fs_name_encode(s, &enc);
    if (strchr(buf_cstr(&enc), '/')) abort();
    if (!fs_name_decode(buf_cstr(&enc), &dec) || strcmp(buf_cstr(&dec), s) != 0) abort();
    if (fs_name_needs_escape(s) != (strcmp(buf_cstr(&enc), s) != 0)) abort();

    /* A component from the kernel never holds '/'. */
    buf_reset(&enc);
    buf_reset(&dec);
    if (!strchr(s, '/') && fs_name_decode(s, &dec)) {
        fs_name_encode(buf_cstr(&dec), &enc);
        if (strcmp(buf_cstr(&enc), s) != 0) abort();
    }
    buf_free(&enc);
    buf_free(&dec);

    uint32_t v;
    if (fs_version_name(s, &v)) {
        char want[32];
        snprintf(want, sizeof want, "%u.json", v);
        if (strcmp(want, s) != 0) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lines((const char *)data, size);
    char *s = strndup((const char *)data, size);
    names(s);
    free(s);
    return 0;
}
