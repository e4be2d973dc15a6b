#!/usr/bin/env bash
# Installs what is missing, builds stmfs four times (plain; ASan+UBSan;
# clang with ThreadSanitizer; clang with libFuzzer) and runs every test:
# Check unit tests (also under the sanitizers), crash tests, integration tests on a real FUSE mount and a
# real TCP listener, a soak, and the fuzz targets' regression corpora. Needs root (or sudo) for
# apt-get and /dev/fuse. Ends with one line "N passed, N failed".
#
#   scripts/test.sh            everything
#   STMFS_SOAK=1 scripts/test.sh   longer crash and soak rounds
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# clang brings libFuzzer: the fuzz targets replay their corpora of past
# findings, then fuzz briefly from a fixed seed.
STMFS_PACKAGES="$STMFS_PACKAGES clang libclang-rt-14-dev"
ensure_packages
build build
build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dfault_injection=true
CC=clang build build-tsan -Db_sanitize=thread -Db_lundef=false
CC=clang build build-fuzz -Dfuzz=true -Db_lundef=false

status=0
meson test -C build --print-errorlogs --num-processes 2 || status=1
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    meson test -C build-asan --suite unit --suite fault --print-errorlogs --num-processes 2 || status=1
# the engine, the WAL's group commit and the RCP server's threads: a race
# fails the test (ThreadSanitizer exits 66)
TSAN_OPTIONS=halt_on_error=1 \
    meson test -C build-tsan --suite unit --print-errorlogs --num-processes 2 || status=1
STMFS_FUZZ_SEED=1 meson test -C build-fuzz --suite fuzz --print-errorlogs --num-processes 2 ||
    status=1

python3 - build{,-asan,-tsan,-fuzz}/meson-logs/testlog.json <<'PY'
import json, sys
passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        r = json.loads(line)
        res = r.get("result")
        if res in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif res == "SKIP":
            skipped += 1
        else:
            failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit $status
