#!/usr/bin/env python3
"""rcp-client.py - an RCP client in one file, Python standard library only.

It speaks the binary RCPX frames of rstmdb's protocol to stmfs (or to
rstmdb itself): an 18-byte header, then the JSON text of one message, its
CRC-32C in the header. It defines the order machine if the server has none,
watches a new instance, creates it, pays, ships and delivers it, shows a
refused event and an idempotent retry, and prints the stream events the
watch received. With --mount it reads the instance's state file in the
mount after every step, so you see the two doors agree.

Run it beside a mount (scripts/run.sh starts one with RCP on 127.0.0.1:7401):

    python3 examples/rcp-client.py --addr 127.0.0.1:7401 --mount /tmp/stmfs-demo/mnt

What you will see (offsets and the id vary):

    connected to stmfs 0.1.0 (wire mode binary_json)
    machine order: version 1
    watching py-4242 (subscription sub-...)
    CREATE_INSTANCE py-4242 -> created   mount says: created
    APPLY_EVENT PAY {"amount": 30} -> paid   mount says: paid
    APPLY_EVENT PAY again -> INVALID_TRANSITION: invalid transition: cannot apply 'PAY' in state 'paid'
    APPLY_EVENT SHIP {"address": "1 Main St"} -> shipped   mount says: shipped
    APPLY_EVENT DELIVER (key deliver-1) -> delivered (applied: true)   mount says: delivered
    APPLY_EVENT DELIVER (key deliver-1, a retry) -> delivered (applied: false)   mount says: delivered
    ctx: {"address": "1 Main St", "amount": 30, "customer": "carol"}
    events the watch received:
      created -> paid on PAY at 1099511632776
      paid -> shipped on SHIP at 1099511632980
      shipped -> delivered on DELIVER at 1099511633217

Options: --addr HOST:PORT (default 127.0.0.1:7401), --mount DIR (default:
none), --id ID (default py-<pid>), --token T (sent with AUTH when the
server requires it; default $STMFS_TOKEN, else $RSTMDB_TOKEN).
Exit status 0 when every step did what it should, 1 otherwise.
"""

import argparse
import json
import os
import socket
import struct
import sys
import time

# ---------------------------------------------------------------- frames

# Header (reference rcp-protocol.md §2.1), all big-endian:
#   magic "RCPX" | u16 version = 1 | u16 flags | u16 header_len |
#   u32 payload_len | u32 CRC-32C of the payload
HEADER = struct.Struct(">4sHHHII")
MAGIC = b"RCPX"
FLAG_CRC = 0x0001
MAX_PAYLOAD = 16 * 1024 * 1024


def _make_table():
    # CRC-32C (Castagnoli), reflected: polynomial 0x82F63B78. A table makes
    # it fast enough for large contexts without any module outside stdlib.
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


CRC_TABLE = _make_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# The check value every CRC-32C implementation must give.
assert crc32c(b"123456789") == 0xE3069283


def encode(message):
    payload = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(MAGIC, 1, FLAG_CRC, 0, len(payload), crc32c(payload)) + payload


class ProtocolError(Exception):
    pass


class ServerError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


