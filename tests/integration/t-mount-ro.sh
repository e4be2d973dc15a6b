#!/usr/bin/env bash
# Test bodies are here-documents eval'd by lib.sh; shellcheck cannot see
# the variables they use.
# shellcheck disable=SC2034,SC2016,SC2317
test_description='stmfs mount -o ro: an audit mount that reads everything
and refuses every write with EROFS ("Read-only file system")'
. "$(dirname "$0")/lib.sh"

M=$TEST_DIR/mnt
I=$M/instances
O=$M/machines/order

# erofs CMD...: CMD fails and says "Read-only file system".
erofs() {
    test_must_fail "$@" 2>msg || return 1
    cat msg
    grep -q "Read-only file system" msg
}

test_expect_success 'setup: some data, written through a normal mount' - <<\EOT
    start_mount data mnt &&
    mkdir "$O" &&
    order_definition >order.json &&
    cp order.json "$O/definition.json" &&
    echo 'o-1 {"customer": "alice"}' >"$O/new" &&
    echo 'PAY {"amount": 9}' >"$I/o-1/events" &&
    echo o-2 >"$O/new" &&
    mkdir "$M/machines/tick" &&
    echo '{"states":["on"],"initial":"on","transitions":[{"from":"on","event":"TICK","to":"on"}]}' \
        >"$M/machines/tick/definition.json" &&
    echo t-1 >"$M/machines/tick/new" &&
    for i in $(seq 300); do echo "TICK {\"n\": $i}"; done >"$I/t-1/events" &&
    cp "$I/t-1/history" history.rw &&
    test "$(stat -c %s history.rw)" -gt 40000 &&
    stop_mount "$M"
EOT

test_expect_success 'a read-only mount of a directory that is not there fails and makes nothing' - <<\EOT
    mkdir -p nowhere-mnt &&
    test_must_fail "$STMFS" mount "$TEST_DIR/nowhere" "$TEST_DIR/nowhere-mnt" -o ro --bind none 2>err &&
    cat err &&
    grep "read-only mount shows an existing database" err &&
    test ! -e nowhere
EOT

test_expect_success 'stmfs mount -o ro mounts read-only' - <<\EOT
    start_mount data mnt -o ro &&
    grep " $M fuse[^ ]* ro[, ]" /proc/mounts
EOT

test_expect_success 'everything reads as usual' - <<\EOT
    echo paid >expect &&
    test_cmp expect "$I/o-1/state" &&
    grep alice "$I/o-1/ctx.json" &&
    test_line_count = 2 "$I/o-1/history" &&
    grep -q created "$O/definition.json" &&
    grep -q created "$O/definition.yaml" &&
    cat "$O/graph.dot" "$M/wal/entries" "$M/wal/stats.json" "$I/o-1/info.json" >/dev/null &&
    printf "%s\n" o-1 o-2 t-1 >expect &&
    ls "$I" >actual &&
    test_cmp expect actual &&
    snapshot() { cat "$I/o-1/state" "$I/o-1/ctx.json" "$I/o-1/history" "$O/definition.json"; ls -R "$M/machines" "$I"; } &&
    snapshot >before
EOT

test_expect_success 'files open without a round trip (no_open), and read right' - <<\EOT
    cat "$I/o-1/state" >/dev/null &&
    grep "FUSE no_open" data/stmfs.log &&
    test_cmp history.rw "$I/t-1/history" &&
    python3 - "$I/t-1/history" history.rw <<-\PY
	import os, sys
	fd = os.open(sys.argv[1], os.O_RDONLY)
	want = open(sys.argv[2], "rb").read()
	for off in (0, 1, 4095, 4096, 4097, 10000, len(want) - 1, len(want), len(want) + 10):
	    for n in (1, 100, 5000, 70000):
	        got = os.pread(fd, n, off)
	        assert got == want[off:off + n], (off, n, len(got))
	print("preads match")
	PY
EOT

test_expect_success 'a watch file ends at once: nothing can happen in a read-only database' - <<\EOT
    timeout 10 cat "$I/o-1/watch" >out &&
    test ! -s out &&
    timeout 10 cat "$M/wal/watch" >out &&
    test ! -s out
EOT

test_expect_success 'echo to events: EROFS' - <<\EOT
    erofs write_line "$I/o-1/events" SHIP
EOT

test_expect_success 'echo to new: EROFS' - <<\EOT
    erofs write_line "$O/new" o-3
EOT

test_expect_success 'cp to definition.json, definition.yaml, versions/: EROFS' - <<\EOT
    erofs cp order.json "$O/definition.json" &&
    erofs cp order.json "$O/definition.yaml" &&
    erofs cp order.json "$O/versions/9.json"
EOT

test_expect_success 'sed -i on definition.json: EROFS' - <<\EOT
    erofs sed -i s/paid/settled/ "$O/definition.json"
EOT

test_expect_success 'mkdir under machines/: EROFS' - <<\EOT
    erofs mkdir "$M/machines/other"
EOT

test_expect_success 'rmdir of an instance: EROFS' - <<\EOT
    erofs rmdir "$I/o-2"
EOT

test_expect_success 'touch, rm, mv: EROFS' - <<\EOT
    erofs touch "$I/o-1/state" &&
    erofs touch "$I/o-1/new-file" &&
    erofs rm "$I/o-1/state" &&
    erofs mv "$I/o-1" "$I/o-9"
EOT

test_expect_success 'nothing changed' - <<\EOT
    snapshot >after &&
    test_cmp before after
EOT

test_expect_success 'a normal mount afterwards writes again' - <<\EOT
    stop_mount "$M" &&
    start_mount data mnt &&
    echo SHIP >"$I/o-1/events" &&
    echo shipped >expect &&
    test_cmp expect "$I/o-1/state" &&
    stop_mount "$M"
EOT

test_expect_success '-o allow_other,default_permissions pass to FUSE' - <<\EOT
    start_mount data mnt -o allow_other,default_permissions &&
    grep " $M fuse" /proc/mounts >opts &&
    cat opts &&
    grep -q allow_other opts &&
    grep -q default_permissions opts &&
    echo shipped >expect &&
    test_cmp expect "$I/o-1/state" &&
    stop_mount "$M"
EOT

test_done
