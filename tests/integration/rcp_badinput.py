#!/usr/bin/env python3
"""rcp_badinput.py STMFS - broken input on one connection gets the documented
answer (reference §2.4 and §5.1 with our fixes), and a second connection is
served normally all along:

  broken frames (magic, version, reserved flags, length over 16 MiB, CRC,
  invalid UTF-8 or JSON, no id)          -> closed without a word, after the
                                            requests before them are answered
  an envelope whose id can be read        -> BAD_REQUEST with that id, kept open
  wrong param types                       -> BAD_REQUEST, kept open
  huge ids, 16 MiB frames, byte-by-byte   -> answered
  a client that never reads               -> the server's memory stays bounded
"""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rcp_lib import ORDER_DEF, Runner, Server, crc32c, frame  # noqa: E402

STMFS = sys.argv[1]
R = Runner("rcp-badinput")
srv = Server(STMFS)
srv.start()
good = srv.connect()
good.hello()
good.ok("PUT_MACHINE", {"machine": "order", "version": 1, "definition": ORDER_DEF})
good.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "o1"})


def still_good():
    assert good.ok("PING") == {"pong": True}
    assert good.ok("GET_INSTANCE", {"instance_id": "o1"})["state"] == "created"
    assert srv.proc.poll() is None, "the server died"


def req(op="PING", rid="1", params=None):
    m = {"type": "request", "id": rid, "op": op}
    if params is not None:
        m["params"] = params
    return json.dumps(m, separators=(",", ":"))


def closes(data, answered=0):
    """Sends data; expects `answered` responses, then a silent close."""
    b = srv.connect()
    b.send_raw(data)
    for _ in range(answered):
        m = b.recv()
        assert m["status"] == "ok", m
    assert b.expect_closed()
    b.close()
    still_good()


def t_frames():
    ping = req()
    closes(frame(ping, magic=b"RCP1"))
    closes(frame(ping, version=2))
    closes(frame(ping, version=0))
    for bit in (4, 8, 15):
        closes(frame(ping, flags=1 | (1 << bit)))
    closes(frame(ping, crc=0xDEADBEEF))
    # over the limit: refused from the header alone, before any payload
    closes(frame(b"", length=16 * 1024 * 1024 + 1))
    closes(frame(b"", length=0xFFFFFFFF))
    # requests decoded before the broken frame are answered first
    closes(frame(req(rid="a")) + frame(req(rid="b")) + frame(ping, magic=b"XXXX"), answered=2)


def t_accepted_frames():
    b = srv.connect()
    b.send_raw(frame(req(rid="nocrc"), flags=0, crc=0x12345678))  # CRC not flagged: ignored
    assert b.recv()["id"] == "nocrc"
    b.send_raw(frame(req(rid="ext"), header_ext=b"\x00" * 1000))  # extension skipped
    assert b.recv()["id"] == "ext"
    b.send_raw(frame(req(rid="flags"), flags=0x000F))  # compressed/stream flags ignored
    assert b.recv()["id"] == "flags"
    # byte by byte
    for byte in frame(req(rid="slow")):
        b.send_raw(bytes([byte]))
    assert b.recv()["id"] == "slow"
    # 50 frames in one write, and a frame split across writes
    b.send_raw(b"".join(frame(req(rid=str(i))) for i in range(50)))
    for i in range(50):
        assert b.recv()["id"] == str(i)
    f = frame(req(rid="split"))
    b.send_raw(f[:7])
    time.sleep(0.1)
    b.send_raw(f[7:30])
    time.sleep(0.1)
    b.send_raw(f[30:])
    assert b.recv()["id"] == "split"
    b.close()
    still_good()


def t_payloads():
    closes(frame(b'{"type":"request","id":"\xff","op":"PING"}'))  # invalid UTF-8
    closes(frame(b"{not json"))
    closes(frame(b""))
    closes(frame(b"[1,2]"))
    closes(frame(b'{"type":"request","id":1,"op":"PING"}'))
    closes(frame(b'{"type":"request","op":"PING"}'))
    closes(frame(b'{"type":"request","id":null,"op":"PING"}'))
    closes(frame(b'{"type":"request","id":"1","op":"PING"} trailing'))
    closes(frame(b'{"type":"request","id":"1","op":"PING","params":' + b"[" * 2000 + b"]" * 2000 + b"}"))


