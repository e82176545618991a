//! `mcpd.v1.McpServerService`: decode, find the caller's organization, call
//! the manager, encode. (Authentication, logs and metrics are layers in
//! front of it: see `auth` and `observe`.)

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, metadata::MetadataValue};
use tracing::Instrument;

use super::{auth, convert, deadline, status::to_status, stream, watch};
use crate::{
    manager::{CallStats, CreateServer, Manager, ManagerError, ServerFilter, UpdateServer},
    proto::{self, mcp_server_service_server::McpServerService},
};

/// Response metadata: the most pooled connections the call held at once.
pub const PEAK_CONNECTIONS_HEADER: &str = "mcpd-db-connections-peak";
/// Response metadata: microseconds spent talking to the MCP server
/// (connect, initialize, list).
pub const MCP_US_HEADER: &str = "mcpd-mcp-us";
/// Response metadata: microseconds spent persisting (waiting for the
/// connection included).
pub const PERSIST_US_HEADER: &str = "mcpd-persist-us";
/// Response metadata, on syncs: microseconds spent finding what changed
/// (digests of the listed tools and the difference from the stored ones),
/// before persisting.
pub const DIFF_US_HEADER: &str = "mcpd-diff-us";

pub struct McpServerApi {
    manager: Manager,
    /// Cancelled at shutdown: ends the streams that would otherwise last.
    stopping: CancellationToken,
}

impl McpServerApi {
    pub fn new(manager: Manager, stopping: CancellationToken) -> Self {
        McpServerApi { manager, stopping }
    }
}

/// Runs the call on behalf of the caller's organization (the key was
/// checked by the authentication layer in front of the service).
pub(super) async fn for_caller<R, T, F>(
    request: Request<R>,
    call: impl FnOnce(String, R) -> F,
) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<Response<T>, Status>>,
{
    let org = auth::caller(&request)?;
    call(org, request.into_inner()).await
}

