//! The authorization code grant with PKCE (MCP authorization spec).
//!
//! The front half comes from rmcp: discovery from the server's challenge
//! (protected resource metadata, authorization server metadata with its
//! fallbacks and issuer checks), scope selection, dynamic client
//! registration, and the authorization URL with its PKCE challenge and
//! `state`. The back half is written here: the code exchange and the
//! refresh. An rmcp `AuthorizationManager` lives in one process's memory,
//! but a browser may come back to another replica; everything the exchange
//! needs is therefore taken out of rmcp when the URL is made (the verifier
//! through a capturing state store, the resource indicator from the URL)
//! and sealed in the database until the callback.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use base64::Engine;
use rmcp::transport::{
    AuthError, AuthorizationManager,
    auth::{OAuthClientConfig, StateStore, StoredAuthorizationState},
};
use serde::Deserialize;

use super::{OAuthSettings, http::PolicedHttp};
use crate::{
    mcp::describe,
    model::{
        AuthorizationFlow, AuthorizationStart, OAuth, OAuthGrant, TokenAuthMethod, TokenEndpoint,
    },
};

/// Discovers the server's authorization server from its 401 `challenge`,
/// obtains a client identity (pre-registered, a client ID metadata
/// document, or dynamic registration, in the spec's order) and makes the
/// URL a person opens. `also_scopes` are asked for on top of the usual
/// selection (a step-up). The error says, in words, which step failed.
pub(super) async fn begin(
    http: Arc<PolicedHttp>,
    server: &url::Url,
    challenge: &str,
    oauth: &OAuth,
    also_scopes: &[String],
    settings: &OAuthSettings,
) -> Result<AuthorizationStart, String> {
    let quoted = |e: AuthError| describe::quoted(&e.to_string());
    let mut manager = AuthorizationManager::new_with_oauth_http_client(server.as_str(), http)
        .await
        .map_err(|e| format!("OAuth set-up failed: {}", quoted(e)))?;
    let metadata = manager
        .resolve_metadata_from_challenge(Some(challenge))
        .await
        .map_err(|e| {
            format!(
                "could not discover the server's authorization server: {}",
                quoted(e)
            )
        })?
        .metadata;
    manager.set_metadata(metadata.clone());

    let mut scopes = if oauth.scopes.is_empty() {
        manager.select_initial_scopes(&[]).await
    } else {
        oauth.scopes.clone()
    };
    for scope in also_scopes {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let redirect_uri = settings.redirect_uri.to_string();

    let advertises = |field: &str| {
        metadata
            .additional_fields
            .get(field)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    };
    let client = if let Some(client) = &oauth.client {
        let mut config = OAuthClientConfig::new(&client.client_id, &redirect_uri);
        config.client_secret = client.client_secret.clone();
        manager
            .configure_client(config.with_scopes(scopes.clone()))
            .map_err(|e| format!("the pre-registered client was refused: {}", quoted(e)))?;
        (client.client_id.clone(), client.client_secret.clone())
    } else if let (true, Some(document)) = (
        advertises("client_id_metadata_document_supported"),
        &settings.client_metadata_url,
    ) {
        let config = OAuthClientConfig::new(document.as_str(), &redirect_uri);
        manager
            .configure_client(config.with_scopes(scopes.clone()))
            .map_err(|e| format!("the client ID metadata document was refused: {}", quoted(e)))?;
        (document.to_string(), None)
    } else {
        let registered = manager
            .register_client(&settings.client_name, &redirect_uri, &scope_refs)
            .await
            .map_err(|e| {
                format!(
                    "the authorization server did not register mcpd as a client (pass a pre-registered oauth.client_id instead): {}",
                    quoted(e)
                )
            })?;
        (registered.client_id, registered.client_secret)
    };

    let captured = CapturedState::default();
    manager.set_state_store(captured.clone());
    let url = manager
        .get_authorization_url(&scope_refs)
        .await
        .map_err(|e| format!("could not make the authorization URL: {}", quoted(e)))?;
    let state = captured
        .0
        .lock()
        .ok()
        .and_then(|mut held| held.take())
        .ok_or("rmcp made an authorization URL without keeping its state")?;
    // The token requests must name the resource exactly as the
    // authorization request did (RFC 8707).
    let resource = url::Url::parse(&url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "resource")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_else(|| server.to_string());
    let (client_id, client_secret) = client;
    let methods: Option<Vec<String>> = metadata
        .additional_fields
        .get("token_endpoint_auth_methods_supported")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    Ok(AuthorizationStart {
        url,
        state: state.csrf_token.clone(),
        flow: AuthorizationFlow {
            endpoint: TokenEndpoint {
                url: metadata.token_endpoint.clone(),
                auth_method: auth_method(client_secret.is_some(), methods.as_deref()),
                client_id,
                client_secret,
                resource,
                issuer: state.expected_issuer.clone(),
            },
            scopes,
            redirect_uri,
            pkce_verifier: state.pkce_verifier.clone(),
            require_issuer: state.require_issuer,
            reauthorize: false,
            step_ups: 0,
        },
    })
}

/// How to authenticate at the token endpoint: with a secret, Basic unless
/// the server lists only the body (RFC 8414: Basic is the default when it
/// lists nothing); without one, as a public client.
fn auth_method(has_secret: bool, advertised: Option<&[String]>) -> TokenAuthMethod {
    if !has_secret {
        return TokenAuthMethod::None;
    }
    let Some(methods) = advertised else {
        return TokenAuthMethod::Basic;
    };
    let offers = |m: &str| methods.iter().any(|x| x == m);
    if offers("client_secret_basic") {
        TokenAuthMethod::Basic
    } else if offers("client_secret_post") {
        TokenAuthMethod::Post
    } else if offers("none") {
        TokenAuthMethod::None
    } else {
        TokenAuthMethod::Basic
    }
}

/// rmcp hands the PKCE verifier and `state` to its state store; this one
/// keeps them for mcpd to seal in the database.
#[derive(Clone, Default)]
struct CapturedState(Arc<Mutex<Option<StoredAuthorizationState>>>);

#[async_trait::async_trait]
impl StateStore for CapturedState {
    async fn save(&self, _csrf: &str, state: StoredAuthorizationState) -> Result<(), AuthError> {
        if let Ok(mut held) = self.0.lock() {
            *held = Some(state);
        }
        Ok(())
    }

    async fn load(&self, _csrf: &str) -> Result<Option<StoredAuthorizationState>, AuthError> {
        Ok(None)
    }

    async fn delete(&self, _csrf: &str) -> Result<(), AuthError> {
        Ok(())
    }
}

/// Why a token request got no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The authorization server said no (RFC 6749 §5.2): `invalid_grant`
    /// means the code or refresh token is no longer good.
    #[error("the authorization server refused the token request: {error}{}", describe_detail(.description))]
    Refused {
        error: String,
        description: Option<String>,
    },
    /// No answer, or not one that makes sense.
    #[error("the token request failed: {0}")]
    Failed(String),
}

