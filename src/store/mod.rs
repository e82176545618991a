//! All database access: the pool, the schema, the queries and the migrations.
//!
//! Two backends share one schema and one set of queries: [`with_conn!`]
//! instantiates each query body once per backend, so the dispatch stays here.

mod authorizations;
mod batch;
mod blocking;
mod digest_cache;
mod error;
mod events;
mod health;
mod keys;
mod metrics;
mod migrate;
mod models;
mod queries;
mod reuse;
mod schema;
mod sealer;
mod sqlite_conn;
mod sync;
mod sync_lease;
mod sync_statements;

use std::{
    ops::{Deref, DerefMut},
    sync::Arc,
    time::Duration,
};

use diesel_async::{
    AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, PoolError, PoolableConnection, RecyclingMethod,
    },
};
use futures::FutureExt;
use tokio::sync::{Mutex, MutexGuard};

pub use authorizations::PendingAuthorization;
pub use error::StoreError;
pub use events::{EventPage, EventRetention, EventSignal, Woken};
pub use health::Contact;
pub use keys::KeyMatch;
pub use metrics::{PoolStats, track_connections};
pub use migrate::run_migrations;
pub use queries::{CreatedServer, DeletedServer};
pub use sealer::{Sealer, SealerError};
pub use sync::{PreparedSync, ServerUpdate, SyncedTools};
pub use sync_lease::{LeaseAttempt, LeaseRelease};

use crate::telemetry::metrics as exposition;
use metrics::{LeaseCount, PoolMetrics};

/// A metric's name, help and how it reads the pool's figures.
type Pulled<T> = exposition::Figure<PoolStats, T>;

pub(crate) use sqlite_conn::SqliteConn;
type PgManager = AsyncDieselConnectionManager<AsyncPgConnection>;
type SqliteManager = AsyncDieselConnectionManager<SqliteConn>;

/// Where the registry lives, parsed from `--database-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    /// A path to the SQLite file.
    Sqlite(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason| StoreError::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| invalid("expected postgres://… or sqlite://PATH"))?;
        if path.is_empty() || path == ":memory:" {
            // An in-memory database would be a different database per pooled connection.
            return Err(invalid("give the SQLite database a file path"));
        }
        Ok(DatabaseUrl::Sqlite(path.to_owned()))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgres",
            DatabaseUrl::Sqlite(_) => "sqlite",
        }
    }
}

/// A URL fit for logs: any password is replaced.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub url: DatabaseUrl,
    pub pool_size: u32,
    /// How long a request waits for a free connection before RESOURCE_EXHAUSTED.
    pub acquire_timeout: Duration,
    /// Seals each server's transport config (header and env values) at
    /// rest. Without one the store can read but not create servers.
    pub sealer: Option<Sealer>,
    /// How much of the event log `WatchMcpServers` can resume from.
    pub event_retention: EventRetention,
}

enum Backend {
    Postgres(bb8::Pool<PgManager>),
    Sqlite {
        pool: bb8::Pool<SqliteManager>,
        /// SQLite has one writer at a time. Taking this lock before a write
        /// transaction queues writers here instead of failing them with
        /// "database is locked" when two deferred transactions both upgrade.
        writer: Mutex<()>,
    },
}

/// Whether a checkout will write; on SQLite writers are serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// The registry's persistence. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    settings: StoreSettings,
    metrics: Arc<PoolMetrics>,
    events: events::EventBus,
    /// Stored tools of recently synced servers (see [`digest_cache`]).
    digests: digest_cache::DigestCache,
}

/// A checked-out connection, counted while it lives.
///
/// Fields drop in this order: the count first, then the connection goes
/// back to the pool. The other way round, a caller waiting for the pool
/// could take the connection and count it before this lease stopped
/// counting it, and the figures would show more connections checked out
/// than the pool has.
pub(crate) struct Lease<'a, M: bb8::ManageConnection> {
    _count: LeaseCount,
    conn: bb8::PooledConnection<'a, M>,
    _writer: Option<MutexGuard<'a, ()>>,
}

