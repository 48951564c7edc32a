#!/usr/bin/env bash
# Run with: examples/openclaw-mcp/run.sh [--keep]
#
# The whole OpenClaw/MCP setup of examples/openclaw-mcp/README.md on one machine, end to end:
#   1. a meshgate node (`meshgate serve`) and a user who can sign in (alice);
#   2. a small MCP server (server.mjs) on loopback, behind `meshgate protect` (resource
#      http://127.0.0.1:PORT/mcp, scope mcp:tools);
#   3. the MCP SDK client doing what OpenClaw does for `"auth": "oauth"` (client.mjs oauth):
#      401 → protected-resource metadata → authorization-server metadata → dynamic registration →
#      PKCE → login and consent → code → tokens → authorized tool calls;
#   4. the exec secret provider (meshgate-token.sh) handing an agent a short-lived token
#      (OpenClaw's exec protocol and plain mode), used as a Bearer token for the same MCP server.
# Prints what each step got and the OpenClaw configuration for this run; exits non-zero if any
# step fails. Needs node >= 20, npm, curl; meshgate is $MESHGATE_BIN, else built from this
# checkout (cargo build -p bridge --bin meshgate). Every process it starts is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KEEP=0
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }
die() { printf 'openclaw-mcp: FAILED: %s\n' "$*" >&2; exit 1; }
for tool in node npm curl; do command -v "$tool" >/dev/null || die "$tool is required"; done

if [ -n "${MESHGATE_BIN:-}" ]; then
  MESHGATE="$MESHGATE_BIN"
else
  say "building meshgate (cargo build -p bridge --bin meshgate)"
  (cd "$ROOT" && cargo build -p bridge --bin meshgate)
  MESHGATE="$ROOT/target/debug/meshgate"
fi
[ -x "$MESHGATE" ] || die "no meshgate binary at $MESHGATE"
if [ ! -d "$HERE/node_modules/@modelcontextprotocol/sdk" ]; then
  say "installing the MCP SDK (npm ci in $HERE)"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshgate-openclaw-mcp.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then echo "work files (logs) kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (up to 60 s) for the first line of FILE, written by background process PID.
