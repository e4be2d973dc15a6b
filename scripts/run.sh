#!/usr/bin/env bash
# Installs what is missing, builds stmfs, and mounts a demo database:
#   data in   ${STMFS_DEMO:-/tmp/stmfs-demo}/data
#   mount at  ${STMFS_DEMO:-/tmp/stmfs-demo}/mnt
#   RCP on    127.0.0.1:7401 (rstmdb's CLI and clients connect here)
# with an example machine and one instance in it. Stop it with
#   fusermount3 -u /tmp/stmfs-demo/mnt
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_packages
build build
stmfs=$PWD/build/stmfs
demo=${STMFS_DEMO:-/tmp/stmfs-demo}
mnt=$demo/mnt
mkdir -p "$demo/data" "$mnt"

if mountpoint -q "$mnt"; then
    echo "a demo is already mounted at $mnt (stop it: fusermount3 -u $mnt)"
    exit 0
fi
fusermount3 -u "$mnt" 2>/dev/null || true

"$stmfs" mount "$demo/data" "$mnt" --bind 127.0.0.1:7401
if [ ! -d "$mnt/machines/order" ]; then
    mkdir "$mnt/machines/order"
    cp examples/order.json "$mnt/machines/order/definition.json"
    echo 'o-1 {"customer":"alice","amount":0}' > "$mnt/machines/order/new"
fi

cat <<MSG
stmfs is mounted at $mnt, with RCP on 127.0.0.1:7401.

Try:
  cat $mnt/instances/o-1/state
  cat $mnt/instances/o-1/events              # what you may do next
  echo 'PAY {"amount":42}' > $mnt/instances/o-1/events
  cat $mnt/instances/o-1/ctx.json
  cat $mnt/instances/o-1/history
  $stmfs wal verify $demo/data

Stop it with: fusermount3 -u $mnt
MSG
