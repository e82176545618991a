//! The tool listing this server offers: `N` valid tools followed by `K`
//! deliberately invalid ones, served in pages of at most `P` tools.

use std::{collections::HashSet, sync::Arc};

use rmcp::model::{JsonObject, Tool};
use serde_json::{Value, json};

/// Longest tool name the MCP spec allows; the "too long" kind exceeds it.
const MAX_TOOL_NAME_LEN: usize = 128;

/// The kinds of invalid tools, offered in this order and then cycled.
///
/// All four are representable with rmcp's `Tool` (its name is a free string
/// and its input schema an arbitrary JSON object), so no substitute kind is
/// needed.
const INVALID_KINDS: [InvalidKind; 4] = [
    InvalidKind::EmptyName,
    InvalidKind::IllegalCharacters,
    InvalidKind::NameTooLong,
    InvalidKind::NonObjectSchema,
];

#[derive(Debug, Clone, Copy)]
enum InvalidKind {
    /// `""`
    EmptyName,
    /// `"bad name!NNNN"`: a space and a `!`, outside `[A-Za-z0-9_.-]`.
    IllegalCharacters,
    /// `<prefix>too_long_NNNN_xxx…`, 129 characters, all of them legal.
    NameTooLong,
    /// A well-formed name whose input schema is `{"type":"string"}`.
    NonObjectSchema,
}

pub struct Catalog {
    /// Valid tools first, then the invalid ones; pages are cut from this.
    tools: Vec<Tool>,
    /// Every offered name, for answering `tools/call`.
    names: HashSet<String>,
    page_size: usize,
}

impl Catalog {
    pub fn new(prefix: &str, valid: usize, invalid: usize, page_size: usize) -> Self {
        assert!(page_size > 0, "page size must be positive");
        // One schema shared by all valid tools: a listing of thousands of tools
        // then costs one schema allocation, not thousands.
        let schema = Arc::new(object(json!({
            "type": "object",
            "properties": { "x": { "type": "integer", "description": "any integer" } },
        })));
        let mut tools: Vec<Tool> = (0..valid)
            .map(|i| {
                Tool::new(
                    format!("{prefix}{i:04}"),
                    format!("Test tool number {i}; echoes its name and arguments."),
                    schema.clone(),
                )
            })
            .collect();
        tools.extend((0..invalid).map(|i| invalid_tool(prefix, i)));
        let names = tools.iter().map(|tool| tool.name.to_string()).collect();
        Self {
            tools,
            names,
            page_size,
        }
    }

    /// The page starting at `cursor` (an offset into the listing, rendered as
    /// a decimal string; `None` means the first page) and the cursor of the
    /// next page, if any tools remain after it.
    pub fn page(&self, cursor: Option<&str>) -> Result<(Vec<Tool>, Option<String>), String> {
        let start = match cursor {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .ok()
                .filter(|&offset| offset <= self.tools.len())
                .ok_or_else(|| format!("invalid cursor {cursor:?}"))?,
        };
        let end = start.saturating_add(self.page_size).min(self.tools.len());
        let next = (end < self.tools.len()).then(|| end.to_string());
        Ok((self.tools[start..end].to_vec(), next))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// The `index`-th invalid tool (counting from 0 among the invalid tools).
fn invalid_tool(prefix: &str, index: usize) -> Tool {
    let valid_schema = || {
        object(json!({
            "type": "object",
            "properties": { "x": { "type": "integer" } },
        }))
    };
    let kind = INVALID_KINDS[index % INVALID_KINDS.len()];
    let description = format!("Deliberately invalid tool #{index}: {kind:?}");
    match kind {
        InvalidKind::EmptyName => Tool::new("", description, valid_schema()),
        InvalidKind::IllegalCharacters => {
            Tool::new(format!("bad name!{index:04}"), description, valid_schema())
        }
        InvalidKind::NameTooLong => {
            let mut name = format!("{prefix}too_long_{index:04}_");
            let padding = (MAX_TOOL_NAME_LEN + 1).saturating_sub(name.len());
            name.extend(std::iter::repeat_n('x', padding));
            Tool::new(name, description, valid_schema())
        }
        InvalidKind::NonObjectSchema => Tool::new(
            format!("{prefix}bad_schema_{index:04}"),
            description,
            object(json!({ "type": "string" })),
        ),
    }
}

fn object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => unreachable!("schema literal is not an object: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tools: &[Tool]) -> Vec<String> {
        tools.iter().map(|t| t.name.to_string()).collect()
    }

    #[test]
    fn pages_follow_cursors_to_the_end() {
        let catalog = Catalog::new("tool_", 5, 0, 2);
        let (page, next) = catalog.page(None).unwrap();
        assert_eq!(names(&page), ["tool_0000", "tool_0001"]);
        assert_eq!(next.as_deref(), Some("2"));
        let (page, next) = catalog.page(Some("4")).unwrap();
        assert_eq!(names(&page), ["tool_0004"]);
        assert_eq!(next, None);
        assert!(catalog.page(Some("6")).is_err());
        assert!(catalog.page(Some("abc")).is_err());
    }

    #[test]
    fn invalid_kinds_cycle() {
        let catalog = Catalog::new("tool_", 1, 5, 100);
        let (tools, next) = catalog.page(None).unwrap();
        assert_eq!(next, None);
        assert_eq!(tools.len(), 6);
        assert_eq!(tools[1].name, "");
        assert_eq!(tools[2].name, "bad name!0001");
        assert_eq!(tools[3].name.len(), MAX_TOOL_NAME_LEN + 1);
        assert_eq!(tools[4].input_schema.get("type"), Some(&json!("string")));
        assert_eq!(tools[5].name, "");
    }
}
