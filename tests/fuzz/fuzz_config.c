/*
 * fuzz_config.c - the YAML configuration file, arbitrary text.
 *
 * The input goes to config_parse_yaml over the defaults (the same call
 * config_load makes with the file's content), then config_to_eng_opts,
 * then config_parse_yaml once more on top of the result (a value set twice
 * must not leak or double-free), then config_free. A refusal must name a
 * code and carry a message. The environment is never read here, so runs
 * do not depend on the caller's RSTMDB_* / STMFS_* variables.
 *
 * Build: meson setup with CC=clang -Dfuzz=true (see tests/fuzz/meson.build).
 * Run:   build-fuzz/tests/fuzz/fuzz_config tests/fuzz/corpus/config -runs=0   (replay)
 *        build-fuzz/tests/fuzz/fuzz_config -max_len=8192 WORKDIR tests/fuzz/corpus/config
 */
#include <stdint.h>
#include <stdlib.h>

#include "engine/engine.h"
#include "src/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    stm_config c;
    config_defaults(&c);
    stm_err err = {0};
    stm_code rc = config_parse_yaml(&c, text, size, &err);
    if (rc != STM_OK) {
        if (rc >= STM_CODE_COUNT || !err.msg[0]) abort();
    } else {
        eng_opts o;
        config_to_eng_opts(&c, &o);
        config_parse_yaml(&c, text, size, &err);
    }
    config_free(&c);
    return 0;
}
