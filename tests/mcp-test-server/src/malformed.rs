//! `--malformed-list`: the not-quite-JSON that stands in for a `tools/list`
//! answer. The transports intercept the request before rmcp sees it (see
//! `stdio::MalformedList` and `http::intercept_list`, which also serves
//! `--crash-during-list` over HTTP), so no valid answer is ever produced.

use serde_json::Value;

/// The start of a plausible `tools/list` answer for request `id` (already
/// serialized as JSON), cut off mid-string: not valid JSON, so not valid
/// JSON-RPC either. Carries no trailing newline.
pub fn truncated_answer(id: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{{"name":"trunc"#)
}

/// The id of `body` (serialized as JSON) if it is a single JSON-RPC
/// `tools/list` request; `None` for anything else, unparsable bodies included.
pub fn tools_list_request_id(body: &[u8]) -> Option<String> {
    let message: Value = serde_json::from_slice(body).ok()?;
    if message.get("method")?.as_str()? != "tools/list" {
        return None;
    }
    Some(message.get("id")?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_not_json() {
        let answer = truncated_answer("7");
        assert!(answer.starts_with(r#"{"jsonrpc":"2.0","id":7,"result":"#));
        assert!(serde_json::from_str::<Value>(&answer).is_err());
    }

    #[test]
    fn finds_tools_list_requests_only() {
        let id = |body: &str| tools_list_request_id(body.as_bytes());
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#).as_deref(),
            Some("3")
        );
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{}}"#).as_deref(),
            Some(r#""a""#)
        );
        assert_eq!(id(r#"{"jsonrpc":"2.0","method":"tools/list"}"#), None);
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#),
            None
        );
        assert_eq!(id("not json"), None);
    }
}
