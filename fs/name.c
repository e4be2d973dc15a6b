/*
 * name.c - ids as path components, and the lines users write.
 *
 * Ids and machine names created over RCP may hold any bytes, but a path
 * component cannot contain '/' and cannot be "." or "..". The escaping is
 * the smallest that keeps every name reachable and keeps ordinary names as
 * they are: '%' and '/' become %25 and %2F, "." and ".." become %2E and
 * %2E%2E, and the empty id becomes %00. Decoding accepts only what encoding
 * produces, so each name in the mount stands for exactly one id.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "fs/internal.h"

bool fs_name_needs_escape(const char *raw)
{
    if (!raw[0] || strcmp(raw, ".") == 0 || strcmp(raw, "..") == 0) return true;
    return strpbrk(raw, "%/") != NULL;
}

void fs_name_encode(const char *raw, buf *out)
{
    if (!raw[0]) {
        buf_puts(out, "%00");
        return;
    }
    if (strcmp(raw, ".") == 0) {
        buf_puts(out, "%2E");
        return;
    }
    if (strcmp(raw, "..") == 0) {
        buf_puts(out, "%2E%2E");
        return;
    }
    for (const char *p = raw; *p; p++) {
        if (*p == '%')
            buf_puts(out, "%25");
        else if (*p == '/')
            buf_puts(out, "%2F");
        else
            buf_putc(out, *p);
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

bool fs_name_decode_why(const char *name, buf *out, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    if (strcmp(name, "%00") == 0) return true; /* the empty id */
    if (strcmp(name, "%2E") == 0) {
        buf_putc(out, '.');
        return true;
    }
    if (strcmp(name, "%2E%2E") == 0) {
        buf_puts(out, "..");
        return true;
    }
    size_t start = out->len;
    for (const char *p = name; *p; p++) {
        if (*p != '%') {
            buf_putc(out, *p);
            continue;
        }
        int h = hexval(p[1]), l = h < 0 ? -1 : hexval(p[2]);
        if (h < 0 || l < 0) {
            *why = "a '%' that is not followed by two hex digits";
            return false;
        }
        char c = (char)(h * 16 + l);
        /* only the two escapes encoding makes, upper-case, are names */
        if ((c != '%' && c != '/') || p[1] != '2' || (p[2] != '5' && p[2] != 'F')) {
            *why = "an escape other than %25 (for %) and %2F (for /)";
            return false;
        }
        buf_putc(out, c);
        p += 2;
    }
    /* "." or ".." can only be spelled with escapes, and "" only as %00 */
    const char *d = out->data ? out->data + start : "";
    size_t n = out->len - start;
    if (n == 0) {
        *why = "an empty name (the empty id is written %00)";
        return false;
    }
    if ((n == 1 && d[0] == '.') || (n == 2 && d[0] == '.' && d[1] == '.')) {
        *why = "a name that decodes to . or .. (written %2E and %2E%2E)";
        return false;
    }
    return true;
}

bool fs_name_decode(const char *name, buf *out)
{
    return fs_name_decode_why(name, out, NULL);
}

bool fs_version_name(const char *name, uint32_t *v)
{
    const char *dot = strrchr(name, '.');
    if (!dot || strcmp(dot, ".json") != 0 || dot == name) return false;
    uint64_t x = 0;
    for (const char *p = name; p < dot; p++) {
        if (!isdigit((unsigned char)*p)) return false;
        x = x * 10 + (uint64_t)(*p - '0');
        if (x > UINT32_MAX) return false;
    }
    /* "07.json" would alias "7.json": only the canonical spelling */
    if (name[0] == '0' && dot - name > 1) return false;
    *v = (uint32_t)x;
    return true;
}

/* Trims spaces, tabs and a trailing CR (files edited on other systems). */
static void trim(const char **s, size_t *n)
{
    while (*n && (**s == ' ' || **s == '\t')) (*s)++, (*n)--;
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t' || (*s)[*n - 1] == '\r')) (*n)--;
}

/* Splits "WORD [REST]" at the first blank. */
static void split_word(const char *s, size_t n, size_t *wlen, const char **rest, size_t *rlen)
{
    size_t i = 0;
    while (i < n && s[i] != ' ' && s[i] != '\t') i++;
    *wlen = i;
    *rest = s + i;
    *rlen = n - i;
    trim(rest, rlen);
}

/* A line is text: no NUL byte, valid UTF-8 (ids and events are JSON strings). */
static bool text_ok(const char *line, size_t len, stm_err *err)
{
    if (memchr(line, 0, len))
        return stm_fail(err, STM_BAD_REQUEST, "the line holds a NUL byte"), false;
    if (!json_utf8_valid(line, len))
        return stm_fail(err, STM_BAD_REQUEST, "the line is not valid UTF-8"), false;
    return true;
}

