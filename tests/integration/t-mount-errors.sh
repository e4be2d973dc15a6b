#!/usr/bin/env bash
# Test bodies are here-documents eval'd by lib.sh; shellcheck cannot see
# the variables they use.
# shellcheck disable=SC2034,SC2016,SC2317
test_description='bad input gets a clear error and changes nothing: rejected
events, junk bytes, oversize writes, malformed JSON, odd names, writes to
files that only read; and the mount stays alive through all of it'
. "$(dirname "$0")/lib.sh"

M=$TEST_DIR/mnt
I=$M/instances
O=$M/machines/order

# snapshot ID: what a user could notice of an instance, to compare later.
snapshot() {
    cat "$I/$1/state" "$I/$1/ctx.json" "$I/$1/history"
}

# rejected FILE TEXT: `echo TEXT > FILE` fails with "write error: <reason>",
# which lands in the file "msg" (and the log).
rejected() {
    test_must_fail write_line "$1" "$2" 2>msg || return 1
    cat msg
    grep -q "write error: ." msg || grep -q ": ." msg
}

test_expect_success 'setup: an order machine and an instance' - <<\EOT
    start_mount data mnt &&
    mkdir "$O" &&
    order_definition >order.json &&
    cp order.json "$O/definition.json" &&
    echo 'o-1 {"customer": "alice"}' >"$O/new" &&
    snapshot o-1 >o-1.before
EOT

# The errno of each code: a user sees the message the shell prints. What
# matters is that it is an error message that reads sensibly, that error
# names the code, and that nothing changed; the exact errno of each code
# is the README's table, checked below when the README has one.
test_expect_success 'a wrong event: write error, error names INVALID_TRANSITION' - <<\EOT
    rejected "$I/o-1/events" SHIP &&
    ! grep -E "Success|Input/output error" msg &&
    cp msg msg.INVALID_TRANSITION &&
    grep INVALID_TRANSITION "$I/o-1/error" &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'an unknown event: the same' - <<\EOT
    rejected "$I/o-1/events" FLY &&
    grep INVALID_TRANSITION "$I/o-1/error" &&
    grep FLY "$I/o-1/error" &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'an indented unknown event: error still names it' - <<\EOT
    rejected "$I/o-1/events" "   FLY  " &&
    grep -x "event FLY" "$I/o-1/error" &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'a conflict on expected_state: write error, error names CONFLICT' - <<\EOT
    rejected "$I/o-1/events" '{"event": "PAY", "expected_state": "paid"}' &&
    ! grep -E "Success|Input/output error" msg &&
    cp msg msg.CONFLICT &&
    grep CONFLICT "$I/o-1/error" &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'a false guard: write error, error names GUARD_FAILED' - <<\EOT
    echo o-2 >"$O/new" &&
    echo PAY >"$I/o-2/events" &&
    snapshot o-2 >o-2.before &&
    rejected "$I/o-2/events" SHIP &&
    ! grep -E "Success|Input/output error" msg &&
    cp msg msg.GUARD_FAILED &&
    grep GUARD_FAILED "$I/o-2/error" &&
    snapshot o-2 >now && test_cmp o-2.before now
EOT

test_expect_success 'an id that exists: new fails' - <<\EOT
    rejected "$O/new" o-1 &&
    ! grep -E "Success|Input/output error" msg &&
    cp msg msg.INSTANCE_EXISTS &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'new on a machine with no version yet fails' - <<\EOT
    mkdir "$M/machines/empty" &&
    test_must_fail write_line "$M/machines/empty/new" e-1 2>msg &&
    cat msg &&
    ! test -e "$I/e-1"
EOT

test_expect_success 'malformed JSON after an event: write error, nothing changes' - <<\EOT
    rejected "$I/o-1/events" 'PAY {"amount":' &&
    ! grep -E "Success|Input/output error" msg &&
    cp msg msg.BAD_REQUEST &&
    test -s "$I/o-1/error" &&
    rejected "$I/o-1/events" '{"event": "PAY", "payload": [1, 2' &&
    rejected "$I/o-1/events" '{"event": 5}' &&
    rejected "$I/o-1/events" '{"payload": {}}' &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'malformed context in new: write error, no instance' - <<\EOT
    rejected "$O/new" 'o-9 {"customer":' &&
    ! test -e "$I/o-9" &&
    rejected "$O/new" '{"instance_id": "o-9", "initial_ctx": ' &&
    ! test -e "$I/o-9"
