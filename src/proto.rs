//! Code generated from `proto/mcpd/v1/mcpd.proto`, for the server and for
//! Rust clients (the tests use it too).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("mcpd.v1");

/// The encoded descriptor set that server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mcpd_descriptor");
