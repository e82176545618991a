//! One MCP client session: list tools, call them, then close, best-effort.

use std::{sync::Arc, time::Duration};

use rmcp::{
    RoleClient,
    model::{
        CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
        ClientRequest, InputRequests, InputResponses, RequestId, ServerResult, SubscriptionFilter,
        SubscriptionsListenRequest, SubscriptionsListenRequestParams,
    },
    service::{Peer, PeerRequestOptions, ServiceError},
};

use tokio::time::Instant;

use super::{
    ListedTool, McpError, Stage,
    client::Handler,
    describe,
    live::{Live, LiveSessions, ServerKey, Slot},
    metrics::{McpMetrics, Operation},
    result::tool_call_result,
    stdio::Malformed,
};
use crate::model::ServerIdentity;
use crate::model::ToolCallResult;

/// Why a call failed, and whether it may be retried elsewhere.
pub(super) enum CallFailure {
    /// The request never left: the session was already gone. Safe to retry
    /// on a fresh session.
    NotDelivered(McpError),
    /// The request may have reached the server: never retried.
    Failed(McpError),
}

pub struct Session {
    peer: Peer<RoleClient>,
    /// The program or host:port, for error messages.
    target: String,
    malformed: Option<Malformed>,
    slot: Slot,
    key: ServerKey,
    registration: u64,
    registry: LiveSessions,
    /// Answers the input requests of multi round-trip calls.
    handler: Handler,
    terms: SessionTerms,
}

/// What a session takes from its connector.
#[derive(Clone)]
pub(super) struct SessionTerms {
    pub(super) list_timeout: Duration,
    pub(super) grace: Duration,
    pub(super) metrics: Arc<McpMetrics>,
    pub(super) transport: &'static str,
}

/// Most `input_required` rounds one call may take (rmcp's default).
const MAX_INPUT_ROUNDS: usize = rmcp::model::DEFAULT_MRTR_MAX_ROUNDS;

impl Session {
    pub(super) fn new(
        live: Live,
        target: String,
        key: ServerKey,
        handler: Handler,
        registry: LiveSessions,
        terms: SessionTerms,
    ) -> Session {
        let peer = live.service.peer().clone();
        let malformed = live.malformed.clone();
        let slot: Slot = Slot::new(std::sync::Mutex::new(Some(live)));
        let registration = registry.register(key.clone(), slot.clone());
        Session {
            peer,
            target,
            malformed,
            slot,
            key,
            registration,
            registry,
            handler,
            terms,
        }
    }

    /// What the server said about itself when the session started.
    pub fn identity(&self) -> Option<ServerIdentity> {
        self.peer.peer_info().map(|info| ServerIdentity {
            // A server/discover answer need not name its implementation.
            name: info
                .server_info
                .as_ref()
                .map(|i| i.name.clone())
                .unwrap_or_default(),
            title: info.server_info.as_ref().and_then(|i| i.title.clone()),
            version: info
                .server_info
                .as_ref()
                .map(|i| i.version.clone())
                .unwrap_or_default(),
            protocol_version: info.protocol_version.to_string(),
            instructions: info.instructions.clone(),
            capabilities: serde_json::to_value(&info.capabilities).unwrap_or_default(),
        })
    }

