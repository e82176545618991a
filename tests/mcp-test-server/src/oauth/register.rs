//! `POST /register` (`--oauth-code`): dynamic client registration (RFC 7591).
//!
//! The JSON body needs `redirect_uris`, a non-empty array of absolute URLs
//! without fragment (else 400 `invalid_redirect_uri`), and may carry
//! `token_endpoint_auth_method` (`client_secret_basic`, the default,
//! `client_secret_post`, or `none` for a public client without secret),
//! `grant_types` (only `authorization_code` and `refresh_token`, the default
//! being both), `client_name` and `scope`; anything else wrong is 400
//! `invalid_client_metadata`. The answer is 201 with the metadata and a new
//! `client_id` (and `client_secret` unless `none`), logged as
//! `register <client_id> auth=<method> redirect=<first redirect uri>`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{Client, Issuer, oauth_error, random_hex};

const AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "none"];
const GRANT_TYPES: [&str; 2] = ["authorization_code", "refresh_token"];

pub(super) async fn register(State(issuer): State<Issuer>, body: Bytes) -> Response {
    let metadata = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(metadata)) => metadata,
        _ => return invalid_metadata("the body must be a JSON object"),
    };
    let redirect_uris = match metadata.get("redirect_uris").and_then(Value::as_array) {
        Some(uris) if !uris.is_empty() => uris,
        _ => return invalid_metadata("redirect_uris must be a non-empty array"),
    };
    let mut redirects = Vec::with_capacity(redirect_uris.len());
    for uri in redirect_uris {
        let Some(uri) = uri.as_str() else {
            return invalid_metadata("redirect_uris must hold strings");
        };
        match url::Url::parse(uri) {
            Ok(parsed) if parsed.fragment().is_none() => redirects.push(uri.to_owned()),
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_redirect_uri",
                    &format!("not an absolute URL without fragment: {uri}"),
                );
            }
        }
    }
    let method = match metadata.get("token_endpoint_auth_method") {
        None => "client_secret_basic",
        Some(method) => match method.as_str() {
            Some(method) if AUTH_METHODS.contains(&method) => method,
            _ => {
                return invalid_metadata(
                    "token_endpoint_auth_method must be client_secret_basic, \
                     client_secret_post or none",
                );
            }
        },
    };
    let grant_types = match metadata.get("grant_types") {
        None => GRANT_TYPES.iter().map(|g| json!(g)).collect(),
        Some(Value::Array(grants))
            if grants
                .iter()
                .all(|g| g.as_str().is_some_and(|g| GRANT_TYPES.contains(&g))) =>
        {
            grants.clone()
        }
        Some(_) => {
            return invalid_metadata(
                "grant_types may only hold authorization_code and refresh_token",
            );
        }
    };
    for field in ["client_name", "scope"] {
        if metadata.get(field).is_some_and(|v| !v.is_string()) {
            return invalid_metadata(&format!("{field} must be a string"));
        }
    }

    let secret = (method != "none").then(|| random_hex(32));
    let client_id = {
        let mut tables = issuer.tables.lock().unwrap();
        tables.registered += 1;
        let client_id = format!("dcr-{}-{}", tables.registered, random_hex(8));
        tables.clients.insert(
            client_id.clone(),
            Client {
                secret: secret.clone(),
                redirect_uris: redirects.clone(),
            },
        );
        client_id
    };
    issuer.log(&format!(
        "register {client_id} auth={method} redirect={}",
        redirects[0]
    ));

    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut answer = json!({
        "client_id": client_id,
        "client_id_issued_at": issued_at,
        "redirect_uris": redirects,
        "token_endpoint_auth_method": method,
        "grant_types": grant_types,
        "response_types": ["code"],
    });
    if let Some(secret) = secret {
        answer["client_secret"] = json!(secret);
        // RFC 7591 §3.2.1: required with a secret; 0 is "never".
        answer["client_secret_expires_at"] = json!(0);
    }
    for field in ["client_name", "scope"] {
        if let Some(value) = metadata.get(field) {
            answer[field] = value.clone();
        }
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

fn invalid_metadata(description: &str) -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_client_metadata",
        description,
    )
}
