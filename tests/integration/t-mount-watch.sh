#!/usr/bin/env bash
# Test bodies are here-documents eval'd by lib.sh; shellcheck cannot see
# the variables they use.
# shellcheck disable=SC2034,SC2016,SC2317
test_description='following changes: tail -f history, cat watch, poll(2),
inotifywait and entr, for changes made in the mount and over RCP'
. "$(dirname "$0")/lib.sh"

M=$TEST_DIR/mnt
I=$M/instances
O=$M/machines/order
T=$M/machines/tick

test_have_prereq PYTHON || skip_all "needs python3 (the RCP client)"

# tick_until_seen OUT MARK: a watch shows what happens after it is opened,
# and a background reader may not have opened it yet: tick t-1 with MARK
# in the payload until OUT shows it.
tick_until_seen() {
    local deadline=$((SECONDS + 20))
    until grep -q "$2" "$1"; do
        [ "$SECONDS" -le "$deadline" ] || return 1
        echo "TICK {\"m\": \"$2\"}" >"$I/t-1/events" || return 1
        sleep 0.2
    done
}

test_expect_success 'setup: a mount with an order machine and a ticker' - <<\EOT
    start_mount data mnt &&
    mkdir "$O" "$T" &&
    order_definition >order.json &&
    cp order.json "$O/definition.json" &&
    ticker_definition >tick.json &&
    cp tick.json "$T/definition.json" &&
    echo t-1 >"$T/new" &&
    test -d "$I/t-1"
EOT

test_expect_success 'tail -f history follows new lines, from the mount and from RCP' - <<\EOT
    bg_run tailer tail -f "$I/t-1/history" >tail.out 2>tail.err &&
    test_poll 10 "[ \$(wc -l <tail.out) -ge 1 ]" &&
    echo 'TICK {"from": "mount"}' >"$I/t-1/events" &&
    test_poll 10 "grep -q mount tail.out" &&
    rcp_call APPLY_EVENT '{"instance_id":"t-1","event":"TICK","payload":{"from":"rcp"}}' &&
    test_poll 10 "grep -q rcp tail.out" &&
    bg_stop "$tailer" &&
    test_line_count = 3 tail.out &&
    test_cmp "$I/t-1/history" tail.out
EOT

test_expect_success 'cat instances/<id>/watch streams new history lines and can be killed' - <<\EOT
    bg_run catter cat "$I/t-1/watch" >watch.out 2>watch.err &&
    tick_until_seen watch.out first &&
    rcp_call APPLY_EVENT '{"instance_id":"t-1","event":"TICK","payload":{"m":"over-rcp"}}' &&
    test_poll 10 "grep -q over-rcp watch.out" &&
    echo 'TICK {"m": "in-mount"}' >"$I/t-1/events" &&
    test_poll 10 "grep -q in-mount watch.out" &&
    ! proc_gone "$catter" &&
    bg_stop "$catter"
EOT

test_expect_success JQ 'watch lines are history lines' - <<\EOT
    while read -r line; do
        printf "%s\n" "$line" | jq -e . >/dev/null || return 1
        grep -qxF "$line" "$I/t-1/history" || { echo "not in history: $line"; return 1; }
    done <watch.out
EOT

test_expect_success 'a reader parked in watch dies of SIGKILL, and timeout(1) ends one' - <<\EOT
    bg_run catter cat "$I/t-1/watch" >/dev/null &&
    : "wait until cat sits in read(2) or copy_file_range(2) (syscall 0 or 326)" &&
    test_poll 10 "grep -qE \"^(0|326) \" /proc/$catter/syscall" &&
    kill -KILL "$catter" &&
    test_poll 5 "proc_gone $catter" &&
    { timeout 1 cat "$I/t-1/watch"; test $? = 124; }
EOT

test_expect_success 'cat wal/watch streams every new entry, whoever made it' - <<\EOT
    bg_run catter cat "$M/wal/watch" >wal.out 2>wal.err &&
    tick_until_seen wal.out wal-first &&
    echo t-2 >"$T/new" &&
    test_poll 10 "grep -q t-2 wal.out" &&
    rcp_call APPLY_EVENT '{"instance_id":"t-2","event":"TICK","payload":{"m":"wal-rcp"}}' &&
    test_poll 10 "grep -q wal-rcp wal.out" &&
    bg_stop "$catter"
EOT

