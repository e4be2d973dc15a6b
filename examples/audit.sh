#!/usr/bin/env bash
# audit.sh - what happened to one instance, proof that the log holding it
# was not altered, and what the instance looked like one change ago.
#
# Run it with the data directory and the mount of a running stmfs
# (scripts/run.sh: /tmp/stmfs-demo/data and /tmp/stmfs-demo/mnt):
#
#     examples/audit.sh /tmp/stmfs-demo/data /tmp/stmfs-demo/mnt o-1 [HEAD_FILE]
#
# It needs jq, and stmfs from $STMFS, else PATH, else build/stmfs beside
# this folder. What you will see, for an order that was paid and shipped:
#
#     # 1. History of o-1 (instances/o-1/history, through jq)
#     SEQ  TIME                      CHANGE                      PAYLOAD
#     2    2026-11-28T04:00:43.805Z  create -> created           {"amount":0,"customer":"alice"}
#     3    2026-11-28T04:00:43.836Z  PAY: created -> paid        {"amount":42}
#     4    2026-11-28T04:00:43.843Z  SHIP: paid -> shipped       {"address":"1 Main St"}
#
#     # 2. The log, checked against the head saved last time
#     $ stmfs wal verify DATA --expect 3038:27c717611212c47...
#     ok: 3044 records (0 checkpoints) in 1 segments, 484401 bytes
#     head: 3044:9d0c... (offset 1099512111959)
#     expected chain at seq 3038: matches
#     (the last change of o-1)
#     $ stmfs wal verify DATA --expect 4:c1990900d1a7c6282f...
#     ...
#     expected chain at seq 4: matches
#     saved the head 3044:9d0c... in HEAD_FILE for the next audit
#
#     # 3. o-1 one change ago (stmfs replay DATA --at 1099511629098 --instance o-1)
#     state paid, context {"amount":42,"customer":"alice"}
#
# HEAD_FILE (default ./stmfs-head.txt) keeps the log's head, SEQ:HEX as
# `stmfs wal verify` prints it. The first run only writes it; each later run
# proves that records 1..SEQ are byte for byte what they were, then saves the
# new head. Keep the file where whoever could alter the data cannot.
# Each history line carries the chain value of its record too, so the
# instance's last change is checked the same way.
#
# Live or not: `wal verify` and `replay` only read the log, take no lock and
# may run while the mount is up; they see the log as far as it was written
# when they read it (a record being written at that moment would show as a
# "torn tail" and is not an error). For a check of a quiet log, unmount
# first. Compaction deletes old segments: a head older than the oldest kept
# record cannot be checked any more and verify says so (exit 1).
#
# Exit status: 0 when the log is intact and matches, 1 otherwise.
set -euo pipefail

data=${1:?usage: audit.sh DATA_DIR MOUNTPOINT ID [HEAD_FILE]}
mnt=${2:?usage: audit.sh DATA_DIR MOUNTPOINT ID [HEAD_FILE]}
id=${3:?usage: audit.sh DATA_DIR MOUNTPOINT ID [HEAD_FILE]}
head_file=${4:-stmfs-head.txt}
here=$(cd "$(dirname "$0")" && pwd)
stmfs=${STMFS:-$(command -v stmfs || echo "$here/../build/stmfs")}
history=$mnt/instances/$id/history

command -v jq >/dev/null || { echo "audit.sh: needs jq" >&2; exit 1; }
[ -x "$stmfs" ] || { echo "audit.sh: no stmfs at $stmfs (set STMFS)" >&2; exit 1; }
[ -r "$history" ] || { echo "audit.sh: no instance $id in $mnt" >&2; exit 1; }

# columns: aligns tab-separated lines (column(1) is not on every system).
columns() {
    if command -v column >/dev/null; then column -t -s $'\t'; else expand -t 8,34,62; fi
}

echo "# 1. History of $id (instances/$id/history, through jq)"
# One line per change: its sequence number in the log, when it was written
# (ts is Unix milliseconds), what changed, and the payload or first context.
jq -r '[ .seq,
         (.ts / 1000 | strftime("%Y-%m-%dT%H:%M:%S")) + "." + (.ts % 1000 | tostring | ("00" + .)[-3:]) + "Z",
         (if .type == "apply_event" then "\(.event): \(.from) -> \(.to)"
          elif .type == "create_instance" then "create -> \(.to)"
          else .type end),
         ((.payload // .ctx // null) | tojson) ] | @tsv' "$history" |
    { printf 'SEQ\tTIME\tCHANGE\tPAYLOAD\n'; cat; } | columns

echo
echo "# 2. The log, checked against the head saved last time"
verify() {
    echo "\$ stmfs wal verify DATA${1:+ --expect ${1:0:20}...}"
    "$stmfs" wal verify "$data" ${1:+--expect "$1"}
}
status=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if [ -s "$head_file" ]; then
    verify "$(cat "$head_file")" >"$out" || status=1
else
    echo "(no saved head in $head_file yet: this run only records one)"
    verify "" >"$out" || status=1
fi
cat "$out"
# The instance's own last change: its history line names seq and chain.
last=$(tail -n 1 "$history" | jq -r '"\(.seq):\(.chain)"')
echo "(the last change of $id)"
verify "$last" || status=1
if [ "$status" -eq 0 ]; then
    head=$(sed -n 's/^head: \([0-9]*:[0-9a-f]*\).*/\1/p' "$out")
    echo "$head" >"$head_file"
    echo "saved the head ${head:0:20}... in $head_file for the next audit"
else
    echo "THE LOG DOES NOT MATCH: head file left as it was" >&2
fi

echo
# The offset of the change before the last one (or the creation, if there
# was only one): replay rebuilds everything up to that record, nothing after.
at=$(jq -s -r 'if length > 1 then .[-2].offset else .[0].offset end' "$history")
echo "# 3. $id one change ago (stmfs replay DATA --at $at --instance $id)"
"$stmfs" replay "$data" --at "$at" --instance "$id" |
    jq -r '"state \(.state), context \(.ctx | tojson)"'
exit "$status"
