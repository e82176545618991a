//! Between protobuf messages and the manager's types.

use crate::{
    manager::{FailedTool, Server, Tool, TransportKind, TransportRequest},
    proto,
};

pub fn transport_request(
    transport: Option<proto::create_mcp_server_request::Transport>,
) -> Option<TransportRequest> {
    use proto::create_mcp_server_request::Transport;
    transport.map(|t| match t {
        Transport::Stdio(s) => TransportRequest::Stdio {
            command: s.command,
            args: s.args,
            env: s.env,
        },
        Transport::StreamableHttp(h) => TransportRequest::StreamableHttp {
            url: h.url,
            headers: h.headers,
        },
        Transport::Sse(h) => TransportRequest::Sse {
            url: h.url,
            headers: h.headers,
        },
    })
}

pub fn server(server: Server) -> proto::McpServer {
    let transport = match server.transport {
        Some(TransportKind::Stdio) => proto::TransportKind::Stdio,
        Some(TransportKind::StreamableHttp) => proto::TransportKind::StreamableHttp,
        Some(TransportKind::Sse) => proto::TransportKind::Sse,
        None => proto::TransportKind::Unspecified,
    };
    proto::McpServer {
        id: server.id,
        server_name: server.name,
        transport: transport.into(),
        created_at: Some(prost_types::Timestamp::from(server.created_at)),
        tool_count: server.tool_count,
        endpoint: server.endpoint,
        secret_names: server.secret_names,
    }
}

pub fn tool(tool: Tool) -> proto::Tool {
    proto::Tool {
        id: tool.id,
        name: tool.name,
        description: tool.description,
        input_schema_json: tool.input_schema_json,
    }
}

pub fn failed_tool(failed: FailedTool) -> proto::FailedTool {
    proto::FailedTool {
        name: failed.name,
        reason: failed.reason,
    }
}
