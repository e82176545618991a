//! The two production rules, proven: one pooled connection per request, and
//! teardown that never fails a call nor leaks a process. Plus the failure
//! modes of real MCP servers.

mod common;

use std::time::Duration;

use common::*;
use mcpd::{api::PEAK_CONNECTIONS_HEADER, mcp::McpError, mcp::Stage};
use tonic::Code;

backend_tests!(
    five_hundred_tools_use_one_connection,
    twenty_concurrent_creates_share_a_pool_of_one,
    hanging_initialize_is_deadline_exceeded_and_writes_nothing,
    hanging_list_is_deadline_exceeded_and_reaps_the_child,
    unreachable_servers_are_unavailable,
    crash_on_shutdown_does_not_change_the_answer,
    no_process_survives_create_or_close,
    busy_pool_is_resource_exhausted_then_recovers,
);

fn peak(metadata: &tonic::metadata::MetadataMap) -> usize {
    metadata
        .get(PEAK_CONNECTIONS_HEADER)
        .expect("peak connections metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn five_hundred_tools_use_one_connection(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    daemon.manager.reset_peaks();
    let response = acme
        .raw()
        .create_mcp_server(acme.req(create_request(
            "big",
            stdio(["--tools", "500", "--page-size", "100"]),
        )))
        .await
        .expect("create");
    assert_eq!(
        peak(response.metadata()),
        1,
        "connections held at once by the request"
    );
    let stats = daemon.pool();
    assert_eq!(stats.peak_checked_out, 1, "daemon-wide peak: {stats:?}");
    assert_eq!(stats.checked_out, 0, "nothing left checked out: {stats:?}");
    let created = response.into_inner();
    assert_eq!(created.tools.len(), 500, "all five pages were followed");
    assert!(created.failed_tools.is_empty());
    let server_id = created.server.unwrap().id;
    assert_eq!(acme.tools(&server_id).await.unwrap().len(), 500);

    let response = acme
        .raw()
        .close_mcp_server(acme.req(mcpd::proto::CloseMcpServerRequest {
            server_id: server_id.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(peak(response.metadata()), 1);
    assert_eq!(response.into_inner().removed_tools, 500);
    daemon.stop().await;
}

async fn twenty_concurrent_creates_share_a_pool_of_one(backend: Backend) {
    let daemon = Daemon::start_with(
        backend,
        DaemonOptions {
            pool_size: 1,
            pool_timeout: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await;
    let acme = daemon.org("acme").await;
    daemon.manager.reset_peaks();
    let calls = (0..20).map(|i| {
        let acme = acme.clone();
        async move {
            let prefix = format!("s{i:02}_");
            acme.raw()
                .create_mcp_server(acme.req(create_request(
                    &format!("server-{i}"),
                    stdio(["--tools", "50", "--tool-prefix", &prefix]),
                )))
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    for result in results {
        let response = result.expect("every create succeeds with one pooled connection");
        assert_eq!(peak(response.metadata()), 1);
        let created = response.into_inner();
        assert_eq!(created.tools.len(), 50);
        assert!(created.failed_tools.is_empty());
    }
    let stats = daemon.pool();
    assert_eq!(stats.peak_checked_out, 1, "{stats:?}");
    assert_eq!(stats.timeouts, 0);
    let listed = acme.servers().await.unwrap();
    assert_eq!(listed.len(), 20);
    assert!(listed.iter().all(|s| s.tool_count == 50));
    daemon.stop().await;
}

const QUICK: Duration = Duration::from_secs(2);

fn quick_timeouts() -> DaemonOptions {
    let mut mcp = test_mcp_settings();
    mcp.connect_timeout = QUICK;
    mcp.list_timeout = QUICK;
    mcp.teardown_grace = Duration::from_millis(300);
    // Programs that are not MCP servers at all, for the failure cases.
    mcp.stdio_allow
        .extend(["false".to_owned(), "/nonexistent/mcp-server".to_owned()]);
    DaemonOptions {
        mcp,
        ..Default::default()
    }
}

async fn hanging_initialize_is_deadline_exceeded_and_writes_nothing(backend: Backend) {
    hang_is_deadline_exceeded(backend, &["--hang", "initialize"], Stage::Connect).await;
}

async fn hanging_list_is_deadline_exceeded_and_reaps_the_child(backend: Backend) {
    let args = ["--hang", "list", "--ignore-shutdown"];
    hang_is_deadline_exceeded(backend, &args, Stage::ListTools).await;
}

/// A test server started with `args` hangs at `stage`: the create fails
/// with that stage's timeout (no other bound), writes nothing, and the
/// server and its child are gone.
async fn hang_is_deadline_exceeded(backend: Backend, args: &[&str], stage: Stage) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let acme = daemon.org("acme").await;
    let pidfile = Pidfile::temp();
    let status = acme
        .create("hangs", stdio(pidfile.args_with(args.iter().copied())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let expected = McpError::Timeout {
        stage,
        after: QUICK,
    };
    assert!(
        status.message().contains(&expected.to_string()),
        "{:?} should say {expected}",
        status.message()
    );
    daemon.registry().assert_empty("acme").await;
    pidfile.written().assert_gone().await;
    assert_eq!(daemon.open_sessions(), 0);
    daemon.stop().await;
}

async fn unreachable_servers_are_unavailable(backend: Backend) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let acme = daemon.org("acme").await;
    let (_held, port) = refused_port();
    let none: [&str; 0] = [];
    let connecting = Stage::Connect.to_string();
    let cases = [
        (
            streamable_http(format!("http://127.0.0.1:{port}/mcp")),
            "connection refused",
        ),
        (
            sse(format!("http://127.0.0.1:{port}/sse")),
            "connection refused",
        ),
        (
            command("/nonexistent/mcp-server", none),
            "/nonexistent/mcp-server",
        ),
        // A program that exits at once instead of speaking MCP.
        (command("false", none), connecting.as_str()),
    ];
    for (transport, expected) in cases {
        let status = acme.create("nowhere", transport).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().to_lowercase().contains(expected),
            "{:?} should mention {expected:?}",
            status.message()
        );
    }
    daemon.registry().assert_empty("acme").await;
    assert_eq!(daemon.open_sessions(), 0);
    daemon.stop().await;
}

async fn crash_on_shutdown_does_not_change_the_answer(backend: Backend) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let acme = daemon.org("acme").await;
    let pidfile = Pidfile::temp();
    let created = acme
        .create(
            "crashy",
            stdio(pidfile.args_with(["--tools", "4", "--crash-on-shutdown"])),
        )
        .await
        .expect("teardown failures never reach the caller");
    assert_eq!(created.tools.len(), 4);
    pidfile.written().assert_gone().await;

    let http =
        HttpTestServer::start(["--tools", "2", "--crash-on-shutdown", "--tool-prefix", "h_"]).await;
    let created = acme
        .create("crashy-http", streamable_http(&http.url))
        .await
        .expect("teardown failures never reach the caller");
    assert_eq!(created.tools.len(), 2);
    // The server really crashed when the session closed.
    assert_gone(&[http.pid()], Duration::from_secs(5)).await;
    assert_eq!(acme.servers().await.unwrap().len(), 2);
    daemon.stop().await;
}

async fn no_process_survives_create_or_close(backend: Backend) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let acme = daemon.org("acme").await;
    for (i, extra) in [&["--ignore-shutdown"][..], &["--crash-on-shutdown"], &[]]
        .into_iter()
        .enumerate()
    {
        let pidfile = Pidfile::temp();
        let prefix = format!("p{i}_");
        let mut args = vec!["--tools", "2", "--tool-prefix", &prefix];
        args.extend(extra);
        let created = acme
            .create(&format!("proc-{i}"), stdio(pidfile.args_with(args)))
            .await
            .unwrap();
        // The session is closed and the server reaped before the answer;
        // the SIGKILL to its group is on its way to the grandchild.
        let pids = pidfile.written();
        assert!(
            !process_alive(pids.server),
            "{extra:?}: the server outlived the answer"
        );
        pids.assert_gone().await;
        let closed = acme.close(&created.server.unwrap().id).await.unwrap();
        assert_eq!(closed.removed_tools, 2);
    }
    assert_eq!(daemon.open_sessions(), 0);
    daemon.stop().await;
}

/// Another client holds a write lock so that the one pooled connection,
/// taken by a create to persist, stays busy: the next call waits out the
/// acquire timeout and gets RESOURCE_EXHAUSTED; once the lock goes, the
/// create completes and the daemon serves again.
async fn busy_pool_is_resource_exhausted_then_recovers(backend: Backend) {
    let daemon = Daemon::start_with(
        backend,
        DaemonOptions {
            pool_size: 1,
            pool_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await;
    let acme = daemon.org("acme").await;
    let lock = DbLock::take(&daemon.db).await;
    let pidfile = Pidfile::temp();
    let blocked = tokio::spawn({
        let acme = acme.clone();
        let transport = stdio(pidfile.args_with(["--tools", "2"]));
        async move { acme.create("blocked", transport).await }
    });
    // Once its MCP server is reaped, the create's only use of the database
    // left is persisting: a connection checked out from then on is that.
    let server = pidfile.wait().await.server;
    wait_until(
        "the create to hold the connection to persist",
        Duration::from_secs(20),
        async || !process_alive(server) && daemon.pool().checked_out == 1,
    )
    .await;
    let status = acme.servers_page(0, "").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("no database connection"),
        "{}",
        status.message()
    );
    assert!(!blocked.is_finished(), "the create waits on the lock");
    lock.release().await;
    let created = blocked
        .await
        .unwrap()
        .expect("the blocked create completes once the lock goes");
    assert_eq!(created.tools.len(), 2);
    let listed = acme
        .servers()
        .await
        .expect("the daemon recovered by itself");
    assert_eq!(listed.len(), 1);
    daemon.stop().await;
}
