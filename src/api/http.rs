//! The HTTP edge, beside gRPC: where browsers come back from authorization
//! servers (`GET /oauth/callback`), mcpd's client ID metadata document, and
//! the Prometheus metrics (`GET /metrics`, unauthenticated like any scrape
//! target: bind `--http-listen` where only the scraper reaches it).
//!
//! The callback is unauthenticated by necessity (a browser carries no API
//! key): the single-use `state` it brings is the only key, and everything
//! else about the request is untrusted. Pages reflect nothing from the
//! query; what they show (a server name, a reason) is HTML-escaped.

use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    manager::{Authorized, Callback, Manager, ManagerError},
    mcp::OAuthSettings,
    telemetry::metrics::{self, Registry},
};

/// The HTTP listener and what it tells authorization servers about mcpd.
pub struct HttpEdge {
    pub listener: TcpListener,
    pub oauth: OAuthSettings,
}

#[derive(Clone)]
struct Edge {
    manager: Manager,
    oauth: OAuthSettings,
    metrics: Registry,
}

/// Serves until `stopping` is cancelled.
pub(super) async fn serve(
    edge: HttpEdge,
    manager: Manager,
    metrics: Registry,
    stopping: CancellationToken,
) {
    let router = Router::new()
        .route("/oauth/callback", get(callback))
        .route("/oauth/client-metadata.json", get(client_metadata))
        .route("/metrics", get(scrape))
        .with_state(Edge {
            manager,
            oauth: edge.oauth,
            metrics,
        });
    if let Ok(addr) = edge.listener.local_addr() {
        tracing::info!(%addr, "mcpd http listening");
        if super::tls::exposed_in_clear(addr.ip(), false) {
            tracing::warn!(
                %addr,
                "serving the HTTP listener on a non-loopback address: OAuth callbacks carry \
                 authorization codes and /metrics is unauthenticated; bind --http-listen to \
                 loopback and put a TLS-terminating proxy in front of the callback"
            );
        }
    }
    let served = axum::serve(edge.listener, router)
        .with_graceful_shutdown(async move { stopping.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(error = %err, "the HTTP listener stopped");
    }
}

async fn scrape(State(edge): State<Edge>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::encode(&edge.metrics),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    state: String,
    code: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(edge): State<Edge>,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not an authorization response",
            "This address is where authorization servers send browsers back to mcpd.",
        );
    };
    let outcome = edge
        .manager
        .complete_authorization(Callback {
            state: query.state,
            code: query.code,
            iss: query.iss,
            error: query.error,
            error_description: query.error_description,
        })
        .await;
    match outcome {
        Ok(Authorized::Ready {
            server,
            failed_tools,
        }) => {
            let mut text = format!(
                "mcpd is connected to the MCP server {:?}: {} tools registered.",
                server.name, server.tool_count
            );
            if !failed_tools.is_empty() {
                text.push_str(&format!(
                    " {} tools could not be registered (see GetMcpServer / ListMcpServerTools).",
                    failed_tools.len()
                ));
            }
            text.push_str(" You can close this window.");
            page(StatusCode::OK, "Connected", &text)
        }
        Ok(Authorized::Failed {
            server_name,
            reason,
        }) => page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            &format!("mcpd could not connect to the MCP server {server_name:?}: {reason}"),
        ),
        Err(err @ (ManagerError::NotFound(_) | ManagerError::InvalidArgument(_))) => page(
            StatusCode::BAD_REQUEST,
            "Unknown authorization",
            &err.to_string(),
        ),
        Err(err @ (ManagerError::Unavailable(_) | ManagerError::ResourceExhausted(_))) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            &err.to_string(),
        ),
        Err(err) => {
            tracing::warn!(error = %err, "OAuth callback failed");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Authorization failed",
                "mcpd could not finish the authorization; its log says why.",
            )
        }
    }
}

/// mcpd's client ID metadata document: where the authorization server
/// learns mcpd's name and redirect URI when the document's URL is the
/// client id.
async fn client_metadata(State(edge): State<Edge>) -> Response {
    let Some(url) = &edge.oauth.client_metadata_url else {
        return StatusCode::NOT_FOUND.into_response();
    };
    Json(serde_json::json!({
        "client_id": url.as_str(),
        "client_name": edge.oauth.client_name,
        "redirect_uris": [edge.oauth.redirect_uri.as_str()],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }))
    .into_response()
}

/// A small page: a title and one paragraph, both escaped; nothing loads or
/// runs, nothing is cached, the address (with its code) is not passed on.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mcpd: {title}</title></head>\
         <body><h1>{title}</h1><p id=\"message\">{text}</p></body></html>",
        title = escape(title),
        text = escape(text),
    );
    let mut response = (status, Html(body)).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            super::escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }
}
