//! Scale-out: three daemons on one PostgreSQL, and a client that spreads
//! its work over them round-robin, as any gRPC load balancer does (no
//! stickiness). PostgreSQL only: replicas need a database server they all
//! reach (an SQLite file belongs to one process).
//!
//! The workload is the full size (200 servers, 2,000 calls), so the
//! same figures can be read in `mcpd-bench replicas`: most servers are
//! registrations of a few streamable-HTTP test servers (cheap), every
//! twentieth is a stdio server (a child process on each replica that calls
//! it).

mod common;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
    time::Duration,
};

use common::*;
use futures::StreamExt;
use mcpd::proto::{self, McpServerEventKind as Kind, McpServerState};
use serde_json::json;
use tonic::{Code, Status};

const REPLICAS: usize = 3;
const SERVERS: usize = 200;
/// Every this many servers one is a stdio server (10 of 200).
const STDIO_EVERY: usize = 20;
const CALLS: usize = 2_000;
/// Names created at once on two replicas.
const RACES: usize = 9;
/// Requests in flight at once, over all replicas.
const IN_FLIGHT: usize = 16;
/// How long the replicas get to let go of what closed servers held.
const SETTLE: Duration = Duration::from_secs(30);

/// Runs `job(i)` for every `i` in `0..n`, `IN_FLIGHT` at a time; the
/// answers in order.
async fn spread<T, Fut: Future<Output = T>>(n: usize, job: impl Fn(usize) -> Fut) -> Vec<T> {
    futures::stream::iter(0..n)
        .map(job)
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// Fails the test with the first few errors, if there is any.
fn assert_no_errors<T>(what: &str, results: &[Result<T, Status>]) {
    let errors: Vec<&Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} of {} {what} failed; the first: {:?}",
        errors.len(),
        results.len(),
        &errors[..errors.len().min(3)]
    );
}

fn write_tools(path: &std::path::Path, names: &[&str]) {
    let tools: Vec<_> = names
        .iter()
        .map(|name| json!({"name": name, "input_schema": {"type": "object"}}))
        .collect();
    std::fs::write(path, serde_json::Value::from(tools).to_string()).unwrap();
}

/// Stdio test servers that are children of this process and still run
/// (the HTTP test servers the test started itself are not counted).
fn stdio_children() -> Vec<u32> {
    let bin = test_server_bin();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", std::process::id())) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first() == Some(&bin.as_bytes()) && !args.contains(&b"http".as_slice())
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

/// The daemon's `mcpd_mcp_child_processes` gauge, from `GET /metrics`.
async fn child_gauge(daemon: &Daemon) -> f64 {
    let page = reqwest::get(format!("http://{}/metrics", daemon.http_addr))
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|line| line.strip_prefix("mcpd_mcp_child_processes ")?.parse().ok())
        .unwrap_or_else(|| panic!("no mcpd_mcp_child_processes in\n{page}"))
}

