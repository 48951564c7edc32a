#!/usr/bin/env bash
# Upstream federation benchmark: meshgate federating node oidc-provider. See bench/README.md
# ("Upstream federation").
#
#   bench/upstream.sh [--duration SECS] [--connections N] [--agents N] [--keep] [--quick]
#
# Prints token-exchange and federated-client throughput relative to client_credentials, and for
# an upstream freeze (SIGSTOP) and death (SIGKILL) under load: the time to the first local token
# and the slowest agent request. Exits 0 whether or not the targets are met (a measurement);
# non-zero only when the benchmark cannot run or an agent request fails during an outage.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"

ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration|--connections|--agents) ARGS+=("$1" "$2"); shift 2 ;;
    --keep) ARGS+=("$1"); shift ;;
    --quick) ARGS+=(--duration 2 --connections 8 --agents 2); shift ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "upstream.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { printf '[upstream-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk (Debian package)"
  { $SUDO apt-get install -y wrk || { $SUDO apt-get update && $SUDO apt-get install -y wrk; }; } >&2 \
    || { log "ERROR: could not install wrk"; exit 1; }
fi
for tool in node npm python3; do
  command -v "$tool" >/dev/null 2>&1 || { log "ERROR: $tool is required"; exit 1; }
done
if [ ! -d "$BENCH_DIR/oidc/node_modules/oidc-provider" ]; then
  log "installing oidc-provider (npm ci)"
  (cd "$BENCH_DIR/oidc" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

if [ -n "${MESHGATE_BIN:-}" ]; then
  MESHGATE="$MESHGATE_BIN"
  log "using MESHGATE_BIN=$MESHGATE (no build)"
else
  log "building meshgate (release)"
  cargo build --release -p bridge --bin meshgate >&2
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$ROOT/target")"
  MESHGATE="$TARGET_DIR/release/meshgate"
fi
[ -x "$MESHGATE" ] || { log "ERROR: no binary at $MESHGATE"; exit 1; }

exec python3 "$BENCH_DIR/upstream.py" --meshgate "$MESHGATE" "${ARGS[@]}"
