#!/usr/bin/env bash
# Mesh figures: revocation propagation latency, sync bytes per revocation, memory per node with
# many clients and revocations, on an N-node mesh on loopback. See bench/README.md ("Mesh").
#
#   bench/mesh.sh [--nodes N] [--samples N] [--clients N] [--revocations N] [--budget SECS]
#                 [--writers N] [--keep] [--quick]
#
# --writers: concurrent issue-and-revoke loops per node while populating (default 16; each node
# commits the revocations that arrive together as one change).
#
# Exits 0 whatever the figures (it is a measurement); non-zero only when it cannot run (build or
# start failure, a mesh that does not form, a server answering errors).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"

NODES=5
SAMPLES=200
CLIENTS=10000
REVOCATIONS=100000
BUDGET=300
BATCH=100
IDLE=6
WRITERS=16
KEEP=0
QUICK=0

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --nodes=*) NODES="${1#*=}"; shift ;;
    --samples) SAMPLES="$2"; shift 2 ;;
    --samples=*) SAMPLES="${1#*=}"; shift ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    --clients=*) CLIENTS="${1#*=}"; shift ;;
    --revocations) REVOCATIONS="$2"; shift 2 ;;
    --revocations=*) REVOCATIONS="${1#*=}"; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --budget=*) BUDGET="${1#*=}"; shift ;;
    --writers) WRITERS="$2"; shift 2 ;;
    --writers=*) WRITERS="${1#*=}"; shift ;;
    --keep) KEEP=1; shift ;;
    --quick) QUICK=1; NODES=3; SAMPLES=20; CLIENTS=1000; REVOCATIONS=5000; BUDGET=15; BATCH=50; IDLE=3; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "mesh.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in NODES SAMPLES CLIENTS REVOCATIONS BUDGET WRITERS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "mesh.sh: $v must be a whole number" >&2; exit 2; }
done
[ "$NODES" -ge 2 ] && [ "$NODES" -le 200 ] || { echo "mesh.sh: --nodes must be 2..200" >&2; exit 2; }
[ "$SAMPLES" -ge 1 ] || { echo "mesh.sh: --samples must be >= 1" >&2; exit 2; }

# fd 3: the run's stderr, also from inside the trap handler.
exec 3>&2
log() { printf '[mesh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ cleanup (trap EXIT)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshgate-mesh.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # Anything else still running from this run's work dir (a CLI talking to a node).
  local d cmd
  for d in /proc/[0-9]*; do
    cmd="$(tr '\0' ' ' 2>/dev/null <"$d/cmdline")" 2>/dev/null || continue
    case "$cmd" in *"$WORK"*) kill -TERM "${d#/proc/}" 2>/dev/null || true ;; esac
  done
  local i
  for i in $(seq 1 40); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for d in /proc/[0-9]*; do
    cmd="$(tr '\0' ' ' 2>/dev/null <"$d/cmdline")" 2>/dev/null || continue
    case "$cmd" in *"$WORK"*) kill -KILL "${d#/proc/}" 2>/dev/null || true ;; esac
  done
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
    log "work files kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a command in the background and wait for it, so that INT/TERM are handled at once
# (bash defers traps while a foreground child runs).
run_waited() {
  "$@" &
  local pid=$!
  PIDS+=("$pid")
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

command -v python3 >/dev/null 2>&1 || die "python3 is required"
LIB="$BENCH_DIR/meshlib.py"

# ------------------------------------------------------------------ build meshgate
if [ -n "${MESHGATE_BIN:-}" ]; then
  MESHGATE="$MESHGATE_BIN"
  log "using MESHGATE_BIN=$MESHGATE (no build)"
else
  log "building meshgate (release)"
  run_waited cargo build --release -p bridge --bin meshgate || die "cargo build failed"
  TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$ROOT/target")"
  MESHGATE="$TARGET_DIR/release/meshgate"
fi
[ -x "$MESHGATE" ] || die "no binary at $MESHGATE"
if [ -n "${MESHGATE_BIN:-}" ]; then
  BUILT_FROM="meshgate: $MESHGATE (MESHGATE_BIN)"
else
  REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  DIRTY="$(git -C "$ROOT" status --porcelain --untracked-files=no -- mesh bridge adapters Cargo.lock 2>/dev/null | wc -l)"
  BUILT_FROM="meshgate built from $REV$([ "$DIRTY" = 0 ] || echo " with $DIRTY modified files under mesh/ bridge/ adapters/")"
fi

# ------------------------------------------------------------------ identities, configs
# One loopback address per node (127.0.0.i), the same three ports on each.
run_waited python3 "$LIB" ports "$NODES" >"$WORK/ports" || die "no free ports on 127.0.0.1..127.0.0.$NODES"
read -r PORT MPORT SPORT <"$WORK/ports"
log "$NODES nodes on 127.0.0.1..127.0.0.$NODES: OAuth :$PORT, metrics :$MPORT, sync :$SPORT (work dir $WORK)"

DIDS=()
for i in $(seq 1 "$NODES"); do
  run_waited "$MESHGATE" id --data-dir "$WORK/node$i" --json >"$WORK/id$i.json" 2>"$WORK/id$i.err" \
    || { cat "$WORK/id$i.err" >&2; die "meshgate id failed for node $i"; }
  DIDS+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["did"])' "$WORK/id$i.json")")
