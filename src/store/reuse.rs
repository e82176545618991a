//! Prepared statements reused for statements diesel prepares every time.
//!
//! diesel refuses to cache every `UPDATE` (its changeset may skip `None`
//! fields), every upsert's `DO UPDATE`, every raw `sql_query` and, on
//! PostgreSQL, every insert of a row with optional fields: their SQL text
//! might differ from one execution to the next under the same Rust type.
//! So each execution prepares the statement again: on SQLite a parse and
//! plan inside the write lock, on PostgreSQL a second round trip (Parse and
//! Describe, then Bind and Execute). The event cursor and the server row
//! are written that way by every create, sync and close.
//!
//! [`Reused`] caches such a statement under its SQL text rather than its
//! type: a text that does vary gets an entry of its own, so reuse is always
//! sound, and the few shapes a call site produces are prepared once per
//! connection.

use diesel::{
    backend::Backend,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    result::QueryResult,
};

/// `Q`, whose prepared statement is kept and reused (keyed by its SQL).
#[derive(Debug, Clone, Copy)]
pub(super) struct Reused<Q>(Q);

pub(super) trait Reuse: Sized {
    /// This statement, prepared once per connection and reused.
    fn reused(self) -> Reused<Self> {
        Reused(self)
    }
}

impl<Q> Reuse for Q {}

/// The query id of every [`Reused`] statement. Not a cache key (the cache
/// keys them by their SQL text): it tells the SQLite connection which
/// statements answer for their own caching ([`super::sqlite_conn`]).
pub(super) struct ReusedStatement;

impl<Q> QueryId for Reused<Q> {
    type QueryId = ReusedStatement;
    // Not keyed by type: the statement cache keys it by its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Reused<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for Reused<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }

    fn is_noop(&self, backend: &DB) -> QueryResult<bool> {
        self.0.is_noop(backend)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use diesel::{
        connection::{Instrumentation, InstrumentationEvent},
        prelude::*,
    };
    use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};

    use super::Reuse;

    diesel::table! {
        counters (id) {
            id -> Integer,
            hits -> Integer,
        }
    }

    /// The SQL of every statement a connection prepares into its cache.
    #[derive(Clone, Default)]
    pub(in crate::store) struct Cached(pub(in crate::store) Arc<Mutex<Vec<String>>>);

    impl Instrumentation for Cached {
        fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
            if let InstrumentationEvent::CacheQuery { sql, .. } = event {
                self.0.lock().unwrap().push(sql.to_owned());
            }
        }
    }

    #[tokio::test]
    async fn a_reused_update_is_prepared_once_per_connection() {
        let mut conn = crate::store::open_sqlite(":memory:".to_owned())
            .await
            .unwrap();
        conn.batch_execute(
            "CREATE TABLE counters (id INTEGER PRIMARY KEY, hits INTEGER NOT NULL); \
             INSERT INTO counters VALUES (1, 0);",
        )
        .await
        .unwrap();
        let cached = Cached::default();
        conn.set_instrumentation(cached.clone());
        let bump =
            || diesel::update(counters::table.find(1)).set(counters::hits.eq(counters::hits + 1));
        for _ in 0..3 {
            bump().execute(&mut conn).await.unwrap();
        }
        assert_eq!(
            cached.0.lock().unwrap().len(),
            0,
            "diesel keeps no UPDATE by itself"
        );
        for _ in 0..3 {
            bump().reused().execute(&mut conn).await.unwrap();
        }
        let prepared = cached.0.lock().unwrap().clone();
        assert_eq!(
            prepared.len(),
            1,
            "prepared once, then reused: {prepared:?}"
        );
        assert!(prepared[0].starts_with("UPDATE"), "{prepared:?}");
        let hits: i32 = counters::table
            .select(counters::hits)
            .first(&mut conn)
            .await
            .unwrap();
        assert_eq!(hits, 6, "every execution ran");
    }
}
