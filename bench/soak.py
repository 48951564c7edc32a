#!/usr/bin/env python3
"""The soak test behind bench/soak.sh (Python standard library only; helpers from meshlib.py).

A 3-node mesh on 127.0.0.1..3, mixed grants from a few client threads (client_credentials, token
exchange of a meshgate token, introspection on another node, revocation, introspection of the
revoked token) for --duration seconds, while node 3 is restarted every --restart-every seconds
(alternately SIGTERM and SIGKILL). A client whose node refuses or drops the connection retries the
same request on the next node, as a real client with several endpoints would: such retries are
counted separately; an error is any answer that is not the expected one, or a request that failed
on every node. Every --interval seconds one row: per-node RSS, requests, retries, errors, latency
p50/p99. Exits non-zero when there were errors or a node did not come back.

usage: soak.py --bin MESHGATE --work DIR [--duration S] [--interval S] [--restart-every S]
               [--threads N] [--revoke-share F] [--out RESULTS_JSON]
"""

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshlib  # noqa: E402
from meshlib import Http, basic, pct, rss_kb  # noqa: E402

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
NODES = 3


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports():
    class A:
        n = NODES

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        meshlib.cmd_ports(A)
    return [int(p) for p in out.getvalue().split()]


class Node:
    def __init__(self, i, work, binary):
        self.i, self.work, self.bin = i, work, binary
        self.data_dir = os.path.join(work, f"node{i}")
        self.config = os.path.join(work, f"node{i}.yaml")
        self.proc = None
        self.base = None
        self.metrics = None
        self.restarts = 0

    def start(self):
        err = open(os.path.join(self.work, f"node{self.i}.err"), "ab")
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--data-dir", self.data_dir, "--config", self.config, "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node {self.i} did not start (exit {self.proc.wait()})")
        info = json.loads(line)
        self.base = info["issuer"]
        self.metrics = "http://" + info["metrics_listen"] + "/metrics"

    def stop(self, sig):
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def pid(self):
        return self.proc.pid if self.proc else None


def document_kb(node):
    """The node's replicated document size on disk (KB), from its /metrics; None if unreachable."""
    if not node.metrics:
        return None
    try:
        samples = meshlib.metrics(node.metrics)
    except Exception:  # noqa: BLE001 - a restarting node has no metrics
        return None
    value = samples.get("meshgate_mesh_document_bytes")
    return None if value is None else value / 1024


