//! Multi-row writes as query fragments: diesel's own batch insert does not
//! reach SQLite through diesel-async's sync wrapper, and PostgreSQL takes
//! whole columns as arrays. [`WriteTools`] cuts a server's tools into
//! statements the way each backend prepares them best.

use diesel::{
    QueryResult,
    backend::Backend,
    pg::Pg,
    query_builder::{AstPass, QueryFragment, QueryId},
    serialize::ToSql,
    sql_types::{Array, BigInt, Nullable, Text},
    sqlite::Sqlite,
};

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::future::BoxFuture;

use super::{SqliteConn, models::ToolRow};

/// Writes a server's tool rows inside a transaction the caller opened, cut
/// into statements as the backend is fastest with.
pub(super) trait WriteTools {
    /// Inserts `rows` and maps each to `server_id`.
    async fn insert_tools(&mut self, server_id: &str, rows: &[ToolRow]) -> QueryResult<()>;
    /// Rewrites the listed fields of `rows` (by id).
    async fn update_tools(&mut self, rows: &[ToolRow]) -> QueryResult<()>;
}

/// Rows per PostgreSQL statement: far below its bind-parameter limit.
const PG_ROWS: usize = 500;

impl WriteTools for AsyncPgConnection {
    async fn insert_tools(&mut self, server_id: &str, rows: &[ToolRow]) -> QueryResult<()> {
        for statement in pg_tool_writes(self, server_id, rows, &[]) {
            statement.await?;
        }
        Ok(())
    }

    async fn update_tools(&mut self, rows: &[ToolRow]) -> QueryResult<()> {
        for statement in pg_tool_writes(self, "", &[], &[rows]) {
            statement.await?;
        }
        Ok(())
    }
}

/// PostgreSQL's statements inserting `added` (mapped to `server_id`) and
/// rewriting each of `updated`, in that order, as futures on `conn`: each
/// is sent when first polled, so awaited together they are pipelined. Their
/// SQL and binds are built here; a future borrows only the connection.
pub(super) fn pg_tool_writes<'a>(
    conn: &'a AsyncPgConnection,
    server_id: &str,
    added: &[ToolRow],
    updated: &[&[ToolRow]],
) -> Vec<BoxFuture<'a, QueryResult<usize>>> {
    let mut conn = conn;
    let mut statements = Vec::new();
    for batch in added.chunks(PG_ROWS) {
        statements.push(InsertTools::columns(batch).execute(&mut conn));
        statements.push(InsertMappings::new(server_id, batch).execute(&mut conn));
    }
    for rows in updated {
        for batch in rows.chunks(PG_ROWS) {
            statements.push(UpdateTools::columns(batch).execute(&mut conn));
        }
    }
    statements
}

/// Most rows in one SQLite statement. SQLite's batches are prepared once
/// per connection and cached, which only pays if their text repeats:
/// preparing a fresh 50-row INSERT cost as much as running it. So a batch
/// holds 64 rows, or a power of two below that: at most seven statements of
/// each kind per connection, and a create of 50 tools makes three
/// (32 + 16 + 2).
const SQLITE_ROWS: usize = 64;

/// Whether a SQLite statement of `rows` rows is one of the cached sizes.
fn sqlite_cacheable(rows: usize) -> bool {
    rows.is_power_of_two() && rows <= SQLITE_ROWS
}

/// `rows` in batches of the cached sizes: 64 at a time, then the rest in
/// falling powers of two.
fn sqlite_batches<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = SQLITE_ROWS.min(1 << rest.len().ilog2());
        let (batch, tail) = rest.split_at(size);
        rest = tail;
        Some(batch)
    })
}

impl WriteTools for SqliteConn {
    async fn insert_tools(&mut self, server_id: &str, rows: &[ToolRow]) -> QueryResult<()> {
        for batch in sqlite_batches(rows) {
            InsertTools::rows(batch).execute(self).await?;
        }
        for batch in sqlite_batches(rows) {
            InsertMappings::new(server_id, batch).execute(self).await?;
        }
        Ok(())
    }

    async fn update_tools(&mut self, rows: &[ToolRow]) -> QueryResult<()> {
        for batch in sqlite_batches(rows) {
            UpdateTools::rows(batch).execute(self).await?;
        }
        Ok(())
    }
}

/// `INSERT INTO tools …`: on SQLite one multi-row VALUES; on PostgreSQL
/// one array parameter per column, unnested (a short statement whatever the
/// batch's size, parsed once and cached, instead of thousands of
/// parameters).
struct InsertTools<'a> {
    rows: &'a [ToolRow],
    /// PostgreSQL's form; SQLite binds from the rows.
    columns: Option<ToolColumns<'a>>,
}

