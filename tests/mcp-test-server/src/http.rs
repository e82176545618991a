//! MCP over rmcp's streamable HTTP server, mounted by axum at `/mcp`.

use std::{io::Write, net::SocketAddr, sync::Arc};

use axum::serve::ListenerExt;
use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::LocalSessionManager,
};
use tokio::net::TcpListener;

use crate::{Behaviour, handler::TestServer};

pub async fn run(
    server: TestServer,
    listen: SocketAddr,
    behaviour: &Behaviour,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // The one and only line on stdout: tests parse it to find the URL.
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "LISTENING http://{addr}/mcp")?;
        stdout.flush()?;
    }

    if behaviour.hang_initialize {
        // Accept connections and keep them open without ever reading from or
        // writing to them, so no request (initialize included) gets an answer.
        eprintln!("mcp-test-server: --hang initialize, accepting but never responding");
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await?;
            held.push(socket);
        }
    }

    // A test server on loopback: skip `Host` validation so it also answers
    // when bound to a non-loopback `--listen` address.
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(server.fresh()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    // Without TCP_NODELAY small SSE writes meet delayed ACKs on loopback and
    // stall ~40 ms: that would be measured as the daemon's MCP time.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}
