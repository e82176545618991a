#!/usr/bin/env bash
# Runs the README walkthrough and the Python client's example exactly as
# written: extracts the marked code blocks from README.md and
# clients/python/README.md and runs them in order, from the repository root,
# the way a newcomer pastes them.
#
# Marked blocks (the info string after the language; GitHub shows only the
# language):
#   ```sh walkthrough          pasted into the second terminal: one bash for all
#                              of a README's blocks, so variables, `cd` and
#                              background jobs carry over; must succeed
#   ```sh walkthrough-daemon   the daemon in the first terminal (from the
#                              repository root): started in the background,
#                              ready once it logs "mcpd listening"; stopped with
#                              SIGTERM after the README's last block, which must
#                              end it with exit code 0
#   ```sh walkthrough-fails    must fail; every comment line of the block (its
#                              documented output) must appear in its output
#   ```python walkthrough      pasted into `python` in that shell's directory
#
# Besides, it checks that each block calling CreateMcpServer prints an answer
# with tools (or, for a server behind OAuth, shows it ready later in the
# block) and without failedTools, and that after each README the
# organization of its $KEY has no servers left, the daemon holds no MCP
# session, and nothing the README started in the background still runs.
#
# The daemon's registry, secret key and run directory land in the repository
# root as the READMEs say (mcpd.db, mcpd.key, mcpd.run): the script refuses to
# run if they already exist and removes them at the end. Ports 50051, 50052,
# 8931 and 8932 must be free.
# Needs what the walkthrough needs: python3 with venv, Node.js with npx, and
# network access to crates.io, npm and PyPI.
#
# `scripts/walkthrough.sh --print` lists the blocks it would run and runs none.
#
#   WALKTHROUGH_DAEMON_TIMEOUT  seconds for a daemon block to listen (600; a
#                               `cargo run` there would build first)
#   WALKTHROUGH_TIMEOUT         seconds for one README's run in all (3600)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
readmes=(README.md clients/python/README.md)
state_files=(mcpd.db mcpd.db-wal mcpd.db-shm mcpd.key mcpd.run)
print_only=false
case ${1:-} in
  "") ;;
  --print) print_only=true ;;
  *) echo "usage: scripts/walkthrough.sh [--print]" >&2; exit 2 ;;
esac

for f in "${state_files[@]}"; do
  if ! $print_only && [[ -e $f ]]; then
    echo "walkthrough: $repo/$f exists; the walkthrough makes its own. Move it away (or delete it) and run again." >&2
    exit 2
  fi
