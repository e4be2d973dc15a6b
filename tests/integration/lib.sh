# lib.sh - the harness of the mount's integration tests, in the spirit of
# git's t/test-lib.sh. A test script reads like a user's session:
#
#   #!/usr/bin/env bash
#   test_description='what this script shows'
#   . "$(dirname "$0")/lib.sh"
#   start_mount data mnt
#   test_expect_success 'an event moves the instance on' - <<\EOT
#       echo 'PAY {"amount": 42}' >mnt/instances/o-1/events &&
#       echo paid >expect &&
#       test_cmp expect mnt/instances/o-1/state
#   EOT
#   test_done
#
# Run a script as `t-mount-basic.sh [path/to/stmfs] [-v]`; without a path it
# uses $STMFS, else the build/ or build-it/ binary of the checkout. -v (or
# STMFS_TEST_VERBOSE=1) shows every command's output. Each script works in a
# fresh directory under /tmp, prints "ok N - ..." per test and ends with
# "N passed, N failed"; it exits non-zero if any test failed. Whatever
# happens (failure, ^C, SIGTERM from meson's timeout) the exit trap unmounts
# what the script mounted and stops what it started, by pid.
#
# Test bodies are eval'd in the script's own shell (variables carry over
# from one test to the next, as in git's suite) and chain their commands
# with &&: the body's exit status is the verdict.

# shellcheck shell=bash
# shellcheck disable=SC2034  # variables here are used by the test scripts

export LC_ALL=C           # byte-order sorting and untranslated messages
export TZ=UTC
unset CDPATH

TEST_SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RCPC="$TEST_SRC_DIR/rcpc.py"

verbose=${STMFS_TEST_VERBOSE:-}
STMFS=${STMFS:-}
for arg in "$@"; do
    case $arg in
    -v | --verbose) verbose=1 ;;
    -*) ;;
    *) STMFS=$arg ;;
    esac
done
if [ -z "$STMFS" ]; then
    for cand in "$TEST_SRC_DIR/../../build/stmfs" "$TEST_SRC_DIR/../../build-it/stmfs"; do
        if [ -x "$cand" ]; then
            STMFS=$cand
            break
        fi
    done
fi
if [ -z "$STMFS" ] || [ ! -x "$STMFS" ]; then
    echo "error: no stmfs binary (pass its path, or set STMFS)" >&2
    exit 1
fi
STMFS=$(cd "$(dirname "$STMFS")" && pwd)/$(basename "$STMFS")
export STMFS

# shellcheck disable=SC2154  # set by the test script before sourcing us
[ -n "${test_description:-}" ] && printf '# %s\n' "$test_description" | sed '2,$s/^/# /'

test_count=0
test_success=0
test_failure=0
test_skipped=0
BG_PIDS=()      # background processes a test started (bg_run)
MOUNTS=()       # mountpoints this script mounted
DAEMONS=()      # pids of the stmfs daemons behind them

TEST_DIR=$(mktemp -d /tmp/stmfs-it.XXXXXX) || exit 1
cd "$TEST_DIR" || exit 1

# ---------------------------------------------------------------- cleanup

