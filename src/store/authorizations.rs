//! Authorizations in flight (the OAuth 2.1 authorization code flow): what a
//! browser's return to the callback must find again. The callback is
//! unauthenticated, so the `state` it carries is the only key: stored as a
//! SHA-256 (a database dump holds nothing a browser could present), taken
//! once (an atomic `DELETE … RETURNING`: of two replicas handling the same
//! callback, one gets it), void after its expiry. The payload is sealed and
//! bound to the state's hash.

use std::time::{Duration, SystemTime};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};

use super::{Access, Store, StoreError, models::to_ms, schema::oauth_authorizations, with_conn};

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
        with_conn!(self, Access::Write, |conn| {
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
    /// it was taken already, or it expired. Taking deletes it either way.
    pub async fn take_authorization(
        &self,
        state: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let hash = state_hash(state);
        let row: Option<AuthorizationRow> = with_conn!(self, Access::Write, |conn| {
            Ok(diesel::delete(
                oauth_authorizations::table.filter(oauth_authorizations::state_hash.eq(&hash)),
            )
            .returning(AuthorizationRow::as_returning())
            .get_result(conn)
            .await
            .optional()?)
        })?;
        let Some(row) = row else { return Ok(None) };
        if row.expires_at <= to_ms(SystemTime::now()) {
            return Ok(None);
        }
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

    /// Deletes expired authorizations; returns how many.
    pub async fn sweep_authorizations(&self) -> Result<usize, StoreError> {
        let now = to_ms(SystemTime::now());
        with_conn!(self, Access::Write, |conn| {
            Ok(diesel::delete(
                oauth_authorizations::table.filter(oauth_authorizations::expires_at.le(now)),
            )
            .execute(conn)
            .await?)
        })
    }
}
