#!/usr/bin/env python3
"""Helpers for bench/mesh.sh (Python standard library only).

Subcommands:
  ports N                               print three ports free on 127.0.0.1 .. 127.0.0.N
  wait-alive BIN DATA_DIR PEERS         wait until `meshgate mesh status` shows PEERS peers alive
  run NODES_JSON OUT_JSON [options]     the measurements (latency, bytes, memory); see --help
  report RESULTS_JSON                   print the results table

NODES_JSON is a list of {"i", "data_dir", "base", "metrics", "pid", "did"}, one per node.
"""

import argparse
import base64
import http.client
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

# ---------------------------------------------------------------- small helpers


def log(msg):
    print(f"[mesh {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def basic(client_id, secret):
    # RFC 6749 2.3.1: form-urlencode id and secret before base64.
    q = urllib.parse.quote_plus
    return "Basic " + base64.b64encode(f"{q(client_id)}:{q(secret)}".encode()).decode()


class _NoDelayConnection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Http:
    """One keep-alive connection to one base URL; reconnects once on a broken connection."""

    def __init__(self, base, timeout=15):
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.prefix = u.hostname, u.port or 80, u.path.rstrip("/")
        self.timeout = timeout
        self.conn = None

    def _c(self):
        if self.conn is None:
            self.conn = _NoDelayConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            try:
                c = self._c()
                c.request(method, self.prefix + path, body=body, headers=headers or {})
                r = c.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def post_form(self, path, auth, fields):
        body = urllib.parse.urlencode(fields)
        return self.request(
            "POST",
            path,
            body,
            {
                "Authorization": auth,
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
        )

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None


def issue(h, auth):
    status, body = h.post_form("/token", auth, {"grant_type": "client_credentials"})
    if status != 200:
        raise RuntimeError(f"token: HTTP {status}: {body[:200]!r}")
    return json.loads(body)["access_token"]


def active(h, auth, token):
    """True / False from /introspect; None on anything but a 200 JSON answer."""
    status, body = h.post_form("/introspect", auth, {"token": token})
    if status != 200:
        return None
    try:
        return json.loads(body).get("active") is True
    except ValueError:
        return None


def revoke(h, auth, token):
    status, body = h.post_form("/revoke", auth, {"token": token})
    if status != 200:
        raise RuntimeError(f"revoke: HTTP {status}: {body[:200]!r}")


def metrics(url):
    """The meshgate_* samples of a /metrics page as {name{labels}: float}."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        c.request("GET", u.path or "/metrics")
        r = c.getresponse()
        text = r.read().decode()
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) == 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return out


def admin(data_dir, request, timeout=60):
    """One request on the node's admin socket (what the CLI sends), answer's "ok" value."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.path.join(data_dir, "admin.sock"))
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    answer = json.loads(buf)
    if "ok" not in answer:
        raise RuntimeError(f"admin {request.get('command')}: {answer.get('error', answer)}")
    return answer["ok"]


def rss_kb(pid, key="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _pid_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def _stat_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[4]


class Cpu:
    """Where the machine's CPU went between start() and stop(): the nodes, this process (the
    load generator), everything else; and the time spent waiting for I/O (fsync)."""

    def __init__(self, pids):
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK")
        self.t0 = time.monotonic()
        self.n0 = sum(_pid_ticks(p) for p in pids)
        self.b0, self.w0 = _stat_ticks()
        self.s0 = sum(os.times()[:2])

    def stop(self):
        wall = time.monotonic() - self.t0
        n1 = sum(_pid_ticks(p) for p in self.pids)
        b1, w1 = _stat_ticks()
        s1 = sum(os.times()[:2])
        nodes = (n1 - self.n0) / self.hz
        gen = s1 - self.s0
        busy = (b1 - self.b0) / self.hz
        return {
            "wall_s": wall,
            "nodes_cores": nodes / wall,
            "loadgen_cores": gen / wall,
            "other_cores": max(0.0, busy - nodes - gen) / wall,
            "iowait_cores": (w1 - self.w0) / self.hz / wall,
        }


def pct(xs, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def summary(xs):
    if not xs:
        return None
    return {"n": len(xs), "p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99), "max": max(xs)}


# ---------------------------------------------------------------- ports, wait-alive


def cmd_ports(a):
    """Three distinct ports that bind on every 127.0.0.i, i = 1..N (checked, then released)."""
    found = []
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port in found:
            continue
        ok = True
        for i in range(1, a.n + 1):
            t = socket.socket()
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                t.bind((f"127.0.0.{i}", port))
            except OSError:
                ok = False
            finally:
                t.close()
            if not ok:
                break
        if ok:
            found.append(port)
            if len(found) == 3:
                print(*found)
                return
    sys.exit("ports: no free ports found")


def mesh_status(binary, data_dir):
    p = subprocess.run(
        [binary, "mesh", "status", "--data-dir", data_dir, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if p.returncode != 0:
        raise RuntimeError(p.stdout.strip() or p.stderr.strip())
    return json.loads(p.stdout)


def cmd_wait_alive(a):
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < a.timeout:
        try:
            st = mesh_status(a.bin, a.data_dir)
            alive = sum(1 for p in st.get("peers", []) if p.get("state") == "alive")
            last = f"{alive} alive of {len(st.get('peers', []))} peers"
            if alive >= a.peers:
                print(f"{alive} peers alive after {time.monotonic() - t0:.1f} s")
                return
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            last = str(e)
        time.sleep(0.2)
    sys.exit(f"wait-alive: not {a.peers} peers alive within {a.timeout} s (last: {last})")


# ---------------------------------------------------------------- the run


class Mesh:
    def __init__(self, nodes, binary):
        self.nodes = nodes
        self.bin = binary
        self.n = len(nodes)

    def heads(self, k):
        return tuple(sorted(admin(self.nodes[k]["data_dir"], {"command": "mesh_status"})["heads"]))

    def converged(self):
        hs = [self.heads(k) for k in range(self.n)]
        return all(h == hs[0] for h in hs)

    def wait_converged(self, timeout, quiet_s=0.0):
        """Waits until every node has the same heads (and, with quiet_s, no node's sync-sent
        counter moved for quiet_s); returns seconds waited or None on timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.converged():
                if quiet_s <= 0:
                    return time.monotonic() - t0
                before = self.sent_totals()
                time.sleep(quiet_s)
                if self.sent_totals() == before and self.converged():
                    return time.monotonic() - t0
                continue
            time.sleep(0.02)
        return None

    def sent_totals(self):
        return [metrics(nd["metrics"]).get("meshgate_mesh_sync_sent_bytes_total", 0) for nd in self.nodes]


class Pollers:
    """One thread per node with its own keep-alive connection; polls /introspect for a token
    every `interval` s until it answers active false, or the deadline."""

    def __init__(self, nodes, auth, interval):
        self.auth = auth
        self.interval = interval
        self.jobs = [queue.Queue() for _ in nodes]
        self.results = queue.Queue()
        self.threads = []
        for k, nd in enumerate(nodes):
            t = threading.Thread(target=self._run, args=(k, nd["base"]), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, k, base):
        h = Http(base)
        while True:
            job = self.jobs[k].get()
            if job is None:
                h.close()
                return
            token, go, deadline = job
            go.wait()
            polls, seen, err = 0, None, None
            while True:
                try:
                    a = active(h, self.auth, token)
                except (OSError, http.client.HTTPException) as e:
                    a, err = None, str(e)
                now = time.monotonic()
                polls += 1
                if a is False:
                    seen = now
                    break
                if now > deadline:
                    break
                time.sleep(self.interval)
            self.results.put((k, seen, polls, err))

    def start(self, ks, token, go, deadline):
        for k in ks:
            self.jobs[k].put((token, go, deadline))

    def collect(self, count):
        return [self.results.get() for _ in range(count)]

    def stop(self):
        for q in self.jobs:
            q.put(None)


def wait_active_everywhere(hs, auth, token, timeout=10):
    t0 = time.monotonic()
    pending = set(range(len(hs)))
    while pending and time.monotonic() - t0 < timeout:
        for k in list(pending):
            if active(hs[k], auth, token):
                pending.discard(k)
        if pending:
            time.sleep(0.005)
    return not pending


def register_client(mesh, name):
    p = subprocess.run(
        [
            mesh.bin, "client", "add", "--data-dir", mesh.nodes[0]["data_dir"], "--name", name,
            "--grant", "client_credentials", "--scope", "read write", "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if p.returncode != 0:
        raise RuntimeError(f"client add failed: {p.stdout.strip()} {p.stderr.strip()}")
    c = json.loads(p.stdout.strip().splitlines()[-1])
    return c["client_id"], c["client_secret"]


def phase_latency(mesh, hs, auth, samples, res, rng):
    n = mesh.n
    pollers = Pollers(mesh.nodes, auth, 0.002)
    pairs, per_sample, failures, revoke_ms, self_inactive_bad = [], [], 0, [], 0
    per_node = {k: [] for k in range(n)}
    t_phase = time.monotonic()
    cpu = Cpu([nd["pid"] for nd in mesh.nodes])
    for s in range(samples):
        i = rng.randrange(n)
        token = issue(hs[i], auth)
        if not wait_active_everywhere(hs, auth, token):
            raise RuntimeError(f"sample {s}: a token issued on node {i + 1} is not active on every node within 10 s")
        r = rng.randrange(n)
        others = [k for k in range(n) if k != r]
        go = threading.Event()
        t0 = time.monotonic()
        pollers.start(others, token, go, t0 + 10)
        go.set()
        revoke(hs[r], auth, token)
        t_ack = time.monotonic()
        revoke_ms.append((t_ack - t0) * 1000)
        if active(hs[r], auth, token) is not False:
            self_inactive_bad += 1
        worst, failed = 0.0, False
        for k, seen, _polls, _err in pollers.collect(len(others)):
            if seen is None:
                failures += 1
                failed = True
                continue
            ms = (seen - t0) * 1000
            pairs.append(ms)
            per_node[k].append(ms)
            worst = max(worst, ms)
        if not failed:
            per_sample.append(worst)
        if (s + 1) % max(1, samples // 5) == 0:
            log(f"  {s + 1}/{samples} samples, pair p50 {pct(pairs, 50):.1f} ms" if pairs else f"  {s + 1}/{samples}")
    pollers.stop()
    res["latency"] = {
        "samples": samples,
        "pairs": summary(pairs),
        "per_sample_max": summary(per_sample),
        "per_node_p50": {str(k + 1): (pct(v, 50) if v else None) for k, v in per_node.items()},
        "failures": failures,
        "revoke_request_ms": summary(revoke_ms),
        "revoking_node_still_active": self_inactive_bad,
        "seconds": time.monotonic() - t_phase,
        "cpu": cpu.stop(),
    }


def phase_bytes(mesh, hs, auth, batch, idle_s, res, rng):
    n = mesh.n
    # Tokens first (issuing does not change the replicated document).
    tokens = [(rng.randrange(n), None) for _ in range(batch)]
    tokens = [(k, issue(hs[k], auth)) for k, _ in tokens]
    if mesh.wait_converged(30, quiet_s=1.0) is None:
        raise RuntimeError("the mesh did not settle before the bytes phase")
    # Idle baseline: what the counters move by without any change (pings, pongs).
    m0 = [metrics(nd["metrics"]) for nd in mesh.nodes]
    t0 = time.monotonic()
    time.sleep(idle_s)
    m1 = [metrics(nd["metrics"]) for nd in mesh.nodes]
    t1 = time.monotonic()
    key_s, key_r = "meshgate_mesh_sync_sent_bytes_total", "meshgate_mesh_received_bytes_total"
    idle_sent = [(m1[k].get(key_s, 0) - m0[k].get(key_s, 0)) / (t1 - t0) for k in range(n)]
    idle_recv = [(m1[k].get(key_r, 0) - m0[k].get(key_r, 0)) / (t1 - t0) for k in range(n)]
    # The batch: revocations one after another at random nodes, then wait until every node has
    # the same heads and no sync message moved for 1 s.
    a0 = [metrics(nd["metrics"]) for nd in mesh.nodes]
    t2 = time.monotonic()
    for _, tok in tokens:
        revoke(hs[rng.randrange(n)], auth, tok)
    settle = mesh.wait_converged(60, quiet_s=1.0)
    if settle is None:
        raise RuntimeError("the mesh did not converge after the bytes batch")
    a1 = [metrics(nd["metrics"]) for nd in mesh.nodes]
    t3 = time.monotonic()
    dt = t3 - t2
    rows = []
    for k in range(n):
        sent = a1[k].get(key_s, 0) - a0[k].get(key_s, 0)
        recv = a1[k].get(key_r, 0) - a0[k].get(key_r, 0)
        rows.append(
            {
                "node": k + 1,
                "sent": sent / batch,
                "received": recv / batch,
                "received_minus_idle": max(0.0, recv - idle_recv[k] * dt) / batch,
                "idle_sent_per_s": idle_sent[k],
                "idle_received_per_s": idle_recv[k],
            }
        )
    res["bytes"] = {
        "batch": batch,
        "window_s": dt,
        "idle_window_s": t1 - t0,
        "nodes": rows,
        "sum_sent": sum(r["sent"] for r in rows),
        "sum_received": sum(r["received"] for r in rows),
        "sum_received_minus_idle": sum(r["received_minus_idle"] for r in rows),
        "doc_bytes": [a1[k].get("meshgate_mesh_document_bytes", 0) for k in range(n)],
    }


def populate_clients(mesh, target, budget_s, res):
    """Clients: the CLI for a first few (its rate is reported), then the admin socket the CLI
    talks to (the same JSON request, without a process per client), from one thread per node."""
    out = {"target": target, "cli_added": 0, "cli_rate": None, "socket_added": 0, "socket_rate": None}
    cli_n = min(20, target)
    t0 = time.monotonic()
    for j in range(cli_n):
        register_client(mesh, f"fill-cli-{j}")
    if cli_n:
        out["cli_added"] = cli_n
        out["cli_rate"] = cli_n / (time.monotonic() - t0)
    remaining = target - cli_n
    lock = threading.Lock()
    counter = [0]
    errors = []
    deadline = time.monotonic() + budget_s
    req = {"command": "client_add", "grants": ["client_credentials"], "scopes": ["read"], "audiences": []}

    def worker(k):
        dd = mesh.nodes[k]["data_dir"]
        while time.monotonic() < deadline:
            with lock:
                if counter[0] >= remaining or len(errors) > 5:
                    return
                counter[0] += 1
                j = counter[0]
            try:
                admin(dd, dict(req, name=f"fill-{j}"))
            except (OSError, RuntimeError, ValueError) as e:
                with lock:
                    errors.append(str(e))
                    counter[0] -= 1

    t1 = time.monotonic()
    cpu = Cpu([nd["pid"] for nd in mesh.nodes])
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(mesh.n)]
    for t in ths:
        t.start()
    last = t1
    while any(t.is_alive() for t in ths):
        time.sleep(0.5)
        if time.monotonic() - last >= 15:
            last = time.monotonic()
            log(f"  clients: {counter[0] + cli_n:,}/{target:,} after {last - t0:.0f} s")
    for t in ths:
        t.join()
    if errors:
        raise RuntimeError(f"client add through the admin socket failed: {errors[0]}")
    dt = time.monotonic() - t1
    out["socket_added"] = counter[0]
    out["socket_rate"] = counter[0] / dt if dt > 0 else None
    out["added"] = cli_n + counter[0]
    out["seconds"] = time.monotonic() - t0
    out["budget_hit"] = out["added"] < target
    out["cpu"] = cpu.stop()
    res["clients"] = out
    log(f"  clients: {out['added']:,} in {out['seconds']:.1f} s")


def populate_revocations(mesh, auth, target, budget_s, threads_per_node, res):
    """Issue-and-revoke over keep-alive HTTP connections, threads_per_node threads per node."""
    lock = threading.Lock()
    done = [0]
    claimed = [0]
    errors = []
    timeline = []
    t0 = time.monotonic()
    deadline = t0 + budget_s

    def worker(k):
        h = Http(mesh.nodes[k]["base"], timeout=60)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if claimed[0] >= target or len(errors) > 20:
                        return
                    claimed[0] += 1
                try:
                    tok = issue(h, auth)
                    revoke(h, auth, tok)
                except (OSError, RuntimeError, http.client.HTTPException, ValueError) as e:
                    with lock:
                        errors.append(f"node {k + 1}: {e}")
                        claimed[0] -= 1
                    continue
                with lock:
                    done[0] += 1
        finally:
            h.close()

    cpu = Cpu([nd["pid"] for nd in mesh.nodes])
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(mesh.n) for _ in range(threads_per_node)]
    for t in ths:
        t.start()
    last_t, last_n = t0, 0
    while any(t.is_alive() for t in ths):
        time.sleep(0.25)
        now = time.monotonic()
        if now - last_t >= 10:
            n = done[0]
            timeline.append({"t": now - t0, "count": n, "rate": (n - last_n) / (now - last_t)})
            log(f"  revocations: {n:,}/{target:,} after {now - t0:.0f} s ({(n - last_n) / (now - last_t):.0f}/s now)")
            last_t, last_n = now, n
    for t in ths:
        t.join()
    dt = time.monotonic() - t0
    if len(errors) > 20:
        raise RuntimeError(f"revocations failing: {errors[0]}")
    n = done[0]
    timeline.append({"t": dt, "count": n, "rate": (n - last_n) / max(1e-9, dt - (last_t - t0))})
    res["revocations"] = {
        "target": target,
        "done": n,
        "seconds": dt,
        "rate": n / dt if dt > 0 else None,
        "budget_hit": n < target,
        "threads": threads_per_node * mesh.n,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "timeline": timeline,
        "cpu": cpu.stop(),
    }
    log(f"  revocations: {n:,} in {dt:.1f} s ({n / dt:.0f}/s)")


def _disk_bytes(data_dir):
    """Bytes of the persisted document: state.* files in the data directory."""
    total = 0
    for name in os.listdir(data_dir):
        if name.startswith("state."):
            try:
                total += os.path.getsize(os.path.join(data_dir, name))
            except OSError:
                pass
    return total


def phase_memory(mesh, hs, auth, clients, revocations, budget_s, settle_s, res, writers=16, rest_s=0.0):
    res["memory_targets"] = {"clients": clients, "revocations": revocations, "budget_s": budget_s}
    res["rss_before_kb"] = [rss_kb(nd["pid"]) for nd in mesh.nodes]
    log(f"populating {clients:,} clients (budget {budget_s} s)")
    populate_clients(mesh, clients, budget_s, res)
    log(f"populating {revocations:,} revocations (issue + revoke over HTTP, budget {budget_s} s)")
    populate_revocations(mesh, auth, revocations, budget_s, writers, res)
    # Convergence: same heads everywhere and every node's document size unchanged for settle_s.
    log("waiting for the mesh to converge")
    t0 = time.monotonic()
    limit = max(120.0, 2.0 * res["revocations"]["seconds"])
    stable_since, last_sizes, conv = None, None, None
    while time.monotonic() - t0 < limit:
        sizes = [metrics(nd["metrics"]).get("meshgate_mesh_document_bytes", 0) for nd in mesh.nodes]
        same = mesh.converged()
        now = time.monotonic()
        if same and sizes == last_sizes:
            if stable_since is None:
                stable_since = now
            if now - stable_since >= settle_s:
                conv = stable_since - t0
                break
        else:
            stable_since = None
        last_sizes = sizes
        time.sleep(0.5)
    heads_equal = mesh.converged()
    # A fresh revocation, issued on the last node, revoked on the first, must propagate.
    tok = issue(hs[-1], auth)
    fresh_ok = wait_active_everywhere(hs, auth, tok, timeout=30)
    t1 = time.monotonic()
    revoke(hs[0], auth, tok)
    pending = set(range(1, mesh.n))
    while pending and time.monotonic() - t1 < 60:
        for k in list(pending):
            if active(hs[k], auth, tok) is False:
                pending.discard(k)
        time.sleep(0.005)
    fresh_ms = (time.monotonic() - t1) * 1000 if not pending else None
    time.sleep(1.0)
    m = [metrics(nd["metrics"]) for nd in mesh.nodes]
    res["memory"] = {
        "converge_s": conv,
        "converge_limit_s": limit,
        "heads_equal": heads_equal,
        "fresh_active_everywhere": fresh_ok,
        "fresh_propagation_ms": fresh_ms,
        "rss_kb": [rss_kb(nd["pid"]) for nd in mesh.nodes],
        "hwm_kb": [rss_kb(nd["pid"], "VmHWM") for nd in mesh.nodes],
        "doc_bytes": [m[k].get("meshgate_mesh_document_bytes", 0) for k in range(mesh.n)],
        "clients_metric": [m[k].get("meshgate_clients", 0) for k in range(mesh.n)],
        "disk_bytes": [_disk_bytes(nd["data_dir"]) for nd in mesh.nodes],
    }
    if rest_s > 0:
        # At rest: after the nodes' allocator has had a trim cycle (20 s), what holding the data
        # costs rather than what the population left freed but not yet returned.
        time.sleep(rest_s)
        res["memory"]["rest_s"] = rest_s
        res["memory"]["rss_rest_kb"] = [rss_kb(nd["pid"]) for nd in mesh.nodes]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def phase_restart(mesh, hs, auth, res, rest_s=0.0):
    """Restarts the last node on its (now large) data directory: time to its JSON line, time until
    it has caught up, and its VmRSS then, which is what holding the data costs without whatever
    the population left behind in the allocator."""
    k = mesh.n - 1
    nd = mesh.nodes[k]
    os.kill(nd["pid"], signal.SIGTERM)
    t0 = time.monotonic()
    while _alive(nd["pid"]) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    if _alive(nd["pid"]):
        raise RuntimeError(f"node {k + 1} did not exit within 30 s of SIGTERM")
    stop_s = time.monotonic() - t0
    err = open(os.path.join(os.path.dirname(nd["data_dir"]), f"node{k + 1}.restart.err"), "ab")
    t1 = time.monotonic()
    p = subprocess.Popen(
        [mesh.bin, "serve", "--data-dir", nd["data_dir"], "--config", nd["config"], "--json"],
        stdout=subprocess.PIPE,
        stderr=err,
    )
    nd["pid"] = p.pid
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"node {k + 1} did not restart (exit {p.wait()})")
    start_s = time.monotonic() - t1
    hs[k].close()
    # Caught up: same heads as the others and a fresh revocation (made elsewhere) enforced on it.
    conv = mesh.wait_converged(120)
    tok = issue(hs[0], auth)
    wait_active_everywhere(hs, auth, tok, timeout=30)
    revoke(hs[0], auth, tok)
    t2 = time.monotonic()
    while active(hs[k], auth, tok) is not False and time.monotonic() - t2 < 60:
        time.sleep(0.005)
    fresh_ok = active(hs[k], auth, tok) is False
    time.sleep(1.0)
    res["restart"] = {
        "node": k + 1,
        "sigterm_exit_s": stop_s,
        "json_line_s": start_s,
        "caught_up_s": None if conv is None else conv + start_s,
        "fresh_revocation_ok": fresh_ok,
        "rss_kb": rss_kb(p.pid),
        "rss_before_kb": res["memory"]["rss_kb"][k],
    }
    if rest_s > 0:
        time.sleep(rest_s)
        res["restart"]["rss_rest_kb"] = rss_kb(p.pid)


def cmd_run(a):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(a.nodes) as f:
        nodes = json.load(f)
    mesh = Mesh(nodes, a.bin)
    rng = random.Random(a.seed)
    res = {"nodes": len(nodes), "cores": os.cpu_count(), "quick": a.quick}
    t_all = time.monotonic()

    def save():
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)

    try:
        log("registering the bench client on node 1 (meshgate client add)")
        cid, secret = register_client(mesh, "mesh-bench")
        auth = basic(cid, secret)
        hs = [Http(nd["base"]) for nd in nodes]
        t0 = time.monotonic()
        pending = set(range(len(nodes)))
        while pending and time.monotonic() - t0 < 30:
            for k in list(pending):
                st, _ = hs[k].post_form("/token", auth, {"grant_type": "client_credentials"})
                if st == 200:
                    pending.discard(k)
            time.sleep(0.005)
        if pending:
            raise RuntimeError(f"the client does not authenticate on nodes {sorted(k + 1 for k in pending)} within 30 s")
        res["client_everywhere_ms"] = (time.monotonic() - t0) * 1000
        log(f"client authenticates on every node after {res['client_everywhere_ms']:.0f} ms")

        log(f"revocation propagation: {a.samples} samples")
        phase_latency(mesh, hs, auth, a.samples, res, rng)
        save()
        log(f"bytes on the wire: batch of {a.batch} revocations")
        phase_bytes(mesh, hs, auth, a.batch, a.idle, res, rng)
        save()
        phase_memory(mesh, hs, auth, a.clients, a.revocations, a.budget, a.settle, res, a.writers, a.rest)
        save()
        log(f"restarting node {len(nodes)} on its data directory")
        phase_restart(mesh, hs, auth, res, a.rest)
        res["seconds"] = time.monotonic() - t_all
        save()
        dead = [nd["i"] for nd in nodes if not _alive(nd["pid"])]
        if dead:
            raise RuntimeError(f"nodes {dead} died during the run (see their node*.err)")
    except (RuntimeError, OSError, http.client.HTTPException, ValueError) as e:
        res["error"] = str(e)
        save()
        sys.exit(f"mesh bench: {e}")


# ---------------------------------------------------------------- report


def _ms(v):
    return "n/a" if v is None else f"{v:.1f} ms"


def _mb(kb):
    return "n/a" if kb is None else f"{kb / 1024:.1f} MB"


def _bytes(b):
    if b is None:
        return "n/a"
    if b >= 1024 * 1024:
        return f"{b / 1024 / 1024:.2f} MiB"
    if b >= 1024:
        return f"{b / 1024:.1f} KiB"
    return f"{b:.0f} B"


def cmd_report(a):
    with open(a.results) as f:
        r = json.load(f)
    w = print
    n = r["nodes"]
    w("")
    w(f"meshgate mesh: {n} nodes on 127.0.0.1..127.0.0.{n}, {r.get('cores')} cores, load generator on the same machine")
    w("")
    lat = r.get("latency") or {}
    p, s = lat.get("pairs"), lat.get("per_sample_max")
    w(f"revocation propagation ({lat.get('samples')} samples; revoke sent at a random node -> introspects")
    w("inactive on each other node, polled every 2 ms per node)")
    hdr = f"  {'':<34}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}"
    w(hdr)
    for label, v in (
        (f"per (sample, node), n={p and p['n']}", p),
        (f"per sample (slowest node), n={s and s['n']}", s),
        ("revoke request itself", lat.get("revoke_request_ms")),
    ):
        if v:
            w(f"  {label:<34}{_ms(v['p50']):>10}{_ms(v['p90']):>10}{_ms(v['p99']):>10}{_ms(v['max']):>10}")
    if lat.get("per_node_p50"):
        w("  p50 by observing node: " + ", ".join(f"node {k} {_ms(v)}" for k, v in lat["per_node_p50"].items()))
    w(f"  failures (not inactive within 10 s): {lat.get('failures', 'n/a')}; "
      f"revoking node still active right after its 200: {lat.get('revoking_node_still_active', 'n/a')}")
    u = lat.get("cpu")
    if u:
        w(f"  CPU during the samples (cores): nodes {u['nodes_cores']:.2f}, load generator {u['loadgen_cores']:.2f}, "
          f"other {u['other_cores']:.2f}")
    w("")
    b = r.get("bytes")
    if b:
        w(f"sync traffic per new revocation (batch of {b['batch']} one after another at random nodes,")
        w(f"{b['window_s']:.1f} s until every node had the same heads and no sync message for 1 s)")
        w(f"  {'node':<8}{'sent':>12}{'received':>12}{'recv - pings':>14}{'idle recv/s':>14}")
        for row in b["nodes"]:
            w(
                f"  {row['node']:<8}{_bytes(row['sent']):>12}{_bytes(row['received']):>12}"
                f"{_bytes(row['received_minus_idle']):>14}{_bytes(row['idle_received_per_s']):>14}"
            )
        w(
            f"  {'mesh':<8}{_bytes(b['sum_sent']):>12}{_bytes(b['sum_received']):>12}"
            f"{_bytes(b['sum_received_minus_idle']):>14}"
        )
        w("  (sent counts sync frames only; received counts every frame, pings and pongs included,")
        w("   'recv - pings' subtracts the idle rate measured just before)")
        w("")
    c, rv, m = r.get("clients"), r.get("revocations"), r.get("memory")
    if c and rv:
        mt = r.get("memory_targets", {})
        w(f"population (targets: {mt.get('clients', 0):,} clients, {mt.get('revocations', 0):,} revocations, "
          f"{mt.get('budget_s')} s budget each)")
        cli = f"{c['cli_rate']:.1f}/s" if c.get("cli_rate") else "n/a"
        sock = f"{c['socket_rate']:.1f}/s" if c.get("socket_rate") else "n/a"
        w(f"  clients: {c['added']:,} in {c['seconds']:.1f} s: first {c['cli_added']} with `meshgate client add` "
          f"({cli}), the rest through admin.sock, the CLI's own channel ({sock}, one thread per node)")
        if c.get("budget_hit"):
            w(f"  clients: BUDGET HIT, {c['added']:,} of {c['target']:,} added")
        w(f"  revocations: {rv['done']:,} in {rv['seconds']:.1f} s ({rv['rate']:.1f}/s overall, "
          f"{rv['threads']} threads issuing+revoking over keep-alive HTTP, spread over the nodes)")
        tl = rv.get("timeline") or []
        # Rate per ~30 s from the 10 s progress points: (count, time) differences.
        pts = [(0.0, 0)] + [(x["t"], x["count"]) for x in tl]
        step = max(1, round(30 / 10))
        marks = pts[::step] + ([pts[-1]] if (len(pts) - 1) % step else [])
        segs = [
            (t1, (c1 - c0) / (t1 - t0))
            for (t0, c0), (t1, c1) in zip(marks, marks[1:])
            if t1 - t0 >= 5
        ]
        if len(segs) > 1:
            w("  revocations/s over time: " + ", ".join(f"{r:.0f} (to {t:.0f} s)" for t, r in segs))
        if rv.get("budget_hit"):
            done, tgt = rv["done"], rv["target"]
            # The rate over the last 60 s (or the whole step, if shorter).
            t_end, c_end = pts[-1]
            t_ref, c_ref = next(((t, c) for t, c in pts if t >= t_end - 60), pts[0])
            last = (c_end - c_ref) / (t_end - t_ref) if t_end > t_ref else rv["rate"]
            w(f"  revocations: BUDGET HIT, {done:,} of {tgt:,} in {rv['seconds']:.0f} s; at the rate of the last "
              f"minute ({last:.1f}/s) the remaining {tgt - done:,} would take >= {(tgt - done) / max(last, 1e-9) / 60:.0f} min more")
            w("   (a lower bound: the rate falls as the document grows)")
        for label, x in (("clients", c), ("revocations", rv)):
            u = x.get("cpu")
            if u:
                w(f"  CPU while populating {label} (cores): nodes {u['nodes_cores']:.2f}, load generator "
                  f"{u['loadgen_cores']:.2f}, other {u['other_cores']:.2f}; waiting for I/O {u['iowait_cores']:.2f}")
        if rv.get("errors"):
            w(f"  revocation errors: {rv['errors']} (first: {rv['first_error']})")
    if m:
        w("")
        conv = "n/a" if m["converge_s"] is None else f"{m['converge_s']:.1f} s"
        w(f"after population: converged (same heads, document size stable) {conv} after the last revocation"
          + ("" if m["converge_s"] is not None else f" -- NOT within {m['converge_limit_s']:.0f} s"))
        fr = m.get("fresh_propagation_ms")
        w(f"  fresh revocation then: {'not propagated within 60 s' if fr is None else f'{fr:.0f} ms to every other node'}")
        rest = m.get("rss_rest_kb")
        rest_head = f"{'at rest':>10}" if rest else ""
        w(f"  {'node':<8}{'VmRSS':>10}{'VmHWM':>10}{'document':>12}{'clients':>10}{rest_head}")
        for k in range(n):
            w(
                f"  {k + 1:<8}{_mb(m['rss_kb'][k]):>10}{_mb(m['hwm_kb'][k]):>10}"
                f"{_bytes(m['doc_bytes'][k]):>12}{m['clients_metric'][k]:>10,.0f}"
                + (f"{_mb(rest[k]):>10}" if rest else "")
            )
        if rest:
            w(f"  (at rest: VmRSS {m['rest_s']:.0f} s later, with no traffic)")
        before = r.get("rss_before_kb") or []
        if before and all(before):
            w(f"  (VmRSS before population: {', '.join(_mb(x) for x in before)})")
        rs = r.get("restart")
        if rs:
            cu = "n/a" if rs["caught_up_s"] is None else f"{rs['caught_up_s']:.1f} s"
            w(f"  node {rs['node']} restarted on its data dir: SIGTERM -> exit {rs['sigterm_exit_s']:.1f} s, "
              f"spawn -> JSON line {rs['json_line_s']:.1f} s, caught up {cu};")
            w(f"  its VmRSS then {_mb(rs['rss_kb'])} (before the restart {_mb(rs['rss_before_kb'])})"
              + (f", {_mb(rs['rss_rest_kb'])} at rest" if rs.get("rss_rest_kb") else "")
              + ("" if rs["fresh_revocation_ok"] else "; a fresh revocation did NOT reach it"))
    w("")
    busy = []
    for name, x in (("latency", lat), ("clients", c or {}), ("revocations", rv or {})):
        u = x.get("cpu")
        if u and u["other_cores"] > 0.15:
            busy.append(f"{name} {u['other_cores']:.2f}")
    if busy:
        w("WARNING: other processes used CPU during the run (cores: " + ", ".join(busy) + "); the")
        w("machine was not quiet, rates are low and latencies high")
        w("")
    if r.get("error"):
        w(f"ERROR: the run stopped early: {r['error']}")
        w("")
    p99 = p and p["p99"]
    ok = None if p99 is None or lat.get("failures") else p99 < 1000
    res = "n/a " if p is None else ("PASS" if ok else "MISS")
    val = _ms(p99) + (f", {lat['failures']} failures" if lat.get("failures") else "")
    w(f"{'target':<48}{'meshgate':>22}  result")
    w(f"{'revocation propagation p99 < 1 s':<48}{val:>22}  {res}")
    w("(a measurement, not a test)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("ports")
    p.add_argument("n", type=int)
    p.set_defaults(f=cmd_ports)
    p = sp.add_parser("wait-alive")
    p.add_argument("bin")
    p.add_argument("data_dir")
    p.add_argument("peers", type=int)
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(f=cmd_wait_alive)
    p = sp.add_parser("run")
    p.add_argument("nodes")
    p.add_argument("out")
    p.add_argument("--bin", required=True)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--batch", type=int, default=100, help="revocations in the bytes batch")
    p.add_argument("--idle", type=float, default=6.0, help="idle window for the ping baseline, s")
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--revocations", type=int, default=100000)
    p.add_argument("--budget", type=float, default=300, help="seconds for each population step")
    p.add_argument("--writers", type=int, default=16, help="issue-and-revoke loops per node while populating")
    p.add_argument("--rest", type=float, default=30.0, help="seconds at rest before VmRSS is read again")
    p.add_argument("--settle", type=float, default=3.0, help="seconds the document size must stay put")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(f=cmd_run)
    p = sp.add_parser("report")
    p.add_argument("results")
    p.set_defaults(f=cmd_report)
    a = ap.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