    /// Every tool the server offers, following pagination cursors.
    #[tracing::instrument(
        name = "mcp.list_tools",
        skip_all,
        fields(
            otel.kind = "client",
            mcp.operation = "list_tools",
            mcp.transport = self.terms.transport,
            mcpd.server.id = self.key.1.as_str(),
        )
    )]
    pub async fn list_tools(&self) -> Result<Vec<ListedTool>, McpError> {
        let _timer = self
            .terms
            .metrics
            .time(Operation::ListTools, self.terms.transport);
        match tokio::time::timeout(self.terms.list_timeout, self.peer.list_all_tools()).await {
            Ok(Ok(tools)) => Ok(tools.into_iter().map(ListedTool::from).collect()),
            Ok(Err(err)) => Err(self.remote_error(Stage::ListTools, &err)),
            Err(_) => Err(McpError::Timeout {
                stage: Stage::ListTools,
                after: self.terms.list_timeout,
            }),
        }
    }

    /// At 2026-07-28 a server announces tool changes only on a
    /// `subscriptions/listen` stream its client opens (earlier revisions
    /// send them on the session). For a server that offers them, the stream
    /// is opened in the background and lives as long as the session; its
    /// announcements reach the session's handler like the older ones.
    pub(super) fn listen_for_tool_changes(&self) {
        let Some(info) = self.peer.peer_info() else {
            return;
        };
        let announces = info
            .capabilities
            .tools
            .as_ref()
            .and_then(|tools| tools.list_changed)
            .unwrap_or(false);
        if info.protocol_version.has_initialize() || !announces {
            return;
        }
        let peer = self.peer.clone();
        let target = self.target.clone();
        tokio::spawn(async move {
            let filter = SubscriptionFilter::builder().tools_list_changed().build();
            let request = ClientRequest::SubscriptionsListenRequest(
                SubscriptionsListenRequest::new(SubscriptionsListenRequestParams::new(filter)),
            );
            // Ends when the server ends the stream or the session closes.
            match peer.send_request(request).await {
                Ok(_) => {
                    tracing::debug!(%target, "the server ended its subscriptions/listen stream")
                }
                Err(err) => tracing::debug!(%target, error = %err, "subscriptions/listen ended"),
            }
        });
    }

    /// `ping`: whether the server still answers on this session. Any
    /// answer counts, an error too (some servers do not implement `ping`).
    pub(super) async fn ping(&self, timeout: Duration) -> Result<(), McpError> {
        let request = ClientRequest::PingRequest(Default::default());
        match tokio::time::timeout(timeout, self.peer.send_request(request)).await {
            Ok(Ok(_) | Err(ServiceError::McpError(_))) => Ok(()),
            Ok(Err(err)) => Err(self.remote_error(Stage::Connect, &err)),
            Err(_) => Err(McpError::Timeout {
                stage: Stage::Connect,
                after: timeout,
            }),
        }
    }

    /// Calls a tool; the deadline is the call's. When the deadline passes or
    /// the caller goes away first, the server is sent
    /// `notifications/cancelled` for the request.
    pub(super) async fn call_tool(
        &self,
        name: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        timeout: Duration,
    ) -> Result<ToolCallResult, CallFailure> {
        self.call_tool_until(name, arguments, timeout, std::future::pending())
            .await
    }

    /// [`Self::call_tool`] that also ends when `stop` completes (the caller
    /// went away). On the deadline or `stop`, the server is told with
    /// `notifications/cancelled` before this returns.
    ///
    /// A 2026-07-28 server may answer `input_required` (SEP-2322): the
    /// session's handler fulfils the input requests (a streamed call asks its
    /// caller) and the call is sent again with the answers and the server's
    /// `requestState`, verbatim, for at most [`MAX_INPUT_ROUNDS`] rounds.
    #[tracing::instrument(
        name = "mcp.call_tool",
        skip_all,
        fields(
            otel.kind = "client",
            mcp.operation = "call_tool",
            mcp.transport = self.terms.transport,
            mcpd.server.id = self.key.1.as_str(),
            mcp.tool.name = name,
        )
    )]
    pub(super) async fn call_tool_until(
        &self,
        name: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<ToolCallResult, CallFailure> {
        let _timer = self
            .terms
            .metrics
            .time(Operation::CallTool, self.terms.transport);
        let until = Instant::now() + timeout;
        let timed_out = || {
            CallFailure::Failed(McpError::Timeout {
                stage: Stage::CallTool,
                after: timeout,
            })
        };
        tokio::pin!(stop);
        let mut params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        for round in 0..MAX_INPUT_ROUNDS {
            let request = ClientRequest::CallToolRequest(CallToolRequest::new(params.clone()));
            let handle = match self
                .peer
                .send_request_with_option(request, PeerRequestOptions::no_options())
                .await
            {
                Ok(handle) => handle,
                // Only the first request is safe to send elsewhere: a later
                // one answers input a server already asked for.
                Err(err) if round == 0 => {
                    return Err(CallFailure::NotDelivered(self.call_error(&err)));
                }
                Err(err) => return Err(CallFailure::Failed(self.call_error(&err))),
            };
            let mut abandoned = CancelOnDrop {
                peer: self.peer.clone(),
                request: Some(handle.id.clone()),
            };
            let answer = tokio::select! {
                answer = tokio::time::timeout_at(until, handle.await_response()) => answer,
                () = &mut stop => {
                    abandoned.cancel_now().await;
                    return Err(CallFailure::Failed(McpError::Cancelled));
                }
            };
            let Ok(answer) = answer else {
                abandoned.cancel_now().await;
                return Err(timed_out());
            };
            abandoned.request = None;
            let required = match answer {
                Ok(ServerResult::CallToolResult(result)) => return Ok(tool_call_result(&result)),
                Ok(ServerResult::InputRequiredResult(required)) => required,
                Ok(_) => {
                    return Err(CallFailure::Failed(McpError::failed(
                        Stage::CallTool,
                        format!(
                            "{} answered tools/call with something else than a tool result",
                            self.target
                        ),
                    )));
                }
                Err(ServiceError::McpError(data)) => {
                    return Err(CallFailure::Failed(McpError::Rejected {
                        code: data.code.0,
                        message: describe::quoted(&data.message),
                    }));
                }
                Err(err) => return Err(CallFailure::Failed(self.call_error(&err))),
            };
            // Input requests are answered by the caller: its answers may take
            // as long as the call may, and the caller may leave meanwhile.
            let responses = tokio::select! {
                responses = tokio::time::timeout_at(until, self.fulfil(required.input_requests)) => {
                    responses.map_err(|_| timed_out())?.map_err(CallFailure::Failed)?
                }
                () = &mut stop => return Err(CallFailure::Failed(McpError::Cancelled)),
            };
            params.input_responses = (!responses.is_empty()).then_some(responses);
            params.request_state = required.request_state;
        }
        Err(CallFailure::Failed(McpError::failed(
            Stage::CallTool,
            format!(
                "{} still asked for input after {MAX_INPUT_ROUNDS} rounds (SEP-2322); mcpd gave up on the call",
                self.target
            ),
        )))
    }

    /// The answers to an `input_required` result's requests, by their keys.
    async fn fulfil(&self, requests: Option<InputRequests>) -> Result<InputResponses, McpError> {
        let answers = requests
            .unwrap_or_default()
            .into_iter()
            .map(|(key, request)| async move {
                match self.handler.input(&request).await {
                    Ok(answer) => Ok((key, answer)),
                    // A unary call: nobody to ask.
                    Err(data) if matches!(self.handler, Handler::Plain(_)) => Err(
                        McpError::NeedsInput(format!(
                            "the tool asked for input: {}",
                            describe::quoted(&data.message)
                        )),
                    ),
                    // MRTR has no way to hand an error back to the server:
                    // the call ends here.
                    Err(data) => Err(McpError::NeedsInput(format!(
                        "the tool asked for input and the caller's answer was an error: {} (code {})",
                        describe::quoted(&data.message),
                        data.code.0
                    ))),
                }
            });
        futures::future::try_join_all(answers)
            .await
            .map(|answers| answers.into_iter().collect())
    }

    fn call_error(&self, err: &ServiceError) -> McpError {
        self.remote_error(Stage::CallTool, err)
    }

    fn remote_error(&self, stage: Stage, err: &ServiceError) -> McpError {
        // A garbled stream shows up as a closed transport; say why.
        let why = self.malformed.as_ref().and_then(Malformed::reason);
        McpError::remote(
            stage,
            why.unwrap_or_else(|| describe::service_failure(err, &self.target)),
            describe::service_refuses_credentials(err),
            err.auth_challenge(),
        )
    }

    /// Whether the session can still carry requests.
    pub(super) fn is_open(&self) -> bool {
        !self.peer.is_transport_closed()
            && self
                .slot
                .lock()
                .map(|mut live| live.as_mut().is_some_and(Live::is_running))
                .unwrap_or(false)
    }

    /// Closes the session and reaps its process. Never fails.
    pub async fn close(self) {
        self.shut_down().await;
    }

    /// [`Self::close`] for a session shared by calls: whoever holds it gets
    /// errors from then on.
    pub(super) async fn shut_down(&self) {
        let live = self.slot.lock().ok().and_then(|mut live| live.take());
        if let Some(live) = live {
            teardown(live, self.terms.grace, &self.terms.metrics).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.registry.deregister(&self.key, self.registration);
        // Dropped without `close` (its request was cancelled): tear down in
        // the background rather than leak the session or the child.
        let live = self.slot.lock().ok().and_then(|mut live| live.take());
        if let Some(live) = live {
            let (grace, metrics) = (self.terms.grace, self.terms.metrics.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { teardown(live, grace, &metrics).await });
            }
        }
    }
}

