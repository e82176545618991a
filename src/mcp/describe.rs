//! What went wrong on the wire, in words a person can act on: the HTTP
//! status, "connection refused at HOST:PORT", the server's own text (escaped)
//! — never rmcp's type names, never a full URL (query strings carry tokens).

use std::error::Error;

use rmcp::{
    service::{ClientInitializeError, ServiceError},
    transport::{streamable_http_client::StreamableHttpError, worker::WorkerQuitReason},
};

use super::{outbound::Refusal, sse::SseTransportError};
use crate::telemetry::escape_control;

type HttpError = StreamableHttpError<reqwest::Error>;

/// Longest piece of a server's own text (an HTTP body, a challenge) kept.
const MAX_QUOTED: usize = 300;

/// Why the initialize handshake with the server at `target` (host:port, or
/// the program for stdio) failed.
pub(super) fn initialize_failure(err: &ClientInitializeError, target: &str) -> String {
    match err {
        ClientInitializeError::TransportError { error, .. } => transport(&*error.error, target),
        ClientInitializeError::ConnectionClosed(_) => {
            format!("{target} closed the connection during the MCP initialize handshake")
        }
        // The legacy handshake is what an old server understands; its
        // failure says more than the probe's.
        ClientInitializeError::LegacyFallbackFailed { fallback, .. } => {
            initialize_failure(fallback, target)
        }
        ClientInitializeError::JsonRpcError(data) => format!(
            "{target} refused the MCP initialize request: {} (JSON-RPC error {})",
            quoted(&data.message),
            data.code.0
        ),
        other => format!(
            "{target} broke the MCP initialize handshake: {}",
            quoted(&other.to_string())
        ),
    }
}

/// Whether a failed session start was the server refusing mcpd's
/// credentials (HTTP 401 or 403).
pub(super) fn initialize_refuses_credentials(err: &ClientInitializeError) -> bool {
    match err {
        ClientInitializeError::TransportError { error, .. } => refuses_credentials(&*error.error),
        ClientInitializeError::LegacyFallbackFailed { discover, fallback } => {
            initialize_refuses_credentials(discover) || initialize_refuses_credentials(fallback)
        }
        _ => false,
    }
}

/// Whether a failed request on an open session was the server refusing
/// mcpd's credentials (HTTP 401 or 403): a token that expired or was revoked.
pub(super) fn service_refuses_credentials(err: &ServiceError) -> bool {
    match err {
        ServiceError::TransportSend(error) => refuses_credentials(&*error.error),
        _ => false,
    }
}

