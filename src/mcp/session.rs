//! One MCP client session: list tools, call them, then close, best-effort.

use std::time::Duration;

use rmcp::{
    RoleClient,
    model::{
        CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
        ClientRequest, RequestId, ServerResult,
    },
    service::{Peer, PeerRequestOptions, ServiceError},
};

use super::{
    ListedTool, McpError, Stage, describe,
    live::{Live, LiveSessions, ServerKey, Slot},
    result::tool_call_result,
    stdio::Malformed,
};
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
    list_timeout: Duration,
    grace: Duration,
}

impl Session {
    pub(super) fn new(
        live: Live,
        target: String,
        key: ServerKey,
        registry: LiveSessions,
        list_timeout: Duration,
        grace: Duration,
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
            list_timeout,
            grace,
        }
    }

    /// Every tool the server offers, following pagination cursors.
    pub async fn list_tools(&self) -> Result<Vec<ListedTool>, McpError> {
        match tokio::time::timeout(self.list_timeout, self.peer.list_all_tools()).await {
            Ok(Ok(tools)) => Ok(tools.into_iter().map(ListedTool::from).collect()),
            Ok(Err(err)) => {
                // A garbled stream shows up here as a closed transport; say why.
                let why = self.malformed.as_ref().and_then(Malformed::reason);
                Err(McpError::failed(
                    Stage::ListTools,
                    why.unwrap_or_else(|| describe::service_failure(&err, &self.target)),
                ))
            }
            Err(_) => Err(McpError::Timeout {
                stage: Stage::ListTools,
                after: self.list_timeout,
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
    pub(super) async fn call_tool_until(
        &self,
        name: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<ToolCallResult, CallFailure> {
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = self
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .map_err(|err| CallFailure::NotDelivered(self.call_error(&err)))?;
        let mut abandoned = CancelOnDrop {
            peer: self.peer.clone(),
            request: Some(handle.id.clone()),
        };
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout, handle.await_response()) => answer,
            () = stop => {
                abandoned.cancel_now().await;
                return Err(CallFailure::Failed(McpError::Cancelled));
            }
        };
        let Ok(answer) = answer else {
            abandoned.cancel_now().await;
            return Err(CallFailure::Failed(McpError::Timeout {
                stage: Stage::CallTool,
                after: timeout,
            }));
        };
        abandoned.request = None;
        match answer {
            Ok(ServerResult::CallToolResult(result)) => Ok(tool_call_result(&result)),
            Ok(_) => Err(CallFailure::Failed(McpError::failed(
                Stage::CallTool,
                format!(
                    "{} answered tools/call with something else than a tool result",
                    self.target
                ),
            ))),
            Err(ServiceError::McpError(data)) => Err(CallFailure::Failed(McpError::Rejected {
                code: data.code.0,
                message: describe::quoted(&data.message),
            })),
            Err(err) => Err(CallFailure::Failed(self.call_error(&err))),
        }
    }

    fn call_error(&self, err: &ServiceError) -> McpError {
        let why = self.malformed.as_ref().and_then(Malformed::reason);
        McpError::failed(
            Stage::CallTool,
            why.unwrap_or_else(|| describe::service_failure(err, &self.target)),
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
            teardown(live, self.grace).await;
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
            let grace = self.grace;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(teardown(live, grace));
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
pub(super) async fn teardown(live: Live, grace: Duration) {
    let Live {
        mut service, child, ..
    } = live;
    match service.close_with_timeout(grace).await {
        Ok(Some(reason)) => tracing::debug!(?reason, "MCP session closed"),
        Ok(None) => tracing::debug!(?grace, "MCP session did not close in time; dropped"),
        Err(err) => tracing::debug!(error = %err, "MCP session task failed while closing"),
    }
    drop(service);
    if let Some(child) = child {
        child.reap(grace).await;
    }
}
