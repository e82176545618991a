//! `--oauth-client ID:SECRET`: the server is an OAuth 2.1 protected resource
//! with its own authorization server on the same address, for the client
//! credentials grant (the MCP OAuth client credentials extension):
//!
//! - `/mcp` wants `Authorization: Bearer <a token it issued, not expired>`,
//!   else 401 with a `WWW-Authenticate` challenge naming its metadata;
//! - protected resource metadata (RFC 9728) at
//!   `/.well-known/oauth-protected-resource/mcp`;
//! - authorization server metadata (RFC 8414) at
//!   `/.well-known/oauth-authorization-server`;
//! - `POST /token`: `grant_type=client_credentials`, the client
//!   authenticated with HTTP Basic or in the body; tokens live
//!   `--token-lifetime-secs`. Each grant is appended to `--oauth-log` as
//!   `token <n> scope=<scope> resource=<resource> value=<the token>`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form, Json, Router,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub client_id: String,
    pub client_secret: String,
    pub token_lifetime: Duration,
    pub log: Option<PathBuf>,
    /// Named in the challenge instead of this server's own metadata URL.
    pub resource_metadata: Option<String>,
}

impl OAuthSettings {
    /// `ID:SECRET`.
    pub fn parse(
        client: &str,
        token_lifetime: Duration,
        log: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let (id, secret) = client
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--oauth-client must be ID:SECRET"))?;
        Ok(OAuthSettings {
            client_id: id.to_owned(),
            client_secret: secret.to_owned(),
            token_lifetime,
            log,
            resource_metadata: None,
        })
    }
}

#[derive(Clone)]
struct Issuer {
    settings: OAuthSettings,
    base: String,
    tokens: Arc<Mutex<HashMap<String, Instant>>>,
    issued: Arc<Mutex<u64>>,
}

/// The authorization server's routes, and a layer that guards `/mcp`.
pub fn protect(router: Router, settings: OAuthSettings, addr: SocketAddr) -> Router {
    let issuer = Issuer {
        settings,
        base: format!("http://{addr}"),
        tokens: Arc::default(),
        issued: Arc::default(),
    };
    let guard = issuer.clone();
    // Layered before the merge: only `/mcp` is guarded.
    let authorization_server_routes = Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server),
        )
        .route("/token", post(token))
        .with_state(issuer);
    router
        .layer(axum::middleware::from_fn(move |request, next| {
            require_token(guard.clone(), request, next)
        }))
        .merge(authorization_server_routes)
}

async fn require_token(issuer: Issuer, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = given.is_some_and(|token| {
        issuer
            .tokens
            .lock()
            .unwrap()
            .get(&token)
            .is_some_and(|expires| Instant::now() < *expires)
    });
    if valid {
        return next.run(request).await;
    }
    let metadata = issuer
        .settings
        .resource_metadata
        .clone()
        .unwrap_or_else(|| format!("{}/.well-known/oauth-protected-resource/mcp", issuer.base));
    let challenge = format!(r#"Bearer error="invalid_token", resource_metadata="{metadata}""#);
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        "mcp-test-server: a valid access token is required (--oauth-client)",
    )
        .into_response()
}

async fn protected_resource(State(issuer): State<Issuer>) -> Json<serde_json::Value> {
    Json(json!({
        "resource": format!("{}/mcp", issuer.base),
        "authorization_servers": [issuer.base],
        "scopes_supported": ["tools"],
    }))
}

async fn authorization_server(State(issuer): State<Issuer>) -> Json<serde_json::Value> {
    let base = &issuer.base;
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
}

async fn token(
    State(issuer): State<Issuer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let refuse =
        |status: StatusCode, error: &str| (status, Json(json!({ "error": error }))).into_response();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return refuse(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| {
            v.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    let (id, secret) = match basic {
        Some(credentials) => credentials,
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    if id != issuer.settings.client_id || secret != issuer.settings.client_secret {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let n = {
        let mut issued = issuer.issued.lock().unwrap();
        *issued += 1;
        *issued
    };
    let token = format!("tok-{n}-{:x}", std::process::id());
    issuer.tokens.lock().unwrap().insert(
        token.clone(),
        Instant::now() + issuer.settings.token_lifetime,
    );
    if let Some(log) = &issuer.settings.log {
        let line = format!(
            "token {n} scope={} resource={} value={token}",
            form.get("scope").map(String::as_str).unwrap_or("-"),
            form.get("resource").map(String::as_str).unwrap_or("-"),
        );
        crate::handler::append(log, &line);
    }
    Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": issuer.settings.token_lifetime.as_secs(),
    }))
    .into_response()
}