def t_answerable():
    b = srv.connect()
    for raw, rid in ((b'{"id":"m1","op":"PING"}', "m1"),
                     (b'{"type":5,"id":"m2","op":"PING"}', "m2"),
                     (b'{"type":"request","id":"m3"}', "m3"),
                     (b'{"type":"request","id":"m4","op":"FLY"}', "m4"),
                     (b'{"type":"request","id":"m5","op":"ping"}', "m5"),
                     (b'{"type":"request","id":"","op":7}', "")):
        b.send_raw(frame(raw))
        m = b.recv()
        assert m["id"] == rid and m["status"] == "error", m
        assert m["error"]["code"] == "BAD_REQUEST" and m["error"]["retryable"] is False, m
    # JSON that this server cannot take, but whose id can be read: answered
    # with the reason, the connection stays (it used to close, losing every
    # request in flight on it)
    for raw, rid, why in (
            (b'{"type":"request","id":"n1","op":"PING","params":{"s":"a\\u0000b"}}', "n1",
             "\\u0000 in a string"),
            (b'{"type":"request","id":"n2","op":"PING","params":{"x":1e400}}', "n2",
             "a number out of range"),
            (b'{"type":"request","id":"n3","op":"PING","params":{"x":01}}', "n3",
             "a number with a leading zero"),
            (b'{"type":"request","id":"n4","op":"PING","params":' + b"[" * 200 + b"]" * 200 + b"}",
             "n4", "nested deeper than 128 levels")):
        b.send_raw(frame(raw))
        m = b.recv()
        assert m["id"] == rid and m["status"] == "error", m
        assert m["error"]["code"] == "BAD_REQUEST" and why in m["error"]["message"], m
    assert b.ok("PING") == {"pong": True}  # still open
    b.close()
    still_good()


def t_param_types():
    b = srv.connect()
    cases = [
        ("HELLO", {"protocol_version": "1"}), ("HELLO", {"protocol_version": 1.5}),
        ("HELLO", {"protocol_version": 1, "wire_modes": "binary_json"}),
        ("HELLO", {"protocol_version": 1, "features": [1]}), ("HELLO", None),
        ("AUTH", {"method": 1, "token": "x"}), ("AUTH", {"method": "bearer"}),
        ("PUT_MACHINE", {"machine": "m", "version": -1, "definition": ORDER_DEF}),
        ("PUT_MACHINE", {"machine": "m", "version": "1", "definition": ORDER_DEF}),
        ("PUT_MACHINE", {"machine": 5, "version": 1, "definition": ORDER_DEF}),
        ("PUT_MACHINE", {"machine": "m", "version": 1, "definition": None}),
        ("PUT_MACHINE", {"machine": "m", "version": 1, "definition": "x"}),
        ("GET_MACHINE", {"machine": "order"}),
        ("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": 5}),
        ("GET_INSTANCE", {}), ("GET_INSTANCE", {"instance_id": ["o1"]}),
        ("LIST_INSTANCES", {"limit": "10"}), ("LIST_INSTANCES", {"offset": -1}),
        ("APPLY_EVENT", {"instance_id": "o1"}), ("APPLY_EVENT", {"instance_id": "o1", "event": 1}),
        ("APPLY_EVENT", {"instance_id": "o1", "event": "PAY", "expected_wal_offset": "1"}),
        ("DELETE_INSTANCE", {"instance_id": None}),
        ("WAL_READ", {"from_offset": -5}), ("WAL_READ", {"from_offset": "0"}), ("WAL_READ", None),
        ("SNAPSHOT_INSTANCE", {}),
        ("WATCH_INSTANCE", {"instance_id": "o1", "include_ctx": "yes"}),
        ("WATCH_INSTANCE", {"instance_id": "o1", "from_offset": "0"}),
        ("WATCH_ALL", {"machines": "order"}), ("WATCH_ALL", {"events": [1]}),
        ("UNWATCH", {}), ("UNWATCH", {"subscription_id": 3}),
        ("BATCH", {"ops": "x"}), ("BATCH", {}), ("BATCH", {"ops": [5]}),
        ("BATCH", {"ops": [{"op": "NOPE"}]}), ("BATCH", {"ops": [{}]}),
    ]
    for op, params in cases:
        m = b.call(op, params)
        assert m["status"] == "error" and m["error"]["code"] == "BAD_REQUEST", (op, params, m)
    assert b.ok("GET_INSTANCE", {"instance_id": "o1"})["state"] == "created"  # nothing changed
    b.close()
    still_good()


