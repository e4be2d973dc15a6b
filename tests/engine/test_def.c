/*
 * test_def.c - machine definitions: validation order and messages, the
 * normalised form and its checksum (reference engine-semantics.md §2, the
 * worked examples and the real machines of testdata/rstmdb-data), branching
 * on guards, lookups, YAML in and out, DOT out.
 *
 * Test definitions are written with ' for " (see J) to stay readable.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/json.h"
#include "engine/def.h"

/* JSON text with ' standing for ". */
static cJSON *J(const char *text)
{
    char *t = strdup(text);
    for (char *p = t; *p; p++)
        if (*p == '\'') *p = '"';
    stm_err err = {0};
    cJSON *v = json_parse(t, strlen(t), &err);
    ck_assert_msg(v != NULL, "bad test JSON %s: %s", t, err.msg);
    free(t);
    return v;
}

static def *parse_ok(const char *text)
{
    cJSON *j = J(text);
    stm_err err = {0};
    def *d = NULL;
    stm_code rc = def_parse(j, &d, &err);
    ck_assert_msg(rc == STM_OK, "definition refused: %s", err.msg);
    cJSON_Delete(j);
    return d;
}

static void parse_bad(const char *text, const char *msg)
{
    cJSON *j = J(text);
    stm_err err = {0};
    def *d = (def *)1;
    stm_code rc = def_parse(j, &d, &err);
    ck_assert_msg(rc == STM_BAD_REQUEST, "accepted: %s", text);
    ck_assert_ptr_null(d);
    ck_assert_str_eq(err.msg, msg);
    cJSON_Delete(j);
}

static char *compact(const def *d)
{
    buf b = {0};
    def_write_json(d, &b, false);
    return buf_detach(&b, NULL);
}

static const char *sum_of(const char *text, char out[9])
{
    def *d = parse_ok(text);
    memcpy(out, def_checksum(d), 9);
    def_free(d);
    return out;
}

#define D "invalid machine definition: "

/* ---- checksum and normalised form ---- */

START_TEST(worked_examples)
{
    def *d = parse_ok("{'states':['created','paid'],'initial':'created','transitions':"
                      "[{'from':'created','event':'PAY','to':'paid'}]}");
    ck_assert_str_eq(def_checksum(d), "26adbd14");
    def_free(d);
    d = parse_ok("{'states':['created','paid','shipped'],'initial':'created','transitions':["
                 "{'from':['created'],'event':'PAY','to':'paid'},"
                 "{'from':'paid','event':'SHIP','to':'shipped','guard':'ctx.amount > 0'}]}");
    ck_assert_str_eq(def_checksum(d), "404b5006");
    char *s = compact(d);
    ck_assert_str_eq(s, "{\"initial\":\"created\",\"states\":[\"created\",\"paid\",\"shipped\"],"
                        "\"transitions\":[{\"event\":\"PAY\",\"from\":[\"created\"],\"to\":"
                        "\"paid\"},{\"event\":\"SHIP\",\"from\":[\"paid\"],\"guard\":\"ctx."
                        "amount > 0\",\"to\":\"shipped\"}]}");
    free(s);
    /* The bytes hashed are exactly the documented ones. */
    const char *bytes = "{\"states\":[\"created\",\"paid\",\"shipped\"],\"initial\":\"created\","
                        "\"transitions\":[{\"from\":[\"created\"],\"event\":\"PAY\",\"to\":"
                        "\"paid\"},{\"from\":[\"paid\"],\"event\":\"SHIP\",\"to\":\"shipped\","
                        "\"guard\":\"ctx.amount > 0\"}]}";
    char want[9];
    snprintf(want, sizeof want, "%08x", crc32c(0, bytes, strlen(bytes)));
    ck_assert_str_eq(want, "404b5006");
    def_free(d);
}
END_TEST

static cJSON *load_expected(void)
{
    const char *dir = getenv("STMFS_TESTDATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/rstmdb-data/expected.json", dir ? dir : "../shared/testdata");
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    buf b = {0};
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        buf_add(&b, tmp, n);
    fclose(f);
    stm_err err = {0};
    cJSON *v = json_parse(b.data, b.len, &err);
    ck_assert_msg(v != NULL, "%s: %s", path, err.msg);
    buf_free(&b);
    return v;
}

START_TEST(real_machines)
{
    cJSON *exp = load_expected();
    if (!exp) {
        fprintf(stderr, "test_def: expected.json not found (set STMFS_TESTDATA); skipped\n");
        return;
    }
    int seen = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, json_get(exp, "machines"))
    {
        const cJSON *gm = json_get(m, "get_machine");
        def *d = NULL;
        stm_err err = {0};
        ck_assert_int_eq(def_parse(json_get(m, "submitted_definition"), &d, &err), STM_OK);
        ck_assert_str_eq(def_checksum(d), json_get(gm, "checksum")->valuestring);
        char *want = json_canonical(json_get(gm, "definition"), NULL);
        char *got = compact(d);
        ck_assert_str_eq(got, want);
        cJSON *norm = def_normalised(d);
        char *again = json_canonical(norm, NULL);
        ck_assert_str_eq(again, want);
        /* Re-parsing the normalised form gives the same checksum. */
        def *d2 = NULL;
        ck_assert_int_eq(def_parse(norm, &d2, &err), STM_OK);
        ck_assert_str_eq(def_checksum(d2), def_checksum(d));
        def_free(d2);
        cJSON_Delete(norm);
        free(want);
        free(got);
        free(again);
        def_free(d);
        seen++;
    }
    ck_assert_int_eq(seen, 3);
    cJSON_Delete(exp);
}
END_TEST

