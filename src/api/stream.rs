//! `StreamMcpToolCall`: the caller's stream in, the call's events out, the
//! result last. The call runs on its own task; when the caller goes away the
//! call is cancelled (and the MCP server told so).

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{auth, convert, deadline, status::to_status};
use crate::{
    manager::{CallEvent, ClientAnswer, Manager},
    proto::{self, stream_mcp_tool_call_request::Message as In},
};

/// Events buffered towards a slow caller before the call waits for it.
const BUFFER: usize = 32;

pub(super) type Outbound =
    futures::stream::BoxStream<'static, Result<proto::StreamMcpToolCallResponse, Status>>;

pub(super) async fn call(
    manager: &Manager,
    request: Request<Streaming<proto::StreamMcpToolCallRequest>>,
) -> Result<Response<Outbound>, Status> {
    let deadline = deadline::of(&request);
    let org = auth::caller(&request)?;
    let mut inbound = request.into_inner();
    let first = match inbound.message().await {
        Ok(Some(proto::StreamMcpToolCallRequest {
            message: Some(In::Call(call)),
        })) => call,
        Ok(_) => {
            return Err(Status::invalid_argument(
                "the first message of StreamMcpToolCall must carry `call`",
            ));
        }
        Err(status) => return Err(status),
    };

    let (out, out_rx) = mpsc::channel(BUFFER);
    let (answers, answers_rx) = mpsc::channel::<ClientAnswer>(BUFFER);
    tokio::spawn(forward_answers(inbound, answers));
    let manager = manager.clone();
    tokio::spawn(
        async move {
            let outcome = run(
                &manager,
                &org,
                convert::call_tool(first),
                deadline,
                &out,
                answers_rx,
            )
            .await;
            let last = outcome.map(|result| proto::StreamMcpToolCallResponse {
                message: Some(proto::stream_mcp_tool_call_response::Message::Result(
                    result,
                )),
            });
            let _ = out.send(last).await;
        }
        // The call's MCP and database work, in the call's span.
        .in_current_span(),
    );
    let stream = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|message| (message, rx))
    });
    Ok(Response::new(stream.boxed()))
}

/// Runs the call, passing its events to the caller as they come.
async fn run(
    manager: &Manager,
    org: &str,
    call: crate::manager::CallTool,
    deadline: Option<std::time::Duration>,
    out: &mpsc::Sender<Result<proto::StreamMcpToolCallResponse, Status>>,
    answers: mpsc::Receiver<ClientAnswer>,
) -> Result<proto::CallMcpToolResponse, Status> {
    let (events, mut events_rx) = mpsc::channel::<CallEvent>(BUFFER);
    let call = manager.stream_tool_call(org, call, deadline, events, answers);
    tokio::pin!(call);
    let finished = loop {
        tokio::select! {
            biased;
            event = events_rx.recv() => {
                if let Some(event) = event
                    && out.send(Ok(convert::call_event(event))).await.is_err()
                {
                    break None;
                }
            }
            (result, _stats) = &mut call => {
                // What the server sent before its result goes first.
                while let Ok(event) = events_rx.try_recv() {
                    let _ = out.send(Ok(convert::call_event(event))).await;
                }
                break Some(result);
            }
            () = out.closed() => break None,
        }
    };
    let result = match finished {
        Some(result) => result,
        None => {
            // The caller is gone: closing the events ends the call, which
            // tells the MCP server (notifications/cancelled).
            drop(events_rx);
            call.await.0
        }
    };
    result.map(convert::tool_call_result).map_err(to_status)
}

/// The caller's answers to the server's requests, as they come. Ends when
/// the call does, whether or not the caller has closed its side: a request
/// stream left open must not keep the RPC (and a graceful shutdown) waiting.
async fn forward_answers(
    mut inbound: Streaming<proto::StreamMcpToolCallRequest>,
    answers: mpsc::Sender<ClientAnswer>,
) {
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = answers.closed() => return,
        };
        let Ok(Some(message)) = message else { return };
        match message.message {
            Some(In::Answer(answer)) => {
                if answers.send(convert::client_answer(answer)).await.is_err() {
                    return;
                }
            }
            Some(In::Call(_)) | None => {
                tracing::debug!("StreamMcpToolCall: a message that is not an answer; ignored")
            }
        }
    }
}
