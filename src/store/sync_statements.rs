//! A sync's statements, as each backend runs them best. On PostgreSQL each
//! round trip to the server costs about as much as a small statement
//! itself, so a sync's statements go in two pipelined groups (each sent
//! without waiting for the previous answer; the server still runs them in
//! order): the lock with the read of the server row, then every write with
//! the event. With the transaction's BEGIN and COMMIT that is four round
//! trips where there were seven. SQLite runs in-process: one after another.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::future::{BoxFuture, FutureExt, join_all, try_join};

use super::{
    SqliteConn, StoreError,
    batch::{WriteTools, pg_tool_writes},
    events::{AppendEvent, EventDraft, EventRetention, append_event_pg, prune_to_retention},
    models::{ServerRow, ToolRow},
    queries::one_server,
    reuse::Reuse,
    schema::{mcp_servers, server_events, tools},
    sync::{BATCH_ROWS, TOOLS_LOCK},
};

/// What a sync writes once it knows the difference.
pub(super) struct SyncWrite<'a> {
    pub server_id: &'a str,
    pub added: &'a [ToolRow],
    /// Changed tools, and unchanged tools given their digests.
    pub updated: [&'a [ToolRow]; 2],
    pub removed: Vec<&'a String>,
    /// The server row as it is to be written.
    pub server: &'a ServerRow,
    pub tools_version: i64,
    /// The event announcing the sync, if it announces one itself.
    pub event: Option<Announce<'a>>,
}

pub(super) struct Announce<'a> {
    pub retention: &'a EventRetention,
    pub org: &'a str,
    pub event: &'a EventDraft,
}

pub(super) trait SyncStatements {
    /// Locks the server's tools against other writers (PostgreSQL) and
    /// reads its row and tools version under that lock.
    async fn lock_and_read(
        &mut self,
        org: &str,
        server_id: &str,
    ) -> QueryResult<Option<(ServerRow, i64)>>;

    /// Writes the difference, the server row and the event.
    async fn write_sync(&mut self, write: SyncWrite<'_>) -> Result<(), StoreError>;
}

/// The server row's update (a macro: instantiated for each backend).
macro_rules! update_server_row {
    ($write:expr) => {{
        let write: &SyncWrite<'_> = $write;
        let server = write.server;
        diesel::update(mcp_servers::table.find(write.server_id))
            .set((
                mcp_servers::server_info.eq(&server.server_info),
                mcp_servers::tool_count.eq(server.tool_count),
                mcp_servers::last_connected_at.eq(server.last_connected_at),
                mcp_servers::last_synced_at.eq(server.last_synced_at),
                mcp_servers::unreachable_since.eq(server.unreachable_since),
                mcp_servers::last_error.eq(&server.last_error),
                mcp_servers::tools_version.eq(write.tools_version),
            ))
            .reused()
    }};
}

impl SyncStatements for AsyncPgConnection {
    async fn lock_and_read(
        &mut self,
        org: &str,
        server_id: &str,
    ) -> QueryResult<Option<(ServerRow, i64)>> {
        let (mut lock, mut read) = (&*self, &*self);
        // Each statement takes its snapshot when it starts, after the one
        // before it finished: the read sees what the lock's holder before
        // us committed.
        let locked = diesel::sql_query(TOOLS_LOCK)
            .bind::<diesel::sql_types::Text, _>(server_id)
            .reused()
            .execute(&mut lock);
        let read = one_server(org, server_id)
            .select((ServerRow::as_select(), mcp_servers::tools_version))
            .first(&mut read);
        try_join(locked, read).await.map(|(_, row)| row).optional()
    }

    async fn write_sync(&mut self, write: SyncWrite<'_>) -> Result<(), StoreError> {
        let conn: &AsyncPgConnection = self;
        let mut statements: Vec<BoxFuture<'_, QueryResult<Option<i64>>>> =
            pg_tool_writes(conn, write.server_id, write.added, &write.updated)
                .into_iter()
                .map(|written| written.map(|r| r.map(|_| None)).boxed())
                .collect();
        for batch in write.removed.chunks(BATCH_ROWS) {
            // Their mappings go with them (ON DELETE CASCADE).
            let mut c = conn;
            statements.push(
                diesel::delete(tools::table.filter(tools::id.eq_any(batch)))
                    .execute(&mut c)
                    .map(|r| r.map(|_| None))
                    .boxed(),
            );
        }
        let mut c = conn;
        statements.push(
            update_server_row!(&write)
                .execute(&mut c)
                .map(|r| r.map(|_| None))
                .boxed(),
        );
        if let Some(announce) = &write.event {
            statements.push(
                append_event_pg(conn, announce.org, announce.event)
                    .map(|r| r.map(Some))
                    .boxed(),
            );
        }
        // All are awaited, and the first failure in statement order is the
        // answer: the ones after it only report the aborted transaction.
        let mut seq = None;
        for result in join_all(statements).await {
            if let Some(appended) = result? {
                seq = Some(appended);
            }
        }
        match (&write.event, seq) {
            (Some(announce), Some(seq)) => {
                prune_to_retention!(self, announce.retention, announce.org, seq)
            }
            _ => Ok(()),
        }
    }
}

impl SyncStatements for SqliteConn {
    async fn lock_and_read(
        &mut self,
        org: &str,
        server_id: &str,
    ) -> QueryResult<Option<(ServerRow, i64)>> {
        // SQLite's writers are one at a time already.
        one_server(org, server_id)
            .select((ServerRow::as_select(), mcp_servers::tools_version))
            .first(self)
            .await
            .optional()
    }

