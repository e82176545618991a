//! The reference server `@modelcontextprotocol/server-everything` (npm,
//! installed into tests/support by the test command) over all three
//! transports.

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use mcpd::proto::{self, create_mcp_server_request::Transport};

backend_tests!(
    everything_over_stdio,
    everything_over_streamable_http,
    everything_over_sse
);

fn support_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

fn everything_js() -> String {
    let path =
        support_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        path.exists(),
        "{} is missing: run `npm ci --prefix tests/support` (the README's test command does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// server-everything over HTTP, held to loopback by a preload (it listens on
/// every interface otherwise).
struct NodeServer {
    port: u16,
    child: tokio::process::Child,
}

impl NodeServer {
    async fn start(mode: &str) -> NodeServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("node")
            .arg("--require")
            .arg(support_dir().join("loopback.cjs"))
            .arg(everything_js())
            .arg(mode)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server-everything did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        NodeServer { port, child }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn create_and_check(backend: Backend, transport: Transport, kind: proto::TransportKind) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let created = client
        .create_mcp_server(keys.req("acme", create_request("everything", transport)))
        .await
        .expect("create server-everything")
        .into_inner();
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

    let closed = client
        .close_mcp_server(keys.req(
            "acme",
            proto::CloseMcpServerRequest {
                server_id: server.id,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.removed_tools as usize, created.tools.len());
    assert_eq!(daemon.manager.mcp().open_sessions(), 0);
    daemon.stop().await;
}

async fn everything_over_stdio(backend: Backend) {
    let transport = Transport::Stdio(proto::StdioTransport {
        command: "node".into(),
        args: vec![everything_js(), "stdio".into()],
        env: Default::default(),
    });
    create_and_check(backend, transport, proto::TransportKind::Stdio).await;
}

async fn everything_over_streamable_http(backend: Backend) {
    let server = NodeServer::start("streamableHttp").await;
    let transport = Transport::StreamableHttp(proto::StreamableHttpTransport {
        url: format!("http://127.0.0.1:{}/mcp", server.port),
        headers: Default::default(),
    });
    create_and_check(backend, transport, proto::TransportKind::StreamableHttp).await;
}

async fn everything_over_sse(backend: Backend) {
    let server = NodeServer::start("sse").await;
    let transport = Transport::Sse(proto::SseTransport {
        url: format!("http://127.0.0.1:{}/sse", server.port),
        headers: [("x-api-key".to_owned(), "k".to_owned())].into(),
    });
    create_and_check(backend, transport, proto::TransportKind::Sse).await;
}
