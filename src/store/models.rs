//! Rows as they are read from and written to the database.

use diesel::prelude::*;

use super::schema::{api_keys, mcp_servers, server_tools, tools};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = mcp_servers)]
pub struct ServerRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub transport: String,
    pub endpoint: String,
    pub transport_config: String,
    pub tool_count: i32,
    pub created_at: i64,
    /// JSON array of the header/env names whose values `transport_config` seals.
    pub secret_names: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = tools)]
pub struct ToolRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub description: String,
    pub input_schema: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = server_tools)]
pub struct MappingRow {
    pub server_id: String,
    pub tool_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub key_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}
