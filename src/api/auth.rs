//! Who is calling. Until API keys exist the organization comes from the
//! `x-organization-id` metadata.

use tonic::{Request, Status, metadata::MetadataMap};

pub const ORGANIZATION_HEADER: &str = "x-organization-id";

pub fn organization<T>(request: &Request<T>) -> Result<String, Status> {
    organization_from(request.metadata())
}

fn organization_from(metadata: &MetadataMap) -> Result<String, Status> {
    let value = metadata
        .get(ORGANIZATION_HEADER)
        .map(|v| v.to_str().map(str::trim))
        .transpose()
        .map_err(|_| Status::unauthenticated(format!("{ORGANIZATION_HEADER} must be ASCII")))?
        .unwrap_or_default();
    if value.is_empty() {
        return Err(Status::unauthenticated(format!(
            "missing {ORGANIZATION_HEADER} metadata: every call is made on behalf of an organization"
        )));
    }
    Ok(value.to_owned())
}
