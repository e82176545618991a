//! `GET /authorize` and `POST /authorize/consent` (`--oauth-code`).
//!
//! `/authorize` wants `client_id` (the `--oauth-client` one, which may use any
//! http(s) `redirect_uri`, or a registered one, which must use one of its
//! `redirect_uris` exactly) and `redirect_uri`; when either is wrong the
//! answer is a 400 page, never a redirect to an unverified URI. Then it wants
//! `response_type=code` (else `error=unsupported_response_type`),
//! `code_challenge` (43 base64url characters) and `code_challenge_method=S256`
//! (else `error=invalid_request`); `state`, `scope` and `resource` are
//! optional.
//!
//! A valid request is decided at once (302), or with `--oauth-consent` after
//! a page titled "Authorize mcpd" whose "Allow" button (`id="allow"`) posts
//! the hidden `request_id` to `/authorize/consent` (303). Allowed, the
//! redirect carries `code`, `state` and `iss`, the code is good for one use
//! within 10 minutes, and `authorize client=<client id> scope=<scope or ->
//! resource=<resource or -> redirect=<redirect_uri>` is logged. Denied (the
//! page's "Deny" button, `id="deny"`, or always with `--oauth-deny`), it
//! carries `error=access_denied`, `error_description=the user denied access`,
//! `state` and `iss`, and `deny client=<client id> redirect=<redirect_uri>`
//! is logged.

use std::{collections::HashMap, time::Instant};

use axum::{
    Form,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use super::{Authorization, CODE_LIFETIME, Code, Issuer, random_hex};

pub(super) async fn authorize(
    State(issuer): State<Issuer>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let authorization = match validate(&issuer, &query) {
        Ok(authorization) => authorization,
        Err(Refusal::Page(why)) => return bad_request(why),
        Err(Refusal::Redirect(error, description)) => {
            // `validate` verified both before refusing this way.
            let redirect_uri = query.get("redirect_uri").map_or("", String::as_str);
            let mut pairs = vec![("error", error), ("error_description", description)];
            if let Some(state) = query.get("state") {
                pairs.push(("state", state));
            }
            pairs.push(("iss", &issuer.base));
            return redirect(redirect_uri, &pairs, StatusCode::FOUND);
        }
    };
    if !issuer.settings.consent {
        return decide(&issuer, authorization, true, StatusCode::FOUND);
    }
    let request_id = random_hex(16);
    let page = consent_page(&authorization, &request_id);
    issuer
        .tables
        .lock()
        .unwrap()
        .pending
        .insert(request_id, (authorization, Instant::now()));
    Html(page).into_response()
}

pub(super) async fn consent(
    State(issuer): State<Issuer>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let pending = form
        .get("request_id")
        .and_then(|id| issuer.tables.lock().unwrap().pending.remove(id));
    let Some((authorization, shown)) = pending else {
        return bad_request("unknown or already answered request_id");
    };
    if shown.elapsed() > CODE_LIFETIME {
        return bad_request("the consent page expired");
    }
    let allow = form.get("decision").is_none_or(|d| d == "allow");
    decide(&issuer, authorization, allow, StatusCode::SEE_OTHER)
}

fn bad_request(why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("mcp-test-server: bad authorization request: {why}\n"),
    )
        .into_response()
}

