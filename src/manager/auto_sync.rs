//! Automatic sync: when a live session hears `notifications/tools/list_changed`
//! from its server, mcpd syncs that server's tools — after a quiet moment (a
//! burst of announcements makes one sync), one sync at a time per server (an
//! announcement during a sync makes one more after it). Across replicas the
//! writes are serialized by the sync's own lock, and a sync that finds
//! nothing new writes no tool.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Manager;

/// (organization, server id).
type ServerKey = (String, String);

/// Servers with a sync due or running, and whether another was announced
/// since it started.
#[derive(Default, Clone)]
struct Due(Arc<Mutex<HashMap<ServerKey, bool>>>);

impl Due {
    /// Whether a sync must be started (none is due or running yet).
    fn announce(&self, server: &ServerKey) -> bool {
        let Ok(mut due) = self.0.lock() else {
            return false;
        };
        match due.get_mut(server) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                due.insert(server.clone(), false);
                true
            }
        }
    }

    /// A sync starts: what is announced from now on it may not see.
    fn starting(&self, server: &ServerKey) {
        if let Ok(mut due) = self.0.lock()
            && let Some(again) = due.get_mut(server)
        {
            *again = false;
        }
    }

    /// A sync ended: whether another must run (else the server is done).
    fn again(&self, server: &ServerKey) -> bool {
        let Ok(mut due) = self.0.lock() else {
            return false;
        };
        if due.get(server) == Some(&true) {
            return true;
        }
        due.remove(server);
        false
    }
}

impl Manager {
    /// Syncs servers whose live sessions announce tool changes, until
    /// `stopping`. Does nothing if another task took the announcements.
    pub async fn run_auto_sync(self, stopping: CancellationToken) {
        let Some(mut changes) = self.mcp.take_tool_changes() else {
            return;
        };
        let due = Due::default();
        loop {
            let server = tokio::select! {
                () = stopping.cancelled() => return,
                server = changes.recv() => match server {
                    Some(server) => server,
                    None => return,
                },
            };
            if !due.announce(&server) {
                continue;
            }
            tokio::spawn(
                self.clone()
                    .sync_when_quiet(server, due.clone(), stopping.clone()),
            );
        }
    }

    async fn sync_when_quiet(self, server: ServerKey, due: Due, stopping: CancellationToken) {
        loop {
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(self.limits.sync_debounce) => {}
            }
            due.starting(&server);
            let (org, server_id) = (&server.0, &server.1);
            // A sync that changes something logs it; failures only here.
            // Its own trace: no call asked for it.
            let span = tracing::info_span!(
                parent: None,
                "auto_sync",
                mcpd.organization = org.as_str(),
                mcpd.server.id = server_id.as_str(),
            );
            if let (Err(err), _) = self
                .sync_server_tools(org, server_id)
                .instrument(span)
                .await
            {
                tracing::warn!(%org, server = %server_id, error = %err, "automatic tool sync failed");
            }
            if !due.again(&server) {
                return;
            }
        }
    }
}
