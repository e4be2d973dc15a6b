#!/usr/bin/env python3
"""rcp_interop.py STMFS - every RCP operation against `stmfs serve`, through a
client written from the reference: results and errors of reference §8,
pipelining, watches (filters, include_ctx, from_offset catch-up), BATCH in
both modes, jsonl, metrics, max_connections, idle timeout, graceful
shutdown, and a restart that keeps every acknowledged write.
"""

import json
import os
import re
import socket
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rcp_lib import ORDER_DEF, Conn, Runner, Server, frame  # noqa: E402

STMFS = sys.argv[1]
R = Runner("rcp-interop")
srv = Server(STMFS)
srv.write_config("storage:\n  fsync_policy: every_write\nmetrics:\n  enabled: true\n"
                 "  bind_addr: 127.0.0.1:0\n")
srv.start()
c = srv.connect()
acked = {}  # instance id -> state the server acknowledged
replays = []  # (op, params, result without "applied"): a retry must answer it


def t_session():
    h = c.hello()
    assert h["features"] == ["idempotency", "batch"], h
    assert h["protocol_version"] == 1 and h["wire_mode"] == "binary_json"
    assert h["server_name"] == "stmfs" and isinstance(h["server_version"], str)
    assert c.ok("PING", {}) == {"pong": True}
    info = c.ok("INFO", {})
    assert info["features"] == ["idempotency", "batch", "wal_read"]
    assert info["max_batch_ops"] == 100 and info["max_frame_bytes"] == 16777216
    assert c.ok("AUTH", {"method": "bearer", "token": "x"}) == {"authenticated": True}
    c.err("AUTH", {"method": "bearer", "token": ""}, "AUTH_FAILED")
    c.err("HELLO", {"protocol_version": 2}, "BAD_REQUEST")


def t_machines():
    r = c.ok("PUT_MACHINE", {"machine": "order", "version": 1, "definition": ORDER_DEF})
    assert r["created"] is True and r["machine"] == "order" and r["version"] == 1
    assert re.fullmatch(r"[0-9a-f]{8}", r["stored_checksum"]), r
    again = c.ok("PUT_MACHINE", {"machine": "order", "version": 1, "definition": ORDER_DEF})
    assert again["created"] is False and again["stored_checksum"] == r["stored_checksum"]
    other = dict(ORDER_DEF, initial="paid")
    c.err("PUT_MACHINE", {"machine": "order", "version": 1, "definition": other},
          "MACHINE_VERSION_EXISTS")
    c.err("PUT_MACHINE", {"machine": "bad", "version": 1, "definition": {"states": ["a"],
          "initial": "zzz", "transitions": []}}, "BAD_REQUEST")
    c.ok("PUT_MACHINE", {"machine": "order", "version": 2, "definition": ORDER_DEF})
    g = c.ok("GET_MACHINE", {"machine": "order", "version": 1})
    assert g["checksum"] == r["stored_checksum"]
    assert g["definition"]["transitions"][0]["from"] == ["created"]
    c.err("GET_MACHINE", {"machine": "order", "version": 9}, "MACHINE_NOT_FOUND")
    lm = c.ok("LIST_MACHINES", {})
    assert lm["items"] == [{"machine": "order", "versions": [1, 2]}], lm


