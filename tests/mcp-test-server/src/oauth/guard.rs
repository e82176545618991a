//! The layer in front of `/mcp`: a live access token, and with
//! `--oauth-tool-scope` the scope a called tool needs.

use std::time::Instant;

use axum::{
    body::Body,
    extract::Request,
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::Issuer;

/// Largest `/mcp` POST body buffered to find a `tools/call` needing a scope.
const MAX_GUARDED_BODY: usize = 1024 * 1024;

pub(super) async fn require_token(issuer: Issuer, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let granted = given.and_then(|token| {
        issuer
            .tables
            .lock()
            .unwrap()
            .access
            .get(&token)
            .filter(|access| Instant::now() < access.expires)
            .map(|access| access.scopes.clone())
    });
    let Some(granted) = granted else {
        let challenge = format!(
            r#"Bearer error="invalid_token", resource_metadata="{}""#,
            issuer.protected_resource_metadata_url()
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            "mcp-test-server: a valid access token is required (--oauth-client)",
        )
            .into_response();
    };
    if issuer.settings.tool_scopes.is_empty() || request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_GUARDED_BODY).await {
        Ok(body) => body,
        Err(error) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "mcp-test-server: unreadable body or over {MAX_GUARDED_BODY} bytes: {error}"
                ),
            )
                .into_response();
        }
    };
    if let Some((tool, scope)) = missing_scope(&issuer.settings.tool_scopes, &granted, &body) {
        issuer.log(&format!("forbidden tool={tool} scope={scope}"));
        let challenge = format!(
            r#"Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{}""#,
            issuer.protected_resource_metadata_url()
        );
        return (
            StatusCode::FORBIDDEN,
            [(header::WWW_AUTHENTICATE, challenge)],
            format!("mcp-test-server: calling {tool} needs scope {scope} (--oauth-tool-scope)"),
        )
            .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// The first (tool, scope) of `tool_scopes` whose tool `body` calls (as one
/// JSON-RPC message or a batch) and whose scope was not `granted`.
fn missing_scope<'a>(
    tool_scopes: &'a [(String, String)],
    granted: &[String],
    body: &[u8],
) -> Option<(&'a str, &'a str)> {
    let message: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages = match &message {
        serde_json::Value::Array(batch) => batch.as_slice(),
        single => std::slice::from_ref(single),
    };
    let called = messages
        .iter()
        .filter(|m| m.get("method").and_then(|v| v.as_str()) == Some("tools/call"))
        .filter_map(|m| m.pointer("/params/name").and_then(|v| v.as_str()));
    for name in called {
        for (tool, scope) in tool_scopes {
            if tool == name && !granted.contains(scope) {
                return Some((tool, scope));
            }
        }
    }
    None
}
