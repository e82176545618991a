//! WatchMcpServers: every change to an organization's servers, in commit
//! order, with a cursor to resume from, on both backends; across replicas
//! on one PostgreSQL; bounded retention; shutdown ends the stream.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mcpd::proto::{self, McpServerEventKind as Kind};
use serde_json::json;
use tonic::Code;

backend_tests!(
    events_follow_every_change_in_commit_order,
    a_watch_resumes_after_a_disconnect,
    cursors_older_than_the_retention_are_refused,
    shutdown_ends_open_watches,
    shutdown_ends_health_watches_after_not_serving,
);

const QUIET: Duration = Duration::from_millis(400);

fn write_tools(path: &std::path::Path, tools: serde_json::Value) {
    std::fs::write(path, tools.to_string()).unwrap();
}

fn tool(name: &str, description: &str) -> serde_json::Value {
    json!({"name": name, "description": description, "input_schema": {"type": "object"}})
}

async fn rename(client: &OrgClient, id: &str, name: &str) {
    client
        .raw()
        .update_mcp_server(client.req(proto::UpdateMcpServerRequest {
            server_id: id.to_owned(),
            server_name: name.to_owned(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["server_name".into()],
            }),
            ..Default::default()
        }))
        .await
        .expect("rename");
}

fn server(event: &proto::WatchMcpServersResponse) -> &proto::McpServer {
    event.server.as_ref().expect("the event carries the server")
}

fn names(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

fn changes(event: &proto::WatchMcpServersResponse) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let c = event.tool_changes.as_ref().expect("tool changes");
    (names(&c.added), names(&c.updated), names(&c.removed))
}

async fn events_follow_every_change_in_commit_order(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let globex = daemon.org("globex").await;
    let mut watch = acme.watch(None).await.unwrap();
    let bookmark = watch.expect(Kind::Bookmark).await;
    assert_eq!(bookmark.cursor, 0, "nothing happened yet: {bookmark:?}");
    let mut other = globex.watch(None).await.unwrap();
    other.expect(Kind::Bookmark).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.json");
    write_tools(&file, json!([tool("alpha", "a"), tool("beta", "b")]));
    let created = acme
        .create("changing", stdio(["--tools-file", file.to_str().unwrap()]))
        .await
        .unwrap()
        .server
        .unwrap();
    let event = watch.expect(Kind::Created).await;
    assert_eq!(event.cursor, 1);
    assert_eq!(event.server_id, created.id);
    assert_eq!(server(&event).server_name, "changing");
    assert_eq!(server(&event).tool_count, 2);
    assert_eq!(server(&event).state(), proto::McpServerState::Ready);
    assert_eq!(changes(&event).0, ["alpha", "beta"]);
    assert!(event.occurred_at.is_some());

    // A sync's difference, with the names.
    write_tools(&file, json!([tool("alpha", "changed"), tool("gamma", "c")]));
    acme.sync(&created.id).await.unwrap();
    let event = watch.expect(Kind::ToolsChanged).await;
    assert_eq!(event.cursor, 2);
    assert_eq!(
        changes(&event),
        (vec!["gamma"], vec!["alpha"], vec!["beta"]),
        "{event:?}"
    );
    assert_eq!(server(&event).tool_count, 2);

    // A sync that finds nothing announces nothing: the next event is the
    // rename, with the next cursor.
    acme.sync(&created.id).await.unwrap();
    rename(&acme, &created.id, "renamed").await;
    let event = watch.expect(Kind::Updated).await;
    assert_eq!(event.cursor, 3);
    assert_eq!(server(&event).server_name, "renamed");

    // A server that goes away, and comes back.
    let http = HttpTestServer::start(["--tools", "1"]).await;
    let port = http.port();
    let remote = acme
        .create("remote", streamable_http(&http.url))
        .await
        .unwrap()
        .server
        .unwrap();
    assert_eq!(watch.expect(Kind::Created).await.cursor, 4);
    http.stop().await;
    assert_eq!(
        acme.sync(&remote.id).await.unwrap_err().code(),
        Code::Unavailable
    );
    let event = watch.expect(Kind::StatusChanged).await;
    assert_eq!(event.cursor, 5);
    assert_eq!(event.server_id, remote.id);
    assert_eq!(server(&event).state(), proto::McpServerState::Unreachable);
    assert!(!server(&event).last_error.is_empty(), "{event:?}");
    let _back = HttpTestServer::start_on(port, ["--tools", "1"]).await;
    acme.sync(&remote.id).await.unwrap();
    let event = watch.expect(Kind::StatusChanged).await;
    assert_eq!(event.cursor, 6);
    assert_eq!(server(&event).state(), proto::McpServerState::Ready);

    acme.close(&created.id).await.unwrap();
    let event = watch.expect(Kind::Closed).await;
    assert_eq!(event.cursor, 7);
    assert_eq!(event.server_id, created.id);
    assert_eq!(server(&event).server_name, "renamed");

    watch.assert_quiet(QUIET).await;
    // Another organization saw none of it, and has cursors of its own.
    other.assert_quiet(QUIET).await;
    globex
        .create("theirs", stdio(["--tools", "1"]))
        .await
        .unwrap();
    assert_eq!(other.expect(Kind::Created).await.cursor, 1);
    watch.assert_quiet(QUIET).await;
    acme.close(&remote.id).await.unwrap();
    daemon.stop().await;
}

