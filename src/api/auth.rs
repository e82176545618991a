//! Who is calling: `authorization: Bearer <API key>`. The organization comes
//! from the key, never from anything else the caller sends.

use tonic::{Request, Status};

use super::status::to_status;
use crate::manager::Manager;

pub const AUTHORIZATION_HEADER: &str = "authorization";

fn missing() -> Status {
    Status::unauthenticated(
        "missing `authorization: Bearer <API key>` metadata; an operator creates keys with `mcpd keys create --org ORG`",
    )
}

/// The organization of the caller's key.
pub async fn organization<T>(manager: &Manager, request: &Request<T>) -> Result<String, Status> {
    let value = request
        .metadata()
        .get(AUTHORIZATION_HEADER)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let key = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .filter(|key| !key.is_empty())
        .ok_or_else(missing)?;
    manager.authenticate(key).await.map_err(to_status)
}
