//! Rows as they are read from and written to the database, and their
//! translation from and to the domain types: nothing outside the store sees
//! a row, a JSON column or a millisecond timestamp.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::schema::{api_keys, mcp_servers, tools};
use crate::model::{ApiKey, NewTool, ServerState, Tool, ToolAnnotations, TransportKind};

/// Also the server snapshot an event keeps (JSON), less its secrets: the
/// sealed transport and authorization URL are not serialized.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, Serialize, Deserialize,
)]
#[diesel(table_name = mcp_servers)]
pub(super) struct ServerRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub transport: String,
    pub endpoint: String,
    /// The sealed JSON of the [`crate::model::Transport`].
    #[serde(skip)]
    pub transport_config: String,
    pub tool_count: i32,
    pub created_at: i64,
    /// JSON array of the header/env names whose values `transport_config` seals.
    pub secret_names: String,
    /// See [`state_column`].
    pub state: String,
    pub state_reason: String,
    /// Sealed, bound to the row like `transport_config`.
    #[serde(skip)]
    pub authorization_url: Option<String>,
    pub tool_prefix: String,
    /// JSON of the [`crate::model::ServerIdentity`].
    pub server_info: Option<String>,
    /// Why the last attempt to reach the server failed; empty once reached.
    pub last_error: String,
    /// Set while the server cannot be reached (a ready server is then
    /// shown as unreachable); NULL once the last contact worked.
    pub unreachable_since: Option<i64>,
    pub last_connected_at: Option<i64>,
    pub last_synced_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = tools)]
pub(super) struct ToolRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// The server's tool prefix and `name`.
    pub qualified_name: String,
    pub description: String,
    pub input_schema: String,
    pub created_at: i64,
    pub title: String,
    /// JSON object of [`ToolAnnotations`].
    pub annotations: Option<String>,
    pub output_schema: Option<String>,
    /// [`digest_hex`] of the [`content_digest`] of what the server said
    /// about the tool; '' in rows written before the column existed.
    pub content_hash: String,
}

/// The first 128 bits of a SHA-256 of what a server said about a tool: the
/// form a sync compares and holds; a row's `content_hash` is its hex.
pub(super) type Digest = [u8; 16];

/// A digest of every field a server gives a tool: equal digests, equal
/// tools, so a sync compares digests instead of reading tools in full.
/// Each field is length-prefixed (and `None` told apart from `""`), so no
/// two different tools encode alike.
fn content_digest(
    name: &str,
    description: &str,
    input_schema: &str,
    title: &str,
    annotations: Option<&str>,
    output_schema: Option<&str>,
) -> Digest {
    use sha2::{Digest as _, Sha256};
    let mut digest = Sha256::new();
    let fields = [
        Some(name),
        Some(description),
        Some(input_schema),
        Some(title),
        annotations,
        output_schema,
    ];
    for field in fields {
        match field {
            None => digest.update([0u8]),
            Some(text) => {
                digest.update([1u8]);
                digest.update((text.len() as u64).to_le_bytes());
                digest.update(text.as_bytes());
            }
        }
    }
    let mut out = Digest::default();
    out.copy_from_slice(&digest.finalize()[..16]);
    out
}

/// The column's text of `digest`.
pub(super) fn digest_hex(digest: &Digest) -> String {
    let mut text = [0u8; 32];
    // Cannot fail: the buffer is twice the digest's length.
    let _ = hex::encode_to_slice(digest, &mut text);
    text.iter().map(|&b| b as char).collect()
}

/// The digest a `content_hash` column holds; `None` for a row from before
/// the column (empty) or a value this store did not write.
pub(super) fn digest_of_column(column: &str) -> Option<Digest> {
    let mut digest = Digest::default();
    hex::decode_to_slice(column, &mut digest).ok()?;
    Some(digest)
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
pub(super) struct ApiKeyRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub key_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub(super) fn transport_kind_column(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Stdio => "stdio",
        TransportKind::StreamableHttp => "streamable_http",
        TransportKind::Sse => "sse",
    }
}

fn transport_kind(column: &str) -> Option<TransportKind> {
    match column {
        "stdio" => Some(TransportKind::Stdio),
        "streamable_http" => Some(TransportKind::StreamableHttp),
        "sse" => Some(TransportKind::Sse),
        _ => None,
    }
}

