#!/usr/bin/env bash
# meshgate vs node oidc-provider, side by side in one run. See bench/README.md.
#
#   bench/run.sh [--duration SECS] [--connections N] [--tokens N] [--restarts N]
#                [--threads N] [--warmup SECS] [--keep] [--no-cache-phase] [--quick]
#
# Exits 0 whether or not the targets are met (it is a measurement); non-zero only when the
# benchmark itself cannot run (install, build or start failure, a server answering errors).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
OIDC_DIR="$BENCH_DIR/oidc"
cd "$ROOT"

DURATION=10
CONNECTIONS=32
TOKENS=10000
RESTARTS=5
THREADS=2
WARMUP=2
KEEP=0
QUICK=0
NOCACHE=1

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --duration=*) DURATION="${1#*=}"; shift ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --connections=*) CONNECTIONS="${1#*=}"; shift ;;
    --tokens) TOKENS="$2"; shift 2 ;;
    --tokens=*) TOKENS="${1#*=}"; shift ;;
    --restarts) RESTARTS="$2"; shift 2 ;;
    --restarts=*) RESTARTS="${1#*=}"; shift ;;
    --threads) THREADS="$2"; shift 2 ;;
    --threads=*) THREADS="${1#*=}"; shift ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --warmup=*) WARMUP="${1#*=}"; shift ;;
    --keep) KEEP=1; shift ;;
    --no-cache-phase) NOCACHE=0; shift ;;
    --quick) QUICK=1; DURATION=2; TOKENS=1000; WARMUP=0; RESTARTS=3; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in DURATION CONNECTIONS TOKENS RESTARTS THREADS WARMUP; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "run.sh: $v must be a whole number" >&2; exit 2; }
done
[ "$CONNECTIONS" -ge 1 ] && [ "$DURATION" -ge 1 ] && [ "$TOKENS" -ge 1 ] || { echo "run.sh: values must be >= 1" >&2; exit 2; }
[ "$THREADS" -le "$CONNECTIONS" ] || THREADS="$CONNECTIONS"
[ "$THREADS" -ge 1 ] || THREADS=1

# fd 3: the run's stderr, also from inside the trap handler when it interrupts a command
# whose output is redirected.
exec 3>&2
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ cleanup (trap EXIT)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshgate-bench.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # Anything else still running from this run's work dir (e.g. a meshgate that a helper
  # spawned with --data-dir under $WORK).
  local d cmd
  for d in /proc/[0-9]*; do
    cmd="$(tr '\0' ' ' 2>/dev/null <"$d/cmdline")" 2>/dev/null || continue
    case "$cmd" in *"$WORK"*) kill -TERM "${d#/proc/}" 2>/dev/null || true ;; esac
  done
  sleep 0.3
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

# ------------------------------------------------------------------ 1. install
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk (Debian package)"
  $SUDO apt-get install -y wrk >"$WORK/apt.log" 2>&1 || {
    $SUDO apt-get update >>"$WORK/apt.log" 2>&1 && $SUDO apt-get install -y wrk >>"$WORK/apt.log" 2>&1
  } || { cat "$WORK/apt.log" >&2; die "could not install wrk"; }
fi
command -v node >/dev/null 2>&1 || die "node is required (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm is required"
command -v python3 >/dev/null 2>&1 || die "python3 is required"

OIDC_VERSION="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dependencies"]["oidc-provider"])' "$OIDC_DIR/package.json")"
installed="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$OIDC_DIR/node_modules/oidc-provider/package.json" 2>/dev/null || true)"
if [ "$installed" != "$OIDC_VERSION" ]; then
  log "installing oidc-provider $OIDC_VERSION (npm ci)"
  (cd "$OIDC_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed"
fi

# ------------------------------------------------------------------ 2. build meshgate
if [ -n "${MESHGATE_BIN:-}" ]; then
  # For working on the harness itself: use this binary, skip the build.
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

DATA="$WORK/meshgate-data"
mkdir -p "$DATA"
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
META="$RESULTS/meta.env"
: >"$META"
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }
meta duration "$DURATION"; meta connections "$CONNECTIONS"; meta threads "$THREADS"
meta tokens "$TOKENS"; meta restarts "$RESTARTS"; meta oidc_version "$OIDC_VERSION"

# Wait until FILE has a first complete line (the server's JSON line), or the process dies;
# sets JSON_LINE. (Not run in $(...): bash defers INT/TERM traps while it waits for one.)
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
json_get() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# ------------------------------------------------------------------ 3. start both servers
MG_ARGS=(serve --data-dir "$DATA" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --sync-listen 127.0.0.1:0 --json)
log "starting meshgate"
"$MESHGATE" "${MG_ARGS[@]}" >"$WORK/meshgate.out" 2>"$WORK/meshgate.err" &
MG_PID=$!
PIDS+=("$MG_PID")
wait_json_line "$WORK/meshgate.out" "$MG_PID" 60 meshgate || die "meshgate did not start"
MG_LINE="$JSON_LINE"
MG_BASE="$(json_get "$MG_LINE" issuer)"
case "$MG_BASE" in http://127.0.0.1:*) ;; *) die "unexpected meshgate issuer: $MG_BASE" ;; esac
run_waited "$MESHGATE" client add --data-dir "$DATA" --name bench --grant client_credentials --scope "read write" --json \
  >"$WORK/client-add.out" 2>"$WORK/client-add.err" \
  || { cat "$WORK/client-add.err" >&2; die "meshgate client add failed"; }
