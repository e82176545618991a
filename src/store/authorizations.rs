//! Authorizations in flight (the OAuth 2.1 authorization code flow): what a
//! browser's return to the callback must find again. The callback is
//! unauthenticated, so the `state` it carries is the only key: stored as a
//! SHA-256 (a database dump holds nothing a browser could present), taken
//! once (an atomic `DELETE … RETURNING`: of two replicas handling the same
//! callback, one gets it), void after its expiry. The payload is sealed and
//! bound to the state's hash.

use std::time::{Duration, SystemTime};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use sha2::{Digest, Sha256};

use super::{
    Access, Store, StoreError,
    models::{state_column, to_ms},
    schema::{mcp_servers, oauth_authorizations},
    with_conn,
};
use crate::model::ServerState;

/// An authorization taken back by the callback.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingAuthorization {
    pub organization_id: String,
    pub server_id: String,
    /// What the flow needs to finish, as the manager stored it.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("organization_id", &self.organization_id)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = oauth_authorizations)]
pub(super) struct AuthorizationRow {
    state_hash: String,
    organization_id: String,
    server_id: String,
    payload: String,
    created_at: i64,
    expires_at: i64,
}

fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

impl Store {
    /// Stores an authorization under its `state` for `ttl`. The server row
    /// must exist (closing the server drops its authorizations).
    pub async fn save_authorization(
        &self,
        organization_id: &str,
        server_id: &str,
        state: &str,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let row = self.authorization_row(organization_id, server_id, state, payload, ttl)?;
        with_conn!(self, Access::Write, "save_authorization", |conn| {
            diesel::insert_into(oauth_authorizations::table)
                .values(&row)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// The row of an authorization: the state hashed, the payload sealed.
    pub(super) fn authorization_row(
        &self,
        organization_id: &str,
        server_id: &str,
        state: &str,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<AuthorizationRow, StoreError> {
        let hash = state_hash(state);
        let now = SystemTime::now();
        Ok(AuthorizationRow {
            payload: self.sealer()?.seal(payload, hash.as_bytes()),
            state_hash: hash,
            organization_id: organization_id.to_owned(),
            server_id: server_id.to_owned(),
            created_at: to_ms(now),
            expires_at: to_ms(now + ttl),
        })
    }

    /// Takes the authorization `state` names: `None` when there is none,
    /// it was taken already, or it expired. Taking deletes it either way; an
    /// expired one leaves its server in [`ServerState::Error`] (nobody can
    /// finish that authorization any more).
    pub async fn take_authorization(
        &self,
        state: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let hash = state_hash(state);
        let now = to_ms(SystemTime::now());
        let row: Option<AuthorizationRow> =
            with_conn!(self, Access::Write, "take_authorization", |conn| {
                conn.transaction::<_, StoreError, _>(async |conn| {
                    let row: Option<AuthorizationRow> = diesel::delete(
                        oauth_authorizations::table
                            .filter(oauth_authorizations::state_hash.eq(&hash)),
                    )
                    .returning(AuthorizationRow::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?;
                    match row {
                        Some(row) if row.expires_at <= now => {
                            expire_servers!(conn, [row.server_id.as_str()]);
                            Ok(None)
                        }
                        row => Ok(row),
                    }
                })
                .await
            })?;
        let Some(row) = row else { return Ok(None) };
        let payload = self
            .sealer()?
            .open(&row.payload, hash.as_bytes())
            .map_err(|e| StoreError::Sealing(format!("an authorization in flight: {e}")))?;
        Ok(Some(PendingAuthorization {
            organization_id: row.organization_id,
            server_id: row.server_id,
            payload,
        }))
    }

    /// Deletes expired authorizations, and puts the servers that waited
    /// for them in [`ServerState::Error`]; returns how many.
    pub async fn sweep_authorizations(&self) -> Result<usize, StoreError> {
        let now = to_ms(SystemTime::now());
        with_conn!(self, Access::Write, "sweep_authorizations", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let servers: Vec<String> = diesel::delete(
                    oauth_authorizations::table.filter(oauth_authorizations::expires_at.le(now)),
                )
                .returning(oauth_authorizations::server_id)
                .get_results(conn)
                .await?;
                if !servers.is_empty() {
                    expire_servers!(conn, &servers);
                }
                Ok(servers.len())
            })
            .await
        })
    }
}

/// Servers (ids) still waiting for an authorization that expired go to
/// ERROR. A macro: its body is instantiated for each backend's connection.
macro_rules! expire_servers {
    ($conn:expr, $ids:expr) => {
        diesel::update(
            mcp_servers::table
                .filter(mcp_servers::id.eq_any($ids))
                .filter(mcp_servers::state.eq(state_column(ServerState::AuthorizationPending))),
        )
        .set((
            mcp_servers::state.eq(state_column(ServerState::Error)),
            mcp_servers::state_reason.eq(EXPIRED),
            mcp_servers::authorization_url.eq(None::<String>),
        ))
        .execute($conn)
        .await?
    };
}
use expire_servers;

const EXPIRED: &str = "nobody finished the authorization within its time (--oauth-state-ttl); close the server and create it again";
