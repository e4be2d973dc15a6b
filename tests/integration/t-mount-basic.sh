#!/usr/bin/env bash
# Test bodies are here-documents eval'd by lib.sh; shellcheck cannot see
# the variables they use.
# shellcheck disable=SC2034,SC2016,SC2317
test_description='the mount as a user meets it: machines, definitions,
instances, events, history, soft delete, editors, restart'
. "$(dirname "$0")/lib.sh"

M=$TEST_DIR/mnt
I=$M/instances
O=$M/machines/order

test_expect_success 'stmfs mount detaches once the mount answers' - <<\EOT
    start_mount data mnt &&
    mountpoint -q mnt &&
    ls mnt >top &&
    printf "%s\n" instances machines wal >expect &&
    test_cmp expect top
EOT

test_expect_success 'ps -L tells the threads of the daemon apart by name' - <<\EOT
    test -n "$STMFS_PID" &&
    cat /proc/"$STMFS_PID"/task/*/comm | sort -u >names &&
    printf "%s\n" fs-helper fs-notifier rcp-loop wal-flusher >expect &&
    grep -x -e fs-helper -e fs-notifier -e rcp-loop -e wal-flusher names >actual &&
    test_cmp expect actual
EOT

test_expect_success 'mkdir under machines/ makes a machine directory' - <<\EOT
    mkdir "$M/machines/order" &&
    test -d "$O" &&
    echo order >expect &&
    ls "$M/machines" >actual &&
    test_cmp expect actual
EOT

test_expect_success 'cp of a definition into definition.json defines version 1' - <<\EOT
    order_definition >order.json &&
    cp order.json "$O/definition.json" &&
    echo 1.json >expect &&
    ls "$O/versions" >actual &&
    test_cmp expect actual &&
    rcp_call GET_MACHINE '{"machine":"order","version":1}' >got &&
    jq -e '.definition.initial == "created"' got
EOT

test_expect_success JQ 'definition.json reads back the newest version as JSON' - <<\EOT
    jq -e '.initial == "created" and (.states | length) == 4 and (.transitions | length) == 3' \
        "$O/definition.json" &&
    test_cmp "$O/versions/1.json" "$O/definition.json"
EOT

test_expect_success 'writing the same definition again defines nothing new' - <<\EOT
    cat "$O/definition.json" >same.json &&
    cp same.json "$O/definition.json" &&
    cp order.json "$O/definition.json" &&
    echo 1.json >expect &&
    ls "$O/versions" >actual &&
    test_cmp expect actual
EOT

test_expect_success 'definition.yaml shows the same definition in YAML' - <<\EOT
    grep -E "^initial: *[\"']?created[\"']?$" "$O/definition.yaml" &&
    grep -E "shipped" "$O/definition.yaml" &&
    grep -F "ctx.amount > 0" "$O/definition.yaml"
EOT

test_expect_success DOT 'graph.dot renders with dot -Tsvg, guards as labels' - <<\EOT
    dot -Tsvg "$O/graph.dot" >graph.svg &&
    grep -q "<svg" graph.svg &&
    for s in created paid shipped cancelled PAY SHIP CANCEL; do
        grep -q "$s" graph.svg || { echo "missing $s"; return 1; }
    done &&
    grep -F "ctx.amount" "$O/graph.dot"
EOT

test_expect_success 'machine files report their exact size' - <<\EOT
    for f in definition.json definition.yaml graph.dot versions/1.json; do
        size=$(stat -c %s "$O/$f") && len=$(wc -c <"$O/$f") &&
        { [ "$size" = "$len" ] || { echo "$f: st_size $size, content $len bytes"; return 1; }; }
    done
EOT

test_expect_success 'writing "ID CTX" to new creates an instance' - <<\EOT
    echo 'o-1 {"customer": "alice"}' >"$O/new" &&
    echo o-1 >expect &&
    ls "$I" >actual &&
    test_cmp expect actual &&
    echo created >expect &&
    test_cmp expect "$I/o-1/state"
EOT

test_expect_success JQ 'ctx.json is the context, pretty JSON' - <<\EOT
    jq -e '. == {"customer": "alice"}' "$I/o-1/ctx.json" &&
    test_line_count -ge 3 "$I/o-1/ctx.json"
EOT

test_expect_success JQ 'info.json names the machine, version and state' - <<\EOT
    jq -e '.machine == "order" and .version == 1 and .state == "created"' "$I/o-1/info.json"
EOT

test_expect_success 'reading events lists what may happen next' - <<\EOT
    printf "%s\n" CANCEL PAY >expect &&
    sort "$I/o-1/events" >actual &&
    test_cmp expect actual
EOT

test_expect_success 'machines/order/instances/o-1 links to the instance' - <<\EOT
    test -L "$O/instances/o-1" &&
    echo ../../../instances/o-1 >expect &&
    readlink "$O/instances/o-1" >actual &&
    test_cmp expect actual &&
    echo created >expect &&
    test_cmp expect "$O/instances/o-1/state"
EOT

test_expect_success JQ 'echo EVENT PAYLOAD >events applies it and merges the payload' - <<\EOT
    echo 'PAY {"amount": 42}' >"$I/o-1/events" &&
    echo paid >expect &&
    test_cmp expect "$I/o-1/state" &&
    jq -e '. == {"customer": "alice", "amount": 42}' "$I/o-1/ctx.json" &&
    jq -e '.state == "paid"' "$I/o-1/info.json"
EOT

test_expect_success JQ 'history has one JSON line per change' - <<\EOT
    test_line_count = 2 "$I/o-1/history" &&
    while read -r line; do
        printf "%s\n" "$line" | jq -e . >/dev/null || return 1
    done <"$I/o-1/history" &&
    tail -n 1 "$I/o-1/history" | grep PAY &&
    tail -n 1 "$I/o-1/history" | grep paid
EOT

test_expect_success 'a rejected event fails the echo and changes nothing' - <<\EOT
    cp "$I/o-1/history" history.before &&
    test_must_fail write_line "$I/o-1/events" PAY 2>err &&
    cat err &&
    grep "write error" err &&
    ! grep -i "success" err &&
    echo paid >expect &&
    test_cmp expect "$I/o-1/state" &&
    test_cmp history.before "$I/o-1/history"
EOT

test_expect_success 'error says why the last write was rejected' - <<\EOT
    cat "$I/o-1/error" &&
    grep INVALID_TRANSITION "$I/o-1/error" &&
    grep PAY "$I/o-1/error"
EOT

test_expect_success 'a guard that is false rejects the event, and error says so' - <<\EOT
    echo o-2 >"$O/new" &&
    echo PAY >"$I/o-2/events" &&
    test_must_fail write_line "$I/o-2/events" SHIP 2>err &&
    grep "write error" err &&
    echo paid >expect &&
    test_cmp expect "$I/o-2/state" &&
    grep GUARD_FAILED "$I/o-2/error" &&
    grep SHIP "$I/o-2/error"
EOT

test_expect_success 'an APPLY_EVENT params object is a line too' - <<\EOT
    echo '{"event": "SHIP", "payload": {"carrier": "ups"}}' >"$I/o-1/events" &&
    echo shipped >expect &&
    test_cmp expect "$I/o-1/state" &&
    jq -e '.carrier == "ups"' "$I/o-1/ctx.json"
EOT

test_expect_success 'a final state allows no events' - <<\EOT
    test_must_be_empty "$I/o-1/events"
EOT

test_expect_success 'several lines in one write apply in order' - <<\EOT
    echo o-3 >"$O/new" &&
    printf 'PAY\nCANCEL\n' >"$I/o-3/events" &&
    echo cancelled >expect &&
    test_cmp expect "$I/o-3/state" &&
    test_line_count = 3 "$I/o-3/history"
EOT

test_expect_success 'a failing line stops the write; lines before it stay applied' - <<\EOT
    echo o-4 >"$O/new" &&
    test_must_fail eval 'printf "PAY {\"amount\": 1}\nPAY\nSHIP\n" >"$I/o-4/events"' &&
    echo paid >expect &&
    test_cmp expect "$I/o-4/state" &&
    test_line_count = 2 "$I/o-4/history" &&
    grep INVALID_TRANSITION "$I/o-4/error"
EOT

test_expect_success 'a last line without a newline is applied at close' - <<\EOT
    echo o-5 >"$O/new" &&
    printf PAY | cat >"$I/o-5/events" &&
    echo paid >expect &&
    test_cmp expect "$I/o-5/state"
EOT

test_expect_success 'a writer that keeps events open sees each line applied as it writes' - <<\EOT
    echo o-6 >"$O/new" &&
    (
        exec 3>"$I/o-6/events" &&
        echo PAY >&3 &&
        echo paid >expect &&
        test_cmp expect "$I/o-6/state" &&
        echo CANCEL >&3 &&
        echo cancelled >expect &&
        test_cmp expect "$I/o-6/state"
    )
EOT

test_expect_success JQ 'new takes several lines, and a CREATE_INSTANCE params object' - <<\EOT
    printf 'n-b\nn-a\n' >"$O/new" &&
    echo '{"instance_id": "n-c", "initial_ctx": {"k": 1}}' >"$O/new" &&
    for id in n-a n-b n-c; do
        test -d "$I/$id" || { echo "no $id"; return 1; }
    done &&
    jq -e '.k == 1' "$I/n-c/ctx.json" &&
    jq -e '. == {}' "$I/n-a/ctx.json"
EOT

test_expect_success 'creating an id that exists fails and changes nothing' - <<\EOT
    cp "$I/o-1/history" history.before &&
    test_must_fail write_line "$O/new" o-1 2>err &&
    grep "write error" err &&
    test_cmp history.before "$I/o-1/history"
EOT

test_expect_success 'listings come sorted from the mount itself' - <<\EOT
    mkdir "$M/machines/zeta" "$M/machines/alpha" &&
    ls -U "$I" | grep -v "^\.\.\?$" >unsorted &&
    sort unsorted >sorted &&
    test_cmp sorted unsorted &&
    ls -U "$M/machines" | grep -v "^\.\.\?$" >unsorted &&
    sort unsorted >sorted &&
    test_cmp sorted unsorted &&
    printf "%s\n" alpha order zeta >expect &&
    test_cmp expect sorted
EOT

test_expect_success 'instance files report their exact size' - <<\EOT
    for f in state ctx.json info.json events history error; do
        for id in o-1 o-2 o-3; do
            size=$(stat -c %s "$I/$id/$f") && len=$(wc -c <"$I/$id/$f") &&
            { [ "$size" = "$len" ] || { echo "$id/$f: st_size $size, content $len"; return 1; }; }
        done
    done
EOT

test_expect_success 'the mtime of state and history follows the last change' - <<\EOT
    echo o-7 >"$O/new" &&
    before=$(date +%s) &&
    echo PAY >"$I/o-7/events" &&
    [ "$(stat -c %Y "$I/o-7/state")" -ge "$before" ] &&
    [ "$(stat -c %Y "$I/o-7/history")" -ge "$before" ]
EOT

test_expect_success 'rmdir of an instance deletes it softly, for good' - <<\EOT
    rmdir "$I/o-3" &&
    ls "$I" >actual &&
    ! grep -x o-3 actual &&
    rcp_call LIST_INSTANCES '{"machine":"order","limit":1000}' >list &&
    ! jq -e '.instances[] | select(.id == "o-3")' list &&
    test_must_fail write_line "$O/new" o-3
EOT

test_expect_success JQ 'sed -i on definition.json defines the next version' - <<\EOT
    sed -i 's/"cancelled"/"void"/g' "$O/definition.json" &&
    printf "%s\n" 1.json 2.json >expect &&
    ls "$O/versions" >actual &&
    test_cmp expect actual &&
    jq -e '.states | index("void")' "$O/definition.json" &&
    jq -e '.version == 1' "$I/o-1/info.json" &&
    echo v2-1 >"$O/new" &&
    jq -e '.version == 2' "$I/v2-1/info.json"
EOT

test_expect_success VIM,JQ 'an edit in vim saved with :wq defines the next version' - <<\EOT
    vim -Nu NONE -n -es -c '%s/"void"/"voided"/g' -c wq "$O/definition.json" &&
    printf "%s\n" 1.json 2.json 3.json >expect &&
    ls "$O/versions" >actual &&
    test_cmp expect actual &&
    jq -e '.states | index("voided")' "$O/definition.json"
EOT

test_expect_success JQ 'YAML written to definition.yaml defines the next version' - <<\EOT
    n=$(ls "$O/versions" | wc -l) &&
    cat >order.yaml <<-\YAML &&
	states: [created, paid, shipped, returned]
	initial: created
	transitions:
	  - {from: created, event: PAY, to: paid}
	  - {from: paid, event: SHIP, to: shipped, guard: "ctx.amount > 0"}
	  - {from: shipped, event: RETURN, to: returned}
	YAML
    cat order.yaml >"$O/definition.yaml" &&
    test -f "$O/versions/$((n + 1)).json" &&
    jq -e '.states | index("returned")' "$O/definition.json"
EOT

test_expect_success JQ 'a file created in versions/ defines exactly that version' - <<\EOT
    jq '.states += ["lost"]' order.json >v7.json &&
    cp v7.json "$O/versions/7.json" &&
    test -f "$O/versions/7.json" &&
    jq -e '.states | index("lost")' "$O/versions/7.json" &&
    test_cmp "$O/versions/7.json" "$O/definition.json" &&
    rcp_call GET_MACHINE '{"machine":"order","version":7}' >got &&
    jq -e '.definition.states | index("lost")' got
EOT

test_expect_success 'versions/N.json cannot be written over' - <<\EOT
    cp "$O/versions/1.json" v1.before &&
    test_must_fail write_line "$O/versions/1.json" "{}" &&
    test_cmp v1.before "$O/versions/1.json"
EOT

test_expect_success JQ 'jq output redirected into definition.json defines a version' - <<\EOT
    n=$(ls "$O/versions" | wc -l) &&
    jq '.states += ["redirected"]' order.json >"$O/definition.json" &&
    test "$(ls "$O/versions" | wc -l)" = $((n + 1)) &&
    jq -e '.states | index("redirected")' "$O/definition.json"
EOT

test_expect_success JQ 'a definition is taken at close, whatever chunks it came in' - <<\EOT
    jq '.states += ["held"]' order.json >chunked.json &&
    dd if=chunked.json of="$O/definition.json" bs=5 status=none &&
    test -f "$O/versions/9.json" &&
    jq -e '.states | index("held")' "$O/definition.json"
EOT

test_expect_success 'a rejected definition fails cp and leaves the machine as it was' - <<\EOT
    ls "$O/versions" >versions.before &&
    cp "$O/definition.json" def.before &&
    echo '{"states": ["a"], "initial": "nowhere", "transitions": []}' >bad.json &&
    test_must_fail cp bad.json "$O/definition.json" &&
    ls "$O/versions" >versions.after &&
    test_cmp versions.before versions.after &&
    test_cmp def.before "$O/definition.json"
EOT

test_expect_success 'machines/order/error says why the definition was rejected' - <<\EOT
    cat "$O/error" &&
    grep BAD_REQUEST "$O/error" &&
    grep nowhere "$O/error"
EOT

test_expect_success JQ 'wal/entries is JSONL of the log, wal/stats.json is JSON' - <<\EOT
    jq -s length "$M/wal/entries" >n &&
    [ "$(cat n)" -gt 10 ] &&
    jq -e 'type == "object"' "$M/wal/stats.json"
EOT

# As with an unlinked file: what was open before the rmdir still reads
# (and fstat(2) works on it), while the path is gone.
test_expect_success PYTHON 'files opened before rmdir of their instance stay readable' - <<\EOT
    echo rd-1 >"$O/new" &&
    echo 'PAY {"amount": 4}' >"$I/rd-1/events" &&
    python3 - "$I/rd-1" <<-\PY
	import os, sys
	d = sys.argv[1]
	fds = {n: os.open(os.path.join(d, n), os.O_RDONLY) for n in ("state", "ctx.json", "history")}
	os.rmdir(d)
	assert not os.path.exists(os.path.join(d, "state"))
	got = {}
	for n, fd in fds.items():
	    st = os.fstat(fd)
	    got[n] = os.read(fd, 1 << 16)
	    assert st.st_size == len(got[n]), (n, st.st_size, len(got[n]))
	assert got["state"] == b"paid\n", got["state"]
	assert b'"amount": 4' in got["ctx.json"], got["ctx.json"]
	lines = got["history"].splitlines()
	assert len(lines) == 3 and b'"delete_instance"' in lines[2], got["history"]
	print("read after rmdir:", {n: len(v) for n, v in got.items()})
	PY
EOT

# A write is answered only once what it changed reads back: the kernel's
# cached pages of ctx.json and history, read just before, must be gone
# when write(2) returns, line after line.
test_expect_success PYTHON 'each line written is what the very next read shows' - <<\EOT
    mkdir "$M/machines/tick" &&
    echo '{"states":["on"],"initial":"on","transitions":[{"from":"on","event":"TICK","to":"on"}]}' \
        >"$M/machines/tick/definition.json" &&
    echo t-1 >"$M/machines/tick/new" &&
    python3 - "$I/t-1" <<-\PY
	import json, os, sys
	d = sys.argv[1]
	def read(name):
	    with open(os.path.join(d, name)) as f:
	        return f.read()
	fd = os.open(os.path.join(d, "events"), os.O_WRONLY)
	for n in range(1, 1001):
	    read("ctx.json"), read("history")
	    os.write(fd, b'TICK {"n": %d}\n' % n)
	    ctx = json.loads(read("ctx.json"))
	    lines = read("history").splitlines()
	    assert ctx.get("n") == n, "after line %d ctx.json shows %r" % (n, ctx)
	    assert len(lines) == n + 1, "after line %d history has %d lines" % (n, len(lines))
	os.close(fd)
	print("1000 lines, each read back at once")
	PY
EOT

test_expect_success 'SIGTERM unmounts and stops the daemon' - <<\EOT
    cp "$I/o-1/history" history.o-1 &&
    cp "$I/o-1/ctx.json" ctx.o-1 &&
    ls "$O/versions" >versions.o &&
    ls "$I" >instances.o &&
    pid=$STMFS_PID &&
    kill -TERM "$pid" &&
    test_poll 20 "proc_gone $pid" &&
    ! mountpoint -q "$M"
EOT

test_expect_success 'after a restart everything reads back byte for byte' - <<\EOT
    start_mount data mnt &&
    echo shipped >expect &&
    test_cmp expect "$I/o-1/state" &&
    test_cmp history.o-1 "$I/o-1/history" &&
    test_cmp ctx.o-1 "$I/o-1/ctx.json" &&
    ls "$O/versions" >actual &&
    test_cmp versions.o actual &&
    ls "$I" >actual &&
    test_cmp instances.o actual
EOT

test_expect_success 'fusermount3 -u stops the daemon' - <<\EOT
    stop_mount "$M" &&
    ! mountpoint -q "$M"
EOT

test_expect_success 'umount stops the daemon too' - <<\EOT
    start_mount data mnt &&
    pid=$STMFS_PID &&
    umount "$M" &&
    test_poll 20 "proc_gone $pid" &&
    ! mountpoint -q "$M"
EOT

test_expect_success 'stmfs mount -f stays in front, and exits 0 on SIGTERM' - <<\EOT
    port=$(free_port) &&
    bg_run fg "$STMFS" mount "$TEST_DIR/data" "$M" -f --bind "127.0.0.1:$port" >fg.out 2>&1 &&
    test_poll 20 "mountpoint -q '$M'" &&
    echo shipped >expect &&
    test_cmp expect "$I/o-1/state" &&
    ! proc_gone "$fg" &&
    kill -TERM "$fg" &&
    test_poll 20 "proc_gone $fg" &&
    wait "$fg" &&
    ! mountpoint -q "$M"
EOT

# fsync(2) under `never` syncs the log without appending a record: the
# figures in wal/stats.json move all the same, and a reader sees them.
test_expect_success JQ 'wal/stats.json is current after an fsync that appends nothing' - <<\EOT
    printf "storage:\n  fsync_policy: never\n" >never.yaml &&
    start_mount nd nm -c "$TEST_DIR/never.yaml" &&
    mkdir nm/machines/o &&
    order_definition >nm/machines/o/definition.json &&
    echo n-1 >nm/machines/o/new &&
    before=$(jq .io_stats.fsyncs nm/wal/stats.json) &&
    sync nm/instances/n-1/state &&
    after=$(jq .io_stats.fsyncs nm/wal/stats.json) &&
    echo "fsyncs $before -> $after" &&
    [ "$after" -gt "$before" ] &&
    stop_mount nm
EOT

test_done
