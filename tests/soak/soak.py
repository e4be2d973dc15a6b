#!/usr/bin/env python3
"""soak.py - stmfs under sustained mixed load, checked for leaks and lost writes.

    soak.py STMFS_BINARY [SECONDS]          (default 60; CI runs 20)

Mounts a fresh database with the RCP listener beside it, then for SECONDS:
  * 64 RCP connections, each creating its own instance and applying events
    to it as fast as the server answers (every answer is counted);
  * 16 shell writers, each creating an instance through machines/soak/new
    and echoing events into its events file (every echo that succeeded is
    counted);
  * watchers attached the whole time: `cat wal/watch`, a WATCH_ALL
    subscription draining events, and `tail -f` on a history file.
Every second it samples the daemon's resident memory and open descriptors.
At the end it checks:
  * no error but the expected ones (none are expected here);
  * every instance's history has exactly 1 + the acknowledged events;
  * the descriptor count is where it started (+/- 4);
  * memory grew by less than 16 MiB (the bounded ring of recent events kept
    for watchers) plus 512 bytes per acknowledged record (its history index
    entry and allocator slack): growth beyond that is a leak;
  * the daemon still answers and unmounts cleanly.
Prints the figures and "N passed, N failed"; exit status 0 only if all hold.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import rcpc  # noqa: E402  (the project's stdlib RCP client)

RCP_CONNS = int(os.environ.get("SOAK_RCP_CONNS", "64"))
SHELL_WRITERS = int(os.environ.get("SOAK_SHELL_WRITERS", "16"))

DEFINITION = {
    "states": ["open", "closed"],
    "initial": "open",
    "transitions": [
        {"from": "open", "event": "T", "to": "open"},
        {"from": "open", "event": "CLOSE", "to": "closed"},
    ],
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def daemon_pid(data):
    out = subprocess.run(["pgrep", "-f", "stmfs mount " + data], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def sample(pid):
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return rss, fds


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}   # instance id -> acknowledged events
        self.errors = []

    def error(self, what):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(what)


def rcp_worker(addr, k, deadline, res):
    iid = "r-%02d" % k
    try:
        c = rcpc.Conn(addr)
        c.call("HELLO", {"protocol_version": 1, "client_name": "soak",
                         "wire_modes": ["binary_json"]})
        r = c.call("CREATE_INSTANCE", {"machine": "soak", "version": 1, "instance_id": iid})
        if r["status"] != "ok":
            res.error("%s create: %s" % (iid, r.get("error")))
            return
        n = 0
        while time.monotonic() < deadline:
            r = c.call("APPLY_EVENT", {"instance_id": iid, "event": "T", "payload": {"n": n}})
            if r["status"] != "ok":
                res.error("%s apply: %s" % (iid, r.get("error")))
                break
            n += 1
        with res.lock:
            res.acked[iid] = n
        c.sock.close()
    except Exception as e:  # a dropped connection is a failure of the soak
        res.error("%s: %r" % (iid, e))


SHELL_WRITER = r'''
set -u
mnt=$1 id=$2 secs=$3 out=$4
echo "$id" > "$mnt/machines/soak/new" || { echo "create failed" > "$out"; exit 1; }
n=0
end=$((SECONDS + secs))
while [ "$SECONDS" -lt "$end" ]; do
    if echo T > "$mnt/instances/$id/events"; then n=$((n + 1)); else echo "echo failed" >&2; break; fi
done
echo "$n" > "$out"
'''


def watch_all(addr, stop, counter):
    try:
        c = rcpc.Conn(addr, timeout=2.0)
        c.call("WATCH_ALL", {"include_ctx": False})
        while not stop.is_set():
            try:
                c.event()
                counter[0] += 1
            except socket.timeout:
                continue
    except Exception:
        pass


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    stmfs = os.path.abspath(argv[1])
    seconds = int(argv[2]) if len(argv) > 2 else int(os.environ.get("STMFS_SOAK_SECONDS", "60"))
    top = tempfile.mkdtemp(prefix="stmfs-soak-")
    data, mnt = os.path.join(top, "data"), os.path.join(top, "mnt")
    os.makedirs(mnt)
    addr = "127.0.0.1:%d" % free_port()
    passed = failed = 0
    procs = []

    def check(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
            print("ok - " + what)
        else:
            failed += 1
            print("not ok - " + what)

    try:
        subprocess.run([stmfs, "mount", data, mnt, "--bind", addr], check=True)
        for _ in range(100):
            try:
                rcpc.Conn(addr, timeout=1).call("PING")
                break
            except OSError:
                time.sleep(0.1)
        pid = daemon_pid(data)
        c = rcpc.Conn(addr)
        r = c.call("PUT_MACHINE", {"machine": "soak", "version": 1, "definition": DEFINITION})
        check(r["status"] == "ok", "machine defined over RCP")

        stop = threading.Event()
        watched = [0]
        watchers = [threading.Thread(target=watch_all, args=(addr, stop, watched), daemon=True)]
        watchers[0].start()
        devnull = open(os.devnull, "w")
        procs.append(subprocess.Popen(["cat", os.path.join(mnt, "wal", "watch")], stdout=devnull))
        time.sleep(0.5)
        rss0, fds0 = sample(pid)

        res = Results()
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=rcp_worker, args=(addr, k, deadline, res))
                   for k in range(RCP_CONNS)]
        outs = [os.path.join(top, "w-%02d.count" % k) for k in range(SHELL_WRITERS)]
        writers = [subprocess.Popen(["bash", "-c", SHELL_WRITER, "soak", mnt, "w-%02d" % k,
                                     str(seconds), outs[k]]) for k in range(SHELL_WRITERS)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        procs.append(subprocess.Popen(["tail", "-f", os.path.join(mnt, "instances", "r-00",
                                                                  "history")], stdout=devnull))
        samples = []
        while time.monotonic() < deadline:
            time.sleep(1.0)
            samples.append(sample(pid))
        for t in threads:
            t.join(60)
        for w in writers:
            w.wait(60)
        for k in range(SHELL_WRITERS):
            try:
                res.acked["w-%02d" % k] = int(open(outs[k]).read().strip())
            except (OSError, ValueError):
                res.error("shell writer w-%02d reported nothing" % k)
        stop.set()
        for p in procs:
            p.terminate()
        time.sleep(0.5)
        rss1, fds1 = sample(pid)

        total = sum(res.acked.values())
        print("acknowledged events: %d in %d s (%.0f/s) by %d RCP connections and %d shell "
              "writers; %d watch events seen" % (total, seconds, total / seconds, RCP_CONNS,
                                                 SHELL_WRITERS, watched[0]))
        print("daemon: rss %d -> %d KiB (max %d), fds %d -> %d (max %d)" %
              (rss0, rss1, max(s[0] for s in samples), fds0, fds1, max(s[1] for s in samples)))
        check(not res.errors, "no unexpected errors" + ("" if not res.errors else
                                                        ": " + "; ".join(res.errors[:5])))
        check(len(res.acked) == RCP_CONNS + SHELL_WRITERS, "every worker finished and reported")
        bad = []
        for iid, n in sorted(res.acked.items()):
            with open(os.path.join(mnt, "instances", iid, "history")) as f:
                lines = sum(1 for _ in f)
            if lines != n + 1:
                bad.append("%s: %d history lines for %d acknowledged events" % (iid, lines, n))
        check(not bad, "every history holds exactly the acknowledged events" +
              ("" if not bad else ": " + "; ".join(bad[:5])))
        check(abs(fds1 - fds0) <= 4, "open descriptors flat (%d -> %d)" % (fds0, fds1))
        grew = (rss1 - rss0) * 1024
        allowed = 16 * 1024 * 1024 + 512 * total
        check(grew < allowed, "memory grew %.1f MiB for %d records (allowed %.1f MiB)" %
              (grew / 1048576, total, allowed / 1048576))
        r = rcpc.Conn(addr).call("WAL_STATS")
        check(r["status"] == "ok", "the daemon still answers")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for _ in range(50):
            if subprocess.run(["fusermount3", "-u", mnt], stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["fusermount3", "-uz", mnt])
        for _ in range(100):
            if not daemon_pid(data):
                break
            time.sleep(0.1)
        if daemon_pid(data):
            failed += 1
            print("not ok - the daemon did not exit after unmount")
            os.kill(daemon_pid(data), 9)
        shutil.rmtree(top, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
