//! Automatic syncs one at a time per server across the daemons sharing a
//! database: the sync lease. Several replicas each hold a live session to
//! one remote server; a change it announces is heard by all of them, and
//! only the lease holder lists its tools, the others' requests riding on
//! its listing. A lease left by a daemon that died delays a sync until it
//! expires, no longer.

mod common;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::*;
use mcpd::{
    proto::{self, McpServerEventKind as Kind},
    store::{LeaseAttempt, LeaseRelease, StoreError},
};
use serde_json::json;

backend_tests!(
    the_lease_hands_requests_over,
    a_lease_left_by_a_dead_daemon_delays_the_sync_until_it_expires,
);

const REPLICAS: usize = 3;
/// How long the test server takes to answer a `tools/list`: listings on
/// several replicas at once would overlap for sure.
const LIST_DELAY_MS: &str = "400";
/// Longer than any lease a test here takes.
const TTL: Duration = Duration::from_secs(60);

/// Replaces the tools file at once: a listing never reads half of it.
fn write_tools(path: &Path, tools: serde_json::Value) {
    let next = path.with_extension("next");
    std::fs::write(&next, tools.to_string()).unwrap();
    std::fs::rename(&next, path).unwrap();
}

fn tool(name: &str, description: &str) -> serde_json::Value {
    json!({"name": name, "description": description, "input_schema": {"type": "object"}})
}

fn names(tools: &[proto::Tool]) -> Vec<&str> {
    tools.iter().map(|t| t.name.as_str()).collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn ms_of(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp.seconds * 1000 + i64::from(timestamp.nanos) / 1_000_000
}

/// The listings the test server logged from line `from` on, each with the
/// listings in flight when it started (itself included): fails the test if
/// two ever overlapped.
fn assert_one_at_a_time(list_log: &Path, from: usize) -> usize {
    let listings = lines(list_log);
    let since = &listings[from.min(listings.len())..];
    assert!(
        since.iter().all(|line| line == "list 1"),
        "tools/list requests overlapped: {since:?}"
    );
    since.len()
}

/// Waits until every sync requested for the server is done and nobody
/// holds its lease; answers the lease.
async fn settled(registry: &Registry, server_id: &str, requested_at_least: i64) -> StoredLease {
    wait_for(
        "every requested sync to be done and the lease free",
        Duration::from_secs(30),
        async || {
            registry.sync_lease(server_id).await.filter(|lease| {
                lease.requested >= requested_at_least
                    && lease.done == lease.requested
                    && lease.holder.is_none()
            })
        },
    )
    .await
}

/// Three replicas on one PostgreSQL database, each with a live session to
/// one streamable-HTTP server that announces its tool changes and takes a
/// while to list them. Every replica hears each change; the change is
/// synced, the listings never overlap (without the lease all three list at
/// once), the watch shows one TOOLS_CHANGED per change, and the lease is
/// free again for the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_list_an_announcing_server_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.json");
    let list_log = dir.path().join("lists.log");
    let lifecycle_log = dir.path().join("lifecycle.log");
    write_tools(&file, json!([tool("alpha", "a")]));
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let server = HttpTestServer::start([
        "--tools-file".to_owned(),
        path(&file),
        "--notify-list-changed".to_owned(),
        "--list-delay-ms".to_owned(),
        LIST_DELAY_MS.to_owned(),
        "--list-log".to_owned(),
        path(&list_log),
        "--lifecycle-log".to_owned(),
        path(&lifecycle_log),
    ])
    .await;

    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let options = DaemonOptions::quick_sync();
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(Daemon::start_on(db.clone(), options.clone()).await);
    }
    let key = replicas[0].keys.key("acme").to_owned();
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(OrgClient::new(replica.channel().await, &key));
    }
    let registry = replicas[0].registry();

    let id = clients[0]
        .create("announcing", streamable_http(&server.url))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let mut watch = clients[1].watch(None).await.unwrap();
    watch.expect(Kind::Bookmark).await;
    // Each replica opens its live session, which listens for announcements.
    for client in &clients {
        let answer = client
            .call_tool(call(&id, "alpha", json!({})))
            .await
            .unwrap();
        assert!(!answer.is_error, "{answer:?}");
    }
    wait_until(
        "every replica's session to listen for announcements",
        Duration::from_secs(10),
        async || {
            lines(&lifecycle_log)
                .iter()
                .filter(|line| *line == "subscriptions/listen")
                .count()
                == REPLICAS
        },
    )
    .await;

    let before = lines(&list_log).len();
    write_tools(
        &file,
        json!([tool("alpha", "a, changed"), tool("beta", "b")]),
    );
    wait_until(
        "the change to be synced",
        Duration::from_secs(30),
        async || {
            let tools = clients[2].tools(&id).await.unwrap();
            names(&tools) == ["alpha", "beta"] && tools[0].description == "a, changed"
        },
    )
    .await;
    // All replicas heard it at once: without the lease, all three list now.
    assert_one_at_a_time(&list_log, before);
    let lease = settled(&registry, &id, REPLICAS as i64).await;
    let listed = assert_one_at_a_time(&list_log, before);
    assert!(
        (1..=REPLICAS).contains(&listed),
        "{listed} listings for one change; lease: {lease:?}"
    );
    let changed = watch.expect(Kind::ToolsChanged).await;
    assert_eq!(changed.server_id, id);
    // Listings after the first find nothing new: no second event.
    watch.assert_quiet(Duration::from_millis(500)).await;

    // The lease is free again: the next change is synced the same way.
    let before = lines(&list_log).len();
    write_tools(&file, json!([tool("beta", "b")]));
    wait_until(
        "the second change to be synced",
        Duration::from_secs(30),
        async || names(&clients[1].tools(&id).await.unwrap()) == ["beta"],
    )
    .await;
    assert_one_at_a_time(&list_log, before);
    settled(&registry, &id, lease.requested + REPLICAS as i64).await;
    let listed = assert_one_at_a_time(&list_log, before);
    assert!((1..=REPLICAS).contains(&listed), "{listed} listings");
    let changed = watch.expect(Kind::ToolsChanged).await;
    assert_eq!(changed.server_id, id);
    watch.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(clients[0].get(&id).await.unwrap().tool_count, 1);

    // A closed server's lease goes with it.
    clients[0].close(&id).await.unwrap();
    assert_eq!(registry.sync_lease(&id).await, None);
    drop(watch);
    for replica in replicas {
        replica.stop().await;
    }
    server.stop().await;
}