/// Whether a transport error, whichever transport raised it, is an HTTP 401
/// or 403: not a server that is down, but credentials to fix (gRPC clients
/// retry UNAVAILABLE; this they must not).
pub(super) fn refuses_credentials(err: &(dyn Error + 'static)) -> bool {
    let status = if let Some(reason) = err.downcast_ref::<WorkerQuitReason<HttpError>>() {
        match reason {
            WorkerQuitReason::Fatal { error, .. } => streamable_http_status(error),
            _ => None,
        }
    } else if let Some(error) = err.downcast_ref::<HttpError>() {
        streamable_http_status(error)
    } else if let Some(error) = err.downcast_ref::<SseTransportError>() {
        match error {
            SseTransportError::Http(inner) => inner.status().map(|s| s.as_u16()),
            SseTransportError::ConnectStatus(status) | SseTransportError::PostStatus(status) => {
                Some(status.as_u16())
            }
            _ => None,
        }
    } else if let Some(error) = err.downcast_ref::<reqwest::Error>() {
        error.status().map(|s| s.as_u16())
    } else {
        None
    };
    matches!(status, Some(401 | 403))
}

fn streamable_http_status(err: &HttpError) -> Option<u16> {
    match err {
        HttpError::AuthRequired(_) => Some(401),
        HttpError::InsufficientScope(_) => Some(403),
        HttpError::HttpStatus(status) => Some(status.status),
        HttpError::Client(inner) => inner.status().map(|s| s.as_u16()),
        // rmcp words other refusals as "HTTP <status>: <body>".
        HttpError::UnexpectedServerResponse(text) => text
            .strip_prefix("HTTP ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok()),
        _ => None,
    }
}

/// Why a request on an open session failed.
pub(super) fn service_failure(err: &ServiceError, target: &str) -> String {
    match err {
        ServiceError::TransportSend(error) => transport(&*error.error, target),
        ServiceError::TransportClosed => format!("{target} closed the connection"),
        ServiceError::McpError(data) => format!(
            "{target} answered with an error: {} (JSON-RPC error {})",
            quoted(&data.message),
            data.code.0
        ),
        other => format!("{target}: {}", quoted(&other.to_string())),
    }
}

/// A transport's error, whichever transport raised it.
pub(super) fn transport(err: &(dyn Error + 'static), target: &str) -> String {
    if let Some(reason) = err.downcast_ref::<WorkerQuitReason<HttpError>>() {
        return match reason {
            WorkerQuitReason::Fatal { error, .. } => streamable_http(error, target),
            other => format!("the connection to {target} ended: {other}"),
        };
    }
    if let Some(error) = err.downcast_ref::<HttpError>() {
        return streamable_http(error, target);
    }
    if let Some(error) = err.downcast_ref::<SseTransportError>() {
        return match error {
            SseTransportError::Http(inner) => http_client(inner, target),
            other => other.to_string(),
        };
    }
    if let Some(error) = err.downcast_ref::<reqwest::Error>() {
        return http_client(error, target);
    }
    quoted(&chain(err))
}

fn streamable_http(err: &HttpError, target: &str) -> String {
    match err {
        HttpError::Client(inner) => http_client(inner, target),
        HttpError::AuthRequired(auth) => format!(
            "{target} answered HTTP 401 Unauthorized and asks for authorization ({}); pass a token in `headers`",
            quoted(&auth.www_authenticate_header)
        ),
        HttpError::InsufficientScope(scope) => format!(
            "{target} answered HTTP 403 Forbidden: the credentials lack a scope ({}); check the token in `headers`",
            quoted(&scope.www_authenticate_header)
        ),
        HttpError::HttpStatus(status) => format!(
            "{target} answered HTTP {}{}",
            status_text(status.status),
            status
                .retry_after
                .as_deref()
                .map(|after| format!(" (retry after {})", quoted(after)))
                .unwrap_or_default()
        ),
        // rmcp words other refusals as "HTTP <status>: <body>".
        HttpError::UnexpectedServerResponse(text) => match text.strip_prefix("HTTP ") {
            Some(rest) => format!(
                "{target} answered HTTP {}; check the URL and credentials",
                quoted(rest)
            ),
            None => format!("{target} gave an unexpected answer: {}", quoted(text)),
        },
        HttpError::UnexpectedContentType(content_type) => format!(
            "{target} answered with Content-Type {}, neither JSON nor an event stream; is this the server's MCP endpoint (often `/mcp`)?",
            quoted(content_type.as_deref().unwrap_or("(none)"))
        ),
        HttpError::SessionExpired => {
            format!("{target} no longer knows the MCP session (HTTP 404)")
        }
        HttpError::Deserialize(error) => {
            format!("{target} answered with something that is not JSON-RPC: {error}")
        }
        other => format!("{target}: {}", quoted(&other.to_string())),
    }
}

/// reqwest's errors, by what happened rather than by its wording.
fn http_client(err: &reqwest::Error, target: &str) -> String {
    if let Some(refusal) = find::<Refusal>(err) {
        return format!("{refusal}; the operator sets --outbound-allow / --outbound-deny");
    }
    if let Some(status) = err.status() {
        return format!("{target} answered HTTP {}", status_text(status.as_u16()));
    }
    if err.is_timeout() {
        return format!("{target} did not answer in time");
    }
    if err.is_connect() {
        return match find::<std::io::Error>(err).map(std::io::Error::kind) {
            Some(std::io::ErrorKind::ConnectionRefused) => {
                format!("connection refused at {target}; is the MCP server running there?")
            }
            _ => format!("could not connect to {target}: {}", root_cause(err)),
        };
    }
    format!(
        "the HTTP exchange with {target} failed: {}",
        root_cause(err)
    )
}

fn status_text(code: u16) -> String {
    match http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{code} {reason}"),
        None => code.to_string(),
    }
}

fn find<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The innermost cause: reqwest's top message ("error sending request")
/// says least, the bottom one ("Connection reset by peer") most.
fn root_cause(err: &(dyn Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    quoted(&current.to_string())
}

fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let next = inner.to_string();
        // thiserror's `{0}` plus `#[source]` would print a cause twice.
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = inner.source();
    }
    text
}

/// Text from outside, escaped and cut to a readable length.
pub(super) fn quoted(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len().min(MAX_QUOTED);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let ellipsis = if end < text.len() { "…" } else { "" };
    format!("{}{ellipsis}", escape_control(&text[..end]))
}

/// `host:port` of a URL: enough to find the server, without the path or
/// query that may carry secrets.
pub(super) fn target_of(url: &url::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => url.scheme().to_owned(),
    }
}
