//! A `tools/call` result in the daemon's terms. Read through its JSON form,
//! as the MCP spec defines it, rather than through rmcp's structs: the spec is
//! the stable contract, rmcp's Rust types change between releases.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;

use crate::model::{Content, ContentKind, ResourceContents, ToolCallResult};

pub(super) fn tool_call_result(result: &rmcp::model::CallToolResult) -> ToolCallResult {
    let json = serde_json::to_value(result).unwrap_or(Value::Null);
    ToolCallResult {
        content: json
            .get("content")
            .and_then(Value::as_array)
            .map(|items| items.iter().map(content).collect())
            .unwrap_or_default(),
        structured_content: json.get("structuredContent").cloned(),
        is_error: json
            .get("isError")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        meta: json.get("_meta").cloned(),
    }
}

fn text(item: &Value, key: &str) -> String {
    item.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// MCP sends binary data base64-encoded; data that does not decode is kept
/// as the bytes of its text rather than dropped.
fn bytes(item: &Value, key: &str) -> Vec<u8> {
    let encoded = text(item, key);
    STANDARD
        .decode(&encoded)
        .unwrap_or_else(|_| encoded.into_bytes())
}

fn content(item: &Value) -> Content {
    let kind = match item.get("type").and_then(Value::as_str) {
        Some("text") => ContentKind::Text(text(item, "text")),
        Some("image") => ContentKind::Image {
            data: bytes(item, "data"),
            mime_type: text(item, "mimeType"),
        },
        Some("audio") => ContentKind::Audio {
            data: bytes(item, "data"),
            mime_type: text(item, "mimeType"),
        },
        Some("resource_link") => ContentKind::ResourceLink {
            uri: text(item, "uri"),
            name: text(item, "name"),
            title: text(item, "title"),
            description: text(item, "description"),
            mime_type: text(item, "mimeType"),
            size: item.get("size").and_then(Value::as_u64),
        },
        Some("resource") => {
            let resource = item.get("resource").unwrap_or(&Value::Null);
            ContentKind::Resource {
                uri: text(resource, "uri"),
                mime_type: text(resource, "mimeType"),
                contents: match resource.get("text").and_then(Value::as_str) {
                    Some(t) => ResourceContents::Text(t.to_owned()),
                    None => ResourceContents::Blob(bytes(resource, "blob")),
                },
            }
        }
        // A content type newer than this daemon: pass it on as its JSON.
        _ => ContentKind::Text(item.to_string()),
    };
    Content {
        kind,
        annotations: item.get("annotations").cloned(),
        meta: item.get("_meta").cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_content_type_keeps_its_fields() {
        let result: rmcp::model::CallToolResult = serde_json::from_value(serde_json::json!({
            "content": [
                {"type": "text", "text": "hi", "annotations": {"priority": 0.5}},
                {"type": "image", "data": "AAEC", "mimeType": "image/png"},
                {"type": "audio", "data": "AwQ=", "mimeType": "audio/wav"},
                {"type": "resource_link", "uri": "file:///a", "name": "a", "size": 7},
                {"type": "resource", "resource": {"uri": "file:///b", "mimeType": "text/plain", "text": "b"}}
            ],
            "structuredContent": {"sum": 5},
            "isError": true,
            "_meta": {"k": "v"}
        }))
        .unwrap();
        let converted = tool_call_result(&result);
        assert!(converted.is_error);
        assert_eq!(
            converted.structured_content,
            Some(serde_json::json!({"sum": 5}))
        );
        assert_eq!(converted.meta, Some(serde_json::json!({"k": "v"})));
        let kinds: Vec<&ContentKind> = converted.content.iter().map(|c| &c.kind).collect();
        assert_eq!(kinds[0], &ContentKind::Text("hi".into()));
        assert_eq!(
            converted.content[0].annotations,
            Some(serde_json::json!({"priority": 0.5}))
        );
        assert_eq!(
            kinds[1],
            &ContentKind::Image {
                data: vec![0, 1, 2],
                mime_type: "image/png".into()
            }
        );
        assert_eq!(
            kinds[2],
            &ContentKind::Audio {
                data: vec![3, 4],
                mime_type: "audio/wav".into()
            }
        );
        assert!(
            matches!(kinds[3], ContentKind::ResourceLink { uri, size: Some(7), .. } if uri == "file:///a")
        );
        assert!(matches!(
            kinds[4],
            ContentKind::Resource { contents: ResourceContents::Text(t), .. } if t == "b"
        ));
    }
}