/// Why [`validate`] refused a request: kept small, unlike a [`Response`].
enum Refusal {
    /// The client or redirect URI is not to be trusted: a page, no redirect.
    Page(&'static str),
    /// Sent back to the verified redirect URI as `error`,
    /// `error_description`.
    Redirect(&'static str, &'static str),
}

fn validate(issuer: &Issuer, query: &HashMap<String, String>) -> Result<Authorization, Refusal> {
    let Some(client_id) = query.get("client_id") else {
        return Err(Refusal::Page("client_id is required"));
    };
    let Some(redirect_uri) = query.get("redirect_uri") else {
        return Err(Refusal::Page("redirect_uri is required"));
    };
    if *client_id == issuer.settings.client_id {
        let acceptable = url::Url::parse(redirect_uri)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.fragment().is_none());
        if !acceptable {
            return Err(Refusal::Page(
                "redirect_uri must be an http(s) URL without fragment",
            ));
        }
    } else {
        let tables = issuer.tables.lock().unwrap();
        let Some(client) = tables.clients.get(client_id) else {
            return Err(Refusal::Page("unknown client_id"));
        };
        if !client.redirect_uris.contains(redirect_uri) {
            return Err(Refusal::Page(
                "redirect_uri is not one the client registered",
            ));
        }
    }
    if query.get("response_type").map(String::as_str) != Some("code") {
        return Err(Refusal::Redirect(
            "unsupported_response_type",
            "only response_type=code is supported",
        ));
    }
    let Some(code_challenge) = query.get("code_challenge") else {
        return Err(Refusal::Redirect(
            "invalid_request",
            "code_challenge is required (PKCE)",
        ));
    };
    if query.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return Err(Refusal::Redirect(
            "invalid_request",
            "code_challenge_method must be S256",
        ));
    }
    let well_formed = code_challenge.len() == 43
        && code_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(Refusal::Redirect(
            "invalid_request",
            "code_challenge must be 43 base64url characters (S256)",
        ));
    }
    let non_empty = |key: &str| query.get(key).filter(|v| !v.is_empty()).cloned();
    Ok(Authorization {
        client_id: client_id.clone(),
        redirect_uri: redirect_uri.clone(),
        code_challenge: code_challenge.clone(),
        scope: non_empty("scope"),
        resource: non_empty("resource"),
        state: query.get("state").cloned(),
    })
}

/// Sends the user agent back to the client with a code, or `access_denied`.
fn decide(
    issuer: &Issuer,
    authorization: Authorization,
    allow: bool,
    status: StatusCode,
) -> Response {
    let Authorization {
        client_id,
        redirect_uri,
        state,
        ..
    } = authorization.clone();
    if issuer.settings.deny || !allow {
        issuer.log(&format!("deny client={client_id} redirect={redirect_uri}"));
        let mut pairs = vec![
            ("error", "access_denied"),
            ("error_description", "the user denied access"),
        ];
        if let Some(state) = &state {
            pairs.push(("state", state));
        }
        pairs.push(("iss", &issuer.base));
        return redirect(&redirect_uri, &pairs, status);
    }
    let code = random_hex(32);
    issuer.log(&format!(
        "authorize client={client_id} scope={} resource={} redirect={redirect_uri}",
        authorization.scope.as_deref().unwrap_or("-"),
        authorization.resource.as_deref().unwrap_or("-"),
    ));
    issuer.tables.lock().unwrap().codes.insert(
        code.clone(),
        Code {
            authorization,
            created: Instant::now(),
            used: false,
        },
    );
    let mut pairs = vec![("code", code.as_str())];
    if let Some(state) = &state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", &issuer.base));
    redirect(&redirect_uri, &pairs, status)
}

/// `redirect_uri` (validated before) with `pairs` added to its query.
fn redirect(redirect_uri: &str, pairs: &[(&str, &str)], status: StatusCode) -> Response {
    let Ok(mut location) = url::Url::parse(redirect_uri) else {
        return bad_request("redirect_uri is not a URL");
    };
    location.query_pairs_mut().extend_pairs(pairs);
    (status, [(header::LOCATION, location.as_str())]).into_response()
}

fn consent_page(authorization: &Authorization, request_id: &str) -> String {
    let client = escape(&authorization.client_id);
    let scope = escape(authorization.scope.as_deref().unwrap_or("(none)"));
    let request_id = escape(request_id);
    format!(
        r#"<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Authorize mcpd</title></head>
<body>
<h1>Authorize mcpd</h1>
<p>Client <code id="client">{client}</code> asks for scope <code id="scope">{scope}</code>.</p>
<form method="post" action="/authorize/consent">
<input type="hidden" name="request_id" value="{request_id}">
<button type="submit" id="allow" name="decision" value="allow">Allow</button>
<button type="submit" id="deny" name="decision" value="deny">Deny</button>
</form>
</body>
</html>
"#
    )
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}
