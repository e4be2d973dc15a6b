#!/bin/sh
# `stmfs wal verify|dump` on copies of the rstmdb fixtures, as a user would
# run them.   usage: t-wal-cli.sh STMFS TESTDATA
set -eu
STMFS=$1
DATA=$2
T=$(mktemp -d "${TMPDIR:-/tmp}/stmwal-cli-XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cp -r "$DATA/rstmdb-data" "$T/clean"
cp -r "$DATA/rstmdb-data-torn" "$T/torn"
chmod -R u+w "$T"

"$STMFS" wal --help | grep -q 'stmfs wal verify' || fail "--help"

out=$("$STMFS" wal verify "$T/clean") || fail "verify of the clean copy"
echo "$out" | grep -q '^ok: 72 records' || fail "verify count: $out"
head=$(echo "$out" | sed -n 's/^head: \([0-9]*:[0-9a-f]*\) .*/\1/p')
[ "${head%%:*}" = 72 ] || fail "head line: $out"
"$STMFS" wal verify "$T/clean" --expect "$head" | grep -q matches || fail "--expect"
bad="5:$(printf '%064d' 0)"
if "$STMFS" wal verify "$T/clean" --expect "$bad" 2>"$T/err"; then fail "wrong --expect passed"; fi
grep -q 'mismatch at seq 5' "$T/err" || fail "mismatch message: $(cat "$T/err")"
set +e
"$STMFS" wal verify "$T/clean" --expect nonsense 2>/dev/null
[ $? = 2 ] || fail "bad --expect must exit 2"
set -e

[ "$("$STMFS" wal dump "$T/clean" | wc -l)" = 72 ] || fail "dump count"
"$STMFS" wal dump "$T/clean" | head -1 | grep -q '^{"entry":{"definition":.*"type":"put_machine","version":1},"offset":1099511627776,"sequence":1}$' ||
    fail "dump line: $("$STMFS" wal dump "$T/clean" | head -1 | cut -c1-200)"
"$STMFS" wal dump "$T/clean" --from 2199023270802 | grep -q '"sequence":72}$' || fail "--from"

out=$("$STMFS" wal verify "$T/torn") || fail "verify of the torn copy"
echo "$out" | grep -q '^ok: 71 records' || fail "torn count: $out"
echo "$out" | grep -q '^torn tail: 149 bytes' || fail "torn report: $out"
[ "$(wc -c < "$T/torn/wal/0000000000000002.wal")" = 15399 ] || fail "verify modified the log"

# One flipped byte in the middle of segment 1.
printf 'X' | dd of="$T/clean/wal/0000000000000001.wal" bs=1 seek=500 conv=notrunc 2>/dev/null
if "$STMFS" wal verify "$T/clean" 2>"$T/err"; then fail "damage not found"; fi
grep -q '0000000000000001.wal at byte 0' "$T/err" || fail "damage message: $(cat "$T/err")"
echo "ok"
