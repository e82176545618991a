//! The MCP client side: connect over stdio, streamable HTTP or legacy SSE,
//! list tools, and tear sessions down without ever failing the caller.

mod child;
mod connector;
mod error;
mod live;
pub mod outbound;
mod session;
pub mod sse;
mod stdio;

use std::{collections::BTreeMap, time::Duration};

pub use connector::McpConnector;
pub use error::{McpError, Stage};
pub use rmcp::model::Tool;
pub use session::Session;

/// How to reach an MCP server. Header and env values are secrets: this type's
/// `Debug` never prints them.
#[derive(Clone, PartialEq, Eq)]
pub enum TransportSpec {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    StreamableHttp {
        url: url::Url,
        headers: BTreeMap<String, String>,
    },
    Sse {
        url: url::Url,
        headers: BTreeMap<String, String>,
    },
}

impl TransportSpec {
    /// The command or URL: what an operator needs to recognise the server.
    pub fn endpoint(&self) -> String {
        match self {
            TransportSpec::Stdio { command, .. } => command.clone(),
            TransportSpec::StreamableHttp { url, .. } | TransportSpec::Sse { url, .. } => {
                url.to_string()
            }
        }
    }
}

impl TransportSpec {
    /// Names of the values that are secrets (env or header names), sorted.
    pub fn secret_names(&self) -> Vec<String> {
        match self {
            TransportSpec::Stdio { env, .. } => env.keys().cloned().collect(),
            TransportSpec::StreamableHttp { headers, .. } | TransportSpec::Sse { headers, .. } => {
                headers.keys().cloned().collect()
            }
        }
    }
}

impl std::fmt::Debug for TransportSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportSpec::Stdio { command, args, env } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &env.keys().collect::<Vec<_>>())
                .finish(),
            TransportSpec::StreamableHttp { url, headers } => f
                .debug_struct("StreamableHttp")
                .field("url", &url.as_str())
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .finish(),
            TransportSpec::Sse { url, headers } => f
                .debug_struct("Sse")
                .field("url", &url.as_str())
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .finish(),
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
        }
    }
}
