//! MCP over rmcp's streamable HTTP server, mounted by axum at `/mcp`.

use std::{io::Write, net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::Request,
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    serve::ListenerExt,
};
use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::LocalSessionManager,
};
use tokio::net::TcpListener;

use crate::{
    Behaviour,
    handler::{CRASH_DURING_LIST_EXIT_CODE, TestServer},
    malformed,
};

/// Largest POST body buffered to look for `tools/list` (see [`intercept_list`]).
const MAX_PEEKED_BODY: usize = 4 * 1024 * 1024;

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
    let mut router = axum::Router::new().nest_service("/mcp", service);
    let intercept = match (behaviour.crash_during_list, behaviour.malformed_list) {
        (true, _) => Some(ListFault::Crash),
        (false, true) => Some(ListFault::Malformed),
        (false, false) => None,
    };
    if let Some(fault) = intercept {
        router = router.layer(axum::middleware::from_fn(move |request, next| {
            intercept_list(fault, request, next)
        }));
    }
    if let Some(path) = behaviour.bearer_file.clone() {
        router = router.layer(axum::middleware::from_fn(move |request, next| {
            require_bearer(path.clone(), request, next)
        }));
    }
    if let Some(settings) = behaviour.oauth.clone() {
        router = crate::oauth::protect(router, settings, addr);
    }
    // Without TCP_NODELAY small SSE writes meet delayed ACKs on loopback and
    // stall ~40 ms: that would be measured as the daemon's MCP time.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}

/// `--bearer-file`: every request must carry `Authorization: Bearer <the
/// file's content>`, read anew for each request so a test can revoke the
/// token; otherwise 401 with a `WWW-Authenticate` challenge.
async fn require_bearer(path: std::path::PathBuf, request: Request, next: Next) -> Response {
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|token| token == expected.trim()) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
        "mcp-test-server: a valid bearer token is required (--bearer-file)",
    )
        .into_response()
}

/// What [`intercept_list`] does to a POSTed `tools/list` request.
#[derive(Debug, Clone, Copy)]
enum ListFault {
    /// `--crash-during-list`: exit with [`CRASH_DURING_LIST_EXIT_CODE`] before
    /// any response, so the client sees its connection close with no reply.
    Crash,
    /// `--malformed-list`: answer it ourselves, with `200 OK`,
    /// `Content-Type: application/json` and a body that is not valid JSON (see
    /// [`malformed::truncated_answer`]).
    Malformed,
}

/// Middleware in front of rmcp for `--crash-during-list` and
/// `--malformed-list`: a POSTed `tools/list` request never reaches rmcp (see
/// [`ListFault`]). Every other request does, unchanged, POST bodies buffered
/// (up to [`MAX_PEEKED_BODY`]) and replayed.
async fn intercept_list(fault: ListFault, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_PEEKED_BODY).await {
        Ok(body) => body,
        Err(error) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "mcp-test-server: unreadable body or over {MAX_PEEKED_BODY} bytes: {error}"
                ),
            )
                .into_response();
        }
    };
    let Some(id) = malformed::tools_list_request_id(&body) else {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    match fault {
        ListFault::Crash => {
            eprintln!(
                "mcp-test-server: --crash-during-list, crashing with exit code \
                 {CRASH_DURING_LIST_EXIT_CODE}"
            );
            std::process::exit(CRASH_DURING_LIST_EXIT_CODE);
        }
        ListFault::Malformed => {
            eprintln!("mcp-test-server: --malformed-list, answering tools/list {id} with garbage");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                malformed::truncated_answer(&id),
            )
                .into_response()
        }
    }
}