impl<M: bb8::ManageConnection> Deref for Lease<'_, M> {
    type Target = M::Connection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl<M: bb8::ManageConnection> DerefMut for Lease<'_, M> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// Runs `$body` with `$conn` bound to a checked-out connection of whichever
/// backend the store has. The body is compiled once per backend.
///
/// The checkout and the body are one `db.transaction` span named after the
/// store's `$operation` (a body is one transaction, or one statement that
/// is its own), with the wait for a connection as a `db.acquire` span in it.
macro_rules! with_conn {
    ($store:expr, $access:expr, $operation:literal, |$conn:ident| $body:expr) => {{
        let inner = &$store.inner;
        let span = $crate::store::transaction_span(&inner.backend, $operation);
        tracing::Instrument::instrument(
            async {
                match &inner.backend {
                    $crate::store::Backend::Postgres(pool) => {
                        let mut lease = $store.checkout(pool, None).await?;
                        let result: Result<_, $crate::store::StoreError> = {
                            let $conn = &mut *lease;
                            $body
                        };
                        $crate::store::confirm_going_away(result, &mut *lease).await
                    }
                    $crate::store::Backend::Sqlite { pool, writer } => {
                        let writer = ($access == $crate::store::Access::Write).then_some(writer);
                        let mut lease = $store.checkout(pool, writer).await?;
                        $crate::store::blocking::unit_of_work(async {
                            let $conn = &mut *lease;
                            let result: Result<_, $crate::store::StoreError> = $body;
                            result
                        })
                        .await
                    }
                }
            },
            span,
        )
        .await
    }};
}
pub(crate) use with_conn;

/// The span of one unit of work on the database: the system and the
/// store's operation, never a statement or its values.
fn transaction_span(backend: &Backend, operation: &'static str) -> tracing::Span {
    let system = match backend {
        Backend::Postgres(_) => "postgresql",
        Backend::Sqlite { .. } => "sqlite",
    };
    tracing::info_span!(
        "db.transaction",
        otel.kind = "client",
        db.system = system,
        db.system.name = system,
        db.operation.name = operation,
    )
}

/// An unknown database error on a connection that no longer answers a
/// trivial query is the server going away (see
/// [`StoreError::unknown_database_error`]). Only the error path pays for
/// the probe, on the connection the request already holds.
pub(crate) async fn confirm_going_away<T>(
    result: Result<T, StoreError>,
    conn: &mut AsyncPgConnection,
) -> Result<T, StoreError> {
    match result {
        Err(err) if err.unknown_database_error() => {
            if conn.batch_execute("SELECT 1").await.is_err() {
                Err(err.into_unavailable())
            } else {
                Err(err)
            }
        }
        other => other,
    }
}

