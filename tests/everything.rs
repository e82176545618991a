//! The reference server `@modelcontextprotocol/server-everything` (npm,
//! installed into tests/support by the test command) over all three
//! transports.

mod common;

use common::*;
use mcpd::proto::{self, create_mcp_server_request::Transport};

backend_tests!(
    everything_over_stdio,
    everything_over_streamable_http,
    everything_over_sse
);

/// server-everything over HTTP, held to loopback by a preload (it listens on
/// every interface otherwise) on a port it picks and announces (another
/// preload).
struct NodeServer {
    /// `http://127.0.0.1:PORT`
    base: String,
    _process: Announced,
}

impl NodeServer {
    async fn start(mode: &str) -> NodeServer {
        let mut command = tokio::process::Command::new("node");
        command
            .arg("--require")
            .arg(support_dir().join("loopback.cjs"))
            .arg("--require")
            .arg(support_dir().join("announce.cjs"))
            .arg(everything_js())
            .arg(mode)
            .env("PORT", "0")
            .stderr(std::process::Stdio::null());
        let process = spawn_announcing(command, On::Stdout, after_prefix("LISTENING ")).await;
        NodeServer {
            base: process.announced.clone(),
            _process: process,
        }
    }
}

async fn create_and_check(backend: Backend, transport: Transport, kind: proto::TransportKind) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let created = acme
        .create("everything", transport)
        .await
        .expect("create server-everything");
    let server = created.server.unwrap();
    assert_eq!(server.transport(), kind);
    let names: Vec<&str> = created.tools.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(created.tools.len() >= 5, "{names:?}");
    assert!(
        created.failed_tools.is_empty(),
        "{:?}",
        created.failed_tools
    );
    assert_eq!(server.tool_count as usize, created.tools.len());
    let echo = created.tools.iter().find(|t| t.name == "echo").unwrap();
    let schema: serde_json::Value = serde_json::from_str(&echo.input_schema_json).unwrap();
    assert!(schema["properties"]["message"].is_object(), "{schema}");

    let closed = acme.close(&server.id).await.unwrap();
    assert_eq!(closed.removed_tools as usize, created.tools.len());
    assert_eq!(daemon.open_sessions(), 0);
    daemon.stop().await;
}

async fn everything_over_stdio(backend: Backend) {
    let transport = everything_stdio();
    create_and_check(backend, transport, proto::TransportKind::Stdio).await;
}

async fn everything_over_streamable_http(backend: Backend) {
    let server = NodeServer::start("streamableHttp").await;
    let transport = streamable_http(format!("{}/mcp", server.base));
    create_and_check(backend, transport, proto::TransportKind::StreamableHttp).await;
}

async fn everything_over_sse(backend: Backend) {
    let server = NodeServer::start("sse").await;
    let transport = sse(format!("{}/sse", server.base)).with("x-api-key", "k");
    create_and_check(backend, transport, proto::TransportKind::Sse).await;
}