first_line() {
  local file="$1" pid="$2" i
  for i in $(seq 600); do
    if [ -s "$file" ] && [ "$(head -c 1 "$file")" = "{" ] && head -n 1 "$file" | grep -q '}$'; then head -n 1 "$file"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
json() { node -e 'const v = JSON.parse(process.argv[1]); const r = process.argv[2].split(".").reduce((o, k) => o?.[k], v); process.stdout.write(typeof r === "string" ? r : JSON.stringify(r ?? null))' "$1" "$2"; }
free_port() { node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'; }
MG=("$MESHGATE" --data-dir "$WORK/node")

say "1. meshgate serve"
"${MG[@]}" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --sync-listen 127.0.0.1:0 --json \
  > "$WORK/serve.json" 2> "$WORK/serve.log" &
PIDS+=($!)
SERVE="$(first_line "$WORK/serve.json" "${PIDS[-1]}")" || die "meshgate serve did not start: $(tail -5 "$WORK/serve.log")"
ISSUER="$(json "$SERVE" issuer)"
echo "issuer: $ISSUER"
PASSWORD="$(node -e 'process.stdout.write(require("crypto").randomBytes(18).toString("base64url"))')"
printf '%s\n' "$PASSWORD" | "${MG[@]}" user add alice --name Alice --email alice@example.com --password-stdin >/dev/null
echo "user alice added (a random password, on stdin)"

say "2. the MCP server behind meshgate protect"
node "$HERE/server.mjs" > "$WORK/mcp.json" 2> "$WORK/mcp.log" &
PIDS+=($!)
MCP_PORT="$(json "$(first_line "$WORK/mcp.json" "${PIDS[-1]}")" port)" || die "server.mjs did not start: $(tail -5 "$WORK/mcp.log")"
GATEWAY="$("${MG[@]}" client add --name mcp-gateway --json)"   # introspection only: revocation checks
PORT="$(free_port)"
RESOURCE="http://127.0.0.1:$PORT/mcp"
MESHGATE_PROTECT_CLIENT_SECRET="$(json "$GATEWAY" client_secret)" "$MESHGATE" protect \
  --listen "127.0.0.1:$PORT" --upstream "http://127.0.0.1:$MCP_PORT" \
  --resource "$RESOURCE" --scope mcp:tools --issuer "$ISSUER" \
  --client-id "$(json "$GATEWAY" client_id)" --json > "$WORK/protect.json" 2> "$WORK/protect.log" &
PIDS+=($!)
first_line "$WORK/protect.json" "${PIDS[-1]}" >/dev/null || die "meshgate protect did not start: $(tail -5 "$WORK/protect.log")"
echo "MCP server on 127.0.0.1:$MCP_PORT, protected endpoint $RESOURCE"

say "OpenClaw configuration for this endpoint (~/.openclaw/openclaw.json), then: openclaw mcp login tools"
cat <<JSON
{
  "mcp": {
    "servers": {
      "tools": {
        "url": "$RESOURCE",
        "transport": "streamable-http",
        "auth": "oauth",
        "oauth": { "scope": "mcp:tools" }
      }
    }
  }
}
JSON

say "3. MCP SDK client, auth(): discovery → registration → PKCE → login/consent → token → tool calls"
OAUTH="$(printf '{"mcp_url":"%s","username":"alice","password":"%s"}' "$RESOURCE" "$PASSWORD" | node "$HERE/client.mjs" oauth)" \
  || die "the OAuth flow failed"
SUB="$("${MG[@]}" user list --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const u=JSON.parse(s).find(u=>u.username==="alice");process.stdout.write(u?.sub??"")})')"
node -e '
  const r = JSON.parse(process.argv[1]); const [resource, issuer, sub] = process.argv.slice(2)
  const checks = [
    [r.unauthenticated_status === 401, "401 without a token"],
    [r.resource_metadata_url?.startsWith(new URL(resource).origin + "/.well-known/oauth-protected-resource"), "resource_metadata in WWW-Authenticate"],
    [r.first_auth === "REDIRECT" && typeof r.registered_client_id === "string", "dynamic registration, then the authorization redirect"],
    [r.authorization.code_challenge_method === "S256" && r.authorization.resource === resource, "PKCE S256 and resource = the MCP endpoint"],
    [r.steps.some((s) => s.page === "/login") && r.steps.some((s) => s.page === "/consent"), "login and consent pages"],
    [r.callback_iss === issuer, "RFC 9207 iss on the redirect"],
    [r.second_auth === "AUTHORIZED" && r.has_refresh_token, "tokens (access + refresh)"],
    [JSON.stringify(r.tools) === JSON.stringify(["add", "whoami"]), "listTools"],
    [r.whoami.subject === sub && r.whoami.client === r.registered_client_id && r.whoami.scope.split(" ").includes("mcp:tools"), "whoami: alice, through the registered client"],
    [r.whoami.authorization_header_seen === false, "the token never reached the MCP server"],
    [r.add === "42", "callTool add"],
  ]
  for (const [ok, what] of checks) console.log(`${ok ? "ok  " : "FAIL"} ${what}`)
  if (checks.some(([ok]) => !ok)) { console.log(JSON.stringify(r, null, 2)); process.exit(1) }
' "$OAUTH" "$RESOURCE" "$ISSUER" "$SUB" || die "the OAuth flow did not do what it should"

say "4. exec secret provider: meshgate-token.sh hands an agent a short-lived token"
AGENT="$("${MG[@]}" client add --name openclaw-agent --grant client_credentials --scope mcp:tools --audience "$RESOURCE" --json)"
AGENT_ID="$(json "$AGENT" client_id)"
(umask 077; json "$AGENT" client_secret > "$WORK/openclaw-agent.secret")
unset AGENT
provider_env=(MESHGATE_ISSUER="$ISSUER" MESHGATE_CLIENT_ID="$AGENT_ID"
  MESHGATE_CLIENT_SECRET_FILE="$WORK/openclaw-agent.secret" MESHGATE_SCOPE=mcp:tools MESHGATE_RESOURCE="$RESOURCE")
ANSWER="$(printf '{"protocolVersion":1,"provider":"meshgate","ids":["tools/bearer"]}' | env "${provider_env[@]}" "$HERE/meshgate-token.sh")" \
  || die "meshgate-token.sh (exec protocol) failed"
TOKEN="$(node -e 'process.stdout.write(JSON.parse(process.argv[1]).values["tools/bearer"] ?? "")' "$ANSWER")"
[ "$(json "$ANSWER" protocolVersion)" = 1 ] && [ -n "$TOKEN" ] || die "meshgate-token.sh answered no token"
echo "ok   exec protocol: {\"protocolVersion\":1,\"values\":{\"tools/bearer\":\"${TOKEN:0:12}…\"}}"
PLAIN="$(env "${provider_env[@]}" "$HERE/meshgate-token.sh" < /dev/null)" || die "meshgate-token.sh (plain) failed"
[ "$(printf '%s' "$PLAIN" | tr -cd '.' | wc -c)" = 2 ] || die "meshgate-token.sh (plain) printed no JWT"
echo "ok   plain mode: one line, ${PLAIN:0:12}…"
BEARER="$(printf '{"mcp_url":"%s","token":"%s"}' "$RESOURCE" "$TOKEN" | node "$HERE/client.mjs" bearer)" \
  || die "the MCP call with the provider's token failed"
node -e '
  const r = JSON.parse(process.argv[1]); const agent = process.argv[2]
  const ok = r.whoami.client === agent && r.whoami.subject === agent && r.add === "42"
  console.log(`${ok ? "ok  " : "FAIL"} MCP tool calls with the provider token as the agent ${agent}`)
  if (!ok) { console.log(JSON.stringify(r)); process.exit(1) }
' "$BEARER" "$AGENT_ID" || die "the provider token did not authorize the agent"
if grep -qF -- "$(cat "$WORK/openclaw-agent.secret")" "$WORK"/*.log; then die "a client secret reached a log"; fi

say "result"
echo "openclaw-mcp: OK: authorized MCP call through meshgate protect (OAuth as alice; exec-provider token as $AGENT_ID)"
