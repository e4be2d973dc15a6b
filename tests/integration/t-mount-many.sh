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

test_done
