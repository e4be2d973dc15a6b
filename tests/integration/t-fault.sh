#!/usr/bin/env bash
# Test bodies are here-documents eval'd by lib.sh; shellcheck cannot see
# the variables they use.
# shellcheck disable=SC2034,SC2016,SC2317
test_description='disk faults injected into the running daemon (STMFS_FAULT_CTL,
builds with -Dfault_injection=true): a failed fdatasync or a full disk reaches
RCP clients as WAL_IO_ERROR and shell writers as EIO or ENOSPC, the daemon
stays up and shows only acknowledged state, and after the fault clears and
the daemon restarts the state is exactly the acknowledged operations; a
daemon killed in the middle of a compaction loses nothing either'
. "$(dirname "$0")/lib.sh"

M=$TEST_DIR/mnt
I=$M/instances
T=$M/machines/tick
O=$M/machines/order
D=$TEST_DIR/data
CTL=$TEST_DIR/fault-ctl

grep -qa STMFS_FAULT_CTL "$STMFS" ||
    skip_all "$STMFS was built without -Dfault_injection=true"
test_have_prereq PYTHON,JQ || skip_all "needs python3 (the RCP client) and jq"

# fault COMMAND...: hands one command to the daemon (src/fault_ctl.h); it is
# in force once the daemon has deleted the file.
fault() {
    printf '%s\n' "$*" >"$CTL.tmp" && mv "$CTL.tmp" "$CTL" &&
        test_poll 10 "[ ! -e '$CTL' ]"
}

# start_faulty: the daemon, its disk calls going through the fault table.
# start_mount (lib.sh) starts it without.
start_faulty() { STMFS_FAULT_CTL=$CTL start_mount data mnt; }

# tick_mount N / tick_rcp N: TICK {"n": N} on t-m through the shell, on t-r
# over RCP; N is added to acked.t-m / acked.t-r only if the write succeeded.
tick_mount() { echo "TICK {\"n\": $1}" >>"$I/t-m/events" && echo "$1" >>acked.t-m; }
tick_rcp() {
    rcp_call APPLY_EVENT "{\"instance_id\":\"t-r\",\"event\":\"TICK\",\"payload\":{\"n\":$1}}" \
        >/dev/null && echo "$1" >>acked.t-r
}

# ns_in_history ID: the n of every TICK in the instance's history, in order.
ns_in_history() { jq -r 'select(.event == "TICK") | .payload.n' "$I/$1/history"; }

# same_as_acked ID: through the mount, the instance's history holds exactly
# the TICKs acked.ID lists, in order, and its context is the one of the last.
same_as_acked() {
    ns_in_history "$1" >"have.$1" &&
        test_cmp "acked.$1" "have.$1" &&
        jq -e --argjson n "$(tail -n 1 "acked.$1")" '.n == $n' "$I/$1/ctx.json" >/dev/null
}

# rcp_view ID...: over one RCP connection, the ids LIST_INSTANCES lists, one
# a line, then "ID N" with the n of each ID's context (GET_INSTANCE).
rcp_view() {
    python3 - "$TEST_SRC_DIR" "$RCP_ADDR" "$@" <<-\PY
	import sys
	sys.path.insert(0, sys.argv[1])
	import rcpc
	conn = rcpc.Conn(sys.argv[2])
	msg = conn.call("LIST_INSTANCES", {})
	if msg["status"] != "ok":
	    sys.exit("LIST_INSTANCES: %s" % msg["error"])
	for it in msg["result"]["instances"]:
	    print(it["id"])
	for i in sys.argv[3:]:
	    msg = conn.call("GET_INSTANCE", {"instance_id": i})
	    if msg["status"] != "ok":
	        sys.exit("GET_INSTANCE %s: %s" % (i, msg["error"]))
	    print(i, msg["result"]["ctx"].get("n"))
	PY
}

