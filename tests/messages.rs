//! Error messages a person can act on: every transport says what happened in
//! words (the HTTP status, "connection refused at HOST:PORT", the server's
//! stderr), never a Rust type name, and nothing from outside can add a line.

mod common;

use common::*;
use mcpd::{mcp::McpSettings, proto::create_mcp_server_request::Transport};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tonic::{Code, Status};

/// An HTTP server on a loopback port of its own that answers every request
/// with `response`, whatever was asked.
async fn canned_http(response: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head; the answer does not depend on it.
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (base, task)
}

/// What a person would see: no Rust type names, no multi-line text.
fn assert_readable(status: &Status) {
    let message = status.message();
    for leak in [
        "rmcp::",
        "Transport [",
        "WorkerTransport",
        "reqwest::",
        "Auth required",
    ] {
        assert!(!message.contains(leak), "{leak:?} in {message:?}");
    }
    assert!(!message.contains('\n'), "a line break in {message:?}");
}

async fn refused_create(daemon: &Daemon, name: &str, transport: Transport) -> Status {
    let status = daemon
        .org("acme")
        .await
        .create(name, transport)
        .await
        .expect_err("the create must fail");
    assert_readable(&status);
    assert!(
        daemon.registry().servers("acme").await.is_empty(),
        "a failed create wrote something"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_names_the_address() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let (_reserved, port) = refused_port();
    let expected = format!("connection refused at 127.0.0.1:{port}");
    for (name, transport) in [
        (
            "http",
            streamable_http(format!("http://127.0.0.1:{port}/mcp")),
        ),
        ("sse", sse(format!("http://127.0.0.1:{port}/sse"))),
    ] {
        let status = refused_create(&daemon, name, transport).await;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(&expected), "{name}: {status:?}");
    }
    daemon.stop().await;
}

/// HTTP 401 and 403 are FAILED_PRECONDITION naming the status, over both
/// remote transports, with or without a `WWW-Authenticate` challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_carry_the_status_in_words() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let (forbidden, _f) = canned_http(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
    )
    .await;
    let (unauthorized, _u) = canned_http(
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"mcp\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let cases = [
        (
            "http-403",
            streamable_http(format!("{forbidden}/mcp")),
            "HTTP 403 Forbidden",
        ),
        (
            "sse-403",
            sse(format!("{forbidden}/sse")),
            "HTTP 403 Forbidden",
        ),
        (
            "http-401",
            streamable_http(format!("{unauthorized}/mcp")),
            "HTTP 401 Unauthorized",
        ),
        (
            "sse-401",
            sse(format!("{unauthorized}/sse")),
            "HTTP 401 Unauthorized",
        ),
    ];
    for (name, transport, expected) in cases {
        let status = refused_create(&daemon, name, transport).await;
        // The server is up and refuses the credentials: retrying (what gRPC
        // clients do with UNAVAILABLE) will not help until they change.
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{name}: {status:?}"
        );
        assert!(status.message().contains(expected), "{name}: {status:?}");
        assert!(
            status.message().contains("credentials"),
            "{name}: {status:?}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_servers_stderr_is_quoted_not_replayed() {
    let daemon = Daemon::start_with(
        Backend::Sqlite,
        DaemonOptions {
            mcp: McpSettings {
                stdio_allow: vec!["sh".to_owned()],
                ..test_mcp_settings()
            },
            ..DaemonOptions::default()
        },
    )
    .await;
    // A caller allowed to run a listed program controls its arguments, and
    // so what it writes to stderr: here a forged second line.
    let forged = "bad option\n2026-01-01T00:00:00.000000Z  INFO mcpd::api::service: rpc rpc=CreateMcpServer code=OK";
    let status = refused_create(
        &daemon,
        "stderr",
        command("sh", ["-c", "printf '%s' \"$1\" >&2; exit 1", "sh", forged]),
    )
    .await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("bad option\\n2026-01-01T00:00:00.000000Z"),
        "the stderr tail, escaped: {status:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_which_flag_if_any_can_change_them() {
    let daemon = Daemon::start_with(
        Backend::Sqlite,
        DaemonOptions {
            mcp: McpSettings {
                // Nothing allowed beyond the defaults.
                outbound: Default::default(),
                ..test_mcp_settings()
            },
            ..DaemonOptions::default()
        },
    )
    .await;
    let metadata = refused_create(
        &daemon,
        "metadata",
        streamable_http("http://169.254.169.254/mcp"),
    )
    .await;
    assert_eq!(metadata.code(), Code::PermissionDenied, "{metadata:?}");
    assert!(
        metadata
            .message()
            .contains("no setting overrides this rule")
            && !metadata.message().contains("--outbound-allow"),
        "{metadata:?}"
    );
    let private = refused_create(&daemon, "private", streamable_http("http://10.1.2.3/mcp")).await;
    assert_eq!(private.code(), Code::PermissionDenied, "{private:?}");
    assert!(
        private.message().contains("--outbound-allow"),
        "{private:?}"
    );
    daemon.stop().await;
}

/// A token revoked after registration: the next call is FAILED_PRECONDITION
/// naming HTTP 401 (not UNAVAILABLE, which callers would retry), and a call
/// works again once the credentials match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_credentials_fail_calls_with_failed_precondition() {
    let daemon = Daemon::start(Backend::Postgres).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "good").unwrap();
    let server = HttpTestServer::start([
        "--tools".to_owned(),
        "1".to_owned(),
        "--bearer-file".to_owned(),
        token.to_string_lossy().into_owned(),
    ])
    .await;
    let call = |id: &str| mcpd::proto::CallMcpToolRequest {
        server_id: id.to_owned(),
        tool_name: "tool_0000".to_owned(),
        arguments_json: "{}".to_owned(),
    };

    let status = refused_create(&daemon, "no-token", streamable_http(&server.url)).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("HTTP 401"), "{status:?}");

    let id = acme
        .create(
            "with-token",
            streamable_http(&server.url).with("Authorization", "Bearer good"),
        )
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    acme.raw().call_mcp_tool(acme.req(call(&id))).await.unwrap();

    std::fs::write(&token, "rotated").unwrap();
    let status = acme
        .raw()
        .call_mcp_tool(acme.req(call(&id)))
        .await
        .unwrap_err();
    assert_readable(&status);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("HTTP 401"), "{status:?}");
    assert!(
        !status.message().contains("good"),
        "no secret in {status:?}"
    );

    std::fs::write(&token, "good").unwrap();
    acme.raw().call_mcp_tool(acme.req(call(&id))).await.unwrap();
    daemon.stop().await;
}