/// Three replicas, one registry: creates, calls, syncs and closes spread
/// round-robin all succeed; every replica sees every server; a name is
/// taken once however many replicas race for it; a call reaches a server
/// created on another replica (each replica opens its own live session);
/// after the closes no replica holds a session or a child for a closed
/// server, whichever replica closed it; a watch on the third replica sees
/// what the other two did, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_serve_one_registry_round_robin() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(Daemon::start_on(db.clone(), DaemonOptions::default()).await);
    }
    // One key for every replica: keys live in the database.
    let key = replicas[0].keys.key("acme").to_owned();
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(OrgClient::new(replica.channel().await, &key));
    }
    let on = |i: usize| &clients[i % REPLICAS];

    // The watch is on the third replica; the writes below go to all three.
    let mut watch = clients[2].watch(None).await.unwrap();
    assert_eq!(watch.expect(Kind::Bookmark).await.cursor, 0);
    let mut events = Vec::new();

    let mut http = Vec::new();
    for _ in 0..4 {
        http.push(HttpTestServer::start(["--tools", "3"]).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let tools_file = dir.path().join("tools.json");
    write_tools(&tools_file, &["alpha", "beta"]);
    let transport = |i: usize| {
        if i == 0 {
            stdio(["--tools-file", tools_file.to_str().unwrap()])
        } else if i.is_multiple_of(STDIO_EVERY) {
            stdio(["--tools", "3"])
        } else {
            streamable_http(&http[i % http.len()].url)
        }
    };

    // Creates, round-robin.
    let created = spread(SERVERS, |i| {
        let (name, transport) = (format!("server-{i:03}"), transport(i));
        async move { on(i).create(&name, transport).await }
    })
    .await;
    assert_no_errors("creates", &created);
    let mut ids: Vec<String> = created
        .into_iter()
        .map(|r| r.unwrap().server.unwrap().id)
        .collect();

    // The same name on two replicas at once: one wins, one is told.
    for race in 0..RACES {
        let name = format!("raced-{race}");
        let url = &http[race % http.len()].url;
        let (left, right) = tokio::join!(
            on(race).create(&name, streamable_http(url)),
            on(race + 1).create(&name, streamable_http(url)),
        );
        let (won, lost) = match (left, right) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            other => panic!("{name}: expected one create and one refusal, got {other:?}"),
        };
        assert_eq!(lost.code(), Code::AlreadyExists, "{name}: {lost:?}");
        ids.push(won.server.unwrap().id);
    }
    // The watch, read between phases (nothing is lost meanwhile: it reads
    // the log).
    for _ in 0..SERVERS + RACES {
        events.push(watch.next().await.expect("a created event"));
    }
    let all: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(all.len(), SERVERS + RACES, "ids are unique");

    // Every replica lists them all, once each, and gets each one.
    for (r, client) in clients.iter().enumerate() {
        let listed = client.servers().await.unwrap();
        let names: HashSet<&str> = listed.iter().map(|s| s.server_name.as_str()).collect();
        assert_eq!(names.len(), listed.len(), "replica {r}: duplicate names");
        let listed: HashSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(listed, all, "replica {r} lists every server");
    }
    let got = spread(ids.len() * REPLICAS, |i| on(i).get(&ids[i / REPLICAS])).await;
    assert_no_errors("gets", &got);

    // Calls: server s is called on every replica (200 ≡ 2 mod 3), whichever
    // created it.
    let answers = spread(CALLS, |j| {
        let server = j % SERVERS;
        let tool = if server == 0 { "alpha" } else { "tool_0001" };
        on(j).call_tool(call(&ids[server], tool, json!({"x": j})))
    })
    .await;
    assert_no_errors("calls", &answers);
    for (j, answer) in answers.iter().enumerate() {
        let answer = answer.as_ref().unwrap();
        assert!(!answer.is_error, "call {j}: {answer:?}");
    }
    for (r, replica) in replicas.iter().enumerate() {
        let live = replica.manager.stats().live;
        assert_eq!(
            live.live_sessions, SERVERS,
            "replica {r} holds a live session for each server it called"
        );
    }
    let children = stdio_children().len();
    assert!(
        children >= REPLICAS * SERVERS / STDIO_EVERY,
        "each replica runs its own stdio children: {children}"
    );

    // Syncs, round-robin, each on the replica after the creating one; the
    // tools file changed meanwhile.
    write_tools(&tools_file, &["alpha", "gamma"]);
    let synced = spread(ids.len(), |i| on(i + 1).sync(&ids[i])).await;
    assert_no_errors("syncs", &synced);
    let first = synced[0].as_ref().unwrap();
    let added: Vec<&str> = first.added.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        (added, &first.removed[..]),
        (vec!["gamma"], &["beta".to_owned()][..])
    );
    for s in &synced[1..] {
        let s = s.as_ref().unwrap();
        assert!(
            s.added.is_empty() && s.updated.is_empty() && s.removed.is_empty(),
            "{s:?}"
        );
    }
    // The new tool is callable on a replica whose live session predates it.
    let answer = clients[2]
        .call_tool(call(&ids[0], "gamma", json!({})))
        .await
        .unwrap();
    assert!(!answer.is_error, "{answer:?}");

    events.push(watch.next().await.expect("the sync's event"));

    // Closes, round-robin, each on the replica before the creating one.
    let closed = spread(ids.len(), |i| on(i + 2).close(&ids[i])).await;
    assert_no_errors("closes", &closed);
    for _ in 0..SERVERS + RACES {
        events.push(watch.next().await.expect("a closed event"));
    }
    watch.assert_quiet(Duration::from_millis(300)).await;

    // No replica keeps anything for a closed server: not the one that
    // closed it, nor the others that had live sessions to it.
    for (r, replica) in replicas.iter().enumerate() {
        wait_until(
            &format!("replica {r} to hold no session"),
            SETTLE,
            async || {
                replica.open_sessions() == 0 && replica.manager.stats().live.live_sessions == 0
            },
        )
        .await;
        wait_until(
            &format!("replica {r}'s child gauge to reach 0"),
            SETTLE,
            async || child_gauge(replica).await == 0.0,
        )
        .await;
        assert!(clients[r].servers().await.unwrap().is_empty());
    }
    wait_until("no stdio server to be left", SETTLE, async || {
        stdio_children().is_empty()
    })
    .await;

    // The third replica's watch saw what the others did, in commit order:
    // gap-free cursors, each server created before it closed.
    let cursors: Vec<u64> = events.iter().map(|e| e.cursor).collect();
    assert_eq!(cursors, (1..=events.len() as u64).collect::<Vec<_>>());
    let mut seen: HashMap<&str, Vec<Kind>> = HashMap::new();
    for event in &events {
        seen.entry(event.server_id.as_str())
            .or_default()
            .push(event.kind());
    }
    assert_eq!(seen.len(), ids.len(), "every server has events");
    for (id, kinds) in &seen {
        let expected: &[Kind] = if *id == ids[0] {
            &[Kind::Created, Kind::ToolsChanged, Kind::Closed]
        } else {
            &[Kind::Created, Kind::Closed]
        };
        assert_eq!(kinds, expected, "{id}");
    }

    for server in http {
        server.stop().await;
    }
    for replica in replicas {
        replica.stop().await;
    }
}

