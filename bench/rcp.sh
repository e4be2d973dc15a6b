#!/usr/bin/env bash
# bench/rcp.sh - the RCP benchmark (issue 4): rcpbench against `stmfs serve`
# under fsync_policy every_write and never, beside rcpbench against its own
# null server in the same run. Prints a Markdown table for bench/README.md.
#
#   bench/rcp.sh [BUILD_DIR]        default BUILD_DIR: build
#
# Needs BUILD_DIR/stmfs and BUILD_DIR/bench/rcpbench.
# Knobs (environment): RUNS=3 (medians of this many runs), DURATION=5 and
# WARMUP=1 (seconds per run), CONNS="1 16 64", DEPTHS="1 32",
# POLICIES="every_write never", MIX=1:1:0 (create:apply:get),
# PORT=7601 (stmfs; the null server uses PORT+1), KEEP=1 keeps the data.
#
# Each cell runs RUNS times; every run measures the null server and then
# stmfs back to back with the same flags, so both see the same machine
# state. The data directories live under /tmp (a real disk here, not
# tmpfs, so every_write pays for real fsyncs).
set -euo pipefail
export LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
STMFS=$build/stmfs
RCPBENCH=$build/bench/rcpbench
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-"1 16 64"}
DEPTHS=${DEPTHS:-"1 32"}
POLICIES=${POLICIES:-"every_write never"}
MIX=${MIX:-1:1:0}
PORT=${PORT:-7601}
NULL_PORT=$((PORT + 1))

for f in "$STMFS" "$RCPBENCH"; do
    [ -x "$f" ] || { echo "rcp.sh: $f missing (ninja -C $build stmfs bench/rcpbench)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/stmfs-rcpbench.XXXXXX)
server_pid=
null_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [ -n "$null_pid" ] && kill "$null_pid" 2>/dev/null && wait "$null_pid" 2>/dev/null
    [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
    # until something answers a PING on the port (at most 10 s)
    for _ in $(seq 100); do
        if "$RCPBENCH" --addr "127.0.0.1:$1" --connections 1 --duration 0.01 --warmup 0 \
            --mix 0:0:1 >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "rcp.sh: nothing answers on 127.0.0.1:$1" >&2
    return 1
}

# key=value field of rcpbench's output line
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

"$RCPBENCH" --null-server "127.0.0.1:$NULL_PORT" 2>"$work/null.log" &
null_pid=$!
wait_port "$NULL_PORT"

bench() { # addr conns depth -> one rcpbench line
    "$RCPBENCH" --addr "$1" --connections "$2" --pipeline "$3" --mix "$MIX" \
        --duration "$DURATION" --warmup "$WARMUP"
}

echo "# rcp.sh: $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), mix $MIX, ${DURATION}s runs, medians of $RUNS" >&2
printf '| fsync | conns | depth | stmfs ops/s | p50 ms | p99 ms | null ops/s | null p50 ms | null p99 ms | stmfs / null |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for policy in $POLICIES; do
    data=$work/data-$policy
    printf 'storage:\n  fsync_policy: %s\n' "$policy" >"$work/$policy.yaml"
    "$STMFS" serve "$data" -c "$work/$policy.yaml" --bind "127.0.0.1:$PORT" \
        2>"$work/serve-$policy.log" &
    server_pid=$!
    wait_port "$PORT" || { cat "$work/serve-$policy.log" >&2; exit 1; }
    for c in $CONNS; do
        for d in $DEPTHS; do
            : >"$work/s" && : >"$work/n"
            for _ in $(seq "$RUNS"); do
                bench "127.0.0.1:$NULL_PORT" "$c" "$d" >>"$work/n"
                bench "127.0.0.1:$PORT" "$c" "$d" >>"$work/s"
                echo "  $policy c=$c d=$d: $(tail -1 "$work/s" | cut -d' ' -f9-13)" >&2
            done
            s_ops=$(field ops_per_sec <"$work/s" | median)
            s_p50=$(field p50_ms <"$work/s" | median)
            s_p99=$(field p99_ms <"$work/s" | median)
            n_ops=$(field ops_per_sec <"$work/n" | median)
            n_p50=$(field p50_ms <"$work/n" | median)
            n_p99=$(field p99_ms <"$work/n" | median)
            errs=$(field errors <"$work/s" | awk '{t+=$1} END {print t+0}')
            ratio=$(awk -v a="$s_ops" -v b="$n_ops" 'BEGIN {printf "%.0f%%", b ? 100*a/b : 0}')
            [ "$errs" = 0 ] || ratio="$ratio ($errs errors)"
            printf '| %s | %s | %s | %.0f | %.3f | %.3f | %.0f | %.3f | %.3f | %s |\n' \
                "$policy" "$c" "$d" "$s_ops" "$s_p50" "$s_p99" "$n_ops" "$n_p50" "$n_p99" "$ratio"
        done
    done
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
done
