//! `POST /token`. Every grant is appended to `--oauth-log`:
//!
//! - `grant_type=client_credentials` (the `--oauth-client` client only):
//!   `token <n> scope=<scope> resource=<resource> value=<access token>`;
//! - `grant_type=authorization_code` (`--oauth-code`):
//!   `token <n> grant=authorization_code client=<client id> scope=<scope>
//!   resource=<resource> value=<access token> refresh=<refresh token>`;
//! - `grant_type=refresh_token` (`--oauth-code`): the same with
//!   `grant=refresh_token` and the new refresh token. The one presented is
//!   spent: presenting it again is `invalid_grant`.
//!
//! `<n>` counts grants of every kind; an absent scope or resource is `-`.

use std::collections::HashMap;

use axum::{
    Form, Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{CODE_LIFETIME, Issuer, RefreshToken, oauth_error, random_hex};

pub(super) async fn token(
    State(issuer): State<Issuer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => client_credentials(&issuer, &headers, &form),
        Some("authorization_code") if issuer.settings.code => {
            authorization_code(&issuer, &headers, &form)
        }
        Some("refresh_token") if issuer.settings.code => refresh(&issuer, &headers, &form),
        // The answer from before `--oauth-code` existed.
        _ if !issuer.settings.code => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "unsupported_grant_type" })),
        )
            .into_response(),
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code, refresh_token or client_credentials",
        ),
    }
}

/// `(id, secret)` from `Authorization: Basic`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| {
            v.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        })
}

/// Answers exactly as before `--oauth-code` existed: tests parse its log line
/// and errors.
fn client_credentials(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let (id, secret) = match basic_credentials(headers) {
        Some(credentials) => credentials,
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    if id != issuer.settings.client_id || secret != issuer.settings.client_secret {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let scope = form.get("scope").map(String::as_str);
    let (n, token) = issuer.issue_access_token(scope);
    issuer.log(&format!(
        "token {n} scope={} resource={} value={token}",
        scope.unwrap_or("-"),
        form.get("resource").map(String::as_str).unwrap_or("-"),
    ));
    Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": issuer.settings.token_lifetime.as_secs(),
    }))
    .into_response()
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn invalid_request(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

fn authorization_code(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let client_id = match authenticate(issuer, headers, form) {
        Ok(client_id) => client_id,
        Err(refused) => return refused.into_response(),
    };
    let Some(code) = form.get("code") else {
        return invalid_request("code is required");
    };
    let Some(verifier) = form.get("code_verifier") else {
        return invalid_request("code_verifier is required (PKCE)");
    };
    let authorization = {
        let mut tables = issuer.tables.lock().unwrap();
        let Some(entry) = tables.codes.get_mut(code) else {
            return invalid_grant("unknown authorization code");
        };
        if entry.authorization.client_id != client_id {
            return invalid_grant("the authorization code was issued to another client");
        }
        if entry.used {
            return invalid_grant("the authorization code was already used");
        }
        // Spent by any attempt, so a wrong verifier cannot be retried.
        entry.used = true;
        if entry.created.elapsed() > CODE_LIFETIME {
            return invalid_grant("the authorization code expired");
        }
        entry.authorization.clone()
    };
    if form.get("redirect_uri") != Some(&authorization.redirect_uri) {
        return invalid_grant("redirect_uri differs from the one given to /authorize");
    }
    if !valid_verifier(verifier) {
        return invalid_grant("code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]");
    }
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier));
    if challenge != authorization.code_challenge {
        return invalid_grant("code_verifier does not match the code_challenge");
    }
    if authorization.resource.is_some() && form.get("resource") != authorization.resource.as_ref() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource differs from the one given to /authorize",
        );
    }
    let resource = authorization
        .resource
        .clone()
        .or_else(|| form.get("resource").cloned());
    grant(
        issuer,
        "authorization_code",
        client_id,
        authorization.scope,
        resource,
    )
}

