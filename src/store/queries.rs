//! The registry's queries. Each public method takes exactly one connection
//! and holds it only for its own statements.

use std::collections::HashSet;

use diesel::{dsl::exists, prelude::*};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Access, Sealer, Store, StoreError,
    batch::{InsertMappings, InsertToolsReturningStored},
    error::is_unique_violation,
    models::{MappingRow, ServerRow, ToolRow, to_ms, transport_kind_column},
    schema::{mcp_servers, server_tools, tools},
    with_conn,
};
use crate::model::{CallTarget, NewServer, NewTool, Server, Tool, Transport};

/// Rows per multi-row INSERT: big enough to make round trips rare, small
/// enough to stay far below SQLite's and PostgreSQL's bind-parameter limits.
const BATCH_ROWS: usize = 500;

/// SQL LIKE pattern of a sealed value, whatever its format version.
fn sealed_pattern() -> String {
    format!("{}%", super::sealer::FAMILY_PREFIX)
}

/// What [`Store::create_server`] wrote.
#[derive(Debug, Clone)]
pub struct CreatedServer {
    pub server: Server,
    pub tools: Vec<Tool>,
    /// Tools not stored because the organization already has a tool of that name.
    pub name_conflicts: Vec<String>,
}

/// What [`Store::delete_server`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedServer {
    pub removed_tools: u32,
    pub removed_mappings: u32,
}

impl Store {
    pub async fn server_name_taken(&self, org: &str, name: &str) -> Result<bool, StoreError> {
        with_conn!(self, Access::Read, |conn| {
            let taken = diesel::select(exists(
                mcp_servers::table
                    .filter(mcp_servers::organization_id.eq(org))
                    .filter(mcp_servers::name.eq(name)),
            ))
            .get_result::<bool>(conn)
            .await?;
            Ok(taken)
        })
    }