MG_CLIENT="$(grep -m1 '^{' "$WORK/client-add.out")" || die "client add printed no JSON"
MG_AUTH="$(python3 "$BENCH_DIR/benchlib.py" basic -- "$(json_get "$MG_CLIENT" client_id)" "$(json_get "$MG_CLIENT" client_secret)")"
IFS=$'\t' read -r MG_TOKEN_URL MG_INTRO_URL < <(python3 "$BENCH_DIR/benchlib.py" discover "$MG_BASE")
log "meshgate pid $MG_PID at $MG_BASE (token $MG_TOKEN_URL, introspection $MG_INTRO_URL)"

OIDC_CLIENT_ID="bench"
OIDC_CLIENT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
OIDC_ENV=(env NODE_ENV=production BENCH_CLIENT_ID="$OIDC_CLIENT_ID" BENCH_CLIENT_SECRET="$OIDC_CLIENT_SECRET")
log "starting oidc-provider $OIDC_VERSION"
"${OIDC_ENV[@]}" node "$OIDC_DIR/server.mjs" >"$WORK/oidc.out" 2>"$WORK/oidc.err" &
OI_PID=$!
PIDS+=("$OI_PID")
wait_json_line "$WORK/oidc.out" "$OI_PID" 60 oidc-provider || die "oidc-provider did not start"
OI_LINE="$JSON_LINE"
OI_BASE="$(json_get "$OI_LINE" issuer)"
OI_TOKEN_URL="$(json_get "$OI_LINE" token_endpoint)"
OI_INTRO_URL="$(json_get "$OI_LINE" introspection_endpoint)"
OI_AUTH="$(python3 "$BENCH_DIR/benchlib.py" basic -- "$OIDC_CLIENT_ID" "$OIDC_CLIENT_SECRET")"
log "oidc-provider pid $OI_PID at $OI_BASE"

# ------------------------------------------------------------------ 4. load
check_active() { # srv when
  local url auth
  if [ "$1" = meshgate ]; then url="$MG_INTRO_URL"; auth="$MG_AUTH"; else url="$OI_INTRO_URL"; auth="$OI_AUTH"; fi
  local r
  run_waited python3 "$BENCH_DIR/benchlib.py" check "$url" "$auth" "$WORK/tokens.$1" --sample 200 \
    >"$WORK/check.out" 2>>"$WORK/check.err" || die "introspection check against $1 failed"
  r="$(cat "$WORK/check.out")"
  meta "${1}_active_$2" "$r"
  log "  $1: $r sampled tokens active ($2)"
}

pre_issue() {
  # Pre-issue the tokens for the introspection phase (after the token phases, so that they are
  # young: meshgate's tokens live 10 minutes), then check that a sample introspects as active.
  local srv url auth
  for srv in meshgate oidc; do
    if [ "$srv" = meshgate ]; then url="$MG_TOKEN_URL"; auth="$MG_AUTH"; else url="$OI_TOKEN_URL"; auth="$OI_AUTH"; fi
    log "pre-issuing $TOKENS tokens from $srv"
    run_waited python3 "$BENCH_DIR/benchlib.py" issue "$url" "$auth" "$TOKENS" "$WORK/tokens.$srv" >"$WORK/issue.$srv.log" \
      || die "could not pre-issue tokens from $srv"
    log "  $(cat "$WORK/issue.$srv.log")"
    meta "${srv}_token_format" "$(python3 "$BENCH_DIR/benchlib.py" describe -- "$(head -n 1 "$WORK/tokens.$srv")")"
  done
  check_active meshgate before
  check_active oidc before
}

WRK_BASE=(wrk -t "$THREADS" --latency --timeout 5s)
run_wrk() { # phase srv connections duration out
  local phase="$1" srv="$2" conns="$3" dur="$4" out="$5" url auth script
  if [ "$srv" = meshgate ]; then auth="$MG_AUTH"; else auth="$OI_AUTH"; fi
  if [ "$phase" = token ]; then
    script="$BENCH_DIR/token.lua"
    if [ "$srv" = meshgate ]; then url="$MG_TOKEN_URL"; else url="$OI_TOKEN_URL"; fi
  else
    script="$BENCH_DIR/introspect.lua"
    if [ "$srv" = meshgate ]; then url="$MG_INTRO_URL"; else url="$OI_INTRO_URL"; fi
  fi
  local pid; if [ "$srv" = meshgate ]; then pid="$MG_PID"; else pid="$OI_PID"; fi
  run_waited python3 "$BENCH_DIR/benchlib.py" cpuwrap --pids "$pid" --out "${out%.wrk}.cpu" -- \
    env BENCH_AUTH="$auth" BENCH_SCOPE="read write" BENCH_TOKENS="$WORK/tokens.$srv" BENCH_THREADS="$THREADS" \
    "${WRK_BASE[@]}" -c "$conns" -d "${dur}s" -s "$script" "$url" >"$out" 2>&1 \
    || { cat "$out" >&2; die "wrk failed ($phase/$srv)"; }
}