EOT

test_expect_success PYTHON 'the README errno table is what the shell sees' - <<\EOT
    python3 - "$TEST_SRC_DIR/../../README.md" <<-\PY
	import errno, os, re, sys
	# A table row names a code and its errno (e.g. | INVALID_TRANSITION | EINVAL |).
	rows = [l for l in open(sys.argv[1], encoding="utf-8") if l.lstrip().startswith("|")]
	checked = 0
	for code in ["INVALID_TRANSITION", "CONFLICT", "GUARD_FAILED", "INSTANCE_EXISTS", "BAD_REQUEST"]:
	    names = [t for l in rows if re.search(r"\b%s\b" % code, l)
	             for t in re.findall(r"\bE[A-Z0-9]{2,}\b", l) if hasattr(errno, t)]
	    if not names:
	        continue
	    text = os.strerror(getattr(errno, names[0]))
	    seen = open("msg." + code).read()
	    print("%s -> %s (%s): %s" % (code, names[0], text, seen.strip()))
	    assert text in seen, "README says %s for %s, the shell said: %s" % (names[0], code, seen)
	    checked += 1
	print("checked %d codes against the README" % checked)
	PY
EOT

test_expect_success PYTHON 'binary junk to events: write error, nothing changes' - <<\EOT
    python3 -c "import random, sys; r = random.Random(5); sys.stdout.buffer.write(bytes(r.randrange(256) for _ in range(4096)) + b'\n')" >junk &&
    test_must_fail cat junk >"$I/o-1/events" 2>msg &&
    cat msg &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success PYTHON 'error repeats binary junk as a short excerpt in readable UTF-8' - <<\EOT
    test_must_fail cat junk >"$I/o-1/events" &&
    python3 - "$I/o-1/error" <<-\PY
	import sys
	data = open(sys.argv[1], "rb").read()
	text = data.decode("utf-8")  # raw junk bytes would not decode
	bad = [c for c in text if c != "\n" and (ord(c) < 0x20 or ord(c) == 0x7f)]
	assert not bad, "control characters in error: %r" % text
	assert "\\x" in text, "the junk's bytes are not shown escaped: %r" % text
	assert len(data) < 2048, "error is %d bytes for one bad line" % len(data)
	PY
EOT

test_expect_success 'error shows a 2 MB event name cut short, with its length' - <<\EOT
    head -c 2000000 /dev/zero | tr "\0" A >long-event &&
    echo >>long-event &&
    test_must_fail cat long-event >"$I/o-1/events" &&
    grep "^code BAD_REQUEST" "$I/o-1/error" &&
    grep -F "... (2000000 bytes in all)" "$I/o-1/error" &&
    test "$(stat -c %s "$I/o-1/error")" -lt 2048 &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'invalid UTF-8 in an event line: write error' - <<\EOT
    test_must_fail eval 'printf "PAY \xff\xfe\n" >"$I/o-1/events"' &&
    test_must_fail eval 'printf "\xc3\x28\n" >"$I/o-1/events"' &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'a NUL byte in an event line: write error, the event is not applied' - <<\EOT
    echo o-nul >"$O/new" &&
    snapshot o-nul >o-nul.before &&
    test_must_fail eval 'printf "PAY\0junk\n" >"$I/o-nul/events"' &&
    snapshot o-nul >now && test_cmp o-nul.before now
EOT

test_expect_success 'a NUL byte in a line of new: write error, no instance' - <<\EOT
    ls "$I" >before &&
    test_must_fail eval 'printf "nul\0id\n" >"$O/new"' &&
    ls "$I" >after &&
    test_cmp before after
EOT

test_expect_success PYTHON 'binary junk to new: write error, no instance appears' - <<\EOT
    ls "$I" >before &&
    test_must_fail cat junk >"$O/new" 2>msg &&
    printf "\xff\xfe\xfd\n" >bad-id &&
    test_must_fail cat bad-id >"$O/new" &&
    ls "$I" >after &&
    test_cmp before after
