#!/usr/bin/env bash
# Runs the libFuzzer targets of tests/fuzz for a long time each, one after
# the other, growing a work corpus outside the source tree.
#
#   scripts/fuzz.sh                  every target, FUZZ_SECONDS (600) each
#   scripts/fuzz.sh wal snapshot     only those
#   FUZZ_SECONDS=3600 FUZZ_JOBS=2 scripts/fuzz.sh frame
#
# Builds build-fuzz (clang, -Dfuzz=true) when it is missing. New inputs go
# to FUZZ_WORK (default build-fuzz/fuzz-work/<target>), seeded from
# tests/fuzz/corpus/<target>; crashes, leaks and timeouts are saved there as
# crash-*, leak-*, timeout-* and the script ends non-zero naming them. To
# keep a new interesting input as a seed, minimise it first:
#   build-fuzz/tests/fuzz/fuzz_T -merge=1 tests/fuzz/corpus/T build-fuzz/fuzz-work/T
# A crash is reported, its minimised input kept in tests/fuzz/crashes/<T>/
# until the fix lands, then moved into the corpus as a regression seed.
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECONDS:-600}
jobs=${FUZZ_JOBS:-1}
build=${FUZZ_BUILD:-build-fuzz}
all=(frame guard entry def wal snapshot config line)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" -Dfuzz=true -Db_lundef=false || exit 1
fi
ninja -C "$build" $(printf 'tests/fuzz/fuzz_%s ' "${targets[@]}") || exit 1

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
status=0
for t in "${targets[@]}"; do
    work=${FUZZ_WORK:-$build/fuzz-work}/$t
    mkdir -p "$work"
    echo "== fuzz_$t for ${secs}s into $work"
    extra=()
    [ "$jobs" -gt 1 ] && extra=(-fork="$jobs" -ignore_crashes=1)
    "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$work/" "${extra[@]}" "$work" "tests/fuzz/corpus/$t" \
        2>"$work/log" || status=1
    grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec|SUMMARY' "$work/log"
    found=$(ls "$work" | grep -E '^(crash|leak|timeout|oom)-' || true)
    if [ -n "$found" ]; then
        echo "fuzz_$t found:" $found
        status=1
    fi
done
exit $status