test_expect_success 'tail -f wal/entries follows the log' - <<\EOT
    bg_run tailer tail -n 0 -f "$M/wal/entries" >tailw.out 2>tailw.err &&
    test_poll 10 "[ -e /proc/$tailer/fd/3 ]" &&
    tick_until_seen tailw.out wal-tail &&
    echo t-3 >"$T/new" &&
    test_poll 10 "grep -q t-3 tailw.out" &&
    bg_stop "$tailer"
EOT

test_expect_success 'poll(2) on a watch file waits, then wakes when a change comes' - <<\EOT
    python3 - "$I/t-1/watch" "$RCPC" "$RCP_ADDR" <<-\PY
	import os, select, subprocess, sys
	watch, rcpc, addr = sys.argv[1:]
	fd = os.open(watch, os.O_RDONLY)
	p = select.poll()
	p.register(fd, select.POLLIN)
	ready = p.poll(300)
	assert ready == [], "readable before anything happened: %r" % ready
	subprocess.run([sys.executable, rcpc, "--addr", addr, "APPLY_EVENT",
	                '{"instance_id":"t-1","event":"TICK","payload":{"m":"polled"}}'],
	               check=True, stdout=subprocess.DEVNULL)
	ready = p.poll(20000)
	assert ready and ready[0][1] & select.POLLIN, "poll did not wake: %r" % ready
	data = os.read(fd, 65536)
	assert b"polled" in data, data
	os.close(fd)
	PY
EOT

# Which inotify event a change shows as (MODIFY, CLOSE_WRITE, ATTRIB, ...)
# is the mount's choice; that it fires, and on the right names, is the test.
start_inotify() {
    bg_run inw inotifywait -m -e modify,attrib,close_write,create,delete,moved_to,moved_from \
        --format '%e %w%f' "$@" >inotify.out 2>inotify.err &&
        test_poll 10 "grep -q 'Watches established' inotify.err"
}

test_expect_success INOTIFY 'inotifywait on an instance fires for a transition made in the mount' - <<\EOT
    echo i-1 >"$O/new" &&
    start_inotify "$I/i-1" &&
    echo 'PAY {"amount": 5}' >"$I/i-1/events" &&
    test_poll 10 "grep -q ' $I/i-1/state\$' inotify.out" &&
    test_poll 10 "grep -q ' $I/i-1/history\$' inotify.out" &&
    test_poll 10 "grep -q ' $I/i-1/ctx.json\$' inotify.out" &&
    bg_stop "$inw"
EOT

test_expect_success INOTIFY 'inotifywait on an instance fires for a transition made over RCP' - <<\EOT
    start_inotify "$I/i-1" &&
    rcp_call APPLY_EVENT '{"instance_id":"i-1","event":"SHIP","payload":{"by":"rcp"}}' &&
    test_poll 10 "grep -q ' $I/i-1/state\$' inotify.out" &&
    test_poll 10 "grep -q ' $I/i-1/history\$' inotify.out" &&
    test_poll 10 "grep -q ' $I/i-1/ctx.json\$' inotify.out" &&
    bg_stop "$inw"
EOT

test_expect_success INOTIFY 'inotifywait on the files themselves fires for an RCP transition' - <<\EOT
    echo i-2 >"$O/new" &&
    start_inotify "$I/i-2/state" "$I/i-2/ctx.json" "$I/i-2/history" &&
    rcp_call APPLY_EVENT '{"instance_id":"i-2","event":"PAY","payload":{"amount":1}}' &&
    test_poll 10 "grep -q ' $I/i-2/state\$' inotify.out" &&
    test_poll 10 "grep -q ' $I/i-2/ctx.json\$' inotify.out" &&
    test_poll 10 "grep -q ' $I/i-2/history\$' inotify.out" &&
    bg_stop "$inw"
EOT

test_expect_success INOTIFY 'an event that changes neither state nor context fires on history only' - <<\EOT
    start_inotify "$I/t-1/state" "$I/t-1/ctx.json" "$I/t-1/history" &&
    echo TICK >"$I/t-1/events" &&
    test_poll 10 "grep -q ' $I/t-1/history\$' inotify.out" &&
    : "the helper touches state and ctx.json before history, so by now they would show" &&
    ! grep -e " $I/t-1/state\$" -e " $I/t-1/ctx.json\$" inotify.out &&
    echo 'TICK {"seen": 1}' >"$I/t-1/events" &&
    test_poll 10 "grep -q ' $I/t-1/ctx.json\$' inotify.out" &&
    ! grep -q " $I/t-1/state\$" inotify.out &&
    bg_stop "$inw"
EOT

