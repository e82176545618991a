//! The fault suite: each test injects a fault production will bring and
//! asserts that nothing is lost and nothing is leaked.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use mcpd::{
    proto::{self, create_mcp_server_request::Transport},
    store::DatabaseUrl,
};
use tonic::Code;

backend_tests!(
    hanging_server_holds_no_connection_while_others_work,
    crash_mid_listing_is_unavailable_and_reaped,
    malformed_json_rpc_is_unavailable_and_reaped,
    concurrent_creates_never_see_database_is_locked,
);

fn fast(pool_size: u32) -> DaemonOptions {
    let mut mcp = test_mcp_settings();
    mcp.connect_timeout = Duration::from_secs(3);
    mcp.list_timeout = Duration::from_secs(3);
    mcp.teardown_grace = Duration::from_millis(300);
    DaemonOptions {
        pool_size,
        pool_timeout: Duration::from_secs(10),
        mcp,
        ..Default::default()
    }
}

/// Every server's stored tool count matches the tools it really has, and
/// none exists half-written.
async fn assert_consistent(daemon: &Daemon, org: &str, tools_each: u32) -> usize {
    let mut client = daemon.client().await;
    let servers = daemon.servers(org).await;
    for server in &servers {
        assert_eq!(server.tool_count, tools_each, "{server:?}");
        let tools = client
            .list_mcp_server_tools(daemon.keys.req(
                org,
                proto::ListMcpServerToolsRequest {
                    server_id: server.id.clone(),
                    page_size: 1000,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .tools;
        assert_eq!(tools.len() as u32, tools_each, "{server:?}");
    }
    servers.len()
}

/// Fault 1: while one create waits on a hanging server, the pool's only
/// connection stays free for everyone else.
async fn hanging_server_holds_no_connection_while_others_work(backend: Backend) {
    let daemon = Daemon::start_with(backend, fast(1)).await;
    let keys = daemon.keys.clone();
    let client = daemon.client().await;
    let dir = tempfile::tempdir().unwrap();
    for hang in ["initialize", "list"] {
        let pidfile = dir.path().join(hang);
        let hung = tokio::spawn({
            let mut client = client.clone();
            let keys = keys.clone();
            let args = [
                "--hang",
                hang,
                "--tool-prefix",
                "hung_",
                "--spawn-grandchild",
                pidfile.to_str().unwrap(),
            ]
            .map(String::from);
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                client
                    .create_mcp_server(keys.req(
                        "acme",
                        create_request(&format!("hung-{}", args[1]), stdio(&args)),
                    ))
                    .await
            }
        });
        wait_for_pids(&pidfile).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            daemon.store.pool_stats().checked_out,
            0,
            "no connection held while waiting on MCP"
        );
        // Others keep working on a pool of one.
        let started = std::time::Instant::now();
        let other = client
            .clone()
            .create_mcp_server(keys.req(
                "acme",
                create_request(
                    &format!("ok-{hang}"),
                    stdio(&["--tools", "2", "--tool-prefix", &format!("{hang}_")]),
                ),
            ))
            .await
            .expect("another create works meanwhile");
        assert_eq!(other.into_inner().tools.len(), 2);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "it did not wait for the hung one"
        );

        let status = hung.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(
            wait_gone(&read_pids(&pidfile), Duration::from_secs(5)).await,
            Vec::<u32>::new()
        );
    }
    assert_eq!(
        assert_consistent(&daemon, "acme", 2).await,
        2,
        "only the two good servers exist"
    );
    daemon.stop().await;
}

