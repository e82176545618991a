//! The fault suite: each test injects a fault production will bring and
//! asserts that nothing is lost and nothing is leaked.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
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

/// Fault 1: while one create waits on a hanging server, the pool's only
/// connection stays free for everyone else.
async fn hanging_server_holds_no_connection_while_others_work(backend: Backend) {
    let daemon = Daemon::start_with(backend, fast(1)).await;
    let acme = daemon.org("acme").await;
    for hang in ["initialize", "list"] {
        let pidfile = Pidfile::temp();
        let hung = tokio::spawn({
            let acme = acme.clone();
            let name = format!("hung-{hang}");
            let transport = stdio(pidfile.args_with(["--hang", hang, "--tool-prefix", "hung_"]));
            async move { acme.create(&name, transport).await }
        });
        // The server runs: the create waits on its initialize answer; once
        // the session is open, on its tools/list answer.
        pidfile.wait().await;
        if hang == "list" {
            wait_until(
                "the hung create's session to be open",
                Duration::from_secs(20),
                async || daemon.open_sessions() == 1,
            )
            .await;
        }
        assert_eq!(
            daemon.pool().checked_out,
            0,
            "no connection held while waiting on MCP"
        );
        // Others keep working on a pool of one.
        let prefix = format!("{hang}_");
        let other = acme
            .create(
                &format!("ok-{hang}"),
                stdio(["--tools", "2", "--tool-prefix", &prefix]),
            )
            .await
            .expect("another create works meanwhile");
        assert_eq!(other.tools.len(), 2);
        assert!(
            !hung.is_finished(),
            "the other create was answered while the hung one still waits"
        );

        let status = hung.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        pidfile.written().assert_gone().await;
    }
    let servers = daemon.registry().assert_whole("acme", 2).await;
    assert_eq!(servers.len(), 2, "only the two good servers exist");
    daemon.stop().await;
}

async fn failing_list_is_unavailable(backend: Backend, flag: &str, expected: &str) {
    let daemon = Daemon::start_with(backend, fast(2)).await;
    let acme = daemon.org("acme").await;
    let pidfile = Pidfile::temp();
    let status = acme
        .create("broken", stdio(pidfile.args_with(["--tools", "5", flag])))
        .await
        .unwrap_err();
    // UNAVAILABLE, not DEADLINE_EXCEEDED: the failure was noticed, not
    // waited out.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(expected), "{}", status.message());
    pidfile.written().assert_gone().await;
    daemon.registry().assert_empty("acme").await;

    // The same over streamable HTTP.
    let http = HttpTestServer::start(["--tools", "5", flag]).await;
    let status = acme
        .create("broken-http", streamable_http(&http.url))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    daemon.registry().assert_empty("acme").await;
    assert_eq!(daemon.open_sessions(), 0);
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
    let acme = daemon.org("acme").await;
    let http = HttpTestServer::start(["--tools", "20", "--unique-per-session"]).await;
    let servers = (0..50).map(|i| (format!("c{i}"), streamable_http(&http.url)));
    for result in acme.create_concurrently(servers).await {
        let created = result.expect("no create fails under concurrency");
        assert_eq!(created.tools.len(), 20);
    }
    assert_eq!(daemon.registry().assert_whole("acme", 20).await.len(), 50);
    daemon.stop().await;
}

/// Fault 5: PostgreSQL kills the daemon's connections while creates are
/// writing. Calls that lose their connection fail cleanly with UNAVAILABLE,
/// the pool recovers by itself, and no half-created server is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_killed_during_load() {
    let daemon = Daemon::start_with(Backend::Postgres, fast(4)).await;
    let acme = daemon.org("acme").await;
    let http = HttpTestServer::start(["--tools", "200", "--unique-per-session"]).await;
    let servers = (0..40).map(|i| (format!("k{i}"), streamable_http(&http.url)));
    let all_answered = tokio_util::sync::CancellationToken::new();
    let mut activity = PgActivity::of(&daemon.db).await;
    // Kills every backend caught in the middle of a writing transaction,
    // up to eight, until the calls are all answered.
    let killer = async {
        let mut killed = 0;
        while killed < 8 {
            let writing = wait_for(
                "a writing transaction or the last answer",
                Duration::from_secs(60),
                async || {
                    if all_answered.is_cancelled() {
                        return Some(Vec::new());
                    }
                    Some(activity.writing().await).filter(|pids| !pids.is_empty())
                },
            )
            .await;
            if writing.is_empty() {
                break;
            }
            killed += activity.terminate(&writing).await;
        }
        killed
    };
    let answered = async {
        let results = acme.create_concurrently(servers).await;
        all_answered.cancel();
        results
    };
    let (results, killed) = tokio::join!(answered, killer);
    assert!(killed > 0, "the fault was injected");
    let mut failed = 0;
    for result in results {
        if let Err(status) = result {
            failed += 1;
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
    }
    assert!(
        failed > 0,
        "killing {killed} writing transactions failed no call"
    );
    // The pool recovers by itself.
    let after = acme
        .create("after", streamable_http(&http.url))
        .await
        .expect("the daemon serves again once connections come back");
    assert_eq!(after.tools.len(), 200);
    let servers = daemon.registry().assert_whole("acme", 200).await;
    assert_eq!(
        servers.len(),
        40 - failed + 1,
        "every server that was answered OK exists, fully"
    );
    daemon.stop().await;
}

/// PostgreSQL closes the daemon's idle pooled connections (a restart, an
/// operator's `pg_terminate_backend`). No checkout pings the database, yet
/// no call fails: a connection whose socket was closed is replaced as it
/// leaves the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_closing_idle_connections_fails_no_call() {
    let daemon = Daemon::start_with(Backend::Postgres, fast(4)).await;
    let acme = daemon.org("acme").await;
    let http = HttpTestServer::start(["--tools", "3"]).await;
    // Several pooled connections opened, then back in the pool.
    let servers = (0..8).map(|i| (format!("s{i}"), streamable_http(&http.url)));
    for created in acme.create_concurrently(servers).await {
        created.expect("created");
    }
    let mut activity = PgActivity::of(&daemon.db).await;
    let idle = activity.idle().await;
    assert!(idle.len() >= 2, "pooled connections: {idle:?}");
    assert_eq!(activity.terminate(&idle).await, idle.len());
    wait_for(
        "the backends to exit",
        Duration::from_secs(10),
        async || (!activity.any_alive(&idle).await).then_some(()),
    )
    .await;
    for round in 0..8 {
        let listed = acme.servers().await.unwrap_or_else(|status| {
            panic!("list {round} after the connections closed: {status:?}")
        });
        assert_eq!(listed.len(), 8);
    }
    acme.create("after", streamable_http(&http.url))
        .await
        .expect("a create after the connections closed");
    daemon.stop().await;
}

/// Fault 7: two daemons on one PostgreSQL, fifty concurrent creates of the
/// same name: the database decides, exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_race_for_one_name() {
    let first = Daemon::start_with(Backend::Postgres, fast(10)).await;
    let second = Daemon::start_on(Arc::clone(&first.db), fast(10)).await;
    let http = HttpTestServer::start(["--tools", "5", "--unique-per-session"]).await;
    let clients = [first.org("acme").await, second.org("acme").await];
    let calls = (0..50).map(|i| {
        let acme = clients[i % 2].clone();
        let transport = streamable_http(&http.url);
        async move { acme.create("contested", transport).await }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one create wins");
    for result in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(result.code(), Code::AlreadyExists, "{result:?}");
    }
    assert_eq!(first.registry().assert_whole("acme", 5).await.len(), 1);
    second.stop().await;
    first.stop().await;
}
