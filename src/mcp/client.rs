//! The client mcpd shows an MCP server: what it offers (capabilities) and
//! how it answers the server's requests and notifications.
//!
//! - Live sessions for unary calls offer nothing: a server request there is
//!   answered with an error that names StreamMcpToolCall.
//! - A streamed call's session offers sampling, elicitation and roots, and
//!   relays every request (and, through [`super::tap`], every progress and
//!   log message) to the call's caller. The session serves that one call,
//!   so everything on it belongs to it.
//!
//! Sampling, roots and logging are deprecated by the 2026-07-28 revision
//! (SEP-2577) but remain what 2025-11-25 servers use, so they stay here.
#![allow(deprecated)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rmcp::{
    ClientHandler, RoleClient,
    model::{
        ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult,
        ElicitRequestParams, ElicitResult, ErrorCode, ErrorData, Implementation, InputRequest,
        ListRootsResult, ProtocolVersion,
    },
    service::{DynService, NotificationContext, RequestContext, ServiceExt},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};

use super::live::ServerKey;
use crate::model::{CallEvent, ClientAnswer};

fn implementation() -> Implementation {
    Implementation::new("mcpd", env!("CARGO_PKG_VERSION"))
}

fn no_stream(what: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode::METHOD_NOT_FOUND,
        format!(
            "mcpd offers {what} only to tool calls made with StreamMcpToolCall, whose caller answers; this call was made with CallMcpTool"
        ),
        None,
    )
}

/// What a caller on a stream can answer.
fn streaming_capabilities() -> ClientCapabilities {
    serde_json::from_value(serde_json::json!({
        "sampling": {},
        "elicitation": {"form": {}, "url": {}},
        "roots": {"listChanged": false}
    }))
    .unwrap_or_default()
}

/// The client side of one session. Cheap to clone: a session that has to
/// be opened again (a legacy server that choked on `server/discover`) gets
/// the same handler, and the session keeps one to answer the input requests
/// of multi round-trip calls (SEP-2322).
#[derive(Clone)]
pub(super) enum Handler {
    Plain(Plain),
    Relay(Relay),
}

impl Handler {
    /// Where the session's progress and log notifications go: a streamed
    /// call's caller (see [`super::tap`]); nowhere for other sessions.
    pub(super) fn events(&self) -> Option<mpsc::Sender<CallEvent>> {
        match self {
            Handler::Plain(_) => None,
            Handler::Relay(relay) => Some(relay.events.clone()),
        }
    }

    /// The rmcp service for a new session. `legacy` sessions propose the
    /// last revision with an `initialize` handshake instead of rmcp's latest.
    pub(super) fn service(&self, legacy: bool) -> Box<dyn DynService<RoleClient>> {
        let protocol = legacy.then_some(ProtocolVersion::LATEST_WITH_INITIALIZE);
        match self {
            Handler::Plain(plain) => Plain {
                protocol,
                ..plain.clone()
            }
            .into_dyn(),
            Handler::Relay(relay) => Relay {
                protocol,
                ..relay.clone()
            }
            .into_dyn(),
        }
    }

    /// Fulfils one input request of an `input_required` result (SEP-2322)
    /// the way the same request sent on its own would be answered.
    pub(super) async fn input(
        &self,
        request: &InputRequest,
    ) -> Result<serde_json::Value, ErrorData> {
        let (method, what) = match request {
            InputRequest::CreateMessage(_) => ("sampling/createMessage", "sampling"),
            InputRequest::Elicitation(_) => ("elicitation/create", "elicitation"),
            InputRequest::ListRoots(_) => ("roots/list", "roots"),
            _ => {
                return Err(ErrorData::new(
                    ErrorCode::INVALID_REQUEST,
                    "the server asked for an input mcpd does not know",
                    None,
                ));
            }
        };
        let relay = match self {
            Handler::Plain(_) => return Err(no_stream(what)),
            Handler::Relay(relay) => relay,
        };
        let params = serde_json::to_value(request)
            .ok()
            .and_then(|mut r| r.get_mut("params").map(serde_json::Value::take))
            .unwrap_or_else(|| serde_json::json!({}));
        let mut answer = relay.ask_json(method, params.clone()).await?;
        if matches!(request, InputRequest::Elicitation(_)) {
            fill_defaults(&params, &mut answer);
        }
        Ok(answer)
    }
}