/// Timestamps are stored as unix milliseconds: one portable column type.
pub(super) fn to_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

pub(super) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or_default())
}

pub(super) fn state_column(state: ServerState) -> &'static str {
    match state {
        ServerState::Ready => "ready",
        ServerState::AuthorizationPending => "authorization_pending",
        ServerState::Error => "error",
        // Not a stored state: a ready server with `unreachable_since` set.
        ServerState::Unreachable => "ready",
    }
}

pub(super) fn server_state(column: &str) -> ServerState {
    match column {
        "ready" => ServerState::Ready,
        "authorization_pending" => ServerState::AuthorizationPending,
        // A state this build does not know is not one it can use.
        _ => ServerState::Error,
    }
}

impl ServerRow {
    /// The domain view; `authorization_url` is the unsealed URL, which only
    /// the store (holding the key) can give.
    pub(super) fn into_server(self, authorization_url: Option<String>) -> crate::model::Server {
        crate::model::Server {
            transport: transport_kind(&self.transport),
            // Reachability only matters to a server that is otherwise ready.
            state: match server_state(&self.state) {
                ServerState::Ready if self.unreachable_since.is_some() => ServerState::Unreachable,
                state => state,
            },
            id: self.id,
            name: self.name,
            endpoint: self.endpoint,
            created_at: from_ms(self.created_at),
            tool_count: u32::try_from(self.tool_count).unwrap_or_default(),
            secret_names: serde_json::from_str(&self.secret_names).unwrap_or_default(),
            state_reason: self.state_reason,
            authorization_url,
            tool_prefix: self.tool_prefix,
            // Written by this store from the same type; a row it cannot
            // read shows none rather than failing.
            identity: self
                .server_info
                .and_then(|json| serde_json::from_str(&json).ok()),
            last_error: self.last_error,
            last_connected_at: self.last_connected_at.map(from_ms),
            last_synced_at: self.last_synced_at.map(from_ms),
        }
    }
}

/// The [`content_digest`] a row made from `tool` gets, without
/// making the row.
pub(super) fn listed_digest(tool: &NewTool) -> Digest {
    tool_digest(tool, annotations_column(tool).as_deref())
}

/// The annotations as their column holds them.
fn annotations_column(tool: &NewTool) -> Option<String> {
    tool.annotations
        .as_ref()
        .and_then(|a| serde_json::to_string(a).ok())
}

/// [`content_digest`] of `tool` whose annotations column is `annotations`.
fn tool_digest(tool: &NewTool, annotations: Option<&str>) -> Digest {
    content_digest(
        &tool.name,
        &tool.description,
        &tool.input_schema_json,
        &tool.title,
        annotations,
        tool.output_schema_json.as_deref(),
    )
}

fn new_tool_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl ToolRow {
    /// A new tool's row, under a new id.
    pub(super) fn new(
        organization_id: &str,
        tool_prefix: &str,
        tool: NewTool,
        created_at: i64,
    ) -> ToolRow {
        let annotations = annotations_column(&tool);
        let digest = tool_digest(&tool, annotations.as_deref());
        ToolRow::build(
            new_tool_id(),
            organization_id,
            tool_prefix,
            tool,
            annotations,
            &digest,
            created_at,
        )
    }

    /// The row of a listed tool whose digest the sync has computed already
    /// ([`listed_digest`]): under `id` if it is stored already, else a new
    /// one.
    pub(super) fn of_listed(
        id: Option<String>,
        organization_id: &str,
        tool_prefix: &str,
        tool: NewTool,
        digest: &Digest,
        created_at: i64,
    ) -> ToolRow {
        let annotations = annotations_column(&tool);
        ToolRow::build(
            id.unwrap_or_else(new_tool_id),
            organization_id,
            tool_prefix,
            tool,
            annotations,
            digest,
            created_at,
        )
    }

    fn build(
        id: String,
        organization_id: &str,
        tool_prefix: &str,
        tool: NewTool,
        annotations: Option<String>,
        digest: &Digest,
        created_at: i64,
    ) -> ToolRow {
        ToolRow {
            id,
            organization_id: organization_id.to_owned(),
            qualified_name: format!("{tool_prefix}{}", tool.name),
            content_hash: digest_hex(digest),
            name: tool.name,
            description: tool.description,
            input_schema: tool.input_schema_json,
            created_at,
            title: tool.title,
            annotations,
            output_schema: tool.output_schema_json,
        }
    }

    /// The `content_hash` of this row as stored (for rows from before the
    /// column).
    pub(super) fn computed_hash(&self) -> String {
        digest_hex(&content_digest(
            &self.name,
            &self.description,
            &self.input_schema,
            &self.title,
            self.annotations.as_deref(),
            self.output_schema.as_deref(),
        ))
    }
}