def t_instances():
    r = c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "o1",
                                 "initial_ctx": {"customer": "alice"}})
    assert r == {"instance_id": "o1", "state": "created", "wal_offset": r["wal_offset"]}
    assert r["wal_offset"] >> 40 >= 1
    gen = c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1})
    assert re.fullmatch(r"[0-9a-f-]{36}", gen["instance_id"]), gen
    c.err("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "o1"},
          "INSTANCE_EXISTS")
    c.err("CREATE_INSTANCE", {"machine": "nope", "version": 1}, "MACHINE_NOT_FOUND")
    g = c.ok("GET_INSTANCE", {"instance_id": gen["instance_id"]})
    assert g["ctx"] == {} and g["state"] == "created" and g["machine"] == "order"
    assert g["last_wal_offset"] == gen["wal_offset"]
    c.err("GET_INSTANCE", {"instance_id": "nope"}, "INSTANCE_NOT_FOUND")
    a = c.ok("APPLY_EVENT", {"instance_id": "o1", "event": "PAY", "payload": {"amount": 99.99},
                             "expected_state": "created"})
    assert a["applied"] is True and a["from_state"] == "created" and a["to_state"] == "paid"
    assert a["ctx"] == {"amount": 99.99, "customer": "alice"}
    assert a["wal_offset"] > r["wal_offset"]
    assert c.ok("GET_INSTANCE", {"instance_id": "o1"})["last_wal_offset"] == a["wal_offset"]
    acked["o1"] = "paid"
    c.err("APPLY_EVENT", {"instance_id": "o1", "event": "PAY"}, "INVALID_TRANSITION")
    c.err("APPLY_EVENT", {"instance_id": "o1", "event": "CANCEL", "expected_state": "created"},
          "CONFLICT")
    c.err("APPLY_EVENT", {"instance_id": "nope", "event": "PAY"}, "INSTANCE_NOT_FOUND")
    c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "g0",
                             "initial_ctx": {"amount": 0}})
    c.ok("APPLY_EVENT", {"instance_id": "g0", "event": "PAY"})
    c.err("APPLY_EVENT", {"instance_id": "g0", "event": "SHIP"}, "GUARD_FAILED")
    # idempotency: the replay repeats the answer
    k1 = c.ok("APPLY_EVENT", {"instance_id": "o1", "event": "SHIP", "idempotency_key": "k1"})
    k2 = c.ok("APPLY_EVENT", {"instance_id": "o1", "event": "SHIP", "idempotency_key": "k1"})
    assert k2["wal_offset"] == k1["wal_offset"] and k2["to_state"] == "shipped"
    acked["o1"] = "shipped"
    li = c.ok("LIST_INSTANCES", {"machine": "order", "limit": 2, "offset": 0})
    assert li["total"] == 3 and li["has_more"] is True and len(li["instances"]) == 2
    assert set(li["instances"][0]) == {"created_at", "id", "last_wal_offset", "machine", "state",
                                       "updated_at", "version"}
    assert c.ok("LIST_INSTANCES")["total"] == 3  # params absent = {}
    d = c.ok("DELETE_INSTANCE", {"instance_id": "g0"})
    assert d["deleted"] is True and d["instance_id"] == "g0"
    c.err("DELETE_INSTANCE", {"instance_id": "nope"}, "INSTANCE_NOT_FOUND")


def t_wal_and_snapshots():
    w = c.ok("WAL_READ", {"from_offset": 0, "limit": 2})
    assert len(w["records"]) == 2 and w["records"][0]["entry"]["type"] == "put_machine"
    assert w["next_offset"] == w["records"][1]["offset"] + 1
    w2 = c.ok("WAL_READ", {"from_offset": w["next_offset"], "limit": 1})
    assert w2["records"][0]["offset"] > w["records"][1]["offset"]
    c.err("WAL_READ", {}, "BAD_REQUEST")
    st = c.ok("WAL_STATS", {})
    for k in ("entry_count", "segment_count", "total_size_bytes", "latest_offset"):
        assert isinstance(st[k], int), st
    assert set(st["io_stats"]) >= {"bytes_read", "bytes_written", "fsyncs", "reads", "writes"}
    s = c.ok("SNAPSHOT_INSTANCE", {"instance_id": "o1"})
    assert s["instance_id"] == "o1" and s["snapshot_id"].startswith("snap-"), s
    comp = c.ok("COMPACT", {"force_snapshot": False})
    for k in ("bytes_reclaimed", "segments_deleted", "snapshots_created", "total_snapshots",
              "wal_segments"):
        assert isinstance(comp[k], int), comp


