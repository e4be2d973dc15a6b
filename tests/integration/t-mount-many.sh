#!/usr/bin/env bash
# Test bodies are here-documents eval'd by lib.sh; shellcheck cannot see
# the variables they use.
# shellcheck disable=SC2034,SC2016,SC2317
test_description='many writers at once: 16 shell processes echoing events
(each to its own instance, or all to one) all succeed, and every instance
ends where its events took it'
. "$(dirname "$0")/lib.sh"

M=$TEST_DIR/mnt
I=$M/instances
T=$M/machines/tick
S=$M/machines/steps

test_have_prereq JQ || skip_all "needs jq"

# run16 FUNC: runs FUNC 1 .. FUNC 16 at once; fails unless all succeed.
run16() {
    local pids=() w p ok=0
    for w in $(seq 16); do
        "$1" "$w" &
        pids+=($!)
    done
    BG_PIDS+=("${pids[@]}")
    for p in "${pids[@]}"; do
        wait "$p" || ok=1
    done
    return "$ok"
}

test_expect_success 'setup: a ticker and a 20-step machine' - <<\EOT
    start_mount data mnt &&
    mkdir "$T" "$S" &&
    ticker_definition >tick.json &&
    cp tick.json "$T/definition.json" &&
    jq -n "{states: [range(21) | \"s\(.)\"], initial: \"s0\",
            transitions: [range(20) | {from: \"s\(.)\", event: \"NEXT\", to: \"s\(. + 1)\"}]}" >steps.json &&
    cp steps.json "$S/definition.json" &&
    seq -f "s-%g" 16 >"$S/new" &&
    seq -f "k-%g" 16 >"$T/new" &&
    echo one >"$T/new" &&
    test -d "$I/s-16" && test -d "$I/k-16"
EOT

step20() {
    local k
    for k in $(seq 20); do
        echo "NEXT {\"k\": $k}" >"$I/s-$1/events" || return 1
    done
}

test_expect_success '16 shells each echo 20 events to their own instance' - <<\EOT
    run16 step20 &&
    for w in $(seq 16); do
        echo s20 >expect &&
        test_cmp expect "$I/s-$w/state" &&
        test_line_count = 21 "$I/s-$w/history" &&
        jq -e ".k == 20" "$I/s-$w/ctx.json" || return 1
    done
EOT

tick25() {
    local k
    for k in $(seq 25); do
        echo "TICK {\"w\": $1, \"k\": $k}" >"$I/one/events" || return 1
    done
}

test_expect_success '16 shells echo 25 events each to one instance' - <<\EOT
    run16 tick25 &&
    test_line_count = 401 "$I/one/history" &&
    : "every (w, k) is in history exactly once, each writer in its own order" &&
    for w in $(seq 16); do
        jq -r --argjson w "$w" "[.. | objects | select(.w == \$w and has(\"k\")) | .k] | unique | .[]" \
            "$I/one/history" >"ks.$w" &&
        seq 25 >expect &&
        test_cmp expect "ks.$w" || return 1
    done
EOT

keep50() {
    local k
    exec 3>"$I/k-$1/events" || return 1
    for k in $(seq 50); do
        echo "TICK {\"k\": $k}" >&3 || return 1
    done
    exec 3>&-
}

test_expect_success '16 writers each keep events open and write 50 lines' - <<\EOT
    run16 keep50 &&
    for w in $(seq 16); do
        test_line_count = 51 "$I/k-$w/history" &&
        jq -e ".k == 50" "$I/k-$w/ctx.json" || return 1
    done
EOT

create10() {
    local k
    for k in $(seq 10); do
        echo "n-$1-$k" >"$T/new" || return 1
    done
}

test_expect_success '16 shells create 10 instances each through new' - <<\EOT
    run16 create10 &&
    ls "$I" | grep -c "^n-" >n &&
    echo 160 >expect &&
    test_cmp expect n &&
    ls "$T/instances" | grep -c "^n-" >n &&
    test_cmp expect n
EOT

test_expect_success PYTHON 'RCP agrees on the count' - <<\EOT
    rcp_call LIST_INSTANCES '{"machine":"tick","limit":0}' >list &&
    jq -e ".total == 177" list &&
    stop_mount "$M"
EOT

# big_then_small MNT: three events of 400 KB to one instance (records of
# 0.8 to 1.6 MB with the context they make), then 600 small ones to
# another, in one write: the running log writes checkpoints of its own
# between them (every 1 MiB of records, and first in every new segment).
big_then_small() {
    local m=$1 i
    mkdir "$m/machines/t" &&
    echo '{"states":["s"],"initial":"s","transitions":[{"from":"s","event":"E","to":"s"}]}' \
        >"$m/machines/t/definition.json" &&
    echo big >"$m/machines/t/new" &&
    echo sm >"$m/machines/t/new" || return 1
    for i in 1 2 3; do
        python3 -c "import json; print('E ' + json.dumps({'p$i': 'x' * 400000}))" \
            >"$m/instances/big/events" || return 1
    done
    for i in $(seq 600); do echo "E {\"i\":$i}"; done >"$m/instances/sm/events"
}

# Those checkpoints are lines of wal/entries like every record. They used
# to be left out of its size until a restart: the file ended in the middle
# of a record, the newest records never showed, and a read at an offset
# (cat after its first 128 KiB) started at the wrong byte.
test_expect_success PYTHON 'wal/entries is `stmfs wal dump`, with the checkpoints the running log wrote' - <<\EOT
    start_mount ent-data ent-mnt &&
    big_then_small ent-mnt &&
    cat ent-mnt/wal/entries >entries.txt &&
    "$STMFS" wal dump ent-data >dump.txt &&
    jq -c "select(.entry.type == \"checkpoint\") | .sequence" dump.txt >ckpts &&
    test_line_count -ge 2 ckpts &&
    : "as JSON: the dump sorts the keys of a checkpoint, the file shows its bytes" &&
    jq -cS . dump.txt >dump.norm &&
    jq -cS . entries.txt >entries.norm &&
    test_cmp dump.norm entries.norm &&
    test "$(stat -c %s ent-mnt/wal/entries)" = "$(wc -c <entries.txt)" &&
    : "the file ends with the newest record, whole" &&
    tail -n 1 dump.txt >last.want &&
    tail -c "$(wc -c <last.want)" ent-mnt/wal/entries >last.got &&
    test_cmp last.want last.got &&
    stop_mount ent-mnt
EOT

test_expect_success PYTHON 'tail -f wal/entries and cat wal/watch follow across checkpoints and new segments' - <<\EOT
    printf "storage:\n  wal_segment_size_mb: 1\n" >small-seg.yaml &&
    start_mount rot-data rot-mnt -c small-seg.yaml &&
    bg_run tailer tail -n +1 -s 0.2 -f rot-mnt/wal/entries >tailed.txt &&
    bg_run watcher cat rot-mnt/wal/watch >watched.txt &&
    : "wait until cat sits in read(2) or copy_file_range(2) (syscall 0 or 326)" &&
    test_poll 10 "grep -qE \"^(0|326) \" /proc/$watcher/syscall" &&
    big_then_small rot-mnt &&
    "$STMFS" wal dump rot-data >rot-dump.txt &&
    ls rot-data/wal/*.wal >segments &&
    test_line_count -ge 3 segments &&
    n=$(wc -l <rot-dump.txt) &&
    test_poll 30 "[ \$(wc -l <tailed.txt) -ge $n ]" &&
    k=$(jq -c "select(.entry.type != \"checkpoint\")" rot-dump.txt | wc -l) &&
    test_poll 30 "[ \$(wc -l <watched.txt) -ge $k ]" &&
    bg_stop "$tailer" &&
    bg_stop "$watcher" &&
    python3 - rot-dump.txt tailed.txt watched.txt <<-\PY &&
	import json, sys
	dump, tailed, watched = ([json.loads(l) for l in open(f)] for f in sys.argv[1:])
	ckpts = [d for d in dump if d["entry"]["type"] == "checkpoint"]
	assert len(ckpts) >= 3, "%d checkpoints" % len(ckpts)
	assert tailed == dump, "tail -f: %d lines, the log %d" % (len(tailed), len(dump))
	# wal/watch streams the changes: every record but the log's own
	# checkpoints, each as the same line as in wal/entries
	changes = [d for d in dump if d["entry"]["type"] != "checkpoint"]
	assert watched == changes, "wal/watch: %d lines, %d changes" % (len(watched), len(changes))
	print("%d lines followed, %d checkpoints among them" % (len(tailed), len(ckpts)))
	PY
    stop_mount rot-mnt
EOT

test_done
