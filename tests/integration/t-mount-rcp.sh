#!/usr/bin/env bash
# Test bodies are here-documents eval'd by lib.sh; shellcheck cannot see
# the variables they use.
# shellcheck disable=SC2034,SC2016,SC2317
test_description='one engine behind two doors: what an RCP client does shows
in the mount at once, and what the shell does shows over RCP'
. "$(dirname "$0")/lib.sh"

M=$TEST_DIR/mnt
I=$M/instances
O=$M/machines/order

test_have_prereq PYTHON,JQ || skip_all "needs python3 (the RCP client) and jq"

test_expect_success 'mount, with RCP beside it' - <<\EOT
    start_mount data mnt &&
    rcp_call PING >pong &&
    jq -e '.pong == true' pong
EOT

test_expect_success 'a machine put over RCP is listed in machines/ at once' - <<\EOT
    ls "$M/machines" >before &&
    test_must_be_empty before &&
    def=$(order_definition | jq -c .) &&
    rcp_call PUT_MACHINE "{\"machine\":\"order\",\"version\":1,\"definition\":$def}" >put &&
    jq -e '.created == true' put &&
    echo order >expect &&
    ls "$M/machines" >actual &&
    test_cmp expect actual &&
    echo 1.json >expect &&
    ls "$O/versions" >actual &&
    test_cmp expect actual &&
    jq -e '.initial == "created"' "$O/definition.json"
EOT

test_expect_success 'an instance created over RCP is listed in instances/ at once' - <<\EOT
    ls "$I" >before &&
    ls "$O/instances" >before.m &&
    rcp_call CREATE_INSTANCE '{"machine":"order","version":1,"instance_id":"r-1","initial_ctx":{"customer":"bob"}}' &&
    echo r-1 >expect &&
    ls "$I" >actual &&
    test_cmp expect actual &&
    ls "$O/instances" >actual &&
    test_cmp expect actual &&
    echo created >expect &&
    test_cmp expect "$I/r-1/state" &&
    jq -e '.customer == "bob"' "$I/r-1/ctx.json"
EOT

test_expect_success 'an event applied over RCP shows in state, ctx.json, info.json, history at once' - <<\EOT
    cat "$I/r-1/state" "$I/r-1/ctx.json" "$I/r-1/info.json" "$I/r-1/history" "$I/r-1/events" >/dev/null &&
    size_before=$(stat -c %s "$I/r-1/history") &&
    rcp_call APPLY_EVENT '{"instance_id":"r-1","event":"PAY","payload":{"amount":7}}' >applied &&
    jq -e '.to_state == "paid"' applied &&
    echo paid >expect &&
    test_cmp expect "$I/r-1/state" &&
    jq -e '. == {"customer": "bob", "amount": 7}' "$I/r-1/ctx.json" &&
    jq -e '.state == "paid"' "$I/r-1/info.json" &&
    test_line_count = 2 "$I/r-1/history" &&
    size_after=$(stat -c %s "$I/r-1/history") &&
    [ "$size_after" -gt "$size_before" ] &&
    [ "$size_after" = "$(wc -c <"$I/r-1/history")" ] &&
    printf "%s\n" CANCEL SHIP >expect &&
    sort "$I/r-1/events" >actual &&
    test_cmp expect actual
EOT

test_expect_success 'st_size of state follows an RCP change without a read in between' - <<\EOT
    stat -c %s "$I/r-1/state" >before &&
    echo 5 >expect && test_cmp expect before &&
    rcp_call APPLY_EVENT '{"instance_id":"r-1","event":"SHIP"}' &&
    stat -c %s "$I/r-1/state" >after &&
    echo 8 >expect &&
    test_cmp expect after
EOT

test_expect_success 'an event echoed into the mount is what GET_INSTANCE returns' - <<\EOT
    echo 'm-1 {"customer": "carol"}' >"$O/new" &&
    echo 'PAY {"amount": 3}' >"$I/m-1/events" &&
    rcp_call GET_INSTANCE '{"instance_id":"m-1"}' >got &&
    jq -e '.state == "paid" and .ctx == {"customer": "carol", "amount": 3} and .machine == "order" and .version == 1' got
EOT

test_expect_success 'an instance made with new is in LIST_INSTANCES' - <<\EOT
    rcp_call LIST_INSTANCES '{"machine":"order"}' >list &&
    jq -r ".instances[].id" list | sort >actual &&
    printf "%s\n" m-1 r-1 >expect &&
    test_cmp expect actual
EOT

test_expect_success 'a definition written in the mount is what GET_MACHINE returns' - <<\EOT
    jq '.states += ["returned"] | .transitions += [{"from": "shipped", "event": "RETURN", "to": "returned"}]' \
        "$O/definition.json" >v2.json &&
    cp v2.json "$O/definition.json" &&
    rcp_call GET_MACHINE '{"machine":"order","version":2}' >got &&
    jq -e '.definition.states | index("returned")' got &&
    rcp_call LIST_MACHINES >machines &&
    jq -e '.items == [{"machine": "order", "versions": [1, 2]}]' machines
EOT

