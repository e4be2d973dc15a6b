#!/usr/bin/env bash
# order-workflow.sh - an order's whole life through the mount, with nothing
# but the shell: define the machine, create instances, apply events, read
# state, context and history, and see what a refused event looks like.
#
# Run it on a mounted stmfs (scripts/run.sh mounts one at /tmp/stmfs-demo/mnt):
#
#     examples/order-workflow.sh /tmp/stmfs-demo/mnt [ID]
#
# ID names the order it creates (default o-<pid>); a second order, ID-big,
# takes the other branch of PAY. Each step prints the command it runs as
# "$ ..." and then what it printed. What you will see, in short:
#
#     $ cp examples/order.json MNT/machines/order/definition.json
#     $ echo 'o-42 {"customer":"alice","amount":0}' > MNT/machines/order/new
#     $ cat MNT/instances/o-42/state
#     created
#     $ echo 'PAY {"amount":0}' > MNT/instances/o-42/events
#     write refused: Permission denied
#     $ cat MNT/instances/o-42/error
#     code GUARD_FAILED
#     message guard failed: ... (guard: payload.amount > 0)
#     ...
#     $ cat MNT/instances/o-42/state
#     delivered
#
# and the exit status is 0 when every step did what it says.
set -euo pipefail

mnt=${1:?usage: order-workflow.sh MOUNTPOINT [ID]}
id=${2:-o-$$}
here=$(cd "$(dirname "$0")" && pwd)
# Work from the mount's root, so every command shown reads as you would
# type it there.
cd "$mnt"
m=machines/order
i=instances/$id

# show CMD: prints the command as typed, then runs it through the shell so
# that redirections work exactly as they would at a prompt.
show() {
    printf '$ %s\n' "$*"
    eval "$*"
}

# refuse CMD: the command must fail; prints the errno message the shell got.
# stmfs refuses a write with an errno (EACCES for a failed guard, EPERM for
# an event the state does not allow) and says why in the error file.
refuse() {
    printf '$ %s\n' "$*"
    local out
    if out=$(eval "$*" 2>&1); then
        echo "unexpected: the write was accepted" >&2
        exit 1
    fi
    echo "write refused: ${out##*: }"
}

expect_state() {
    local got
    got=$(cat "instances/$1/state")
    if [ "$got" != "$2" ]; then
        echo "unexpected: $1 is in state '$got', not '$2'" >&2
        exit 1
    fi
}

echo "# 1. Define the machine: a directory, and its definition written into it."
# mkdir -p: the machine may exist from an earlier run; writing the same
# definition again is a no-op, a different one would become version 2.
show "mkdir -p $m"
show "cp '$here/order.json' $m/definition.json"
show "ls $m/versions"

echo
echo "# 2. Create an order: one line into new, 'ID CONTEXT-JSON'."
show "echo '$id {\"customer\":\"alice\",\"amount\":0}' > $m/new"
show "cat $i/state"
echo "# The events allowed from here, one a line:"
show "cat $i/events"

echo
echo "# 3. A refused event: PAY's guards need payload.amount > 0."
refuse "echo 'PAY {\"amount\":0}' > $i/events"
show "cat $i/error"
expect_state "$id" created
echo "# And an event the state does not have at all:"
refuse "echo DELIVER > $i/events"
show "cat $i/error"

echo
echo "# 4. Pay, ship, deliver. A payload is merged into the context."
show "echo 'PAY {\"amount\":42}' > $i/events"
show "cat $i/state"
show "echo 'SHIP {\"address\":\"1 Main St\"}' > $i/events"
show "echo DELIVER > $i/events"
show "cat $i/state"
expect_state "$id" delivered
show "cat $i/ctx.json"

echo
echo "# 5. Its history: one JSON line per change, straight from the log."
show "cat $i/history"

echo
echo "# 6. The same event, another branch: PAY of 1000 or more waits for review."
show "echo '$id-big {\"customer\":\"bob\"}' > $m/new"
show "echo 'PAY {\"amount\":2500}' > instances/$id-big/events"
show "cat instances/$id-big/state"
expect_state "$id-big" review
show "echo APPROVE > instances/$id-big/events"
show "cat instances/$id-big/state"
expect_state "$id-big" paid

echo
echo "# 7. Every instance of the machine, and what it looks like drawn:"
show "ls $m/instances"
echo "# (dot -Tsvg $mnt/$m/graph.dot > order.svg draws it with Graphviz)"
