//! OAuth 2.1 for remote MCP servers, machine to machine: the client
//! credentials grant against a test server that is its own authorization
//! server (`mcp-test-server --oauth-client`), on both backends.

mod common;

use std::time::Duration;

use common::*;
use mcpd::proto::{
    self, ClientCredentials, OAuth, PrivateKeyJwt, client_credentials::Credential,
    create_mcp_server_request::Transport,
};
use tonic::Code;

backend_tests!(
    client_credentials_get_tokens_without_a_browser,
    expired_tokens_are_replaced_and_the_call_goes_through,
);

const CLIENT: &str = "mcpd-test";
const SECRET: &str = "s3cret-value";

fn with_oauth(url: &str, secret: &str) -> Transport {
    Transport::StreamableHttp(proto::StreamableHttpTransport {
        url: url.to_owned(),
        headers: Default::default(),
        oauth: Some(OAuth {
            client_credentials: Some(ClientCredentials {
                client_id: CLIENT.to_owned(),
                credential: Some(Credential::ClientSecret(secret.to_owned())),
            }),
            scopes: Vec::new(),
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

/// The authorization server's grants so far
/// (`token <n> scope=… resource=… value=…`).
fn grants(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn protected_server(
    dir: &tempfile::TempDir,
    lifetime_secs: u64,
) -> (HttpTestServer, std::path::PathBuf) {
    let log = dir.path().join("grants.log");
    let server = HttpTestServer::start([
        "--tools".to_owned(),
        "2".to_owned(),
        "--oauth-client".to_owned(),
        format!("{CLIENT}:{SECRET}"),
        "--token-lifetime-secs".to_owned(),
        lifetime_secs.to_string(),
        "--oauth-log".to_owned(),
        log.to_string_lossy().into_owned(),
    ])
    .await;
    (server, log)
}

async fn client_credentials_get_tokens_without_a_browser(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = protected_server(&dir, 3600).await;

    // Without credentials the server is refused with a reason, not retried.
    let status = acme
        .create("no-oauth", streamable_http(&server.url))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("HTTP 401"), "{status:?}");

    // A wrong secret: the authorization server says no, nothing is stored.
    let status = acme
        .create("wrong-secret", with_oauth(&server.url, "not-the-secret"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("invalid_client"), "{status:?}");
    assert!(!status.message().contains("not-the-secret"), "{status:?}");
    assert!(daemon.registry().servers("acme").await.is_empty());
    assert!(grants(&log).is_empty());

    // Discovery from the challenge, one grant, tools listed with the token.
    let created = acme
        .create("protected", with_oauth(&server.url, SECRET))
        .await
        .unwrap();
    assert_eq!(created.tools.len(), 2, "{created:?}");
    let stored = created.server.unwrap();
    assert_eq!(stored.secret_names, ["oauth.client_secret"]);
    let seen = grants(&log);
    assert_eq!(seen.len(), 1, "{seen:?}");
    // The resource indicator is the server's URL (RFC 8707), the scope the
    // one the server's metadata offers.
    assert!(
        seen[0].starts_with(&format!(
            "token 1 scope=tools resource={} value=",
            server.url
        )),
        "{seen:?}"
    );

    // Calls reuse the token while it is valid: no new grant.
    for _ in 0..3 {
        let answer = acme
            .raw()
            .call_mcp_tool(acme.req(call(&stored.id)))
            .await
            .unwrap()
            .into_inner();
        assert!(!answer.is_error, "{answer:?}");
    }
    assert_eq!(grants(&log).len(), 1);

    // Nothing secret comes back.
    let got = acme
        .raw()
        .get_mcp_server(acme.req(proto::GetMcpServerRequest {
            server_id: stored.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!format!("{got:?}").contains(SECRET));
    acme.close(&stored.id).await.unwrap();
    daemon.stop().await;
}

/// Tokens that live one second: the live session's token expires between
/// calls, the server refuses it, and mcpd gets a new one and retries on a
/// fresh session (the refused request was never run).
async fn expired_tokens_are_replaced_and_the_call_goes_through(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (server, log) = protected_server(&dir, 1).await;
    let id = acme
        .create("short-lived", with_oauth(&server.url, SECRET))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    acme.raw().call_mcp_tool(acme.req(call(&id))).await.unwrap();
    let before = grants(&log).len();
    // Call until the live session's token has expired and been replaced:
    // every call on the way must go through.
    wait_until(
        "a new token to be granted after the last one expired",
        Duration::from_secs(15),
        async || {
            let answer = acme
                .raw()
                .call_mcp_tool(acme.req(call(&id)))
                .await
                .expect("an expired token is replaced, not reported")
                .into_inner();
            assert!(!answer.is_error, "{answer:?}");
            grants(&log).len() > before
        },
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_settings_are_checked() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let base = |oauth: OAuth| {
        Transport::StreamableHttp(proto::StreamableHttpTransport {
            url: "http://127.0.0.1:9/mcp".to_owned(),
            headers: Default::default(),
            oauth: Some(oauth),
        })
    };
    let credentials = |credential: Credential| ClientCredentials {
        client_id: CLIENT.to_owned(),
        credential: Some(credential),
    };
    let cases = [
        (
            base(OAuth {
                client_credentials: Some(ClientCredentials {
                    client_id: String::new(),
                    credential: Some(Credential::ClientSecret(SECRET.into())),
                }),
                scopes: vec![],
                ..Default::default()
            }),
            "client_id is required",
        ),
        (
            base(OAuth {
                client_credentials: Some(credentials(Credential::PrivateKeyJwt(PrivateKeyJwt {
                    private_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
                    algorithm: "HS256".into(),
                }))),
                scopes: vec![],
                ..Default::default()
            }),
            "must be one of RS256",
        ),
        (
            base(OAuth {
                client_credentials: Some(credentials(Credential::ClientSecret(SECRET.into()))),
                scopes: vec!["two words".into()],
                ..Default::default()
            }),
            "is not a scope",
        ),
        (
            base(OAuth {
                client_secret: "s3cret".into(),
                ..Default::default()
            }),
            "client_secret needs its client_id",
        ),
        (
            base(OAuth {
                client_credentials: Some(credentials(Credential::ClientSecret(SECRET.into()))),
                client_id: "also-this".into(),
                ..Default::default()
            }),
            "not both",
        ),
        (
            base(OAuth {
                client_id: "has space".into(),
                ..Default::default()
            }),
            "oauth.client_id must be at most 256 visible ASCII characters",
        ),
        (
            with_oauth("http://127.0.0.1:9/mcp", SECRET).with("Authorization", "Bearer x"),
            "either an Authorization header or oauth",
        ),
    ];
    for (transport, expected) in cases {
        let status = acme.create("bad-oauth", transport).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "{expected}: {status:?}"
        );
        assert!(!status.message().contains(SECRET), "{status:?}");
    }
    daemon.stop().await;
}

/// Metadata documents are attacker-controlled input: a challenge naming a
/// metadata URL the outbound policy refuses (here a loopback address other
/// than the one allowed) is never fetched, and the create fails with the
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_urls_go_through_the_outbound_policy() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let daemon = Daemon::start_with(
        Backend::Sqlite,
        DaemonOptions {
            mcp: mcpd::mcp::McpSettings {
                outbound: mcpd::mcp::outbound::OutboundPolicy::new(
                    &["127.0.0.1/32".to_owned()],
                    &[],
                )
                .unwrap(),
                ..test_mcp_settings()
            },
            ..DaemonOptions::default()
        },
    )
    .await;
    let acme = daemon.org("acme").await;
    // Where the challenge points: it counts connections and answers none.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = elsewhere.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let server = HttpTestServer::start([
        "--oauth-client".to_owned(),
        format!("{CLIENT}:{SECRET}"),
        "--resource-metadata-url".to_owned(),
        format!("http://{elsewhere_addr}/.well-known/oauth-protected-resource/mcp"),
    ])
    .await;
    let status = acme
        .create("pointed-elsewhere", with_oauth(&server.url, SECRET))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("127.0.0.2") && status.message().contains("--outbound-allow"),
        "the refused address and the setting are named: {status:?}"
    );
    // The same for the authorization code flow (no oauth block).
    let status = acme
        .create("pointed-elsewhere", streamable_http(&server.url))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("127.0.0.2") && status.message().contains("--outbound-allow"),
        "the refused address and the setting are named: {status:?}"
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the refused address was contacted"
    );
    assert!(daemon.registry().servers("acme").await.is_empty());
    assert!(daemon.registry().authorizations().await.is_empty());
    daemon.stop().await;
}