def t_pipelining():
    """200 requests written at once, answered in order."""
    p = srv.connect()
    msgs = []
    data = b""
    for i in range(100):
        m1 = p.request_msg("CREATE_INSTANCE", {"machine": "order", "version": 1,
                                                "instance_id": "p%03d" % i})
        m2 = p.request_msg("APPLY_EVENT", {"instance_id": "p%03d" % i, "event": "PAY"})
        msgs += [m1, m2]
        data += frame(json.dumps(m1)) + frame(json.dumps(m2))
    p.send_raw(data)
    for m in msgs:
        r = p.recv()
        assert r["id"] == m["id"] and r["status"] == "ok", r
    for i in range(100):
        acked["p%03d" % i] = "paid"
    p.close()


def t_concurrent_clients():
    """16 connections writing at once all get durable answers."""
    errors = []

    def worker(k):
        try:
            w = srv.connect()
            for i in range(25):
                iid = "c%02d-%02d" % (k, i)
                w.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": iid})
                w.ok("APPLY_EVENT", {"instance_id": iid, "event": "PAY"})
                acked[iid] = "paid"
            w.close()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


def t_watch():
    w = srv.connect()
    w.hello()
    c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "w1",
                             "initial_ctx": {"amount": 5}})
    r = w.ok("WATCH_INSTANCE", {"instance_id": "w1", "include_ctx": True})
    assert r["current_state"] == "created" and r["instance_id"] == "w1"
    sub1 = r["subscription_id"]
    assert re.fullmatch(r"sub-[0-9a-f-]{36}", sub1)
    ra = w.ok("WATCH_ALL", {"include_ctx": False, "machines": ["order"], "to_states": ["shipped"]})
    sub2 = ra["subscription_id"]
    assert isinstance(ra["wal_offset"], int)
    a = c.ok("APPLY_EVENT", {"instance_id": "w1", "event": "PAY", "payload": {"via": "card"}})
    e = w.next_event()
    assert e["subscription_id"] == sub1 and e["wal_offset"] == a["wal_offset"], e
    assert e["payload"] == {"via": "card"} and e["ctx"] == {"amount": 5, "via": "card"}
    assert e["machine"] == "order" and e["version"] == 1 and e["to_state"] == "paid"
    c.ok("APPLY_EVENT", {"instance_id": "w1", "event": "SHIP"})
    got = sorted([w.next_event(), w.next_event()], key=lambda x: x["subscription_id"] != sub1)
    assert got[0]["subscription_id"] == sub1 and "ctx" in got[0]
    assert got[1]["subscription_id"] == sub2 and "ctx" not in got[1]
    assert got[1]["payload"] is None
    # UNWATCH: own id once; another connection cannot remove it
    other = srv.connect()
    assert other.ok("UNWATCH", {"subscription_id": sub2})["removed"] is False
    other.close()
    assert w.ok("UNWATCH", {"subscription_id": sub1}) == {"removed": True, "subscription_id": sub1}
    assert w.ok("UNWATCH", {"subscription_id": sub1})["removed"] is False
    c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "w2"})
    c.ok("APPLY_EVENT", {"instance_id": "w2", "event": "CANCEL"})  # filtered out, sub1 gone
    assert w.ok("PING") == {"pong": True}
    assert not w.events, w.events
    w.close()


def t_watch_from_offset():
    """History from from_offset, then live events: no gap, no duplicate."""
    c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "h1",
                             "initial_ctx": {"amount": 1}})
    first = c.ok("APPLY_EVENT", {"instance_id": "h1", "event": "PAY"})["wal_offset"]
    w = srv.connect()
    w.ok("WATCH_INSTANCE", {"instance_id": "h1", "from_offset": first})
    w.ok("WATCH_ALL", {"from_offset": 0, "machines": ["order"], "events": ["PAY"]})
    e = w.next_event()
    assert e["wal_offset"] == first and e["event"] == "PAY", e
    c.ok("APPLY_EVENT", {"instance_id": "h1", "event": "SHIP"})
    offs = []
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            ev = w.next_event(timeout=1)
        except TimeoutError:
            break
        offs.append((ev["subscription_id"], ev["wal_offset"], ev["event"]))
    by_sub = {}
    for s, o, ev in offs:
        by_sub.setdefault(s, []).append(o)
    for s, lst in by_sub.items():
        assert lst == sorted(set(lst)), "duplicates or disorder: %s" % offs
    ships = [x for x in offs if x[2] == "SHIP"]
    pays = [x for x in offs if x[2] == "PAY"]
    assert len(ships) == 1, offs  # only the instance watch wants SHIP
    assert len(pays) >= 2, offs   # every PAY so far, from the start of the log
    w.close()


