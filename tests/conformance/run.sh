#!/usr/bin/env bash
# MCP client conformance of mcpd, refereed by the official suite
# (@modelcontextprotocol/conformance, client mode).
#
# Starts a throwaway mcpd on a free loopback port, makes an API key, and runs
# `conformance client --requirements REV` for 2025-11-25 and 2026-07-28 with
# tests/conformance/mcpd-conformance-client as the client command: for each
# scenario the suite starts a scenario server and runs that binary, which
# registers the server with mcpd and drives it through mcpd's gRPC API, so
# every MCP message the scenario judges comes from mcpd.
#
# Prints a results table (scenario -> pass/FAIL) per revision and exits
# non-zero on any result the baselines (expected-failures-REV.yaml) do not
# expect: a failure not listed, or a listed scenario that now passes. It
# judges every scenario the suite runs, the ones a revision does not score
# included (json-schema-2020-12-preservation must pass too).
#
# Builds nothing: run `cargo build --workspace` first (scripts/test.sh does).
# Installs the suite and the Node 22 it needs from package-lock.json (npm ci)
# when they are missing or out of date. Results: target/conformance/REV/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CONF=$ROOT/tests/conformance
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
MCPD=$BIN/mcpd
CLIENT=$BIN/mcpd-conformance-client
RESULTS=${CONFORMANCE_RESULTS:-$ROOT/target/conformance}
REVISIONS=(2025-11-25 2026-07-28)

for bin in "$MCPD" "$CLIENT"; do
  [[ -x $bin ]] || { echo "missing $bin: build the workspace first (cargo build --workspace)" >&2; exit 1; }
done
case $CLIENT in
  *" "*) echo "the suite splits its --command on spaces; $CLIENT has one" >&2; exit 1 ;;
esac

# The suite and Node 22, exactly as package-lock.json pins them.
stamp=$CONF/node_modules/.mcpd-installed-lock
if ! cmp -s "$CONF/package-lock.json" "$stamp" 2>/dev/null; then
  echo "== npm ci: @modelcontextprotocol/conformance and Node 22"
  npm ci --prefix "$CONF" --no-audit --no-fund --loglevel=error
  cp "$CONF/package-lock.json" "$stamp"
fi
export PATH=$CONF/node_modules/.bin:$PATH
NODE=$CONF/node_modules/.bin/node
node_major=$("$NODE" -p 'process.versions.node.split(".")[0]')
(( node_major >= 22 )) || { echo "the suite needs Node 22+, $NODE is $("$NODE" --version)" >&2; exit 1; }

TMP=$(mktemp -d)
DAEMON=
cleanup() {
  if [[ -n $DAEMON ]] && kill -0 "$DAEMON" 2>/dev/null; then
    kill -TERM "$DAEMON" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$DAEMON" 2>/dev/null; then
      echo "mcpd did not stop within 10 s of SIGTERM; killing it" >&2
      kill -KILL "$DAEMON" 2>/dev/null || true
    fi
    wait "$DAEMON" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# A throwaway daemon on a port the kernel picks; it says which one it got.
DB=sqlite://$TMP/mcpd.db
# Text logs at info whatever the caller's environment says: the address is
# read from the "mcpd listening" line.
# The OAuth callback listens on a port of its own; the client ID metadata
# document URL is the one the suite's authorization servers expect (they
# never fetch it).
RUST_LOG=info "$MCPD" --log-format text serve --listen 127.0.0.1:0 --database-url "$DB" \
  --http-listen 127.0.0.1:0 \
  --oauth-client-metadata-url https://conformance-test.local/client-metadata.json \
  --secret-key-file "$TMP/k" --run-dir "$TMP/run" --outbound-allow 127.0.0.0/8,::1/128 2>"$TMP/mcpd.log" &
DAEMON=$!
ADDR=
for _ in $(seq 1 300); do
  ADDR=$(sed -n 's/.*mcpd listening.*addr=\([^ ]*\).*/\1/p' "$TMP/mcpd.log" | head -n 1)
  [[ -n $ADDR ]] && break
  kill -0 "$DAEMON" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $ADDR ]]; then
  echo "mcpd did not report its address; its log:" >&2
  cat "$TMP/mcpd.log" >&2
  exit 1
fi
KEY=$("$MCPD" keys create --org conformance --database-url "$DB" 2>/dev/null)
export MCPD_ADDRESS=http://$ADDR MCPD_API_KEY=$KEY
# Each scenario acts as an organization of its own (the client makes its
# key): scenarios run at once and several offer a tool named test-tool.
export MCPD_KEYS_COMMAND=$MCPD MCPD_DATABASE_URL=$DB
echo "== mcpd listening on $ADDR (pid $DAEMON)"

rm -rf "$RESULTS"
mkdir -p "$RESULTS"
status=0
for rev in "${REVISIONS[@]}"; do
  out=$RESULTS/$rev
  echo "== conformance client --requirements $rev"
  set +e
  conformance client --command "$CLIENT" --requirements "$rev" \
    --expected-failures "$CONF/expected-failures-$rev.yaml" -o "$out" >"$out.log" 2>&1
  suite=$?
  set -e
  # The suite's own verdict (scored scenarios only) and its summary.
  sed -n '/=== SUITE SUMMARY ===/,$p' "$out.log"
  # The suite's exit status cannot allow for a scenario that passes or fails
  # by timing (flaky-REV.txt); report.mjs below applies the baseline the same
  # way and judges.
  if [[ $suite -ne 0 ]]; then
    echo "conformance client --requirements $rev exited $suite (full output: $out.log); report.mjs judges"
  fi
done

cp "$TMP/mcpd.log" "$RESULTS/mcpd.log"
echo
for rev in "${REVISIONS[@]}"; do
  "$NODE" "$CONF/report.mjs" "$rev" "$RESULTS/$rev" "$CONF/expected-failures-$rev.yaml" \
    "$CONF/node_modules/@modelcontextprotocol/conformance/requirements/$rev.yaml" \
    "$CONF/flaky-$rev.txt" || status=1
done
echo "results: $RESULTS (checks.json, stdout.txt, stderr.txt per scenario; mcpd.log)"
exit $status
