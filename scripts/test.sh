#!/usr/bin/env bash
# The one test command. On a fresh machine it installs what the tests need (the npm packages of the
# compatibility suite, and — through bench/run.sh — wrk and oidc-provider), then runs every check
# and test. It fails loudly on anything missing; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

command -v node >/dev/null || { echo "error: node (Node.js >= 20) is required by the compatibility tests" >&2; exit 1; }
command -v npm >/dev/null || { echo "error: npm is required by the compatibility tests" >&2; exit 1; }

step "installing the compatibility suite's npm packages (openid-client, jose, playwright-core)"
(cd compat-tests/js && npm ci --no-audit --no-fund --loglevel=error)

step "installing the openclaw-mcp example's npm packages (MCP SDK)"
(cd examples/openclaw-mcp && npm ci --no-audit --no-fund --loglevel=error)

step "installing Debian's chromium and chromium-driver for the browser tests (when missing)"
if [ ! -x /usr/bin/chromium ]; then
  as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "error: /usr/bin/chromium is missing and neither root nor sudo is available to apt-get install chromium chromium-driver" >&2; exit 1
    fi
  }
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
  [ -x /usr/bin/chromium ] || { echo "error: apt-get installed chromium but /usr/bin/chromium is missing" >&2; exit 1; }
fi

step "installing the compatibility suite's Python client (authlib) into compat-tests/python/.venv"
command -v python3 >/dev/null || { echo "error: python3 is required by the compatibility tests (authlib)" >&2; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || { echo "error: python3 venv/ensurepip is missing (Debian: apt-get install python3-venv)" >&2; exit 1; }
[ -x compat-tests/python/.venv/bin/python ] || python3 -m venv compat-tests/python/.venv
compat-tests/python/.venv/bin/pip install --quiet --disable-pip-version-check -r compat-tests/python/requirements.txt

step "installing oidc-provider for the upstream federation tests (bench/oidc)"
(cd bench/oidc && npm ci --no-audit --no-fund --loglevel=error)

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building meshgate"
cargo build -p bridge --bin meshgate --locked

step "cargo test (unit, API, CLI, compatibility suite; examples are built)"
cargo test --workspace --all-targets --locked

step "benchmark smoke run (bench/run.sh --quick)"
bench/run.sh --quick

step "mesh benchmark smoke run (bench/mesh.sh --quick)"
bench/mesh.sh --quick

step "short soak: mixed grants on a 3-node mesh with a restarting node (bench/soak.sh --quick)"
bench/soak.sh --quick

step "upstream federation benchmark smoke run (bench/upstream.sh --quick)"
bench/upstream.sh --quick

step "plugin benchmark smoke run (bench/plugin.sh --quick)"
bench/plugin.sh --quick

printf '\nall tests passed in %ss\n' "$(( $(date +%s) - start ))"