def t_watch_reader_resumes():
    """A watcher that stops reading while 3,000 events of 2 KB go out (more
    than the server buffers for it) gets every one, in order, when it reads
    again: its stream went on where it stopped (it used to stall once the
    server's buffer had drained, with events left to send)."""
    c.ok("PUT_MACHINE", {"machine": "tick", "version": 1, "definition": {
        "states": ["on"], "initial": "on",
        "transitions": [{"from": "on", "event": "TICK", "to": "on"}]}})
    c.ok("CREATE_INSTANCE", {"machine": "tick", "version": 1, "instance_id": "t-flood"})
    w = srv.connect()
    w.ok("WATCH_ALL", {"machines": ["tick"], "include_ctx": False})
    pad = "p" * 2000
    n = 3000
    p = srv.connect()
    data = b"".join(frame(json.dumps(p.request_msg("APPLY_EVENT", {
        "instance_id": "t-flood", "event": "TICK", "payload": {"n": i, "pad": pad}})))
        for i in range(n))
    p.send_raw(data)
    for i in range(n):
        assert p.recv(timeout=60)["status"] == "ok"
    got = [w.next_event(timeout=20)["payload"]["n"] for _ in range(n)]
    assert got == list(range(n)), "events lost or out of order"
    w.close()
    p.close()

def t_batch():
    ok = c.ok("BATCH", {"mode": "atomic", "ops": [
        {"op": "CREATE_INSTANCE", "params": {"machine": "order", "version": 1,
                                             "instance_id": "b1", "initial_ctx": {"amount": 5}}},
        {"op": "APPLY_EVENT", "params": {"instance_id": "b1", "event": "PAY"}}]})
    assert [x["status"] for x in ok["results"]] == ["ok", "ok"]
    assert ok["results"][0]["error"] is None
    acked["b1"] = "paid"
    e = c.err("BATCH", {"mode": "atomic", "ops": [
        {"op": "CREATE_INSTANCE", "params": {"machine": "order", "version": 1, "instance_id": "b2"}},
        {"op": "APPLY_EVENT", "params": {"instance_id": "b2", "event": "SHIP"}}]}, "BAD_REQUEST")
    assert "atomic batch failed" in e["message"]
    c.err("GET_INSTANCE", {"instance_id": "b2"}, "INSTANCE_NOT_FOUND")  # nothing applied
    be = c.ok("BATCH", {"mode": "best_effort", "ops": [
        {"op": "CREATE_INSTANCE", "params": {"machine": "order", "version": 1, "instance_id": "b3"}},
        {"op": "GET_INSTANCE", "params": {"instance_id": "nope"}},
        {"op": "APPLY_EVENT", "params": {"instance_id": "b3", "event": "PAY"}}]})
    st = [x["status"] for x in be["results"]]
    assert st == ["ok", "error", "ok"], be
    assert be["results"][1]["result"] is None
    assert be["results"][1]["error"]["code"] == "INSTANCE_NOT_FOUND"
    acked["b3"] = "paid"
    c.err("BATCH", {"ops": [{"op": "PING"}] * 101}, "BAD_REQUEST")
    c.err("BATCH", {}, "BAD_REQUEST")