async fn failing_list_is_unavailable(backend: Backend, flag: &str, expected: &str) {
    let daemon = Daemon::start_with(backend, fast(2)).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let started = std::time::Instant::now();
    let status = client
        .create_mcp_server(keys.req(
            "acme",
            create_request(
                "broken",
                stdio(&[
                    "--tools",
                    "5",
                    flag,
                    "--spawn-grandchild",
                    pidfile.to_str().unwrap(),
                ]),
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(expected), "{}", status.message());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed fast, not by timeout"
    );
    assert_eq!(
        wait_gone(&read_pids(&pidfile), Duration::from_secs(5)).await,
        Vec::<u32>::new()
    );
    assert_eq!(
        assert_consistent(&daemon, "acme", 0).await,
        0,
        "nothing written"
    );

    // The same over streamable HTTP.
    let http = HttpTestServer::start(&["--tools", "5", flag]).await;
    let status = client
        .create_mcp_server(keys.req(
            "acme",
            create_request("broken-http", streamable_http(&http.url)),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        assert_consistent(&daemon, "acme", 0).await,
        0,
        "nothing written"
    );
    assert_eq!(daemon.manager.mcp().open_sessions(), 0);
    daemon.stop().await;
}

/// Fault 2a: the server dies while listing.
async fn crash_mid_listing_is_unavailable_and_reaped(backend: Backend) {
    failing_list_is_unavailable(backend, "--crash-during-list", "listing tools").await;
}

/// Fault 2b: the server answers with something that is not JSON-RPC.
async fn malformed_json_rpc_is_unavailable_and_reaped(backend: Backend) {
    failing_list_is_unavailable(backend, "--malformed-list", "not a JSON-RPC message").await;
}

/// Fault 9 (and its PostgreSQL twin): many concurrent creates, default
/// pool; SQLite writers queue instead of failing with "database is locked".
async fn concurrent_creates_never_see_database_is_locked(backend: Backend) {
    let daemon = Daemon::start_with(backend, fast(10)).await;
    let keys = daemon.keys.clone();
    let client = daemon.client().await;
    let http = HttpTestServer::start(&["--tools", "20", "--unique-per-session"]).await;
    let calls = (0..50).map(|i| {
        let mut client = client.clone();
        let keys = keys.clone();
        let url = http.url.clone();
        async move {
            client
                .create_mcp_server(keys.req(
                    "acme",
                    create_request(
                        &format!("c{i}"),
                        Transport::StreamableHttp(proto::StreamableHttpTransport {
                            url,
                            headers: Default::default(),
                        }),
                    ),
                ))
                .await
        }
    });
    for result in futures::future::join_all(calls).await {
        let created = result
            .expect("no create fails under concurrency")
            .into_inner();
        assert_eq!(created.tools.len(), 20);
    }
    assert_eq!(assert_consistent(&daemon, "acme", 20).await, 50);
    daemon.stop().await;
}

async fn terminate_backends(url: &str) -> usize {
    let mut admin = AsyncPgConnection::establish(PG_ADMIN_URL).await.unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    #[derive(diesel::QueryableByName)]
    struct Killed {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        killed: bool,
    }
    let rows: Vec<Killed> = diesel::sql_query(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<diesel::sql_types::Text, _>(db)
    .load(&mut admin)
    .await
    .unwrap();
    rows.iter().filter(|r| r.killed).count()
}

/// Fault 5: PostgreSQL kills the daemon's connections during load. Calls
/// that lose their connection fail cleanly with UNAVAILABLE, the pool
/// recovers by itself, and no half-created server is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_killed_during_load() {
    let daemon = Daemon::start_with(Backend::Postgres, fast(4)).await;
    let keys = daemon.keys.clone();
    let client = daemon.client().await;
    let DatabaseUrl::Postgres(url) = daemon.db.url.clone() else {
        unreachable!()
    };
    let http = HttpTestServer::start(&["--tools", "200", "--unique-per-session"]).await;
    let calls = (0..40).map(|i| {
        let mut client = client.clone();
        let keys = keys.clone();
        let url = http.url.clone();
        async move {
            client
                .create_mcp_server(keys.req(
                    "acme",
                    create_request(
                        &format!("k{i}"),
                        Transport::StreamableHttp(proto::StreamableHttpTransport {
                            url,
                            headers: Default::default(),
                        }),
                    ),
                ))
                .await
        }
    });
    let killer = tokio::spawn({
        let url = url.clone();
        async move {
            let mut killed = 0;
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                killed += terminate_backends(&url).await;
            }
            killed
        }
    });
    let results = futures::future::join_all(calls).await;
    let killed = killer.await.unwrap();
    assert!(killed > 0, "the fault was injected");
    let mut failed = 0;
    for result in results {
        if let Err(status) = result {
            failed += 1;
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
    }
    // The pool recovers by itself.
    let after = client
        .clone()
        .create_mcp_server(keys.req("acme", create_request("after", streamable_http(&http.url))))
        .await
        .expect("the daemon serves again once connections come back");
    assert_eq!(after.into_inner().tools.len(), 200);
    let servers = assert_consistent(&daemon, "acme", 200).await;
    assert_eq!(
        servers,
        40 - failed + 1,
        "every server that was answered OK exists, fully"
    );
    daemon.stop().await;
}

/// Fault 7: two daemons on one PostgreSQL, fifty concurrent creates of the
/// same name: the database decides, exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_race_for_one_name() {
    let first = Daemon::start_with(Backend::Postgres, fast(10)).await;
    let second = Daemon::start_on(Arc::clone(&first.db), fast(10)).await;
    let http = HttpTestServer::start(&["--tools", "5", "--unique-per-session"]).await;
    let mut calls = Vec::new();
    for i in 0..50 {
        let daemon = if i % 2 == 0 { &first } else { &second };
        let mut client = daemon.client().await;
        let request = daemon.keys.req(
            "acme",
            create_request("contested", streamable_http(&http.url)),
        );
        calls.push(async move { client.create_mcp_server(request).await });
    }
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one create wins");
    for result in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(result.code(), Code::AlreadyExists, "{result:?}");
    }
    assert_eq!(assert_consistent(&first, "acme", 5).await, 1);
    second.stop().await;
    first.stop().await;
}
