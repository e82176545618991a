//! The registry's tables read with plain SQL behind the daemon's back: what
//! is really stored, whatever the daemon says, and whether it runs or not.

use std::collections::HashMap;

use diesel::{
    QueryableByName, SqliteConnection, connection::SimpleConnection, pg::Pg, sqlite::Sqlite,
};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use mcpd::store::DatabaseUrl;

use super::TestDb;

#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct StoredServer {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub organization_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub transport_config: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub tool_count: i32,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct StoredKey {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub organization_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub key_hash: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct StoredAuthorization {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub state_hash: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub server_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub payload: String,
}

/// A server's sync lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct StoredLease {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub holder: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub expires_at: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub requested: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub done: i64,
}

#[derive(Debug, Clone, QueryableByName)]
struct Counted {
    #[diesel(sql_type = diesel::sql_types::Text)]
    what: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

pub struct Registry {
    url: DatabaseUrl,
}

impl Registry {
    pub fn of(db: &TestDb) -> Registry {
        Registry {
            url: db.url.clone(),
        }
    }

    /// An organization's servers, oldest first.
    pub async fn servers(&self, org: &str) -> Vec<StoredServer> {
        let all: Vec<StoredServer> = self
            .load(
                "SELECT id, organization_id, name, transport_config, tool_count \
                 FROM mcp_servers ORDER BY id",
            )
            .await;
        all.into_iter()
            .filter(|s| s.organization_id == org)
            .collect()
    }

    /// Server→tool mappings by server id.
    pub async fn mappings(&self) -> HashMap<String, i64> {
        counts(
            self.load(
                "SELECT server_id AS what, COUNT(*) AS n FROM server_tools GROUP BY server_id",
            )
            .await,
        )
    }

    /// How many tools an organization has.
    pub async fn tools(&self, org: &str) -> i64 {
        let by_org = counts(
            self.load(
                "SELECT organization_id AS what, COUNT(*) AS n FROM tools GROUP BY organization_id",
            )
            .await,
        );
        by_org.get(org).copied().unwrap_or(0)
    }

    /// Authorizations in flight (OAuth), as stored.
    pub async fn authorizations(&self) -> Vec<StoredAuthorization> {
        self.load(
            "SELECT state_hash, server_id, payload FROM oauth_authorizations ORDER BY state_hash",
        )
        .await
    }

    /// Each tool row as `id@version`: on PostgreSQL the version is the
    /// row's `xmin`, which any write to the row changes; SQLite keeps no
    /// such thing, so there it is the row's content.
    pub async fn tool_row_versions(&self) -> Vec<String> {
        let rows: Vec<Named> = match &self.url {
            DatabaseUrl::Postgres(_) => {
                self.load("SELECT id || '@' || xmin::text AS what FROM tools ORDER BY id")
                    .await
            }
            DatabaseUrl::Sqlite(_) => {
                self.load(
                    "SELECT id || '@' || qualified_name || description || input_schema || title \
                     || content_hash AS what FROM tools ORDER BY id",
                )
                .await
            }
        };
        rows.into_iter().map(|r| r.what).collect()
    }

    /// Empties every tool's content digest, as rows written before digests
    /// existed have it; answers how many rows that touched.
    pub async fn forget_tool_digests(&self) -> usize {
        let rows: Vec<Counted> = self
            .load("UPDATE tools SET content_hash = '' RETURNING id AS what, CAST(0 AS BIGINT) AS n")
            .await;
        // As any write of a server's tools must (migration 000012): the
        // daemons' digests of them are stale now.
        let _: Vec<Counted> = self
            .load(
                "UPDATE mcp_servers SET tools_version = tools_version + 1 \
                 RETURNING id AS what, CAST(0 AS BIGINT) AS n",
            )
            .await;
        rows.len()
    }

    /// Tools stored without a content digest.
    pub async fn undigested_tools(&self) -> i64 {
        let by_hash = counts(
            self.load(
                "SELECT content_hash AS what, COUNT(*) AS n FROM tools GROUP BY content_hash",
            )
            .await,
        );
        by_hash.get("").copied().unwrap_or(0)
    }

    pub async fn api_keys(&self) -> Vec<StoredKey> {
        self.load(
            "SELECT id, organization_id, name, key_hash, revoked_at FROM api_keys ORDER BY id",
        )
        .await
    }

    /// Fails the test unless the organization has no server, no tool and no
    /// mapping: what a refused create must leave.
    pub async fn assert_empty(&self, org: &str) {
        let servers = self.servers(org).await;
        assert!(servers.is_empty(), "servers were written: {servers:?}");
        assert_eq!(self.tools(org).await, 0, "tools were written");
        let mappings = self.mappings().await;
        assert!(mappings.is_empty(), "mappings were written: {mappings:?}");
    }

    /// Fails the test unless every server of the organization is whole: its
    /// tool count is `tools` and it has that many mappings. Returns the
    /// servers.
    pub async fn assert_whole(&self, org: &str, tools: i64) -> Vec<StoredServer> {
        let servers = self.servers(org).await;
        let mappings = self.mappings().await;
        for server in &servers {
            assert_eq!(i64::from(server.tool_count), tools, "{}", server.name);
            assert_eq!(
                mappings.get(&server.id).copied().unwrap_or(0),
                tools,
                "mappings of {}",
                server.name
            );
        }
        servers
    }

