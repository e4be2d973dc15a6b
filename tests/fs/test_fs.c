/*
 * test_fs.c - unit tests of the mount's pure parts: the escaping of names,
 * the lines written to events and new, the errno table, the inode table.
 * Run: meson test -C build --suite fs
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "fs/internal.h"

static char *enc(const char *raw)
{
    buf b = {0};
    fs_name_encode(raw, &b);
    return buf_detach(&b, NULL);
}

static char *dec(const char *name)
{
    buf b = {0};
    if (!fs_name_decode(name, &b)) {
        buf_free(&b);
        return NULL;
    }
    buf_putc(&b, 0); /* make an empty result a non-NULL string */
    return buf_detach(&b, NULL);
}

START_TEST(names_plain_stay)
{
    const char *plain[] = {"o-1", "x y", "tab\tin", "caf\xc3\xa9", "-dash", ".hidden", "a.b"};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        char *e = enc(plain[i]);
        ck_assert_str_eq(e, plain[i]);
        ck_assert(!fs_name_needs_escape(plain[i]));
        char *d = dec(e);
        ck_assert_str_eq(d, plain[i]);
        free(e);
        free(d);
    }
}
END_TEST

START_TEST(names_escaped_round_trip)
{
    const struct {
        const char *raw, *name;
    } cases[] = {
        {"a/b", "a%2Fb"}, {"100%", "100%25"}, {".", "%2E"}, {"..", "%2E%2E"},
        {"", "%00"}, {"/", "%2F"}, {"%2F", "%252F"}, {"...", "..."}, {"./x", ".%2Fx"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *e = enc(cases[i].raw);
        ck_assert_str_eq(e, cases[i].name);
        char *d = dec(e);
        ck_assert_ptr_nonnull(d);
        ck_assert_str_eq(d, cases[i].raw);
        free(e);
        free(d);
    }
}
END_TEST

START_TEST(names_decode_refuses_other_spellings)
{
    const char *bad[] = {"%2f", "%41", "%", "%2", "%zz", "a%2", "%2E%2e", ".", "..",
                         "%25%", "%2E.", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *d = dec(bad[i]);
        if (d) ck_abort_msg("decoded '%s' to '%s'", bad[i], d);
    }
}
END_TEST

START_TEST(names_decode_says_why)
{
    const char *why = "unset";
    buf b = {0};
    ck_assert(fs_name_decode_why("o-1", &b, &why));
    ck_assert_ptr_null(why);
    buf_reset(&b);
    ck_assert(!fs_name_decode_why("50%off", &b, &why));
    ck_assert_ptr_nonnull(why);
    ck_assert(strstr(why, "two hex digits") != NULL);
    buf_reset(&b);
    ck_assert(!fs_name_decode_why("%41", &b, &why));
    ck_assert(strstr(why, "%25") != NULL);
    buf_reset(&b);
    ck_assert(!fs_name_decode_why("..", &b, &why));
    ck_assert(strstr(why, "%2E%2E") != NULL);
    buf_free(&b);
}
END_TEST

START_TEST(version_names)
{
    uint32_t v;
    ck_assert(fs_version_name("7.json", &v) && v == 7);
    ck_assert(fs_version_name("0.json", &v) && v == 0);
    ck_assert(fs_version_name("4294967295.json", &v) && v == 4294967295u);
    ck_assert(!fs_version_name("4294967296.json", &v));
    ck_assert(!fs_version_name("07.json", &v));
    ck_assert(!fs_version_name(".json", &v));
    ck_assert(!fs_version_name("7.yaml", &v));
    ck_assert(!fs_version_name("x.json", &v));
    ck_assert(!fs_version_name("7.json~", &v));
}
END_TEST

static char *canon(const cJSON *v)
{
    return json_canonical(v, NULL);
}

START_TEST(event_lines)
{
    stm_err err;
    cJSON *p = fs_event_line("o-1", "PAY", 3, &err);
    char *c = canon(p);
    ck_assert_str_eq(c, "{\"event\":\"PAY\",\"instance_id\":\"o-1\"}");
    free(c);
    cJSON_Delete(p);

    const char *l = "  PAY   {\"amount\": 42}\r";
    p = fs_event_line("o-1", l, strlen(l), &err);
    c = canon(p);
    ck_assert_str_eq(c, "{\"event\":\"PAY\",\"instance_id\":\"o-1\",\"payload\":{\"amount\":42}}");
    free(c);
    cJSON_Delete(p);

    /* a params object may name its own instance, as often as it likes */
    l = "{\"event\": \"SHIP\", \"instance_id\": \"o-1\", \"expected_state\": \"paid\", "
        "\"instance_id\": \"o-1\"}";
    p = fs_event_line("o-1", l, strlen(l), &err);
    c = canon(p);
    ck_assert_str_eq(c, "{\"event\":\"SHIP\",\"expected_state\":\"paid\",\"instance_id\":\"o-1\"}");
    free(c);
    cJSON_Delete(p);

    /* but never another one: it is refused, not redirected to the path's */
    l = "{\"event\": \"SHIP\", \"instance_id\": \"other\", \"expected_state\": \"paid\"}";
    p = fs_event_line("o-1", l, strlen(l), &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    ck_assert_str_eq(err.msg, "the line names instance 'other' but this is instances/o-1/events");
    l = "{\"event\": \"SHIP\", \"instance_id\": \"a/b\", \"instance_id\": \"x\"}";
    p = fs_event_line("a/b", l, strlen(l), &err);
    ck_assert_ptr_null(p);
    ck_assert_str_eq(err.msg, "the line names instance 'x' but this is instances/a%2Fb/events");
    l = "{\"event\": \"SHIP\", \"instance_id\": 7}";
    p = fs_event_line("o-1", l, strlen(l), &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    ck_assert(strstr(err.msg, "not a string") != NULL);

    p = fs_event_line("o-1", "   ", 3, &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_OK);

    l = "PAY {not json";
    p = fs_event_line("o-1", l, strlen(l), &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    ck_assert(strstr(err.msg, "payload") != NULL);

    p = fs_event_line("o-1", "PAY\0", 4, &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    p = fs_event_line("o-1", "PAY \xff\xfe", 6, &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    p = fs_new_line("order", 1, "\xc3\x28", 2, &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);

    l = "{\"event\": ";
    p = fs_event_line("o-1", l, strlen(l), &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
}
END_TEST

START_TEST(new_lines)
{
    stm_err err;
    const char *l = "o-1 {\"customer\": \"alice\"}";
    cJSON *p = fs_new_line("order", 3, l, strlen(l), &err);
    char *c = canon(p);
    ck_assert_str_eq(c, "{\"initial_ctx\":{\"customer\":\"alice\"},\"instance_id\":\"o-1\","
                        "\"machine\":\"order\",\"version\":3}");
    free(c);
    cJSON_Delete(p);

    p = fs_new_line("order", 1, "n-a", 3, &err);
    c = canon(p);
    ck_assert_str_eq(c, "{\"instance_id\":\"n-a\",\"machine\":\"order\",\"version\":1}");
    free(c);
    cJSON_Delete(p);

    /* an object keeps its own version, takes the machine from the path */
    l = "{\"instance_id\": \"n-c\", \"version\": 1, \"initial_ctx\": {\"k\": 1}}";
    p = fs_new_line("order", 2, l, strlen(l), &err);
    c = canon(p);
    ck_assert_str_eq(c, "{\"initial_ctx\":{\"k\":1},\"instance_id\":\"n-c\",\"machine\":\"order\","
                        "\"version\":1}");
    free(c);
    cJSON_Delete(p);

    /* it may name the path's machine, but no other */
    l = "{\"instance_id\": \"n-d\", \"machine\": \"order\"}";
    p = fs_new_line("order", 2, l, strlen(l), &err);
    c = canon(p);
    ck_assert_str_eq(c, "{\"instance_id\":\"n-d\",\"machine\":\"order\",\"version\":2}");
    free(c);
    cJSON_Delete(p);
    l = "{\"instance_id\": \"n-c\", \"machine\": \"order\", \"version\": 1}";
    p = fs_new_line("g", 2, l, strlen(l), &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
    ck_assert_str_eq(err.msg, "the line names machine 'order' but this is machines/g/new");
    l = "{\"machine\": null}";
    p = fs_new_line("g", 2, l, strlen(l), &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);

    l = "{}";
    p = fs_new_line("order", 2, l, strlen(l), &err);
    c = canon(p);
    ck_assert_str_eq(c, "{\"machine\":\"order\",\"version\":2}");
    free(c);
    cJSON_Delete(p);

    l = "o-9 [1,";
    p = fs_new_line("order", 2, l, strlen(l), &err);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(err.code, STM_BAD_REQUEST);
}
END_TEST

START_TEST(errno_table)
{
    ck_assert_int_eq(fs_errno_of(STM_OK), 0);
    ck_assert_int_eq(fs_errno_of(STM_BAD_REQUEST), EINVAL);
    ck_assert_int_eq(fs_errno_of(STM_INSTANCE_NOT_FOUND), ENOENT);
    ck_assert_int_eq(fs_errno_of(STM_MACHINE_NOT_FOUND), ENOENT);
    ck_assert_int_eq(fs_errno_of(STM_INSTANCE_EXISTS), EEXIST);
    ck_assert_int_eq(fs_errno_of(STM_MACHINE_VERSION_EXISTS), EEXIST);
    ck_assert_int_eq(fs_errno_of(STM_MACHINE_VERSION_LIMIT_EXCEEDED), EDQUOT);
    ck_assert_int_eq(fs_errno_of(STM_INVALID_TRANSITION), EPERM);
    ck_assert_int_eq(fs_errno_of(STM_GUARD_FAILED), EACCES);
    ck_assert_int_eq(fs_errno_of(STM_CONFLICT), EBUSY);
    ck_assert_int_eq(fs_errno_of(STM_WAL_IO_ERROR), EIO);
    ck_assert_int_eq(fs_errno_of(STM_INTERNAL_ERROR), EIO);
    ck_assert_int_eq(fs_errno_of(STM_RATE_LIMITED), EAGAIN);
    /* every code has an errno, and it is never 0 */
    for (int c = 1; c < STM_CODE_COUNT; c++) ck_assert_int_gt(fs_errno_of((stm_code)c), 0);
}
END_TEST

START_TEST(inode_table)
{
    fs f;
    memset(&f, 0, sizeof f);
    fs_inodes_init(&f);
    fs_node *root = fs_node_by_ino(&f, FUSE_ROOT_ID);
    ck_assert_ptr_nonnull(root);
    ck_assert_int_eq(root->kind, K_ROOT);

    /* the same path is the same node, until it is forgotten */
    fs_node *a = fs_node_get(&f, K_STATE, "o-1", NULL, 0);
    a->nlookup++;
    uint64_t ino = a->ino;
    ck_assert_ptr_eq(fs_node_get(&f, K_STATE, "o-1", NULL, 0), a);
    ck_assert_ptr_ne(fs_node_get(&f, K_CTX, "o-1", NULL, 0), a);
    ck_assert_ptr_ne(fs_node_get(&f, K_VERSION, "m", NULL, 1),
                     fs_node_get(&f, K_VERSION, "m", NULL, 2));
    ck_assert_ptr_ne(fs_node_get(&f, K_MLINK, "m", "x", 0), fs_node_get(&f, K_MLINK, "mx", "", 0));
    ck_assert_ptr_eq(fs_node_by_ino(&f, ino), a);
    fs_node_forget(&f, a, 1);
    ck_assert_ptr_null(fs_node_by_ino(&f, ino));
    ck_assert_ptr_null(fs_node_find(&f, K_STATE, "o-1", NULL, 0));
    /* numbers are never reused */
    fs_node *b = fs_node_get(&f, K_STATE, "o-1", NULL, 0);
    ck_assert_uint_gt(b->ino, ino);

    /* growth keeps everything findable */
    char id[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "i-%d", i);
        fs_node_get(&f, K_INST, id, NULL, 0)->nlookup = 1;
    }
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "i-%d", i);
        fs_node *n = fs_node_find(&f, K_INST, id, NULL, 0);
        ck_assert_ptr_nonnull(n);
        ck_assert_ptr_eq(fs_node_by_ino(&f, n->ino), n);
    }
    /* pinned nodes survive forget */
    fs_node_forget(&f, root, 100);
    ck_assert_ptr_eq(fs_node_by_ino(&f, FUSE_ROOT_ID), root);
    fs_inodes_free(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fs");
    TCase *tc = tcase_create("pure");
    tcase_add_test(tc, names_plain_stay);
    tcase_add_test(tc, names_escaped_round_trip);
    tcase_add_test(tc, names_decode_refuses_other_spellings);
    tcase_add_test(tc, names_decode_says_why);
    tcase_add_test(tc, version_names);
    tcase_add_test(tc, event_lines);
    tcase_add_test(tc, new_lines);
    tcase_add_test(tc, errno_table);
    tcase_add_test(tc, inode_table);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