def t_batch_repeated_key():
    """Two ops of one atomic batch with one idempotency key: the second is a
    replay of the first, staged one, as in best_effort; a different request
    under the key is CONFLICT in both modes."""
    c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "bk1"})
    pay = {"instance_id": "bk1", "event": "PAY", "payload": {"amount": 5},
           "idempotency_key": "pay-bk1"}
    ok = c.ok("BATCH", {"mode": "atomic", "ops": [{"op": "APPLY_EVENT", "params": pay}] * 2})
    first, second = [x["result"] for x in ok["results"]]
    assert first["applied"] is True and second["applied"] is False, ok
    first.pop("applied"), second.pop("applied")
    assert first == second and first["to_state"] == "paid", ok
    acked["bk1"] = "paid"
    replays.append(("APPLY_EVENT", pay, first))
    assert c.ok("APPLY_EVENT", pay)["applied"] is False
    for cp in ({"machine": "order", "version": 1, "instance_id": "bk2",
                "idempotency_key": "mk-bk2"},
               {"machine": "order", "version": 1, "idempotency_key": "mk-anon"}):
        ok = c.ok("BATCH", {"mode": "atomic", "ops": [{"op": "CREATE_INSTANCE", "params": cp}] * 2})
        first, second = [x["result"] for x in ok["results"]]
        assert "applied" not in first and second.pop("applied") is False, ok
        assert first == second, ok
        acked[first["instance_id"]] = "created"
        replays.append(("CREATE_INSTANCE", cp, first))
    # the same key for a different request
    c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "bk3"})
    other = dict(pay, instance_id="bk3", idempotency_key="pay-bk3")
    ops = [{"op": "APPLY_EVENT", "params": other},
           {"op": "APPLY_EVENT", "params": dict(other, payload={"amount": 6})}]
    e = c.err("BATCH", {"mode": "atomic", "ops": ops}, "BAD_REQUEST")
    assert "failed at op 1 (APPLY_EVENT): CONFLICT" in e["message"], e
    assert c.ok("GET_INSTANCE", {"instance_id": "bk3"})["state"] == "created"
    be = c.ok("BATCH", {"mode": "best_effort", "ops": ops})
    assert [x["status"] for x in be["results"]] == ["ok", "error"], be
    assert be["results"][1]["error"]["code"] == "CONFLICT", be
    acked["bk3"] = "paid"


def t_jsonl():
    j = srv.connect()
    m = j.request_msg("HELLO", {"protocol_version": 1, "wire_modes": ["jsonl"]})
    j.send(m)          # the HELLO itself goes as a binary frame ...
    j.jsonl = True     # ... and its answer already comes back as a line
    h = j.response_to(m["id"])
    assert h["status"] == "ok" and h["result"]["wire_mode"] == "jsonl", h
    assert j.ok("PING") == {"pong": True}   # requests as lines now too
    assert j.ok("GET_INSTANCE", {"instance_id": "o1"})["state"] == acked["o1"]
    j.err("GET_INSTANCE", {"instance_id": "nope"}, "INSTANCE_NOT_FOUND")
    j.close()
    # a connection that starts with '{' is jsonl from the first byte
    host, port = srv.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.sendall(b'{"type":"request","id":"a","op":"PING"}\n{"type":"request","id":"b","op":"BYE"}\n')
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"RCPX"), data[:40]  # output stays binary until HELLO says jsonl


def t_metrics():
    m = re.search(r"metrics on http://([0-9.:]+)/metrics", srv.stderr())
    assert m, srv.stderr()
    base = "http://" + m.group(1)
    body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    for name in ("rstmdb_connections_total", "rstmdb_connections_active",
                 'rstmdb_requests_total{operation="APPLY_EVENT"}',
                 'rstmdb_errors_total{code="INSTANCE_NOT_FOUND"}',
                 'rstmdb_request_duration_seconds_bucket{operation="PING",le="+Inf"}',
                 'rstmdb_subscriptions_active{type="instance"}',
                 'rstmdb_events_forwarded_total{type="all"}',
                 "rstmdb_instances_total", "rstmdb_machines_total", "rstmdb_wal_entries",
                 "rstmdb_wal_fsyncs_total", "process_resident_memory_bytes"):
        assert name in body, name
    assert urllib.request.urlopen(base + "/health", timeout=5).read() == b"OK"
    assert urllib.request.urlopen(base + "/healthz", timeout=5).read() == b"OK"
    try:
        urllib.request.urlopen(base + "/nope", timeout=5)
        raise AssertionError("404 expected")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def t_restart():
    """SIGTERM, start again on the same data: every acknowledged write is there."""
    c.close()
    assert srv.stop() == 0, srv.stderr()
    srv.start()
    r = srv.connect()
    for iid, state in sorted(acked.items()):
        g = r.ok("GET_INSTANCE", {"instance_id": iid})
        assert g["state"] == state, (iid, g, state)
    for op, params, want in replays:
        got = r.ok(op, params)
        assert got.pop("applied") is False and got == want, (op, params, got, want)
    r.close()