/// Where a live session reports that its server's tools changed
/// (`notifications/tools/list_changed`): the server it belongs to, sent to
/// whoever keeps the registry in sync.
#[derive(Clone)]
pub(super) struct ToolChanges {
    pub(super) server: ServerKey,
    pub(super) to: mpsc::Sender<ServerKey>,
}

/// For the pool's live sessions (unary calls): no client capabilities, and
/// their servers' tool list changes are reported.
pub(super) fn watching(tool_changes: ToolChanges) -> Handler {
    Handler::Plain(Plain {
        capabilities: ClientCapabilities::default(),
        protocol: None,
        tool_changes: Some(Arc::new(tool_changes)),
    })
}

/// For listing tools at registration: the capabilities a streamed call
/// offers, so a server that offers some tools only to clients able to answer
/// its requests lists them too (they are called with StreamMcpToolCall).
/// Nothing is asked during a listing; anything that is, is refused.
pub(super) fn listing() -> Handler {
    Handler::Plain(Plain {
        capabilities: streaming_capabilities(),
        protocol: None,
        tool_changes: None,
    })
}

/// What mcpd tells the server about itself, proposing `protocol` (rmcp's
/// latest when `None`).
fn client_config(
    capabilities: ClientCapabilities,
    protocol: Option<&ProtocolVersion>,
) -> ClientConfig {
    let mut config = ClientConfig::new(capabilities, implementation());
    if let Some(protocol) = protocol {
        config.protocol_version = protocol.clone();
    }
    config
}

#[derive(Clone)]
pub(super) struct Plain {
    capabilities: ClientCapabilities,
    protocol: Option<ProtocolVersion>,
    tool_changes: Option<Arc<ToolChanges>>,
}

impl ClientHandler for Plain {
    fn get_info(&self) -> ClientConfig {
        client_config(self.capabilities.clone(), self.protocol.as_ref())
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(changes) = &self.tool_changes {
            // Never waits: a server that announces faster than syncs run
            // loses nothing, since one sync after the burst sees it all.
            if changes.to.try_send(changes.server.clone()).is_err() {
                tracing::debug!(server = %changes.server.1, "tool list change not queued (a sync is due already or nobody syncs)");
            }
        }
    }

    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        Err(no_stream("sampling"))
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        Err(no_stream("elicitation"))
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        Err(no_stream("roots"))
    }
}

type Pending =
    Arc<Mutex<HashMap<String, oneshot::Sender<Result<serde_json::Value, (i32, String)>>>>>;

/// For one streamed call: relays to and from its caller.
#[derive(Clone)]
pub(super) struct Relay {
    events: mpsc::Sender<CallEvent>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    protocol: Option<ProtocolVersion>,
}

