#!/usr/bin/env bash
# An `exec` secret provider for OpenClaw (and anything else that runs a command for a secret):
# prints a short-lived meshgate access token for one agent, got with client_credentials from the
# local meshgate node. The client secret is read from a file (or the environment) and never
# printed, logged or put on a command line.
#
# Configuration (environment; with OpenClaw list these names in the provider's `passEnv`):
#   MESHGATE_ISSUER              the node's issuer (default http://127.0.0.1:8700); token endpoint ISSUER/token
#   MESHGATE_CLIENT_ID           the agent's client id (required)
#   MESHGATE_CLIENT_SECRET_FILE  a file holding its secret, mode 0600 or stricter (preferred), or
#   MESHGATE_CLIENT_SECRET       the secret itself
#   MESHGATE_SCOPE               scopes to ask for (optional, space-separated)
#   MESHGATE_RESOURCE            RFC 8707 resource, the token's audience (optional), e.g. the
#                                protected endpoint http://127.0.0.1:9000/mcp
#   MESHGATE_CA_FILE             a CA to trust for an https issuer (e.g. from `meshgate tls init`)
#
# Output (stdout), by how it is called:
#   - OpenClaw's exec protocol (`jsonOnly: true`, the default): the request arrives as JSON on
#     stdin, {"protocolVersion":1,"provider":"...","ids":["..."]}; the answer is
#     {"protocolVersion":1,"values":{"<id>":"<token>"}} with the same token for every id, or
#     {"protocolVersion":1,"values":{},"errors":{"<id>":{"message":"..."}}} and exit status 1.
#   - Plain (stdin is a terminal or empty; OpenClaw's `jsonOnly: false`): the token alone,
#     one line. Errors go to stderr, exit status 1.
# Requires bash, curl and node (which OpenClaw needs anyway).
set -euo pipefail
umask 077

request=""
if [ ! -t 0 ]; then
  request="$(head -c 65536 || true)"
fi

fail() {
  local message="$1"
  printf 'meshgate-token: %s\n' "$message" >&2
  if [ -n "${request//[[:space:]]/}" ]; then
    REQUEST="$request" MESSAGE="$message" node -e '
      let ids = []
      try { ids = JSON.parse(process.env.REQUEST).ids ?? [] } catch {}
      const errors = Object.fromEntries(ids.map((id) => [id, { message: process.env.MESSAGE }]))
      process.stdout.write(JSON.stringify({ protocolVersion: 1, values: {}, errors }) + "\n")'
  fi
  exit 1
}

command -v curl >/dev/null || fail "curl is required"
command -v node >/dev/null || fail "node is required"
issuer="${MESHGATE_ISSUER:-http://127.0.0.1:8700}"
issuer="${issuer%/}"
client_id="${MESHGATE_CLIENT_ID:-}"
[ -n "$client_id" ] || fail "MESHGATE_CLIENT_ID is not set"

if [ -n "${MESHGATE_CLIENT_SECRET_FILE:-}" ]; then
  file="$MESHGATE_CLIENT_SECRET_FILE"
  [ -f "$file" ] && [ -r "$file" ] || fail "cannot read MESHGATE_CLIENT_SECRET_FILE ($file)"
  mode="$(stat -c %a "$file")"
  [ $(( 8#$mode & 8#077 )) -eq 0 ] || fail "$file is readable by others (mode $mode): chmod 600 it"
  IFS= read -r secret < "$file" || [ -n "${secret:-}" ] || fail "$file is empty"
else
  secret="${MESHGATE_CLIENT_SECRET:-}"
fi
[ -n "$secret" ] || fail "set MESHGATE_CLIENT_SECRET_FILE (or MESHGATE_CLIENT_SECRET)"

# curl reads the credentials from its config on stdin (`-K -`): they never appear in `ps`.
curl_quote() { local s="${1//\\/\\\\}"; printf '"%s"' "${s//\"/\\\"}"; }
form=(--data-urlencode "grant_type=client_credentials")
[ -z "${MESHGATE_SCOPE:-}" ] || form+=(--data-urlencode "scope=$MESHGATE_SCOPE")
[ -z "${MESHGATE_RESOURCE:-}" ] || form+=(--data-urlencode "resource=$MESHGATE_RESOURCE")
tls=()
[ -z "${MESHGATE_CA_FILE:-}" ] || tls=(--cacert "$MESHGATE_CA_FILE")
body_file="$(mktemp)"
trap 'rm -f "$body_file"' EXIT
status="$(printf 'user = %s\n' "$(curl_quote "$client_id:$secret")" \
  | curl -sS -K - --max-time 10 -o "$body_file" -w '%{http_code}' "${tls[@]}" "${form[@]}" "$issuer/token")" \
  || fail "cannot reach $issuer/token"
unset secret

token="$(STATUS="$status" node -e '
  const body = require("fs").readFileSync(process.argv[1], "utf8")
  let json = {}
  try { json = JSON.parse(body) } catch {}
  if (process.env.STATUS !== "200" || typeof json.access_token !== "string") {
    process.stderr.write(`${process.env.STATUS} ${json.error ?? "no token"}${json.error_description ? ": " + json.error_description : ""}\n`)
    process.exit(1)
  }
  process.stdout.write(json.access_token)' "$body_file" 2>&1)" || fail "the token endpoint answered $token"

if [ -n "${request//[[:space:]]/}" ]; then
  REQUEST="$request" TOKEN="$token" node -e '
    let request
    try { request = JSON.parse(process.env.REQUEST) } catch { process.stderr.write("meshgate-token: the request on stdin is not JSON\n"); process.exit(1) }
    const ids = Array.isArray(request.ids) ? request.ids : []
    const values = Object.fromEntries(ids.map((id) => [id, process.env.TOKEN]))
    process.stdout.write(JSON.stringify({ protocolVersion: 1, values }) + "\n")'
else
  printf '%s\n' "$token"
fi