    /// The server's sync lease (automatic syncs across replicas), if a sync
    /// was ever requested for it.
    pub async fn sync_lease(&self, server_id: &str) -> Option<StoredLease> {
        let leases: Vec<StoredLease> = self
            .load(format!(
                "SELECT holder, expires_at, requested, done FROM sync_leases \
                 WHERE server_id = '{}'",
                quoted(server_id)
            ))
            .await;
        leases.into_iter().next()
    }

    /// Writes the server's sync lease as a daemon `holder` would have left
    /// it, with nothing requested or done yet.
    pub async fn put_sync_lease(&self, server_id: &str, holder: &str, expires_at: i64) {
        let _: Vec<Named> = self
            .load(format!(
                "INSERT INTO sync_leases (server_id, holder, expires_at, requested, done) \
                 VALUES ('{}', '{}', {expires_at}, 0, 0) RETURNING server_id AS what",
                quoted(server_id),
                quoted(holder)
            ))
            .await;
    }

    async fn load<T>(&self, sql: impl Into<String>) -> Vec<T>
    where
        T: QueryableByName<Pg> + QueryableByName<Sqlite> + Send + 'static,
    {
        let sql: String = sql.into();
        match &self.url {
            DatabaseUrl::Postgres(url) => {
                let mut conn = AsyncPgConnection::establish(url)
                    .await
                    .expect("connect to the test database");
                diesel_async::RunQueryDsl::load(diesel::sql_query(&sql), &mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            DatabaseUrl::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let mut conn = <SqliteConnection as diesel::Connection>::establish(&path)
                        .expect("open the test database");
                    conn.batch_execute("PRAGMA busy_timeout = 10000")
                        .expect("busy_timeout");
                    diesel::RunQueryDsl::load(diesel::sql_query(&sql), &mut conn)
                        .unwrap_or_else(|e| panic!("{sql}: {e}"))
                })
                .await
                .expect("SQLite reader")
            }
        }
    }
}

/// A string as an SQL literal's content.
fn quoted(text: &str) -> String {
    text.replace('\'', "''")
}

fn counts(rows: Vec<Counted>) -> HashMap<String, i64> {
    rows.into_iter().map(|c| (c.what, c.n)).collect()
}

/// What PostgreSQL says about the backends of one test database.
pub struct PgActivity {
    admin: AsyncPgConnection,
    database: String,
}

#[derive(QueryableByName)]
struct Backend {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

#[derive(QueryableByName)]
struct Terminated {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    terminated: bool,
}

impl PgActivity {
    pub async fn of(db: &TestDb) -> PgActivity {
        let database = db
            .pg_name()
            .expect("pg_stat_activity is PostgreSQL's")
            .to_owned();
        let admin = AsyncPgConnection::establish(super::PG_ADMIN_URL)
            .await
            .expect("admin connection");
        PgActivity { admin, database }
    }

    /// Backends in a transaction that has written something (PostgreSQL
    /// assigns a transaction id at the first write): rows being written
    /// and not committed yet.
    pub async fn writing(&mut self) -> Vec<i32> {
        let rows: Vec<Backend> = diesel_async::RunQueryDsl::load(
            diesel::sql_query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = $1 AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
            )
            .bind::<diesel::sql_types::Text, _>(&self.database),
            &mut self.admin,
        )
        .await
        .expect("pg_stat_activity");
        rows.into_iter().map(|b| b.pid).collect()
    }

    /// Backends connected to the database and waiting for a query (pooled
    /// connections nobody holds), this one aside.
    pub async fn idle(&mut self) -> Vec<i32> {
        let rows: Vec<Backend> = diesel_async::RunQueryDsl::load(
            diesel::sql_query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = $1 AND state = 'idle' AND pid <> pg_backend_pid()",
            )
            .bind::<diesel::sql_types::Text, _>(&self.database),
            &mut self.admin,
        )
        .await
        .expect("pg_stat_activity");
        rows.into_iter().map(|b| b.pid).collect()
    }

    /// Whether any of these backends is still there.
    pub async fn any_alive(&mut self, pids: &[i32]) -> bool {
        let rows: Vec<Backend> = diesel_async::RunQueryDsl::load(
            diesel::sql_query("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind::<diesel::sql_types::Array<diesel::sql_types::Integer>, _>(pids),
            &mut self.admin,
        )
        .await
        .expect("pg_stat_activity");
        !rows.is_empty()
    }

    /// Terminates these backends; returns how many PostgreSQL signalled.
    pub async fn terminate(&mut self, pids: &[i32]) -> usize {
        let mut terminated = 0;
        for pid in pids {
            let rows: Vec<Terminated> = diesel_async::RunQueryDsl::load(
                diesel::sql_query("SELECT pg_terminate_backend($1) AS terminated")
                    .bind::<diesel::sql_types::Integer, _>(pid),
                &mut self.admin,
            )
            .await
            .expect("pg_terminate_backend");
            terminated += rows.iter().filter(|r| r.terminated).count();
        }
        terminated
    }
}

#[derive(QueryableByName)]
struct Named {
    #[diesel(sql_type = diesel::sql_types::Text)]
    what: String,
}
