//! API keys: who may call, on behalf of which organization.
//!
//! A key is `mcpd_` followed by 64 hex characters (256 random bits). Only its
//! SHA-256 is stored: a leaked database does not leak usable keys, and a
//! high-entropy key needs no slow hash. The key is shown once, at creation.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiKey, Manager, ManagerError, validate};

const PREFIX: &str = "mcpd_";
const MAX_KEY_NAME: usize = 128;

/// A key as created: the secret is in `key`, and nowhere else ever again.
pub struct NewApiKey {
    pub info: ApiKey,
    pub key: String,
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
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
        let info = self.store.insert_api_key(org, name, &hash(&key)).await?;
        Ok(NewApiKey { info, key })
    }

    pub async fn list_api_keys(&self, org: Option<&str>) -> Result<Vec<ApiKey>, ManagerError> {
        Ok(self.store.list_api_keys(org).await?)
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<(), ManagerError> {
        if self.store.revoke_api_key(id).await? {
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
        let found = self
            .store
            .find_active_api_key(&presented_hash)
            .await?
            .ok_or_else(refused)?;
        // The lookup matched on the hash; compare again in constant time so
        // no code path depends on how much of a hash matched.
        if bool::from(found.key_hash.as_bytes().ct_eq(presented_hash.as_bytes())) {
            Ok(found.organization_id)
        } else {
            Err(refused())
        }
    }
}