START_TEST(checksum_invariants)
{
    char a[9], b[9];
    const char *base = "{'states':['a','b'],'initial':'a','transitions':[{'from':'a','event':'E',"
                       "'to':'b'}]}";
    sum_of(base, a);
    /* Whitespace, key order, from as string or array, unknown keys, meta
     * null, guard null: all the same definition. */
    ck_assert_str_eq(sum_of(" { 'transitions' : [ { 'to':'b','event':'E','from':['a'] } ] ,"
                            "'initial':'a', 'states':['a','b'] } ",
                            b),
                     a);
    ck_assert_str_eq(sum_of("{'states':['a','b'],'initial':'a','transitions':[{'from':'a',"
                            "'event':'E','to':'b','x':1,'guard':null}],'meta':null,'zzz':[1]}",
                            b),
                     a);
    /* Reordering states or transitions changes it. */
    ck_assert_str_ne(sum_of("{'states':['b','a'],'initial':'a','transitions':[{'from':'a',"
                            "'event':'E','to':'b'}]}",
                            b),
                     a);
    /* meta keys sorted at every level, arrays kept in order. */
    const char *m1 = "{'states':['a'],'initial':'a','transitions':[],'meta':{'z':{'y':1,'b':[{"
                     "'q':1,'p':2}]},'a':'x','n':1.5}}";
    const char *m2 = "{'states':['a'],'initial':'a','transitions':[],'meta':{'n':1.5,'a':'x',"
                     "'z':{'b':[{'p':2,'q':1}],'y':1}}}";
    ck_assert_str_eq(sum_of(m1, a), sum_of(m2, b));
    const char *bytes = "{\"states\":[\"a\"],\"initial\":\"a\",\"transitions\":[],\"meta\":{"
                        "\"a\":\"x\",\"n\":1.5,\"z\":{\"b\":[{\"p\":2,\"q\":1}],\"y\":1}}}";
    char want[9];
    snprintf(want, sizeof want, "%08x", crc32c(0, bytes, strlen(bytes)));
    ck_assert_str_eq(a, want);
    /* meta may be any JSON. */
    def *d = parse_ok("{'states':['a'],'initial':'a','transitions':[],'meta':[3,'x',false]}");
    char *s = compact(d);
    ck_assert_str_eq(s, "{\"initial\":\"a\",\"meta\":[3,\"x\",false],\"states\":[\"a\"],"
                        "\"transitions\":[]}");
    free(s);
    def_free(d);
    /* Duplicated states are kept. */
    d = parse_ok("{'states':['a','b','a'],'initial':'a','transitions':[]}");
    ck_assert_uint_eq(def_state_count(d), 3);
    ck_assert_str_eq(def_state(d, 2), "a");
    ck_assert_ptr_null(def_state(d, 3));
    s = compact(d);
    ck_assert_str_eq(s, "{\"initial\":\"a\",\"states\":[\"a\",\"b\",\"a\"],\"transitions\":[]}");
    free(s);
    def_free(d);
    /* Raw UTF-8 and escapes in names. */
    d = parse_ok("{'states':['caf\\u00e9','a\\'b','\\n'],'initial':'café','transitions':[]}");
    s = compact(d);
    ck_assert_str_eq(s, "{\"initial\":\"café\",\"states\":[\"café\",\"a\\\"b\",\"\\n\"],"
                        "\"transitions\":[]}");
    free(s);
    def_free(d);
}
END_TEST

START_TEST(pretty_json)
{
    def *d = parse_ok("{'states':['created','paid'],'initial':'created','transitions':[{'from':"
                      "'created','event':'PAY','to':'paid','guard':'ctx.a'}],'meta':{'k':[],'e':"
                      "{},'o':{'b':1,'a':null}}}");
    buf b = {0};
    def_write_json(d, &b, true);
    ck_assert_str_eq(buf_cstr(&b), "{\n"
                                   "  \"initial\": \"created\",\n"
                                   "  \"meta\": {\n"
                                   "    \"e\": {},\n"
                                   "    \"k\": [],\n"
                                   "    \"o\": {\n"
                                   "      \"a\": null,\n"
                                   "      \"b\": 1\n"
                                   "    }\n"
                                   "  },\n"
                                   "  \"states\": [\n"
                                   "    \"created\",\n"
                                   "    \"paid\"\n"
                                   "  ],\n"
                                   "  \"transitions\": [\n"
                                   "    {\n"
                                   "      \"event\": \"PAY\",\n"
                                   "      \"from\": [\n"
                                   "        \"created\"\n"
                                   "      ],\n"
                                   "      \"guard\": \"ctx.a\",\n"
                                   "      \"to\": \"paid\"\n"
                                   "    }\n"
                                   "  ]\n"
                                   "}\n");
    /* Pretty text parses back to the same definition. */
    stm_err err = {0};
    cJSON *j = json_parse(b.data, b.len, &err);
    def *d2 = NULL;
    ck_assert_int_eq(def_parse(j, &d2, &err), STM_OK);
    ck_assert_str_eq(def_checksum(d2), def_checksum(d));
    def_free(d2);
    cJSON_Delete(j);
    buf_free(&b);
    def_free(d);
}
END_TEST

/* ---- validation ---- */

