#!/usr/bin/env python3
"""rcp_auth_tls.py STMFS - authentication on and off, TLS and mutual TLS,
with certificates this test makes with the openssl command.

  auth on:  HELLO, AUTH, PING, BYE work before AUTH; everything else,
            WATCH_* included, is UNAUTHORIZED; a wrong token is AUTH_FAILED
            and changes nothing; the right one opens the session. Hashes in
            the config may be upper-case.
  refusals: auth.required without hashes, TLS without a key, a missing
            certificate file: `stmfs serve` exits 1 with a message.
  TLS:      a client that verifies the server against the test CA works; a
            plain-text client is dropped and others are not disturbed.
  mTLS:     without a client certificate the handshake fails; with one
            signed by the CA it works.
  mTLS CLI: `stmfs call` and `stmfs watch` present one with --cert/--key
            (or STMFS_CLIENT_CERT/STMFS_CLIENT_KEY); without one, or with
            one the server refuses, they say the TLS handshake failed and
            why, in one line; unreadable or mismatched files are bad usage.
"""

import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rcp_lib import Closed, Runner, Server  # noqa: E402

STMFS = sys.argv[1]
R = Runner("rcp-auth-tls")
TOKEN = "my-secret-token"
HASH = hashlib.sha256(TOKEN.encode()).hexdigest()
assert HASH == "ea5add57437cbf20af59034d7ed17968dcc56767b41965fcc5b376d45db8b4a3"


def t_auth_on():
    s = Server(STMFS)
    # upper-case in the file: still matches (hashes are lower-cased on load)
    s.write_config("auth:\n  required: true\n  token_hashes:\n    - \"%s\"\n" % HASH.upper())
    s.start()
    try:
        c = s.connect()
        c.hello()
        assert c.ok("PING") == {"pong": True}
        for op, params in (("INFO", {}), ("LIST_MACHINES", {}), ("WATCH_ALL", {}),
                           ("WATCH_INSTANCE", {"instance_id": "x"}),
                           ("UNWATCH", {"subscription_id": "sub-x"}),
                           ("BATCH", {"ops": [{"op": "PING"}]})):
            e = c.err(op, params, "UNAUTHORIZED")
            assert e["retryable"] is False
        c.err("AUTH", {"method": "bearer", "token": "wrong"}, "AUTH_FAILED")
        c.err("AUTH", {"method": "basic", "token": TOKEN}, "AUTH_FAILED")
        c.err("INFO", {}, "UNAUTHORIZED")
        assert c.ok("AUTH", {"method": "bearer", "token": TOKEN}) == {"authenticated": True}
        assert c.ok("INFO")["protocol_version"] == 1
        assert "subscription_id" in c.ok("WATCH_ALL", {})
        # a later failed AUTH does not log the session out
        c.err("AUTH", {"method": "bearer", "token": "wrong"}, "AUTH_FAILED")
        c.ok("LIST_MACHINES")
        # authentication is per connection
        d = s.connect()
        d.err("LIST_MACHINES", {}, "UNAUTHORIZED")
        d.close()
        c.close()
    finally:
        assert s.stop() == 0
        s.cleanup()


def t_auth_env_hash():
    s = Server(STMFS, env={"RSTMDB_AUTH_REQUIRED": "true", "RSTMDB_AUTH_TOKEN_HASH": HASH})
    s.start()
    try:
        c = s.connect()
        c.err("INFO", {}, "UNAUTHORIZED")
        c.ok("AUTH", {"method": "bearer", "token": TOKEN})
        c.ok("INFO")
    finally:
        assert s.stop() == 0
        s.cleanup()


def t_auth_off():
    s = Server(STMFS)
    s.start()
    try:
        c = s.connect()
        c.ok("INFO")  # no AUTH needed
        assert c.ok("AUTH", {"method": "bearer", "token": "anything"}) == {"authenticated": True}
        c.err("AUTH", {"method": "bearer", "token": ""}, "AUTH_FAILED")
    finally:
        assert s.stop() == 0
        s.cleanup()


