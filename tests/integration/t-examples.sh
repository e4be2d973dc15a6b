#!/usr/bin/env bash
# Test bodies are here-documents eval'd by lib.sh; shellcheck cannot see
# the variables they use.
# shellcheck disable=SC2034,SC2016,SC2317
test_description='every file of examples/ does what its header says, on a
real mount with RCP beside it'
. "$(dirname "$0")/lib.sh"

EX=$(cd "$TEST_SRC_DIR/../../examples" && pwd)
M=$TEST_DIR/mnt
I=$M/instances
D=$TEST_DIR/data

test_have_prereq PYTHON,JQ || skip_all "needs python3 (the RCP client) and jq"

test_expect_success 'mount, with RCP beside it' - <<\EOT
    start_mount data mnt &&
    rcp_call PING >pong &&
    jq -e '.pong == true' pong
EOT

# ---------------------------------------------------------------- definitions

test_expect_success 'order.json is accepted as version 1 and reads back the same' - <<\EOT
    mkdir "$M/machines/order" &&
    cp "$EX/order.json" "$M/machines/order/definition.json" &&
    echo 1.json >expect &&
    ls "$M/machines/order/versions" >actual &&
    test_cmp expect actual &&
    jq -S . "$EX/order.json" >expect &&
    jq -S . "$M/machines/order/definition.json" >actual.raw &&
    : "the normalised form writes from as a list; normalise the example the same way" &&
    jq -S '.transitions |= map(.from |= (if type == "string" then [.] else . end))' \
        "$EX/order.json" >expect &&
    jq -S . actual.raw >actual &&
    test_cmp expect actual
EOT

test_expect_success 'writing order.json again is a no-op' - <<\EOT
    cp "$EX/order.json" "$M/machines/order/definition.json" &&
    echo 1.json >expect &&
    ls "$M/machines/order/versions" >actual &&
    test_cmp expect actual
EOT

test_expect_success 'scripts/run.sh demo: o-1 with amount 0 pays with {"amount":42}' - <<\EOT
    echo 'o-1 {"customer":"alice","amount":0}' >"$M/machines/order/new" &&
    echo 'PAY {"amount":42}' >"$I/o-1/events" &&
    echo paid >expect &&
    test_cmp expect "$I/o-1/state"
EOT

test_expect_success 'order.json: PAY branches by payload guard, first passing guard wins' - <<\EOT
    for a in 0 999 1000; do
        echo "b-$a" >"$M/machines/order/new" || exit 1
    done &&
    test_must_fail write_line "$I/b-0/events" 'PAY {"amount":0}' &&
    grep -qx 'code GUARD_FAILED' "$I/b-0/error" &&
    write_line "$I/b-999/events" 'PAY {"amount":999}' &&
    write_line "$I/b-1000/events" 'PAY {"amount":1000}' &&
    printf 'created\npaid\nreview\n' >expect &&
    cat "$I/b-0/state" "$I/b-999/state" "$I/b-1000/state" >actual &&
    test_cmp expect actual
EOT

test_expect_success 'order.json: SHIP needs an address from ctx or payload; REFUND compares two paths' - <<\EOT
    test_must_fail write_line "$I/b-999/events" SHIP &&
    grep -qx 'code GUARD_FAILED' "$I/b-999/error" &&
    test_must_fail write_line "$I/b-999/events" 'REFUND {"amount":5}' &&
    write_line "$I/b-999/events" 'REFUND {"amount":999}' &&
    echo refunded >expect &&
    test_cmp expect "$I/b-999/state" &&
    echo 's-1 {"address":"2 Elm St","final_sale":true}' >"$M/machines/order/new" &&
    write_line "$I/s-1/events" 'PAY {"amount":7}' &&
    test_must_fail write_line "$I/s-1/events" 'REFUND {"amount":7}' &&
    write_line "$I/s-1/events" SHIP &&
    echo shipped >expect &&
    test_cmp expect "$I/s-1/state"
EOT

test_expect_success 'approval.yaml is accepted and SUBMIT routes by amount' - <<\EOT
    mkdir "$M/machines/approval" &&
    cp "$EX/approval.yaml" "$M/machines/approval/definition.yaml" &&
    echo 1.json >expect &&
    ls "$M/machines/approval/versions" >actual &&
    test_cmp expect actual &&
    for a in 50 2400 9000; do
        echo "e-$a {\"employee\":\"bob\",\"limit\":5000}" >"$M/machines/approval/new" &&
        write_line "$I/e-$a/events" "SUBMIT {\"amount\":$a}" || exit 1
    done &&
    printf 'approved\nmanager_review\ndirector_review\n' >expect &&
    cat "$I/e-50/state" "$I/e-2400/state" "$I/e-9000/state" >actual &&
    test_cmp expect actual &&
    write_line "$I/e-9000/events" REJECT &&
    write_line "$I/e-9000/events" REVISE &&
    echo draft >expect &&
    test_cmp expect "$I/e-9000/state"