START_TEST(shape_errors)
{
    cJSON *n = cJSON_CreateNull();
    def *d = NULL;
    stm_err err = {0};
    ck_assert_int_eq(def_parse(n, &d, &err), STM_BAD_REQUEST);
    ck_assert_str_eq(err.msg, D "definition must be a JSON object");
    ck_assert_int_eq(def_parse(NULL, &d, &err), STM_BAD_REQUEST);
    cJSON_Delete(n);
    parse_bad("[]", D "definition must be a JSON object");
    parse_bad("{}", D "missing field 'states'");
    /* a fixed structure: a field twice is refused, not "last one wins" */
    parse_bad("{'states':['a'],'initial':'a','states':['a','b'],'transitions':[]}",
              D "duplicate field 'states'");
    parse_bad("{'states':['a','b'],'initial':'a','transitions':[{'from':'a','event':'E',"
              "'to':'a','to':'b'}]}",
              D "transition 1 (event 'E'): duplicate field 'to'");
    /* free-form JSON inside it keeps serde_json's rule */
    def *meta = parse_ok("{'states':['a'],'initial':'a','transitions':[],"
                         "'meta':{'k':1,'k':2}}");
    def_free(meta);
    parse_bad("{'states':'a','initial':'a','transitions':[]}",
              D "'states' must be an array of strings");
    parse_bad("{'states':['a',1],'initial':'a','transitions':[]}",
              D "'states' must be an array of strings");
    parse_bad("{'states':['a'],'transitions':[]}", D "missing field 'initial'");
    parse_bad("{'states':['a'],'initial':null,'transitions':[]}", D "'initial' must be a string");
    parse_bad("{'states':['a'],'initial':'a'}", D "missing field 'transitions'");
    parse_bad("{'states':['a'],'initial':'a','transitions':{}}",
              D "'transitions' must be an array");
    parse_bad("{'states':['a'],'initial':'a','transitions':[1]}",
              D "transition 1 must be an object");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'event':'E','to':'a'}]}",
              D "transition 1 (event 'E'): missing field 'from'");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':1,'event':'E','to':'a'}]}",
              D "transition 1 (event 'E'): 'from' must be a string or an array of strings");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':['a',null],'event':'E',"
              "'to':'a'}]}",
              D "transition 1 (event 'E'): 'from' must be a string or an array of strings");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':'a','to':'a'}]}",
              D "transition 1: missing field 'event'");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':'a','event':5,'to':'a'}]}",
              D "transition 1: 'event' must be a string");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':'a','event':'E'}]}",
              D "transition 1 (event 'E'): missing field 'to'");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':'a','event':'E','to':['a']}"
              "]}",
              D "transition 1 (event 'E'): 'to' must be a string");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':'a','event':'E','to':'a',"
              "'guard':true}]}",
              D "transition 1 (event 'E'): 'guard' must be a string or null");
    /* Keys are case-sensitive. */
    parse_bad("{'States':['a'],'initial':'a','transitions':[]}", D "missing field 'states'");
    /* Shape errors anywhere come before reference errors. */
    parse_bad("{'states':['a'],'initial':'zz','transitions':[{'from':'a','event':'E'}]}",
              D "transition 1 (event 'E'): missing field 'to'");
}
END_TEST

START_TEST(validation_order)
{
    parse_bad("{'states':[],'initial':'a','transitions':[]}",
              D "initial state 'a' not in states list");
    parse_bad("{'states':['a'],'initial':'b','transitions':[{'from':'x','event':'E','to':'y'}]}",
              D "initial state 'b' not in states list");
    /* Per transition: target, then guard, then each source, then duplicates. */
    parse_bad("{'states':['created','paid','shipped'],'initial':'created','transitions':["
              "{'from':'created','event':'PAY','to':'paid'},"
              "{'from':'nowhere','event':'SHIP','to':'shiped','guard':'bad'}]}",
              D "transition 2 (event 'SHIP'): target 'shiped' not in states list");
    parse_bad("{'states':['created','paid','shipped'],'initial':'created','transitions':["
              "{'from':'created','event':'PAY','to':'paid'},"
              "{'from':'nowhere','event':'SHIP','to':'shipped','guard':'ctx.amount >'}]}",
              "invalid guard expression: invalid number: '' at byte 12 in transition 2 (event "
              "'SHIP')");
    parse_bad("{'states':['a','b'],'initial':'a','transitions':["
              "{'from':['a','nowhere','zz'],'event':'E','to':'b','guard':'ctx.x'}]}",
              D "transition 1 (event 'E'): source 'nowhere' not in states list");
    /* Transitions in order: the first bad one is reported. */
    parse_bad("{'states':['a','b'],'initial':'a','transitions':["
              "{'from':'a','event':'E','to':'b'},{'from':'a','event':'E','to':'b'},"
              "{'from':'a','event':'F','to':'c'}]}",
              D "transition 2 (event 'E'): duplicate transition from 'a' on event 'E' "
                "(transition 1 has no guard, so this one could never fire)");
    /* from: [] adds nothing, but its target and guard are still checked. */
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':[],'event':'E','to':'b'}]}",
              D "transition 1 (event 'E'): target 'b' not in states list");
    parse_bad("{'states':['a'],'initial':'a','transitions':[{'from':[],'event':'E','to':'a',"
              "'guard':''}]}",
              "invalid guard expression: empty guard expression at byte 0 in transition 1 "
              "(event 'E')");
    /* Long names are cut in messages. */
    char big[400];
    memset(big, 'x', 300);
    big[300] = '\0';
    char text[600];
    snprintf(text, sizeof text, "{'states':['a'],'initial':'%s','transitions':[]}", big);
    char want[200];
    snprintf(want, sizeof want, D "initial state '%.68s...' not in states list", big);
    parse_bad(text, want);
}
END_TEST