class Client:
    """One connection. Requests are answered in order, but stream events
    (from WATCH_*) may arrive between responses, so reads sort frames by
    their "type" and keep the events for later."""

    def __init__(self, addr, token=None):
        host, _, port = addr.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buf = b""
        self.next_id = 1
        self.events = []
        self.hello = self.call("HELLO", {
            "protocol_version": 1,
            "client_name": "rcp-client.py",
            "wire_modes": ["binary_json"],
            "features": ["idempotency", "batch"],
        })
        if token:
            self.call("AUTH", {"method": "bearer", "token": token})

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("the server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _read_frame(self):
        magic, version, flags, header_len, length, crc = HEADER.unpack(
            self._read_exact(HEADER.size))
        if magic != MAGIC or version != 1:
            raise ProtocolError(f"not an RCP frame (magic {magic!r}, version {version})")
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"frame of {length} bytes is over the 16 MiB limit")
        self._read_exact(header_len)  # the header extension is reserved: skip it
        payload = self._read_exact(length)
        if flags & FLAG_CRC and crc32c(payload) != crc:
            raise ProtocolError("CRC-32C mismatch")
        return json.loads(payload)

    def call(self, op, params=None):
        """Sends one request and returns its result, or raises ServerError."""
        rid = str(self.next_id)
        self.next_id += 1
        self.sock.sendall(encode({"type": "request", "id": rid, "op": op,
                                  "params": params or {}}))
        while True:
            msg = self._read_frame()
            if msg.get("type") == "event":
                self.events.append(msg)
            elif msg.get("type") == "response" and msg.get("id") == rid:
                if msg["status"] == "ok":
                    return msg.get("result", {})
                err = msg["error"]
                raise ServerError(err["code"], err["message"])

    def wait_events(self, n, seconds=5.0):
        """Reads until n stream events have arrived or the time is up."""
        deadline = time.monotonic() + seconds
        while len(self.events) < n and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                msg = self._read_frame()
            except socket.timeout:
                break
            if msg.get("type") == "event":
                self.events.append(msg)
        self.sock.settimeout(10)
        return self.events

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- the tour

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default="127.0.0.1:7401")
    ap.add_argument("--mount")
    ap.add_argument("--id", default=f"py-{os.getpid()}")
    ap.add_argument("--token", default=os.environ.get("STMFS_TOKEN")
                    or os.environ.get("RSTMDB_TOKEN"))
    args = ap.parse_args()

    def mount_says():
        if not args.mount:
            return ""
        with open(os.path.join(args.mount, "instances", args.id, "state")) as f:
            return "   mount says: " + f.read().strip()

    ok = True
    c = Client(args.addr, args.token)
    h = c.hello
    print(f"connected to {h.get('server_name')} {h.get('server_version')} "
          f"(wire mode {h.get('wire_mode')})")

    # The newest version of "order", or version 1 from examples/order.json.
    machines = {m["machine"]: m["versions"] for m in c.call("LIST_MACHINES")["items"]}
    if "order" in machines:
        version = max(machines["order"])
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "order.json")) as f:
            definition = json.load(f)
        version = c.call("PUT_MACHINE", {"machine": "order", "version": 1,
                                         "definition": definition})["version"]
    print(f"machine order: version {version}")

    # A second connection watches: a connection that waits for events is
    # best kept apart from the one that sends requests.
    w = Client(args.addr, args.token)

    r = c.call("CREATE_INSTANCE", {"machine": "order", "version": version,
                                   "instance_id": args.id,
                                   "initial_ctx": {"customer": "carol"},
                                   "idempotency_key": f"create-{args.id}"})
    sub = w.call("WATCH_INSTANCE", {"instance_id": args.id, "include_ctx": True})
    print(f"watching {args.id} (subscription {sub['subscription_id']})")
    print(f"CREATE_INSTANCE {r['instance_id']} -> {r['state']}{mount_says()}")

    def apply(event, payload=None, key=None, note=""):
        params = {"instance_id": args.id, "event": event}
        if payload is not None:
            params["payload"] = payload
        if key:
            params["idempotency_key"] = key
        shown = f"APPLY_EVENT {event}" + (f" {json.dumps(payload)}" if payload else "")
        shown += f" (key {key}{note})" if key else note
        r = c.call("APPLY_EVENT", params)
        print(f"{shown} -> {r['to_state']}"
              + (f" (applied: {str(r['applied']).lower()})" if key else "")
              + mount_says())
        return r

    r = apply("PAY", {"amount": 30})
    ok &= r["to_state"] == "paid"

    # A refused event changes nothing and says why.
    try:
        c.call("APPLY_EVENT", {"instance_id": args.id, "event": "PAY", "payload": {"amount": 30}})
        print("APPLY_EVENT PAY again -> accepted (unexpected)")
        ok = False
    except ServerError as e:
        print(f"APPLY_EVENT PAY again -> {e}")
        ok &= e.code == "INVALID_TRANSITION"

    r = apply("SHIP", {"address": "1 Main St"})
    ok &= r["to_state"] == "shipped"

    # The same idempotency key twice: the second is answered from the first,
    # applied: false, and nothing new is written.
    first = apply("DELIVER", key="deliver-1")
    again = apply("DELIVER", key="deliver-1", note=", a retry")
    ok &= first["applied"] and not again["applied"] and first["wal_offset"] == again["wal_offset"]

    ctx = c.call("GET_INSTANCE", {"instance_id": args.id})["ctx"]
    print("ctx:", json.dumps(ctx, sort_keys=True))

    events = w.wait_events(3)
    print("events the watch received:")
    for e in events:
        print(f"  {e['from_state']} -> {e['to_state']} on {e['event']} at {e['wal_offset']}")
    ok &= [e["to_state"] for e in events[:3]] == ["paid", "shipped", "delivered"]

    w.call("UNWATCH", {"subscription_id": sub["subscription_id"]})
    w.close()
    c.close()
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ProtocolError, ServerError) as e:
        print(f"rcp-client.py: {e}", file=sys.stderr)
        sys.exit(1)
