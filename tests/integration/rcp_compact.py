#!/usr/bin/env python3
"""rcp_compact.py STMFS - a long request holds up only the connection that
asked.

COMPACT writes a snapshot of every instance, which takes a while on a big
database (here 20,000 instances with idempotency keys); WAL_READ without a
limit and LIST_INSTANCES with a big one build answers of megabytes. Other
connections must be answered meanwhile; the asking connection's later
requests wait and are answered after it, in order; many at once all get
their answers; a client that leaves or a server that stops while one runs
loses nothing and crashes nothing.
"""

import hashlib
import os
import random
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rcp_lib import ORDER_DEF, Runner, Server  # noqa: E402

STMFS = sys.argv[1]
N = 20000
TOKEN = "compact-token"


def arrived(c):
    """Whether any byte of an answer has come (without waiting)."""
    if c.buf:
        return True
    c.sock.setblocking(False)
    try:
        c.buf += c.sock.recv(1 << 20)
    except BlockingIOError:
        pass
    finally:
        c.sock.setblocking(True)
    return bool(c.buf)


def answer_if_any(c):
    """The next message if one has arrived, else None (without waiting)."""
    try:
        return c.recv(timeout=0.001)
    except TimeoutError:
        return None


def fill(c, first, n):
    for base in range(first, first + n, 100):
        ops = [{"op": "CREATE_INSTANCE",
                "params": {"machine": "order", "version": 1, "instance_id": "i%06d" % i,
                           "idempotency_key": "k%d" % i, "initial_ctx": {"amount": i}}}
               for i in range(base, base + 100)]
        c.ok("BATCH", {"mode": "best_effort", "ops": ops}, timeout=60)


def touch(c):
    """One more write, so that the next COMPACT has a new snapshot to make."""
    touch.n += 1
    c.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "t%d" % touch.n})


touch.n = 0


def t_others_answered(srv):
    """PINGs and reads on other connections are answered while COMPACT runs."""
    c, o = srv.connect(timeout=120), srv.connect(timeout=120)
    touch(c)
    c.send(c.request_msg("COMPACT", {"force_snapshot": True}, rid="cmp"))
    pings = 0
    r = None
    while r is None:
        assert o.ok("PING") == {"pong": True}
        o.ok("GET_INSTANCE", {"instance_id": "i000007"})
        pings += 1
        r = answer_if_any(c)
    assert r["id"] == "cmp", r
    assert r["status"] == "ok" and r["result"]["snapshots_created"] == 1, r
    # blocked behind COMPACT, the first PING would be answered only after it
    # (one pair); answered meanwhile, dozens are
    assert pings >= 5, "only %d PING+GET pairs answered while COMPACT ran" % pings
    print("    %d PING+GET pairs answered on another connection during COMPACT" % pings)
    c.close()
    o.close()


def t_big_reads_beside_others(srv):
    """WAL_READ without a limit and a LIST of 100,000 leave PINGs answered."""
    for op, params, field in (("WAL_READ", {"from_offset": 0}, "records"),
                              ("LIST_INSTANCES", {"limit": 100000}, "instances")):
        c, o = srv.connect(timeout=120), srv.connect(timeout=120)
        c.send(c.request_msg(op, params, rid="big"))
        c.send(c.request_msg("PING", None, rid="after"))
        # PINGs answered before the first byte of the big answer: a frame
        # of megabytes takes a while to read, so later ones do not count
        pings = 0
        while not arrived(c):
            assert o.ok("PING") == {"pong": True}
            pings += 1
        r = c.recv(timeout=120)
        assert r["id"] == "big" and r["status"] == "ok", str(r)[:300]
        assert len(r["result"][field]) >= N, (op, len(r["result"][field]))
        assert c.recv(timeout=60)["id"] == "after"
        print("    %s: %d records, %d PINGs answered on another connection before it"
              % (op, len(r["result"][field]), pings))
        assert pings >= 5, "only %d PINGs answered beside %s" % (pings, op)
        c.close()
        o.close()


