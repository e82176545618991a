#!/usr/bin/env bash
# The whole test suite on a fresh machine: starts PostgreSQL if it is down,
# installs the npm and PyPI packages the tests use, builds, and runs the Rust
# tests (PostgreSQL and SQLite) and the Python/grpcurl client tests.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_up() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }
if ! pg_up; then
  echo "== starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi

echo "== npm: @modelcontextprotocol/server-everything, playwright-core"
npm ci --prefix tests/support --no-audit --no-fund --loglevel=error

# The OAuth browser test drives Debian's Chromium (not a browser npm downloads).
if [[ ! -x /usr/bin/chromium ]]; then
  echo "== apt: chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi

echo "== cargo build"
cargo build --workspace --all-targets --locked

echo "== Rust tests (PostgreSQL and SQLite)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== Python client and grpcurl"
bash clients/python/run-tests.sh
echo "== MCP client conformance (official suite, baselines in tests/conformance)"; bash tests/conformance/run.sh
bash scripts/walkthrough.sh  # the README walkthrough and the Python example as written
