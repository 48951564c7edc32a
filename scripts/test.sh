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

step "installing the compatibility suite's npm packages (openid-client, jose)"
(cd compat-tests/js && npm ci --no-audit --no-fund --loglevel=error)

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

step "plugin benchmark smoke run (bench/plugin.sh --quick)"
bench/plugin.sh --quick

printf '\nall tests passed in %ss\n' "$(( $(date +%s) - start ))"