EOT

test_expect_success PYTHON 'binary junk to definition.json: cp fails, versions stay' - <<\EOT
    ls "$O/versions" >before &&
    test_must_fail cp junk "$O/definition.json" &&
    ls "$O/versions" >after &&
    test_cmp before after
EOT

test_expect_success 'a 17 MiB line to events: write error, nothing changes' - <<\EOT
    head -c $((17 * 1024 * 1024)) /dev/zero | tr "\0" A >big &&
    echo >>big &&
    test_must_fail cat big >"$I/o-1/events" 2>msg &&
    cat msg &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'a 17 MiB payload: write error, nothing changes' - <<\EOT
    { printf "PAY {\"blob\": \""; head -c $((17 * 1024 * 1024)) /dev/zero | tr "\0" B; printf "\"}\n"; } >bigpay &&
    test_must_fail cat bigpay >"$I/o-1/events" 2>msg &&
    cat msg &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'malformed definitions fail cp and define nothing' - <<\EOT
    ls "$O/versions" >before &&
    cp "$O/definition.json" def.before &&
    for bad in '{"states": ["a"], "initial": ' \
               '[]' \
               '{"states": ["a", "b"], "transitions": []}' \
               '{"states": ["a"], "initial": "a", "transitions": [{"from": "a", "event": "E", "to": "zz"}]}' \
               '{"states": ["a"], "initial": "a", "transitions": [{"from": "a", "event": "E", "to": "a", "guard": "ctx.x >"}]}' \
               '{"states": ["a", "b"], "initial": "a", "transitions": [{"from": "a", "event": "E", "to": "b"}, {"from": "a", "event": "E", "to": "a"}]}'
    do
        printf "%s\n" "$bad" >bad.json &&
        test_must_fail cp bad.json "$O/definition.json" 2>msg &&
        cat msg || return 1
    done &&
    ls "$O/versions" >after &&
    test_cmp before after &&
    test_cmp def.before "$O/definition.json"
EOT

test_expect_success 'malformed YAML to definition.yaml fails and defines nothing' - <<\EOT
    ls "$O/versions" >before &&
    printf "states: [a, b\ninitial: : a\n" >bad.yaml &&
    test_must_fail cp bad.yaml "$O/definition.yaml" &&
    ls "$O/versions" >after &&
    test_cmp before after
EOT

test_expect_success 'files that only read refuse writes: Permission denied' - <<\EOT
    for f in "$I/o-1/state" "$I/o-1/ctx.json" "$I/o-1/info.json" "$I/o-1/history" \
             "$I/o-1/error" "$M/wal/entries" "$M/wal/stats.json" "$O/graph.dot" \
             "$O/versions/1.json"; do
        test_must_fail write_line "$f" junk 2>msg || { echo "$f took a write"; return 1; }
        cat msg &&
        grep -q "Permission denied" msg || return 1
    done &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'files of an instance cannot be removed, added or renamed' - <<\EOT
    test_must_fail rm "$I/o-1/state" &&
    test_must_fail touch "$I/o-1/extra" &&
    test_must_fail mv "$I/o-1/ctx.json" "$I/o-1/ctx2.json" &&
    test_must_fail mkdir "$I/o-1/sub" &&
    test -f "$I/o-1/state" && ! test -e "$I/o-1/extra" &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'links and special files are refused: Operation not permitted' - <<\EOT
    test_must_fail ln -s state "$I/o-1/link" 2>msg &&
    test_must_fail ln "$I/o-1/state" "$I/o-1/hard" 2>>msg &&
    test_must_fail mkfifo "$O/fifo" 2>>msg &&
    cat msg &&
    test "$(grep -c "Operation not permitted" msg)" = 3 &&
    ! test -e "$I/o-1/link" && ! test -e "$I/o-1/hard" && ! test -e "$O/fifo"
EOT

test_expect_success 'mkdir in instances/ is refused: instances are made through new' - <<\EOT
    test_must_fail mkdir "$I/made-by-mkdir" 2>msg &&
    cat msg &&
    grep "Operation not permitted" msg &&
    ! test -e "$I/made-by-mkdir" &&
    test_must_fail touch "$I/made-by-touch" 2>msg &&
    grep "Operation not permitted" msg
