//! The store's SQLite connection: diesel's synchronous `SqliteConnection`,
//! its statements run in place.
//!
//! diesel-async's `SyncConnectionWrapper` is built to send each statement to
//! another thread: before every execution it builds the statement's SQL
//! text, copies every bound value into owned buffers, and the connection
//! then finds its prepared statement by hashing that text. The store never
//! sends a statement anywhere (see [`super::blocking`]), so here a statement
//! goes straight to the connection: a statement diesel knows by its type is
//! found in the cache by that type, with no SQL built, and values are bound
//! from where they are.

use std::{any::TypeId, panic::AssertUnwindSafe};

use diesel::{
    ConnectionError, ConnectionResult, QueryResult, SqliteConnection,
    backend::Backend,
    connection::{
        AnsiTransactionManager, CacheSize, Connection, ConnectionSealed, Instrumentation,
        LoadConnection, SimpleConnection, TransactionManager as SyncTransactionManager,
        TransactionManagerStatus,
    },
    query_builder::{
        AsQuery, AstPass, CollectedQuery, MoveableBindCollector, Query, QueryBuilder,
        QueryFragment, QueryId,
    },
    row::IntoOwnedRow,
    sqlite::Sqlite,
};
use diesel_async::{
    AsyncConnection, AsyncConnectionCore, SimpleAsyncConnection, TransactionManager,
    pooled_connection::PoolableConnection,
};
use futures::stream::{self, Iter};

use super::{blocking::leave_runtime, reuse::ReusedStatement};

/// A row as read (diesel does not export its name): an owned copy of
/// SQLite's, taken before the statement moves on.
type Row = <<SqliteConnection as LoadConnection>::Row<'static, 'static> as IntoOwnedRow<
    'static,
    Sqlite,
>>::OwnedRow;

/// A pooled SQLite connection whose statements run where they are issued.
pub(crate) struct SqliteConn {
    inner: SqliteConnection,
}

type Rows = Iter<std::vec::IntoIter<QueryResult<Row>>>;

impl SqliteConn {
    /// Runs `work` on the connection, out of the runtime's way (free inside
    /// a unit of work, which has already left it).
    ///
    /// A panic in a statement fails that statement, not the daemon.
    fn run<R>(
        &mut self,
        work: impl FnOnce(&mut SqliteConnection) -> QueryResult<R>,
    ) -> QueryResult<R> {
        let inner = &mut self.inner;
        leave_runtime(|| std::panic::catch_unwind(AssertUnwindSafe(|| work(inner)))).unwrap_or_else(
            |_| {
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UnableToSendCommand,
                    Box::new("an SQLite statement panicked".to_owned()),
                ))
            },
        )
    }
}

impl SimpleAsyncConnection for SqliteConn {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        self.run(|conn| conn.batch_execute(query))
    }
}

impl AsyncConnectionCore for SqliteConn {
    type ExecuteFuture<'conn, 'query> = std::future::Ready<QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = std::future::Ready<QueryResult<Rows>>;
    type Stream<'conn, 'query> = Rows;
    type Row<'conn, 'query> = Row;
    type Backend = Sqlite;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Sqlite> + QueryId + 'query,
    {
        // The rows are read whole: a borrowed row cannot outlive this call,
        // and nothing here waits between rows anyway.
        std::future::ready(self.run(|conn| {
            let query = source.as_query();
            let rows = match by_reference(&query)? {
                Some(collected) => owned(conn.load(collected)?),
                None => owned(conn.load(Untyped(query))?),
            };
            Ok(stream::iter(rows))
        }))
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Sqlite> + QueryId + 'query,
    {
        std::future::ready(self.run(|conn| match by_reference(&source)? {
            Some(collected) => conn.execute_returning_count(&collected),
            None => conn.execute_returning_count(&source),
        }))
    }
}

impl AsyncConnection for SqliteConn {
    type TransactionManager = Transactions;