# the_acked_state: everything a user can see, through the mount and over
# RCP, is what was acknowledged. TICKED lists the instances to check.
TICKED="t-m t-r"
the_acked_state() {
    local id
    # shellcheck disable=SC2086  # TICKED: one id a word
    cp instances.expect view.expect &&
        for id in $TICKED; do
            same_as_acked "$id" && echo "$id $(tail -n 1 "acked.$id")" >>view.expect || return 1
        done &&
        test_cmp order.expect "$I/o-1/state" &&
        ls "$I" >present && test_cmp instances.expect present &&
        ls "$T/versions" >versions && test_cmp versions.expect versions &&
        rcp_view $TICKED >view && test_cmp view.expect view
}

# restart [start_faulty]: unmount, the daemon must exit; mount again, with no
# fault in force (plainly, or with the fault table ready for the next one).
restart() {
    stop_mount "$M" && "${1:-start_plain}"
}
start_plain() { start_mount data mnt; }

test_expect_success 'setup: a daemon whose disk calls go through the fault table' - <<\EOT
    start_faulty &&
    grep "fault control: disk I/O goes through the fault table" "$D/stmfs.log" &&
    mkdir "$T" "$O" &&
    ticker_definition >tick.json && cp tick.json "$T/definition.json" &&
    order_definition >order.json && cp order.json "$O/definition.json" &&
    printf "%s\n" t-m t-r quiet >"$T/new" &&
    echo o-1 >"$O/new" &&
    printf "%s\n" o-1 quiet t-m t-r >instances.expect &&
    echo 1.json >versions.expect &&
    : >acked.t-m && : >acked.t-r
EOT

test_expect_success 'acknowledged writes through the shell and over RCP' - <<\EOT
    for n in 1 2 3; do
        tick_mount $n && tick_rcp $n || return 1
    done &&
    echo PAY >>"$I/o-1/events" &&
    echo paid >order.expect &&
    the_acked_state
EOT

test_expect_success 'an unknown fault command is logged and skipped' - <<\EOT
    fault "fail fdatasync EWHATEVER" &&
    test_poll 10 "grep -q \"unknown command 'fail fdatasync EWHATEVER'\" '$D/stmfs.log'" &&
    tick_mount 4 && tick_rcp 4
EOT

# ---- 1. fdatasync fails with EIO --------------------------------------------

test_expect_success 'fdatasync fails: the shell write whose sync failed gets EIO' - <<\EOT
    fault fail fdatasync EIO &&
    test_must_fail tick_mount 5 2>msg &&
    cat msg &&
    grep "write error: Input/output error" msg &&
    cat "$I/t-m/error" &&
    grep "^code WAL_IO_ERROR" "$I/t-m/error" &&
    grep "fdatasync failed on .*: Input/output error" "$I/t-m/error"
EOT

test_expect_success 'later writes: WAL_IO_ERROR over RCP, EIO in the shell' - <<\EOT
    test_must_fail rcp_call APPLY_EVENT '{"instance_id":"t-r","event":"TICK","payload":{"n":5}}' >err &&
    jq -e '.code == "WAL_IO_ERROR" and .retryable == true' err &&
    jq -e '.message | test("fdatasync failed on .*Input/output error")' err &&
    test_must_fail rcp_call CREATE_INSTANCE '{"machine":"tick","version":1,"instance_id":"ghost-r"}' >err &&
    jq -e '.code == "WAL_IO_ERROR"' err &&
    test_must_fail write_line "$T/new" ghost-m 2>msg &&
    grep "Input/output error" msg &&
    test_must_fail eval 'echo CANCEL >>"$I/o-1/events"' 2>msg &&
    grep "Input/output error" msg &&
    grep "^code WAL_IO_ERROR" "$I/o-1/error" &&
    sed "s/\"on\"/\"on\", \"off\"/" tick.json >tick2.json &&
    test_must_fail cp tick2.json "$T/definition.json" 2>msg &&
    cat msg && grep "Input/output error" msg
EOT