# The helper touches the changed files of many instances in one go: each
# of them fires, whichever of the batch it came in.
test_expect_success INOTIFY 'one BATCH over RCP changing several instances fires for each' - <<\EOT
    for id in b-1 b-2 b-3 b-4 b-5; do echo $id; done >"$O/new" &&
    start_inotify "$I/b-1" "$I/b-2" "$I/b-3" "$I/b-4" "$I/b-5" &&
    rcp_call BATCH '{"mode":"atomic","ops":[
        {"op":"APPLY_EVENT","params":{"instance_id":"b-1","event":"PAY"}},
        {"op":"APPLY_EVENT","params":{"instance_id":"b-2","event":"PAY"}},
        {"op":"APPLY_EVENT","params":{"instance_id":"b-3","event":"CANCEL"}},
        {"op":"APPLY_EVENT","params":{"instance_id":"b-4","event":"PAY","payload":{"n":4}}},
        {"op":"APPLY_EVENT","params":{"instance_id":"b-5","event":"PAY"}}]}' >/dev/null &&
    for id in b-1 b-2 b-3 b-4 b-5; do
        test_poll 10 "grep -q ' $I/$id/state\$' inotify.out" &&
        test_poll 10 "grep -q ' $I/$id/history\$' inotify.out" || return 1
    done &&
    test_poll 10 "grep -q ' $I/b-4/ctx.json\$' inotify.out" &&
    bg_stop "$inw"
EOT

test_expect_success INOTIFY 'creating an instance fires in instances/, by new and by RCP' - <<\EOT
    start_inotify "$I" &&
    echo c-1 >"$O/new" &&
    test_poll 10 "grep -q '^CREATE.* $I/c-1\$' inotify.out" &&
    rcp_call CREATE_INSTANCE '{"machine":"order","version":1,"instance_id":"c-2"}' &&
    test_poll 10 "grep -q '^CREATE.* $I/c-2\$' inotify.out" &&
    bg_stop "$inw"
EOT

test_expect_success INOTIFY 'deleting an instance fires in instances/, by rmdir and by RCP' - <<\EOT
    start_inotify "$I" &&
    rmdir "$I/c-1" &&
    test_poll 10 "grep -q '^DELETE.* $I/c-1\$' inotify.out" &&
    rcp_call DELETE_INSTANCE '{"instance_id":"c-2"}' &&
    test_poll 10 "grep -q '^DELETE.* $I/c-2\$' inotify.out" &&
    bg_stop "$inw"
EOT

# A deleted instance never changes again: its watch ends like a file,
# after the delete line (rmdir in the mount, or DELETE_INSTANCE over RCP).
test_expect_success 'cat instances/<id>/watch ends after the instance is deleted' - <<\EOT
    echo wz-1 >"$O/new" && echo wz-2 >"$O/new" &&
    { timeout 20 cat "$I/wz-1/watch" >wz1.out & } && w1=$! &&
    { timeout 20 cat "$I/wz-2/watch" >wz2.out & } && w2=$! &&
    BG_PIDS+=("$w1" "$w2") &&
    sleep 0.3 &&
    echo 'PAY {"amount": 3}' >"$I/wz-1/events" &&
    rmdir "$I/wz-1" &&
    rcp_call DELETE_INSTANCE '{"instance_id":"wz-2"}' &&
    wait "$w1" && wait "$w2" &&
    test_line_count = 2 wz1.out &&
    jq -e -s '.[0].event == "PAY" and .[1].type == "delete_instance"' wz1.out &&
    test_line_count = 1 wz2.out &&
    jq -e '.type == "delete_instance"' wz2.out
EOT

# last_is_delete ID: inotify's last word on instances/ID is its DELETE.
last_is_delete() {
    grep " $I/$1\$" inotify.out | tail -n 1 | grep -q '^DELETE'
}

# The CREATE comes from the daemon a few ms after the instance is made;
# one removed before that must still show it, and end with its DELETE (made
# and removed by the mount, and made and removed over RCP).
test_expect_success INOTIFY 'an instance made and removed at once: CREATE is seen, DELETE last' - <<\EOT
    start_inotify "$I" &&
    echo q-1 >"$O/new" && rmdir "$I/q-1" &&
    rcp_call CREATE_INSTANCE '{"machine":"order","version":1,"instance_id":"q-2"}' &&
    rcp_call DELETE_INSTANCE '{"instance_id":"q-2"}' &&
    test_poll 10 "grep -q '^CREATE.* $I/q-1\$' inotify.out" &&
    test_poll 10 "grep -q '^CREATE.* $I/q-2\$' inotify.out" &&
    test_poll 10 "last_is_delete q-1 && last_is_delete q-2" &&
    bg_stop "$inw" &&
    cat inotify.out &&
    test ! -e "$I/q-1" && test ! -e "$I/q-2"