/* A params object may name its instance (machine), but only the one of its
 * path: a line naming another would otherwise be applied where the writer
 * did not write. Checks every occurrence of key (JSON may repeat a key),
 * then removes them; the caller adds the path's own. what is how the
 * message calls the key; the path is dir/<want, encoded>/file. */
static bool own_name(cJSON *p, const char *key, const char *what, const char *want,
                     const char *dir, const char *file, stm_err *err)
{
    for (cJSON *c = p->child; c; c = c->next) {
        if (!c->string || strcmp(c->string, key) != 0) continue;
        if (cJSON_IsString(c) && strcmp(c->valuestring, want) == 0) continue;
        buf where = {0};
        buf_printf(&where, "%s/", dir);
        fs_name_encode(want, &where);
        buf_printf(&where, "/%s", file);
        if (!cJSON_IsString(c)) {
            stm_fail(err, STM_BAD_REQUEST, "the line's %s is not a string; this is %s", key,
                     buf_cstr(&where));
        } else {
            size_t n = strlen(c->valuestring);
            stm_fail(err, STM_BAD_REQUEST, "the line names %s '%.*s%s' but this is %s", what,
                     (int)(n > 128 ? 128 : n), c->valuestring, n > 128 ? "..." : "",
                     buf_cstr(&where));
        }
        buf_free(&where);
        return false;
    }
    while (cJSON_GetObjectItemCaseSensitive(p, key))
        cJSON_DeleteItemFromObjectCaseSensitive(p, key);
    return true;
}

cJSON *fs_event_line(const char *id, const char *line, size_t len, stm_err *err)
{
    err->code = STM_OK;
    trim(&line, &len);
    if (!len) return NULL;
    if (!text_ok(line, len, err)) return NULL;
    cJSON *p;
    if (line[0] == '{') {
        p = json_parse(line, len, err);
        if (!p) return NULL;
        if (!own_name(p, "instance_id", "instance", id, "instances", "events", err)) {
            cJSON_Delete(p);
            return NULL;
        }
    } else {
        size_t wl, rl;
        const char *rest;
        split_word(line, len, &wl, &rest, &rl);
        if (wl > ENG_MAX_ID_LEN) {
            stm_fail(err, STM_BAD_REQUEST, "event name longer than %d bytes", ENG_MAX_ID_LEN);
            return NULL;
        }
        p = cJSON_CreateObject();
        char *ev = xstrndup(line, wl);
        cJSON_AddStringToObject(p, "event", ev);
        free(ev);
        if (rl) {
            cJSON *payload = json_parse(rest, rl, err);
            if (!payload) {
                cJSON_Delete(p);
                stm_fail(err, STM_BAD_REQUEST, "payload after the event is not JSON: %s",
                         err->msg);
                return NULL;
            }
            cJSON_AddItemToObject(p, "payload", payload);
        }
    }
    cJSON_AddStringToObject(p, "instance_id", id);
    return p;
}

cJSON *fs_new_line(const char *machine, uint32_t version, const char *line, size_t len,
                   stm_err *err)
{
    err->code = STM_OK;
    trim(&line, &len);
    if (!len) return NULL;
    if (!text_ok(line, len, err)) return NULL;
    cJSON *p;
    if (line[0] == '{') {
        p = json_parse(line, len, err);
        if (!p) return NULL;
        if (!own_name(p, "machine", "machine", machine, "machines", "new", err)) {
            cJSON_Delete(p);
            return NULL;
        }
        if (!json_get(p, "version")) cJSON_AddNumberToObject(p, "version", version);
    } else {
        size_t wl, rl;
        const char *rest;
        split_word(line, len, &wl, &rest, &rl);
        if (wl > ENG_MAX_ID_LEN) {
            stm_fail(err, STM_BAD_REQUEST, "instance id longer than %d bytes", ENG_MAX_ID_LEN);
            return NULL;
        }
        p = cJSON_CreateObject();
        char *id = xstrndup(line, wl);
        cJSON_AddStringToObject(p, "instance_id", id);
        free(id);
        cJSON_AddNumberToObject(p, "version", version);
        if (rl) {
            cJSON *ctx = json_parse(rest, rl, err);
            if (!ctx) {
                cJSON_Delete(p);
                stm_fail(err, STM_BAD_REQUEST, "context after the id is not JSON: %s", err->msg);
                return NULL;
            }
            cJSON_AddItemToObject(p, "initial_ctx", ctx);
        }
    }
    cJSON_AddStringToObject(p, "machine", machine);
    return p;
}