    async fn write_sync(&mut self, write: SyncWrite<'_>) -> Result<(), StoreError> {
        self.insert_tools(write.server_id, write.added).await?;
        for rows in write.updated {
            self.update_tools(rows).await?;
        }
        for batch in write.removed.chunks(BATCH_ROWS) {
            diesel::delete(tools::table.filter(tools::id.eq_any(batch)))
                .execute(self)
                .await?;
        }
        update_server_row!(&write).execute(self).await?;
        if let Some(announce) = &write.event {
            self.append_event(announce.retention, announce.org, announce.event)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

    use super::{Announce, SyncStatements, SyncWrite};
    use crate::model::{ServerEventKind, ToolChanges};
    use crate::store::{
        DatabaseUrl, StoreError,
        batch::tests::tool_row,
        events::{EventDraft, EventRetention},
        models::ServerRow,
        run_migrations,
        schema::{mcp_servers, server_events},
        tests::{PG_DOWN, PG_URL},
    };

    fn server_row() -> ServerRow {
        ServerRow {
            id: "server-1".into(),
            organization_id: "org-1".into(),
            name: "pipelined".into(),
            transport: "streamable_http".into(),
            endpoint: "http://127.0.0.1/mcp".into(),
            transport_config: "{}".into(),
            tool_count: 1,
            created_at: 0,
            secret_names: "[]".into(),
            state: "ready".into(),
            state_reason: String::new(),
            authorization_url: None,
            tool_prefix: String::new(),
            server_info: None,
            last_error: String::new(),
            unreachable_since: None,
            last_connected_at: None,
            last_synced_at: None,
        }
    }

    /// PostgreSQL's sync writes go out together; when one fails, the
    /// statements after it fail too ("current transaction is aborted"). The
    /// answer is the first failure (here a duplicate tool, not an
    /// unavailable database), and the rollback leaves the server row, its
    /// tools and the event log as they were.
    #[tokio::test]
    async fn postgresql_reports_the_first_failed_write_and_writes_nothing() {
        let name = format!("mcpd_unit_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AsyncPgConnection::establish(PG_URL).await.expect(PG_DOWN);
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        run_migrations(&DatabaseUrl::Postgres(url.clone()))
            .await
            .unwrap();
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        diesel::insert_into(mcp_servers::table)
            .values(server_row())
            .execute(&mut conn)
            .await
            .unwrap();
        let tool = tool_row(0);
        let retention = EventRetention::default();
        let (server, version) = conn
            .lock_and_read("org-1", "server-1")
            .await
            .unwrap()
            .expect("the server row");
        let write = |event| SyncWrite {
            server_id: "server-1",
            added: std::slice::from_ref(&tool),
            updated: [&[], &[]],
            removed: Vec::new(),
            server: &server,
            tools_version: version + 1,
            event,
        };
        conn.write_sync(write(None)).await.unwrap();

        let event = EventDraft::new(
            ServerEventKind::ToolsChanged,
            &server,
            ToolChanges::default(),
        );
        let failed = conn
            .transaction::<(), StoreError, _>(async |conn| {
                conn.write_sync(write(Some(Announce {
                    retention: &retention,
                    org: "org-1",
                    event: &event,
                })))
                .await
            })
            .await
            .expect_err("the tool exists already");
        assert!(
            matches!(
                &failed,
                StoreError::Query(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _
                ))
            ),
            "{failed:?}"
        );
        let (_, stored_version) = conn
            .lock_and_read("org-1", "server-1")
            .await
            .unwrap()
            .expect("the server row");
        assert_eq!(stored_version, version + 1, "the failed write's version");
        let events: i64 = server_events::table
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(events, 0, "the failed write's event");

        drop(conn);
        diesel::sql_query(format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}