done
DID_LIST="$(printf '"%s", ' "${DIDS[@]}")"; DID_LIST="[${DID_LIST%, }]"
GOSSIP="$(for i in $(seq 1 "$NODES"); do printf '"127.0.0.%s:%s", ' "$i" "$SPORT"; done)"; GOSSIP="[${GOSSIP%, }]"
for i in $(seq 1 "$NODES"); do
  # As in README.md "Run a three-node mesh on one machine", plus a token lifetime of 2 h: the
  # maintenance task drops revocations of expired tokens every 30 s, and the population step
  # must not shrink while it is measured.
  cat >"$WORK/node$i.yaml" <<EOF
node:
  sync:
    listen: "127.0.0.$i:$SPORT"
    gossip_peers: $GOSSIP
    trusted_peers: $DID_LIST
bridge:
  listen: "127.0.0.$i:$PORT"
  metrics_listen: "127.0.0.$i:$MPORT"
  access_token_ttl: 2h
EOF
  run_waited "$MESHGATE" config check "$WORK/node$i.yaml" >/dev/null 2>"$WORK/check$i.err" \
    || { cat "$WORK/check$i.err" >&2; die "node$i.yaml does not pass config check"; }
done

# ------------------------------------------------------------------ start the nodes
wait_json_line() { # file pid timeout_s name
  local file="$1" pid="$2" timeout="$3" name="$4" i=0
  JSON_LINE=""
  while [ "$i" -lt $((timeout * 20)) ]; do
    if [ -s "$file" ] && [ "$(wc -l <"$file")" -ge 1 ]; then JSON_LINE="$(head -n 1 "$file")"; return 0; fi
    kill -0 "$pid" 2>/dev/null || { log "$name exited early; its stderr:"; tail -n 30 "${file%.out}.err" >&2; return 1; }
    sleep 0.05; i=$((i + 1))
  done
  log "$name printed no JSON line within ${timeout}s"; return 1
}

NODE_PIDS=()
for i in $(seq 1 "$NODES"); do
  "$MESHGATE" serve --data-dir "$WORK/node$i" --config "$WORK/node$i.yaml" --json \
    >"$WORK/node$i.out" 2>"$WORK/node$i.err" &
  NODE_PIDS+=("$!")
  PIDS+=("$!")
done
T_START=$(date +%s.%N)
for i in $(seq 1 "$NODES"); do
  wait_json_line "$WORK/node$i.out" "${NODE_PIDS[$((i - 1))]}" 60 "node $i" || die "node $i did not start"
done
python3 - "$WORK" "$NODES" "${NODE_PIDS[@]}" >"$WORK/nodes.json" <<'PY' || die "bad serve --json lines"
import json, sys
work, n, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
out = []
for i in range(1, n + 1):
    with open(f"{work}/node{i}.out") as f:
        line = json.loads(f.readline())
    host = line["metrics_listen"]
    out.append({"i": i, "data_dir": f"{work}/node{i}", "config": f"{work}/node{i}.yaml", "base": line["issuer"],
                "metrics": f"http://{host}/metrics", "pid": int(pids[i - 1]), "did": line["did"]})
    if not line["issuer"].startswith(f"http://127.0.0.{i}:"):
        sys.exit(f"node {i}: unexpected issuer {line['issuer']}")
print(json.dumps(out, indent=1))
PY
log "waiting until node 1 sees $((NODES - 1)) peers alive (meshgate mesh status)"
run_waited python3 "$LIB" wait-alive "$MESHGATE" "$WORK/node1" "$((NODES - 1))" --timeout 60 >"$WORK/alive.out" \
  || die "the mesh did not form"
log "  $(cat "$WORK/alive.out") (since spawn: $(python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f} s')" "$T_START"))"

# ------------------------------------------------------------------ measure
RUN_ARGS=(--bin "$MESHGATE" --samples "$SAMPLES" --clients "$CLIENTS" --revocations "$REVOCATIONS"
  --budget "$BUDGET" --batch "$BATCH" --idle "$IDLE" --writers "$WRITERS")
[ "$QUICK" = 1 ] && RUN_ARGS+=(--quick --settle 2 --rest 1)
run_waited python3 "$LIB" run "$WORK/nodes.json" "$WORK/results.json" "${RUN_ARGS[@]}" \
  || { [ -s "$WORK/results.json" ] && python3 "$LIB" report "$WORK/results.json"; die "the measurement failed"; }
python3 "$LIB" report "$WORK/results.json"
echo "$BUILT_FROM"
for i in $(seq 1 "$NODES"); do
  eb="$(wc -c <"$WORK/node$i.err")"
  [ "$eb" -le $((1024 * 1024)) ] || log "WARNING: node $i wrote $eb bytes to stderr"
done
if [ "$KEEP" = 1 ]; then log "raw results in $WORK/results.json, node logs in $WORK/node*.err"; fi
exit 0