def t_first_list_after_burst(srv):
    """The first LIST after a burst of creates links them into the sorted
    index first; with many to link it runs beside the others too, even a
    LIST of 3 (on the loop, linking 30,000 held every client)."""
    c, o = srv.connect(timeout=120), srv.connect(timeout=120)
    burst = 30000
    rng = random.Random(7)
    ids = ["b%08x" % rng.getrandbits(32) for _ in range(burst)]
    for base in range(0, burst, 100):
        ops = [{"op": "CREATE_INSTANCE",
                "params": {"machine": "order", "version": 1, "instance_id": i}}
               for i in ids[base:base + 100]]
        c.ok("BATCH", {"mode": "best_effort", "ops": ops}, timeout=60)
    c.send(c.request_msg("LIST_INSTANCES", {"limit": 3, "machine": "order"}, rid="first"))
    pings = 0
    r = None
    while r is None:
        assert o.ok("PING") == {"pong": True}
        pings += 1
        r = answer_if_any(c)
    assert r["id"] == "first" and r["status"] == "ok", r
    got = [i["id"] for i in r["result"]["instances"]]
    everyone = sorted(set(ids) | {"i%06d" % i for i in range(N)})
    assert got == everyone[:3], (got, everyone[:3])
    print("    %d PINGs answered on another connection during the first LIST" % pings)
    assert pings >= 5, "only %d PINGs answered beside the first LIST" % pings
    c.close()
    o.close()


def t_many_at_once(srv):
    """Eight big WAL_READs at once (more than run on threads): all answered."""
    conns = [srv.connect(timeout=120) for _ in range(8)]
    for k, c in enumerate(conns):
        c.send(c.request_msg("WAL_READ", {"from_offset": 0, "limit": 5000 + k}, rid="w%d" % k))
    for k, c in enumerate(conns):
        r = c.recv(timeout=120)
        assert r["id"] == "w%d" % k and r["status"] == "ok", str(r)[:200]
        assert len(r["result"]["records"]) == 5000 + k
        c.close()


def t_more_than_four(srv):
    """Eight COMPACTs at once: four run, the rest wait their turn off the
    loop, so PINGs are answered before the last of them."""
    conns = [srv.connect(timeout=120) for _ in range(8)]
    touch(conns[0])
    for k, c in enumerate(conns):
        c.send(c.request_msg("COMPACT", {"force_snapshot": True}, rid="c%d" % k))
    o = srv.connect(timeout=120)
    pings = 0
    while not arrived(conns[-1]):
        assert o.ok("PING") == {"pong": True}
        pings += 1
    for k, c in enumerate(conns):
        r = c.recv(timeout=120)
        assert r["id"] == "c%d" % k and r["status"] == "ok", r
        c.close()
    print("    %d PINGs answered before the eighth COMPACT's answer" % pings)
    assert pings >= 5, "only %d PINGs answered beside eight COMPACTs" % pings
    o.close()


def t_churn(srv):
    """Clients sending long requests among short ones and leaving at random
    moments, with writes going on: every answer that comes is the right
    one, and the server (under the sanitizers in the ASan build) stays up."""
    stop = threading.Event()
    errors = []

    def writer():
        w = srv.connect(timeout=120)
        n = 0
        while not stop.is_set():
            n += 1
            w.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "ch%d" % n})

    def client(seed):
        rng = random.Random(seed)
        try:
            for _ in range(6):
                c = srv.connect(timeout=120)
                sent = []
                for k in range(rng.randint(1, 5)):
                    op, params = rng.choice([
                        ("COMPACT", {}), ("WAL_READ", {"from_offset": 0}),
                        ("WAL_READ", {"from_offset": 0, "limit": 3000}),
                        ("LIST_INSTANCES", {"limit": 5000}), ("PING", None)])
                    rid = "%d-%d" % (seed, k)
                    c.send(c.request_msg(op, params, rid=rid))
                    sent.append(rid)
                if rng.random() < 0.5:
                    c.close()  # gone with its requests in flight
                    continue
                for rid in sent:
                    r = c.recv(timeout=120)
                    if r.get("id") != rid or r.get("status") != "ok":
                        errors.append((rid, str(r)[:200]))
                c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((seed, repr(e)))

    wt = threading.Thread(target=writer)
    wt.start()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    stop.set()
    wt.join(60)
    assert not errors, errors[:5]
    o = srv.connect(timeout=60)
    assert o.ok("PING") == {"pong": True}
    o.close()


