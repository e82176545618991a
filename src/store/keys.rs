//! API keys: stored as hashes, looked up by hash.

use std::time::SystemTime;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{
    Access, Store, StoreError,
    models::{ApiKeyRow, to_ms},
    schema::api_keys,
    with_conn,
};
use crate::model::ApiKey;

/// The active key a presented hash matched.
#[derive(Debug, Clone)]
pub struct KeyMatch {
    pub organization_id: String,
    pub key_hash: String,
}

impl Store {
    /// Stores a new key by its hash; the key itself never reaches the store.
    pub async fn insert_api_key(
        &self,
        organization_id: &str,
        name: &str,
        key_hash: &str,
    ) -> Result<ApiKey, StoreError> {
        let row = ApiKeyRow {
            id: uuid::Uuid::now_v7().to_string(),
            organization_id: organization_id.to_owned(),
            name: name.to_owned(),
            key_hash: key_hash.to_owned(),
            created_at: to_ms(SystemTime::now()),
            revoked_at: None,
        };
        with_conn!(self, Access::Write, "insert_api_key", |conn| {
            diesel::insert_into(api_keys::table)
                .values(&row)
                .execute(conn)
                .await?;
            Ok(row.into())
        })
    }

    /// Keys of one organization, or of all, oldest first.
    pub async fn list_api_keys(&self, org: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<ApiKeyRow> = with_conn!(self, Access::Read, "list_api_keys", |conn| {
            let mut query = api_keys::table
                .select(ApiKeyRow::as_select())
                .order(api_keys::id.asc())
                .into_boxed();
            if let Some(org) = org {
                query = query.filter(api_keys::organization_id.eq(org));
            }
            Ok(query.load(conn).await?)
        })?;
        Ok(rows.into_iter().map(ApiKey::from).collect())
    }

    /// Marks the key revoked now; false if there is no such key. Revoking
    /// twice keeps the first time.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let now = to_ms(SystemTime::now());
        with_conn!(self, Access::Write, "revoke_api_key", |conn| {
            let updated = diesel::update(
                api_keys::table
                    .filter(api_keys::id.eq(id))
                    .filter(api_keys::revoked_at.is_null()),
            )
            .set(api_keys::revoked_at.eq(Some(now)))
            .execute(conn)
            .await?;
            if updated > 0 {
                return Ok(true);
            }
            Ok(
                diesel::select(diesel::dsl::exists(api_keys::table.find(id)))
                    .get_result::<bool>(conn)
                    .await?,
            )
        })
    }

    /// The key with this hash, unless revoked.
    pub async fn find_active_api_key(
        &self,
        key_hash: &str,
    ) -> Result<Option<KeyMatch>, StoreError> {
        let found: Option<(String, String)> =
            with_conn!(self, Access::Read, "find_active_api_key", |conn| {
                Ok(api_keys::table
                    .filter(api_keys::key_hash.eq(key_hash))
                    .filter(api_keys::revoked_at.is_null())
                    .select((api_keys::organization_id, api_keys::key_hash))
                    .first(conn)
                    .await
                    .optional()?)
            })?;
        Ok(found.map(|(organization_id, key_hash)| KeyMatch {
            organization_id,
            key_hash,
        }))
    }
}