/// Runs a mutation on its own task: a caller that hangs up must not cut a
/// create or close off halfway (the work is bounded by its own timeouts).
async fn detached<T: Send + 'static>(
    fut: impl Future<Output = (Result<T, ManagerError>, CallStats)> + Send + 'static,
) -> Result<(T, CallStats), Status> {
    // In the call's span: the work is the call's, even once it outlives it.
    match tokio::spawn(fut.in_current_span()).await {
        Ok((Ok(value), stats)) => Ok((value, stats)),
        Ok((Err(err), _)) => Err(to_status(err)),
        Err(join) => {
            tracing::error!(error = %join, "request task failed");
            Err(Status::internal("internal error; see the daemon's log"))
        }
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn with_stats<T>(message: T, stats: CallStats) -> Response<T> {
    let mut response = Response::new(message);
    let metadata = response.metadata_mut();
    metadata.insert(
        PEAK_CONNECTIONS_HEADER,
        MetadataValue::from(stats.peak_connections as u64),
    );
    metadata.insert(MCP_US_HEADER, MetadataValue::from(micros(stats.mcp)));
    metadata.insert(
        PERSIST_US_HEADER,
        MetadataValue::from(micros(stats.persist)),
    );
    if !stats.diff.is_zero() {
        metadata.insert(DIFF_US_HEADER, MetadataValue::from(micros(stats.diff)));
    }
    response
}

#[tonic::async_trait]
impl McpServerService for McpServerApi {
    type StreamMcpToolCallStream =
        futures::stream::BoxStream<'static, Result<proto::StreamMcpToolCallResponse, Status>>;

    type WatchMcpServersStream = watch::Outbound;

    async fn watch_mcp_servers(
        &self,
        request: Request<proto::WatchMcpServersRequest>,
    ) -> Result<Response<Self::WatchMcpServersStream>, Status> {
        watch::watch(&self.manager, &self.stopping, request).await
    }

    async fn call_mcp_tool(
        &self,
        request: Request<proto::CallMcpToolRequest>,
    ) -> Result<Response<proto::CallMcpToolResponse>, Status> {
        let deadline = deadline::of(&request);
        for_caller(request, |org, body| async move {
            // Not detached: a caller that goes away cancels the call, and
            // the MCP server is told so (notifications/cancelled).
            let (result, stats) = self
                .manager
                .call_tool(&org, convert::call_tool(body), deadline)
                .await;
            let result = result.map_err(to_status)?;
            Ok(with_stats(convert::tool_call_result(result), stats))
        })
        .await
    }

    async fn stream_mcp_tool_call(
        &self,
        request: Request<tonic::Streaming<proto::StreamMcpToolCallRequest>>,
    ) -> Result<Response<Self::StreamMcpToolCallStream>, Status> {
        stream::call(&self.manager, request).await
    }

    async fn create_mcp_server(
        &self,
        request: Request<proto::CreateMcpServerRequest>,
    ) -> Result<Response<proto::CreateMcpServerResponse>, Status> {
        for_caller(request, |org, body| async move {
            let create = CreateServer {
                name: body.server_name,
                tool_prefix: body.tool_prefix,
                transport: convert::transport_request(body.transport),
            };
            let manager = self.manager.clone();
            let (created, stats) =
                detached(async move { manager.create_server(&org, create).await }).await?;
            Ok(with_stats(
                proto::CreateMcpServerResponse {
                    server: Some(convert::server(created.server)),
                    tools: created.tools.into_iter().map(convert::tool).collect(),
                    failed_tools: created
                        .failed_tools
                        .into_iter()
                        .map(convert::failed_tool)
                        .collect(),
                },
                stats,
            ))
        })
        .await
    }

    async fn close_mcp_server(
        &self,
        request: Request<proto::CloseMcpServerRequest>,
    ) -> Result<Response<proto::CloseMcpServerResponse>, Status> {
        for_caller(request, |org, body| async move {
            let manager = self.manager.clone();
            let server_id = body.server_id.clone();
            let (closed, stats) =
                detached(async move { manager.close_server(&org, &body.server_id).await }).await?;
            Ok(with_stats(
                proto::CloseMcpServerResponse {
                    server_id,
                    removed_tools: closed.removed_tools,
                    removed_mappings: closed.removed_mappings,
                },
                stats,
            ))
        })
        .await
    }

    async fn update_mcp_server(
        &self,
        request: Request<proto::UpdateMcpServerRequest>,
    ) -> Result<Response<proto::UpdateMcpServerResponse>, Status> {
        for_caller(request, |org, body| async move {
            let update = UpdateServer {
                server_id: body.server_id,
                mask: body.update_mask.map(|m| m.paths).unwrap_or_default(),
                name: body.server_name,
                tool_prefix: body.tool_prefix,
                transport: convert::update_transport(body.transport),
            };
            let manager = self.manager.clone();
            let (updated, stats) =
                detached(async move { manager.update_server(&org, update).await }).await?;
            let changes = convert::tool_changes(updated);
            Ok(with_stats(
                proto::UpdateMcpServerResponse {
                    server: changes.server,
                    added: changes.added,
                    updated: changes.updated,
                    removed: changes.removed,
                    failed_tools: changes.failed_tools,
                },
                stats,
            ))
        })
        .await
    }

    async fn sync_mcp_server_tools(
        &self,
        request: Request<proto::SyncMcpServerToolsRequest>,
    ) -> Result<Response<proto::SyncMcpServerToolsResponse>, Status> {
        for_caller(request, |org, body| async move {
            let manager = self.manager.clone();
            let (synced, stats) =
                detached(async move { manager.sync_server_tools(&org, &body.server_id).await })
                    .await?;
            Ok(with_stats(convert::tool_changes(synced), stats))
        })
        .await
    }

    async fn get_mcp_server(
        &self,
        request: Request<proto::GetMcpServerRequest>,
    ) -> Result<Response<proto::GetMcpServerResponse>, Status> {
        for_caller(request, |org, body| async move {
            let server = self
                .manager
                .get_server(&org, &body.server_id)
                .await
                .map_err(to_status)?;
            Ok(Response::new(proto::GetMcpServerResponse {
                server: Some(convert::server(server)),
            }))
        })
        .await
    }

    async fn list_mcp_servers(
        &self,
        request: Request<proto::ListMcpServersRequest>,
    ) -> Result<Response<proto::ListMcpServersResponse>, Status> {
        for_caller(request, |org, body| async move {
            let filter = ServerFilter {
                state: convert::state_filter(body.state)?,
                name_prefix: body.name_prefix,
            };
            let page = self
                .manager
                .list_servers(&org, &filter, body.page_size, &body.page_token)
                .await
                .map_err(to_status)?;
            Ok(Response::new(proto::ListMcpServersResponse {
                servers: page.items.into_iter().map(convert::server).collect(),
                next_page_token: page.next_page_token,
            }))
        })
        .await
    }

    async fn list_mcp_server_tools(
        &self,
        request: Request<proto::ListMcpServerToolsRequest>,
    ) -> Result<Response<proto::ListMcpServerToolsResponse>, Status> {
        for_caller(request, |org, body| async move {
            if body.server_id.is_empty() {
                let page = self
                    .manager
                    .list_catalogue(&org, body.page_size, &body.page_token)
                    .await
                    .map_err(to_status)?;
                return Ok(Response::new(proto::ListMcpServerToolsResponse {
                    tools: page
                        .items
                        .into_iter()
                        .map(|(tool, shared)| proto::Tool {
                            qualified_name_shared: shared,
                            ..convert::tool(tool)
                        })
                        .collect(),
                    next_page_token: page.next_page_token,
                }));
            }
            let page = self
                .manager
                .list_server_tools(&org, &body.server_id, body.page_size, &body.page_token)
                .await
                .map_err(to_status)?;
            Ok(Response::new(proto::ListMcpServerToolsResponse {
                tools: page.items.into_iter().map(convert::tool).collect(),
                next_page_token: page.next_page_token,
            }))
        })
        .await
    }
}
