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
# Each cell runs RUNS times; every run starts a fresh `stmfs serve` on an
# empty data directory and measures the null server and then stmfs back to
# back with the same flags, so both see the same machine state. A run that
# fails shows as "fail" in its cell (the reason is printed at the end). The data directories live under /tmp (a real disk here, not
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
    # (wait reports the killed child's 143; that must not become ours)
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; fi
    if [ -n "$null_pid" ]; then kill "$null_pid" 2>/dev/null; wait "$null_pid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
    return 0
}
trap cleanup EXIT

wait_port() { # until PING answers on the port (at most 10 s); PING writes nothing
    for _ in $(seq 100); do
        "$STMFS" call --addr "127.0.0.1:$1" ping >/dev/null 2>&1 && return 0
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
# Something else answering on the port would be measured instead: check.
kill -0 "$null_pid" 2>/dev/null || { echo "rcp.sh: the null server did not start:" >&2; cat "$work/null.log" >&2; exit 1; }

bench() { # addr conns depth -> one rcpbench line, or a line with ops_per_sec=fail
    "$RCPBENCH" --addr "$1" --connections "$2" --pipeline "$3" --mix "$MIX" \
        --duration "$DURATION" --warmup "$WARMUP" 2>>"$work/bench.err" ||
        echo "rcpbench failed ops_per_sec=fail p50_ms=fail p99_ms=fail errors=0"
}

start_server() { # policy -> a fresh stmfs serve on a new data directory
    run=$((run + 1))
    "$STMFS" serve "$work/data-$run" -c "$work/$1.yaml" --bind "127.0.0.1:$PORT" \
        >"$work/serve-$run.log" 2>&1 &
    server_pid=$!
    wait_port "$PORT" || { cat "$work/serve-$run.log" >&2; exit 1; }
}

stop_server() { # SIGTERM, and SIGKILL if it has not stopped within 10 s
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "rcp.sh: stmfs serve ignored SIGTERM for 10 s; killed" >>"$work/bench.err"
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    [ "${KEEP:-0}" = 1 ] || rm -rf "$work/data-$run"
}

# median of the numbers on stdin; "fail" when any run failed
mid() { local v; v=$(cat); if grep -q fail <<<"$v"; then echo fail; else median <<<"$v"; fi; }
num() { case $2 in fail) printf fail ;; *) printf "$1" "$2" ;; esac; }

run=0
echo "# rcp.sh: $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, mix $MIX, ${DURATION}s runs after ${WARMUP}s warmup, medians of $RUNS" >&2
printf '| fsync | conns | depth | stmfs ops/s | p50 ms | p99 ms | null ops/s | null p50 ms | null p99 ms | stmfs / null | writes / fsync |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for policy in $POLICIES; do
    printf 'storage:\n  fsync_policy: %s\n' "$policy" >"$work/$policy.yaml"
    for c in $CONNS; do
        for d in $DEPTHS; do
            : >"$work/s" && : >"$work/n" && : >"$work/g"
            for _ in $(seq "$RUNS"); do
                # A fresh server and data directory per run: every run starts
                # from the same empty state, and one run cannot disturb the next.
                start_server "$policy"
                bench "127.0.0.1:$NULL_PORT" "$c" "$d" >>"$work/n"
                bench "127.0.0.1:$PORT" "$c" "$d" >>"$work/s"
                # How many records each fdatasync carried, over the whole run
                # (setup and warmup included): the group commit at work.
                "$STMFS" call --addr "127.0.0.1:$PORT" wal_stats 2>/dev/null |
                    awk -F'[:,]' '/"writes"/ {w=$2} /"fsyncs"/ {f=$2}
                        END {if (f > 0) printf "%.1f\n", w/f; else print "-"}' >>"$work/g"
                stop_server
                echo "  $policy c=$c d=$d: stmfs $(tail -1 "$work/s" | tr ' ' '\n' | grep -E '^(ops_per_sec|p50_ms|p99_ms|errors)=' | tr '\n' ' ')| null $(tail -1 "$work/n" | tr ' ' '\n' | grep -E '^(ops_per_sec|p99_ms)=' | tr '\n' ' ')" >&2
            done
            s_ops=$(field ops_per_sec <"$work/s" | mid)
            s_p50=$(field p50_ms <"$work/s" | mid)
            s_p99=$(field p99_ms <"$work/s" | mid)
            n_ops=$(field ops_per_sec <"$work/n" | mid)
            n_p50=$(field p50_ms <"$work/n" | mid)
            n_p99=$(field p99_ms <"$work/n" | mid)
            errs=$(field errors <"$work/s" | awk '{t+=$1} END {print t+0}')
            ratio=$(awk -v a="$s_ops" -v b="$n_ops" 'BEGIN {if (a == "fail" || b == "fail" || !b) print "-"; else printf "%.0f%%", 100*a/b}')
            [ "$errs" = 0 ] || ratio="$ratio ($errs errors)"
            group=$(grep -v -- - "$work/g" || true)
            [ -z "$group" ] || group=$(median <<<"$group")
            # under never the only fdatasyncs are at rotation: no group commit to show
            [ "$policy" != never ] || group=-
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$policy" "$c" "$d" \
                "$(num %.0f "$s_ops")" "$(num %.3f "$s_p50")" "$(num %.3f "$s_p99")" \
                "$(num %.0f "$n_ops")" "$(num %.3f "$n_p50")" "$(num %.3f "$n_p99")" "$ratio" \
                "${group:--}"
        done
    done
done
[ -s "$work/bench.err" ] && { echo "rcp.sh: rcpbench said:" >&2; sort "$work/bench.err" | uniq -c | sort -rn | head -5 >&2; }
exit 0