START_TEST(duplicates_and_branching)
{
    /* Guarded transitions of one (from, event) may precede an unguarded one. */
    def *d = parse_ok("{'states':['new','big','small','manual'],'initial':'new','transitions':["
                      "{'from':'new','event':'GO','to':'big','guard':'payload.amount > 100'},"
                      "{'from':'new','event':'GO','to':'small','guard':'payload.amount > 0'},"
                      "{'from':'new','event':'GO','to':'manual'}]}");
    cJSON *p1 = J("{'amount':500}"), *p2 = J("{'amount':5}"), *p3 = J("{'amount':-1}");
    stm_code why = STM_OK;
    const def_transition *failed = (void *)1;
    const def_transition *t = def_find(d, "new", "GO", NULL, p1, &why, &failed);
    ck_assert_str_eq(t->to, "big");
    ck_assert_uint_eq(t->index, 0);
    ck_assert_ptr_null(failed);
    t = def_find(d, "new", "GO", NULL, p2, &why, &failed);
    ck_assert_str_eq(t->to, "small");
    t = def_find(d, "new", "GO", NULL, p3, &why, &failed);
    ck_assert_str_eq(t->to, "manual");
    ck_assert_uint_eq(t->index, 2);
    t = def_find(d, "new", "STOP", NULL, p1, &why, &failed);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(why, STM_INVALID_TRANSITION);
    t = def_find(d, "big", "GO", NULL, p1, &why, &failed);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(why, STM_INVALID_TRANSITION);
    t = def_find(d, "nope", "GO", NULL, p1, NULL, NULL);
    ck_assert_ptr_null(t);
    def_free(d);

    /* All guarded: none passing is GUARD_FAILED naming the last one tried. */
    d = parse_ok("{'states':['a','b','c'],'initial':'a','transitions':["
                 "{'from':'a','event':'E','to':'b','guard':'ctx.x == 1'},"
                 "{'from':'a','event':'E','to':'c','guard':'ctx.x == 2'}]}");
    cJSON *c2 = J("{'x':2}"), *c3 = J("{'x':3}");
    t = def_find(d, "a", "E", c2, NULL, &why, &failed);
    ck_assert_str_eq(t->to, "c");
    why = STM_OK;
    t = def_find(d, "a", "E", c3, NULL, &why, &failed);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(why, STM_GUARD_FAILED);
    ck_assert_str_eq(guard_source(failed->guard), "ctx.x == 2");
    def_free(d);

    /* Refused: anything after an unguarded one, the same guard twice. */
    parse_bad("{'states':['a','b'],'initial':'a','transitions':["
              "{'from':'a','event':'E','to':'b'},"
              "{'from':'a','event':'E','to':'a','guard':'ctx.x'}]}",
              D "transition 2 (event 'E'): duplicate transition from 'a' on event 'E' "
                "(transition 1 has no guard, so this one could never fire)");
    parse_bad("{'states':['a','b'],'initial':'a','transitions':["
              "{'from':'a','event':'E','to':'b','guard':'ctx.x'},"
              "{'from':'b','event':'E','to':'b'},"
              "{'from':['b','a'],'event':'E','to':'a','guard':'ctx.x'}]}",
              D "transition 3 (event 'E'): duplicate transition from 'b' on event 'E' "
                "(transition 2 has no guard, so this one could never fire)");
    parse_bad("{'states':['a','b'],'initial':'a','transitions':["
              "{'from':'a','event':'E','to':'b','guard':'ctx.x'},"
              "{'from':['a'],'event':'E','to':'a','guard':'ctx.x'}]}",
              D "transition 2 (event 'E'): duplicate transition from 'a' on event 'E' "
                "(same guard as transition 1, so this one could never fire)");
    parse_bad("{'states':['a','b'],'initial':'a','transitions':["
              "{'from':['a','a'],'event':'E','to':'b'}]}",
              D "transition 1 (event 'E'): duplicate transition from 'a' on event 'E' "
                "(transition 1 has no guard, so this one could never fire)");
    /* Same event from different states, different events from one: fine. */
    d = parse_ok("{'states':['a','b'],'initial':'a','transitions':["
                 "{'from':'a','event':'E','to':'b'},{'from':'b','event':'E','to':'a'},"
                 "{'from':'a','event':'F','to':'a'},{'from':'a','event':'','to':'a'}]}");
    t = def_find(d, "a", "", NULL, NULL, &why, NULL);
    ck_assert_str_eq(t->to, "a");
    ck_assert_uint_eq(t->index, 3);
    def_free(d);
    cJSON_Delete(p1);
    cJSON_Delete(p2);
    cJSON_Delete(p3);
    cJSON_Delete(c2);
    cJSON_Delete(c3);
}
END_TEST