impl Store {
    /// Opens the pool. Connections are made lazily, so a database that is
    /// down at start-up shows as UNAVAILABLE on calls, not as a crash.
    pub async fn open(settings: StoreSettings) -> Result<Store, StoreError> {
        let backend = match &settings.url {
            DatabaseUrl::Postgres(url) => {
                let mut config = ManagerConfig::default();
                config.custom_setup = Box::new(|url| open_postgres(url.to_owned()).boxed());
                config.recycling_method = RecyclingMethod::CustomFunction(Box::new(|conn| {
                    Box::pin(async move { still_open(conn) })
                }));
                Backend::Postgres(
                    pool_builder(&settings)
                        .build_unchecked(PgManager::new_with_config(url.clone(), config)),
                )
            }
            DatabaseUrl::Sqlite(path) => {
                let mut config = ManagerConfig::default();
                config.custom_setup = Box::new(|path| open_sqlite(path.to_owned()).boxed());
                Backend::Sqlite {
                    // No ping on check-out: an SQLite connection is a file
                    // handle in this process and does not go away.
                    pool: pool_builder(&settings)
                        .test_on_check_out(false)
                        .build_unchecked(SqliteManager::new_with_config(path.clone(), config)),
                    writer: Mutex::new(()),
                }
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                settings,
                metrics: Arc::default(),
                events: events::event_bus(),
                digests: Default::default(),
            }),
        })
    }

    pub fn pool_stats(&self) -> PoolStats {
        let state = match &self.inner.backend {
            Backend::Postgres(pool) => pool.state(),
            Backend::Sqlite { pool, .. } => pool.state(),
        };
        self.inner
            .metrics
            .snapshot(self.inner.settings.pool_size, state)
    }

    /// The pool's figures, read when scraped.
    pub fn register_metrics(&self, registry: &exposition::Registry) {
        let gauges: [Pulled<f64>; 5] = [
            (
                "mcpd_db_pool_max_connections",
                "Connections the pool may open (--pool-size).",
                |p| p.max_size.into(),
            ),
            (
                "mcpd_db_pool_connections_open",
                "Connections open, idle or checked out.",
                |p| p.open.into(),
            ),
            (
                "mcpd_db_pool_connections_idle",
                "Open connections nobody holds.",
                |p| p.idle.into(),
            ),
            (
                "mcpd_db_pool_connections_checked_out",
                "Connections held by calls and background work now.",
                |p| p.checked_out as f64,
            ),
            (
                "mcpd_db_pool_connections_checked_out_peak",
                "Most connections held at once since start (or GetStats' reset_peaks).",
                |p| p.peak_checked_out as f64,
            ),
        ];
        let store = self.clone();
        let stats = move || store.pool_stats();
        exposition::pulled_gauges(registry, gauges, stats.clone());
        let counters: [Pulled<u64>; 2] = [
            (
                "mcpd_db_pool_checkouts_total",
                "Connections handed out by the pool.",
                |p| p.checkouts,
            ),
            (
                "mcpd_db_pool_acquire_timeouts_total",
                "Waits for a connection that ran out of --pool-timeout (answered RESOURCE_EXHAUSTED).",
                |p| p.timeouts,
            ),
        ];
        exposition::pulled_counters(registry, counters, stats);
    }

    /// Restarts the daemon-wide peak from the connections held now.
    pub fn reset_peak(&self) {
        self.inner.metrics.reset_peak();
    }

    #[tracing::instrument(name = "db.acquire", skip_all)]
    async fn checkout<'a, M>(
        &'a self,
        pool: &'a bb8::Pool<M>,
        writer: Option<&'a Mutex<()>>,
    ) -> Result<Lease<'a, M>, StoreError>
    where
        M: bb8::ManageConnection<Error = PoolError>,
    {
        let timeout = self.inner.settings.acquire_timeout;
        let writer = match writer {
            None => None,
            Some(lock) => Some(
                tokio::time::timeout(timeout, lock.lock())
                    .await
                    .map_err(|_| self.exhausted())?,
            ),
        };
        let conn = pool.get().await.map_err(|err| match err {
            bb8::RunError::User(err) => StoreError::Unavailable(err.to_string()),
            bb8::RunError::TimedOut => {
                // bb8 also times out when it cannot open a connection at all;
                // tell an overloaded pool from an unreachable database.
                let state = pool.state();
                if state.connections < self.inner.settings.pool_size {
                    StoreError::Unavailable(format!(
                        "could not connect to the database within {timeout:?}"
                    ))
                } else {
                    self.exhausted()
                }
            }
        })?;
        Ok(Lease {
            _count: LeaseCount::new(self.inner.metrics.clone()),
            conn,
            _writer: writer,
        })
    }

    fn exhausted(&self) -> StoreError {
        self.inner
            .metrics
            .timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StoreError::PoolExhausted(self.inner.settings.acquire_timeout)
    }
}

fn pool_builder<M: bb8::ManageConnection>(settings: &StoreSettings) -> bb8::Builder<M> {
    bb8::Pool::builder()
        .max_size(settings.pool_size.max(1))
        .connection_timeout(settings.acquire_timeout)
        // Idle connections are not kept forever: a restarted database is met
        // with fresh connections.
        .idle_timeout(Some(Duration::from_secs(300)))
}

