//! API keys: who may call, on behalf of which organization.
//!
//! A key is `mcpd_` followed by 64 hex characters (256 random bits). Only its
//! SHA-256 is stored: a leaked database does not leak usable keys, and a
//! high-entropy key needs no slow hash. The key is shown once, at creation.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Manager, ManagerError, now_ms, validate};
use crate::store::ApiKeyRow;

const PREFIX: &str = "mcpd_";
const MAX_KEY_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A key as created: the secret is in `key`, and nowhere else ever again.
pub struct NewApiKey {
    pub info: ApiKey,
    pub key: String,
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl From<ApiKeyRow> for ApiKey {
    fn from(row: ApiKeyRow) -> Self {
        ApiKey {
            id: row.id,
            organization_id: row.organization_id,
            name: row.name,
            created_at_ms: row.created_at,
            revoked_at_ms: row.revoked_at,
        }
    }
}

impl Manager {
    pub async fn create_api_key(&self, org: &str, name: &str) -> Result<NewApiKey, ManagerError> {
        validate::organization_id(org)?;
        if name.len() > MAX_KEY_NAME || name.chars().any(char::is_control) {
            return Err(ManagerError::InvalidArgument(format!(
                "key name must be at most {MAX_KEY_NAME} printable characters"
            )));
        }
        let key = format!("{PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
        let row = ApiKeyRow {
            id: uuid::Uuid::now_v7().to_string(),
            organization_id: org.to_owned(),
            name: name.to_owned(),
            key_hash: hash(&key),
            created_at: now_ms(),
            revoked_at: None,
        };
        self.store.insert_api_key(&row).await?;
        Ok(NewApiKey {
            info: row.into(),
            key,
        })
    }

    pub async fn list_api_keys(&self, org: Option<&str>) -> Result<Vec<ApiKey>, ManagerError> {
        Ok(self
            .store
            .list_api_keys(org)
            .await?
            .into_iter()
            .map(ApiKey::from)
            .collect())
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<(), ManagerError> {
        if self.store.revoke_api_key(id, now_ms()).await? {
            Ok(())
        } else {
            Err(ManagerError::NotFound(format!("API key {id:?} not found")))
        }
    }

    /// The organization a presented key belongs to. Unknown, malformed and
    /// revoked keys are all the same UNAUTHENTICATED answer.
    pub async fn authenticate(&self, presented: &str) -> Result<String, ManagerError> {
        let refused = || {
            ManagerError::Unauthenticated("the API key is not valid (unknown or revoked)".into())
        };
        let well_formed = presented.len() == PREFIX.len() + 64
            && presented.starts_with(PREFIX)
            && presented[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Err(refused());
        }
        let presented_hash = hash(presented);
        let row = self
            .store
            .find_active_api_key(&presented_hash)
            .await?
            .ok_or_else(refused)?;
        // The lookup matched on the hash; compare again in constant time so
        // no code path depends on how much of a hash matched.
        if bool::from(row.key_hash.as_bytes().ct_eq(presented_hash.as_bytes())) {
            Ok(row.organization_id)
        } else {
            Err(refused())
        }
    }
}