/// The rows' values column by column, for PostgreSQL's arrays.
#[derive(Default)]
struct ToolColumns<'a> {
    id: Vec<&'a str>,
    organization_id: Vec<&'a str>,
    name: Vec<&'a str>,
    created_at: Vec<i64>,
    qualified_name: Vec<&'a str>,
    description: Vec<&'a str>,
    input_schema: Vec<&'a str>,
    title: Vec<&'a str>,
    annotations: Vec<Option<&'a str>>,
    output_schema: Vec<Option<&'a str>>,
    content_hash: Vec<&'a str>,
}

impl<'a> InsertTools<'a> {
    /// For SQLite: a VALUES list bound from the rows.
    fn rows(rows: &'a [ToolRow]) -> InsertTools<'a> {
        InsertTools {
            rows,
            columns: None,
        }
    }

    /// For PostgreSQL: the rows as column arrays.
    fn columns(rows: &'a [ToolRow]) -> InsertTools<'a> {
        InsertTools {
            rows,
            columns: Some(ToolColumns::of(rows)),
        }
    }
}

impl<'a> ToolColumns<'a> {
    fn of(rows: &'a [ToolRow]) -> ToolColumns<'a> {
        let mut columns = ToolColumns::default();
        for row in rows {
            columns.id.push(&row.id);
            columns.organization_id.push(&row.organization_id);
            columns.name.push(&row.name);
            columns.created_at.push(row.created_at);
            columns.qualified_name.push(&row.qualified_name);
            columns.description.push(&row.description);
            columns.input_schema.push(&row.input_schema);
            columns.title.push(&row.title);
            columns.annotations.push(row.annotations.as_deref());
            columns.output_schema.push(row.output_schema.as_deref());
            columns.content_hash.push(&row.content_hash);
        }
        columns
    }

    /// `, description, input_schema, title, annotations, output_schema,
    /// content_hash` as arrays: [`push_content_fields`] for PostgreSQL's
    /// unnest.
    fn push_content<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.description)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.input_schema)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.title)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.annotations)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.output_schema)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.content_hash)?;
        Ok(())
    }
}

const INSERT_TOOLS: &str = "INSERT INTO tools (id, organization_id, name, created_at, \
    qualified_name, description, input_schema, title, annotations, output_schema, content_hash) ";

impl QueryFragment<Sqlite> for InsertTools<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        if !sqlite_cacheable(self.rows.len()) {
            out.unsafe_to_cache_prepared();
        }
        out.push_sql(INSERT_TOOLS);
        out.push_sql("VALUES ");
        for (i, tool) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<Text, _>(&tool.id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&tool.organization_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&tool.name)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&tool.created_at)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&tool.qualified_name)?;
            push_content_fields(&mut out, tool)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl QueryFragment<Pg> for InsertTools<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let c = pg_columns(&self.columns)?;
        out.push_sql(INSERT_TOOLS);
        out.push_sql("SELECT * FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(&c.id)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&c.organization_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&c.name)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&c.created_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&c.qualified_name)?;
        c.push_content(&mut out)?;
        out.push_sql(")");
        Ok(())
    }
}

impl QueryId for InsertTools<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// `INSERT INTO server_tools (server_id, tool_id) …`: the server's mappings
/// to these tools, as [`InsertTools`] writes rows on each backend.
struct InsertMappings<'a> {
    server_id: &'a str,
    tool_ids: Vec<&'a str>,
}

impl<'a> InsertMappings<'a> {
    fn new(server_id: &'a str, tools: &'a [ToolRow]) -> InsertMappings<'a> {
        InsertMappings {
            server_id,
            tool_ids: tools.iter().map(|t| t.id.as_str()).collect(),
        }
    }
}

impl QueryFragment<Sqlite> for InsertMappings<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        if !sqlite_cacheable(self.tool_ids.len()) {
            out.unsafe_to_cache_prepared();
        }
        out.push_sql("INSERT INTO server_tools (server_id, tool_id) VALUES ");
        for (i, tool_id) in self.tool_ids.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<Text, _>(&self.server_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(tool_id)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl QueryFragment<Pg> for InsertMappings<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("INSERT INTO server_tools (server_id, tool_id) SELECT ");
        out.push_bind_param::<Text, _>(&self.server_id)?;
        out.push_sql(", unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.tool_ids)?;
        out.push_sql(")");
        Ok(())
    }
}