EOT

test_expect_success 'rm -r of an instance stops at its files; error points at rmdir' - <<\EOT
    echo o-rmr >"$O/new" &&
    test_must_fail rm -r "$I/o-rmr" 2>msg &&
    grep "Operation not permitted" msg &&
    test "$(cat "$I/o-rmr/state")" = created &&
    cat "$I/o-rmr/error" &&
    grep "^message .*rmdir" "$I/o-rmr/error" &&
    grep "^unlink " "$I/o-rmr/error" &&
    rmdir "$I/o-rmr" &&
    ! test -e "$I/o-rmr"
EOT

test_expect_success 'rmdir of a machine that has versions: Directory not empty' - <<\EOT
    test_must_fail rmdir "$O" 2>msg &&
    cat msg &&
    grep "Directory not empty" msg &&
    test -f "$O/versions/1.json"
EOT

test_expect_success 'after a rejected line the open file refuses further lines' - <<\EOT
    echo o-fd >"$O/new" &&
    snapshot o-fd >o-fd.before &&
    (
        exec 3>"$I/o-fd/events" &&
        { echo SHIP >&3; } 2>msg1
        test $? != 0 &&
        { echo PAY >&3; } 2>msg2
        test $? != 0
    ) &&
    cat msg1 msg2 &&
    sed "s/.*write error: //" msg1 >e1 &&
    sed "s/.*write error: //" msg2 >e2 &&
    test_cmp e1 e2 &&
    snapshot o-fd >now && test_cmp o-fd.before now &&
    echo PAY >"$I/o-fd/events" &&
    echo paid >expect && test_cmp expect "$I/o-fd/state"
EOT

test_expect_success 'an instance cannot be renamed' - <<\EOT
    test_must_fail mv "$I/o-1" "$I/o-renamed" &&
    test -d "$I/o-1" && ! test -e "$I/o-renamed"
EOT

test_expect_success 'names that do not exist say No such file or directory' - <<\EOT
    test_must_fail cat "$I/nope/state" 2>msg &&
    grep "No such file or directory" msg &&
    test_must_fail write_line "$I/nope/events" PAY 2>msg &&
    grep "No such file or directory" msg &&
    test_must_fail cat "$O/versions/99.json" 2>msg &&
    grep "No such file or directory" msg
EOT

test_expect_success JQ 'odd names through the mount: spaces, unicode, dashes' - <<\EOT
    mkdir "$M/machines/my order" "$M/machines/caf$(printf "\303\251")" &&
    cp order.json "$M/machines/my order/definition.json" &&
    echo '{"instance_id": "with space"}' >"$M/machines/my order/new" &&
    echo "-leading-dash" >"$M/machines/my order/new" &&
    echo "$(printf "\303\251t\303\251")" >"$M/machines/my order/new" &&
    echo created >expect &&
    test_cmp expect "$I/with space/state" &&
    test_cmp expect "$I/-leading-dash/state" &&
    test_cmp expect "$I/$(printf "\303\251t\303\251")/state" &&
    jq -e '.machine == "my order"' "$I/with space/info.json" &&
    ls "$M/machines" >actual &&
    grep -x "my order" actual &&
    grep -x "caf$(printf "\303\251")" actual
EOT

test_expect_success 'truncating events applies nothing' - <<\EOT
    : >"$I/o-1/events" &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

# close(2) of any descriptor of an open file sends FUSE FLUSH, also the
# exit of a child that inherited it. Only the opener's close ends the input.
test_expect_success 'a child closing an inherited descriptor does not end the line' - <<\EOT
    echo o-split >"$O/new" &&
    { printf 'CANCEL'; /bin/true; printf ' {"reason":"dup"}\n'; } >"$I/o-split/events" &&
    echo cancelled >expect &&
    test_cmp expect "$I/o-split/state" &&
    grep -F '"reason": "dup"' "$I/o-split/ctx.json" &&
    test_line_count = 2 "$I/o-split/history"
EOT

