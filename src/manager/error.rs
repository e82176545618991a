use crate::{
    mcp::{McpError, Stage},
    store::StoreError,
};

/// The use cases' errors. The api layer maps each variant to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit of the daemon was hit (pool, tool count).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The MCP server or the database could not be reached or failed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Cancelled(String),
    /// The MCP server answered with an error of its own; the caller sees
    /// its code and message.
    #[error("{0}")]
    Upstream(String),
    /// The request is valid but cannot be served in the way it was made.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ManagerError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::ServerNameTaken(_) => ManagerError::AlreadyExists(err.to_string()),
            StoreError::ServerNotFound(_) | StoreError::ToolNotFound { .. } => {
                ManagerError::NotFound(err.to_string())
            }
            StoreError::ServerNotReady { .. }
            | StoreError::CursorExpired { .. }
            | StoreError::CursorAhead { .. } => ManagerError::FailedPrecondition(err.to_string()),
            StoreError::PoolExhausted(_) => ManagerError::ResourceExhausted(err.to_string()),
            StoreError::Unavailable(_) => ManagerError::Unavailable(err.to_string()),
            StoreError::InvalidUrl { .. }
            | StoreError::Migration(_)
            | StoreError::Query(_)
            | StoreError::Sealing(_) => ManagerError::Internal(err.to_string()),
        }
    }
}

impl From<McpError> for ManagerError {
    fn from(err: McpError) -> Self {
        match err {
            McpError::Timeout { .. } => ManagerError::DeadlineExceeded(err.to_string()),
            McpError::Settings(_) => ManagerError::InvalidArgument(err.to_string()),
            McpError::Refused(_) => ManagerError::PermissionDenied(err.to_string()),
            McpError::Busy(_) => ManagerError::ResourceExhausted(err.to_string()),
            McpError::RunDir { .. } => ManagerError::Internal(err.to_string()),
            McpError::NeedsInput(_) | McpError::Unauthorized { .. } => {
                ManagerError::FailedPrecondition(err.to_string())
            }
            McpError::Cancelled => ManagerError::Cancelled(err.to_string()),
            // Invalid params: the arguments (or the tool name) were wrong.
            McpError::Rejected { code: -32602, .. } => {
                ManagerError::InvalidArgument(err.to_string())
            }
            McpError::Rejected { .. } => ManagerError::Upstream(err.to_string()),
            McpError::Spawn { .. }
            | McpError::Failed {
                stage: Stage::Connect | Stage::ListTools | Stage::CallTool,
                ..
            } => ManagerError::Unavailable(err.to_string()),
        }
    }
}
