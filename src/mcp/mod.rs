//! The MCP client side: connect over stdio, streamable HTTP or legacy SSE,
//! list tools, and tear sessions down without ever failing the caller.

mod child;
mod client;
mod connector;
mod describe;
mod error;
mod lifecycle;
mod live;
mod metrics;
mod oauth;
mod orphans;
pub mod outbound;
mod pool;
mod result;
mod session;
pub mod sse;
mod stdio;
mod tap;

use std::{path::PathBuf, time::Duration};

pub use connector::McpConnector;
pub use error::{McpError, Stage};
pub use oauth::{OAuthSettings, TokenError, insufficient_scope};
pub use pool::{PoolLimits, PoolStats};
pub use session::Session;

use crate::model::ToolAnnotations;

/// A tool as the server listed it, before any validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListedTool {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// The input schema object exactly as the server sent it (key order is
    /// kept: serde_json's `preserve_order`).
    pub input_schema: serde_json::Map<String, serde_json::Value>,
    pub output_schema: Option<serde_json::Map<String, serde_json::Value>>,
    pub annotations: Option<ToolAnnotations>,
}

impl From<rmcp::model::Tool> for ListedTool {
    fn from(tool: rmcp::model::Tool) -> Self {
        ListedTool {
            name: tool.name.into_owned(),
            title: tool.title,
            description: tool.description.map(|d| d.into_owned()),
            input_schema: std::sync::Arc::unwrap_or_clone(tool.input_schema),
            output_schema: tool.output_schema.map(std::sync::Arc::unwrap_or_clone),
            // Through JSON, the form MCP defines, rather than rmcp's struct.
            annotations: tool
                .annotations
                .and_then(|a| serde_json::to_value(a).ok())
                .and_then(|v| serde_json::from_value(v).ok()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct McpSettings {
    /// Spawning or reaching the server and the MCP initialize handshake.
    pub connect_timeout: Duration,
    /// Listing every tool, all pages together.
    pub list_timeout: Duration,
    /// How long a session or child process gets to stop by itself before it
    /// is cancelled or killed.
    pub teardown_grace: Duration,
    /// Variables of the daemon's environment passed to stdio children; they
    /// get nothing else but what the request sets.
    pub stdio_env_passthrough: Vec<String>,
    /// Programs stdio transports may run: exact paths (containing a `/`) or
    /// bare names. Empty: stdio is refused. Running a command is code
    /// execution on the daemon's host, so the operator decides.
    pub stdio_allow: Vec<String>,
    /// Where remote transports may connect.
    pub outbound: outbound::OutboundPolicy,
    /// Live sessions kept for tool calls.
    pub pool: PoolLimits,
    /// Longest a tool call may take when its caller sets no deadline.
    pub call_timeout: Duration,
    /// The authorization code flow's callback; without one, servers that
    /// need a person to authorize mcpd cannot be registered.
    pub oauth: Option<OAuthSettings>,
    /// Where the daemon records its stdio children's process groups, and
    /// where at start-up it kills those a daemon killed outright left (local
    /// to the machine, as process groups are). `None`: no record, no sweep
    /// (commands that start no server).
    pub run_dir: Option<PathBuf>,
}

impl Default for McpSettings {
    fn default() -> Self {
        McpSettings {
            connect_timeout: Duration::from_secs(30),
            list_timeout: Duration::from_secs(30),
            teardown_grace: Duration::from_secs(2),
            stdio_env_passthrough: ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER"]
                .map(String::from)
                .to_vec(),
            stdio_allow: Vec::new(),
            outbound: outbound::OutboundPolicy::default(),
            pool: PoolLimits::default(),
            call_timeout: Duration::from_secs(600),
            oauth: None,
            run_dir: None,
        }
    }
}
