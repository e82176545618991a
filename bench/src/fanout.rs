//! The "before" column: the incident's pattern reproduced. A create of N
//! tools writes the server, then N tool inserts at once, then N mapping
//! inserts at once, each on its own pooled connection (pool and acquire
//! timeout as the daemon's). These figures are never the daemon's own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use diesel::{SqliteConnection, sql_types::Text};
use diesel_async::{
    AsyncPgConnection,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig},
    sync_connection_wrapper::SyncConnectionWrapper,
};
use futures::FutureExt;

use crate::env::Backend;

type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

pub enum FanoutPool {
    Postgres(bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>),
    Sqlite(bb8::Pool<AsyncDieselConnectionManager<SqliteConn>>),
}

/// What one or many fan-out creates cost.
#[derive(Debug, Default)]
pub struct Outcome {
    pub errors: u64,
    pub pool_timeouts: u64,
    pub peak_checked_out: usize,
    /// Longest wait for a pooled connection.
    pub max_wait_ms: f64,
}

#[derive(Default)]
struct Counters {
    held: AtomicUsize,
    peak: AtomicUsize,
    errors: AtomicU64,
    timeouts: AtomicU64,
    max_wait_us: AtomicU64,
}

impl FanoutPool {
    pub fn new(backend: Backend, url: &str, size: u32, timeout: Duration) -> FanoutPool {
        match backend {
            Backend::Postgres => FanoutPool::Postgres(
                bb8::Pool::builder()
                    .max_size(size)
                    .connection_timeout(timeout)
                    .build_unchecked(AsyncDieselConnectionManager::new(url)),
            ),
            Backend::Sqlite => {
                let path = url.strip_prefix("sqlite://").unwrap_or(url).to_owned();
                let mut config = ManagerConfig::default();
                config.custom_setup = Box::new(|path| {
                    let path = path.to_owned();
                    async move {
                        use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                        let mut conn = SqliteConn::establish(&path).await?;
                        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    }
                    .boxed()
                });
                FanoutPool::Sqlite(
                    // No ping on check-out: bb8 runs it inside the acquire
                    // timeout, and a ping cut off there is a cancelled
                    // `spawn_blocking` job of diesel-async's sync wrapper,
                    // whose drop blocks (`block_in_place` + `block_on`) on
                    // the thread that runs all the fan-out futures. Under
                    // pool timeouts that hung the run (2 runs of 4 with
                    // `--quick --backend sqlite`; 0 of 6 without the ping).
                    // Without it the baseline does less per checkout, so
                    // it is if anything flattered.
                    bb8::Pool::builder()
                        .max_size(size)
                        .connection_timeout(timeout)
                        .test_on_check_out(false)
                        .build_unchecked(AsyncDieselConnectionManager::new_with_config(
                            path, config,
                        )),
                )
            }
        }
    }

    /// `creates` fan-out creates of `n` tools each, all at once.
    pub async fn run(&self, creates: usize, n: usize) -> Outcome {
        let counters = Arc::new(Counters::default());
        let runs = (0..creates).map(|_| self.create(n, counters.clone()));
        futures::future::join_all(runs).await;
        Outcome {
            errors: counters.errors.load(Ordering::Relaxed),
            pool_timeouts: counters.timeouts.load(Ordering::Relaxed),
            peak_checked_out: counters.peak.load(Ordering::Relaxed),
            max_wait_ms: counters.max_wait_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }

    async fn create(&self, n: usize, counters: Arc<Counters>) {
        let org = format!("fanout-{}", uuid::Uuid::now_v7().simple());
        let server_id = uuid::Uuid::now_v7().to_string();
        let tool_ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let server = vec![server_id.clone(), org.clone(), format!("fanout-{n}")];
        if !self.insert(Statement::Server, server, &counters).await {
            return;
        }
        let tools = tool_ids.iter().enumerate().map(|(i, id)| {
            let row = vec![id.clone(), org.clone(), format!("tool_{i:04}")];
            self.insert(Statement::Tool, row, &counters)
        });
        futures::future::join_all(tools).await;
        let mappings = tool_ids.iter().map(|id| {
            self.insert(
                Statement::Mapping,
                vec![server_id.clone(), id.clone()],
                &counters,
            )
        });
        futures::future::join_all(mappings).await;
    }

    /// One statement on its own pooled connection; false on failure.
    async fn insert(&self, statement: Statement, binds: Vec<String>, counters: &Counters) -> bool {
        macro_rules! on_pool {
            ($pool:expr, $sql:expr) => {{
                let waited = Instant::now();
                let conn = $pool.get().await;
                let wait_us = u64::try_from(waited.elapsed().as_micros()).unwrap_or(u64::MAX);
                counters.max_wait_us.fetch_max(wait_us, Ordering::Relaxed);
                match conn {
                    Err(bb8::RunError::TimedOut) => {
                        counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Ok(mut conn) => {
                        let now = counters.held.fetch_add(1, Ordering::SeqCst) + 1;
                        counters.peak.fetch_max(now, Ordering::SeqCst);
                        let mut query = diesel::sql_query($sql).into_boxed();
                        for bind in binds {
                            query = query.bind::<Text, _>(bind);
                        }
                        let ok = diesel_async::RunQueryDsl::execute(query, &mut *conn)
                            .await
                            .is_ok();
                        counters.held.fetch_sub(1, Ordering::SeqCst);
                        if !ok {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        ok
                    }
                }
            }};
        }
        match self {
            FanoutPool::Postgres(pool) => on_pool!(pool, statement.sql(Backend::Postgres)),
            FanoutPool::Sqlite(pool) => on_pool!(pool, statement.sql(Backend::Sqlite)),
        }
    }
}

#[derive(Clone, Copy)]
enum Statement {
    Server,
    Tool,
    Mapping,
}

impl Statement {
    fn sql(self, backend: Backend) -> String {
        let sql = match self {
            Statement::Server => {
                "INSERT INTO mcp_servers (id, organization_id, name, transport, endpoint, transport_config, tool_count, created_at) \
                 VALUES ($1, $2, $3, 'streamable_http', 'http://127.0.0.1/mcp', '{}', 0, 0)"
            }
            Statement::Tool => {
                "INSERT INTO tools (id, organization_id, name, qualified_name, description, input_schema, created_at) \
                 VALUES ($1, $2, $3, $3, 'fan-out tool', '{\"type\":\"object\"}', 0)"
            }
            Statement::Mapping => "INSERT INTO server_tools (server_id, tool_id) VALUES ($1, $2)",
        };
        match backend {
            Backend::Postgres => sql.to_owned(),
            // SQLite also reads $N, as positional by number.
            Backend::Sqlite => sql.replace('$', "?"),
        }
    }
}