impl QueryId for InsertMappings<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// `UPDATE tools SET … FROM …`: tools rewritten in place (same id) with
/// what their server lists now, one statement per batch: a `VALUES` list on
/// SQLite, unnested column arrays on PostgreSQL (as [`InsertTools`]).
struct UpdateTools<'a> {
    rows: &'a [ToolRow],
    /// PostgreSQL's form; SQLite binds from the rows.
    columns: Option<ToolColumns<'a>>,
}

impl<'a> UpdateTools<'a> {
    /// For SQLite: a VALUES list bound from the rows.
    fn rows(rows: &'a [ToolRow]) -> UpdateTools<'a> {
        UpdateTools {
            rows,
            columns: None,
        }
    }

    /// For PostgreSQL: the rows as column arrays.
    fn columns(rows: &'a [ToolRow]) -> UpdateTools<'a> {
        UpdateTools {
            rows,
            columns: Some(ToolColumns::of(rows)),
        }
    }
}

/// The column arrays a PostgreSQL statement binds: built by its
/// `columns` constructor, and only there (SQLite binds from the rows).
fn pg_columns<'a, 'b>(columns: &'b Option<ToolColumns<'a>>) -> QueryResult<&'b ToolColumns<'a>> {
    columns.as_ref().ok_or_else(|| {
        diesel::result::Error::QueryBuilderError(
            "tool rows reached PostgreSQL without their column arrays".into(),
        )
    })
}

/// What a sync rewrites in a tool it keeps. Not its qualified name: the
/// row keeps its name, and its server's prefix changes only through
/// `UpdateMcpServer`, which rewrites the qualified names itself. Setting it
/// anyway would make SQLite rewrite the row's entry in the
/// `(organization_id, qualified_name)` index, unchanged, for every row.
const UPDATE_TOOLS_SET: &str = "UPDATE tools SET \
    description = v.description, input_schema = v.input_schema, title = v.title, \
    annotations = v.annotations, output_schema = v.output_schema, content_hash = v.content_hash ";

impl QueryFragment<Sqlite> for UpdateTools<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        if !sqlite_cacheable(self.rows.len()) {
            out.unsafe_to_cache_prepared();
        }
        // A CTE names the VALUES columns (SQLite has no column list on a
        // subquery's alias).
        out.push_sql(
            "WITH v (id, description, input_schema, title, annotations, output_schema, \
             content_hash) AS (VALUES ",
        );
        for (i, tool) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<Text, _>(&tool.id)?;
            push_content_fields(&mut out, tool)?;
            out.push_sql(")");
        }
        out.push_sql(") ");
        out.push_sql(UPDATE_TOOLS_SET);
        out.push_sql("FROM v WHERE tools.id = v.id");
        Ok(())
    }
}

impl QueryFragment<Pg> for UpdateTools<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let c = pg_columns(&self.columns)?;
        out.push_sql(UPDATE_TOOLS_SET);
        out.push_sql("FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(&c.id)?;
        c.push_content(&mut out)?;
        out.push_sql(
            ") AS v (id, description, input_schema, title, annotations, output_schema, \
             content_hash) WHERE tools.id = v.id AND tools.id = ANY(",
        );
        // The join alone let the planner, told the batch's size (a custom
        // plan), choose a hash join over a scan of every organization's
        // tools (50 changed among 5,000: 0.8 ms of a 1.2 ms statement); the
        // ids as an index condition bound the rows it reads to the batch's.
        out.push_bind_param::<Array<Text>, _>(&c.id)?;
        out.push_sql(")");
        Ok(())
    }
}

