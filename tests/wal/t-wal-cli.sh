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

# dump on a log damaged inside (opening refuses it): every record before the
# damage, then where it is on stderr, exit 1, and the files left as they were.
cp -r "$DATA/rstmdb-data" "$T/mid"
chmod -R u+w "$T/mid"
printf 'X' | dd of="$T/mid/wal/0000000000000002.wal" bs=1 seek=13500 conv=notrunc 2>/dev/null
cp -r "$T/mid" "$T/mid.orig"
set +e
"$STMFS" wal dump "$T/mid" >"$T/out" 2>"$T/err"
rc=$?
set -e
[ $rc = 1 ] || fail "dump of a damaged log must exit 1, not $rc"
[ "$(wc -l < "$T/out")" = 62 ] || fail "dump before the damage: $(wc -l < "$T/out") lines; $(cat "$T/err")"
tail -1 "$T/out" | grep -q '"sequence":62}$' || fail "last record before the damage"
grep -q '0000000000000002.wal at byte 13394 .*CRC mismatch.*2131 bytes follow' "$T/err" ||
    fail "damage report: $(cat "$T/err")"
grep -q 'skip-damage' "$T/err" || fail "no hint of --skip-damage: $(cat "$T/err")"
seq62=$(sed -n 's/.*"offset":\([0-9]*\),"sequence":62}$/\1/p' "$T/out")
[ "$("$STMFS" wal dump "$T/mid" --from "$seq62" 2>/dev/null | wc -l)" = 1 ] ||
    fail "--from before the damage"
set +e
"$STMFS" wal dump "$T/mid" --skip-damage >"$T/out" 2>"$T/err"
rc=$?
set -e
[ $rc = 1 ] || fail "dump --skip-damage of a damaged log must exit 1, not $rc"
[ "$(wc -l < "$T/out")" = 71 ] || fail "--skip-damage: $(wc -l < "$T/out") lines; $(cat "$T/err")"
grep -q '"sequence":63}$' "$T/out" && fail "--skip-damage printed the damaged record"
tail -1 "$T/out" | grep -q '"sequence":72}$' || fail "--skip-damage: last record"
grep -q 'next valid record .*0000000000000002.wal byte 13566' "$T/err" ||
    fail "--skip-damage report: $(cat "$T/err")"
diff -r "$T/mid" "$T/mid.orig" >/dev/null || fail "dump modified a damaged log"
if "$STMFS" wal verify "$T/mid" --skip-damage 2>/dev/null; then fail "--skip-damage on verify"; fi

# One flipped byte in the middle of segment 1.
printf 'X' | dd of="$T/clean/wal/0000000000000001.wal" bs=1 seek=500 conv=notrunc 2>/dev/null
if "$STMFS" wal verify "$T/clean" 2>"$T/err"; then fail "damage not found"; fi
grep -q '0000000000000001.wal at byte 0' "$T/err" || fail "damage message: $(cat "$T/err")"
echo "ok"
