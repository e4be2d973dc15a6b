"""rcp_lib.py - what the RCP integration tests share: a client written from
reference/rcp-protocol.md alone (RCPX frames with CRC-32C, JSON lines),
independent of the server's own codec, and a harness that runs
`stmfs serve` on a temporary data directory.

Python 3 standard library only.
"""

import json
import os
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

MAGIC = b"RCPX"
HDR = struct.Struct(">4sHHHII")  # magic, version, flags, header_len, payload_len, crc
MAX_PAYLOAD = 16 * 1024 * 1024


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        t.append(c)
    return t


_T = _table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def frame(payload, flags=1, version=1, magic=MAGIC, header_ext=b"", crc=None, length=None):
    """One binary frame; every field can be broken on purpose."""
    if isinstance(payload, str):
        payload = payload.encode()
    if crc is None:
        crc = crc32c(payload) if flags & 1 else 0
    if length is None:
        length = len(payload)
    return HDR.pack(magic, version, flags, len(header_ext), length, crc) + header_ext + payload


def encode(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Closed(Exception):
    pass


class Conn:
    """One RCP connection. Messages are dicts; responses and events are
    both returned by recv() in wire order."""

    def __init__(self, addr, tls=None, server_hostname=None, timeout=10):
        host, port = addr.rsplit(":", 1)
        s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname=server_hostname)
        self.sock = s
        self.buf = b""
        self.jsonl = False
        self.next_id = 1
        self.raw_frames = []  # (header tuple, payload bytes) of what was received

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, msg):
        data = encode(msg) if not isinstance(msg, (bytes, str)) else msg
        if isinstance(data, str):
            data = data.encode()
        if self.jsonl:
            self.send_raw(data + b"\n")
        else:
            self.send_raw(frame(data))

    def request_msg(self, op, params=None, rid=None):
        if rid is None:
            rid = str(self.next_id)
            self.next_id += 1
        m = {"type": "request", "id": rid, "op": op}
        if params is not None:
            m["params"] = params
        return m

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError("no data from the server")
        except (ConnectionResetError, ssl.SSLError) as e:
            raise Closed(str(e))
        if not chunk:
            raise Closed("connection closed by the server")
        self.buf += chunk

    def recv(self, timeout=10):
        """The next message, checking every frame rule the clients check."""
        deadline = time.time() + timeout
        while True:
            if self.jsonl:
                nl = self.buf.find(b"\n")
                if nl >= 0:
                    line, self.buf = self.buf[:nl], self.buf[nl + 1:]
                    msg = json.loads(line)
                    check_message(msg)
                    return msg
            elif len(self.buf) >= 18:
                magic, ver, flags, hlen, plen, crc = HDR.unpack(self.buf[:18])
                assert magic == MAGIC, "bad magic from server: %r" % magic
                assert ver == 1 and flags == 1 and hlen == 0, (ver, flags, hlen)
                assert plen <= MAX_PAYLOAD
                if len(self.buf) >= 18 + plen:
                    payload = self.buf[18:18 + plen]
                    self.buf = self.buf[18 + plen:]
                    # (pure-Python CRC is slow: very large frames are spot-checked by size)
                    assert plen > (1 << 20) or crc32c(payload) == crc, "bad CRC from server"
                    self.raw_frames.append(((magic, ver, flags, hlen, plen, crc), payload))
                    msg = json.loads(payload)
                    check_message(msg)
                    return msg
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no complete message from the server")
            self._fill(left)

    def call(self, op, params=None, timeout=10):
        """Sends one request and returns its response (events that arrive
        first are kept in self.events)."""
        m = self.request_msg(op, params)
        self.send(m)
        return self.response_to(m["id"], timeout)

    events = None

    def response_to(self, rid, timeout=10):
        if self.events is None:
            self.events = []
        while True:
            msg = self.recv(timeout)
            if msg.get("type") == "event":
                self.events.append(msg)
                continue
            assert msg["id"] == rid, "expected id %r, got %r" % (rid, msg["id"])
            return msg

    def ok(self, op, params=None, timeout=10):
        r = self.call(op, params, timeout)
        assert r["status"] == "ok", "%s %s -> %s" % (op, params, r)
        return r["result"]

    def err(self, op, params=None, code=None, timeout=10):
        r = self.call(op, params, timeout)
        assert r["status"] == "error", "%s %s should fail, got %s" % (op, params, r)
        if code:
            assert r["error"]["code"] == code, "%s: want %s, got %s" % (op, code, r["error"])
        return r["error"]

    def next_event(self, timeout=10):
        if self.events:
            return self.events.pop(0)
        msg = self.recv(timeout)
        assert msg.get("type") == "event", "expected an event, got %s" % msg
        return msg

    def expect_closed(self, timeout=5):
        """True when the server closes without sending anything more."""
        try:
            self._fill(timeout)
        except Closed:
            return True
        raise AssertionError("server sent %r instead of closing" % self.buf[:200])

    def hello(self, **kw):
        p = {"protocol_version": 1, "client_name": "rcp-tests", "wire_modes": ["binary_json"],
             "features": ["idempotency", "batch"]}
        p.update(kw)
        return self.ok("HELLO", p)


