#!/usr/bin/env python3
"""rcp_transcripts.py STMFS - replays the client-to-server frames of the
traffic captured between rstmdb's real clients and the original server
(../shared/testdata/rcp-transcripts/*.jsonl) against a fresh `stmfs serve`,
and compares every server frame with the recorded one, structurally, as the
transcripts' README says.

Frames are replayed in capture order; each connection is opened at its first
frame and closed after its last. Values the server generates (instance ids
made without one, subscription and snapshot ids) and WAL offsets are mapped
from the recorded value to ours, and the mapping is applied to later
requests. Offsets are checked by structure (an integer whose segment is >= 1,
the same offset everywhere it names the same record), not by value: our WAL
records hold more than rstmdb's (timestamps, hash chain, checkpoints).

Our deliberate deviations are allowed and counted, never silently:
  server-name       HELLO/INFO say "stmfs" and our version
  message-text      error messages are our own words
  invalid-def       an invalid definition is BAD_REQUEST, not INTERNAL_ERROR
  ctx-not-null      a context is {} where rstmdb returned null
  replay-applied    an idempotent replay says applied:false
  atomic-batch      an atomic batch that fails applies nothing, so its first
                    op's instance does not exist afterwards (and what follows
                    from that: a later op on it fails, lists are shorter)
  wal-contents      WAL_READ/WAL_STATS/COMPACT figures depend on our WAL
                    (extra fields in entries, checkpoint records, counts)
  list-order        LIST_INSTANCES is sorted by id (rstmdb: hash order)
  timestamps        created_at/updated_at are wall-clock integers
  extra-fields      GET_INSTANCE also has created_at/updated_at, WAL_STATS
                    head_chain (clients ignore keys they do not know)
Everything else must match exactly.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rcp_lib import Runner, Server, find_testdata  # noqa: E402

STMFS = sys.argv[1]
R = Runner("rcp-transcripts")

OFFSET_KEYS = {"wal_offset", "last_wal_offset", "current_wal_offset", "next_offset",
               "latest_offset", "offset", "from_offset", "expected_wal_offset"}
WAL_FIGURES = {"sequence", "entry_count", "segment_count", "total_size_bytes", "io_stats",
               "bytes_reclaimed", "segments_deleted", "snapshots_created", "total_snapshots",
               "wal_segments", "size_bytes"}
GENERATED_PREFIX = ("sub-", "snap-")
# Fields our engine adds to a result (clients ignore unknown keys).
EXTRA_FIELDS = {"GET_INSTANCE": ("created_at", "updated_at"), "WAL_STATS": ("head_chain",)}


class Replay:
    def __init__(self, name):
        self.name = name
        self.map = {}          # recorded value -> ours (ids and offsets)
        self.allowed = {}      # deviation kind -> count
        self.failures = []
        self.missing_ids = set()  # instances an atomic batch did not create

    def allow(self, kind):
        self.allowed[kind] = self.allowed.get(kind, 0) + 1

    where = ""

    def fail(self, path, msg):
        self.failures.append("%s %s: %s" % (self.where, path, msg))

    # ---- requests: recorded values -> ours --------------------------------
    def subst(self, v):
        if isinstance(v, dict):
            return {k: self.subst(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.subst(x) for x in v]
        if isinstance(v, (str, int)) and not isinstance(v, bool) and v in self.map:
            return self.map[v]
        return v

    # ---- responses: compare ----------------------------------------------
    def learn(self, exp, got):
        if exp != got and exp not in self.map:
            self.map[exp] = got

    def cmp(self, exp, got, path, ctx):
        key = path.rsplit("/", 1)[-1]
        if key in OFFSET_KEYS:
            if exp is None and got is None:
                return
            if not (isinstance(got, int) and not isinstance(got, bool) and got >> 40 >= 1):
                return self.fail(path, "offset %r is not a WAL offset" % (got,))
            if isinstance(exp, int) and exp in self.map and self.map[exp] != got and key != "next_offset":
                return self.fail(path, "offset %r maps to %r before, %r now" % (exp, self.map[exp], got))
            if isinstance(exp, int):
                self.learn(exp, got)
            return
        if key in ("created_at", "updated_at"):
            if not isinstance(got, int):
                return self.fail(path, "timestamp %r" % (got,))
            return self.allow("timestamps")
        if key in WAL_FIGURES or ctx.get("wal"):
            if type(exp) is not type(got) and not (exp is None or got is None):
                return self.fail(path, "%r vs %r" % (exp, got))
            if exp != got:
                self.allow("wal-contents")
            return
        if isinstance(exp, str) and exp.startswith(GENERATED_PREFIX):
            pre = exp.split("-", 1)[0]
            if not (isinstance(got, str) and got.startswith(pre + "-")):
                return self.fail(path, "%r is not a %s- id" % (got, pre))
            return self.learn(exp, got)
        if key == "checksum" and ctx.get("op") == "SNAPSHOT_INSTANCE":
            return
        if key == "instance_id" and ctx.get("generated_id"):
            if not (isinstance(got, str) and len(got) == 36):
                return self.fail(path, "generated id %r" % (got,))
            return self.learn(exp, got)
        if isinstance(exp, str) and exp in self.map:
            exp = self.map[exp]
        if key == "server_name" and exp == "rstmdb":
            if got != "stmfs":
                self.fail(path, got)
            return self.allow("server-name")
        if key == "server_version":
            return self.allow("server-name") if isinstance(got, str) else self.fail(path, got)
        if key == "message" and "/error" in path:
            if not isinstance(got, str) or not got:
                return self.fail(path, "empty message")
            if exp != got:
                self.allow("message-text")
            return
        if key == "features":
            if sorted(exp) != sorted(got):
                self.fail(path, "%r vs %r" % (exp, got))
            return
        if key in ("ctx", "initial_ctx") and exp is None and got == {}:
            return self.allow("ctx-not-null")
        if isinstance(exp, dict) and isinstance(got, dict):
            if ctx.get("entry"):
                # our WAL entries carry more fields (timestamps); the
                # recorded ones must all be there
                extra = set(got) - set(exp)
                if extra:
                    self.allow("wal-contents")
                keys = set(exp)
            else:
                keys = set(exp) | set(got)
            for k in sorted(keys):
                if k not in got:
                    if k == "initial_ctx" and ctx.get("entry") and exp[k] is None:
                        self.allow("ctx-not-null")
                        continue
                    self.fail(path + "/" + k, "missing")
                elif k not in exp:
                    if k in EXTRA_FIELDS.get(ctx.get("op"), ()) and path in ("/result", ""):
                        self.allow("extra-fields")
                        continue
                    self.fail(path + "/" + k, "unexpected %r" % (got[k],))
                else:
                    sub = dict(ctx)
                    if k == "entry":
                        sub["entry"] = True
                    self.cmp(exp[k], got[k], path + "/" + k, sub)
            return
        if isinstance(exp, list) and isinstance(got, list):
            if key == "instances":
                return self.cmp_instances(exp, got, path, ctx)
            if key == "records":
                return self.cmp_records(exp, got, path, ctx)
            if len(exp) != len(got):
                return self.fail(path, "length %d vs %d" % (len(exp), len(got)))
            for i, (a, b) in enumerate(zip(exp, got)):
                self.cmp(a, b, "%s/%d" % (path, i), ctx)
            return
        if exp != got:
            self.fail(path, "%r vs %r" % (exp, got))

    def cmp_instances(self, exp, got, path, ctx):
        def ident(x):
            return self.map.get(x["id"], x["id"])
        e = {ident(x): x for x in exp if ident(x) not in self.missing_ids}
        if len(e) != len(exp):
            self.allow("atomic-batch")
        g = {x["id"]: x for x in got}
        if sorted(e) != sorted(g) and ctx.get("paged") and len(e) == len(g):
            # a page of a differently ordered list holds other ids
            if [x["id"] for x in got] != sorted(g):
                self.fail(path, "not sorted by id")
            return self.allow("list-order")
        if sorted(e) != sorted(g):
            return self.fail(path, "ids %s vs %s" % (sorted(e), sorted(g)))
        if [x["id"] for x in got] != sorted(g):
            self.fail(path, "not sorted by id")
        elif [ident(x) for x in exp] != [x["id"] for x in got]:
            self.allow("list-order")
        for k in sorted(e):
            self.cmp(e[k], g[k], "%s/%s" % (path, k), ctx)

    def cmp_records(self, exp, got, path, ctx):
        # Our log may hold records rstmdb's does not (checkpoints): compare
        # the entries of the record types rstmdb writes, in order.
        keep = {"put_machine", "create_instance", "apply_event", "delete_instance"}
        g = [r for r in got if r["entry"].get("type") in keep]
        e = [r for r in exp if r["entry"].get("type") in keep]
        if len(g) != len(got) or len(e) != len(exp):
            self.allow("wal-contents")
        n = min(len(e), len(g))
        if len(e) != len(g):
            # a page ends at a different place when the log holds more
            self.allow("wal-contents")
        for i in range(n):
            self.cmp(e[i], g[i], "%s/%d" % (path, i), dict(ctx, wal=False))


def summarise(rep, frames, bad_records):
    print("# %s: %d frames, allowed deviations: %s" % (
        rep.name, frames, ", ".join("%s x%d" % kv for kv in sorted(rep.allowed.items())) or "none"))
    for f in rep.failures[:40]:
        print("#   MISMATCH %s" % f)
    if bad_records:
        print("#   (%d recorded frames could not be replayed)" % bad_records)


def replay(path):
    rep = Replay(os.path.basename(path))
    recs = [json.loads(line) for line in open(path, encoding="utf-8")]
    recs.sort(key=lambda r: r["seq"])
    last = {}
    for r in recs:
        last[r["conn"]] = r["seq"]
    srv = Server(STMFS, env={"RSTMDB_FSYNC_POLICY": "every_write"})
    srv.start()
    conns = {}
    pending = {}   # conn -> (op, params) of the request awaiting its answer
    try:
        for r in recs:
            cn = r["conn"]
            if cn not in conns:
                conns[cn] = srv.connect()
            c = conns[cn]
            where = "%s seq %d conn %d (%s)" % (rep.name, r["seq"], cn, r["step"])
            if r["direction"] == "c2s":
                msg = rep.subst(r["payload"])
                c.send(msg)
                pending.setdefault(cn, []).append(msg)
            else:
                exp = r["payload"]
                try:
                    got = c.recv(timeout=10)
                except Exception as e:  # noqa: BLE001
                    rep.fail(where, "no frame: %s" % e)
                    break
                rep.where = where
                if exp.get("type") == "event" or got.get("type") == "event":
                    if exp.get("type") != got.get("type"):
                        rep.fail(where, "expected %s, got %s" % (exp, got))
                        continue
                    rep.cmp(exp, got, "", {"op": "event"})
                else:
                    req = pending[cn].pop(0)
                    check_response(rep, req, exp, got, where)
            if last[cn] == r["seq"]:
                conns.pop(cn).close()
    finally:
        for c in conns.values():
            c.close()
        rc = srv.stop()
        err = srv.stderr()
        srv.cleanup()
    if rc != 0:
        rep.fail("shutdown", "exit %s\n%s" % (rc, err[-2000:]))
    summarise(rep, len(recs), 0)
    if rep.failures:
        raise AssertionError("%d mismatches in %s" % (len(rep.failures), rep.name))


def check_response(rep, req, exp, got, where):
    op = req.get("op")
    params = req.get("params") or {}
    ctx = {"op": op, "generated_id": op == "CREATE_INSTANCE" and "instance_id" not in params,
           "paged": bool(params.get("offset"))}
    rep.where = where
    es, gs = exp.get("status"), got.get("status")
    if got.get("id") != req.get("id"):
        return rep.fail(where, "id %r for request %r" % (got.get("id"), req.get("id")))
    if es == "error" and gs == "error":
        e, g = exp["error"], got["error"]
        if e["code"] == "INTERNAL_ERROR" and g["code"] == "BAD_REQUEST" and op == "PUT_MACHINE":
            rep.allow("invalid-def")
            return
        if e["code"] == "BAD_REQUEST" and op == "BATCH" and g["code"] == "BAD_REQUEST":
            if (params.get("mode") == "atomic"):
                # rstmdb kept the ops before the failure; we applied none
                for sub in params.get("ops", []):
                    iid = (sub.get("params") or {}).get("instance_id")
                    if sub.get("op") == "CREATE_INSTANCE" and iid:
                        rep.missing_ids.add(iid)
                rep.allow("atomic-batch")
        rep.cmp(exp, got, "", ctx)
        return
    if es != gs:
        # what an atomic batch did not create is missing later
        iid = params.get("instance_id")
        if es == "ok" and gs == "error" and got["error"]["code"] == "INSTANCE_NOT_FOUND" and \
                iid in rep.missing_ids:
            return rep.allow("atomic-batch")
        return rep.fail(where, "status %s vs %s: %s" % (es, gs, json.dumps(got)[:300]))
    if op == "APPLY_EVENT" and params.get("idempotency_key") and \
            exp["result"].get("applied") is True and got["result"].get("applied") is False:
        rep.allow("replay-applied")
        got = json.loads(json.dumps(got))
        got["result"]["applied"] = True
    if op == "BATCH":
        return check_batch(rep, params, exp, got, where, ctx)
    rep.cmp(exp, got, "", ctx)


def check_batch(rep, params, exp, got, where, ctx):
    er, gr = exp["result"]["results"], got["result"]["results"]
    if len(er) != len(gr):
        return rep.fail(where, "batch of %d vs %d" % (len(er), len(gr)))
    for i, (a, b) in enumerate(zip(er, gr)):
        sub = params["ops"][i]
        sp = sub.get("params") or {}
        if a["status"] == "ok" and b["status"] == "error" and \
                b["error"]["code"] == "INSTANCE_NOT_FOUND" and sp.get("instance_id") in rep.missing_ids:
            rep.allow("atomic-batch")
            continue
        rep.cmp(a, b, "/result/results/%d" % i, dict(ctx, op=sub.get("op"),
                generated_id=sub.get("op") == "CREATE_INSTANCE" and "instance_id" not in sp))


td = find_testdata()
if not td or not os.path.isdir(os.path.join(td, "rcp-transcripts")):
    print("# testdata not found (looked for ../shared/testdata beside the repository, "
          "or $STMFS_TESTDATA): skipped")
    sys.exit(77)
for fn in sorted(os.listdir(os.path.join(td, "rcp-transcripts"))):
    if fn.endswith(".jsonl"):
        R.run("replay " + fn, replay, os.path.join(td, "rcp-transcripts", fn))
R.finish()
