//! OAuth 2.1 for remote MCP servers (the MCP authorization spec): access
//! tokens for the sessions mcpd opens.
//!
//! - Client credentials (machine to machine): tokens live in memory only,
//!   by server; they are obtained again when they expire or the server
//!   refuses them (the grant needs nothing but the sealed client secret).
//! - Authorization code with PKCE ([`authorization_code`]): a person grants
//!   access in a browser; the tokens (a grant) are sealed in the database
//!   with the server's transport, and renewed with the refresh token.

mod authorization_code;
mod client_credentials;
mod http;

use std::{collections::HashMap, sync::Arc, time::Duration};

use rmcp::transport::{OAuthHttpClient, WWWAuthenticateParams};

use crate::model::{AuthorizationFlow, AuthorizationStart, OAuthGrant};
use tokio::time::Instant;

use super::{describe, live::ServerKey, outbound::OutboundPolicy};
use crate::model::OAuth;

pub use authorization_code::TokenError;
pub(crate) use http::PolicedHttp;

/// The scopes a `WWW-Authenticate` challenge says are missing, when it is
/// an `insufficient_scope` refusal (RFC 6750 §3.1).
pub fn insufficient_scope(challenge: &str) -> Option<Vec<String>> {
    // The base URL only resolves a relative resource_metadata; unused here.
    let base = url::Url::parse("http://mcp.invalid/").ok()?;
    let params = WWWAuthenticateParams::parse(challenge, &base);
    params.is_insufficient_scope().then(|| {
        params
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    })
}

/// Where the authorization code flow sends browsers back to, and how mcpd
/// introduces itself to authorization servers.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// `<public URL>/oauth/callback`, exactly.
    pub redirect_uri: url::Url,
    /// mcpd's client ID metadata document, used as its client id where the
    /// authorization server supports that (it must be https).
    pub client_metadata_url: Option<url::Url>,
    /// The `client_name` of dynamic registrations.
    pub client_name: String,
}

/// An access token. `Debug` does not show it.
#[derive(Clone)]
pub(super) struct Token {
    pub(super) access: String,
    pub(super) expires_at: Option<Instant>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A token this close to its expiry is not used for a new session.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

impl Token {
    fn fresh(&self) -> bool {
        self.expires_at
            .is_none_or(|at| at.saturating_duration_since(Instant::now()) > EXPIRY_MARGIN)
    }
}

/// Obtains and keeps tokens. Cheap to clone.
#[derive(Clone)]
pub(super) struct OAuthClient {
    http: Arc<PolicedHttp>,
    policy: OutboundPolicy,
    tokens: Arc<std::sync::Mutex<HashMap<ServerKey, Token>>>,
}

impl OAuthClient {
    pub(super) fn new(http: PolicedHttp) -> Self {
        OAuthClient {
            policy: http.policy().clone(),
            http: Arc::new(http),
            tokens: Arc::default(),
        }
    }

    /// The token to open a session with, if one is held and not about to
    /// expire.
    pub(super) fn token(&self, key: &ServerKey) -> Option<Token> {
        let tokens = self.tokens.lock().ok()?;
        tokens.get(key).filter(|t| t.fresh()).cloned()
    }

    /// Gets a new token (the server refused the last one, or there was
    /// none) and keeps it. The error says why none was granted.
    pub(super) async fn renew(
        &self,
        key: &ServerKey,
        server: &url::Url,
        challenge: Option<&str>,
        oauth: &OAuth,
    ) -> Result<Token, String> {
        self.forget(key);
        let Some(credentials) = &oauth.client_credentials else {
            return Err("no OAuth client credentials are configured for this server".into());
        };
        self.check_challenge(server, challenge).await?;
        // rmcp 3.11's token request future is not `Send` (its JWT branch
        // keeps a form serializer across an await), so it cannot run on the
        // daemon's tasks: it runs on a blocking thread of its own, driven by
        // the runtime's handle (its I/O still runs on the runtime).
        let http: Arc<dyn OAuthHttpClient> = self.http.clone();
        let server = server.clone();
        let challenge = challenge.map(str::to_owned);
        let credentials = credentials.clone();
        let scopes = oauth.scopes.clone();
        let runtime = tokio::runtime::Handle::current();
        let token = tokio::task::spawn_blocking(move || {
            runtime.block_on(client_credentials::obtain(
                http,
                &server,
                challenge.as_deref(),
                &credentials,
                &scopes,
            ))
        })
        .await
        .map_err(|e| format!("the token request failed: {e}"))??;
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(key.clone(), token.clone());
        }
        Ok(token)
    }

    /// Every request of the OAuth machinery goes through the policy anyway;
    /// checking the metadata URL a challenge names first gives the refusal
    /// in words, before anything is fetched.
    async fn check_challenge(
        &self,
        server: &url::Url,
        challenge: Option<&str>,
    ) -> Result<(), String> {
        if let Some(metadata) = challenge
            .map(|header| WWWAuthenticateParams::parse(header, server))
            .and_then(|params| params.resource_metadata_url)
            && let Err(refusal) = self.policy.check_url(&metadata).await
        {
            return Err(format!(
                "its challenge points at metadata on {}, which is refused: {refusal}; the operator sets --outbound-allow / --outbound-deny",
                describe::target_of(&metadata)
            ));
        }
        Ok(())
    }

    /// Starts an authorization code flow for the server at `server`, which
    /// answered with `challenge`.
    pub(super) async fn begin(
        &self,
        server: &url::Url,
        challenge: &str,
        oauth: &OAuth,
        also_scopes: &[String],
        settings: &OAuthSettings,
    ) -> Result<AuthorizationStart, String> {
        self.check_challenge(server, Some(challenge)).await?;
        authorization_code::begin(
            self.http.clone(),
            server,
            challenge,
            oauth,
            also_scopes,
            settings,
        )
        .await
    }

    pub(super) async fn exchange(
        &self,
        flow: &AuthorizationFlow,
        code: &str,
    ) -> Result<OAuthGrant, TokenError> {
        authorization_code::exchange(&self.http, flow, code).await
    }

    pub(super) async fn refresh(&self, grant: &OAuthGrant) -> Result<OAuthGrant, TokenError> {
        authorization_code::refresh(&self.http, grant).await
    }

    /// Drops the server's token (closed, or refused).
    pub(super) fn forget(&self, key: &ServerKey) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(key);
        }
    }
}
