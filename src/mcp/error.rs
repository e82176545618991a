use std::time::Duration;

/// What the client was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    ListTools,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connecting and initializing",
            Stage::ListTools => "listing tools",
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
}

impl McpError {
    pub(super) fn failed(stage: Stage, detail: impl std::fmt::Display) -> Self {
        McpError::Failed {
            stage,
            detail: detail.to_string(),
        }
    }
}
