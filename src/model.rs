//! The registry's domain types: what a server, a tool, a transport and an API
//! key are. The manager, the MCP client and the store all speak these; none
//! of them is a protobuf message, an rmcp type or a database row.

use std::{collections::BTreeMap, time::SystemTime};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Stdio,
    StreamableHttp,
    Sse,
}

/// How to reach an MCP server. Header and env values are secrets: `Debug`
/// never prints them, and the store seals this whole value at rest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    StreamableHttp {
        url: url::Url,
        headers: BTreeMap<String, String>,
        /// Rows written before OAuth existed have none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oauth: Option<OAuth>,
    },
    Sse {
        url: url::Url,
        headers: BTreeMap<String, String>,
    },
}

impl Transport {
    pub fn kind(&self) -> TransportKind {
        match self {
            Transport::Stdio { .. } => TransportKind::Stdio,
            Transport::StreamableHttp { .. } => TransportKind::StreamableHttp,
            Transport::Sse { .. } => TransportKind::Sse,
        }
    }

    /// The command or URL: what an operator needs to recognise the server.
    pub fn endpoint(&self) -> String {
        match self {
            Transport::Stdio { command, .. } => command.clone(),
            Transport::StreamableHttp { url, .. } | Transport::Sse { url, .. } => url.to_string(),
        }
    }

    /// Names of the values that are secrets (env or header names), sorted.
    pub fn secret_names(&self) -> Vec<String> {
        match self {
            Transport::Stdio { env, .. } => env.keys().cloned().collect(),
            Transport::StreamableHttp { headers, oauth, .. } => {
                let mut names: Vec<String> = headers.keys().cloned().collect();
                if let Some(credentials) =
                    oauth.as_ref().and_then(|o| o.client_credentials.as_ref())
                {
                    names.push(credentials.secret.name().to_owned());
                }
                names.sort();
                names
            }
            Transport::Sse { headers, .. } => headers.keys().cloned().collect(),
        }
    }
}

/// How mcpd obtains access tokens for a server behind the MCP authorization
/// flow (OAuth 2.1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth {
    pub client_credentials: Option<ClientCredentials>,
    /// Empty: the challenge's scope, else the server's `scopes_supported`.
    pub scopes: Vec<String>,
}

/// A client registered with the authorization server for machine-to-machine
/// access (the client credentials grant).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCredentials {
    pub client_id: String,
    pub secret: ClientSecret,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientSecret {
    /// client_secret_basic or client_secret_post.
    Secret(String),
    /// private_key_jwt: a PKCS#8 PEM key and its JWS algorithm.
    PrivateKeyJwt { pem: String, algorithm: String },
}

impl ClientSecret {
    /// What a response shows in place of the value.
    pub fn name(&self) -> &'static str {
        match self {
            ClientSecret::Secret(_) => "oauth.client_secret",
            ClientSecret::PrivateKeyJwt { .. } => "oauth.private_key_pem",
        }
    }
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field(
                "client_credentials",
                &self
                    .client_credentials
                    .as_ref()
                    .map(|c| (&c.client_id, c.secret.name())),
            )
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Stdio { command, args, env } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &env.keys().collect::<Vec<_>>())
                .finish(),
            Transport::StreamableHttp {
                url,
                headers,
                oauth,
            } => f
                .debug_struct("StreamableHttp")
                .field("url", &url.as_str())
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .field("oauth", oauth)
                .finish(),
            Transport::Sse { url, headers } => f
                .debug_struct("Sse")
                .field("url", &url.as_str())
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A server about to be stored. The id is chosen before the MCP server is
/// contacted, so the session can be tracked under it.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub transport: Transport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    pub name: String,
    /// `None` for a kind this build does not know (a newer daemon wrote it).
    pub transport: Option<TransportKind>,
    pub endpoint: String,
    pub created_at: SystemTime,
    pub tool_count: u32,
    /// Header or env names; never their values.
    pub secret_names: Vec<String>,
}

/// A tool that passed validation, about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTool {
    pub name: String,
    /// Empty when the server gives none.
    pub title: String,
    pub description: String,
    /// The input schema as the server sent it (key order kept).
    pub input_schema_json: String,
    pub annotations: Option<ToolAnnotations>,
    pub output_schema_json: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub id: String,
    pub name: String,
    pub title: String,
    pub description: String,
    pub input_schema_json: String,
    pub annotations: Option<ToolAnnotations>,
    pub output_schema_json: Option<String>,
}

/// MCP tool annotations: hints about behaviour, as the server gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolAnnotations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world_hint: Option<bool>,
}

/// What the store hands out for a tool call: how to reach the server and
/// what the arguments must satisfy.
#[derive(Debug, Clone)]
pub struct CallTarget {
    pub transport: Transport,
    pub input_schema_json: String,
}

/// The result of `tools/call`, with everything MCP gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallResult {
    pub content: Vec<Content>,
    pub structured_content: Option<serde_json::Value>,
    /// The tool ran and reports failure.
    pub is_error: bool,
    pub meta: Option<serde_json::Value>,
}

/// One item of a tool result.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub kind: ContentKind,
    pub annotations: Option<serde_json::Value>,
    pub meta: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContentKind {
    Text(String),
    Image {
        data: Vec<u8>,
        mime_type: String,
    },
    Audio {
        data: Vec<u8>,
        mime_type: String,
    },
    ResourceLink {
        uri: String,
        name: String,
        title: String,
        description: String,
        mime_type: String,
        size: Option<u64>,
    },
    Resource {
        uri: String,
        mime_type: String,
        contents: ResourceContents,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResourceContents {
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub created_at: SystemTime,
    pub revoked_at: Option<SystemTime>,
}

/// What happens during a streamed tool call, for its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// `notifications/progress` for the call.
    Progress {
        progress: f64,
        total: Option<f64>,
        message: Option<String>,
    },
    /// `notifications/message` from the server.
    Log {
        level: String,
        logger: Option<String>,
        data: serde_json::Value,
    },
    /// A request the server makes of its client; the caller answers it with
    /// a [`ClientAnswer`] carrying the same id.
    Request {
        id: String,
        method: String,
        params: serde_json::Value,
    },
}

/// The caller's answer to a [`CallEvent::Request`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClientAnswer {
    pub request_id: String,
    /// The result object, or a JSON-RPC error (code, message).
    pub outcome: Result<serde_json::Value, (i32, String)>,
}
