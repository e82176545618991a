//! Embedded migrations. One tree serves both backends: the schema keeps to
//! SQL that PostgreSQL and SQLite read alike (text ids, text JSON, bigint
//! timestamps). A change that needs backend-specific SQL would split the
//! tree again, one folder per backend with the same version names. They run
//! on a dedicated connection on a blocking thread: diesel's migration
//! harness is synchronous.

use diesel::{Connection, SqliteConnection, connection::SimpleConnection};
use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{DatabaseUrl, StoreError};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Applies pending migrations; returns the versions applied now.
pub async fn run_migrations(url: &DatabaseUrl) -> Result<Vec<String>, StoreError> {
    let url = url.clone();
    tokio::task::spawn_blocking(move || match &url {
        DatabaseUrl::Postgres(url) => {
            let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            apply(&mut conn, MIGRATIONS)
        }
        DatabaseUrl::Sqlite(path) => {
            let mut conn = SqliteConnection::establish(path)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            // WAL is a property of the file: set it once here so pooled
            // connections never have to switch it under a lock.
            conn.batch_execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL;")
                .map_err(|e| StoreError::Migration(e.to_string()))?;
            apply(&mut conn, MIGRATIONS)
        }
    })
    .await
    .map_err(|e| StoreError::Migration(e.to_string()))?
}

fn apply<DB, C>(conn: &mut C, migrations: EmbeddedMigrations) -> Result<Vec<String>, StoreError>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB>,
{
    conn.run_pending_migrations(migrations)
        .map(|applied| applied.iter().map(ToString::to_string).collect())
        .map_err(|e| StoreError::Migration(e.to_string()))
}