/// The check of a PostgreSQL connection as it leaves the pool: its socket is
/// still open and no transaction was left broken. A connection the server
/// closed (a restart, a terminated backend) is replaced here; one that only
/// looks open fails its first query, which answers UNAVAILABLE (see
/// [`confirm_going_away`]) and drops it. No query: the default check ran
/// `SELECT 1` first, a round trip on every checkout (about a quarter of a
/// millisecond of each call here).
fn still_open(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    if conn.is_broken() {
        return Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ClosedConnection,
            Box::new("the connection was closed or left broken".to_owned()),
        ));
    }
    Ok(())
}

/// Per-connection PostgreSQL set-up: prepared statements run on their
/// generic plan from the first execution. Every statement of the daemon is
/// a lookup by key or a bounded batch, whose plan does not depend on its
/// values, and PostgreSQL's default plans each of a connection's first five
/// executions anew (0.1-0.2 ms each here): with ten pooled connections,
/// replaced after five idle minutes, that is most executions of a lightly
/// loaded daemon. A sync's persistence (5,000 tools, 50 changed) took
/// 3.05-3.08 ms this way against 3.80-4.32 ms (A/B, one binary).
async fn open_postgres(url: String) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(&url).await?;
    conn.batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Per-connection SQLite set-up: WAL so readers never wait for the writer,
/// a busy timeout as a second line behind the writer lock, and foreign keys
/// (off by default in SQLite).
async fn open_sqlite(path: String) -> diesel::ConnectionResult<SqliteConn> {
    let mut conn = SqliteConn::establish(&path).await?;
    conn.batch_execute(
        // busy_timeout first: the journal_mode change itself may have to wait.
        "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
         PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
    )
    .await
    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use diesel::{QueryableByName, sql_types::Text};
    use diesel_async::RunQueryDsl;

    /// The PostgreSQL the test command starts (see README); the store's
    /// unit tests use its `postgres` database and leave nothing in it.
    pub(super) const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// What a test that cannot reach [`PG_URL`] says.
    pub(super) const PG_DOWN: &str =
        "PostgreSQL on 127.0.0.1:5432 (see README: the test command starts it)";

    #[derive(QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = Text)]
        compile_options: String,
    }

    #[derive(QueryableByName)]
    struct PlanCacheMode {
        #[diesel(sql_type = Text)]
        plan_cache_mode: String,
    }

    /// The pool's PostgreSQL connections run prepared statements on their
    /// generic plans (see `open_postgres`).
    #[tokio::test]
    async fn postgresql_connections_use_generic_plans() {
        let store = super::Store::open(super::StoreSettings {
            url: super::DatabaseUrl::Postgres(PG_URL.to_owned()),
            pool_size: 1,
            acquire_timeout: std::time::Duration::from_secs(10),
            sealer: None,
            event_retention: Default::default(),
        })
        .await
        .unwrap();
        let super::Backend::Postgres(pool) = &store.inner.backend else {
            unreachable!("a PostgreSQL URL opens a PostgreSQL pool")
        };
        let mut conn = pool.get().await.expect(PG_DOWN);
        let mode: PlanCacheMode = diesel::sql_query("SHOW plan_cache_mode")
            .get_result(&mut *conn)
            .await
            .unwrap();
        assert_eq!(mode.plan_cache_mode, "force_generic_plan");
    }

    /// The bundled SQLite is built with the query planner stability
    /// guarantee (`.cargo/config.toml`). Without it SQLite reads the bound
    /// value of `LIMIT ?` while planning, and prepares every such statement
    /// again on each execution, however it is cached.
    #[tokio::test]
    async fn sqlite_plans_do_not_depend_on_bound_values() {
        let mut conn = super::open_sqlite(":memory:".to_owned()).await.unwrap();
        let options: Vec<CompileOption> = diesel::sql_query("PRAGMA compile_options")
            .load(&mut conn)
            .await
            .unwrap();
        let options: Vec<&str> = options.iter().map(|o| o.compile_options.as_str()).collect();
        assert!(
            options.contains(&"ENABLE_QPSG"),
            "SQLite was built without SQLITE_ENABLE_QPSG (LIBSQLITE3_FLAGS): {options:?}"
        );
    }
}
