#!/usr/bin/env bash
# bench/fs.sh - the mount benchmark (issue 5), with tmpfs measured in the
# same run as the yardstick. Prints a Markdown table for bench/README.md.
#
#   bench/fs.sh [BUILD_DIR]         default BUILD_DIR: build
#
# Needs BUILD_DIR/stmfs, BUILD_DIR/bench/fsbench, python3, root (FUSE).
# Knobs (environment): RUNS=5 (medians of this many runs), COUNT=2000
# (lines per writer per run), READS=20000 (open+read+close per run),
# NLS=100000 (instances for the ls -l run; 0 skips it).
#
# What it measures:
#   - transitions/s through instances/<id>/events: 1, 4 and 16 writer
#     processes, each holding its own instance's events open and writing
#     "TICK\n" lines, under fsync_policy every_write and never; yardstick:
#     the same writers appending the same lines to tmpfs files;
#   - open+read+close/s of state and ctx.json from a C loop, on the
#     every_write mount (state also through machines/tick/instances/)
#     and again on the same data mounted -o ro (where files open without
#     a round trip); yardstick: tmpfs files of the same sizes, measured
#     right after each;
#   - `ls -l instances/` with NLS instances; yardstick: `ls -l` of a tmpfs
#     directory with NLS subdirectories.
# Everything is mounted under /tmp and unmounted on exit, whatever happens.
set -euo pipefail
export LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
STMFS=$build/stmfs
FSBENCH=$build/bench/fsbench
RCPC=$root/tests/integration/rcpc.py
RUNS=${RUNS:-5}
COUNT=${COUNT:-2000}
READS=${READS:-20000}
NLS=${NLS:-100000}