test_expect_success 'a version put over RCP is the new definition.json' - <<\EOT
    cat "$O/definition.json" >/dev/null &&
    def=$(jq -c '.states += ["lost"]' v2.json) &&
    rcp_call PUT_MACHINE "{\"machine\":\"order\",\"version\":3,\"definition\":$def}" &&
    jq -e '.states | index("lost")' "$O/definition.json" &&
    test_cmp "$O/versions/3.json" "$O/definition.json"
EOT

test_expect_success 'rmdir in the mount is a DELETE_INSTANCE' - <<\EOT
    echo m-2 >"$O/new" &&
    rmdir "$I/m-2" &&
    rcp_call LIST_INSTANCES '{"machine":"order"}' >list &&
    ! jq -e '.instances[] | select(.id == "m-2")' list
EOT

test_expect_success 'DELETE_INSTANCE over RCP takes the instance out of instances/' - <<\EOT
    ls "$I" >before &&
    grep -x m-1 before &&
    rcp_call DELETE_INSTANCE '{"instance_id":"m-1"}' &&
    ls "$I" >after &&
    ! grep -x m-1 after &&
    ls "$O/instances" >after.m &&
    ! grep -x m-1 after.m
EOT

test_expect_success 'WATCH_INSTANCE over RCP sees an event echoed into the mount' - <<\EOT
    echo w-1 >"$O/new" &&
    bg_run watcher python3 "$RCPC" --addr "$RCP_ADDR" watch-instance w-1 1 20 >watch.out 2>watch.err &&
    test_poll 20 "grep -q ready watch.err" &&
    echo PAY >"$I/w-1/events" &&
    test_poll 20 "proc_gone $watcher" &&
    wait "$watcher" &&
    jq -e '.instance_id == "w-1" and .event == "PAY" and .from_state == "created" and .to_state == "paid"' watch.out
EOT

test_expect_success 'WATCH_ALL sees events from the mount and from RCP, in order' - <<\EOT
    echo w-2 >"$O/new" &&
    bg_run watcher python3 "$RCPC" --addr "$RCP_ADDR" watch-all 2 20 >watch.out 2>watch.err &&
    test_poll 20 "grep -q ready watch.err" &&
    echo PAY >"$I/w-2/events" &&
    rcp_call APPLY_EVENT '{"instance_id":"w-2","event":"CANCEL"}' &&
    test_poll 20 "proc_gone $watcher" &&
    wait "$watcher" &&
    jq -r .event watch.out >actual &&
    printf "%s\n" PAY CANCEL >expect &&
    test_cmp expect actual
EOT

test_expect_success 'an event rejected over RCP leaves the mount as it was' - <<\EOT
    cp "$I/r-1/history" history.before &&
    test_must_fail rcp_call APPLY_EVENT '{"instance_id":"r-1","event":"PAY"}' >err &&
    jq -e '.code == "INVALID_TRANSITION"' err &&
    echo shipped >expect &&
    test_cmp expect "$I/r-1/state" &&
    test_cmp history.before "$I/r-1/history"
EOT

test_expect_success 'ids that cannot be file names, created over RCP, are still reachable' - <<\EOT
    ls -b "$I" >before &&
    n=0 &&
    for id in "a/b" ".." "." "x y" "tab\tin" "caf\u00e9" "-dash"; do
        n=$((n + 1)) &&
        rcp_call CREATE_INSTANCE "{\"machine\":\"order\",\"version\":1,\"instance_id\":\"$id\",\"initial_ctx\":{\"n\":$n}}" ||
            return 1
    done &&
    ls -b "$I" >after &&
    test_line_count = $(( $(wc -l <before) + n )) after &&
    : "each new entry opens, and together they hold every context" &&
    for e in "$I"/* "$I"/.[!.]* "$I"/..?*; do
        [ -e "$e/ctx.json" ] || continue
        jq -r ".n // empty" "$e/ctx.json"
    done | sort -n >found &&
    seq "$n" >expect &&
    test_cmp expect found
EOT

test_expect_success 'the escaping is the README'"'"'s: %2F, %2E, %2E%2E, %00, %25' - <<\EOT
    rcp_call CREATE_INSTANCE '{"machine":"order","version":1,"instance_id":"","initial_ctx":{"n":"empty"}}' &&
    rcp_call CREATE_INSTANCE '{"machine":"order","version":1,"instance_id":"100%","initial_ctx":{"n":"pct"}}' &&
    jq -e '.n == 1' "$I/a%2Fb/ctx.json" &&
    jq -e '.n == 2' "$I/%2E%2E/ctx.json" &&
    jq -e '.n == 3' "$I/%2E/ctx.json" &&
    jq -e '.n == "empty"' "$I/%00/ctx.json" &&
    jq -e '.n == "pct"' "$I/100%25/ctx.json" &&
    echo "PAY" >"$I/a%2Fb/events" &&
    rcp_call GET_INSTANCE '{"instance_id":"a/b"}' >got &&
    jq -e '.state == "paid"' got
EOT

test_expect_success 'the mount still answers, and so does RCP' - <<\EOT
    echo shipped >expect &&
    test_cmp expect "$I/r-1/state" &&
    rcp_call PING &&
    stop_mount "$M"
EOT

test_done
