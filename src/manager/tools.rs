//! Which discovered tools can be stored. A bad tool becomes a reason in the
//! answer; it never fails the request.

use std::collections::HashSet;

use super::FailedTool;
use crate::{mcp::ListedTool, model::NewTool};

pub const MAX_TOOL_NAME: usize = 128;
pub const MAX_TOOL_DESCRIPTION: usize = 16 * 1024;
pub const MAX_TOOL_SCHEMA: usize = 64 * 1024;
pub const MAX_TOOL_TITLE: usize = 1024;

pub fn check(tools: Vec<ListedTool>) -> (Vec<NewTool>, Vec<FailedTool>) {
    let mut seen = HashSet::with_capacity(tools.len());
    let mut ok = Vec::with_capacity(tools.len());
    let mut failed = Vec::new();
    for tool in tools {
        let name = tool.name.clone();
        match check_one(&tool) {
            Err(reason) => failed.push(FailedTool { name, reason }),
            Ok(checked) if !seen.insert(checked.name.clone()) => failed.push(FailedTool {
                name,
                reason: "the server lists this tool name more than once; the first was kept".into(),
            }),
            Ok(checked) => ok.push(checked),
        }
    }
    (ok, failed)
}

fn check_one(tool: &ListedTool) -> Result<NewTool, String> {
    let name = tool.name.as_str();
    if name.is_empty() {
        return Err("tool name is empty".into());
    }
    if name.len() > MAX_TOOL_NAME {
        return Err(format!(
            "tool name is {} characters long; at most {MAX_TOOL_NAME} are allowed",
            name.len()
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
    {
        return Err("tool name may contain only letters, digits, '_', '-', '.' and '/'".into());
    }
    let description = tool.description.as_deref().unwrap_or_default();
    if description.len() > MAX_TOOL_DESCRIPTION {
        return Err(format!(
            "description is {} bytes long; at most {MAX_TOOL_DESCRIPTION} are allowed",
            description.len()
        ));
    }
    // MCP requires an object schema for tool input.
    match tool.input_schema.get("type") {
        Some(serde_json::Value::String(t)) if t == "object" => {}
        Some(other) => {
            return Err(format!(
                "input schema must have \"type\": \"object\", not {other}"
            ));
        }
        None => return Err("input schema has no \"type\"; it must be \"object\"".into()),
    }
    let input_schema = serde_json::to_string(&tool.input_schema)
        .map_err(|e| format!("input schema cannot be serialized: {e}"))?;
    if input_schema.len() > MAX_TOOL_SCHEMA {
        return Err(format!(
            "input schema is {} bytes long; at most {MAX_TOOL_SCHEMA} are allowed",
            input_schema.len()
        ));
    }
    let title = tool.title.as_deref().unwrap_or_default();
    if title.len() > MAX_TOOL_TITLE {
        return Err(format!(
            "title is {} bytes long; at most {MAX_TOOL_TITLE} are allowed",
            title.len()
        ));
    }
    let output_schema_json = match &tool.output_schema {
        None => None,
        Some(schema) => {
            let json = serde_json::to_string(schema)
                .map_err(|e| format!("output schema cannot be serialized: {e}"))?;
            if json.len() > MAX_TOOL_SCHEMA {
                return Err(format!(
                    "output schema is {} bytes long; at most {MAX_TOOL_SCHEMA} are allowed",
                    json.len()
                ));
            }
            Some(json)
        }
    };
    Ok(NewTool {
        name: name.to_owned(),
        title: title.to_owned(),
        description: description.to_owned(),
        input_schema_json: input_schema,
        annotations: tool.annotations.clone(),
        output_schema_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, schema: serde_json::Value) -> ListedTool {
        let serde_json::Value::Object(input_schema) = schema else {
            panic!("schema must be an object")
        };
        ListedTool {
            name: name.to_owned(),
            description: Some("d".to_owned()),
            input_schema,
            ..ListedTool::default()
        }
    }

    #[test]
    fn sorts_good_from_bad_with_reasons() {
        let object = serde_json::json!({"type": "object"});
        let (ok, failed) = check(vec![
            tool("good", object.clone()),
            tool("", object.clone()),
            tool("bad name!", object.clone()),
            tool(&"x".repeat(MAX_TOOL_NAME + 1), object.clone()),
            tool("stringy", serde_json::json!({"type": "string"})),
            tool("good", object.clone()),
        ]);
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].name, "good");
        let reasons: Vec<&str> = failed.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(failed.len(), 5, "{reasons:?}");
        assert!(reasons[0].contains("empty"));
        assert!(reasons[1].contains("letters"));
        assert!(reasons[2].contains("at most"));
        assert!(reasons[3].contains("object"));
        assert!(reasons[4].contains("more than once"));
    }
}