CODES = {"UNSUPPORTED_PROTOCOL", "BAD_REQUEST", "UNAUTHORIZED", "AUTH_FAILED", "NOT_FOUND",
         "MACHINE_NOT_FOUND", "MACHINE_VERSION_EXISTS", "MACHINE_VERSION_LIMIT_EXCEEDED",
         "INSTANCE_NOT_FOUND", "INSTANCE_EXISTS", "INVALID_TRANSITION", "GUARD_FAILED",
         "CONFLICT", "WAL_IO_ERROR", "INTERNAL_ERROR", "RATE_LIMITED"}
RETRYABLE = {"WAL_IO_ERROR", "INTERNAL_ERROR", "RATE_LIMITED"}
EVENT_KEYS = ["type", "subscription_id", "instance_id", "machine", "version", "wal_offset",
              "from_state", "to_state", "event", "payload"]


def check_message(msg):
    """What both real clients require of every message (cli-and-clients.md §1)."""
    assert isinstance(msg, dict)
    if msg.get("type") == "event":
        keys = list(msg.keys())
        assert keys[:10] == EVENT_KEYS, keys
        assert keys[10:] in ([], ["ctx"]), keys
        return
    assert msg.get("type") == "response", msg
    assert isinstance(msg.get("id"), str), msg
    assert list(msg.keys())[:3] == ["type", "id", "status"], msg
    assert "meta" not in msg
    if msg["status"] == "ok":
        assert isinstance(msg.get("result"), dict) and "error" not in msg, msg
    else:
        assert msg["status"] == "error", msg
        e = msg["error"]
        assert list(e.keys())[:3] == ["code", "message", "retryable"], e
        assert e["code"] in CODES, e
        assert e["retryable"] == (e["code"] in RETRYABLE), e
        assert "result" not in msg


def find_testdata():
    """../shared/testdata beside the repository, or $STMFS_TESTDATA."""
    cands = []
    if os.environ.get("STMFS_TESTDATA"):
        cands.append(os.environ["STMFS_TESTDATA"])
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    cands.append(os.path.join(os.path.dirname(repo), "shared", "testdata"))
    for c in cands:
        if os.path.isdir(c):
            return c
    return None


class Server:
    """`stmfs serve` on a data directory, on a port the kernel picks."""

    def __init__(self, stmfs, data_dir=None, config=None, env=None, bind="127.0.0.1:0"):
        self.stmfs = stmfs
        self.tmp = tempfile.mkdtemp(prefix="stmfs-rcp-")
        self.data = data_dir or os.path.join(self.tmp, "data")
        self.config = config
        self.env = env
        self.bind = bind
        self.proc = None
        self.addr = None

    def write_config(self, text):
        path = os.path.join(self.tmp, "config.yaml")
        with open(path, "w") as f:
            f.write(text)
        self.config = path
        return path

    def start(self, timeout=10):
        args = [self.stmfs, "serve", self.data, "--bind", self.bind]
        if self.config:
            args += ["-c", self.config]
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("RSTMDB_") or k.startswith("STMFS_"):
                del env[k]
        env.update(self.env or {})
        self.errlog = open(os.path.join(self.tmp, "serve.err"), "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.errlog, env=env)
        deadline = time.time() + timeout
        line = b""
        while time.time() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith(b"listening on "):
            try:
                self.start_rc = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.start_rc = self.proc.wait()
            self.proc.stdout.close()
            self.errlog.close()
            self.proc = None
            raise RuntimeError("stmfs serve did not start: %r\n%s" % (line, self.stderr()))
        self.addr = line.decode().split()[2]
        return self.addr

    def stderr(self):
        try:
            with open(os.path.join(self.tmp, "serve.err"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if not self.proc:
            return None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("stmfs serve did not stop within %ss" % timeout)
        self.proc.stdout.close()
        self.errlog.close()
        self.proc = None
        err = self.stderr()
        # under -Db_sanitize the server's own report must be clean
        for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if mark in err:
                raise AssertionError("sanitizer report from stmfs serve:\n" + err[-6000:])
        return rc

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.errlog.close()
            self.proc = None

    def connect(self, **kw):
        return Conn(self.addr, **kw)

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Runner:
    """Named checks, run in order; prints one line each and a summary."""

    def __init__(self, name):
        self.name = name
        self.failed = []
        self.n = 0

    def run(self, label, fn, *args):
        self.n += 1
        t0 = time.time()
        try:
            fn(*args)
            print("ok %d - %s (%.2fs)" % (self.n, label, time.time() - t0), flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            import traceback
            traceback.print_exc()
            print("not ok %d - %s: %s" % (self.n, label, e), flush=True)
            self.failed.append(label)

    def finish(self):
        if self.failed:
            print("%s: %d of %d failed: %s" % (self.name, len(self.failed), self.n,
                                               ", ".join(self.failed)))
            sys.exit(1)
        print("%s: all %d passed" % (self.name, self.n))
        sys.exit(0)


ORDER_DEF = {"states": ["created", "paid", "shipped", "cancelled"], "initial": "created",
             "transitions": [{"from": "created", "event": "PAY", "to": "paid"},
                             {"from": "paid", "event": "SHIP", "to": "shipped",
                              "guard": "ctx.amount > 0"},
                             {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"}]}
