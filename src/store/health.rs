//! The health of ready servers' connections: what the last contact showed,
//! written only when it changes what a reader sees (and the time of the
//! last contact that worked).

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Access, Store, StoreError,
    events::{AppendEvent, EventDraft},
    models::{ServerRow, state_column, to_ms},
    queries::one_server,
    schema::mcp_servers,
    with_conn,
};
use crate::model::{ServerEventKind, ServerState, ToolChanges};

/// What contacting a server showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    Reached,
    /// It could not be reached; how, in words.
    Unreachable(String),
}

impl Store {
    /// Records a contact with a ready server (one waiting for authorization
    /// or failed keeps its state). Answers whether it changed the server's
    /// state between ready and unreachable.
    pub async fn record_contact(
        &self,
        org: &str,
        server_id: &str,
        contact: &Contact,
    ) -> Result<bool, StoreError> {
        let now = to_ms(std::time::SystemTime::now());
        let ready = state_column(ServerState::Ready);
        let retention = &self.inner.settings.event_retention;
        let changed = with_conn!(self, Access::Write, "record_contact", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let server = one_server(org, server_id).filter(mcp_servers::state.eq(ready));
                let transition: Option<ServerRow> = match contact {
                    Contact::Reached => {
                        let changed = diesel::update(
                            server.filter(mcp_servers::unreachable_since.is_not_null()),
                        )
                        .set((
                            mcp_servers::unreachable_since.eq(None::<i64>),
                            mcp_servers::last_error.eq(""),
                            mcp_servers::last_connected_at.eq(now),
                        ))
                        .returning(ServerRow::as_returning())
                        .get_result(conn)
                        .await
                        .optional()?;
                        if changed.is_none() {
                            diesel::update(server)
                                .set(mcp_servers::last_connected_at.eq(now))
                                .execute(conn)
                                .await?;
                        }
                        changed
                    }
                    Contact::Unreachable(error) => {
                        // Since the first failure, not the latest.
                        let changed =
                            diesel::update(server.filter(mcp_servers::unreachable_since.is_null()))
                                .set((
                                    mcp_servers::unreachable_since.eq(now),
                                    mcp_servers::last_error.eq(error),
                                ))
                                .returning(ServerRow::as_returning())
                                .get_result(conn)
                                .await
                                .optional()?;
                        if changed.is_none() {
                            diesel::update(server)
                                .set(mcp_servers::last_error.eq(error))
                                .execute(conn)
                                .await?;
                        }
                        changed
                    }
                };
                if let Some(row) = &transition {
                    let event = EventDraft::new(
                        ServerEventKind::StatusChanged,
                        row,
                        ToolChanges::default(),
                    );
                    conn.append_event(retention, org, &event).await?;
                }
                Ok(transition.is_some())
            })
            .await
        })?;
        if changed {
            self.events_committed(org);
        }
        Ok(changed)
    }

    /// (organization, server id) of up to `limit` ready servers of every
    /// organization, by id, after `after_id`: what a health round checks.
    pub async fn ready_servers(
        &self,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let ready = state_column(ServerState::Ready);
        with_conn!(self, Access::Read, "ready_servers", |conn| {
            let mut query = mcp_servers::table
                .filter(mcp_servers::state.eq(ready))
                .select((mcp_servers::organization_id, mcp_servers::id))
                .order(mcp_servers::id.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = after_id {
                query = query.filter(mcp_servers::id.gt(after));
            }
            Ok(query.load(conn).await?)
        })
    }
}
