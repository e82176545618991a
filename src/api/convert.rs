//! Between protobuf messages and the manager's types.

use crate::{
    manager::{
        CallEvent, CallTool, ClientAnswer, ClientCredentialsRequest, ClientSecret, Content,
        ContentKind, FailedTool, OAuthRequest, ResourceContents, Server, ServerEventKind,
        ServerState, Synced, Tool, ToolCallResult, TransportKind, TransportRequest, Watched,
    },
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
            oauth: h.oauth.map(oauth_request),
        },
        Transport::Sse(h) => TransportRequest::Sse {
            url: h.url,
            headers: h.headers,
        },
    })
}

/// An UpdateMcpServer's transport: the same three kinds as a create's.
pub fn update_transport(
    transport: Option<proto::update_mcp_server_request::Transport>,
) -> Option<TransportRequest> {
    use proto::{
        create_mcp_server_request::Transport as Create, update_mcp_server_request::Transport,
    };
    transport_request(transport.map(|t| match t {
        Transport::Stdio(s) => Create::Stdio(s),
        Transport::StreamableHttp(h) => Create::StreamableHttp(h),
        Transport::Sse(h) => Create::Sse(h),
    }))
}

fn oauth_request(oauth: proto::OAuth) -> OAuthRequest {
    use proto::client_credentials::Credential;
    OAuthRequest {
        client_credentials: oauth.client_credentials.map(|c| ClientCredentialsRequest {
            client_id: c.client_id,
            secret: c.credential.map(|credential| match credential {
                Credential::ClientSecret(secret) => ClientSecret::Secret(secret),
                Credential::PrivateKeyJwt(key) => ClientSecret::PrivateKeyJwt {
                    pem: key.private_key_pem,
                    algorithm: key.algorithm,
                },
            }),
        }),
        scopes: oauth.scopes,
        client_id: oauth.client_id,
        client_secret: oauth.client_secret,
    }
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
        state: match server.state {
            ServerState::Ready => proto::McpServerState::Ready,
            ServerState::AuthorizationPending => proto::McpServerState::AuthorizationPending,
            ServerState::Error => proto::McpServerState::Error,
            ServerState::Unreachable => proto::McpServerState::Unreachable,
        }
        .into(),
        authorization_url: server.authorization_url.unwrap_or_default(),
        state_reason: server.state_reason,
        tool_prefix: server.tool_prefix,
        server_info: server.identity.map(|i| proto::ServerInfo {
            name: i.name,
            title: i.title.unwrap_or_default(),
            version: i.version,
            protocol_version: i.protocol_version,
            instructions: i.instructions.unwrap_or_default(),
            capabilities_json: i.capabilities.to_string(),
        }),
        last_error: server.last_error,
        last_connected_at: server.last_connected_at.map(prost_types::Timestamp::from),
        last_synced_at: server.last_synced_at.map(prost_types::Timestamp::from),
    }
}

/// A listing's state filter: UNSPECIFIED shows every state.
pub fn state_filter(state: i32) -> Result<Option<ServerState>, tonic::Status> {
    match proto::McpServerState::try_from(state) {
        Ok(proto::McpServerState::Unspecified) => Ok(None),
        Ok(proto::McpServerState::Ready) => Ok(Some(ServerState::Ready)),
        Ok(proto::McpServerState::AuthorizationPending) => {
            Ok(Some(ServerState::AuthorizationPending))
        }
        Ok(proto::McpServerState::Error) => Ok(Some(ServerState::Error)),
        Ok(proto::McpServerState::Unreachable) => Ok(Some(ServerState::Unreachable)),
        Err(_) => Err(tonic::Status::invalid_argument(format!(
            "state {state} is not an McpServerState"
        ))),
    }
}

pub fn tool(tool: Tool) -> proto::Tool {
    proto::Tool {
        id: tool.id,
        name: tool.name,
        qualified_name: tool.qualified_name,
        server_id: tool.server_id,
        qualified_name_shared: false,
        description: tool.description,
        input_schema_json: tool.input_schema_json,
        title: tool.title,
        annotations: tool.annotations.map(|a| proto::ToolAnnotations {
            title: a.title.unwrap_or_default(),
            read_only_hint: a.read_only_hint,
            destructive_hint: a.destructive_hint,
            idempotent_hint: a.idempotent_hint,
            open_world_hint: a.open_world_hint,
        }),
        output_schema_json: tool.output_schema_json.unwrap_or_default(),
    }
}

/// What a sync or an update changed, as the sync's answer (an update's
/// answer has the same fields).
pub fn tool_changes(synced: Synced) -> proto::SyncMcpServerToolsResponse {
    proto::SyncMcpServerToolsResponse {
        server: Some(server(synced.server)),
        added: synced.added.into_iter().map(tool).collect(),
        updated: synced.updated.into_iter().map(tool).collect(),
        removed: synced.removed,
        failed_tools: synced.failed_tools.into_iter().map(failed_tool).collect(),
    }
}

