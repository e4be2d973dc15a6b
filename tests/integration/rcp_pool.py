#!/usr/bin/env python3
"""rcp_pool.py STMFS - a pool's idle connections beside busy ones.

Services keep pools of connections, most of them idle at any moment. The
loop tracks only the connections that wait for the log or watch (its busy
list), so this drives the bookkeeping of that list through every way in and
out: under every_write, 8 clients create and apply while 150 connections
sit idle (some never said HELLO), watchers subscribe, unsubscribe and
disconnect with responses and events in flight, and idle connections come
and go. Every request must be answered, every watcher must see every event
it subscribed to, and the server must stay up.
"""

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rcp_lib import ORDER_DEF, Server  # noqa: E402

STMFS = sys.argv[1]
CLIENTS = 8
PER_CLIENT = 150
IDLE = 150


def client(srv, cid, results):
    c = srv.connect(timeout=20)
    done = 0
    for n in range(PER_CLIENT):
        iid = "p%d-%d" % (cid, n)
        c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": iid,
                                 "initial_ctx": {"amount": n}}, timeout=20)
        assert c.ok("APPLY_EVENT", {"instance_id": iid, "event": "PAY"},
                    timeout=20)["to_state"] == "paid"
        done += 1
        if n % 20 == 10:
            # pipelined: several responses waiting for the log at once
            for ev, rid in (("SHIP", "a"), ("SHIP", "b")):
                c.send(c.request_msg("APPLY_EVENT", {"instance_id": iid, "event": ev}, rid=rid))
            assert c.response_to("a", timeout=20)["status"] == "ok"
            r = c.response_to("b", timeout=20)
            assert r["status"] == "error" and r["error"]["code"] == "INVALID_TRANSITION", r
    c.close()
    results[cid] = done


def main():
    srv = Server(STMFS)
    srv.write_config("storage:\n  fsync_policy: every_write\n")
    srv.start()
    try:
        admin = srv.connect()
        admin.ok("PUT_MACHINE", {"machine": "order", "version": 1, "definition": ORDER_DEF})
        idle = [srv.connect() for _ in range(IDLE)]
        for conn in idle[: IDLE // 2]:
            conn.hello()
        # one watcher stays for the whole run; another leaves with events queued
        stay = srv.connect()
        stay.ok("WATCH_ALL", {"include_ctx": False, "machines": ["order"], "events": ["PAY"]})
        leave = srv.connect()
        leave.ok("WATCH_ALL", {"include_ctx": False})
        gone = srv.connect()
        sub = gone.ok("WATCH_ALL", {})["subscription_id"]

        results = {}
        ts = [threading.Thread(target=client, args=(srv, i, results)) for i in range(CLIENTS)]
        for t in ts:
            t.start()
        # churn while the clients run: idle connections leave and arrive, a
        # watcher unsubscribes (and stays connected, idle), one disconnects
        for k in range(0, IDLE, 3):
            idle[k].close()
            idle[k] = srv.connect()
        assert gone.ok("UNWATCH", {"subscription_id": sub})["removed"] is True
        leave.close()
        for t in ts:
            t.join(120)
        assert len(results) == CLIENTS and all(v == PER_CLIENT for v in results.values()), results

        pays = set()
        while len(pays) < CLIENTS * PER_CLIENT:
            e = stay.next_event(timeout=20)
            assert e["event"] == "PAY", e
            pays.add(e["instance_id"])
        assert stay.ok("PING") == {"pong": True}
        assert not stay.events, stay.events[:3]
        # the idle connections, old and new, still answer
        for conn in idle[::10]:
            assert conn.ok("PING") == {"pong": True}
        # events from before its UNWATCH may have come; none after it
        assert gone.ok("PING") == {"pong": True}
        gone.events.clear()
        admin.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "late"})
        admin.ok("APPLY_EVENT", {"instance_id": "late", "event": "PAY"})
        assert stay.next_event(timeout=20)["instance_id"] == "late"
        assert gone.ok("PING") == {"pong": True} and not gone.events, gone.events[:3]
        n = admin.ok("LIST_INSTANCES", {"machine": "order", "limit": 1000})
        assert n["total"] == CLIENTS * PER_CLIENT + 1, n["total"]
        print("ok - %d clients x %d beside %d idle connections: every request answered, "
              "%d PAY events to the watcher" % (CLIENTS, PER_CLIENT, IDLE, len(pays)))
        for conn in idle:
            conn.close()
    finally:
        srv.stop()
        srv.cleanup()


main()