impl QueryId for UpdateTools<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// `, description, input_schema, title, annotations, output_schema,
/// content_hash`: a tool's content as its server lists it, in the order
/// both the INSERT and the UPDATE name these columns.
fn push_content_fields<'b, DB>(out: &mut AstPass<'_, 'b, DB>, tool: &'b ToolRow) -> QueryResult<()>
where
    DB: Backend,
    String: ToSql<Text, DB>,
    Option<String>: ToSql<Nullable<Text>, DB>,
{
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(&tool.description)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(&tool.input_schema)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(&tool.title)?;
    out.push_sql(", ");
    out.push_bind_param::<Nullable<Text>, _>(&tool.annotations)?;
    out.push_sql(", ");
    out.push_bind_param::<Nullable<Text>, _>(&tool.output_schema)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(&tool.content_hash)?;
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// PostgreSQL's statements bind the column arrays, which only their
    /// `columns` constructors build: the SQLite form is refused, not sent
    /// with empty arrays.
    #[test]
    fn postgresql_refuses_tool_rows_without_their_columns() {
        let sql = |q: &dyn QueryFragment<Pg>| {
            let mut builder = diesel::pg::PgQueryBuilder::default();
            q.to_sql(&mut builder, &Pg).map(|_| ())
        };
        assert!(sql(&InsertTools::rows(&[])).is_err());
        assert!(sql(&UpdateTools::rows(&[])).is_err());
        assert!(sql(&InsertTools::columns(&[])).is_ok());
        assert!(sql(&UpdateTools::columns(&[])).is_ok());
    }

    /// `EXPLAIN (FORMAT JSON)` of a PostgreSQL statement, run with its
    /// binds on a fresh connection: a custom plan, the batch's size known.
    /// The daemon's connections plan generically (`store::open_postgres`),
    /// but the statement must not rely on that.
    struct Explain<T>(T);

    impl<T: QueryFragment<Pg>> QueryFragment<Pg> for Explain<T> {
        fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
            out.push_sql("EXPLAIN (FORMAT JSON) ");
            self.0.walk_ast(out.reborrow())
        }
    }

    impl<T> QueryId for Explain<T> {
        type QueryId = ();
        const HAS_STATIC_QUERY_ID: bool = false;
    }

    impl<T> diesel::query_builder::Query for Explain<T> {
        type SqlType = Text;
    }

    pub(in crate::store) fn tool_row(i: usize) -> ToolRow {
        ToolRow {
            id: format!("tool-{i:05}"),
            organization_id: format!("org-{}", i % 50),
            name: format!("tool_{i:05}"),
            qualified_name: format!("tool_{i:05}"),
            description: format!("Tool number {i}."),
            input_schema: r#"{"type":"object"}"#.to_owned(),
            created_at: 0,
            title: String::new(),
            annotations: None,
            output_schema: None,
            content_hash: format!("{i:032x}"),
        }
    }

    /// A sync that changes 50 of 5,000 tools reads those 50 through the
    /// primary key. Joined on the id alone, the planner (told the batch's
    /// size) hashed the batch and scanned the whole table, which holds
    /// every organization's tools, on every sync.
    #[tokio::test]
    async fn postgresql_updates_read_only_the_batch_tools() {
        use crate::store::tests::{PG_DOWN, PG_URL};
        use diesel_async::{AsyncConnection, SimpleAsyncConnection};
        let mut conn = AsyncPgConnection::establish(PG_URL).await.expect(PG_DOWN);
        // A session's temporary table comes first in its search path: this
        // `tools` is the statement's, and goes with the connection.
        conn.batch_execute(
            "CREATE TEMPORARY TABLE tools (id TEXT PRIMARY KEY, organization_id TEXT NOT NULL, \
             name TEXT NOT NULL, qualified_name TEXT NOT NULL, description TEXT NOT NULL, \
             input_schema TEXT NOT NULL, created_at BIGINT NOT NULL, title TEXT NOT NULL DEFAULT '', \
             annotations TEXT, output_schema TEXT, content_hash TEXT NOT NULL DEFAULT '')",
        )
        .await
        .unwrap();
        let rows: Vec<ToolRow> = (0..5000).map(tool_row).collect();
        InsertTools::columns(&rows)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.batch_execute("ANALYZE tools").await.unwrap();

        let changed = &rows[..50];
        let plan: String = Explain(UpdateTools::columns(changed))
            .get_result(&mut conn)
            .await
            .unwrap();
        assert!(
            !plan.contains("Seq Scan"),
            "the update scans the table: {plan}"
        );
        assert_eq!(
            UpdateTools::columns(changed)
                .execute(&mut conn)
                .await
                .unwrap(),
            50
        );
    }

    #[test]
    fn sqlite_batches_are_of_the_cached_sizes_and_cover_every_row() {
        for total in [0usize, 1, 2, 3, 50, 63, 64, 65, 127, 500, 5000] {
            let rows: Vec<usize> = (0..total).collect();
            let batches: Vec<&[usize]> = sqlite_batches(&rows).collect();
            assert!(
                batches.iter().all(|b| sqlite_cacheable(b.len())),
                "{total}: {:?}",
                batches.iter().map(|b| b.len()).collect::<Vec<_>>()
            );
            assert_eq!(batches.concat(), rows, "{total} rows in order, once each");
        }
        let sizes = |n: usize| {
            sqlite_batches(&vec![(); n])
                .map(<[()]>::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(50), [32, 16, 2]);
        assert_eq!(sizes(130), [64, 64, 2]);
    }

    #[test]
    fn only_the_batch_sizes_sqlite_caches_are_cacheable() {
        let cached: Vec<usize> = (0..=600).filter(|&n| sqlite_cacheable(n)).collect();
        assert_eq!(cached, [1, 2, 4, 8, 16, 32, 64]);
    }
}