test_expect_success 'a definition written by two cats in a subshell is one version' - <<\EOT
    mkdir "$M/machines/split2" &&
    printf 'states: [a, b]\ninitial: a\ntransitions:\n  - {from: a, event: GO, to: b}\n' >q1.yaml &&
    printf '  - {from: b, event: BACK, to: a}\n' >q2.yaml &&
    (cat q1.yaml; cat q2.yaml) >"$M/machines/split2/definition.yaml" &&
    echo 1.json >expect &&
    ls "$M/machines/split2/versions" >actual &&
    test_cmp expect actual &&
    grep -F "BACK" "$M/machines/split2/definition.yaml"
EOT

test_expect_success 'a definition invalid in its first half: no error, one version' - <<\EOT
    mkdir "$M/machines/split3" &&
    printf 'states: [a, b]\n' >h1.yaml &&
    printf 'initial: a\ntransitions:\n  - {from: a, event: GO, to: b}\n' >h2.yaml &&
    (cat h1.yaml; cat h2.yaml) >"$M/machines/split3/definition.yaml" 2>msg &&
    test_must_be_empty msg &&
    test_must_be_empty "$M/machines/split3/error" &&
    echo 1.json >expect &&
    ls "$M/machines/split3/versions" >actual &&
    test_cmp expect actual
EOT

test_expect_success PYTHON 'a line rejected when a dup is closed: nothing after it is applied' - <<\EOT
    echo o-dup >"$O/new" &&
    snapshot o-dup >o-dup.before &&
    python3 - "$I/o-dup/events" <<-\PY &&
	import os, sys
	fd = os.open(sys.argv[1], os.O_WRONLY)
	os.write(fd, b"PA")
	try:
	    os.close(os.dup(fd))
	    raise SystemExit("closing a dup did not report the rejected line PA")
	except OSError as e:
	    first = e.errno
	    print("close of the dup:", e)
	try:
	    os.write(fd, b'PAY {"amount":3}\n')
	    raise SystemExit("a line written after the rejected PA was applied")
	except OSError as e:
	    print("the next write:", e)
	    assert e.errno == first, (e.errno, first)
	os.close(fd)
	PY
    grep -x "event PA" "$I/o-dup/error" &&
    snapshot o-dup >now && test_cmp o-dup.before now
EOT

test_expect_success 'a line left by another process is applied at the last close, its error logged' - <<\EOT
    echo o-rel >"$O/new" &&
    snapshot o-rel >o-rel.before &&
    (
        exec 3>"$I/o-rel/events" || exit 1
        sh -c 'sleep 0.3; printf SHIP >&3' &
        exec 3>&-
        wait
    ) &&
    test_poll 10 'grep -qx "event SHIP" "$I/o-rel/error"' &&
    cat "$I/o-rel/error" &&
    grep INVALID_TRANSITION "$I/o-rel/error" &&
    grep "instances/o-rel/events" data/stmfs.log | grep INVALID_TRANSITION &&
    snapshot o-rel >now && test_cmp o-rel.before now
EOT

# The FUSE request names a thread, not a process: a program that closes
# on another thread than it opened on (Go does) is still the opener.
test_expect_success PYTHON 'a close on another thread of the opener still fails with the error' - <<\EOT
    ls "$O/versions" >before &&
    python3 - "$O/definition.json" <<-\PY &&
	import os, sys, threading
	bad = b'{"states": ["a"], "initial": "nowhere", "transitions": []}\n'
	missed = []
	def must_fail(fd, how):
	    try:
	        os.close(fd)
	    except OSError as e:
	        print(how, "->", e)
	        return
	    missed.append(how)
	# opened on the main thread, closed on another
	fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
	os.write(fd, bad)
	t = threading.Thread(target=must_fail, args=(fd, "open on main, close on a thread"))
	t.start(); t.join()
	# opened on a thread that is still there, closed on the main thread
	opened, done, box = threading.Event(), threading.Event(), {}
	def opener():
	    box["fd"] = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
	    opened.set()
	    done.wait()
	t = threading.Thread(target=opener)
	t.start(); opened.wait()
	os.write(box["fd"], bad)
	must_fail(box["fd"], "open on a thread, close on main")
	done.set(); t.join()
	if missed:
	    raise SystemExit("close did not report the rejected definition: " + "; ".join(missed))
	PY
    grep nowhere "$O/error" &&
    ls "$O/versions" >after &&
    test_cmp before after
