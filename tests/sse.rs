//! Legacy HTTP+SSE servers that fail, each in its own way, against a small
//! hand-written HTTP server: every failure is UNAVAILABLE (or
//! DEADLINE_EXCEEDED where the server just hangs) with the transport's own
//! words, nothing is written, and the daemon holds no connection afterwards.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::*;
use http::StatusCode;
use mcpd::mcp::{McpError, Stage, sse::SseTransportError};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::Code;

backend_tests!(sse_failures_are_refused_and_leave_nothing);

/// How the scripted server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// The event-stream GET gets `403 Forbidden`.
    Forbidden,
    /// The GET gets `200 OK` with an HTML page.
    NotAnEventStream,
    /// The GET gets an event stream that ends after a `ping` event.
    EndsBeforeEndpoint,
    /// The GET's `endpoint` event names another origin (localhost for
    /// 127.0.0.1); the stream stays open.
    EndpointElsewhere,
    /// The `endpoint` is fine, the POST of `initialize` gets `500`; the
    /// stream stays open.
    PostRefused,
    /// The GET gets event-stream headers and then nothing, ever.
    Silent,
}

/// A loopback HTTP server that plays one [`Script`] and counts the
/// connections clients hold to it.
struct ScriptedServer {
    url: String,
    open: Arc<AtomicUsize>,
    posts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    async fn start(script: Script) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicUsize::new(0));
        let posts = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (open, posts) = (open.clone(), posts.clone());
            async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    let (open, posts) = (open.clone(), posts.clone());
                    tokio::spawn(async move {
                        let _ = serve(socket, script, port, &posts).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        ScriptedServer {
            url: format!("http://127.0.0.1:{port}/sse"),
            open,
            posts,
            task,
        }
    }

    fn origin(&self) -> String {
        self.url.trim_end_matches("/sse").to_owned()
    }

    /// Connections a client holds open right now.
    fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const EVENT_STREAM_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";

/// One connection: one request, one scripted answer. Answers with a body
/// close the connection; held streams end when the client closes them.
async fn serve(
    mut socket: TcpStream,
    script: Script,
    port: u16,
    posts: &AtomicUsize,
) -> std::io::Result<()> {
    let (method, _body) = read_request(&mut socket).await?;
    if method == "POST" {
        posts.fetch_add(1, Ordering::SeqCst);
        return answer(
            &mut socket,
            "500 Internal Server Error",
            "text/plain",
            "boom",
        )
        .await;
    }
    match script {
        Script::Forbidden => answer(&mut socket, "403 Forbidden", "text/plain", "no").await,
        Script::NotAnEventStream => {
            answer(
                &mut socket,
                "200 OK",
                "text/html; charset=utf-8",
                "<html>hello</html>",
            )
            .await
        }
        Script::EndsBeforeEndpoint => {
            socket.write_all(EVENT_STREAM_HEAD.as_bytes()).await?;
            socket
                .write_all(b": hello\n\nevent: ping\ndata: {}\n\n")
                .await?;
            socket.shutdown().await
        }
        Script::EndpointElsewhere => {
            let event = format!("event: endpoint\ndata: http://localhost:{port}/messages\n\n");
            hold_stream(&mut socket, &event).await
        }
        Script::PostRefused => {
            hold_stream(
                &mut socket,
                "event: endpoint\ndata: /messages?session_id=1\n\n",
            )
            .await
        }
        Script::Silent => hold_stream(&mut socket, "").await,
    }
}

/// Reads a request head and its `content-length` body; returns the method.
async fn read_request(socket: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let method = head
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((method, body))
}

async fn answer(
    socket: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

/// Sends event-stream headers and `events`, then keeps the stream open
/// until the client closes it.
async fn hold_stream(socket: &mut TcpStream, events: &str) -> std::io::Result<()> {
    socket.write_all(EVENT_STREAM_HEAD.as_bytes()).await?;
    socket.write_all(events.as_bytes()).await?;
    let mut sink = [0u8; 1024];
    while socket.read(&mut sink).await? > 0 {}
    Ok(())
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

async fn sse_failures_are_refused_and_leave_nothing(backend: Backend) {
    let mut mcp = test_mcp_settings();
    mcp.connect_timeout = CONNECT_TIMEOUT;
    let daemon = Daemon::start_with(
        backend,
        DaemonOptions {
            mcp,
            ..Default::default()
        },
    )
    .await;
    let acme = daemon.org("acme").await;
    for script in [
        Script::Forbidden,
        Script::NotAnEventStream,
        Script::EndsBeforeEndpoint,
        Script::EndpointElsewhere,
        Script::PostRefused,
        Script::Silent,
    ] {
        let server = ScriptedServer::start(script).await;
        let (code, expected) = match script {
            // Up, but refusing the credentials: not worth a retry.
            Script::Forbidden => (
                Code::FailedPrecondition,
                SseTransportError::ConnectStatus(StatusCode::FORBIDDEN).to_string(),
            ),
            Script::NotAnEventStream => (
                Code::Unavailable,
                SseTransportError::NotAnEventStream("text/html; charset=utf-8".into()).to_string(),
            ),
            Script::EndsBeforeEndpoint => {
                (Code::Unavailable, SseTransportError::NoEndpoint.to_string())
            }
            Script::EndpointElsewhere => (
                Code::Unavailable,
                SseTransportError::EndpointOriginMismatch {
                    server: server.origin(),
                    endpoint: server.origin().replace("127.0.0.1", "localhost"),
                }
                .to_string(),
            ),
            Script::PostRefused => (
                Code::Unavailable,
                SseTransportError::PostStatus(StatusCode::INTERNAL_SERVER_ERROR).to_string(),
            ),
            Script::Silent => (
                Code::DeadlineExceeded,
                McpError::Timeout {
                    stage: Stage::Connect,
                    after: CONNECT_TIMEOUT,
                }
                .to_string(),
            ),
        };
        let status = acme
            .create("legacy", sse(&server.url))
            .await
            .expect_err("a failing SSE server is never registered");
        assert_eq!(status.code(), code, "{script:?}: {status:?}");
        assert!(
            status.message().contains(&expected),
            "{script:?}: {:?} should carry {expected:?}",
            status.message()
        );
        assert_eq!(
            server.posts.load(Ordering::SeqCst),
            usize::from(script == Script::PostRefused),
            "{script:?}: messages are posted only to a good endpoint"
        );
        daemon.registry().assert_empty("acme").await;
        assert_eq!(daemon.open_sessions(), 0, "{script:?}");
        assert_eq!(daemon.pool().checked_out, 0, "{script:?}");
        wait_until(
            &format!("{script:?}: the daemon to close its connections to the server"),
            Duration::from_secs(10),
            async || server.open_connections() == 0,
        )
        .await;
    }
    daemon.stop().await;
}
