//! `GET /metrics` on the HTTP listener: the RPC, pool and MCP figures move
//! with what the daemon really did. (The Python end-to-end tests parse the
//! same page with Prometheus' own parser.)

mod common;

use common::*;
use std::time::Duration;

use tonic::Code;

async fn scrape(daemon: &Daemon) -> String {
    let response = reqwest::get(format!("http://{}/metrics", daemon.http_addr))
        .await
        .expect("scrape /metrics");
    assert!(response.status().is_success(), "{response:?}");
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn value(page: &str, series: &str) -> f64 {
    sample(page, series).unwrap_or_else(|| panic!("no sample {series} in\n{page}"))
}

fn handled(method: &str, code: &str) -> String {
    format!(
        r#"mcpd_grpc_server_handled_total{{code="{code}",method="{method}",service="mcpd.v1.McpServerService"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_calls_sessions_children_and_the_pool() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let before = scrape(&daemon).await;
    assert_eq!(sample(&before, &handled("CreateMcpServer", "OK")), None);
    assert_eq!(value(&before, "mcpd_mcp_child_processes"), 0.0);

    let created = acme
        .create("weather", stdio(["--tools", "3"]))
        .await
        .expect("create");
    let id = created.server.unwrap().id;
    acme.call_tool(call(&id, "tool_0000", serde_json::json!({})))
        .await
        .expect("call");
    let missing = acme
        .get("0190c6a4-0000-7000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let mut anonymous = daemon.org("acme").await.raw();
    let refused = anonymous
        .list_mcp_servers(mcpd::proto::ListMcpServersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // A method nobody serves is counted, under no name the caller chose
    // (refused for want of a key first: no caller learns what exists).
    let made_up = tonic::client::Grpc::new(daemon.channel().await);
    let made_up = unary_to(made_up, "/mcpd.v1.McpServerService/MadeUp").await;
    assert_eq!(made_up.code(), Code::Unauthenticated);

    let page = scrape(&daemon).await;
    assert_eq!(value(&page, &handled("CreateMcpServer", "OK")), 1.0);
    assert_eq!(value(&page, &handled("CallMcpTool", "OK")), 1.0);
    assert_eq!(value(&page, &handled("GetMcpServer", "NOT_FOUND")), 1.0);
    assert_eq!(
        value(&page, &handled("ListMcpServers", "UNAUTHENTICATED")),
        1.0
    );
    assert_eq!(
        value(
            &page,
            r#"mcpd_grpc_server_handled_total{code="UNAUTHENTICATED",method="unknown",service="unknown"}"#
        ),
        1.0
    );
    assert!(!page.contains("MadeUp"), "{page}");
    assert_eq!(
        value(
            &page,
            r#"mcpd_grpc_server_handling_seconds_count{code="OK",method="CreateMcpServer",service="mcpd.v1.McpServerService"}"#
        ),
        1.0
    );
    // The create's session and the call's live session: two connects.
    assert_eq!(
        value(
            &page,
            r#"mcpd_mcp_operation_duration_seconds_count{operation="connect",transport="stdio"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &page,
            r#"mcpd_mcp_operation_duration_seconds_count{operation="call_tool",transport="stdio"}"#
        ),
        1.0
    );
    assert!(
        value(
            &page,
            r#"mcpd_mcp_operation_duration_seconds_count{operation="list_tools",transport="stdio"}"#
        ) >= 1.0
    );
    // The call's live session holds its process; the create's is gone.
    assert_eq!(value(&page, "mcpd_mcp_child_processes"), 1.0);
    assert_eq!(value(&page, "mcpd_mcp_live_sessions"), 1.0);
    assert_eq!(value(&page, "mcpd_mcp_sessions_open"), 1.0);
    assert_eq!(value(&page, "mcpd_mcp_live_session_opens_total"), 1.0);
    let pool = daemon.pool();
    assert_eq!(
        value(&page, "mcpd_db_pool_max_connections"),
        f64::from(pool.max_size)
    );
    assert!(
        value(&page, "mcpd_db_pool_checkouts_total") >= 4.0,
        "{page}"
    );
    assert_eq!(value(&page, "mcpd_db_pool_connections_checked_out"), 0.0);
    assert_eq!(value(&page, "mcpd_db_pool_acquire_timeouts_total"), 0.0);

    acme.close(&id).await.expect("close");
    let after = scrape(&daemon).await;
    assert_eq!(value(&after, "mcpd_mcp_child_processes"), 0.0);
    assert_eq!(value(&after, "mcpd_mcp_live_sessions"), 0.0);
    assert_eq!(value(&after, "mcpd_mcp_teardown_failures_total"), 0.0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_counted_when_it_ends() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let watch = acme.watch(None).await.expect("watch");
    let series = handled("WatchMcpServers", "CANCELLED");
    assert_eq!(sample(&scrape(&daemon).await, &series), None);
    drop(watch);
    // The daemon learns of the reset asynchronously.
    let page = wait_for(
        "the ended watch to be counted",
        Duration::from_secs(10),
        async || {
            let page = scrape(&daemon).await;
            sample(&page, &series).is_some().then_some(page)
        },
    )
    .await;
    assert_eq!(value(&page, &series), 1.0);
    daemon.stop().await;
}

/// Calls `path` with an empty message and returns the status it got.
async fn unary_to(
    mut grpc: tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
) -> tonic::Status {
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(
        tonic::Request::new(()),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("nobody serves this method")
}

/// A daemon starting on a run directory that holds a dead daemon's record
/// kills the group it names and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swept_process_groups_are_counted() {
    let db = std::sync::Arc::new(TestDb::new(Backend::Sqlite).await);
    let left = GroupLeader::spawn();
    dead_record(&db.run_dir(), &[(left.pid(), left.start_time())]);
    let daemon = Daemon::start_on(db.clone(), DaemonOptions::default()).await;
    assert_gone(&[left.pid()], Duration::from_secs(10)).await;
    let page = scrape(&daemon).await;
    assert_eq!(value(&page, "mcpd_mcp_orphan_groups_swept_total"), 1.0);

    // A second daemon on the same run directory finds nothing left to sweep
    // (and leaves the first one's record alone).
    let second = Daemon::start_on(db.clone(), DaemonOptions::default()).await;
    let page = scrape(&second).await;
    assert_eq!(value(&page, "mcpd_mcp_orphan_groups_swept_total"), 0.0);
    assert_eq!(records(&db.run_dir()).len(), 2, "one record per daemon");
    second.stop().await;
    daemon.stop().await;
}
