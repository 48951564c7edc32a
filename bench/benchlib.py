#!/usr/bin/env python3
"""Helpers for bench/run.sh (Python standard library only).

Subcommands:
  basic ID SECRET                      print a client_secret_basic Authorization header value
  discover BASE_URL                    print token and introspection endpoints (tab-separated)
  issue URL AUTH COUNT OUT [-c N]      pre-issue COUNT distinct client_credentials tokens to OUT
  check URL AUTH TOKENS [--sample N]   introspect a sample of TOKENS, print "active/sampled"
  describe TOKEN                       one-line description of a token's format
  startup --runs N --probe URL -- CMD  spawn CMD N times, time JSON line and first 200 on URL
  report DIR                           print the results table from DIR
"""

import argparse
import base64
import http.client
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse


def basic(client_id, secret):
    # RFC 6749 2.3.1: form-urlencode id and secret before base64.
    q = urllib.parse.quote_plus
    raw = f"{q(client_id)}:{q(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class _NoDelayConnection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _conn(url):
    u = urllib.parse.urlsplit(url)
    return _NoDelayConnection(u.hostname, u.port or 80, timeout=30), (u.path or "/")


def _get_json(url):
    c, path = _conn(url)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return r.status, body
    finally:
        c.close()


def cmd_basic(a):
    print(basic(a.client_id, a.secret))


def cmd_discover(a):
    base = a.base.rstrip("/")
    token, intro = base + "/token", base + "/introspect"
    for wk in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        try:
            status, body = _get_json(base + wk)
        except OSError:
            continue
        if status == 200:
            try:
                meta = json.loads(body)
            except ValueError:
                continue
            token = meta.get("token_endpoint", token)
            intro = meta.get("introspection_endpoint", intro)
            break
    print(f"{token}\t{intro}")


