//! Servers closed by another replica. This one may hold live sessions to
//! them (and their stdio children), opened for calls it served; left alone
//! they would stay until the idle timeout. Every commit that writes events
//! wakes every replica (PostgreSQL NOTIFY); a replica then checks the
//! servers of that organization it holds sessions to against the registry
//! and closes those that are gone.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::Manager;
use crate::store::Woken;

impl Manager {
    /// Closes the live sessions of servers closed elsewhere, until
    /// `stopping`.
    pub async fn run_closed_elsewhere(self, stopping: CancellationToken) {
        let mut signal = self.store.subscribe_events();
        loop {
            let woken = tokio::select! {
                () = stopping.cancelled() => return,
                woken = signal.next() => match woken {
                    Some(woken) => woken,
                    None => return,
                },
            };
            let org = match woken {
                Woken::Organization(org) => Some(org),
                Woken::Everyone => None,
            };
            self.close_sessions_of_closed(org.as_deref()).await;
        }
    }

    /// Closes what this replica holds for servers of `org` (`None`: of any
    /// organization) that are no longer registered.
    async fn close_sessions_of_closed(&self, org: Option<&str>) {
        let mut held: HashMap<String, Vec<String>> = HashMap::new();
        for (owner, id) in self.mcp.live_servers() {
            if org.is_none_or(|org| org == owner) {
                held.entry(owner).or_default().push(id);
            }
        }
        for (org, ids) in held {
            let registered = match self.store.registered_servers(&org, &ids).await {
                Ok(registered) => registered,
                Err(err) => {
                    // The next wake-up looks again; the idle timeout is the
                    // backstop.
                    tracing::debug!(%org, error = %err, "checking for servers closed elsewhere failed");
                    continue;
                }
            };
            let closed = ids.iter().filter(|id| !registered.contains(*id));
            futures::future::join_all(closed.map(|id| {
                tracing::debug!(%org, server = %id, "MCP server closed on another replica; closing its live session");
                self.mcp.close_server(&org, id)
            }))
            .await;
        }
    }
}