pub fn failed_tool(failed: FailedTool) -> proto::FailedTool {
    proto::FailedTool {
        name: failed.name,
        reason: failed.reason,
    }
}

pub fn call_tool(request: proto::CallMcpToolRequest) -> CallTool {
    CallTool {
        server_id: request.server_id,
        tool_name: request.tool_name,
        arguments_json: request.arguments_json,
    }
}

fn json_or_empty(value: Option<serde_json::Value>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

pub fn tool_call_result(result: ToolCallResult) -> proto::CallMcpToolResponse {
    proto::CallMcpToolResponse {
        content: result.content.into_iter().map(content).collect(),
        structured_content_json: json_or_empty(result.structured_content),
        is_error: result.is_error,
        meta_json: json_or_empty(result.meta),
    }
}

fn content(item: Content) -> proto::Content {
    use proto::content::Kind;
    let kind = match item.kind {
        ContentKind::Text(text) => Kind::Text(proto::TextContent { text }),
        ContentKind::Image { data, mime_type } => {
            Kind::Image(proto::ImageContent { data, mime_type })
        }
        ContentKind::Audio { data, mime_type } => {
            Kind::Audio(proto::AudioContent { data, mime_type })
        }
        ContentKind::ResourceLink {
            uri,
            name,
            title,
            description,
            mime_type,
            size,
        } => Kind::ResourceLink(proto::ResourceLink {
            uri,
            name,
            title,
            description,
            mime_type,
            size,
        }),
        ContentKind::Resource {
            uri,
            mime_type,
            contents,
        } => Kind::Resource(proto::EmbeddedResource {
            uri,
            mime_type,
            contents: Some(match contents {
                ResourceContents::Text(text) => proto::embedded_resource::Contents::Text(text),
                ResourceContents::Blob(blob) => proto::embedded_resource::Contents::Blob(blob),
            }),
        }),
    };
    proto::Content {
        kind: Some(kind),
        annotations_json: json_or_empty(item.annotations),
        meta_json: json_or_empty(item.meta),
    }
}

pub fn call_event(event: CallEvent) -> proto::StreamMcpToolCallResponse {
    use proto::stream_mcp_tool_call_response::Message;
    let message = match event {
        CallEvent::Progress {
            progress,
            total,
            message,
        } => Message::Progress(proto::Progress {
            progress,
            total,
            message: message.unwrap_or_default(),
        }),
        CallEvent::Log {
            level,
            logger,
            data,
        } => Message::Log(proto::LogMessage {
            level,
            logger: logger.unwrap_or_default(),
            data_json: data.to_string(),
        }),
        CallEvent::Request { id, method, params } => Message::Request(proto::ServerRequest {
            request_id: id,
            method,
            params_json: params.to_string(),
        }),
    };
    proto::StreamMcpToolCallResponse {
        message: Some(message),
    }
}

/// An answer whose result is not JSON becomes an error for the MCP server
/// (-32603), which tells it why.
pub fn client_answer(answer: proto::ServerRequestAnswer) -> ClientAnswer {
    use proto::server_request_answer::Outcome;
    let outcome = match answer.outcome {
        Some(Outcome::ResultJson(json)) => serde_json::from_str(&json)
            .map_err(|e| (-32603, format!("the client's answer is not JSON: {e}"))),
        Some(Outcome::Error(error)) => Err((error.code, error.message)),
        None => Err((
            -32603,
            "the client answered with neither a result nor an error".into(),
        )),
    };
    ClientAnswer {
        request_id: answer.request_id,
        outcome,
    }
}

pub fn watched(watched: Watched) -> proto::WatchMcpServersResponse {
    match watched {
        Watched::Bookmark(cursor) => proto::WatchMcpServersResponse {
            cursor,
            kind: proto::McpServerEventKind::Bookmark.into(),
            ..Default::default()
        },
        Watched::Event(event) => {
            let event = *event;
            proto::WatchMcpServersResponse {
                cursor: event.cursor,
                kind: match event.kind {
                    ServerEventKind::Created => proto::McpServerEventKind::Created,
                    ServerEventKind::Updated => proto::McpServerEventKind::Updated,
                    ServerEventKind::ToolsChanged => proto::McpServerEventKind::ToolsChanged,
                    ServerEventKind::StatusChanged => proto::McpServerEventKind::StatusChanged,
                    ServerEventKind::Closed => proto::McpServerEventKind::Closed,
                }
                .into(),
                server_id: event.server_id,
                server: Some(server(event.server)),
                tool_changes: Some(proto::ToolChanges {
                    added: event.tools.added,
                    updated: event.tools.updated,
                    removed: event.tools.removed,
                }),
                occurred_at: Some(prost_types::Timestamp::from(event.occurred_at)),
            }
        }
    }
}
