//! The health of ready servers' connections: what the last contact showed,
//! written only when it changes what a reader sees (and the time of the
//! last contact that worked).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{
    Access, Store, StoreError,
    models::{state_column, to_ms},
    schema::mcp_servers,
    with_conn,
};
use crate::model::ServerState;

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
        with_conn!(self, Access::Write, |conn| {
            let server = mcp_servers::table
                .filter(mcp_servers::organization_id.eq(org))
                .filter(mcp_servers::id.eq(server_id))
                .filter(mcp_servers::state.eq(ready));
            Ok(match contact {
                Contact::Reached => {
                    let changed =
                        diesel::update(server.filter(mcp_servers::unreachable_since.is_not_null()))
                            .set((
                                mcp_servers::unreachable_since.eq(None::<i64>),
                                mcp_servers::last_error.eq(""),
                                mcp_servers::last_connected_at.eq(now),
                            ))
                            .execute(conn)
                            .await?;
                    if changed == 0 {
                        diesel::update(server)
                            .set(mcp_servers::last_connected_at.eq(now))
                            .execute(conn)
                            .await?;
                    }
                    changed > 0
                }
                Contact::Unreachable(error) => {
                    // Since the first failure, not the latest.
                    let changed =
                        diesel::update(server.filter(mcp_servers::unreachable_since.is_null()))
                            .set((
                                mcp_servers::unreachable_since.eq(now),
                                mcp_servers::last_error.eq(error),
                            ))
                            .execute(conn)
                            .await?;
                    if changed == 0 {
                        diesel::update(server)
                            .set(mcp_servers::last_error.eq(error))
                            .execute(conn)
                            .await?;
                    }
                    changed > 0
                }
            })
        })
    }

    /// (organization, server id) of up to `limit` ready servers of every
    /// organization, by id, after `after_id`: what a health round checks.
    pub async fn ready_servers(
        &self,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let ready = state_column(ServerState::Ready);
        with_conn!(self, Access::Read, |conn| {
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