class Stats:
    """Counters and latencies of the current interval, and totals."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()
        self.total = {"requests": 0, "retries": 0, "errors": 0}
        self.error_samples = []

    def reset(self):
        self.latencies = []
        self.requests = self.retries = self.errors = 0

    def ok(self, seconds):
        with self.lock:
            self.latencies.append(seconds)
            self.requests += 1
            self.total["requests"] += 1

    def retry(self):
        with self.lock:
            self.retries += 1
            self.total["retries"] += 1

    def error(self, what):
        with self.lock:
            self.errors += 1
            self.total["errors"] += 1
            if len(self.error_samples) < 20:
                self.error_samples.append(what)

    def take(self):
        with self.lock:
            row = (self.latencies, self.requests, self.retries, self.errors)
            self.reset()
            return row


class Client:
    """One client thread's connections, one per node; a request goes to its preferred node and,
    if that node does not answer (connection refused or dropped), to the next."""

    def __init__(self, nodes, stats):
        self.nodes, self.stats = nodes, stats
        self.conns = {}

    def call(self, k, path, auth, fields, failover=True):
        for attempt in range(NODES if failover else 1):
            node = self.nodes[(k + attempt) % NODES]
            h = self.conns.get((node.i, node.base))
            if h is None:
                h = Http(node.base, timeout=15)
                self.conns[(node.i, node.base)] = h
            t0 = time.monotonic()
            try:
                status, body = h.post_form(path, auth, fields)
            except (OSError, http.client.HTTPException):
                h.close()
                self.stats.retry()
                continue
            self.stats.ok(time.monotonic() - t0)
            return status, body, node.i
        return None, b"", None


def worker(nodes, cc, xc, stats, stop, seed, revoke_share):
    rng = random.Random(seed)
    client = Client(nodes, stats)
    cc_auth, xc_auth = basic(*cc), basic(*xc)
    while not stop.is_set():
        k = rng.randrange(NODES)
        status, body, at = client.call(k, "/token", cc_auth, {"grant_type": "client_credentials", "scope": "read write"})
        if status != 200:
            if status is not None or not stop.is_set():
                stats.error(f"token: {status} {body[:120]!r}")
            continue
        token = json.loads(body)["access_token"]
        # Introspection on another node: keys and clients are replicated.
        status, body, _ = client.call(k + 1, "/introspect", cc_auth, {"token": token})
        if status != 200 or json.loads(body).get("active") is not True:
            stats.error(f"introspect on another node: {status} {body[:120]!r}")
            continue
        # Token exchange (delegation that narrows) on a third node.
        fields = {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": ACCESS_TOKEN, "scope": "read"}
        status, body, _ = client.call(k + 2, "/token", xc_auth, fields)
        if status != 200:
            stats.error(f"exchange: {status} {body[:120]!r}")
            continue
        if rng.random() < revoke_share:
            # Revocation, then the revoked token is inactive where it was revoked.
            status, body, where = client.call(k, "/revoke", cc_auth, {"token": token})
            if status != 200:
                stats.error(f"revoke: {status} {body[:120]!r}")
                continue
            # Only where it was revoked: other nodes learn it within the sync latency (bench/mesh.sh
            # measures that). If that node went down meanwhile, there is nothing to check.
            status, body, _ = client.call(where - 1, "/introspect", cc_auth, {"token": token}, failover=False)
            if status is None:
                continue
            if status != 200 or json.loads(body).get("active") is not False:
                stats.error(f"introspect after revoke: {status} {body[:120]!r}")


def restarter(nodes, every, stop, events):
    node = nodes[NODES - 1]
    n = 0
    while not stop.wait(every):
        sig = signal.SIGTERM if n % 2 == 0 else signal.SIGKILL
        t0 = time.monotonic()
        node.stop(sig)
        try:
            node.start()
        except RuntimeError as e:
            events.append({"error": str(e)})
            log(f"ERROR: {e}")
            stop.set()
            return
        node.restarts += 1
        n += 1
        events.append({"at": time.time(), "signal": sig.name, "back_after_s": round(time.monotonic() - t0, 2)})
        log(f"node {node.i} restarted after {sig.name} ({time.monotonic() - t0:.1f} s)")


def register(binary, data_dir, name, grants, scope):
    args = [binary, "client", "add", "--data-dir", data_dir, "--name", name, "--scope", scope, "--json"]
    for g in grants:
        args += ["--grant", g]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"client add: {p.stdout} {p.stderr}")
    c = json.loads(p.stdout.strip().splitlines()[-1])
    return c["client_id"], c["client_secret"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--restart-every", type=float, default=60)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--revoke-share", type=float, default=0.5, help="share of loops that revoke their token")
    ap.add_argument("--crdt-buffer-mb", type=int, default=1, help="node.sync.crdt_buffer_mb of every node")
    ap.add_argument("--token-ttl", default="60s", help="bridge.access_token_ttl (revocations are dropped after it)")
    ap.add_argument("--out")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    port, mport, sport = free_ports()
    nodes = [Node(i, a.work, a.bin) for i in range(1, NODES + 1)]
    dids = []
    for nd in nodes:
        p = subprocess.run([a.bin, "id", "--data-dir", nd.data_dir, "--json"], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"meshgate id: {p.stderr}")
        dids.append(json.loads(p.stdout)["did"])
    gossip = json.dumps([f"127.0.0.{nd.i}:{sport}" for nd in nodes])
    for nd in nodes:
        with open(nd.config, "w") as f:
            f.write(
                f"node:\n  sync:\n    listen: \"127.0.0.{nd.i}:{sport}\"\n    gossip_peers: {gossip}\n"
                f"    trusted_peers: {json.dumps(dids)}\n    crdt_buffer_mb: {a.crdt_buffer_mb}\n"
                f"bridge:\n  listen: \"127.0.0.{nd.i}:{port}\"\n  metrics_listen: \"127.0.0.{nd.i}:{mport}\"\n"
                f"  access_token_ttl: {a.token_ttl}\n"
            )
    try:
        for nd in nodes:
            nd.start()
        log(f"3 nodes on 127.0.0.1..3:{port}; waiting for the mesh")
        t0 = time.monotonic()
        while True:
            st = meshlib.mesh_status(a.bin, nodes[0].data_dir)
            if sum(1 for p in st.get("peers", []) if p.get("state") == "alive") >= NODES - 1:
                break
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the mesh did not form within 60 s")
            time.sleep(0.2)
        cc = register(a.bin, nodes[0].data_dir, "soak-cc", ["client_credentials"], "read write")
        xc = register(a.bin, nodes[0].data_dir, "soak-exchange", [EXCHANGE], "read")
        # Wait until every node knows both clients.
        for nd in nodes:
            h = Http(nd.base)
            t1 = time.monotonic()
            while h.post_form("/introspect", basic(*xc), {"token": "x"})[0] != 200 or \
                    h.post_form("/introspect", basic(*cc), {"token": "x"})[0] != 200:
                if time.monotonic() - t1 > 60:
                    raise RuntimeError(f"node {nd.i} never learnt the clients")
                time.sleep(0.1)
            h.close()
        log(f"soaking for {a.duration:.0f} s: {a.threads} client threads, node 3 restarts every {a.restart_every:.0f} s")

        stats, stop, events = Stats(), threading.Event(), []
        threads = [threading.Thread(target=worker, args=(nodes, cc, xc, stats, stop, s, a.revoke_share), daemon=True) for s in range(a.threads)]
        threads.append(threading.Thread(target=restarter, args=(nodes, a.restart_every, stop, events), daemon=True))
        for t in threads:
            t.start()
        rows = []
        start = time.monotonic()
        log(f"node.sync.crdt_buffer_mb {a.crdt_buffer_mb}, bridge.access_token_ttl {a.token_ttl}")
        print(f"{'t (s)':>6} {'RSS node1':>10} {'node2':>8} {'node3':>8} {'doc KB 1/2/3':>16} {'req/s':>7} {'retries':>7} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7}", flush=True)
        while time.monotonic() - start < a.duration and not stop.is_set():
            time.sleep(min(a.interval, max(0.0, a.duration - (time.monotonic() - start))))
            lat, requests, retries, errors = stats.take()
            rss = [rss_kb(nd.pid()) for nd in nodes]
            doc = [document_kb(nd) for nd in nodes]
            row = {
                "t_s": round(time.monotonic() - start, 1),
                "rss_kb": rss,
                "document_kb": doc,
                "requests": requests,
                "retries": retries,
                "errors": errors,
                "p50_ms": round(pct(lat, 50) * 1000, 2) if lat else None,
                "p99_ms": round(pct(lat, 99) * 1000, 2) if lat else None,
            }
            rows.append(row)
            mb = ["-" if r is None else f"{r / 1024:.1f}" for r in rss]
            dk = "/".join("-" if d is None else f"{d:.0f}" for d in doc)
            print(
                f"{row['t_s']:>6.0f} {mb[0]:>8} MB {mb[1]:>5} MB {mb[2]:>5} MB {dk:>16} {requests / a.interval:>7.0f} "
                f"{retries:>7} {errors:>6} {row['p50_ms'] or 0:>7.2f} {row['p99_ms'] or 0:>7.2f}",
                flush=True,
            )
        stop.set()
        for t in threads:
            t.join(timeout=60)
        failed_restart = any("error" in e for e in events)
        total = stats.total
        first = rows[0]["rss_kb"] if rows else [None] * NODES
        last = rows[-1]["rss_kb"] if rows else [None] * NODES
        summary = {
            "duration_s": a.duration,
            "requests": total["requests"],
            "retries": total["retries"],
            "errors": total["errors"],
            "error_samples": stats.error_samples,
            "restarts": nodes[NODES - 1].restarts,
            "restart_events": events,
            "rss_first_kb": first,
            "rss_last_kb": last,
            "rows": rows,
        }
        if a.out:
            with open(a.out, "w") as f:
                json.dump(summary, f, indent=1)
        print(
            f"\n{total['requests']} requests, {total['retries']} retried on another node (connection refused/dropped "
            f"while node 3 restarted), {total['errors']} errors, node 3 restarted {nodes[NODES - 1].restarts} times"
        )
        for i in range(2):
            if first[i] and last[i]:
                print(f"node {i + 1} RSS: {first[i] / 1024:.1f} MB at the first interval, {last[i] / 1024:.1f} MB at the last")
        # Flat means the second half of the run climbs no higher than the first half did: a leak or
        # retained garbage keeps raising the peak, a steady state only wobbles around it.
        half = len(rows) // 2
        if half >= 2:
            for i in range(2):
                early = [r["rss_kb"][i] for r in rows[:half] if r["rss_kb"][i]]
                late = [r["rss_kb"][i] for r in rows[half:] if r["rss_kb"][i]]
                if early and late:
                    growth = (max(late) - max(early)) / max(early)
                    if a.duration < 240:
                        # The first minutes fill the document up to its epoch bound: a shorter run
                        # is all warm-up and its halves say nothing about a steady state.
                        verdict = "too short to tell (warm-up; run 240 s or more)"
                    else:
                        verdict = "flat" if growth <= 0.10 else "GROWING"
                    print(
                        f"node {i + 1} RSS peak: first half {max(early) / 1024:.1f} MB, second half {max(late) / 1024:.1f} MB "
                        f"({growth * 100:+.1f}%; second half {min(late) / 1024:.1f}-{max(late) / 1024:.1f} MB): {verdict}"
                    )
                    summary.setdefault("rss_peak_growth", []).append(round(growth, 4))
            if a.out:
                with open(a.out, "w") as f:
                    json.dump(summary, f, indent=1)
        for sample in stats.error_samples:
            print(f"  error: {sample}")
        if total["errors"] or failed_restart:
            sys.exit(1)
    finally:
        for nd in nodes:
            nd.stop(signal.SIGTERM)


if __name__ == "__main__":
    main()
