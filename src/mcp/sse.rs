//! Client side of the legacy MCP "HTTP with SSE" transport (protocol 2024-11-05).
//!
//! rmcp only ships the Streamable HTTP client, but many deployed servers still speak
//! the older protocol: the client opens a long-lived `GET` event stream, the server's
//! first event (`endpoint`) names a URL, and every client message is `POST`ed there
//! while server messages arrive as `message` events on the stream.
//!
//! Error messages never contain header values (they may carry credentials) and never
//! contain full URLs (query strings often carry tokens or session ids); origins only.

use std::{borrow::Cow, future::Future};

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use http::{
    HeaderMap, HeaderValue, StatusCode,
    header::{ACCEPT, CONTENT_TYPE},
};
use rmcp::{
    RoleClient,
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::Transport,
};
use sse_stream::{Sse, SseStream};
use url::Url;

const EVENT_STREAM_MIME: &str = "text/event-stream";

/// Largest single SSE event we buffer. The stream is open-ended, so without a cap a
/// misbehaving server could grow one event until we run out of memory. Same bound as
/// rmcp's Streamable HTTP client.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

type EventStream = BoxStream<'static, Result<Sse, sse_stream::Error>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every message is self-contained (inner causes are spelled out, not chained as
/// `source()`), since rmcp and most callers print errors with plain `Display`.
#[derive(Debug, thiserror::Error)]
pub enum SseTransportError {
    #[error("HTTP request to the MCP SSE server failed: {}", chain(.0))]
    Http(reqwest::Error),

    #[error(
        "MCP SSE server answered the event-stream GET with HTTP {0}; check the URL and credentials"
    )]
    ConnectStatus(StatusCode),

    #[error(
        "MCP SSE server answered the event-stream GET with Content-Type {0} instead of \
         text/event-stream; is this a legacy SSE endpoint (often `/sse`)?"
    )]
    NotAnEventStream(String),

    #[error("MCP SSE event stream failed: {}", chain(.0.as_ref()))]
    Stream(BoxError),

    #[error("MCP SSE event stream ended before the server sent its `endpoint` event")]
    NoEndpoint,

    #[error("MCP SSE server sent an `endpoint` event that is not a valid URL: {0}")]
    InvalidEndpoint(url::ParseError),

    #[error(
        "MCP SSE server asked us to post messages to origin {endpoint}, which differs from \
         the server origin {server}; refusing"
    )]
    EndpointOriginMismatch { server: String, endpoint: String },

    #[error("an SSE event exceeded the {MAX_EVENT_BYTES}-byte limit")]
    EventTooLarge,

    #[error("MCP SSE server rejected a posted message with HTTP {0}")]
    PostStatus(StatusCode),

    #[error("failed to serialize an outgoing JSON-RPC message: {0}")]
    Serialize(serde_json::Error),

    #[error("the MCP SSE transport is closed")]
    Closed,
}

/// `e: cause: cause…` — reqwest's own message ("error sending request") keeps the
/// useful part ("Connection refused") in its source chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

impl From<reqwest::Error> for SseTransportError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's Display includes the full request URL; strip it (see module docs).
        Self::Http(e.without_url())
    }
}

/// A connected legacy-SSE session. Dropping it (or calling `close`) drops the GET
/// response body, which closes the event-stream connection.
pub struct SseClientTransport {
    client: reqwest::Client,
    /// Where to POST messages: the `endpoint` event, resolved and origin-checked.
    endpoint: Url,
    headers: HeaderMap,
    /// `None` once closed or once the stream has failed/ended.
    events: Option<EventStream>,
}