EOT

test_expect_success 'a machine at version 4294967295 takes no new definition: EOVERFLOW' - <<\EOT
    mkdir "$M/machines/ed" &&
    cp order.json "$M/machines/ed/definition.json" &&
    cp "$M/machines/ed/versions/1.json" "$M/machines/ed/versions/4294967295.json" &&
    ls "$M/machines/ed/versions" >before &&
    printf 'states: [x, y]\ninitial: x\ntransitions:\n  - {from: x, event: GO, to: y}\n' >ed.yaml &&
    test_must_fail cp ed.yaml "$M/machines/ed/definition.yaml" 2>msg &&
    cat msg "$M/machines/ed/error" &&
    grep "Value too large for defined data type" msg &&
    grep "already has version 4294967295, the highest there can be" "$M/machines/ed/error" &&
    ls "$M/machines/ed/versions" >after &&
    test_cmp before after &&
    test_must_fail cp ed.yaml "$M/machines/ed/definition.yaml" 2>msg &&
    grep "Value too large for defined data type" msg &&
    cp order.json "$M/machines/ed/definition.json" &&
    ls "$M/machines/ed/versions" >after &&
    test_cmp before after
EOT

test_expect_success 'a params line naming another machine or instance: EINVAL' - <<\EOT
    mkdir "$M/machines/g" &&
    cp order.json "$M/machines/g/definition.json" &&
    ls "$I" >before &&
    test_must_fail write_line "$M/machines/g/new" '{"instance_id": "g-1", "machine": "order"}' 2>msg &&
    cat msg "$M/machines/g/error" &&
    grep "Invalid argument" msg &&
    grep -F "the line names machine 'order' but this is machines/g/new" "$M/machines/g/error" &&
    ls "$I" >after &&
    test_cmp before after &&
    echo '{"instance_id": "g-2", "machine": "g"}' >"$M/machines/g/new" &&
    echo created >expect &&
    test_cmp expect "$I/g-2/state" &&
    test_must_fail write_line "$I/g-2/events" '{"event": "PAY", "instance_id": "o-1"}' 2>msg &&
    cat msg "$I/g-2/error" &&
    grep "Invalid argument" msg &&
    grep -F "the line names instance 'o-1' but this is instances/g-2/events" "$I/g-2/error" &&
    test_cmp expect "$I/g-2/state" &&
    snapshot o-1 >now && test_cmp o-1.before now &&
    echo '{"event": "PAY", "instance_id": "g-2"}' >"$I/g-2/events" &&
    echo paid >expect &&
    test_cmp expect "$I/g-2/state"
EOT

# Asking for the mode or owner a file has already is no change: it succeeds.
test_expect_success 'chmod and chown are refused: Operation not permitted' - <<\EOT
    stat -c "%a %u %g" "$I/o-1/state" "$I/o-1" "$O/definition.json" "$O/new" >attrs.before &&
    test_must_fail chmod 600 "$I/o-1/state" 2>msg &&
    test_must_fail chmod 700 "$I/o-1" 2>>msg &&
    test_must_fail chmod 600 "$O/definition.json" 2>>msg &&
    test_must_fail chown nobody "$O/new" 2>>msg &&
    test_must_fail chgrp nogroup "$I/o-1/events" 2>>msg &&
    cat msg &&
    test "$(grep -c "Operation not permitted" msg)" = 5 &&
    stat -c "%a %u %g" "$I/o-1/state" "$I/o-1" "$O/definition.json" "$O/new" >attrs.after &&
    test_cmp attrs.before attrs.after &&
    chmod 444 "$I/o-1/state" &&
    chmod 644 "$O/definition.json" &&
    chown "$(stat -c %u:%g "$O/new")" "$O/new" &&
    touch "$I/o-1/state" "$O/definition.json" &&
    touch -d "2020-01-01" "$I/o-1/events" &&
    truncate -s 0 "$I/o-1/events" &&
    : >"$I/o-1/events" &&
    snapshot o-1 >now && test_cmp o-1.before now