START_TEST(fan_out_and_lookups)
{
    def *d = parse_ok("{'states':['created','paid','shipped','cancelled','refunded'],"
                      "'initial':'created','transitions':["
                      "{'from':'created','event':'PAY','to':'paid'},"
                      "{'from':['created','paid'],'event':'CANCEL','to':'cancelled'},"
                      "{'from':[],'event':'NEVER','to':'paid'},"
                      "{'from':'paid','event':'SHIP','to':'shipped','guard':'ctx.ok'},"
                      "{'from':['paid','shipped'],'event':'REFUND','to':'refunded'},"
                      "{'from':'created','event':'PAY2','to':'paid'}]}");
    ck_assert_uint_eq(def_transition_count(d), 7);
    const def_transition *t = def_transition_at(d, 2);
    ck_assert_str_eq(t->from, "paid");
    ck_assert_str_eq(t->event, "CANCEL");
    ck_assert_uint_eq(t->index, 1);
    ck_assert_ptr_null(def_transition_at(d, 7));
    /* States handed out are the def's own strings, one pointer per name. */
    ck_assert_ptr_eq(def_transition_at(d, 0)->from, def_initial(d));
    ck_assert_ptr_eq(def_transition_at(d, 1)->from, def_state(d, 0));
    ck_assert_ptr_eq(def_transition_at(d, 0)->to, def_state(d, 1));
    ck_assert(def_has_state(d, "refunded"));
    ck_assert(!def_has_state(d, "Refunded"));
    ck_assert(!def_has_state(d, NULL));
    ck_assert_str_eq(def_initial(d), "created");

    const char *ev[8];
    size_t n = def_events_from(d, "created", ev, 8);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(ev[0], "PAY");
    ck_assert_str_eq(ev[1], "CANCEL");
    ck_assert_str_eq(ev[2], "PAY2");
    n = def_events_from(d, "paid", ev, 1);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(ev[0], "CANCEL");
    ck_assert_uint_eq(def_events_from(d, "refunded", ev, 8), 0);
    ck_assert_uint_eq(def_events_from(d, "nope", ev, 8), 0);
    stm_code why;
    ck_assert_ptr_null(def_find(d, "created", "NEVER", NULL, NULL, &why, NULL));
    t = def_find(d, "shipped", "REFUND", NULL, NULL, &why, NULL);
    ck_assert_str_eq(t->to, "refunded");
    def_free(d);
}
END_TEST

START_TEST(many_states)
{
    /* Up to the limits works and lookups stay right; one more is refused. */
    buf b = {0};
    buf_puts(&b, "{\"states\":[");
    for (int i = 0; i < DEF_MAX_STATES; i++)
        buf_printf(&b, "%s\"s%d\"", i ? "," : "", i);
    buf_puts(&b, "],\"initial\":\"s0\",\"transitions\":[");
    for (int i = 0; i < DEF_MAX_STATES; i++)
        buf_printf(&b, "%s{\"from\":\"s%d\",\"event\":\"NEXT\",\"to\":\"s%d\"}", i ? "," : "", i,
                   (i + 1) % DEF_MAX_STATES);
    buf_puts(&b, "]}");
    stm_err err = {0};
    cJSON *j = json_parse(b.data, b.len, &err);
    def *d = NULL;
    ck_assert_int_eq(def_parse(j, &d, &err), STM_OK);
    stm_code why;
    const def_transition *t = def_find(d, "s9998", "NEXT", NULL, NULL, &why, NULL);
    ck_assert_str_eq(t->to, "s9999");
    def_free(d);
    cJSON_AddItemToArray(json_get(j, "states"), cJSON_CreateString("extra"));
    ck_assert_int_eq(def_parse(j, &d, &err), STM_BAD_REQUEST);
    ck_assert_str_eq(err.msg, D "10001 states, over limits.max_states (10000, the most it can be set to)");
    cJSON_Delete(j);
    buf_free(&b);

    /* Fan-out counts: 1000 transitions from 101 states each is too many. */
    buf_puts(&b, "{\"states\":[");
    for (int i = 0; i <= 100; i++)
        buf_printf(&b, "%s\"s%d\"", i ? "," : "", i);
    buf_puts(&b, "],\"initial\":\"s0\",\"transitions\":[");
    for (int i = 0; i < 1000; i++) {
        buf_printf(&b, "%s{\"from\":[", i ? "," : "");
        for (int k = 0; k <= 100; k++)
            buf_printf(&b, "%s\"s%d\"", k ? "," : "", k);
        buf_printf(&b, "],\"event\":\"E%d\",\"to\":\"s0\"}", i);
    }
    buf_puts(&b, "]}");
    j = json_parse(b.data, b.len, &err);
    ck_assert_int_eq(def_parse(j, &d, &err), STM_BAD_REQUEST);
    ck_assert_str_eq(err.msg, D
                     "101000 transitions after expanding 'from' lists, over limits.max_transitions (100000, the most it can be set to)");
    cJSON_Delete(j);
    buf_free(&b);
}
END_TEST

/* ---- YAML ---- */

static cJSON *yaml(const char *text)
{
    stm_err err = {0};
    cJSON *v = def_yaml_to_json(text, strlen(text), &err);
    ck_assert_msg(v != NULL, "YAML refused: %s", err.msg);
    return v;
}

static void yaml_is(const char *text, const char *json)
{
    cJSON *v = yaml(text);
    char *s = json_canonical(v, NULL);
    ck_assert_str_eq(s, json);
    free(s);
    cJSON_Delete(v);
}

static void yaml_bad(const char *text, const char *msg)
{
    stm_err err = {0};
    cJSON *v = def_yaml_to_json(text, strlen(text), &err);
    ck_assert_msg(v == NULL, "YAML accepted: %s", text);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    ck_assert_str_eq(err.msg, msg);
}

