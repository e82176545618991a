#!/usr/bin/env bash
# Runs the end-to-end tests of the Python client against the real daemon.
# Needs target/debug/mcpd and target/debug/mcp-test-server (or MCPD_BIN and
# MCP_TEST_SERVER_BIN); extra arguments go to pytest, e.g. `-k grpcurl`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check -r requirements.txt

./generate.sh
python -m pytest -q "$@"