test_expect_success 'the daemon stays up and shows the acknowledged state' - <<\EOT
    kill -0 "$STMFS_PID" &&
    rcp_call PING >/dev/null &&
    echo on >expect && test_cmp expect "$I/quiet/state" &&
    jq -e ".states == [\"on\"]" "$T/definition.json" &&
    : "t-m took the TICK whose sync failed: it shows its last acknowledged" &&
    : "state (n=4), never n=5, in the mount and over RCP; LIST_INSTANCES works" &&
    the_acked_state &&
    jq -e ".n == 4" "$I/t-m/ctx.json" &&
    rcp_call GET_INSTANCE '{"instance_id":"t-m"}' >got &&
    jq -e '.ctx.n == 4' got &&
    rcp_call LIST_INSTANCES '{"machine":"tick"}' >list &&
    jq -e '.total == 3' list &&
    cat "$M/wal/entries" >entries && ! grep '"n":5' entries &&
    rcp_call WAL_READ '{"from_offset":0}' >wal &&
    jq -e "[.records[].entry | select(.payload.n? == 4)] | length == 2" wal &&
    jq -e "[.records[].entry | select(.payload.n? == 5)] == []" wal
EOT

test_expect_success 'clearing the fault does not reopen the log: writes still fail' - <<\EOT
    fault clear &&
    test_must_fail tick_mount 5 2>msg &&
    grep "Input/output error" msg &&
    test_must_fail tick_rcp 5
EOT

test_expect_success 'after a restart the state is exactly the acknowledged writes' - <<\EOT
    restart start_faulty &&
    the_acked_state &&
    jq -e ".states == [\"on\"]" "$T/definition.json" &&
    tick_mount 5 && tick_rcp 5 &&
    the_acked_state
EOT

# ---- 2. a full disk: pwrite fails with ENOSPC --------------------------------

# The write that meets the full disk is one atomic BATCH over RCP: it
# creates an instance, deletes one and moves a third, all in one group of
# records that never reaches the disk.
test_expect_success 'a full disk: the RCP batch whose records could not be written gets WAL_IO_ERROR' - <<\EOT
    tick_mount 6 && tick_rcp 6 &&
    fault fail pwrite ENOSPC &&
    test_must_fail rcp_call BATCH '{"mode":"atomic","ops":[
        {"op":"CREATE_INSTANCE","params":{"machine":"tick","version":1,"instance_id":"ghost-r"}},
        {"op":"DELETE_INSTANCE","params":{"instance_id":"quiet"}},
        {"op":"APPLY_EVENT","params":{"instance_id":"t-r","event":"TICK","payload":{"n":7}}}]}' >err &&
    cat err &&
    jq -e '.code == "WAL_IO_ERROR" and .retryable == true' err &&
    jq -e '.message | test("No space left on device")' err
EOT

test_expect_success 'a full disk: the shell sees ENOSPC, error names it' - <<\EOT
    test_must_fail tick_mount 7 2>msg &&
    cat msg &&
    grep "write error: No space left on device" msg &&
    grep "^code WAL_IO_ERROR" "$I/t-m/error" &&
    grep "No space left on device" "$I/t-m/error" &&
    test_must_fail write_line "$T/new" ghost-m 2>msg &&
    grep "No space left on device" msg &&
    test_must_fail cp tick2.json "$T/definition.json" 2>msg &&
    grep "No space left on device" msg &&
    test_must_fail rmdir "$I/quiet" 2>msg &&
    grep "No space left on device" msg
EOT

test_expect_success 'a full disk: reads show only acknowledged state' - <<\EOT
    kill -0 "$STMFS_PID" &&
    : "the batch never happened: no ghost-r, quiet still there and on, t-r at n=6" &&
    the_acked_state &&
    ls "$T/instances" >present && grep -v o-1 instances.expect >expect && test_cmp expect present &&
    test_must_fail cat "$I/ghost-r/state" 2>msg &&
    grep "No such file or directory" msg &&
    jq -e ".n == 6" "$I/t-r/ctx.json" &&
    echo on >expect && test_cmp expect "$I/quiet/state" &&
    rcp_call GET_INSTANCE '{"instance_id":"t-r"}' >got && jq -e ".ctx.n == 6" got &&
    rcp_call GET_INSTANCE '{"instance_id":"quiet"}' >got && jq -e '.state == "on"' got &&
    test_must_fail rcp_call GET_INSTANCE '{"instance_id":"ghost-r"}' >err &&
    jq -e '.code == "INSTANCE_NOT_FOUND"' err
EOT

test_expect_success 'a full disk: after clear and a restart, exactly the acknowledged writes' - <<\EOT
    fault clear &&
    restart &&
    the_acked_state &&
    stop_mount "$M" &&
    "$STMFS" wal verify "$D"