START_TEST(yaml_definition)
{
    const char *y = "# order lifecycle\n"
                    "states: [created, paid, shipped, delivered, cancelled]\n"
                    "initial: created\n"
                    "transitions:\n"
                    "  - {from: created, event: PAY, to: paid}\n"
                    "  - from: paid\n"
                    "    event: SHIP\n"
                    "    to: shipped\n"
                    "    guard: ctx.amount > 0\n"
                    "  - from: shipped\n"
                    "    event: DELIVER\n"
                    "    to: delivered\n"
                    "  - from:\n"
                    "      - created\n"
                    "      - paid\n"
                    "    event: CANCEL\n"
                    "    to: cancelled\n"
                    "meta:\n"
                    "  owner: fixtures\n"
                    "  description: order lifecycle\n";
    cJSON *j = yaml(y);
    def *d = NULL;
    stm_err err = {0};
    ck_assert_int_eq(def_parse(j, &d, &err), STM_OK);
    ck_assert_str_eq(def_checksum(d), "f48585cc");
    def_free(d);
    cJSON_Delete(j);
}
END_TEST

START_TEST(yaml_scalars)
{
    yaml_is("a: null\nb: ~\nc:\nd: Null\ne: NULL\n",
            "{\"a\":null,\"b\":null,\"c\":null,\"d\":null,\"e\":null}");
    yaml_is("a: true\nb: False\nc: TRUE\nd: yes\ne: on\nf: 'true'\ng: \"false\"\n",
            "{\"a\":true,\"b\":false,\"c\":true,\"d\":\"yes\",\"e\":\"on\",\"f\":\"true\",\"g\":"
            "\"false\"}");
    yaml_is("[1, -2, +3, 0x1F, 0o17, 1.5, .5, -1e3, 1E-2, 007, '1', \"2\", 1_000, 1.2.3]",
            "[1,-2,3,31,15,1.5,0.5,-1000,0.01,7,\"1\",\"2\",\"1_000\",\"1.2.3\"]");
    yaml_is("a: !!str 12\nb: !!str true\nc: |\n  line1\n  line2\nd: >\n  folded\n  text\n",
            "{\"a\":\"12\",\"b\":\"true\",\"c\":\"line1\\nline2\\n\",\"d\":\"folded text\\n\"}");
    yaml_is("true: 1\n1: x\nnull: y\n", "{\"1\":\"x\",\"null\":\"y\",\"true\":1}");
    yaml_is("s: \"caf\\u00e9 \\\"q\\\"\"\nt: 'it''s'\n",
            "{\"s\":\"café \\\"q\\\"\",\"t\":\"it's\"}");
    yaml_is("{}", "{}");
    yaml_is("[]", "[]");
    yaml_is("", "null");
    yaml_is("---\na: 1\n...\n", "{\"a\":1}");
    yaml_is("a: &x 1\n", "{\"a\":1}");
    stm_err err = {0};
    cJSON *v = def_yaml_to_json(NULL, 0, &err);
    ck_assert(cJSON_IsNull(v));
    cJSON_Delete(v);
    yaml_is("{\"a\": [1, {\"b\": null}]}", "{\"a\":[1,{\"b\":null}]}");
}
END_TEST

START_TEST(yaml_errors)
{
    yaml_bad("a: [1, 2\n", "invalid YAML at line 2 column 1: did not find expected ',' or ']'");
    yaml_bad("a: 1\n b: 2\n",
             "invalid YAML at line 2 column 3: mapping values are not allowed in this context");
    yaml_bad("a: 1\n---\nb: 2\n", "invalid YAML at line 2 column 1: more than one document");
    yaml_bad("a: &x 1\nb: *x\n", "invalid YAML at line 2 column 4: aliases are not supported");
    yaml_bad("a: 1\na: 2\n", "invalid YAML at line 2 column 1: duplicate key 'a'");
    yaml_bad("? [a]\n: 1\n", "invalid YAML at line 1 column 3: mapping keys must be scalars");
    yaml_bad("a: .inf\n", "invalid YAML at line 1 column 4: '.inf' cannot be represented in JSON");
    yaml_bad("a: 1e999\n",
             "invalid YAML at line 1 column 4: '1e999' cannot be represented in JSON");
    yaml_bad("a: \"\\0\"\n", "invalid YAML at line 1 column 4: NUL in a scalar");
    yaml_bad("\"a\\0b\": 1\n", "invalid YAML at line 1 column 1: NUL in a key");
    yaml_bad("x:\n  - {k: 1, k: 2}\n", "invalid YAML at line 2 column 12: duplicate key 'k'");
    yaml_bad("a: \"\xff\"\n", "invalid YAML at line 1 column 5: invalid leading UTF-8 octet");
    /* Nesting is bounded like JSON's. */
    buf b = {0};
    for (int i = 0; i < JSON_MAX_DEPTH + 1; i++)
        buf_putc(&b, '[');
    stm_err err = {0};
    ck_assert_ptr_null(def_yaml_to_json(b.data, b.len, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "nested deeper than 128 levels"));
    buf_reset(&b);
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        buf_putc(&b, '[');
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        buf_putc(&b, ']');
    cJSON *v = def_yaml_to_json(b.data, b.len, &err);
    ck_assert_ptr_nonnull(v);
    cJSON_Delete(v);
    buf_free(&b);
}
END_TEST