def t_limits():
    """max_connections and the idle timeout from the config."""
    s2 = Server(STMFS)
    s2.write_config("network:\n  max_connections: 2\n  idle_timeout_secs: 2\n")
    s2.start()
    try:
        a, b = s2.connect(), s2.connect()
        assert a.ok("PING") == {"pong": True} and b.ok("PING") == {"pong": True}
        assert "subscription_id" in b.ok("WATCH_ALL", {})
        third = s2.connect()
        third.send(third.request_msg("PING"))
        assert third.expect_closed()
        assert "refusing a connection from 127.0.0.1:" in s2.stderr(), s2.stderr()
        assert "max_connections (2) reached" in s2.stderr(), s2.stderr()
        t0 = time.time()
        assert a.expect_closed(timeout=10)  # idle
        assert time.time() - t0 >= 1.0
        d = s2.connect()  # room again
        assert d.ok("PING") == {"pong": True}
        # a watcher waits for events, however long they take: not idle
        time.sleep(max(0.0, t0 + 4.5 - time.time()))
        assert b.ok("PING") == {"pong": True}
    finally:
        assert s2.stop() == 0
        s2.cleanup()


def t_shutdown_flushes():
    """Requests in flight at SIGTERM are answered before the socket closes."""
    s3 = Server(STMFS)
    s3.start()
    try:
        p = s3.connect()
        p.ok("PUT_MACHINE", {"machine": "order", "version": 1, "definition": ORDER_DEF})
        data = b""
        for i in range(50):
            data += frame(json.dumps(p.request_msg("CREATE_INSTANCE", {
                "machine": "order", "version": 1, "instance_id": "s%02d" % i})))
        p.send_raw(data)
        got = p.recv()  # at least the first answer is on its way
        assert got["status"] == "ok"
        assert s3.stop() == 0
        n = 1
        try:
            while True:
                m = p.recv(timeout=5)
                assert m["status"] == "ok", m
                n += 1
        except Exception:  # noqa: BLE001 - the close
            pass
        s3.start()
        q = s3.connect()
        total = q.ok("LIST_INSTANCES", {"limit": 1000})["total"]
        assert total >= n, (total, n)
    finally:
        s3.stop()
        s3.cleanup()


try:
    R.run("HELLO PING INFO AUTH", t_session)
    R.run("PUT/GET/LIST_MACHINES", t_machines)
    R.run("instances and events", t_instances)
    R.run("WAL_READ WAL_STATS SNAPSHOT COMPACT", t_wal_and_snapshots)
    R.run("pipelining 200 requests in one write", t_pipelining)
    R.run("16 concurrent clients", t_concurrent_clients)
    R.run("WATCH_INSTANCE WATCH_ALL UNWATCH", t_watch)
    R.run("WATCH from_offset: catch-up then live", t_watch_from_offset)
    R.run("a watcher that stopped reading gets every event", t_watch_reader_resumes)
    R.run("BATCH atomic and best_effort", t_batch)
    R.run("BATCH atomic: one idempotency key on two ops", t_batch_repeated_key)
    R.run("jsonl both ways", t_jsonl)
    R.run("metrics endpoint", t_metrics)
    R.run("restart keeps every acknowledged write", t_restart)
    R.run("max_connections and idle timeout", t_limits)
    R.run("graceful shutdown answers what was queued", t_shutdown_flushes)
finally:
    srv.stop()
    srv.cleanup()
R.finish()