fn describe_detail(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(" ({})", describe::quoted(d)))
        .unwrap_or_default()
}

/// Exchanges the authorization `code` for tokens.
pub(super) async fn exchange(
    http: &PolicedHttp,
    flow: &AuthorizationFlow,
    code: &str,
) -> Result<OAuthGrant, TokenError> {
    let answer = request(
        http,
        &flow.endpoint,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &flow.redirect_uri),
            ("code_verifier", &flow.pkce_verifier),
        ],
    )
    .await?;
    Ok(OAuthGrant {
        endpoint: flow.endpoint.clone(),
        scopes: flow.scopes.clone(),
        expires_at: answer.expires_at(),
        access_token: answer.access_token,
        refresh_token: answer.refresh_token,
        step_ups: flow.step_ups,
    })
}

/// Renews `grant` with its refresh token. A rotated refresh token replaces
/// the old one; an answer without one keeps it (RFC 6749 §6).
pub(super) async fn refresh(
    http: &PolicedHttp,
    grant: &OAuthGrant,
) -> Result<OAuthGrant, TokenError> {
    let Some(refresh_token) = grant.refresh_token.as_deref() else {
        return Err(TokenError::Refused {
            error: "no refresh token".into(),
            description: Some("the authorization server granted none".into()),
        });
    };
    let answer = request(
        http,
        &grant.endpoint,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await?;
    Ok(OAuthGrant {
        endpoint: grant.endpoint.clone(),
        scopes: grant.scopes.clone(),
        expires_at: answer.expires_at(),
        access_token: answer.access_token,
        refresh_token: answer.refresh_token.or_else(|| grant.refresh_token.clone()),
        step_ups: grant.step_ups,
    })
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

impl TokenAnswer {
    fn expires_at(&self) -> Option<SystemTime> {
        self.expires_in
            .map(|secs| SystemTime::now() + Duration::from_secs(secs))
    }
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// One token request: the client authenticated as the endpoint says, the
/// resource indicator always sent, redirects never followed.
async fn request(
    http: &PolicedHttp,
    endpoint: &TokenEndpoint,
    params: &[(&str, &str)],
) -> Result<TokenAnswer, TokenError> {
    let request = token_request(endpoint, params)?;
    let target = url::Url::parse(&endpoint.url)
        .map(|u| describe::target_of(&u))
        .unwrap_or_else(|_| endpoint.url.clone());
    let response = http.send(request, false, None).await.map_err(|e| {
        TokenError::Failed(format!("{target}: {}", describe::quoted(&e.to_string())))
    })?;
    let status = response.status();
    if status.is_success() {
        let answer: TokenAnswer = serde_json::from_slice(response.body()).map_err(|e| {
            TokenError::Failed(format!("{target} answered with no usable token: {e}"))
        })?;
        if !answer.token_type.is_empty() && !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Failed(format!(
                "{target} granted a {:?} token; mcpd sends bearer tokens only",
                answer.token_type
            )));
        }
        return Ok(answer);
    }
    match serde_json::from_slice::<ErrorAnswer>(response.body()) {
        Ok(refusal) => Err(TokenError::Refused {
            error: describe::quoted(&refusal.error),
            description: refusal.error_description,
        }),
        Err(_) => Err(TokenError::Failed(format!(
            "{target} answered HTTP {status}"
        ))),
    }
}

/// The POST of one token request (the form serializer is not `Send`, so it
/// lives outside the future).
fn token_request(
    endpoint: &TokenEndpoint,
    params: &[(&str, &str)],
) -> Result<http::Request<Vec<u8>>, TokenError> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.extend_pairs(params.iter().copied());
    form.append_pair("resource", &endpoint.resource);
    let mut builder = http::Request::post(&endpoint.url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    match (endpoint.auth_method, endpoint.client_secret.as_deref()) {
        (TokenAuthMethod::Basic, Some(secret)) => {
            // RFC 6749 §2.3.1: each part form-encoded before Basic.
            let encode =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(&endpoint.client_id), encode(secret));
            builder = builder.header(
                http::header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            );
        }
        (TokenAuthMethod::Post, Some(secret)) => {
            form.append_pair("client_id", &endpoint.client_id);
            form.append_pair("client_secret", secret);
        }
        _ => {
            form.append_pair("client_id", &endpoint.client_id);
        }
    }
    builder
        .body(form.finish().into_bytes())
        .map_err(|e| TokenError::Failed(format!("the token endpoint URL is unusable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_go_where_the_server_wants_them() {
        let list = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(auth_method(false, None), TokenAuthMethod::None);
        assert_eq!(auth_method(true, None), TokenAuthMethod::Basic);
        assert_eq!(
            auth_method(true, Some(&list(&["client_secret_post"]))),
            TokenAuthMethod::Post
        );
        assert_eq!(
            auth_method(
                true,
                Some(&list(&["client_secret_post", "client_secret_basic"]))
            ),
            TokenAuthMethod::Basic
        );
        assert_eq!(
            auth_method(true, Some(&list(&["none"]))),
            TokenAuthMethod::None
        );
    }
}