impl std::fmt::Debug for SseClientTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written so the header values and endpoint query never end up in logs.
        f.debug_struct("SseClientTransport")
            .field(
                "endpoint_origin",
                &self.endpoint.origin().ascii_serialization(),
            )
            .field("open", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

impl SseClientTransport {
    /// GETs `url` with `Accept: text/event-stream` and the given extra headers, waits for the
    /// first `endpoint` event, resolves it against `url` (relative or absolute; refuse a
    /// different origin (scheme/host/port) than `url` — the message endpoint must stay on the
    /// server we were asked to reach), and returns a transport that POSTs each outgoing
    /// JSON-RPC message (JSON body, same extra headers) to that endpoint and yields the
    /// `message` events of the stream as incoming messages.
    ///
    /// No timeout is applied here: wrap the call in one (a server that never sends
    /// `endpoint` keeps this future pending).
    ///
    /// # Errors
    /// Network failure, a non-2xx or non-event-stream answer, a stream that ends or fails
    /// before `endpoint`, or an `endpoint` that is invalid or on another origin.
    pub async fn connect(
        client: reqwest::Client,
        url: Url,
        headers: HeaderMap,
    ) -> Result<Self, SseTransportError> {
        let mut get_headers = headers.clone();
        // `insert`, not append: we only understand an event stream, whatever the caller set.
        get_headers.insert(ACCEPT, HeaderValue::from_static(EVENT_STREAM_MIME));
        let response = client.get(url.clone()).headers(get_headers).send().await?;

        let status = response.status();
        if !status.is_success() {
            return Err(SseTransportError::ConnectStatus(status));
        }
        // Checked so that pointing at a Streamable HTTP or plain web URL fails fast with a
        // hint, instead of waiting for an `endpoint` event that will never come.
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "<missing>".to_owned());
        if !is_event_stream(&content_type) {
            return Err(SseTransportError::NotAnEventStream(content_type));
        }

        let mut events = event_stream(response);
        let endpoint = loop {
            match next_event(&mut events).await? {
                Some(sse) if sse.event.as_deref() == Some("endpoint") => {
                    let data = sse.data.unwrap_or_default();
                    break resolve_endpoint(&url, &data)?;
                }
                Some(sse) => {
                    tracing::debug!(event = ?sse.event, "ignoring SSE event before `endpoint`");
                }
                None => return Err(SseTransportError::NoEndpoint),
            }
        };

        Ok(Self {
            client,
            endpoint,
            headers,
            events: Some(events),
        })
    }
}

fn is_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case(EVENT_STREAM_MIME))
}

/// Resolves the `endpoint` event's data against the URL we connected to, refusing any
/// other origin: otherwise a server could make us send our (possibly credential-bearing)
/// headers and all traffic to a host the user never chose.
fn resolve_endpoint(base: &Url, data: &str) -> Result<Url, SseTransportError> {
    let endpoint = base
        .join(data.trim())
        .map_err(SseTransportError::InvalidEndpoint)?;
    // `Origin` compares scheme, host and port with default ports made explicit, and an
    // opaque origin (non-http scheme such as `data:`) never equals anything.
    if endpoint.origin() != base.origin() {
        return Err(SseTransportError::EndpointOriginMismatch {
            server: base.origin().ascii_serialization(),
            endpoint: endpoint.origin().ascii_serialization(),
        });
    }
    Ok(endpoint)
}

/// Turns the GET body into parsed SSE events, enforcing [`MAX_EVENT_BYTES`].
fn event_stream(response: reqwest::Response) -> EventStream {
    let mut limit = EventSizeLimit::default();
    let bytes = response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| -> BoxError { Box::new(e.without_url()) })?;
        limit.observe(&chunk)?;
        Ok::<_, BoxError>(chunk)
    });
    // `io::Error` only as a carrier: sse-stream needs a concrete `std::error::Error`.
    SseStream::from_bytes_stream(bytes.map_err(std::io::Error::other)).boxed()
}

/// Pulls the next well-formed event. `Ok(None)` means the server ended the stream.
async fn next_event(events: &mut EventStream) -> Result<Option<Sse>, SseTransportError> {
    loop {
        match events.next().await {
            None => return Ok(None),
            Some(Ok(sse)) => return Ok(Some(sse)),
            // The body itself failed (connection lost, size limit): nothing more will come.
            Some(Err(sse_stream::Error::Body(e))) => return Err(SseTransportError::Stream(e)),
            // A malformed line (sse-stream also rejects unknown field names, which the SSE
            // spec says to ignore). Later events may still be fine, so keep the session.
            Some(Err(e)) => tracing::warn!("skipping malformed SSE data: {e}"),
        }
    }
}

/// Counts the bytes of the event being received (between blank lines), mirroring
/// the SSE line rules (`\n`, `\r` or `\r\n` end a line).
#[derive(Default)]
struct EventSizeLimit {
    event_bytes: usize,
    line_bytes: usize,
    after_cr: bool,
}

