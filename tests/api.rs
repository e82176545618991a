//! End to end through a tonic client against an in-process daemon, on
//! PostgreSQL and on SQLite, with real rmcp MCP servers.

mod common;

use common::*;
use mcpd::{manager::Limits, proto};
use sha2::Digest;
use tonic::Code;

backend_tests!(
    create_get_list_tools_close,
    list_servers_pages_through_everything,
    duplicate_names_are_already_exists,
    organizations_are_isolated,
    invalid_arguments_are_rejected_with_reasons,
    calls_need_a_valid_api_key,
    oversized_requests_are_resource_exhausted,
    too_many_tools_are_resource_exhausted,
    operator_policy_refuses_commands_and_addresses,
    invalid_tools_are_reported_not_fatal,
    every_server_keeps_its_own_tools,
    streamable_http_server,
);

async fn create_get_list_tools_close(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;

    let created = acme
        .create("weather", stdio(["--tools", "3"]))
        .await
        .expect("create");
    let server = created.server.expect("server");
    assert_eq!(server.server_name, "weather");
    assert_eq!(server.transport(), proto::TransportKind::Stdio);
    assert_eq!(server.tool_count, 3);
    assert!(server.created_at.is_some_and(|t| t.seconds > 1_700_000_000));
    let mut names: Vec<_> = created.tools.iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["tool_0000", "tool_0001", "tool_0002"]);
    assert!(
        created.failed_tools.is_empty(),
        "{:?}",
        created.failed_tools
    );
    for tool in &created.tools {
        let schema: serde_json::Value = serde_json::from_str(&tool.input_schema_json).unwrap();
        assert_eq!(schema["type"], "object");
        assert!(!tool.id.is_empty());
    }

    assert_eq!(acme.get(&server.id).await.unwrap(), server);
    let listed = acme.servers_page(0, "").await.unwrap();
    assert_eq!(listed.servers, vec![server.clone()]);
    assert!(listed.next_page_token.is_empty());

    let tools = acme.tools_page(&server.id, 2, "").await.unwrap();
    assert_eq!(tools.tools.len(), 2);
    assert_eq!(tools.tools[0].name, "tool_0000");
    assert!(!tools.next_page_token.is_empty());
    let rest = acme
        .tools_page(&server.id, 2, &tools.next_page_token)
        .await
        .unwrap();
    assert_eq!(
        rest.tools
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["tool_0002"]
    );
    assert!(rest.next_page_token.is_empty());
    assert_eq!(acme.tools(&server.id).await.unwrap().len(), 3);

    let closed = acme.close(&server.id).await.unwrap();
    assert_eq!(closed.removed_tools, 3);
    assert_eq!(closed.removed_mappings, 3);
    not_found_answers(&acme, &server.id).await;
    daemon.registry().assert_empty("acme").await;
    // The name is free again once the server is closed.
    acme.create("weather", stdio(["--tools", "1"]))
        .await
        .expect("re-create after close");
    daemon.stop().await;
}

/// Get, list tools and close of `server_id` all answer NOT_FOUND naming the
/// id; returns the three messages with the id replaced by `ID`.
async fn not_found_answers(org: &OrgClient, server_id: &str) -> Vec<String> {
    let answers = [
        ("get", org.get(server_id).await.map(|_| ())),
        ("tools", org.tools_page(server_id, 0, "").await.map(|_| ())),
        ("close", org.close(server_id).await.map(|_| ())),
    ];
    answers
        .into_iter()
        .map(|(rpc, answer)| {
            let status = answer.expect_err(rpc);
            assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
            assert!(
                status.message().contains(server_id),
                "{rpc}: {:?} names the id",
                status.message()
            );
            status.message().replace(server_id, "ID")
        })
        .collect()
}

