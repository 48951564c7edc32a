#!/usr/bin/env python3
"""Upstream federation benchmark (issue 4, item 6), driven by bench/upstream.sh.

Starts node oidc-provider (oidc/upstream.mjs) as meshgate's upstream and one `meshgate serve`
federating it, then measures:

1. throughput (wrk, token.lua / exchange.lua) of client_credentials, token exchange of an
   oidc-provider JWT verified offline against the cached JWKS, and a federated client's
   client_credentials while the upstream is up (forwarded) and down (local, recorded hash);
2. outages under load: agents ask for tokens back to back with a federated issue_local client
   while the upstream is frozen (SIGSTOP) and later killed (SIGKILL): the time from the failure
   to the first successful local (degraded) token, and the slowest agent request after it
   (target: the token-path response deadline + 50 ms).

Prints a table and one `UPSTREAMJSON {...}` line. Exits non-zero only when the benchmark cannot
run (a server does not start, an agent request fails); the figures themselves are not judged.
Standard library only.
"""

import argparse
import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT, AGENT_SECRET = "bench-agent", "bench-agent-secret-7d2f0c4e9a1b"
STRICT, STRICT_SECRET = "bench-strict", "bench-strict-secret-5e8a3c1f0d2b"
DEADLINE_MS = 300


def log(msg):
    print(f"[upstream-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def basic(client_id, secret):
    enc = lambda s: urllib.parse.quote(s, safe="")
    return "Basic " + base64.b64encode(f"{enc(client_id)}:{enc(secret)}".encode()).decode()


def post(url, auth, fields, timeout=10):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        body = urllib.parse.urlencode(fields)
        conn.request("POST", u.path, body, {"Authorization": auth,
                                             "Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, {"raw": data[:200].decode(errors="replace")}
    finally:
        conn.close()


def payload(token):
    seg = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def first_line(proc, name, timeout=60):
    result = {}

    def read():
        result["line"] = proc.stdout.readline()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    line = result.get("line")
    if not line:
        raise SystemExit(f"{name} did not start (no JSON line within {timeout}s)")
    return json.loads(line)


def wrk(url, script, env, duration, connections, threads):
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
           "-s", os.path.join(HERE, script), url]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("BENCHJSON "):
            r = json.loads(line[len("BENCHJSON "):])
            if r["errors_status"] or r["errors_connect"]:
                raise SystemExit(f"wrk {script}: {r['errors_status']} non-2xx answers, {r['errors_connect']} connect errors")
            return r
    raise SystemExit(f"wrk {script} printed no BENCHJSON line:\n{out}")


def outage(token_url, upstream, sig, agents, before, during):
    """Agents ask back to back; `sig` hits the upstream `before` s in; measured for `during` s."""
    stop = threading.Event()
    records = []  # (sent, took, ok, degraded)
    failures = []
    lock = threading.Lock()

    def agent():
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status, body = post(token_url, basic(AGENT, AGENT_SECRET),
                                    {"grant_type": "client_credentials", "scope": "read"})
            except OSError as e:
                status, body = 0, {"error": str(e)}
            took = time.monotonic() - sent
            with lock:
                if status != 200:
                    failures.append((status, body))
                    records.append((sent, took, False, False))
                else:
                    records.append((sent, took, True, payload(body["access_token"]).get("degraded") is True))

    threads = [threading.Thread(target=agent, daemon=True) for _ in range(agents)]
    for t in threads:
        t.start()
    time.sleep(before)
    os.kill(upstream.pid, sig)
    failed_at = time.monotonic()
    time.sleep(during)
    stop.set()
    for t in threads:
        t.join(30)
    if failures:
        raise SystemExit(f"{len(failures)} agent requests failed during the outage, e.g. {failures[0]}")
    after = [r for r in records if r[0] + r[1] >= failed_at]
    local = [r for r in after if r[3]]
    if not local:
        raise SystemExit("no local (degraded) token during the outage")
    first = min(r[0] + r[1] for r in local) - failed_at
    return {"first_local_ms": round(first * 1000, 1),
            "slowest_ms": round(max(r[1] for r in after) * 1000, 1),
            "requests": len(after)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meshgate", required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="meshgate-upstream-bench.")
    procs = []
    try:
        upstream = subprocess.Popen(
            ["node", os.path.join(HERE, "oidc", "upstream.mjs")], cwd=os.path.join(HERE, "oidc"),
            env={**os.environ, "UPSTREAM_CLIENT_ID": AGENT, "UPSTREAM_CLIENT_SECRET": AGENT_SECRET,
                 "UPSTREAM_CLIENT2_ID": STRICT, "UPSTREAM_CLIENT2_SECRET": STRICT_SECRET},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(os.path.join(work, "oidc.err"), "w"),
            text=True)
        procs.append(upstream)
        issuer = first_line(upstream, "oidc-provider")["issuer"]
        log(f"oidc-provider at {issuer}")

        data, config = os.path.join(work, "data"), os.path.join(work, "meshgate.yaml")
        with open(config, "w") as f:
            f.write(f"""bridge: {{ listen: "127.0.0.1:0", metrics_listen: "127.0.0.1:0" }}
node: {{ sync: {{ listen: "127.0.0.1:0" }} }}
upstreams:
  - name: corp
    issuer: {issuer}
    audience: meshgate
    algorithms: [RS256]
    timeouts: {{ connect: 200ms, total: 1s, token_deadline: {DEADLINE_MS}ms }}
    breaker: {{ failure_threshold: 1, open_for: 1s, max_open_for: 2s }}
    jwks: {{ refresh_interval: 5s, min_refresh_interval: 1s }}
federation:
  jwks_fresh_for: 60s
""")

        def cli(*args):
            out = subprocess.run([a.meshgate, *args, "--config", config, "--data-dir", data, "--json"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"meshgate {' '.join(args)} failed: {out.stderr}")
            return json.loads(out.stdout)

        cc = cli("client", "add", "--name", "cc", "--grant", "client_credentials", "--scope", "read")
        ex = cli("client", "add", "--name", "exchanger", "--grant", "token-exchange", "--scope", "read")
        for cid, policy in [(AGENT, "issue_local"), (STRICT, "fail_closed")]:
            cli("client", "add", "--name", cid, "--upstream", "corp", "--client-id", cid, "--scope", "read",
                "--on-upstream-unavailable", policy, "--degraded-ttl", "60s")
        server = subprocess.Popen(
            [a.meshgate, "serve", "--config", config, "--data-dir", data, "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=open(os.path.join(work, "meshgate.err"), "w"), text=True)
        procs.append(server)
        base = first_line(server, "meshgate")["issuer"]
        token_url = base + "/token"
        log(f"meshgate at {base}")
        # Wait for the upstream's JWKS.
        deadline = time.monotonic() + 60
        while True:
            status, body = post(token_url, basic(AGENT, AGENT_SECRET), {"grant_type": "client_credentials", "scope": "read"})
            if status == 200 and not payload(body["access_token"]).get("degraded"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the federated client never got a normal token: {status} {body}")
            time.sleep(0.2)
        status, body = post(issuer + "/token", basic(AGENT, AGENT_SECRET),
                            {"grant_type": "client_credentials", "scope": "read", "resource": "https://meshgate.test/"})
        if status != 200:
            raise SystemExit(f"oidc-provider refused a subject token: {status} {body}")
        subject = body["access_token"]

        w = dict(duration=a.duration, connections=a.connections, threads=a.threads)
        log("throughput: client_credentials")
        r_cc = wrk(token_url, "token.lua", {"BENCH_AUTH": basic(cc["client_id"], cc["client_secret"]), "BENCH_SCOPE": "read"}, **w)
        log("throughput: token exchange (offline verification)")
        r_ex = wrk(token_url, "exchange.lua", {"BENCH_AUTH": basic(ex["client_id"], ex["client_secret"]),
                                               "BENCH_SUBJECT": subject, "BENCH_SCOPE": "read"}, **w)
        log("throughput: federated client, upstream up (forwarded)")
        r_fwd = wrk(token_url, "token.lua", {"BENCH_AUTH": basic(AGENT, AGENT_SECRET), "BENCH_SCOPE": "read"}, **w)

        log("outage 1: freeze (SIGSTOP)")
        freeze = outage(token_url, upstream, signal.SIGSTOP, a.agents, 1.0, 3.0)
        os.kill(upstream.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while True:
            status, body = post(token_url, basic(AGENT, AGENT_SECRET), {"grant_type": "client_credentials", "scope": "read"})
            if status == 200 and not payload(body["access_token"]).get("degraded"):
                break
            if time.monotonic() > deadline:
                raise SystemExit("meshgate did not go back to the upstream after the thaw")
            time.sleep(0.2)
        log("outage 2: death (SIGKILL)")
        death = outage(token_url, upstream, signal.SIGKILL, a.agents, 1.0, 3.0)
        upstream.wait()
        log("throughput: federated client, upstream down (local)")
        r_local = wrk(token_url, "token.lua", {"BENCH_AUTH": basic(AGENT, AGENT_SECRET), "BENCH_SCOPE": "read"}, **w)

        ratio = lambda r: r["rps"] / r_cc["rps"] if r_cc["rps"] else 0.0
        target = DEADLINE_MS + 50
        print(f"{'flow':<48} {'req/s':>9} {'vs cc':>7} {'p99 ms':>8}")
        for name, r in [("client_credentials", r_cc), ("token exchange (offline JWKS verification)", r_ex),
                        ("federated, upstream up (forwarded)", r_fwd), ("federated, upstream down (local hash)", r_local)]:
            print(f"{name:<48} {r['rps']:>9.0f} {ratio(r):>7.2f} {r['p99_us'] / 1000:>8.1f}")
        for name, o in [("freeze (SIGSTOP)", freeze), ("death (SIGKILL)", death)]:
            verdict = "meets" if o["slowest_ms"] <= target else "misses"
            print(f"{name:<17} first local token after {o['first_local_ms']:>7.1f} ms; slowest agent request "
                  f"{o['slowest_ms']:>7.1f} ms ({verdict} the {target} ms target); {o['requests']} requests")
        print("UPSTREAMJSON " + json.dumps({
            "rps": {"client_credentials": r_cc["rps"], "token_exchange": r_ex["rps"],
                    "federated_forwarded": r_fwd["rps"], "federated_local": r_local["rps"]},
            "exchange_vs_client_credentials": ratio(r_ex), "federated_local_vs_client_credentials": ratio(r_local),
            "freeze": freeze, "death": death, "target_ms": target}))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except OSError:
                    pass
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if a.keep:
            log(f"work files kept in {work}")
        else:
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
