//! AIP-158 paging: a bounded page size and an opaque token that carries the
//! keyset position of the last item returned.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::ManagerError;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;

/// 0 means the default; larger than the maximum is clamped (AIP-158).
pub fn page_size(requested: i32) -> Result<i64, ManagerError> {
    match i64::from(requested) {
        n if n < 0 => Err(ManagerError::InvalidArgument(format!(
            "page_size must not be negative (got {n})"
        ))),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// A token is only valid for the listing (`scope`) that issued it.
pub fn encode_token(scope: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{scope}\n{position}"))
}

pub fn decode_token(scope: &str, token: &str) -> Result<Option<String>, ManagerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        ManagerError::InvalidArgument(
            "page_token is not valid for this listing; pass the next_page_token of the previous page, or nothing for the first page"
                .into(),
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    match text.split_once('\n') {
        Some((token_scope, position)) if token_scope == scope && !position.is_empty() => {
            Ok(Some(position.to_owned()))
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_within_their_scope_only() {
        let token = encode_token("servers/org-a", "0192-abc");
        assert_eq!(
            decode_token("servers/org-a", &token).unwrap().as_deref(),
            Some("0192-abc")
        );
        assert!(decode_token("servers/org-b", &token).is_err());
        assert!(decode_token("servers/org-a", "not base64 !").is_err());
        assert_eq!(decode_token("servers/org-a", "").unwrap(), None);
    }

    #[test]
    fn page_size_is_defaulted_clamped_and_checked() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(1_000_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