fn refresh(issuer: &Issuer, headers: &HeaderMap, form: &HashMap<String, String>) -> Response {
    let client_id = match authenticate(issuer, headers, form) {
        Ok(client_id) => client_id,
        Err(refused) => return refused.into_response(),
    };
    let Some(presented) = form.get("refresh_token") else {
        return invalid_request("refresh_token is required");
    };
    let (scope, resource) = {
        let mut tables = issuer.tables.lock().unwrap();
        let Some(refresh) = tables.refresh.get_mut(presented) else {
            return invalid_grant("unknown refresh token");
        };
        if refresh.client_id != client_id {
            return invalid_grant("the refresh token was issued to another client");
        }
        if !refresh.live {
            return invalid_grant("the refresh token was revoked or already used");
        }
        if let (Some(asked), Some(granted)) = (form.get("resource"), &refresh.resource)
            && asked != granted
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "resource differs from the one originally granted",
            );
        }
        refresh.live = false;
        (refresh.scope.clone(), refresh.resource.clone())
    };
    grant(issuer, "refresh_token", client_id, scope, resource)
}

/// An access token and a fresh refresh token carrying `scope` and `resource`.
fn grant(
    issuer: &Issuer,
    kind: &str,
    client_id: String,
    scope: Option<String>,
    resource: Option<String>,
) -> Response {
    let (n, access) = issuer.issue_access_token(scope.as_deref());
    let refresh = format!("rt-{}", random_hex(32));
    issuer.tables.lock().unwrap().refresh.insert(
        refresh.clone(),
        RefreshToken {
            client_id: client_id.clone(),
            scope: scope.clone(),
            resource: resource.clone(),
            live: true,
        },
    );
    issuer.log(&format!(
        "token {n} grant={kind} client={client_id} scope={} resource={} value={access} \
         refresh={refresh}",
        scope.as_deref().unwrap_or("-"),
        resource.as_deref().unwrap_or("-"),
    ));
    let mut answer = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": issuer.settings.token_lifetime.as_secs(),
        "refresh_token": refresh,
    });
    if let Some(scope) = scope {
        answer["scope"] = json!(scope);
    }
    Json(answer).into_response()
}

/// RFC 7636 §4.1.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Why [`authenticate`] refused: kept small, unlike a [`Response`].
struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        oauth_error(self.status, self.error, self.description)
    }
}

/// The client a token request authenticates as (RFC 6749 §2.3), for the
/// grants other than client credentials: HTTP Basic or `client_secret` in the
/// body for confidential clients, only `client_id` for public ones.
fn authenticate(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<String, Refusal> {
    let refuse = |description| {
        Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description,
        })
    };
    let basic = basic_credentials(headers);
    if basic.is_some() && form.contains_key("client_secret") {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: "use one client authentication method, not both Basic and client_secret",
        });
    }
    let (id, secret) = match basic {
        Some((id, secret)) => {
            if form.get("client_id").is_some_and(|body_id| *body_id != id) {
                return refuse("client_id in the body differs from the Basic credentials");
            }
            (id, Some(secret))
        }
        None => match form.get("client_id") {
            Some(id) => (id.clone(), form.get("client_secret").cloned()),
            None => return refuse("no client authentication and no client_id"),
        },
    };
    let expected = if id == issuer.settings.client_id {
        Some(issuer.settings.client_secret.clone())
    } else {
        match issuer.tables.lock().unwrap().clients.get(&id) {
            Some(client) => client.secret.clone(),
            None => return refuse("unknown client"),
        }
    };
    match (expected, secret) {
        (Some(expected), Some(secret)) if expected == secret => Ok(id),
        (Some(_), Some(_)) => refuse("wrong client secret"),
        (Some(_), None) => refuse("this confidential client must authenticate"),
        (None, Some(_)) => refuse("this public client has no secret to send"),
        (None, None) => Ok(id),
    }
}