for f in "$STMFS" "$FSBENCH"; do
    [ -x "$f" ] || { echo "fs.sh: $f missing (ninja -C $build stmfs bench/fsbench)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/stmfs-bench.XXXXXX)
shm=$(mktemp -d /dev/shm/stmfs-bench.XXXXXX)
MOUNTS=()
cleanup() {
    local m
    for m in "${MOUNTS[@]}"; do
        fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
    done
    rm -rf "$shm"
    # Never rm -rf into a live mount: rmdir there deletes instances.
    if grep -q " $work/" /proc/mounts; then
        echo "fs.sh: $work still has a mount in it; left in place" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

log() { printf '%s\n' "$*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# median: of the numbers on stdin, one a line.
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# field KEY: the value of KEY=VALUE in the line on stdin.
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

# mount_db NAME POLICY: mounts a fresh database with that fsync policy
# (set both by the config file and by the environment, so that either
# way of configuring it is enough). Sets MNT and ADDR.
mount_db() {
    local data=$work/$1.data
    MNT=$work/$1.mnt
    mkdir -p "$data" "$MNT"
    printf 'storage:\n  fsync_policy: %s\n' "$2" >"$work/$1.yaml"
    ADDR=127.0.0.1:$(free_port)
    STMFS_FSYNC_POLICY=$2 "$STMFS" mount "$data" "$MNT" -c "$work/$1.yaml" --bind "$ADDR" \
        >"$work/$1.out" 2>&1 || { cat "$work/$1.out" >&2; exit 1; }
    MOUNTS+=("$MNT")
    python3 "$RCPC" --addr "$ADDR" wait 20 >/dev/null
    mkdir "$MNT/machines/tick"
    echo '{"states":["on"],"initial":"on","transitions":[{"from":"on","event":"TICK","to":"on"}]}' \
        >"$MNT/machines/tick/definition.json"
    seq -f 'w-%g' 16 >"$MNT/machines/tick/new"
    echo 'r-1 {"customer": "alice", "amount": 42.5, "items": ["book", "pen"], "address": {"city": "Lyon", "zip": "69001"}}' \
        >"$MNT/machines/tick/new"
}

# runs_median CMD...: runs CMD RUNS times, the median of its ops_per_s.
runs_median() {
    local _
    for _ in $(seq "$RUNS"); do
        "$@" | field ops_per_s
    done | median
}

declare -A R=()

for policy in every_write never; do
    log "events writes under $policy ..."
    mount_db "w-$policy" "$policy"
    for n in 1 4 16; do
        R[w-$policy-$n]=$(runs_median "$FSBENCH" write "$n" "$COUNT" "$MNT/instances/w-%d/events")
        log "  $n writers: ${R[w-$policy-$n]} transitions/s"
    done
    if [ "$policy" = every_write ]; then
        log "open+read+close ..."
        for f in state ctx.json; do
            cp "$MNT/instances/r-1/$f" "$shm/$f"
            R[size-$f]=$(stat -c %s "$shm/$f")
            R[r-$f]=$(runs_median "$FSBENCH" read "$READS" "$MNT/instances/r-1/$f")
            R[rt-$f]=$(runs_median "$FSBENCH" read "$READS" "$shm/$f")
            log "  $f: ${R[r-$f]}/s (tmpfs ${R[rt-$f]}/s)"
        done
        # The same file through the machine's link to the instance, the
        # path a user browsing machines/ takes
        R[rl-state]=$(runs_median "$FSBENCH" read "$READS" "$MNT/machines/tick/instances/r-1/state")
        log "  state via machines/tick/instances/: ${R[rl-state]}/s"
        # The same data on a read-only mount, where files open without a
        # round trip (FUSE no_open): the audit mount's reads.
        fusermount3 -u "$MNT"
        "$STMFS" mount "$work/w-$policy.data" "$MNT" -o ro --bind none \
            >"$work/ro.out" 2>&1 || { cat "$work/ro.out" >&2; exit 1; }
        log "open+read+close on a read-only mount ..."
        for f in state ctx.json; do
            R[ro-$f]=$(runs_median "$FSBENCH" read "$READS" "$MNT/instances/r-1/$f")
            R[rot-$f]=$(runs_median "$FSBENCH" read "$READS" "$shm/$f")
            log "  $f: ${R[ro-$f]}/s (tmpfs ${R[rot-$f]}/s)"
        done
    fi
    fusermount3 -u "$MNT"
done

log "tmpfs appends ..."
for n in 1 4 16; do
    rm -f "$shm"/ev-*
    R[t-$n]=$(runs_median "$FSBENCH" write "$n" "$COUNT" "$shm/ev-%d" TICK --append)
done

if [ "$NLS" -gt 0 ]; then
    log "ls -l of $NLS instances ..."
    mount_db ls never
    t0=$(date +%s.%N)
    python3 "$RCPC" --addr "$ADDR" create-many tick 1 i "$NLS" >/dev/null
    t1=$(date +%s.%N)
    R[create]=$(python3 -c "print($NLS / ($t1 - $t0))")
    # shellcheck disable=SC2012  # the names are ours: i0000000 ...
    n=$(ls "$MNT/instances" | wc -l)
    [ "$n" -ge "$NLS" ] || { echo "fs.sh: only $n instances listed" >&2; exit 1; }
    time_ls() {
        local a b
        for _ in $(seq "$RUNS"); do
            a=$(date +%s.%N)
            ls -l "$1" >/dev/null
            b=$(date +%s.%N)
            python3 -c "print($b - $a)"
        done | median
    }
    R[ls]=$(time_ls "$MNT/instances")
    python3 -c "import os, sys; [os.mkdir(os.path.join(sys.argv[1], 'i%07d' % i)) for i in range(int(sys.argv[2]))]" \
        "$shm" "$NLS"
    R[lst]=$(time_ls "$shm")
    fusermount3 -u "$MNT"
fi

ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print('%.1fx' % (a / b) if b else '-')" "$1" "$2"; }
fmt() { python3 -c "import sys; print(format(round(float(sys.argv[1])), ','))" "$1"; }
us() { python3 -c "import sys; print('%.1f' % (1e6 / float(sys.argv[1])))" "$1"; }

cat <<EOF
Measured $(date -u +%Y-%m-%d) on $(nproc) vCPUs, kernel $(uname -r), medians of $RUNS runs
(COUNT=$COUNT lines per writer per run, READS=$READS).

| operation | stmfs | tmpfs | stmfs slower by |
|---|---|---|---|
| events writes, 1 writer, every_write | $(fmt "${R[w-every_write-1]}") transitions/s | $(fmt "${R[t-1]}") lines/s | $(ratio "${R[t-1]}" "${R[w-every_write-1]}") |
| events writes, 4 writers, every_write | $(fmt "${R[w-every_write-4]}") transitions/s | $(fmt "${R[t-4]}") lines/s | $(ratio "${R[t-4]}" "${R[w-every_write-4]}") |
| events writes, 16 writers, every_write | $(fmt "${R[w-every_write-16]}") transitions/s | $(fmt "${R[t-16]}") lines/s | $(ratio "${R[t-16]}" "${R[w-every_write-16]}") |
| events writes, 1 writer, never | $(fmt "${R[w-never-1]}") transitions/s | $(fmt "${R[t-1]}") lines/s | $(ratio "${R[t-1]}" "${R[w-never-1]}") |
| events writes, 4 writers, never | $(fmt "${R[w-never-4]}") transitions/s | $(fmt "${R[t-4]}") lines/s | $(ratio "${R[t-4]}" "${R[w-never-4]}") |
| events writes, 16 writers, never | $(fmt "${R[w-never-16]}") transitions/s | $(fmt "${R[t-16]}") lines/s | $(ratio "${R[t-16]}" "${R[w-never-16]}") |
| open+read+close state (${R[size-state]} B) | $(fmt "${R[r-state]}")/s ($(us "${R[r-state]}") us) | $(fmt "${R[rt-state]}")/s ($(us "${R[rt-state]}") us) | $(ratio "${R[rt-state]}" "${R[r-state]}") |
| open+read+close state via \`machines/tick/instances/r-1\` | $(fmt "${R[rl-state]}")/s ($(us "${R[rl-state]}") us) | $(fmt "${R[rt-state]}")/s ($(us "${R[rt-state]}") us) | $(ratio "${R[rt-state]}" "${R[rl-state]}") |
| open+read+close ctx.json (${R[size-ctx.json]} B) | $(fmt "${R[r-ctx.json]}")/s ($(us "${R[r-ctx.json]}") us) | $(fmt "${R[rt-ctx.json]}")/s ($(us "${R[rt-ctx.json]}") us) | $(ratio "${R[rt-ctx.json]}" "${R[r-ctx.json]}") |
| open+read+close state, \`-o ro\` mount | $(fmt "${R[ro-state]}")/s ($(us "${R[ro-state]}") us) | $(fmt "${R[rot-state]}")/s ($(us "${R[rot-state]}") us) | $(ratio "${R[rot-state]}" "${R[ro-state]}") |
| open+read+close ctx.json, \`-o ro\` mount | $(fmt "${R[ro-ctx.json]}")/s ($(us "${R[ro-ctx.json]}") us) | $(fmt "${R[rot-ctx.json]}")/s ($(us "${R[rot-ctx.json]}") us) | $(ratio "${R[rot-ctx.json]}" "${R[ro-ctx.json]}") |
EOF
if [ "$NLS" -gt 0 ]; then
    secs() { python3 -c "import sys; print('%.3f' % float(sys.argv[1]))" "$1"; }
    echo "| \`ls -l\` of $NLS entries | $(secs "${R[ls]}") s | $(secs "${R[lst]}") s | $(ratio "${R[ls]}" "${R[lst]}") |"
    echo
    echo "(The $NLS instances were created over RCP, BATCH of 100, at $(fmt "${R[create]}")/s.)"
fi
