//! The use cases: create, close, get and list MCP servers. Each takes at most
//! one pooled connection at a time and never holds one across MCP traffic.

mod authorize;
mod auto_sync;
mod call;
mod closed_elsewhere;
mod error;
#[cfg(test)]
mod fuzz;
mod health;
mod keys;
mod paging;
mod sync;
mod tools;
mod update;
mod validate;
mod watch;

use std::time::{Duration, Instant};

pub use authorize::{Authorized, Callback};
pub use call::CallTool;
pub use error::ManagerError;
pub use health::HealthRound;
pub use keys::NewApiKey;
pub use sync::Synced;
pub use update::UpdateServer;
pub use validate::{ClientCredentialsRequest, OAuthRequest, TransportRequest};
pub use watch::Watched;

pub use crate::mcp::PoolStats as LiveStats;
pub use crate::model::{
    ApiKey, CallEvent, ClientAnswer, ClientSecret, Content, ContentKind, ResourceContents, Server,
    ServerEvent, ServerEventKind, ServerFilter, ServerState, Tool, ToolAnnotations, ToolCallResult,
    ToolChanges, TransportKind,
};
use crate::{
    mcp::{McpConnector, McpError},
    model::NewServer,
    store::{PoolStats, Store, track_connections},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedTool {
    pub name: String,
    pub reason: String,
}

/// No `Debug`: the transport holds secrets.
#[derive(Clone)]
pub struct CreateServer {
    pub name: String,
    /// Put before its tools' names in the organization's catalogue.
    pub tool_prefix: String,
    pub transport: Option<TransportRequest>,
}

/// Where a call's time and connections went; the api layer reports it in
/// response metadata (the benchmark reads it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Most pooled connections this call held at once.
    pub peak_connections: usize,
    pub mcp: Duration,
    /// Finding what to write (a sync's digests and difference), before a
    /// connection is taken.
    pub diff: Duration,
    pub persist: Duration,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub server: Server,
    pub tools: Vec<Tool>,
    pub failed_tools: Vec<FailedTool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub removed_tools: u32,
    pub removed_mappings: u32,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_tools_per_server: usize,
    /// How long an authorization URL stays good (its `state`).
    pub authorization_ttl: Duration,
    /// How often every ready server is contacted (`--health-interval`);
    /// `None`: never (contacts by syncs and calls still count).
    pub health_interval: Option<Duration>,
    /// Servers contacted at once in a health round.
    pub health_concurrency: usize,
    /// How long after a server announces a tool change (and the last of a
    /// burst of them) its tools are synced.
    pub sync_debounce: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tools_per_server: 10_000,
            authorization_ttl: Duration::from_secs(600),
            health_interval: None,
            health_concurrency: 4,
            sync_debounce: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonStats {
    pub pool: PoolStats,
    pub open_mcp_sessions: usize,
    pub live: LiveStats,
}

#[derive(Clone)]
pub struct Manager {
    store: Store,
    mcp: McpConnector,
    limits: Limits,
    schemas: std::sync::Arc<call::SchemaCache>,
    renewals: std::sync::Arc<authorize::Renewals>,
    /// Automatic syncs' lease across the daemons on the database.
    sync_lease: auto_sync::LeaseTerms,
}

impl Manager {
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn new(store: Store, mcp: McpConnector, limits: Limits) -> Self {
        Manager {
            sync_lease: auto_sync::LeaseTerms::new(&mcp),
            store,
            mcp,
            limits,
            schemas: Default::default(),
            renewals: Default::default(),
        }
    }

    /// The daemon's own figures: the pool and the MCP sessions it holds.
    pub fn stats(&self) -> DaemonStats {
        DaemonStats {
            pool: self.store.pool_stats(),
            open_mcp_sessions: self.mcp.open_sessions(),
            live: self.mcp.pool_stats(),
        }
    }

    /// Restarts the daemon-wide peak of checked-out connections.
    /// Registers the figures of the store and the MCP client side.
    pub fn register_metrics(&self, registry: &crate::telemetry::metrics::Registry) {
        self.store.register_metrics(registry);
        self.mcp.register_metrics(registry);
    }

    pub fn reset_peaks(&self) {
        self.store.reset_peak();
    }

    /// Tears down every MCP session and child process still held
    /// (best-effort; the daemon is stopping).
    pub async fn shutdown(&self) {
        self.mcp.close_all().await;
    }

    /// Validate, connect and list (no database connection held), then
    /// persist everything on one connection in one transaction.
    pub async fn create_server(
        &self,
        org: &str,
        request: CreateServer,
    ) -> (Result<Created, ManagerError>, CallStats) {
        let mut stats = CallStats::default();
        let (result, peak) = track_connections(self.create_inner(org, request, &mut stats)).await;
        stats.peak_connections = peak;
        (result, stats)
    }

    async fn create_inner(
        &self,
        org: &str,
        request: CreateServer,
        stats: &mut CallStats,
    ) -> Result<Created, ManagerError> {
        validate::organization_id(org)?;
        validate::server_name(&request.name)?;
        validate::tool_prefix(&request.tool_prefix)?;
        let spec = validate::transport(request.transport)?;
        // Fail fast before spawning anything; the insert below still
        // enforces the rule against concurrent creates.
        if self.store.server_name_taken(org, &request.name).await? {
            return Err(ManagerError::AlreadyExists(format!(
                "an MCP server named {:?} already exists in this organization",
                request.name
            )));
        }

        let server_id = uuid::Uuid::now_v7().to_string();
        let created = self
            .register(
                org,
                NewServer {
                    id: server_id.clone(),
                    organization_id: org.to_owned(),
                    name: request.name,
                    transport: spec,
                    tool_prefix: request.tool_prefix,
                    identity: None,
                },
                stats,
            )
            .await;
        if created.is_err() {
            // Nothing was stored: nothing held for this id may stay either.
            self.mcp.forget(org, &server_id);
        }
        created
    }

    /// Connects, lists and stores a server under the id chosen for it; a
    /// server that wants OAuth authorization is stored waiting for it.
    async fn register(
        &self,
        org: &str,
        mut server: NewServer,
        stats: &mut CallStats,
    ) -> Result<Created, ManagerError> {
        let listed = match self
            .connect_and_list(org, &server.id, &server.transport, stats)
            .await
        {
            Err(Listing::Refused { challenge, .. }) if authorization_applies(&server.transport) => {
                return self.await_authorization(server, &challenge).await;
            }
            Err(err) => return Err(err.into()),
            Ok(listed) => listed,
        };
        server.identity = listed.identity;
        let persist_started = Instant::now();
        let persisted = self.store.create_server(server, listed.tools).await;
        stats.persist = persist_started.elapsed();
        listed.teardown.await;
        let created = persisted?;
        Ok(Created {
            server: created.server,
            tools: created.tools,
            failed_tools: listed.failed,
        })
    }

    /// Connects and lists every tool, then checks them. The session's
    /// teardown runs on while the caller persists.
    async fn connect_and_list(
        &self,
        org: &str,
        server_id: &str,
        spec: &crate::model::Transport,
        stats: &mut CallStats,
    ) -> Result<Listed, Listing> {
        let started = Instant::now();
        let session = match self.mcp.connect(org, server_id, spec).await {
            Ok(session) => session,
            Err(err) => return Err(Listing::of(err)),
        };
        let listed = session.list_tools().await;
        let identity = session.identity();
        // The session is done with; its teardown overlaps the persistence.
        let teardown = Teardown(tokio::spawn(session.close()));
        stats.mcp = started.elapsed();
        let listed = match listed {
            Ok(listed) => listed,
            // Some servers let a session start and refuse the listing.
            Err(err) => {
                teardown.await;
                return Err(Listing::of(err));
            }
        };
        if listed.len() > self.limits.max_tools_per_server {
            teardown.await;
            return Err(Listing::Failed(ManagerError::ResourceExhausted(format!(
                "the MCP server offers {} tools; at most {} per server are allowed",
                listed.len(),
                self.limits.max_tools_per_server
            ))));
        }
        let (tools, failed) = tools::check(listed);
        Ok(Listed {
            identity,
            tools,
            failed,
            teardown,
        })
    }

    /// Tears down what the daemon holds for the server (best-effort), then
    /// removes it with its mappings and the tools only it provided.
    pub async fn close_server(
        &self,
        org: &str,
        server_id: &str,
    ) -> (Result<Closed, ManagerError>, CallStats) {
        let (result, peak) = track_connections(async {
            validate::organization_id(org)?;
            validate::server_id(server_id)?;
            self.mcp.close_server(org, server_id).await;
            let deleted = self.store.delete_server(org, server_id).await?;
            Ok(Closed {
                removed_tools: deleted.removed_tools,
                removed_mappings: deleted.removed_mappings,
            })
        })
        .await;
        let stats = CallStats {
            peak_connections: peak,
            ..CallStats::default()
        };
        (result, stats)
    }

    pub async fn get_server(&self, org: &str, server_id: &str) -> Result<Server, ManagerError> {
        validate::organization_id(org)?;
        validate::server_id(server_id)?;
        Ok(self.store.get_server(org, server_id).await?)
    }

    pub async fn list_servers(
        &self,
        org: &str,
        filter: &ServerFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Server>, ManagerError> {
        validate::organization_id(org)?;
        validate::name_prefix(&filter.name_prefix)?;
        let limit = paging::page_size(page_size)?;
        // A token belongs to its filter too (AIP-158: changing the filter
        // mid-listing is an error, not a silently different listing).
        let scope = format!("servers/{org}/{:?}/{}", filter.state, filter.name_prefix);
        let after = paging::decode_token(&scope, page_token)?;
        // One more than asked tells whether another page exists.
        let mut items = self
            .store
            .list_servers(org, filter, after.as_deref(), limit + 1)
            .await?;
        let next_page_token = next_token(&mut items, limit, |server| {
            paging::encode_token(&scope, &server.id)
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }

    pub async fn list_server_tools(
        &self,
        org: &str,
        server_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Tool>, ManagerError> {
        validate::organization_id(org)?;
        validate::server_id(server_id)?;
        let limit = paging::page_size(page_size)?;
        let scope = format!("tools/{org}/{server_id}");
        let after = paging::decode_token(&scope, page_token)?;
        let mut items = self
            .store
            .list_server_tools(org, server_id, after.as_deref(), limit + 1)
            .await?;
        let next_page_token = next_token(&mut items, limit, |tool| {
            paging::encode_token(&scope, &tool.name)
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }
}

impl Manager {
    /// The organization's tool catalogue: every tool of every server by
    /// qualified name, each with whether its qualified name is shared.
    pub async fn list_catalogue(
        &self,
        org: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<(Tool, bool)>, ManagerError> {
        validate::organization_id(org)?;
        let limit = paging::page_size(page_size)?;
        let scope = format!("catalogue/{org}");
        let after = paging::decode_token(&scope, page_token)?;
        // Qualified names hold no newline (validated), ids neither.
        let after = after.as_deref().and_then(|a| a.split_once('\n'));
        let mut items = self.store.list_catalogue(org, after, limit + 1).await?;
        let next_page_token = next_token(&mut items, limit, |(tool, _)| {
            paging::encode_token(&scope, &format!("{}\n{}", tool.qualified_name, tool.id))
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }
}

/// Tools listed and checked, with the teardown of the session that listed
/// them still running.
struct Listed {
    /// What the server said about itself.
    identity: Option<crate::model::ServerIdentity>,
    tools: Vec<crate::model::NewTool>,
    failed: Vec<FailedTool>,
    teardown: Teardown,
}

/// Why [`Manager::connect_and_list`] listed nothing.
pub(super) enum Listing {
    /// The server refused mcpd with a `WWW-Authenticate` challenge: where an
    /// OAuth flow may start.
    Refused {
        challenge: String,
        error: McpError,
    },
    /// The server could not be reached at all ([`McpError::unreachable`]).
    Unreachable(McpError),
    Failed(ManagerError),
}

impl Listing {
    fn of(err: McpError) -> Listing {
        match err {
            McpError::Unauthorized {
                challenge: Some(ref challenge),
                ..
            } => Listing::Refused {
                challenge: challenge.clone(),
                error: err,
            },
            err if err.unreachable() => Listing::Unreachable(err),
            err => Listing::Failed(err.into()),
        }
    }
}

impl Listing {
    /// How the server could not be reached, when that is why nothing was
    /// listed (not a refusal, nor a limit of mcpd's).
    fn unreachable(&self) -> Option<String> {
        match self {
            Listing::Unreachable(err) => Some(err.to_string()),
            _ => None,
        }
    }
}

impl From<Listing> for ManagerError {
    fn from(listing: Listing) -> Self {
        match listing {
            Listing::Refused { error, .. } | Listing::Unreachable(error) => error.into(),
            Listing::Failed(err) => err,
        }
    }
}

/// A session teardown in flight; awaiting it never fails the caller.
struct Teardown(tokio::task::JoinHandle<()>);

impl std::future::IntoFuture for Teardown {
    type Output = ();
    type IntoFuture = futures::future::BoxFuture<'static, ()>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if let Err(err) = self.0.await {
                tracing::debug!(error = %err, "MCP session teardown task failed");
            }
        })
    }
}

/// A server that refuses mcpd with a challenge gets the authorization code
/// flow, unless the caller brought credentials of its own (an Authorization
/// header, or client credentials).
fn authorization_applies(spec: &crate::model::Transport) -> bool {
    match spec {
        crate::model::Transport::StreamableHttp { headers, oauth, .. } => {
            !headers.contains_key("authorization")
                && oauth
                    .as_ref()
                    .is_none_or(|o| o.client_credentials.is_none())
        }
        _ => false,
    }
}

fn next_token<T>(rows: &mut Vec<T>, limit: i64, token: impl Fn(&T) -> String) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(token).unwrap_or_default()
    } else {
        String::new()
    }
}