EOT

# entr_idle PID: entr has no command running and sits in a blocking wait
# for the next event. entr may miss a change that comes while it is still
# busy with the previous one (seen here with inotifywait beside it showing
# every event), so each change is made only once entr has no command
# running.
entr_idle() {
    [ -z "$(pgrep -P "$1")" ] && sleep 0.2 && [ -z "$(pgrep -P "$1")" ]
}

test_expect_success ENTR 'entr reruns a command when state changes, whoever changed it' - <<\EOT
    echo e-1 >"$O/new" &&
    printf "%s\n" "$I/e-1/state" >watched &&
    bg_run entrpid entr -n sh -c "echo run >>\"$TEST_DIR/marker\"" <watched >entr.out 2>&1 &&
    : "entr runs the command once when its watches are set up" &&
    test_poll 10 "[ -s marker ] && entr_idle $entrpid" &&
    rcp_call APPLY_EVENT '{"instance_id":"e-1","event":"PAY"}' &&
    test_poll 10 "[ \$(wc -l <marker) -ge 2 ] && entr_idle $entrpid" &&
    n=$(wc -l <marker) &&
    echo CANCEL >"$I/e-1/events" &&
    test_poll 10 "[ \$(wc -l <marker) -gt $n ]" &&
    bg_stop "$entrpid"
EOT

test_expect_success ENTR 'entr on history fires for every change' - <<\EOT
    rm -f marker &&
    printf "%s\n" "$I/t-1/history" >watched &&
    bg_run entrpid entr -n sh -c "echo run >>\"$TEST_DIR/marker\"" <watched >entr.out 2>&1 &&
    test_poll 10 "[ -s marker ] && entr_idle $entrpid" &&
    echo TICK >"$I/t-1/events" &&
    test_poll 10 "[ \$(wc -l <marker) -ge 2 ] && entr_idle $entrpid" &&
    n=$(wc -l <marker) &&
    rcp_call APPLY_EVENT '{"instance_id":"t-1","event":"TICK"}' &&
    test_poll 10 "[ \$(wc -l <marker) -gt $n ]" &&
    bg_stop "$entrpid"
EOT

test_expect_success 'after all that the mount unmounts cleanly' - <<\EOT
    stop_mount "$M"
EOT

# ticker_mount NAME CONFIG: a fresh mount NAME-mnt over NAME-data with the
# config file CONFIG, a machine tick (TICK loops on its one state) and an
# instance NAME-1.
ticker_mount() {
    start_mount "$1-data" "$1-mnt" -c "$2" &&
    mkdir "$TEST_DIR/$1-mnt/machines/tick" &&
    echo '{"states":["on"],"initial":"on","transitions":[{"from":"on","event":"TICK","to":"on"}]}' \
        >"$TEST_DIR/$1-mnt/machines/tick/definition.json" &&
    echo "$1-1" >"$TEST_DIR/$1-mnt/machines/tick/new"
}

# big_ticks EVENTS N: N lines TICK {"n": i, "pad": <2000 x>}, one write each.
big_ticks() {
    python3 - "$1" "$2" <<'PY'
import sys
pad = "x" * 2000
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write('TICK {"n": %d, "pad": "%s"}\n' % (i, pad))
        f.flush()
PY
}

