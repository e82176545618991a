use std::time::Duration;

/// What the client was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    ListTools,
    CallTool,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connecting and initializing",
            Stage::ListTools => "listing tools",
            Stage::CallTool => "calling a tool",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// Messages spell their cause out; none is also a `#[source]`, so no
    /// report prints a cause twice.
    #[error("could not start {program:?}: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("the MCP server did not answer within {after:?} while {stage}")]
    Timeout { stage: Stage, after: Duration },
    #[error("the MCP server failed while {stage}: {detail}")]
    Failed { stage: Stage, detail: String },
    #[error("invalid transport settings: {0}")]
    Settings(String),
    /// The operator's policy does not allow this connection or command.
    #[error("{0}")]
    Refused(String),
    /// The server refused mcpd's credentials (HTTP 401 or 403): it is up,
    /// and retrying will not help until the credentials change.
    #[error("the MCP server refused mcpd's credentials while {stage}: {detail}")]
    Unauthorized {
        stage: Stage,
        detail: String,
        /// The `WWW-Authenticate` header of its answer, if it sent one: where
        /// an OAuth flow starts.
        challenge: Option<String>,
    },
    /// The server answered the request with a JSON-RPC error.
    #[error("the MCP server refused the call: {message} (JSON-RPC error {code})")]
    Rejected { code: i32, message: String },
    /// The tool asked for input (elicitation, sampling, roots) this call
    /// could not give: a unary call has nobody to ask, or the streamed
    /// call's caller answered with an error.
    #[error("{0}")]
    NeedsInput(String),
    /// The caller went away; the server was told to stop.
    #[error("the call was cancelled by its caller")]
    Cancelled,
    /// A limit of the daemon (calls per server, live sessions) was reached.
    #[error("{0}")]
    Busy(String),
    /// The run directory (`--run-dir`) cannot be created, read or written:
    /// a start-up error, never a call's.
    #[error("the run directory {} (--run-dir) cannot be used: {error}", path.display())]
    RunDir {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

impl McpError {
    /// Whether the server could not be reached at all (not started, no
    /// answer, broke before or during the session's start or its listing),
    /// as opposed to a call it refused or a limit of mcpd's own.
    pub fn unreachable(&self) -> bool {
        match self {
            McpError::Spawn { .. } => true,
            McpError::Timeout { stage, .. } | McpError::Failed { stage, .. } => {
                matches!(stage, Stage::Connect | Stage::ListTools)
            }
            _ => false,
        }
    }

    pub(super) fn failed(stage: Stage, detail: impl std::fmt::Display) -> Self {
        McpError::Failed {
            stage,
            detail: detail.to_string(),
        }
    }

    /// A remote failure: [`McpError::Unauthorized`] when the server refused
    /// the credentials, [`McpError::Failed`] otherwise.
    pub(super) fn remote(
        stage: Stage,
        detail: impl std::fmt::Display,
        unauthorized: bool,
        challenge: Option<&str>,
    ) -> Self {
        if unauthorized {
            McpError::Unauthorized {
                stage,
                detail: detail.to_string(),
                challenge: challenge.map(str::to_owned),
            }
        } else {
            McpError::failed(stage, detail)
        }
    }
}