done
for port in 50051 50052 8931 8932; do
  if ! $print_only && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "walkthrough: something listens on 127.0.0.1:$port, which the walkthrough uses; stop it first." >&2
    exit 2
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/mcpd-walkthrough.XXXXXX")
cleanup() {
  local f
  for f in "${state_files[@]}"; do rm -rf "${repo:?}/$f"; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- the driver's helpers (prepended to each generated driver) ---------------
cat >"$work/prelude.sh" <<'PRELUDE'
set -eo pipefail
# The console, for messages even when a block fails while its output goes to a file.
exec 8>&1 9>&2
_wt_block="" _wt_where="" _wt_out="" _wt_daemon="" _wt_daemon_log="" _wt_t0=0 _wt_tail=""

_wt_say() { printf '\n== %s\n' "$*"; }
_wt_die() { _wt_follow_stop; printf 'walkthrough: FAILED: %s\n' "$*" >&2; exit 1; }

_wt_follow_stop() {  # the block's output was shown as it came; stop showing
  [[ -n $_wt_tail ]] || return 0
  sleep 0.3
  kill "$_wt_tail" 2>/dev/null || true
  wait "$_wt_tail" 2>/dev/null || true
  _wt_tail=""
  echo "  ($((SECONDS - _wt_t0)) s)"
}

_wt_begin() {  # FILE WHERE: show the block's commands, then its output as it comes
  _wt_block=$1 _wt_where=$2 _wt_out=$1.out _wt_t0=$SECONDS
  _wt_say "$_wt_where"
  sed 's/^/  $ /' "$_wt_block"
  : >"$_wt_out"
  if [[ $_wt_block != *.walkthrough-daemon ]]; then
    tail -n +1 -f "$_wt_out" &
    _wt_tail=$!
  fi
}

_wt_end() {
  _wt_follow_stop
  if grep -q '/CreateMcpServer' "$_wt_block"; then
    # A server behind OAuth has no tools until it is authorized: the same
    # block must then show it ready.
    if grep -q 'MCP_SERVER_STATE_AUTHORIZATION_PENDING' "$_wt_out"; then
      grep -q 'MCP_SERVER_STATE_READY' "$_wt_out" || _wt_die "$_wt_where: the server behind OAuth never became ready"
    else
      grep -q '"tools": \[' "$_wt_out" || _wt_die "$_wt_where: the create answer lists no tools"
    fi
    if grep -q '"failedTools"' "$_wt_out"; then _wt_die "$_wt_where: the create answer has failedTools"; fi
  fi
  _wt_block=""
}

_wt_expect_failure() {  # the block ran and failed: its comments are the output
  _wt_follow_stop
  local line
  while IFS= read -r line; do
    line=$(sed -E 's/^[[:space:]]*#[[:space:]]*//' <<<"$line")
    [[ -z $line ]] && continue
    grep -qF -- "$line" "$_wt_out" || _wt_die "$_wt_where: output lacks the documented line: $line"
  done < <(grep -E '^[[:space:]]*#' "$_wt_block")
  _wt_block=""
}

_wt_mcpd_pid() {  # the mcpd process among the daemon block's process and its descendants
  local pids=("$_wt_daemon") i=0 p
  while ((i < ${#pids[@]})); do
    p=${pids[i]}
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == mcpd ]] && { echo "$p"; return 0; }
    pids+=($(ps -o pid= --ppid "$p" 2>/dev/null || true))
    i=$((i + 1))
  done
  return 1
}

_wt_daemon_tail() {  # the daemon log's last lines, without backtrace frames (they hide the error)
  grep -Ev '^ +([0-9]+: |at )' "$_wt_daemon_log" | tail -n 40
}

_wt_start_daemon() {  # FILE: a daemon block, run from the repository root
  _wt_daemon_log=$_wt_block.log
  (cd "$_wt_repo" && exec bash -c "$(cat "$_wt_block")") >"$_wt_daemon_log" 2>&1 </dev/null &
  _wt_daemon=$!
  local deadline=$((SECONDS + ${WALKTHROUGH_DAEMON_TIMEOUT:-600}))
  echo "  (waiting for \"mcpd listening\")"
  until grep -q 'mcpd listening' "$_wt_daemon_log"; do
    if ! kill -0 "$_wt_daemon" 2>/dev/null; then
      wait "$_wt_daemon" || true
      _wt_daemon_tail | sed 's/^/  /' >&2
      _wt_daemon=""
      _wt_die "$_wt_where: the daemon exited before it listened"
    fi
    ((SECONDS < deadline)) || { _wt_daemon_tail >&2; _wt_die "$_wt_where: the daemon did not listen in time"; }
    sleep 0.2
  done
  _wt_mcpd_pid >/dev/null || _wt_die "$_wt_where: no mcpd process under the daemon block"
  grep 'mcpd listening' "$_wt_daemon_log"
  echo "  ($((SECONDS - _wt_t0)) s)"
  _wt_block=""
}

_wt_stop_daemon() {  # SIGTERM to mcpd; the daemon block must end with 0
  local pid code=0
  pid=$(_wt_mcpd_pid) || _wt_die "the daemon is gone before the end"
  kill -TERM "$pid"
  wait "$_wt_daemon" || code=$?
  _wt_daemon=""
  if ((code != 0)); then
    _wt_daemon_tail >&2
    _wt_die "the daemon exited with $code on SIGTERM, expected 0"
  fi
  echo "  mcpd stopped by SIGTERM, exit code 0"
}

_wt_finish() {  # after a README's last block
  _wt_say "checks after $_wt_readme"
  [[ -n $_wt_daemon ]] || _wt_die "$_wt_readme has no walkthrough-daemon block"
  [[ -n ${KEY:-} ]] || _wt_die "$_wt_readme does not set KEY"
  local servers stats
  servers=$(grpcurl -plaintext -H "authorization: Bearer $KEY" -d '{}' 127.0.0.1:50051 mcpd.v1.McpServerService/ListMcpServers)
  [[ $(tr -d '[:space:]' <<<"$servers") == '{}' ]] || _wt_die "servers left registered after $_wt_readme: $servers"
  echo "  no servers left in the key's organization"
  stats=$(grpcurl -plaintext -H "authorization: Bearer $KEY" -d '{}' 127.0.0.1:50051 mcpd.v1.AdminService/GetStats)
  if grep -qE '"openMcpSessions": *[1-9]' <<<"$stats"; then _wt_die "MCP sessions left open after $_wt_readme: $stats"; fi
  echo "  no MCP session open"
  local deadline=$((SECONDS + 10)) left
  while :; do
    left=$(jobs -pr | grep -vx "$_wt_daemon" || true)
    [[ -z $left ]] && break
    ((SECONDS < deadline)) || _wt_die "$_wt_readme left background processes running: $(ps -o pid=,args= -p "$(paste -sd, <<<"$left")")"
    sleep 0.2
  done
  echo "  nothing it started in the background still runs"
  _wt_stop_daemon
}

_wt_on_exit() {
  local code=$?
  exec 1>&8 2>&9
  _wt_follow_stop
  if ((code != 0)) && [[ -n $_wt_block ]]; then
    echo "walkthrough: FAILED at $_wt_where (exit code $code); its output is above" >&2
  fi
  local left
  left=$(jobs -pr | grep -vx "${_wt_daemon:-none}" || true)
  [[ -n $left ]] && kill $left 2>/dev/null
  if [[ -n $_wt_daemon ]]; then
    echo "walkthrough: daemon log (last lines):" >&2
    _wt_daemon_tail >&2
    local pid
    if pid=$(_wt_mcpd_pid); then kill -TERM "$pid"; else kill -TERM "$_wt_daemon"; fi 2>/dev/null
    wait "$_wt_daemon" 2>/dev/null
  fi
  exit "$code"
}
trap _wt_on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
PRELUDE

# --- one driver per README ----------------------------------------------------
run_readme() {
  local readme=$1 dir driver n
  dir="$work/$(tr '/' '_' <<<"$readme")"
  mkdir -p "$dir"
  # Split the marked blocks into files NNN.KIND, listed with their lines.
  awk -v dir="$dir" '
    function flush() { close(file) }
    /^```/ {
      if (!in_fence) {
        in_fence = 1
        info = substr($0, 4); sub(/[ \t]+$/, "", info)
        if (info ~ /^(sh|python) walkthrough(-daemon|-fails)?$/) {
          split(info, parts, " ")
          kind = (parts[1] == "python") ? "python" : parts[2]
          n++; file = sprintf("%s/%03d.%s", dir, n, kind)
          printf "%s %d\n", file, NR + 1 > (dir "/index")
          capturing = 1; printf "" > file
        }
        next
      }
      if ($0 ~ /^```[ \t]*$/) { in_fence = 0; if (capturing) { capturing = 0; flush() } }
      next
    }
    capturing { print > file }
    END { if (in_fence) { print "unterminated code fence" > "/dev/stderr"; exit 1 } }
  ' "$readme"
  [[ -s $dir/index ]] || { echo "walkthrough: no walkthrough blocks in $readme" >&2; return 1; }
  n=$(grep -c '\.walkthrough-daemon ' "$dir/index" || true)
  [[ $n == 1 ]] || { echo "walkthrough: $readme needs exactly one walkthrough-daemon block, has $n" >&2; return 1; }

  driver="$dir/driver.sh"
  {
    cat "$work/prelude.sh"
    printf '_wt_repo=%q _wt_readme=%q\ncd "$_wt_repo"\n' "$repo" "$readme"
    local file line where
    while read -r file line; do
      where="$readme:$line"
      printf '_wt_begin %q %q\n' "$file" "$where"
      case $file in
        *.walkthrough)
          printf '{\n'; cat "$file"; printf '\n} >"$_wt_out" 2>&1 </dev/null\n_wt_end\n' ;;
        *.walkthrough-fails)
          printf 'if (\n'; cat "$file"
          printf '\n) >"$_wt_out" 2>&1 </dev/null; then _wt_die "%s: expected to fail, succeeded"; fi\n' "$where"
          printf '_wt_expect_failure\n' ;;
        *.walkthrough-daemon)
          printf '_wt_start_daemon\n' ;;
        *.python)
          printf 'python3 - <"$_wt_block" >"$_wt_out" 2>&1\n_wt_end\n' ;;
      esac
    done <"$dir/index"
    printf '_wt_finish\n'
  } >"$driver"

  echo "=== $readme: $(wc -l <"$dir/index") blocks"
  if $print_only; then
    while read -r file line; do
      printf -- '--- %s:%s (%s)\n' "$readme" "$line" "${file##*.}"
      cat "$file"
    done <"$dir/index"
    return 0
  fi
  timeout --foreground -k 30 "${WALKTHROUGH_TIMEOUT:-3600}" bash "$driver"
}

start=$SECONDS
for readme in "${readmes[@]}"; do
  run_readme "$readme"
done
$print_only && exit 0
echo
echo "walkthrough: OK (${readmes[*]}) in $((SECONDS - start)) s"
