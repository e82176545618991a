//! The sync use case: list a server's tools again and store exactly the
//! difference. The listing needs no database connection; the difference is
//! written on one, in one transaction.

use super::{CallStats, FailedTool, Manager, ManagerError, validate};
use crate::{
    model::{Server, ServerState, Tool},
    store::{Contact, track_connections},
};

/// What a sync (or an update with a new transport) changed.
#[derive(Debug, Clone)]
pub struct Synced {
    pub server: Server,
    pub added: Vec<Tool>,
    pub updated: Vec<Tool>,
    /// Names of the tools removed.
    pub removed: Vec<String>,
    pub failed_tools: Vec<FailedTool>,
}

impl Manager {
    pub async fn sync_server_tools(
        &self,
        org: &str,
        server_id: &str,
    ) -> (Result<Synced, ManagerError>, CallStats) {
        let mut stats = CallStats::default();
        let (result, peak) = track_connections(self.sync_inner(org, server_id, &mut stats)).await;
        stats.peak_connections = peak;
        (result, stats)
    }

    async fn sync_inner(
        &self,
        org: &str,
        server_id: &str,
        stats: &mut CallStats,
    ) -> Result<Synced, ManagerError> {
        validate::organization_id(org)?;
        validate::server_id(server_id)?;
        let (transport, state) = self.store.server_transport(org, server_id).await?;
        if state != ServerState::Ready {
            let server = self.store.get_server(org, server_id).await?;
            return Err(ManagerError::FailedPrecondition(format!(
                "MCP server {server_id:?} is not ready to sync ({}){}",
                match state {
                    ServerState::AuthorizationPending => "it waits for authorization",
                    _ => "its authorization failed",
                },
                if server.state_reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", server.state_reason)
                }
            )));
        }
        let transport = self.fresh_transport(org, server_id, transport).await?;
        let listed = match self
            .connect_and_list(org, server_id, &transport, stats)
            .await
        {
            Ok(listed) => listed,
            Err(failed) => {
                if let Some(why) = failed.unreachable() {
                    self.note_contact(org, server_id, Contact::Unreachable(why))
                        .await;
                }
                return Err(failed.into());
            }
        };
        // The difference is found before a connection is taken, and timed
        // apart from writing it.
        let diff_started = std::time::Instant::now();
        let prepared = self.store.prepare_sync(server_id, &listed.tools);
        stats.diff = diff_started.elapsed();
        let persist_started = std::time::Instant::now();
        let synced = self
            .store
            .sync_tools(org, server_id, prepared, listed.identity.as_ref())
            .await;
        stats.persist = persist_started.elapsed();
        listed.teardown.await;
        let synced = synced?;
        if !(synced.added.is_empty() && synced.updated.is_empty() && synced.removed.is_empty()) {
            tracing::info!(
                server = %server_id,
                added = synced.added.len(),
                updated = synced.updated.len(),
                removed = synced.removed.len(),
                "MCP server tools synced"
            );
        }
        Ok(Synced {
            server: synced.server,
            added: synced.added,
            updated: synced.updated,
            removed: synced.removed,
            failed_tools: listed.failed,
        })
    }
}