async fn list_servers_pages_through_everything(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let prefix = format!("s{i}_");
        let created = acme
            .create(
                &format!("s{i}"),
                stdio(["--tools", "1", "--tool-prefix", &prefix]),
            )
            .await
            .unwrap();
        ids.push(created.server.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = acme.servers_page(2, &token).await.unwrap();
        pages += 1;
        assert!(page.servers.len() <= 2);
        seen.extend(page.servers.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "servers come back once each, oldest first");
    let all: Vec<_> = acme
        .servers()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(all, ids, "the default page size follows the same order");

    // A page size beyond the maximum is not refused: it answers everything.
    let all = acme.servers_page(1_000_000, "").await.unwrap();
    assert_eq!(all.servers.len(), 5);
    assert!(all.next_page_token.is_empty());

    for (page_size, page_token) in [(-1, ""), (2, "garbage")] {
        let status = acme.servers_page(page_size, page_token).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // A token from one organization's listing is no good for another's.
    let first = acme.servers_page(1, "").await.unwrap();
    let globex = daemon.org("globex").await;
    let status = globex
        .servers_page(1, &first.next_page_token)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    daemon.stop().await;
}

async fn duplicate_names_are_already_exists(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    acme.create("dup", stdio(["--tools", "2"])).await.unwrap();
    let status = acme
        .create("dup", stdio(["--tools", "2", "--tool-prefix", "other_"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("dup"));
    assert_eq!(acme.servers().await.unwrap().len(), 1);
    // The refused one left none of its tools behind.
    assert_eq!(daemon.registry().tools("acme").await, 2);
    daemon.stop().await;
}

async fn organizations_are_isolated(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let org_a = daemon.org("org-a").await;
    let org_b = daemon.org("org-b").await;
    let a = org_a
        .create("shared-name", stdio(["--tools", "2"]))
        .await
        .unwrap()
        .server
        .unwrap();
    // Same server name and same tool names in another organization: fine.
    let b = org_b
        .create("shared-name", stdio(["--tools", "2"]))
        .await
        .unwrap();
    assert!(b.failed_tools.is_empty(), "{:?}", b.failed_tools);

    // For every RPC that names a server, B learns nothing about A's: the
    // answer is exactly what a server that never existed gets.
    let missing = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        not_found_answers(&org_b, &a.id).await,
        not_found_answers(&org_b, &missing).await,
        "same words for someone else's server and a missing one"
    );

    let listed = org_b.servers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_ne!(listed[0].id, a.id);
    // A's server survived B's attempts.
    assert_eq!(org_a.get(&a.id).await.unwrap(), a);
    assert_eq!(org_a.tools(&a.id).await.unwrap().len(), 2);
    daemon.stop().await;
}

async fn invalid_arguments_are_rejected_with_reasons(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let none: [&str; 0] = [];
    let cases: Vec<(proto::CreateMcpServerRequest, &str)> = vec![
        (create_request("", stdio(none)), "server_name is required"),
        (create_request(&"n".repeat(65), stdio(none)), "at most 64"),
        (create_request("bad name", stdio(none)), "letters, digits"),
        (create_request("-dash", stdio(none)), "start with a letter"),
        (
            proto::CreateMcpServerRequest {
                server_name: "x".into(),
                transport: None,
                tool_prefix: String::new(),
            },
            "transport is required",
        ),
        (
            create_request("x", command("", none)),
            "stdio.command is required",
        ),
        (
            create_request("x", command("c".repeat(5000), none)),
            "stdio.command is 5000 bytes",
        ),
        (
            create_request("x", command("true", vec!["a"; 300])),
            "stdio.args has 300 entries",
        ),
        (
            create_request("x", command("true", none).with("1BAD", "v")),
            "stdio.env name",
        ),
        (
            create_request("x", streamable_http("")),
            "streamable_http.url is required",
        ),
        (
            create_request("x", streamable_http("ftp://127.0.0.1/mcp")),
            "http or https",
        ),
        (
            create_request("x", streamable_http("not a url")),
            "not a valid URL",
        ),
        (
            create_request("x", streamable_http("http://user:secret@127.0.0.1/mcp")),
            "credentials",
        ),
        (
            create_request(
                "x",
                streamable_http(format!("http://127.0.0.1/{}", "p".repeat(3000))),
            ),
            "at most 2048",
        ),
        (
            create_request("x", sse("http://127.0.0.1/sse").with("mcp-session-id", "x")),
            "cannot be overridden",
        ),
        (
            create_request("x", sse("http://127.0.0.1/sse").with("bad header", "x")),
            "not a valid header name",
        ),
    ];
    for (request, expected) in cases {
        let status = acme
            .raw()
            .create_mcp_server(acme.req(request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "message {:?} should contain {expected:?}",
            status.message()
        );
        // The one case with credentials in the URL must not echo them.
        assert!(!status.message().contains("secret"));
    }
    for server_id in ["", "not-an-id!", &"a".repeat(100)] {
        let status = acme.get(server_id).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{server_id:?}: {status:?}"
        );
    }
    // Nothing was written by any of it.
    daemon.registry().assert_empty("acme").await;
    daemon.stop().await;
}

async fn calls_need_a_valid_api_key(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let mut client = acme.raw();
    let list = || proto::ListMcpServersRequest::default();

    let status = client.list_mcp_servers(list()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("mcpd keys create"),
        "{}",
        status.message()
    );

    let unknown = format!("mcpd_{}", "0".repeat(64));
    for bad in ["", "garbage", "mcpd_short", unknown.as_str()] {
        let status = client
            .list_mcp_servers(with_key(bad, list()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}");
    }
    // A scheme other than Bearer is refused too.
    let mut request = tonic::Request::new(list());
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {}", acme.key()).parse().unwrap(),
    );
    assert_eq!(
        client.list_mcp_servers(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // The organization comes from the key; a header naming another is ignored.
    acme.create("mine", stdio(["--tools", "1"])).await.unwrap();
    let org_b = daemon.org("org-b").await;
    let mut request = org_b.req(list());
    request
        .metadata_mut()
        .insert("x-organization-id", "acme".parse().unwrap());
    assert!(
        client
            .list_mcp_servers(request)
            .await
            .unwrap()
            .into_inner()
            .servers
            .is_empty()
    );

    // A revoked key stops working at once.
    let extra = daemon
        .manager
        .create_api_key("acme", "short-lived")
        .await
        .unwrap();
    let short_lived = OrgClient::new(daemon.channel().await, &extra.key);
    assert_eq!(short_lived.servers().await.expect("new key works").len(), 1);
    daemon.manager.revoke_api_key(&extra.info.id).await.unwrap();
    let status = short_lived.servers().await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Only a hash of each key is stored: its hex SHA-256, and the key
    // itself nowhere in the row.
    let stored = daemon.registry().api_keys().await;
    let row = stored
        .iter()
        .find(|k| k.id == extra.info.id)
        .expect("the key's row");
    assert!(row.revoked_at.is_some(), "{row:?}");
    assert_eq!(
        row.key_hash,
        hex::encode(sha2::Sha256::digest(extra.key.as_bytes()))
    );
    let secret = &extra.key["mcpd_".len()..];
    for key in &stored {
        assert!(
            ![&key.id, &key.organization_id, &key.name, &key.key_hash]
                .iter()
                .any(|field| field.contains(secret)),
            "a key is stored in the clear: {key:?}"
        );
    }
    daemon.stop().await;
}

async fn invalid_tools_are_reported_not_fatal(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let created = acme
        .create("mixed", stdio(["--tools", "5", "--invalid-tools", "4"]))
        .await
        .unwrap();
    assert_eq!(created.tools.len(), 5);
    assert_eq!(created.server.unwrap().tool_count, 5);
    assert_eq!(created.failed_tools.len(), 4, "{:?}", created.failed_tools);
    for failed in &created.failed_tools {
        assert!(!failed.reason.is_empty());
    }
    let reasons: String = created
        .failed_tools
        .iter()
        .map(|f| f.reason.clone())
        .collect::<Vec<_>>()
        .join("|");
    assert!(reasons.contains("empty"), "{reasons}");
    assert!(reasons.contains("object"), "{reasons}");
    assert_eq!(
        daemon.registry().tools("acme").await,
        5,
        "only valid tools are stored"
    );
    daemon.stop().await;
}

async fn every_server_keeps_its_own_tools(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    // Two accounts of one service: the same tool names, both usable.
    let first = acme.create("first", stdio(["--tools", "3"])).await.unwrap();
    assert_eq!(first.tools.len(), 3);
    let mut request = create_request("second", stdio(["--tools", "5"]));
    request.tool_prefix = "second__".to_owned();
    let second = acme
        .raw()
        .create_mcp_server(acme.req(request))
        .await
        .unwrap()
        .into_inner();
    assert!(second.failed_tools.is_empty(), "{:?}", second.failed_tools);
    let stored: Vec<(&str, &str)> = second
        .tools
        .iter()
        .map(|t| (t.name.as_str(), t.qualified_name.as_str()))
        .collect();
    assert_eq!(stored[0], ("tool_0000", "second__tool_0000"));
    assert_eq!(stored.len(), 5);
    let second_server = second.server.unwrap();
    assert_eq!(second_server.tool_prefix, "second__");
    assert_eq!(first.tools[0].qualified_name, "tool_0000");
    assert_eq!(daemon.registry().tools("acme").await, 8);
    // Each server's tool_0000 runs on that server.
    for server in [&first.server.clone().unwrap().id, &second_server.id] {
        let answer = acme
            .call_tool(call(server, "tool_0000", serde_json::json!({"x": 1})))
            .await
            .unwrap();
        assert!(!answer.is_error, "{answer:?}");
    }
    // Closing the second removes its tools only.
    let closed = acme.close(&second_server.id).await.unwrap();
    assert_eq!(closed.removed_tools, 5);
    let first_tools = acme.tools(&first.server.unwrap().id).await.unwrap();
    assert_eq!(first_tools.len(), 3);

    // Twenty registrations of one service at once: twenty complete sets.
    let created = acme
        .create_concurrently(
            (0..20)
                .map(|i| (format!("account-{i}"), stdio(["--tools", "4"])))
                .collect::<Vec<_>>(),
        )
        .await;
    for result in created {
        let created = result.unwrap();
        assert_eq!(created.tools.len(), 4, "{created:?}");
        assert!(created.failed_tools.is_empty(), "{created:?}");
    }
    assert_eq!(daemon.registry().tools("acme").await, 3 + 20 * 4);
    daemon.stop().await;
}

async fn streamable_http_server(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let server = HttpTestServer::start(["--tools", "7", "--page-size", "3"]).await;
    let created = acme
        .create(
            "remote",
            streamable_http(&server.url).with("authorization", "Bearer t0ken"),
        )
        .await
        .unwrap();
    assert_eq!(created.tools.len(), 7);
    let s = created.server.unwrap();
    assert_eq!(s.transport(), proto::TransportKind::StreamableHttp);
    assert_eq!(s.endpoint, server.url);
    // Header names are shown, values never.
    assert_eq!(s.secret_names, ["authorization"]);
    assert!(!format!("{s:?}").contains("t0ken"));
    // At rest the transport config is sealed.
    let stored = daemon.registry().servers("acme").await;
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].transport_config.starts_with("sealed:v1:"),
        "{}",
        stored[0].transport_config
    );
    assert!(!stored[0].transport_config.contains("t0ken"));
    daemon.stop().await;
}

async fn oversized_requests_are_resource_exhausted(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let huge = stdio(vec!["x".repeat(1024 * 1024); 3]);
    let status = acme.create("huge", huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("2 MiB"), "{}", status.message());
    // The daemon is fine afterwards, and nothing was written.
    assert!(
        acme.servers()
            .await
            .expect("the daemon still serves")
            .is_empty()
    );
    daemon.registry().assert_empty("acme").await;
    daemon.stop().await;
}

/// A server offering more tools than `--max-tools-per-server` is refused
/// with both numbers, and nothing of it is stored; at the limit is fine.
async fn too_many_tools_are_resource_exhausted(backend: Backend) {
    let daemon = Daemon::start_with(
        backend,
        DaemonOptions {
            limits: Limits {
                max_tools_per_server: 7,
                ..Limits::default()
            },
            ..Default::default()
        },
    )
    .await;
    let acme = daemon.org("acme").await;
    let pidfile = Pidfile::temp();
    let status = acme
        .create(
            "crowded",
            stdio(pidfile.args_with(["--tools", "23", "--page-size", "5"])),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let numbers: Vec<&str> = status
        .message()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    assert!(
        numbers.contains(&"23") && numbers.contains(&"7"),
        "{:?} names the tools offered (23) and the limit (7)",
        status.message()
    );
    daemon.registry().assert_empty("acme").await;
    pidfile.written().assert_gone().await;
    assert_eq!(daemon.open_sessions(), 0);

    let full = acme
        .create("full", stdio(["--tools", "7"]))
        .await
        .expect("exactly at the limit");
    assert_eq!(full.tools.len(), 7);
    daemon.stop().await;
}

async fn operator_policy_refuses_commands_and_addresses(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let none: [&str; 0] = [];
    let cases = [
        // Not on the allowlist, by path or by name; a bare name does not
        // allow a path that ends in it.
        (command("/bin/sh", none), "--stdio-allow /bin/sh"),
        (command("sh", none), "--stdio-allow sh"),
        (command("/tmp/node", none), "--stdio-allow /tmp/node"),
        (
            streamable_http("http://169.254.169.254/latest/meta-data/"),
            "cloud metadata",
        ),
        (
            streamable_http("http://metadata.google.internal/mcp"),
            "metadata",
        ),
        (
            streamable_http("http://10.0.0.7:8080/mcp"),
            "--outbound-allow",
        ),
        (sse("http://[fd00:ec2::254]/sse"), "metadata"),
    ];
    for (transport, expected) in cases {
        let status = acme.create("refused", transport).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(expected),
            "{:?} should mention {expected:?}",
            status.message()
        );
    }
    daemon.registry().assert_empty("acme").await;
    daemon.stop().await;
}