impl EventSizeLimit {
    fn observe(&mut self, chunk: &[u8]) -> Result<(), SseTransportError> {
        for &b in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {} // second half of a `\r\n`
                b'\n' | b'\r' if self.line_bytes == 0 => self.event_bytes = 0, // blank line
                b'\n' | b'\r' => self.line_bytes = 0,
                _ => {
                    self.line_bytes += 1;
                    self.event_bytes += 1;
                    if self.event_bytes > MAX_EVENT_BYTES {
                        return Err(SseTransportError::EventTooLarge);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Transport<RoleClient> for SseClientTransport {
    type Error = SseTransportError;

    fn name() -> Cow<'static, str> {
        "SseClientTransport".into()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        // Everything is cloned/serialized up front: rmcp runs sends concurrently and
        // requires the future to be 'static.
        let prepared = if self.events.is_none() {
            Err(SseTransportError::Closed)
        } else {
            serde_json::to_vec(&item)
                .map_err(SseTransportError::Serialize)
                .map(|body| {
                    let mut headers = self.headers.clone();
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    self.client
                        .post(self.endpoint.clone())
                        .headers(headers)
                        .body(body)
                })
        };
        async move {
            let response = prepared?.send().await?;
            // Servers answer 202 Accepted; the actual reply arrives on the event stream.
            let status = response.status();
            if !status.is_success() {
                return Err(SseTransportError::PostStatus(status));
            }
            Ok(())
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        // Cancel-safe (rmcp polls this inside `select!`): all state lives in the stream.
        loop {
            let events = self.events.as_mut()?;
            let sse = match next_event(events).await {
                Ok(Some(sse)) => sse,
                Ok(None) => {
                    tracing::debug!("MCP SSE server closed the event stream");
                    self.events = None;
                    return None;
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    self.events = None;
                    return None;
                }
            };
            // Per the SSE spec an event without a type is a `message` event.
            if !matches!(sse.event.as_deref(), None | Some("" | "message")) {
                tracing::debug!(event = ?sse.event, "ignoring non-message SSE event");
                continue;
            }
            let Some(data) = sse.data else { continue };
            match serde_json::from_str(&data) {
                Ok(message) => return Some(message),
                Err(e) => tracing::debug!("skipping unparsable MCP SSE message: {e}"),
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // Dropping the body stream closes the GET connection; the server then ends the session.
        self.events = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://127.0.0.1:3001/sse?token=x").expect("static URL")
    }

    #[test]
    fn endpoint_relative_and_absolute_same_origin() {
        let e = resolve_endpoint(&base(), "/message?sessionId=abc").expect("relative");
        assert_eq!(e.as_str(), "http://127.0.0.1:3001/message?sessionId=abc");
        let e = resolve_endpoint(&base(), "messages/?session_id=1").expect("path-relative");
        assert_eq!(e.as_str(), "http://127.0.0.1:3001/messages/?session_id=1");
        let e = resolve_endpoint(&base(), " http://127.0.0.1:3001/m \n").expect("absolute");
        assert_eq!(e.as_str(), "http://127.0.0.1:3001/m");
        // Default port spelled out is still the same origin.
        let b = Url::parse("https://example.com/sse").expect("static URL");
        assert!(resolve_endpoint(&b, "https://example.com:443/m").is_ok());
    }

    #[test]
    fn endpoint_other_origin_refused() {
        for data in [
            "http://evil.example/message",
            "//evil.example/message",
            "https://127.0.0.1:3001/message",
            "http://127.0.0.1:3002/message",
            "http://localhost:3001/message",
            "data:text/plain,hi",
        ] {
            match resolve_endpoint(&base(), data) {
                Err(SseTransportError::EndpointOriginMismatch { server, .. }) => {
                    assert_eq!(server, "http://127.0.0.1:3001", "{data}")
                }
                other => panic!("{data}: expected origin mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn endpoint_garbage_refused() {
        let b = Url::parse("http://[::1]:1/sse").expect("static URL");
        assert!(matches!(
            resolve_endpoint(&b, "http://[bad/"),
            Err(SseTransportError::InvalidEndpoint(_))
        ));
    }

    #[test]
    fn content_type_check() {
        assert!(is_event_stream("text/event-stream"));
        assert!(is_event_stream("Text/Event-Stream; charset=utf-8"));
        assert!(!is_event_stream("text/html"));
        assert!(!is_event_stream(""));
    }

    #[test]
    fn size_limit_resets_on_blank_lines() {
        let mut l = EventSizeLimit::default();
        let line = vec![b'a'; MAX_EVENT_BYTES / 2];
        for sep in [&b"\n\n"[..], b"\r\r", b"\r\n\r\n"] {
            for _ in 0..4 {
                l.observe(b"data: ").expect("small");
                l.observe(&line).expect("half the limit");
                l.observe(sep).expect("separator");
            }
        }
        // Many lines without a blank line form one event and hit the limit.
        let mut l = EventSizeLimit::default();
        l.observe(&line).expect("first half");
        l.observe(b"\r\n").expect("line end");
        l.observe(&line).expect("second half");
        assert!(matches!(
            l.observe(b"\ndata: x"),
            Err(SseTransportError::EventTooLarge)
        ));
    }
}
