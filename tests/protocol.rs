//! Which MCP revision a session speaks: `server/discover` first
//! (2026-07-28), the legacy `initialize` for servers that refuse it (and
//! straight away for the next sessions to such a server), and multi
//! round-trip tool calls (SEP-2322) answered through StreamMcpToolCall.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use mcpd::proto::{
    self, server_request_answer::Outcome, stream_mcp_tool_call_request::Message as In,
    stream_mcp_tool_call_response::Message as Out,
};
use tokio::sync::mpsc;
use tonic::Code;

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Registers the server (one session), then calls a tool (a second, live
/// session); returns the lifecycle requests the server saw.
async fn create_and_call(
    acme: &OrgClient,
    name: &str,
    transport: Transport,
    log: &Path,
) -> Vec<String> {
    let created = acme.create(name, transport).await.unwrap();
    let id = created.server.unwrap().id;
    let answer = acme
        .raw()
        .call_mcp_tool(acme.req(call(&id, "tool_0000", serde_json::json!({"x": 1}))))
        .await
        .unwrap()
        .into_inner();
    assert!(text_of(&answer).contains(r#""x":1"#), "{answer:?}");
    acme.close(&id).await.unwrap();
    lines(log)
}

use mcpd::proto::create_mcp_server_request::Transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_discover_first_and_fall_back_to_initialize_for_older_servers() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let log = |name: &str| dir.path().join(name);
    let arg = |path: std::path::PathBuf| path.to_string_lossy().into_owned();

    // A 2026-07-28 server: discovery only, never a handshake.
    let current = log("current-stdio");
    let seen = create_and_call(
        &acme,
        "current-stdio",
        stdio(["--lifecycle-log".to_owned(), arg(current.clone())]),
        &current,
    )
    .await;
    assert_eq!(seen, ["server/discover", "server/discover"]);

    let current_http = log("current-http");
    let server =
        HttpTestServer::start(["--lifecycle-log".to_owned(), arg(current_http.clone())]).await;
    let seen = create_and_call(
        &acme,
        "current-http",
        streamable_http(&server.url),
        &current_http,
    )
    .await;
    assert!(
        !seen.is_empty() && seen.iter().all(|m| m == "server/discover"),
        "{seen:?}"
    );

    // An older server refuses `server/discover`: `initialize` follows on the
    // same connection, and the next session starts with it.
    let legacy = log("legacy-stdio");
    let seen = create_and_call(
        &acme,
        "legacy-stdio",
        stdio([
            "--legacy".to_owned(),
            "--lifecycle-log".to_owned(),
            arg(legacy.clone()),
        ]),
        &legacy,
    )
    .await;
    assert_eq!(
        seen,
        ["server/discover (refused)", "initialize", "initialize"]
    );

    let legacy_http = log("legacy-http");
    let server = HttpTestServer::start([
        "--legacy".to_owned(),
        "--lifecycle-log".to_owned(),
        arg(legacy_http.clone()),
    ])
    .await;
    let seen = create_and_call(
        &acme,
        "legacy-http",
        streamable_http(&server.url),
        &legacy_http,
    )
    .await;
    assert_eq!(
        seen,
        ["server/discover (refused)", "initialize", "initialize"]
    );
    daemon.stop().await;
}

/// A streamed call whose server asks for input the 2026-07-28 way: an
/// `input_required` result, relayed to the caller as a server request, and
/// the call sent again with the answer and the server's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_round_trip_calls_ask_the_streaming_caller() {
    let daemon = Daemon::start(Backend::Postgres).await;
    let acme = daemon.org("acme").await;
    let created = acme.create("asks", stdio(["--tools", "1"])).await.unwrap();
    let id = created.server.unwrap().id;

    let (tx, rx) = mpsc::channel(8);
    tx.send(proto::StreamMcpToolCallRequest {
        message: Some(In::Call(call(
            &id,
            "tool_0000",
            serde_json::json!({"ask": "Who are you?"}),
        ))),
    })
    .await
    .unwrap();
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = acme
        .raw()
        .stream_mcp_tool_call(acme.req(outbound))
        .await
        .unwrap()
        .into_inner();
    let Some(proto::StreamMcpToolCallResponse {
        message: Some(Out::Request(request)),
    }) = inbound.message().await.unwrap()
    else {
        panic!("the server's input request comes first");
    };
    assert_eq!(request.method, "elicitation/create");
    let params: serde_json::Value = serde_json::from_str(&request.params_json).unwrap();
    assert_eq!(params["message"], "Who are you?", "{params}");
    tx.send(proto::StreamMcpToolCallRequest {
        message: Some(In::Answer(proto::ServerRequestAnswer {
            request_id: request.request_id.clone(),
            outcome: Some(Outcome::ResultJson(
                r#"{"action":"accept","content":{"name":"Ada"}}"#.into(),
            )),
        })),
    })
    .await
    .unwrap();
    let Some(proto::StreamMcpToolCallResponse {
        message: Some(Out::Result(result)),
    }) = inbound.message().await.unwrap()
    else {
        panic!("the result comes last");
    };
    let echoed: serde_json::Value = serde_json::from_str(&text_of(&result)).unwrap();
    assert_eq!(echoed["answer"]["content"]["name"], "Ada", "{echoed}");
    assert_eq!(
        echoed["state"], "asked:Who are you?",
        "the state goes back verbatim"
    );
    // The call is over: the daemon lets go of the request side of the stream
    // although the caller never closed it (a held stream would keep the RPC,
    // and a graceful shutdown, waiting).
    wait_until(
        "the daemon to drop the finished stream's request side",
        Duration::from_secs(10),
        async || tx.is_closed(),
    )
    .await;

    // A unary call has no one to ask: the caller is told how to make it.
    let status = acme
        .raw()
        .call_mcp_tool(acme.req(call(&id, "tool_0000", serde_json::json!({"ask": "Who?"}))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("StreamMcpToolCall"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("elicitation"),
        "{}",
        status.message()
    );

    // The live session that refused is still good for calls.
    let answer = acme
        .raw()
        .call_mcp_tool(acme.req(call(&id, "tool_0000", serde_json::json!({"x": 2}))))
        .await
        .unwrap()
        .into_inner();
    assert!(text_of(&answer).contains(r#""x":2"#), "{answer:?}");

    daemon.stop().await;
}
