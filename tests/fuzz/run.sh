#!/bin/sh
# One fuzz target's CI run: replay every seed of its corpus (a regression
# check: each must run clean), then fuzz for a bounded time.
#   run.sh TARGET SEED_DIR WORK_DIR SECONDS [libFuzzer flags...]
# New inputs go to WORK_DIR (scratch, in the build dir); the seed dir is
# only read. A crash leaves its input as WORK_DIR/crash-* and fails.
set -eu
target=$1 seeds=$2 work=$3 secs=$4
shift 4
mkdir -p "$work"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# libFuzzer exits 77 on a crash it catches itself (an abort in a target),
# which meson reads as "skipped": a finding must fail the test instead.
set -- -error_exitcode=1 "$@"
"$target" -runs=0 "$@" "$seeds"
# STMFS_FUZZ_SEED fixes libFuzzer's random seed, so a CI run explores the same
# inputs every time and only a change in the code can turn it red; without it
# each run explores new ground.
if [ -n "${STMFS_FUZZ_SEED:-}" ]; then
    set -- -seed="$STMFS_FUZZ_SEED" "$@"
fi
"$target" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$work/" "$@" "$work" "$seeds"