/// The OAuth authorization code flow across three replicas: started on
/// the first, the browser's return lands on the third, and the second sees
/// the server ready and calls it with the tokens the third obtained.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_authorization_started_on_one_replica_finishes_on_another() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(Daemon::start_on(db.clone(), DaemonOptions::default()).await);
    }
    let key = replicas[0].keys.key("acme").to_owned();
    let first = OrgClient::new(replicas[0].channel().await, &key);
    let second = OrgClient::new(replicas[1].channel().await, &key);
    let server = HttpTestServer::start([
        "--tools",
        "2",
        "--oauth-client",
        "pre-registered:s3cret",
        "--oauth-code",
    ])
    .await;
    let pending = first
        .create("authorized-elsewhere", streamable_http(&server.url))
        .await
        .unwrap()
        .server
        .unwrap();
    assert_eq!(pending.state(), McpServerState::AuthorizationPending);
    assert_eq!(
        second.get(&pending.id).await.unwrap().state(),
        McpServerState::AuthorizationPending
    );

    // The authorization server sends the browser back to the first
    // replica's callback; a load balancer sends it to the third.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(&pending.authorization_url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FOUND);
    let back = response.headers()["location"].to_str().unwrap().to_owned();
    let third = back.replacen(
        &replicas[0].http_addr.to_string(),
        &replicas[2].http_addr.to_string(),
        1,
    );
    assert_ne!(back, third, "the callback names the first replica");
    let response = reqwest::get(&third).await.unwrap();
    let status = response.status();
    let page = response.text().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");

    let ready = second.get(&pending.id).await.unwrap();
    assert_eq!(ready.state(), McpServerState::Ready);
    assert_eq!(ready.tool_count, 2);
    let answer = second
        .call_tool(call(&pending.id, "tool_0000", json!({"x": 1})))
        .await
        .unwrap();
    assert!(!answer.is_error, "{answer:?}");
    server.stop().await;
    for replica in replicas {
        replica.stop().await;
    }
}

/// What one replica closes, another that holds a live session to it lets go
/// of (its stdio child included) without waiting for the idle timeout, and
/// a call there is refused as NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_on_one_replica_ends_the_live_sessions_of_the_others() {
    let (left, right, on_left, on_right) = two_replicas().await;
    let kept = on_left
        .create("kept", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let closed = on_left
        .create("closed", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    for id in [&kept, &closed] {
        let answer = on_right
            .call_tool(call(id, "tool_0000", json!({"x": 1})))
            .await
            .unwrap();
        assert!(!answer.is_error, "{answer:?}");
    }
    assert_eq!(right.manager.stats().live.live_sessions, 2);
    assert_eq!(child_gauge(&right).await, 2.0);

    on_left.close(&closed).await.unwrap();
    wait_until(
        "the other replica to end its session to the closed server",
        SETTLE,
        async || right.manager.stats().live.live_sessions == 1,
    )
    .await;
    wait_until("its child to be reaped", SETTLE, async || {
        child_gauge(&right).await == 1.0
    })
    .await;
    let refused = on_right
        .call_tool(call(&closed, "tool_0000", json!({"x": 1})))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    // The other server's session stays, and serves.
    let answer = on_right
        .call_tool(call(&kept, "tool_0000", json!({"x": 2})))
        .await
        .unwrap();
    assert!(!answer.is_error, "{answer:?}");
    assert_eq!(right.manager.stats().live.session_opens, 2);
    on_left.close(&kept).await.unwrap();
    right.stop().await;
    left.stop().await;
}

/// A transport replaced through one replica is what the next call on
/// another uses, even though that replica had a session open with the old
/// one (and kept using it: nothing else would have closed it while busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transport_replaced_on_one_replica_is_used_by_the_others() {
    let (left, right, on_left, on_right) = two_replicas().await;
    let old = HttpTestServer::start(["--tools", "1", "--tool-prefix", "old_"]).await;
    let new = HttpTestServer::start(["--tools", "1", "--tool-prefix", "new_"]).await;
    let id = on_left
        .create("moving", streamable_http(&old.url))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let answer = on_right
        .call_tool(call(&id, "old_0000", json!({"x": 1})))
        .await
        .unwrap();
    assert!(!answer.is_error, "{answer:?}");

    on_left
        .raw()
        .update_mcp_server(on_left.req(proto::UpdateMcpServerRequest {
            server_id: id.clone(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["transport".into()],
            }),
            transport: Some(proto::update_mcp_server_request::Transport::StreamableHttp(
                proto::StreamableHttpTransport {
                    url: new.url.clone(),
                    headers: Default::default(),
                    oauth: None,
                },
            )),
            ..Default::default()
        }))
        .await
        .unwrap();
    // The old server is still up: only the new transport tells them apart.
    let answer = on_right
        .call_tool(call(&id, "new_0000", json!({"x": 2})))
        .await
        .unwrap();
    assert!(!answer.is_error, "{answer:?}");
    assert!(text_of(&answer).contains("new_0000"), "{answer:?}");
    assert_eq!(right.manager.stats().live.session_opens, 2);
    on_left.close(&id).await.unwrap();
    old.stop().await;
    new.stop().await;
    right.stop().await;
    left.stop().await;
}
