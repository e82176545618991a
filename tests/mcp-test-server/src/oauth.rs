//! `--oauth-client ID:SECRET`: the server is an OAuth 2.1 protected resource
//! with its own authorization server (AS) on the same address. Without
//! `--oauth-code` the AS knows only the client credentials grant (the MCP
//! OAuth client credentials extension):
//!
//! - `/mcp` wants `Authorization: Bearer <a token it issued, not expired, not
//!   revoked>`, else 401 with a `WWW-Authenticate` challenge naming its
//!   metadata (or `--resource-metadata-url`);
//! - protected resource metadata (RFC 9728) at
//!   `/.well-known/oauth-protected-resource/mcp`;
//! - authorization server metadata (RFC 8414) at
//!   `/.well-known/oauth-authorization-server`;
//! - `POST /token`: `grant_type=client_credentials` for the `--oauth-client`
//!   client, authenticated with HTTP Basic or in the body; tokens live
//!   `--token-lifetime-secs` and are granted the requested `scope`. Each grant
//!   is appended to `--oauth-log` as
//!   `token <n> scope=<scope> resource=<resource> value=<the token>`;
//! - `POST /oauth-test/revoke`: forgets every access and refresh token issued
//!   so far, as if the user revoked the grant (204, logs `revoke`).
//!
//! `--oauth-code` adds the authorization code grant with PKCE (S256 only),
//! for the `--oauth-client` client (confidential) and for clients registered
//! at run time:
//!
//! - `POST /register`: dynamic client registration (RFC 7591), see
//!   [`register`];
//! - `GET /authorize`: redirects at once with a code, or with `--oauth-consent`
//!   first shows a consent page whose form posts to `POST /authorize/consent`;
//!   `--oauth-deny` makes the answer `error=access_denied`. See [`authorize`];
//! - `POST /token` also takes `grant_type=authorization_code` and
//!   `grant_type=refresh_token` (refresh tokens rotate on every use). See
//!   [`token`].
//!
//! `--oauth-tool-scope TOOL=SCOPE` (repeatable) asks for step-up
//! authorization: a `tools/call` of TOOL with a token not granted SCOPE gets
//! 403 `insufficient_scope` naming SCOPE (logged as
//! `forbidden tool=<TOOL> scope=<SCOPE>`).

mod authorize;
mod guard;
mod register;
mod token;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

/// How long an authorization code, or a request waiting for consent, lasts.
const CODE_LIFETIME: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub client_id: String,
    pub client_secret: String,
    pub token_lifetime: Duration,
    pub log: Option<PathBuf>,
    /// Named in the challenge instead of this server's own metadata URL.
    pub resource_metadata: Option<String>,
    /// `--oauth-code`: also the authorization code grant, refresh and DCR.
    pub code: bool,
    /// `--oauth-consent`: `/authorize` asks first.
    pub consent: bool,
    /// `--oauth-deny`: `/authorize` always answers `access_denied`.
    pub deny: bool,
    /// `--oauth-tool-scope`: (tool, scope a `tools/call` of it needs).
    pub tool_scopes: Vec<(String, String)>,
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
            code: false,
            consent: false,
            deny: false,
            tool_scopes: Vec::new(),
        })
    }
}

/// `TOOL=SCOPE`, for clap.
pub fn parse_tool_scope(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((tool, scope)) if !tool.is_empty() && !scope.is_empty() => {
            Ok((tool.to_owned(), scope.to_owned()))
        }
        _ => Err("expected TOOL=SCOPE".to_owned()),
    }
}

#[derive(Clone)]
struct Issuer {
    settings: Arc<OAuthSettings>,
    /// `http://<addr>`: the issuer identifier and every endpoint's base.
    base: String,
    tables: Arc<Mutex<Tables>>,
}

#[derive(Default)]
struct Tables {
    /// Token grants so far, of every kind: the `<n>` of `token <n>`.
    issued: u64,
    /// Clients registered so far.
    registered: u64,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    codes: HashMap<String, Code>,
    /// Requests shown on the consent page, by the page's request id.
    pending: HashMap<String, (Authorization, Instant)>,
    /// Registered through `/register`, by client id.
    clients: HashMap<String, Client>,
}

struct AccessToken {
    expires: Instant,
    scopes: Vec<String>,
}

struct RefreshToken {
    client_id: String,
    scope: Option<String>,
    resource: Option<String>,
    /// False once rotated or revoked: kept to tell reuse from a made-up token.
    live: bool,
}

/// An `/authorize` request that passed validation.
#[derive(Debug, Clone)]
struct Authorization {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    scope: Option<String>,
    resource: Option<String>,
    state: Option<String>,
}

struct Code {
    authorization: Authorization,
    created: Instant,
    used: bool,
}

struct Client {
    /// None for `token_endpoint_auth_method: none` (a public client).
    secret: Option<String>,
    redirect_uris: Vec<String>,
}

impl Issuer {
    fn protected_resource_metadata_url(&self) -> String {
        self.settings
            .resource_metadata
            .clone()
            .unwrap_or_else(|| format!("{}/.well-known/oauth-protected-resource/mcp", self.base))
    }

    fn log(&self, line: &str) {
        if let Some(log) = &self.settings.log {
            crate::handler::append(log, line);
        }
    }

    /// Issues an access token granted `scope` and returns `(n, token)`.
    fn issue_access_token(&self, scope: Option<&str>) -> (u64, String) {
        let mut tables = self.tables.lock().unwrap();
        tables.issued += 1;
        let n = tables.issued;
        // Unique across servers too: tests run several at once and a token
        // one of them accepted must mean nothing to another.
        let token = format!("tok-{n}-{:x}", std::process::id());
        tables.access.insert(
            token.clone(),
            AccessToken {
                expires: Instant::now() + self.settings.token_lifetime,
                scopes: split_scope(scope),
            },
        );
        (n, token)
    }
}

fn split_scope(scope: Option<&str>) -> Vec<String> {
    scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `bytes` random bytes, hex-encoded.
fn random_hex(bytes: usize) -> String {
    let random: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(random)
}

/// An OAuth error answer (RFC 6749 §5.2, RFC 7591 §3.2.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// The authorization server's routes, and a layer that guards `/mcp`.
pub fn protect(router: Router, settings: OAuthSettings, addr: SocketAddr) -> Router {
    let issuer = Issuer {
        settings: Arc::new(settings),
        base: format!("http://{addr}"),
        tables: Arc::default(),
    };
    let guard = issuer.clone();
    let mut authorization_server_routes = Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server),
        )
        .route("/token", post(token::token))
        .route("/oauth-test/revoke", post(revoke));
    if issuer.settings.code {
        authorization_server_routes = authorization_server_routes
            .route("/register", post(register::register))
            .route("/authorize", get(authorize::authorize))
            .route("/authorize/consent", post(authorize::consent));
    }
    // Layered before the merge: only `/mcp` is guarded.
    router
        .layer(axum::middleware::from_fn(move |request, next| {
            guard::require_token(guard.clone(), request, next)
        }))
        .merge(authorization_server_routes.with_state(issuer))
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
    if !issuer.settings.code {
        return Json(json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }));
    }
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": ["tools", "admin", "offline_access"],
        "authorization_response_iss_parameter_supported": true,
    }))
}

async fn revoke(State(issuer): State<Issuer>) -> StatusCode {
    {
        let mut tables = issuer.tables.lock().unwrap();
        tables.access.clear();
        for refresh in tables.refresh.values_mut() {
            refresh.live = false;
        }
    }
    issuer.log("revoke");
    StatusCode::NO_CONTENT
}
