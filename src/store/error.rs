use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What can go wrong in the store, in terms the manager can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "no database connection became free within {0:?}; the daemon is overloaded, retry later"
    )]
    PoolExhausted(Duration),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("an MCP server named {0:?} already exists in this organization")]
    ServerNameTaken(String),
    #[error("MCP server {0:?} not found")]
    ServerNotFound(String),
    #[error("MCP server {server_id:?} provides no tool named {tool:?}")]
    ToolNotFound { server_id: String, tool: String },
    /// The server waits for authorization or lost it.
    #[error("{}", not_ready(server_id, *state, reason))]
    ServerNotReady {
        server_id: String,
        state: crate::model::ServerState,
        reason: String,
    },
    #[error(
        "cursor {after} is older than the events kept (the oldest is {oldest}): list the \
         servers again and watch without `after`"
    )]
    CursorExpired { after: u64, oldest: u64 },
    #[error(
        "cursor {after} is beyond this organization's newest event ({head}); it does not \
         come from this registry: list the servers again and watch without `after`"
    )]
    CursorAhead { after: u64, head: u64 },
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("database migrations failed: {0}")]
    Migration(String),
    #[error("secrets at rest: {0}")]
    Sealing(String),
    /// The cause is in the message, not also a `#[source]`: a report that
    /// walks the chain would print it twice.
    #[error("database query failed: {0}")]
    Query(DieselError),
}

fn not_ready(server_id: &str, state: crate::model::ServerState, reason: &str) -> String {
    match state {
        crate::model::ServerState::AuthorizationPending => format!(
            "MCP server {server_id:?} is waiting for authorization: a person must open its authorization_url (GetMcpServer) and grant access"
        ),
        _ => format!(
            "MCP server {server_id:?} cannot be used: {reason}; close it and create it again to authorize anew"
        ),
    }
}

/// SQLite's result text for SQLITE_BUSY. diesel reports SQLite errors by
/// text alone (no result code), and this text is SQLite's own constant
/// (`sqlite3_errstr`), never localized. The daemon serializes its own
/// writers, so this only means another process held the lock past the busy
/// timeout: transient, so UNAVAILABLE.
const SQLITE_BUSY: &str = "database is locked";

impl From<DieselError> for StoreError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => StoreError::Unavailable(info.message().to_owned()),
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
                if info.message() == SQLITE_BUSY =>
            {
                StoreError::Unavailable(info.message().to_owned())
            }
            DieselError::DatabaseError(_, info) if says_connection_terminated(info.message()) => {
                StoreError::Unavailable(info.message().to_owned())
            }
            DieselError::BrokenTransactionManager => {
                StoreError::Unavailable("the connection broke during a transaction".into())
            }
            other => StoreError::Query(other),
        }
    }
}

impl StoreError {
    /// A database error of no known kind may be the server going away
    /// (PostgreSQL's 57P0x "admin shutdown", "crash shutdown", "cannot
    /// connect now" arrive as such). diesel does not expose the SQLSTATE, so
    /// the connection itself is asked: when it no longer answers, the error
    /// meant "going away", which is UNAVAILABLE, not a wrong query.
    pub(super) fn unknown_database_error(&self) -> bool {
        matches!(
            self,
            StoreError::Query(DieselError::DatabaseError(DatabaseErrorKind::Unknown, _))
        )
    }

    pub(super) fn into_unavailable(self) -> StoreError {
        match self {
            StoreError::Query(DieselError::DatabaseError(_, info)) => {
                StoreError::Unavailable(info.message().to_owned())
            }
            other => other,
        }
    }
}

/// PostgreSQL's words for a backend it is ending (57P01 admin shutdown,
/// 57P02 crash shutdown, 25P03/57P05 idle timeouts): the connection is gone,
/// whatever the query was. Checked before the probe of
/// [`StoreError::unknown_database_error`], which under load was seen to
/// succeed right after such an error (tests/faults.rs); the probe stays for
/// servers whose messages are localized.
fn says_connection_terminated(message: &str) -> bool {
    message.starts_with("terminating connection")
}

/// True when the error is a violation of a UNIQUE constraint.
pub(super) fn is_unique_violation(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}
