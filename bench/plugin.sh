#!/usr/bin/env bash
# client_credentials throughput with one plugin on the path relative to none, on one meshgate.
#
#   bench/plugin.sh [--duration SECS] [--connections N] [--rounds N] [--debug] [--quick]
#
# One node, two clients: `plain` (no plugin) and `plugged` (the example plugin
# examples/plugins/read_only_after_hours.wat, signed, trusted and bound with
# `client update --plugin`). wrk drives each in turn, `--rounds` times, and the script prints the
# mean rate of each and their ratio (target >= 0.80). Release build unless --debug (--quick uses
# the debug build and short runs: a smoke test of the harness, not a measurement). MESHGATE_BIN
# selects a prebuilt binary. Exits non-zero only when the benchmark cannot run or a request fails.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"

DURATION=10
CONNECTIONS=32
ROUNDS=3
PROFILE=release
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    --quick) PROFILE=debug; DURATION=1; ROUNDS=1; CONNECTIONS=8; shift ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "plugin.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { printf '[plugin-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is required"
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y wrk >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y wrk >/dev/null 2>&1; } \
    || die "could not install wrk"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshgate-plugin-bench.XXXXXX")"
MG_PID=""
cleanup() { [ -n "$MG_PID" ] && kill "$MG_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

if [ -n "${MESHGATE_BIN:-}" ]; then
  MESHGATE="$MESHGATE_BIN"
else
  flag=(); [ "$PROFILE" = release ] && flag=(--release)
  log "building meshgate ($PROFILE)"
  cargo build "${flag[@]}" -p bridge --bin meshgate >&2 || die "cargo build failed"
  MESHGATE="$ROOT/target/$PROFILE/meshgate"
fi
[ -x "$MESHGATE" ] || die "no binary at $MESHGATE"

DATA="$WORK/data"
mg() { "$MESHGATE" "$@" --data-dir "$DATA"; }
json_get() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

"$MESHGATE" serve --data-dir "$DATA" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --sync-listen 127.0.0.1:0 --json \
  >"$WORK/serve.out" 2>"$WORK/serve.err" &
MG_PID=$!
for _ in $(seq 1 600); do [ -s "$WORK/serve.out" ] && break; kill -0 "$MG_PID" || die "meshgate exited: $(tail -5 "$WORK/serve.err")"; sleep 0.05; done
BASE="$(json_get "$(head -n 1 "$WORK/serve.out")" issuer)"

log "signing and installing the example plugin"
DID="$(json_get "$(mg plugin keygen --out "$WORK/dev.key" --json)" did)"
mg plugin build examples/plugins/read_only_after_hours.wat --out "$WORK/after-hours.wasm" --json >/dev/null
mg plugin sign "$WORK/after-hours.wasm" --key "$WORK/dev.key" --name after-hours --plugin-version 1.0.0 \
  --hook on_token_request --json >/dev/null
mg plugin trust "$DID" --json >/dev/null
mg plugin install "$WORK/after-hours.wasm" --json >/dev/null
auth_of() { python3 "$BENCH_DIR/benchlib.py" basic -- "$(json_get "$1" client_id)" "$(json_get "$1" client_secret)"; }
PLAIN="$(mg client add --name plain --grant client_credentials --scope "orders:read orders:write" --json)"
PLUGGED="$(mg client add --name plugged --grant client_credentials --scope "orders:read orders:write" --json)"
mg client update "$(json_get "$PLUGGED" client_id)" --plugin after-hours --json >/dev/null
PLAIN_AUTH="$(auth_of "$PLAIN")"
PLUGGED_AUTH="$(auth_of "$PLUGGED")"

# Wait until the plugin shapes the plugged client's tokens.
python3 - "$BASE/token" "$PLUGGED_AUTH" <<'PY' || die "the plugin never shaped a token"
import base64, json, sys, time, urllib.request
url, auth = sys.argv[1], sys.argv[2]
for _ in range(300):
    req = urllib.request.Request(url, data=b"grant_type=client_credentials", headers={"Authorization": auth})
    token = json.load(urllib.request.urlopen(req))["access_token"]
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    if "shift" in claims:
        sys.exit(0)
    time.sleep(0.1)
sys.exit(1)
PY

rate() { # auth -> requests/s
  BENCH_AUTH="$1" BENCH_SCOPE="orders:read orders:write" wrk -t 2 -c "$CONNECTIONS" -d "${DURATION}s" --timeout 5s \
    -s "$BENCH_DIR/token.lua" "$BASE/token" >"$WORK/wrk.out" 2>&1 || die "wrk failed: $(cat "$WORK/wrk.out")"
  if grep -q 'Non-2xx' "$WORK/wrk.out"; then die "requests failed: $(cat "$WORK/wrk.out")"; fi
  awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out"
}
plain_sum=0; plugged_sum=0
for round in $(seq 1 "$ROUNDS"); do
  p="$(rate "$PLAIN_AUTH")"; q="$(rate "$PLUGGED_AUTH")"
  log "round $round: no plugin ${p}/s, one plugin ${q}/s"
  plain_sum="$(python3 -c "print($plain_sum + $p)")"; plugged_sum="$(python3 -c "print($plugged_sum + $q)")"
done
python3 - "$plain_sum" "$plugged_sum" "$ROUNDS" "$PROFILE" <<'PY'
import sys
plain, plugged, rounds, profile = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ratio = plugged / plain if plain else 0.0
print(f"client_credentials ({profile}): no plugin {plain / rounds:,.0f}/s, one plugin {plugged / rounds:,.0f}/s, "
      f"ratio {ratio:.2f} (target >= 0.80{'' if ratio >= 0.8 else ': MISSED'})")
PY
