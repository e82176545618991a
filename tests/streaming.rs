//! StreamMcpToolCall against server-everything: progress on the stream, the
//! server's sampling and elicitation requests answered by the caller, and
//! the result last.

mod common;

use std::path::PathBuf;

use common::*;
use mcpd::proto::{
    self, server_request_answer::Outcome, stream_mcp_tool_call_request::Message as In,
    stream_mcp_tool_call_response::Message as Out,
};
use tokio::sync::mpsc;
use tonic::Code;

fn everything() -> Transport {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        js.exists(),
        "{}: run `npm ci --prefix tests/support`",
        js.display()
    );
    command(
        "node",
        [js.to_string_lossy().into_owned(), "stdio".to_owned()],
    )
}

use mcpd::proto::create_mcp_server_request::Transport;

/// Runs one streamed call, answering each server request with `answer`;
/// returns what came before the result, and the result.
async fn stream_call(
    client: &OrgClient,
    call: proto::CallMcpToolRequest,
    answer: impl Fn(&proto::ServerRequest) -> Outcome,
) -> (Vec<Out>, Result<proto::CallMcpToolResponse, tonic::Status>) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(proto::StreamMcpToolCallRequest {
        message: Some(In::Call(call)),
    })
    .await
    .unwrap();
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = match client
        .raw()
        .stream_mcp_tool_call(client.req(outbound))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut seen = Vec::new();
    loop {
        match inbound.message().await {
            Ok(Some(proto::StreamMcpToolCallResponse {
                message: Some(Out::Result(result)),
            })) => return (seen, Ok(result)),
            Ok(Some(proto::StreamMcpToolCallResponse { message: Some(m) })) => {
                if let Out::Request(request) = &m {
                    // server-everything asks for roots whenever it may.
                    let outcome = if request.method == "roots/list" {
                        Outcome::ResultJson(r#"{"roots": []}"#.into())
                    } else {
                        answer(request)
                    };
                    tx.send(proto::StreamMcpToolCallRequest {
                        message: Some(In::Answer(proto::ServerRequestAnswer {
                            request_id: request.request_id.clone(),
                            outcome: Some(outcome),
                        })),
                    })
                    .await
                    .unwrap();
                }
                seen.push(m);
            }
            Ok(Some(_)) => panic!("an empty message"),
            Ok(None) => panic!("the stream ended without a result"),
            Err(status) => return (seen, Err(status)),
        }
    }
}

fn no_requests(request: &proto::ServerRequest) -> Outcome {
    panic!("unexpected server request {request:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_sampling_and_elicitation_go_through_the_stream() {
    let daemon = Daemon::start(Backend::Postgres).await;
    let acme = daemon.org("acme").await;
    let created = acme.create("everything", everything()).await.unwrap();
    let id = created.server.unwrap().id;
    // Tools offered only to clients that can answer are listed too.
    let names: Vec<&str> = created.tools.iter().map(|t| t.name.as_str()).collect();
    for conditional in ["trigger-sampling-request", "trigger-elicitation-request"] {
        assert!(names.contains(&conditional), "{names:?}");
    }

    let (seen, result) = stream_call(
        &acme,
        call(
            &id,
            "trigger-long-running-operation",
            serde_json::json!({"duration": 1, "steps": 3}),
        ),
        no_requests,
    )
    .await;
    let result = result.unwrap();
    assert!(text_of(&result).contains("Steps: 3"), "{result:?}");
    let progress: Vec<f64> = seen
        .iter()
        .filter_map(|m| match m {
            Out::Progress(p) => Some(p.progress),
            _ => None,
        })
        .collect();
    assert_eq!(progress, [1.0, 2.0, 3.0], "{seen:?}");

    let (seen, result) = stream_call(
        &acme,
        call(
            &id,
            "trigger-sampling-request",
            serde_json::json!({"prompt": "say hi", "maxTokens": 20}),
        ),
        |request| {
            assert_eq!(request.method, "sampling/createMessage");
            let params: serde_json::Value = serde_json::from_str(&request.params_json).unwrap();
            assert!(params.to_string().contains("say hi"), "{params}");
            Outcome::ResultJson(
                serde_json::json!({
                    "role": "assistant",
                    "content": {"type": "text", "text": "hello from the caller"},
                    "model": "test-model",
                    "stopReason": "endTurn"
                })
                .to_string(),
            )
        },
    )
    .await;
    let result = result.unwrap();
    assert!(
        text_of(&result).contains("hello from the caller"),
        "the server got the caller's answer: {result:?}"
    );
    assert!(
        seen.iter()
            .any(|m| matches!(m, Out::Request(r) if r.method == "sampling/createMessage"))
    );

    let (_, result) = stream_call(
        &acme,
        call(&id, "trigger-elicitation-request", serde_json::json!({})),
        |request| {
            assert_eq!(request.method, "elicitation/create");
            Outcome::ResultJson(serde_json::json!({"action": "decline"}).to_string())
        },
    )
    .await;
    let result = result.unwrap();
    assert!(text_of(&result).contains("declined"), "{result:?}");

    // A caller that refuses: the server sees the error, the call still ends.
    let (_, result) = stream_call(
        &acme,
        call(
            &id,
            "trigger-sampling-request",
            serde_json::json!({"prompt": "x", "maxTokens": 5}),
        ),
        |_| {
            Outcome::Error(proto::McpError {
                code: -1,
                message: "no model here".into(),
            })
        },
    )
    .await;
    match result {
        Ok(result) => assert!(
            result.is_error || text_of(&result).contains("no model here"),
            "{result:?}"
        ),
        Err(status) => assert!(status.message().contains("no model here"), "{status:?}"),
    }

    // Unary calls offer the server nothing to ask.
    let unary = acme
        .raw()
        .call_mcp_tool(acme.req(call(
            &id,
            "trigger-sampling-request",
            serde_json::json!({"prompt": "x", "maxTokens": 5}),
        )))
        .await;
    match unary {
        Ok(response) => {
            let response = response.into_inner();
            assert!(response.is_error, "{response:?}");
        }
        Err(status) => assert_ne!(status.code(), Code::Ok),
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_message_must_be_the_call() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    let outbound = futures::stream::iter([proto::StreamMcpToolCallRequest {
        message: Some(In::Answer(proto::ServerRequestAnswer::default())),
    }]);
    let status = acme
        .raw()
        .stream_mcp_tool_call(acme.req(outbound))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("`call`"), "{status:?}");
    daemon.stop().await;
}
