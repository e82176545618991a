//! The update use case (AIP-134): rename, change the tool prefix, or replace
//! the transport. A new transport is connected and listed before anything
//! is written (no connection held meanwhile); then one transaction.

use super::{CallStats, Manager, ManagerError, Synced, TransportRequest, validate};
use crate::{
    model::ServerState,
    store::{ServerUpdate, track_connections},
};

/// What to change, as the request's mask says: `None` keeps a field.
#[derive(Clone, Default)]
pub struct UpdateServer {
    pub server_id: String,
    pub mask: Vec<String>,
    pub name: String,
    pub tool_prefix: String,
    pub transport: Option<TransportRequest>,
}

/// The fields a mask may name.
const PATHS: [&str; 3] = ["server_name", "tool_prefix", "transport"];

impl Manager {
    pub async fn update_server(
        &self,
        org: &str,
        request: UpdateServer,
    ) -> (Result<Synced, ManagerError>, CallStats) {
        let mut stats = CallStats::default();
        let (result, peak) = track_connections(self.update_inner(org, request, &mut stats)).await;
        stats.peak_connections = peak;
        (result, stats)
    }

    async fn update_inner(
        &self,
        org: &str,
        request: UpdateServer,
        stats: &mut CallStats,
    ) -> Result<Synced, ManagerError> {
        validate::organization_id(org)?;
        validate::server_id(&request.server_id)?;
        if request.mask.is_empty() {
            return Err(ManagerError::InvalidArgument(format!(
                "update_mask names no field; name any of {}",
                PATHS.join(", ")
            )));
        }
        if let Some(unknown) = request.mask.iter().find(|p| !PATHS.contains(&p.as_str())) {
            return Err(ManagerError::InvalidArgument(format!(
                "update_mask: {unknown:?} is not a field that can be updated; use {}",
                PATHS.join(", ")
            )));
        }
        let named = |path: &str| request.mask.iter().any(|p| p == path);
        let mut update = ServerUpdate::default();
        if named("server_name") {
            validate::server_name(&request.name)?;
            update.name = Some(request.name.clone());
        }
        if named("tool_prefix") {
            validate::tool_prefix(&request.tool_prefix)?;
            update.tool_prefix = Some(request.tool_prefix.clone());
        }
        let server_id = &request.server_id;
        let mut failed_tools = Vec::new();
        let mut teardown = None;
        if named("transport") {
            let transport = validate::transport(request.transport.clone())?;
            let (_, state) = self.store.server_transport(org, server_id).await?;
            if state == ServerState::AuthorizationPending {
                return Err(ManagerError::FailedPrecondition(format!(
                    "MCP server {server_id:?} waits for authorization; its transport cannot change now"
                )));
            }
            let listed = self
                .connect_and_list(org, server_id, &transport, stats)
                .await?;
            failed_tools = listed.failed;
            teardown = Some(listed.teardown);
            update.transport = Some((transport, listed.tools));
            update.identity = listed.identity;
        }
        let persist_started = std::time::Instant::now();
        let stored = self.store.update_server(org, server_id, update).await;
        stats.persist = persist_started.elapsed();
        if let Some(teardown) = teardown {
            teardown.await;
        }
        let (server, synced) = stored?;
        if named("transport") {
            // Sessions opened with the old transport (its old credentials)
            // are not used again.
            self.mcp.close_server(org, server_id).await;
            self.mcp.forget(org, server_id);
        }
        let (added, updated, removed) = synced
            .map(|s| (s.added, s.updated, s.removed))
            .unwrap_or_default();
        tracing::info!(server = %server_id, fields = %request.mask.join(","), "MCP server updated");
        // With no new transport nothing was synced: the lists are empty.
        Ok(Synced {
            server,
            added,
            updated,
            removed,
            failed_tools,
        })
    }
}