/// The store's lease on its own: one holder at a time, requests made while
/// it lists make it list again, a covered request is done, an expired lease
/// is taken over (and its old holder's release is a no-op), and the lease
/// goes with its server.
async fn the_lease_hands_requests_over(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let id = acme
        .create("leased", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let store = &daemon.store;
    let (one, two) = ("daemon-one", "daemon-two");

    let first = store.request_sync(&id).await.unwrap();
    assert_eq!(first, 1);
    assert_eq!(
        store
            .acquire_sync_lease(&id, one, first, TTL)
            .await
            .unwrap(),
        LeaseAttempt::Acquired { generation: 1 }
    );
    // Another daemon's request while the first lists: it waits, and the
    // holder lists again for it.
    let second = store.request_sync(&id).await.unwrap();
    assert_eq!(second, 2);
    assert!(matches!(
        store.acquire_sync_lease(&id, two, second, TTL).await.unwrap(),
        LeaseAttempt::Held { until } if until > SystemTime::now() + TTL / 2
    ));
    assert_eq!(
        store.release_sync_lease(&id, one, 1, TTL).await.unwrap(),
        LeaseRelease::Again { generation: 2 }
    );
    assert_eq!(
        store.release_sync_lease(&id, one, 2, TTL).await.unwrap(),
        LeaseRelease::Released
    );
    assert_eq!(
        store
            .acquire_sync_lease(&id, two, second, TTL)
            .await
            .unwrap(),
        LeaseAttempt::Done
    );
    let lease = daemon.registry().sync_lease(&id).await.unwrap();
    assert_eq!(
        (lease.holder.as_deref(), lease.requested, lease.done),
        (None, 2, 2),
        "{lease:?}"
    );

    // A holder whose lease expired loses it to a daemon with a request.
    let third = store.request_sync(&id).await.unwrap();
    assert_eq!(
        store
            .acquire_sync_lease(&id, one, third, Duration::ZERO)
            .await
            .unwrap(),
        LeaseAttempt::Acquired { generation: 3 }
    );
    assert_eq!(
        store
            .acquire_sync_lease(&id, two, third, TTL)
            .await
            .unwrap(),
        LeaseAttempt::Acquired { generation: 3 }
    );
    assert_eq!(
        store.release_sync_lease(&id, one, 3, TTL).await.unwrap(),
        LeaseRelease::Lost
    );
    assert_eq!(
        store.release_sync_lease(&id, two, 3, TTL).await.unwrap(),
        LeaseRelease::Released
    );

    acme.close(&id).await.unwrap();
    assert_eq!(daemon.registry().sync_lease(&id).await, None);
    assert!(matches!(
        store.request_sync(&id).await,
        Err(StoreError::ServerNotFound(_))
    ));
    daemon.stop().await;
}

/// A lease held by a daemon that is gone (SIGKILLed mid-listing, say) and
/// expires in a few seconds: the announced change waits for the expiry and
/// is synced right after it.
async fn a_lease_left_by_a_dead_daemon_delays_the_sync_until_it_expires(backend: Backend) {
    let daemon = Daemon::start_with(backend, DaemonOptions::quick_sync()).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.json");
    write_tools(&file, json!([tool("alpha", "a")]));
    let id = acme
        .create(
            "announcing",
            stdio([
                "--legacy",
                "--notify-list-changed",
                "--tools-file",
                file.to_str().unwrap(),
            ]),
        )
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    // A call opens the live session that hears the announcements.
    acme.call_tool(call(&id, "alpha", json!({}))).await.unwrap();

    let expires_at = now_ms() + 3_000;
    let registry = daemon.registry();
    registry
        .put_sync_lease(&id, "a-daemon-that-died", expires_at)
        .await;
    write_tools(&file, json!([tool("alpha", "a"), tool("beta", "b")]));
    wait_until(
        "the change to be synced once the lease expired",
        Duration::from_secs(30),
        async || names(&acme.tools(&id).await.unwrap()) == ["alpha", "beta"],
    )
    .await;
    let server = acme.get(&id).await.unwrap();
    let synced_at = ms_of(server.last_synced_at.as_ref().expect("synced"));
    assert!(
        synced_at >= expires_at,
        "synced {} ms before the dead daemon's lease expired",
        expires_at - synced_at
    );
    settled(&registry, &id, 1).await;
    daemon.stop().await;
}
