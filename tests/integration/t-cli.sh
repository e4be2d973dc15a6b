#!/usr/bin/env bash
# t-cli.sh - the command-line tools a script on another host uses:
# `stmfs call`, `stmfs watch`, `stmfs wal`, `stmfs replay`, against a real
# `stmfs serve` on loopback. Each block is one behaviour a user relies on.
#
#   t-cli.sh STMFS_BINARY
set -u
STMFS=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
T=$(mktemp -d /tmp/stmfs-cli-XXXXXX)
passed=0 failed=0
SERVER='' WATCHER=''
cleanup() {
    [ -n "$WATCHER" ] && kill "$WATCHER" 2>/dev/null
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT

expect() { # expect DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        echo "ok - $what"
    else
        failed=$((failed + 1))
        echo "not ok - $what"
    fi
}

# started from a shell with a low soft limit of descriptors, which serve
# raises to the hard one (the log keeps its segments open)
(ulimit -Sn 256 && exec "$STMFS" serve "$T/data" --bind 127.0.0.1:0 >"$T/serve.out" 2>"$T/serve.err") &
SERVER=$!
for _ in $(seq 100); do
    ADDR=$(sed -n 's/^listening on //p' "$T/serve.out" | head -1)
    [ -n "$ADDR" ] && break
    sleep 0.1
done
call() { "$STMFS" call --addr "$ADDR" "$@"; }

expect "serve prints the address it bound" test -n "$ADDR"
expect "serve raises its soft limit of open files to the hard one" \
    awk '/^Max open files/ { exit !($4 == $5) }' "/proc/$SERVER/limits"
expect "call ping answers" sh -c "'$STMFS' call --addr $ADDR ping | grep -q pong"
expect "call put-machine defines a machine" sh -c "'$STMFS' call --addr $ADDR put-machine \
  '{\"machine\":\"order\",\"version\":1,\"definition\":{\"states\":[\"created\",\"paid\"],\"initial\":\"created\",\"transitions\":[{\"from\":\"created\",\"event\":\"PAY\",\"to\":\"paid\"}]}}' \
  | grep -q '\"created\": true'"
echo '{"machine":"order","version":1,"instance_id":"o-1","initial_ctx":{"who":"ann"}}' >"$T/create.json"
expect "call reads params from @FILE" sh -c "'$STMFS' call --addr $ADDR CREATE_INSTANCE @$T/create.json | grep -q '\"state\": \"created\"'"

"$STMFS" watch --addr "$ADDR" --instance o-1 >"$T/watch.out" 2>"$T/watch.err" &
WATCHER=$!
sleep 0.5
expect "call apply_event moves the instance" sh -c "echo '{\"instance_id\":\"o-1\",\"event\":\"PAY\"}' | '$STMFS' call --addr $ADDR apply_event - | grep -q '\"to_state\": \"paid\"'"
for _ in $(seq 50); do grep -q PAY "$T/watch.out" && break; sleep 0.1; done
expect "watch prints the event as one JSON line" sh -c "grep -c '\"event\":\"PAY\"' '$T/watch.out' | grep -qx 1"
kill -INT "$WATCHER"
wait "$WATCHER"
rc=$?
WATCHER=
expect "watch exits 0 on SIGINT" test "$rc" -eq 0

"$STMFS" call --addr "$ADDR" apply_event '{"instance_id":"o-1","event":"PAY"}' >"$T/out" 2>"$T/err"
rc=$?
expect "a refused event exits 1" test "$rc" -eq 1
expect "and says the code and why on stderr" grep -q "error: INVALID_TRANSITION: .*cannot apply 'PAY' in state 'paid'" "$T/err"
"$STMFS" call --addr "$ADDR" --bogus ping >/dev/null 2>&1
expect "an unknown flag is bad usage (exit 2)" test $? -eq 2
"$STMFS" call --addr "$ADDR" get_instance '{not json' >/dev/null 2>"$T/err"
expect "malformed params are bad usage (exit 2)" test $? -eq 2
"$STMFS" watch --addr "$ADDR" --from-offset minus-one >/dev/null 2>&1
expect "a bad --from-offset is bad usage (exit 2)" test $? -eq 2

# replay from the beginning: the catch-up stream holds both records of o-1
timeout 5 "$STMFS" watch --addr "$ADDR" --from-offset 1 >"$T/replay.out" 2>/dev/null &
WATCHER=$!
for _ in $(seq 50); do grep -q PAY "$T/replay.out" && break; sleep 0.1; done
kill -INT "$WATCHER" 2>/dev/null
wait "$WATCHER" 2>/dev/null
WATCHER=
expect "watch --from-offset replays earlier events" grep -q '"event":"PAY"' "$T/replay.out"

# A busy port, metrics or RCP: the message names the listener that failed.
# The running server's port is the busy one.
STMFS_METRICS_ENABLED=true STMFS_METRICS_BIND=$ADDR timeout 20 "$STMFS" serve "$T/data2" \
    --bind 127.0.0.1:0 >/dev/null 2>"$T/err"
expect "serve with a busy metrics port exits 1" test $? -eq 1
expect "and names the metrics listener and its address" grep -qx \
    "stmfs serve: cannot start the metrics listener on $ADDR (metrics.bind_addr): Address already in use" "$T/err"
mkdir -p "$T/mnt"
STMFS_METRICS_ENABLED=true STMFS_METRICS_BIND=$ADDR timeout 20 "$STMFS" mount "$T/data2" "$T/mnt" \
    --bind 127.0.0.1:0 >/dev/null 2>"$T/err"
expect "mount with a busy metrics port exits 1" test $? -eq 1
expect "and names the metrics listener and its address" grep -qx \
    "stmfs mount: cannot start the metrics listener on $ADDR (metrics.bind_addr): Address already in use" "$T/err"
timeout 20 "$STMFS" serve "$T/data2" --bind "$ADDR" >/dev/null 2>"$T/err"
expect "a busy RCP port names the RCP listener" grep -qx \
    "stmfs serve: cannot start the RCP listener on $ADDR: Address already in use" "$T/err"

kill "$SERVER"
wait "$SERVER"
rc=$?
SERVER=
expect "serve exits 0 on SIGTERM" test "$rc" -eq 0

"$STMFS" wal verify "$T/data" >"$T/verify.out"
expect "wal verify calls the log intact and prints its head" grep -q '^head: [0-9]*:[0-9a-f]\{64\}' "$T/verify.out"
head=$(sed -n 's/^head: \([^ ]*\).*/\1/p' "$T/verify.out")
expect "wal verify --expect accepts the head it printed" sh -c "'$STMFS' wal verify '$T/data' --expect $head >/dev/null"
expect "wal dump prints one JSON line per record" sh -c "'$STMFS' wal dump '$T/data' | jq -e .sequence >/dev/null"
off=$("$STMFS" wal dump "$T/data" | jq -r 'select(.entry.type=="apply_event") | .offset' | head -1)
expect "replay --at just before the event shows the old state" sh -c "'$STMFS' replay '$T/data' --at $((off - 1)) --instance o-1 | grep -q '\"state\": \"created\"'"
expect "replay --at the event shows the new state" sh -c "'$STMFS' replay '$T/data' --at $off --instance o-1 | grep -q '\"state\": \"paid\"'"
expect "replay --verify agrees with recovery" sh -c "'$STMFS' replay '$T/data' --verify | grep -q identical"

# a log with more segments than the hard limit of open files: the refusal
# says what to raise (the segments are empty files after the last one,
# which recovery accepts)
cp -r "$T/data" "$T/data-fds"
last=$(find "$T/data-fds/wal" -name '*.wal' | sort | tail -1)
first_new=$((16#$(basename "$last" .wal) + 1))
for i in $(seq "$first_new" $((first_new + 80))); do
    : >"$T/data-fds/wal/$(printf '%016x' "$i").wal"
done
(ulimit -n 64 && exec "$STMFS" serve "$T/data-fds" --bind 127.0.0.1:0) >/dev/null 2>"$T/err"
expect "a log past the hard limit of open files is refused (exit 1)" test $? -eq 1
expect "and the message says which limit to raise" \
    grep -q "Too many open files (the log keeps a descriptor per segment: raise ulimit -n or LimitNOFILE=, or compact the log)" "$T/err"
(ulimit -Sn 64 && exec "$STMFS" wal verify "$T/data-fds") >/dev/null 2>&1
expect "below the hard limit the same log opens" test $? -eq 0

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