EOT

# ---------------------------------------------------------------- scripts

test_expect_success 'order-workflow.sh runs end to end and shows what it says' - <<\EOT
    "$EX/order-workflow.sh" "$M" w-1 >wf.out 2>wf.err &&
    grep -qx 'write refused: Permission denied' wf.out &&
    grep -qx 'write refused: Operation not permitted' wf.out &&
    grep -qx 'code GUARD_FAILED' wf.out &&
    grep -qx 'code INVALID_TRANSITION' wf.out &&
    grep -qx 'delivered' wf.out &&
    grep -qx 'review' wf.out &&
    echo delivered >expect &&
    test_cmp expect "$I/w-1/state" &&
    echo paid >expect &&
    test_cmp expect "$I/w-1-big/state" &&
    test_line_count = 4 "$I/w-1/history"
EOT

test_expect_success 'order-workflow.sh runs again on the same mount (new ids)' - <<\EOT
    "$EX/order-workflow.sh" "$M" w-2 >wf2.out 2>&1 &&
    echo 1.json >expect &&
    ls "$M/machines/order/versions" >actual &&
    test_cmp expect actual
EOT

test_expect_success 'order-workflow.sh fails clearly without a mountpoint' - <<\EOT
    test_must_fail "$EX/order-workflow.sh" 2>err &&
    grep -q usage err
EOT

test_expect_success INOTIFY 'watch-shipped.sh reports arrivals made in the mount and over RCP' - <<\EOT
    echo 'ws-1 {"customer":"alice"}' >"$M/machines/order/new" &&
    bg_run watcher "$EX/watch-shipped.sh" "$M" shipped 2 >ws.out 2>ws.err &&
    test_poll 20 "grep -q 'Watches established' ws.err" &&
    echo 'PAY {"amount":42}' >"$I/ws-1/events" &&
    echo 'SHIP {"address":"1 Main St"}' >"$I/ws-1/events" &&
    rcp_call CREATE_INSTANCE '{"machine":"order","version":1,"instance_id":"ws-2"}' &&
    rcp_call APPLY_EVENT '{"instance_id":"ws-2","event":"PAY","payload":{"amount":5}}' &&
    rcp_call APPLY_EVENT '{"instance_id":"ws-2","event":"SHIP","payload":{"address":"2 Elm St"}}' &&
    : "with COUNT 2 it exits by itself after the second arrival" &&
    test_poll 20 "proc_gone $watcher" &&
    wait "$watcher" &&
    cat >expect <<-\EOF &&
	ws-1 shipped {"address":"1 Main St","amount":42,"customer":"alice"}
	ws-2 shipped {"address":"2 Elm St","amount":5}
	EOF
    test_cmp expect ws.out
EOT

test_expect_success INOTIFY 'watch-shipped.sh ignores instances already there and other states' - <<\EOT
    bg_run watcher "$EX/watch-shipped.sh" "$M" shipped >ws2.out 2>ws2.err &&
    test_poll 20 "grep -q 'Watches established' ws2.err" &&
    : "s-1 and ws-1 are shipped already; DELIVER moves ws-1 away" &&
    echo DELIVER >"$I/ws-1/events" &&
    echo ws-3 >"$M/machines/order/new" &&
    echo 'PAY {"amount":1}' >"$I/ws-3/events" &&
    echo 'SHIP {"address":"3 Oak St"}' >"$I/ws-3/events" &&
    test_poll 20 "grep -q '^ws-3 shipped' ws2.out" &&
    bg_stop "$watcher" &&
    test_line_count = 1 ws2.out &&
    : "and its inotifywait went with it" &&
    ! pgrep -f "inotifywait -m -r -e close_write,create --format %e %w%f $M/instances" >/dev/null
EOT

