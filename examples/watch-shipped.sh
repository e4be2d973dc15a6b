#!/usr/bin/env bash
# watch-shipped.sh - react when an instance reaches a state, with inotifywait
# on the mount. It sees every change, whoever made it: an `echo` into an
# events file, an rstmdb client over RCP, `stmfs call`, another host.
#
# Run it on a mounted stmfs (scripts/run.sh mounts one at /tmp/stmfs-demo/mnt):
#
#     examples/watch-shipped.sh /tmp/stmfs-demo/mnt [STATE] [COUNT]
#
# STATE is the state to wait for (default shipped); after COUNT arrivals it
# exits 0 (default: runs until ^C). In another terminal ship something:
#
#     echo 'PAY {"amount":42}' > /tmp/stmfs-demo/mnt/instances/o-1/events
#     echo 'SHIP {"address":"1 Main St"}' > /tmp/stmfs-demo/mnt/instances/o-1/events
#     build/stmfs call create-instance '{"machine":"order","version":1,"instance_id":"o-9"}'
#     build/stmfs call apply-event '{"instance_id":"o-9","event":"PAY","payload":{"amount":5}}'
#     build/stmfs call apply-event '{"instance_id":"o-9","event":"SHIP","payload":{"address":"2 Elm St"}}'
#
# and this prints, once inotifywait says "Watches established." on stderr:
#
#     o-1 shipped {"address":"1 Main St","amount":42,"customer":"alice"}
#     o-9 shipped {"address":"2 Elm St","amount":5}
#
# How: stmfs makes inotify fire on instances/<id>/state, ctx.json and
# history (CLOSE_WRITE) for every transition, and a CREATE in instances/ for
# every new instance, also for changes that came over RCP. inotify says only
# that something changed, so the state is read back when it fires; an
# instance that passes through STATE faster than that read can be missed.
# When every single transition matters, read a stream instead:
# `cat MNT/instances/<id>/watch`, `cat MNT/wal/watch`, or
# `stmfs watch --to-states shipped` (RCP). inotifywait -r also keeps one
# watch per instance directory, which is fine for thousands of instances;
# for millions, use those streams.
set -euo pipefail

mnt=${1:?usage: watch-shipped.sh MOUNTPOINT [STATE] [COUNT]}
target=${2:-shipped}
count=${3:-0}
command -v inotifywait >/dev/null || {
    echo "watch-shipped.sh: needs inotifywait (apt-get install inotify-tools)" >&2
    exit 1
}

declare -A last=()   # instance -> the state it was last seen in
seen=0

# report ID: prints the instance if it has just arrived in the target state.
report() {
    local id=$1 dir=$mnt/instances/$1 state ctx
    state=$(cat "$dir/state" 2>/dev/null) || return 0 # deleted meanwhile
    if [ "$state" = "$target" ] && [ "${last[$id]:-}" != "$target" ]; then
        # One line of context; jq when it is there, else the file joined.
        if command -v jq >/dev/null; then
            ctx=$(jq -c . "$dir/ctx.json")
        else
            ctx=$(tr -d '\n' <"$dir/ctx.json")
        fi
        printf '%s %s %s\n' "$id" "$state" "$ctx"
        seen=$((seen + 1))
    fi
    last[$id]=$state
}

# What each instance is in now, so that only arrivals are reported.
for d in "$mnt"/instances/*/; do
    [ -d "$d" ] || continue
    id=$(basename "$d")
    last[$id]=$(cat "$d/state" 2>/dev/null || true)
done

# inotifywait runs beside the loop; the trap stops it when we are done.
exec {events}< <(exec inotifywait -m -r -e close_write,create --format '%e %w%f' "$mnt/instances")
watcher=$!
trap 'kill "$watcher" 2>/dev/null || true' EXIT
# A signal ends the script through exit, so the EXIT trap always runs.
trap 'exit 130' INT
trap 'exit 143' TERM

while read -r ev path <&"$events"; do
    rel=${path#"$mnt"/instances/}
    case $ev in
    CREATE,ISDIR) report "$rel" ;;               # a new instance
    CLOSE_WRITE*) [ "${rel##*/}" = state ] && report "${rel%/*}" ;;
    esac
    if [ "$count" -gt 0 ] && [ "$seen" -ge "$count" ]; then
        exit 0
    fi
done
