//! mcpd: the registry of MCP servers for an agent platform, served over gRPC.
//!
//! Data flows one way: [`api`] → [`manager`] → ([`mcp`], [`store`]).

pub mod api;
pub mod config;
pub mod manager;
pub mod mcp;
pub mod proto;
pub mod store;
pub mod telemetry;
