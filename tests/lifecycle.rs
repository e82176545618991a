//! The two production rules, proven: one pooled connection per request, and
//! teardown that never fails a call nor leaks a process. Plus the failure
//! modes of real MCP servers.

mod common;

use std::time::Duration;

use common::*;
use mcpd::{
    api::PEAK_CONNECTIONS_HEADER,
    proto::{self, create_mcp_server_request::Transport},
};
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
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    daemon.store.reset_peak();
    let response = client
        .create_mcp_server(keys.req(
            "acme",
            create_request("big", stdio(&["--tools", "500", "--page-size", "100"])),
        ))
        .await
        .expect("create");
    assert_eq!(
        peak(response.metadata()),
        1,
        "connections held at once by the request"
    );
    let stats = daemon.store.pool_stats();
    assert_eq!(stats.peak_checked_out, 1, "daemon-wide peak: {stats:?}");
    assert_eq!(stats.checked_out, 0, "nothing left checked out: {stats:?}");
    let created = response.into_inner();
    assert_eq!(created.tools.len(), 500, "all five pages were followed");
    assert!(created.failed_tools.is_empty());
    let tools = client
        .list_mcp_server_tools(keys.req(
            "acme",
            proto::ListMcpServerToolsRequest {
                server_id: created.server.as_ref().unwrap().id.clone(),
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tools.tools.len(), 500);

    let response = client
        .close_mcp_server(keys.req(
            "acme",
            proto::CloseMcpServerRequest {
                server_id: created.server.unwrap().id,
            },
        ))
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
    let keys = daemon.keys.clone();
    let client = daemon.client().await;
    daemon.store.reset_peak();
    let calls = (0..20).map(|i| {
        let mut client = client.clone();
        let keys = keys.clone();
        async move {
            let prefix = format!("s{i:02}_");
            client
                .create_mcp_server(keys.req(
                    "acme",
                    create_request(
                        &format!("server-{i}"),
                        stdio(&["--tools", "50", "--tool-prefix", &prefix]),
                    ),
                ))
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
    let stats = daemon.store.pool_stats();
    assert_eq!(stats.peak_checked_out, 1, "{stats:?}");
    assert_eq!(stats.timeouts, 0);
    let listed = client
        .clone()
        .list_mcp_servers(keys.req(
            "acme",
            proto::ListMcpServersRequest {
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.servers.len(), 20);
    assert!(listed.servers.iter().all(|s| s.tool_count == 50));
    daemon.stop().await;
}

fn quick_timeouts() -> DaemonOptions {
    let mut mcp = test_mcp_settings();
    mcp.connect_timeout = Duration::from_secs(2);
    mcp.list_timeout = Duration::from_secs(2);
    mcp.teardown_grace = Duration::from_millis(300);
    // Programs that are not MCP servers at all, for the failure cases.
    mcp.stdio_allow
        .extend(["false".to_owned(), "/nonexistent/mcp-server".to_owned()]);
    DaemonOptions {
        mcp,
        ..Default::default()
    }
}

async fn assert_nothing_written(daemon: &Daemon, org: &str) {
    let servers = daemon.servers(org).await;
    assert!(servers.is_empty(), "{servers:?}");
}

async fn hanging_initialize_is_deadline_exceeded_and_writes_nothing(backend: Backend) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let started = std::time::Instant::now();
    let status = client
        .create_mcp_server(keys.req(
            "acme",
            create_request(
                "hangs",
                stdio(&[
                    "--hang",
                    "initialize",
                    "--spawn-grandchild",
                    pidfile.to_str().unwrap(),
                ]),
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("initializing"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_nothing_written(&daemon, "acme").await;
    let pids = read_pids(&pidfile);
    assert_eq!(pids.len(), 2, "test server wrote its pids");
    assert_eq!(
        wait_gone(&pids, Duration::from_secs(5)).await,
        Vec::<u32>::new()
    );
    assert_eq!(daemon.manager.mcp().open_sessions(), 0);
    daemon.stop().await;
}

async fn hanging_list_is_deadline_exceeded_and_reaps_the_child(backend: Backend) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let status = client
        .create_mcp_server(keys.req(
            "acme",
            create_request(
                "hangs",
                stdio(&[
                    "--hang",
                    "list",
                    "--ignore-shutdown",
                    "--spawn-grandchild",
                    pidfile.to_str().unwrap(),
                ]),
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("listing tools"),
        "{}",
        status.message()
    );
    assert_nothing_written(&daemon, "acme").await;
    let pids = read_pids(&pidfile);
    assert_eq!(pids.len(), 2);
    assert_eq!(
        wait_gone(&pids, Duration::from_secs(5)).await,
        Vec::<u32>::new()
    );
    daemon.stop().await;
}

async fn unreachable_servers_are_unavailable(backend: Backend) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        streamable_http(&format!("http://127.0.0.1:{port}/mcp")),
        Transport::Sse(proto::SseTransport {
            url: format!("http://127.0.0.1:{port}/sse"),
            headers: Default::default(),
        }),
        Transport::Stdio(proto::StdioTransport {
            command: "/nonexistent/mcp-server".into(),
            ..Default::default()
        }),
        // A program that exits at once instead of speaking MCP.
        Transport::Stdio(proto::StdioTransport {
            command: "false".into(),
            ..Default::default()
        }),
    ];
    for transport in cases {
        let status = client
            .create_mcp_server(keys.req("acme", create_request("nowhere", transport)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(!status.message().is_empty());
    }
    assert_nothing_written(&daemon, "acme").await;
    daemon.stop().await;
}

async fn crash_on_shutdown_does_not_change_the_answer(backend: Backend) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let created = client
        .create_mcp_server(keys.req(
            "acme",
            create_request("crashy", stdio(&["--tools", "4", "--crash-on-shutdown"])),
        ))
        .await
        .expect("teardown failures never reach the caller")
        .into_inner();
    assert_eq!(created.tools.len(), 4);

    let http =
        HttpTestServer::start(&["--tools", "2", "--crash-on-shutdown", "--tool-prefix", "h_"])
            .await;
    let created = client
        .create_mcp_server(keys.req(
            "acme",
            create_request("crashy-http", streamable_http(&http.url)),
        ))
        .await
        .expect("teardown failures never reach the caller")
        .into_inner();
    assert_eq!(created.tools.len(), 2);
    daemon.stop().await;
}

async fn no_process_survives_create_or_close(backend: Backend) {
    let daemon = Daemon::start_with(backend, quick_timeouts()).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let dir = tempfile::tempdir().unwrap();
    for (i, extra) in [&["--ignore-shutdown"][..], &["--crash-on-shutdown"], &[]]
        .into_iter()
        .enumerate()
    {
        let pidfile = dir.path().join(format!("pids{i}"));
        let mut args = vec![
            "--tools",
            "2",
            "--spawn-grandchild",
            pidfile.to_str().unwrap(),
        ];
        let prefix = format!("p{i}_");
        args.extend(["--tool-prefix", &prefix]);
        args.extend(extra);
        let created = client
            .create_mcp_server(keys.req("acme", create_request(&format!("proc-{i}"), stdio(&args))))
            .await
            .unwrap()
            .into_inner();
        // The session is closed before the answer: child and grandchild are gone.
        let pids = read_pids(&pidfile);
        assert_eq!(pids.len(), 2);
        assert_eq!(
            wait_gone(&pids, Duration::from_secs(5)).await,
            Vec::<u32>::new(),
            "{extra:?}"
        );
        let closed = client
            .close_mcp_server(keys.req(
                "acme",
                proto::CloseMcpServerRequest {
                    server_id: created.server.unwrap().id,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(closed.removed_tools, 2);
    }
    assert_eq!(daemon.manager.mcp().open_sessions(), 0);
    daemon.stop().await;
}

/// Another client holds the database so the one pooled connection stays
/// busy: the next call waits out the acquire timeout and gets
/// RESOURCE_EXHAUSTED; once the lock goes, the daemon serves again.
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
    let keys = daemon.keys.clone();
    let client = daemon.client().await;
    let lock = DbLock::take(&daemon.db).await;
    // This one takes the pool's only connection and waits on the lock.
    let blocked = tokio::spawn({
        let mut client = client.clone();
        let keys = keys.clone();
        async move {
            client
                .create_mcp_server(
                    keys.req("acme", create_request("blocked", stdio(&["--tools", "2"]))),
                )
                .await
        }
    });
    // The create's key lookup and name check take the connection briefly;
    // wait until it is held for good, by the persisting transaction.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut held_for = 0;
    while held_for < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the create never reached the database"
        );
        held_for = if daemon.store.pool_stats().checked_out == 1 {
            held_for + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let status = client
        .clone()
        .list_mcp_servers(keys.req("acme", proto::ListMcpServersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("no database connection"),
        "{}",
        status.message()
    );
    lock.release().await;
    let created = blocked
        .await
        .unwrap()
        .expect("the blocked create completes once the lock goes");
    assert_eq!(created.into_inner().tools.len(), 2);
    let listed = client
        .clone()
        .list_mcp_servers(keys.req("acme", proto::ListMcpServersRequest::default()))
        .await
        .expect("the daemon recovered by itself")
        .into_inner();
    assert_eq!(listed.servers.len(), 1);
    daemon.stop().await;
}