impl Relay {
    /// The handler, and the task that routes the caller's answers to the
    /// requests waiting for them (it ends when the caller stops answering).
    pub(super) fn start(
        events: mpsc::Sender<CallEvent>,
        mut answers: mpsc::Receiver<ClientAnswer>,
    ) -> (Handler, tokio::task::JoinHandle<()>) {
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        let router = tokio::spawn(async move {
            while let Some(answer) = answers.recv().await {
                let waiting = routes
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&answer.request_id));
                match waiting {
                    Some(request) => {
                        let _ = request.send(answer.outcome);
                    }
                    None => tracing::debug!(
                        request_id = answer.request_id.as_str(),
                        "an answer for no pending request; ignored"
                    ),
                }
            }
        });
        let relay = Relay {
            events,
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            protocol: None,
        };
        (Handler::Relay(relay), router)
    }

    /// Asks the caller, waits for its answer, and reads it as `R`.
    async fn ask<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, ErrorData> {
        let params = serde_json::to_value(params).unwrap_or_default();
        let answer = self.ask_json(method, params).await?;
        read_answer(method, answer)
    }

    /// Asks the caller and waits for its answer, as JSON.
    async fn ask_json(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, ErrorData> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (answer_tx, answer_rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id.clone(), answer_tx);
        }
        let event = CallEvent::Request {
            id: id.clone(),
            method: method.to_owned(),
            params,
        };
        let gone = || {
            ErrorData::new(
                ErrorCode::INTERNAL_ERROR,
                "the caller of this tool call is gone",
                None,
            )
        };
        self.events.send(event).await.map_err(|_| gone())?;
        match answer_rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err((code, message))) => Err(ErrorData::new(ErrorCode(code), message, None)),
            Err(_) => Err(gone()),
        }
    }
}

fn read_answer<R: DeserializeOwned>(
    method: &str,
    answer: serde_json::Value,
) -> Result<R, ErrorData> {
    serde_json::from_value(answer).map_err(|e| {
        ErrorData::new(
            ErrorCode::INTERNAL_ERROR,
            format!("the caller's answer to {method} is not a valid result: {e}"),
            None,
        )
    })
}

/// An accepted form elicitation whose content leaves out fields that the
/// requested schema gives defaults for gets those defaults (SEP-1034): the
/// caller may answer with only what its user changed.
fn fill_defaults(params: &serde_json::Value, answer: &mut serde_json::Value) {
    if answer.get("action").and_then(serde_json::Value::as_str) != Some("accept") {
        return;
    }
    let Some(properties) = params
        .pointer("/requestedSchema/properties")
        .and_then(serde_json::Value::as_object)
    else {
        return;
    };
    let Some(answer) = answer.as_object_mut() else {
        return;
    };
    let content = answer
        .entry("content")
        .or_insert_with(|| serde_json::json!({}));
    let Some(content) = content.as_object_mut() else {
        return;
    };
    for (name, property) in properties {
        if let Some(default) = property.get("default") {
            content
                .entry(name.clone())
                .or_insert_with(|| default.clone());
        }
    }
}

impl ClientHandler for Relay {
    fn get_info(&self) -> ClientConfig {
        client_config(streaming_capabilities(), self.protocol.as_ref())
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.ask("sampling/createMessage", &params).await
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let params = serde_json::to_value(&request).unwrap_or_default();
        let mut answer = self.ask_json("elicitation/create", params.clone()).await?;
        fill_defaults(&params, &mut answer);
        read_answer("elicitation/create", answer)
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.ask("roots/list", &serde_json::json!({})).await
    }
}

#[cfg(test)]
mod tests {
    use super::fill_defaults;
    use serde_json::json;

    #[test]
    fn accepted_answers_get_the_schema_defaults_they_leave_out() {
        let params = json!({"requestedSchema": {"type": "object", "properties": {
            "name": {"type": "string", "default": "Ada"},
            "age": {"type": "integer", "default": 36},
            "email": {"type": "string"}
        }}});
        let mut answer = json!({"action": "accept", "content": {"age": 7}});
        fill_defaults(&params, &mut answer);
        assert_eq!(
            answer,
            json!({"action": "accept", "content": {"age": 7, "name": "Ada"}})
        );
        let mut empty = json!({"action": "accept"});
        fill_defaults(&params, &mut empty);
        assert_eq!(empty["content"], json!({"name": "Ada", "age": 36}));
        let mut declined = json!({"action": "decline"});
        fill_defaults(&params, &mut declined);
        assert_eq!(declined, json!({"action": "decline"}));
    }
}
