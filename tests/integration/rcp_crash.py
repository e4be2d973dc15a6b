#!/usr/bin/env python3
"""rcp_crash.py STMFS [ROUNDS] - kill -9 under every_write while RCP clients
write: every write the server acknowledged is there after a restart.

Each round: 12 clients on their own connections (so that the server's loop
sees every client waiting for the log and syncs groups itself, the path
most requests take under load), each creating an instance and applying
PAY then SHIP to it in a loop, remembering what was acknowledged; SIGKILL
at a random moment; start again on the same data; check every
acknowledged instance and state. A request in flight at the kill may or may
not have been applied, so an instance may be one step past what its client
heard, never behind. ROUNDS defaults to 5 (STMFS_CRASH_ROUNDS for a soak).
"""

import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rcp_lib import ORDER_DEF, Closed, Server  # noqa: E402

STMFS = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else int(os.environ.get("STMFS_CRASH_ROUNDS", "5"))
CLIENTS = 12
NEXT = {"created": "paid", "paid": "shipped"}


def client(srv, cid, rnd, acked, stop):
    try:
        c = srv.connect(timeout=5)
        n = 0
        while not stop.is_set():
            iid = "r%d-c%d-%d" % (rnd, cid, n)
            n += 1
            r = c.call("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": iid,
                                           "initial_ctx": {"amount": 5}})
            if r.get("status") != "ok":
                return
            acked[iid] = "created"
            for ev in ("PAY", "SHIP"):
                r = c.call("APPLY_EVENT", {"instance_id": iid, "event": ev})
                if r.get("status") != "ok":
                    return
                acked[iid] = r["result"]["to_state"]
    except (Closed, OSError, TimeoutError, ValueError):
        return  # the kill


def main():
    srv = Server(STMFS)
    srv.write_config("storage:\n  fsync_policy: every_write\n")
    srv.start()
    srv.connect().ok("PUT_MACHINE", {"machine": "order", "version": 1, "definition": ORDER_DEF})
    rng = random.Random(os.getpid())
    total = 0
    try:
        for rnd in range(ROUNDS):
            acked, stop = {}, threading.Event()
            ts = [threading.Thread(target=client, args=(srv, i, rnd, acked, stop))
                  for i in range(CLIENTS)]
            for t in ts:
                t.start()
            time.sleep(0.4 + rng.random())
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait()
            stop.set()
            for t in ts:
                t.join(10)
            srv.proc.stdout.close()
            srv.errlog.close()
            srv.proc = None
            assert len(acked) > CLIENTS, "round %d: only %d instances acknowledged" % (rnd, len(acked))
            srv.start()
            c = srv.connect()
            lost = []
            for iid, state in sorted(acked.items()):
                r = c.call("GET_INSTANCE", {"instance_id": iid})
                got = r.get("result", {}).get("state") if r.get("status") == "ok" else None
                if got != state and got != NEXT.get(state):
                    lost.append((iid, state, got))
            c.close()
            assert not lost, "round %d: acknowledged writes lost after kill -9: %r" % (rnd, lost[:10])
            total += len(acked)
            print("ok - round %d: %d acknowledged instances intact after kill -9" % (rnd, len(acked)),
                  flush=True)
    finally:
        srv.stop()
        srv.cleanup()
    print("rcp-crash: all %d rounds passed (%d instances)" % (ROUNDS, total))


main()