async fn a_watch_resumes_after_a_disconnect(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let first = acme
        .create("first", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap();

    // From the oldest event kept.
    let mut watch = acme.watch(Some(0)).await.unwrap();
    let created = watch.expect(Kind::Created).await;
    assert_eq!(
        (created.cursor, created.server_id.as_str()),
        (1, first.id.as_str())
    );
    drop(watch);

    // Changes while nobody watches.
    rename(&acme, &first.id, "first-renamed").await;
    acme.close(&first.id).await.unwrap();

    let mut watch = acme.watch(Some(created.cursor)).await.unwrap();
    let renamed = watch.expect(Kind::Updated).await;
    assert_eq!(renamed.cursor, 2);
    assert_eq!(server(&renamed).server_name, "first-renamed");
    assert_eq!(watch.expect(Kind::Closed).await.cursor, 3);
    watch.assert_quiet(QUIET).await;
    // And on live.
    acme.create("second", stdio(["--tools", "1"]))
        .await
        .unwrap();
    assert_eq!(watch.expect(Kind::Created).await.cursor, 4);

    // A cursor this registry never gave.
    let mut watch = acme.watch(Some(99)).await.unwrap();
    let status = watch.next().await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("list the servers again"),
        "{status:?}"
    );
    daemon.stop().await;
}

async fn cursors_older_than_the_retention_are_refused(backend: Backend) {
    let daemon = Daemon::start_with(
        backend,
        DaemonOptions {
            event_retention: mcpd::store::EventRetention {
                max_events: 2,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let acme = daemon.org("acme").await;
    let id = acme
        .create("kept", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    for name in ["two", "three", "four"] {
        rename(&acme, &id, name).await;
    }
    // Events 3 and 4 are kept.
    for after in [0, 1] {
        let mut watch = acme.watch(Some(after)).await.unwrap();
        let status = watch.next().await.expect_err("too old");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .contains("older than the events kept (the oldest is 3)"),
            "{status:?}"
        );
    }
    let mut watch = acme.watch(Some(2)).await.unwrap();
    assert_eq!(
        server(&watch.expect(Kind::Updated).await).server_name,
        "three"
    );
    assert_eq!(
        server(&watch.expect(Kind::Updated).await).server_name,
        "four"
    );
    daemon.stop().await;
}

async fn shutdown_ends_open_watches(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let mut watch = acme.watch(None).await.unwrap();
    watch.expect(Kind::Bookmark).await;
    // The test daemon drains for up to 10 s: a watch that kept the server
    // waiting would show here.
    let started = Instant::now();
    let stopping = tokio::spawn(daemon.stop());
    let status = watch.next().await.expect_err("the watch ends");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("after=0"), "{status:?}");
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for the watch",
        started.elapsed()
    );
}

async fn shutdown_ends_health_watches_after_not_serving(backend: Backend) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let daemon = Daemon::start(backend).await;
    let mut health = HealthClient::new(daemon.channel().await);
    let mut watches = Vec::new();
    for service in ["", "mcpd.v1.McpServerService"] {
        let mut watch = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
        watches.push((service, watch));
    }
    let started = Instant::now();
    let stopping = tokio::spawn(daemon.stop());
    for (service, mut watch) in watches {
        let last = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("a status at shutdown")
            .unwrap()
            .expect("NOT_SERVING before the end");
        assert_eq!(last.status(), ServingStatus::NotServing, "{service:?}");
        let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("the watch ends");
        assert!(matches!(end, Ok(None) | Err(_)), "{service:?}: {end:?}");
    }
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for the health watches",
        started.elapsed()
    );
}

/// Two daemons on one PostgreSQL: what one commits reaches the other's
/// watchers (LISTEN/NOTIFY), and a cursor from one resumes on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_on_one_replica_see_changes_made_on_another() {
    let db = std::sync::Arc::new(TestDb::new(Backend::Postgres).await);
    let left = Daemon::start_on(db.clone(), DaemonOptions::default()).await;
    let right = Daemon::start_on(db.clone(), DaemonOptions::default()).await;
    let on_left = left.org("acme").await;
    let on_right = right.org("acme").await;

    let mut watch = on_left.watch(None).await.unwrap();
    watch.expect(Kind::Bookmark).await;
    let id = on_right
        .create("elsewhere", stdio(["--tools", "2"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let created = watch.expect(Kind::Created).await;
    assert_eq!(
        (created.cursor, created.server_id.as_str()),
        (1, id.as_str())
    );
    // Writers on both replicas take cursors from one sequence.
    rename(&on_left, &id, "left").await;
    rename(&on_right, &id, "right").await;
    let names: Vec<(u64, String)> = [
        watch.expect(Kind::Updated).await,
        watch.expect(Kind::Updated).await,
    ]
    .iter()
    .map(|e| (e.cursor, server(e).server_name.clone()))
    .collect();
    assert_eq!(names, [(2, "left".into()), (3, "right".into())]);

    // The left replica goes; its watcher resumes on the right one.
    drop(watch);
    left.stop().await;
    on_right.close(&id).await.unwrap();
    let mut resumed = on_right.watch(Some(3)).await.unwrap();
    let closed = resumed.expect(Kind::Closed).await;
    assert_eq!((closed.cursor, closed.server_id.as_str()), (4, id.as_str()));
    resumed.assert_quiet(QUIET).await;
    right.stop().await;
}