def t_huge_ids():
    b = srv.connect()
    big = "i" * (1 << 20)
    b.send(b.request_msg("PING", rid=big))
    m = b.recv()
    assert m["id"] == big and m["result"] == {"pong": True}
    b.send(b.request_msg("NOPE_OP", rid=big))
    m = b.recv()
    assert m["id"] == big and m["error"]["code"] == "BAD_REQUEST"
    # a payload of exactly 16 MiB is accepted and answered
    base = req(op="PING", rid="x", params={"pad": ""})
    pad = 16 * 1024 * 1024 - len(base)
    payload = req(op="PING", rid="x", params={"pad": "p" * pad})
    assert len(payload) == 16 * 1024 * 1024
    b.send_raw(frame(payload, flags=0))  # (no CRC: pure-Python CRC of 16 MiB is slow)
    assert b.recv(timeout=30)["id"] == "x"
    # an id so long no answer can fit 16 MiB: the connection closes, nothing else
    rid = "j" * (16 * 1024 * 1024 - 50)
    b.send_raw(frame(req(rid=rid), flags=0))
    assert b.expect_closed(timeout=30)
    b.close()
    still_good()


def t_jsonl_garbage():
    s = socket.create_connection(tuple([srv.addr.rsplit(":", 1)[0], int(srv.addr.rsplit(":", 1)[1])]))
    s.sendall(b'{"type":"request","id":"1","op":"PING"}\n\n   \n{"broken"\n')
    data = b""
    s.settimeout(5)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.count(b"RCPX") == 1, data  # one answer, then closed
    still_good()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def t_client_never_reads():
    """200 MB of answers to a client that reads nothing: the server stops
    reading its requests instead of buffering them."""
    for i in range(200):
        good.ok("CREATE_INSTANCE", {"machine": "order", "version": 1, "instance_id": "r%03d" % i,
                                    "initial_ctx": {"pad": "x" * 400}})
    one = len(json.dumps(good.ok("WAL_READ", {"from_offset": 0, "limit": 1000})))
    n = 200 * 1024 * 1024 // one + 1
    before = rss_kb(srv.proc.pid)
    s = socket.create_connection(tuple([srv.addr.rsplit(":", 1)[0], int(srv.addr.rsplit(":", 1)[1])]))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    # padded requests, so that the kernel's socket buffers cannot hold them all
    f = frame(req(op="WAL_READ", rid="w", params={"from_offset": 0, "limit": 1000,
                                                   "pad": "p" * 32768}))
    sent = 0
    deadline = time.time() + 8
    data = f * 64
    while sent < n * len(f) and time.time() < deadline:
        try:
            k = s.send(data)
            sent += k
        except BlockingIOError:
            time.sleep(0.05)
    # the server stopped reading long before all requests were sent
    assert sent < n * len(f), "server read %d requests without them being read" % (sent // len(f))
    time.sleep(0.5)
    grown = rss_kb(srv.proc.pid) - before
    assert grown < 96 * 1024, "server grew by %d KiB" % grown
    still_good()
    s.close()
    time.sleep(0.3)
    still_good()


def t_slow_reader_gets_all():
    """The same flood, read late: every answer arrives, in order."""
    import threading
    b = srv.connect()
    n = 100
    data = b"".join(frame(req(op="WAL_READ", rid=str(i), params={"from_offset": 0, "limit": 1000}))
                    for i in range(n))
    t = threading.Thread(target=b.send_raw, args=(data,))
    t.start()
    time.sleep(1.0)
    for i in range(n):
        m = b.recv(timeout=30)
        assert m["id"] == str(i) and m["status"] == "ok", (i, m.get("id"))
    t.join()
    assert b.ok("PING") == {"pong": True}
    b.close()
    still_good()


try:
    R.run("broken frames close silently", t_frames)
    R.run("valid odd frames are accepted", t_accepted_frames)
    R.run("broken payloads close silently", t_payloads)
    R.run("envelope errors with an id get BAD_REQUEST", t_answerable)
    R.run("wrong param types get BAD_REQUEST", t_param_types)
    R.run("huge ids and 16 MiB frames", t_huge_ids)
    R.run("jsonl garbage", t_jsonl_garbage)
    R.run("a client that never reads", t_client_never_reads)
    R.run("a slow reader gets every answer in order", t_slow_reader_gets_all)
finally:
    rc = srv.stop()
    err = srv.stderr()
    srv.cleanup()
if rc != 0 or "Sanitizer" in err or "runtime error" in err:
    print(err[-4000:])
    R.failed.append("clean exit (rc=%s)" % rc)
R.finish()
