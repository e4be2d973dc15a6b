#!/usr/bin/env python3
"""rcpc.py - a small RCP client for the integration tests and benchmarks.

Written from reference/rcp-protocol.md (section 2: binary RCPX frames with
CRC-32C; section 8: ops), with the standard library only, so the tests of the
mount do not depend on any other client of the project.

  rcpc.py --addr 127.0.0.1:7401 OP ['PARAMS-JSON']
      One request. On "ok" prints the result object as compact JSON with
      sorted keys and exits 0; on "error" prints the error object the same
      way and exits 1; exits 2 when the server cannot be reached or answers
      something that is not a valid frame.

  rcpc.py --addr A wait [SECONDS]
      PINGs until the server answers (exit 0) or SECONDS pass (exit 2).

  rcpc.py --addr A watch-instance ID COUNT [SECONDS]
  rcpc.py --addr A watch-all COUNT [SECONDS]
      Subscribes, prints "ready" on stderr once subscribed, then prints the
      first COUNT stream events as JSON lines and exits 0; exits 3 if they
      have not all arrived after SECONDS (default 10).

  rcpc.py --addr A create-many MACHINE VERSION PREFIX COUNT
      Creates PREFIX0000000 .. instances with pipelined BATCH requests of
      100 ops (the server's max_batch_ops), for benchmarks. Prints the
      number created.
"""

import json
import socket
import struct
import sys
import time

MAGIC = b"RCPX"
FLAG_CRC = 0x0001


def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    t = _TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


class ProtocolError(Exception):
    pass


def encode(obj) -> bytes:
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    header = MAGIC + struct.pack(">HHHII", 1, FLAG_CRC, 0, len(payload), crc32c(payload))
    return header + payload


class Conn:
    def __init__(self, addr, timeout=30.0):
        host, _, port = addr.rpartition(":")
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.next_id = 1
        self.pending_events = []

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ProtocolError("connection closed by the server")
            self.buf += chunk

    def read_frame(self):
        self._fill(18)
        if self.buf[:4] != MAGIC:
            raise ProtocolError("bad magic %r" % self.buf[:4])
        version, flags, hlen, plen, crc = struct.unpack(">HHHII", self.buf[4:18])
        if version != 1:
            raise ProtocolError("bad version %d" % version)
        if flags & 0xFFF0:
            raise ProtocolError("reserved flag bits set: %#x" % flags)
        total = 18 + hlen + plen
        self._fill(total)
        payload = self.buf[18 + hlen:total]
        self.buf = self.buf[total:]
        if flags & FLAG_CRC and crc32c(payload) != crc:
            raise ProtocolError("CRC mismatch")
        return json.loads(payload.decode("utf-8"))

    def send(self, op, params=None):
        rid = str(self.next_id)
        self.next_id += 1
        msg = {"type": "request", "id": rid, "op": op}
        msg["params"] = {} if params is None else params
        self.sock.sendall(encode(msg))
        return rid

    def response(self, rid):
        """Reads frames until the response to rid; keeps events for later."""
        while True:
            msg = self.read_frame()
            if msg.get("type") == "event":
                self.pending_events.append(msg)
                continue
            if msg.get("type") != "response":
                continue
            if msg.get("id") != rid:
                raise ProtocolError("response out of order: %r" % msg.get("id"))
            return msg

    def call(self, op, params=None):
        return self.response(self.send(op, params))

    def event(self):
        if self.pending_events:
            return self.pending_events.pop(0)
        while True:
            msg = self.read_frame()
            if msg.get("type") == "event":
                return msg


def dump(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def one_call(addr, op, params):
    try:
        conn = Conn(addr)
        msg = conn.call(op, params)
    except (OSError, ProtocolError, ValueError) as e:
        print("rcpc: %s" % e, file=sys.stderr)
        return 2
    if msg.get("status") == "ok":
        print(dump(msg.get("result")))
        return 0
    print(dump(msg.get("error")))
    return 1


def wait(addr, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn = Conn(addr, timeout=2.0)
            if conn.call("PING").get("status") == "ok":
                return 0
        except (OSError, ProtocolError, ValueError):
            pass
        if time.monotonic() > deadline:
            return 2
        time.sleep(0.05)


def watch(addr, op, params, count, seconds):
    try:
        conn = Conn(addr, timeout=seconds)
        msg = conn.call(op, params)
        if msg.get("status") != "ok":
            print(dump(msg.get("error")))
            return 1
        print("ready", file=sys.stderr, flush=True)
        deadline = time.monotonic() + seconds
        for _ in range(count):
            left = deadline - time.monotonic()
            if left <= 0:
                return 3
            conn.sock.settimeout(left)
            print(dump(conn.event()), flush=True)
    except socket.timeout:
        return 3
    except (OSError, ProtocolError, ValueError) as e:
        print("rcpc: %s" % e, file=sys.stderr)
        return 2
    return 0


def create_many(addr, machine, version, prefix, count):
    conn = Conn(addr, timeout=120.0)
    window = 8  # batches in flight: enough to keep group commit busy
    inflight = []
    made = 0
    n = 0
    while n < count or inflight:
        while n < count and len(inflight) < window:
            ops = []
            for i in range(n, min(n + 100, count)):
                ops.append({"op": "CREATE_INSTANCE", "params": {
                    "machine": machine, "version": version,
                    "instance_id": "%s%07d" % (prefix, i), "initial_ctx": {}}})
            n += len(ops)
            inflight.append(conn.send("BATCH", {"mode": "best_effort", "ops": ops}))
        msg = conn.response(inflight.pop(0))
        if msg.get("status") != "ok":
            print(dump(msg.get("error")), file=sys.stderr)
            return 1
        made += sum(1 for r in msg["result"]["results"] if r.get("status") == "ok")
    print(made)
    return 0


def main(argv):
    if len(argv) < 4 or argv[1] != "--addr":
        print(__doc__, file=sys.stderr)
        return 2
    addr, cmd, rest = argv[2], argv[3], argv[4:]
    if cmd == "wait":
        return wait(addr, float(rest[0]) if rest else 20.0)
    if cmd == "watch-instance":
        secs = float(rest[2]) if len(rest) > 2 else 10.0
        return watch(addr, "WATCH_INSTANCE", {"instance_id": rest[0], "include_ctx": True},
                     int(rest[1]), secs)
    if cmd == "watch-all":
        secs = float(rest[1]) if len(rest) > 1 else 10.0
        return watch(addr, "WATCH_ALL", {}, int(rest[0]), secs)
    if cmd == "create-many":
        return create_many(addr, rest[0], int(rest[1]), rest[2], int(rest[3]))
    params = json.loads(rest[0]) if rest else {}
    return one_call(addr, cmd, params)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
