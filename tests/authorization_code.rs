//! OAuth 2.1 authorization code flow with PKCE for remote MCP servers,
//! against a test server that is its own authorization server
//! (`mcp-test-server --oauth-client … --oauth-code`), on both backends: the
//! server waits for a person, the browser's return to mcpd's callback
//! finishes its registration, and later calls renew the tokens.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use mcpd::{
    manager::Limits,
    proto::{self, McpServerState, OAuth, create_mcp_server_request::Transport},
};
use tonic::Code;

backend_tests!(
    a_person_authorizes_and_the_server_is_registered,
    a_pre_registered_client_renews_its_tokens_until_revoked,
    refused_forged_and_stale_callbacks_change_nothing,
    an_expired_authorization_is_refused,
    a_tool_that_needs_more_scope_asks_for_it_once,
);

/// The one test with a real browser: headless Chromium opens the
/// authorization URL, a person's click on the consent page grants access,
/// and the browser lands on mcpd's callback page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_allows_access_in_a_real_browser() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _log) = protected_server(&dir, &["--oauth-consent"]).await;
    let pending = acme
        .create("in-a-browser", streamable_http(&server.url))
        .await
        .unwrap()
        .server
        .unwrap();

    let support = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    assert!(
        support.join("node_modules/playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "playwright-core or /usr/bin/chromium is missing: run the README's test command (scripts/test.sh installs both)"
    );
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("oauth-callback.png");
    let output = tokio::process::Command::new("node")
        .arg(support.join("authorize-in-browser.mjs"))
        .arg(&pending.authorization_url)
        .arg(&screenshot)
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let landed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let url = landed["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/oauth/callback?", daemon.http_addr)),
        "{landed}"
    );
    assert_eq!(landed["title"], "mcpd: Connected", "{landed}");
    let message = landed["message"].as_str().unwrap();
    assert!(
        message.contains(r#""in-a-browser": 2 tools registered"#),
        "{landed}"
    );
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 0);
    let ready = acme.get(&pending.id).await.unwrap();
    assert_eq!(ready.state(), McpServerState::Ready);
    assert_eq!(ready.tool_count, 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_replica_finishes_the_authorization() {
    let db = std::sync::Arc::new(TestDb::new(Backend::Postgres).await);
    let first = Daemon::start_on(db.clone(), DaemonOptions::default()).await;
    let second = Daemon::start_on(db.clone(), DaemonOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _log) = protected_server(&dir, &[]).await;
    let acme = first.org("acme").await;
    let pending = acme
        .create("replicated", streamable_http(&server.url))
        .await
        .unwrap()
        .server
        .unwrap();
    // Behind a load balancer the browser may reach the other replica.
    let back = redirect_of(&pending.authorization_url).await;
    let elsewhere = back.replacen(
        &first.http_addr.to_string(),
        &second.http_addr.to_string(),
        1,
    );
    assert_ne!(back, elsewhere);
    let (status, page) = open_in_browser(&elsewhere).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    // Both replicas see it ready, and the first calls with the tokens the
    // second obtained.
    assert_eq!(
        acme.get(&pending.id).await.unwrap().state(),
        McpServerState::Ready
    );
    let answer = acme.call_tool(call(&pending.id)).await.unwrap();
    assert!(!answer.is_error, "{answer:?}");
    // The first replica cannot use the same return again.
    let (status, _) = open_in_browser(&back).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    second.stop().await;
    first.stop().await;
}

const CLIENT: &str = "pre-registered";
const SECRET: &str = "pre-registered-s3cret";

/// A test server behind OAuth that also grants authorization codes.
async fn protected_server(
    dir: &tempfile::TempDir,
    extra: &[&str],
) -> (HttpTestServer, std::path::PathBuf) {
    let log = dir.path().join("oauth.log");
    let mut args = vec![
        "--tools".to_owned(),
        "2".to_owned(),
        "--oauth-client".to_owned(),
        format!("{CLIENT}:{SECRET}"),
        "--oauth-code".to_owned(),
        "--oauth-log".to_owned(),
        log.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    (HttpTestServer::start(args).await, log)
}

/// The authorization server's log (`register …`, `authorize …`, `token …`).
fn log_lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn pre_registered(url: &str) -> Transport {
    Transport::StreamableHttp(proto::StreamableHttpTransport {
        url: url.to_owned(),
        headers: Default::default(),
        oauth: Some(OAuth {
            client_id: CLIENT.to_owned(),
            client_secret: SECRET.to_owned(),
            ..Default::default()
        }),
    })
}

fn call(server_id: &str) -> proto::CallMcpToolRequest {
    proto::CallMcpToolRequest {
        server_id: server_id.to_owned(),
        tool_name: "tool_0000".to_owned(),
        arguments_json: r#"{"x":7}"#.to_owned(),
    }
}

/// What a browser does with an authorization URL when the authorization
/// server approves at once: follow every redirect, back to mcpd's callback.
async fn open_in_browser(url: &str) -> (reqwest::StatusCode, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// Where the authorization server sends the browser back to, without
/// going there.
async fn redirect_of(url: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FOUND);
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn a_person_authorizes_and_the_server_is_registered(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = protected_server(&dir, &[]).await;

    // No credentials given: the 401 starts the flow; nothing listed yet.
    let created = acme
        .create("protected", streamable_http(&server.url))
        .await
        .unwrap();
    assert!(created.tools.is_empty(), "{created:?}");
    let pending = created.server.unwrap();
    assert_eq!(pending.state(), McpServerState::AuthorizationPending);
    assert_eq!(pending.tool_count, 0);
    let url = pending.authorization_url.clone();
    let query = query_of(&url);
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["resource"], server.url);
    // The scope the resource offers, and offline_access because the
    // authorization server lists it (for a refresh token).
    assert_eq!(query["scope"], "tools offline_access");
    assert_eq!(
        query["redirect_uri"],
        format!("http://{}/oauth/callback", daemon.http_addr)
    );
    // Dynamic client registration, as a public client.
    assert!(query["client_id"].starts_with("dcr-"), "{query:?}");
    assert!(
        log_lines(&log)
            .iter()
            .any(|l| l.starts_with(&format!("register {} auth=none", query["client_id"]))),
        "{:?}",
        log_lines(&log)
    );
    // 128 bits or more of state; stored only as a hash.
    let state = &query["state"];
    assert!(state.len() >= 22, "{state}");
    let stored = daemon.registry().authorizations().await;
    assert_eq!(stored.len(), 1);
    assert!(!format!("{stored:?}").contains(state.as_str()));
    assert_eq!(acme.get(&pending.id).await.unwrap(), pending);

    // Calls wait for the authorization.
    let status = acme.call_tool(call(&pending.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("authorization_url"), "{status:?}");

    // The browser: the authorization server approves and sends it back to
    // mcpd, which exchanges the code, lists and stores the tools.
    let (status, page) = open_in_browser(&url).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    assert!(page.contains("Connected"), "{page}");
    assert!(page.contains("2 tools registered"), "{page}");
    let ready = acme.get(&pending.id).await.unwrap();
    assert_eq!(ready.state(), McpServerState::Ready, "{ready:?}");
    assert_eq!(ready.tool_count, 2);
    assert!(ready.authorization_url.is_empty());
    assert_eq!(ready.secret_names, ["oauth.tokens"]);
    assert_eq!(acme.tools(&pending.id).await.unwrap().len(), 2);
    assert!(daemon.registry().authorizations().await.is_empty());
    let grants: Vec<String> = log_lines(&log)
        .into_iter()
        .filter(|l| l.contains("grant=authorization_code"))
        .collect();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert!(
        grants[0].contains(&format!(
            "client={} scope=tools offline_access resource={}",
            query["client_id"], server.url
        )),
        "{grants:?}"
    );
    // The tokens are sealed: the stored row does not show them.
    let access = grants[0]
        .split(" value=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_owned();
    let rows = daemon.registry().servers("acme").await;
    assert!(!format!("{rows:?}").contains(&access), "{rows:?}");
    assert!(!format!("{ready:?}").contains(&access), "{ready:?}");

    let answer = acme.call_tool(call(&pending.id)).await.unwrap();
    assert!(!answer.is_error, "{answer:?}");

    // The same return once more: the state was used up.
    let (status, page) = open_in_browser(&url).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("unknown"), "{page}");
    assert_eq!(
        acme.get(&pending.id).await.unwrap().state(),
        McpServerState::Ready
    );
    daemon.stop().await;
}

async fn a_pre_registered_client_renews_its_tokens_until_revoked(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    // Tokens that expire at once: every call renews first.
    let (server, log) = protected_server(&dir, &["--token-lifetime-secs", "1"]).await;

    let created = acme
        .create("pre", pre_registered(&server.url))
        .await
        .unwrap();
    let pending = created.server.unwrap();
    assert_eq!(pending.secret_names, ["oauth.client_secret"]);
    assert_eq!(query_of(&pending.authorization_url)["client_id"], CLIENT);
    let (status, page) = open_in_browser(&pending.authorization_url).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    let ready = acme.get(&pending.id).await.unwrap();
    assert_eq!(ready.state(), McpServerState::Ready);
    assert_eq!(ready.secret_names, ["oauth.client_secret", "oauth.tokens"]);

    for round in 1..=2 {
        let answer = acme.call_tool(call(&pending.id)).await.unwrap();
        assert!(!answer.is_error, "{answer:?}");
        let refreshes = log_lines(&log)
            .iter()
            .filter(|l| l.contains(&format!("grant=refresh_token client={CLIENT}")))
            .count();
        assert_eq!(refreshes, round, "{:?}", log_lines(&log));
    }

    // The person revokes mcpd's access: the next renewal is refused for
    // good, the call says so, and the server shows why.
    let revoked = reqwest::Client::new()
        .post(server.url.replace("/mcp", "/oauth-test/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), reqwest::StatusCode::NO_CONTENT);
    let status = acme.call_tool(call(&pending.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("invalid_grant"), "{status:?}");
    let failed = acme.get(&pending.id).await.unwrap();
    assert_eq!(failed.state(), McpServerState::Error, "{failed:?}");
    assert!(
        failed.state_reason.contains("authorize mcpd again"),
        "{failed:?}"
    );
    let status = acme.call_tool(call(&pending.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("create it again"), "{status:?}");
    daemon.stop().await;
}

async fn refused_forged_and_stale_callbacks_change_nothing(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _log) = protected_server(&dir, &[]).await;
    let callback = format!("http://{}/oauth/callback", daemon.http_addr);

    // Forged or missing state: 400, nothing else happens; the query is not
    // reflected into the page.
    for query in [
        "?state=forged&code=x",
        "?code=x",
        "",
        "?state=%3Cscript%3E&code=%3Cb%3E",
    ] {
        let (status, page) = open_in_browser(&format!("{callback}{query}")).await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{query}: {page}");
        assert!(
            !page.contains("<script>") && !page.contains("<b>"),
            "{page}"
        );
    }

    // The authorization server says no: the server is in ERROR with its words.
    let (denying, _) = protected_server(&dir, &["--oauth-deny"]).await;
    let created = acme
        .create("denied", streamable_http(&denying.url))
        .await
        .unwrap();
    let id = created.server.unwrap().id;
    let (status, page) = open_in_browser(&acme.get(&id).await.unwrap().authorization_url).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{page}");
    let failed = acme.get(&id).await.unwrap();
    assert_eq!(failed.state(), McpServerState::Error);
    assert!(
        failed.state_reason.contains("access_denied")
            && failed.state_reason.contains("the user denied access"),
        "{failed:?}"
    );
    assert!(failed.authorization_url.is_empty());

    // A response naming another issuer (RFC 9207 mix-up): not used, no
    // token requested.
    let created = acme
        .create("mixed-up", streamable_http(&server.url))
        .await
        .unwrap();
    let id = created.server.unwrap().id;
    let back = redirect_of(&acme.get(&id).await.unwrap().authorization_url).await;
    let mut forged = url::Url::parse(&back).unwrap();
    let pairs: Vec<(String, String)> = forged
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "iss" {
                (k, "https://evil.example.com".to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let (status, page) = open_in_browser(forged.as_str()).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{page}");
    let failed = acme.get(&id).await.unwrap();
    assert_eq!(failed.state(), McpServerState::Error);
    assert!(
        failed.state_reason.contains("evil.example.com"),
        "{failed:?}"
    );
    // The genuine return comes too late: its state went with the first.
    let (status, _) = open_in_browser(&back).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(acme.get(&id).await.unwrap().state(), McpServerState::Error);

    // Closing a pending server drops its authorization with it.
    let created = acme
        .create("closed", streamable_http(&server.url))
        .await
        .unwrap();
    let pending = created.server.unwrap();
    acme.close(&pending.id).await.unwrap();
    assert!(daemon.registry().authorizations().await.is_empty());
    let (status, _) = open_in_browser(&pending.authorization_url).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    daemon.stop().await;
}

async fn an_expired_authorization_is_refused(backend: Backend) {
    let daemon = Daemon::start_with(
        backend,
        DaemonOptions {
            limits: Limits {
                authorization_ttl: Duration::ZERO,
                ..Limits::default()
            },
            ..Default::default()
        },
    )
    .await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = protected_server(&dir, &[]).await;
    let created = acme
        .create("slow-person", streamable_http(&server.url))
        .await
        .unwrap();
    let pending = created.server.unwrap();
    let (status, page) = open_in_browser(&pending.authorization_url).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("expired"), "{page}");
    // No code was exchanged; nobody can finish this authorization now, and
    // the server says so.
    let expired = acme.get(&pending.id).await.unwrap();
    assert_eq!(expired.state(), McpServerState::Error, "{expired:?}");
    assert!(
        expired.state_reason.contains("--oauth-state-ttl"),
        "{expired:?}"
    );
    assert!(expired.authorization_url.is_empty());
    // One that nobody even opened is swept the same way.
    let untouched = acme
        .create("never-opened", streamable_http(&server.url))
        .await
        .unwrap()
        .server
        .unwrap();
    assert_eq!(daemon.manager.sweep_authorizations().await.unwrap(), 1);
    let swept = acme.get(&untouched.id).await.unwrap();
    assert_eq!(swept.state(), McpServerState::Error, "{swept:?}");
    assert!(daemon.registry().authorizations().await.is_empty());
    assert!(
        !log_lines(&log).iter().any(|l| l.starts_with("token ")),
        "{:?}",
        log_lines(&log)
    );
    daemon.stop().await;
}

async fn a_tool_that_needs_more_scope_asks_for_it_once(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = protected_server(&dir, &["--oauth-tool-scope", "tool_0001=admin"]).await;
    let pending = acme
        .create("scoped", pre_registered(&server.url))
        .await
        .unwrap()
        .server
        .unwrap();
    let (status, page) = open_in_browser(&pending.authorization_url).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    let answer = acme.call_tool(call(&pending.id)).await.unwrap();
    assert!(!answer.is_error, "{answer:?}");

    // tool_0001 needs `admin`: the server says so (403 insufficient_scope),
    // and mcpd asks a person for everything granted so far plus admin.
    let mut admin_call = call(&pending.id);
    admin_call.tool_name = "tool_0001".to_owned();
    let status = acme.call_tool(admin_call.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains(r#"needs more permission (scope "admin")"#),
        "{status:?}"
    );
    let waiting = acme.get(&pending.id).await.unwrap();
    assert_eq!(waiting.state(), McpServerState::AuthorizationPending);
    assert_eq!(waiting.tool_count, 2, "its tools stay");
    let query = query_of(&waiting.authorization_url);
    let mut scopes: Vec<&str> = query["scope"].split(' ').collect();
    scopes.sort();
    assert_eq!(scopes, ["admin", "offline_access", "tools"]);
    assert_eq!(query["client_id"], CLIENT);

    let (status, page) = open_in_browser(&waiting.authorization_url).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    let ready = acme.get(&pending.id).await.unwrap();
    assert_eq!(ready.state(), McpServerState::Ready);
    assert_eq!(ready.tool_count, 2);
    let answer = acme.call_tool(admin_call).await.unwrap();
    assert!(!answer.is_error, "{answer:?}");
    let authorizations = log_lines(&log)
        .into_iter()
        .filter(|l| l.starts_with("authorize "))
        .count();
    assert_eq!(authorizations, 2, "{:?}", log_lines(&log));
    daemon.stop().await;
}