test_expect_success 'rcp-client.py creates and advances an instance the mount shows' - <<\EOT
    python3 "$EX/rcp-client.py" --addr "$RCP_ADDR" --mount "$M" --id py-1 >py.out 2>py.err &&
    grep -q '^connected to stmfs ' py.out &&
    grep -qx 'CREATE_INSTANCE py-1 -> created   mount says: created' py.out &&
    grep -q "^APPLY_EVENT PAY again -> INVALID_TRANSITION: " py.out &&
    grep -qx 'APPLY_EVENT DELIVER (key deliver-1) -> delivered (applied: true)   mount says: delivered' py.out &&
    grep -qx 'APPLY_EVENT DELIVER (key deliver-1, a retry) -> delivered (applied: false)   mount says: delivered' py.out &&
    grep -qx '  shipped -> delivered on DELIVER at [0-9]*' py.out &&
    echo delivered >expect &&
    test_cmp expect "$I/py-1/state" &&
    jq -e '. == {"address":"1 Main St","amount":30,"customer":"carol"}' "$I/py-1/ctx.json" &&
    : "the retry wrote nothing: create + 3 events" &&
    test_line_count = 4 "$I/py-1/history"
EOT

test_expect_success 'rcp-client.py defines order itself on an empty server' - <<\EOT
    first_addr=$RCP_ADDR &&
    start_mount data2 mnt2 &&
    python3 "$EX/rcp-client.py" --addr "$RCP_ADDR" --id py-2 >py2.out &&
    grep -qx 'machine order: version 1' py2.out &&
    echo delivered >expect &&
    test_cmp expect mnt2/instances/py-2/state &&
    stop_mount mnt2 &&
    RCP_ADDR=$first_addr
EOT

test_expect_success 'rcp-client.py says what is wrong when nothing listens' - <<\EOT
    port=$(free_port) &&
    test_must_fail python3 "$EX/rcp-client.py" --addr "127.0.0.1:$port" 2>err &&
    grep -q 'rcp-client.py: .*refused' err
EOT

test_expect_success 'audit.sh, first run: history, verify, saves the head, replays one change ago' - <<\EOT
    STMFS=$STMFS "$EX/audit.sh" "$D" "$M" o-1 head.txt >audit1.out 2>&1 &&
    grep -q '^2 .*create -> created .*{"amount":0,"customer":"alice"}' audit1.out &&
    grep -q 'PAY: created -> paid .*{"amount":42}' audit1.out &&
    grep -q '^(no saved head in head.txt yet' audit1.out &&
    grep -qx 'expected chain at seq 3: matches' audit1.out &&
    grep -qE '^[0-9]+:[0-9a-f]{64}$' head.txt &&
    grep -qx 'state created, context {"amount":0,"customer":"alice"}' audit1.out
EOT

test_expect_success 'audit.sh, later run: the saved head still matches, and is moved on' - <<\EOT
    old=$(cat head.txt) &&
    echo 'SHIP {"address":"1 Main St"}' >"$I/o-1/events" &&
    STMFS=$STMFS "$EX/audit.sh" "$D" "$M" o-1 head.txt >audit2.out 2>&1 &&
    grep -qx "expected chain at seq ${old%%:*}: matches" audit2.out &&
    test "$(cat head.txt)" != "$old" &&
    grep -qx 'state paid, context {"amount":42,"customer":"alice"}' audit2.out
EOT

test_expect_success 'audit.sh fails, and keeps the head file, when the log does not match it' - <<\EOT
    good=$(cat head.txt) &&
    echo "${good%%:*}:$(printf '%064d' 0)" >head.txt &&
    test_must_fail env STMFS="$STMFS" "$EX/audit.sh" "$D" "$M" o-1 head.txt >audit3.out 2>&1 &&
    grep -q 'DAMAGED: hash chain mismatch' audit3.out &&
    grep -q 'THE LOG DOES NOT MATCH' audit3.out &&
    test "$(cat head.txt)" = "${good%%:*}:$(printf '%064d' 0)"
EOT

# ---------------------------------------------------------------- README

README=$TEST_SRC_DIR/../../README.md

test_expect_success 'the README tour: its ticket definition, events and refusals' - <<\EOT
    sed -n "/^\$ cat > machines\/ticket\/definition.yaml <<'EOF'\$/,/^EOF\$/p" "$README" |
        sed '1d;$d' >ticket.yaml &&
    test_line_count = 6 ticket.yaml &&
    mkdir "$M/machines/ticket" &&
    cp ticket.yaml "$M/machines/ticket/definition.yaml" &&
    echo 't-1 {"title":"printer on fire"}' >"$M/machines/ticket/new" &&
    printf 'ASSIGN\nCLOSE\n' >expect &&
    test_cmp expect "$I/t-1/events" &&
    test_must_fail write_line "$I/t-1/events" ASSIGN 2>err &&
    grep -q 'Permission denied' err &&
    grep -qx 'code GUARD_FAILED' "$I/t-1/error" &&
    write_line "$I/t-1/events" 'ASSIGN {"to":"sam"}' &&
    test_must_fail write_line "$I/t-1/events" 'ASSIGN {"to":"sam"}' &&
    write_line "$I/t-1/events" 'ASSIGN {"to":"kim"}' &&
    at=$(sed -n 2p "$I/t-1/history" | jq .offset) &&
    rcp_call APPLY_EVENT '{"instance_id":"t-1","event":"CLOSE"}' &&
    echo closed >expect &&
    test_cmp expect "$I/t-1/state" &&
    "$STMFS" replay "$D" --at "$at" --instance t-1 >replay.json &&
    jq -e '.state == "assigned" and .ctx == {"title":"printer on fire","to":"sam"}' replay.json