/* def_write_yaml, then read back: the same checksum. */
static void yaml_round_trip(const def *d)
{
    buf b = {0};
    def_write_yaml(d, &b);
    stm_err err = {0};
    cJSON *j = def_yaml_to_json(b.data, b.len, &err);
    ck_assert_msg(j != NULL, "own YAML refused: %s\n%s", err.msg, b.data);
    def *d2 = NULL;
    ck_assert_msg(def_parse(j, &d2, &err) == STM_OK, "%s\n%s", err.msg, b.data);
    ck_assert_msg(strcmp(def_checksum(d2), def_checksum(d)) == 0, "checksum changed:\n%s", b.data);
    char *a = compact(d), *c = compact(d2);
    ck_assert_str_eq(a, c);
    free(a);
    free(c);
    def_free(d2);
    cJSON_Delete(j);
    buf_free(&b);
}

START_TEST(yaml_write)
{
    def *d = parse_ok("{'states':['created','paid'],'initial':'created','transitions':[{'from':"
                      "'created','event':'PAY','to':'paid','guard':'ctx.a > 0'}],'meta':{'b':"
                      "[1,'x'],'a':{'k':null}}}");
    buf b = {0};
    def_write_yaml(d, &b);
    ck_assert_str_eq(buf_cstr(&b), "states:\n"
                                   "  - created\n"
                                   "  - paid\n"
                                   "initial: created\n"
                                   "transitions:\n"
                                   "  - from: [created]\n"
                                   "    event: PAY\n"
                                   "    to: paid\n"
                                   "    guard: \"ctx.a > 0\"\n"
                                   "meta: {\"a\": {\"k\": null}, \"b\": [1, \"x\"]}\n");
    buf_free(&b);
    yaml_round_trip(d);
    /* Same checksum, same YAML and normalised tree, whatever the meta order. */
    def *d2 = parse_ok("{'states':['created','paid'],'initial':'created','transitions':[{'from':"
                       "['created'],'event':'PAY','to':'paid','guard':'ctx.a > 0'}],'meta':{'a':"
                       "{'k':null},'b':[1,'x']}}");
    ck_assert_str_eq(def_checksum(d2), def_checksum(d));
    buf b2 = {0};
    def_write_yaml(d, &b);
    def_write_yaml(d2, &b2);
    ck_assert_str_eq(buf_cstr(&b), buf_cstr(&b2));
    cJSON *n1 = def_normalised(d), *n2 = def_normalised(d2);
    char *t1 = cJSON_PrintUnformatted(n1), *t2 = cJSON_PrintUnformatted(n2);
    ck_assert_str_eq(t1, t2);
    free(t1);
    free(t2);
    cJSON_Delete(n1);
    cJSON_Delete(n2);
    buf_free(&b);
    buf_free(&b2);
    def_free(d2);
    def_free(d);
}
END_TEST

START_TEST(yaml_write_nasty)
{
    /* Names YAML would otherwise type, fold, refuse or misread. */
    def *d = parse_ok(
        "{'states':['true','null','1','0x10','-','? a','a: b','#c','[x]','{y}','yes','No','',"
        "' lead','trail ','a\\nb','tab\\tq','\\u0085nel','\\u2028ls','\\u007fdel','\\ufeffbom',"
        "'\\u0001','quote\\'','back\\\\slash','*star','&amp','!bang','%pct','@at','`tick',"
        "'|pipe','>gt','caf\\u00e9','日本','😀',',comma','.5','1e3','~'],"
        "'initial':'true','transitions':["
        "{'from':['true','null'],'event':'- e: [x]','to':'~','guard':'ctx.s == "
        "\\\"a\\\\\\\"b\\\"'},"
        "{'from':'日本','event':'','to':'','guard':'payload.x <= ctx.y || !ctx.z'}],"
        "'meta':{'':1,'k\\n':'v\\u2029','a':[true,false,null,1.5,-3,1e100,{}],'z':{'q':[]}}}");
    yaml_round_trip(d);
    def_free(d);
    cJSON *exp = load_expected();
    if (exp) {
        const cJSON *m;
        cJSON_ArrayForEach(m, json_get(exp, "machines"))
        {
            stm_err err = {0};
            ck_assert_int_eq(def_parse(json_get(m, "submitted_definition"), &d, &err), STM_OK);
            yaml_round_trip(d);
            def_free(d);
        }
        cJSON_Delete(exp);
    }
}
END_TEST

/* A YAML reader takes implicit keys of at most 1024 characters: longer
 * meta keys (plain, escaped, nested) must still round-trip. */
START_TEST(yaml_write_long_keys)
{
    buf js = {0};
    buf_puts(&js, "{\"states\":[\"a\"],\"initial\":\"a\",\"transitions\":[],\"meta\":{\"");
    for (int i = 0; i < 1100; i++) buf_putc(&js, 'k');
    buf_puts(&js, "\":1,\"");
    for (int i = 0; i < 300; i++) buf_puts(&js, "\\u001c");
    buf_puts(&js, "\":{\"");
    for (int i = 0; i < 1023; i++) buf_putc(&js, 'n');
    buf_puts(&js, "\":[2],\"");
    for (int i = 0; i < 1024; i++) buf_putc(&js, 'm');
    buf_puts(&js, "\":null}}}");
    cJSON *j = json_parse(js.data, js.len, NULL);
    ck_assert_ptr_nonnull(j);
    def *d = NULL;
    stm_err err = {0};
    ck_assert_int_eq(def_parse(j, &d, &err), STM_OK);
    yaml_round_trip(d);
    def_free(d);
    cJSON_Delete(j);
    buf_free(&js);
}
END_TEST