EOT

# ---- 3. the disk fails under concurrent writers -------------------------------

# rcp_ticker ID FILE: TICKs n = 1, 2, ... on ID over one connection with 4
# requests in flight, appending each acknowledged n to FILE; after the first
# error it reads the answers still due and exits. Errors go to FILE.err.
rcp_ticker() {
    python3 - "$TEST_SRC_DIR" "$RCP_ADDR" "$1" "$2" <<-\PY
	import json, sys
	sys.path.insert(0, sys.argv[1])
	import rcpc
	addr, inst, out = sys.argv[2:5]
	conn = rcpc.Conn(addr, timeout=60)
	n, inflight, failed = 0, [], False
	with open(out, "w") as ok, open(out + ".err", "w") as bad:
	    while True:
	        while not failed and len(inflight) < 4 and n < 100000:
	            n += 1
	            inflight.append((n, conn.send("APPLY_EVENT", {
	                "instance_id": inst, "event": "TICK", "payload": {"n": n}})))
	        if not inflight:
	            break
	        k, rid = inflight.pop(0)
	        msg = conn.response(rid)
	        if msg["status"] == "ok":
	            ok.write("%d\n" % k)
	            ok.flush()
	        else:
	            failed = True
	            bad.write(json.dumps(msg["error"]) + "\n")
	PY
}

# shell_ticker ID FILE: the same through the shell, one echo per line.
shell_ticker() {
    local k=0
    : >"$2"
    while [ "$k" -lt 100000 ]; do
        k=$((k + 1))
        echo "TICK {\"n\": $k}" 2>>"$2.err" >>"$I/$1/events" || break
        echo "$k" >>"$2"
    done
}

test_expect_success 'concurrent writers when fdatasync starts failing' - <<\EOT
    start_faulty &&
    printf "%s\n" c-1 c-2 c-3 >"$T/new" &&
    printf "%s\n" c-1 c-2 c-3 o-1 quiet t-m t-r >instances.expect &&
    pids= &&
    for c in c-1 c-2; do ( shell_ticker $c acked.$c ) & pids="$pids $!"; done &&
    { ( rcp_ticker c-3 acked.c-3 ) & pids="$pids $!"; } &&
    BG_PIDS+=($pids) &&
    test_poll 60 "[ \$(cat acked.c-1 2>/dev/null | wc -l) -ge 20 ] &&
                  [ \$(cat acked.c-2 2>/dev/null | wc -l) -ge 20 ] &&
                  [ \$(cat acked.c-3 2>/dev/null | wc -l) -ge 20 ]" &&
    fault fail fdatasync EIO &&
    for p in $pids; do
        test_poll 30 "proc_gone $p" || return 1
        wait "$p"
    done &&
    wc -l acked.c-1 acked.c-2 acked.c-3 &&
    grep "Input/output error" acked.c-1.err &&
    grep "Input/output error" acked.c-2.err &&
    jq -e '.code == "WAL_IO_ERROR"' acked.c-3.err &&
    kill -0 "$STMFS_PID" &&
    echo on >expect && test_cmp expect "$I/quiet/state" &&
    : "each instance shows exactly what its writer was told, before any restart" &&
    ( TICKED="$TICKED c-1 c-2 c-3" && the_acked_state )
EOT

test_expect_success 'concurrent writers: after a restart, exactly what each was told' - <<\EOT
    fault clear &&
    STMFS_WAL_SEGMENT_SIZE_MB=1 restart start_faulty &&
    TICKED="$TICKED c-1 c-2 c-3" &&
    the_acked_state
EOT

# ---- 4. kill -9 in the middle of a compaction -----------------------------------

# fill N: N TICKs with 64 KiB of padding each on "big" over RCP, so the log
# spans several 1 MiB segments and compaction has segments to delete.
fill() {
    python3 - "$TEST_SRC_DIR" "$RCP_ADDR" "$1" <<-\PY
	import sys
	sys.path.insert(0, sys.argv[1])
	import rcpc
	conn = rcpc.Conn(sys.argv[2], timeout=60)
	for n in range(1, int(sys.argv[3]) + 1):
	    msg = conn.call("APPLY_EVENT", {"instance_id": "big", "event": "TICK",
	                                    "payload": {"n": n, "pad": "x" * 65536}})
	    if msg["status"] != "ok":
	        sys.exit("TICK %d: %s" % (n, msg["error"]))
	    print(n)
	PY
}