def t_same_connection_in_order(srv):
    """Requests pipelined behind COMPACT on its connection come after it."""
    c = srv.connect(timeout=120)
    touch(c)
    c.send(c.request_msg("COMPACT", {"force_snapshot": True}, rid="a"))
    c.send(c.request_msg("GET_INSTANCE", {"instance_id": "i000001"}, rid="b"))
    c.send(c.request_msg("PING", None, rid="c"))
    got = [c.recv(timeout=120) for _ in range(3)]
    assert [m["id"] for m in got] == ["a", "b", "c"], got
    assert all(m["status"] == "ok" for m in got), got
    assert got[0]["result"]["snapshots_created"] == 1, got[0]
    c.close()


def t_client_leaves(srv):
    """A client that closes with COMPACT running leaves the server serving."""
    for _ in range(3):
        c = srv.connect(timeout=120)
        touch(c)
        c.send(c.request_msg("COMPACT", {"force_snapshot": True}, rid="x"))
        c.close()
    o = srv.connect(timeout=120)
    assert o.ok("PING") == {"pong": True}
    touch(o)
    # the last orphaned COMPACT may still be waiting for its turn and take
    # this write in its snapshot, leaving this one nothing new to write
    assert o.ok("COMPACT", {"force_snapshot": True}, timeout=120)["snapshots_created"] in (0, 1)
    assert o.ok("GET_INSTANCE", {"instance_id": "t%d" % touch.n})["state"] == "created"
    o.close()


def t_auth_gate(srv):
    """Without a token COMPACT is refused before any work starts."""
    srv2 = Server(STMFS)
    srv2.write_config("auth:\n  required: true\n  token_hashes:\n    - \"%s\"\n"
                      % hashlib.sha256(TOKEN.encode()).hexdigest())
    srv2.start()
    try:
        c = srv2.connect()
        c.err("COMPACT", {}, code="UNAUTHORIZED")
        c.ok("AUTH", {"method": "bearer", "token": TOKEN})
        assert c.ok("COMPACT", {}, timeout=60)["snapshots_created"] in (0, 1)
        c.close()
    finally:
        srv2.stop()
        srv2.cleanup()


def t_stop_while_running(srv):
    """SIGTERM with COMPACT running: a clean stop, everything there after."""
    c = srv.connect(timeout=120)
    touch(c)
    before = c.ok("LIST_INSTANCES", {"machine": "order", "limit": 1})["total"]
    assert before >= N + touch.n, before
    c.send(c.request_msg("COMPACT", {"force_snapshot": True}, rid="s"))
    assert srv.stop(sig=signal.SIGTERM, timeout=120) == 0
    srv.start()
    o = srv.connect(timeout=120)
    r = o.ok("LIST_INSTANCES", {"machine": "order", "limit": 1})
    assert r["total"] == before, (r["total"], before)
    # an idempotent retry still answers with its first result
    assert o.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "i019999",
                                    "idempotency_key": "k19999",
                                    "initial_ctx": {"amount": 19999}})["instance_id"] == "i019999"
    o.close()


def main():
    srv = Server(STMFS)
    srv.write_config("storage:\n  fsync_policy: every_write\n")
    srv.start()
    t = Runner("rcp-compact")
    try:
        c = srv.connect(timeout=60)
        c.ok("PUT_MACHINE", {"machine": "order", "version": 1, "definition": ORDER_DEF})
        fill(c, 0, N)
        c.close()
        t.run("others answered during COMPACT", t_others_answered, srv)
        t.run("big reads beside others", t_big_reads_beside_others, srv)
        t.run("first LIST after a burst of creates", t_first_list_after_burst, srv)
        t.run("many big reads at once", t_many_at_once, srv)
        t.run("more long requests than threads", t_more_than_four, srv)
        t.run("clients come and go with long requests", t_churn, srv)
        t.run("same connection in order", t_same_connection_in_order, srv)
        t.run("client leaves mid-COMPACT", t_client_leaves, srv)
        t.run("auth gate", t_auth_gate, srv)
        t.run("stop while COMPACT runs", t_stop_while_running, srv)
    finally:
        srv.stop()
        srv.cleanup()
    t.finish()


main()
