//! Tool sync: a server's stored tools made equal to what it lists now, by
//! writing only the difference, in one transaction.

use std::collections::HashMap;

use diesel::{prelude::*, sql_types::Text};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Access, Backend, Store, StoreError,
    batch::{InsertMappings, InsertTools},
    models::{MappingRow, ServerRow, ToolRow, to_ms},
    schema::{mcp_servers, server_tools, tools},
    with_conn,
};
use crate::model::{NewTool, Server, Tool};

/// What [`Store::sync_tools`] changed. Nothing changed: nothing was written.
#[derive(Debug, Clone)]
pub struct SyncedTools {
    pub server: Server,
    pub added: Vec<Tool>,
    pub updated: Vec<Tool>,
    /// Names of the tools removed, with their mappings.
    pub removed: Vec<String>,
}

/// Rows per multi-row statement (bind-parameter limits).
const BATCH_ROWS: usize = 500;

impl Store {
    /// Makes the server's stored tools equal to `listed`: new names are
    /// added, tools whose description, schemas, title or annotations changed
    /// are updated in place (same id), the others removed with their
    /// mappings. One transaction; syncs of one server never interleave (on
    /// PostgreSQL a transaction-scoped advisory lock per server, also across
    /// replicas; SQLite has one writer).
    pub async fn sync_tools(
        &self,
        org: &str,
        server_id: &str,
        listed: Vec<NewTool>,
    ) -> Result<SyncedTools, StoreError> {
        let postgres = matches!(self.inner.backend, Backend::Postgres(_));
        let now = to_ms(std::time::SystemTime::now());
        let listed = &listed;
        with_conn!(self, Access::Write, |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                if postgres {
                    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
                        .bind::<Text, _>(server_id)
                        .execute(conn)
                        .await?;
                }
                let server: ServerRow = mcp_servers::table
                    .filter(mcp_servers::organization_id.eq(org))
                    .filter(mcp_servers::id.eq(server_id))
                    .select(ServerRow::as_select())
                    .first(conn)
                    .await
                    .optional()?
                    .ok_or_else(|| StoreError::ServerNotFound(server_id.to_owned()))?;
                let stored: Vec<ToolRow> = server_tools::table
                    .inner_join(tools::table)
                    .filter(server_tools::server_id.eq(server_id))
                    .select(ToolRow::as_select())
                    .load(conn)
                    .await?;
                let diff = Diff::of(&server, stored, listed, now);

                for batch in diff.added.chunks(BATCH_ROWS) {
                    InsertTools(batch).execute(conn).await?;
                    let mappings: Vec<MappingRow> = batch
                        .iter()
                        .map(|tool| MappingRow {
                            server_id: server_id.to_owned(),
                            tool_id: tool.id.clone(),
                        })
                        .collect();
                    InsertMappings(&mappings).execute(conn).await?;
                }
                for tool in &diff.updated {
                    diesel::update(tools::table.find(&tool.id))
                        .set((
                            tools::qualified_name.eq(&tool.qualified_name),
                            tools::description.eq(&tool.description),
                            tools::input_schema.eq(&tool.input_schema),
                            tools::title.eq(&tool.title),
                            tools::annotations.eq(&tool.annotations),
                            tools::output_schema.eq(&tool.output_schema),
                        ))
                        .execute(conn)
                        .await?;
                }
                let removed_ids: Vec<&String> = diff.removed.iter().map(|t| &t.id).collect();
                for batch in removed_ids.chunks(BATCH_ROWS) {
                    // Their mappings go with them (ON DELETE CASCADE).
                    diesel::delete(tools::table.filter(tools::id.eq_any(batch)))
                        .execute(conn)
                        .await?;
                }
                let mut server = server;
                if diff.changes_anything() {
                    server.tool_count = i32::try_from(listed.len()).unwrap_or(i32::MAX);
                    diesel::update(mcp_servers::table.find(server_id))
                        .set(mcp_servers::tool_count.eq(server.tool_count))
                        .execute(conn)
                        .await?;
                }
                Ok(SyncedTools {
                    server: server.into_server(None),
                    added: diff
                        .added
                        .into_iter()
                        .map(|t| t.into_tool(server_id))
                        .collect(),
                    updated: diff
                        .updated
                        .into_iter()
                        .map(|t| t.into_tool(server_id))
                        .collect(),
                    removed: diff.removed.into_iter().map(|t| t.name).collect(),
                })
            })
            .await
        })
    }
}

/// The rows to write to go from what is stored to what is listed.
struct Diff {
    added: Vec<ToolRow>,
    /// The stored rows with their new content.
    updated: Vec<ToolRow>,
    removed: Vec<ToolRow>,
}

impl Diff {
    fn of(server: &ServerRow, stored: Vec<ToolRow>, listed: &[NewTool], now: i64) -> Diff {
        let mut stored: HashMap<String, ToolRow> =
            stored.into_iter().map(|t| (t.name.clone(), t)).collect();
        let mut added = Vec::new();
        let mut updated = Vec::new();
        for tool in listed {
            let fresh = ToolRow::new(
                &server.organization_id,
                &server.tool_prefix,
                tool.clone(),
                now,
            );
            match stored.remove(&tool.name) {
                None => added.push(fresh),
                Some(old) => {
                    let changed = ToolRow {
                        id: old.id.clone(),
                        created_at: old.created_at,
                        ..fresh
                    };
                    if changed != old {
                        updated.push(changed);
                    }
                }
            }
        }
        let mut removed: Vec<ToolRow> = stored.into_values().collect();
        removed.sort_by(|a, b| a.name.cmp(&b.name));
        added.sort_by(|a, b| a.name.cmp(&b.name));
        updated.sort_by(|a, b| a.name.cmp(&b.name));
        Diff {
            added,
            updated,
            removed,
        }
    }

    fn changes_anything(&self) -> bool {
        !(self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty())
    }
}