/// Sends `notifications/cancelled` for a request whose caller stopped
/// waiting: now, or when dropped (the call's future was dropped, so nothing
/// can wait: the notification is sent from a task of its own).
struct CancelOnDrop {
    peer: Peer<RoleClient>,
    request: Option<RequestId>,
}

/// How long sending `notifications/cancelled` may take before it is given up.
const CANCEL_SEND: Duration = Duration::from_secs(1);

fn cancelled(request_id: RequestId) -> CancelledNotification {
    CancelledNotification::new(CancelledNotificationParam::new(
        Some(request_id),
        Some("the caller stopped waiting (deadline or cancellation)".into()),
    ))
}

impl CancelOnDrop {
    /// Sends the notification and waits until it is written (bounded).
    async fn cancel_now(&mut self) {
        if let Some(request_id) = self.request.take() {
            let sent = tokio::time::timeout(
                CANCEL_SEND,
                self.peer.send_notification(cancelled(request_id).into()),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::debug!("could not send notifications/cancelled");
            }
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(request_id) = self.request.take() else {
            return;
        };
        let peer = self.peer.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = peer.send_notification(cancelled(request_id).into()).await {
                    tracing::debug!(error = %err, "could not send notifications/cancelled");
                }
            });
        }
    }
}

/// Best-effort teardown: cancel the session (which closes the transport and
/// with it the child's stdin), then reap the child. Failures are logged at
/// debug and go no further.
pub(super) async fn teardown(live: Live, grace: Duration, metrics: &McpMetrics) {
    let Live {
        mut service, child, ..
    } = live;
    match service.close_with_timeout(grace).await {
        Ok(Some(reason)) => tracing::debug!(?reason, "MCP session closed"),
        Ok(None) => {
            metrics.teardown_failed();
            tracing::debug!(?grace, "MCP session did not close in time; dropped")
        }
        Err(err) => {
            metrics.teardown_failed();
            tracing::debug!(error = %err, "MCP session task failed while closing")
        }
    }
    drop(service);
    if let Some(child) = child {
        child.reap(grace).await;
    }
}
