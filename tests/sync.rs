//! Keeping the registry true as servers change: SyncMcpServerTools writes
//! exactly the difference, and the organization's catalogue shows every
//! tool with its qualified name, on both backends.

mod common;

use std::time::Duration;

use common::*;
use mcpd::proto;
use serde_json::json;
use tonic::Code;

backend_tests!(
    a_sync_writes_exactly_the_difference,
    announced_tool_changes_are_synced_at_2026_07_28,
    the_catalogue_shows_shared_qualified_names,
    updates_rename_reprefix_and_rotate_the_transport,
    announced_tool_changes_are_synced,
    syncs_of_many_tools_write_every_batch,
);

async fn update(
    acme: &OrgClient,
    id: &str,
    paths: &[&str],
    fill: impl FnOnce(&mut proto::UpdateMcpServerRequest),
) -> Result<proto::UpdateMcpServerResponse, tonic::Status> {
    let mut request = proto::UpdateMcpServerRequest {
        server_id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
        ..Default::default()
    };
    fill(&mut request);
    acme.raw()
        .update_mcp_server(acme.req(request))
        .await
        .map(|r| r.into_inner())
}

fn http_with_bearer(url: &str, token: &str) -> proto::update_mcp_server_request::Transport {
    proto::update_mcp_server_request::Transport::StreamableHttp(proto::StreamableHttpTransport {
        url: url.to_owned(),
        headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
        oauth: None,
    })
}

fn write_tools(path: &std::path::Path, tools: serde_json::Value) {
    std::fs::write(path, tools.to_string()).unwrap();
}

fn tool(name: &str, description: &str) -> serde_json::Value {
    json!({"name": name, "description": description, "input_schema": {"type": "object"}})
}

fn names(tools: &[proto::Tool]) -> Vec<&str> {
    tools.iter().map(|t| t.name.as_str()).collect()
}

