//! CallMcpTool end to end: results as MCP gives them, arguments checked
//! against the stored schema, and the live sessions behind the calls (one
//! per server, shared, replaced when dead, closed when idle or closed).

mod common;

use std::time::Duration;

use common::*;
use mcpd::{
    mcp::{McpSettings, PoolLimits},
    proto::{self, content::Kind},
};
use tonic::Code;

backend_tests!(
    arguments_are_checked_before_the_server_is_called,
    concurrent_calls_share_one_live_session,
    a_dead_session_is_replaced_on_the_next_call,
);

async fn call_tool(
    client: &OrgClient,
    request: proto::CallMcpToolRequest,
) -> Result<proto::CallMcpToolResponse, tonic::Status> {
    client
        .raw()
        .call_mcp_tool(client.req(request))
        .await
        .map(tonic::Response::into_inner)
}

fn texts(response: &proto::CallMcpToolResponse) -> Vec<&str> {
    response
        .content
        .iter()
        .filter_map(|c| match &c.kind {
            Some(Kind::Text(t)) => Some(t.text.as_str()),
            _ => None,
        })
        .collect()
}

fn with_pool(pool: PoolLimits) -> DaemonOptions {
    DaemonOptions {
        mcp: McpSettings {
            pool,
            ..test_mcp_settings()
        },
        ..DaemonOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_everything_results_keep_what_mcp_gives_them() {
    let daemon = Daemon::start(Backend::Postgres).await;
    let acme = daemon.org("acme").await;
    let created = acme
        .create("everything", everything_stdio())
        .await
        .expect("register server-everything");
    let id = created.server.unwrap().id;

    // The tool listing keeps title, annotations and output schema.
    let structured = created
        .tools
        .iter()
        .find(|t| t.name == "get-structured-content")
        .expect("listed");
    assert_eq!(structured.title, "Get Structured Content Tool");
    let hints = structured.annotations.as_ref().expect("annotations");
    assert_eq!(hints.read_only_hint, Some(true));
    assert_eq!(hints.destructive_hint, Some(false));
    let output: serde_json::Value = serde_json::from_str(&structured.output_schema_json).unwrap();
    assert!(output["properties"]["temperature"].is_object(), "{output}");
    // Also when read back from the registry.
    let stored = acme.tools(&id).await.unwrap();
    let stored = stored
        .iter()
        .find(|t| t.name == "get-structured-content")
        .unwrap();
    assert_eq!(stored, structured);

    let echo = call_tool(
        &acme,
        call(&id, "echo", serde_json::json!({"message": "hi there"})),
    )
    .await
    .unwrap();
    assert!(!echo.is_error);
    assert!(
        texts(&echo).iter().any(|t| t.contains("hi there")),
        "{echo:?}"
    );

    let sum = call_tool(
        &acme,
        call(&id, "get-sum", serde_json::json!({"a": 2, "b": 3})),
    )
    .await
    .unwrap();
    assert!(texts(&sum).iter().any(|t| t.contains('5')), "{sum:?}");

    let image = call_tool(&acme, call(&id, "get-tiny-image", serde_json::json!({})))
        .await
        .unwrap();
    let png = image
        .content
        .iter()
        .find_map(|c| match &c.kind {
            Some(Kind::Image(i)) => Some(i),
            _ => None,
        })
        .expect("an image item");
    assert_eq!(png.mime_type, "image/png");
    assert!(
        png.data.starts_with(b"\x89PNG"),
        "decoded bytes, not base64"
    );

    let weather = call_tool(
        &acme,
        call(
            &id,
            "get-structured-content",
            serde_json::json!({"location": "Chicago"}),
        ),
    )
    .await
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&weather.structured_content_json).unwrap();
    assert!(value["temperature"].is_number(), "{value}");

    let links = call_tool(
        &acme,
        call(&id, "get-resource-links", serde_json::json!({"count": 2})),
    )
    .await
    .unwrap();
    let link_count = links
        .content
        .iter()
        .filter(|c| matches!(&c.kind, Some(Kind::ResourceLink(l)) if !l.uri.is_empty()))
        .count();
    assert_eq!(link_count, 2, "{links:?}");

    // Every call above went over the one live session.
    let live = daemon.manager.stats().live;
    assert_eq!((live.session_opens, live.live_sessions), (1, 1), "{live:?}");
    acme.close(&id).await.unwrap();
    wait_until(
        "the live session to close",
        Duration::from_secs(5),
        async || daemon.open_sessions() == 0,
    )
    .await;
    daemon.stop().await;
}

async fn arguments_are_checked_before_the_server_is_called(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let created = acme
        .create("checked", stdio(["--tools", "2"]))
        .await
        .unwrap();
    let id = created.server.unwrap().id;

    let ok = call_tool(&acme, call(&id, "tool_0001", serde_json::json!({"x": 7})))
        .await
        .unwrap();
    let echoed: serde_json::Value = serde_json::from_str(texts(&ok)[0]).unwrap();
    assert_eq!(
        echoed,
        serde_json::json!({"tool": "tool_0001", "arguments": {"x": 7}})
    );

    let refusals = [
        (
            call(&id, "tool_0001", serde_json::json!({"x": "seven"})),
            Code::InvalidArgument,
            "at /x:",
        ),
        (
            proto::CallMcpToolRequest {
                arguments_json: "[1, 2]".into(),
                ..call(&id, "tool_0001", serde_json::json!({}))
            },
            Code::InvalidArgument,
            "must be a JSON object",
        ),
        (
            call(&id, "no_such_tool", serde_json::json!({})),
            Code::NotFound,
            "no tool named",
        ),
        (
            call(
                "01a22b2c-0000-7000-8000-000000000000",
                "tool_0001",
                serde_json::json!({}),
            ),
            Code::NotFound,
            "not found",
        ),
        (
            call(&id, "", serde_json::json!({})),
            Code::InvalidArgument,
            "tool_name",
        ),
    ];
    for (request, code, says) in refusals {
        let status = call_tool(&acme, request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }
    // Another organization cannot call it, and learns nothing from trying.
    let other = daemon.org("globex").await;
    let status = call_tool(&other, call(&id, "tool_0001", serde_json::json!({"x": 1})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Refused calls never opened a session: only the good one did.
    assert_eq!(daemon.manager.stats().live.session_opens, 1);
    daemon.stop().await;
}

async fn concurrent_calls_share_one_live_session(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let pidfile = Pidfile::temp();
    let created = acme
        .create("shared", stdio(pidfile.args_with(["--tools", "3"])))
        .await
        .unwrap();
    let id = created.server.unwrap().id;
    let create_pids = pidfile.wait().await;
    create_pids.assert_gone().await;

    let calls = (0..20).map(|i| {
        let acme = acme.clone();
        let id = id.clone();
        async move { call_tool(&acme, call(&id, "tool_0002", serde_json::json!({"x": i}))).await }
    });
    for (i, answer) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let answer = answer.unwrap();
        assert!(
            texts(&answer)[0].contains(&format!("\"x\":{i}")),
            "{answer:?}"
        );
    }
    let live = daemon.manager.stats().live;
    assert_eq!(
        live.session_opens, 1,
        "concurrent first calls open one session: {live:?}"
    );
    assert_eq!(live.session_reuses, 19, "{live:?}");
    assert_eq!(live.live_sessions, 1);
    assert_eq!(live.calls_in_flight, 0);
    // One child process serves them all, and it is a new one (the create's
    // session is gone).
    let pids = pidfile.wait().await;
    assert_ne!(pids.server, create_pids.server);
    assert!(process_alive(pids.server));

    acme.close(&id).await.unwrap();
    pids.assert_gone().await;
    assert_eq!(daemon.manager.stats().live.live_sessions, 0);
    daemon.stop().await;
}

async fn a_dead_session_is_replaced_on_the_next_call(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let acme = daemon.org("acme").await;
    let pidfile = Pidfile::temp();
    let created = acme
        .create("mortal", stdio(pidfile.args_with(["--tools", "1"])))
        .await
        .unwrap();
    let id = created.server.unwrap().id;
    let create_pids = pidfile.wait().await;
    create_pids.assert_gone().await;

    call_tool(&acme, call(&id, "tool_0000", serde_json::json!({})))
        .await
        .unwrap();
    let first = pidfile.wait().await;
    assert_ne!(first.server, create_pids.server);
    // SAFETY: signalling a process this test's server started.
    assert_eq!(unsafe { libc::kill(first.server as i32, libc::SIGKILL) }, 0);
    assert_gone(&[first.server], Duration::from_secs(5)).await;

    let again = call_tool(&acme, call(&id, "tool_0000", serde_json::json!({"x": 1})))
        .await
        .expect("a fresh session answers");
    assert!(texts(&again)[0].contains("\"x\":1"));
    let second = pidfile.wait().await;
    assert_ne!(second.server, first.server);
    assert_eq!(daemon.manager.stats().live.session_opens, 2);
    daemon.stop().await;
    second.assert_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_sessions_are_closed() {
    let daemon = Daemon::start_with(
        Backend::Sqlite,
        with_pool(PoolLimits {
            idle_timeout: Duration::from_millis(300),
            ..PoolLimits::default()
        }),
    )
    .await;
    let acme = daemon.org("acme").await;
    let pidfile = Pidfile::temp();
    let id = acme
        .create("idle", stdio(pidfile.args_with(["--tools", "1"])))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let create_pids = pidfile.wait().await;
    create_pids.assert_gone().await;
    call_tool(&acme, call(&id, "tool_0000", serde_json::json!({})))
        .await
        .unwrap();
    let pids = pidfile.wait().await;
    assert_eq!(daemon.manager.stats().live.live_sessions, 1);
    wait_until(
        "the idle session to close",
        Duration::from_secs(10),
        async || daemon.manager.stats().live.live_sessions == 0,
    )
    .await;
    pids.assert_gone().await;
    assert_eq!(daemon.open_sessions(), 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_least_recently_used_session_makes_room() {
    let daemon = Daemon::start_with(
        Backend::Sqlite,
        with_pool(PoolLimits {
            max_sessions: 2,
            ..PoolLimits::default()
        }),
    )
    .await;
    let acme = daemon.org("acme").await;
    // Tool names are unique per organization: each server names its own.
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let prefix = format!("{name}_");
        let id = acme
            .create(name, stdio(["--tools", "1", "--tool-prefix", &prefix]))
            .await
            .unwrap()
            .server
            .unwrap()
            .id;
        call_tool(
            &acme,
            call(&id, &format!("{prefix}0000"), serde_json::json!({})),
        )
        .await
        .unwrap();
        ids.push(id);
    }
    let live = daemon.manager.stats().live;
    assert_eq!((live.live_sessions, live.session_opens), (2, 3), "{live:?}");
    // "one" was evicted: calling it opens a session again, and evicts "two".
    call_tool(&acme, call(&ids[0], "one_0000", serde_json::json!({})))
        .await
        .unwrap();
    call_tool(&acme, call(&ids[2], "three_0000", serde_json::json!({})))
        .await
        .unwrap();
    let live = daemon.manager.stats().live;
    assert_eq!((live.live_sessions, live.session_opens), (2, 4), "{live:?}");
    daemon.stop().await;
}

/// A test server whose calls take `delay_ms` and that logs them, with what
/// it reads of that log.
struct SlowServer {
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SlowServer {
    fn new() -> SlowServer {
        let dir = tempfile::tempdir().unwrap();
        SlowServer {
            log: dir.path().join("calls.log"),
            _dir: dir,
        }
    }

    fn transport(
        &self,
        delay_ms: u64,
        pidfile: &Pidfile,
    ) -> proto::create_mcp_server_request::Transport {
        stdio(pidfile.args_with([
            "--tools".to_owned(),
            "1".to_owned(),
            "--call-delay-ms".to_owned(),
            delay_ms.to_string(),
            "--cancel-log".to_owned(),
            self.log.to_string_lossy().into_owned(),
        ]))
    }

    fn lines(&self, what: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(what))
            .count()
    }

    async fn wait_for(&self, what: &str, count: usize) {
        wait_until(
            &format!("{count} `{what}` lines in the test server's call log"),
            Duration::from_secs(10),
            async || self.lines(what) >= count,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_tool_is_an_ok_answer_with_is_error() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let id = acme
        .create("fails", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let answer = call_tool(
        &acme,
        call(&id, "tool_0000", serde_json::json!({"fail": true})),
    )
    .await
    .expect("a tool failure is not an RPC failure");
    assert!(answer.is_error, "{answer:?}");
    assert!(texts(&answer)[0].contains("\"fail\":true"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadline_and_caller_cancellation_reach_the_server() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let slow = SlowServer::new();
    let pidfile = Pidfile::temp();
    let id = acme
        .create("slow", slow.transport(30_000, &pidfile))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;

    // The gRPC deadline is the call's deadline. Sent as the bare header, so
    // the daemon, not the client library, is the one that enforces it.
    let mut request = acme.req(call(&id, "tool_0000", serde_json::json!({})));
    request
        .metadata_mut()
        .insert("grpc-timeout", "500m".parse().unwrap());
    let status = acme.raw().call_mcp_tool(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    slow.wait_for("cancelled", 1).await;

    // A caller that goes away cancels too.
    let pending = tokio::spawn({
        let acme = acme.clone();
        let id = id.clone();
        async move { call_tool(&acme, call(&id, "tool_0000", serde_json::json!({}))).await }
    });
    slow.wait_for("started", 2).await;
    pending.abort();
    slow.wait_for("cancelled", 2).await;
    wait_until("no call in flight", Duration::from_secs(5), async || {
        daemon.manager.stats().live.calls_in_flight == 0
    })
    .await;
    // The session survives its calls' cancellation.
    assert_eq!(daemon.manager.stats().live.live_sessions, 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_beyond_the_per_server_limit_are_refused() {
    let daemon = Daemon::start_with(
        Backend::Sqlite,
        with_pool(PoolLimits {
            max_calls_per_server: 2,
            ..PoolLimits::default()
        }),
    )
    .await;
    let acme = daemon.org("acme").await;
    let slow = SlowServer::new();
    let pidfile = Pidfile::temp();
    let id = acme
        .create("busy", slow.transport(30_000, &pidfile))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let running: Vec<_> = (0..2)
        .map(|_| {
            let acme = acme.clone();
            let id = id.clone();
            tokio::spawn(async move {
                call_tool(&acme, call(&id, "tool_0000", serde_json::json!({}))).await
            })
        })
        .collect();
    slow.wait_for("started", 2).await;
    let status = call_tool(&acme, call(&id, "tool_0000", serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-calls-per-server"),
        "{status:?}"
    );

    // Close ends the calls in flight: they fail, they do not hang.
    acme.close(&id).await.unwrap();
    for call in running {
        let status = call.await.unwrap().expect_err("the server was closed");
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Cancelled),
            "{status:?}"
        );
    }
    pidfile.wait().await.assert_gone().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_calls_finish_then_closes_every_session() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let slow = SlowServer::new();
    let pidfile = Pidfile::temp();
    let id = acme
        .create("draining", slow.transport(1_000, &pidfile))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let in_flight = tokio::spawn({
        let acme = acme.clone();
        async move { call_tool(&acme, call(&id, "tool_0000", serde_json::json!({"x": 1}))).await }
    });
    slow.wait_for("started", 1).await;
    let pids = pidfile.wait().await;
    daemon.stop().await;
    let answer = in_flight
        .await
        .unwrap()
        .expect("the call in flight finishes");
    assert!(texts(&answer)[0].contains("\"x\":1"));
    assert_eq!(slow.lines("cancelled"), 0);
    pids.assert_gone().await;
}