# The daemon's pid: the process whose argv is `stmfs mount DATA MNT ...`.
# It detaches, so it is not our child; it is found by its exact command
# line and only ever signalled by that pid.
daemon_pid_of() {
    local mnt=$1 p args
    for p in $(pgrep -f -- " mount .* $mnt" 2>/dev/null); do
        mapfile -d '' -t args <"/proc/$p/cmdline" 2>/dev/null || continue
        if [ "${args[1]:-}" = mount ] && [ "${args[3]:-}" = "$mnt" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# daemon_gone PID: the detached daemon has wholly exited. Its parent is
# init, which reaps it at once, so its /proc entry goes away; a zombie
# leader that stays is a process with a thread still stuck somewhere.
daemon_gone() { [ ! -e "/proc/$1" ]; }

# proc_gone PID: the process has exited (a zombie counts as gone).
proc_gone() {
    local st
    [ -r "/proc/$1/stat" ] || return 0
    st=$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 0
    [ -z "$st" ] || [ "$st" = Z ]
}

_cleanup() {
    local status=$? p m i
    trap - EXIT
    kill "$WATCHDOG_PID" 2>/dev/null
    for p in "${BG_PIDS[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "${BG_PIDS[@]}"; do
        for i in 1 2 3 4 5 6 7 8 9 10; do
            proc_gone "$p" && break
            sleep 0.1
        done
        proc_gone "$p" || kill -9 "$p" 2>/dev/null
    done
    # Something that ignores SIGKILL is stuck in a FUSE request: abort our
    # connections so that it, the daemon and the unmount can all finish.
    for p in "${BG_PIDS[@]}" "${DAEMONS[@]}"; do
        if ! proc_gone "$p" || { [ -e "/proc/$p" ] && grep -q "^D" <(cut -d" " -f3 /proc/"$p"/task/*/stat 2>/dev/null); }; then
            echo "# pid $p is stuck; aborting this script's FUSE connections"
            abort_mounts
            break
        fi
    done
    for m in "${MOUNTS[@]}"; do
        if grep -q " $m fuse" /proc/mounts; then
            fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null
        fi
    done
    for p in "${DAEMONS[@]}"; do
        for i in $(seq 50); do
            daemon_gone "$p" && break
            sleep 0.1
        done
        daemon_gone "$p" || kill -9 "$p" 2>/dev/null
    done
    cd /
    if grep -q " $TEST_DIR/" /proc/mounts; then
        # Never rm -rf into a live mount: rmdir there deletes instances.
        echo "# $TEST_DIR still has a mount in it; left in place"
    elif [ "$test_failure" -eq 0 ] && [ -z "${STMFS_TEST_KEEP:-}" ]; then
        rm -rf "$TEST_DIR"
    else
        echo "# kept $TEST_DIR for inspection"
    fi
    exit "$status"
}
# abort_mounts: aborts the FUSE connections of this script's mounts, found
# in mountinfo (which never touches the file system, so it works on a hung
# mount). Every request stuck on them fails with ENOTCONN at once.
abort_mounts() {
    local m dev
    # The control files live on fusectl, which not every system mounts.
    [ -d /sys/fs/fuse/connections ] && ! grep -q " /sys/fs/fuse/connections fusectl" /proc/mounts &&
        mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null
    for m in "${MOUNTS[@]}" $(cat "$TEST_DIR/.mounts" 2>/dev/null); do
        # mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [optional...] - FSTYPE ...
        dev=$(awk -v m="$m" '{ fs = ""; for (i = 7; i <= NF; i++) if ($i == "-") { fs = $(i + 1); break } }
                             $5 == m && fs ~ /^fuse/ { print $3 }' /proc/self/mountinfo | tail -n 1)
        [ -n "$dev" ] && echo 1 >"/sys/fs/fuse/connections/${dev#*:}/abort" 2>/dev/null
    done
    return 0
}

# The watchdog: a mount that hangs would hang the script where no trap can
# run (bash waits for the stuck command first) and leave the mount behind
# for the next script. After STMFS_TEST_TIMEOUT seconds (default 270, below
# meson's 300) it aborts our mounts, which unsticks the script, then stops it.
_watchdog() {
    local parent=$1 limit=$2 t=0
    while [ "$t" -lt "$limit" ]; do
        sleep 1
        kill -0 "$parent" 2>/dev/null || exit 0
        t=$((t + 1))
    done
    echo "# watchdog: the script ran for $limit s; aborting its mounts" >&2
    abort_mounts
    kill -TERM "$parent" 2>/dev/null
}
_watchdog $$ "${STMFS_TEST_TIMEOUT:-270}" </dev/null >/dev/null &
WATCHDOG_PID=$!

trap _cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

# ---------------------------------------------------------------- tests

# Prerequisites name the tools a block needs; a block whose tools are
# missing is skipped with a message, never failed.
declare -A _prereq_set=()
test_set_prereq() { _prereq_set[$1]=1; }
test_have_prereq() {
    local p
    local IFS=,
    for p in $1; do
        case $p in
        JQ) command -v jq >/dev/null ;;
        INOTIFY) command -v inotifywait >/dev/null ;;
        ENTR) command -v entr >/dev/null ;;
        DOT) command -v dot >/dev/null ;;
        PYTHON) command -v python3 >/dev/null ;;
        VIM) command -v vim >/dev/null ;;
        *) [ -n "${_prereq_set[$p]:-}" ] ;;
        esac || return 1
    done
}

say() { printf '%s\n' "$*"; }

# A body runs in a function, in this shell: variables carry over to the
# next test, and a body leaves early with `return 1`, never `exit`.
_test_eval() { eval "$1"; }

# test_expect_success [PREREQS] 'description' 'body'
# test_expect_success [PREREQS] 'description' - <<\EOT ... EOT
# (the second form reads the body from a here-document, so that JSON with
# its quotes can be written as a user would type it).
test_expect_success() {
    local prereq='' desc body log
    [ $# -eq 3 ] && { prereq=$1; shift; }
    desc=$1 body=$2
    [ "$body" = - ] && body=$(cat)
    test_count=$((test_count + 1))
    if [ -n "$prereq" ] && ! test_have_prereq "$prereq"; then
        test_skipped=$((test_skipped + 1))
        say "ok $test_count # skip $desc (missing $prereq)"
        return 0
    fi
    log="$TEST_DIR/.log.$test_count"
    local rc
    if [ -n "$verbose" ]; then
        say "expecting success: $body"
        _test_eval "$body" </dev/null > >(tee "$log") 2>&1
        rc=$?
    else
        _test_eval "$body" </dev/null >"$log" 2>&1
        rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
        test_success=$((test_success + 1))
        say "ok $test_count - $desc"
    else
        test_failure=$((test_failure + 1))
        say "not ok $test_count - $desc"
        printf '%s\n' "$body" | sed 's/^/#	/'
        if [ -s "$log" ] && [ -z "$verbose" ]; then
            say "# output:"
            tail -n 40 "$log" | sed 's/^/#   /'
        fi
    fi
    cd "$TEST_DIR" || exit 1
}

# Skips every remaining test of the script with a reason.
skip_all() {
    say "1..0 # SKIP $*"
    say "0 passed, 0 failed"
    test_failure=0
    exit 0
}

test_done() {
    say "# $test_skipped skipped"
    say "$test_success passed, $test_failure failed"
    [ "$test_failure" -eq 0 ]
    exit $?
}

# ---------------------------------------------------------------- helpers

# test_cmp EXPECTED ACTUAL: identical, else show the difference.
test_cmp() { diff -u "$1" "$2"; }

# test_must_fail CMD...: CMD ran and failed on its own (exit 1..125), it was
# not killed by a signal, not missing, and did not hang past the harness.
test_must_fail() {
    "$@"
    local rc=$?
    if [ $rc -eq 0 ]; then
        echo "test_must_fail: command succeeded: $*" >&2
        return 1
    elif [ $rc -gt 125 ]; then
        echo "test_must_fail: command died or was not found ($rc): $*" >&2
        return 1
    fi
    return 0
}

# test_must_be_empty FILE
test_must_be_empty() {
    if [ -s "$1" ]; then
        echo "'$1' is not empty:" >&2
        cat "$1" >&2
        return 1
    fi
}

# test_line_count OP N FILE: e.g. test_line_count = 3 history
test_line_count() {
    local n
    n=$(wc -l <"$3")
    if ! test "$n" "$1" "$2"; then
        echo "test_line_count: $3 has $n lines, expected $1 $2:" >&2
        head -n 20 "$3" >&2
        return 1
    fi
}

# test_poll SECONDS 'shell condition': retries the condition every 0.1 s.
# Used instead of fixed sleeps: fast when the machine is fast, patient when
# it is busy.
test_poll() {
    local deadline=$((SECONDS + $1))
    while ! eval "$2"; do
        if [ "$SECONDS" -gt "$deadline" ]; then
            echo "test_poll: still false after $1 s: $2" >&2
            return 1
        fi
        sleep 0.1
    done
}

# write_line FILE TEXT: what `echo TEXT > FILE` does, as a command that
# test_must_fail can run (the shell prints "write error: ..." on failure).
write_line() { echo "$2" >"$1"; }

# bg_run VAR CMD...: starts CMD in the background, stores its pid in VAR;
# the exit trap stops it if the test does not.
bg_run() {
    local var=$1
    shift
    # <&0: an explicit stdin, or bash gives background jobs /dev/null
    # (entr reads the list of files to watch from stdin).
    "$@" <&0 &
    local pid=$!
    BG_PIDS+=("$pid")
    printf -v "$var" '%s' "$pid"
}

# bg_stop PID: SIGTERM, and it must be gone within 5 s (a reader parked in
# the mount must stay killable); reaps it. Fails if it had to be SIGKILLed.
bg_stop() {
    kill "$1" 2>/dev/null
    if ! test_poll 5 "proc_gone $1"; then
        echo "bg_stop: pid $1 ignored SIGTERM for 5 s" >&2
        kill -9 "$1" 2>/dev/null
        wait "$1" 2>/dev/null
        return 1
    fi
    wait "$1" 2>/dev/null
    return 0
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_mount DATA MNT [flags...]: `stmfs mount DATA MNT --bind 127.0.0.1:PORT
# flags...`, as a user runs it (it detaches once the mount is ready); then
# waits until both the mount and RCP answer. Sets PORT, RCP_ADDR and
# STMFS_PID (the daemon). Its messages go to DATA.mount-out.
start_mount() {
    local data=$1 mnt=$2
    shift 2
    mkdir -p "$data" "$mnt" || return 1
    data=$(cd "$data" && pwd)
    mnt=$(cd "$mnt" && pwd)
    PORT=$(free_port) || return 1
    RCP_ADDR=127.0.0.1:$PORT
    if ! "$STMFS" mount "$data" "$mnt" --bind "$RCP_ADDR" "$@" >"$data.mount-out" 2>&1; then
        echo "start_mount: stmfs mount failed:" >&2
        cat "$data.mount-out" >&2
        return 1
    fi
    MOUNTS+=("$mnt")
    echo "$mnt" >>"$TEST_DIR/.mounts"
    STMFS_PID=$(daemon_pid_of "$mnt") || STMFS_PID=
    [ -n "$STMFS_PID" ] && DAEMONS+=("$STMFS_PID")
    test_poll 20 "mountpoint -q '$mnt' && ls '$mnt/machines' >/dev/null" || return 1
    python3 "$RCPC" --addr "$RCP_ADDR" wait 20 || {
        echo "start_mount: RCP does not answer on $RCP_ADDR" >&2
        return 1
    }
    [ -n "$STMFS_PID" ] || { echo "start_mount: daemon pid not found" >&2; return 1; }
}

# stop_mount MNT: fusermount3 -u, then the daemon must exit within 20 s.
stop_mount() {
    local mnt pid
    mnt=$(cd "$1" && pwd)
    pid=$(daemon_pid_of "$mnt")
    fusermount3 -u "$mnt" || return 1
    [ -z "$pid" ] || test_poll 20 "daemon_gone $pid"
}

# rcp_call OP [PARAMS-JSON]: one RCP request to the mounted daemon. Prints
# the result (or, failing with status 1, the error object) as compact JSON.
# STMFS_RCP_CLIENT=call uses `stmfs call` instead of the test's own client.
rcp_call() {
    if [ "${STMFS_RCP_CLIENT:-}" = call ]; then
        # stmfs call prints an error as "error: CODE: message" on stderr;
        # give the tests the same error object the test client prints.
        local rc
        "$STMFS" call --addr "$RCP_ADDR" "$1" "${2:-{\}}" 2>"$TEST_DIR/.call-err"
        rc=$?
        cat "$TEST_DIR/.call-err" >&2
        if [ "$rc" -eq 1 ]; then
            python3 -c 'import json, re, sys
m = re.match(r"error: ([A-Z_]+): (.*)", sys.stdin.read())
print(json.dumps({"code": m.group(1), "message": m.group(2)}) if m else "{}")' <"$TEST_DIR/.call-err"
        fi
        return "$rc"
    else
        python3 "$RCPC" --addr "$RCP_ADDR" "$1" "${2:-{\}}"
    fi
}
rcp() { rcp_call "$@"; }

# jq -e FILTER: jq 1.6 exits 0 when its input is empty, so an assertion
# such as `jq -e '.state == "paid"' got` would pass on an empty file. With
# -e first, this wrapper also fails when jq printed nothing.
jq() {
    if [ "${1:-}" = -e ]; then
        local out rc
        out=$(command jq "$@")
        rc=$?
        [ -n "$out" ] && printf '%s\n' "$out"
        [ "$rc" -eq 0 ] && [ -n "$out" ]
        return
    fi
    command jq "$@"
}

# A machine most tests use: an order that is paid, shipped (only when it
# has an amount) or cancelled.
order_definition() {
    cat <<'EOF'
{
  "states": ["created", "paid", "shipped", "cancelled"],
  "initial": "created",
  "transitions": [
    {"from": "created", "event": "PAY", "to": "paid"},
    {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"},
    {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"}
  ]
}
EOF
}

# A machine that can take the same event forever (writers, durability).
ticker_definition() {
    cat <<'EOF'
{"states": ["on"], "initial": "on", "transitions": [{"from": "on", "event": "TICK", "to": "on"}]}
EOF
}