EOT

test_expect_success 'mkdir of a name with a stray %: EINVAL, and the log says to write %25' - <<\EOT
    test_must_fail mkdir "$M/machines/50%off" 2>msg &&
    cat msg &&
    grep "Invalid argument" msg &&
    grep -F "machines/50%off" data/stmfs.log >logged &&
    cat logged &&
    grep -F "%25" logged &&
    grep -F "50%25off" logged &&
    ! test -e "$M/machines/50%off"
EOT

test_expect_success 'after all of that the mount and RCP still answer' - <<\EOT
    echo created >expect &&
    test_cmp expect "$I/o-1/state" &&
    echo PAY >"$I/o-1/events" &&
    echo paid >expect &&
    test_cmp expect "$I/o-1/state" &&
    rcp_call PING &&
    stop_mount "$M"
EOT

test_expect_success 'chmod and chown on a read-only mount: Read-only file system' - <<\EOT
    start_mount data romnt -o ro &&
    test_must_fail chmod 600 romnt/instances/o-1/state 2>msg &&
    test_must_fail chown nobody romnt/machines/order/definition.json 2>>msg &&
    cat msg &&
    test "$(grep -c "Read-only file system" msg)" = 2 &&
    stop_mount romnt
EOT

test_expect_success 'configured limits: each refuses with a clear message, changes nothing' - <<\EOT
    cat >limits.yaml <<-\EOF &&
	limits:
	  max_id_bytes: 12
	  max_states: 3
	  max_payload_bytes: 64
	  max_line_bytes: 200
	  max_frame_bytes: 2048
	EOF
    start_mount ldata lmnt -c limits.yaml &&
    L=$TEST_DIR/lmnt &&
    mkdir "$L/machines/order" &&
    test_must_fail cp order.json "$L/machines/order/definition.json" 2>msg &&
    grep -q "4 states, over limits.max_states (3)" "$L/machines/order/error" &&
    test_must_fail ls "$L/machines/order/versions/1.json" &&
    echo '{"states":["a","b"],"initial":"a","transitions":[{"from":"a","event":"GO","to":"b"}]}' \
        >"$L/machines/order/definition.json" &&
    echo short-id >"$L/machines/order/new" &&
    test_must_fail write_line "$L/machines/order/new" an-id-too-long 2>msg &&
    grep -q "over limits.max_id_bytes (12)" "$L/machines/order/error" &&
    test_must_fail ls "$L/instances/an-id-too-long" &&
    test_must_fail write_line "$L/instances/short-id/events" \
        "GO {\"note\": \"$(printf '%080d' 0)\"}" 2>msg &&
    grep -q "over limits.max_payload_bytes (64)" "$L/instances/short-id/error" &&
    test_must_fail write_line "$L/instances/short-id/events" "GO $(printf '%0300d' 0)" 2>msg &&
    grep -q "longer than 200 bytes (limits.max_line_bytes)" "$L/instances/short-id/error" &&
    echo a >expect && test_cmp expect "$L/instances/short-id/state" &&
    rcp_call INFO >info &&
    jq -e ".max_frame_bytes == 2048" info &&
    test_must_fail rcp_call GET_INSTANCE "{\"instance_id\": \"short-id\", \"pad\": \"$(printf '%03000d' 0)\"}" &&
    rcp_call GET_INSTANCE '{"instance_id": "short-id"}' >got &&
    jq -e '.state == "a"' got &&
    echo GO >"$L/instances/short-id/events" &&
    echo b >expect && test_cmp expect "$L/instances/short-id/state" &&
    stop_mount "$L"
EOT

test_expect_success 'a misspelt config key: the mount warns, in the terminal and the log' - <<\EOT
    printf "storage:\n  fsync_polcy: never\nstorag:\n  x: 1\n" >typo.yaml &&
    start_mount typo-data typo-mnt -c typo.yaml &&
    cat typo-data.mount-out &&
    grep "warning: config: ignoring storage.fsync_polcy, storag: no such setting" typo-data.mount-out &&
    grep "ignoring storage.fsync_polcy, storag" typo-data/stmfs.log &&
    stop_mount typo-mnt
EOT

test_done
