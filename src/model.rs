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
// One per request or call, never held in bulk: boxing the OAuth variant's
// fields would buy nothing.
#[allow(clippy::large_enum_variant)]
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
                if let Some(oauth) = oauth {
                    names.extend(oauth.secret_names().map(str::to_owned));
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
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth {
    pub client_credentials: Option<ClientCredentials>,
    /// Empty: the challenge's scope, else the server's `scopes_supported`.
    pub scopes: Vec<String>,
    /// Authorization code flow: a client the operator registered with the
    /// authorization server ahead of time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<RegisteredClient>,
    /// What the authorization code flow obtained; renewed in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<OAuthGrant>,
}

/// A client of an authorization server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredClient {
    pub client_id: String,
    /// None: a public client.
    pub client_secret: Option<String>,
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAuthMethod {
    /// HTTP Basic with the client id and secret (client_secret_basic).
    Basic,
    /// Both in the form body (client_secret_post).
    Post,
    /// A public client: its id in the body, no secret.
    None,
}

/// Where tokens come from and go to: enough to exchange a code or renew a
/// token on any replica.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEndpoint {
    pub url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_method: TokenAuthMethod,
    /// The resource indicator (RFC 8707), the same string in every request.
    pub resource: String,
    /// The authorization server's issuer, as its metadata names it.
    pub issuer: Option<String>,
}

/// Tokens from the authorization code flow and how to renew them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthGrant {
    pub endpoint: TokenEndpoint,
    /// The scopes asked for (a step-up asks for these and more).
    pub scopes: Vec<String>,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: Option<SystemTime>,
    /// Authorizations for more scope since the first (each asks for more
    /// than the last: bounded).
    #[serde(default)]
    pub step_ups: u32,
}

/// What finishing an authorization needs once the browser is back: sealed
/// with the state that names it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationFlow {
    pub endpoint: TokenEndpoint,
    pub scopes: Vec<String>,
    pub redirect_uri: String,
    pub pkce_verifier: String,
    /// The authorization server promises an `iss` on its redirect (RFC 9207).
    pub require_issuer: bool,
    /// The server's tools are stored already (a step-up): finishing renews
    /// the grant only.
    #[serde(default)]
    pub reauthorize: bool,
    #[serde(default)]
    pub step_ups: u32,
}

/// An authorization URL to show a person, and what its callback needs.
#[derive(Clone)]
pub struct AuthorizationStart {
    pub url: String,
    /// The `state` in the URL: the only key the callback gets.
    pub state: String,
    pub flow: AuthorizationFlow,
}

impl std::fmt::Debug for OAuthGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthGrant")
            .field("token_endpoint", &self.endpoint.url)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AuthorizationStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationStart")
            .field("token_endpoint", &self.flow.endpoint.url)
            .finish_non_exhaustive()
    }
}

/// Which servers a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFilter {
    /// Only this state; `None`: every state.
    pub state: Option<ServerState>,
    /// Only names starting with this; empty: every name.
    pub name_prefix: String,
}

/// A change to one of an organization's servers, as `WatchMcpServers`
/// streams it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEvent {
    /// Counts up by one per organization with no gap, in commit order: a
    /// watcher resumes after the last one it handled.
    pub cursor: u64,
    pub kind: ServerEventKind,
    pub server_id: String,
    /// The server as the change left it (for `Closed`, as it was removed).
    /// Never its authorization URL, which events do not keep.
    pub server: Server,
    /// For `ToolsChanged`, and `Created`/`Updated`/`StatusChanged` when the
    /// same transaction stored tools: their names.
    pub tools: ToolChanges,
    pub occurred_at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEventKind {
    Created,
    /// Renamed, its tool prefix or its transport changed.
    Updated,
    /// A sync stored a difference.
    ToolsChanged,
    /// Ready, unreachable, waiting for authorization or failed.
    StatusChanged,
    Closed,
}

/// The names of the tools one change added, updated and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolChanges {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updated: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl ToolChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// Whether mcpd can use a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Ready,
    /// Waiting for a person to grant access in a browser.
    AuthorizationPending,
    /// The authorization failed or was revoked.
    Error,
    /// Ready, but the last attempt to reach it failed (`last_error` says
    /// how). Calls still try it; the next contact that works makes it ready.
    Unreachable,
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

impl OAuth {
    /// What a response shows in place of the secrets this holds.
    fn secret_names(&self) -> impl Iterator<Item = &'static str> {
        let credentials = self.client_credentials.as_ref().map(|c| c.secret.name());
        let client = self
            .client
            .as_ref()
            .and_then(|c| c.client_secret.as_ref())
            .map(|_| "oauth.client_secret");
        let grant = self.grant.as_ref().map(|_| "oauth.tokens");
        credentials.into_iter().chain(client).chain(grant)
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
            .field("client", &self.client.as_ref().map(|c| &c.client_id))
            .field("grant", &self.grant)
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

/// What a server says about itself when a session starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerIdentity {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub version: String,
    pub protocol_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Its capabilities, as MCP spells them (a JSON object).
    pub capabilities: serde_json::Value,
}

/// A server about to be stored. The id is chosen before the MCP server is
/// contacted, so the session can be tracked under it.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub transport: Transport,
    /// Put before its tools' names in the organization's catalogue.
    pub tool_prefix: String,
    pub identity: Option<ServerIdentity>,
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
    pub state: ServerState,
    /// Why the state is [`ServerState::Error`]; empty otherwise.
    pub state_reason: String,
    /// While [`ServerState::AuthorizationPending`]: where a person grants access.
    pub authorization_url: Option<String>,
    pub tool_prefix: String,
    /// From the last session that listed its tools (create, sync, update).
    pub identity: Option<ServerIdentity>,
    /// Why the last attempt to reach it failed; empty once reached again.
    pub last_error: String,
    /// When mcpd last reached it (create, sync, health check, or a call that
    /// found it back).
    pub last_connected_at: Option<SystemTime>,
    /// When its tools were last listed and stored (create, sync, update).
    pub last_synced_at: Option<SystemTime>,
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
    /// The server that offers it.
    pub server_id: String,
    pub name: String,
    /// The server's tool prefix and `name`: the tool's name in the
    /// organization's catalogue.
    pub qualified_name: String,
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
    /// The server's last contact failed: a call that works records it back.
    pub unreachable: bool,
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
