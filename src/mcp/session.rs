//! One MCP client session: list tools, then close, best-effort.

use std::time::Duration;

use rmcp::{RoleClient, service::Peer};

use super::{
    ListedTool, McpError, Stage, describe,
    live::{Live, LiveSessions, ServerKey, Slot},
    stdio::Malformed,
};

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

    /// Closes the session and reaps its process. Never fails.
    pub async fn close(self) {
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
