//! End to end through a tonic client against an in-process daemon, on
//! PostgreSQL and on SQLite, with real rmcp MCP servers.

mod common;

use common::*;
use mcpd::proto::{self, create_mcp_server_request::Transport};
use tonic::Code;

backend_tests!(
    create_get_list_tools_close,
    list_servers_pages_through_everything,
    duplicate_names_are_already_exists,
    organizations_are_isolated,
    invalid_arguments_are_rejected_with_reasons,
    calls_need_a_valid_api_key,
    oversized_requests_are_resource_exhausted,
    operator_policy_refuses_commands_and_addresses,
    invalid_tools_are_reported_not_fatal,
    tool_names_are_unique_per_organization,
    streamable_http_server,
);

async fn create_get_list_tools_close(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;

    let created = client
        .create_mcp_server(keys.req("acme", create_request("weather", stdio(&["--tools", "3"]))))
        .await
        .expect("create")
        .into_inner();
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

    let got = client
        .get_mcp_server(keys.req(
            "acme",
            proto::GetMcpServerRequest {
                server_id: server.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .server
        .unwrap();
    assert_eq!(got, server);

    let listed = client
        .list_mcp_servers(keys.req("acme", proto::ListMcpServersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.servers, vec![server.clone()]);
    assert!(listed.next_page_token.is_empty());

    let tools = client
        .list_mcp_server_tools(keys.req(
            "acme",
            proto::ListMcpServerToolsRequest {
                server_id: server.id.clone(),
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tools.tools.len(), 2);
    assert_eq!(tools.tools[0].name, "tool_0000");
    assert!(!tools.next_page_token.is_empty());
    let rest = client
        .list_mcp_server_tools(keys.req(
            "acme",
            proto::ListMcpServerToolsRequest {
                server_id: server.id.clone(),
                page_size: 2,
                page_token: tools.next_page_token,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.tools
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["tool_0002"]
    );
    assert!(rest.next_page_token.is_empty());

    let closed = client
        .close_mcp_server(keys.req(
            "acme",
            proto::CloseMcpServerRequest {
                server_id: server.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.removed_tools, 3);
    assert_eq!(closed.removed_mappings, 3);

    for status in [
        client
            .get_mcp_server(keys.req(
                "acme",
                proto::GetMcpServerRequest {
                    server_id: server.id.clone(),
                },
            ))
            .await
            .unwrap_err(),
        client
            .close_mcp_server(keys.req(
                "acme",
                proto::CloseMcpServerRequest {
                    server_id: server.id.clone(),
                },
            ))
            .await
            .unwrap_err(),
        client
            .list_mcp_server_tools(keys.req(
                "acme",
                proto::ListMcpServerToolsRequest {
                    server_id: server.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains(&server.id));
    }
    // The name is free again once the server is closed.
    client
        .create_mcp_server(keys.req("acme", create_request("weather", stdio(&["--tools", "1"]))))
        .await
        .expect("re-create after close");
    daemon.stop().await;
}

async fn list_servers_pages_through_everything(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let created = client
            .create_mcp_server(keys.req(
                "acme",
                create_request(
                    &format!("s{i}"),
                    stdio(&["--tools", "1", "--tool-prefix", &format!("s{i}_")]),
                ),
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(created.server.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_mcp_servers(keys.req(
                "acme",
                proto::ListMcpServersRequest {
                    page_size: 2,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
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

    // A huge page size is clamped, not refused.
    let all = client
        .list_mcp_servers(keys.req(
            "acme",
            proto::ListMcpServersRequest {
                page_size: 1_000_000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.servers.len(), 5);

    for (page_size, page_token) in [(-1, String::new()), (2, "garbage".to_owned())] {
        let status = client
            .list_mcp_servers(keys.req(
                "acme",
                proto::ListMcpServersRequest {
                    page_size,
                    page_token,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // A token from one organization's listing is no good for another's.
    let first = client
        .list_mcp_servers(keys.req(
            "acme",
            proto::ListMcpServersRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let status = client
        .list_mcp_servers(keys.req(
            "globex",
            proto::ListMcpServersRequest {
                page_size: 1,
                page_token: first.next_page_token,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    daemon.stop().await;
}

async fn duplicate_names_are_already_exists(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    client
        .create_mcp_server(keys.req("acme", create_request("dup", stdio(&["--tools", "2"]))))
        .await
        .unwrap();
    let status = client
        .create_mcp_server(keys.req(
            "acme",
            create_request("dup", stdio(&["--tools", "2", "--tool-prefix", "other_"])),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("dup"));
    let listed = client
        .list_mcp_servers(keys.req("acme", proto::ListMcpServersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.servers.len(), 1);
    daemon.stop().await;
}

async fn organizations_are_isolated(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let a = client
        .create_mcp_server(keys.req(
            "org-a",
            create_request("shared-name", stdio(&["--tools", "2"])),
        ))
        .await
        .unwrap()
        .into_inner()
        .server
        .unwrap();
    // Same server name and same tool names in another organization: fine.
    let b = client
        .create_mcp_server(keys.req(
            "org-b",
            create_request("shared-name", stdio(&["--tools", "2"])),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(b.failed_tools.is_empty(), "{:?}", b.failed_tools);

    // For every RPC that names a server, B learns nothing about A's: the
    // answer is exactly what a server that never existed gets.
    let missing = uuid::Uuid::now_v7().to_string();
    for id in [a.id.clone(), missing.clone()] {
        let answers = [
            client
                .get_mcp_server(keys.req(
                    "org-b",
                    proto::GetMcpServerRequest {
                        server_id: id.clone(),
                    },
                ))
                .await
                .map(|_| ()),
            client
                .list_mcp_server_tools(keys.req(
                    "org-b",
                    proto::ListMcpServerToolsRequest {
                        server_id: id.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
            client
                .close_mcp_server(keys.req(
                    "org-b",
                    proto::CloseMcpServerRequest {
                        server_id: id.clone(),
                    },
                ))
                .await
                .map(|_| ()),
        ];
        for answer in answers {
            let status = answer.unwrap_err();
            assert_eq!(status.code(), Code::NotFound);
            assert_eq!(
                status.message().replace(&id, "ID"),
                format!("MCP server \"ID\" not found"),
                "same words for someone else's server and a missing one"
            );
        }
    }

    let status = client
        .get_mcp_server(keys.req(
            "org-b",
            proto::GetMcpServerRequest {
                server_id: a.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .list_mcp_server_tools(keys.req(
            "org-b",
            proto::ListMcpServerToolsRequest {
                server_id: a.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .close_mcp_server(keys.req(
            "org-b",
            proto::CloseMcpServerRequest {
                server_id: a.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let listed = client
        .list_mcp_servers(keys.req("org-b", proto::ListMcpServersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.servers.len(), 1);
    assert_ne!(listed.servers[0].id, a.id);
    // A's server survived B's attempts.
    client
        .get_mcp_server(keys.req(
            "org-a",
            proto::GetMcpServerRequest {
                server_id: a.id.clone(),
            },
        ))
        .await
        .unwrap();
    daemon.stop().await;
}

async fn invalid_arguments_are_rejected_with_reasons(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let http = streamable_http;
    let stdio_cmd = |command: &str| {
        Transport::Stdio(proto::StdioTransport {
            command: command.into(),
            ..Default::default()
        })
    };
    let cases: Vec<(proto::CreateMcpServerRequest, &str)> = vec![
        (create_request("", stdio(&[])), "server_name is required"),
        (create_request(&"n".repeat(65), stdio(&[])), "at most 64"),
        (create_request("bad name", stdio(&[])), "letters, digits"),
        (create_request("-dash", stdio(&[])), "start with a letter"),
        (
            proto::CreateMcpServerRequest {
                server_name: "x".into(),
                transport: None,
            },
            "transport is required",
        ),
        (
            create_request("x", stdio_cmd("")),
            "stdio.command is required",
        ),
        (
            create_request("x", stdio_cmd(&"c".repeat(5000))),
            "stdio.command is 5000 bytes",
        ),
        (
            create_request(
                "x",
                Transport::Stdio(proto::StdioTransport {
                    command: "true".into(),
                    args: vec!["a".into(); 300],
                    env: Default::default(),
                }),
            ),
            "stdio.args has 300 entries",
        ),
        (
            create_request(
                "x",
                Transport::Stdio(proto::StdioTransport {
                    command: "true".into(),
                    args: vec![],
                    env: [("1BAD".to_owned(), "v".to_owned())].into(),
                }),
            ),
            "stdio.env name",
        ),
        (
            create_request("x", http("")),
            "streamable_http.url is required",
        ),
        (
            create_request("x", http("ftp://127.0.0.1/mcp")),
            "http or https",
        ),
        (create_request("x", http("not a url")), "not a valid URL"),
        (
            create_request("x", http("http://user:secret@127.0.0.1/mcp")),
            "credentials",
        ),
        (
            create_request("x", http(&format!("http://127.0.0.1/{}", "p".repeat(3000)))),
            "at most 2048",
        ),
        (
            create_request(
                "x",
                Transport::Sse(proto::SseTransport {
                    url: "http://127.0.0.1/sse".into(),
                    headers: [("mcp-session-id".to_owned(), "x".to_owned())].into(),
                }),
            ),
            "cannot be overridden",
        ),
        (
            create_request(
                "x",
                Transport::Sse(proto::SseTransport {
                    url: "http://127.0.0.1/sse".into(),
                    headers: [("bad header".to_owned(), "x".to_owned())].into(),
                }),
            ),
            "not a valid header name",
        ),
    ];
    for (request, expected) in cases {
        let status = client
            .create_mcp_server(keys.req("acme", request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "message {:?} should contain {expected:?}",
            status.message()
        );
        assert!(!status.message().contains("secret"));
    }
    for server_id in ["", "not-an-id!", &"a".repeat(100)] {
        let status = client
            .get_mcp_server(keys.req(
                "acme",
                proto::GetMcpServerRequest {
                    server_id: server_id.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{server_id:?}: {status:?}"
        );
    }
    // Nothing was written by any of it.
    assert!(daemon.servers("acme").await.is_empty());
    daemon.stop().await;
}

async fn calls_need_a_valid_api_key(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
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
        let mut request = tonic::Request::new(list());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {bad}").parse().unwrap());
        let status = client.list_mcp_servers(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}");
    }
    // A scheme other than Bearer is refused too.
    let mut request = tonic::Request::new(list());
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {}", keys.key("acme")).parse().unwrap(),
    );
    assert_eq!(
        client.list_mcp_servers(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // The organization comes from the key; a header naming another is ignored.
    client
        .create_mcp_server(keys.req("acme", create_request("mine", stdio(&["--tools", "1"]))))
        .await
        .unwrap();
    let mut request = keys.req("org-b", list());
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
    client
        .list_mcp_servers(with_key(&extra.key, list()))
        .await
        .expect("new key works");
    daemon.manager.revoke_api_key(&extra.info.id).await.unwrap();
    let status = client
        .list_mcp_servers(with_key(&extra.key, list()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Only hashes are stored.
    let stored = daemon.manager.list_api_keys(Some("acme")).await.unwrap();
    assert!(
        stored
            .iter()
            .any(|k| k.id == extra.info.id && k.revoked_at_ms.is_some())
    );
    daemon.stop().await;
}

async fn invalid_tools_are_reported_not_fatal(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let created = client
        .create_mcp_server(keys.req(
            "acme",
            create_request("mixed", stdio(&["--tools", "5", "--invalid-tools", "4"])),
        ))
        .await
        .unwrap()
        .into_inner();
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
    daemon.stop().await;
}

async fn tool_names_are_unique_per_organization(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let first = client
        .create_mcp_server(keys.req("acme", create_request("first", stdio(&["--tools", "3"]))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.tools.len(), 3);
    // Offers tool_0000..tool_0004: the first three are taken.
    let second = client
        .create_mcp_server(keys.req("acme", create_request("second", stdio(&["--tools", "5"]))))
        .await
        .unwrap()
        .into_inner();
    let stored: Vec<_> = second.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(stored, ["tool_0003", "tool_0004"]);
    assert_eq!(second.failed_tools.len(), 3);
    for failed in &second.failed_tools {
        assert!(failed.reason.contains("already provides"), "{failed:?}");
    }
    // Closing the second removes only what it provided.
    let closed = client
        .close_mcp_server(keys.req(
            "acme",
            proto::CloseMcpServerRequest {
                server_id: second.server.unwrap().id,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.removed_tools, 2);
    let first_tools = client
        .list_mcp_server_tools(keys.req(
            "acme",
            proto::ListMcpServerToolsRequest {
                server_id: first.server.unwrap().id,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_tools.tools.len(), 3);
    daemon.stop().await;
}

async fn streamable_http_server(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let server = HttpTestServer::start(&["--tools", "7", "--page-size", "3"]).await;
    let created = client
        .create_mcp_server(keys.req(
            "acme",
            create_request(
                "remote",
                Transport::StreamableHttp(proto::StreamableHttpTransport {
                    url: server.url.clone(),
                    headers: [("authorization".to_owned(), "Bearer t0ken".to_owned())].into(),
                }),
            ),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.tools.len(), 7);
    let s = created.server.unwrap();
    assert_eq!(s.transport(), proto::TransportKind::StreamableHttp);
    assert_eq!(s.endpoint, server.url);
    // Header names are shown, values never.
    assert_eq!(s.secret_names, ["authorization"]);
    assert!(!format!("{s:?}").contains("t0ken"));
    // At rest the transport config is sealed.
    let row = daemon.store.get_server("acme", &s.id).await.unwrap();
    assert!(
        row.transport_config.starts_with("sealed:v1:"),
        "{}",
        row.transport_config
    );
    assert!(!row.transport_config.contains("t0ken"));
    daemon.stop().await;
}

async fn oversized_requests_are_resource_exhausted(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let huge = Transport::Stdio(proto::StdioTransport {
        command: test_server_bin(),
        args: vec!["x".repeat(1024 * 1024); 3],
        env: Default::default(),
    });
    let status = client
        .create_mcp_server(keys.req("acme", create_request("huge", huge)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("2 MiB"), "{}", status.message());
    // The daemon is fine afterwards, and nothing was written.
    assert!(daemon.servers("acme").await.is_empty());
    daemon.stop().await;
}

async fn operator_policy_refuses_commands_and_addresses(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let keys = daemon.keys.clone();
    let mut client = daemon.client().await;
    let stdio_cmd = |command: &str| {
        Transport::Stdio(proto::StdioTransport {
            command: command.into(),
            ..Default::default()
        })
    };
    let http = streamable_http;
    let cases = [
        // Not on the allowlist, by path or by name; a bare name does not
        // allow a path that ends in it.
        (stdio_cmd("/bin/sh"), "--stdio-allow /bin/sh"),
        (stdio_cmd("sh"), "--stdio-allow sh"),
        (stdio_cmd("/tmp/node"), "--stdio-allow /tmp/node"),
        (
            http("http://169.254.169.254/latest/meta-data/"),
            "cloud metadata",
        ),
        (http("http://metadata.google.internal/mcp"), "metadata"),
        (http("http://10.0.0.7:8080/mcp"), "--outbound-allow"),
        (
            Transport::Sse(proto::SseTransport {
                url: "http://[fd00:ec2::254]/sse".into(),
                headers: Default::default(),
            }),
            "metadata",
        ),
    ];
    for (transport, expected) in cases {
        let status = client
            .create_mcp_server(keys.req("acme", create_request("refused", transport)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(expected),
            "{:?} should mention {expected:?}",
            status.message()
        );
    }
    assert!(daemon.servers("acme").await.is_empty());
    daemon.stop().await;
}