# A reader that stops (a suspended cat, a full pipe) must neither grow the
# daemon nor lose lines: the handle holds at most 1 MiB, its subscription
# falls behind, and it catches up from the WAL when the reader reads again.
# 20,000 entries of about 4 KB each (the pad, in the payload and in ctx)
# would be about 80 MB held for the reader otherwise.
test_expect_success PYTHON 'a stopped wal/watch reader: daemon memory stays bounded, no line lost' - <<\EOT
    printf "storage:\n  fsync_policy: never\n" >never.yaml &&
    ticker_mount slow never.yaml &&
    SM=$TEST_DIR/slow-mnt &&
    bg_run slow cat "$SM/wal/watch" >slow.out &&
    sleep 0.3 &&
    kill -STOP "$slow" &&
    rss0=$(awk "/VmRSS/ {print \$2}" /proc/"$STMFS_PID"/status) &&
    big_ticks "$SM/instances/slow-1/events" 20000 &&
    rss1=$(awk "/VmRSS/ {print \$2}" /proc/"$STMFS_PID"/status) &&
    echo "daemon VmRSS $rss0 kB -> $rss1 kB" &&
    # the runtimes' init symbols: clang links them statically, out of ldd's sight
    if grep -qaE "__asan_init|__tsan_init" "$STMFS"; then
        echo "ASan and TSan keep freed memory in their own allocators: the bound is not checked here"
    else
        test $((rss1 - rss0)) -lt 65536
    fi &&
    kill -CONT "$slow" &&
    test_poll 60 "[ \$(grep -c '' slow.out) -ge 20000 ]" &&
    bg_stop "$slow" &&
    python3 - slow.out <<-\PY &&
	import json, sys
	lines = [json.loads(l) for l in open(sys.argv[1])]
	ns = [l["entry"]["payload"]["n"] for l in lines]
	assert ns == list(range(20000)), "lines lost or out of order: %d lines" % len(ns)
	offs = [l["offset"] for l in lines]
	assert all(a < b for a, b in zip(offs, offs[1:]))
	print("20000 lines, in order")
	PY
    stop_mount "$SM"
EOT

# The one case where lines cannot come back: compaction deleted the part
# of the log the reader still needs. Then the stream ends with an error
# after the lines it had, never with a silent gap.
test_expect_success PYTHON,JQ 'a stopped reader whose lines compaction removed: ENOBUFS, no silent gap' - <<\EOT
    printf "storage:\n  fsync_policy: never\n  wal_segment_size_mb: 1\n" >small.yaml &&
    ticker_mount gap small.yaml &&
    GM=$TEST_DIR/gap-mnt &&
    { cat "$GM/wal/watch" >gap.out 2>gap.err & } &&
    gap=$! &&
    BG_PIDS+=("$gap") &&
    # and an RCP watcher that stops reading the same way
    { PYTHONPATH="$TEST_SRC_DIR" python3 - "$RCP_ADDR" >rcp-gap.out 2>rcp-gap.err <<-\PY &
	import os, sys, time
	from rcp_lib import Conn, Closed
	c = Conn(sys.argv[1])
	c.hello()
	c.ok("WATCH_ALL", {"include_ctx": False})
	while not os.path.exists("rcp-gap.go"):
	    time.sleep(0.05)
	ns = []
	try:
	    while True:
	        ns.append(c.next_event(timeout=30)["payload"]["n"])
	except Closed:
	    pass
	print(len(ns))
	assert ns == list(range(len(ns))), "not a gapless prefix"
	assert 0 < len(ns) < 20000, len(ns)
	PY
    } &&
    rgap=$! &&
    BG_PIDS+=("$rgap") &&
    sleep 0.3 &&
    kill -STOP "$gap" &&
    big_ticks "$GM/instances/gap-1/events" 20000 &&
    rcp_call COMPACT >compact.json &&
    jq -e ".segments_deleted > 0" compact.json &&
    touch rcp-gap.go &&
    test_poll 60 "proc_gone $rgap" &&
    { wait "$rgap" || { cat rcp-gap.err; false; }; } &&
    echo "the RCP watcher got $(cat rcp-gap.out) events, then the connection closed" &&
    grep "fell behind and cannot resume" gap-data/stmfs.log &&
    kill -CONT "$gap" &&
    test_poll 30 "proc_gone $gap" &&
    { wait "$gap"; test $? -ne 0; } &&
    cat gap.err &&
    grep "No buffer space available" gap.err &&
    grep "wal/watch reader fell behind and the log no longer holds offset" gap-data/stmfs.log &&
    python3 - gap.out <<-\PY &&
	import json, sys
	ns = [json.loads(l)["entry"]["payload"]["n"] for l in open(sys.argv[1])]
	assert ns == list(range(len(ns))), "not a gapless prefix"
	assert 0 < len(ns) < 20000, len(ns)
	print("%d lines, then the error" % len(ns))
	PY
    # an RCP watch from that offset is refused the same way, never started
    # later without a word; from 0 it starts at the oldest record kept
    off=$(head -n 1 gap.out | jq .offset) &&
    test_must_fail rcp_call WATCH_ALL "{\"from_offset\":$off}" >watch-err.json &&
    cat watch-err.json &&
    jq -e '.code == "BAD_REQUEST" and (.message | contains("is no longer in the log"))' watch-err.json &&
    rcp_call WATCH_ALL "{\"from_offset\":0}" &&
    stop_mount "$GM"
EOT

test_done
