//! Multi-row writes as query fragments: diesel's own batch insert does not
//! reach SQLite through diesel-async's sync wrapper, and PostgreSQL takes
//! whole columns as arrays.

use diesel::{
    QueryResult,
    backend::Backend,
    pg::Pg,
    query_builder::{AstPass, QueryFragment, QueryId},
    serialize::ToSql,
    sql_types::{Array, BigInt, Nullable, Text},
    sqlite::Sqlite,
};

use super::models::ToolRow;

/// `INSERT INTO tools …`: on SQLite one multi-row VALUES; on PostgreSQL
/// one array parameter per column, unnested (a short statement whatever the
/// batch's size, parsed once and cached, instead of thousands of
/// parameters).
pub(super) struct InsertTools<'a> {
    rows: &'a [ToolRow],
    columns: ToolColumns<'a>,
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
    /// Both forms are kept: a few pointers per row, against the rows'
    /// own strings.
    pub(super) fn new(rows: &'a [ToolRow]) -> InsertTools<'a> {
        let mut columns = ToolColumns::default();
        {
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
        }
        InsertTools { rows, columns }
    }
}

const INSERT_TOOLS: &str = "INSERT INTO tools (id, organization_id, name, created_at, \
    qualified_name, description, input_schema, title, annotations, output_schema, content_hash) ";

impl QueryFragment<Sqlite> for InsertTools<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
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
            push_listed_fields(&mut out, tool)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl QueryFragment<Pg> for InsertTools<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let c = &self.columns;
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
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&c.description)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&c.input_schema)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&c.title)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&c.annotations)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&c.output_schema)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&c.content_hash)?;
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
pub(super) struct InsertMappings<'a> {
    server_id: &'a str,
    tool_ids: Vec<&'a str>,
}

impl<'a> InsertMappings<'a> {
    pub(super) fn new(server_id: &'a str, tools: &'a [ToolRow]) -> InsertMappings<'a> {
        InsertMappings {
            server_id,
            tool_ids: tools.iter().map(|t| t.id.as_str()).collect(),
        }
    }
}

impl QueryFragment<Sqlite> for InsertMappings<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
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

/// `UPDATE tools SET … FROM (VALUES …)`: tools rewritten in place (same id)
/// with what their server lists now, one statement per batch.
pub(super) struct UpdateTools<'a>(pub &'a [ToolRow]);

impl<DB> QueryFragment<DB> for UpdateTools<'_>
where
    DB: Backend,
    String: ToSql<Text, DB>,
    Option<String>: ToSql<Nullable<Text>, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        // A CTE names the VALUES columns in a form both backends read
        // (SQLite has no column list on a subquery's alias).
        out.push_sql(
            "WITH v (id, qualified_name, description, input_schema, title, annotations, \
             output_schema, content_hash) AS (VALUES ",
        );
        for (i, tool) in self.0.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<Text, _>(&tool.id)?;
            push_listed_fields(&mut out, tool)?;
            out.push_sql(")");
        }
        out.push_sql(
            ") UPDATE tools SET qualified_name = v.qualified_name, description = v.description, \
             input_schema = v.input_schema, title = v.title, annotations = v.annotations, \
             output_schema = v.output_schema, content_hash = v.content_hash \
             FROM v WHERE tools.id = v.id",
        );
        Ok(())
    }
}

impl QueryId for UpdateTools<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// `, qualified_name, description, input_schema, title, annotations,
/// output_schema, content_hash`: what a server's listing sets, in the order
/// both the INSERT and the UPDATE name these columns.
fn push_listed_fields<'b, DB>(out: &mut AstPass<'_, 'b, DB>, tool: &'b ToolRow) -> QueryResult<()>
where
    DB: Backend,
    String: ToSql<Text, DB>,
    Option<String>: ToSql<Nullable<Text>, DB>,
{
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(&tool.qualified_name)?;
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