/* ---- DOT ---- */

START_TEST(dot_output)
{
    def *d =
        parse_ok("{'states':['created','paid','paid'],'initial':'created','transitions':["
                 "{'from':['created','paid'],'event':'PAY','to':'paid','guard':'ctx.a > 0'}]}");
    buf b = {0};
    def_write_dot(d, "order", 3, &b);
    ck_assert_str_eq(buf_cstr(&b), "digraph \"order v3\" {\n"
                                   "  rankdir=LR;\n"
                                   "  node [shape=ellipse];\n"
                                   "  start [shape=point, label=\"\"];\n"
                                   "  s0 [label=\"created\"];\n"
                                   "  s1 [label=\"paid\"];\n"
                                   "  start -> s0;\n"
                                   "  s0 -> s1 [label=\"PAY [ctx.a > 0]\"];\n"
                                   "  s1 -> s1 [label=\"PAY [ctx.a > 0]\"];\n"
                                   "}\n");
    buf_free(&b);
    def_free(d);
}
END_TEST

/* The initial state is the one the start arrow points at; a double circle
 * is for final states, those no transition leaves, initial or not. */
START_TEST(dot_final_states)
{
    def *d = parse_ok("{'states':['draft','review','live','gone'],'initial':'draft','transitions':["
                      "{'from':'draft','event':'SUBMIT','to':'review'},"
                      "{'from':'review','event':'APPROVE','to':'live'},"
                      "{'from':'review','event':'DROP','to':'gone'},"
                      "{'from':'review','event':'REJECT','to':'draft'}]}");
    buf b = {0};
    def_write_dot(d, "doc", 1, &b);
    const char *g = buf_cstr(&b);
    ck_assert_ptr_nonnull(strstr(g, "  s0 [label=\"draft\"];\n"));
    ck_assert_ptr_nonnull(strstr(g, "  s1 [label=\"review\"];\n"));
    ck_assert_ptr_nonnull(strstr(g, "  s2 [label=\"live\", shape=doublecircle];\n"));
    ck_assert_ptr_nonnull(strstr(g, "  s3 [label=\"gone\", shape=doublecircle];\n"));
    ck_assert_ptr_nonnull(strstr(g, "  start -> s0;\n"));
    buf_free(&b);
    def_free(d);

    d = parse_ok("{'states':['only'],'initial':'only','transitions':[]}");
    buf_reset(&b);
    def_write_dot(d, "still", 1, &b);
    ck_assert_ptr_nonnull(strstr(buf_cstr(&b), "  s0 [label=\"only\", shape=doublecircle];\n"));
    ck_assert_ptr_nonnull(strstr(buf_cstr(&b), "  start -> s0;\n"));
    buf_free(&b);
    def_free(d);
}
END_TEST

static bool have_dot(void)
{
    return system("command -v dot >/dev/null 2>&1") == 0;
}

START_TEST(dot_accepted)
{
    if (!have_dot()) {
        fprintf(stderr, "test_def: dot not installed; DOT syntax check skipped\n");
        return;
    }
    def *d = parse_ok("{'states':['a\\\"b','c\\\\','\\\\','}','\\n;x','<html>','start','s0',"
                      "'日本','-> x','\\u0001'],'initial':'s0','transitions':["
                      "{'from':['a\\\"b','c\\\\','\\\\'],'event':'E\\\\','to':'}'},"
                      "{'from':'}','event':'\\\" ]; evil [','to':'start','guard':'ctx.s == "
                      "\\\"x\\\\\\\"\\\" && payload.y'},"
                      "{'from':['start','s0'],'event':'\\\\N \\\\G','to':'日本'},"
                      "{'from':'<html>','event':'\\u0001\\n','to':'-> x'}]}");
    const char *names[] = {"order", "a \"quoted\" name\\", "", "日本 machine\n"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        buf b = {0};
        def_write_dot(d, names[i], 4294967295u, &b);
        char path[] = "/tmp/test_def_dot_XXXXXX";
        int fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, b.data, b.len), (ssize_t)b.len);
        close(fd);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "dot -Tsvg -o /dev/null %s 2>&1", path);
        int rc = system(cmd);
        unlink(path);
        ck_assert_msg(rc == 0, "dot refused:\n%s", b.data);
        buf_free(&b);
    }
    def_free(d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("def");
    TCase *tc = tcase_create("def");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, worked_examples);
    tcase_add_test(tc, real_machines);
    tcase_add_test(tc, checksum_invariants);
    tcase_add_test(tc, pretty_json);
    tcase_add_test(tc, shape_errors);
    tcase_add_test(tc, validation_order);
    tcase_add_test(tc, duplicates_and_branching);
    tcase_add_test(tc, fan_out_and_lookups);
    tcase_add_test(tc, many_states);
    tcase_add_test(tc, yaml_definition);
    tcase_add_test(tc, yaml_scalars);
    tcase_add_test(tc, yaml_errors);
    tcase_add_test(tc, yaml_write);
    tcase_add_test(tc, yaml_write_nasty);
    tcase_add_test(tc, yaml_write_long_keys);
    tcase_add_test(tc, dot_output);
    tcase_add_test(tc, dot_final_states);
    tcase_add_test(tc, dot_accepted);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