    async fn establish(path: &str) -> ConnectionResult<Self> {
        leave_runtime(|| SqliteConnection::establish(path)).map(|inner| SqliteConn { inner })
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        self.inner.transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.inner.instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.inner.set_instrumentation(instrumentation)
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.inner.set_prepared_statement_cache_size(size)
    }
}

impl PoolableConnection for SqliteConn {
    fn is_broken(&mut self) -> bool {
        Transactions::is_broken_transaction_manager(self)
    }
}

/// diesel's own transaction manager for SQLite (BEGIN, savepoints,
/// COMMIT, and a connection marked broken when a rollback fails), driven
/// on the inner connection with its outermost statements kept prepared
/// ([`Prepared`]).
pub(crate) struct Transactions;

type Ansi = AnsiTransactionManager;

impl TransactionManager<SqliteConn> for Transactions {
    type TransactionStateData = AnsiTransactionManager;

    async fn begin_transaction(conn: &mut SqliteConn) -> QueryResult<()> {
        conn.run(|inner| {
            <Ansi as SyncTransactionManager<_>>::begin_transaction(&mut Prepared(inner))
        })
    }

    async fn rollback_transaction(conn: &mut SqliteConn) -> QueryResult<()> {
        conn.run(|inner| {
            <Ansi as SyncTransactionManager<_>>::rollback_transaction(&mut Prepared(inner))
        })
    }

    async fn commit_transaction(conn: &mut SqliteConn) -> QueryResult<()> {
        conn.run(|inner| {
            <Ansi as SyncTransactionManager<_>>::commit_transaction(&mut Prepared(inner))
        })
    }

    fn transaction_manager_status_mut(conn: &mut SqliteConn) -> &mut TransactionManagerStatus {
        <Ansi as SyncTransactionManager<SqliteConnection>>::transaction_manager_status_mut(
            &mut conn.inner,
        )
    }
}

/// The inner connection as diesel's transaction manager sees it, with
/// `BEGIN`, `COMMIT` and `ROLLBACK` run as statements prepared once and
/// kept in the connection's cache.
///
/// The manager sends them as text, and diesel's SQLite connection runs
/// text through `sqlite3_exec`, which parses, plans and frees the
/// statement every time. Under `perf`, parsing `BEGIN` was half of its
/// time, on every transaction. Savepoints, rare here, still go as text.
struct Prepared<'a>(&'a mut SqliteConnection);

impl SimpleConnection for Prepared<'_> {
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        match query {
            "BEGIN" | "COMMIT" | "ROLLBACK" => {
                let binds = <Sqlite as Backend>::BindCollector::default().moveable();
                let statement = CollectedQuery::new(query.to_owned(), true, binds);
                self.0.execute_returning_count(&statement).map(drop)
            }
            _ => self.0.batch_execute(query),
        }
    }
}

impl ConnectionSealed for Prepared<'_> {}

impl Connection for Prepared<'_> {
    type Backend = Sqlite;
    type TransactionManager = AnsiTransactionManager;

    fn establish(_: &str) -> ConnectionResult<Self> {
        Err(ConnectionError::BadConnection(
            "a view of an open connection is not established".to_owned(),
        ))
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Sqlite> + QueryId,
    {
        self.0.execute_returning_count(source)
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        self.0.transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.0.instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.0.set_instrumentation(instrumentation)
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.0.set_prepared_statement_cache_size(size)
    }
}

/// Every row of `cursor`, copied out of SQLite's statement.
fn owned(cursor: <SqliteConnection as LoadConnection>::Cursor<'_, '_>) -> Vec<QueryResult<Row>> {
    let mut names = <<SqliteConnection as LoadConnection>::Row<'_, '_> as IntoOwnedRow<
        '_,
        Sqlite,
    >>::Cache::default();
    cursor
        .map(|row| row.map(|row| row.into_owned(&mut names)))
        .collect()
}

