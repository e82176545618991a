//! mcpd: the registry of MCP servers for an agent platform, served over gRPC.
//!
//! Data flows one way: [`api`] → [`manager`] → ([`mcp`], [`store`]); all of
//! them speak the domain types of [`model`].

pub mod api;
pub mod config;
pub mod manager;
pub mod mcp;
pub mod model;
pub mod proto;
pub mod store;
pub mod telemetry;