# compact_killed OP: COMPACT over RCP with every OP call stalled; once the
# compaction is stuck in one, kill -9 the daemon, then mount again.
compact_killed() {
    local cpid
    fault stall "$1" &&
    bg_run cpid python3 "$RCPC" --addr "$RCP_ADDR" COMPACT '{}' &&
    test_poll 30 "grep -q 'fault control: $1 call stalled' '$D/stmfs.log'" &&
    kill -9 "$STMFS_PID" &&
    test_poll 20 "daemon_gone $STMFS_PID" &&
    test_poll 20 "proc_gone $cpid" &&
    { wait "$cpid"; true; } &&
    fusermount3 -u "$M" &&
    STMFS_WAL_SEGMENT_SIZE_MB=1 start_faulty
}

test_expect_success 'a snapshot that cannot be written: COMPACT fails, writes go on' - <<\EOT
    echo big >"$T/new" &&
    printf "%s\n" big c-1 c-2 c-3 o-1 quiet t-m t-r >instances.expect &&
    fill 24 >acked.big &&
    ls "$D/wal" >segments && test_line_count -ge 2 segments &&
    fault fail fdatasync EIO 1 &&
    test_must_fail rcp_call COMPACT '{}' >err &&
    cat err &&
    jq -e '.message | test("snapshot.*Input/output error")' err &&
    ! ls "$D/snapshots" | grep "\.snap" &&
    tick_mount 8 && tick_rcp 8 &&
    TICKED="$TICKED big" &&
    the_acked_state
EOT

test_expect_success 'kill -9 while a compaction writes its snapshot (before the rename)' - <<\EOT
    compact_killed rename &&
    ! ls "$D/snapshots" | grep "\.snap$" &&
    : "the unfinished snapshot the kill left behind went at startup" &&
    ! ls -a "$D/snapshots" | grep "\.tmp$" &&
    grep "removed .*/db-[0-9a-f]*\.snap\.tmp ([0-9]* bytes): a snapshot that a crash interrupted" "$D/stmfs.log" &&
    the_acked_state
EOT

test_expect_success 'kill -9 while a compaction deletes old segments' - <<\EOT
    compact_killed unlink &&
    ls "$D/snapshots" | grep "\.snap$" &&
    the_acked_state &&
    test_line_count = 25 "$I/big/history"
EOT

test_expect_success 'the compaction finishes once nothing stalls; all still there after a restart' - <<\EOT
    ls "$D/wal" >before &&
    rcp_call COMPACT '{}' >compacted &&
    cat compacted &&
    ls "$D/wal" >after &&
    test "$(wc -l <after)" -lt "$(wc -l <before)" &&
    stop_mount "$M" &&
    "$STMFS" wal verify "$D" &&
    start_mount data mnt &&
    the_acked_state &&
    stop_mount "$M"
EOT

# A write waiting for its fdatasync when the daemon is told to stop: the
# daemon unmounts only once the write is answered, so the writer is told
# it succeeded, and it did.
test_expect_success 'SIGTERM while a write waits for its fdatasync: the writer is told, the line stays' - <<\EOT
    start_faulty &&
    fault stall fdatasync &&
    bg_run wpid sh -c "echo 'TICK {\"n\": 9}' >>'$I/t-m/events'" &&
    test_poll 30 "grep -q 'fault control: fdatasync call stalled' '$D/stmfs.log'" &&
    kill -TERM "$STMFS_PID" &&
    sleep 0.5 &&
    : "the writer still waits, and so does the unmount" &&
    ! proc_gone "$wpid" && mountpoint -q "$M" &&
    fault clear &&
    test_poll 20 "proc_gone $wpid" &&
    wait "$wpid" &&
    echo 9 >>acked.t-m &&
    test_poll 20 "daemon_gone $STMFS_PID" &&
    start_plain &&
    the_acked_state &&
    stop_mount "$M"
EOT

test_done