for phase in token introspect; do
  [ "$phase" = token ] || pre_issue
  for srv in meshgate oidc; do
    if [ "$WARMUP" -gt 0 ]; then
      run_wrk "$phase" "$srv" "$CONNECTIONS" "$WARMUP" "$RESULTS/$phase.$srv.warmup.wrk"
    fi
    log "$phase: $srv, ${DURATION}s, $CONNECTIONS connections"
    run_wrk "$phase" "$srv" "$CONNECTIONS" "$DURATION" "$RESULTS/$phase.$srv.wrk"
    grep -E 'Requests/sec|99%|Non-2xx|Socket errors' "$RESULTS/$phase.$srv.wrk" | sed 's/^/    /' >&2 || true
    if [ "$CONNECTIONS" != 32 ]; then
      log "$phase: $srv, ${DURATION}s, 32 connections (for p99 at 32 in flight)"
      run_wrk "$phase" "$srv" 32 "$DURATION" "$RESULTS/$phase.$srv.p99.wrk"
    fi
  done
done
check_active meshgate after
check_active oidc after

# Idle RSS after the load.
sleep 2
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }
meta meshgate_rss_kb "$(rss_kb "$MG_PID")"
meta oidc_rss_kb "$(rss_kb "$OI_PID")"
kill -0 "$MG_PID" 2>/dev/null || die "meshgate died during the run (see $WORK/meshgate.err)"
meta meshgate_stderr_bytes "$(wc -c <"$WORK/meshgate.err")"

# ------------------------------------------------------------------ introspection, cache off
# Informational: meshgate remembers verified token signatures (bridge.verified_token_cache), so
# after the first pass over the token file most introspections skip the EdDSA verification.
# Restart it on the same port and data dir (so the pre-issued tokens stay valid) with the cache
# off and measure introspection again: the cost when tokens are seen once, or the cache is cold.
if [ "$NOCACHE" = 1 ]; then
  MG_PORT="${MG_BASE##*:}"
  kill -TERM "$MG_PID" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$MG_PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$MG_PID" 2>/dev/null || true
  MESHGATE_BRIDGE__VERIFIED_TOKEN_CACHE=0 "$MESHGATE" serve --data-dir "$DATA" --listen "127.0.0.1:$MG_PORT" \
    --metrics-listen 127.0.0.1:0 --sync-listen 127.0.0.1:0 --json >"$WORK/meshgate-nocache.out" 2>"$WORK/meshgate-nocache.err" &
  MG_PID=$!
  PIDS+=("$MG_PID")
  if wait_json_line "$WORK/meshgate-nocache.out" "$MG_PID" 30 "meshgate (cache off)" \
    && [ "$(json_get "$JSON_LINE" issuer)" = "$MG_BASE" ]; then
    log "introspect: meshgate with verified_token_cache=0, ${DURATION}s, $CONNECTIONS connections"
    [ "$WARMUP" -gt 0 ] && run_wrk introspect meshgate "$CONNECTIONS" "$WARMUP" "$RESULTS/introspect.meshgate-nocache.warmup.wrk"
    run_wrk introspect meshgate "$CONNECTIONS" "$DURATION" "$RESULTS/introspect.meshgate-nocache.wrk"
    grep -E 'Requests/sec|99%' "$RESULTS/introspect.meshgate-nocache.wrk" | sed 's/^/    /' >&2 || true
    check_active meshgate after-nocache
  else
    log "WARNING: could not restart meshgate with the cache off on port $MG_PORT; skipping that phase"
  fi
fi

# ------------------------------------------------------------------ start-to-serving
# Stop both, then restart each several times (meshgate on its warm data dir).
kill -TERM "$MG_PID" "$OI_PID" 2>/dev/null || true
for i in $(seq 1 100); do
  kill -0 "$MG_PID" 2>/dev/null || kill -0 "$OI_PID" 2>/dev/null || break
  sleep 0.05
done
kill -KILL "$MG_PID" "$OI_PID" 2>/dev/null || true
log "start-to-serving: $RESTARTS restarts each"
run_waited python3 "$BENCH_DIR/benchlib.py" startup --runs "$RESTARTS" \
  --probe /.well-known/oauth-authorization-server -- "$MESHGATE" "${MG_ARGS[@]}" >"$RESULTS/startup.meshgate.json" \
  || die "meshgate restarts failed"
run_waited python3 "$BENCH_DIR/benchlib.py" startup --runs "$RESTARTS" \
  --probe /.well-known/openid-configuration -- "${OIDC_ENV[@]}" node "$OIDC_DIR/server.mjs" >"$RESULTS/startup.oidc.json" \
  || die "oidc-provider restarts failed"

# ------------------------------------------------------------------ 5. report
python3 "$BENCH_DIR/benchlib.py" report "$RESULTS"
if [ "$KEEP" = 1 ]; then log "raw results in $RESULTS"; fi
exit 0