async fn a_sync_writes_exactly_the_difference(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.json");
    write_tools(
        &file,
        json!([tool("alpha", "a"), tool("beta", "b"), tool("gamma", "c")]),
    );
    let created = acme
        .create("changing", stdio(["--tools-file", file.to_str().unwrap()]))
        .await
        .unwrap();
    assert_eq!(names(&created.tools), ["alpha", "beta", "gamma"]);
    // What the server said about itself is kept.
    let info = created
        .server
        .as_ref()
        .unwrap()
        .server_info
        .clone()
        .unwrap();
    assert_eq!(info.name, "mcp-test-server", "{info:?}");
    assert!(!info.protocol_version.is_empty(), "{info:?}");
    assert!(info.capabilities_json.contains("tools"), "{info:?}");
    let id = created.server.unwrap().id;
    let beta_id = created.tools[1].id.clone();

    // Nothing changed: nothing is written, however often.
    let before = daemon.registry().tool_row_versions().await;
    for _ in 0..2 {
        let synced = acme.sync(&id).await.unwrap();
        assert!(
            synced.added.is_empty() && synced.updated.is_empty() && synced.removed.is_empty(),
            "{synced:?}"
        );
        assert_eq!(synced.server.unwrap().tool_count, 3);
    }
    assert_eq!(daemon.registry().tool_row_versions().await, before);

    // The daemon says how long finding the difference and writing it took.
    let response = acme
        .raw()
        .sync_mcp_server_tools(acme.req(proto::SyncMcpServerToolsRequest {
            server_id: id.clone(),
        }))
        .await
        .unwrap();
    let micros = |header: &str| {
        response
            .metadata()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert!(
        micros(mcpd::api::DIFF_US_HEADER).is_some(),
        "{:?}",
        response.metadata()
    );
    assert!(
        micros(mcpd::api::PERSIST_US_HEADER).is_some_and(|us| us > 0),
        "{:?}",
        response.metadata()
    );

    // Rows from before content digests (migration 000010): the next sync
    // compares them in full, reports no change, and gives them their
    // digests; the one after writes nothing again.
    assert_eq!(daemon.registry().undigested_tools().await, 0);
    assert_eq!(daemon.registry().forget_tool_digests().await, 3);
    let synced = acme.sync(&id).await.unwrap();
    assert!(
        synced.added.is_empty() && synced.updated.is_empty() && synced.removed.is_empty(),
        "{synced:?}"
    );
    assert_eq!(daemon.registry().undigested_tools().await, 0);
    let before = daemon.registry().tool_row_versions().await;
    acme.sync(&id).await.unwrap();
    assert_eq!(daemon.registry().tool_row_versions().await, before);

    // Under a prefix given after creation: a tool rewritten in place keeps
    // the qualified name the prefix change gave it, and a new one gets it.
    update(&acme, &id, &["tool_prefix"], |r| {
        r.tool_prefix = "ac__".into()
    })
    .await
    .unwrap();

    // One changed, one gone, one new, one invalid.
    write_tools(
        &file,
        json!([
            tool("alpha", "a"),
            tool("beta", "b, now better"),
            tool("delta", "d"),
            tool("not valid", "spaces are not allowed in tool names"),
        ]),
    );
    let synced = acme.sync(&id).await.unwrap();
    assert_eq!(names(&synced.added), ["delta"]);
    assert_eq!(names(&synced.updated), ["beta"]);
    assert_eq!(synced.updated[0].id, beta_id, "updated in place");
    assert_eq!(synced.updated[0].description, "b, now better");
    assert_eq!(synced.removed, ["gamma"]);
    assert_eq!(synced.failed_tools.len(), 1, "{synced:?}");
    assert_eq!(synced.failed_tools[0].name, "not valid");
    assert_eq!(synced.server.unwrap().tool_count, 3);
    let stored = acme.tools(&id).await.unwrap();
    assert_eq!(names(&stored), ["alpha", "beta", "delta"]);
    let qualified: Vec<&str> = stored.iter().map(|t| t.qualified_name.as_str()).collect();
    assert_eq!(qualified, ["ac__alpha", "ac__beta", "ac__delta"]);
    assert_eq!(synced.updated[0].qualified_name, "ac__beta");
    // Nothing stale: exactly one mapping per stored tool.
    daemon.registry().assert_whole("acme", 3).await;

    // Calls follow: the new tool runs, the removed one is unknown.
    let answer = acme.call_tool(call(&id, "delta", json!({}))).await.unwrap();
    assert!(!answer.is_error, "{answer:?}");
    let status = acme
        .call_tool(call(&id, "gamma", json!({})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Unknown and foreign servers are NOT_FOUND; a server that cannot be
    // reached leaves the registry as it was.
    let status = acme
        .sync("01a22c9b-b1e9-7593-b6dd-d5fd91f63bc6")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let other = daemon.org("globex").await;
    assert_eq!(other.sync(&id).await.unwrap_err().code(), Code::NotFound);
    std::fs::remove_file(&file).unwrap();
    let before = daemon.registry().tool_row_versions().await;
    let status = acme.sync(&id).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(daemon.registry().tool_row_versions().await, before);
    daemon.stop().await;
}

/// Sizes that cross the store's statement batches (on SQLite at most 64
/// rows, cut in powers of two): every row of every batch is written, once.
async fn syncs_of_many_tools_write_every_batch(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.json");
    let listing = |count: usize, changed: usize| {
        let tools: Vec<_> = (0..count)
            .map(|i| {
                let version = if i < changed { "v2" } else { "v1" };
                tool(&format!("t{i:03}"), &format!("tool {i} {version}"))
            })
            .collect();
        json!(tools)
    };
    write_tools(&file, listing(100, 0));
    let created = acme
        .create("many", stdio(["--tools-file", file.to_str().unwrap()]))
        .await
        .unwrap();
    assert_eq!(created.tools.len(), 100);
    let id = created.server.unwrap().id;
    daemon.registry().assert_whole("acme", 100).await;

    // 70 of the 100 change and 67 are new.
    write_tools(&file, listing(167, 70));
    let synced = acme.sync(&id).await.unwrap();
    assert_eq!(synced.updated.len(), 70, "{:?}", names(&synced.updated));
    assert_eq!(synced.added.len(), 67, "{:?}", names(&synced.added));
    assert!(synced.removed.is_empty(), "{:?}", synced.removed);
    let stored = acme.tools(&id).await.unwrap();
    assert_eq!(stored.len(), 167);
    for (i, tool) in stored.iter().enumerate() {
        assert_eq!(tool.name, format!("t{i:03}"));
        let version = if i < 70 { "v2" } else { "v1" };
        assert_eq!(tool.description, format!("tool {i} {version}"), "{tool:?}");
    }
    daemon.registry().assert_whole("acme", 167).await;
    let before = daemon.registry().tool_row_versions().await;
    let again = acme.sync(&id).await.unwrap();
    assert!(
        again.added.is_empty() && again.updated.is_empty() && again.removed.is_empty(),
        "{again:?}"
    );
    assert_eq!(daemon.registry().tool_row_versions().await, before);
    daemon.stop().await;
}

async fn the_catalogue_shows_shared_qualified_names(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let first = acme.create("first", stdio(["--tools", "2"])).await.unwrap();
    let second = acme
        .create("second", stdio(["--tools", "2"]))
        .await
        .unwrap();
    let mut request = create_request("third", stdio(["--tools", "2"]));
    request.tool_prefix = "third__".to_owned();
    acme.raw()
        .create_mcp_server(acme.req(request))
        .await
        .unwrap();

    // Page by page, by qualified name: the two unprefixed servers' tools
    // share their qualified names, the prefixed ones do not.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = acme
            .raw()
            .list_mcp_server_tools(acme.req(proto::ListMcpServerToolsRequest {
                server_id: String::new(),
                page_size: 4,
                page_token: token,
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.tools);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let listed: Vec<(&str, bool)> = seen
        .iter()
        .map(|t| (t.qualified_name.as_str(), t.qualified_name_shared))
        .collect();
    assert_eq!(
        listed,
        [
            ("third__tool_0000", false),
            ("third__tool_0001", false),
            ("tool_0000", true),
            ("tool_0000", true),
            ("tool_0001", true),
            ("tool_0001", true),
        ]
    );
    let servers: std::collections::HashSet<&str> =
        seen[2..4].iter().map(|t| t.server_id.as_str()).collect();
    let expected: std::collections::HashSet<&str> = [
        first.server.as_ref().unwrap().id.as_str(),
        second.server.as_ref().unwrap().id.as_str(),
    ]
    .into();
    assert_eq!(servers, expected);
    // Another organization's catalogue is its own.
    let other = daemon.org("globex").await;
    let page = other
        .raw()
        .list_mcp_server_tools(other.req(proto::ListMcpServerToolsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(page.tools.is_empty());
    daemon.stop().await;
}

async fn updates_rename_reprefix_and_rotate_the_transport(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let alpha = acme.create("alpha", stdio(["--tools", "2"])).await.unwrap();
    let id = alpha.server.unwrap().id;
    acme.create("beta", stdio(["--tools", "1"])).await.unwrap();

    // A taken name is refused, never a deletion; the mask is checked.
    let status = update(&acme, &id, &["server_name"], |r| {
        r.server_name = "beta".into()
    })
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(acme.servers().await.unwrap().len(), 2);
    assert_eq!(acme.get(&id).await.unwrap().server_name, "alpha");
    for (paths, expected) in [
        (&[][..], "names no field"),
        (&["endpoint"][..], "\"endpoint\""),
    ] {
        let status = update(&acme, &id, paths, |_| {}).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }

    // Rename and prefix at once: the qualified names follow.
    let updated = update(&acme, &id, &["server_name", "tool_prefix"], |r| {
        r.server_name = "gamma".into();
        r.tool_prefix = "g__".into();
    })
    .await
    .unwrap();
    let server = updated.server.unwrap();
    assert_eq!(
        (server.server_name.as_str(), server.tool_prefix.as_str()),
        ("gamma", "g__")
    );
    let qualified: Vec<String> = acme
        .tools(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.qualified_name)
        .collect();
    assert_eq!(qualified, ["g__tool_0000", "g__tool_0001"]);

    // Secret rotation: a server that takes a bearer token from a file.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token").unwrap();
    let remote = HttpTestServer::start([
        "--tools".to_owned(),
        "3".to_owned(),
        "--bearer-file".to_owned(),
        token.to_string_lossy().into_owned(),
    ])
    .await;
    let moved = update(&acme, &id, &["transport"], |r| {
        r.transport = Some(http_with_bearer(&remote.url, "first-token"))
    })
    .await
    .unwrap();
    // The transport changed: its tools were synced in the same step.
    assert_eq!(names(&moved.added), ["tool_0002"]);
    assert!(
        moved.removed.is_empty() && moved.updated.is_empty(),
        "{moved:?}"
    );
    let server = moved.server.unwrap();
    assert_eq!(server.endpoint, remote.url);
    assert_eq!(server.tool_count, 3);
    assert_eq!(server.secret_names, ["authorization"]);
    let answer = acme
        .call_tool(call(&id, "tool_0002", json!({})))
        .await
        .unwrap();
    assert!(!answer.is_error, "{answer:?}");

    // The server now wants a new token: the old one is refused...
    std::fs::write(&token, "second-token").unwrap();
    let status = acme
        .call_tool(call(&id, "tool_0002", json!({})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // ...a transport that cannot connect changes nothing...
    let before = daemon.registry().tool_row_versions().await;
    let stored_before = daemon.registry().servers("acme").await;
    let (_socket, port) = refused_port();
    let status = update(&acme, &id, &["transport"], |r| {
        r.transport = Some(http_with_bearer(
            &format!("http://127.0.0.1:{port}/mcp"),
            "second-token",
        ))
    })
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(daemon.registry().tool_row_versions().await, before);
    assert_eq!(daemon.registry().servers("acme").await, stored_before);
    // ...and the rotated one is used from the next call on.
    update(&acme, &id, &["transport"], |r| {
        r.transport = Some(http_with_bearer(&remote.url, "second-token"))
    })
    .await
    .unwrap();
    let answer = acme
        .call_tool(call(&id, "tool_0002", json!({})))
        .await
        .unwrap();
    assert!(!answer.is_error, "{answer:?}");
    daemon.stop().await;
}

/// A server that announces `notifications/tools/list_changed` on the live
/// session of its calls gets synced without anyone asking: additions,
/// changes and removals, with the usual exactness.
async fn announced_tool_changes_are_synced(backend: Backend) {
    announcements_are_synced(backend, &["--legacy"]).await
}

/// The same at 2026-07-28, where the live session asks for announcements
/// with `subscriptions/listen`.
async fn announced_tool_changes_are_synced_at_2026_07_28(backend: Backend) {
    announcements_are_synced(backend, &[]).await
}

async fn announcements_are_synced(backend: Backend, lifecycle: &[&str]) {
    let daemon = Daemon::start_with(backend, DaemonOptions::quick_sync()).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.json");
    write_tools(&file, json!([tool("alpha", "a")]));
    let mut args = lifecycle.to_vec();
    args.extend([
        "--notify-list-changed",
        "--tools-file",
        file.to_str().unwrap(),
    ]);
    let id = acme
        .create("announcing", stdio(args))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    // A call opens the live session that hears the announcements.
    acme.call_tool(call(&id, "alpha", json!({}))).await.unwrap();
    let alpha_id = acme.tools(&id).await.unwrap()[0].id.clone();

    write_tools(
        &file,
        json!([tool("alpha", "a, changed"), tool("beta", "b")]),
    );
    let tools = wait_for(
        "the announced change to be synced",
        Duration::from_secs(10),
        async || {
            Some(acme.tools(&id).await.unwrap()).filter(|tools| {
                names(tools) == ["alpha", "beta"] && tools[0].description == "a, changed"
            })
        },
    )
    .await;
    assert_eq!(tools[0].id, alpha_id, "changed in place");
    assert_eq!(acme.get(&id).await.unwrap().tool_count, 2);

    write_tools(&file, json!([tool("beta", "b")]));
    wait_until(
        "the removal to be synced",
        Duration::from_secs(10),
        async || names(&acme.tools(&id).await.unwrap()) == ["beta"],
    )
    .await;
    let status = acme
        .call_tool(call(&id, "alpha", json!({})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    daemon.stop().await;
}

/// The reference server's tools (schemas, titles, annotations, output
/// schemas) read back equal to what it lists: a sync right after the create
/// finds no difference and writes no tool row.
/// A daemon keeps the stored digests of the servers it synced. Another
/// replica's sync changes them behind its back; the next sync here must see
/// the database's tools, not what it held (which would add a tool twice and
/// miss the one to add).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_after_another_replica_synced_reads_what_it_wrote() {
    let (left, right, on_left, on_right) = two_replicas().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.json");
    write_tools(&file, json!([tool("alpha", "a"), tool("beta", "b")]));
    let id = on_left
        .create("shared", stdio(["--tools-file", file.to_str().unwrap()]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    // The left daemon now holds alpha and beta.
    let synced = on_left.sync(&id).await.unwrap();
    assert!(
        synced.added.is_empty() && synced.removed.is_empty(),
        "{synced:?}"
    );

    write_tools(&file, json!([tool("alpha", "a"), tool("gamma", "c")]));
    let synced = on_right.sync(&id).await.unwrap();
    assert_eq!(names(&synced.added), ["gamma"]);
    assert_eq!(synced.removed, ["beta"]);

    write_tools(
        &file,
        json!([tool("alpha", "a2"), tool("beta", "b"), tool("gamma", "c")]),
    );
    let synced = on_left.sync(&id).await.unwrap();
    assert_eq!(names(&synced.added), ["beta"], "{synced:?}");
    assert_eq!(names(&synced.updated), ["alpha"], "{synced:?}");
    assert!(synced.removed.is_empty(), "{synced:?}");
    let stored = on_right.tools(&id).await.unwrap();
    assert_eq!(names(&stored), ["alpha", "beta", "gamma"]);
    left.registry().assert_whole("acme", 3).await;

    // And the other way round, now that the right daemon holds digests too.
    write_tools(&file, json!([tool("gamma", "c")]));
    let synced = on_left.sync(&id).await.unwrap();
    assert_eq!(synced.removed, ["alpha", "beta"]);
    write_tools(&file, json!([tool("alpha", "a"), tool("gamma", "c")]));
    let synced = on_right.sync(&id).await.unwrap();
    assert_eq!(names(&synced.added), ["alpha"], "{synced:?}");
    assert!(
        synced.removed.is_empty() && synced.updated.is_empty(),
        "{synced:?}"
    );
    right.registry().assert_whole("acme", 2).await;
    left.stop().await;
    right.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_everything_syncs_to_no_difference() {
    let daemon = Daemon::start(Backend::Postgres).await;
    let acme = daemon.org("acme").await;
    let created = acme
        .create("everything", everything_stdio())
        .await
        .expect("register server-everything");
    assert!(created.tools.len() >= 5, "{:?}", names(&created.tools));
    let id = created.server.unwrap().id;
    let before = daemon.registry().tool_row_versions().await;
    let synced = acme.sync(&id).await.unwrap();
    assert!(
        synced.added.is_empty() && synced.updated.is_empty() && synced.removed.is_empty(),
        "{synced:?}"
    );
    assert_eq!(daemon.registry().tool_row_versions().await, before);
    let info = synced.server.unwrap().server_info.expect("server info");
    assert!(info.name.contains("everything"), "{info:?}");
    daemon.stop().await;
}