def refuses(config_text):
    s = Server(STMFS)
    s.write_config(config_text)
    try:
        try:
            s.start(timeout=10)
        except RuntimeError as e:
            assert s.start_rc == 1, (s.start_rc, str(e))
            assert "stmfs serve:" in s.stderr(), s.stderr()
            return str(e)
        raise AssertionError("stmfs serve started with: %s" % config_text)
    finally:
        s.cleanup()


def t_refusals():
    refuses("auth:\n  required: true\n")
    refuses("tls:\n  enabled: true\n")
    refuses("tls:\n  enabled: true\n  cert_path: /nonexistent.pem\n  key_path: /nonexistent.key\n")


# ---- certificates ----------------------------------------------------------

CERTS = tempfile.mkdtemp(prefix="stmfs-rcp-certs-")


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, cwd=CERTS,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_certs():
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stmfs test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    with open(os.path.join(CERTS, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    with open(os.path.join(CERTS, "client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client", "rogue"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + who,
                "-keyout", who + ".key", "-out", who + ".csr")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "client.ext", "-out", "client.pem")
    # signed by itself, not by the CA
    openssl("x509", "-req", "-in", "rogue.csr", "-signkey", "rogue.key", "-days", "2",
            "-out", "rogue.pem")


def p(name):
    return os.path.join(CERTS, name)


def client_ctx(cert=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=p("ca.pem"))
    if cert:
        ctx.load_cert_chain(p(cert + ".pem"), p(cert + ".key"))
    return ctx


def tls_config(mtls=False):
    t = ("tls:\n  enabled: true\n  cert_path: %s\n  key_path: %s\n" % (p("server.pem"), p("server.key")))
    if mtls:
        t += "  require_client_cert: true\n  client_ca_path: %s\n" % p("ca.pem")
    return t


def handshake_fails(s, ctx):
    try:
        c = s.connect(tls=ctx, server_hostname="127.0.0.1")
        # TLS 1.3: a refused client certificate shows on the first read
        c.send(c.request_msg("PING"))
        c.recv(timeout=5)
    except (ssl.SSLError, Closed, ConnectionResetError, BrokenPipeError, OSError):
        return True
    raise AssertionError("handshake should have failed")


def t_tls():
    s = Server(STMFS)
    s.write_config(tls_config())
    s.start()
    try:
        c = s.connect(tls=client_ctx(), server_hostname="127.0.0.1")
        c.hello()
        assert c.ok("PING") == {"pong": True}
        c.ok("PUT_MACHINE", {"machine": "m", "version": 1, "definition": {
            "states": ["a", "b"], "initial": "a", "transitions": [
                {"from": "a", "event": "GO", "to": "b"}]}})
        c.ok("CREATE_INSTANCE", {"machine": "m", "version": 1, "instance_id": "t1"})
        w = s.connect(tls=client_ctx(), server_hostname="127.0.0.1")
        w.ok("WATCH_INSTANCE", {"instance_id": "t1"})
        c.ok("APPLY_EVENT", {"instance_id": "t1", "event": "GO"})
        assert w.next_event()["to_state"] == "b"
        # large answers cross many TLS records
        big = c.ok("PING", {"pad": "x" * 3000000})
        assert big == {"pong": True}
        # plain text on the TLS port: dropped, the others carry on
        plain = s.connect()
        plain.send(plain.request_msg("PING"))
        try:
            plain.recv(timeout=5)
            raise AssertionError("plain client answered")
        except (Closed, AssertionError, ValueError, TimeoutError) as e:
            if isinstance(e, AssertionError) and "answered" in str(e):
                raise
        plain.close()
        assert c.ok("PING") == {"pong": True}
        w.close()
        c.close()
    finally:
        assert s.stop() == 0, s.stderr()
        s.cleanup()


def t_mtls():
    s = Server(STMFS)
    s.write_config(tls_config(mtls=True))
    s.start()
    try:
        assert handshake_fails(s, client_ctx())
        assert handshake_fails(s, client_ctx("rogue"))
        c = s.connect(tls=client_ctx("client"), server_hostname="127.0.0.1")
        c.hello()
        assert c.ok("PING") == {"pong": True}
        c.close()
    finally:
        assert s.stop() == 0, s.stderr()
        s.cleanup()


def cli(s, cmd, *args, env=None):
    """`stmfs call|watch --addr ... --ca ca.pem ARGS`: (rc, stdout, stderr)."""
    e = {k: v for k, v in os.environ.items()
         if not (k.startswith("STMFS_") or k.startswith("RSTMDB_"))}
    e.update(env or {})
    r = subprocess.run([STMFS, cmd, "--addr", s.addr, "--ca", p("ca.pem")] + list(args),
                       capture_output=True, text=True, timeout=30, env=e)
    return r.returncode, r.stdout, r.stderr


def refused_once(err, s, cmd, why):
    """One line: the handshake failed, and why; no max_connections guess."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stmfs %s: TLS handshake with %s failed: %s" % (cmd, s.addr, why)), err
    assert "max_connections" not in err, err


def t_mtls_cli():
    s = Server(STMFS)
    s.write_config(tls_config(mtls=True))
    s.start()
    cert = ["--cert", p("client.pem"), "--key", p("client.key")]
    try:
        for cmd in ("call", "watch"):
            args = ["ping"] if cmd == "call" else []
            rc, out, err = cli(s, cmd, *args)
            assert rc == 1, (cmd, rc, err)
            refused_once(err, s, cmd, "the server requires a client certificate")
            assert "add --cert FILE and --key FILE" in err, err
            rc, out, err = cli(s, cmd, "--cert", p("rogue.pem"), "--key", p("rogue.key"), *args)
            assert rc == 1, (cmd, rc, err)
            refused_once(err, s, cmd, "the server refused the client certificate " + p("rogue.pem"))
        rc, out, err = cli(s, "call", *cert, "ping")
        assert rc == 0 and '"pong": true' in out, (rc, out, err)
        env = {"STMFS_CLIENT_CERT": p("client.pem"), "STMFS_CLIENT_KEY": p("client.key")}
        rc, out, err = cli(s, "call", "ping", env=env)
        assert rc == 0 and '"pong": true' in out, (rc, out, err)
        # watch subscribes with the certificate and stops cleanly on SIGINT
        w = subprocess.Popen([STMFS, "watch", "--addr", s.addr, "--ca", p("ca.pem")] + cert,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            line = w.stderr.readline()
            assert line.startswith("stmfs watch: subscribed"), line
            w.send_signal(signal.SIGINT)
            assert w.wait(10) == 0
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
            w.stderr.close()
        # the files: a missing one, a key of another certificate, one alone
        rc, out, err = cli(s, "call", "--cert", p("nope.pem"), "--key", p("client.key"), "ping")
        assert rc == 2 and "--cert: cannot read '%s'" % p("nope.pem") in err, (rc, err)
        rc, out, err = cli(s, "call", "--cert", p("client.pem"), "--key", p("rogue.key"), "ping")
        assert rc == 2 and "is not the private key of the certificate" in err, (rc, err)
        rc, out, err = cli(s, "call", "--cert", p("client.key"), "--key", p("client.key"), "ping")
        assert rc == 2 and "holds no usable certificate" in err, (rc, err)
        rc, out, err = cli(s, "watch", "--cert", p("client.pem"))
        assert rc == 2 and "--cert without --key" in err, (rc, err)
    finally:
        assert s.stop() == 0, s.stderr()
        s.cleanup()


try:
    R.run("auth on: gate, AUTH, per connection", t_auth_on)
    R.run("auth from the environment", t_auth_env_hash)
    R.run("auth off", t_auth_off)
    R.run("startup refusals", t_refusals)
    if shutil.which("openssl"):
        make_certs()
        R.run("TLS", t_tls)
        R.run("mutual TLS", t_mtls)
        R.run("mutual TLS from stmfs call and watch", t_mtls_cli)
    else:
        print("# openssl command not found: TLS checks skipped")
finally:
    shutil.rmtree(CERTS, ignore_errors=True)
R.finish()