    /// Writes the server, then each tool and its mapping, in one transaction
    /// on one connection. Tools go in sorted multi-row batches; a tool whose
    /// name the organization already has is skipped (ON CONFLICT DO NOTHING)
    /// and reported, so one bad tool never fails the others.
    pub async fn create_server(
        &self,
        server: NewServer,
        new_tools: Vec<NewTool>,
    ) -> Result<CreatedServer, StoreError> {
        let sealer = self.sealer()?;
        let config = serde_json::to_string(&server.transport)
            .map_err(|e| StoreError::Sealing(format!("encoding the transport: {e}")))?;
        let now = to_ms(std::time::SystemTime::now());
        let server = ServerRow {
            transport: transport_kind_column(server.transport.kind()).to_owned(),
            endpoint: server.transport.endpoint(),
            secret_names: serde_json::to_string(&server.transport.secret_names())
                .unwrap_or_else(|_| "[]".into()),
            // Bound to the row: a sealed config copied to another server
            // does not open.
            transport_config: sealer.seal(config.as_bytes(), server.id.as_bytes()),
            tool_count: 0,
            created_at: now,
            id: server.id,
            organization_id: server.organization_id,
            name: server.name,
        };
        let mut new_tools: Vec<ToolRow> = new_tools
            .into_iter()
            .map(|tool| ToolRow::new(&server.organization_id, tool, now))
            .collect();
        // A stable order makes concurrent creates that share tool names take
        // their row locks in the same order: they wait, never deadlock.
        new_tools.sort_by(|a, b| a.name.cmp(&b.name));
        let server = &server;
        let new_tools = &new_tools;
        with_conn!(self, Access::Write, |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                diesel::insert_into(mcp_servers::table)
                    .values(server)
                    .execute(conn)
                    .await
                    .map_err(|err| {
                        if is_unique_violation(&err) {
                            StoreError::ServerNameTaken(server.name.clone())
                        } else {
                            err.into()
                        }
                    })?;

                let mut stored = Vec::with_capacity(new_tools.len());
                let mut name_conflicts = Vec::new();
                for batch in new_tools.chunks(BATCH_ROWS) {
                    let inserted: HashSet<String> = InsertToolsReturningStored(batch)
                        .load::<String>(conn)
                        .await?
                        .into_iter()
                        .collect();
                    let mappings: Vec<MappingRow> = batch
                        .iter()
                        .filter(|tool| inserted.contains(&tool.id))
                        .map(|tool| MappingRow {
                            server_id: server.id.clone(),
                            tool_id: tool.id.clone(),
                        })
                        .collect();
                    if !mappings.is_empty() {
                        InsertMappings(&mappings).execute(conn).await?;
                    }
                    for tool in batch {
                        if inserted.contains(&tool.id) {
                            stored.push(Tool::from(tool.clone()));
                        } else {
                            name_conflicts.push(tool.name.clone());
                        }
                    }
                }

                let tool_count = i32::try_from(stored.len()).unwrap_or(i32::MAX);
                diesel::update(mcp_servers::table.find(&server.id))
                    .set(mcp_servers::tool_count.eq(tool_count))
                    .execute(conn)
                    .await?;
                Ok(CreatedServer {
                    server: Server::from(ServerRow {
                        tool_count,
                        ..server.clone()
                    }),
                    tools: stored,
                    name_conflicts,
                })
            })
            .await
        })
    }

    /// Whether any server's transport config is sealed (then the key that
    /// sealed it is needed).
    pub async fn has_sealed_configs(&self) -> Result<bool, StoreError> {
        with_conn!(self, Access::Read, |conn| {
            Ok(diesel::select(exists(
                mcp_servers::table.filter(mcp_servers::transport_config.like(sealed_pattern())),
            ))
            .get_result::<bool>(conn)
            .await?)
        })
    }

    /// Opens one stored config with `sealer`: a wrong key fails here, at
    /// start-up, not on some later call.
    pub async fn verify_sealer(&self, sealer: &Sealer) -> Result<(), StoreError> {
        let sample: Option<(String, String)> = with_conn!(self, Access::Read, |conn| {
            Ok(mcp_servers::table
                .filter(mcp_servers::transport_config.like(sealed_pattern()))
                .select((mcp_servers::id, mcp_servers::transport_config))
                .first(conn)
                .await
                .optional()?)
        })?;
        if let Some((id, sealed)) = sample {
            sealer.open(&sealed, id.as_bytes()).map_err(|e| {
                StoreError::Sealing(format!(
                    "the secret key (fingerprint {}) does not open the stored secrets: {e}; start with the key file they were sealed with",
                    sealer.fingerprint()
                ))
            })?;
        }
        Ok(())
    }

    pub async fn get_server(&self, org: &str, id: &str) -> Result<Server, StoreError> {
        with_conn!(self, Access::Read, |conn| {
            mcp_servers::table
                .filter(mcp_servers::organization_id.eq(org))
                .filter(mcp_servers::id.eq(id))
                .select(ServerRow::as_select())
                .first(conn)
                .await
                .optional()?
                .map(Server::from)
                .ok_or_else(|| StoreError::ServerNotFound(id.to_owned()))
        })
    }

    /// What a call of `tool` on the server needs, in one short checkout: the
    /// server's transport, unsealed, and the tool's input schema.
    pub async fn call_target(
        &self,
        org: &str,
        server_id: &str,
        tool: &str,
    ) -> Result<CallTarget, StoreError> {
        let found: Option<(String, String)> = with_conn!(self, Access::Read, |conn| {
            let found = mcp_servers::table
                .inner_join(server_tools::table.inner_join(tools::table))
                .filter(mcp_servers::organization_id.eq(org))
                .filter(mcp_servers::id.eq(server_id))
                .filter(tools::name.eq(tool))
                .select((mcp_servers::transport_config, tools::input_schema))
                .first(conn)
                .await
                .optional()?;
            if found.is_none() {
                // Which of the two is missing decides the message.
                let server_exists = diesel::select(exists(
                    mcp_servers::table
                        .filter(mcp_servers::organization_id.eq(org))
                        .filter(mcp_servers::id.eq(server_id)),
                ))
                .get_result::<bool>(conn)
                .await?;
                if !server_exists {
                    return Err(StoreError::ServerNotFound(server_id.to_owned()));
                }
            }
            Ok(found)
        })?;
        let (sealed, input_schema_json) = found.ok_or_else(|| StoreError::ToolNotFound {
            server_id: server_id.to_owned(),
            tool: tool.to_owned(),
        })?;
        Ok(CallTarget {
            transport: self.unseal_transport(server_id, &sealed)?,
            input_schema_json,
        })
    }

    pub(super) fn sealer(&self) -> Result<&Sealer, StoreError> {
        self.inner.settings.sealer.as_ref().ok_or_else(|| {
            StoreError::Sealing("no secret key is configured (--secret-key-file)".into())
        })
    }

    fn unseal_transport(&self, server_id: &str, sealed: &str) -> Result<Transport, StoreError> {
        let sealer = self.sealer()?;
        let plain = sealer.open(sealed, server_id.as_bytes()).map_err(|e| {
            StoreError::Sealing(format!("opening the transport of {server_id}: {e}"))
        })?;
        serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Sealing(format!("decoding the transport of {server_id}: {e}")))
    }

    /// Servers of `org` in creation order (ids are UUIDv7), after `after_id`.
    pub async fn list_servers(
        &self,
        org: &str,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Server>, StoreError> {
        let rows: Vec<ServerRow> = with_conn!(self, Access::Read, |conn| {
            let mut query = mcp_servers::table
                .filter(mcp_servers::organization_id.eq(org))
                .select(ServerRow::as_select())
                .order(mcp_servers::id.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = after_id {
                query = query.filter(mcp_servers::id.gt(after));
            }
            Ok(query.load(conn).await?)
        })?;
        Ok(rows.into_iter().map(Server::from).collect())
    }

    /// Tools of one server by name, after `after_name`.
    pub async fn list_server_tools(
        &self,
        org: &str,
        server_id: &str,
        after_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Tool>, StoreError> {
        let rows: Vec<ToolRow> = with_conn!(self, Access::Read, |conn| {
            let found = diesel::select(exists(
                mcp_servers::table
                    .filter(mcp_servers::organization_id.eq(org))
                    .filter(mcp_servers::id.eq(server_id)),
            ))
            .get_result::<bool>(conn)
            .await?;
            if !found {
                return Err(StoreError::ServerNotFound(server_id.to_owned()));
            }
            let mut query = server_tools::table
                .inner_join(tools::table)
                .filter(server_tools::server_id.eq(server_id))
                .select(ToolRow::as_select())
                .order(tools::name.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = after_name {
                query = query.filter(tools::name.gt(after));
            }
            Ok(query.load(conn).await?)
        })?;
        Ok(rows.into_iter().map(Tool::from).collect())
    }

    /// Removes the server, its mappings and the tools no other server
    /// provides, in one transaction.
    pub async fn delete_server(&self, org: &str, id: &str) -> Result<DeletedServer, StoreError> {
        with_conn!(self, Access::Write, |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let found = diesel::select(exists(
                    mcp_servers::table
                        .filter(mcp_servers::organization_id.eq(org))
                        .filter(mcp_servers::id.eq(id)),
                ))
                .get_result::<bool>(conn)
                .await?;
                if !found {
                    return Err(StoreError::ServerNotFound(id.to_owned()));
                }
                let tool_ids: Vec<String> = server_tools::table
                    .filter(server_tools::server_id.eq(id))
                    .select(server_tools::tool_id)
                    .load(conn)
                    .await?;
                let removed_mappings =
                    diesel::delete(server_tools::table.filter(server_tools::server_id.eq(id)))
                        .execute(conn)
                        .await?;
                let mut removed_tools = 0;
                for batch in tool_ids.chunks(BATCH_ROWS) {
                    let still_provided =
                        exists(server_tools::table.filter(server_tools::tool_id.eq(tools::id)));
                    removed_tools += diesel::delete(
                        tools::table
                            .filter(tools::id.eq_any(batch))
                            .filter(diesel::dsl::not(still_provided)),
                    )
                    .execute(conn)
                    .await?;
                }
                diesel::delete(mcp_servers::table.find(id))
                    .execute(conn)
                    .await?;
                Ok(DeletedServer {
                    removed_tools: u32::try_from(removed_tools).unwrap_or(u32::MAX),
                    removed_mappings: u32::try_from(removed_mappings).unwrap_or(u32::MAX),
                })
            })
            .await
        })
    }
}
