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
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("database migrations failed: {0}")]
    Migration(String),
    #[error("secrets at rest: {0}")]
    Sealing(String),
    #[error("database query failed: {0}")]
    Query(#[source] DieselError),
}

/// Server-side messages that mean "this connection or server is going away",
/// not "this query is wrong" (PostgreSQL 57P01..57P03, SQLite busy).
const GOING_AWAY: &[&str] = &[
    "terminating connection",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "database is locked",
];

impl From<DieselError> for StoreError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => StoreError::Unavailable(info.message().to_owned()),
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
                if GOING_AWAY.iter().any(|m| info.message().contains(m)) =>
            {
                StoreError::Unavailable(info.message().to_owned())
            }
            DieselError::BrokenTransactionManager => {
                StoreError::Unavailable("the connection broke during a transaction".into())
            }
            other => StoreError::Query(other),
        }
    }
}

/// True when the error is a violation of a UNIQUE constraint.
pub(super) fn is_unique_violation(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}