/// A [`Reused`](super::reuse) statement's SQL and values, rendered.
///
/// diesel's connection takes a statement by reference, and a reference
/// asks the statement's parts whether it may be cached, never the
/// statement's own answer: a reused statement would be prepared on every
/// execution. Rendered, it carries its own answer. Only these statements
/// pay for the rendering (their SQL is built for the cache key anyway);
/// every other one is passed as it is.
fn by_reference<Q>(query: &Q) -> QueryResult<Option<CollectedQuery<SqliteBinds>>>
where
    Q: QueryFragment<Sqlite> + QueryId,
{
    if Q::HAS_STATIC_QUERY_ID || TypeId::of::<Q::QueryId>() != TypeId::of::<ReusedStatement>() {
        return Ok(None);
    }
    let mut binds = <Sqlite as Backend>::BindCollector::default();
    query.collect_binds(&mut binds, &mut (), &Sqlite)?;
    let mut sql = <Sqlite as Backend>::QueryBuilder::default();
    query.to_sql(&mut sql, &Sqlite)?;
    let cacheable = query.is_safe_to_cache_prepared(&Sqlite)?;
    Ok(Some(CollectedQuery::new(
        sql.finish(),
        cacheable,
        binds.moveable(),
    )))
}

type SqliteBinds =
    <<Sqlite as Backend>::BindCollector<'static> as MoveableBindCollector<Sqlite>>::BindData;

/// A query whose rows are read without their SQL types: diesel's own
/// SQLite connection wants them to look up row metadata, which SQLite does
/// not use, and the caller decodes the rows by their types afterwards.
struct Untyped<Q>(Q);

impl<Q: QueryId> QueryId for Untyped<Q> {
    // Cached as the query itself: the same SQL.
    type QueryId = Q::QueryId;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q> Query for Untyped<Q> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<Q: QueryFragment<Sqlite>> QueryFragment<Sqlite> for Untyped<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, backend: &Sqlite) -> QueryResult<bool> {
        self.0.is_safe_to_cache_prepared(backend)
    }

    fn is_noop(&self, backend: &Sqlite) -> QueryResult<bool> {
        self.0.is_noop(backend)
    }
}

#[cfg(test)]
mod tests {
    use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};

    use crate::store::{StoreError, reuse::tests::Cached};

    #[tokio::test]
    async fn transactions_prepare_begin_commit_and_rollback_once_per_connection() {
        let mut conn = crate::store::open_sqlite(":memory:".to_owned())
            .await
            .unwrap();
        conn.batch_execute("CREATE TABLE t (v INTEGER NOT NULL)")
            .await
            .unwrap();
        let cached = Cached::default();
        conn.set_instrumentation(cached.clone());
        for v in 0..3 {
            conn.transaction::<_, StoreError, _>(async |conn| {
                conn.batch_execute(&format!("INSERT INTO t VALUES ({v})"))
                    .await?;
                // A nested transaction is a savepoint, as diesel makes it.
                conn.transaction::<_, StoreError, _>(async |conn| {
                    conn.batch_execute("INSERT INTO t VALUES (100)").await?;
                    Ok(())
                })
                .await
            })
            .await
            .unwrap();
            let failed = conn
                .transaction::<(), StoreError, _>(async |conn| {
                    conn.batch_execute("INSERT INTO t VALUES (-1)").await?;
                    Err(StoreError::ServerNotFound("rolled back".to_owned()))
                })
                .await;
            assert!(failed.is_err());
        }
        let prepared = cached.0.lock().unwrap().clone();
        assert_eq!(
            prepared,
            ["BEGIN", "COMMIT", "ROLLBACK"],
            "each prepared once, then reused"
        );
        let count = |filter: &'static str| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(filter))
        };
        let kept: i64 = count("(SELECT COUNT(*) FROM t WHERE v >= 0)")
            .get_result(&mut conn)
            .await
            .unwrap();
        let undone: i64 = count("(SELECT COUNT(*) FROM t WHERE v < 0)")
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!((kept, undone), (6, 0), "commits kept, rollbacks undone");
    }
}