def _post(conn, path, auth, body):
    conn.request(
        "POST",
        path,
        body=body,
        headers={
            "Authorization": auth,
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
    )
    r = conn.getresponse()
    return r.status, r.read()


def cmd_issue(a):
    body = "grant_type=client_credentials"
    if a.scope:
        body += "&scope=" + urllib.parse.quote(a.scope, safe="")
    tokens, errors = [], []
    lock = threading.Lock()
    remaining = [a.count]

    def worker():
        conn, path = _conn(a.url)
        while True:
            with lock:
                if remaining[0] <= 0 or len(errors) > 20:
                    return
                remaining[0] -= 1
            for attempt in range(3):
                try:
                    status, resp = _post(conn, path, a.auth, body)
                    break
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn, path = _conn(a.url)
                    if attempt == 2:
                        status, resp = 0, str(e).encode()
            tok = None
            if status == 200:
                try:
                    tok = json.loads(resp).get("access_token")
                except ValueError:
                    pass
            with lock:
                if tok:
                    tokens.append(tok)
                else:
                    errors.append(f"HTTP {status}: {resp[:200]!r}")

    t0 = time.monotonic()
    ths = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    dt = time.monotonic() - t0
    if errors:
        sys.exit(f"issue: {len(errors)} failures, first: {errors[0]}")
    distinct = len(set(tokens))
    if distinct != a.count:
        sys.exit(f"issue: wanted {a.count} distinct tokens, got {distinct}")
    with open(a.out, "w") as f:
        f.write("\n".join(tokens) + "\n")
    print(f"{distinct} distinct tokens in {dt:.2f} s ({distinct / dt:.0f}/s, {a.concurrency} clients)")


def cmd_check(a):
    with open(a.tokens) as f:
        toks = [t for t in f.read().split("\n") if t]
    n = min(a.sample, len(toks))
    picks = [toks[(i * (len(toks) - 1)) // max(n - 1, 1)] for i in range(n)]
    conn, path = _conn(a.url)
    active, other = 0, []
    for t in picks:
        status, body = _post(conn, path, a.auth, "token=" + urllib.parse.quote(t, safe=""))
        try:
            ok = status == 200 and json.loads(body).get("active") is True
        except ValueError:
            ok = False
        if ok:
            active += 1
        elif len(other) < 3:
            other.append(f"HTTP {status}: {body[:200]!r}")
    conn.close()
    print(f"{active}/{n}")
    if other:
        print("not active: " + "; ".join(other), file=sys.stderr)


def _b64json(seg):
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def cmd_describe(a):
    t = a.token
    parts = t.split(".")
    if len(parts) == 3:
        try:
            h, p = _b64json(parts[0]), _b64json(parts[1])
            print(
                f"JWT ({h.get('alg')}, typ {h.get('typ')}, {len(t)} bytes, "
                f"claims {','.join(sorted(p))})"
            )
            return
        except (ValueError, TypeError):
            pass
    print(f"opaque ({len(t)} chars)")


def cmd_startup(a):
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    child = [None]

    def on_signal(signum, _frame):
        if child[0] and child[0].poll() is None:
            child[0].kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    line_ms, ready_ms, stop_ms = [], [], []
    for _ in range(a.runs):
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        child[0] = p
        line = p.stdout.readline()
        t_line = time.monotonic()
        if not line:
            sys.exit(f"startup: no JSON line (exit {p.wait()}): {' '.join(cmd)}")
        info = json.loads(line)
        base = info.get("issuer") or ("http://" + info["listen"])
        url = base.rstrip("/") + a.probe
        deadline = t0 + 30
        while True:
            try:
                status, _ = _get_json(url)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                p.kill()
                sys.exit(f"startup: no 200 from {url} within 30 s")
            time.sleep(0.0005)
        t_ready = time.monotonic()
        line_ms.append((t_line - t0) * 1000)
        ready_ms.append((t_ready - t0) * 1000)
        t_stop = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            stop_ms.append(float("inf"))
        else:
            stop_ms.append((time.monotonic() - t_stop) * 1000)
        p.stdout.close()
        child[0] = None
    print(json.dumps({"json_line_ms": line_ms, "first_200_ms": ready_ms, "sigterm_exit_ms": stop_ms}))


def _busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def _pid_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def cmd_cpuwrap(a):
    """Runs CMD, then writes where the machine's CPU went meanwhile: the servers (--pids),
    CMD itself (the load generator) and everything else (other load on the machine)."""
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    pids = [int(p) for p in a.pids.split(",") if p]
    hz = os.sysconf("SC_CLK_TCK")
    child = [None]

    def on_signal(signum, _frame):
        if child[0] and child[0].poll() is None:
            child[0].kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    b0, p0, t0 = _busy_ticks(), sum(_pid_ticks(p) for p in pids), time.monotonic()
    child[0] = subprocess.Popen(cmd)
    rc = child[0].wait()
    b1, p1, t1 = _busy_ticks(), sum(_pid_ticks(p) for p in pids), time.monotonic()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = t1 - t0
    busy = (b1 - b0) / hz
    servers = (p1 - p0) / hz
    loadgen = ru.ru_utime + ru.ru_stime
    with open(a.out, "w") as f:
        json.dump(
            {
                "wall_s": wall,
                "cores": os.cpu_count(),
                "busy_cores": busy / wall,
                "server_cores": servers / wall,
                "loadgen_cores": loadgen / wall,
                "other_cores": max(0.0, busy - servers - loadgen) / wall,
            },
            f,
        )
    sys.exit(rc)


# ---------------------------------------------------------------- report


def _wrk(path):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("BENCHJSON "):
                    return json.loads(line[len("BENCHJSON "):])
    except OSError:
        pass
    return None


def _env(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    out[k] = v
    except OSError:
        pass
    return out


def _fmt_rate(r):
    return "n/a" if r is None else f"{r['rps']:,.0f}"


def _errs(r):
    if r is None:
        return 0
    return sum(r[k] for k in r if k.startswith("errors_"))


def _fmt_ms(us):
    return "n/a" if us is None else f"{us / 1000:.2f} ms"


def cmd_report(a):
    d = a.dir
    m = _env(os.path.join(d, "meta.env"))
    conns = int(m.get("connections", "32"))
    rows = []
    res = {}
    for phase in ("token", "introspect"):
        for srv in ("meshgate", "oidc"):
            res[(phase, srv)] = _wrk(os.path.join(d, f"{phase}.{srv}.wrk"))
            # p99 at 32 in flight: from the main run, or a separate run when --connections != 32.
            p = _wrk(os.path.join(d, f"{phase}.{srv}.p99.wrk")) or (
                res[(phase, srv)] if conns == 32 else None
            )
            res[(phase, srv, "p99")] = p

    def ratio(phase):
        mg, oi = res[(phase, "meshgate")], res[(phase, "oidc")]
        if not mg or not oi or oi["rps"] <= 0:
            return None
        return mg["rps"] / oi["rps"]

    def p99(phase, srv):
        r = res[(phase, srv, "p99")]
        return None if r is None else r["p99_us"]

    w = print
    w("")
    w(
        f"meshgate vs oidc-provider {m.get('oidc_version', '?')}: {m.get('duration', '?')} s per phase, "
        f"{conns} connections, {m.get('threads', '?')} wrk threads, "
        f"{m.get('tokens', '?')} pre-issued tokens per server, {os.cpu_count()} cores"
    )
    w(f"tokens: meshgate {m.get('meshgate_token_format', '?')}; oidc-provider {m.get('oidc_token_format', '?')}")
    w("")
    hdr = f"{'':<22}{'meshgate/s':>12}{'oidc-provider/s':>17}{'ratio':>8}{'p99 meshgate':>16}{'p99 oidc-provider':>20}"
    w(hdr)
    w("-" * len(hdr))
    for phase, label in (("token", "client_credentials"), ("introspect", "introspection")):
        rt = ratio(phase)
        w(
            f"{label:<22}{_fmt_rate(res[(phase, 'meshgate')]):>12}{_fmt_rate(res[(phase, 'oidc')]):>17}"
            f"{('n/a' if rt is None else f'{rt:.2f}x'):>8}{_fmt_ms(p99(phase, 'meshgate')):>16}"
            f"{_fmt_ms(p99(phase, 'oidc')):>20}"
        )
    nc = _wrk(os.path.join(d, "introspect.meshgate-nocache.wrk"))
    if nc:
        oi = res[("introspect", "oidc")]
        rt = f"{nc['rps'] / oi['rps']:.2f}x" if oi and oi["rps"] > 0 else "n/a"
        w(
            f"{'  cache off (info)':<22}{_fmt_rate(nc):>12}{'':>17}{rt:>8}"
            f"{_fmt_ms(nc['p99_us'] if conns == 32 else None):>16}"
        )
        w("  (cache off: meshgate restarted with MESHGATE_BRIDGE__VERIFIED_TOKEN_CACHE=0, every")
        w("   introspection verifies the EdDSA signature; not a target row)")
    w("")
    su = {}
    for srv in ("meshgate", "oidc"):
        try:
            with open(os.path.join(d, f"startup.{srv}.json")) as f:
                su[srv] = json.load(f)
        except (OSError, ValueError):
            su[srv] = None

    def mm(xs):
        return None if not xs else (min(xs), statistics.median(xs))

    def fmt_mm(v):
        return "n/a" if v is None else f"{v[0]:.1f} / {v[1]:.1f} ms"

    runs = m.get("restarts", "?")
    w(f"{'start-to-serving (min / median of ' + runs + ' restarts)':<58}{'meshgate':>18}{'oidc-provider':>20}")
    for key, label in (("json_line_ms", "  spawn -> JSON line on stdout"), ("first_200_ms", "  spawn -> first 200 on metadata")):
        w(
            f"{label:<58}{fmt_mm(mm(su['meshgate'] and su['meshgate'][key])):>18}"
            f"{fmt_mm(mm(su['oidc'] and su['oidc'][key])):>20}"
        )
    w(
        f"{'  SIGTERM -> exit':<58}{fmt_mm(mm(su['meshgate'] and su['meshgate']['sigterm_exit_ms'])):>18}"
        f"{fmt_mm(mm(su['oidc'] and su['oidc']['sigterm_exit_ms'])):>20}"
    )

    def rss(k):
        v = m.get(k)
        return None if not v else int(v) / 1024

    def fmt_rss(v):
        return "n/a" if v is None else f"{v:.1f} MB"

    w(f"{'idle RSS (VmRSS, 2 s after the load)':<58}{fmt_rss(rss('meshgate_rss_kb')):>18}{fmt_rss(rss('oidc_rss_kb')):>20}")
    w("")

    # Validity notes: errors during a phase, tokens that stopped being active.
    notes = []
    if nc and _errs(nc):
        notes.append(f"introspect/meshgate cache off: {_errs(nc)} errors of {nc['requests']} requests")
    for phase in ("token", "introspect"):
        for srv in ("meshgate", "oidc"):
            r = res[(phase, srv)]
            if r is None:
                notes.append(f"{phase}/{srv}: no wrk result")
            elif _errs(r):
                notes.append(
                    f"{phase}/{srv}: {r['errors_status']} non-2xx, {r['errors_connect']} connect, "
                    f"{r['errors_read']} read, {r['errors_write']} write, {r['errors_timeout']} timeout errors "
                    f"of {r['requests']} requests"
                )
    for srv in ("meshgate", "oidc"):
        for when in ("before", "after", "after-nocache"):
            v = m.get(f"{srv}_active_{when}")
            if v and v.split("/")[0] != v.split("/")[1]:
                notes.append(f"introspect/{srv}: only {v} sampled tokens active {when} the phase")
    cpu = {}
    for phase in ("token", "introspect"):
        for srv in ("meshgate", "oidc"):
            try:
                with open(os.path.join(d, f"{phase}.{srv}.cpu")) as f:
                    cpu[(phase, srv)] = json.load(f)
            except (OSError, ValueError):
                pass
    try:
        with open(os.path.join(d, "introspect.meshgate-nocache.cpu")) as f:
            cpu[("introspect", "meshgate-nocache")] = json.load(f)
    except (OSError, ValueError):
        pass
    if cpu:
        w("CPU during each measured phase (cores busy: server / wrk / anything else on the machine)")
        for phase, label in (("token", "client_credentials"), ("introspect", "introspection")):
            cells = []
            for srv, name in (("meshgate", "meshgate"), ("oidc", "oidc-provider")):
                c = cpu.get((phase, srv))
                if c:
                    cells.append(
                        f"{name} {c['server_cores']:.2f} / {c['loadgen_cores']:.2f} / {c['other_cores']:.2f}"
                    )
            w(f"  {label:<20}" + "    ".join(cells))
        c = cpu.get(("introspect", "meshgate-nocache"))
        if c:
            w(f"  {'  cache off':<20}meshgate {c['server_cores']:.2f} / {c['loadgen_cores']:.2f} / {c['other_cores']:.2f}")
        w("")
        for (phase, srv), c in cpu.items():
            if c["other_cores"] > 0.15:
                notes.append(
                    f"{phase}/{srv}: other processes used {c['other_cores']:.2f} of {c['cores']} cores during "
                    f"the phase; the machine was not quiet, numbers are low and noisy"
                )
    eb = int(m.get("meshgate_stderr_bytes") or 0)
    if eb > 64 * 1024:
        notes.append(f"meshgate wrote {eb:,} bytes to stderr during the run (logging on the hot path?)")
    for n in notes:
        w("WARNING: " + n)
    if notes:
        w("")

    # Targets (DESIGN.md "Performance targets").
    def chk(ok):
        return "n/a " if ok is None else ("PASS" if ok else "MISS")

    tgt = []
    rt, mr = ratio("token"), res[("token", "meshgate")]
    tgt.append(("client_credentials >= 6x oidc-provider", "n/a" if rt is None else f"{rt:.2f}x", None if rt is None else rt >= 6))
    tgt.append(("client_credentials >= 25,000/s", _fmt_rate(mr), None if mr is None else mr["rps"] >= 25000 and not _errs(mr)))
    ri, mi = ratio("introspect"), res[("introspect", "meshgate")]
    tgt.append(("introspection >= 5x oidc-provider", "n/a" if ri is None else f"{ri:.2f}x", None if ri is None else ri >= 5))
    tgt.append(("introspection >= 20,000/s", _fmt_rate(mi), None if mi is None else mi["rps"] >= 20000 and not _errs(mi)))
    for phase, label in (("token", "client_credentials"), ("introspect", "introspection")):
        v = p99(phase, "meshgate")
        tgt.append((f"p99 < 5 ms at 32 in flight ({label})", _fmt_ms(v), None if v is None else v < 5000))
    s = mm(su["meshgate"] and su["meshgate"]["first_200_ms"])
    tgt.append(("serving < 100 ms after start (median)", "n/a" if s is None else f"{s[1]:.1f} ms", None if s is None else s[1] < 100))
    r = rss("meshgate_rss_kb")
    tgt.append(("idle RSS <= 30 MB", fmt_rss(r), None if r is None else r <= 30))
    w(f"{'target':<46}{'meshgate':>16}  result")
    for name, val, ok in tgt:
        w(f"{name:<46}{val:>16}  {chk(ok)}")
    passed = sum(1 for t in tgt if t[2])
    w(f"{passed}/{len(tgt)} targets met (a measurement, not a test)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("basic")
    p.add_argument("client_id")
    p.add_argument("secret")
    p.set_defaults(f=cmd_basic)
    p = sp.add_parser("discover")
    p.add_argument("base")
    p.set_defaults(f=cmd_discover)
    p = sp.add_parser("issue")
    p.add_argument("url")
    p.add_argument("auth")
    p.add_argument("count", type=int)
    p.add_argument("out")
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--scope", default="read write")
    p.set_defaults(f=cmd_issue)
    p = sp.add_parser("check")
    p.add_argument("url")
    p.add_argument("auth")
    p.add_argument("tokens")
    p.add_argument("--sample", type=int, default=200)
    p.set_defaults(f=cmd_check)
    p = sp.add_parser("describe")
    p.add_argument("token")
    p.set_defaults(f=cmd_describe)
    p = sp.add_parser("startup")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--probe", default="/.well-known/oauth-authorization-server")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(f=cmd_startup)
    p = sp.add_parser("cpuwrap")
    p.add_argument("--pids", default="")
    p.add_argument("--out", required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(f=cmd_cpuwrap)
    p = sp.add_parser("report")
    p.add_argument("dir")
    p.set_defaults(f=cmd_report)
    a = ap.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