impl ToolRow {
    /// The domain view of a tool of `server_id`.
    pub(super) fn into_tool(self, server_id: &str) -> Tool {
        let row = self;
        Tool {
            server_id: server_id.to_owned(),
            id: row.id,
            name: row.name,
            qualified_name: row.qualified_name,
            title: row.title,
            description: row.description,
            input_schema_json: row.input_schema,
            // Written by this store from the same type; a row it cannot read
            // (written by a newer daemon) shows no hints rather than failing.
            annotations: row
                .annotations
                .and_then(|json| serde_json::from_str::<ToolAnnotations>(&json).ok()),
            output_schema_json: row.output_schema,
        }
    }
}

impl From<ApiKeyRow> for ApiKey {
    fn from(row: ApiKeyRow) -> Self {
        ApiKey {
            id: row.id,
            organization_id: row.organization_id,
            name: row.name,
            created_at: from_ms(row.created_at),
            revoked_at: row.revoked_at.map(from_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ToolRow, content_digest, digest_hex, digest_of_column, listed_digest};

    /// The column's text of the digest of these fields.
    fn hash(fields: (&str, &str, &str, &str, Option<&str>, Option<&str>)) -> String {
        let (name, description, schema, title, annotations, output) = fields;
        digest_hex(&content_digest(
            name,
            description,
            schema,
            title,
            annotations,
            output,
        ))
    }

    #[test]
    fn digests_tell_apart_what_plain_concatenation_would_not() {
        let base = hash(("a", "bc", "{}", "", None, None));
        assert_eq!(base, hash(("a", "bc", "{}", "", None, None)));
        // Bytes moved across a field boundary.
        assert_ne!(base, hash(("ab", "c", "{}", "", None, None)));
        // Absent is not empty.
        assert_ne!(base, hash(("a", "bc", "{}", "", Some(""), None)));
        assert_ne!(
            hash(("a", "bc", "{}", "", Some(""), None)),
            hash(("a", "bc", "{}", "", None, Some("")))
        );
        assert_eq!(base.len(), 32, "128 bits, hex");
        assert_eq!(base, hex::encode(digest_of_column(&base).unwrap()));
    }

    #[test]
    fn a_column_this_store_did_not_write_has_no_digest() {
        assert_eq!(digest_of_column(""), None, "rows from before the column");
        assert_eq!(digest_of_column("abc"), None);
        assert_eq!(digest_of_column(&"g".repeat(32)), None);
    }

    /// A sync compares the digest of what was listed with the stored one:
    /// both must come out of one computation, hints and output schema
    /// included.
    #[test]
    fn a_listed_tool_digests_as_its_row() {
        let tool = crate::model::NewTool {
            name: "search".into(),
            title: "Search".into(),
            description: "Finds things".into(),
            input_schema_json: r#"{"type":"object"}"#.into(),
            annotations: Some(crate::model::ToolAnnotations {
                read_only_hint: Some(true),
                ..Default::default()
            }),
            output_schema_json: Some(r#"{"type":"object"}"#.into()),
        };
        let row = ToolRow::new("acme", "gh__", tool.clone(), 0);
        assert_eq!(digest_hex(&listed_digest(&tool)), row.content_hash);
        assert_eq!(
            digest_of_column(&row.content_hash),
            Some(listed_digest(&tool))
        );
        assert_eq!(row.computed_hash(), row.content_hash);
        let digest = listed_digest(&tool);
        let kept = ToolRow::of_listed(
            Some(row.id.clone()),
            "acme",
            "gh__",
            tool.clone(),
            &digest,
            0,
        );
        assert_eq!(
            (kept.id.as_str(), kept.content_hash.as_str()),
            (row.id.as_str(), row.content_hash.as_str())
        );
        let bare = crate::model::NewTool {
            annotations: None,
            ..tool
        };
        assert_ne!(digest_hex(&listed_digest(&bare)), row.content_hash);
    }
}
