#!/usr/bin/env bash
# Soak: mixed grants (client_credentials, token exchange, introspection, revocation) against a
# 3-node mesh on 127.0.0.1..3 while node 3 restarts periodically (alternately SIGTERM and SIGKILL);
# prints per-node RSS, retries, errors and latency p50/p99 per interval. See bench/README.md
# ("Soak").
#
#   bench/soak.sh [--duration SECS] [--interval SECS] [--restart-every SECS] [--threads N]
#                 [--revoke-share F] [--crdt-buffer-mb N] [--token-ttl DURATION] [--keep] [--quick]
#
# Defaults: 600 s, a row every 30 s, a restart every 60 s, 4 client threads, half of the loops
# revoke their token (--revoke-share 0.5; every revocation grows the replicated document, and
# memory with it), node.sync.crdt_buffer_mb 1 (the epoch bound) and bridge.access_token_ttl 60s
# (revocations are dropped once their token expired). --quick: 60 s, a row every 10 s, a restart
# every 15 s, 2 threads. Exits non-zero when a request failed on every node, an answer was wrong,
# or the restarted node did not come back.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"

DURATION=600
INTERVAL=30
RESTART=60
THREADS=4
REVOKE_SHARE=0.5
KEEP=0
CRDT_MB=1
TOKEN_TTL=60s

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --restart-every) RESTART="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --revoke-share) REVOKE_SHARE="$2"; shift 2 ;;
    --crdt-buffer-mb) CRDT_MB="$2"; shift 2 ;;
    --token-ttl) TOKEN_TTL="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --quick) DURATION=60; INTERVAL=10; RESTART=15; THREADS=2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in DURATION INTERVAL RESTART THREADS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "soak.sh: $v must be a positive whole number" >&2; exit 2; }
done

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v python3 >/dev/null 2>&1 || { log "ERROR: python3 is required"; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshgate-soak.XXXXXX")"
PY_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$PY_PID" ] && kill -TERM "$PY_PID" 2>/dev/null || true
  # Nodes the harness started (their command lines name the work dir) and nothing else.
  local d cmd
  for d in /proc/[0-9]*; do
    cmd="$(tr '\0' ' ' 2>/dev/null <"$d/cmdline")" 2>/dev/null || continue
    case "$cmd" in *"$WORK"*" serve "*|*" serve "*"$WORK"*) kill -TERM "${d#/proc/}" 2>/dev/null || true ;; esac
  done
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then log "work files kept in $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${MESHGATE_BIN:-}" ]; then
  MESHGATE="$MESHGATE_BIN"
  log "using MESHGATE_BIN=$MESHGATE (no build)"
else
  log "building meshgate (release)"
  cargo build --release -p bridge --bin meshgate
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$ROOT/target")"
  MESHGATE="$TARGET_DIR/release/meshgate"
fi
[ -x "$MESHGATE" ] || { log "ERROR: no binary at $MESHGATE"; exit 1; }

python3 "$BENCH_DIR/soak.py" --bin "$MESHGATE" --work "$WORK" --duration "$DURATION" --interval "$INTERVAL" \
  --restart-every "$RESTART" --threads "$THREADS" --revoke-share "$REVOKE_SHARE" \
  --crdt-buffer-mb "$CRDT_MB" --token-ttl "$TOKEN_TTL" --out "$WORK/results.json" &
PY_PID=$!
wait "$PY_PID"