EOT

test_expect_success 'README keeps the quick start and the errno table of fs/errno.c' - <<\EOT
    grep -q '^scripts/run.sh ' "$README" &&
    grep -q '^scripts/test.sh ' "$README" &&
    : "each code row of the comment table in fs/errno.c is a README row" &&
    sed -n 's/^ \*   \([A-Z_]*\) *\(E[A-Z]*\) *\(.*\)$/| \1 | \2 | \3 |/p' \
        "$TEST_SRC_DIR/../../fs/errno.c" >errno.rows &&
    test_line_count = 16 errno.rows &&
    while read -r row; do
        grep -qxF "$row" "$README" || { echo "not in README: $row"; exit 1; }
    done <errno.rows
EOT

test_expect_success 'stmfs(1) names every long option of every --help, and renders cleanly' - <<\EOT
    MAN=$TEST_SRC_DIR/../../man/stmfs.1 &&
    for cmd in mount serve wal replay call watch; do
        "$STMFS" $cmd --help | grep -o -- '--[a-z][a-z-]*' || exit 1
    done | sort -u >opts &&
    test_line_count -gt 15 opts &&
    while read -r opt; do
        grep -qF -- "$(printf '%s' "$opt" | sed 's/-/\\-/g')" "$MAN" ||
            { echo "stmfs(1) lacks $opt"; exit 1; }
    done <opts &&
    if command -v groff >/dev/null; then
        groff -t -man -ww -z "$MAN" 2>groff.err && test_must_be_empty groff.err
    fi
EOT

# ---------------------------------------------------------------- the unit

# The unit's own command lines, with its paths swapped for the test's: the
# start returns only once the mount answers (Type=forking), and the stop
# unmounts and the daemon exits.
# unit_line KEY PORT: the unit's KEY= line, for a listener on PORT.
unit_line() {
    sed -n "s/^$1=//p" "$EX/stmfs.service" | sed \
        -e "s#/usr/local/bin/stmfs#$STMFS#" \
        -e "s#/var/lib/stmfs#$TEST_DIR/svc-data#" \
        -e "s#/srv/stmfs/mnt#$TEST_DIR/svc-mnt#" \
        -e "s#127.0.0.1:7401#127.0.0.1:$2#"
}

test_expect_success 'stmfs.service: forking start is ready on return, ExecStop stops it' - <<\EOT
    grep -qx 'Type=forking' "$EX/stmfs.service" &&
    svc_port=$(free_port) &&
    mkdir -p svc-data svc-mnt &&
    pre=$(unit_line ExecStartPre "$svc_port") &&
    start=$(unit_line ExecStart "$svc_port") &&
    stop=$(unit_line ExecStop "$svc_port") &&
    echo "$TEST_DIR/svc-mnt" >>"$TEST_DIR/.mounts" && MOUNTS+=("$TEST_DIR/svc-mnt") &&
    { ${pre#-} 2>/dev/null || true; } &&
    $start &&
    : "no polling: usable the moment the start command returned" &&
    ls svc-mnt >actual &&
    printf 'instances\nmachines\nwal\n' >expect &&
    test_cmp expect actual &&
    pid=$(daemon_pid_of "$TEST_DIR/svc-mnt") &&
    rcp_call_at() { python3 "$RCPC" --addr "127.0.0.1:$svc_port" "$@"; } &&
    rcp_call_at PING &&
    $stop &&
    test_poll 20 "proc_gone $pid" &&
    ! mountpoint -q svc-mnt
EOT

test_expect_success 'systemd-analyze finds nothing wrong in the unit but the binary path' - <<\EOT
    if ! command -v systemd-analyze >/dev/null; then exit 0; fi
    systemd-analyze verify "$EX/stmfs.service" >sa.out 2>&1 || true
    ! grep -v -e 'is not executable' -e "man stmfs(1)" -e '^$' sa.out | grep .
EOT

test_expect_success 'unmount cleanly' - <<\EOT
    stop_mount mnt
EOT

test_done
