//! A server's state follows what contacts with it show: READY, then
//! UNREACHABLE with the error when it goes away (a sync, a call, a health
//! check), READY again when it is back; and listings filter by state and by
//! name prefix. Both backends.

mod common;

use std::time::Duration;

use common::*;
use mcpd::{manager::Limits, proto};
use proto::McpServerState::{Ready, Unreachable};
use tonic::Code;

backend_tests!(
    syncs_and_calls_track_a_server_that_goes_away_and_comes_back,
    health_checks_notice_without_traffic,
    servers_are_listed_by_state_and_name_prefix,
);

/// A timestamp in milliseconds (what the store keeps); 0 when absent.
fn ms(at: &Option<prost_types::Timestamp>) -> i64 {
    at.as_ref()
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

fn state(server: &proto::McpServer) -> proto::McpServerState {
    server.state()
}

async fn syncs_and_calls_track_a_server_that_goes_away_and_comes_back(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let http = HttpTestServer::start(["--tools", "2"]).await;
    let port = http.port();
    let created = acme
        .create("comes-and-goes", streamable_http(&http.url))
        .await
        .unwrap()
        .server
        .unwrap();
    assert_eq!(state(&created), Ready);
    assert!(created.last_error.is_empty());
    let connected = created.last_connected_at.expect("reached at creation");
    assert_eq!(created.last_synced_at, Some(connected));
    let id = created.id;

    // Gone: the sync fails as before, and the record says so.
    http.stop().await;
    let status = acme.sync(&id).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let gone = acme.get(&id).await.unwrap();
    assert_eq!(state(&gone), Unreachable, "{gone:?}");
    assert!(
        gone.last_error.contains("127.0.0.1"),
        "the error says what could not be reached: {gone:?}"
    );
    assert_eq!(gone.last_connected_at, Some(connected));
    assert_eq!(gone.tool_count, 2, "its tools stay");

    // A call that cannot connect keeps it unreachable.
    let status = acme
        .call_tool(call(&id, "tool_0000", serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(state(&acme.get(&id).await.unwrap()), Unreachable);

    // Back on its port: the next call works and the server is ready again.
    let _back = HttpTestServer::start_on(port, ["--tools", "2"]).await;
    acme.call_tool(call(&id, "tool_0000", serde_json::json!({})))
        .await
        .expect("the server is back");
    let back = acme.get(&id).await.unwrap();
    assert_eq!(state(&back), Ready, "{back:?}");
    assert!(back.last_error.is_empty());
    assert!(
        ms(&back.last_connected_at) > ms(&Some(connected)),
        "{back:?}"
    );
    assert_eq!(back.last_synced_at, Some(connected), "a call lists nothing");

    // A sync that works records both times.
    acme.sync(&id).await.unwrap();
    let synced = acme.get(&id).await.unwrap();
    assert!(
        ms(&synced.last_synced_at) > ms(&Some(connected)),
        "{synced:?}"
    );
    daemon.stop().await;
}

async fn health_checks_notice_without_traffic(backend: Backend) {
    let daemon = Daemon::start_with(
        backend,
        DaemonOptions {
            limits: Limits {
                health_interval: Some(Duration::from_millis(100)),
                ..Limits::default()
            },
            ..Default::default()
        },
    )
    .await;
    let acme = daemon.org("acme").await;
    let http = HttpTestServer::start(["--tools", "1"]).await;
    let port = http.port();
    let id = acme
        .create("watched", streamable_http(&http.url))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let stdio_id = acme
        .create("local", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let created = acme.get(&id).await.unwrap().last_connected_at;

    // Checked while up: the time of the last contact moves on.
    wait_until(
        "a health check to reach the server",
        Duration::from_secs(10),
        async || ms(&acme.get(&id).await.unwrap().last_connected_at) > ms(&created),
    )
    .await;
    http.stop().await;
    let gone = wait_for(
        "the server to be seen unreachable",
        Duration::from_secs(10),
        async || Some(acme.get(&id).await.unwrap()).filter(|s| state(s) == Unreachable),
    )
    .await;
    assert!(!gone.last_error.is_empty(), "{gone:?}");

    let _back = HttpTestServer::start_on(port, ["--tools", "1"]).await;
    wait_until(
        "the server to be seen again",
        Duration::from_secs(10),
        async || state(&acme.get(&id).await.unwrap()) == Ready,
    )
    .await;
    // The stdio server is started for its checks, and answers them.
    let local = acme.get(&stdio_id).await.unwrap();
    assert_eq!(state(&local), Ready, "{local:?}");
    assert!(
        ms(&local.last_connected_at) > ms(&local.last_synced_at),
        "{local:?}"
    );
    daemon.stop().await;
}

async fn servers_are_listed_by_state_and_name_prefix(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let http = HttpTestServer::start(["--tools", "1"]).await;
    for name in ["web-a", "web-b", "webXc", "Web-d", "db-a", "web-c"] {
        acme.create(name, streamable_http(&http.url)).await.unwrap();
    }
    let names = async |request: proto::ListMcpServersRequest| -> Vec<String> {
        let mut names: Vec<String> = acme
            .list_servers(request)
            .await
            .unwrap()
            .servers
            .into_iter()
            .map(|s| s.server_name)
            .collect();
        names.sort();
        names
    };
    let by_prefix = |prefix: &str| proto::ListMcpServersRequest {
        name_prefix: prefix.to_owned(),
        ..Default::default()
    };
    // Case-sensitive, and `-`/`_` are characters, not wildcards.
    assert_eq!(names(by_prefix("web-")).await, ["web-a", "web-b", "web-c"]);
    assert_eq!(
        names(by_prefix("web")).await,
        ["web-a", "web-b", "web-c", "webXc"]
    );
    assert_eq!(names(by_prefix("Web")).await, ["Web-d"]);
    assert_eq!(names(by_prefix("")).await.len(), 6);

    // One goes away: the state filter finds it, and only it.
    let other = HttpTestServer::start(["--tools", "1"]).await;
    let moved = acme
        .create("web-moved", streamable_http(&other.url))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    other.stop().await;
    acme.sync(&moved).await.unwrap_err();
    let unreachable = proto::ListMcpServersRequest {
        state: Unreachable.into(),
        ..Default::default()
    };
    assert_eq!(names(unreachable.clone()).await, ["web-moved"]);
    let ready_web = proto::ListMcpServersRequest {
        state: Ready.into(),
        name_prefix: "web-".into(),
        ..Default::default()
    };
    assert_eq!(names(ready_web.clone()).await, ["web-a", "web-b", "web-c"]);

    // A page token belongs to its filter.
    let first = acme
        .list_servers(proto::ListMcpServersRequest {
            page_size: 1,
            ..ready_web.clone()
        })
        .await
        .unwrap();
    assert!(!first.next_page_token.is_empty());
    let status = acme
        .list_servers(proto::ListMcpServersRequest {
            page_token: first.next_page_token.clone(),
            ..unreachable
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let second = acme
        .list_servers(proto::ListMcpServersRequest {
            page_size: 1,
            page_token: first.next_page_token,
            ..ready_web
        })
        .await
        .unwrap();
    assert_eq!(second.servers.len(), 1);
    assert_ne!(second.servers[0].id, first.servers[0].id);

    for bad in [by_prefix("web%"), by_prefix(&"a".repeat(300))] {
        let status = acme.list_servers(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("name_prefix"), "{status:?}");
    }
    let status = acme
        .list_servers(proto::ListMcpServersRequest {
            state: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    daemon.stop().await;
}
