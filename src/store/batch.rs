//! Multi-row INSERTs written as query fragments, so one statement text serves
//! both backends (diesel's own batch insert does not reach SQLite through
//! diesel-async's sync wrapper).

use diesel::{
    QueryResult,
    backend::Backend,
    query_builder::{AstPass, QueryFragment, QueryId},
    serialize::ToSql,
    sql_types::{BigInt, Nullable, Text},
};

use super::models::{MappingRow, ToolRow};

/// `INSERT INTO tools … VALUES …`.
pub(super) struct InsertTools<'a>(pub &'a [ToolRow]);

impl<DB> QueryFragment<DB> for InsertTools<'_>
where
    DB: Backend,
    String: ToSql<Text, DB>,
    Option<String>: ToSql<Nullable<Text>, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql(
            "INSERT INTO tools (id, organization_id, name, created_at, qualified_name, \
             description, input_schema, title, annotations, output_schema, content_hash) VALUES ",
        );
        for (i, tool) in self.0.iter().enumerate() {
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

impl QueryId for InsertTools<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// `INSERT INTO server_tools (server_id, tool_id) VALUES …`.
pub(super) struct InsertMappings<'a>(pub &'a [MappingRow]);

impl<DB> QueryFragment<DB> for InsertMappings<'_>
where
    DB: Backend,
    String: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("INSERT INTO server_tools (server_id, tool_id) VALUES ");
        for (i, mapping) in self.0.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<Text, _>(&mapping.server_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&mapping.tool_id)?;
            out.push_sql(")");
        }
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
