//! API keys: stored as hashes, looked up by hash.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{Access, Store, StoreError, models::ApiKeyRow, schema::api_keys, with_conn};

impl Store {
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), StoreError> {
        with_conn!(self, Access::Write, |conn| {
            diesel::insert_into(api_keys::table)
                .values(key)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// Keys of one organization, or of all, oldest first.
    pub async fn list_api_keys(&self, org: Option<&str>) -> Result<Vec<ApiKeyRow>, StoreError> {
        with_conn!(self, Access::Read, |conn| {
            let mut query = api_keys::table
                .select(ApiKeyRow::as_select())
                .order(api_keys::id.asc())
                .into_boxed();
            if let Some(org) = org {
                query = query.filter(api_keys::organization_id.eq(org));
            }
            Ok(query.load(conn).await?)
        })
    }

    /// Marks the key revoked; false if there is no such key. Revoking twice
    /// keeps the first time.
    pub async fn revoke_api_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        with_conn!(self, Access::Write, |conn| {
            let updated = diesel::update(
                api_keys::table
                    .filter(api_keys::id.eq(id))
                    .filter(api_keys::revoked_at.is_null()),
            )
            .set(api_keys::revoked_at.eq(Some(at)))
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
    ) -> Result<Option<ApiKeyRow>, StoreError> {
        with_conn!(self, Access::Read, |conn| {
            Ok(api_keys::table
                .filter(api_keys::key_hash.eq(key_hash))
                .filter(api_keys::revoked_at.is_null())
                .select(ApiKeyRow::as_select())
                .first(conn)
                .await
                .optional()?)
        })
    }
}
